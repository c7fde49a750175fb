"""Zero-shot classification with a vision–language encoder (METHODS.md §2.1).

Per task, the two classes [negative, positive] are described by prompts (:mod:`fairfm.adapt.prompts`). A class's
text embedding is its prompt's embedding, or — with a prompt ensemble — the mean of the L2-normalised embeddings of
all its prompts (CLIP's ensembling, Radford et al. 2021 §3.1.4). The model's own ``similarity_logits`` (scale ×
cosine + bias) gives one logit per class, and P(positive) is the softmax over the two class logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from fairfm.adapt.prompts import PromptSet
from fairfm.errors import InputError

if TYPE_CHECKING:
    import torch

    from fairfm.models.base import VisionLanguageEncoder


@dataclass
class ZeroShotResult:
    probabilities: np.ndarray  # (N, T) P(positive class) per task
    prompts: dict[str, tuple[list[str], list[str]]]  # task -> (negative prompts, positive prompts)


def class_embeddings(encoder: "VisionLanguageEncoder", prompts: Sequence[Sequence[str]]) -> "torch.Tensor":
    """(C, D) one embedding per class: the mean of the L2-normalised embeddings of that class's prompts."""
    import torch.nn.functional as F

    rows = []
    for class_prompts in prompts:
        if not class_prompts:
            raise InputError("zero-shot: a class has no prompt")
        rows.append(F.normalize(encoder.encode_text(list(class_prompts)), dim=-1).mean(dim=0))
    import torch

    return torch.stack(rows)


def positive_probability(encoder: "VisionLanguageEncoder", image_features: Any,
                         class_text: "torch.Tensor") -> np.ndarray:  # fmt: skip
    """Softmax over the (negative, positive) class logits of ``similarity_logits``; returns P(positive) (N,)."""
    import torch

    features = torch.as_tensor(np.asarray(image_features, dtype=np.float32))
    logits = encoder.similarity_logits(features, class_text)
    return torch.softmax(logits.double(), dim=-1)[:, 1].numpy()


def zero_shot(
    encoder: "VisionLanguageEncoder",
    image_features: Any,
    tasks: Sequence[str],
    prompt_set: PromptSet,
    *,
    ensemble: bool = True,
    batch_size: int = 4096,
) -> ZeroShotResult:
    """P(positive) for every task from cached image features (N, D) of ``encoder``."""
    if not hasattr(encoder, "encode_text"):
        raise InputError(f"model {encoder.card.name!r} has no text encoder: zero-shot needs a vision-language model")
    features = np.asarray(image_features, dtype=np.float32)
    out = np.zeros((len(features), len(tasks)), dtype=np.float64)
    used: dict[str, tuple[list[str], list[str]]] = {}
    for j, task in enumerate(tasks):
        negative, positive = prompt_set.prompts(task, ensemble=ensemble)
        used[task] = (negative, positive)
        text = class_embeddings(encoder, [negative, positive])
        for start in range(0, len(features), batch_size):
            out[start:start + batch_size, j] = positive_probability(encoder, features[start:start + batch_size], text)
    return ZeroShotResult(probabilities=out, prompts=used)
