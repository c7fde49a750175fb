"""What several usages start from: the cached frozen-encoder features of a table, and its labels as a matrix.

Public for usage modules of your own (docs/usages.md, "Adding a usage"); the built-in usages import them under their
former private names (``_features``, ``_labels``), so their bodies read as they did in the runner."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from fairfm.spec import RunSpec


def cached_features(spec: "RunSpec", table: pd.DataFrame, model: Any, *, root: Path, features_dir: Path,
                    progress: bool, timings: dict[str, float]):  # fmt: skip
    """Cached features of ``table``: an (N, D) matrix for 2D images, or — when samples are volumes — the
    :class:`~fairfm.adapt.volumes.SliceBags` of their per-slice rows (max-pooled over slices by the usage).
    Slices of a 3D dataset are prepared as its ``hparams.slice_intensity`` says (CT window, per-slice min–max)
    before the model's preprocessing; the choice is part of the cache key and recorded in meta."""
    import numpy as np

    from fairfm.adapt.features import extract_features
    from fairfm.adapt.volumes import (SliceBags, check_volume_policy, resolve_intensity, volume_meta,
                                      with_slice_intensity)  # fmt: skip

    hp = spec.typed_hparams()
    volume = str(getattr(hp, "volume", "max_slice"))
    check_volume_policy(volume, spec.usage)
    card = spec.manifest().get("card") or {}
    intensity = "unit"
    if card.get("dims") == 3:
        intensity = resolve_intensity(str(getattr(hp, "slice_intensity", "auto")), card.get("modality"), volume)
        if intensity != "unit":
            if isinstance(model, str):
                from fairfm.models import create_model

                model = create_model(spec.model, spec.checkpoint, trust_checkpoint=spec.trust_checkpoint,
                                     **spec.model_options)  # fmt: skip
            model = with_slice_intensity(model, intensity)
    started = time.perf_counter()
    features = extract_features(table, model, out=features_dir, checkpoint=spec.checkpoint,
                                trust_checkpoint=spec.trust_checkpoint, root=root, column=spec.image_column(),
                                progress=progress)  # fmt: skip
    timings["features_s"] = time.perf_counter() - started
    index = features.index
    meta: dict[str, Any] = {"features": {"key": features.key, "computed": int(features.computed),
                                         "dim": int(features.features.shape[1])}}  # fmt: skip
    if len(index) != len(table) or (index["slice_index"] >= 0).any():
        bags = SliceBags.from_table_rows(features.features, index["table_row"].to_numpy(), len(table))
        meta["volumes"] = volume_meta(volume, intensity, bags)
        return bags, meta
    rows = index["table_row"].to_numpy()
    matrix = np.empty((len(table), features.features.shape[1]), dtype=np.float32)
    matrix[rows] = np.asarray(features.features, dtype=np.float32)
    return matrix, meta


def label_matrix(table: pd.DataFrame, tasks: list[str]) -> np.ndarray:
    """(N, T) labels of ``table`` for ``tasks``: 0/1, NaN where unknown."""
    import numpy as np
    import pandas as pd

    return np.stack([pd.to_numeric(table[f"label_{t}"], errors="coerce").to_numpy(dtype=np.float64) for t in tasks],
                    axis=1)  # fmt: skip

