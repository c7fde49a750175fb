"""The ``nn.Module``s of the group-conditioned methods: DomainInd's per-group heads, FIN in front of the head and
FairLoRA's per-group singular values on a linear layer.

Imported lazily by :mod:`fairfm.mitigate.domain_ind`, :mod:`~fairfm.mitigate.fin` and
:mod:`~fairfm.mitigate.fair_lora` (this module imports torch; method listing and spec validation must not). Each
module reads the group codes of the batch from a shared :class:`~fairfm.mitigate.base.GroupContext`, which the
training loops set before every forward: the batch's codes while training; while predicting, the codes
(attribute-aware inference) or None (attribute-blind inference, each module's group-blind rule).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fairfm.errors import InputError
from fairfm.mitigate.base import GroupContext


def batch_codes(context: GroupContext, batch: int, method: str) -> torch.Tensor | None:
    """The context's codes for a batch of ``batch`` rows (None: attribute-blind). A batch k times as long as the
    codes holds k rows per sample, sample-major (OCT chunks of each volume): each row gets its sample's code."""
    codes = context.codes
    if codes is None:
        return None
    if codes.ndim != 1 or codes.shape[0] == 0 or batch % codes.shape[0]:
        raise InputError(f"method {method!r}: {tuple(codes.shape)} group codes for a batch of {batch} rows (one "
                         "group per row, or per sample of consecutive rows, is needed)")  # fmt: skip
    return codes.long().repeat_interleave(batch // codes.shape[0])


class GroupHeads(nn.Module):
    """DomainInd (MEDFAIR ``models/DomainInd``): one linear head per group, G × T logits from one ``Linear(D, G·T)``
    laid out group-major (logit ``g·T + t``, as MEDFAIR). With codes: each row's own group head; without (blind
    inference): the sum of the G heads' logits (MEDFAIR's ``inference_sum_prob``, which sums logits then applies
    the sigmoid)."""

    def __init__(self, in_features: int, n_tasks: int, context: GroupContext) -> None:
        super().__init__()
        self.n_groups, self.n_tasks = context.n_groups, n_tasks
        self.heads = nn.Linear(in_features, context.n_groups * n_tasks)
        self.__dict__["context"] = context  # shared with the loop, not a sub-module

    def all_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, G, T) logits of every group head."""
        return self.heads(x).view(x.shape[0], self.n_groups, self.n_tasks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.all_logits(x)
        codes = batch_codes(self.context, x.shape[0], "domain_ind")
        if codes is None:
            return logits.sum(dim=1)
        return logits[torch.arange(x.shape[0], device=x.device), codes.to(x.device)]


class FairIdentityNormalizer(nn.Module):
    """FIN (Harvard-GF ``Fair_Identity_Normalizer``) in front of ``head``: learnable μ_g, σ_g ∈ ℝ^D per group,
    x̂ = (x − μ_a) / (softplus(σ_a) + 1e-6), out = head((1 − m)·x̂ + m·x).

    Without codes (the labelled attribute-blind variant) the sample's group is unknown: the prediction is the
    mixture P(y | x) = Σ_g π_g P(y | x, g) over the groups with their training proportions π (returned as the
    mixture's logit, so the loops' sigmoid gives it back)."""

    eps = 1e-6

    def __init__(self, head: nn.Module, dim: int, context: GroupContext, *, momentum: float, mu_scale: float,
                 sigma_scale: float, proportions: torch.Tensor, generator: torch.Generator) -> None:  # fmt: skip
        super().__init__()
        groups = context.n_groups
        self.head = head
        self.mus = nn.Parameter(torch.randn(groups, dim, generator=generator) * mu_scale)
        self.sigmas = nn.Parameter(torch.randn(groups, dim, generator=generator) * sigma_scale)
        self.momentum = float(momentum)
        self.register_buffer("log_proportions", torch.log(proportions.double().clamp(min=1e-12)).float())
        self.__dict__["context"] = context

    def normalise(self, x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        # A new tensor: the reference writes the normalised rows into its input in place (do not copy).
        x_hat = (x - self.mus[codes]) / (F.softplus(self.sigmas[codes]) + self.eps)
        return (1.0 - self.momentum) * x_hat + self.momentum * x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        codes = batch_codes(self.context, x.shape[0], "fin")
        if codes is not None:
            return self.head(self.normalise(x, codes.to(x.device)))
        # blind: log P(y=1|x) = logsumexp_g(log π_g + log σ(z_g)), likewise for y=0; logit = their difference
        per_group = torch.stack([self.head(self.normalise(x, torch.full((x.shape[0],), g, device=x.device)))
                                 for g in range(self.mus.shape[0])], dim=1)  # (B, G, T)  # fmt: skip
        log_pi = self.log_proportions.to(x.device)[None, :, None]
        log_p1 = torch.logsumexp(log_pi + F.logsigmoid(per_group), dim=1)
        log_p0 = torch.logsumexp(log_pi + F.logsigmoid(-per_group), dim=1)
        return log_p1 - log_p0


def singular_value_init(kind: str, n_groups: int, rank: int) -> torch.Tensor:
    """FairFedMed's initial S (G × r), ``FairLoRALinear.reset_parameters``: ``same`` = linspace(1, 0.1, r) for
    every group; ``cycle_shift`` = that vector rolled left by g·⌊r/G⌋ for group g; ``same+cycle`` (the
    reference's default) = linspace(0.5, 0.1, r/2) for every group, then 0.2 × that vector rolled left by
    g·⌊(r/2)/G⌋."""
    if kind == "same":
        return torch.linspace(1.0, 0.1, rank).repeat(n_groups, 1)
    if kind == "cycle_shift":
        base, step = torch.linspace(1.0, 0.1, rank), rank // n_groups
        return torch.stack([torch.roll(base, -g * step) for g in range(n_groups)])
    half = rank // 2
    base, step = torch.linspace(0.5, 0.1, half), half // n_groups
    cycled = torch.stack([torch.roll(base, -g * step) for g in range(n_groups)])
    return torch.cat([base.repeat(n_groups, 1), 0.2 * cycled], dim=1)


def group_mixing(codes: torch.Tensor | None, n_groups: int, own_weight: float, batch: int) -> torch.Tensor:
    """π (B × G): ``own_weight`` (λ) for the row's own group and (1 − λ)/(G − 1) for each other group
    (FairFedMed's λ = 0.7); without codes (attribute-blind) uniform 1/G. One group: π = 1."""
    if codes is None:
        return torch.full((batch, n_groups), 1.0 / n_groups)
    if n_groups == 1:
        return torch.ones((batch, 1))
    one_hot = F.one_hot(codes.long().cpu(), n_groups).float()
    return one_hot * own_weight + (1.0 - one_hot) * (1.0 - own_weight) / (n_groups - 1)


class FairLoRAUpdate(nn.Module):
    """FairLoRA's update of one frozen linear layer W₀ (FairFedMed ``FairLoRALinear``), added to its output by a
    forward hook: Δy = (α/r) · ((x A) ⊙ s(a)) B with A ∈ ℝ^{in×r} (zeros: ΔW = 0 at initialisation), B ∈ ℝ^{r×out}
    (N(0, 1)) and one row of singular values per group, S ∈ ℝ^{G×r}: s(a) = π(a)ᵀ S.

    Hand-written because peft's LoRA has one (B A) pair per layer and no per-sample, group-indexed singular values.
    ``lora_S`` keeps one row per group under its own name, so a federated server can average it row-wise (by group
    counts) and the rest by client sizes (FEDERATED.md §3). ``batch_dim`` is where the layer's input keeps the batch
    (1 for a sequence-first transformer)."""

    def __init__(self, in_features: int, out_features: int, context: GroupContext, *, rank: int, alpha: float,
                 own_weight: float, init: str, generator: torch.Generator, batch_dim: int = 0) -> None:  # fmt: skip
        super().__init__()
        self.rank, self.alpha, self.scaling = rank, float(alpha), float(alpha) / rank
        self.own_weight, self.batch_dim = float(own_weight), batch_dim
        self.lora_A = nn.Parameter(torch.zeros(in_features, rank))
        self.lora_B = nn.Parameter(torch.randn(rank, out_features, generator=generator))
        self.lora_S = nn.Parameter(singular_value_init(init, context.n_groups, rank))
        self.__dict__["context"] = context

    def singular_values(self, batch: int) -> torch.Tensor:
        """(batch, r) s(a) of each row of the batch (π from the context's codes)."""
        codes = batch_codes(self.context, batch, "fair_lora")
        pi = group_mixing(codes, self.lora_S.shape[0], self.own_weight, batch).to(self.lora_S)
        return pi @ self.lora_S

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[self.batch_dim] if x.ndim > 1 else 1
        s = self.singular_values(batch)
        shape = [1] * x.ndim
        shape[self.batch_dim if x.ndim > 1 else 0], shape[-1] = batch, self.rank
        projected = x @ self.lora_A.to(x.dtype)
        return (projected * s.to(x.dtype).view(shape)) @ self.lora_B.to(x.dtype) * self.scaling

    def delta_weight(self, s: torch.Tensor) -> torch.Tensor:
        """ΔW (out × in) for singular values ``s`` (r,): (α/r)·Bᵀ diag(s) Aᵀ."""
        return self.scaling * (self.lora_B.T * s[None, :]) @ self.lora_A.T


def attach_update(linear: nn.Linear, update: FairLoRAUpdate) -> None:
    """Register ``update`` as the child ``fair_lora`` of ``linear`` and add its Δy to the layer's output. The
    layer's own parameter names do not change, so a usage's trainable names (BitFit's biases) stay valid."""
    linear.fair_lora = update

    def add_update(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + module.fair_lora(args[0]).to(output.dtype)

    linear.register_forward_hook(add_update)


def parameter_count(in_features: int, out_features: int, rank: int, n_groups: int) -> int:
    """Trainable parameters FairLoRA adds to one linear layer: in·r + r·out + G·r."""
    return in_features * rank + rank * out_features + n_groups * rank
