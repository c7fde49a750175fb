"""Promptable segmentation models built from segment_anything's modules: SAM ViT-B/L/H, MedSAM, FT-SAM, and the
LVM-Med ViT image encoder (a SAM-style ViT-B used as a classification backbone).

The model is assembled from the library's ``ImageEncoderViT`` / ``PromptEncoder`` / ``MaskDecoder`` /
``TwoWayTransformer`` with the published sizes, instead of calling ``sam_model_registry``, because the registry
fixes the image size at 1024 (FT-SAM runs at 256) and calls ``torch.load`` without ``map_location`` or
``weights_only``. Weights are then loaded with the safe loader. Each card brings its own preprocessing: SAM's
longest-side resize + padding with 0–255 pixel statistics, MedSAM's 1024² resize + min–max scaling (as in
``MedSAM_Inference.py``, which bypasses ``Sam.preprocess``), FT-SAM's 256² resize.

Not loadable here (cards are listed, building them raises an InputError that says what is needed):
SAM-Med2D (encoder adapters exist only in the SAM-Med2D repository's fork of segment_anything), MobileSAM and
TinySAM (the TinyViT image encoder is in the ``mobile_sam`` package, not installed). SAM 2 is in
``sam2_family.py``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from fairfm.errors import InputError
from fairfm.models.base import Encoder, LastImageCache, PromptableSegmenter
from fairfm.models.checkpoints import (check_state_dict, extract_state_dict, load_weights_file, state_dict_problem,
                                       weights_shapes)  # fmt: skip
from fairfm.models.preprocess import SAM_MEAN_255, SAM_STD_255, Preprocess
from fairfm.models.registry import ModelCard, register_checker, register_model

_SAM_1024 = Preprocess(
    1024, SAM_MEAN_255, SAM_STD_255, resize="longest-pad", interpolation="bilinear", scale="raw255"
)
_MEDSAM_1024 = Preprocess(
    1024, (0.0,) * 3, (1.0,) * 3, resize="squash", interpolation="bicubic", scale="minmax"
)
_SAM_256 = Preprocess(
    256, SAM_MEAN_255, SAM_STD_255, resize="squash", interpolation="bilinear", scale="raw255"
)
_SAM_PAPER = "Kirillov et al., Segment Anything, ICCV 2023"
_SIZES = {  # published encoder sizes (segment_anything/build_sam.py)
    "vit_b": dict(embed_dim=768, depth=12, num_heads=12, global_attn=(2, 5, 8, 11)),
    "vit_l": dict(embed_dim=1024, depth=24, num_heads=16, global_attn=(5, 11, 17, 23)),
    "vit_h": dict(embed_dim=1280, depth=32, num_heads=16, global_attn=(7, 15, 23, 31)),
}
_SAM_FILES = {
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
}


def _seg(
    name: str,
    architecture: str,
    *,
    files: tuple[str, ...],
    download: str,
    preprocess: Preprocess,
    licence: str,
    paper: str,
    pretraining: str,
    identifiers: tuple[str, ...],
    notes: tuple[str, ...] = (),
    hf_repos: tuple[str, ...] = (),
    **spec: Any,
) -> ModelCard:
    return ModelCard(
        name=name,
        family="segmentation",
        architecture=architecture,
        library=spec.pop("library", "segment_anything"),
        identifiers=identifiers,
        checkpoint_files=files,
        download=download,
        preprocess=preprocess,
        embed_dim=256,
        zero_shot=False,
        licence=licence,
        paper=paper,
        pretraining=pretraining,
        hf_repos=hf_repos,
        spec=spec,
        notes=notes,
    )


def _sam(variant: str) -> ModelCard:
    file = _SAM_FILES[variant]
    return _seg(
        f"sam_{variant}",
        f"SAM {variant.replace('_', '-').upper()} image encoder + prompt encoder + mask decoder",
        files=(file,),
        download=f"https://dl.fbaipublicfiles.com/segment_anything/{file}",
        preprocess=_SAM_1024,
        licence="Apache-2.0",
        paper=_SAM_PAPER,
        pretraining="SA-1B (11M images, 1.1B masks)",
        identifiers=(f"segment_anything:sam_model_registry['{variant}']",),
        variant=variant,
    )


SEGMENTATION_CARDS = (
    _sam("vit_b"),
    _sam("vit_l"),
    _sam("vit_h"),
    _seg(
        "medsam",
        "SAM ViT-B fine-tuned on medical image–mask pairs",
        files=("medsam_vit_b.pth",),
        download="medsam_vit_b.pth from bowang-lab/MedSAM (README link)",
        preprocess=_MEDSAM_1024,
        licence="Apache-2.0",
        paper="Ma et al., Segment anything in medical images, Nature Communications 2024",
        pretraining="≈1.5M medical image–mask pairs (count unverified)",
        identifiers=("bowang-lab/MedSAM medsam_vit_b.pth", "transformers:flaviagiammarino/medsam-vit-base"),
        variant="vit_b",
        notes=("MedSAM's own preprocessing: 1024² resize, min–max to [0, 1], box prompts",),
    ),
    _seg(
        "ft_sam",
        "SAM ViT-B at 256², fine-tuned on SA-Med2D-20M without adapters",
        files=("ft-sam_b.pth",),
        download="FT-SAM checkpoint of the SAM-Med2D paper (OpenGVLab/SAM-Med2D; file name unverified)",
        preprocess=_SAM_256,
        licence="Apache-2.0 (unverified)",
        paper="Cheng et al., SAM-Med2D, arXiv 2308.16184",
        pretraining="SA-Med2D-20M",
        identifiers=("OpenGVLab/SAM-Med2D FT-SAM",),
        variant="vit_b",
        image_size=256,
        notes=("256×256 input, 16×16 image embedding",),
    ),
    _seg(
        "sam_med2d",
        "SAM ViT-B with adapter layers in every encoder block, 256²",
        files=("sam-med2d_b.pth",),
        download="sam-med2d_b.pth from OpenGVLab/SAM-Med2D (Google Drive)",
        preprocess=_SAM_256,
        licence="Apache-2.0 (unverified)",
        paper="Cheng et al., SAM-Med2D, arXiv 2308.16184",
        pretraining="SA-Med2D-20M",
        identifiers=("OpenGVLab/SAM-Med2D sam-med2d_b.pth",),
        unavailable="its encoder adapters exist only in the SAM-Med2D repository's fork of segment_anything",
        library="SAM-Med2D fork of segment_anything",
    ),
    _seg(
        "mobilesam",
        "TinyViT-5M encoder distilled from SAM ViT-H + SAM decoder",
        files=("mobile_sam.pt",),
        download="mobile_sam.pt from ChaoningZhang/MobileSAM",
        preprocess=_SAM_1024,
        licence="Apache-2.0",
        paper="Zhang et al., Faster Segment Anything: Towards Lightweight SAM for Mobile Applications, 2023",
        pretraining="distilled from SAM ViT-H on SA-1B subset",
        identifiers=("mobile_sam:sam_model_registry['vit_t']",),
        unavailable="the TinyViT image encoder is in the mobile_sam package (pip install from "
        "ChaoningZhang/MobileSAM), which fairfm does not depend on",
        library="mobile_sam",
    ),
    _seg(
        "tinysam",
        "TinyViT-5M encoder (full-stage distillation) + SAM decoder",
        files=("tinysam.pth",),
        download="tinysam.pth from xinghaochen/TinySAM (file name unverified)",
        preprocess=_SAM_1024,
        licence="Apache-2.0 (unverified)",
        paper="Shu et al., TinySAM: Pushing the Envelope for Efficient Segment Anything Model, AAAI 2025",
        pretraining="distilled from SAM",
        identifiers=("xinghaochen/TinySAM",),
        unavailable="the TinyViT image encoder is in the mobile_sam / tinysam packages, not installed",
        library="mobile_sam",
    ),
)

LVM_MED_VIT = ModelCard(
    name="lvm_med_vit",
    family="vision",
    architecture="SAM-style ViT-B image encoder (windowed, relative positions)",
    library="segment_anything",
    identifiers=("duyhominhnguyen/LVM-Med lvmmed_vit.pth",),
    checkpoint_files=("lvmmed_vit.pth",),
    download="lvm_med_weights/lvmmed_vit.pth from duyhominhnguyen/LVM-Med (Google Drive)",
    preprocess=Preprocess(
        1024, SAM_MEAN_255, SAM_STD_255, resize="squash", scale="raw255", interpolation="bilinear"
    ),
    embed_dim=256,
    zero_shot=False,
    licence="CC BY-NC-ND 2.0 (unverified)",
    paper="Nguyen et al., LVM-Med, NeurIPS 2023",
    pretraining="≈1.3M medical images, graph-matching SSL",
    spec={
        "variant": "vit_b",
        "encoder_only": True,
        "use_abs_pos": False,
        "strip": ("module.", "model.", "image_encoder."),
        # a whole SAM-style checkpoint may be given: only its image encoder is this model
        "ignored_unexpected": ("prompt_encoder.", "mask_decoder."),
    },
    notes=(
        "256-d features (average-pooled neck output; FairMedFM declared 768)",
        "designed for 1024² input (FairMedFM fed 224²; pass img_size=224 and a 224 preprocess to reproduce)",
        "preprocessing (SAM statistics) unverified",
    ),
)


def build_sam_modules(
    *,
    variant: str = "vit_b",
    image_size: int = 1024,
    encoder_only: bool = False,
    use_abs_pos: bool = True,
    **overrides: Any,
):
    """A segment_anything ``Sam`` (or its ``ImageEncoderViT``) with the published sizes, overridable for tests."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    size = {**_SIZES[variant], **{k: overrides.pop(k) for k in list(overrides) if k in _SIZES[variant]}}
    prompt_dim = overrides.pop("prompt_dim", 256)
    patch = overrides.pop("patch_size", 16)
    window = overrides.pop("window_size", 14)
    decoder_depth = overrides.pop("decoder_depth", 2)
    decoder_mlp = overrides.pop("decoder_mlp_dim", 2048)
    decoder_heads = overrides.pop("decoder_heads", 8)
    iou_hidden = overrides.pop("iou_head_hidden_dim", 256)
    mask_in_chans = overrides.pop("mask_in_chans", 16)
    image_size = overrides.pop("img_size", image_size)
    if overrides:
        raise InputError(f"unknown SAM build option(s): {', '.join(sorted(overrides))}")
    encoder = ImageEncoderViT(
        depth=size["depth"],
        embed_dim=size["embed_dim"],
        img_size=image_size,
        mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=size["num_heads"],
        patch_size=patch,
        qkv_bias=True,
        use_rel_pos=True,
        use_abs_pos=use_abs_pos,
        global_attn_indexes=tuple(size["global_attn"]),
        window_size=window,
        out_chans=prompt_dim,
    )
    if encoder_only:
        return encoder
    grid = image_size // patch
    return Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(image_size, image_size),
            mask_in_chans=mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=decoder_depth, embedding_dim=prompt_dim, mlp_dim=decoder_mlp, num_heads=decoder_heads
            ),
            transformer_dim=prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=iou_hidden,
        ),
        pixel_mean=list(SAM_MEAN_255),
        pixel_std=list(SAM_STD_255),
    )


