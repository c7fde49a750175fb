"""The linear probe: a linear head trained on cached frozen-encoder features (:mod:`fairfm.adapt.linear_probe`)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fairfm.usages.base import TrainHParams, UsageOutput, _CachedFeatures, register_usage
from fairfm.usages.common import cached_features as _features, label_matrix as _labels

if TYPE_CHECKING:
    import pandas as pd

    from fairfm.spec import RunSpec


class LinearProbeHParams(_CachedFeatures, TrainHParams):
    """FairMedFM's linear probe (SGD, blr 2.5e-4, warm-up 5, min_lr 1e-5, wd 0.05), selected on validation.

    Always on cached features: a frozen encoder gives the same features inside the loop (tested), only slower."""


@register_usage("linear_probe", hparams=LinearProbeHParams, trains=True, loop="features", cached_features=True)
def _linear_probe(spec: "RunSpec", table: pd.DataFrame, tasks: list[str], *, root: Path, features_dir: Path,
                  device: str, progress: bool, heads_path: Path | None, timings: dict[str, float]) -> UsageOutput:
    import numpy as np

    from fairfm.adapt.linear_probe import train_linear_probe

    hp = spec.typed_hparams()
    model: Any = spec.model
    if spec.model_options:
        from fairfm.models import create_model

        model = create_model(spec.model, spec.checkpoint, trust_checkpoint=spec.trust_checkpoint,
                             **spec.model_options)  # fmt: skip
    features, meta = _features(spec, table, model, root=root, features_dir=features_dir, progress=progress,
                               timings=timings)  # fmt: skip
    split = table["split"].astype(str).to_numpy()
    labels = _labels(table, tasks)
    part = {name: np.flatnonzero(split == name) for name in ("train", "val", "test")}
    started = time.perf_counter()
    result = train_linear_probe(features[part["train"]], labels[part["train"]], features[part["val"]],
                                labels[part["val"]], hparams=hp, seed=spec.seed,
                                predict={"test": features[part["test"]]}, tasks=tasks, device=device,
                                progress=progress)  # fmt: skip
    timings["train_s"] = time.perf_counter() - started
    if heads_path is not None:
        result.save(heads_path)
        meta["head"] = str(heads_path)
    meta["training"] = {"best_epoch": result.best_epoch, "epochs_run": len(result.history),
                        "selected_by": hp.select_by,
                        "best_score": None if math.isnan(result.best_score) else result.best_score,
                        "optimizer": hp.optimizer, "history": result.history}  # fmt: skip
    return UsageOutput({"val": result.predictions["val"], "test": result.predictions["test"]}, meta)
