"""DDI — Diverse Dermatology Images (DATASETS.md §2.15).

Release: ``ddi_metadata.csv`` (leading unnamed index, ``DDI_ID, DDI_file, skin_tone`` ∈ {12, 34, 56},
``malignant`` TRUE/FALSE, ``disease``; an older release has ``malignancy(malig=1)``) and the PNGs either beside it
or moved into ``images/`` (as DDI-Code's ImageFolder loader asks).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fairfm.data.registry import DatasetCard, register_dataset
from fairfm.data.sources._common import MetadataTableSource, add_group, binary_label, finish, require_columns
from fairfm.errors import InputError

METADATA = "ddi_metadata.csv"
#: DDI-Code: "Fitzpatrick- 12, 34, or 56". These three groups do not nest in I–III / IV–VI, so no coarse view.
SKIN_TONE = {12: "I–II", 34: "III–IV", 56: "V–VI"}
TRUE_VALUES = ("true", "1", "yes")
FALSE_VALUES = ("false", "0", "no")


@register_dataset("ddi")
class DDI(MetadataTableSource):
    metadata = METADATA

    card = DatasetCard(
        name="ddi",
        title="DDI — Diverse Dermatology Images",
        modality="clinical photograph (skin)",
        dims=2,
        task_type="classification",
        tasks=("malignant",),
        attributes=("skin_tone",),
        access="Stanford AIMI shared datasets, research-use terms (non-commercial)",
        reference="Daneshjou et al., Sci Adv 2022",
        notes=(
            "skin_tone groups I–II / III–IV / V–VI (release codes 12/34/56)",
            "no patient id in the release: patient_id is DDI_ID, so splits are image-level (best used as a test set)",
            "images joined by DDI_file (never by position)",
        ),
    )

    def load(self, root: Path) -> pd.DataFrame:
        root = Path(root)
        csv, raw = self.read_metadata(root)
        label_column = "malignant" if "malignant" in raw.columns else "malignancy(malig=1)"
        require_columns(raw, ("DDI_ID", "DDI_file", "skin_tone", label_column), csv)
        folder = "images/" if (root / "images").is_dir() else ""
        if not (root / folder / str(raw["DDI_file"].iloc[0])).exists():
            raise InputError(
                f"{self.card.name}: image {raw['DDI_file'].iloc[0]} not found in {root} or {root / 'images'}"
            )
        frame = pd.DataFrame(
            {
                "sample_id": ("ddi_" + raw["DDI_ID"].str.strip()).to_numpy(),
                "patient_id": ("ddi_" + raw["DDI_ID"].str.strip()).to_numpy(),
                "path": (folder + raw["DDI_file"].str.strip()).to_numpy(),
            }
        )
        frame["label_malignant"] = binary_label(
            raw[label_column], TRUE_VALUES, FALSE_VALUES, source=csv, column=label_column
        ).to_numpy()
        if "disease" in raw.columns:
            frame["attr_disease"] = raw["disease"].to_numpy()
        add_group(frame, "skin_tone", raw["skin_tone"], SKIN_TONE, source=csv, column="skin_tone")
        return finish(frame, dataset=self.card.name)
