"""Chest X-ray releases: CheXpert, MIMIC-CXR-JPG, NIH ChestX-ray14, PadChest, RSNA Pneumonia, FairFedMed-Chest.

Each source reads the release exactly as downloaded (DATASETS.md §2.1, 2.2, 2.13, 2.14, 2.17, §4.2) and returns a
SampleTable. The reference bugs of §7 are avoided explicitly: unknown sex/race stay unknown (never female /
non-White), age 0 and impossible ages are missing, labels are parsed from lists (never substring tests), and the
demographics join is per patient, not an ``isin`` over a column.
"""

from __future__ import annotations

import ast
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from fairfm.data.attributes import (
    ETHNICITY_CHEXPERT,
    LANGUAGE_MIMIC,
    MARITAL_MIMIC,
    RACE,
    RACE_CHEXPERT,
    RACE_MIMIC,
    SEX,
    age_groups,
    clean_age,
    harmonise,
)
from fairfm.data.registry import BOOLEAN, DatasetCard, DatasetSource, register_dataset
from fairfm.errors import InputError

#: The 14 CheXpert / MIMIC-CXR (CheXpert labeller) observations, in release column order.
CHEXPERT_FINDINGS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
)
#: NIH ChestX-ray14 findings as spelled in ``Finding Labels`` (§2.13).
NIH_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
    "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
)
#: PadChest findings turned into tasks by default (the common ones; ``findings=all`` keeps every term).
PADCHEST_FINDINGS = (
    "normal", "pleural effusion", "cardiomegaly", "pneumonia", "atelectasis", "nodule", "mass", "consolidation",
    "infiltrates", "emphysema", "pneumothorax", "fracture", "hernia", "copd signs", "scoliosis", "aortic elongation",
)
UNCERTAIN_POLICIES = ("zeros", "ones", "ignore")


def task_name(finding: str) -> str:
    """``"Pleural Effusion"`` → ``"pleural_effusion"`` (the ``label_<task>`` suffix)."""
    return re.sub(r"[^0-9a-z]+", "_", finding.strip().lower()).strip("_")


def _sex_age(frame: pd.DataFrame, sex: pd.Series, age: pd.Series, *, source: str) -> None:
    frame["attr_sex"] = sex.to_numpy()
    frame["group_sex"] = harmonise(pd.Series(sex.to_numpy(), index=frame.index), SEX, attribute="sex",
                                   source=source).to_numpy()
    frame["attr_age"] = age.to_numpy()
    frame["group_age"] = age_groups(frame["attr_age"]).to_numpy()


def chexpert_labels(values: pd.Series, uncertain: str, *, column: str, source: str) -> np.ndarray:
    """CheXpert-labeller codes → 0/1/NaN: 1 positive, 0 negative, blank (not mentioned) negative, −1 uncertain
    → 0 (``zeros``, FairMedFM/Glocker), 1 (``ones``) or NaN (``ignore``)."""
    numeric = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    bad = ~np.isnan(numeric) & ~np.isin(numeric, (-1.0, 0.0, 1.0))
    bad |= np.isnan(numeric) & values.notna().to_numpy() & (values.astype("string").str.strip() != "").fillna(False).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"{source}: column '{column}', row {row}: label {values.iloc[row]!r} is not 1, 0, -1 or blank")
    out = np.where(np.isnan(numeric), 0.0, numeric)
    out[numeric == -1] = {"zeros": 0.0, "ones": 1.0, "ignore": np.nan}[uncertain]
    return out


def _uncertain_option(options: dict[str, Any], name: str) -> str:
    policy = str(options.get("uncertain", "zeros")).lower()
    if policy not in UNCERTAIN_POLICIES:
        raise InputError(f"{name}: option uncertain={policy!r}; expected one of {', '.join(UNCERTAIN_POLICIES)}")
    return policy


def _find_first(root: Path, candidates: list[str]) -> Path | None:
    for candidate in candidates:
        path = root / candidate
        if path.is_file():
            return path
    return None


def _read_csv(path: Path, **kwargs: Any) -> pd.DataFrame:
    try:
        return pd.read_csv(path, low_memory=False, **kwargs)
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError, EOFError, zlib.error,
            zipfile.BadZipFile) as exc:  # compressed tables (.csv.gz, .zip) fail with EOFError / BadZipFile
        raise InputError(f"{path}: cannot be read as CSV ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def _require_columns(frame: pd.DataFrame, columns: list[str] | tuple[str, ...], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")


# ---------------------------------------------------------------------------------------------------------------
# CheXpert


