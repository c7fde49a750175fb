"""Adversarial and representation methods: LAFTR, CFair, LNL, EnD and ODR (METHODS.md §3.4, §3.5, §3.7–§3.9).

Each acts on a *representation* z, the vector the prediction head reads:

- in the image loop (LoRA, BitFit, VPT, adapters, full fine-tuning) z is the backbone's pooled features
  (``LossInputs.features``); the adversary's reversed gradient reaches the usage's trainable backbone parameters;
- on cached features (the linear probe) the frozen representation cannot change, so the method puts a small
  trainable encoder in front of the head (``wrap_head``: z = ReLU(W·f + b), width ``encoder_hidden``; the head
  reads z) and acts on that z. ODR's own Gaussian encoders play that part in both loops.

The min–max of the adversarial methods is one backward pass through a gradient-reversal layer
(:func:`fairfm.mitigate._layers.reverse_gradient`): the adversary minimises its own loss while the encoder receives
the negated, scaled gradient — unlike MEDFAIR's LAFTR, whose two optimisers step on the same total loss so that its
adversary maximises its own error. All trainable parts are initialised from the run's seed (``derive_seed``), ODR's
reparameterisation noise from a generator of its own, so a run repeats bit for bit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Callable, List, Literal, Optional

import numpy as np
from pydantic import Field

from fairfm.adapt.seeding import derive_seed
from fairfm.errors import InputError
from fairfm.mitigate.base import LossInputs, Method, MethodParams, Needs, TrainContext, TrainHooks, register_method

if TYPE_CHECKING:
    import torch
    from torch import nn


class _RepresentationParams(MethodParams):
    encoder_hidden: int = Field(128, ge=1, description="width of the trainable encoder z = ReLU(W f + b) put in "
                                "front of the head on cached features (the image loop acts on the backbone's "
                                "pooled features instead)")  # fmt: skip
    task: Optional[str] = Field(None, description="the task whose label conditions the method (null: the first)")


def task_labels(context: TrainContext, task: str | None) -> tuple[int, np.ndarray]:
    """(column, (N_train,) labels 0/1/NaN) of the task that conditions the method."""
    if task is not None and task not in context.tasks:
        raise InputError(f"method_params.task: {task!r} is not one of the run's tasks ({', '.join(context.tasks)})")
    column = context.tasks.index(task) if task is not None else 0
    return column, context.train_labels[:, column]


class _RepresentationMethod(Method):
    """A method whose hooks are a regulariser on z (and, on cached features, the encoder that makes z)."""

    needs = Needs(loops=("features", "images"))

    def parts(self, context: TrainContext, width: int, input_width: int) -> "nn.ModuleDict":
        """The regulariser's trainable modules, for a representation of ``width`` (made from features of
        ``input_width``)."""
        raise NotImplementedError

    def regularizer_loss(self, context: TrainContext) -> Callable[..., "torch.Tensor"]:
        """``loss(parts, inputs, z, source) -> scalar`` added to the task loss."""
        raise NotImplementedError

    def predicting_head(self, context: TrainContext, head: "nn.Module") -> "nn.Module":
        """The head the loop trains and predicts with, given the loop's linear head."""
        from torch import nn

        from fairfm.mitigate._layers import EncodedHead, mlp

        if context.loop != "features":
            return head
        width = self.params.encoder_hidden
        return EncodedHead(mlp([head.in_features, width], last_activation=True), nn.Linear(width, head.out_features),
                           width)

    def extra_hooks(self, context: TrainContext) -> dict[str, Any]:
        return {}

    def check(self, context: TrainContext) -> None:
        task_labels(context, getattr(self.params, "task", None))

    def details(self, context: TrainContext) -> dict[str, Any]:
        return {}

    def training_hooks(self, context: TrainContext) -> TrainHooks:
        import torch

        from fairfm.mitigate._layers import Regularizer

        regularizer = Regularizer(self.name, self.regularizer_loss(context))
        seed = derive_seed(context.seed, f"{self.name}:modules")

        def wrap_head(head: "nn.Module") -> "nn.Module":
            if not hasattr(head, "in_features"):
                raise InputError(f"method {self.name!r} needs the usage's linear head (got {type(head).__name__})")
            with torch.random.fork_rng(devices=[]):  # the method's modules drawn from the run's seed alone
                torch.manual_seed(seed)
                wrapped = self.predicting_head(context, head)
                source = wrapped if wrapped is not head else None
                width = source.width if source is not None else head.in_features
                regularizer.build(self.parts(context, width, head.in_features), source)
            return wrapped

        where = (f"a trainable encoder z = ReLU(W f + b) of width {getattr(self.params, 'encoder_hidden', None)} in "
                 "front of the head (cached features)" if context.loop == "features"
                 else "the backbone's pooled features")  # fmt: skip
        return TrainHooks(regularizer=regularizer, wrap_head=wrap_head,
                          meta={"representation": where, **self.details(context)},
                          **self.extra_hooks(context))  # fmt: skip


