"""Fitzpatrick17k clinical skin photographs (DATASETS.md §2.10).

Release: ``fitzpatrick17k.csv`` (``md5hash, fitzpatrick_scale`` 1–6 or −1, ``fitzpatrick_centaur``, ``label``,
``nine_partition_label``, ``three_partition_label``, ``qc``, ``url``, ``url_alphanum``); images are fetched from
the URLs and stored as ``images/{md5hash}.jpg`` (the layout MEDFAIR expects).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fairfm.data.attributes import FITZPATRICK, fitzpatrick_coarse
from fairfm.data.registry import DatasetCard, register_dataset
from fairfm.data.sources._common import MetadataTableSource, add_group, binary_label, finish

METADATA = "fitzpatrick17k.csv"


@register_dataset("fitzpatrick17k")
class Fitzpatrick17k(MetadataTableSource):
    metadata = METADATA

    card = DatasetCard(
        name="fitzpatrick17k",
        title="Fitzpatrick17k clinical dermatology images",
        modality="clinical photograph (skin)",
        dims=2,
        task_type="classification",
        tasks=("malignant",),
        attributes=("fitzpatrick", "fitzpatrick_coarse"),
        access="public CSV (CC BY-NC-SA 3.0) with image URLs; images downloaded by the user to images/{md5hash}.jpg",
        reference="Groh et al., CVPR Workshops 2021",
        notes=(
            "label malignant = three_partition_label == 'malignant' (benign and non-neoplastic are 0)",
            "fitzpatrick_scale -1 is unknown (kept as a row, group 'unknown'); coarse view I–III / IV–VI",
            "no patient id in the release: patient_id is md5hash (image-level), as MEDFAIR splits",
        ),
    )

    def load(self, root: Path) -> pd.DataFrame:
        root = Path(root)
        csv, raw = self.read_metadata(root, ("md5hash", "fitzpatrick_scale", "three_partition_label"))
        frame = pd.DataFrame(
            {
                "sample_id": raw["md5hash"].to_numpy(),
                "patient_id": raw["md5hash"].to_numpy(),
                "path": ("images/" + raw["md5hash"] + ".jpg").to_numpy(),
            }
        )
        frame["label_malignant"] = binary_label(
            raw["three_partition_label"],
            ["malignant"],
            ["benign", "non-neoplastic"],
            source=csv,
            column="three_partition_label",
        ).to_numpy()
        for column in ("label", "nine_partition_label", "three_partition_label", "fitzpatrick_centaur"):
            if column in raw.columns:
                frame[f"attr_{column}"] = raw[column].to_numpy()
        add_group(
            frame,
            "fitzpatrick",
            raw["fitzpatrick_scale"],
            FITZPATRICK,
            source=csv,
            column="fitzpatrick_scale",
        )
        frame["group_fitzpatrick_coarse"] = fitzpatrick_coarse(frame["group_fitzpatrick"]).to_numpy()
        return finish(frame, dataset=self.card.name)
