"""SPIDER lumbar spine MRI segmentation (DATASETS.md §3.9).

Release (Zenodo / grand-challenge): ``images/{new_file_name}.mha``, ``masks/{new_file_name}.mha`` and
``overview.csv`` (one row per series: ``new_file_name`` such as ``1_t1`` / ``1_t2`` / ``1_t2_SPACE``, ``sex``, …).
Mask labels: 0 background, vertebrae 1–7, spinal canal 100, intervertebral discs 201–207.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from fairfm.data.attributes import SEX
from fairfm.data.registry import DatasetCard, register_dataset
from fairfm.data.sources._common import MetadataTableSource, add_age, add_group, age_edges, finish
from fairfm.errors import InputError

METADATA = "overview.csv"
MASK_LABELS = (0, 1, 2, 3, 4, 5, 6, 7, 100, 201, 202, 203, 204, 205, 206, 207)
_DIM_SIZE = re.compile(rb"^\s*DimSize\s*=\s*([\d\s]+)$", re.MULTILINE)


def _mha_shape(path: Path) -> str:
    """Shape from the MetaImage text header (read up to ``ElementDataFile``; the voxels are not read)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4096)
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc})") from None
    head = head.split(b"ElementDataFile", 1)[0]
    match = _DIM_SIZE.search(head)
    if not match:
        raise InputError(f"{path}: not a MetaImage file (no DimSize in the header)")
    return "x".join(match.group(1).decode().split())


@register_dataset("spider")
class SPIDER(MetadataTableSource):
    metadata = METADATA

    card = DatasetCard(
        name="spider",
        title="SPIDER lumbar spine MRI segmentation",
        modality="lumbar spine MRI (T1, T2, T2 SPACE)",
        dims=3,
        task_type="segmentation",
        tasks=("vertebrae", "canal", "discs"),
        attributes=("sex",),
        access="public (Zenodo, CC BY 4.0)",
        reference="van der Graaf et al., Sci Data 2024 (SPIDER)",
        notes=(
            "mask labels 1-7 vertebrae, 100 spinal canal, 201-207 discs",
            "sex read per series from overview.csv (FairMedFM gave every slice the first subject's sex, §7.17)",
            (
                "patient_id from overview.csv's patient_id column when present, else the number before '_' in "
                "new_file_name; up to three series (T1, T2, T2 SPACE) share a patient"
            ),
            "volume_shape from the .mha header",
        ),
    )

    def load(self, root: Path) -> pd.DataFrame:
        root = Path(root)
        csv, raw = self.read_metadata(root, ("new_file_name", "sex"))
        names = raw["new_file_name"].str.strip().str.removesuffix(".mha")
        if "patient_id" in raw.columns:
            patients = raw["patient_id"].str.strip()
        else:
            patients = names.str.split("_").str[0]
        frame = pd.DataFrame(
            {
                "sample_id": ("spider_" + names).to_numpy(),
                "patient_id": ("spider_" + patients).to_numpy(),
                "path": ("images/" + names + ".mha").to_numpy(),
                "path_mask": ("masks/" + names + ".mha").to_numpy(),
            }
        )
        shapes = []
        for row, (image, mask) in enumerate(zip(frame["path"], frame["path_mask"])):
            for column, relative in (("images", image), ("masks", mask)):
                if not (root / relative).is_file():
                    raise InputError(
                        f"{csv}: column 'new_file_name', row {row}: {column} file not found: {root / relative}"
                    )
            shapes.append(_mha_shape(root / image))
        frame["volume_shape"] = shapes
        add_group(frame, "sex", raw["sex"], SEX, source=csv, column="sex")
        if "age" in raw.columns:
            add_age(frame, raw["age"], source=csv, column="age", edges=age_edges(self.options))
        return finish(frame, dataset=self.card.name)
