"""Group DRO (Sagawa et al. 2020; MEDFAIR ``models/GroupDRO``; METHODS.md §3.3): minimise the worst group's loss.

Per batch, the mean loss ℓ_g of each group present; the adversarial group weights q (initially uniform) follow
q_g ← q_g·exp(η·ℓ_g), renormalised; the loss is Σ_g q_g ℓ_g. MEDFAIR combines it with the group-balanced sampler,
as here by default. The weights are part of the run (not reset per epoch), as in the reference.
"""

from __future__ import annotations

from pydantic import Field

from fairfm.mitigate.base import LossInputs, Method, MethodParams, Needs, TrainContext, TrainHooks, register_method
from fairfm.mitigate.resampling import inverse_frequency, weighted_rows


class GroupDROParams(MethodParams):
    step_size: float = Field(0.01, gt=0, description="η of the exponentiated group-weight update (MEDFAIR: 0.01)")
    balanced_sampler: bool = Field(True, description="draw training rows group-balanced (MEDFAIR does)")


@register_method("group_dro")
class GroupDRO(Method):
    params_model = GroupDROParams
    needs = Needs(loops=("features", "images", "clip_head"))
    summary = "minimise the worst group's loss with online exponentiated group weights"
    reference = "Sagawa et al. ICLR 2020; MEDFAIR models/GroupDRO (METHODS.md §3.3)"

    def training_hooks(self, context: TrainContext) -> TrainHooks:
        import torch

        q = torch.full((context.n_groups,), 1.0 / context.n_groups, dtype=torch.float64)
        eta = self.params.step_size

        def loss(inputs: LossInputs) -> torch.Tensor:
            nonlocal q
            per_sample = inputs.per_sample()
            has_label = inputs.known.any(dim=1)
            groups = inputs.groups
            losses = torch.zeros(context.n_groups, device=per_sample.device)
            for g in torch.unique(groups[has_label]).tolist():
                losses[g] = per_sample[(groups == g) & has_label].mean()
            with torch.no_grad():
                q = q * torch.exp(eta * losses.detach().double().cpu())
                q = q / q.sum()
            return (q.to(losses.device, losses.dtype) * losses).sum()

        rows = None
        if self.params.balanced_sampler:
            weights = inverse_frequency(context.train_groups)
            rows = weighted_rows(weights / weights.sum(), context.seed, "group_dro")
        hooks = TrainHooks(loss=loss, rows=rows, meta={"final_group_weights": None})

        def record(info) -> None:  # the weights reached, per group, for the run's metadata
            hooks.meta["final_group_weights"] = dict(zip(context.group_names, q.tolist()))

        hooks.on_epoch_end = [record]
        return hooks
