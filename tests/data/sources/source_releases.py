"""Writers of miniature copies of public releases in their real on-disk layout (DATASETS.md).

Each ``write_<dataset>(root)`` creates the release's real file names, folders, column names and value codes
(including unknown and odd values) with tiny synthetic pixels, and returns what a test needs to derive the
expected SampleTable by hand.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

RNG = np.random.default_rng(0)


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_image(path: Path, size: tuple[int, int] = (8, 6), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = 3 if mode == "RGB" else 1
    pixels = RNG.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode).save(path)
    return path


def write_mask(path: Path, size: tuple[int, int] = (8, 6), value: int = 255) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[1:4, 2:5] = value
    Image.fromarray(mask, mode="L").save(path)
    return path


# --- HAM10000 (§2.3, §3.2) ----------------------------------------------------------------------------------
HAM_ROWS = [
    # lesion_id, image_id, dx, dx_type, age, sex, localization, folder
    ("HAM_0000118", "ISIC_0027419", "bkl", "histo", "80.0", "male", "scalp", "HAM10000_images_part_1"),
    ("HAM_0000118", "ISIC_0025030", "bkl", "histo", "80.0", "male", "scalp", "HAM10000_images_part_1"),
    ("HAM_0002730", "ISIC_0026769", "mel", "histo", "60.0", "female", "back", "HAM10000_images_part_2"),
    ("HAM_0001466", "ISIC_0031633", "akiec", "histo", "", "unknown", "face", "HAM10000_images_part_2"),
    (
        "HAM_0001234",
        "ISIC_0030000",
        "nv",
        "follow_up",
        "35.0",
        "female",
        "lower extremity",
        "HAM10000_images_part_1",
    ),
]


def write_ham10000(
    root: Path,
    *,
    masks_for: Sequence[str] = ("ISIC_0027419", "ISIC_0026769", "ISIC_0031633"),
    isic2018_for: Sequence[str] = (),
) -> Path:
    """HAM10000 + Tschandl masks for ``masks_for``; ISIC 2018 Task 1 masks and (larger) inputs for ``isic2018_for``."""
    write_csv(
        root / "HAM10000_metadata.csv",
        ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"],
        [row[:7] for row in HAM_ROWS],
    )
    for row in HAM_ROWS:
        write_image(root / row[7] / f"{row[1]}.jpg")
    for image_id in masks_for:
        write_mask(root / "HAM10000_segmentations_lesion_tschandl" / f"{image_id}_segmentation.png")
    for image_id in isic2018_for:
        write_mask(
            root / "ISIC2018_Task1_Training_GroundTruth" / f"{image_id}_segmentation.png", size=(12, 9)
        )
        write_image(root / "ISIC2018_Task1-2_Training_Input" / f"{image_id}.jpg", size=(12, 9))
    return root


# --- Fitzpatrick17k (§2.10) ---------------------------------------------------------------------------------
FITZ_HEADER = [
    "md5hash",
    "fitzpatrick_scale",
    "fitzpatrick_centaur",
    "label",
    "nine_partition_label",
    "three_partition_label",
    "qc",
    "url",
    "url_alphanum",
]
FITZ_ROWS = [
    [
        "5e82a45bc5d78bd24ae9202d194423f8",
        "3",
        "3",
        "drug induced pigmentary changes",
        "inflammatory",
        "non-neoplastic",
        "",
        "https://example.org/a.jpg",
        "a",
    ],
    [
        "fa2911a9b13b6f8af79cb700937cc14f",
        "1",
        "1",
        "photodermatoses",
        "inflammatory",
        "non-neoplastic",
        "1 Diagnostic",
        "https://example.org/b.jpg",
        "b",
    ],
    [
        "d2bac3c9e4499032ca8e9b07c7d3bc40",
        "-1",
        "3",
        "melanoma",
        "malignant melanoma",
        "malignant",
        "",
        "https://example.org/c.jpg",
        "c",
    ],
    [
        "0a94359e7eaacd7178e06b2823777789",
        "6",
        "5",
        "basal cell carcinoma",
        "malignant epidermal",
        "malignant",
        "",
        "https://example.org/d.jpg",
        "d",
    ],
    [
        "b9f8b7a1b0dca1b0f0b0e0d0c0b0a090",
        "4",
        "4",
        "seborrheic keratosis",
        "benign epidermal",
        "benign",
        "",
        "https://example.org/e.jpg",
        "e",
    ],
]


def write_fitzpatrick17k(root: Path) -> Path:
    write_csv(root / "fitzpatrick17k.csv", FITZ_HEADER, FITZ_ROWS)
    for row in FITZ_ROWS:
        write_image(root / "images" / f"{row[0]}.jpg")
    return root


# --- DDI (§2.15) --------------------------------------------------------------------------------------------
DDI_ROWS = [
    # index, DDI_ID, DDI_file, skin_tone, malignant, disease
    ["0", "1", "000001.png", "56", "TRUE", "melanoma-in-situ"],
    ["1", "2", "000002.png", "12", "FALSE", "verruca-vulgaris"],
    ["2", "3", "000003.png", "34", "True", "mycosis-fungoides"],
    ["3", "4", "000004.png", "34", "false", "seborrheic-keratosis"],
]


def write_ddi(root: Path, *, in_images_folder: bool = True, legacy_label: bool = False) -> Path:
    label = "malignancy(malig=1)" if legacy_label else "malignant"
    rows = [
        r[:4] + (["1" if r[4].lower() == "true" else "0"] if legacy_label else [r[4]]) + r[5:]
        for r in DDI_ROWS
    ]
    write_csv(root / "ddi_metadata.csv", ["", "DDI_ID", "DDI_file", "skin_tone", label, "disease"], rows)
    for row in DDI_ROWS:
        write_image(root / ("images" if in_images_folder else "") / row[2], mode="RGB")
    return root


# --- PAPILA (§2.4) ------------------------------------------------------------------------------------------
PAPILA_HEADER = [
    "ID",
    "Age",
    "Gender",
    "Diagnosis",
    "dioptre_1",
    "dioptre_2",
    "astigmatism_1",
    "astigmatism_2",
    "Phakic/Pseudophakic",
    "Pneumatic",
    "Perkins",
    "Pachymetry",
    "Axial_Length",
    "VF_MD",
]
# ID, Age, Gender (0 male, 1 female), Diagnosis OD, Diagnosis OS
PAPILA_PATIENTS = [
    ("#002", "39", "0", "0", "0"),
    ("#004", "61", "1", "1", "2"),
    ("#005", "60", "1", "1", "1"),
]


def write_papila(root: Path, *, xlsx: bool = False) -> Path:
    """Clinical sheets as ``.csv`` conversions or as the release's ``.xlsx`` (numbers stored as numbers)."""
    for eye, column in (("od", 3), ("os", 4)):
        # The release sheet starts with a title row above the header.
        rows = [["PAPILA clinical data"] + [""] * (len(PAPILA_HEADER) - 1), PAPILA_HEADER]
        rows += [[p[0], p[1], p[2], p[column]] + ["0.5"] * (len(PAPILA_HEADER) - 4) for p in PAPILA_PATIENTS]
        if xlsx:
            import pandas as pd

            cells = [rows[0], rows[1]] + [[r[0]] + [float(v) for v in r[1:]] for r in rows[2:]]
            (root / "ClinicalData").mkdir(parents=True, exist_ok=True)
            pd.DataFrame(cells).to_excel(
                root / "ClinicalData" / f"patient_data_{eye}.xlsx", header=False, index=False
            )
        else:
            write_csv(root / "ClinicalData" / f"patient_data_{eye}.csv", rows[0], rows[1:])
        for p in PAPILA_PATIENTS:
            write_image(root / "FundusImages" / f"RET{p[0][1:]}{eye.upper()}.jpg")
    return root