@register_dataset("chexpert")
class CheXpert(DatasetSource):
    """CheXpert v1.0 (small or full): ``train.csv`` (+ ``valid.csv``), race/ethnicity from ``CHEXPERT DEMO.xlsx``.

    ``root`` is the folder holding ``CheXpert-v1.0-small/`` (or ``CheXpert-v1.0/``), or that folder itself.
    Options: ``uncertain`` = zeros | ones | ignore (−1 labels); ``frontal_only`` (default false); ``demo`` = path of
    the demographics sheet (default: ``CHEXPERT DEMO.xlsx``/``.csv`` in root or in the release folder).
    """

    option_values: ClassVar[dict[str, tuple[str, ...] | None]] = {"uncertain": UNCERTAIN_POLICIES, "frontal_only": BOOLEAN, "demo": None}
    card = DatasetCard(
        name="chexpert",
        title="CheXpert v1.0",
        modality="chest X-ray",
        dims=2,
        task_type="classification",
        tasks=tuple(task_name(f) for f in CHEXPERT_FINDINGS),
        attributes=("sex", "age", "race", "ethnicity"),
        access="Stanford AIMI research use agreement (registration)",
        reference="Irvin et al., AAAI 2019; demographics: Stanford AIMI CHEXPERT DEMO",
        official_split=True,
        notes=(
            "race/ethnicity only when CHEXPERT DEMO.xlsx is present (reading .xlsx needs openpyxl)",
            "age 0 is a placeholder → missing; uncertain (-1) labels per option uncertain=zeros|ones|ignore",
            "split_official: train.csv → train, valid.csv → val (the test set is not public)",
            "source_index = row of train.csv, for the Gichoya/Glocker chexpert_split_2021_08_20.csv split file",
        ),
    )
    RELEASES = ("CheXpert-v1.0-small", "CheXpert-v1.0")
    DEMO_NAMES = ("CHEXPERT DEMO.xlsx", "CHEXPERT DEMO.csv")

    def _layout(self, root: Path) -> tuple[Path, str]:
        """(release folder, prefix to strip from ``Path`` so that paths are relative to ``root``)."""
        root = Path(root)
        for release in self.RELEASES:
            if (root / release / "train.csv").is_file():
                return root / release, ""
        if (root / "train.csv").is_file():
            return root, f"{root.name}/"
        looked = ", ".join(str(root / r / "train.csv") for r in self.RELEASES)
        raise InputError(f"chexpert: expected release file not found: {looked} (or {root / 'train.csv'})")

    def _demo_path(self, root: Path, release: Path) -> Path | None:
        if self.options.get("demo"):
            path = Path(str(self.options["demo"]))
            if not path.is_file():
                raise InputError(f"chexpert: demographics file not found: {path}")
            return path
        for folder in (Path(root), release):
            found = _find_first(folder, list(self.DEMO_NAMES))
            if found is not None:
                return found
        return None

    def source_files(self, root: Path) -> list[Path]:
        release, _ = self._layout(root)
        files = [release / "train.csv"]
        if (release / "valid.csv").is_file():
            files.append(release / "valid.csv")
        demo = self._demo_path(root, release)
        if demo is not None:
            files.append(demo)
        return files

    def _read_demo(self, path: Path) -> pd.DataFrame:
        if path.suffix.lower() == ".xlsx":
            try:
                demo = pd.read_excel(path, sheet_name=0, dtype=str)
            except ImportError as exc:
                raise InputError(f"{path}: reading .xlsx needs openpyxl (pip install openpyxl) — {exc}") from None
            except (ValueError, OSError, KeyError, zipfile.BadZipFile) as exc:  # .xlsx is a zip of XML parts
                raise InputError(f"{path}: cannot be read as a spreadsheet ({type(exc).__name__}: {exc})") from None
        else:
            demo = _read_csv(path, dtype=str)
        _require_columns(demo, ["PATIENT", "PRIMARY_RACE", "ETHNICITY"], path)
        demo["PATIENT"] = demo["PATIENT"].str.strip()
        dup = demo["PATIENT"].duplicated()
        if dup.any():
            row = int(np.flatnonzero(dup.to_numpy())[0])
            raise InputError(f"{path}: column 'PATIENT', row {row}: patient {demo['PATIENT'].iloc[row]!r} listed twice")
        return demo.set_index("PATIENT")

    def load(self, root: Path) -> pd.DataFrame:
        uncertain = _uncertain_option(self.options, "chexpert")
        release, prefix = self._layout(root)
        parts = []
        for name, split in (("train.csv", "train"), ("valid.csv", "val")):
            path = release / name
            if not path.is_file():
                if name == "train.csv":
                    raise InputError(f"chexpert: expected release file not found: {path}")
                continue
            raw = _read_csv(path, dtype={"Path": str, "Sex": str})
            _require_columns(raw, ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_FINDINGS], path)
            paths = raw["Path"].astype(str)
            if prefix:
                paths = paths.str.removeprefix(prefix)
            frame = pd.DataFrame({"sample_id": paths.to_numpy(), "path": paths.to_numpy()})
            patient = raw["Path"].str.extract(r"(patient\d+)", expand=False)
            if patient.isna().any():
                row = int(np.flatnonzero(patient.isna().to_numpy())[0])
                raise InputError(f"{path}: column 'Path', row {row}: no patient id in {raw['Path'].iloc[row]!r}")
            frame["patient_id"] = patient.to_numpy()
            for finding in CHEXPERT_FINDINGS:
                frame[f"label_{task_name(finding)}"] = chexpert_labels(raw[finding], uncertain, column=finding,
                                                                       source=str(path))
            _sex_age(frame, raw["Sex"], clean_age(raw["Age"], source=str(path), zero_is_missing=True),
                     source=str(path))
            frame["view"] = raw["Frontal/Lateral"].to_numpy()
            frame["ap_pa"] = raw["AP/PA"].to_numpy()
            frame["split_official"] = split
            frame["source_index"] = np.arange(len(raw)) if split == "train" else -1
            parts.append(frame)
        frame = pd.concat(parts, ignore_index=True)
        if str(self.options.get("frontal_only", "false")).lower() in ("1", "true", "yes"):
            frame = frame[frame["view"] == "Frontal"].reset_index(drop=True)
        demo_path = self._demo_path(root, release)
        if demo_path is not None:
            demo = self._read_demo(demo_path)
            race_raw = frame["patient_id"].map(demo["PRIMARY_RACE"])
            ethnicity_raw = frame["patient_id"].map(demo["ETHNICITY"])
            frame["attr_race"] = race_raw.to_numpy()
            frame["group_race"] = harmonise(race_raw, RACE_CHEXPERT, attribute="race", source=str(demo_path)).to_numpy()
            frame["attr_ethnicity"] = ethnicity_raw.to_numpy()
            frame["group_ethnicity"] = harmonise(ethnicity_raw, ETHNICITY_CHEXPERT, attribute="ethnicity",
                                                 source=str(demo_path)).to_numpy()
        return frame


