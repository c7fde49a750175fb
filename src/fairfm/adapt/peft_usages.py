"""Parameter-efficient and full fine-tuning usages on the one training loop (METHODS.md §2.5, §2.6).

Each usage decides *which* parameters of the model's image encoder train; :func:`fairfm.adapt.train.fit` does
the training. The head (one output per task) always trains.

``lora``
    peft's LoRA (``LoraConfig`` + ``inject_adapter_in_model``) injected into the image tower only (so a CLIP's
    text tower, which shares layer names such as ``q_proj``, is never adapted); rank / alpha / dropout from
    :class:`~fairfm.spec.LoraHParams`; target modules from ``hparams.targets`` or the family default of
    MODELS.md §7 (timm ViT and open_clip timm trunks ``qkv``; open_clip native ViT ``attn`` = its
    ``nn.MultiheadAttention``, which peft adapts with its MHA-LoRA; transformers ``q_proj``/``v_proj``;
    BLIP-2's vision model ``qkv``). Trainable: exactly the ``lora_`` parameters + head.
``bitfit``
    every bias vector of the image path (the parameters the image forward uses: :func:`image_path_parameters`)
    + head. Hand-written because BitFit is not a peft tuner (peft has no bias-only method); it is a freezing
    rule, not new modules.
``vpt`` / ``adapter``
    visual prompt tuning (shallow or deep) / zero-initialised bottleneck adapters per block, from
    :mod:`fairfm.adapt.vpt` (hand-written: peft has neither for vision models); the backbone is frozen and
    only the prompts / adapters + head train. timm ViTs, open_clip timm trunks and open_clip's native ViT.
``full_finetune``
    every parameter of the image path + head, with layer-wise lr decay (timm backbones), drop path (applied at
    model construction: :func:`model_overrides`) and RandAugment on 8-bit images (Khan et al. / Medical MAE).

The runner calls :func:`finetune` (see its docstring for the wiring).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fairfm.errors import InputError

if TYPE_CHECKING:
    from torch import nn

    from fairfm.adapt.train import FitResult
    from fairfm.models.base import Encoder
    from fairfm.spec import TrainHParams

FINETUNE_USAGES = ("lora", "bitfit", "full_finetune", "vpt", "adapter")

#: the hparams fields each hand-written usage reads (checked, so a wrong hparams type is a clear error)
_USAGE_FIELDS = {"vpt": ("prompt_length", "deep"), "adapter": ("bottleneck", "scale")}

#: Attributes under which a model keeps its image tower (open_clip ``visual``; transformers ``vision_model``).
_IMAGE_TOWERS = ("visual", "vision_model")


def image_tower(encoder: "Encoder") -> tuple["nn.Module", str]:
    """The sub-module that encodes images and its name prefix in ``encoder.module`` ('' for a pure image
    model)."""
    for name in _IMAGE_TOWERS:
        tower = getattr(encoder.module, name, None)
        if tower is not None and hasattr(tower, "parameters"):
            return tower, f"{name}."
    return encoder.module, ""


def image_path_parameters(encoder: "Encoder") -> list[str]:
    """Names (in ``encoder.module``) of the parameters the image forward uses: those that receive a gradient
    from one forward/backward pass of the encoder's image function on a random batch.

    Measured rather than listed per family, so a CLIP's projection (``visual_projection``, ``visual.proj``), a
    BLIP-2 Q-Former or a SigLIP pooling head count, and text-only parameters (text tower, ``logit_scale``)
    never train. The module stays in eval mode (no BatchNorm statistics change) and its flags and gradients
    are restored.
    """
    import torch

    module = encoder.module
    flags = {name: p.requires_grad for name, p in module.named_parameters()}
    training = module.training
    module.eval()
    try:
        for p in module.parameters():
            p.requires_grad_(True)
            p.grad = None
        size = encoder.preprocess.size
        batch = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
        encoder.image_features(batch).float().sum().backward()
        return [name for name, p in module.named_parameters() if p.grad is not None]
    finally:
        for name, p in module.named_parameters():
            p.grad = None
            p.requires_grad_(flags[name])
        module.train(training)


#: library name (``ModelCard.library``) -> ``fn(image tower) -> LoRA target module names``
_LORA_TARGETS: dict[str, Callable[[Any], list[str]]] = {}


def register_lora_targets(*libraries: str):
    """Register a model library's default LoRA targets (a new family does so from its own file)."""

    def decorate(fn: Callable[[Any], list[str]]) -> Callable[[Any], list[str]]:
        for library in libraries:
            _LORA_TARGETS[library] = fn
        return fn

    return decorate