# --- BRSET (§2.5) -------------------------------------------------------------------------------------------
BRSET_HEADER = [
    "image_id",
    "patient_id",
    "camera",
    "patient_age",
    "comorbidities",
    "diabetes_time_y",
    "insuline",
    "patient_sex",
    "exam_eye",
    "diabetes",
    "nationality",
    "optic_disc",
    "DR_SDRG",
    "DR_ICDR",
    "focus",
]
BRSET_ROWS = [
    [
        "img00001",
        "1",
        "Canon CR",
        "48",
        "diabetes1",
        "12",
        "yes",
        "2",
        "1",
        "yes",
        "Brazil",
        "1",
        "0",
        "0",
        "1",
    ],
    [
        "img00002",
        "1",
        "Canon CR",
        "48",
        "diabetes1",
        "12",
        "yes",
        "2",
        "2",
        "yes",
        "Brazil",
        "1",
        "2",
        "2",
        "1",
    ],
    ["img00003", "2", "NIKON NF5050", "", "0", "", "", "1", "1", "no", "Brazil", "1", "0", "0", "1"],
    ["img00004", "3", "Canon CR", "71", "SAH", "", "", "1", "1", "no", "Brazil", "1", "4", "4", "2"],
]


def write_brset(root: Path) -> Path:
    write_csv(root / "labels.csv", BRSET_HEADER, BRSET_ROWS)
    for row in BRSET_ROWS:
        write_image(root / "fundus_photos" / f"{row[0]}.jpg")
    return root


