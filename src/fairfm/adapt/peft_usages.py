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
    only the prompts / adapters + head train. timm ViTs (alone or as open_clip trunks), open_clip's native
    ViT, transformers CLIP / SigLIP / DINOv2 (RAD-DINO) / BLIP / BLIP-2 vision towers, MedCLIP's Swin and SAM
    image encoders (adapters only for the windowed Swin and SAM blocks: VPT is refused there).
``full_finetune``
    every parameter of the image path + head (Khan et al. / Medical MAE, METHODS.md §2.6) with

    * layer-wise lr decay for every family of the zoo: :func:`layer_ids` numbers the parameters (embeddings
      0, blocks 1..L, everything after the blocks L+1, lr scale decay^(L+1−id)) with one function per model
      library, registered with :func:`register_layer_ids`;
    * drop path: timm models get it at construction (:func:`model_overrides`, timm's ``drop_path_rate``);
      every tower :mod:`fairfm.adapt.vpt` knows gets timm's linear schedule after loading, in the library's
      own drop-path modules where the block has them (timm, DINOv2, Swin) and by forward hooks on the
      residual branches elsewhere (open_clip ViT, CLIP / SigLIP / BLIP, SAM). transformers models get no
      constructor argument because the runner passes overrides by library and MedCLIP's builder (also
      ``transformers``) takes none; open_clip's ``timm_drop_path`` sits inside the vision config, which
      ``create_model``'s keyword arguments would replace whole. Where neither applies (open_clip's
      ModifiedResNet) the run records drop path as not applied;
    * RandAugment (:func:`fairfm.adapt.train.timm_randaugment`, 8-bit and high-bit-depth images).

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
    return module_image_tower(encoder.module)


def module_image_tower(module: "nn.Module") -> tuple["nn.Module", str]:
    """:func:`image_tower` of a model's module (e.g. a Classifier's backbone)."""
    for name in _IMAGE_TOWERS:
        tower = getattr(module, name, None)
        if tower is not None and hasattr(tower, "parameters"):
            return tower, f"{name}."
    return module, ""


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


#: library name (``ModelCard.library``) -> ``fn(image tower) -> LayerIds | None`` (names relative to the tower)
_LAYER_IDS: dict[str, Callable[[Any], Any]] = {}


