"""SAM 2.1 (Hiera-T/S/B+/L) through transformers' ``Sam2Model`` and ``Sam2Processor``, and MedSAM 2.

A checkpoint is a folder in the Hugging Face layout of ``facebook/sam2.1-hiera-*`` (``config.json``,
``model.safetensors``, ``processor_config.json``); the processor in the folder does the model's own resizing,
normalisation, prompt-coordinate scaling and mask post-processing. The original ``sam2.1_hiera_*.pt`` files and
MedSAM 2's ``MedSAM2_latest.pt`` need the ``sam2`` package and its Hydra configs, which fairfm does not depend
on: those are refused with an explanation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fairfm.errors import InputError
from fairfm.models.base import LastImageCache, PromptableSegmenter
from fairfm.models.checkpoints import (TRUST_HINT, check_hf_config, check_loading_info, is_pickle_refusal,
                                       load_failure, quiet_transformers)  # fmt: skip
from fairfm.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from fairfm.models.registry import ModelCard, register_checker, register_model

_SAM2_PAPER = "Ravi et al., SAM 2: Segment Anything in Images and Videos, ICLR 2025"
_SAM2_1024 = Preprocess(1024, IMAGENET_MEAN, IMAGENET_STD, resize="squash", interpolation="bilinear")


def _sam2(size: str, short: str, file_size: str) -> ModelCard:
    repo = f"facebook/sam2.1-hiera-{size.replace('_', '-')}"
    return ModelCard(
        name=f"sam2_hiera_{size}",
        family="segmentation",
        architecture=f"SAM 2.1 Hiera-{short} image encoder + prompt encoder + mask decoder",
        library="transformers",
        identifiers=(
            f"transformers:{repo}",
            f"sam2:sam2.1_hiera_{size}.pt + configs/sam2.1/sam2.1_hiera_{file_size}.yaml",
        ),
        checkpoint_files=("config.json", "model.safetensors"),
        download=f"huggingface-cli download {repo} (the transformers layout; the original .pt needs the sam2 "
        "package)",
        preprocess=_SAM2_1024,
        embed_dim=256,
        zero_shot=False,
        licence="Apache-2.0",
        paper=_SAM2_PAPER,
        pretraining="SA-1B + SA-V videos",
        hf_repos=(repo,),
        notes=("preprocessing is read from the folder's processor_config.json",),
    )


CARDS = (
    _sam2("tiny", "T", "t"),
    _sam2("small", "S", "s"),
    _sam2("base_plus", "B+", "b+"),
    _sam2("large", "L", "l"),
)

MEDSAM2 = ModelCard(
    name="medsam2",
    family="segmentation",
    architecture="SAM 2.1-T fine-tuned on 3D medical images and videos",
    library="sam2",
    identifiers=("bowang-lab/MedSAM2 MedSAM2_latest.pt",),
    checkpoint_files=("MedSAM2_latest.pt",),
    download="MedSAM2_latest.pt from bowang-lab/MedSAM2 with config sam2.1_hiera_t512.yaml (unverified)",
    preprocess=Preprocess(512, IMAGENET_MEAN, IMAGENET_STD, resize="squash", interpolation="bilinear"),
    embed_dim=256,
    zero_shot=False,
    licence="Apache-2.0 (unverified)",
    paper="Ma et al., MedSAM2: Segment Anything in 3D Medical Images and Videos, 2025",
    pretraining="3D medical images and videos",
    notes=("512 px input unverified",),
)


@register_model(MEDSAM2)
def build_medsam2(card: ModelCard, weights: Path, *, trust_checkpoint: bool = False, **overrides: Any):
    raise InputError(
        f"model 'medsam2' cannot be built: {weights.name} is in the sam2 package's format (needs "
        "pip install sam2 and its Hydra config), which fairfm does not depend on"
    )


def _check_folder(card: ModelCard, weights: Path) -> None:
    if weights.is_file() or not (weights / "config.json").is_file():
        raise InputError(
            f"model {card.name!r}: {weights} is not a transformers folder (config.json + "
            "model.safetensors); original sam2 .pt checkpoints need the sam2 package — download "
            f"{card.hf_repos[0]} instead"
        )


@register_checker(*CARDS)
def check_sam2(card: ModelCard, weights: Path, *, trust_checkpoint: bool = False, **overrides: Any) -> None:
    """The folder's layout and its config's model type (the key-by-key check needs the load itself)."""
    from transformers import Sam2Model

    _check_folder(card, weights)
    check_hf_config(weights, Sam2Model, card)


@register_checker(MEDSAM2)
def check_medsam2(card: ModelCard, weights: Path, *, trust_checkpoint: bool = False, **overrides: Any) -> None:
    build_medsam2(card, weights)


@register_model(*CARDS)
def build_sam2(
    card: ModelCard, weights: Path, *, trust_checkpoint: bool = False, **overrides: Any
) -> PromptableSegmenter:
    from transformers import Sam2ImageProcessor, Sam2Model, Sam2Processor

    _check_folder(card, weights)
    check_hf_config(weights, Sam2Model, card)
    try:
        with quiet_transformers():
            model, info = Sam2Model.from_pretrained(
                str(weights), local_files_only=True, weights_only=not trust_checkpoint, output_loading_info=True,
                ignore_mismatched_sizes=True, **overrides,
            )  # fmt: skip
    except Exception as exc:  # transformers raises OSError / ValueError / UnpicklingError for bad folders
        if is_pickle_refusal(str(exc)):
            raise InputError(f"{weights}: refused to load this checkpoint: {TRUST_HINT}") from None
        raise InputError(f"{weights}: cannot load Sam2Model ({load_failure(exc)})") from None
    check_loading_info(info, card=card, path=weights)
    model.eval()
    if (weights / "processor_config.json").is_file() or (weights / "preprocessor_config.json").is_file():
        processor = Sam2Processor.from_pretrained(str(weights), local_files_only=True)
    else:
        processor = Sam2Processor(image_processor=Sam2ImageProcessor())
    image_processor = processor.image_processor
    size = image_processor.size
    side = int(size if isinstance(size, (int, float)) else size["height"])  # a dict or transformers' SizeDict
    preprocess = Preprocess(
        side,
        tuple(float(v) for v in image_processor.image_mean),
        tuple(float(v) for v in image_processor.image_std),
        resize="squash",
        interpolation="bilinear",
    )

    embeddings = LastImageCache()

    def segment_fn(image, points, point_labels, boxes, multimask):
        array = np.asarray(image)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        device = next(model.parameters()).device  # follows the module: PromptableSegmenter.module.to("cuda")
        kwargs: dict[str, Any] = {}
        if points is not None:
            if boxes is not None and len(boxes) != 1:
                raise InputError(
                    f"{card.name}: points can be combined with one box only, got {len(boxes)} boxes"
                )
            kwargs["input_points"] = [[points.tolist()]]  # image → object → points
            kwargs["input_labels"] = [[point_labels.tolist()]]
        if boxes is not None:
            kwargs["input_boxes"] = [boxes.tolist()]  # image → boxes (one object each)
        inputs = processor(images=array, return_tensors="pt", **kwargs)
        pixel_values = inputs.pop("pixel_values").to(device)
        image_embeddings = embeddings.get(array, lambda: model.get_image_embeddings(pixel_values))
        prompts = {k: v.to(device) for k, v in inputs.items() if k not in ("original_sizes", "reshaped_input_sizes")}
        outputs = model(image_embeddings=image_embeddings, multimask_output=multimask, **prompts)
        masks = processor.post_process_masks(outputs.pred_masks.cpu(), inputs["original_sizes"])[0]
        height, width = array.shape[:2]
        return masks.reshape(-1, height, width).numpy().astype(bool), outputs.iou_scores.reshape(
            -1
        ).float().cpu().numpy()

    return PromptableSegmenter(
        card, model, weights, segment_fn, preprocess=preprocess, weights_extra=repr(sorted(overrides.items()))
    )