def _file(card: ModelCard, weights: Path) -> Path:
    if weights.is_dir():
        found = [weights / n for n in card.checkpoint_files if (weights / n).is_file()]
        if not found:
            raise InputError(
                f"model {card.name!r}: folder {weights} has no {' / '.join(card.checkpoint_files)}"
            )
        return found[0]
    return weights


@register_checker(*SEGMENTATION_CARDS, LVM_MED_VIT)
def check_sam(card: ModelCard, weights: Path, *, trust_checkpoint: bool = False, **overrides: Any) -> None:
    """The checkpoint's shapes against the modules built on the meta device: no memory, no weights read."""
    import torch

    if "unavailable" in card.spec:
        raise InputError(f"model {card.name!r} cannot be built: {card.spec['unavailable']}")
    file = _file(card, weights)
    options = dict(variant=card.spec["variant"], **overrides)
    if card.spec.get("encoder_only"):
        options.update(encoder_only=True, use_abs_pos=card.spec["use_abs_pos"])
    else:
        options.setdefault("image_size", card.spec.get("image_size", 1024))
    with torch.device("meta"):
        module = build_sam_modules(**options)
    state = extract_state_dict(weights_shapes(file, trust_checkpoint=trust_checkpoint), path=file,
                               strip_prefixes=tuple(card.spec.get("strip", ("module.",))))  # fmt: skip
    problem = state_dict_problem(module, state, ignored_unexpected=tuple(card.spec.get("ignored_unexpected", ())))
    if problem:
        raise InputError(f"model {card.name!r} ({card.architecture}): checkpoint {file} {problem}")


