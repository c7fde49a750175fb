"""CLIP adaptation on cached image features: prototype tuning and CLIP-Adapter (METHODS.md §2.3, §2.4).

Both start from zero-shot (:mod:`fairfm.adapt.zero_shot`): per task, the two classes [negative, positive] are
represented by the (ensembled) text embeddings of their prompts, and the model's own ``similarity_logits``
(``logit_scale · cos + logit_bias``) gives one logit per class; P(positive) is the softmax over the two.

- **Prototype tuning** (FairMedFM's "CLIP-Adapt"): the (T, 2, D) class text embeddings become learnable
  prototypes.
- **CLIP-Adapter** (Gao et al. 2021): a residual bottleneck MLP on the image feature,
  ``f' = r·A(f) + (1 − r)·f`` with ``A(f) = ReLU(W₂ ReLU(W₁ f))`` (no biases, hidden width D / reduction),
  scored against the frozen class text embeddings; optionally a second adapter on the text side.

Both encoders stay frozen and are never given to the optimiser: only the prototypes / adapters are trained, on
the cached features of the training split, with the linear probe's optimiser, warm-up + cosine schedule, model
selection on validation and early stopping (its helpers are reused). The loss is cross-entropy over the two
classes of each task (a sample whose label of a task is unknown is skipped for that task), class-weighted
N / (2·N_c) with ``class_balanced``.

The epoch loop is written here rather than reused from ``train_linear_probe`` because that function builds its
own ``nn.Linear`` head with a sigmoid/BCE loss; the loop below follows it step for step with a softmax head.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from fairfm.adapt.linear_probe import _as_labels, batched_logits, fit_head
from fairfm.adapt.selection import check_labels, check_worst_group_selection, selection_codes
from fairfm.adapt.prompts import PromptSet
from fairfm.adapt.volumes import SliceBags, max_over_slices
from fairfm.adapt.zero_shot import class_embeddings
from fairfm.errors import InputError

if TYPE_CHECKING:
    import torch

    from fairfm.mitigate.base import TrainHooks
    from fairfm.models.base import VisionLanguageEncoder
    from fairfm.spec import ClipAdapterHParams, PrototypeHParams, TrainHParams

Prompts = dict[str, tuple[list[str], list[str]]]  # task -> (negative prompts, positive prompts)


@dataclass
class ClipAdaptationResult:
    """The validation-selected trained state, its probabilities per split, and what to record in meta.json."""

    probabilities: dict[str, np.ndarray]  # split -> (N, T) P(positive) of the selected epoch
    meta: dict[str, Any]
    state_dict: dict[str, "torch.Tensor"]  # only the trained parameters (CPU tensors)
    best_epoch: int  # 1-based
    best_score: float  # val AUC, −val loss, or nan for select_by 'last'
    history: list[dict[str, float]] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)

    def save(self, path: str | os.PathLike) -> None:
        """Write the trained prototypes / adapters with safetensors (atomically)."""
        from safetensors.torch import save_file

        from fairfm.tableio import atomic_path

        metadata = {"best_epoch": str(self.best_epoch), "tasks": ",".join(self.tasks),
                    "usage": str(self.meta.get("usage", ""))}  # fmt: skip
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in self.state_dict.items()}, str(tmp), metadata=metadata)


# ------------------------------------------------------------------------------------------------------ heads


def task_class_embeddings(encoder: "VisionLanguageEncoder", tasks: Sequence[str], prompt_set: PromptSet, *,
                          ensemble: bool = True) -> tuple["torch.Tensor", Prompts]:  # fmt: skip
    """(T, 2, D) class text embeddings [negative, positive] per task (zero-shot's) and the prompts used."""
    import torch

    if not hasattr(encoder, "encode_text"):
        raise InputError(f"model {encoder.card.name!r} has no text encoder: CLIP adaptation needs a "
                         "vision-language model")  # fmt: skip
    rows, used = [], {}
    for task in tasks:
        negative, positive = prompt_set.prompts(task, ensemble=ensemble)
        used[task] = (negative, positive)
        rows.append(class_embeddings(encoder, [negative, positive]))
    # A normal (not inference-mode) copy: it initialises a parameter or is read inside autograd.
    return torch.stack(rows).float().clone(), used


def _similarity(encoder: "VisionLanguageEncoder", features: "torch.Tensor",
                text: "torch.Tensor") -> "torch.Tensor":  # fmt: skip
    """(N, T, 2) logits: the model's own similarity of every image with each task's two class embeddings."""
    import torch

    return torch.stack([encoder.similarity_logits(features, text[t]) for t in range(text.shape[0])], dim=1)


def _prototype_head(encoder: "VisionLanguageEncoder", class_text: "torch.Tensor") -> "torch.nn.Module":
    from torch import nn

    class PrototypeHead(nn.Module):
        """Learnable (T, 2, D) class prototypes initialised from the prompt embeddings."""

        def __init__(self) -> None:
            super().__init__()
            self.prototypes = nn.Parameter(class_text.detach().clone())

        def forward(self, features):
            return _similarity(encoder, features, self.prototypes)

    return PrototypeHead()


def _residual_adapter(dim: int, reduction: int, ratio: float) -> "torch.nn.Module":
    from torch import nn

    class ResidualAdapter(nn.Module):
        """Gao et al.'s bottleneck on the last dimension: x' = r·ReLU(W₂ ReLU(W₁ x)) + (1 − r)·x."""

        def __init__(self) -> None:
            super().__init__()
            hidden = max(dim // reduction, 1)
            self.fc = nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(),
                                    nn.Linear(hidden, dim, bias=False), nn.ReLU())  # fmt: skip
            self.ratio = float(ratio)

        def forward(self, x):
            return self.ratio * self.fc(x) + (1.0 - self.ratio) * x

    return ResidualAdapter()


def _clip_adapter_head(encoder: "VisionLanguageEncoder", class_text: "torch.Tensor", *, reduction: int,
                       ratio: float, text_adapter: bool) -> "torch.nn.Module":  # fmt: skip
    from torch import nn

    dim = int(class_text.shape[-1])
    tokens = int(getattr(encoder, "image_tokens", 1))

    class ClipAdapterHead(nn.Module):
        """Image-side residual adapter (optionally a text-side one too) before the frozen similarity."""

        def __init__(self) -> None:
            super().__init__()
            self.image_adapter = _residual_adapter(dim, reduction, ratio)
            self.text_adapter = _residual_adapter(dim, reduction, ratio) if text_adapter else None
            # The prompt embeddings are frozen: a buffer, not a parameter, so no optimiser can see them.
            self.register_buffer("class_text", class_text.detach().clone())

        def forward(self, features):
            # Multi-token images (BLIP-2's queries, flattened in the cache) are adapted token by token.
            shape = features.shape
            adapted = self.image_adapter(features.reshape(shape[0], tokens, dim)).reshape(shape)
            text = self.text_adapter(self.class_text) if self.text_adapter is not None else self.class_text
            return _similarity(encoder, adapted, text)

    return ClipAdapterHead()


# --------------------------------------------------------------------------------------------------- training


def _check_inputs(features: Mapping[str, Any], labels: Mapping[str, Any], n_tasks: int, dim: int,
                  usage: str) -> dict[str, np.ndarray]:  # fmt: skip
    for split in ("train", "val"):
        if split not in features or split not in labels:
            raise InputError(f"{usage}: the {split!r} split is missing (features and labels of train and val "
                             "are needed)")  # fmt: skip
    names = {"train": "training", "val": "validation"}
    y = {split: _as_labels(labels[split], names[split]) for split in ("train", "val")}
    for split, values in y.items():
        if values.shape[1] != n_tasks:
            raise InputError(f"{usage}: {split} labels have {values.shape[1]} task column(s) for "
                             f"{n_tasks} task(s)")  # fmt: skip
        if len(features[split]) != len(values):
            raise InputError(f"{usage}: {len(features[split])} {split} feature rows for {len(values)} labels")
        if len(values) == 0:
            raise InputError(f"{usage}: the {split} split has no sample")
    for split, x in features.items():
        shape = np.shape(x)
        if len(shape) != 2 or shape[1] != dim:
            raise InputError(f"{usage}: {split} features have shape {tuple(shape)}; expected (N, {dim}) to "
                             "match the text embeddings (cached features of this same model)")  # fmt: skip
    return y


def _as_tensor_rows(x: Any) -> Any:
    """Features as a float32 tensor; volumes (:class:`SliceBags`) keep their bags over a tensor of their rows."""
    import torch

    if isinstance(x, SliceBags):
        return x.with_rows(torch.as_tensor(np.array(x.rows, dtype=np.float32)))  # a copy of the read-only cache
    return torch.as_tensor(np.asarray(x, dtype=np.float32))


@dataclass
class _Trained:
    probabilities: dict[str, np.ndarray]
    state_dict: dict[str, "torch.Tensor"]
    best_epoch: int
    best_score: float
    history: list[dict[str, float]]


def _train(head: "torch.nn.Module", features: Mapping[str, Any], labels: Mapping[str, Any],
           tasks: Sequence[str], *, feature_dim: int, hparams: "TrainHParams", seed: int, device: str,
           progress: bool, usage: str, encoder: "VisionLanguageEncoder", hooks: "TrainHooks | None" = None,
           groups: Mapping[str, np.ndarray] | None = None) -> _Trained:  # fmt: skip
    import torch
    import torch.nn.functional as F

    hp = hparams
    n_tasks = len(tasks)
    y = _check_inputs(features, labels, n_tasks, feature_dim, usage)
    y_train, y_val = y["train"], y["val"]
    positives, negatives = check_labels(y_train, y_val, tasks, hp.select_by, usage)
    if hp.select_by == "val_worst_group_auc":
        check_worst_group_selection(y_val, selection_codes(groups), tasks)
    if hooks is not None:  # what this loop does not implement is refused, never silently ignored
        unsupported = [name for name in ("wrap_head", "wrap_backbone", "group_context")
                       if getattr(hooks, name) is not None] + (["attribute_aware_inference"]
                                                               if hooks.attribute_aware_inference else [])  # fmt: skip
        if unsupported:
            raise InputError(f"{usage}: the CLIP-head loop does not implement the method hook(s) "
                             f"{', '.join(unsupported)}; the method must not declare the clip_head loop")  # fmt: skip

    dev = torch.device(device)
    head = head.to(dev)
    # Class weights N / (2·N_c) per task over its known labels, in class order [negative, positive].
    counts = np.stack([negatives, positives], axis=1)
    balanced = counts.sum(axis=1, keepdims=True) / (2.0 * counts)
    weights = balanced if hp.class_balanced else np.ones_like(balanced)
    class_weight = torch.as_tensor(weights, dtype=torch.float32, device=dev)
    inputs = {name: _as_tensor_rows(x) for name, x in features.items()}

    def forward(x: Any, index: Any) -> "torch.Tensor":
        if isinstance(x, SliceBags):  # FairMedFM's MIL: per task, the logits of the slice with the top P(class 1)
            rows, segments = x.take(index)
            logits = head(rows.to(dev))
            return max_over_slices(logits, segments, len(index), scores=logits[..., 1] - logits[..., 0])[0]
        rows = x[index].to(dev)
        logits = head(rows)
        return (logits, rows) if hooks is not None else logits  # a method's loss also sees the features

    def predict(x: Any, index: Any) -> "torch.Tensor":
        out = forward(x, index)
        return out[0] if isinstance(out, tuple) else out

    def loss_of(logits: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
        total, count = logits.new_zeros(()), 0
        for j in range(n_tasks):
            known = ~torch.isnan(target[:, j])
            if not known.any():
                continue
            losses = F.cross_entropy(logits[known, j], target[known, j].long(), weight=class_weight[j],
                                     reduction="none", label_smoothing=hp.label_smoothing)  # fmt: skip
            total = total + losses.sum()
            count += int(known.sum())
        return total / max(count, 1)

    def per_element_loss(logits: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
        """(B, T) the class-weighted CE of each sample and task, 0 where the label is unknown (a method's loss)."""
        known = ~torch.isnan(target)
        clean = torch.where(known, target, torch.zeros_like(target)).long()
        return torch.stack([F.cross_entropy(logits[:, j], clean[:, j], weight=class_weight[j], reduction="none",
                                            label_smoothing=hp.label_smoothing) for j in range(n_tasks)],
                           dim=1) * known  # fmt: skip

    def similarity(logits: "torch.Tensor") -> "torch.Tensor":
        # the cosines behind the logits (logit_scale · cos + logit_bias, the scale positive): FairCLIP reads them
        return (logits - float(getattr(encoder, "logit_bias", 0.0))) / float(encoder.logit_scale)

    def probabilities_of(logits: "torch.Tensor") -> np.ndarray:
        return torch.softmax(logits.double(), dim=-1)[..., 1].cpu().numpy()

    empty = (0, n_tasks, 2)
    selection, history = fit_head(head, forward, loss_of, probabilities_of, train_x=inputs["train"],
                                  train_targets=torch.as_tensor(y_train, dtype=torch.float32), val_x=inputs["val"],
                                  y_val=y_val, hparams=hp, seed=seed, label=usage, empty=empty,
                                  progress=progress, hooks=hooks, train_groups=(groups or {}).get("train"),
                                  val_groups=(groups or {}).get("val"),
                                  selection_groups=selection_codes(groups), per_element_loss=per_element_loss,
                                  similarity=similarity)  # fmt: skip
    best_state = selection.best_state
    probabilities = {name: probabilities_of(batched_logits(head, predict, x, hp.batch_size, empty))
                     for name, x in inputs.items()}  # fmt: skip
    trained = {name for name, p in head.named_parameters() if p.requires_grad}
    state = {k: v for k, v in best_state.items() if k in trained}
    return _Trained(probabilities=probabilities, state_dict=state, best_epoch=selection.best_epoch,
                    best_score=selection.reported_score,
                    history=history)


def _result(usage: str, trained: _Trained, tasks: Sequence[str], prompts: Prompts,
            encoder: "VisionLanguageEncoder", hparams: "TrainHParams", seed: int,
            extra_meta: dict[str, Any]) -> ClipAdaptationResult:  # fmt: skip
    meta = {
        "usage": usage,
        "prompts": {task: {"negative": neg, "positive": pos} for task, (neg, pos) in prompts.items()},
        "logit_scale": float(encoder.logit_scale),
        "logit_bias": float(getattr(encoder, "logit_bias", 0.0)),
        "trained_parameters": {name: list(value.shape) for name, value in trained.state_dict.items()},
        **extra_meta,
        "training": {"best_epoch": trained.best_epoch, "epochs_run": len(trained.history),
                     "selected_by": hparams.select_by,
                     "best_score": None if math.isnan(trained.best_score) else trained.best_score,
                     "optimizer": hparams.optimizer, "seed": seed, "history": trained.history},  # fmt: skip
    }
    return ClipAdaptationResult(probabilities=trained.probabilities, meta=meta, state_dict=trained.state_dict,
                                best_epoch=trained.best_epoch, best_score=trained.best_score,
                                history=trained.history, tasks=list(tasks))  # fmt: skip


def _feature_dim(class_text: "torch.Tensor", encoder: "VisionLanguageEncoder") -> int:
    return int(class_text.shape[-1]) * int(getattr(encoder, "image_tokens", 1))


def prototype_tuning(
    features: Mapping[str, Any],
    labels: Mapping[str, Any],
    encoder: "VisionLanguageEncoder",
    tasks: Sequence[str],
    prompt_set: PromptSet,
    *,
    hparams: "PrototypeHParams",
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    hooks: "TrainHooks | None" = None,
    groups: Mapping[str, np.ndarray] | None = None,
) -> ClipAdaptationResult:
    """FairMedFM's CLIP-Adapt: tune the (T, 2, D) class prototypes initialised from the prompts' text embeddings
    (the ensemble of every template, or the first template alone with ``hparams.ensemble`` false).

    ``features``: split -> cached image features (N, D) of ``encoder`` (``train`` and ``val`` required; every
    split given gets probabilities). ``labels``: ``train`` and ``val`` -> (N,) or (N, T) with 0/1 and NaN for
    unknown. Only the prototypes are trained; ``encoder`` is used for its text embeddings and its similarity.
    ``hooks``: a mitigation method's :class:`~fairfm.mitigate.TrainHooks` (rows, loss, regularizer, step, after_step,
    on_epoch_end, final_state, as :func:`~fairfm.adapt.linear_probe.fit_head` honours them), with ``groups`` the
    group codes of ``"train"`` and ``"val"``.
    """
    class_text, prompts = task_class_embeddings(encoder, tasks, prompt_set, ensemble=hparams.ensemble)
    head = _prototype_head(encoder, class_text)
    dim = _feature_dim(class_text, encoder)
    trained = _train(head, features, labels, tasks, feature_dim=dim, hparams=hparams, seed=seed,
                     device=device, progress=progress, usage="prototype", encoder=encoder, hooks=hooks,
                     groups=groups)
    return _result("prototype", trained, tasks, prompts, encoder, hparams, seed, {})


def clip_adapter(
    features: Mapping[str, Any],
    labels: Mapping[str, Any],
    encoder: "VisionLanguageEncoder",
    tasks: Sequence[str],
    prompt_set: PromptSet,
    *,
    hparams: "ClipAdapterHParams",
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    hooks: "TrainHooks | None" = None,
    groups: Mapping[str, np.ndarray] | None = None,
) -> ClipAdaptationResult:
    """Gao et al.'s CLIP-Adapter on cached features (inputs as :func:`prototype_tuning`).

    A residual bottleneck MLP on the image features (ratio ``residual_ratio``, hidden width D / ``reduction``;
    with ``text_adapter`` another one on the class text embeddings), classified against the frozen
    prompt-ensemble class embeddings with the model's logit scale. The adapters' initial weights come from
    ``seed``.
    """
    import torch

    class_text, prompts = task_class_embeddings(encoder, tasks, prompt_set, ensemble=hparams.ensemble)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = _clip_adapter_head(encoder, class_text, reduction=hparams.reduction,
                                  ratio=hparams.residual_ratio, text_adapter=hparams.text_adapter)
    dim = _feature_dim(class_text, encoder)
    trained = _train(head, features, labels, tasks, feature_dim=dim, hparams=hparams, seed=seed,
                     device=device, progress=progress, usage="clip_adapter", encoder=encoder, hooks=hooks,
                     groups=groups)
    extra = {"adapter": {"residual_ratio": hparams.residual_ratio, "reduction": hparams.reduction,
                         "hidden": max(int(class_text.shape[-1]) // hparams.reduction, 1),
                         "text_adapter": hparams.text_adapter}}  # fmt: skip
    return _result("clip_adapter", trained, tasks, prompts, encoder, hparams, seed, extra)