# ---------------------------------------------------------------------------------------------------------------
# MIMIC-CXR-JPG


@register_dataset("mimic_cxr")
class MimicCXR(DatasetSource):
    """MIMIC-CXR-JPG 2.0.0 with MIMIC-IV ``patients`` (sex, anchor age) and ``admissions`` (race, language,
    marital status, insurance; first admission per subject).

    ``root`` is the MIMIC-CXR-JPG version folder (``mimic-cxr-2.0.0-*.csv.gz`` and ``files/``). MIMIC-IV tables are
    looked for in option ``mimic_iv`` (a folder), then ``root``, ``root/hosp``, ``root/mimic-iv/hosp``.
    """

    option_values: ClassVar[dict[str, tuple[str, ...] | None]] = {"uncertain": UNCERTAIN_POLICIES, "mimic_iv": None}
    card = DatasetCard(
        name="mimic_cxr",
        title="MIMIC-CXR-JPG 2.0.0",
        modality="chest X-ray",
        dims=2,
        task_type="classification",
        tasks=tuple(task_name(f) for f in CHEXPERT_FINDINGS),
        attributes=("sex", "age", "race", "language", "marital", "insurance"),
        access="PhysioNet credentialed access (MIMIC-CXR-JPG and MIMIC-IV data use agreements)",
        reference="Johnson et al., Sci Data 2019; MIMIC-IV (Johnson et al., Sci Data 2023)",
        official_split=True,
        notes=("age is MIMIC-IV anchor_age (age in the anchor year), not the age at the study",
               "race/language/marital/insurance from the subject's first admission (by admittime)"),
    )
    TABLES = {
        "metadata": ("mimic-cxr-2.0.0-metadata.csv.gz", "mimic-cxr-2.0.0-metadata.csv"),
        "chexpert": ("mimic-cxr-2.0.0-chexpert.csv.gz", "mimic-cxr-2.0.0-chexpert.csv"),
        "split": ("mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-split.csv"),
    }

    def _table(self, root: Path, key: str, required: bool = True) -> Path | None:
        found = _find_first(Path(root), list(self.TABLES[key]))
        if found is None and required:
            raise InputError(f"mimic_cxr: expected release file not found: {Path(root) / self.TABLES[key][0]}")
        return found

    def _mimic_iv(self, root: Path, name: str) -> Path:
        folders = [Path(str(self.options["mimic_iv"]))] if self.options.get("mimic_iv") else []
        folders += [Path(root), Path(root) / "hosp", Path(root) / "mimic-iv" / "hosp"]
        for folder in folders:
            found = _find_first(folder, [f"{name}.csv.gz", f"{name}.csv"])
            if found is not None:
                return found
        looked = ", ".join(str(f / f"{name}.csv.gz") for f in folders)
        raise InputError(f"mimic_cxr: MIMIC-IV table not found; looked for {looked} (set --option mimic_iv=DIR)")

    def source_files(self, root: Path) -> list[Path]:
        files = [self._table(root, "metadata"), self._table(root, "chexpert")]
        split = self._table(root, "split", required=False)
        files += [split] if split is not None else []
        return [f for f in files if f is not None] + [self._mimic_iv(root, "patients"), self._mimic_iv(root, "admissions")]

    def load(self, root: Path) -> pd.DataFrame:
        uncertain = _uncertain_option(self.options, "mimic_cxr")
        meta_path = self._table(root, "metadata")
        meta = _read_csv(meta_path, dtype={"dicom_id": str})
        _require_columns(meta, ["dicom_id", "subject_id", "study_id"], meta_path)
        labels_path = self._table(root, "chexpert")
        labels = _read_csv(labels_path)
        _require_columns(labels, ["subject_id", "study_id", *CHEXPERT_FINDINGS], labels_path)
        frame = meta[["dicom_id", "subject_id", "study_id"] + (["ViewPosition"] if "ViewPosition" in meta else [])]
        frame = frame.merge(labels, on=["subject_id", "study_id"], how="left", validate="many_to_one")
        subject = frame["subject_id"].astype("int64").astype(str)
        study = frame["study_id"].astype("int64").astype(str)
        out = pd.DataFrame({"sample_id": frame["dicom_id"].to_numpy()})
        out["patient_id"] = subject.to_numpy()
        out["path"] = ("files/p" + subject.str[:2] + "/p" + subject + "/s" + study + "/" + frame["dicom_id"] + ".jpg").to_numpy()
        out["study_id"] = study.to_numpy()
        for finding in CHEXPERT_FINDINGS:
            values = chexpert_labels(frame[finding], uncertain, column=finding, source=str(labels_path))
            # Studies without a CheXpert-labeller row have no labels at all: unknown, not negative.
            values[~(frame["study_id"].isin(labels["study_id"]).to_numpy())] = np.nan
            out[f"label_{task_name(finding)}"] = values
        if "ViewPosition" in frame:
            out["view"] = frame["ViewPosition"].to_numpy()

        patients_path = self._mimic_iv(root, "patients")
        patients = _read_csv(patients_path)
        _require_columns(patients, ["subject_id", "gender", "anchor_age"], patients_path)
        patients = patients.drop_duplicates("subject_id").set_index("subject_id")
        sid = frame["subject_id"].astype("int64")
        sex = sid.map(patients["gender"])
        age = clean_age(sid.map(patients["anchor_age"]), source=str(patients_path))
        _sex_age(out, sex, age, source=str(patients_path))

        admissions_path = self._mimic_iv(root, "admissions")
        admissions = _read_csv(admissions_path)
        race_column = "race" if "race" in admissions.columns else "ethnicity"  # MIMIC-IV 1.0 called it ethnicity
        _require_columns(admissions, ["subject_id", race_column], admissions_path)
        if "admittime" in admissions.columns:
            admissions = admissions.sort_values(["subject_id", "admittime"], kind="stable")
        first = admissions.drop_duplicates("subject_id").set_index("subject_id")
        maps = {"race": (race_column, RACE_MIMIC), "language": ("language", LANGUAGE_MIMIC),
                "marital": ("marital_status", MARITAL_MIMIC)}
        for name, (column, mapping) in maps.items():
            if column not in first.columns:
                continue
            raw = sid.map(first[column])
            out[f"attr_{name}"] = raw.to_numpy()
            out[f"group_{name}"] = harmonise(raw, mapping, attribute=name, source=str(admissions_path)).to_numpy()
        if "insurance" in first.columns:
            raw = sid.map(first["insurance"])
            out["attr_insurance"] = raw.to_numpy()
            out["group_insurance"] = harmonise(raw, {"medicare": "Medicare", "medicaid": "Medicaid", "other": "Other",
                                                     "private": "Private", "no charge": "No charge"},
                                               attribute="insurance", source=str(admissions_path)).to_numpy()

        split_path = self._table(root, "split", required=False)
        if split_path is not None:
            split = _read_csv(split_path, dtype={"dicom_id": str})
            _require_columns(split, ["dicom_id", "split"], split_path)
            out["split_official"] = out["sample_id"].map(split.set_index("dicom_id")["split"]).to_numpy()
        return out