@register_lora_targets("timm")
def _timm_targets(tower: Any) -> list[str]:
    return ["qkv"]  # fused attention projection of timm ViTs (MODELS.md §7)


@register_lora_targets("open_clip")
def _open_clip_targets(tower: Any) -> list[str]:
    # a timm trunk (BiomedCLIP) has timm's fused qkv; the native ViT has nn.MultiheadAttention ``attn``
    return ["qkv"] if hasattr(tower, "trunk") else ["attn"]


@register_lora_targets("transformers")
def _transformers_targets(tower: Any) -> list[str]:
    # transformers 5 names the projections q_proj/k_proj/v_proj (``query``/``value`` no longer match);
    # BLIP/BLIP-2 vision models keep one fused ``qkv``
    names = {name.rsplit(".", 1)[-1] for name, _ in tower.named_modules()}
    return ["qkv"] if "qkv" in names else ["q_proj", "v_proj"]


def default_lora_targets(encoder: "Encoder") -> list[str]:
    """LoRA target module names of the model's family (MODELS.md §7)."""
    library = encoder.card.library
    if library not in _LORA_TARGETS:
        raise InputError(
            f"model {encoder.card.name!r} ({library}): no default LoRA targets; set hparams.targets"
        )
    return _LORA_TARGETS[library](image_tower(encoder)[0])


def model_overrides(usage: str, hparams: "TrainHParams", library: str) -> dict[str, Any]:
    """Constructor overrides a usage needs when the model is created (``create_model(name, ckpt,
    **overrides)``): drop path for full fine-tuning of timm models (Medical MAE's ``--drop_path 0.2``). Other
    libraries take no
    drop-path argument at construction; their runs record drop path as not applied."""
    rate = getattr(hparams, "drop_path", 0.0)
    if usage == "full_finetune" and library == "timm" and rate:
        return {"drop_path_rate": float(rate)}
    return {}


def apply_usage(usage: str, encoder: "Encoder", hparams: "TrainHParams") -> tuple[list[str], dict[str, Any]]:
    """Prepare ``encoder.module`` for ``usage`` (inject LoRA) and return the trainable parameter names
    *relative to* ``encoder.module`` (the head is added by :func:`finetune`) with what to record."""
    import torch

    if usage not in FINETUNE_USAGES:
        raise InputError(f"usage {usage!r} is not one of {', '.join(FINETUNE_USAGES)}")
    for name in _USAGE_FIELDS.get(usage, ()):
        if not hasattr(hparams, name):
            raise InputError(
                f"usage {usage!r}: hparams {type(hparams).__name__} lack {name!r}; they are not one of the "
                f"hparams types of {usage!r}"
            )
    tower, prefix = image_tower(encoder)
    meta: dict[str, Any] = {"usage": usage, "image_tower": prefix.rstrip(".") or "(whole model)"}
    if usage in _USAGE_FIELDS:
        return _apply_prompts_or_adapters(usage, encoder, tower, hparams, meta)
    image_path = [] if usage == "lora" else image_path_parameters(encoder)
    for parameter in encoder.module.parameters():
        parameter.requires_grad_(False)
    if usage == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        targets = (
            list(hparams.targets) if getattr(hparams, "targets", None) else default_lora_targets(encoder)
        )
        config = LoraConfig(
            r=hparams.rank, lora_alpha=hparams.alpha, lora_dropout=hparams.dropout, target_modules=targets
        )
        try:
            inject_adapter_in_model(config, tower)
        except ValueError as exc:  # peft: target modules not found in the base model
            linear = sorted(
                {
                    n.rsplit(".", 1)[-1]
                    for n, m in tower.named_modules()
                    if isinstance(m, (torch.nn.Linear, torch.nn.MultiheadAttention)) and n
                }
            )
            raise InputError(
                f"model {encoder.card.name!r}: LoRA targets {targets} match no module of the image "
                f"tower ({str(exc).splitlines()[0]}); layer names: {', '.join(linear[:20])}"
            ) from None
        chosen = [prefix + n for n, _ in tower.named_parameters() if "lora_" in n]
        meta.update(
            {
                "lora_targets": targets,
                "rank": hparams.rank,
                "alpha": hparams.alpha,
                "dropout": hparams.dropout,
            }
        )
    elif usage == "bitfit":
        chosen = [n for n in image_path if n == "bias" or n.endswith(".bias")]
        if not chosen:
            raise InputError(f"model {encoder.card.name!r}: its image path has no bias parameters for BitFit")
    else:
        chosen = image_path
    return chosen, meta


