"""Harvard Ophthalmology AI Lab releases: FairVLMed10k, GF3300, FairVision30k (AMD, DR, glaucoma) and FairSeg.

They share one format (DATASETS.md §2.6, §2.7, §2.16, §3.4): ``Training/``, ``Validation/``, ``Test/`` folders of
``data_XXXXX.npz`` files, and (except FairSeg) a ``data_summary*.csv`` with demographic *strings* (gender
male/female, race asian/black/white, …) and the split in ``use``. The loaders read demographics from the CSV — the
npz integer codes differ between releases (``gender`` 0 = female vs ``male`` 1 = male) — and map every string
through an explicit table (FairMedFM's ``gender != "M"`` made everyone female, §7.1). FairSeg has no CSV, so its
attributes come from each npz with the lab's integer codes.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from fairfm.data.attributes import (
    ETHNICITY,
    HARVARD_ETHNICITY_CODES,
    HARVARD_GENDER_CODES,
    HARVARD_LANGUAGE_CODES,
    HARVARD_MARITAL_CODES,
    HARVARD_RACE_CODES,
    LANGUAGE,
    MARITAL,
    RACE,
    SEX,
    normalise_key,
)
from fairfm.data.registry import DatasetCard, DatasetSource, register_dataset
from fairfm.data.sampletable import locator_column
from fairfm.data.sources._common import (
    add_age,
    add_array_keys,
    add_group,
    age_edges,
    binary_label,
    finish,
    map_values,
    natural_key,
    read_csv,
    require_columns,
)
from fairfm.errors import InputError
from fairfm.groups import UNKNOWN_SPELLINGS

SPLIT_FOLDERS = {"Training": "train", "Validation": "val", "Test": "test"}
#: Older lab READMEs told users to rename the folders to the names the lab scripts read (§2.16 pitfall 2).
RENAMED_SPLIT_FOLDERS = {"train": "train", "val": "val", "test": "test"}
USE = {"training": "train", "validation": "val", "test": "test"}
#: GF3300 spells the third language group "other languages".
LANGUAGE_HARVARD = {**LANGUAGE, "other languages": "Other"}
#: task → (CSV column, positive values, negative values)
LabelSpec = dict[str, tuple[str, Sequence[Any], Sequence[Any]]]
ATTRIBUTES = ("sex", "age", "race", "ethnicity", "language", "marital")
_ACCESS = "Harvard Ophthalmology AI Lab, CC BY-NC-ND 4.0 (non-commercial research only)"


def find_file(root: Path, name: str, *, dataset: str, max_depth: int = 3) -> Path:
    """``name`` at the root, in ``ReadMe/``, or anywhere up to ``max_depth`` folders down (mirrors move it)."""
    for candidate in (root / name, root / "ReadMe" / name):
        if candidate.is_file():
            return candidate
    for depth in range(1, max_depth + 1):
        hits = sorted(root.glob("/".join(["*"] * depth) + "/" + name))
        if hits:
            return hits[0]
    raise InputError(f"{dataset}: expected release file not found: {root / name} (also searched sub-folders)")


def find_split_base(root: Path, candidates: Sequence[Path], *, dataset: str) -> Path:
    """The folder holding ``Training/``, ``Validation/`` and ``Test/`` (the first candidate that has any)."""
    for base in candidates:
        if any((base / folder).is_dir() for folder in (*SPLIT_FOLDERS, *RENAMED_SPLIT_FOLDERS)):
            return base
    tried = ", ".join(str(c) for c in candidates)
    raise InputError(f"{dataset}: no Training/, Validation/ or Test/ folder found; looked in: {tried}")


def load_summary(
    source: DatasetSource,
    csv: Path,
    base: Path,
    root: Path,
    *,
    id_prefix: str,
    labels: dict[str, tuple[str, Sequence[Any], Sequence[Any]]],
    language: dict[Any, str],
) -> pd.DataFrame:
    """SampleTable rows of a ``data_summary*.csv``: npz path from ``use``, labels and the six attributes."""
    raw = read_csv(csv)
    needed = ["filename", "age", "gender", "race", "ethnicity", "language", "maritalstatus", "use"]
    needed += [column for column, _, _ in labels.values()]
    require_columns(raw, needed, csv)
    split = map_values(raw["use"], USE, source=csv, column="use")
    if split.isna().any():
        row = int(np.flatnonzero(split.isna().to_numpy())[0])
        raise InputError(f"{csv}: column 'use', row {row}: empty split")
    released = {v: k for k, v in SPLIT_FOLDERS.items()}
    # The released folder name, or the renamed one when only that exists.
    folder = split.map(
        lambda s: released[s] if (base / released[s]).is_dir() or not (base / s).is_dir() else s
    )
    relative_base = base.relative_to(root).as_posix()
    prefix = "" if relative_base == "." else relative_base + "/"
    filenames = raw["filename"].str.strip()
    paths = prefix + folder + "/" + filenames
    missing = [i for i, p in enumerate(paths.tolist()) if not (root / p).is_file()]
    if missing:
        row = missing[0]
        raise InputError(
            f"{csv}: column 'filename', row {row}: {root / paths.iloc[row]} not found ({len(missing)} file(s) missing)"
        )
    stems = filenames.str.removesuffix(".npz")
    frame = pd.DataFrame(
        {
            "sample_id": (id_prefix + stems).to_numpy(),
            # One subject per file in these releases; the lab publishes no other patient identifier.
            "patient_id": (id_prefix + stems).to_numpy(),
            "path": paths.to_numpy(),
        }
    )
    for task, (column, positive, negative) in labels.items():
        frame[f"label_{task}"] = binary_label(
            raw[column], positive, negative, source=csv, column=column
        ).to_numpy()
        frame[f"attr_{column}"] = raw[column].to_numpy()
    add_group(frame, "sex", raw["gender"], SEX, source=csv, column="gender")
    add_age(frame, raw["age"], source=csv, column="age", edges=age_edges(source.options))
    add_group(frame, "race", raw["race"], RACE, source=csv, column="race")
    add_group(frame, "ethnicity", raw["ethnicity"], ETHNICITY, source=csv, column="ethnicity")
    add_group(frame, "language", raw["language"], language, source=csv, column="language")
    add_group(frame, "marital", raw["maritalstatus"], MARITAL, source=csv, column="maritalstatus")
    for column in ("note", "gpt4_summary"):
        if column in raw.columns:
            frame[f"text_{column}"] = raw[column].to_numpy()
    frame["split_official"] = split.to_numpy()
    return frame


class _HarvardSummarySource(DatasetSource):
    """A release described by one ``data_summary*.csv`` next to ``Training/Validation/Test`` npz folders."""

    summary_name: ClassVar[str]
    id_prefix: ClassVar[str]
    labels: ClassVar[LabelSpec]
    language: ClassVar[dict[Any, str]] = LANGUAGE_HARVARD
    #: The npz array each path column reads, recorded per row as ``npz_key`` / ``npz_key_<view>`` (sampletable);
    #: a ``path_<view>`` named here is the same npz file as ``path``.
    npz_keys: ClassVar[dict[str, str]]

    def _csv(self, root: Path) -> Path:
        return find_file(root, self.summary_name, dataset=self.card.name)

    def _base_candidates(self, root: Path, csv: Path) -> list[Path]:
        return [csv.parent, csv.parent.parent, root]

    def source_files(self, root: Path) -> list[Path]:
        return [self._csv(Path(root))]

    def load(self, root: Path) -> pd.DataFrame:
        root = Path(root)
        csv = self._csv(root)
        base = find_split_base(root, self._base_candidates(root, csv), dataset=self.card.name)
        frame = load_summary(
            self, csv, base, root, id_prefix=self.id_prefix, labels=self.labels, language=self.language
        )
        for view in self.npz_keys:
            if view not in frame.columns:  # every view is another array of the same npz file
                frame[view] = frame["path"]
        add_array_keys(frame, self.npz_keys)
        return finish(frame, dataset=self.card.name)


@register_dataset("fairvlmed10k")
class FairVLMed10k(_HarvardSummarySource):
    summary_name = "data_summary.csv"
    id_prefix = "fairvlmed_"
    labels: ClassVar[LabelSpec] = {"glaucoma": ("glaucoma", ["yes"], ["no"])}
    npz_keys: ClassVar[dict[str, str]] = {"path": "slo_fundus"}
    card = DatasetCard(
        name="fairvlmed10k",
        title="Harvard-FairVLMed10k (FairCLIP) SLO fundus with clinical notes",
        modality="SLO fundus",
        dims=2,
        task_type="classification",
        tasks=("glaucoma",),
        attributes=ATTRIBUTES,
        access=_ACCESS + "; Hugging Face harvardairobotics/FairVLMed",
        reference="Luo et al., CVPR 2024 (FairCLIP)",
        official_split=True,
        notes=(
            "data_summary.csv (root or ReadMe/) + Training|Validation|Test/data_XXXXX.npz; image key slo_fundus",
            "gender male/female mapped explicitly (FairMedFM made every sample female, §7.1)",
            "one subject per file: patient_id is the file stem; clinical notes in text_note / text_gpt4_summary",
            "split_official from use (7,000 / 1,000 / 2,000)",
        ),
    )


@register_dataset("gf3300")
class GF3300(_HarvardSummarySource):
    summary_name = "data_summary.csv"
    id_prefix = "gf3300_"
    labels: ClassVar[LabelSpec] = {"glaucoma": ("glaucoma", ["yes"], ["no"])}
    npz_keys: ClassVar[dict[str, str]] = {"path": "rnflt"}
    card = DatasetCard(
        name="gf3300",
        title="Harvard-GF3300 glaucoma fairness (OCT RNFLT maps)",
        modality="OCT RNFL-thickness map",
        dims=2,
        task_type="classification",
        tasks=("glaucoma",),
        attributes=ATTRIBUTES,
        access=_ACCESS + "; Hugging Face harvardairobotics/Harvard-GF",
        reference="Luo et al., IEEE TMI 2024 (Harvard-GF)",
        official_split=True,
        notes=(
            "data_summary.csv + Training|Validation|Test/data_XXXX.npz (also under dataset-001/); image key rnflt",
            "demographics from the CSV strings; the npz 'male' key (1 = male) is not used (§7.14)",
            "one subject per file: patient_id is the file stem; split_official from use (2,100 / 300 / 900)",
        ),
    )

    def _base_candidates(self, root: Path, csv: Path) -> list[Path]:
        return [csv.parent, csv.parent / "dataset-001", csv.parent.parent, root, root / "dataset-001"]


_FAIRVISION_NOTES = (
    "CSV found by name anywhere under the root (README: next to the cohort folder; Hugging Face: <Disease>/ReadMe/)",
    (
        "npz folders Training|Validation|Test under <Disease>/ or <Disease>/Dataset/; image keys slo_fundus (2D) and "
        "oct_bscans (3D, path_oct points at the same file)"
    ),
    "sample ids are prefixed with the cohort (file stems restart in every cohort and collide with FairVLMed's)",
    "whether cohorts share patients with GF3300/FairVLMed is undocumented; patient_id is the prefixed file stem",
)


class _FairVisionCohort(_HarvardSummarySource):
    disease: ClassVar[str]
    npz_keys: ClassVar[dict[str, str]] = {"path": "slo_fundus", "path_oct": "oct_bscans"}

    def _base_candidates(self, root: Path, csv: Path) -> list[Path]:
        disease_dirs = [
            root / self.disease,
            root / "FairVision" / self.disease,
            csv.parent.parent,
            csv.parent,
        ]
        return [d for base in disease_dirs for d in (base, base / "Dataset")] + [root]


@register_dataset("fairvision_amd")
class FairVisionAMD(_FairVisionCohort):
    disease = "AMD"
    summary_name = "data_summary_amd.csv"
    id_prefix = "fairvision_amd_"
    labels: ClassVar[LabelSpec] = {"amd": ("amd", ["early amd", "intermediate amd", "late amd"], ["normal"])}
    card = DatasetCard(
        name="fairvision_amd",
        title="Harvard-FairVision30k, AMD cohort (SLO fundus + OCT)",
        modality="SLO fundus + OCT B-scans",
        dims=2,
        task_type="classification",
        tasks=("amd",),
        attributes=ATTRIBUTES,
        access=_ACCESS + "; Hugging Face harvardairobotics/FairVision",
        reference="Luo et al., arXiv:2310.02492 (FairVision)",
        official_split=True,
        notes=("label amd = any AMD (early, intermediate or late) vs normal; the 4 stages are in attr_amd",)
        + _FAIRVISION_NOTES,
    )


@register_dataset("fairvision_dr")
class FairVisionDR(_FairVisionCohort):
    disease = "DR"
    summary_name = "data_summary_dr.csv"
    id_prefix = "fairvision_dr_"
    labels: ClassVar[LabelSpec] = {"dr": ("dr", ["vision threatening dr"], ["non-vision threatening dr"])}
    card = DatasetCard(
        name="fairvision_dr",
        title="Harvard-FairVision30k, diabetic retinopathy cohort (SLO fundus + OCT)",
        modality="SLO fundus + OCT B-scans",
        dims=2,
        task_type="classification",
        tasks=("dr",),
        attributes=ATTRIBUTES,
        access=_ACCESS + "; Hugging Face harvardairobotics/FairVision",
        reference="Luo et al., arXiv:2310.02492 (FairVision)",
        official_split=True,
        notes=("label dr = vision-threatening DR (severe NPDR or PDR)",) + _FAIRVISION_NOTES,
    )


@register_dataset("fairvision_glaucoma")
class FairVisionGlaucoma(_FairVisionCohort):
    disease = "Glaucoma"
    summary_name = "data_summary_glaucoma.csv"
    id_prefix = "fairvision_glaucoma_"
    labels: ClassVar[LabelSpec] = {"glaucoma": ("glaucoma", ["yes"], ["no"])}
    card = DatasetCard(
        name="fairvision_glaucoma",
        title="Harvard-FairVision30k, glaucoma cohort (SLO fundus + OCT)",
        modality="SLO fundus + OCT B-scans",
        dims=2,
        task_type="classification",
        tasks=("glaucoma",),
        attributes=ATTRIBUTES,
        access=_ACCESS + "; Hugging Face harvardairobotics/FairVision",
        reference="Luo et al., arXiv:2310.02492 (FairVision)",
        official_split=True,
        notes=("label glaucoma = yes",) + _FAIRVISION_NOTES,
    )


# --- FairSeg -----------------------------------------------------------------------------------------------------
FAIRSEG_IMAGE_KEYS = ("slo_fundus", "fundus_slo", "fundus")
FAIRSEG_MASK_KEYS = ("disc_cup_mask", "disc_cup", "disc_cup_borders")
FAIRSEG_ATTRIBUTE_KEYS = {
    # attribute: (npz key aliases, lab integer codes, string spellings some copies store instead, §2.16 pitfall 4)
    "sex": (("gender", "male"), HARVARD_GENDER_CODES, SEX),
    "race": (("race",), HARVARD_RACE_CODES, RACE),
    "ethnicity": (("ethnicity", "hispanic"), HARVARD_ETHNICITY_CODES, ETHNICITY),
    "language": (("language",), HARVARD_LANGUAGE_CODES, LANGUAGE),
    "marital": (("maritalstatus",), HARVARD_MARITAL_CODES, MARITAL),
}
FAIRSEG_LIST_FILES = {"train.txt": "train", "test.txt": "test"}


def _npz_scalar(archive: Any, key: str) -> Any:
    value = np.asarray(archive[key])
    return value.reshape(-1)[0].item() if value.size else None


@register_dataset("fairseg")
class FairSeg(DatasetSource):
    option_values: ClassVar[dict[str, tuple[str, ...] | None]] = {"age_unit": ("years", "days")}
    card = DatasetCard(
        name="fairseg",
        title="Harvard-FairSeg optic disc and cup segmentation (SLO fundus)",
        modality="SLO fundus",
        dims=2,
        task_type="segmentation",
        tasks=("cup", "rim"),
        attributes=ATTRIBUTES,
        access="Harvard Ophthalmology AI Lab, by request, CC BY-NC-ND 4.0",
        reference="Tian et al., ICLR 2024 (FairSeg)",
        official_split=True,
        notes=(
            (
                "data_XXXXX.npz (5 or 6 digits) anywhere under the root; split from Training/Test folders or "
                "train.txt/test.txt lists (8,000 / 2,000)"
            ),
            "image key slo_fundus|fundus_slo|fundus, mask key disc_cup_mask|disc_cup|disc_cup_borders (codes 0, -1, -2)",
            "attributes from the npz lab codes (gender 0 = female, 1 = male; race 0 Asian, 1 Black, 2 White; -1 unknown)",
            "age in years; pass age_unit='days' for copies that store days (SAMed loader divides by 365)",
            "other race codes (the SAMed loader's 2/3/7) are refused rather than guessed (§7.15)",
        ),
    )
    npz_keys: ClassVar[dict[str, str]] = {"path": "slo_fundus", "path_mask": "disc_cup_mask"}

    def _files(self, root: Path) -> list[Path]:
        files = sorted(
            root.rglob("data_*.npz"), key=lambda p: (natural_key(p.name), p.relative_to(root).as_posix())
        )
        if not files:
            raise InputError(f"{self.card.name}: no data_*.npz files found under {root}")
        return files

    def _list_splits(self, root: Path) -> dict[str, str]:
        splits: dict[str, str] = {}
        for name, split in FAIRSEG_LIST_FILES.items():
            for path in sorted(root.rglob(name)):
                for line in path.read_text(encoding="utf-8").split():
                    stem = Path(line.strip()).name.removesuffix(".npz")
                    if stem:
                        splits[stem] = split
        return splits

    def source_files(self, root: Path) -> list[Path]:
        root = Path(root)
        return sorted(p for name in FAIRSEG_LIST_FILES for p in root.rglob(name))

    def load(self, root: Path) -> pd.DataFrame:
        root = Path(root)
        files = self._files(root)
        listed = self._list_splits(root)
        age_unit = self.options.get("age_unit", "years")
        if age_unit not in ("years", "days"):
            raise InputError(f"{self.card.name}: age_unit must be 'years' or 'days', got {age_unit!r}")
        records: list[dict[str, Any]] = []
        from rich.progress import track

        for path in track(
            files, description="reading FairSeg npz headers", transient=True, disable=len(files) < 500
        ):
            relative = path.relative_to(root).as_posix()
            try:
                with np.load(path, allow_pickle=False) as archive:
                    keys = set(archive.files)
                    image_key = next((k for k in FAIRSEG_IMAGE_KEYS if k in keys), None)
                    mask_key = next((k for k in FAIRSEG_MASK_KEYS if k in keys), None)
                    if image_key is None or mask_key is None:
                        raise InputError(
                            f"{path}: no image key ({'/'.join(FAIRSEG_IMAGE_KEYS)}) or mask key "
                            f"({'/'.join(FAIRSEG_MASK_KEYS)}); keys: {', '.join(sorted(keys))}"
                        )
                    record: dict[str, Any] = {"file": relative, "image_key": image_key, "mask_key": mask_key}
                    record["age"] = _npz_scalar(archive, "age") if "age" in keys else None
                    for attribute, (aliases, _, _) in FAIRSEG_ATTRIBUTE_KEYS.items():
                        key = next((k for k in aliases if k in keys), None)
                        value = _npz_scalar(archive, key) if key else None
                        if key == "male" and value is not None and value >= 0:
                            value = int(value)  # 'male' 1 = male, 0 = female: same direction as 'gender'
                        record[attribute] = value
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                raise InputError(f"{path}: cannot be read as npz ({type(exc).__name__}: {exc})") from None
            records.append(record)
        raw = pd.DataFrame.from_records(records)
        stems = raw["file"].map(lambda f: Path(f).name.removesuffix(".npz"))
        frame = pd.DataFrame({"sample_id": ("fairseg_" + stems).to_numpy()})
        frame["patient_id"] = frame["sample_id"]
        frame["path"] = raw["file"].to_numpy()
        frame["path_mask"] = raw["file"].to_numpy()
        # The key names differ between FairSeg copies (§3.4): record the ones this file actually holds.
        frame[locator_column("path", "npz_key")] = raw["image_key"].to_numpy()
        frame[locator_column("path_mask", "npz_key")] = raw["mask_key"].to_numpy()
        for attribute, (aliases, codes, spellings) in FAIRSEG_ATTRIBUTE_KEYS.items():
            mapping = {**spellings, **codes}
            known = {normalise_key(k) for k in mapping}
            for row, value in enumerate(raw[attribute].tolist()):
                key = normalise_key(value)
                # Name the npz file itself when a code is outside the lab's table (e.g. SAMed-style race 3, 7).
                if key is not None and key not in known and str(key) not in UNKNOWN_SPELLINGS:
                    raise InputError(
                        f"{root / raw['file'].iloc[row]}: key {'/'.join(aliases)}: value {value!r} is not one of "
                        f"{sorted(codes)} (or -1 unknown)"
                    )
            add_group(
                frame,
                attribute,
                raw[attribute].astype(object),
                mapping,
                source=root,
                column="/".join(aliases),
            )
        source = f"{root} (npz key 'age')"
        age = pd.to_numeric(raw["age"], errors="coerce").astype(float)
        if age_unit == "days":
            age = age / 365.25
        elif (age > 150).any():
            row = int(np.flatnonzero((age > 150).to_numpy())[0])
            raise InputError(
                f"{root / raw['file'].iloc[row]}: age {age.iloc[row]:g} is not in years; "
                "pass age_unit='days' if this copy stores ages in days"
            )
        add_age(frame, age, source=source, column="age", edges=age_edges(self.options))
        folder_split = raw["file"].map(
            lambda f: next(
                (
                    {**SPLIT_FOLDERS, **RENAMED_SPLIT_FOLDERS}[part]
                    for part in Path(f).parts
                    if part in SPLIT_FOLDERS or part in RENAMED_SPLIT_FOLDERS
                ),
                None,
            )
        )
        list_split = stems.map(listed)
        frame["split_official"] = list_split.where(list_split.notna(), folder_split).to_numpy()
        return finish(frame, dataset=self.card.name)
