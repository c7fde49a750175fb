"""FairLoRA, centralised (FairFedMed ``trainers/GLP_OT_SVLoRA.py::FairLoRALinear``; METHODS.md §3.16,
FEDERATED.md §3): an SVD-form low-rank update with one row of singular values per group.

Every frozen ``nn.Linear`` under an ``mlp`` module of the image tower (a ViT's MLP linears: open_clip ``c_fc`` /
``c_proj``, timm and transformers ``fc1`` / ``fc2``) gets y = W₀x + b + (α/r)·Bᵀ diag(s(a)) Aᵀ x with
A ∈ ℝ^{in×r} = 0 and B ∈ ℝ^{r×out} ~ N(0, 1) (so ΔW = 0 at initialisation), S ∈ ℝ^{G×r} initialised
``same+cycle``, s(a) = π(a)ᵀ S and π = λ (0.7) for the sample's own group, (1 − λ)/(G − 1) for each other group.

**Which usages.** FairLoRA is an addition to the backbone (``TrainHooks.wrap_backbone``), not a usage of its own: it
runs on top of any image-loop usage whose backbone weights stay frozen — ``bitfit`` (biases + FairLoRA), ``lora``
(peft's LoRA on attention + FairLoRA on the MLPs), ``vpt`` (prompts + FairLoRA, the nearest to FairFedMed's
prompt learner + FairLoRA) and ``adapter``. ``full_finetune`` is refused: it trains W₀ itself, so a low-rank
update of a frozen W₀ is no longer what is trained. A layer is never adapted twice: when a usage's LoRA already
wraps an MLP linear (``hparams.targets`` naming it), the run stops with a one-line error before training.

**Inference** (``inference``): ``aware`` (the reference) reads the sample's group; ``blind`` uses uniform π, i.e.
the mean of the groups' singular values, for when the group is unknown at test time.

The federated aggregation is a later issue: each layer's S lives in a parameter named ``…fair_lora.lora_S`` (one
row per group, in the order of the run's sorted groups), so a server can average it row-wise by group counts and
every other tensor by client sizes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from fairfm.adapt.seeding import derive_seed
from fairfm.errors import InputError
from fairfm.mitigate.base import (GroupContext, Loop, Method, MethodParams, Needs, TrainContext, TrainHooks,
                                  register_method)  # fmt: skip


class FairLoRAParams(MethodParams):
    rank: int = Field(12, ge=2, description="r, even (FairFedMed ViT: 12)")
    alpha: float = Field(2.0, gt=0, description="α; the update is scaled by α/r (FairFedMed ViT: 2)")
    own_group_weight: float = Field(0.7, ge=0.0, le=1.0, description="λ: π's weight on the sample's own group "
                                    "(FairFedMed: 0.7), (1 − λ)/(G − 1) on each other group")  # fmt: skip
    init: Literal["same+cycle", "same", "cycle_shift"] = Field("same+cycle", description="initial singular values "
                                                               "(FairFedMed's reset_parameters; default same+cycle)")
    inference: Literal["aware", "blind"] = Field(
        "aware", description="aware: π from the sample's group (the reference; needs the attribute at test time); "
        "blind: uniform π (the mean of the groups' singular values)")  # fmt: skip
    singular_values: Literal["per_group", "shared"] = Field(
        "per_group", description="per_group: one row of S per group (FairLoRA); shared: one row for every sample "
        "(SVLoRA, FairFedMed's --lora_type SVLoRA: no group is read, at training or test time)")  # fmt: skip

    @field_validator("rank")
    @classmethod
    def _even(cls, rank: int) -> int:
        if rank % 2:
            raise ValueError(f"rank must be even (the same+cycle initialisation splits it in halves), got {rank}")
        return rank


@register_method("fair_lora")
class FairLoRA(Method):
    params_model = FairLoRAParams
    needs = Needs(loops=("images",), attribute_at_test=True)
    summary = "per-group singular values in an SVD-form LoRA update of the image tower's MLP linears"
    reference = ("FairFedMed (Harvard-AI-and-Robotics-Lab/FairFedMed) trainers/GLP_OT_SVLoRA.py FairLoRALinear "
                 "(METHODS.md §3.16)")

    def uses_attribute_at_test(self) -> bool:
        return self.params.inference == "aware" and self.params.singular_values == "per_group"

    def refusal(self, loop: Loop, usage: str, *, n_groups: int | None = None,
                model_family: str | None = None) -> str | None:  # fmt: skip
        why = super().refusal(loop, usage, n_groups=n_groups, model_family=model_family)
        if why is None and usage == "full_finetune":
            why = (f"method {self.name!r} adds a low-rank update to frozen MLP weights; usage 'full_finetune' trains "
                   "those weights itself (use lora, bitfit, vpt or adapter)")  # fmt: skip
        if why is None and n_groups is not None and self.params.init != "same" and self.params.rank < n_groups:
            why = (f"method {self.name!r}: init {self.params.init!r} shifts the singular values by group, which needs "
                   f"rank ≥ the number of groups ({n_groups} in {self.attribute_label()}); got rank "
                   f"{self.params.rank} (raise method_params.rank or use init: same)")  # fmt: skip
        return why

    def training_hooks(self, context: TrainContext) -> TrainHooks:
        params = self.params
        shared = params.singular_values == "shared"
        group_context = SharedSingularValues() if shared else GroupContext(context.n_groups)
        hooks = TrainHooks(group_context=group_context, attribute_aware_inference=self.uses_attribute_at_test())
        hooks.meta = {"inference": "none" if shared else params.inference, "singular_values": params.singular_values,
                      "groups": [] if shared else list(context.group_names), "rank": params.rank,
                      "alpha": params.alpha, "own_group_weight": params.own_group_weight, "init": params.init}

        def wrap_backbone(backbone) -> list[str]:
            names, layers, count = add_fair_lora(backbone, group_context, rank=params.rank, alpha=params.alpha,
                                                 own_weight=params.own_group_weight, init=params.init,
                                                 seed=context.seed)  # fmt: skip
            hooks.meta.update({"adapted_layers": layers, "fair_lora_parameters": count})
            return names

        hooks.wrap_backbone = wrap_backbone
        return hooks


class SharedSingularValues(GroupContext):
    """SVLoRA's context: one row of singular values for every sample. The loops still set the batch's group codes
    before each forward; they are read as "no group", so S has one row and π = 1 for everyone."""

    def __init__(self) -> None:
        super().__init__(1)

    @property
    def codes(self) -> None:
        return None

    @codes.setter
    def codes(self, value: Any) -> None:  # the loop's group codes do not apply: one shared row
        pass


def _batch_dim(tower: Any, name: str) -> int:
    """Where the input of layer ``name`` keeps the batch: 1 when its nearest ancestor with a ``batch_first`` flag
    (open_clip's Transformer, ``nn.MultiheadAttention``) says False (sequence first), else 0."""
    parts = name.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        module = tower.get_submodule(".".join(parts[:depth])) if depth else tower
        flag = getattr(module, "batch_first", None)
        if isinstance(flag, bool):
            return 0 if flag else 1
    return 0


def add_fair_lora(backbone: Any, context: GroupContext, *, rank: int, alpha: float, own_weight: float, init: str,
                  seed: int) -> tuple[list[str], list[str], int]:  # fmt: skip
    """Attach FairLoRA to the frozen MLP linears of ``backbone``'s image tower; returns (the new trainable parameter
    names relative to ``backbone``, the adapted layers' names, the number of parameters added)."""
    import torch
    from torch import nn

    from fairfm.adapt.peft_usages import module_image_tower
    from fairfm.mitigate._group_layers import FairLoRAUpdate, attach_update, parameter_count

    tower, prefix = module_image_tower(backbone)
    modules = dict(tower.named_modules())
    targets = []
    for name, module in modules.items():
        path = name.split(".")
        if not isinstance(module, nn.Linear) or "mlp" not in path[:-1]:
            continue
        parent = modules.get(".".join(path[:-1]))
        if path[-1] == "base_layer" or hasattr(module, "base_layer") or hasattr(parent, "base_layer"):
            layer = ".".join(path[:-1]) if path[-1] == "base_layer" else name
            raise InputError(f"method 'fair_lora': the usage's LoRA already adapts {prefix}{layer}, an MLP linear "
                             "FairLoRA adapts; leave the MLP layers out of hparams.targets")  # fmt: skip
        if module.weight.requires_grad:  # trained by the usage (an adapter's own layers): not a frozen W₀
            continue
        targets.append(name)
    if not targets:
        raise InputError("method 'fair_lora': the model's image tower has no frozen linear layer inside an 'mlp' "
                         "module (FairLoRA adapts a ViT's MLP linears)")  # fmt: skip
    names, count = [], 0
    for name in targets:
        linear = modules[name]
        generator = torch.Generator().manual_seed(derive_seed(seed, f"fair_lora:{name}"))
        update = FairLoRAUpdate(linear.in_features, linear.out_features, context, rank=rank, alpha=alpha,
                                own_weight=own_weight, init=init, generator=generator,
                                batch_dim=_batch_dim(tower, name))  # fmt: skip
        update.to(device=linear.weight.device)
        attach_update(linear, update)
        names += [f"{prefix}{name}.fair_lora.{n}" for n, _ in update.named_parameters()]
        count += parameter_count(linear.in_features, linear.out_features, rank, context.n_groups)
    return names, [prefix + n for n in targets], count
