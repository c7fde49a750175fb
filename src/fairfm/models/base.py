"""The interfaces every loaded model offers: Encoder, VisionLanguageEncoder, PromptableSegmenter.

Wrappers hold the library's own ``nn.Module`` (``.module``) so that adaptation code (LoRA, fine-tuning) can reach
the real layer names; ``encode_*`` always run in eval mode under ``torch.inference_mode`` and return float32.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from fairfm.models.checkpoints import weights_id
from fairfm.models.preprocess import Preprocess

if TYPE_CHECKING:
    import torch

    from fairfm.models.registry import ModelCard


class Encoder:
    """An image encoder: ``encode_image((N, 3, S, S)) -> (N, D)`` float32, with the card's preprocessing."""

    def __init__(
        self,
        card: "ModelCard",
        module: "torch.nn.Module",
        weights: Path | None,
        image_fn: Callable[["torch.Tensor"], "torch.Tensor"],
        *,
        embed_dim: int,
        preprocess: Preprocess | None = None,
        channels_last: bool = False,
        weights_extra: str = "",
    ) -> None:
        self.card = card
        self.module = module.eval()
        self.weights = weights
        self.embed_dim = embed_dim
        self.preprocess = preprocess or card.preprocess
        self.channels_last = channels_last
        self._image_fn = image_fn
        self._weights_extra = weights_extra
        if channels_last:
            import torch

            self.module = self.module.to(memory_format=torch.channels_last)

    @property
    def weights_id(self) -> str:
        """Content hash of the weights plus any architecture overrides (feature-cache key part)."""
        return weights_id(self.weights, extra=f"{self.card.name}|{self._weights_extra}")

    def encode_image(self, batch: "torch.Tensor") -> "torch.Tensor":
        import torch

        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"{self.card.name}: expected a (N, 3, H, W) batch, got {tuple(batch.shape)}")
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            features = self._image_fn(batch)
        return features.float().reshape(features.shape[0], -1)

    def __call__(self, batch: "torch.Tensor") -> "torch.Tensor":
        return self.encode_image(batch)

    def image_features(self, batch: "torch.Tensor") -> "torch.Tensor":
        """The image features *with* autograd and in the module's current train/eval mode — what fine-tuning
        differentiates through. ``encode_image`` is the inference path (eval mode, no gradients, float32)."""
        return self._image_fn(batch)


class VisionLanguageEncoder(Encoder):
    """An image–text model: adds ``encode_text(list[str]) -> (M, D)`` and its logit scale (and bias, SigLIP)."""

    def __init__(
        self,
        *args: Any,
        text_fn: Callable[[list[str]], "torch.Tensor"],
        logit_scale: float,
        logit_bias: float = 0.0,
        image_tokens: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._text_fn = text_fn
        self.logit_scale = float(logit_scale)
        self.logit_bias = float(logit_bias)
        # BLIP-2 represents an image by several query embeddings (flattened in its features) and scores an
        # image–text pair by the best-matching query; every other model has one embedding per image.
        self.image_tokens = int(image_tokens)

    def encode_text(self, texts: list[str]) -> "torch.Tensor":
        import torch

        if isinstance(texts, str) or not texts:
            raise ValueError(f"{self.card.name}: encode_text takes a non-empty list of strings")
        with torch.inference_mode():
            features = self._text_fn(list(texts))
        return features.float()

    def similarity_logits(
        self, image_features: "torch.Tensor", text_features: "torch.Tensor"
    ) -> "torch.Tensor":
        """``logit_scale · cos(image, text) + logit_bias``: (N, M) logits as the model was trained to produce
        (for multi-token images, the cosine of the best-matching image token)."""
        import torch.nn.functional as F

        text = F.normalize(text_features.float(), dim=-1)
        if self.image_tokens > 1:
            tokens = image_features.float().reshape(image_features.shape[0], self.image_tokens, -1)
            cosine = (F.normalize(tokens, dim=-1) @ text.T).amax(dim=1)
        else:
            cosine = F.normalize(image_features.float(), dim=-1) @ text.T
        return self.logit_scale * cosine + self.logit_bias


class LastImageCache:
    """The image embedding of the last image a promptable segmenter saw, keyed by the image's content.

    Prompting several structures of one image, or re-prompting it, must not re-run the (expensive) image encoder;
    SAM's own ``SamPredictor.set_image`` keeps the same one-image state. The key is a content digest, not the
    array's identity, so a different image in a reused buffer is never served a stale embedding.
    """

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._value: Any = None

    @staticmethod
    def key(array: np.ndarray) -> tuple[Any, ...]:
        import hashlib

        contiguous = np.ascontiguousarray(array)
        digest = hashlib.blake2b(contiguous.view(np.uint8).reshape(-1), digest_size=16).hexdigest()
        return (contiguous.shape, contiguous.dtype.str, digest)

    def get(self, array: np.ndarray, compute: Callable[[], Any]) -> Any:
        key = self.key(array)
        if key != self._key:
            self._value, self._key = compute(), key
        return self._value


class PromptableSegmenter:
    """A SAM-style model: ``segment(image, points=…, boxes=…) -> (masks (K, H, W) bool, scores (K,))``."""

    def __init__(
        self,
        card: "ModelCard",
        module: "torch.nn.Module",
        weights: Path | None,
        segment_fn: Callable[..., tuple[np.ndarray, np.ndarray]],
        *,
        preprocess: Preprocess | None = None,
        weights_extra: str = "",
    ) -> None:
        self.card = card
        self.module = module.eval()
        self.weights = weights
        self.preprocess = preprocess or card.preprocess
        self._segment_fn = segment_fn
        self._weights_extra = weights_extra

    @property
    def weights_id(self) -> str:
        return weights_id(self.weights, extra=f"{self.card.name}|{self._weights_extra}")

    def segment(
        self,
        image: Any,
        *,
        points: Any = None,
        point_labels: Any = None,
        boxes: Any = None,
        multimask: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Masks for one image at its original size and their predicted IoU.

        ``points``: (P, 2) x/y pixel coordinates with ``point_labels`` (P,) 1 = foreground, 0 = background;
        ``boxes``: (4,) or (B, 4) x0, y0, x1, y1. With ``multimask`` the model returns 3 candidate masks per
        prompt (SAM's ambiguity-aware output); callers typically keep the one with the highest score.
        """
        import torch

        if points is None and boxes is None:
            raise ValueError(f"{self.card.name}: segment needs points or boxes")
        if points is not None:
            points = np.asarray(points, dtype=np.float32).reshape(-1, 2)
            point_labels = (
                np.ones(len(points), dtype=np.int64)
                if point_labels is None
                else np.asarray(point_labels, dtype=np.int64).reshape(-1)
            )
            if len(point_labels) != len(points):
                raise ValueError(
                    f"{self.card.name}: {len(points)} points but {len(point_labels)} point labels"
                )
        if boxes is not None:
            boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        with torch.inference_mode():
            return self._segment_fn(image, points, point_labels, boxes, multimask)