# --- Harvard lab npz releases (§2.6, §2.7, §2.16, §3.4) -----------------------------------------------------
def write_npz(path: Path, **arrays: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: np.asarray(v) for k, v in arrays.items()})
    return path


SUMMARY_HEADER = ["filename", "age", "gender", "race", "ethnicity", "language", "maritalstatus"]
FAIRVLMED_ROWS = [
    # filename, age, gender, race, ethnicity, language, maritalstatus, note, gpt4_summary, glaucoma, use
    [
        "data_00001.npz",
        "71.3",
        "female",
        "white",
        "non-hispanic",
        "english",
        "married or partnered",
        "pt with poag",
        "glaucoma",
        "yes",
        "training",
    ],
    [
        "data_00002.npz",
        "45.2",
        "male",
        "asian",
        "unknown",
        "spanish",
        "single",
        "normal exam",
        "normal",
        "no",
        "training",
    ],
    [
        "data_00003.npz",
        "60.0",
        "male",
        "black",
        "hispanic",
        "unknown",
        "unknown",
        "glaucoma suspect",
        "suspect",
        "no",
        "validation",
    ],
    [
        "data_00004.npz",
        "59.9",
        "female",
        "white",
        "non-hispanic",
        "other",
        "widowed",
        "poag ou",
        "glaucoma",
        "yes",
        "test",
    ],
]
_FOLDER = {"training": "Training", "validation": "Validation", "test": "Test"}


def write_fairvlmed10k(root: Path, *, readme_folder: bool = True) -> Path:
    csv_dir = root / "ReadMe" if readme_folder else root
    header = SUMMARY_HEADER + ["note", "gpt4_summary", "glaucoma", "use"]
    write_csv(csv_dir / "data_summary.csv", header, FAIRVLMED_ROWS)
    for row in FAIRVLMED_ROWS:
        write_npz(
            root / _FOLDER[row[-1]] / row[0],
            slo_fundus=RNG.integers(0, 255, (12, 10), dtype=np.uint8),
            md=-1.5,
            tds=np.zeros(52),
            age=float(row[1]),
            gender=int(row[2] == "male"),
            race={"asian": 0, "black": 1, "white": 2}[row[3]],
            ethnicity=-1,
            language=0,
            maritalstatus=0,
            glaucoma=int(row[9] == "yes"),
            note=row[7],
            note_extra="",
        )
    return root


GF3300_ROWS = [
    ["data_0001.npz", "55", "female", "black", "non-hispanic", "english", "divorced", "yes", "training"],
    [
        "data_0002.npz",
        "67",
        "male",
        "white",
        "non-hispanic",
        "other languages",
        "legally separated",
        "no",
        "training",
    ],
    ["data_0003.npz", "", "female", "asian", "hispanic", "unknown", "single", "yes", "test"],
]


def write_gf3300(root: Path) -> Path:
    base = root / "dataset-001"
    write_csv(base / "data_summary.csv", SUMMARY_HEADER + ["glaucoma", "use"], GF3300_ROWS)
    for row in GF3300_ROWS:
        write_npz(
            base / _FOLDER[row[-1]] / row[0],
            rnflt=RNG.normal(100, 20, (20, 20)),
            oct_bscans=np.zeros((4, 5, 5), np.uint8),
            glaucoma=int(row[7] == "yes"),
            md=0.0,
            tds=np.zeros(52),
            race=0,
            male=int(row[2] == "male"),
            hispanic=0,
            language=0,
            maritalstatus=0,
            age=50.0,
        )
    return root


