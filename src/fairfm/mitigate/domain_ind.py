"""DomainInd ("InD", Wang et al. CVPR 2020; MEDFAIR ``models/DomainInd``; METHODS.md §3.6): one head per group.

The linear head becomes G × T logits (one head per group of the method's attribute) on the shared features.
Training: each sample's loss reads only its own group's head. Inference is a parameter:

- ``blind`` (the default, MEDFAIR's): the sum of the G heads' logits, then the sigmoid — no attribute at test time.
  MEDFAIR's function is called ``inference_sum_prob`` but sums logits (its sigmoid is commented out); its older
  two-domain code sums probabilities, which is not a probability (it exceeds 1). The sum of logits is kept.
- ``aware``: the sample's own group head ("conditional" inference); the run is then attribute-aware.

Blind is the default because it is the reference's own inference and the deployable one (a model that needs the
patient's group to predict is a different product); ``aware`` is offered and labelled.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from fairfm.adapt.seeding import derive_seed
from fairfm.errors import InputError
from fairfm.mitigate.base import GroupContext, Method, MethodParams, Needs, TrainContext, TrainHooks, register_method


def require_training_rows(context: TrainContext, method: str, part: str) -> None:
    """Refuse a group without training rows: its own ``part`` (a head, a normaliser) would never train."""
    counts = np.bincount(context.train_groups, minlength=context.n_groups)
    if (counts == 0).any():
        missing = context.group_names[int(np.argmax(counts == 0))]
        raise InputError(f"method {method!r}: group {missing!r} of {context.attribute!r} has no training rows, so its "
                         f"{part} would never train (choose another attribute, or merge its groups)")  # fmt: skip


class DomainIndParams(MethodParams):
    inference: Literal["blind", "aware"] = Field(
        "blind", description="blind: sum of the group heads' logits (MEDFAIR); aware: the sample's own group head "
        "(needs the attribute at test time)")  # fmt: skip


@register_method("domain_ind")
class DomainInd(Method):
    params_model = DomainIndParams
    needs = Needs(loops=("features", "images"))
    summary = ("one head per group; train each sample on its group's head, predict with the sum of logits (blind) "
               "or the own group's head (aware)")  # fmt: skip
    reference = "Wang et al. CVPR 2020; MEDFAIR models/DomainInd (METHODS.md §3.6)"

    def uses_attribute_at_test(self) -> bool:
        return self.params.inference == "aware"

    def check(self, context: TrainContext) -> None:
        require_training_rows(context, self.name, "head")

    def training_hooks(self, context: TrainContext) -> TrainHooks:
        group_context = GroupContext(context.n_groups)
        seed = derive_seed(context.seed, "domain_ind")

        def wrap_head(head):
            import torch

            from fairfm.mitigate._group_layers import GroupHeads

            with torch.random.fork_rng(devices=[]):  # the heads drawn from the run's seed alone
                torch.manual_seed(seed)
                return GroupHeads(head.in_features, head.out_features, group_context)

        return TrainHooks(wrap_head=wrap_head, group_context=group_context,
                          attribute_aware_inference=self.uses_attribute_at_test(),
                          meta={"inference": self.params.inference, "groups": list(context.group_names),
                                "blind_rule": "sum of the group heads' logits"})  # fmt: skip
