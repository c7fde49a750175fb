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
    from fairfm.mitigate.runs import loop_setup

    hp = spec.typed_hparams()
    method = None
    if spec.method is not None:
        from fairfm.mitigate.runs import run_method

        method = run_method(spec)
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
    if method is not None and method.replaces_probe:  # e.g. fairlearn reductions: its own head on the features
        return _method_on_features(method, spec, table, tasks, features, labels, part, meta, timings, started)
    setup = loop_setup(spec, table, tasks, "features", hp, device=device,
                       feature_dim=int(features.shape[1]) if hasattr(features, "shape") else None)  # fmt: skip
    result = train_linear_probe(features[part["train"]], labels[part["train"]], features[part["val"]],
                                labels[part["val"]], hparams=hp, seed=spec.seed,
                                predict={"test": features[part["test"]]}, tasks=tasks, device=device,
                                progress=progress, hooks=setup.hooks, groups=setup.groups)  # fmt: skip
    timings["train_s"] = time.perf_counter() - started
    setup.record(meta)
    if heads_path is not None:
        result.save(heads_path)
        meta["head"] = str(heads_path)
    meta["training"] = {"best_epoch": result.best_epoch, "epochs_run": len(result.history),
                        "selected_by": hp.select_by,
                        "best_score": None if math.isnan(result.best_score) else result.best_score,
                        "optimizer": hp.optimizer, "history": result.history}  # fmt: skip
    return UsageOutput({"val": result.predictions["val"], "test": result.predictions["test"]}, meta)


def _method_on_features(method: Any, spec: "RunSpec", table: "pd.DataFrame", tasks: list[str], features: Any,
                        labels: Any, part: dict[str, Any], meta: dict[str, Any], timings: dict[str, float],
                        started: float) -> UsageOutput:  # fmt: skip
    """A method that trains its own head on the cached features (fairlearn reductions) instead of the probe."""
    import numpy as np

    from fairfm.errors import InputError
    from fairfm.mitigate.base import group_codes
    from fairfm.mitigate.runs import group_names, method_attribute, method_meta

    if not isinstance(features, np.ndarray):
        raise InputError(f"method {method.name!r} trains on one feature vector per sample; this dataset's samples "
                         "are volumes (slice bags)")  # fmt: skip
    attribute = method_attribute(method, list(spec.resolve()["attributes"]))
    codes = group_codes(table[f"group_{attribute}"].astype(str).to_numpy(), group_names(table, attribute))
    probabilities = method.fit_features({s: features[rows] for s, rows in part.items()},
                                        {s: labels[part[s]] for s in ("train", "val")},
                                        {s: codes[rows] for s, rows in part.items()}, seed=spec.seed)  # fmt: skip
    timings["train_s"] = time.perf_counter() - started
    meta["method"] = method_meta(method, attribute)
    return UsageOutput({"val": probabilities["val"], "test": probabilities["test"]}, meta)