FAIRVISION_ROWS = {
    "AMD": [
        [
            "data_00001.npz",
            "80",
            "female",
            "white",
            "non-hispanic",
            "english",
            "married or partnered",
            "late amd",
            "training",
        ],
        [
            "data_00002.npz",
            "52",
            "male",
            "asian",
            "non-hispanic",
            "english",
            "single",
            "normal",
            "validation",
        ],
        ["data_00003.npz", "70", "male", "black", "unknown", "spanish", "unknown", "early amd", "test"],
    ],
    "DR": [
        [
            "data_00001.npz",
            "58",
            "female",
            "black",
            "hispanic",
            "spanish",
            "divorced",
            "vision threatening dr",
            "training",
        ],
        [
            "data_00002.npz",
            "63",
            "male",
            "white",
            "non-hispanic",
            "english",
            "widowed",
            "non-vision threatening dr",
            "test",
        ],
    ],
    "Glaucoma": [
        [
            "data_00001.npz",
            "49",
            "male",
            "asian",
            "non-hispanic",
            "other",
            "single",
            "-4.1",
            "yes",
            "training",
        ],
        [
            "data_07001.npz",
            "77",
            "female",
            "white",
            "non-hispanic",
            "english",
            "married or partnered",
            "0.3",
            "no",
            "test",
        ],
    ],
}
_FAIRVISION_LABEL = {"AMD": ["amd"], "DR": ["dr"], "Glaucoma": ["md", "glaucoma"]}


def write_fairvision(root: Path, *, huggingface_layout: bool = True) -> Path:
    """Hugging Face layout: <Disease>/ReadMe/data_summary_<d>.csv + <Disease>/Dataset/{Training,Validation,Test}/."""
    for disease, rows in FAIRVISION_ROWS.items():
        name = f"data_summary_{disease.lower()}.csv"
        base = root / disease / ("Dataset" if huggingface_layout else "")
        csv_path = root / disease / "ReadMe" / name if huggingface_layout else root / name
        write_csv(csv_path, SUMMARY_HEADER + _FAIRVISION_LABEL[disease] + ["use"], rows)
        for row in rows:
            write_npz(
                base / _FOLDER[row[-1]] / row[0],
                oct_bscans=np.zeros((4, 6, 6), np.uint8),
                slo_fundus=np.zeros((6, 6), np.uint8),
                race=2,
                male=1,
                hispanic=0,
                maritalstatus=0,
                language=0,
            )
            write_image(base / _FOLDER[row[-1]] / row[0].replace("data_", "slo_").replace(".npz", ".jpg"))
    return root


# FairSeg: attributes live in the npz with lab codes (gender 0 F / 1 M, race 0 Asian / 1 Black / 2 White).
FAIRSEG_FILES = [
    # folder, name, gender, race, ethnicity, language, maritalstatus, age
    ("Training", "data_00001.npz", 0, 2, 0, 0, 0, 66.5),
    ("Training", "data_00002.npz", 1, 0, -1, 2, 4, 41.0),
    ("Test", "data_08001.npz", 1, 1, 1, -1, -1, 60.0),
]


def write_fairseg(root: Path, *, keys: str = "readme", age_scale: float = 1.0) -> Path:
    image_key, mask_key = {
        "readme": ("slo_fundus", "disc_cup_mask"),
        "samed": ("fundus_slo", "disc_cup"),
        "fairmedfm": ("fundus", "disc_cup_borders"),
    }[keys]
    for folder, name, gender, race, ethnicity, language, marital, age in FAIRSEG_FILES:
        mask = np.zeros((8, 8), np.int8)
        mask[2:6, 2:6] = -1
        mask[3:5, 3:5] = -2
        write_npz(
            root / folder / name,
            **{image_key: RNG.integers(0, 255, (8, 8), dtype=np.uint8), mask_key: mask},
            gender=gender,
            race=race,
            ethnicity=ethnicity,
            language=language,
            maritalstatus=marital,
            age=age * age_scale,
        )
    return root