# ---------------------------------------------------------------------------------------------------------------
# NIH ChestX-ray14


@register_dataset("nih_chestxray14")
class NIHChestXray14(DatasetSource):
    """NIH ChestX-ray14: ``Data_Entry_2017_v2020.csv`` (or ``Data_Entry_2017.csv``), official
    ``train_val_list.txt`` / ``test_list.txt``, images found by name under ``images*/**/*.png`` (NIH and Kaggle
    layouts). Missing images keep the path ``images/<name>`` so that ``fairfm datasets check`` reports them."""

    card = DatasetCard(
        name="nih_chestxray14",
        title="NIH ChestX-ray14",
        modality="chest X-ray",
        dims=2,
        task_type="classification",
        tasks=("no_finding", *(task_name(f) for f in NIH_FINDINGS)),
        attributes=("sex", "age"),
        access="public, no restrictions; attribution to the NIH Clinical Center required",
        reference="Wang et al., CVPR 2017",
        official_split=True,
        notes=("NLP-mined labels; view (PA/AP) is a strong confounder, kept in column 'view'",
               "ages 0 and > 100 (2017 table) → missing; official split has no val: carved by patient"),
    )
    ENTRY_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv.gz")

    def _entry(self, root: Path) -> Path:
        found = _find_first(Path(root), list(self.ENTRY_NAMES))
        if found is None:
            raise InputError(f"nih_chestxray14: expected release file not found: {Path(root) / self.ENTRY_NAMES[0]}")
        return found

    def source_files(self, root: Path) -> list[Path]:
        files = [self._entry(root)]
        files += [Path(root) / n for n in ("train_val_list.txt", "test_list.txt") if (Path(root) / n).is_file()]
        return files

    def load(self, root: Path) -> pd.DataFrame:
        root = Path(root)
        path = self._entry(root)
        raw = _read_csv(path, dtype={"Image Index": str, "Finding Labels": str})
        raw = raw.loc[:, [c for c in raw.columns if not str(c).startswith("Unnamed")]]
        if "Patient Sex" in raw.columns and "Patient Gender" not in raw.columns:
            raw = raw.rename(columns={"Patient Sex": "Patient Gender"})  # NIH site's v2020 header
        _require_columns(raw, ["Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender"], path)
        names = raw["Image Index"].str.strip()
        located = {p.name: p.relative_to(root).as_posix() for p in root.glob("images*/**/*.png")}
        frame = pd.DataFrame({"sample_id": names.to_numpy()})
        frame["patient_id"] = pd.to_numeric(raw["Patient ID"]).astype("int64").map("{:08d}".format).to_numpy()
        frame["path"] = [located.get(n, f"images/{n}") for n in names.tolist()]
        findings = raw["Finding Labels"].fillna("").str.split("|")
        allowed = set(NIH_FINDINGS) | {"No Finding"}
        for row, items in enumerate(findings.tolist()):
            unknown = [i for i in items if i.strip() not in allowed]
            if unknown:
                raise InputError(f"{path}: column 'Finding Labels', row {row}: unknown finding {unknown[0]!r}")
        exploded = findings.explode().str.strip()
        indicator = pd.crosstab(exploded.index, exploded).reindex(index=range(len(raw)), fill_value=0)
        for finding in ("No Finding", *NIH_FINDINGS):
            column = indicator[finding] if finding in indicator.columns else pd.Series(0, index=indicator.index)
            frame[f"label_{task_name(finding)}"] = (column.to_numpy() > 0).astype(float)
        age = clean_age(raw["Patient Age"], source=str(path), zero_is_missing=True, max_age=100)
        _sex_age(frame, raw["Patient Gender"], age, source=str(path))
        if "View Position" in raw.columns:
            frame["view"] = raw["View Position"].to_numpy()
        split = pd.Series(None, index=frame.index, dtype=object)
        for name, value in (("train_val_list.txt", "train"), ("test_list.txt", "test")):
            listing = root / name
            if listing.is_file():
                try:
                    text = listing.read_text(encoding="utf-8")
                except (UnicodeDecodeError, OSError) as exc:
                    raise InputError(f"{listing}: cannot be read as a text list of image names ({exc})") from None
                members = {line.strip() for line in text.splitlines() if line.strip()}
                split[frame["sample_id"].isin(members).to_numpy()] = value
        if split.notna().any():
            frame["split_official"] = split.to_numpy()
        return frame


