"""FairCLIP's Sinkhorn loss (Luo et al. CVPR 2024, ``FairCLIP/finetune_FairCLIP.py``; METHODS.md §3.15).

For the CLIP heads on cached features (prototype tuning, CLIP-Adapter): with s_i the cosine similarity of sample
i's image with the text of its true class (per task), D the distribution of s over the training batch (with its
gradient) and D_g that of group g's members (without), the loss is

    the usage's loss + λ · Σ_tasks Σ_g Sinkhorn(D, D_g)

(geomloss ``SamplesLoss("sinkhorn", p=2, blur)``): it pulls every group's image–text agreement towards the batch's.
The reference fine-tunes CLIP with the contrastive loss over image–text pairs; here the usage's own two-class
cross-entropy takes its place, and the similarity is the one behind the head's class logits. The group samples are
each group's members in the current batch, where the reference draws a batch per group from its own loader.

Not copied: the reference's "similarity" multiplies the image and text logit matrices instead of taking cosines,
and only its group distribution is normalised. Defaults are the reference parser's (λ = 1e-4, blur = 1e-4; its
released script uses 1e-6 for both): on cosines in [−1, 1] such a λ barely moves training, so raise it to see an
effect.
"""

from __future__ import annotations

from pydantic import Field

from fairfm.mitigate.base import (LossInputs, Method, MethodParams, Needs, TrainContext, TrainHooks, register_method,
                                  require_package)
from fairfm.mitigate.fis import sinkhorn_distance


class FairCLIPParams(MethodParams):
    weight: float = Field(1e-4, ge=0, description="λ of the Sinkhorn term (FairCLIP parser: 1e-4; script: 1e-6)")
    blur: float = Field(1e-4, gt=0, description="geomloss Sinkhorn blur (FairCLIP parser: 1e-4; script: 1e-6)")


def matched_similarity(similarity: "torch.Tensor", targets: "torch.Tensor", task: int) -> "torch.Tensor":
    """(n,) the cosine of each sample whose label of ``task`` is known with the text of that label's class."""
    known = ~targets[:, task].isnan()
    return similarity[known, task].gather(1, targets[known, task].long()[:, None])[:, 0]


def sinkhorn_term(inputs: LossInputs, sinkhorn) -> "torch.Tensor":
    """Σ_tasks Σ_g Sinkhorn(D_batch, D_g) of one batch."""
    if inputs.similarity is None:
        raise ValueError("fairclip needs the image–text similarities of the batch (the clip_head loop gives them)")
    total = inputs.similarity.new_zeros(())
    for task in range(inputs.targets.shape[1]):
        known = ~inputs.targets[:, task].isnan()
        if not bool(known.any()):
            continue
        matched = matched_similarity(inputs.similarity, inputs.targets, task)[:, None]
        groups = inputs.groups[known]
        for g in groups.unique().tolist():
            total = total + sinkhorn_distance(sinkhorn, matched, matched[groups == g].detach())
    return total


@register_method("fairclip")
class FairCLIP(Method):
    params_model = FairCLIPParams
    needs = Needs(loops=("clip_head",), vision_language=True)
    summary = "Sinkhorn distance between each group's and the batch's image–text similarity distributions"
    reference = "Luo et al. CVPR 2024 (FairCLIP), finetune_FairCLIP.py (METHODS.md §3.15)"

    def check(self, context: TrainContext) -> None:
        require_package("geomloss", self.name)

    def training_hooks(self, context: TrainContext) -> TrainHooks:
        from geomloss import SamplesLoss

        sinkhorn = SamplesLoss("sinkhorn", p=2, blur=self.params.blur)
        weight = self.params.weight

        def loss(inputs: LossInputs) -> "torch.Tensor":
            return inputs.default + weight * sinkhorn_term(inputs, sinkhorn)

        return TrainHooks(loss=loss, meta={"similarity": "cosine", "group_sample": "batch"})