def write_dicom(path: Path, *, rows: int = 4, columns: int = 4, **tags: Any) -> Path:
    """A small valid CT DICOM file (explicit VR little endian) with the given header tags."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = RNG.integers(0, 2000, (rows, columns)).astype(np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# --- FairFedMed-Oph (§4.1) ----------------------------------------------------------------------------------
FEDMED_HEADER = [
    "",
    "filename",
    "age",
    "gender",
    "race",
    "ethnicity",
    "language",
    "maritalstatus",
    "glaucoma",
]
FEDMED_SITES = {
    # (site, split): rows
    (1, "train"): [
        [
            "0",
            "fairclip_data_00001.npz",
            "70.5",
            "male",
            "white",
            "non-hispanic",
            "english",
            "married or partnered",
            "yes",
        ],
        [
            "1",
            "harvard30kglaucoma_data_00010.npz",
            "45.0",
            "female",
            "asian",
            "unknown",
            "others",
            "single",
            "no",
        ],
    ],
    (1, "test"): [
        [
            "2",
            "fairdomain_cls_data_00003.npz",
            "61.2",
            "female",
            "black",
            "hispanic",
            "spanish",
            "divorced",
            "yes",
        ]
    ],
    (2, "train"): [
        ["0", "fairclip_data_00002.npz", "52.0", "male", "asian", "non-hispanic", "unknown", "unknown", "no"]
    ],
    (2, "test"): [
        [
            "1",
            "harvard30kglaucoma_data_00011.npz",
            "80.0",
            "female",
            "white",
            "non-hispanic",
            "english",
            "widowed",
            "no",
        ]
    ],
    (3, "train"): [
        [
            "0",
            "fairdomain_cls_data_00004.npz",
            "66.0",
            "male",
            "black",
            "non-hispanic",
            "english",
            "legally separated",
            "yes",
        ]
    ],
    (3, "test"): [
        ["1", "fairclip_data_00005.npz", "", "female", "white", "non-hispanic", "english", "single", "no"]
    ],
}


def write_fairfedmed_oph(root: Path, *, partition: str = "race") -> Path:
    """``root`` plays the user's download folder: files under ``DATA/fairfedmed/``."""
    base = root / "DATA" / "fairfedmed"
    all_rows = []
    for (site, split), rows in FEDMED_SITES.items():
        write_csv(base / f"meta_site{site}_{partition}_{split}.csv", FEDMED_HEADER, rows)
        all_rows += rows
        for row in rows:
            write_npz(
                base / "all" / row[1],
                slo_fundus=np.zeros((6, 6), np.uint8),
                oct_bscans=np.zeros((8, 6, 6), np.uint8),
                glaucoma=int(row[8] == "yes"),
                race=2,
                gender=1,
                language=0,
                ethnicity=0,
                maritalstatus=0,
            )
    write_csv(base / "meta_all.csv", FEDMED_HEADER, all_rows)
    return root


# --- COVID-CT-MD (§2.8) -------------------------------------------------------------------------------------
COVID_HEADER = ["clinical_data", "Diagnosis", "Folder", "Patient Gender", "Patient Age", "Weight"]
COVID_ROWS = [
    ["1", "COVID-19", "P001", "M", "039Y", "80"],
    ["2", "CAP", "cap001", "F", "072Y", ""],
    ["3", "Normal", "normal001", "F", "060Y", "64"],
    ["4", "COVID-19", "P002", "M", "", "90"],
]
COVID_FOLDERS = {"COVID-19": "COVID-19 Cases", "CAP": "Cap Cases", "Normal": "Normal Cases"}


def write_covid_ct_md(root: Path) -> Path:
    write_csv(root / "Clinical-data.csv", COVID_HEADER, COVID_ROWS)
    for index, row in enumerate(COVID_ROWS):
        for k in range(2 + index):  # series of 2, 3, 4, 5 slices
            write_dicom(
                root / COVID_FOLDERS[row[1]] / row[2] / f"IM{k:04d}.dcm",
                PatientSex=row[3],
                InstanceNumber=k + 1,
            )
    return root