# ---------------------------------------------------------------------------------------------------------------
# PadChest


@register_dataset("padchest")
class PadChest(DatasetSource):
    """PadChest: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (or ``.csv.gz``), images at
    ``<ImageDir>/<ImageID>``. Age = study year − birth year (±1 year). Option ``findings`` = all, or a
    comma-separated list of label terms (default: :data:`PADCHEST_FINDINGS`)."""

    option_values: ClassVar[dict[str, tuple[str, ...] | None]] = {"findings": None}
    card = DatasetCard(
        name="padchest",
        title="PadChest (BIMCV)",
        modality="chest X-ray",
        dims=2,
        task_type="classification",
        tasks=tuple(task_name(f) for f in PADCHEST_FINDINGS),
        attributes=("sex", "age"),
        access="BIMCV request; research use only",
        reference="Bustos et al., Med Image Anal 2020",
        notes=("all projections kept (column 'view' = Projection); rows with an empty label list have unknown labels",
               "PatientID/StudyID are read as strings (they overflow int64)"),
    )
    CSV_NAMES = ("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv",
                 "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz")

    def _csv(self, root: Path) -> Path:
        found = _find_first(Path(root), list(self.CSV_NAMES))
        if found is None:
            raise InputError(f"padchest: expected release file not found: {Path(root) / self.CSV_NAMES[0]}")
        return found

    def source_files(self, root: Path) -> list[Path]:
        return [self._csv(root)]

    def load(self, root: Path) -> pd.DataFrame:
        path = self._csv(root)
        raw = _read_csv(path, dtype={"ImageID": str, "StudyID": str, "PatientID": str, "ImageDir": str,
                                     "Labels": str, "PatientSex_DICOM": str})
        _require_columns(raw, ["ImageID", "ImageDir", "StudyDate_DICOM", "PatientID", "PatientBirth",
                               "PatientSex_DICOM", "Projection", "Labels"], path)
        frame = pd.DataFrame({"sample_id": raw["ImageID"].to_numpy(), "patient_id": raw["PatientID"].to_numpy()})
        image_dir = pd.to_numeric(raw["ImageDir"], errors="coerce").astype("Int64").astype(str)
        frame["path"] = (image_dir + "/" + raw["ImageID"]).to_numpy()
        frame["study_id"] = raw["StudyID"].to_numpy()

        # Labels: the text of a Python list; parse each distinct string once with a literal parser.
        parsed: dict[str, list[str] | None] = {}
        for row, text in enumerate(raw["Labels"].tolist()):
            if text in parsed:
                continue
            if text is None or (isinstance(text, float) and np.isnan(text)) or not str(text).strip():
                parsed[text] = None
                continue
            try:
                value = ast.literal_eval(str(text))
            except (ValueError, SyntaxError):
                raise InputError(f"{path}: column 'Labels', row {row}: {text!r} is not a list of terms") from None
            if not isinstance(value, list):
                raise InputError(f"{path}: column 'Labels', row {row}: {text!r} is not a list of terms")
            terms = [str(v).strip().lower() for v in value if str(v).strip()]
            parsed[text] = terms or None  # "[]" and "['']": no labels at all → unknown, not normal
        term_lists = [parsed[t] for t in raw["Labels"].tolist()]
        option = str(self.options.get("findings", "")).strip()
        if option == "all":
            findings = sorted({t for terms in term_lists if terms for t in terms})
        elif option:
            findings = [f.strip().lower() for f in option.split(",") if f.strip()]
        else:
            findings = list(PADCHEST_FINDINGS)
        labelled = np.array([terms is not None for terms in term_lists])
        for finding in findings:
            values = np.array([finding in terms if terms else False for terms in term_lists], dtype=float)
            values[~labelled] = np.nan
            frame[f"label_{task_name(finding)}"] = values

        study_year = pd.to_numeric(raw["StudyDate_DICOM"], errors="coerce") // 10000
        birth = pd.to_numeric(raw["PatientBirth"], errors="coerce")
        age = clean_age((study_year - birth).rename("age"), source=str(path), max_age=120)
        _sex_age(frame, raw["PatientSex_DICOM"], age, source=str(path))
        frame["view"] = raw["Projection"].to_numpy()
        return frame


