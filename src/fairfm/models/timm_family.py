"""Vision encoders built by timm: DINOv2, MAE, Medical MAE, MoCo v3, BiT, REMEDIS-style ResNet-152, C2L, MoCo-CXR,
LVM-Med ResNet-50 and the ImageNet / from-scratch baselines.

Every checkpoint goes through :func:`~fairfm.models.checkpoints.load_weights_file` (safetensors or weights-only
torch.load), is unwrapped/renamed as its authors saved it (``{"model": …}``, ``module.base_encoder.``), passed
through timm's own ViT checkpoint filter (position-embedding resampling, DINOv2/MAE key conversion) and loaded
into the timm architecture strictly (every weight present with the model's shape, nothing left over): a checkpoint
of another architecture is refused with one line naming the first key that differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fairfm.errors import InputError
from fairfm.models.base import Encoder
from fairfm.models.checkpoints import (check_state_dict, extract_state_dict, load_weights_file, state_dict_problem,
                                       weights_shapes)  # fmt: skip
from fairfm.models.preprocess import HALF, IMAGENET_MEAN, IMAGENET_STD, Preprocess
from fairfm.models.registry import ModelCard, register_checker, register_model

_IMAGENET_224 = Preprocess(224, IMAGENET_MEAN, IMAGENET_STD, crop_pct=0.875, interpolation="bilinear")
_IMAGENET_224_BICUBIC = Preprocess(224, IMAGENET_MEAN, IMAGENET_STD, crop_pct=0.9)
_BIT_224 = Preprocess(224, HALF, HALF, crop_pct=0.875, interpolation="bilinear")
_CXR_STATS = Preprocess(224, (0.5056,) * 3, (0.252,) * 3, crop_pct=1.0)  # Medical MAE's own CXR statistics
_CLASSIFIER_PREFIXES = ("head.", "fc.", "classifier.", "head_drop.")


def _card(
    name: str,
    architecture: str,
    arch: str,
    *,
    embed_dim: int,
    preprocess: Preprocess,
    licence: str,
    paper: str,
    pretraining: str,
    identifiers: tuple[str, ...],
    files: tuple[str, ...],
    download: str,
    hf_repos: tuple[str, ...] = (),
    notes: tuple[str, ...] = (),
    **spec: Any,
) -> ModelCard:
    return ModelCard(
        name=name,
        family="vision",
        architecture=architecture,
        library="timm",
        identifiers=identifiers,
        checkpoint_files=files,
        download=download,
        preprocess=preprocess,
        embed_dim=embed_dim,
        zero_shot=False,
        licence=licence,
        paper=paper,
        pretraining=pretraining,
        hf_repos=hf_repos,
        spec={"arch": arch, **spec},
        notes=notes,
    )


def _timm_hub(tag: str) -> dict[str, Any]:
    """Cards whose weights are published as timm tags on the Hugging Face hub (``timm/<tag>``)."""
    return dict(
        identifiers=(f"timm:{tag}", f"hf-hub:timm/{tag}"),
        files=("model.safetensors", "pytorch_model.bin"),
        download=f"huggingface-cli download timm/{tag} (or snapshot_download('timm/{tag}'))",
        hf_repos=(f"timm/{tag}",),
    )


CARDS = (
    _card(
        "dinov2",
        "ViT-B/14",
        "vit_base_patch14_dinov2.lvd142m",
        embed_dim=768,
        preprocess=Preprocess(224, IMAGENET_MEAN, IMAGENET_STD, crop_pct=1.0),
        licence="Apache-2.0",
        paper="Oquab et al., DINOv2: Learning Robust Visual Features without Supervision, TMLR 2024",
        pretraining="LVD-142M natural images, self-distillation",
        img_size=224,
        notes=(
            "timm's own config is 518 px; run at 224 px as in FairMedFM (position embedding resampled from the "
            "checkpoint by timm)",
            "torch.hub facebookresearch/dinov2 dinov2_vitb14 weights load too",
        ),
        **_timm_hub("vit_base_patch14_dinov2.lvd142m"),
    ),
    _card(
        "dinov2_small",
        "ViT-S/14",
        "vit_small_patch14_dinov2.lvd142m",
        embed_dim=384,
        preprocess=Preprocess(224, IMAGENET_MEAN, IMAGENET_STD, crop_pct=1.0),
        licence="Apache-2.0",
        paper="Oquab et al., DINOv2, TMLR 2024",
        pretraining="LVD-142M natural images",
        img_size=224,
        notes=("run at 224 px (timm config 518 px)",),
        **_timm_hub("vit_small_patch14_dinov2.lvd142m"),
    ),
    _card(
        "dinov2_large",
        "ViT-L/14",
        "vit_large_patch14_dinov2.lvd142m",
        embed_dim=1024,
        preprocess=Preprocess(224, IMAGENET_MEAN, IMAGENET_STD, crop_pct=1.0),
        licence="Apache-2.0",
        paper="Oquab et al., DINOv2, TMLR 2024",
        pretraining="LVD-142M natural images",
        img_size=224,
        notes=("run at 224 px (timm config 518 px)",),
        **_timm_hub("vit_large_patch14_dinov2.lvd142m"),
    ),
    _card(
        "mae",
        "ViT-B/16",
        "vit_base_patch16_224.mae",
        embed_dim=768,
        preprocess=_IMAGENET_224_BICUBIC,
        licence="CC-BY-NC-4.0",
        paper="He et al., Masked Autoencoders Are Scalable Vision Learners, CVPR 2022",
        pretraining="ImageNet-1K, masked autoencoding (Khan et al. baseline)",
        strip=("module.",),
        **_timm_hub("vit_base_patch16_224.mae"),
    ),
    _card(
        "medmae",
        "ViT-B/16",
        "vit_base_patch16_224",
        embed_dim=768,
        preprocess=_CXR_STATS,
        licence="unverified",
        paper="Xiao et al., Delving into Masked Autoencoders for Multi-Label Thorax "
        "Disease Classification, WACV 2023",
        pretraining="MAE on 0.5M chest X-rays (ChestX-ray14 + CheXpert + MIMIC-CXR training splits)",
        identifiers=("lambert-x/medical_mae vit-b_CXR_0.5M_mae.pth",),
        files=("vit-b_CXR_0.5M_mae.pth",),
        download="vit-b_CXR_0.5M_mae.pth from the lambert-x/medical_mae README (Google Drive)",
        global_pool="avg",
        allowed_missing=("fc_norm.",),
        ignored_unexpected=("norm.",),  # mean pooling replaces the pre-training norm by a fresh fc_norm
        notes=(
            "mean-pooled patch tokens + fc_norm as in Medical MAE fine-tuning (FairMedFM used the CLS token; "
            "pass global_pool='token' to get that)",
        ),
    ),
    _card(
        "medmae_vits",
        "ViT-S/16",
        "vit_small_patch16_224",
        embed_dim=384,
        preprocess=_CXR_STATS,
        licence="unverified",
        paper="Xiao et al., WACV 2023",
        pretraining="MAE on 0.3M chest X-rays",
        identifiers=("lambert-x/medical_mae vit-s_CXR_0.3M_mae.pth",),
        files=("vit-s_CXR_0.3M_mae.pth",),
        download="vit-s_CXR_0.3M_mae.pth from the lambert-x/medical_mae README (Google Drive)",
        global_pool="avg",
        allowed_missing=("fc_norm.",),
        ignored_unexpected=("norm.",),  # mean pooling replaces the pre-training norm by a fresh fc_norm
    ),
    _card(
        "mocov3",
        "ViT-B/16",
        "vit_base_patch16_224",
        embed_dim=768,
        preprocess=_IMAGENET_224,
        licence="CC-BY-NC-4.0",
        paper="Chen, Xie and He, An Empirical Study of Training Self-Supervised Vision "
        "Transformers, ICCV 2021",
        pretraining="ImageNet-1K, MoCo v3 contrastive SSL (Khan et al. baseline)",
        identifiers=("facebookresearch/moco-v3 vit-b-300ep",),
        files=("vit-b-300ep.pth.tar",),
        download="https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/vit-b-300ep.pth.tar",
        strip=("module.base_encoder.", "base_encoder."),
        drop=("module.momentum_encoder.", "module.predictor."),
    ),
    _card(
        "bit_m_r152x2",
        "ResNet-152x2 (BiT-M, ResNetV2)",
        "resnetv2_152x2_bit.goog_in21k",
        embed_dim=4096,
        preprocess=_BIT_224,
        licence="Apache-2.0",
        paper="Kolesnikov et al., Big Transfer (BiT), ECCV 2020",
        pretraining="ImageNet-21K supervised (Khan et al.'s BiT baseline)",
        **_timm_hub("resnetv2_152x2_bit.goog_in21k"),
    ),
    _card(
        "bit_m_r50x1",
        "ResNet-50x1 (BiT-M, ResNetV2)",
        "resnetv2_50x1_bit.goog_in21k",
        embed_dim=2048,
        preprocess=_BIT_224,
        licence="Apache-2.0",
        paper="Kolesnikov et al., Big Transfer (BiT), ECCV 2020",
        pretraining="ImageNet-21K supervised",
        **_timm_hub("resnetv2_50x1_bit.goog_in21k"),
    ),
    _card(
        "remedis_r152x2",
        "ResNet-152x2 (BiT architecture)",
        "resnetv2_152x2_bit",
        embed_dim=4096,
        preprocess=_BIT_224,
        licence="PhysioNet credentialed licence",
        paper="Azizi et al., Robust and data-efficient generalization "
        "of self-supervised machine learning for diagnostic imaging (REMEDIS), Nature BME 2023",
        pretraining="BiT initialisation + SimCLR-style SSL on CheXpert + MIMIC-CXR",
        identifiers=("PhysioNet medical-ai-research-foundations 1.0.0",),
        files=("remedis_r152x2.safetensors",),
        download="PhysioNet 'Medical AI Research Foundations' (credentialed); the release is TensorFlow — "
        "convert it to timm resnetv2_152x2_bit names first",
        notes=(
            "REMEDIS-style: the released TF checkpoints must be converted; preprocessing is unverified (BiT's "
            "[-1, 1] used)",
        ),
    ),
    _card(
        "c2l",
        "ResNet-18",
        "resnet18",
        embed_dim=512,
        preprocess=_IMAGENET_224,
        licence="unverified",
        paper="Zhou et al., Comparing to Learn: Surpassing ImageNet Pretraining on Radiographs by Comparing "
        "Image Representations, MICCAI 2020",
        pretraining="contrastive SSL on chest X-rays",
        identifiers=("funnyzhou/C2L_MICCAI2020 res18_C2L.pth",),
        files=("res18_C2L.pth",),
        download="res18_C2L.pth from funnyzhou/C2L_MICCAI2020 (Google Drive)",
        strip=("encoder.module.", "module.encoder.", "module."),
        notes=("512-d pooled features; the 512→128 contrastive fc is not used",),
    ),
    _card(
        "mococxr",
        "ResNet-18 (MoCo query encoder)",
        "resnet18",
        embed_dim=512,
        preprocess=_IMAGENET_224,
        licence="unverified",
        paper="Sowrirajan et al., MoCo-CXR: MoCo Pretraining Improves Representation and "
        "Transferability of Chest X-ray Models, MIDL 2021",
        pretraining="MoCo on CheXpert",
        identifiers=("stanfordmlgroup MoCo-CXR r8w-00001-v2",),
        files=("r8w-00001-v2.pth.tar",),
        download="r8w-00001-v2.pth.tar from the MoCo-CXR release (FairMedFM pretrained.zip)",
        strip=("module.encoder_q.", "encoder_q."),
        drop=("module.encoder_k.", "module.queue"),
        notes=(
            "512-d pooled features: FairMedFM's 128-d output was a random projection (its fc keys are "
            "skipped when loading)",
        ),
    ),
    _card(
        "lvm_med_r50",
        "ResNet-50",
        "resnet50",
        embed_dim=2048,
        preprocess=_IMAGENET_224,
        licence="CC BY-NC-ND 2.0 (unverified)",
        paper="Nguyen et al., LVM-Med: Learning Large-Scale "
        "Self-Supervised Vision Models for Medical Imaging via Second-order Graph Matching, NeurIPS 2023",
        pretraining="≈1.3M medical images, graph-matching SSL",
        identifiers=("duyhominhnguyen/LVM-Med resnet50",),
        files=("lvmmed_resnet.torch",),
        download="lvm_med_weights/ from duyhominhnguyen/LVM-Med (Google Drive)",
        strip=("module.", "model."),
        notes=("checkpoint file name unverified",),
    ),
    _card(
        "resnet50_imagenet",
        "ResNet-50",
        "resnet50.a1_in1k",
        embed_dim=2048,
        preprocess=Preprocess(224, IMAGENET_MEAN, IMAGENET_STD, crop_pct=0.95),
        licence="Apache-2.0",
        paper="Wightman et al., ResNet strikes back, 2021",
        pretraining="ImageNet-1K supervised",
        **_timm_hub("resnet50.a1_in1k"),
    ),
    _card(
        "resnet50_tv",
        "ResNet-50",
        "resnet50.tv_in1k",
        embed_dim=2048,
        preprocess=_IMAGENET_224,
        licence="BSD-3-Clause",
        paper="He et al., Deep Residual Learning, CVPR 2016",
        pretraining="ImageNet-1K supervised (torchvision)",
        **_timm_hub("resnet50.tv_in1k"),
    ),
    _card(
        "resnet18_imagenet",
        "ResNet-18",
        "resnet18.tv_in1k",
        embed_dim=512,
        preprocess=_IMAGENET_224,
        licence="BSD-3-Clause",
        paper="He et al., Deep Residual Learning, CVPR 2016",
        pretraining="ImageNet-1K supervised (torchvision; MEDFAIR's 2D backbone)",
        **_timm_hub("resnet18.tv_in1k"),
    ),
    _card(
        "densenet121_imagenet",
        "DenseNet-121",
        "densenet121.tv_in1k",
        embed_dim=1024,
        preprocess=Preprocess(224, IMAGENET_MEAN, IMAGENET_STD, crop_pct=0.875),
        licence="BSD-3-Clause",
        paper="Huang et al., Densely Connected Convolutional Networks, CVPR 2017",
        pretraining="ImageNet-1K supervised (torchvision)",
        **_timm_hub("densenet121.tv_in1k"),
    ),
    _card(
        "densenet121_glocker",
        "DenseNet-121",
        "densenet121.tv_in1k",
        embed_dim=1024,
        preprocess=Preprocess(
            224,
            (0.0,) * 3,
            (1.0,) * 3,
            crop_pct=1.0,
            interpolation="bilinear",
            resize="squash",
            scale="raw255",
        ),
        licence="BSD-3-Clause",
        paper="Glocker et al., Algorithmic encoding of protected characteristics in "
        "chest X-ray disease detection models, eBioMedicine 2023; Radiology: AI 2023",
        pretraining="ImageNet-1K supervised (torchvision)",
        notes=("Glocker's preprocessing: grey ×3, raw 0–255 values, no intensity normalisation",),
        **_timm_hub("densenet121.tv_in1k"),
    ),
    _card(
        "vit_b16_imagenet",
        "ViT-B/16",
        "vit_base_patch16_224.augreg2_in21k_ft_in1k",
        embed_dim=768,
        preprocess=Preprocess(224, HALF, HALF, crop_pct=0.9),
        licence="Apache-2.0",
        paper="Dosovitskiy et al., An Image is Worth 16x16 Words, ICLR 2021; Steiner et al., How to train your "
        "ViT, TMLR 2022",
        pretraining="ImageNet-21K, fine-tuned on ImageNet-1K",
        **_timm_hub("vit_base_patch16_224.augreg2_in21k_ft_in1k"),
    ),
    _card(
        "vit_b16_dino",
        "ViT-B/16",
        "vit_base_patch16_224.dino",
        embed_dim=768,
        preprocess=_IMAGENET_224_BICUBIC,
        licence="Apache-2.0",
        paper="Caron et al., Emerging Properties in Self-Supervised Vision Transformers, ICCV 2021",
        pretraining="ImageNet-1K, DINO self-distillation (FairTune backbone)",
        **_timm_hub("vit_base_patch16_224.dino"),
    ),
    ModelCard(
        name="resnet50_scratch",
        family="vision",
        architecture="ResNet-50",
        library="timm",
        identifiers=("timm:resnet50",),
        checkpoint_files=(),
        download="no weights: random initialisation",
        preprocess=_IMAGENET_224,
        embed_dim=2048,
        zero_shot=False,
        licence="Apache-2.0",
        paper="He et al., Deep Residual Learning, CVPR 2016",
        pretraining="none (from-scratch baseline)",
        needs_weights=False,
        spec={"arch": "resnet50", "seed": 0},
        notes=("seeded random initialisation (override with seed=…); meant for training from scratch",),
    ),
)


def _weights_file(weights: Path, card: ModelCard) -> Path:
    if weights.is_file():
        return weights
    for name in (*card.checkpoint_files, "model.safetensors", "pytorch_model.bin"):
        if (weights / name).is_file():
            return weights / name
    candidates = sorted(
        p for p in weights.iterdir() if p.suffix in (".safetensors", ".pth", ".bin", ".pt", ".tar")
    )
    if len(candidates) == 1:
        return candidates[0]
    expected = ", ".join((*card.checkpoint_files, "model.safetensors")) or "a weights file"
    raise InputError(
        f"model {card.name!r}: folder {weights} holds no single weights file (expected {expected})"
    )


def _timm_state(card: ModelCard, file: Path, model: Any, raw: Any) -> dict[str, Any]:
    """The checkpoint's tensors renamed as the card says (prefixes, classifier dropped, timm's ViT filter)."""
    from timm.models import vision_transformer

    spec = card.spec
    state = extract_state_dict(raw, path=file, strip_prefixes=tuple(spec.get("strip", ())),
                               drop_prefixes=tuple(spec.get("drop", ())) + _CLASSIFIER_PREFIXES)  # fmt: skip
    if isinstance(model, vision_transformer.VisionTransformer):
        state = vision_transformer.checkpoint_filter_fn(state, model)  # timm's own key/pos-embed conversion
    return state


def _timm_kwargs(card: ModelCard, overrides: dict[str, Any]) -> dict[str, Any]:
    kwargs = {key: card.spec[key] for key in ("img_size", "global_pool") if key in card.spec}
    kwargs.update({k: v for k, v in overrides.items() if k != "seed"})
    kwargs["num_classes"] = 0  # an embedding model: drop the classifier, keep pooled features
    return kwargs


@register_checker(*CARDS)
def check_timm(card: ModelCard, weights: Path, *, trust_checkpoint: bool = False, **overrides: Any) -> None:
    """The checkpoint's shapes against the architecture built on the meta device: no memory, no weights read."""
    import timm
    import torch

    file = _weights_file(weights, card)
    with torch.device("meta"):
        model = timm.create_model(card.spec["arch"].split(".")[0], pretrained=False, **_timm_kwargs(card, overrides))
    state = _timm_state(card, file, model, weights_shapes(file, trust_checkpoint=trust_checkpoint))
    problem = state_dict_problem(model, state, allowed_missing=tuple(card.spec.get("allowed_missing", ())),
                                 ignored_unexpected=tuple(card.spec.get("ignored_unexpected", ())))  # fmt: skip
    if problem:
        raise InputError(f"model {card.name!r} ({card.architecture}): checkpoint {file} {problem}")


