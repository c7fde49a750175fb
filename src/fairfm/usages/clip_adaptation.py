"""CLIP adaptation on a vision-language model's cached image features: prototype tuning (FairMedFM's 'CLIP-Adapt')
and Gao et al.'s CLIP-Adapter (:mod:`fairfm.adapt.clip_adaptation`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from fairfm.usages.base import TrainHParams, UsageOutput, _CachedFeatures, register_usage
from fairfm.usages.common import label_matrix as _labels
from fairfm.usages.zero_shot import _vision_language_inputs, _ZeroShotPrompts

if TYPE_CHECKING:
    import pandas as pd

    from fairfm.spec import RunSpec


class PrototypeHParams(_CachedFeatures, TrainHParams, _ZeroShotPrompts):
    """FairMedFM 'CLIP-Adapt': tune the per-class text embeddings (50 epochs, blr 2.5e-2)."""

    epochs: int = Field(50, ge=1)
    lr: float = Field(2.5e-2, gt=0)


class ClipAdapterHParams(_CachedFeatures, TrainHParams, _ZeroShotPrompts):
    """Gao et al.'s residual bottleneck adapter: f' = r·A(f) + (1 − r)·f."""

    residual_ratio: float = Field(0.2, gt=0, le=1)
    reduction: int = Field(4, ge=1)
    text_adapter: bool = False


@register_usage("prototype", hparams=PrototypeHParams, trains=True, loop="clip_head", model_family="vision-language",
                cached_features=True)  # fmt: skip
@register_usage("clip_adapter", hparams=ClipAdapterHParams, trains=True, loop="clip_head",
                model_family="vision-language", cached_features=True)  # fmt: skip
def _clip_adaptation(spec: "RunSpec", table: pd.DataFrame, tasks: list[str], *, root: Path, features_dir: Path,
                     device: str, progress: bool, heads_path: Path | None,
                     timings: dict[str, float]) -> UsageOutput:  # fmt: skip
    """Prototype tuning or CLIP-Adapter on the cached image features of a vision-language model."""
    import numpy as np

    from fairfm.adapt.clip_adaptation import clip_adapter, prototype_tuning
    from fairfm.mitigate.runs import loop_setup

    hp = spec.typed_hparams()
    encoder, features, prompt_set, meta = _vision_language_inputs(spec, table, root=root, features_dir=features_dir,
                                                                  progress=progress, timings=timings)  # fmt: skip
    split = table["split"].astype(str).to_numpy()
    labels = _labels(table, tasks)
    part = {name: np.flatnonzero(split == name) for name in ("train", "val", "test")}
    train = {"prototype": prototype_tuning, "clip_adapter": clip_adapter}[spec.usage]
    started = time.perf_counter()
    setup = loop_setup(spec, table, tasks, "clip_head", hp, device=device)
    result = train({name: features[rows] for name, rows in part.items()},
                   {name: labels[part[name]] for name in ("train", "val")}, encoder, tasks, prompt_set,
                   hparams=hp, seed=spec.seed, device=device, progress=progress, hooks=setup.hooks,
                   groups=setup.groups)  # fmt: skip
    timings["train_s"] = time.perf_counter() - started
    if heads_path is not None:
        result.save(heads_path)
        meta["head"] = str(heads_path)
    meta.update(result.meta)
    setup.record(meta)
    return UsageOutput({"val": result.probabilities["val"], "test": result.probabilities["test"]}, meta)