# ---------------------------------------------------------------------------------------------------------------
# RSNA Pneumonia


@register_dataset("rsna_pneumonia")
class RSNAPneumonia(DatasetSource):
    """RSNA Pneumonia Detection (Kaggle stage 2): ``stage_2_train_labels.csv`` + DICOMs in
    ``stage_2_train_images/``; sex and age from each DICOM header (or from a header table
    ``stage_2_train_images_dicom_headers.csv[.gz]`` / torchxrayvision's ``kaggle_stage_2_…`` copy when present)."""

    card = DatasetCard(
        name="rsna_pneumonia",
        title="RSNA Pneumonia Detection Challenge",
        modality="chest X-ray",
        dims=2,
        task_type="classification",
        tasks=("lung_opacity",),
        attributes=("sex", "age"),
        access="Kaggle competition rules (RSNA)",
        reference="Shih et al., Radiol AI 2019",
        notes=("patientId is an image-level id: patient-level splits are image-level here (no patient identity)",
               "re-labels a subset of NIH ChestX-ray14: never mix the two without de-duplication",
               "ages > 100 in the headers → missing"),
    )
    HEADER_NAMES = ("stage_2_train_images_dicom_headers.csv", "stage_2_train_images_dicom_headers.csv.gz",
                    "kaggle_stage_2_train_images_dicom_headers.csv.gz")

    def source_files(self, root: Path) -> list[Path]:
        files = [self.require(root, "stage_2_train_labels.csv")]
        headers = _find_first(Path(root), list(self.HEADER_NAMES))
        return files + ([headers] if headers is not None else [])

    def _headers_from_dicoms(self, root: Path, ids: list[str]) -> pd.DataFrame:
        import warnings

        import pydicom
        from pydicom import config as dicom_config

        rows = []
        # RSNA ages are written "51", not the strict AS form "051Y"; pydicom would warn and log on every file.
        # clean_age parses both forms, so header validation is switched off while reading.
        previous = dicom_config.settings.reading_validation_mode
        dicom_config.settings.reading_validation_mode = dicom_config.IGNORE
        try:
            return self._read_headers(root, ids, pydicom, warnings, rows)
        finally:
            dicom_config.settings.reading_validation_mode = previous

    def _read_headers(self, root: Path, ids: list[str], pydicom: Any, warnings: Any, rows: list) -> pd.DataFrame:
        for pid in ids:
            path = Path(root) / "stage_2_train_images" / f"{pid}.dcm"
            if not path.is_file():
                raise InputError(f"rsna_pneumonia: DICOM not found for patientId {pid!r}: {path}")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    header = pydicom.dcmread(path, stop_before_pixels=True,
                                             specific_tags=["PatientSex", "PatientAge", "ViewPosition"])
            except Exception as exc:  # pydicom raises several types on a damaged file
                raise InputError(f"{path}: cannot be read as DICOM ({type(exc).__name__}: {exc})") from None
            rows.append({"PatientID": pid, "PatientSex": str(header.get("PatientSex", "") or ""),
                         "PatientAge": str(header.get("PatientAge", "") or ""),
                         "ViewPosition": str(header.get("ViewPosition", "") or "")})
        return pd.DataFrame(rows)

    def load(self, root: Path) -> pd.DataFrame:
        path = self.require(root, "stage_2_train_labels.csv")
        raw = _read_csv(path, dtype={"patientId": str})
        _require_columns(raw, ["patientId", "Target"], path)
        target = pd.to_numeric(raw["Target"], errors="coerce")
        bad = ~target.isin([0, 1])
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(f"{path}: column 'Target', row {row}: {raw['Target'].iloc[row]!r} is not 0 or 1")
        per_image = target.groupby(raw["patientId"], sort=False).max()
        boxes = raw.groupby("patientId", sort=False)["x"].count() if "x" in raw.columns else None
        ids = per_image.index.tolist()
        frame = pd.DataFrame({"sample_id": ids, "patient_id": ids,
                              "path": [f"stage_2_train_images/{i}.dcm" for i in ids],
                              "label_lung_opacity": per_image.to_numpy(dtype=float)})
        if boxes is not None:
            frame["n_boxes"] = boxes.reindex(ids).to_numpy()
        header_path = _find_first(Path(root), list(self.HEADER_NAMES))
        if header_path is not None:
            headers = _read_csv(header_path, dtype={"PatientID": str, "PatientAge": str, "PatientSex": str})
            _require_columns(headers, ["PatientID", "PatientSex", "PatientAge"], header_path)
            source = str(header_path)
        else:
            headers = self._headers_from_dicoms(root, ids)
            source = str(Path(root) / "stage_2_train_images")
        headers = headers.drop_duplicates("PatientID").set_index("PatientID")
        missing = [i for i in ids if i not in headers.index]
        if missing:
            raise InputError(f"{source}: no DICOM header for patientId {missing[0]!r} ({len(missing)} missing)")
        headers = headers.loc[ids]
        age = clean_age(headers["PatientAge"].reset_index(drop=True), source=source, strip_suffix="Y", max_age=100)
        _sex_age(frame, headers["PatientSex"].reset_index(drop=True), age, source=source)
        if "ViewPosition" in headers.columns:
            frame["view"] = headers["ViewPosition"].to_numpy()
        return frame


