"""Layers shared by the adversarial and representation methods (:mod:`fairfm.mitigate.adversarial`).

Private and imported lazily (it imports torch at module level, which the method modules must not).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class _GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by −scale (Ganin & Lempitsky 2015). No
    maintained library ships this one-liner for plain PyTorch, hence its own few lines."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.scale * grad, None


def reverse_gradient(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``x`` unchanged; the gradient flowing back through it is multiplied by ``−scale``. A module after it that
    minimises its loss (an adversary) makes everything before it (the encoder) maximise that loss, scaled — the
    min–max of adversarial training in one backward pass and one optimiser step."""
    return _GradientReversal.apply(x, float(scale))


def mlp(sizes: Sequence[int], *, last_activation: bool = False) -> nn.Sequential:
    """Linear layers ``sizes[0] → … → sizes[-1]`` with ReLU between them (and after the last one if asked)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class EncodedHead(nn.Module):
    """A trainable encoder in front of the head: ``z = encoder(f)``, logits = ``head(z)``. On cached features the
    frozen representation cannot change, so the methods' adversaries and regularisers act on this z; the last
    forward's z is kept (:attr:`representation`) for the method's regulariser, which the loops call right after
    the forward of the same batch."""

    def __init__(self, encoder: nn.Module, head: nn.Module, width: int) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head
        self.width = width  # of z
        self.representation: torch.Tensor | None = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        z = self.encoder(features)
        self.representation = z
        return self.head(z)


def representation_of(inputs, source: nn.Module | None, method: str) -> torch.Tensor:
    """The representation a method acts on for this batch: the encoder's z (``source`` an :class:`EncodedHead`)
    or the loop's features (the backbone's pooled features in the image loop)."""
    from fairfm.errors import InputError

    z = inputs.features if source is None else source.representation
    if z is None or z.ndim != 2 or z.shape[0] != inputs.logits.shape[0] or z.shape[1] == 0:
        raise InputError(f"method {method!r}: no per-sample representation for this batch (volumes of slices on "
                         "cached features are not supported by the representation methods)")  # fmt: skip
    return z


def negative_entropy(logits: torch.Tensor, probabilities: str = "softmax") -> torch.Tensor:
    """(B,) Σ_k p_k log p_k of p = softmax(logits) (≤ 0; minimising it pushes the prediction towards uniform), or of
    p = sigmoid(logits) per logit (MEDFAIR's LNL; each term is minimised at p_k = 1/e)."""
    log_p = torch.log_softmax(logits, dim=1) if probabilities == "softmax" else F.logsigmoid(logits)
    return (log_p.exp() * log_p).sum(dim=1)


def frozen_call(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with its parameters detached: the gradient reaches ``x`` (the encoder) only."""
    params = {name: p.detach() for name, p in module.named_parameters()}
    return torch.func.functional_call(module, params, (x,))


class GaussianEncoder(nn.Module):
    """ODR's latent encoder: ``h`` = ReLU layers of the ``hidden`` widths on f (METHODS.md: [256, 128]), mean and
    log-variance ``Linear(h)`` each (the log-variance clamped to [−15, 15] so that a branch pushed towards certainty
    cannot overflow its KL term)."""

    def __init__(self, n_in: int, hidden: Sequence[int], latent: int) -> None:
        super().__init__()
        self.trunk = mlp([n_in, *hidden], last_activation=True)
        self.mean, self.log_var = nn.Linear(hidden[-1], latent), nn.Linear(hidden[-1], latent)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(features)
        return self.mean(h), self.log_var(h).clamp(-15.0, 15.0)


class Regularizer(nn.Module):
    """A method's regulariser for the loops' ``TrainHooks.regularizer``: its trainable parts, given by
    :meth:`build` once the width of the representation is known (the method's ``wrap_head``, before the loops
    build the optimiser), and its loss ``loss(parts, inputs, z, source)`` on the batch's representation z
    (``source``: the wrapped head z was read from, or None for the loop's own features)."""

    def __init__(self, method: str, loss) -> None:
        super().__init__()
        self.method = method
        self.__dict__["_loss"] = loss
        self.__dict__["source"] = None  # kept out of the module tree: the head's parameters train as the head's
        self.parts = nn.ModuleDict()

    def build(self, parts: nn.ModuleDict, source: nn.Module | None) -> None:
        self.parts = parts
        self.__dict__["source"] = source

    def forward(self, inputs) -> torch.Tensor:
        return self._loss(self.parts, inputs, representation_of(inputs, self.source, self.method), self.source)


class DisentangledHead(nn.Module):
    """ODR's predicting part: the target encoder (Gaussian latent z_t) and the target classifier on z_t. Training
    reads a reparameterised sample z_t = μ + σ·ε (ε from the method's own seeded generator), prediction reads μ;
    the last forward's (μ, log σ², z_t) are kept for the method's regulariser."""

    def __init__(self, encoder: GaussianEncoder, classifier: nn.Module, seed: int) -> None:
        super().__init__()
        self.encoder, self.classifier = encoder, classifier
        self.width = encoder.mean.out_features  # of z_t
        self.seed = seed
        self.__dict__["_generators"] = {}
        self.latent: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.representation: torch.Tensor | None = None

    def _noise(self, like: torch.Tensor) -> torch.Tensor:
        key = str(like.device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=like.device).manual_seed(self.seed)
        return torch.randn(like.shape, generator=self._generators[key], device=like.device, dtype=like.dtype)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        mean, log_var = self.encoder(features)
        z = mean + torch.exp(0.5 * log_var) * self._noise(mean) if self.training else mean
        self.latent = (mean, log_var, z)
        self.representation = z
        return self.classifier(z)
