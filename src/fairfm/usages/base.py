"""The usage registry: a usage is one module that registers its hyper-parameters, its run function and its needs.

```python
from fairfm.usages import HParams, UsageOutput, register_usage

class NearestMeanHParams(HParams):
    shrink: float = Field(0.0, ge=0, le=1)

@register_usage("nearest_mean", hparams=NearestMeanHParams, trains=True, loop=None)
def nearest_mean(spec, table, tasks, *, root, features_dir, device, progress, heads_path, timings) -> UsageOutput:
    ...
```

Everything the rest of fairfm knows about a usage is read from its :class:`Usage` entry: :mod:`fairfm.spec` validates
``hparams`` with the entry's model and refuses a model of the wrong family, :mod:`fairfm.runner` checks the splits
and the family before any work and calls the entry's ``run``. Mitigation methods name the training ``loop`` they
hook into. This module imports pydantic only (no torch, numpy or pandas), so ``fairfm.spec`` stays light.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fairfm.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from fairfm.spec import RunSpec

#: The training loops a usage can run (mitigation methods say which ones they hook into):
#: ``features`` — a head on cached features (:func:`fairfm.adapt.linear_probe.fit_head`: the linear probe);
#: ``images`` — the one image loop :func:`fairfm.adapt.train.fit` (LoRA, BitFit, VPT, adapters, full fine-tuning);
#: ``clip_head`` — prompt-initialised heads on a vision-language model's cached features (prototype, CLIP-Adapter).
LOOPS = ("features", "images", "clip_head")
#: What a usage needing a model family says it needs (``None``: any image encoder, not a promptable segmenter).
FAMILY_NEEDS = {
    "vision-language": "a vision-language model",
    "segmentation": "a promptable segmentation model such as SAM",
    None: "an image encoder of family vision or vision-language",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")  # a name as spec files, flags and run ids allow it


class _Strict(BaseModel):
    # Unknown keys are errors (a typo such as ``lerning_rate`` must not be silently ignored); NaN/inf rejected.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_default=True)


# ---------------------------------------------------------------------------------------------------------------
# The bases of every usage's hyper-parameter model (defaults from reference/METHODS.md §2)

class HParams(_Strict):
    """Base of a usage's hyper-parameter model: typed fields with defaults; unknown keys are errors."""

    def dataset_tasks(self, dataset: Path, manifest: Mapping[str, Any], labels: list[str],
                      requested: list[str] | None) -> list[str]:  # fmt: skip
        """The tasks this usage can run on a prepared dataset: its ``label_*`` columns (``labels``) unless the
        usage defines its tasks otherwise (segmentation: the mask structures)."""
        return labels


class TrainHParams(HParams):
    """What every trainable usage shares: optimiser, schedule (warm-up + half-cosine), early stopping."""

    epochs: int = Field(100, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(2.5e-4, gt=0, description="base learning rate (see lr_scaling)")
    lr_scaling: Literal["none", "linear"] = Field("none", description="linear: lr = base lr × batch / 256")
    min_lr: float = Field(1e-5, ge=0)
    warmup_epochs: float = Field(5, ge=0)
    # Only what the loops implement (fairfm.adapt.selection.lr_at): a value no code runs is refused here.
    schedule: Literal["cosine", "constant"] = "cosine"
    schedule_per: Literal["epoch", "iteration"] = "epoch"
    optimizer: Literal["sgd", "adamw", "adam"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.05, ge=0)
    class_balanced: bool = Field(True, description="class weights N/(2·N_c) in the loss")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    early_stopping_patience: Optional[int] = Field(10, ge=1, description="epochs without validation gain; null: off")
    select_by: Literal["val_auc", "val_loss", "last", "val_worst_group_auc"] = Field(
        "val_auc", description="the epoch kept: best validation macro AUC, lowest validation loss, the last one, or "
        "the best validation worst-group AUC (mean over tasks of min_g AUC_g over the groups of the method's "
        "attribute, else the run's first attribute)")
    amp: bool = Field(True, description="mixed precision on GPU (ignored on CPU)")
    num_workers: int = Field(0, ge=0)
    # 3D samples (METHODS.md §2.8); ignored for 2D images
    volume: Literal["max_slice", "oct_chunks"] = Field(
        "max_slice", description="3D samples: max_slice = FairMedFM's slice max-pooling (the slice with the top "
        "P(class 1) per task); oct_chunks = FairFedMed's OCT chunks through a trainable Conv2d (fine-tuning only)")
    oct_slice_stride: int = Field(4, ge=1, description="oct_chunks: keep every n-th B-scan (FairFedMed: 4)")
    oct_chunk_size: int = Field(8, ge=1, description="oct_chunks: B-scans per chunk (FairFedMed: 8)")
    slice_intensity: Literal["auto", "ct_window", "minmax", "unit"] = Field(
        "auto", description="3D slices before the model's preprocessing: ct_window = [-1250, 250] HU -> [0, 1], "
        "minmax = per slice, unit = the model's own scaling; auto = ct_window for CT, unit for oct_chunks, "
        "minmax otherwise")

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in value):
            raise ValueError("both betas must lie in [0, 1)")
        return value

    @model_validator(mode="after")
    def _min_lr_below_lr(self) -> "TrainHParams":
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr:g}) is larger than lr ({self.lr:g})")
        return self


