"""CANDI — Child and Adolescent NeuroDevelopment Initiative brain MRI segmentation (DATASETS.md §3.8).

Release (CANDI Share, SchizBull 2008): per subject ``{Subject}_procimg.nii.gz`` (T1) and ``{Subject}_seg.nii.gz``
(FreeSurfer-style labels) in a subject folder, and demographics in ``BPDwithoutPsy_Basic_Demographics.csv``,
``BPDwithPsy_Basic_Demographics.csv``, ``HC_Basic_Demographics.csv``, ``SS_Basic_Demographics.csv``
(``Subject, Gender, Age, Handedness``, …). Subject folders are found anywhere under the root.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fairfm.data.attributes import SEX
from fairfm.data.registry import DatasetCard, DatasetSource, register_dataset
from fairfm.data.sources._common import (
    add_age,
    add_group,
    age_edges,
    finish,
    nifti_shape,
    read_csv,
    require_columns,
)
from fairfm.errors import InputError

COHORTS = {
    "BPDwithoutPsy": "BPDwithoutPsy_Basic_Demographics.csv",
    "BPDwithPsy": "BPDwithPsy_Basic_Demographics.csv",
    "HC": "HC_Basic_Demographics.csv",
    "SS": "SS_Basic_Demographics.csv",
}


@register_dataset("candi")
class CANDI(DatasetSource):
    card = DatasetCard(
        name="candi",
        title="CANDI child and adolescent brain MRI segmentation",
        modality="brain MRI (T1)",
        dims=3,
        task_type="segmentation",
        tasks=("brain_structures",),
        attributes=("sex", "age"),
        access="public (NITRC CANDI Share)",
        reference="Kennedy et al., Neuroinformatics 2012 (CANDI Share)",
        notes=(
            "path: {Subject}_procimg.nii.gz; path_mask: {Subject}_seg.nii.gz (FreeSurfer-style labels, 35 values)",
            (
                "Gender mapped explicitly from every spelling (male/female, M/F); FairMedFM's 'female'-only test made "
                "other spellings male (§7.20)"
            ),
            "attr_cohort is the demographics file's group (BPDwithoutPsy, BPDwithPsy, HC, SS); attr_handedness raw",
        ),
    )

    def _demographics(self, root: Path) -> list[tuple[str, Path]]:
        found = []
        for cohort, name in COHORTS.items():
            hits = sorted(root.rglob(name))
            if hits:
                found.append((cohort, hits[0]))
        if not found:
            raise InputError(
                f"{self.card.name}: no demographics file found under {root}; expected {', '.join(COHORTS.values())}"
            )
        return found

    def source_files(self, root: Path) -> list[Path]:
        return [path for _, path in self._demographics(Path(root))]

    def load(self, root: Path) -> pd.DataFrame:
        root = Path(root)
        parts = []
        for cohort, csv in self._demographics(root):
            raw = read_csv(csv)
            require_columns(raw, ("Subject", "Gender", "Age"), csv)
            raw = raw[raw["Subject"].notna()].reset_index(drop=True)
            part = pd.DataFrame({"sample_id": raw["Subject"].str.strip().to_numpy()})
            part["patient_id"] = part["sample_id"]
            add_group(part, "sex", raw["Gender"], SEX, source=csv, column="Gender")
            add_age(part, raw["Age"], source=csv, column="Age", edges=age_edges(self.options))
            if "Handedness" in raw.columns:
                part["attr_handedness"] = raw["Handedness"].to_numpy()
            part["attr_cohort"] = cohort
            part["csv"] = str(csv)
            part["csv_row"] = range(len(raw))
            parts.append(part)
        frame = pd.concat(parts, ignore_index=True)
        images = {p.name.removesuffix("_procimg.nii.gz"): p for p in root.rglob("*_procimg.nii.gz")}
        paths, masks = [], []
        for subject, csv, row in zip(frame["sample_id"], frame["csv"], frame["csv_row"]):
            image = images.get(subject)
            if image is None:
                raise InputError(
                    f"{csv}: column 'Subject', row {row}: no {subject}_procimg.nii.gz found under {root}"
                )
            mask = image.with_name(f"{subject}_seg.nii.gz")
            if not mask.is_file():
                raise InputError(f"{self.card.name}: expected release file not found: {mask}")
            paths.append(image.relative_to(root).as_posix())
            masks.append(mask.relative_to(root).as_posix())
        frame["path"] = paths
        frame["path_mask"] = masks
        frame["volume_shape"] = [nifti_shape(root / p) for p in paths]
        return finish(frame.drop(columns=["csv", "csv_row"]), dataset=self.card.name)
