"""Vision–language models built by open_clip: OpenAI CLIP (FairMedFM's CLIP, FairFedMed's ViT-B/16 and RN50) and
BiomedCLIP.

Two checkpoint layouts, both the library's own: a folder with ``open_clip_config.json`` + weights (loaded with
open_clip's ``local-dir:`` schema; this is also what a Hugging Face snapshot of ``microsoft/BiomedCLIP-…`` or
``timm/vit_base_patch16_clip_224.openai`` looks like), or a single weights file for the card's named
architecture. The model is built by open_clip without weights, then the weights are read by fairfm's safe loader
(safetensors or ``weights_only=True``; pickle only with ``trust_checkpoint``), passed through open_clip's own key
conversions (those of ``open_clip.load_checkpoint``) and loaded strictly: a folder whose image tower is of another
kind than the card's (a ViT for ``clip_rn50``) or weights of other shapes are refused with one line. The
preprocessing is read back from the built model, so a folder's own ``preprocess_cfg`` (size, mean, std) wins over
the card's.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from fairfm.errors import InputError
from fairfm.models.base import VisionLanguageEncoder
from fairfm.models.checkpoints import (TRUST_HINT, check_state_dict, extract_state_dict, is_pickle_refusal,
                                       load_weights_file, state_dict_problem, weights_shapes)  # fmt: skip
from fairfm.models.preprocess import OPENAI_MEAN, OPENAI_STD, Preprocess
from fairfm.models.registry import ModelCard, register_checker, register_model

_OPENAI_224 = Preprocess(224, OPENAI_MEAN, OPENAI_STD, crop_pct=1.0)
_CLIP_PAPER = (
    "Radford et al., Learning Transferable Visual Models From Natural Language Supervision, ICML 2021"
)
_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _openai(
    name: str,
    arch: str,
    timm_tag: str,
    *,
    embed_dim: int,
    architecture: str,
    identifiers: tuple[str, ...],
    pretraining: str,
    notes: tuple[str, ...] = (),
) -> ModelCard:
    return ModelCard(
        name=name,
        family="vision-language",
        architecture=architecture,
        library="open_clip",
        identifiers=identifiers + (f"hf-hub:timm/{timm_tag}",),
        checkpoint_files=_WEIGHT_FILES,
        download=f"huggingface-cli download timm/{timm_tag} (open_clip weights of OpenAI CLIP)",
        preprocess=_OPENAI_224,
        embed_dim=embed_dim,
        zero_shot=True,
        licence="MIT",
        paper=_CLIP_PAPER,
        pretraining=pretraining,
        hf_repos=(f"timm/{timm_tag}",),
        spec={"arch": arch},
        notes=notes,
    )


CARDS = (
    _openai(
        "clip",
        "ViT-B-32-quickgelu",
        "vit_base_patch32_clip_224.openai",
        embed_dim=512,
        architecture="ViT-B/32 image tower + text transformer",
        identifiers=(
            "open_clip:ViT-B-32/openai",
            "openai-clip:ViT-B/32",
            "transformers:openai/clip-vit-base-patch32",
        ),
        pretraining="400M web image–text pairs (FairMedFM's CLIP)",
        notes=("zero-shot logits = exp(logit_scale)·cos = 100·cos",),
    ),
    _openai(
        "clip_vit_b16",
        "ViT-B-16-quickgelu",
        "vit_base_patch16_clip_224.openai",
        embed_dim=512,
        architecture="ViT-B/16 image tower + text transformer",
        identifiers=(
            "open_clip:ViT-B-16-quickgelu/openai",
            "openai-clip:ViT-B/16",
            "transformers:openai/clip-vit-base-patch16",
        ),
        pretraining="400M web image–text pairs (FairFedMed backbone)",
        notes=("FairFedMed keeps CLIP in fp16; fairfm keeps fp32 weights",),
    ),
    _openai(
        "clip_rn50",
        "RN50-quickgelu",
        "resnet50_clip.openai",
        embed_dim=1024,
        architecture="modified ResNet-50 with attention pooling + text transformer",
        identifiers=("open_clip:RN50/openai", "openai-clip:RN50"),
        pretraining="400M web image–text pairs (FairFedMed backbone)",
    ),
    ModelCard(
        name="biomedclip",
        family="vision-language",
        architecture="ViT-B/16 (timm trunk) + PubMedBERT text tower, context 256",
        library="open_clip",
        identifiers=("hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",),
        checkpoint_files=("open_clip_pytorch_model.bin", "open_clip_config.json"),
        download="huggingface-cli download microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 and "
        "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract (its text tower's config)",
        preprocess=_OPENAI_224,
        embed_dim=512,
        zero_shot=True,
        licence="MIT",
        paper="Zhang et al., BiomedCLIP: a multimodal biomedical foundation model pretrained from fifteen million "
        "scientific image-text pairs, NEJM AI 2024",
        pretraining="PMC-15M figure–caption pairs",
        hf_repos=("microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",),
        spec={"arch": None, "tower": "timm"},
        notes=(
            "a checkpoint folder needs open_clip_config.json; its HF text tower also needs "
            "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract in the local hub cache",
        ),
    ),
)


def _build_unloaded(card: ModelCard, weights: Path, overrides: dict[str, Any], *, meta: bool = False):
    """(model without its weights, tokenizer name, the weights file): the architecture is the folder's
    ``open_clip_config.json`` (checked against the card's tower kind) or the card's named one."""
    import open_clip
    import torch

    if weights.is_dir() and (weights / "open_clip_config.json").is_file():
        config_file = weights / "open_clip_config.json"
        _check_tower(card, config_file)
        model_name, source = f"local-dir:{weights}", config_file
    else:
        if card.spec.get("arch") is None:
            raise InputError(
                f"model {card.name!r}: checkpoint {weights} must be a folder with open_clip_config.json "
                "and the open_clip weights"
            )
        model_name, source = card.spec["arch"], None
    file = _weights_file(weights, card)
    device = {"device": "meta"} if meta else {}
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # open_clip warns "initialized randomly": the weights are loaded next
    try:
        with torch.device("meta") if meta else contextlib.nullcontext():
            # pretrained_text/image False: the towers are built from their configs (a Hugging Face text tower
            # would otherwise fetch its own pre-trained weights), as open_clip does when it loads a checkpoint
            model = open_clip.create_model(model_name, pretrained=None, load_weights=False, pretrained_text=False,
                                           pretrained_image=False, **device, **overrides)  # fmt: skip
    except Exception as exc:  # open_clip signals every problem with a generic exception type
        raise _explain(card, source or file, exc) from None
    finally:
        logging.disable(previous)
    return model, model_name, file, source


@register_checker(*CARDS)
def check_open_clip(card: ModelCard, weights: Path, *, trust_checkpoint: bool = False, **overrides: Any) -> None:
    """Tower kind and every shape, against the architecture built on the meta device: no weights read."""
    model, _, file, _ = _build_unloaded(card, weights, overrides, meta=True)
    raw = weights_shapes(file, trust_checkpoint=trust_checkpoint)
    state = extract_state_dict(raw, path=file, keys=("state_dict",), strip_prefixes=("module.",))
    problem = state_dict_problem(model, _open_clip_state(model, state))
    if problem:
        raise InputError(f"model {card.name!r} ({card.architecture}): checkpoint {file} {problem}")


@register_model(*CARDS)
def build_open_clip(
    card: ModelCard, weights: Path, *, trust_checkpoint: bool = False, **overrides: Any
) -> VisionLanguageEncoder:
    import open_clip

    # Built without weights: they are read below by the safe loader and checked key by key.
    model, model_name, file, source = _build_unloaded(card, weights, overrides)
    try:
        tokenizer = open_clip.get_tokenizer(model_name)
    except Exception as exc:  # open_clip signals every problem with a generic exception type
        raise _explain(card, source or file, exc) from None
    state = extract_state_dict(load_weights_file(file, trust_checkpoint=trust_checkpoint), path=file,
                               keys=("state_dict",), strip_prefixes=("module.",))  # fmt: skip
    check_state_dict(model, _open_clip_state(model, state), card=card, path=file)
    model.eval()
    preprocess = _preprocess_of(model, card)

    def text_fn(texts: list[str]):
        return model.encode_text(tokenizer(texts), normalize=False)

    bias = getattr(model, "logit_bias", None)
    embed_dim = _image_embed_dim(model.visual, card.embed_dim)
    return VisionLanguageEncoder(
        card,
        model,
        weights,
        lambda batch: model.encode_image(batch, normalize=False),
        embed_dim=embed_dim,
        preprocess=preprocess,
        text_fn=text_fn,
        logit_scale=float(model.logit_scale.detach().exp()),
        logit_bias=float(bias.detach()) if bias is not None else 0.0,
        weights_extra=repr(sorted(overrides.items())),
    )


def _image_embed_dim(visual: Any, default: int) -> int:
    """Width of the image embedding: ``output_dim`` of open_clip's own towers; a timm tower (``TimmModel``, e.g.
    BiomedCLIP's) has none, and its projection head's last linear layer gives it."""
    dim = getattr(visual, "output_dim", None)
    if dim is None:
        import torch

        head = getattr(visual, "head", None)
        linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)] if head is not None else []
        dim = linears[-1].out_features if linears else default
    return int(dim)


def _tower_kind(model_cfg: dict[str, Any]) -> str:
    vision = model_cfg.get("vision_cfg") or {}
    if vision.get("timm_model_name"):
        return "timm"
    return "resnet" if isinstance(vision.get("layers"), (list, tuple)) else "vit"


_TOWER_NAMES = {"timm": "a timm image trunk", "resnet": "a modified-ResNet image tower", "vit": "a ViT image tower"}


def _check_tower(card: ModelCard, config_file: Path) -> None:
    """A folder's own config decides the architecture open_clip builds, so a ViT folder given to ``clip_rn50`` would
    run and be stored under the wrong name: its image tower must be of the card's kind."""
    import open_clip

    if card.spec.get("tower"):
        expected = card.spec["tower"]
    else:
        expected = _tower_kind(open_clip.get_model_config(card.spec["arch"]) or {})
    try:
        model_cfg = json.loads(config_file.read_text(encoding="utf-8"))["model_cfg"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{config_file}: not a valid open_clip config ({type(exc).__name__}: {exc})") from None
    found = _tower_kind(model_cfg if isinstance(model_cfg, dict) else {})
    if found != expected:
        raise InputError(
            f"model {card.name!r} ({card.architecture}): checkpoint {config_file.parent} holds {_TOWER_NAMES[found]} "
            f"(its open_clip_config.json), not {_TOWER_NAMES[expected]}; is it the checkpoint of another model? "
            "('fairfm models list' shows each card's architecture)"
        )


def _open_clip_state(model: Any, state: dict[str, Any]) -> dict[str, Any]:
    """The key conversions of ``open_clip.factory.load_checkpoint`` (third-party layouts, the old text-tower
    layout, scalar logit scale/bias, positional-embedding resizing), applied to weights fairfm has read itself."""
    import torch
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    state = convert_state_dict(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    for name in ("logit_scale", "logit_bias"):
        current = getattr(model, name, None)
        if name in state and current is not None and current.ndim != state[name].ndim:
            state[name] = state[name].reshape(current.shape)
    if "logit_bias" not in state and getattr(model, "logit_bias", None) is not None and "logit_scale" in state:
        state["logit_bias"] = torch.zeros_like(state["logit_scale"])
    if "text.transformer.embeddings.position_ids" not in model.state_dict():  # dropped by transformers ≥ 4.31
        state.pop("text.transformer.embeddings.position_ids", None)
    resize_pos_embed(state, model)
    resize_text_pos_embed(state, model)
    return state


def _weights_file(weights: Path, card: ModelCard) -> Path:
    if weights.is_file():
        return weights
    for name in _WEIGHT_FILES:
        if (weights / name).is_file():
            return weights / name
    has_config = (weights / "open_clip_config.json").is_file()
    raise InputError(
        f"model {card.name!r}: folder {weights} has {'no' if has_config else 'neither open_clip_config.json nor'} "
        f"{' / '.join(_WEIGHT_FILES)}"
    )


def _explain(card: ModelCard, source: Path, exc: Exception) -> InputError:
    text = str(exc)
    if is_pickle_refusal(text):
        return InputError(f"{source}: refused to load this checkpoint: {TRUST_HINT}")
    if source.name == "open_clip_config.json":
        try:
            hf_name = json.loads(source.read_text())["model_cfg"].get("text_cfg", {}).get("hf_model_name")
        except (OSError, ValueError, KeyError, AttributeError):
            hf_name = None
        if hf_name and (
            "offline" in text.lower()
            or "cache" in text.lower()
            or "connect" in text.lower()
            or "not found" in text.lower()
            or "does not appear" in text.lower()
        ):
            return InputError(
                f"{source}: the text tower needs {hf_name!r}, which is not a local folder nor in the "
                f"Hugging Face cache; download it (huggingface-cli download {hf_name}) or set "
                "text_cfg.hf_model_name to a local folder with its config.json"
            )
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return InputError(
        f"{source}: cannot build {card.name!r} from this checkpoint ({type(exc).__name__}: {first})"
    )


def _preprocess_of(model: Any, card: ModelCard) -> Preprocess:
    import open_clip

    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg.get("size", card.preprocess.size)
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = tuple(float(v) for v in cfg.get("mean", card.preprocess.mean))
    std = tuple(float(v) for v in cfg.get("std", card.preprocess.std))
    resize = "squash" if cfg.get("resize_mode") == "squash" else "shortest-crop"
    interpolation = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"
    return Preprocess(size, mean, std, resize=resize, interpolation=interpolation, crop_pct=1.0)