def _load(module: Any, card: ModelCard, weights: Path, trust_checkpoint: bool) -> None:
    file = _file(card, weights)
    state = extract_state_dict(
        load_weights_file(file, trust_checkpoint=trust_checkpoint),
        path=file,
        strip_prefixes=tuple(card.spec.get("strip", ("module.",))),
    )
    check_state_dict(module, state, card=card, path=file,
                     ignored_unexpected=tuple(card.spec.get("ignored_unexpected", ())))  # fmt: skip


@register_model(*SEGMENTATION_CARDS)
def build_sam(
    card: ModelCard, weights: Path, *, trust_checkpoint: bool = False, **overrides: Any
) -> PromptableSegmenter:
    if "unavailable" in card.spec:
        raise InputError(f"model {card.name!r} cannot be built: {card.spec['unavailable']}")
    import torch
    from segment_anything.utils.transforms import ResizeLongestSide

    image_size = overrides.get("img_size", card.spec.get("image_size", card.preprocess.size))
    extra = repr(sorted(overrides.items()))
    sam = build_sam_modules(
        variant=card.spec["variant"], image_size=card.spec.get("image_size", 1024), **overrides
    )
    _load(sam, card, weights, trust_checkpoint)
    sam.eval()
    preprocess = Preprocess(
        image_size,
        card.preprocess.mean,
        card.preprocess.std,
        resize=card.preprocess.resize,
        interpolation=card.preprocess.interpolation,
        scale=card.preprocess.scale,
    )
    resizer = ResizeLongestSide(image_size)
    embeddings = LastImageCache()

    def segment_fn(image, points, point_labels, boxes, multimask):
        array = np.asarray(image)
        height, width = array.shape[:2]
        device = next(sam.parameters()).device  # follows the module: PromptableSegmenter.module.to("cuda")
        embedding = embeddings.get(array, lambda: sam.image_encoder(preprocess(array)[None].to(device)))
        if preprocess.resize == "longest-pad":

            def to_model(xy: np.ndarray) -> np.ndarray:
                return resizer.apply_coords(xy, (height, width))

            input_size = resizer.get_preprocess_shape(height, width, image_size)
        else:  # squash: each axis scales on its own (MedSAM scales its box to 1024 this way)

            def to_model(xy: np.ndarray) -> np.ndarray:
                return xy * np.array([image_size / width, image_size / height], dtype=np.float32)

            input_size = (image_size, image_size)
        point_arg = box_arg = None
        if points is not None:
            point_arg = (
                torch.as_tensor(to_model(points), dtype=torch.float32, device=device)[None],
                torch.as_tensor(point_labels, dtype=torch.int64, device=device)[None],
            )
        if boxes is not None:
            corners = to_model(boxes.reshape(-1, 2, 2).reshape(-1, 2)).reshape(-1, 4)
            box_arg = torch.as_tensor(corners, dtype=torch.float32, device=device)
            if point_arg is not None and len(box_arg) != 1:
                raise InputError(
                    f"{card.name}: points can be combined with one box only, got {len(box_arg)} boxes"
                )
        sparse, dense = sam.prompt_encoder(points=point_arg, boxes=box_arg, masks=None)
        low_res, iou = sam.mask_decoder(
            image_embeddings=embedding,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        masks = sam.postprocess_masks(low_res, input_size=tuple(input_size), original_size=(height, width))
        masks = (masks > sam.mask_threshold).reshape(-1, height, width)
        return masks.cpu().numpy(), iou.reshape(-1).float().cpu().numpy()

    return PromptableSegmenter(card, sam, weights, segment_fn, preprocess=preprocess, weights_extra=extra)


@register_model(LVM_MED_VIT)
def build_lvm_med_vit(
    card: ModelCard, weights: Path, *, trust_checkpoint: bool = False, **overrides: Any
) -> Encoder:
    encoder = build_sam_modules(
        variant=card.spec["variant"], encoder_only=True, use_abs_pos=card.spec["use_abs_pos"], **overrides
    )
    _load(encoder, card, weights, trust_checkpoint)
    size = int(getattr(encoder, "img_size", card.preprocess.size))
    preprocess = Preprocess(
        size,
        card.preprocess.mean,
        card.preprocess.std,
        resize=card.preprocess.resize,
        interpolation=card.preprocess.interpolation,
        scale=card.preprocess.scale,
    )
    return Encoder(
        card,
        encoder,
        weights,
        lambda x: encoder(x).mean(dim=(2, 3)),
        embed_dim=int(encoder.neck[0].out_channels),
        preprocess=preprocess,
        weights_extra=repr(sorted(overrides.items())),
    )