@register_model(*CARDS)
def build_timm(
    card: ModelCard, weights: Path | None, *, trust_checkpoint: bool = False, **overrides: Any
) -> Encoder:
    import timm
    import torch
    from timm.models import vision_transformer

    spec = card.spec
    arch = spec["arch"].split(".")[0]
    kwargs = _timm_kwargs(card, overrides)
    if weights is None:
        torch.manual_seed(int(overrides.get("seed", spec.get("seed", 0))))
    model = timm.create_model(arch, pretrained=False, **kwargs)
    if weights is not None:
        file = _weights_file(weights, card)
        state = _timm_state(card, file, model, load_weights_file(file, trust_checkpoint=trust_checkpoint))
        check_state_dict(model, state, card=card, path=file, allowed_missing=tuple(spec.get("allowed_missing", ())),
                         ignored_unexpected=tuple(spec.get("ignored_unexpected", ())))  # fmt: skip
    channels_last = not isinstance(model, vision_transformer.VisionTransformer)
    extra = repr(sorted(kwargs.items())) + (
        f"|seed={overrides.get('seed', spec.get('seed', 0))}" if weights is None else ""
    )
    return Encoder(
        card,
        model,
        weights,
        model,
        embed_dim=int(model.num_features),
        channels_last=channels_last,
        weights_extra=extra,
    )