class _CachedFeatures(HParams):
    """Usages trained on cached features: 3D samples are max-pooled over slices (FairMedFM); OCT chunks need a
    trainable projector in front of the encoder, which only the fine-tuning usages have."""

    @field_validator("volume", check_fields=False)
    @classmethod
    def _no_oct_chunks(cls, value: str) -> str:
        if value == "oct_chunks":
            raise ValueError("oct_chunks trains a projector in front of the encoder, which a usage on cached "
                             "features cannot do; use max_slice, or a fine-tuning usage (lora, bitfit, vpt, "
                             "adapter, full_finetune)")
        return value


# ---------------------------------------------------------------------------------------------------------------
# What a usage returns, and its registration


@dataclass
class UsageOutput:
    """What a usage returns: (N, T) probabilities per split, and what to record in meta.json — or, for a usage
    that scores its own rows (segmentation: per-sample ``dice``/``iou``), the ready ``predictions`` rows (with
    ``sample_id``, ``task``, ``split`` and the sample's ``group_*`` columns) and empty ``probabilities``."""

    probabilities: "dict[str, np.ndarray]"
    meta: dict[str, Any]
    predictions: "pd.DataFrame | None" = None


#: ``fn(spec, table, tasks, *, root, features_dir, device, progress, heads_path, timings) -> UsageOutput``: ``table``
#: holds the rows of the splits the usage needs (column ``split``), ``tasks`` the resolved tasks.
UsageFn = Callable[..., UsageOutput]


@dataclass(frozen=True)
class Usage:
    """A registered usage: its name, hyper-parameter model, run function and what it needs, declared once."""

    name: str
    hparams: type[HParams]
    #: the registered function run with every random generator seeded from ``spec.seed`` (see :func:`seeded_run`)
    run: UsageFn
    #: trained on the train split (so a dataset needs train, val and test samples; val picks the epoch)
    trains: bool
    #: the training loop it runs (one of :data:`LOOPS`), None for a usage that trains nothing of the loops
    loop: Optional[str]
    #: the model family it needs: "vision-language", "segmentation", or None (any image encoder)
    model_family: Optional[str] = None
    #: scores its own rows with per-sample Dice/IoU instead of probabilities (no threshold, no train split)
    segmentation: bool = False
    #: starts from the cached frozen-encoder features, so its numbers also depend on results version "features"
    cached_features: bool = False
    #: this usage's results version (part of its run ids; :mod:`fairfm.results.versions`): bump it when the same
    #: spec, data and weights would give other numbers; never lower it
    results_version: int = 1
    #: image loop: ``"module:function"`` building the trainable model (a
    #: :data:`fairfm.adapt.peft_usages.ModelBuilder`; None: ``image_model``, the PEFT usages' encoder + linear head),
    #: named by path so that registering a usage imports no torch; the federated clients build it the same way
    model_builder: Optional[str] = None
    #: ``"module:function"`` ``(spec) -> hparams`` when the usage completes its hyper-parameters from the spec (e.g.
    #: class names from the dataset card); None: ``spec.typed_hparams()``
    hparams_resolver: Optional[str] = None

    def build_model_fn(self) -> Callable[..., Any]:
        """The model builder of an image-loop usage (see :attr:`model_builder`)."""
        return _resolve(self.model_builder or "fairfm.adapt.peft_usages:image_model")

    def typed_hparams(self, spec: "RunSpec") -> HParams:
        """The run's hyper-parameters as this usage reads them (see :attr:`hparams_resolver`)."""
        return _resolve(self.hparams_resolver)(spec) if self.hparams_resolver else spec.typed_hparams()

    def family_refusal(self, model: str, family: str) -> str | None:
        """Why a model of ``family`` cannot serve this usage (the one rule of spec validation and the runner's
        preflight), or None when it can."""
        if self.model_family is None and family != "segmentation":
            return None
        if self.model_family is not None and family == self.model_family:
            return None
        return (f"model {model!r} is a {family} model: {self.name} needs {FAMILY_NEEDS[self.model_family]} "
                "(see 'fairfm models list')")

    def needed_splits(self, has_val: bool = True) -> tuple[str, ...]:
        """The splits a run of this usage reads: train/val/test when it trains; val/test otherwise (val picks the
        threshold); a segmentation usage thresholds nothing, so val only when the dataset has one."""
        if self.segmentation:
            return ("val", "test") if has_val else ("test",)
        return ("train", "val", "test") if self.trains else ("val", "test")