# --- ADNI (§2.9) --------------------------------------------------------------------------------------------
ADNI_HEADER = [
    "Image Data ID",
    "Subject",
    "Group",
    "Sex",
    "Age",
    "Visit",
    "Modality",
    "Description",
    "Type",
    "Acq Date",
    "Format",
    "Downloaded",
]
ADNI_ROWS = [
    [
        "I118671",
        "002_S_0295",
        "CN",
        "M",
        "85",
        "sc",
        "MRI",
        "MPR; GradWarp; B1 Correction; N3; Scaled",
        "Processed",
        "4/18/2006",
        "NiFTI",
        "2/20/2024",
    ],
    [
        "I118672",
        "002_S_0295",
        "CN",
        "M",
        "85",
        "sc",
        "MRI",
        "MPR-R; GradWarp; B1 Correction; N3; Scaled",
        "Processed",
        "4/18/2006",
        "NiFTI",
        "2/20/2024",
    ],
    [
        "I97327",
        "002_S_0619",
        "AD",
        "F",
        "56",
        "sc",
        "MRI",
        "MPR; GradWarp; B1 Correction; N3; Scaled",
        "Processed",
        "6/01/2006",
        "NiFTI",
        "2/20/2024",
    ],
    [
        "I40657",
        "002_S_0729",
        "MCI",
        "F",
        "66",
        "sc",
        "MRI",
        "MPR; GradWarp; N3; Scaled",
        "Processed",
        "7/17/2006",
        "NiFTI",
        "2/20/2024",
    ],
]


def write_nifti(
    path: Path,
    shape: tuple[int, ...] = (6, 6, 5),
    dtype: Any = np.int16,
    data: Any = None,
    affine: Any = None,
) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    array = RNG.integers(0, 100, shape).astype(dtype) if data is None else np.asarray(data, dtype=dtype)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else np.asarray(affine, float)), str(path))
    return path


def write_adni(root: Path) -> Path:
    write_csv(root / "ADNI1_Screening_1.5T_2_20_2024.csv", ADNI_HEADER, ADNI_ROWS)
    for row in ADNI_ROWS:
        description = row[7].replace("; ", "__").replace(" ", "_").replace("-", "_")
        write_nifti(
            root
            / "ADNI"
            / row[1]
            / description
            / "2006-04-18_08_20_30.0"
            / row[0]
            / f"ADNI_{row[1]}_MR_{description}_Br_{row[0]}.nii"
        )
    return root


# --- OL3I (§2.11) -------------------------------------------------------------------------------------------
OL3I_HEADER = ["anon_id", "label_1y", "set_1y", "label_5y", "set_5y", "sex", "age", "bmi"]
OL3I_ROWS = [
    ["a1b2c3", "0", "train", "0", "train", "Male", "64", "27.1"],
    ["d4e5f6", "1", "val", "1", "val", "Female", "59", "31.0"],
    ["g7h8i9", "0", "test", "1", "test", "Female", "", "22.4"],
]


def write_ol3i(root: Path) -> Path:
    import h5py

    write_csv(root / "clinical_data.csv", OL3I_HEADER, OL3I_ROWS)
    # A real HDF5 container of axial L3 slices (int16 Hounsfield-like values), one dataset per anon_id.
    with h5py.File(root / "l3_slices.h5", "w") as handle:
        for row in OL3I_ROWS:
            handle[row[0]] = RNG.integers(-1024, 1500, (10, 12)).astype(np.int16)
    return root


# --- Duke SD-OCT (§2.12) ------------------------------------------------------------------------------------
DUKE_FILES = [
    ("AMD", "Farsiu_Ophthalmology_2013_AMD_Subject_1001.mat", 81.0),
    ("AMD", "Farsiu_Ophthalmology_2013_AMD_Subject_1002.mat", 60.0),
    ("Control", "Farsiu_Ophthalmology_2013_Control_Subject_1001.mat", 55.5),
]


def write_duke_oct(root: Path) -> Path:
    from scipy.io import savemat

    for folder, name, age in DUKE_FILES:
        (root / folder).mkdir(parents=True, exist_ok=True)
        savemat(
            root / folder / name,
            {
                "images": RNG.integers(0, 255, (10, 12, 7)).astype(np.uint8),
                "Age": np.array([[age]]),
                "layerMaps": np.zeros((7, 12, 3)),
            },
        )
    return root


