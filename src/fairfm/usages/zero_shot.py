"""Zero-shot classification with a vision-language model: text prompts against cached image features
(:mod:`fairfm.adapt.zero_shot`). The prompt hyper-parameters and inputs are shared with :mod:`.clip_adaptation`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

from pydantic import Field, field_validator

from fairfm.usages.base import HParams, UsageOutput, register_usage
from fairfm.usages.common import cached_features as _features

if TYPE_CHECKING:
    import pandas as pd

    from fairfm.spec import RunSpec


def two_class_names(value: list[str] | None) -> list[str] | None:
    """``classnames`` of a binary task: [negative, positive] (shared by every usage that prompts with them)."""
    if value is not None and len(value) != 2:
        raise ValueError(f"expected 2 class names [negative, positive], got {len(value)}")
    return value


class _ZeroShotPrompts(HParams):
    templates: Optional[list[str]] = Field(None, description="prompt templates with '{}' (null: the dataset's)")
    classnames: Optional[list[str]] = Field(None, description="[negative, positive] class names (null: dataset's)")
    ensemble: bool = Field(True, description="average the text embeddings of all templates (false: the first "
                                             "template only, FairMedFM's single prompt)")

    @field_validator("templates")
    @classmethod
    def _has_slot(cls, value: list[str] | None) -> list[str] | None:
        for template in value or []:
            if "{}" not in template:
                raise ValueError(f"template {template!r} has no '{{}}' slot for the class name")
        return value

    _two_classes = field_validator("classnames")(two_class_names)


class ZeroShotHParams(_ZeroShotPrompts):
    batch_size: int = Field(128, ge=1)
    volume: Literal["max_slice"] = Field("max_slice", description="3D samples: the slice with the top P(class 1)")
    slice_intensity: Literal["auto", "ct_window", "minmax", "unit"] = Field(
        "auto", description="3D slices: ct_window = [-1250, 250] HU -> [0, 1], minmax = per slice, unit = the "
        "model's own scaling; auto = ct_window for CT, minmax otherwise")


def _vision_language_inputs(spec: "RunSpec", table: pd.DataFrame, *, root: Path, features_dir: Path,
                            progress: bool, timings: dict[str, float]) -> tuple[Any, Any, Any, dict[str, Any]]:  # fmt: skip
    """What the prompt-based usages (zero-shot, prototype, CLIP-Adapter) start from: the vision-language encoder,
    its cached image features, the dataset's prompts with the spec's overrides, and the meta so far."""
    from fairfm.adapt.prompts import prompts_for
    from fairfm.models import create_model

    hp = spec.typed_hparams()
    started = time.perf_counter()
    encoder = create_model(spec.model, spec.checkpoint, trust_checkpoint=spec.trust_checkpoint, **spec.model_options)
    timings["model_s"] = time.perf_counter() - started
    features, meta = _features(spec, table, encoder, root=root, features_dir=features_dir, progress=progress,
                               timings=timings)  # fmt: skip
    prompt_set = prompts_for(spec.manifest().get("dataset")).with_overrides(hp.templates, hp.classnames)
    return encoder, features, prompt_set, meta


@register_usage("zero_shot", hparams=ZeroShotHParams, trains=False, loop=None, model_family="vision-language",
                cached_features=True)  # fmt: skip
def _zero_shot(spec: "RunSpec", table: pd.DataFrame, tasks: list[str], *, root: Path, features_dir: Path,
               device: str, progress: bool, heads_path: Path | None, timings: dict[str, float]) -> UsageOutput:
    import numpy as np

    from fairfm.adapt.volumes import SliceBags, max_slice_probabilities
    from fairfm.adapt.zero_shot import zero_shot

    hp = spec.typed_hparams()
    encoder, features, prompt_set, meta = _vision_language_inputs(spec, table, root=root, features_dir=features_dir,
                                                                  progress=progress, timings=timings)  # fmt: skip
    started = time.perf_counter()

    bags = features if isinstance(features, SliceBags) else None
    rows = np.array(bags.rows, dtype=np.float32) if bags is not None else features  # a copy of the read-only cache
    result = zero_shot(encoder, rows, tasks, prompt_set, ensemble=hp.ensemble, batch_size=hp.batch_size)
    # Volumes: per task, the slice with the highest P(positive) (FairMedFM's max-pooling).
    probabilities = max_slice_probabilities(bags, result.probabilities) if bags is not None else result.probabilities
    timings["zero_shot_s"] = time.perf_counter() - started
    split = table["split"].astype(str).to_numpy()
    meta["prompts"] = {task: {"negative": neg, "positive": pos} for task, (neg, pos) in result.prompts.items()}
    meta["logit_scale"] = encoder.logit_scale
    return UsageOutput({s: probabilities[split == s] for s in ("val", "test")}, meta)
