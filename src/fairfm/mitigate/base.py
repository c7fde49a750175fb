"""What a mitigation method is: its parameters, what it needs, and the hooks it gives the training loops.

A method is one module under :mod:`fairfm.mitigate` holding a :class:`MethodParams` model and a
:class:`Method` subclass registered with :func:`register_method`::

    class GroupDROParams(MethodParams):
        step_size: float = Field(0.01, gt=0, description="η of the exponentiated-gradient group weights")

    @register_method("group_dro")
    class GroupDRO(Method):
        params_model = GroupDROParams
        needs = Needs(loops=("features", "images"))
        summary = "minimise the worst group's loss (online group weights)"
        reference = "Sagawa et al. 2020; MEDFAIR models/GroupDRO (METHODS.md §3.3)"

        def training_hooks(self, context):
            ...
            return TrainHooks(loss=worst_group_loss)

Nothing else is edited: the spec validates ``method_params`` with ``params_model``, refuses a usage whose training
loop the method does not serve (``needs.loops``) before any work, and the runner hands the method's hooks to the
usage's loop. Both loops — the head on cached features (:func:`fairfm.adapt.linear_probe.fit_head`) and the one
image loop (:func:`fairfm.adapt.train.fit`) — honour the same :class:`TrainHooks`, so a data- or loss-level method
written once also runs on the linear probe over cached features.

A method either changes training (:meth:`Method.training_hooks`), post-processes the usage's scores
(:meth:`Method.post_process`, e.g. group-specific thresholds fitted on validation), or replaces the training of a
head on cached features (:meth:`Method.fit_features`, e.g. fairlearn reductions). A method that needs the
sensitive attribute at prediction time says so (``needs.attribute_at_test``, or :meth:`Method.uses_attribute_at_test`
when a parameter decides), and the run records it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal, Mapping, Optional, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fairfm.errors import InputError
from fairfm.usages.base import LOOPS as USAGE_LOOPS

if TYPE_CHECKING:
    import torch
    from torch import nn

#: The training loops a usage can run (its registered ``loop``, :data:`fairfm.usages.base.LOOPS`): a head on cached
#: features, the one image loop (:func:`fairfm.adapt.train.fit`), the CLIP heads on cached features, or None (a usage
#: that trains nothing: zero-shot, prompting).
Loop = Optional[Literal["features", "images", "clip_head"]]
LOOPS: tuple[Loop, ...] = (*USAGE_LOOPS, None)


class MethodParams(BaseModel):
    """Base of a method's parameters; unknown keys are errors. ``attribute`` is the sensitive attribute the method
    acts on (null: the run's first attribute)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_default=True)

    attribute: Optional[str] = Field(None, description="sensitive attribute the method uses (null: the run's first)")


@dataclass(frozen=True)
class Needs:
    """What a method needs from a run, checked before any work."""

    loops: tuple[Loop, ...]  # the usages' training loops it serves
    attribute_at_train: bool = True  # reads the sensitive attribute while training
    attribute_at_test: bool = False  # reads it to predict (the run is then attribute-aware)
    binary_attribute: bool = False  # two groups only (LAFTR, CFair)
    task: Literal["classification", "segmentation"] = "classification"
    vision_language: bool = False  # needs a vision-language model (FairCLIP)

    def describe(self) -> dict[str, Any]:
        return {"loops": [loop or "none" for loop in self.loops], "attribute_at_train": self.attribute_at_train,
                "attribute_at_test": self.attribute_at_test, "binary_attribute": self.binary_attribute,
                "task": self.task, "vision_language": self.vision_language}  # fmt: skip


class GroupContext:
    """The sensitive-attribute codes of the batch being forwarded, for modules that condition on the group
    (FIN, DomainInd heads, FairLoRA's singular values). The loops set ``codes`` before every forward: the batch's
    group codes while training, and while predicting the codes (attribute-aware inference) or None
    (attribute-blind inference: each module applies its group-blind rule)."""

    def __init__(self, n_groups: int) -> None:
        self.n_groups = n_groups
        self.codes: "torch.Tensor | None" = None


@dataclass
class LossInputs:
    """What a method's loss sees for one training batch. ``per_element`` is the default loss per (sample, task):
    class-weighted BCE, 0 where a label is unknown (``known``); ``default`` is its mean over known labels."""

    logits: "torch.Tensor"  # (B, T); (B, T, 2) class logits in the clip_head loop
    targets: "torch.Tensor"  # (B, T), NaN = unknown
    groups: "torch.Tensor"  # (B,) long group codes
    features: "torch.Tensor"  # (B, D) what the head reads
    per_element: "torch.Tensor"  # (B, T)
    known: "torch.Tensor"  # (B, T) bool
    epoch: int  # 0-based
    rows: "torch.Tensor | None" = None  # (B,) training-row indices, when the loop knows them
    # (B, T, 2) cosine similarity of each image with task t's [negative, positive] class texts (clip_head loop)
    similarity: "torch.Tensor | None" = None

    @property
    def default(self) -> "torch.Tensor":
        return self.per_element.sum() / self.known.sum().clamp(min=1)

    def per_sample(self) -> "torch.Tensor":
        """(B,) mean loss over each sample's known labels (0 for a sample without any)."""
        return self.per_element.sum(dim=1) / self.known.sum(dim=1).clamp(min=1)


@dataclass
class TrainHooks:
    """How a method changes a training loop; every field is optional (the default is plain ERM).

    ``rows(epoch)``
        the training-row indices drawn for an epoch, in order (resampling, balanced subsets); replaces the seeded
        shuffle. The method seeds its own draws (from ``context.seed`` and ``epoch``).
    ``loss(inputs: LossInputs) -> scalar``
        replaces the default loss (group DRO, reweighting, FIS).
    ``regularizer``
        an ``nn.Module`` with ``forward(inputs: LossInputs) -> scalar`` added to the loss; its parameters train with
        the model (adversaries behind gradient reversal, EnD, ODR). Its state is kept with the model's.
    ``wrap_head(head) -> nn.Module``
        replaces the linear head (``(B, D) → (B, T)``) by a module built around it (FIN in front of it,
        DomainInd's per-group heads); its parameters train.
    ``wrap_backbone(backbone) -> list[str]``
        changes the backbone in place (FairLoRA) and names the new trainable parameters (relative to it). Image loop
        only.
    ``group_context``
        set by the loop before every forward (see :class:`GroupContext`).
    ``attribute_aware_inference``
        predictions read the sample's group (``group_context.codes`` set while predicting).
    ``step(optimizer, closure)``
        performs the optimiser step given ``closure() -> loss`` that recomputes the loss and its gradients (the SAM
        optimiser's two passes); None: ``optimizer.step()``.
    ``after_step(model)`` / ``on_epoch_end``
        called after each optimiser step (dense weight averaging) / each validation.
    ``final_state(selected_state, model) -> state``
        the state to predict with instead of the selected one (SWAD's averaged weights), or None to keep it.
    ``update_bn``
        re-estimate the BatchNorm running statistics of a replaced final state on the training rows (image loop;
        the heads of the other loops have no BatchNorm).
    ``clip_grad_norm``
        clip the total gradient norm of everything the optimiser steps to this value before every step (LAFTR's
        5.0), in both loops; with a usage's own clipping the tighter bound applies (None: the usage's, if any).
    """

    rows: Callable[[int], np.ndarray] | None = None
    loss: Callable[[LossInputs], "torch.Tensor"] | None = None
    regularizer: "nn.Module | None" = None
    wrap_head: Callable[["nn.Module"], "nn.Module"] | None = None
    wrap_backbone: Callable[["nn.Module"], list[str]] | None = None
    group_context: GroupContext | None = None
    attribute_aware_inference: bool = False
    step: Callable[[Any, Callable[[], "torch.Tensor"]], None] | None = None
    after_step: Sequence[Callable[[Any], None]] = ()
    on_epoch_end: Sequence[Callable[[Any], bool | None]] = ()
    final_state: Callable[[Mapping[str, "torch.Tensor"], Any], Mapping[str, "torch.Tensor"] | None] | None = None
    update_bn: bool = False
    clip_grad_norm: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # recorded in the run's meta.json under "method"


@dataclass
class TrainContext:
    """What a method knows when it builds its hooks: the training rows' labels and groups, and the run."""

    loop: Loop
    tasks: list[str]
    attribute: str | None  # None for a method that reads no attribute (one group, "all")
    group_names: list[str]  # sorted; codes index this list
    train_groups: np.ndarray  # (N_train,) int codes
    train_labels: np.ndarray  # (N_train, T) 0/1/NaN
    seed: int
    epochs: int
    batch_size: int
    device: str = "cpu"
    feature_dim: int | None = None  # dimension of what the head reads (features loop: known up front)
    val_groups: np.ndarray | None = None  # (N_val,) int codes, when the run has a val split
    val_labels: np.ndarray | None = None  # (N_val, T) 0/1/NaN
    test_groups: np.ndarray | None = None  # (N_test,) int codes
    volumes: bool = False  # the samples are volumes (the dataset card's dims 3, no 2D view): slice bags on features

    @property
    def n_groups(self) -> int:
        return len(self.group_names)


@dataclass
class ScoreSet:
    """One split's scores for post-processing: (N, T) probabilities, labels (NaN unknown; None for the test split,
    which a post-processing method must never fit on), group codes (indices into ``group_names``, when known) and
    the task names (for error messages)."""

    probabilities: np.ndarray
    labels: np.ndarray | None
    groups: np.ndarray
    group_names: Sequence[str] | None = None
    tasks: Sequence[str] | None = None


class Method:
    """Base of a registered mitigation method; subclasses set the class attributes and override what they do."""

    name: ClassVar[str] = ""
    params_model: ClassVar[type[MethodParams]] = MethodParams
    needs: ClassVar[Needs] = Needs(loops=("features", "images"))
    summary: ClassVar[str] = ""
    reference: ClassVar[str] = ""
    #: The threshold policy the method's scores need, or None for any: a method whose scores are decisions (the
    #: randomised classifiers of fairlearn) needs "0.5"; a spec that leaves ``threshold`` out gets it, a spec that
    #: asks for another policy is refused.
    decision_threshold: ClassVar[str | None] = None
    #: bump when the method's code changes its numbers for the same spec: stored runs become stale (part of the run
    #: id, see :mod:`fairfm.results.versions`)
    results_version: ClassVar[int] = 1

    def __init__(self, params: MethodParams) -> None:
        self.params = params
        # What a post-processing or fit_features method learnt (thresholds, predictor weights), filled while it
        # runs; recorded in the run's meta.json under method.details.
        self.fitted: dict[str, Any] = {}

    # -- what a run needs --------------------------------------------------------------------------------------
    def uses_attribute_at_test(self) -> bool:
        """Whether predictions read the sensitive attribute (a parameter may decide, e.g. DomainInd's inference)."""
        return self.needs.attribute_at_test

    def refusal(self, loop: Loop, usage: str, *, n_groups: int | None = None, model_family: str | None = None) -> str | None:
        """Why this method cannot run with ``usage`` (whose training loop is ``loop``), or None."""
        from fairfm.usages import get_usage

        segments = get_usage(usage).segmentation
        if segments != (self.needs.task == "segmentation"):
            what = "segmentation" if self.needs.task == "segmentation" else "classification"
            return (f"method {self.name!r} is a {what} method; usage {usage!r} "
                    f"{'segments' if segments else 'classifies'}")  # fmt: skip
        if loop not in self.needs.loops:
            served = ", ".join(loop_name(lp) for lp in self.needs.loops)
            return f"method {self.name!r} does not serve usage {usage!r} ({loop_name(loop)}); it serves {served}"
        if self.needs.binary_attribute and n_groups is not None and n_groups != 2:
            return f"method {self.name!r} needs a binary attribute; {self.attribute_label()} has {n_groups} groups"
        if self.needs.vision_language and model_family is not None and model_family != "vision-language":
            return f"method {self.name!r} needs a vision-language model; the model is a {model_family} model"
        return None

    def report_warnings(self) -> list[str]:
        """Warnings the run's report carries (e.g. that its AUC does not rank like the usage's scores)."""
        return []

    def attribute_label(self) -> str:
        return repr(self.params.attribute) if self.params.attribute else "the attribute"

    def check(self, context: TrainContext) -> None:
        """Refuse (InputError) what this method cannot do on the run's data, before any work: the runner's
        pre-flight calls it with the prepared table's training (and validation) rows. The default refuses nothing."""

    # -- what it does (override one) ---------------------------------------------------------------------------
    def training_hooks(self, context: TrainContext) -> TrainHooks:
        """The hooks this method gives the training loop."""
        return TrainHooks()

    def post_process(self, val: ScoreSet, test: ScoreSet, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(val, test) probabilities after post-processing; the default leaves them unchanged."""
        return val.probabilities, test.probabilities

    def fit_features(self, features: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                     groups: Mapping[str, np.ndarray], *, seed: int) -> dict[str, np.ndarray] | None:  # fmt: skip
        """Replaces the linear probe's training on cached features: ``features``/``groups`` for train, val and test,
        ``labels`` for train and val; returns (N, T) probabilities for val and test. None: not this kind."""
        return None

    @property
    def post_processes(self) -> bool:
        return type(self).post_process is not Method.post_process

    @property
    def replaces_probe(self) -> bool:
        return type(self).fit_features is not Method.fit_features

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "summary": self.summary, "reference": self.reference,
                "needs": self.needs.describe(), "params": _params_schema(self.params_model)}  # fmt: skip


def loop_name(loop: Loop) -> str:
    return {"features": "a head on cached features", "images": "the image training loop",
            "clip_head": "CLIP heads on cached features", None: "no training loop"}[loop]  # fmt: skip


def _params_schema(model: type[MethodParams]) -> dict[str, Any]:
    out = {}
    for name, info in model.model_fields.items():
        default = info.default if info.default_factory is None else info.default_factory()
        out[name] = {"default": default, "description": info.description or ""}
    return out


# ------------------------------------------------------------------------------------------------ registry

_METHODS: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: register a :class:`Method` subclass under ``name``."""

    def decorate(cls: type[Method]) -> type[Method]:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return decorate


@functools.cache  # once per process: a sweep validates every cell's spec
def _load_builtins() -> None:
    import importlib
    import pkgutil

    import fairfm.mitigate as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_") and info.name not in ("base", "runs"):  # the framework, not methods
            importlib.import_module(f"fairfm.mitigate.{info.name}")


def list_methods() -> list[str]:
    _load_builtins()
    return sorted(_METHODS)


def get_method_class(name: str) -> type[Method]:
    _load_builtins()
    if name not in _METHODS:
        raise InputError(f"method {name!r} is not known; known methods: {', '.join(sorted(_METHODS))} "
                         "(see 'fairfm methods list')")  # fmt: skip
    return _METHODS[name]


def build_method(name: str, params: Mapping[str, Any] | None = None) -> Method:
    """The method ``name`` with validated ``params`` (a pydantic ValidationError on bad ones)."""
    cls = get_method_class(name)
    return cls(cls.params_model.model_validate(dict(params or {})))


def require_package(module: str, method: str) -> None:
    """Refuse a method whose optional package is not installed, before any work."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise InputError(f"method {method!r} needs the package {module!r}, which is not installed: "
                         "pip install 'fairfm[models]'")  # fmt: skip


def group_codes(values: Sequence[Any] | np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Codes (indices into ``names``) of group labels; an InputError names a label not in ``names``."""
    index = {name: i for i, name in enumerate(names)}
    labels = np.asarray(values).astype(str)
    codes = np.fromiter((index.get(v, -1) for v in labels), dtype=np.int64, count=labels.size)
    if (codes < 0).any():
        raise InputError(f"group {labels[np.argmax(codes < 0)]!r} was not among the training groups "
                         f"({', '.join(names)})")  # fmt: skip
    return codes