def _apply_prompts_or_adapters(
    usage: str, encoder: "Encoder", tower: "nn.Module", hparams: "TrainHParams", meta: dict[str, Any]
) -> tuple[list[str], dict[str, Any]]:
    from fairfm.adapt.vpt import (
        ADAPTER_ATTRIBUTE,
        PROMPTS_ATTRIBUTE,
        add_bottleneck_adapters,
        add_visual_prompts,
        find_vit,
    )

    vit = find_vit(tower, encoder.card.name)  # InputError for families not supported yet
    for parameter in encoder.module.parameters():
        parameter.requires_grad_(False)
    # prompt ``dropout`` and adapter ``placement`` are read when the hparams carry them (defaults: Jia et al.'s
    # 0.0, AdaptFormer's parallel)
    if usage == "vpt":
        dropout = float(getattr(hparams, "dropout", 0.0))
        prompts = add_visual_prompts(vit, hparams.prompt_length, deep=hparams.deep, dropout=dropout)
        marker = f"{PROMPTS_ATTRIBUTE}."
        meta.update(
            {
                "num_tokens": hparams.prompt_length,
                "deep": bool(hparams.deep),
                "prompt_dropout": dropout,
                "prompt_init": f"uniform(±{prompts.bound:.6g})",
            }
        )
    else:
        placement = str(getattr(hparams, "placement", "parallel"))
        add_bottleneck_adapters(vit, hparams.bottleneck, scale=hparams.scale, placement=placement)
        marker = f"{ADAPTER_ATTRIBUTE}."
        meta.update({"bottleneck": hparams.bottleneck, "scale": hparams.scale, "placement": placement})
    chosen = [n for n, _ in encoder.module.named_parameters() if marker in n]
    return chosen, meta


@dataclass
class FinetuneOutput:
    """(N, T) probabilities per split (rows in that split's table order), the fit and what to record."""

    probabilities: dict[str, np.ndarray]
    fit: "FitResult"
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> None:
        """The selected trainable state (LoRA / biases / prompts / adapters / all tower weights + head) as
        safetensors."""
        self.fit.save(
            path,
            metadata={
                "usage": str(self.meta.get("usage", "")),
                "tasks": ",".join(self.meta.get("tasks", [])),
            },
        )