def register_layer_ids(*libraries: str):
    """Register a model library's layer numbering for layer-wise lr decay (a new family does so from its own
    file): ``fn(tower) -> fairfm.adapt.train.LayerIds`` or None when the tower is not one it knows."""

    def decorate(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
        for library in libraries:
            _LAYER_IDS[library] = fn
        return fn

    return decorate


def _number_by_prefix(tower: Any, stem: Sequence[str], blocks: Sequence[tuple[str, int]], top: int):
    """Layer ids of ``tower``'s parameters: a name under ``blocks[k][0]`` gets ``blocks[k][1]``, one under a
    ``stem`` prefix 0, any other ``top`` (final norm, pooling, projection)."""
    from fairfm.adapt.train import LayerIds

    def under(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    ids: dict[str, int] = {}
    for name, _ in tower.named_parameters():
        layer = next((i for prefix, i in blocks if under(name, prefix)), None)
        if layer is None:
            layer = 0 if any(under(name, prefix) for prefix in stem) else top
        ids[name] = layer
    return LayerIds(ids, top)


def _sequence(prefix: str, count: int, first: int = 1) -> list[tuple[str, int]]:
    return [(f"{prefix}.{i}", first + i) for i in range(count)]


@register_layer_ids("timm")
def _timm_layer_ids(tower: Any):
    from fairfm.adapt.train import timm_layer_ids

    return timm_layer_ids(tower)


@register_layer_ids("open_clip")
def _open_clip_layer_ids(tower: Any):
    from fairfm.adapt.train import timm_layer_ids

    trunk = getattr(tower, "trunk", None)
    if trunk is not None and hasattr(trunk, "group_matcher"):  # BiomedCLIP: a timm ViT + projection head
        numbering = timm_layer_ids(trunk)
        return numbering.prefixed("trunk.") if numbering is not None else None
    resblocks = getattr(getattr(tower, "transformer", None), "resblocks", None)
    if resblocks is not None:  # native ViT: conv1 + class / positional embedding + ln_pre, then resblocks
        n = len(resblocks)
        stem = ("conv1", "class_embedding", "positional_embedding", "ln_pre")
        return _number_by_prefix(tower, stem, _sequence("transformer.resblocks", n), n + 1)
    if all(hasattr(tower, f"layer{i}") for i in range(1, 5)):  # ModifiedResNet: 3-conv stem, 4 stages
        blocks = [f"layer{s}.{b}" for s in range(1, 5) for b in range(len(getattr(tower, f"layer{s}")))]
        stem = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3")
        return _number_by_prefix(tower, stem, [(b, i + 1) for i, b in enumerate(blocks)], len(blocks) + 1)
    return None


@register_layer_ids("transformers")
def _transformers_layer_ids(tower: Any):
    # CLIP / SigLIP / BLIP / BLIP-2 (encoder.layers), DINOv2 / ViT (encoder.layer), Swin (encoder.layers.S
    # .blocks.B with a patch-merging downsample after stage S, numbered with the block it feeds)
    from fairfm.adapt.vpt import transformers_core

    core = transformers_core(tower)
    if core is None:
        return None
    path = next(name for name, module in tower.named_modules() if module is core)
    base = f"{path}." if path else ""
    layers_name = "encoder.layers" if hasattr(core.encoder, "layers") else "encoder.layer"
    layers = getattr(core.encoder, layers_name.split(".")[1], None)
    if layers is None:
        return None
    blocks: list[tuple[str, int]] = []
    if len(layers) and hasattr(layers[0], "blocks"):
        n = 0
        for s, stage in enumerate(layers):
            for b in range(len(stage.blocks)):
                n += 1
                blocks.append((f"{base}{layers_name}.{s}.blocks.{b}", n))
            if getattr(stage, "downsample", None) is not None:  # feeds the next stage's first block
                blocks.append((f"{base}{layers_name}.{s}.downsample", n + 1))
    else:
        n = len(layers)
        blocks = _sequence(f"{base}{layers_name}", n)
    stem = (f"{base}embeddings", f"{base}pre_layrnorm")  # CLIP normalises the embeddings before the blocks
    return _number_by_prefix(tower, stem, blocks, n + 1)


@register_layer_ids("segment_anything")
def _segment_anything_layer_ids(tower: Any):
    blocks = getattr(tower, "blocks", None)
    if blocks is None or not hasattr(tower, "patch_embed"):
        return None
    n = len(blocks)
    return _number_by_prefix(tower, ("patch_embed", "pos_embed"), _sequence("blocks", n), n + 1)


def layer_ids(encoder: "Encoder"):
    """The layer numbering of ``encoder.module`` for layer-wise lr decay (:class:`fairfm.adapt.train.LayerIds`,
    names relative to ``encoder.module``): the image tower's blocks by its library's registered function;
    parameters outside the tower (a CLIP's ``visual_projection``, BLIP-2's Q-Former) are at the top."""
    library = encoder.card.library
    tower, prefix = image_tower(encoder)
    numbering = _LAYER_IDS[library](tower) if library in _LAYER_IDS else None
    if numbering is None:
        raise InputError(
            f"model {encoder.card.name!r} ({library}, {type(tower).__name__}): layer-wise lr decay cannot "
            "number its layers; set hparams.layer_decay: 1.0"
        )
    return numbering.prefixed(prefix)


def model_overrides(usage: str, hparams: "TrainHParams", library: str) -> dict[str, Any]:
    """Constructor overrides a usage needs when the model is created (``create_model(name, ckpt,
    **overrides)``): drop path for full fine-tuning of timm models (Medical MAE's ``--drop_path 0.2``). The
    other libraries get drop path after loading, in :func:`apply_usage` (see the module doc for why)."""
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
        meta["drop_path"] = _apply_drop_path(encoder, tower, float(getattr(hparams, "drop_path", 0.0) or 0.0))
    return chosen, meta


def _apply_drop_path(encoder: "Encoder", tower: "nn.Module", rate: float) -> dict[str, Any]:
    """Drop path for full fine-tuning (see the module doc); returns what to record."""
    from fairfm.adapt.vpt import add_drop_path, find_vit

    try:
        layout = find_vit(tower, encoder.card.name)
    except InputError:
        layout = None
    if layout is not None and layout.branches:
        # also at rate 0: a library's own drop path from its config (Swin's 0.1) is then switched off
        handle = add_drop_path(layout, rate)
        return {
            "rate": rate,
            "applied": rate > 0.0,
            "mechanism": handle.mechanism,
            "block_rates": [round(r, 6) for r in handle.rates],
        }
    if rate <= 0.0:
        return {"rate": 0.0, "applied": False}
    built = [m for m in tower.modules() if type(m).__name__ == "DropPath" and getattr(m, "drop_prob", 0.0) > 0]
    if encoder.card.library == "timm" and built:
        return {"rate": rate, "applied": True, "mechanism": "timm constructor (drop_path_rate)"}
    return {
        "rate": rate,
        "applied": False,
        "reason": f"{type(tower).__name__} has no residual-branch layout fairfm knows and was not built with "
        "drop path",
    }


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
    modality: str | None = None,
    build_model: ModelBuilder | None = None,
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

    ``build_model``: the usage's own model (:data:`ModelBuilder`; default :func:`image_model`).
    ``table`` needs a ``split`` column with train / val (and the ``predict_splits``) rows;
    ``probabilities[s]`` follows the order of ``table[table.split == s]``. ``group_column`` gives the loop
    group codes (for a ``loss_wrapper``); ``hooks`` go to :func:`fairfm.adapt.train.fit` (sampler,
    loss_wrapper, extra_parameters, adversary, on_epoch_end, initial_state, resume, epochs, clip_grad_norm).
    Volumes (:mod:`fairfm.adapt.volumes`) go through the encoder slice by slice and are max-pooled, or in OCT
    chunks with ``hparams.volume: oct_chunks``; ``modality`` (the dataset card's) lets
    ``hparams.slice_intensity: auto`` window CT.
    """
    from fairfm.adapt.train import ImageTable, timm_randaugment

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
    from fairfm.adapt.volumes import first_row_is_volume, volume_options

    # 3D samples: slice stacks for max-pooling, or FairFedMed's OCT chunks (hparams.volume); {} for 2D images
    volumes = volume_options(hparams, has_volumes=first_row_is_volume(table[split == "train"], root, column),
                             modality=modality)  # fmt: skip
    if volumes:  # 2D augmentation does not apply to stacks of slices (FairMedFM, FairFedMed train without)
        augment, randaugment = None, None
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
            **volumes,
        )

    from fairfm.adapt.seeding import derive_seed, seeded

    # LoRA matrices, prompts, adapters, the head and dropout draw from the global generators: seed them from
    # ``seed`` (and leave the caller's random state as it was), so a run does not depend on what ran before it.
    with seeded(derive_seed(seed, "finetune")):
        return _finetune_seeded(usage, hparams, encoder, tasks, part, seed=seed, device=device,
                                progress=progress, predict_splits=predict_splits, volumes=volumes,
                                randaugment=randaugment, hooks=hooks, build_model=build_model)  # fmt: skip


#: ``(usage, encoder, hparams, tasks, seed) -> (model, trainable parameter names, meta)``: the trainable model of an
#: image-loop usage (:func:`image_model` for the PEFT usages; a usage with a model of its own, e.g. prompt learning,
#: passes its builder to :func:`finetune`).
ModelBuilder = Callable[[str, "Encoder", "TrainHParams", Sequence[str], int], tuple[Any, list[str], dict[str, Any]]]


def image_model(usage: str, encoder: "Encoder", hparams: "TrainHParams", tasks: Sequence[str],
                seed: int) -> tuple[Any, list[str], dict[str, Any]]:  # fmt: skip
    """The classifier a PEFT usage trains: the encoder prepared for ``usage`` (:func:`apply_usage`) with a linear
    head over its embedding, the names of its trainable parameters, and what to record."""
    from fairfm.adapt.train import make_classifier

    names, meta = apply_usage(usage, encoder, hparams)
    # Encoder.encode_image runs under inference_mode; training needs the same forward with autograd, which
    # is the encoder's image function itself.
    model = make_classifier(encoder.module, encoder.image_features, encoder.embed_dim, len(tasks), seed=seed)
    return model, [f"backbone.{n}" for n in names] + ["head.weight", "head.bias"], meta


def _finetune_seeded(usage: str, hparams: "TrainHParams", encoder: "Encoder", tasks: Sequence[str],
                     part: Callable[[str, bool], Any], *, seed: int, device: str,
                     progress: bool, predict_splits: Sequence[str], volumes: dict[str, Any],
                     randaugment: str | None, hooks: dict[str, Any],
                     build_model: ModelBuilder | None = None) -> FinetuneOutput:  # fmt: skip
    from fairfm.adapt.train import LAYER_IDS_ATTRIBUTE, fit, load_state, predict
    from fairfm.adapt.volumes import volume_model

    train, val = part("train", True), part("val", False)
    model, trainable, meta = (build_model or image_model)(usage, encoder, hparams, tasks, seed)
    if volumes:  # slice max-pooling, or a trainable Conv2d projector with logits averaged over OCT chunks
        model, projector_names, meta["volumes"] = volume_model(model, encoder.preprocess, volumes, seed)
        trainable += projector_names
    layer_decay = float(getattr(hparams, "layer_decay", 1.0))
    if layer_decay < 1.0:  # the loop groups parameters by the family's numbering (train._param_groups)
        numbering = layer_ids(encoder).prefixed("backbone.")
        setattr(model, LAYER_IDS_ATTRIBUTE, numbering)
        meta["layer_decay_top_layer"] = numbering.top
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
            hooks=hooks.get("hooks"),  # a method's attribute-aware inference reads each row's group
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
            "drop_path": meta.get("drop_path"),
        }
    )
    return FinetuneOutput(probabilities, result, meta)
