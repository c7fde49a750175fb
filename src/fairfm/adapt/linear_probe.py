"""Linear probing: a linear head trained on frozen-encoder features (METHODS.md §2.2).

One ``nn.Linear(D, T)`` output per task, multi-label BCE with a positive weight per task (negatives / positives
on the training split; ``class_balanced``), the spec's optimiser (SGD with momentum, AdamW or Adam; no weight
decay on biases, as in timm's parameter groups), linear warm-up then half-cosine from ``lr`` to ``min_lr``, and
model selection on the validation split (macro AUC over tasks, validation loss, or the last epoch) with early
stopping after ``early_stopping_patience`` epochs without improvement. The weights of the selected epoch are kept
in memory and can be written with safetensors.

Unlike FairMedFM (which always uses SGD, keeps the last epoch and never looks at a validation set), the optimiser
named in the hyper-parameters is the one used and the head is selected on validation.

Inputs are either cached features (the usual path) or anything an ``embed`` callable turns into features batch by
batch — e.g. preprocessed images and a frozen encoder — so the two paths train on exactly the same batches.
Volumes are :class:`~fairfm.adapt.volumes.SliceBags` of slice rows (features or images): every slice is scored
and, per volume and task, the slice with the highest P(class 1) gives the volume's logit, for the loss and the
predictions (FairMedFM's slice max-pooling MIL, METHODS.md §2.8).
``amp`` and ``num_workers`` do not apply to a head trained on in-memory features and are not used here.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from fairfm.adapt.selection import (ModelSelection, check_labels, check_worst_group_selection, cpu_state, lr_at,
                                    macro_auc, selection_codes, worst_group_auc)  # fmt: skip
from fairfm.errors import InputError

if TYPE_CHECKING:
    import torch

    from fairfm.mitigate.base import TrainHooks
    from fairfm.spec import LinearProbeHParams, TrainHParams


@dataclass
class LinearProbeResult:
    """The selected head, its predictions and the training history."""

    state_dict: dict[str, "torch.Tensor"]  # weights of the selected epoch (CPU tensors)
    best_epoch: int  # 1-based
    best_score: float  # the selection criterion at best_epoch (val AUC, −val loss, or nan for 'last')
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch: loss, val_loss, val_auc, lr
    predictions: dict[str, np.ndarray] = field(default_factory=dict)  # set name -> (N, T) probabilities
    tasks: list[str] = field(default_factory=list)

    def save(self, path: str | os.PathLike) -> None:
        """Write the selected head with safetensors (atomically)."""
        from safetensors.torch import save_file

        from fairfm.tableio import atomic_path

        metadata = {"best_epoch": str(self.best_epoch), "tasks": ",".join(self.tasks)}
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in self.state_dict.items()}, str(tmp), metadata=metadata)


def _as_labels(y: Any, name: str) -> np.ndarray:
    array = np.asarray(y, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    bad = ~np.isnan(array) & (array != 0) & (array != 1)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        value = float(array[row, col])
        raise InputError(f"{name} labels: row {row}, task {col} has value {value!r} (expected 0, 1 or NaN)")
    return array


def _param_groups(head: "torch.nn.Module", weight_decay: float) -> list[dict[str, Any]]:
    # timm's convention: no weight decay on 1-D parameters (biases, norms).
    decay = [p for p in head.parameters() if p.ndim > 1]
    no_decay = [p for p in head.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _optimizer(name: str, groups: list[dict[str, Any]], hp: "LinearProbeHParams", lr: float):
    import torch

    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=hp.momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(hp.betas))
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(hp.betas))
    raise InputError(f"hparams.optimizer: {name!r} is not one of sgd, adamw, adam")


def batched_logits(head: "torch.nn.Module", forward: Callable[[Any, np.ndarray], "torch.Tensor"], inputs: Any,
                   batch_size: int, empty: tuple[int, ...]) -> "torch.Tensor":  # fmt: skip
    """``forward(inputs, index)`` over ``inputs`` in batches, in eval mode without gradients."""
    import torch

    head.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            out.append(forward(inputs, np.arange(start, min(start + batch_size, len(inputs)))))
    return torch.cat(out) if out else torch.zeros(empty, device=next(head.parameters()).device)


def fit_head(head: "torch.nn.Module", forward: Callable[[Any, np.ndarray], "torch.Tensor"],
             loss_of: Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"],
             probabilities: Callable[["torch.Tensor"], np.ndarray], *, train_x: Any, train_targets: "torch.Tensor",
             val_x: Any, y_val: np.ndarray, hparams: "TrainHParams", seed: int, label: str,
             empty: tuple[int, ...], progress: bool = False, hooks: "TrainHooks | None" = None,
             train_groups: np.ndarray | None = None, val_groups: np.ndarray | None = None,
             selection_groups: np.ndarray | None = None,
             per_element_loss: Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"] | None = None,
             similarity: Callable[["torch.Tensor"], "torch.Tensor"] | None = None,
             ) -> tuple[ModelSelection, list[dict[str, float]]]:  # fmt: skip
    """The epoch loop of a head trained on in-memory inputs (the linear probe, CLIP adaptation): shuffled
    mini-batches (``forward(inputs, index)`` → logits, or (logits, features)), the hyper-parameters' optimiser with
    warm-up + cosine per epoch or iteration, validation AUC / loss after each epoch and :class:`ModelSelection` with
    early stopping. The head is left holding the selected state; returns the selection and the per-epoch history.

    ``hooks`` (a mitigation method's :class:`~fairfm.mitigate.TrainHooks`; the head given is already wrapped) act as
    in :func:`fairfm.adapt.train.fit`; they read ``train_groups`` / ``val_groups`` (group codes per row;
    ``select_by: val_worst_group_auc`` reads ``selection_groups``, the val codes with unknown groups as −1) and the
    method's loss sees ``per_element_loss(logits, targets)`` (the default loss per sample and task) and, for a CLIP
    head, ``similarity(logits)`` (the cosines behind the logits, :attr:`~fairfm.mitigate.LossInputs.similarity`)."""
    import torch
    from rich.progress import BarColumn, Progress, TextColumn

    hp = hparams
    if hp.schedule == "step":
        raise InputError(f"hparams.schedule: 'step' is not implemented for {label} (use cosine or constant)")
    dev = next(head.parameters()).device
    base_lr = hp.lr * (hp.batch_size / 256 if hp.lr_scaling == "linear" else 1.0)
    min_lr = min(hp.min_lr, base_lr)
    optimizer = _optimizer(hp.optimizer, _param_groups(head, hp.weight_decay), hp, base_lr)
    generator = torch.Generator().manual_seed(seed)
    n_train = len(train_targets)
    # a method's rows per epoch (resampling, a balanced subset) set the steps, as in the image loop
    n_draws = len(hooks.rows(0)) if hooks is not None and hooks.rows is not None else n_train
    steps_per_epoch = math.ceil(n_draws / hp.batch_size)
    per_iteration = hp.schedule_per == "iteration"
    total = hp.epochs * (steps_per_epoch if per_iteration else 1)
    warmup = hp.warmup_epochs * (steps_per_epoch if per_iteration else 1)
    val_targets = torch.as_tensor(y_val, dtype=torch.float32, device=dev)

    def set_lr(lr: float) -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr

    from fairfm.mitigate.base import LossInputs, TrainHooks

    hooks = hooks if hooks is not None else TrainHooks()

    def clip_gradients() -> None:  # a method's clipping (LAFTR's 5.0) on everything the optimiser steps
        if hooks.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                           hooks.clip_grad_norm)  # fmt: skip
    context = hooks.group_context
    regularizer = hooks.regularizer
    if regularizer is not None:
        regularizer.to(dev)
        optimizer.add_param_group({"params": list(regularizer.parameters()), "weight_decay": 0.0})
    train_codes = torch.as_tensor(train_groups if train_groups is not None else np.zeros(n_train, np.int64))
    val_codes = torch.as_tensor(val_groups) if val_groups is not None else None
    by_worst_group = hp.select_by == "val_worst_group_auc"
    if by_worst_group:
        check_worst_group_selection(y_val, selection_groups, [f"task {j}" for j in range(y_val.shape[1])])

    def logits_and_features(inputs: Any, index: np.ndarray) -> tuple["torch.Tensor", "torch.Tensor | None"]:
        out = forward(inputs, index)
        return out if isinstance(out, tuple) else (out, None)

    def val_forward(inputs: Any, index: np.ndarray) -> "torch.Tensor":
        if context is not None:  # validation predicts as the test set will: with groups only when attribute-aware
            aware = hooks.attribute_aware_inference and val_codes is not None
            context.codes = val_codes[index].to(dev) if aware else None
        return logits_and_features(inputs, index)[0]

    def batch_loss(index: np.ndarray, epoch: int) -> "torch.Tensor":
        codes = train_codes[index].to(dev)
        if context is not None:
            context.codes = codes
        logits, features = logits_and_features(train_x, index)
        targets = train_targets[index].to(dev)
        if hooks.loss is None and regularizer is None:
            return loss_of(logits, targets)
        known = ~torch.isnan(targets)
        per_element = per_element_loss(logits, targets) if per_element_loss is not None else None
        if per_element is None:
            raise ValueError(f"{label}: a method's loss needs the per-element loss of this head")
        features = features if features is not None else torch.zeros((len(index), 0), device=dev)
        inputs = LossInputs(logits, targets, codes, features, per_element, known, epoch, torch.as_tensor(index),
                            similarity(logits) if similarity is not None else None)  # fmt: skip
        loss = hooks.loss(inputs) if hooks.loss is not None else inputs.default
        return loss + regularizer(inputs) if regularizer is not None else loss

    selection = ModelSelection(hp.select_by, hp.early_stopping_patience)
    history: list[dict[str, float]] = []
    columns = [TextColumn(f"[bold]{label}"), BarColumn(), TextColumn("epoch {task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]} val AUC {task.fields[auc]}")]  # fmt: skip
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task_bar = bar.add_task(label, total=hp.epochs, loss="–", auc="–")
        step = 0
        for epoch in range(hp.epochs):
            head.train()
            if regularizer is not None:
                regularizer.train()
            if not per_iteration:
                set_lr(lr_at(epoch, total, warmup, base_lr, min_lr, hp.schedule))
            order = torch.randperm(n_train, generator=generator).numpy()  # drawn always: the same stream with rows
            if hooks.rows is not None:
                order = np.asarray(hooks.rows(epoch), dtype=np.int64)
            running, seen = 0.0, 0
            for start in range(0, len(order), hp.batch_size):
                index = order[start:start + hp.batch_size]
                if per_iteration:
                    set_lr(lr_at(step, total, warmup, base_lr, min_lr, hp.schedule))
                optimizer.zero_grad(set_to_none=True)
                loss = batch_loss(index, epoch)
                loss.backward()
                clip_gradients()
                if hooks.step is not None:  # e.g. SAM: a second pass at perturbed weights, then the step

                    def closure(index: np.ndarray = index) -> "torch.Tensor":
                        optimizer.zero_grad(set_to_none=True)
                        again = batch_loss(index, epoch)
                        again.backward()
                        clip_gradients()
                        return again

                    hooks.step(optimizer, closure)
                else:
                    optimizer.step()
                for after in hooks.after_step:
                    after(head)
                running += loss.item() * len(index)
                seen += len(index)
                step += 1
            val_logits = batched_logits(head, val_forward, val_x, hp.batch_size, empty)
            val_probabilities = probabilities(val_logits)
            val_auc = macro_auc(y_val, val_probabilities)
            with torch.no_grad():
                val_loss = float(loss_of(val_logits, val_targets))
            history.append({"epoch": epoch + 1, "loss": running / max(seen, 1), "val_loss": val_loss,
                            "val_auc": val_auc, "lr": float(optimizer.param_groups[0]["lr"])})  # fmt: skip
            worst = math.nan
            if by_worst_group:
                worst = worst_group_auc(y_val, val_probabilities, selection_groups)
                history[-1]["val_worst_group_auc"] = worst
            stop = selection.update(epoch + 1, val_auc, val_loss, lambda: cpu_state(head), worst)
            if hooks.on_epoch_end:
                from fairfm.adapt.train import EpochInfo

                info = EpochInfo(epoch + 1, history[-1], history, head, val_probabilities, lambda: cpu_state(head))
                for callback in hooks.on_epoch_end:
                    stop = bool(callback(info)) or stop
            bar.update(task_bar, advance=1, loss=f"{history[-1]['loss']:.4f}", auc=f"{val_auc:.3f}")
            if stop:
                break
    assert selection.best_state is not None
    if hooks.final_state is not None:  # e.g. SWAD: averaged weights replace the selected ones
        replaced = hooks.final_state(selection.best_state, head)
        if replaced is not None:
            selection.best_state = {**selection.best_state, **replaced}
    head.load_state_dict(selection.best_state)
    return selection, history


def train_linear_probe(
    train_x: Any,
    train_y: Any,
    val_x: Any,
    val_y: Any,
    *,
    hparams: "LinearProbeHParams",
    seed: int = 0,
    predict: dict[str, Any] | None = None,
    embed: Callable[["torch.Tensor"], "torch.Tensor"] | None = None,
    tasks: Sequence[str] | None = None,
    device: str = "cpu",
    progress: bool = False,
    hooks: "TrainHooks | None" = None,
    groups: Mapping[str, np.ndarray] | None = None,
) -> LinearProbeResult:
    """Train a linear head and return the validation-selected weights with their predictions.

    ``train_x``/``val_x`` (and the values of ``predict``, extra sets to score, e.g. ``{"test": X}``) are
    feature arrays (N, D) — or, with ``embed``, inputs that ``embed(batch)`` turns into (B, D) features (a frozen
    encoder run inside the loop) — or :class:`~fairfm.adapt.volumes.SliceBags` of either (one bag of slices per
    sample, max-pooled over slices). ``train_y``/``val_y``: (N,) or (N, T) with 0/1 and NaN for unknown labels.
    ``predictions`` holds ``"val"`` and every ``predict`` set as (N, T) probabilities of the selected head.
    ``hooks``: a mitigation method's :class:`~fairfm.mitigate.TrainHooks`, with ``groups`` the group codes of
    ``"train"``, ``"val"`` and every ``predict`` set (read by the method's loss, rows and group-aware modules).
    """
    import torch
    from torch import nn

    from fairfm.adapt.volumes import SliceBags, max_over_slices

    hp = hparams
    y_train, y_val = _as_labels(train_y, "training"), _as_labels(val_y, "validation")
    n_tasks = y_train.shape[1]
    task_names = list(tasks) if tasks is not None else [f"task{j}" for j in range(n_tasks)]
    if len(train_x) != len(y_train) or len(val_x) != len(y_val):
        raise InputError(f"linear probe: {len(train_x)} training inputs for {len(y_train)} labels, "
                         f"{len(val_x)} validation inputs for {len(y_val)} labels")
    if len(y_train) == 0 or len(y_val) == 0:
        raise InputError("linear probe: the training and validation splits must both have samples")
    positives, negatives = check_labels(y_train, y_val, task_names, hp.select_by, "a probe")
    if hp.select_by == "val_worst_group_auc":
        check_worst_group_selection(y_val, selection_codes(groups), task_names)

    dev = torch.device(device)
    to_features = embed or (lambda batch: batch)

    def embedded(batch: Any) -> "torch.Tensor":
        batch = torch.as_tensor(np.asarray(batch)) if not isinstance(batch, torch.Tensor) else batch
        features = to_features(batch).float().to(dev)
        # A frozen encoder returns inference-mode tensors, which autograd refuses to save: copy them out.
        return features.clone() if features.is_inference() else features

    def head_logits(inputs: Any, index: np.ndarray) -> "torch.Tensor | tuple[torch.Tensor, torch.Tensor]":
        if isinstance(inputs, SliceBags):  # every slice scored; per task the top slice's logit is the volume's
            rows, segments = inputs.take(index)
            context = hooks.group_context if hooks is not None else None
            codes = context.codes if context is not None else None
            if codes is None:
                return max_over_slices(head(embedded(rows)), segments, len(index))[0]
            context.codes = codes[torch.as_tensor(segments, device=codes.device)]  # a slice has its volume's group
            try:
                return max_over_slices(head(embedded(rows)), segments, len(index))[0]
            finally:
                context.codes = codes
        features = embedded(inputs[index])
        logits = head(features)
        return (logits, features) if hooks is not None else logits

    # Dimension from one sample (cheap for features; one encoder call otherwise).
    first = train_x.take(np.arange(1))[0][:1] if isinstance(train_x, SliceBags) else train_x[np.arange(1)]
    dim = int(embedded(first).shape[1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(dim, n_tasks).to(dev)
        if hooks is not None and hooks.wrap_head is not None:  # e.g. FIN in front of the head, per-group heads
            head = hooks.wrap_head(head).to(dev)
    pos_weight = torch.as_tensor(negatives / positives if hp.class_balanced else np.ones(n_tasks),
                                 dtype=torch.float32, device=dev)  # fmt: skip
    criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight, reduction="none")
    smoothing = hp.label_smoothing

    def loss_of(logits: "torch.Tensor", targets: "torch.Tensor") -> "torch.Tensor":
        known = ~torch.isnan(targets)
        clean = torch.where(known, targets, torch.zeros_like(targets))
        if smoothing:
            clean = clean * (1 - smoothing) + 0.5 * smoothing
        losses = criterion(logits, clean) * known
        return losses.sum() / known.sum().clamp(min=1)

    def probabilities(logits: "torch.Tensor") -> np.ndarray:
        return torch.sigmoid(logits).cpu().double().numpy()

    def per_element_loss(logits: "torch.Tensor", targets: "torch.Tensor") -> "torch.Tensor":
        known = ~torch.isnan(targets)
        clean = torch.where(known, targets, torch.zeros_like(targets))
        if smoothing:
            clean = clean * (1 - smoothing) + 0.5 * smoothing
        return criterion(logits, clean) * known

    groups = dict(groups or {})

    selection, history = fit_head(head, head_logits, loss_of, probabilities, train_x=train_x,
                                  train_targets=torch.as_tensor(y_train, dtype=torch.float32), val_x=val_x,
                                  y_val=y_val, hparams=hp, seed=seed, label="linear probe", empty=(0, n_tasks),
                                  progress=progress, hooks=hooks, train_groups=groups.get("train"),
                                  val_groups=groups.get("val"), selection_groups=selection_codes(groups),
                                  per_element_loss=per_element_loss)  # fmt: skip
    best_state = selection.best_state
    context = hooks.group_context if hooks is not None else None

    def predict_set(inputs: Any, name: str) -> np.ndarray:
        codes = groups.get(name)

        def forward(x: Any, index: np.ndarray) -> "torch.Tensor":
            if context is not None:  # attribute-aware inference reads each row's group; blind inference none
                aware = hooks.attribute_aware_inference and codes is not None
                context.codes = torch.as_tensor(codes[index]).to(dev) if aware else None
            out = head_logits(x, index)
            return out[0] if isinstance(out, tuple) else out

        return probabilities(batched_logits(head, forward, inputs, hp.batch_size, (0, n_tasks)))

    predictions = {"val": predict_set(val_x, "val")}
    for name, inputs in (predict or {}).items():
        predictions[name] = predict_set(inputs, name)
    return LinearProbeResult(state_dict=best_state, best_epoch=selection.best_epoch,
                             best_score=selection.reported_score,
                             history=history, predictions=predictions, tasks=task_names)  # fmt: skip