# --- TUSC (§3.3) --------------------------------------------------------------------------------------------
TUSC_META_HEADER = [
    "annot_id",
    "age",
    "sex",
    "location",
    "ti-rads_composition",
    "ti-rads_level",
    "histopath_diagnosis",
]
TUSC_META = [
    ["1_", "43", "Female", "r lobe", "solid", "4", "Benign"],
    ["2_", "67", "Male", "isthmus", "mixed", "5", "Malignant"],
    ["3_", "", "Female", "l lobe", "solid", "3", "Benign"],
]
TUSC_FRAMES = [("2_", 0), ("2_", 1), ("1_", 0), ("3_", 0), ("1_", 1), ("1_", 2)]  # interleaved on purpose


def write_tusc(root: Path, *, frames: Sequence[tuple[str, int]] = TUSC_FRAMES) -> Path:
    import h5py

    root.mkdir(parents=True, exist_ok=True)
    write_csv(root / "metadata.csv", TUSC_META_HEADER, TUSC_META)
    n = len(frames)
    with h5py.File(root / "dataset.hdf5", "w") as handle:
        handle["image"] = RNG.integers(0, 255, (n, 8, 8)).astype(np.uint8)
        mask = np.zeros((n, 8, 8), np.uint8)
        mask[:, 2:5, 2:5] = 255
        handle["mask"] = mask
        handle["annot_id"] = np.array([a.encode() for a, _ in frames], dtype="S8")
        handle["frame_num"] = np.array([f for _, f in frames], dtype=np.int64)
    return root


# --- Montgomery (§3.5) --------------------------------------------------------------------------------------
MONTGOMERY = [
    ("MCUCXR_0001_0", "M", "044Y"),
    ("MCUCXR_0002_0", "F", "060Y"),
    ("MCUCXR_0104_1", "F", "028Y"),
    ("MCUCXR_0108_1", "O", ""),
]


def write_montgomery(root: Path, cases: Sequence[tuple[str, str, str]] = MONTGOMERY) -> Path:
    base = root / "MontgomerySet"
    for stem, sex, age in cases:
        write_image(base / "CXR_png" / f"{stem}.png", mode="L")
        write_mask(base / "ManualMask" / "leftMask" / f"{stem}.png")
        write_mask(base / "ManualMask" / "rightMask" / f"{stem}.png")
        reading = base / "ClinicalReadings" / f"{stem}.txt"
        reading.parent.mkdir(parents=True, exist_ok=True)
        finding = "normal" if stem.endswith("_0") else "bilateral upper lobe infiltrates (TB)"
        reading.write_text(f"Patient's Sex: {sex}\nPatient's Age: {age}\n{finding}\n", encoding="utf-8")
    (base / "CXR_png" / "Thumbs.db").write_bytes(b"\0")
    return root


# --- KiTS23 (§3.6) ------------------------------------------------------------------------------------------
KITS_RECORDS = [  # deliberately not in case order, with a case (00001) that has no volume
    {"case_id": "case_00400", "gender": "female", "age_at_nephrectomy": 45, "bmi": 17.9, "malignant": False},
    {"case_id": "case_00001", "gender": "male", "age_at_nephrectomy": 70, "bmi": 30.0, "malignant": True},
    {"case_id": "case_00000", "gender": "male", "age_at_nephrectomy": 60, "bmi": 24.99, "malignant": True},
    {"case_id": "case_00002", "gender": "female", "age_at_nephrectomy": 31, "bmi": None, "malignant": True},
]
KITS_CASES = ("case_00000", "case_00002", "case_00400")


def write_kits23(root: Path, *, nnunet: bool = False) -> Path:
    import json

    base = root / "dataset"
    base.mkdir(parents=True, exist_ok=True)
    (base / "kits23.json").write_text(json.dumps(KITS_RECORDS), encoding="utf-8")
    for index, case in enumerate(KITS_CASES):
        shape = (3 + index, 8, 8)  # KiTS stores (slices, rows, columns) ...
        labels = np.zeros(shape, np.uint8)
        labels[1, 2:4, 2:4] = 1
        labels[1, 3, 3] = 2
        # ... with an affine that maps voxel axis 0 to the patient's z axis (3 mm slices, 0.8 mm pixels)
        affine = np.array([[0, 0, -0.8, 0], [0, -0.8, 0, 0], [-3.0, 0, 0, 0], [0, 0, 0, 1]])
        if nnunet:
            write_nifti(base / "imagesTr" / f"{case}_0000.nii.gz", shape, affine=affine)
            write_nifti(base / "labelsTr" / f"{case}.nii.gz", shape, np.uint8, labels, affine=affine)
        else:
            write_nifti(base / case / "imaging.nii.gz", shape, affine=affine)
            write_nifti(base / case / "segmentation.nii.gz", shape, np.uint8, labels, affine=affine)
    return root


