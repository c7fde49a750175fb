"""Fine-tuning the encoder on the one training loop (:func:`fairfm.adapt.train.fit`): LoRA, BitFit, VPT, adapters
and full fine-tuning, each with its own hyper-parameters (:mod:`fairfm.adapt.peft_usages` applies them)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Optional

from pydantic import Field, field_validator

from fairfm.errors import InputError
from fairfm.usages.base import TrainHParams, UsageOutput, register_usage

if TYPE_CHECKING:
    import pandas as pd

    from fairfm.spec import RunSpec


class LoraHParams(TrainHParams):
    rank: int = Field(8, ge=1)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: Optional[list[str]] = Field(None, description="module names (null: the model card's)")
    optimizer: Literal["sgd", "adamw", "adam"] = "adamw"
    lr: float = Field(1e-4, gt=0)


class BitFitHParams(TrainHParams):
    optimizer: Literal["sgd", "adamw", "adam"] = "adamw"
    lr: float = Field(1e-3, gt=0)


class VptHParams(TrainHParams):
    prompt_length: int = Field(10, ge=1)
    deep: bool = False
    dropout: float = Field(0.0, ge=0, lt=1)  # on the prompts; they start uniform as in Jia et al. (VPT)
    optimizer: Literal["sgd", "adamw", "adam"] = "adamw"
    lr: float = Field(1e-3, gt=0)


class AdapterHParams(TrainHParams):
    bottleneck: int = Field(64, ge=1)
    scale: float = Field(1.0, gt=0)
    placement: Literal["parallel", "sequential"] = "parallel"  # AdaptFormer beside the MLP, or Houlsby after it
    optimizer: Literal["sgd", "adamw", "adam"] = "adamw"
    lr: float = Field(1e-3, gt=0)


class FullFinetuneHParams(TrainHParams):
    """Khan et al.'s recipe (METHODS.md §2.6): AdamW β2 0.95, blr 2.5e-4 × batch/256, layer decay 0.55, per-step
    warm-up + cosine, drop path 0.2, RandAugment m6."""

    optimizer: Literal["sgd", "adamw", "adam"] = "adamw"
    betas: tuple[float, float] = (0.9, 0.95)
    lr_scaling: Literal["none", "linear"] = "linear"
    schedule_per: Literal["epoch", "iteration"] = "iteration"
    layer_decay: float = Field(0.55, gt=0, le=1)
    drop_path: float = Field(0.2, ge=0, lt=1)
    randaugment: Optional[str] = Field("rand-m6-mstd0.5-inc1", description="timm auto-augment string; null: off")

    @field_validator("randaugment")
    @classmethod
    def _timm_randaugment(cls, value: str | None) -> str | None:
        if value is not None:
            _check_randaugment(value)
        return value


def _check_randaugment(config: str) -> None:
    """A string timm's ``rand_augment_transform`` parses (checked when timm is installed: the usage needs it)."""
    if not config.startswith("rand"):
        raise ValueError(f"{config!r} is not a timm RandAugment string (e.g. 'rand-m6-mstd0.5-inc1')")
    try:
        from timm.data import rand_augment_transform
    except ImportError:  # the models extra is missing: the run itself says so
        return
    try:
        rand_augment_transform(config, {"translate_const": 0.45, "img_mean": (124, 116, 104)})
    except Exception as exc:  # noqa: BLE001 - timm raises assorted errors for a malformed string
        raise ValueError(f"{config!r} is not a timm RandAugment string ({exc})") from None


def _finetune(spec: "RunSpec", table: pd.DataFrame, tasks: list[str], *, root: Path, features_dir: Path,
              device: str, progress: bool, heads_path: Path | None, timings: dict[str, float]) -> UsageOutput:
    """LoRA, BitFit or full fine-tuning on the one training loop (:mod:`fairfm.adapt.train`)."""
    from fairfm.adapt.peft_usages import finetune, model_overrides
    from fairfm.models import create_model, get_model

    hp = spec.typed_hparams()
    started = time.perf_counter()
    # A fresh encoder per run: fine-tuning changes it in place.
    options = {**spec.model_options, **model_overrides(spec.usage, hp, get_model(spec.model).library)}
    encoder = create_model(spec.model, spec.checkpoint, trust_checkpoint=spec.trust_checkpoint, **options)
    timings["model_s"] = time.perf_counter() - started
    started = time.perf_counter()
    modality = (spec.manifest().get("card") or {}).get("modality")  # CT slices are windowed, others min-max'd
    method_hooks: dict[str, Any] = {}
    if spec.method is not None:
        from fairfm.mitigate.runs import run_method, training_setup

        method = run_method(spec)
        if not method.post_processes:
            hooks, _, attribute = training_setup(method, spec, table, tasks, "images", hp, device=device)
            method_hooks = {"hooks": hooks, **({"group_column": f"group_{attribute}"} if attribute else {})}
    group_column = {}
    if "group_column" not in method_hooks and hp.select_by == "val_worst_group_auc":  # the run's first attribute's groups
        attributes = list(spec.resolve()["attributes"])
        if not attributes:
            raise InputError("hparams.select_by: val_worst_group_auc needs a sensitive attribute; the run has none")
        group_column = {"group_column": f"group_{attributes[0]}"}
    out = finetune(spec.usage, hp, encoder, table, tasks, root=root, seed=spec.seed, device=device,
                   column=spec.image_column(), progress=progress, modality=modality, **method_hooks,
                   **group_column)  # fmt: skip
    timings["train_s"] = time.perf_counter() - started
    meta = dict(out.meta)
    if method_hooks:
        from fairfm.mitigate.runs import method_meta

        meta["method"] = method_meta(method, attribute, method_hooks["hooks"])
    if heads_path is not None:
        out.save(heads_path)
        meta["trained_state"] = str(heads_path)
    return UsageOutput({"val": out.probabilities["val"], "test": out.probabilities["test"]}, meta)


for _usage, _hparams in (("lora", LoraHParams), ("bitfit", BitFitHParams), ("vpt", VptHParams),
                         ("adapter", AdapterHParams), ("full_finetune", FullFinetuneHParams)):  # fmt: skip
    register_usage(_usage, hparams=_hparams, trains=True, loop="images")(_finetune)
