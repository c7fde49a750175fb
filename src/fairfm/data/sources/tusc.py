"""TUSC — Stanford AIMI Thyroid Ultrasound Cine-clip (DATASETS.md §3.3).

Release: ``dataset.hdf5`` (datasets ``image`` and ``mask``, one frame per index, with ``annot_id`` — bytes such as
``b"45_"`` — and ``frame_num``) and ``metadata.csv`` (``annot_id``, ``age``, ``sex`` Female/Male, lesion size and
location, TI-RADS descriptors, histopathology). Masks are 0/255.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fairfm.data.attributes import SEX
from fairfm.data.registry import DatasetCard, register_dataset
from fairfm.data.sources._common import MetadataTableSource, add_age, add_group, age_edges, finish
from fairfm.errors import InputError

FRAMES = "dataset.hdf5"
METADATA = "metadata.csv"


def _text(values: np.ndarray) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values.reshape(-1).tolist()]


@register_dataset("tusc")
class TUSC(MetadataTableSource):
    metadata = METADATA

    card = DatasetCard(
        name="tusc",
        title="TUSC Stanford thyroid ultrasound cine-clip nodule segmentation",
        modality="ultrasound",
        dims=2,
        task_type="segmentation",
        tasks=("nodule",),
        attributes=("sex", "age"),
        access="Stanford AIMI shared datasets, research-use terms",
        reference="Stanford AIMI Thyroid Ultrasound Cine-clip dataset (doi:10.71718/7m5n-rh16)",
        notes=(
            (
                "one row per frame of dataset.hdf5: path and path_mask are dataset.hdf5, h5_index the frame index, "
                "h5_key / h5_key_mask the datasets 'image' and 'mask' (foreground 255)"
            ),
            (
                "patient_id is the part of annot_id before '_' (annot ids such as '45_' name a patient's nodule; "
                "the release has no separate patient column — unverified for patients with two nodules)"
            ),
            "demographics joined from metadata.csv by annot_id (never by position)",
        ),
    )

    def load(self, root: Path) -> pd.DataFrame:
        from fairfm.data.optional import import_optional

        h5py = import_optional("h5py", "reading TUSC's dataset.hdf5")

        root = Path(root)
        frames_path = self.require(root, FRAMES)
        csv, meta = self.read_metadata(root, ("annot_id", "age", "sex"))
        meta["annot_id"] = meta["annot_id"].str.strip()
        if meta["annot_id"].duplicated().any():
            row = int(meta["annot_id"].duplicated().to_numpy().argmax())
            raise InputError(
                f"{csv}: column 'annot_id', row {row}: duplicate annot_id {meta['annot_id'].iloc[row]!r}"
            )
        try:
            with h5py.File(frames_path, "r") as handle:
                for key in ("image", "mask", "annot_id", "frame_num"):
                    if key not in handle:
                        raise InputError(
                            f"{frames_path}: no dataset {key!r}; datasets: {', '.join(handle.keys())}"
                        )
                annot_ids = _text(handle["annot_id"][()])
                frame_nums = np.asarray(handle["frame_num"][()]).reshape(-1).astype(int)
        except OSError as exc:
            raise InputError(f"{frames_path}: cannot be read as HDF5 ({exc})") from None
        annot_ids = [a.strip() for a in annot_ids]
        frame = pd.DataFrame(
            {
                "sample_id": [
                    f"{a}{n:04d}" if a.endswith("_") else f"{a}_{n:04d}"
                    for a, n in zip(annot_ids, frame_nums)
                ],
                "patient_id": [a.split("_")[0] for a in annot_ids],
                "path": FRAMES,
                "path_mask": FRAMES,
                "h5_key": "image",
                "h5_key_mask": "mask",
                "h5_index": np.arange(len(annot_ids)),
                "annot_id": annot_ids,
                "frame_num": frame_nums,
            }
        )
        known = set(meta["annot_id"])
        unknown = [i for i, a in enumerate(annot_ids) if a not in known]
        if unknown:
            raise InputError(
                f"{frames_path}: frame {unknown[0]} has annot_id {annot_ids[unknown[0]]!r}, which is not in {csv}"
            )
        joined = frame[["annot_id"]].merge(meta, on="annot_id", how="left")
        add_group(frame, "sex", joined["sex"], SEX, source=csv, column="sex")
        add_age(frame, joined["age"], source=csv, column="age", edges=age_edges(self.options))
        for column in ("ti-rads_level", "histopath_diagnosis"):
            if column in meta.columns:
                frame[f"attr_{column.replace('-', '_')}"] = joined[column].to_numpy()
        frame["mask_foreground"] = 255
        return finish(frame, dataset=self.card.name)