# --- 3D-IRCADb (§3.7) ---------------------------------------------------------------------------------------
IRCADB = [(1, "F", "057Y", 3), (2, "M", "045Y", 2), (10, "", "", 2)]  # case 10: empty header fields


def write_ircadb(root: Path, *, zipped: Sequence[int] = (2,)) -> Path:
    import zipfile

    for number, sex, age, slices in IRCADB:
        case = root / "3Dircadb1" / f"3Dircadb1.{number}"
        for series in ("PATIENT_DICOM", "LABELLED_DICOM"):
            folder = case / series
            for k in range(slices):
                write_dicom(
                    folder / f"image_{k}",
                    PatientSex=sex,
                    PatientAge=age,
                    PatientID=f"3Dircadb1.{number}",
                    InstanceNumber=k + 1,
                )
            if number in zipped:
                with zipfile.ZipFile(case / f"{series}.zip", "w") as archive:
                    for file in sorted(folder.iterdir()):
                        archive.write(file, f"{series}/{file.name}")
                for file in folder.iterdir():
                    file.unlink()
                folder.rmdir()
        (case / "MASKS_DICOM" / "liver").mkdir(parents=True, exist_ok=True)
    return root


# --- CANDI (§3.8) -------------------------------------------------------------------------------------------
CANDI = {
    "HC": [("HC_001", "male", "10", "R"), ("HC_002", "Female", "7", "L")],
    "BPDwithPsy": [("BPDwPsy_031", "F", "14", "R")],
    "SS": [("SS_084", "M", "", "A")],
}


def write_candi(root: Path) -> Path:
    base = root / "SchizBull_2008"
    for cohort, subjects in CANDI.items():
        write_csv(
            base / f"{cohort}_Basic_Demographics.csv", ["Subject", "Gender", "Age", "Handedness"], subjects
        )
        for subject, *_ in subjects:
            write_nifti(base / cohort / subject / f"{subject}_procimg.nii.gz", (6, 6, 4))
            write_nifti(base / cohort / subject / f"{subject}_seg.nii.gz", (6, 6, 4), np.uint8)
    return root


# --- SPIDER (§3.9) ------------------------------------------------------------------------------------------
SPIDER_HEADER = ["new_file_name", "subset", "sex", "num_vertebrae", "num_discs"]
SPIDER_ROWS = [
    ["1_t1", "training", "F", "7", "7"],
    ["1_t2", "training", "F", "7", "7"],
    ["2_t2_SPACE", "training", "M", "6", "6"],
    ["3_t1", "validation", "M", "7", "7"],
]


def write_mha(path: Path, shape: tuple[int, int, int], dtype: Any = np.int16) -> Path:
    """A MetaImage file (text header + raw voxels), as SPIDER ships; DimSize lists x y z."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = RNG.integers(0, 100, shape[::-1]).astype(dtype)
    element = {np.dtype(np.int16): "MET_SHORT", np.dtype(np.uint8): "MET_UCHAR"}[np.dtype(dtype)]
    header = (
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        f"ElementSpacing = 0.9 0.9 3.3\nDimSize = {shape[0]} {shape[1]} {shape[2]}\nElementType = {element}\n"
        "ElementDataFile = LOCAL\n"
    )
    path.write_bytes(header.encode("ascii") + array.tobytes())
    return path


def write_spider(root: Path) -> Path:
    write_csv(root / "overview.csv", SPIDER_HEADER, SPIDER_ROWS)
    for index, row in enumerate(SPIDER_ROWS):
        write_mha(root / "images" / f"{row[0]}.mha", (8, 6, 3 + index))
        write_mha(root / "masks" / f"{row[0]}.mha", (8, 6, 3 + index), np.uint8)
    return root
