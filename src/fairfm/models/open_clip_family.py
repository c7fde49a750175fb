"""Vision–language models built by open_clip: OpenAI CLIP (FairMedFM's CLIP, FairFedMed's ViT-B/16 and RN50) and
BiomedCLIP.

Two checkpoint layouts, both the library's own: a folder with ``open_clip_config.json`` + weights (loaded with
open_clip's ``local-dir:`` schema; this is also what a Hugging Face snapshot of ``microsoft/BiomedCLIP-…`` or
``timm/vit_base_patch16_clip_224.openai`` looks like), or a single weights file for the card's named
architecture (``create_model(arch, pretrained=file)``). open_clip reads weights with ``weights_only=True``; pickle
is only allowed with ``trust_checkpoint``. The preprocessing is read back from the built model, so a folder's own
``preprocess_cfg`` (size, mean, std) wins over the card's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fairfm.errors import InputError
from fairfm.models.base import VisionLanguageEncoder
from fairfm.models.checkpoints import TRUST_HINT, is_pickle_refusal
from fairfm.models.preprocess import OPENAI_MEAN, OPENAI_STD, Preprocess
from fairfm.models.registry import ModelCard, register_model

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
        spec={"arch": None},
        notes=(
            "a checkpoint folder needs open_clip_config.json; its HF text tower also needs "
            "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract in the local hub cache",
        ),
    ),
)


@register_model(*CARDS)
def build_open_clip(
    card: ModelCard, weights: Path, *, trust_checkpoint: bool = False, **overrides: Any
) -> VisionLanguageEncoder:
    import open_clip

    if weights.is_dir() and (weights / "open_clip_config.json").is_file():
        model_name, pretrained, source = f"local-dir:{weights}", None, weights / "open_clip_config.json"
    else:
        if card.spec.get("arch") is None:
            raise InputError(
                f"model {card.name!r}: checkpoint {weights} must be a folder with open_clip_config.json "
                "and the open_clip weights"
            )
        file = _weights_file(weights, card)
        model_name, pretrained, source = card.spec["arch"], str(file), file
    try:
        model = open_clip.create_model(
            model_name,
            pretrained=pretrained,
            weights_only=not trust_checkpoint,
            load_weights=True,
            require_pretrained=True,
            **overrides,
        )
        tokenizer = open_clip.get_tokenizer(model_name)
    except Exception as exc:  # open_clip signals every problem with a generic exception type
        raise _explain(card, source, exc) from None
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


def _weights_file(weights: Path, card: ModelCard) -> Path:
    if weights.is_file():
        return weights
    for name in _WEIGHT_FILES:
        if (weights / name).is_file():
            return weights / name
    raise InputError(
        f"model {card.name!r}: folder {weights} has neither open_clip_config.json nor "
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
