"""Miniature copies of the chest-X-ray releases in their real on-disk layout (DATASETS.md §2.1, 2.2, 2.13, 2.14,
2.17, §4.2): real file and folder names, real column names and value codes (including the odd ones), tiny
synthetic pixels. Also helpers that unpack torchxrayvision's real metadata tables into a release layout.

Every writer returns the dataset root to pass to the loader. Hand-written rows come first (their expected
harmonised values are asserted in the tests); seeded random patients follow, so splits have something to split.
"""

from __future__ import annotations

import gzip
import importlib.util
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fairfm.data.sources.chest import CHEXPERT_FINDINGS, NIH_FINDINGS

RACES_CHEXPERT = ["White", "White, non-Hispanic", "Asian", "Black or African American", "Asian, non-Hispanic",
                  "Black, non-Hispanic", "White, Hispanic", "Other", "Race and Ethnicity Unknown"]
ETHNICITIES_CHEXPERT = ["Non-Hispanic/Non-Latino", "Not Hispanic", "Hispanic/Latino", "Unknown"]


def tiny_jpeg(path: Path, value: int = 128, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, dtype=np.uint8)).save(path, format="JPEG")


def tiny_png(path: Path, value: int = 128, size: int = 8, bits16: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if bits16:
        Image.fromarray(np.full((size, size), value * 200, dtype=np.uint16)).save(path, format="PNG")
    else:
        Image.fromarray(np.full((size, size), value, dtype=np.uint8)).save(path, format="PNG")


def xrv_data(name: str) -> Path:
    """A real metadata table shipped in the torchxrayvision wheel (located without importing torch)."""
    spec = importlib.util.find_spec("torchxrayvision")
    assert spec is not None and spec.origin is not None, "torchxrayvision (data files) is a test dependency"
    path = Path(spec.origin).parent / "data" / name
    assert path.is_file(), f"torchxrayvision data file missing: {path}"
    return path


def gunzip_to(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(source, "rb") as src, target.open("wb") as dst:
        shutil.copyfileobj(src, dst)
    return target


# ---------------------------------------------------------------------------------------------------------------
# CheXpert

def _chexpert_row(path: str, sex: str, age: int, view: str, appa: str, labels: dict[str, float]) -> dict:
    row = {"Path": path, "Sex": sex, "Age": age, "Frontal/Lateral": view, "AP/PA": appa}
    row.update({finding: labels.get(finding, np.nan) for finding in CHEXPERT_FINDINGS})
    return row


CHEXPERT_FIXED = [
    _chexpert_row("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", "Female", 68, "Frontal", "AP",
                  {"No Finding": 1.0, "Pneumothorax": 0.0, "Support Devices": 1.0}),
    _chexpert_row("CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg", "Female", 87, "Frontal", "AP",
                  {"Cardiomegaly": -1.0, "Lung Opacity": 1.0, "Edema": -1.0, "Pleural Effusion": -1.0}),
    _chexpert_row("CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.jpg", "Female", 83, "Lateral", "",
                  {"Lung Opacity": 1.0, "Pleural Effusion": 1.0}),
    # Placeholder age 0 and the one "Unknown" sex of the real table (§7.10, §7.11).
    _chexpert_row("CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg", "Unknown", 0, "Frontal", "PA",
                  {"No Finding": 1.0}),
]
CHEXPERT_DEMO_FIXED = [
    {"PATIENT": "patient00001", "GENDER": "Female", "AGE_AT_CXR": "68", "PRIMARY_RACE": "White, non-Hispanic",
     "ETHNICITY": "Non-Hispanic/Non-Latino"},
    {"PATIENT": "patient00002", "GENDER": "Female", "AGE_AT_CXR": "87", "PRIMARY_RACE": "Other",
     "ETHNICITY": "Hispanic/Latino"},
    {"PATIENT": "patient00003", "GENDER": "Unknown", "AGE_AT_CXR": "", "PRIMARY_RACE": "Patient Refused",
     "ETHNICITY": "Patient Refused"},
]


def write_chexpert(tmp: Path, *, n_patients: int = 60, seed: int = 0, demo: str | None = "xlsx",
                   images: bool = True, valid: bool = True) -> Path:
    """``tmp/CheXpert-v1.0-small/{train,valid}.csv`` (+ images) and ``tmp/CHEXPERT DEMO.xlsx``; returns ``tmp``."""
    rng = np.random.default_rng(seed)
    release = Path(tmp) / "CheXpert-v1.0-small"
    rows = list(CHEXPERT_FIXED)
    demo_rows = list(CHEXPERT_DEMO_FIXED)
    for p in range(4, 4 + n_patients):
        sex = "Male" if rng.random() < 0.55 else "Female"
        age = int(rng.integers(18, 91))
        for study in range(1, int(rng.integers(1, 4)) + 1):
            labels = {f: float(rng.choice([1.0, 0.0, -1.0, np.nan], p=[0.25, 0.2, 0.1, 0.45]))
                      for f in CHEXPERT_FINDINGS[1:]}
            labels["No Finding"] = 1.0 if rng.random() < 0.3 else np.nan
            rows.append(_chexpert_row(f"CheXpert-v1.0-small/train/patient{p:05d}/study{study}/view1_frontal.jpg",
                                      sex, age + study - 1, "Frontal", str(rng.choice(["AP", "PA"])), labels))
        if p % 11 != 0:  # some patients have no demographics row → race unknown
            demo_rows.append({"PATIENT": f"patient{p:05d}", "GENDER": sex, "AGE_AT_CXR": str(age),
                              "PRIMARY_RACE": str(rng.choice(RACES_CHEXPERT)),
                              "ETHNICITY": str(rng.choice(ETHNICITIES_CHEXPERT))})
    release.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(release / "train.csv", index=False)
    all_rows = rows
    if valid:
        valid_rows = [
            _chexpert_row("CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg", "Male", 73, "Frontal",
                          "AP", {f: 0.0 for f in CHEXPERT_FINDINGS} | {"Cardiomegaly": 1.0}),
            _chexpert_row("CheXpert-v1.0-small/valid/patient64542/study1/view1_frontal.jpg", "Female", 70, "Frontal",
                          "PA", {f: 0.0 for f in CHEXPERT_FINDINGS} | {"No Finding": 1.0}),
        ]
        pd.DataFrame(valid_rows).to_csv(release / "valid.csv", index=False)
        all_rows = rows + valid_rows
    if demo == "xlsx":
        pd.DataFrame(demo_rows).to_excel(Path(tmp) / "CHEXPERT DEMO.xlsx", sheet_name="CheXpert Demo 11-13",
                                         index=False)
    elif demo == "csv":
        pd.DataFrame(demo_rows).to_csv(Path(tmp) / "CHEXPERT DEMO.csv", index=False)
    if images:
        for i, row in enumerate(all_rows):
            tiny_jpeg(Path(tmp) / row["Path"], value=i % 250)
    return Path(tmp)


# ---------------------------------------------------------------------------------------------------------------
# MIMIC-CXR-JPG + MIMIC-IV

MIMIC_PATIENTS_FIXED = [
    {"subject_id": 10000032, "gender": "F", "anchor_age": 52, "anchor_year": 2180, "anchor_year_group": "2014 - 2016", "dod": ""},
    {"subject_id": 10000764, "gender": "M", "anchor_age": 86, "anchor_year": 2132, "anchor_year_group": "2014 - 2016", "dod": ""},
    {"subject_id": 10000898, "gender": "F", "anchor_age": 60, "anchor_year": 2180, "anchor_year_group": "2011 - 2013", "dod": ""},
]
MIMIC_ADMISSIONS_FIXED = [
    # Two admissions for 10000032: the first (by admittime) is used.
    {"subject_id": 10000032, "hadm_id": 22595853, "admittime": "2180-05-06 22:23:00", "insurance": "Other",
     "language": "ENGLISH", "marital_status": "WIDOWED", "race": "WHITE"},
    {"subject_id": 10000032, "hadm_id": 22841357, "admittime": "2180-06-26 18:27:00", "insurance": "Medicaid",
     "language": "ENGLISH", "marital_status": "WIDOWED", "race": "BLACK/AFRICAN AMERICAN"},
    {"subject_id": 10000764, "hadm_id": 27897940, "admittime": "2132-10-14 23:31:00", "insurance": "Medicare",
     "language": "?", "marital_status": "", "race": "UNABLE TO OBTAIN"},
    {"subject_id": 10000898, "hadm_id": 26601431, "admittime": "2180-03-14 10:00:00", "insurance": "Other",
     "language": "ENGLISH", "marital_status": "MARRIED", "race": "HISPANIC/LATINO - PUERTO RICAN"},
]
MIMIC_RACES = ["WHITE", "BLACK/AFRICAN AMERICAN", "ASIAN - CHINESE", "WHITE - OTHER EUROPEAN", "OTHER", "UNKNOWN",
               "ASIAN"]


def write_mimic(tmp: Path, *, n_patients: int = 40, seed: int = 0, images: bool = True) -> Path:
    """``tmp/mimic-cxr-jpg/2.0.0/`` with the four CXR tables, ``files/`` and MIMIC-IV in ``hosp/``."""
    rng = np.random.default_rng(seed)
    root = Path(tmp) / "mimic-cxr-jpg" / "2.0.0"
    root.mkdir(parents=True, exist_ok=True)
    patients = list(MIMIC_PATIENTS_FIXED)
    admissions = list(MIMIC_ADMISSIONS_FIXED)
    for i in range(n_patients):
        subject = 11000000 + i * 7919
        patients.append({"subject_id": subject, "gender": str(rng.choice(["M", "F"])),
                         "anchor_age": int(rng.integers(18, 91)), "anchor_year": 2150,
                         "anchor_year_group": "2017 - 2019", "dod": ""})
        admissions.append({"subject_id": subject, "hadm_id": 20000000 + i, "admittime": "2150-01-01 00:00:00",
                           "insurance": str(rng.choice(["Medicare", "Medicaid", "Other"])),
                           "language": str(rng.choice(["ENGLISH", "?"])),
                           "marital_status": str(rng.choice(["MARRIED", "SINGLE", "DIVORCED", ""])),
                           "race": str(rng.choice(MIMIC_RACES))})
    metadata, labels, splits = [], [], []
    study = 50000000
    for p in patients:
        for _ in range(int(rng.integers(1, 3))):
            study += 1
            label_row = {"subject_id": p["subject_id"], "study_id": study}
            label_row.update({f: float(rng.choice([1.0, 0.0, -1.0, np.nan], p=[0.25, 0.2, 0.1, 0.45]))
                              for f in CHEXPERT_FINDINGS})
            labels.append(label_row)
            for view in ("PA", "LATERAL"):
                dicom = f"{rng.integers(0, 16**8):08x}-{study}-{view.lower()}"
                metadata.append({"dicom_id": dicom, "subject_id": p["subject_id"], "study_id": study,
                                 "PerformedProcedureStepDescription": "CHEST (PA AND LAT)", "ViewPosition": view,
                                 "Rows": 3056, "Columns": 2544, "StudyDate": 21800506, "StudyTime": 213014.531})
                splits.append({"dicom_id": dicom, "study_id": study, "subject_id": p["subject_id"],
                               "split": {0: "test", 1: "validate"}.get(p["subject_id"] % 5, "train")})
    # One study with images but no CheXpert-labeller row: its labels are unknown, not negative.
    study += 1
    metadata.append({"dicom_id": "nolabels-dicom", "subject_id": 10000032, "study_id": study,
                     "PerformedProcedureStepDescription": "CHEST (PORTABLE AP)", "ViewPosition": "AP", "Rows": 3056,
                     "Columns": 2544, "StudyDate": 21800507, "StudyTime": 1.0})
    splits.append({"dicom_id": "nolabels-dicom", "study_id": study, "subject_id": 10000032, "split": "train"})
    pd.DataFrame(metadata).to_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    pd.DataFrame(labels).to_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", index=False)
    pd.DataFrame(splits).to_csv(root / "mimic-cxr-2.0.0-split.csv.gz", index=False)
    (root / "hosp").mkdir(exist_ok=True)
    pd.DataFrame(patients).to_csv(root / "hosp" / "patients.csv.gz", index=False)
    pd.DataFrame(admissions).to_csv(root / "hosp" / "admissions.csv.gz", index=False)
    if images:
        for row in metadata:
            s = str(row["subject_id"])
            tiny_jpeg(root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{row['study_id']}" / f"{row['dicom_id']}.jpg")
    return root


# ---------------------------------------------------------------------------------------------------------------
# NIH ChestX-ray14

NIH_FIXED = [
    # name, findings, follow-up, patient, age, sex, view
    ("00000001_000.png", "Cardiomegaly", 0, 1, 57, "M", "PA"),
    ("00000001_001.png", "Cardiomegaly|Emphysema", 1, 1, 58, "M", "PA"),
    ("00000003_000.png", "Hernia", 7, 3, 81, "F", "PA"),
    ("00000004_000.png", "Mass|Nodule", 0, 4, 0, "M", "AP"),        # age 0 → missing
    ("00000005_000.png", "No Finding", 0, 5, 414, "F", "PA"),       # 2017-table impossible age → missing
    ("00000006_000.png", "Pleural_Thickening|Infiltration", 0, 6, 61, "F", "AP"),
]


def write_nih(tmp: Path, *, n_patients: int = 40, seed: int = 0, header: str = "v2020", images: bool = True,
              missing: tuple[str, ...] = ()) -> Path:
    """``Data_Entry_2017_v2020.csv`` (``header``: "v2020" = torchxrayvision/Kaggle header with ``Patient Gender``;
    "nih_site" = ``Patient Sex`` and a trailing comma on every line), the official lists, and images in the Kaggle
    layout ``images_00N/images/``. File names in ``missing`` are not written (for ``check``)."""
    rng = np.random.default_rng(seed)
    root = Path(tmp)
    root.mkdir(parents=True, exist_ok=True)
    rows = list(NIH_FIXED)
    for p in range(10, 10 + n_patients):
        for k in range(int(rng.integers(1, 4))):
            chosen = [f for f in NIH_FINDINGS if rng.random() < 0.12]
            rows.append((f"{p:08d}_{k:03d}.png", "|".join(chosen) or "No Finding", k, p, int(rng.integers(5, 95)),
                         str(rng.choice(["M", "F"])), str(rng.choice(["PA", "AP"]))))
    sex_header = "Patient Sex" if header == "nih_site" else "Patient Gender"
    columns = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", sex_header,
               "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]
    lines = [",".join(columns) + ("," if header == "nih_site" else "")]
    for r in rows:
        lines.append(",".join(map(str, [*r, 2500, 2048, 0.168, 0.168])) + ("," if header == "nih_site" else ""))
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    patients = sorted({r[3] for r in rows})
    test_patients = {p for p in patients if p % 4 == 0}
    (root / "train_val_list.txt").write_text("\n".join(r[0] for r in rows if r[3] not in test_patients) + "\n")
    (root / "test_list.txt").write_text("\n".join(r[0] for r in rows if r[3] in test_patients) + "\n")
    if images:
        for i, r in enumerate(rows):
            if r[0] in missing:
                continue
            folder = "images_001" if i % 2 == 0 else "images_002"
            tiny_png(root / folder / "images" / r[0], value=i % 250)
    return root


# ---------------------------------------------------------------------------------------------------------------
# PadChest

PADCHEST_COLUMNS = [
    "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
    "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric", "Modality_DICOM", "Manufacturer_DICOM",
    "PhotometricInterpretation_DICOM", "PixelRepresentation_DICOM", "PixelAspectRatio_DICOM",
    "SpatialResolution_DICOM", "BitsStored_DICOM", "WindowCenter_DICOM", "WindowWidth_DICOM", "Rows_DICOM",
    "Columns_DICOM", "XRayTubeCurrent_DICOM", "Exposure_DICOM", "ExposureInuAs_DICOM", "ExposureTime",
    "RelativeXRayExposure_DICOM", "ReportID", "Report", "MethodLabel", "Labels", "Localizations",
    "LabelsLocalizationsBySentence", "labelCUIS", "LocalizationsCUIS",
]
BIG_PATIENT = "216840111366964012819207061112010307142602253"  # overflows int64: must stay a string
PADCHEST_FIXED = [
    # ImageID, ImageDir, StudyDate, StudyID, PatientID, PatientBirth, Sex, Projection, Labels
    (f"{BIG_PATIENT}_04-014-084.png", 0, 20150120, "20536686640136348236148679891455886468", BIG_PATIENT, 1939.0,
     "M", "PA", "['pleural effusion', 'cardiomegaly']"),
    ("20536686640136348236148679891455886468_k6ga29.png", 54, 20150120, "20536686640136348236148679891455886468",
     BIG_PATIENT, 1939.0, "M", "L", "['pleural effusion', 'cardiomegaly']"),
    ("135803415504923515076821959678074435083_fzis7b.png", 6, 20090501, "135803415504923515076821959678074435083",
     "113855343774216031107737439268243531979", 1929.0, "F", "AP_horizontal", "['normal']"),
    # Empty label list: unknown labels, not normal. Sex "O" → unknown. Birth year missing → age unknown.
    ("113855343774216031107737439268243531979_3k951l.png", 7, 20170101, "1138553437742160311077374392682435319",
     "987654321987654321987654321987654321", np.nan, "O", "PA", "[]"),
    # 'pleural effusion' must not make 'effusion'-substring tasks positive; 'nodule' vs 'pseudonodule'.
    ("222_aaa.png", 1, 20120303, "222", "3333333333333333333333333333333", 1990.0, "F", "PA", "['pseudonodule']"),
]


def write_padchest(tmp: Path, *, n_patients: int = 30, seed: int = 0, images: bool = True) -> Path:
    """The 36-column CSV (with an unnamed index and a quoted field with line breaks) and numbered image folders."""
    rng = np.random.default_rng(seed)
    root = Path(tmp)
    root.mkdir(parents=True, exist_ok=True)
    rows = list(PADCHEST_FIXED)
    terms = ["normal", "pleural effusion", "cardiomegaly", "pneumonia", "nodule", "atelectasis", "scoliosis"]
    for p in range(n_patients):
        pid = f"{rng.integers(10**17, 10**18)}{rng.integers(10**17, 10**18)}"
        birth = float(rng.integers(1920, 2005))
        for k in range(int(rng.integers(1, 3))):
            study = f"{pid}{k}"
            chosen = [t for t in terms[1:] if rng.random() < 0.2] or ["normal"]
            rows.append((f"{study}_{k}x{p}.png", int(rng.integers(0, 5)), int(20100101 + 10000 * int(rng.integers(0, 7)))
                         , study, pid, birth, str(rng.choice(["M", "F"])), str(rng.choice(["PA", "L", "AP"])),
                         str(chosen)))
    records = []
    for r in rows:
        record = {c: "" for c in PADCHEST_COLUMNS}
        record.update({"ImageID": r[0], "ImageDir": r[1], "StudyDate_DICOM": r[2], "StudyID": r[3], "PatientID": r[4],
                       "PatientBirth": r[5], "PatientSex_DICOM": r[6] if r[6] else np.nan, "Projection": r[7],
                       "Labels": r[8], "BitsStored_DICOM": 12, "MethodLabel": "Physician",
                       "labelCUIS": "C0032227 C0018800\nC0018800"})  # a line break inside a quoted field
        records.append(record)
    frame = pd.DataFrame(records, columns=PADCHEST_COLUMNS)
    frame.to_csv(root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", index=True)  # unnamed index column
    if images:
        for i, r in enumerate(rows):
            tiny_png(root / str(r[1]) / r[0], value=i % 250, bits16=True)
    return root


# ---------------------------------------------------------------------------------------------------------------
# RSNA Pneumonia

RSNA_FIXED = [
    # patientId, sex, age string, view, boxes (x, y, w, h) or None
    ("0004cfab-14fd-4e49-80ba-63a80b6bddd6", "F", "51", "PA", None),
    ("00436515-870c-4b36-a041-de91049b9ab4", "F", "048Y", "AP", [(264, 152, 213, 379), (562, 152, 256, 453)]),
    ("00704310-78a8-4b38-8475-49f4573b2dbb", "M", "155", "AP", [(323, 577, 160, 104)]),  # impossible age → missing
    ("00a85be6-6eb0-421d-8acf-ff2dc0007e8a", "M", "62", "PA", None),
]


def write_dicom(path: Path, *, sex: str, age: str, view: str, size: int = 8, value: int = 100) -> None:
    """A minimal valid CR DICOM (explicit VR little endian) with the header fields RSNA ships."""
    from pydicom import config as dicom_config
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = path.stem
    ds.PatientSex = sex
    ds.ViewPosition = view
    ds.Modality = "CR"
    ds.BodyPartExamined = "CHEST"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.full((size, size), value, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    # RSNA's real ages ("51") are not the strict AS form ("051Y"): write them as released, without validation.
    settings = dicom_config.settings
    previous = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = settings.writing_validation_mode = dicom_config.IGNORE
    try:
        ds.PatientAge = age
        ds.save_as(path, enforce_file_format=True)
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = previous


def write_rsna(tmp: Path, *, n_images: int = 30, seed: int = 0, header_table: bool = False) -> Path:
    """``stage_2_train_labels.csv`` (one row per box, or one empty-box row), ``stage_2_detailed_class_info.csv``
    and one DICOM per image in ``stage_2_train_images/``."""
    rng = np.random.default_rng(seed)
    root = Path(tmp)
    images = list(RSNA_FIXED)
    for i in range(n_images):
        boxes = [(100, 100, 50, 60)] * int(rng.integers(1, 3)) if rng.random() < 0.3 else None
        images.append((f"{i:08x}-0000-4000-8000-{i:012x}", str(rng.choice(["M", "F"])), str(int(rng.integers(5, 90))),
                       str(rng.choice(["PA", "AP"])), boxes))
    labels, classes, headers = [], [], []
    for pid, sex, age, view, boxes in images:
        if boxes:
            for x, y, w, h in boxes:
                labels.append({"patientId": pid, "x": x, "y": y, "width": w, "height": h, "Target": 1})
                classes.append({"patientId": pid, "class": "Lung Opacity"})
        else:
            labels.append({"patientId": pid, "x": np.nan, "y": np.nan, "width": np.nan, "height": np.nan, "Target": 0})
            classes.append({"patientId": pid, "class": "Normal"})
        headers.append({"BodyPartExamined": "CHEST", "ConversionType": "WSD", "Filename": f"{pid}.dcm",
                        "InstanceNumber": 1.0, "Modality": "CR", "PatientAge": age, "PatientID": pid,
                        "PatientOrientation": np.nan, "PatientSex": sex, "PixelSpacing": 0.168,
                        "SamplesPerPixel": 1.0, "SeriesNumber": 1.0, "ViewPosition": view})
        write_dicom(root / "stage_2_train_images" / f"{pid}.dcm", sex=sex, age=age, view=view)
    pd.DataFrame(labels).to_csv(root / "stage_2_train_labels.csv", index=False)
    pd.DataFrame(classes).to_csv(root / "stage_2_detailed_class_info.csv", index=False)
    if header_table:
        pd.DataFrame(headers).to_csv(root / "stage_2_train_images_dicom_headers.csv")
    return root


# ---------------------------------------------------------------------------------------------------------------
# FairFedMed-Chest

def write_fairfedmed_chest(tmp: Path, *, n_per_site: int = 40, seed: int = 0, images: bool = True) -> Path:
    """``fedchexmimic/`` with ``meta_{site}_{age|gender|race}_{train|test}.csv`` and the JPEGs they name."""
    rng = np.random.default_rng(seed)
    root = Path(tmp) / "fedchexmimic"
    root.mkdir(parents=True, exist_ok=True)
    for site, folder in (("chexpert", "CheXpert-v1.0"), ("mimic", "mimic")):
        rows = []
        for i in range(n_per_site):
            if site == "chexpert":
                filename = f"train/patient{i // 2 + 1:05d}/study{i % 2 + 1}/view1_frontal.jpg"
            else:
                subject = 10000000 + i // 2
                filename = f"files/p{str(subject)[:2]}/p{subject}/s{50000000 + i}/img{i}.jpg"
            rows.append({"filename": filename, "disease_label": int(rng.random() < 0.4),
                         "race_label": int(rng.integers(0, 3)), "gender_label": int(rng.integers(0, 2)),
                         "age_label": int(rng.integers(0, 2))})
        frame = pd.DataFrame(rows)
        patient = frame["filename"].str.extract(r"(patient\d+|p\d{8})", expand=False)
        test_patients = set(sorted(patient.unique())[::5])
        is_test = patient.isin(test_patients)
        for partition in ("age", "gender", "race"):
            frame.to_csv(root / f"meta_{site}_{partition}.csv")
            frame[~is_test].to_csv(root / f"meta_{site}_{partition}_train.csv")
            frame[is_test].to_csv(root / f"meta_{site}_{partition}_test.csv")
        if images:
            for i, name in enumerate(frame["filename"]):
                tiny_jpeg(root / folder / name, value=i % 250)
    return root


# ---------------------------------------------------------------------------------------------------------------
# Real tables from torchxrayvision, unpacked into the release layout

def real_chexpert(tmp: Path) -> Path:
    gunzip_to(xrv_data("chexpert_train.csv.gz"), Path(tmp) / "CheXpert-v1.0-small" / "train.csv")
    return Path(tmp)


def real_nih(tmp: Path) -> Path:
    gunzip_to(xrv_data("Data_Entry_2017_v2020.csv.gz"), Path(tmp) / "Data_Entry_2017_v2020.csv")
    return Path(tmp)


def real_padchest(tmp: Path) -> Path:
    name = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
    gunzip_to(xrv_data(name + ".gz"), Path(tmp) / name)
    return Path(tmp)


def real_rsna(tmp: Path) -> Path:
    with zipfile.ZipFile(xrv_data("kaggle_stage_2_train_labels.csv.zip")) as archive:
        archive.extract("stage_2_train_labels.csv", Path(tmp))
    gunzip_to(xrv_data("kaggle_stage_2_train_images_dicom_headers.csv.gz"),
              Path(tmp) / "stage_2_train_images_dicom_headers.csv")
    return Path(tmp)