# ---------------------------------------------------------------------------------------------------------------
# FairFedMed-Chest


@register_dataset("fairfedmed_chest")
class FairFedMedChest(DatasetSource):
    """FairFedMed-Chest ("fedchexmimic"): two sites, CheXpert (``CheXpert-v1.0/``) and MIMIC-CXR (``mimic/``), task
    Pleural Effusion; per-site ``meta_{chexpert|mimic}_{partition}_{train|test}.csv`` with ``filename,
    disease_label, race_label, gender_label, age_label``. Option ``partition`` = race (default) | gender | age.

    Attribute codes follow the FairFedMed class lists (race 0 White / 1 Asian / 2 Black; gender 0 Male /
    1 Female; age 0 '0-60' / 1 '60+'); text values are accepted too. Unverified against the shipped CSVs.
    """

    option_values: ClassVar[dict[str, tuple[str, ...] | None]] = {"partition": ("race", "gender", "age")}
    card = DatasetCard(
        name="fairfedmed_chest",
        title="FairFedMed-Chest (CheXpert + MIMIC-CXR sites)",
        modality="chest X-ray",
        dims=2,
        task_type="classification",
        tasks=("pleural_effusion",),
        attributes=("race", "sex", "age"),
        access="via the CheXpert and MIMIC-CXR licences (FairFedMed release)",
        reference="Li et al., IEEE TMI 2025 (FairFedMed)",
        has_sites=True,
        official_split=True,
        notes=("site = chexpert | mimic; age is only released as the bins 0-60 / 60+",
               "integer attribute codes follow the FairFedMed class-name lists (unverified)"),
    )
    SITES = {"chexpert": "CheXpert-v1.0", "mimic": "mimic"}
    RACE_CODES = {0: "White", 1: "Asian", 2: "Black", **RACE}
    SEX_CODES = {0: "M", 1: "F", **SEX}
    AGE_CODES = {0: "<60", 1: "≥60", "0-60": "<60", "60+": "≥60"}

    def _partition(self) -> str:
        partition = str(self.options.get("partition", "race"))
        if partition not in ("race", "gender", "age"):
            raise InputError(f"fairfedmed_chest: option partition={partition!r}; expected race, gender or age")
        return partition

    def source_files(self, root: Path) -> list[Path]:
        partition = self._partition()
        return [self.require(root, f"meta_{site}_{partition}_{part}.csv") for site in self.SITES
                for part in ("train", "test")]

    def load(self, root: Path) -> pd.DataFrame:
        partition = self._partition()
        parts = []
        for site, folder in self.SITES.items():
            for part in ("train", "test"):
                path = self.require(root, f"meta_{site}_{partition}_{part}.csv")
                raw = _read_csv(path, dtype={"filename": str})
                raw = raw.loc[:, [c for c in raw.columns if not str(c).startswith("Unnamed")]]
                _require_columns(raw, ["filename", "disease_label", "race_label", "gender_label", "age_label"], path)
                frame = pd.DataFrame({"path": (folder + "/" + raw["filename"].str.lstrip("/")).to_numpy()})
                frame["sample_id"] = (site + ":" + raw["filename"]).to_numpy()
                if site == "chexpert":
                    patient = raw["filename"].str.extract(r"(patient\d+)", expand=False)
                else:
                    patient = raw["filename"].str.extract(r"(?:^|/)p(\d{6,})(?:/|$)", expand=False)
                if patient.isna().any():
                    row = int(np.flatnonzero(patient.isna().to_numpy())[0])
                    raise InputError(f"{path}: column 'filename', row {row}: no patient id in "
                                     f"{raw['filename'].iloc[row]!r}")
                frame["patient_id"] = (site + ":" + patient).to_numpy()
                label = pd.to_numeric(raw["disease_label"], errors="coerce")
                bad = ~label.isin([0, 1])
                if bad.any():
                    row = int(np.flatnonzero(bad.to_numpy())[0])
                    raise InputError(f"{path}: column 'disease_label', row {row}: "
                                     f"{raw['disease_label'].iloc[row]!r} is not 0 or 1")
                frame["label_pleural_effusion"] = label.to_numpy(dtype=float)
                # Age is released only as a bin, so its raw column is attr_age_bin (attr_age is numeric years).
                for name, raw_name, column, mapping in (("race", "race", "race_label", self.RACE_CODES),
                                                        ("sex", "sex", "gender_label", self.SEX_CODES),
                                                        ("age", "age_bin", "age_label", self.AGE_CODES)):
                    frame[f"attr_{raw_name}"] = raw[column].to_numpy()
                    frame[f"group_{name}"] = harmonise(raw[column], mapping, attribute=name, source=str(path)).to_numpy()
                frame["site"] = site
                frame["split_official"] = part
                parts.append(frame)
        frame = pd.concat(parts, ignore_index=True)
        dup = frame["sample_id"].duplicated()
        if dup.any():
            row = int(np.flatnonzero(dup.to_numpy())[0])
            raise InputError(f"fairfedmed_chest: sample {frame['sample_id'].iloc[row]!r} is listed in both train and test")
        return frame
