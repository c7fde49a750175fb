"""BRSET — Brazilian Multilabel Ophthalmological Dataset, PhysioNet 1.0.0 (DATASETS.md §2.5).

Release: ``labels.csv`` (``image_id, patient_id, camera, patient_age, comorbidities, …, patient_sex, …, DR_ICDR``)
and ``fundus_photos/{image_id}.jpg``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fairfm.data.registry import DatasetCard, register_dataset
from fairfm.data.sources._common import (
    MetadataTableSource,
    add_age,
    add_group,
    age_edges,
    binary_label,
    finish,
)

METADATA = "labels.csv"
#: BRSET codes 1 = male, 2 = female (§7.25) — mapped explicitly, never as "not 1".
PATIENT_SEX = {1: "M", 2: "F"}


@register_dataset("brset")
class BRSET(MetadataTableSource):
    metadata = METADATA

    card = DatasetCard(
        name="brset",
        title="BRSET Brazilian multilabel ophthalmological dataset",
        modality="fundus photograph",
        dims=2,
        task_type="classification",
        tasks=("dr",),
        attributes=("sex", "age"),
        access="PhysioNet credentialed access (PhysioNet Credentialed Health Data License 1.5.0)",
        reference="Nakayama et al., PhysioNet 2023 (doi:10.13026/xcxw-8198)",
        notes=(
            "label dr = DR_ICDR != 0 (any diabetic retinopathy, ICDR grade 1-4)",
            "patient_sex 1 = male, 2 = female; missing ages are unknown",
            "camera is recorded as attr_camera (a possible acquisition confounder)",
        ),
    )

    def load(self, root: Path) -> pd.DataFrame:
        root = Path(root)
        columns = ("image_id", "patient_id", "patient_age", "patient_sex", "DR_ICDR")
        csv, raw = self.read_metadata(root, columns)
        frame = pd.DataFrame(
            {
                "sample_id": raw["image_id"].str.strip().to_numpy(),
                "patient_id": raw["patient_id"].str.strip().to_numpy(),
                "path": ("fundus_photos/" + raw["image_id"].str.strip() + ".jpg").to_numpy(),
            }
        )
        frame["label_dr"] = binary_label(
            raw["DR_ICDR"], [1, 2, 3, 4], [0], source=csv, column="DR_ICDR"
        ).to_numpy()
        frame["attr_dr_icdr"] = raw["DR_ICDR"].to_numpy()
        add_group(frame, "sex", raw["patient_sex"], PATIENT_SEX, source=csv, column="patient_sex")
        add_age(frame, raw["patient_age"], source=csv, column="patient_age", edges=age_edges(self.options))
        for column in ("camera", "nationality", "comorbidities", "diabetes"):
            if column in raw.columns:
                frame[f"attr_{column}"] = raw[column].to_numpy()
        return finish(frame, dataset=self.card.name)
