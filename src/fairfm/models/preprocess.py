"""Each model's own preprocessing: resolution, resize policy, intensity scaling and normalisation.

A :class:`Preprocess` is pure data on the model card (so ``fairfm models list`` can show it without torch) and a
callable that turns one decoded image (PIL image or numpy array, grey or RGB, any bit depth) into the model's
``(3, S, S)`` float32 input tensor. It is written with torch tensor ops instead of a torchvision ``Compose``
because it must also accept 16-bit and float arrays (DICOM, NIfTI slices) that PIL-based transforms cannot take.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fairfm.errors import InputError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
SAM_MEAN_255 = (123.675, 116.28, 103.53)
SAM_STD_255 = (58.395, 57.12, 57.375)

RESIZE_MODES = ("shortest-crop", "squash", "longest-pad")
SCALE_MODES = ("unit", "minmax", "raw255")


@dataclass(frozen=True)
class Preprocess:
    """How one model expects its input.

    ``resize``: ``shortest-crop`` resizes the shorter side to ``size / crop_pct`` then centre-crops ``size``
    (CLIP, timm); ``squash`` resizes both sides to ``size`` (HF image processors with ``do_center_crop=False``);
    ``longest-pad`` resizes the longer side to ``size`` and zero-pads bottom/right after normalising (SAM).
    ``scale``: ``unit`` maps pixel values to [0, 1] by their bit depth; ``minmax`` rescales each image to [0, 1]
    (MedSAM's inference script); ``raw255`` keeps 0–255 values (Glocker's DenseNet, SAM's pixel statistics).
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = "shortest-crop"
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    scale: str = "unit"

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize {self.resize!r} is not one of {RESIZE_MODES}")
        if self.scale not in SCALE_MODES:
            raise ValueError(f"scale {self.scale!r} is not one of {SCALE_MODES}")
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation {self.interpolation!r} is not bicubic or bilinear")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    def key(self) -> str:
        """Stable hash of every setting, used in feature-cache keys."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> str:
        mean = ",".join(f"{v:g}" for v in self.mean)
        std = ",".join(f"{v:g}" for v in self.std)
        return f"{self.size}px {self.resize} {self.interpolation}, {self.scale}, mean ({mean}) std ({std})"

    def __call__(self, image: Any):
        """Decoded image (PIL, or numpy ``H×W`` / ``H×W×C``) → ``(3, size, size)`` float32 tensor."""
        import torch
        import torch.nn.functional as F

        pixels = to_unit_float(image, scale=self.scale)  # (H, W, 3) float32
        tensor = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
        height, width = tensor.shape[-2:]
        if self.resize == "squash":
            new_h = new_w = self.size
        elif self.resize == "shortest-crop":
            target = int(self.size / self.crop_pct) if self.crop_pct < 1.0 else self.size
            ratio = target / min(height, width)
            new_h, new_w = max(self.size, round(height * ratio)), max(self.size, round(width * ratio))
        else:
            ratio = self.size / max(height, width)
            new_h, new_w = max(1, round(height * ratio)), max(1, round(width * ratio))
        if (new_h, new_w) != (height, width):
            tensor = F.interpolate(
                tensor, size=(new_h, new_w), mode=self.interpolation, antialias=True, align_corners=False
            )
            if self.interpolation == "bicubic":  # bicubic overshoots; keep the value range of the input
                tensor = tensor.clamp(0.0, 255.0 if self.scale == "raw255" else 1.0)
        tensor = tensor[0]
        if self.resize == "shortest-crop":
            top, left = (new_h - self.size) // 2, (new_w - self.size) // 2
            tensor = tensor[:, top : top + self.size, left : left + self.size]
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        tensor = (tensor - mean) / std
        if self.resize == "longest-pad":
            tensor = F.pad(tensor, (0, self.size - tensor.shape[-1], 0, self.size - tensor.shape[-2]))
        return tensor.contiguous()


def to_unit_float(image: Any, *, scale: str = "unit") -> np.ndarray:
    """Decoded image → ``(H, W, 3)`` float32: [0, 1] (``unit``/``minmax``) or [0, 255] (``raw255``).

    Grey images are replicated to three channels (every model in the zoo takes RGB input); an alpha channel is
    dropped. Integer images are scaled by their dtype's range; float images are taken as [0, 1] when they lie in
    it and min–max rescaled otherwise (e.g. CT in Hounsfield units that a reader has not windowed).
    """
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        array = array[..., :3] if array.shape[-1] != 1 else array[..., 0]
    if array.ndim not in (2, 3) or min(array.shape[:2]) < 1:
        raise InputError(f"image of shape {array.shape} is not a 2D grey or RGB image")
    if array.dtype == np.bool_:
        array = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        array = array.astype(np.float32) / float(info.max if info.min == 0 else 1)
        if info.min != 0:  # signed integers (e.g. CT) carry no fixed range: rescale like floats
            array = _minmax(array)
    else:
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise InputError("image contains NaN or infinite values")
        if array.min() < 0.0 or array.max() > 1.0:
            array = _minmax(array)
    if scale == "minmax":
        array = _minmax(array)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if scale == "raw255":
        array = array * 255.0
    return np.ascontiguousarray(array, dtype=np.float32)


def _minmax(array: np.ndarray) -> np.ndarray:
    low, high = float(array.min()), float(array.max())
    if high - low <= 0:
        return np.zeros_like(array, dtype=np.float32)
    return ((array - low) / (high - low)).astype(np.float32)
