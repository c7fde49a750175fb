"""KiTS23 kidney / tumour / cyst CT segmentation (DATASETS.md §3.6).

Release (the ``kits23`` repository after ``kits23_download_data``): ``dataset/kits23.json`` (one record per case:
``case_id, gender, age_at_nephrectomy, bmi``, …) and ``dataset/case_XXXXX/imaging.nii.gz`` +
``segmentation.nii.gz`` (labels 0 background, 1 kidney, 2 tumour, 3 cyst). An nnU-Net copy
(``imagesTr/case_XXXXX_0000.nii.gz``, ``labelsTr/case_XXXXX.nii.gz`` + ``kits23.json``) is read as well.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from fairfm.data.attributes import SEX
from fairfm.data.registry import DatasetCard, DatasetSource, register_dataset
from fairfm.data.sources._common import add_age, add_group, age_edges, finish, nifti_shape
from fairfm.errors import InputError
from fairfm.groups import UNKNOWN

METADATA = "kits23.json"
LABELS = {0: "background", 1: "kidney", 2: "tumor", 3: "cyst"}
#: WHO BMI categories, as FairMedFM's refineKiTS.py (closed on the left).
BMI_EDGES = (18.5, 25.0, 30.0)
BMI_GROUPS = ("underweight", "normal", "overweight", "obese")


@register_dataset("kits23")
class KiTS23(DatasetSource):
    card = DatasetCard(
        name="kits23",
        title="KiTS23 kidney tumour segmentation (contrast CT)",
        modality="abdominal CT",
        dims=3,
        task_type="segmentation",
        tasks=("kidney", "tumor", "cyst"),
        attributes=("sex", "age", "bmi"),
        access="public (KiTS23 challenge, CC BY-NC-SA 4.0)",
        reference="Heller et al., arXiv:2307.01984 (KiTS23)",
        notes=(
            "mask labels 1 kidney, 2 tumour, 3 cyst (0 background)",
            "metadata matched to each case by case_id (FairMedFM indexed the list by position, §7.19)",
            "volume_shape is the NIfTI shape from the header (KiTS stores the axial axis first)",
            "group_bmi: underweight < 18.5 ≤ normal < 25 ≤ overweight < 30 ≤ obese",
            "one case per patient: patient_id is case_id",
        ),
    )

    def _layout(self, root: Path) -> tuple[Path, str]:
        for base in (root / "dataset", root):
            if (base / METADATA).is_file():
                return base, ("nnunet" if (base / "imagesTr").is_dir() else "official")
        raise InputError(f"{self.card.name}: expected release file not found: {root / 'dataset' / METADATA}")

    def source_files(self, root: Path) -> list[Path]:
        base, _ = self._layout(Path(root))
        return [base / METADATA]

    def load(self, root: Path) -> pd.DataFrame:
        root = Path(root)
        base, layout = self._layout(root)
        metadata_path = base / METADATA
        try:
            records = json.loads(metadata_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{metadata_path}: not valid JSON ({exc})") from None
        if not isinstance(records, list) or not all(isinstance(r, dict) and "case_id" in r for r in records):
            raise InputError(f"{metadata_path}: expected a list of case records with 'case_id'")
        meta = pd.DataFrame.from_records(records).set_index("case_id", drop=False)
        if meta.index.duplicated().any():
            raise InputError(f"{metadata_path}: duplicate case_id {meta.index[meta.index.duplicated()][0]!r}")
        prefix = base.relative_to(root).as_posix()
        prefix = "" if prefix == "." else prefix + "/"
        if layout == "official":
            cases = sorted(p.name for p in base.glob("case_*") if (p / "imaging.nii.gz").is_file())
            image = {c: f"{prefix}{c}/imaging.nii.gz" for c in cases}
            mask = {c: f"{prefix}{c}/segmentation.nii.gz" for c in cases}
        else:
            cases = sorted(
                p.name.removesuffix("_0000.nii.gz") for p in base.glob("imagesTr/case_*_0000.nii.gz")
            )
            image = {c: f"{prefix}imagesTr/{c}_0000.nii.gz" for c in cases}
            mask = {c: f"{prefix}labelsTr/{c}.nii.gz" for c in cases}
        if not cases:
            raise InputError(f"{self.card.name}: no case_XXXXX volumes found under {base}")
        rows = []
        for case in cases:
            if case not in meta.index:
                raise InputError(
                    f"{metadata_path}: no record with case_id {case!r} (volume {root / image[case]})"
                )
            if not (root / mask[case]).is_file():
                raise InputError(f"{self.card.name}: expected release file not found: {root / mask[case]}")
            rows.append(
                {
                    "sample_id": case,
                    "patient_id": case,
                    "path": image[case],
                    "path_mask": mask[case],
                    "volume_shape": nifti_shape(root / image[case]),
                }
            )
        frame = pd.DataFrame.from_records(rows)
        matched = meta.loc[frame["sample_id"]]
        for column in ("gender", "age_at_nephrectomy", "bmi"):
            if column not in matched.columns:
                raise InputError(f"{metadata_path}: records have no {column!r} field")
        add_group(frame, "sex", matched["gender"], SEX, source=metadata_path, column="gender")
        add_age(
            frame,
            matched["age_at_nephrectomy"],
            source=metadata_path,
            column="age_at_nephrectomy",
            edges=age_edges(self.options),
        )
        raw_bmi = pd.Series(matched["bmi"].to_numpy(), index=frame.index)
        bmi = pd.to_numeric(raw_bmi, errors="coerce").astype(float)
        bad = bmi.isna().to_numpy() & raw_bmi.notna().to_numpy()
        if bad.any():
            row = int(bad.argmax())
            raise InputError(
                f"{metadata_path}: case {frame['sample_id'].iloc[row]!r}: bmi {raw_bmi.iloc[row]!r} is not a number"
            )
        frame["attr_bmi"] = bmi.to_numpy()
        codes = np.searchsorted(np.asarray(BMI_EDGES), bmi.to_numpy(), side="right")
        groups = np.asarray(BMI_GROUPS, dtype=object)[np.clip(codes, 0, len(BMI_EDGES))]
        groups[np.isnan(bmi.to_numpy())] = UNKNOWN
        frame["group_bmi"] = groups
        return finish(frame, dataset=self.card.name)
