"""ADNI-1 1.5T screening T1 MRI (DATASETS.md §2.9).

Release: the collection CSV the ADNI download page exports (``ADNI1_Screening_1.5T_<date>.csv``: ``Image Data ID,
Subject, Group`` CN/MCI/AD, ``Sex`` M/F, ``Age, Visit, Modality, Description, Type, Acq Date, Format, Downloaded``)
and NIfTI files under ``ADNI/{Subject}/{Description}/{date}/{Image Data ID}/*.nii``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import pandas as pd

from fairfm.data.attributes import SEX
from fairfm.data.registry import BOOLEAN, DatasetCard, DatasetSource, register_dataset
from fairfm.data.sources._common import (
    add_age,
    add_group,
    age_edges,
    binary_label,
    finish,
    nifti_shape,
    read_csv,
    require_columns,
)
from fairfm.errors import InputError

COLLECTION_GLOB = "ADNI1_Screening_1.5T*.csv"


@register_dataset("adni")
class ADNI(DatasetSource):
    option_values: ClassVar[dict[str, tuple[str, ...] | None]] = {"collection_csv": None, "keep_mci": BOOLEAN}
    card = DatasetCard(
        name="adni",
        title="ADNI-1 1.5T screening T1-weighted brain MRI",
        modality="brain MRI (T1)",
        dims=3,
        task_type="classification",
        tasks=("ad",),
        attributes=("sex", "age"),
        access="ADNI data use agreement (application at adni.loni.usc.edu)",
        reference="Jack et al., J Magn Reson Imaging 2008 (ADNI)",
        notes=(
            "label ad: Group AD = 1, CN = 0; MCI scans are dropped unless keep_mci=True (then label NaN)",
            "patient_id is Subject: 550 AD/CN scans come from 417 subjects, so splits must be patient-level (§7.7)",
            "every subject is ≥ 55, and FairMedFM's test split held no one < 60 (§7.26): prefer age_edges=[70] or [75]",
            "collection CSV found as ADNI1_Screening_1.5T*.csv (or the collection_csv option)",
        ),
    )

    def _csv(self, root: Path) -> Path:
        if "collection_csv" in self.options:
            return self.require(root, str(self.options["collection_csv"]))
        hits = sorted(root.glob(COLLECTION_GLOB))
        if not hits:
            raise InputError(f"{self.card.name}: expected release file not found: {root / COLLECTION_GLOB}")
        return hits[-1]

    def source_files(self, root: Path) -> list[Path]:
        return [self._csv(Path(root))]

    def load(self, root: Path) -> pd.DataFrame:
        root = Path(root)
        csv = self._csv(root)
        raw = read_csv(csv)
        require_columns(raw, ("Image Data ID", "Subject", "Group", "Sex", "Age"), csv)
        label = binary_label(raw["Group"], ["AD"], ["CN"], source=csv, column="Group", unknown=["MCI"])
        images = self._index(root / "ADNI")
        image_ids = raw["Image Data ID"].str.strip()
        paths = image_ids.map(images)
        missing = paths.isna().to_numpy()
        if missing.any():
            row = int(missing.argmax())
            raise InputError(
                f"{csv}: column 'Image Data ID', row {row}: no NIfTI found under "
                f"{root / 'ADNI' / raw['Subject'].iloc[row]}/*/*/{image_ids.iloc[row]}/ ({int(missing.sum())} missing)"
            )
        frame = pd.DataFrame(
            {
                "sample_id": image_ids.to_numpy(),
                "patient_id": raw["Subject"].str.strip().to_numpy(),
                "path": paths.to_numpy(),
            }
        )
        frame["label_ad"] = label.to_numpy()
        frame["volume_shape"] = [nifti_shape(root / p) for p in frame["path"]]
        frame["attr_group"] = raw["Group"].to_numpy()
        add_group(frame, "sex", raw["Sex"], SEX, source=csv, column="Sex")
        add_age(frame, raw["Age"], source=csv, column="Age", edges=age_edges(self.options))
        for column in ("Visit", "Description"):
            if column in raw.columns:
                frame[f"attr_{column.lower()}"] = raw[column].to_numpy()
        if not self.options.get("keep_mci", False):
            frame = frame[raw["Group"].str.strip().str.upper().to_numpy() != "MCI"]
        return finish(frame, dataset=self.card.name)

    @staticmethod
    def _index(images_root: Path) -> dict[str, str]:
        """Image Data ID (the NIfTI's parent folder) → path relative to the release root."""
        index: dict[str, str] = {}
        if not images_root.is_dir():
            return index
        for folder, _, files in os.walk(images_root):
            for name in sorted(files):
                if name.endswith((".nii", ".nii.gz")):
                    path = Path(folder) / name
                    index.setdefault(path.parent.name, path.relative_to(images_root.parent).as_posix())
        return index