def finetune(
    usage: str,
    hparams: "TrainHParams",
    encoder: "Encoder",
    table: pd.DataFrame,
    tasks: Sequence[str],
    *,
    root: str | os.PathLike,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    group_column: str | None = None,
    predict_splits: Sequence[str] = ("val", "test"),
    column: str = "path",
    **hooks: Any,
) -> FinetuneOutput:
    """Fine-tune ``encoder`` for ``usage``: train on the ``train`` rows, select on ``val``, predict splits.

    The encoder is changed in place (LoRA injected, weights trained): create a fresh one for every run. Do not
    ``copy.deepcopy`` an Encoder to get one — its image function would still run the original module.

    Wiring in :mod:`fairfm.runner` (one registered usage per name in :data:`FINETUNE_USAGES`)::

        hp = spec.typed_hparams()
        card = get_model(spec.model)
        encoder = create_model(spec.model, spec.checkpoint, trust_checkpoint=spec.trust_checkpoint,
                               **model_overrides(spec.usage, hp, card.library))
        out = finetune(spec.usage, hp, encoder, table, tasks, root=root, seed=spec.seed, device=device,
                       progress=progress)
        out.save(heads_path)            # optional
        return UsageOutput({"val": out.probabilities["val"], "test": out.probabilities["test"]}, out.meta)

    ``table`` needs a ``split`` column with train / val (and the ``predict_splits``) rows;
    ``probabilities[s]`` follows the order of ``table[table.split == s]``. ``group_column`` gives the loop
    group codes (for a ``loss_wrapper``); ``hooks`` go to :func:`fairfm.adapt.train.fit` (sampler,
    loss_wrapper, extra_parameters, adversary, on_epoch_end, initial_state, resume, epochs, clip_grad_norm).
    """
    from fairfm.adapt.train import ImageTable, fit, load_state, make_classifier, predict, timm_randaugment

    if "split" not in table.columns:
        raise InputError("SampleTable has no 'split' column; fine-tuning needs train and val rows")
    split = table["split"].astype(str).to_numpy()
    for name in ("train", "val", *predict_splits):
        if not (split == name).any():
            raise InputError(
                f"SampleTable split {name!r} has no rows (fine-tuning needs train, val and "
                f"{', '.join(predict_splits)})"
            )
    augment: Callable[[np.ndarray], np.ndarray] | None = None
    randaugment = getattr(hparams, "randaugment", None) if usage == "full_finetune" else None
    if randaugment:
        augment = timm_randaugment(randaugment)
    groups = None
    if group_column is not None:
        if group_column not in table.columns:
            raise InputError(f"SampleTable has no group column {group_column!r}")
        groups = sorted(set(table[group_column].astype(str)))

    def part(name: str, train_time: bool) -> ImageTable:
        return ImageTable(
            table[split == name],
            root,
            encoder.preprocess,
            tasks,
            group_column=group_column,
            augment=augment if train_time else None,
            column=column,
            group_names=groups,
        )

    train, val = part("train", True), part("val", False)
    names, meta = apply_usage(usage, encoder, hparams)
    # Encoder.encode_image runs under inference_mode; training needs the same forward with autograd, which
    # is the encoder's image function itself.
    model = make_classifier(encoder.module, encoder.image_features, encoder.embed_dim, len(tasks), seed=seed)
    trainable = [f"backbone.{n}" for n in names] + ["head.weight", "head.bias"]
    layer_decay = float(getattr(hparams, "layer_decay", 1.0))
    result = fit(
        model,
        train,
        val,
        hparams=hparams,
        seed=seed,
        trainable=trainable,
        layer_decay=layer_decay,
        device=device,
        progress=progress,
        description=usage,
        **hooks,
    )

    load_state(model, result.best_state)
    probabilities = {}
    for name in predict_splits:
        probabilities[name] = predict(
            model,
            part(name, False),
            batch_size=hparams.batch_size,
            device=device,
            num_workers=hparams.num_workers,
            amp=hparams.amp,
        )
    total = sum(p.numel() for p in model.parameters())
    meta.update(
        {
            "tasks": list(tasks),
            "training": {
                "best_epoch": result.best_epoch,
                "epochs_run": len(result.history),
                "selected_by": hparams.select_by,
                "best_score": None if np.isnan(result.best_score) else float(result.best_score),
                "history": result.history,
                **result.settings,
            },
            "trainable_parameters": int(result.settings["trainable_parameters"]),
            "total_parameters": int(total),
            "randaugment": randaugment,
            "drop_path": getattr(hparams, "drop_path", None) if usage == "full_finetune" else None,
        }
    )
    return FinetuneOutput(probabilities, result, meta)