def _known_classes(inputs: LossInputs, column: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """(known mask, 0/1 long labels with unknown as 0) of the conditioning task in a batch."""
    import torch

    y = inputs.targets[:, column]
    known = ~torch.isnan(y)
    return known, torch.where(known, y, torch.zeros_like(y)).long()


# ------------------------------------------------------------------------------------------------------ LAFTR

LaftrVariant = Literal["dp", "eqodd", "eqopp0", "eqopp1"]


class LaftrParams(_RepresentationParams):
    variant: LaftrVariant = Field("eqodd", description="fairness target of the adversary: dp (adversary on z), "
                                  "eqodd, eqopp0, eqopp1 (adversary on [z, y]; eqopp: y = 0 / y = 1 cells only)")
    class_coeff: float = Field(1.0, ge=0, description="weight of the classification loss")
    fair_coeff: float = Field(1.0, ge=0, description="weight of the adversary's loss the encoder maximises "
                              "(the gradient-reversal scale)")  # fmt: skip
    adversary_hidden: int = Field(128, ge=1, description="hidden width of the adversary (ReLU between its layers)")
    clip_grad_norm: Optional[float] = Field(5.0, gt=0, description="clip the total gradient norm of the trained "
                                            "parameters (MEDFAIR: 5.0; null: no clipping)")  # fmt: skip


def laftr_cell_weights(groups: np.ndarray, labels: np.ndarray, variant: str) -> np.ndarray:
    """(2, 3) weight of a sample of group a (row) and label y (column: 0, 1, 2 = unknown) in LAFTR's adversary loss:
    1 / (n_cells · P(cell)) over the training rows (n_cells: the non-empty cells), so a batch mean of weighted
    errors estimates the mean over cells of each cell's mean error (Madras et al.'s normalisation; MEDFAIR uses
    P(cell) itself). ``dp``: cells are groups (every row counts); eqodd: (group, label) cells of the labelled rows;
    eqopp0 / eqopp1: the y = 0 / y = 1 cells only (weight 0 elsewhere)."""
    table = np.zeros((2, 3))
    groups, labels = np.asarray(groups), np.asarray(labels, dtype=np.float64)
    if variant == "dp":
        shares = {(a, None): float(np.mean(groups == a)) if groups.size else 0.0 for a in (0, 1)}
    else:
        classes = {"eqodd": (0, 1), "eqopp0": (0,), "eqopp1": (1,)}[variant]
        known = ~np.isnan(labels)
        n_known = max(int(known.sum()), 1)
        shares = {(a, y): float(np.sum(known & (groups == a) & (labels == y))) / n_known
                  for a in (0, 1) for y in classes}  # fmt: skip
    n_cells = sum(share > 0 for share in shares.values())
    for (a, y), share in shares.items():
        if share > 0:
            table[a, slice(None) if y is None else y] = 1.0 / (n_cells * share)
    return table


@register_method("laftr")
class Laftr(_RepresentationMethod):
    params_model = LaftrParams
    needs = Needs(loops=("features", "images"), binary_attribute=True)
    summary = "adversarially fair representations: an adversary predicts the group from z ([z, y]), z is trained " \
              "to defeat it (gradient reversal)"
    reference = "Madras et al. ICML 2018; MEDFAIR models/LAFTR (METHODS.md §3.4)"

    def parts(self, context, width, input_width):
        from torch import nn

        from fairfm.mitigate._layers import mlp

        n_in = width + (0 if self.params.variant == "dp" else 1)
        return nn.ModuleDict({"adversary": mlp([n_in, self.params.adversary_hidden, 1])})

    def regularizer_loss(self, context):
        import torch

        from fairfm.mitigate._layers import reverse_gradient

        column, labels = task_labels(context, self.params.task)
        table = torch.as_tensor(laftr_cell_weights(context.train_groups, labels, self.params.variant),
                                dtype=torch.float32)  # fmt: skip
        with_label = self.params.variant != "dp"
        scale = self.params.fair_coeff

        def loss(parts, inputs: LossInputs, z, source):
            y = inputs.targets[:, column]
            known = ~torch.isnan(y)
            y_code = torch.where(known, y, torch.full_like(y, 2.0)).long()
            a = inputs.groups
            weights = table.to(z.device)[a, y_code]
            hidden = reverse_gradient(z, scale)
            if with_label:
                hidden = torch.cat([hidden, torch.where(known, y, torch.zeros_like(y))[:, None].to(z.dtype)], dim=1)
            guess = torch.sigmoid(parts["adversary"](hidden)[:, 0])
            return (weights * (a.to(z.dtype) - guess).abs()).mean()

        return loss

    def extra_hooks(self, context):
        coeff = self.params.class_coeff
        hooks: dict[str, Any] = {"clip_grad_norm": self.params.clip_grad_norm}
        if coeff != 1.0:
            hooks["loss"] = lambda inputs: coeff * inputs.default
        return hooks

    def details(self, context):
        _, labels = task_labels(context, self.params.task)
        table = laftr_cell_weights(context.train_groups, labels, self.params.variant)
        return {"cell_weights": {f"{context.group_names[a]}|y={y}": float(table[a, y])
                                 for a in (0, 1) for y in (0, 1)}}  # fmt: skip


# ------------------------------------------------------------------------------------------------------ CFair


class CFairParams(_RepresentationParams):
    mu: float = Field(0.1, ge=0, description="μ: weight of the conditional adversaries' loss")
    adversary_hidden: int = Field(128, ge=1, description="hidden width of each conditional adversary")
    weighting: Literal["reference", "conditional"] = Field(
        "reference", description="adversary sample weights: reference = Zhao et al.'s and MEDFAIR's "
        "[1/(1−P(y=1|a)), 1/P(y=1|a)]; conditional = 1/P(a|y), the balanced error rate within each class")  # fmt: skip


def cfair_attribute_weights(groups: np.ndarray, labels: np.ndarray, weighting: str = "reference") -> np.ndarray:
    """(2 classes, 2 groups) weight of a sample of group a (column) in the adversary of class y (row), from the
    labelled training rows; 0 where a rate is 0 (a weight that would be infinite).

    ``reference`` (Zhao et al.'s ``reweight_attr_tensors``, copied by MEDFAIR): with b_a = P(y=1 | a), the list
    [[1/(1−b_0), 1/b_0], [1/(1−b_1), 1/b_1]] whose entry y is passed as the NLL class weights of class y's
    adversary — row y holds [1/(1−b_y), 1/b_y], indexed by the group. ``conditional``: 1/P(a | y), which makes class
    y's adversary loss the balanced error rate over the groups within that class (the paper's BER objective)."""
    groups, labels = np.asarray(groups), np.asarray(labels, dtype=np.float64)
    known = ~np.isnan(labels)
    table = np.zeros((2, 2))

    def inverse(share: float) -> float:
        return 1.0 / share if share > 0 else 0.0

    if weighting == "reference":
        for y in (0, 1):
            in_group = known & (groups == y)
            base = float(np.mean(labels[in_group])) if in_group.any() else 0.0
            table[y] = [inverse(1.0 - base), inverse(base)]
        return table
    for y in (0, 1):
        in_class = groups[known & (labels == y)]
        for a in (0, 1):
            table[y, a] = inverse(float(np.mean(in_class == a)) if in_class.size else 0.0)
    return table


@register_method("cfair")
class CFair(_RepresentationMethod):
    params_model = CFairParams
    needs = Needs(loops=("features", "images"), binary_attribute=True)
    summary = "conditional adversaries (one per class, balanced-error weights) remove group information from z " \
              "within each class"
    reference = "Zhao et al. ICLR 2020; MEDFAIR models/CFair (METHODS.md §3.5)"

    def parts(self, context, width, input_width):
        from torch import nn

        from fairfm.mitigate._layers import mlp

        hidden = self.params.adversary_hidden
        return nn.ModuleDict({f"adversary_{y}": mlp([width, hidden, 2]) for y in (0, 1)})

    def regularizer_loss(self, context):
        import torch
        import torch.nn.functional as F

        from fairfm.mitigate._layers import reverse_gradient

        column, labels = task_labels(context, self.params.task)
        table = torch.as_tensor(cfair_attribute_weights(context.train_groups, labels, self.params.weighting),
                                dtype=torch.float32)  # fmt: skip
        mu = self.params.mu

        def loss(parts, inputs: LossInputs, z, source):
            known, y = _known_classes(inputs, column)
            hidden = reverse_gradient(torch.relu(z))
            losses = []
            for cls in (0, 1):
                members = known & (y == cls)
                if members.any():
                    log_p = torch.log_softmax(parts[f"adversary_{cls}"](hidden[members]), dim=1)
                    losses.append(F.nll_loss(log_p, inputs.groups[members], weight=table[cls].to(z.device)))
            return mu * torch.stack(losses).mean() if losses else z.sum() * 0.0

        return loss

    def details(self, context):
        _, labels = task_labels(context, self.params.task)
        table = cfair_attribute_weights(context.train_groups, labels, self.params.weighting)
        return {"weighting": self.params.weighting, "attribute_weights": {f"y={y}|{context.group_names[a]}": float(table[y, a])
                                      for y in (0, 1) for a in (0, 1)}}  # fmt: skip


# -------------------------------------------------------------------------------------------------------- LNL


class LnlParams(_RepresentationParams):
    entropy_weight: float = Field(0.1, ge=0, description="λ: weight of the bias prediction's negative entropy")
    reversal_scale: float = Field(1.0, ge=0, description="scale of the bias predictor's reversed gradient into z")
    predictor_hidden: int = Field(128, ge=1, description="hidden width of the bias predictor")
    entropy: Literal["softmax", "sigmoid"] = Field(
        "softmax", description="probabilities of the entropy term: softmax over the groups (Kim et al.; the "
        "distribution the predictor's cross-entropy trains) or per-logit sigmoid (MEDFAIR's LNL)")  # fmt: skip


@register_method("lnl")
class Lnl(_RepresentationMethod):
    params_model = LnlParams
    summary = "learning not to learn: a bias predictor reads z; z maximises its entropy and defeats it through " \
              "gradient reversal"
    reference = "Kim et al. CVPR 2019; MEDFAIR models/LNL (METHODS.md §3.7)"

    def parts(self, context, width, input_width):
        from torch import nn

        from fairfm.mitigate._layers import mlp

        return nn.ModuleDict({"predictor": mlp([width, self.params.predictor_hidden, context.n_groups])})

    def regularizer_loss(self, context):
        import torch.nn.functional as F

        from fairfm.mitigate._layers import frozen_call, negative_entropy, reverse_gradient

        weight, scale, kind = self.params.entropy_weight, self.params.reversal_scale, self.params.entropy

        def loss(parts, inputs: LossInputs, z, source):
            predictor = parts["predictor"]
            # step 1 of Kim et al.: z maximises the entropy of the (fixed) bias predictor's prediction
            entropy_term = negative_entropy(frozen_call(predictor, z), kind).mean()
            # step 2: the predictor learns the group; z receives the reversed gradient
            bias_term = F.cross_entropy(predictor(reverse_gradient(z, scale)), inputs.groups)
            return weight * entropy_term + bias_term

        return loss


# -------------------------------------------------------------------------------------------------------- EnD


class EndParams(_RepresentationParams):
    alpha: float = Field(0.1, ge=0, description="α: weight of R_⊥ (same-group pairs pushed orthogonal)")
    beta: float = Field(0.1, ge=0, description="β: weight of R_∥ (same-label, different-group pairs pulled "
                        "together)")  # fmt: skip


def end_terms(z: "torch.Tensor", groups: "torch.Tensor", labels: "torch.Tensor", known: "torch.Tensor",
              ) -> tuple["torch.Tensor", "torch.Tensor"]:  # fmt: skip
    """(R_⊥, R_∥) of EnD on a batch: cosine similarities of the L2-normalised rows (clamped to [−1, 1]); R_⊥ =
    mean |cos| over pairs of distinct samples of the same group; R_∥ = 1 − mean (1 + cos)/2 over pairs with the same
    (known) label and different groups; a term without pairs is 0."""
    import torch
    import torch.nn.functional as F

    unit = F.normalize(z, dim=1)
    gram = (unit @ unit.T).clamp(-1.0, 1.0)
    distinct = ~torch.eye(len(z), dtype=torch.bool, device=z.device)
    same_group = (groups[:, None] == groups[None, :]) & distinct
    zero = z.sum() * 0.0
    orthogonal = gram.abs()[same_group].mean() if same_group.any() else zero
    pairs = (labels[:, None] == labels[None, :]) & known[:, None] & known[None, :] & ~same_group & distinct
    parallel = 1.0 - ((1.0 + gram[pairs]) / 2.0).mean() if pairs.any() else zero
    return orthogonal, parallel


@register_method("end")
class End(_RepresentationMethod):
    params_model = EndParams
    summary = "entangling and disentangling: same-group pairs of z pushed orthogonal, same-label pairs across " \
              "groups pulled together"
    reference = "Tartaglione et al. CVPR 2021; MEDFAIR models/EnD (METHODS.md §3.8)"

    def parts(self, context, width, input_width):
        from torch import nn

        return nn.ModuleDict()

    def regularizer_loss(self, context):
        column, _ = task_labels(context, self.params.task)
        alpha, beta = self.params.alpha, self.params.beta

        def loss(parts, inputs: LossInputs, z, source):
            known, y = _known_classes(inputs, column)
            orthogonal, parallel = end_terms(z, inputs.groups, y, known)
            return alpha * orthogonal + beta * parallel

        return loss


# -------------------------------------------------------------------------------------------------------- ODR


class OdrParams(MethodParams):
    lambda_e: float = Field(0.1, ge=0, description="λ_E: weight of the entropy term (sensitive classifier on z_t)")
    lambda_od: float = Field(0.1, ge=0, description="λ_OD: weight of the KL terms to the orthogonal priors")
    gamma_e: float = Field(0.1, gt=0, le=1, description="decay of λ_E: λ_E·γ_E^(epoch/step_size)")
    gamma_od: float = Field(0.1, gt=0, le=1, description="decay of λ_OD: λ_OD·γ_OD^(epoch/step_size)")
    step_size: float = Field(20, gt=0, description="epochs over which a coefficient decays by its γ")
    latent_dim: int = Field(128, ge=2, description="dimension of z_t and z_s")
    encoder_hidden: List[Annotated[int, Field(ge=1)]] = Field([256, 128], min_length=1, description="hidden widths "
                                                               "of each Gaussian encoder (METHODS.md: [256, 128])")
    classifier_hidden: List[Annotated[int, Field(ge=1)]] = Field([256, 128], description="hidden widths of the target and sensitive "
                                         "classifiers")  # fmt: skip


def odr_prior_means(latent_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Orthogonal prior means (MEDFAIR's): z_t's is one-hot at index 13 (the last index for a smaller latent),
    z_s's is ones with a zero there."""
    index = min(13, latent_dim - 1)
    target, sensitive = np.zeros(latent_dim), np.ones(latent_dim)
    target[index], sensitive[index] = 1.0, 0.0
    return target, sensitive


def gaussian_kl(mean: "torch.Tensor", log_var: "torch.Tensor", prior_mean: "torch.Tensor") -> "torch.Tensor":
    """Mean over the batch of KL(N(μ, diag σ²) ‖ N(m, I)), summed over dimensions: analytic (torch.distributions),
    so differentiable in μ and σ — MEDFAIR compares softmaxed ``.sample()`` draws, which carry no gradient."""
    import torch
    from torch.distributions import Normal, kl_divergence

    posterior = Normal(mean, torch.exp(0.5 * log_var))
    return kl_divergence(posterior, Normal(prior_mean.to(mean.device, mean.dtype), 1.0)).sum(dim=1).mean()


def odr_coefficient(value: float, gamma: float, epoch: int, step_size: float) -> float:
    return value * gamma ** (epoch / step_size)


@register_method("odr")
class Odr(_RepresentationMethod):
    params_model = OdrParams
    summary = "orthogonal disentangled representations: Gaussian target and sensitive latents with orthogonal " \
              "priors; z_t made uninformative of the group"
    reference = "Sarhan et al. ECCV 2020; MEDFAIR models/ODR (METHODS.md §3.9)"

    def predicting_head(self, context, head):
        from fairfm.mitigate._layers import DisentangledHead, GaussianEncoder, mlp

        p = self.params
        encoder = GaussianEncoder(head.in_features, p.encoder_hidden, p.latent_dim)
        classifier = mlp([p.latent_dim, *p.classifier_hidden, head.out_features])
        return DisentangledHead(encoder, classifier, derive_seed(context.seed, "odr:noise"))

    def parts(self, context, width, input_width):
        from torch import nn

        from fairfm.mitigate._layers import GaussianEncoder, mlp

        p = self.params
        # the sensitive encoder reads the same features as the target encoder
        return nn.ModuleDict({"sensitive_encoder": GaussianEncoder(input_width, p.encoder_hidden, p.latent_dim),
                              "sensitive_classifier": mlp([p.latent_dim, *p.classifier_hidden, context.n_groups])})

    def details(self, context):
        return {"representation": "z_t of ODR's target encoder on " + (
            "the cached features" if context.loop == "features" else "the backbone's pooled features")}

    def regularizer_loss(self, context):
        import torch
        import torch.nn.functional as F

        from fairfm.mitigate._layers import frozen_call, negative_entropy

        p = self.params
        prior_t, prior_s = (torch.as_tensor(m, dtype=torch.float32) for m in odr_prior_means(p.latent_dim))

        def loss(parts, inputs: LossInputs, z_t, source):
            mean_t, log_var_t, _ = source.latent
            # the sensitive branch reads the features without teaching the backbone the group (MEDFAIR freezes it)
            mean_s, log_var_s = parts["sensitive_encoder"](inputs.features.detach())
            z_s = mean_s + torch.exp(0.5 * log_var_s) * source._noise(mean_s)
            classifier = parts["sensitive_classifier"]
            sensitive = F.cross_entropy(classifier(z_s), inputs.groups)
            # z_t made uninformative: the sensitive classifier (fixed for this term) should be unsure on it
            entropy = negative_entropy(frozen_call(classifier, z_t)).mean()
            lambda_e = odr_coefficient(p.lambda_e, p.gamma_e, inputs.epoch, p.step_size)
            lambda_od = odr_coefficient(p.lambda_od, p.gamma_od, inputs.epoch, p.step_size)
            divergence = gaussian_kl(mean_t, log_var_t, prior_t) + gaussian_kl(mean_s, log_var_s, prior_s)
            return sensitive + lambda_od * divergence + lambda_e * entropy

        return loss
