"""FIN, fair identity normalisation (Harvard-GF ``src/modules.py::Fair_Identity_Normalizer``; METHODS.md §3.12).

Learnable per-group μ_g, σ_g ∈ ℝ^D on the feature vector the head reads: x̂ = (x − μ_a) / (softplus(σ_a) + 1e-6),
out = (1 − m)·x̂ + m·x, then the linear head. Initialisation as the reference: μ ~ 0.001·N(0, 1),
σ ~ 0.1·N(0, 1) (drawn from the run's seed). The group is read at training and at test time (the reference's
inference, ``inference: aware``, the default).

``inference: blind`` is a labelled fairfm variant for when the group is unknown at test time: the mixture
P(y | x) = Σ_g π_g · P(y | x, normalised as group g), π the groups' training proportions. It is the
marginal prediction if the group were independent of the image — an approximation, not the reference's method.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from fairfm.adapt.seeding import derive_seed
from fairfm.mitigate.base import GroupContext, Method, MethodParams, Needs, TrainContext, TrainHooks, register_method
from fairfm.mitigate.domain_ind import require_training_rows


class FINParams(MethodParams):
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="m in out = (1 − m)·x̂ + m·x (reference default 0)")
    mu_init: float = Field(0.001, ge=0.0, description="μ initialised as mu_init·N(0, 1) (reference 0.001)")
    sigma_init: float = Field(0.1, ge=0.0, description="σ initialised as sigma_init·N(0, 1) (reference 0.1)")
    inference: Literal["aware", "blind"] = Field(
        "aware", description="aware: normalise with the sample's group (the reference; needs the attribute at test "
        "time); blind: mixture of the groups' predictions weighted by their training proportions")  # fmt: skip


@register_method("fin")
class FIN(Method):
    params_model = FINParams
    needs = Needs(loops=("features", "images"), attribute_at_test=True)
    summary = "learnable per-group mean and scale normalise the features in front of the head"
    reference = "Luo et al. (Harvard-GF) 2023, src/modules.py::Fair_Identity_Normalizer (METHODS.md §3.12)"

    def uses_attribute_at_test(self) -> bool:
        return self.params.inference == "aware"

    def check(self, context: TrainContext) -> None:
        require_training_rows(context, self.name, "mean and scale")

    def training_hooks(self, context: TrainContext) -> TrainHooks:
        group_context = GroupContext(context.n_groups)
        counts = np.bincount(context.train_groups, minlength=context.n_groups).astype(np.float64)
        proportions = counts / counts.sum()
        params = self.params

        def wrap_head(head):
            import torch

            from fairfm.mitigate._group_layers import FairIdentityNormalizer

            generator = torch.Generator().manual_seed(derive_seed(context.seed, "fin"))
            return FairIdentityNormalizer(head, head.in_features, group_context, momentum=params.momentum,
                                          mu_scale=params.mu_init, sigma_scale=params.sigma_init,
                                          proportions=torch.as_tensor(proportions), generator=generator)  # fmt: skip

        meta = {"inference": params.inference, "groups": list(context.group_names)}
        if params.inference == "blind":
            meta["blind_rule"] = "mixture of the groups' predictions weighted by their training proportions"
            meta["training_proportions"] = dict(zip(context.group_names, proportions.round(6).tolist()))
        return TrainHooks(wrap_head=wrap_head, group_context=group_context,
                          attribute_aware_inference=self.uses_attribute_at_test(), meta=meta)  # fmt: skip