_USAGES: dict[str, Usage] = {}


def _resolve(path: str) -> Callable[..., Any]:
    import importlib

    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def register_usage(name: str, *, hparams: type[HParams], trains: bool, loop: str | None,
                   model_family: str | None = None, segmentation: bool = False, cached_features: bool = False,
                   results_version: int = 1, model_builder: str | None = None,
                   hparams_resolver: str | None = None) -> Callable[[UsageFn], UsageFn]:  # fmt: skip
    """Function decorator: register the usage ``name`` — its hyper-parameter model, the decorated run function and
    what it needs (the fields of :class:`Usage`). Registering the same name again with other code is an error (two
    modules claiming a name)."""
    if loop not in (*LOOPS, None):
        raise ValueError(f"usage {name!r}: loop {loop!r} is not one of {', '.join(LOOPS)} or None")
    if loop is not None and not trains:
        raise ValueError(f"usage {name!r}: a usage that runs the {loop!r} loop trains (trains=True)")
    if model_family not in FAMILY_NEEDS:
        raise ValueError(f"usage {name!r}: model_family {model_family!r} is not one of "
                         f"{', '.join(str(f) for f in FAMILY_NEEDS)}")  # fmt: skip
    if not (isinstance(results_version, int) and results_version >= 0):
        raise ValueError(f"usage {name!r}: results_version must be an integer ≥ 0, got {results_version!r}")
    if not (isinstance(hparams, type) and issubclass(hparams, HParams)):
        raise ValueError(f"usage {name!r}: hparams must be a subclass of fairfm.usages.HParams")

    def decorate(fn: UsageFn) -> UsageFn:
        known = _USAGES.get(name)
        if known is not None and (known.run.__wrapped__ is not fn or known.hparams is not hparams):  # type: ignore[attr-defined]
            raise ValueError(f"usage {name!r} registered twice")
        _USAGES[name] = Usage(name=name, hparams=hparams, run=seeded_run(fn), trains=trains, loop=loop,
                              model_family=model_family, segmentation=segmentation,
                              cached_features=cached_features, results_version=results_version,
                              model_builder=model_builder, hparams_resolver=hparams_resolver)  # fmt: skip
        return fn

    return decorate


def seeded_run(fn: UsageFn) -> UsageFn:
    """``fn`` run with every random generator seeded from ``spec.seed`` (model construction, initialisation, dropout,
    data order) and the caller's random state restored afterwards, so a run gives the same numbers whatever ran
    before it in the process (a local or pool sweep)."""

    @functools.wraps(fn)
    def run_seeded(spec: "RunSpec", *args: Any, **kwargs: Any) -> UsageOutput:
        from fairfm.adapt.seeding import derive_seed, seeded

        with seeded(derive_seed(spec.seed, "run")):
            return fn(spec, *args, **kwargs)

    return run_seeded


def get_usage(name: str) -> Usage:
    """The registered usage ``name`` (exact name; :func:`fairfm.spec.canonical_usage` resolves aliases)."""
    _load_builtins()
    if name not in _USAGES:
        raise InputError(f"unknown usage {name!r}; known usages: {', '.join(list_usages())}")
    return _USAGES[name]


def list_usages() -> list[str]:
    """The names of every registered usage, sorted."""
    _load_builtins()
    return sorted(_USAGES)


def _load_builtins() -> None:
    import fairfm.usages  # noqa: F401 - importing the package registers the built-in usages
