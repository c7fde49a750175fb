"""OL3I — Opportunistic L3 Ischemic heart disease (DATASETS.md §2.11).

Release (Stanford AIMI): ``clinical_data.csv`` (``anon_id, label_1y, set_1y, label_5y, set_5y`` and EHR features)
and ``l3_slices.h5`` holding one axial CT slice per ``anon_id`` (dataset key = ``anon_id``). The demographic
column names beyond these are unverified: sex is read from ``sex`` or ``gender``, age from ``age`` or
``age_at_scan``; an unexpected name or code is an error rather than a guess.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fairfm.data.attributes import SEX
from fairfm.data.registry import DatasetCard, register_dataset
from fairfm.data.sources._common import (
    MetadataTableSource,
    add_age,
    add_group,
    age_edges,
    binary_label,
    finish,
    map_values,
)
from fairfm.errors import InputError

METADATA = "clinical_data.csv"
SLICES = "l3_slices.h5"
SET = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
SEX_COLUMNS = ("sex", "gender", "Sex", "Gender")
AGE_COLUMNS = ("age", "age_at_scan", "Age")


@register_dataset("ol3i")
class OL3I(MetadataTableSource):
    metadata = METADATA

    card = DatasetCard(
        name="ol3i",
        title="OL3I opportunistic L3 CT slices for ischemic heart disease",
        modality="abdominal CT (L3 slice)",
        dims=2,
        task_type="classification",
        tasks=("ihd_1y", "ihd_5y"),
        attributes=("sex", "age"),
        access="Stanford AIMI shared datasets, research-use terms",
        reference="Zambrano Chaves et al., Sci Rep 2023",
        official_split=True,
        notes=(
            "label ihd_1y / ihd_5y from label_1y / label_5y; split_official from set_1y",
            "path is l3_slices.h5 and h5_key the anon_id dataset inside it (reading needs h5py)",
            "patient_id is anon_id (one exam per id in the release; unverified whether patients repeat)",
        ),
    )

    def load(self, root: Path) -> pd.DataFrame:
        root = Path(root)
        self.require(root, SLICES)
        csv, raw = self.read_metadata(root, ("anon_id", "label_1y", "set_1y"))
        sex_column = next((c for c in SEX_COLUMNS if c in raw.columns), None)
        age_column = next((c for c in AGE_COLUMNS if c in raw.columns), None)
        if sex_column is None or age_column is None:
            raise InputError(
                f"{csv}: no sex column ({'/'.join(SEX_COLUMNS)}) or age column ({'/'.join(AGE_COLUMNS)}); "
                f"found: {', '.join(raw.columns)}"
            )
        ids = raw["anon_id"].str.strip()
        frame = pd.DataFrame({"sample_id": ids.to_numpy(), "patient_id": ids.to_numpy(), "path": SLICES})
        frame["h5_key"] = ids.to_numpy()
        frame["label_ihd_1y"] = binary_label(
            raw["label_1y"], [1], [0], source=csv, column="label_1y"
        ).to_numpy()
        if "label_5y" in raw.columns:
            frame["label_ihd_5y"] = binary_label(
                raw["label_5y"], [1], [0], source=csv, column="label_5y"
            ).to_numpy()
        add_group(frame, "sex", raw[sex_column], SEX, source=csv, column=sex_column)
        add_age(frame, raw[age_column], source=csv, column=age_column, edges=age_edges(self.options))
        frame["split_official"] = map_values(raw["set_1y"], SET, source=csv, column="set_1y").to_numpy()
        return finish(frame, dataset=self.card.name)
