"""Models built by Hugging Face transformers: PubMedCLIP, PLIP, SigLIP, MedSigLIP, RAD-DINO, BLIP and BLIP-2.

A checkpoint is a local folder in the hub layout (``config.json`` + ``model.safetensors`` or
``pytorch_model.bin``, tokenizer files, ``preprocessor_config.json``) — what ``save_pretrained`` writes and what a
hub-cache snapshot holds. Loaded with ``from_pretrained(folder, local_files_only=True)``; ``.bin`` files are read
with ``weights_only=True`` unless the checkpoint is trusted. When the folder has a ``preprocessor_config.json`` the
model's own image processor settings replace the card's defaults (RAD-DINO's model card asks for exactly that).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fairfm.errors import InputError
from fairfm.models.base import Encoder, VisionLanguageEncoder
from fairfm.models.checkpoints import (TRUST_HINT, check_hf_config, check_loading_info, is_pickle_refusal,
                                       load_failure, quiet_transformers)  # fmt: skip
from fairfm.models.preprocess import HALF, IMAGENET_MEAN, IMAGENET_STD, OPENAI_MEAN, OPENAI_STD, Preprocess
from fairfm.models.registry import ModelCard, register_checker, register_model

_HF_FILES = ("config.json", "model.safetensors")


def _card(
    name: str,
    repo: str,
    cls: str,
    *,
    family: str,
    architecture: str,
    preprocess: Preprocess,
    embed_dim: int,
    licence: str,
    paper: str,
    pretraining: str,
    notes: tuple[str, ...] = (),
    **spec: Any,
) -> ModelCard:
    return ModelCard(
        name=name,
        family=family,
        architecture=architecture,
        library="transformers",
        identifiers=(f"transformers:{repo}",),
        checkpoint_files=_HF_FILES,
        download=f"huggingface-cli download {repo} (or snapshot_download('{repo}', local_dir=…))",
        preprocess=preprocess,
        embed_dim=embed_dim,
        zero_shot=family == "vision-language",
        licence=licence,
        paper=paper,
        pretraining=pretraining,
        hf_repos=(repo,),
        spec={"cls": cls, **spec},
        notes=notes,
    )


CARDS = (
    _card(
        "pubmedclip",
        "flaviagiammarino/pubmed-clip-vit-base-patch32",
        "CLIPModel",
        family="vision-language",
        architecture="CLIP ViT-B/32 fine-tuned",
        preprocess=Preprocess(224, OPENAI_MEAN, OPENAI_STD),
        embed_dim=512,
        licence="MIT",
        paper="Eslami et al., PubMedCLIP: How Much Does CLIP Benefit Visual Question Answering in "
        "the Medical Domain?, EACL Findings 2023",
        pretraining="ROCO (PubMed Central figure–caption pairs)",
    ),
    _card(
        "plip",
        "vinid/plip",
        "CLIPModel",
        family="vision-language",
        architecture="CLIP ViT-B/32 fine-tuned",
        preprocess=Preprocess(224, OPENAI_MEAN, OPENAI_STD),
        embed_dim=512,
        licence="unverified",
        paper="Huang et al., A visual–language foundation model for pathology image analysis using medical "
        "Twitter, Nature Medicine 2023",
        pretraining="OpenPath pathology image–text pairs from medical Twitter",
        notes=("512-d projected features (FairMedFM declared 768, the vision width)",),
    ),
    _card(
        "siglip",
        "google/siglip-base-patch16-224",
        "SiglipModel",
        family="vision-language",
        architecture="ViT-B/16 + text transformer, sigmoid loss",
        preprocess=Preprocess(224, HALF, HALF, resize="squash"),
        embed_dim=768,
        licence="Apache-2.0",
        paper="Zhai et al., Sigmoid Loss for Language Image Pre-Training, ICCV 2023",
        pretraining="WebLI",
        notes=("logits = exp(logit_scale)·cos + logit_bias, a per-pair sigmoid",),
    ),
    _card(
        "medsiglip",
        "google/medsiglip-448",
        "SiglipModel",
        family="vision-language",
        architecture="SigLIP-400M-style ViT (27 layers, width 1152, patch 14) + text tower",
        preprocess=Preprocess(448, HALF, HALF, resize="squash"),
        embed_dim=1152,
        licence="HAI-DEF (gated)",
        paper="Sellergren et al., MedGemma Technical Report, 2025",
        pretraining="de-identified medical images of several modalities + natural images",
        notes=("gated repository: accept the HAI-DEF terms, then download", "embedding size unverified"),
    ),
    _card(
        "rad_dino",
        "microsoft/rad-dino",
        "Dinov2Model",
        family="vision",
        architecture="ViT-B/14 (DINOv2)",
        preprocess=Preprocess(518, IMAGENET_MEAN, IMAGENET_STD),
        embed_dim=768,
        licence="MIT (formerly MSRLA)",
        paper="Pérez-García et al., Exploring scalable medical image encoders beyond text supervision, Nature "
        "Machine Intelligence 2025",
        pretraining="DINOv2 SSL continued on ≈880k public chest X-rays",
        notes=(
            "the checkpoint's preprocessor_config.json replaces the card's preprocessing at load time",
            "CLS token (pooler_output) features",
        ),
    ),
    _card(
        "blip2",
        "Salesforce/blip2-itm-vit-g",
        "Blip2ForImageTextRetrieval",
        family="vision-language",
        architecture="ViT-g (EVA-CLIP) + Q-Former with 32 queries, image–text contrastive heads",
        preprocess=Preprocess(224, OPENAI_MEAN, OPENAI_STD, resize="squash"),
        embed_dim=32 * 256,
        licence="BSD-3-Clause (unverified)",
        paper="Li et al., BLIP-2: Bootstrapping Language-Image Pre-training "
        "with Frozen Image Encoders and Large Language Models, ICML 2023",
        pretraining="web image–text pairs",
        notes=(
            "features: the 32 L2-normalised 256-d ITC query embeddings, flattened (zero-shot logit = best "
            "query); FairMedFM probed the first Q-Former query token (768-d): pass features='query0'",
            "input size 224 unverified; transformers' ITC head has no temperature: logit_scale 1",
        ),
    ),
    _card(
        "blip",
        "Salesforce/blip-itm-base-coco",
        "BlipForImageTextRetrieval",
        family="vision-language",
        architecture="ViT-B/16 + BERT with image–text contrastive heads",
        preprocess=Preprocess(384, OPENAI_MEAN, OPENAI_STD, resize="squash"),
        embed_dim=256,
        licence="BSD-3-Clause (unverified)",
        paper="Li et al., BLIP: Bootstrapping Language-Image Pre-training, ICML 2022",
        pretraining="COCO, Visual Genome, CC, SBU, LAION subset",
        notes=(
            "features are the 256-d ITC projection of the CLS token (shared with text for zero-shot); "
            "FairMedFM probed the 768-d CLS — pass features='cls' for that",
            "transformers' ITC head has no temperature: logit_scale 1 (raw cosine; AUC unaffected)",
        ),
    ),
)


def _check_folder(card: ModelCard, weights: Path) -> None:
    if not weights.is_dir() or not (weights / "config.json").is_file():
        raise InputError(
            f"model {card.name!r}: checkpoint {weights} must be a Hugging Face model folder with "
            "config.json and model.safetensors (save_pretrained / snapshot_download layout)"
        )


@register_checker(*CARDS)
def check_transformers(card: ModelCard, weights: Path, *, trust_checkpoint: bool = False, **overrides: Any) -> None:
    """The folder's layout and its config's model type (the key-by-key check needs the load itself)."""
    import transformers

    _check_folder(card, weights)
    check_hf_config(weights, getattr(transformers, card.spec["cls"]), card)


@register_model(*CARDS)
def build_transformers(
    card: ModelCard,
    weights: Path,
    *,
    trust_checkpoint: bool = False,
    features: str = "projected",
    **overrides: Any,
) -> Encoder:
    import torch
    import torch.nn.functional as F
    import transformers

    _check_folder(card, weights)
    cls = getattr(transformers, card.spec["cls"])
    check_hf_config(weights, cls, card)
    try:
        with quiet_transformers():
            model, info = cls.from_pretrained(
                str(weights), local_files_only=True, weights_only=not trust_checkpoint, output_loading_info=True,
                ignore_mismatched_sizes=True, **overrides,
            )  # fmt: skip
    except Exception as exc:  # transformers raises OSError / ValueError / UnpicklingError for bad folders
        if is_pickle_refusal(str(exc)):
            raise InputError(f"{weights}: refused to load this checkpoint: {TRUST_HINT}") from None
        raise InputError(f"{weights}: cannot load {card.spec['cls']} ({load_failure(exc)})") from None
    check_loading_info(info, card=card, path=weights)
    model.eval()
    preprocess = _processor_preprocess(weights, card.preprocess)
    extra = repr(sorted(overrides.items())) + f"|{features}"
    kind = card.spec["cls"]
    if kind == "Dinov2Model":
        return Encoder(
            card,
            model,
            weights,
            lambda x: model(pixel_values=x).pooler_output,
            embed_dim=model.config.hidden_size,
            preprocess=preprocess,
            weights_extra=extra,
        )

    tokenizer = _tokenizer(weights, card)
    if kind in ("CLIPModel", "SiglipModel"):
        padding = "max_length" if kind == "SiglipModel" else True  # SigLIP was trained on max-length padding
        max_length = model.config.text_config.max_position_embeddings

        def image_fn(x):
            return _pooled(model.get_image_features(pixel_values=x))

        def text_fn(texts: list[str]):
            tokens = tokenizer(
                texts, padding=padding, truncation=True, max_length=max_length, return_tensors="pt"
            )
            # SigLIP was trained without an attention mask over its max-length padding (as its model card uses it)
            keep = ("input_ids",) if kind == "SiglipModel" else ("input_ids", "attention_mask")
            return _pooled(model.get_text_features(**{k: v for k, v in tokens.items() if k in keep}))

        bias = getattr(model, "logit_bias", None)
        return VisionLanguageEncoder(
            card,
            model,
            weights,
            image_fn,
            embed_dim=model.config.projection_dim
            if kind == "CLIPModel"
            else model.config.vision_config.hidden_size,
            preprocess=preprocess,
            text_fn=text_fn,
            logit_scale=float(model.logit_scale.detach().exp()),
            logit_bias=float(bias.detach().reshape(-1)[0]) if bias is not None else 0.0,
            weights_extra=extra,
        )
    if kind == "BlipForImageTextRetrieval":
        if features not in ("projected", "cls"):
            raise InputError(f"model {card.name!r}: features must be 'projected' or 'cls', not {features!r}")

        def image_fn(x):
            cls_token = model.vision_model(pixel_values=x).last_hidden_state[:, 0]
            return model.vision_proj(cls_token) if features == "projected" else cls_token

        def text_fn(texts: list[str]):
            tokens = tokenizer(texts, padding=True, truncation=True, max_length=35, return_tensors="pt")
            hidden = model.text_encoder(
                input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
            )
            return model.text_proj(hidden.last_hidden_state[:, 0])

        dim = (
            model.config.image_text_hidden_size
            if features == "projected"
            else model.config.vision_config.hidden_size
        )
        return VisionLanguageEncoder(
            card,
            model,
            weights,
            image_fn,
            embed_dim=dim,
            preprocess=preprocess,
            text_fn=text_fn,
            logit_scale=1.0,
            weights_extra=extra,
        )
    if kind == "Blip2ForImageTextRetrieval":
        if features not in ("projected", "query0"):
            raise InputError(
                f"model {card.name!r}: features must be 'projected' or 'query0', not {features!r}"
            )
        queries = model.config.num_query_tokens

        def image_fn(x):
            vision = model.vision_model(pixel_values=x).last_hidden_state
            tokens = model.query_tokens.expand(x.shape[0], -1, -1)
            mask = torch.ones(vision.shape[:-1], dtype=torch.long)
            out = model.qformer(
                query_embeds=tokens, encoder_hidden_states=vision, encoder_attention_mask=mask
            ).last_hidden_state
            if features == "query0":
                return out[:, 0]
            return F.normalize(model.vision_projection(out), dim=-1).flatten(1)

        def text_fn(texts: list[str]):
            tokens = tokenizer(texts, padding=True, truncation=True, max_length=35, return_tensors="pt")
            hidden = model.qformer(
                query_embeds=model.embeddings(input_ids=tokens["input_ids"]),
                query_length=0,
                attention_mask=tokens["attention_mask"],
            ).last_hidden_state
            return model.text_projection(hidden[:, 0])

        projected = features == "projected"
        dim = (
            queries * model.config.image_text_hidden_size
            if projected
            else model.config.qformer_config.hidden_size
        )
        return VisionLanguageEncoder(
            card,
            model,
            weights,
            image_fn,
            embed_dim=dim,
            preprocess=preprocess,
            text_fn=text_fn,
            logit_scale=1.0,
            image_tokens=queries if projected else 1,
            weights_extra=extra,
        )
    raise InputError(f"model {card.name!r}: unsupported transformers class {kind}")


def _pooled(output: Any):
    """transformers 5 returns an output object from get_*_features (v4 returned the tensor)."""
    return output if hasattr(output, "shape") else output.pooler_output


def _tokenizer(weights: Path, card: ModelCard):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(weights), local_files_only=True)
    except Exception as exc:  # missing tokenizer files surface as OSError/ValueError/TypeError
        raise InputError(
            f"{weights}: no usable tokenizer files for {card.name!r} (tokenizer.json or "
            f"vocab/merges with tokenizer_config.json): {str(exc).splitlines()[0] if str(exc) else exc!r}"
        ) from None


def _processor_preprocess(weights: Path, default: Preprocess) -> Preprocess:
    """The folder's own image-processor settings (preprocessor_config.json), else the card's."""
    path = weights / "preprocessor_config.json"
    if not path.is_file():
        return default
    try:
        cfg = json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    size_cfg = cfg.get("size", default.size)
    if isinstance(size_cfg, dict):
        resize_to = int(size_cfg.get("shortest_edge") or size_cfg.get("height") or default.size)
    else:
        resize_to = int(size_cfg)
    crop = cfg.get("crop_size", resize_to)
    crop = int(crop.get("height", resize_to) if isinstance(crop, dict) else crop)
    centre_crop = bool(cfg.get("do_center_crop", False))
    resample = {2: "bilinear", 3: "bicubic"}.get(cfg.get("resample"), default.interpolation)
    mean = cfg.get("image_mean", default.mean)
    std = cfg.get("image_std", default.std)
    mean = tuple(float(v) for v in (mean if isinstance(mean, (list, tuple)) else [mean] * 3))
    std = tuple(float(v) for v in (std if isinstance(std, (list, tuple)) else [std] * 3))
    if centre_crop:
        return Preprocess(
            crop,
            mean,
            std,
            resize="shortest-crop",
            interpolation=resample,
            crop_pct=min(1.0, crop / resize_to),
        )
    return Preprocess(resize_to, mean, std, resize="squash", interpolation=resample)
