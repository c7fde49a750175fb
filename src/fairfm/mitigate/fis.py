"""FIS — fair identity scaling (FairVision, Luo et al. 2024; ``src/modules.py::Fair_Loss_Scaler``; METHODS.md §3.13).

Each training sample's loss ℓ_i (the default per-sample loss: class-weighted BCE, or the CLIP heads' CE) is
scaled by a mix of an individual and a group weight:

- individual: w_i^ind = B·ρ·softmax_i(ℓ_i / τ) over the batch (harder samples weigh more);
- group: d_g = Sinkhorn distance (``geomloss.SamplesLoss("sinkhorn", p=2, blur)``) between group g's losses and
  the pooled losses of every group; w_i^grp = B·ρ·softmax_i(d_{a_i} / τ) over the batch (samples of groups whose
  losses lie far from the pool weigh more);
- loss = mean_i [((1 − c)·w_i^ind + c·w_i^grp)·ℓ_i].

The group samples: the reference draws, every step, a second batch of 64 from each group's own loader and scores
it without gradient. Here each group's sample is its members in the current batch (detached; no second forward,
which the loss hook could not run), and the pool weighs every group present equally (each group's samples carry
total weight 1/G), as the reference's equal-size group batches do. A group absent from the batch has no sample and
no member to weigh. As in the reference the distances carry no gradient and the individual softmax does.

Not copied: the reference's weights sum to ρ over the batch (its ``* x.shape[0]`` is commented out), so its loss is
1/B of the weighted mean and the effective learning rate depends on the batch size; here the weights average ρ.
"""

from __future__ import annotations

from pydantic import Field

from fairfm.mitigate.base import (LossInputs, Method, MethodParams, Needs, TrainContext, TrainHooks, register_method,
                                  require_package)


class FISParams(MethodParams):
    coef: float = Field(0.5, ge=0, le=1, description="c, the share of the group weights (FairVision script: 0.5)")
    temperature: float = Field(1.0, gt=0, description="τ of both softmaxes (FairVision: 1)")
    right_asymptote: float = Field(1.0, gt=0, description="ρ, the mean weight (FairVision script: 1)")
    blur: float = Field(0.1, gt=0, description="geomloss Sinkhorn blur (FairVision: 0.1)")


def sinkhorn_distance(sinkhorn, x: "torch.Tensor", y: "torch.Tensor", x_weights: "torch.Tensor | None" = None,
                      y_weights: "torch.Tensor | None" = None) -> "torch.Tensor":  # fmt: skip
    """``sinkhorn`` between the 1-D samples ``x`` and ``y`` ((n, 1), (m, 1)), optionally weighted; 0 when every
    point is the same (one Dirac on both sides), where geomloss cannot size its blur schedule (zero diameter)."""
    if float(max(x.max(), y.max()).detach() - min(x.min(), y.min()).detach()) == 0.0:
        return 0.0 * x.sum()  # zero, and still a function of x for autograd
    if x_weights is None:
        return sinkhorn(x, y)
    return sinkhorn(x_weights, x, y_weights, y)


def fis_loss(per_sample: "torch.Tensor", groups: "torch.Tensor", *, coef: float, temperature: float,
             right_asymptote: float, sinkhorn) -> "torch.Tensor":  # fmt: skip
    """FIS on one batch: ``per_sample`` (B,) losses with their gradient, ``groups`` (B,) codes."""
    import torch

    n = per_sample.shape[0]
    individual = torch.softmax(per_sample / temperature, dim=0) * n * right_asymptote
    losses = per_sample.detach().double()
    present = torch.unique(groups).tolist()
    members = {g: losses[groups == g] for g in present}
    pool = torch.cat([members[g] for g in present])[:, None]
    pool_weights = torch.cat([torch.full_like(members[g], 1.0 / (len(present) * members[g].numel()))
                              for g in present])  # fmt: skip
    distance = torch.zeros(int(groups.max()) + 1, dtype=losses.dtype, device=losses.device)
    for g in present:
        sample = members[g][:, None]
        uniform = torch.full_like(members[g], 1.0 / members[g].numel())
        distance[g] = sinkhorn_distance(sinkhorn, sample, pool, uniform, pool_weights)
    group = torch.softmax(distance[groups] / temperature, dim=0).to(per_sample.dtype) * n * right_asymptote
    return (((1.0 - coef) * individual + coef * group) * per_sample).mean()


@register_method("fis")
class FIS(Method):
    params_model = FISParams
    needs = Needs(loops=("features", "images", "clip_head"))
    summary = "fair identity scaling: per-sample loss weights from the loss itself and its group's Sinkhorn distance"
    reference = "Luo et al. (FairVision) 2024, src/modules.py Fair_Loss_Scaler (METHODS.md §3.13)"

    def check(self, context: TrainContext) -> None:
        require_package("geomloss", self.name)

    def training_hooks(self, context: TrainContext) -> TrainHooks:
        from geomloss import SamplesLoss

        p = self.params
        sinkhorn = SamplesLoss("sinkhorn", p=2, blur=p.blur)

        def loss(inputs: LossInputs) -> "torch.Tensor":
            labelled = inputs.known.any(dim=1)  # a sample without any known label has no loss to scale
            if not bool(labelled.any()):
                return inputs.default
            return fis_loss(inputs.per_sample()[labelled], inputs.groups[labelled], coef=p.coef,
                            temperature=p.temperature, right_asymptote=p.right_asymptote,
                            sinkhorn=sinkhorn)  # fmt: skip

        return TrainHooks(loss=loss, meta={"group_sample": "batch"})
