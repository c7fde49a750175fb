"""What every training loop shares: model selection on validation with early stopping, the learning-rate schedule
and the validation macro AUC — used alike by the linear probe and CLIP adaptation on cached features
(:func:`fairfm.adapt.linear_probe.fit_head`) and by the image loop (:func:`fairfm.adapt.train.fit`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from fairfm.errors import InputError

if TYPE_CHECKING:
    import torch


def lr_at(step: float, total: float, warmup: float, lr: float, min_lr: float, schedule: str) -> float:
    """Learning rate after ``step`` of ``total`` units (epochs or iterations): linear warm-up, then the schedule."""
    if warmup > 0 and step < warmup:
        return lr * step / warmup
    if schedule == "constant":
        return lr
    progress = (step - warmup) / max(total - warmup, 1e-12)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def macro_auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Mean ROC AUC over the tasks whose known labels contain both classes (NaN labels are skipped); nan if none."""
    from sklearn.metrics import roc_auc_score

    values = []
    for j in range(y_true.shape[1]):
        known = ~np.isnan(y_true[:, j])
        y = y_true[known, j]
        if y.size and 0 < y.sum() < y.size:
            values.append(roc_auc_score(y, y_score[known, j]))
    return float(np.mean(values)) if values else math.nan


def worst_group_auc(y_true: np.ndarray, y_score: np.ndarray, groups: np.ndarray) -> float:
    """Mean over tasks of min_g AUC_g (METRICS.md ``worst_auc``; ``macro_`` over tasks), over the groups whose known
    labels of that task contain both classes (a negative code is an unknown group: in no group); tasks without any
    such group are skipped; nan if none."""
    from sklearn.metrics import roc_auc_score

    groups = np.asarray(groups)
    values = []
    for j in range(y_true.shape[1]):
        known = ~np.isnan(y_true[:, j]) & (groups >= 0)
        aucs = []
        for g in np.unique(groups[known]):
            rows = known & (groups == g)
            y = y_true[rows, j]
            if 0 < y.sum() < y.size:
                aucs.append(roc_auc_score(y, y_score[rows, j]))
        if aucs:
            values.append(min(aucs))
    return float(np.mean(values)) if values else math.nan


def known_group_codes(codes: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """``codes`` (indices into ``names``) with the codes of unknown groups ('unknown', NaN, −1, …) set to −1."""
    import pandas as pd

    from fairfm.groups import is_unknown

    unknown = np.flatnonzero(is_unknown(pd.Series(list(names), dtype=object)))
    return np.where(np.isin(codes, unknown), -1, np.asarray(codes))


def check_worst_group_selection(y_val: np.ndarray, val_groups: np.ndarray | None, tasks: Sequence[str]) -> None:
    """``select_by: val_worst_group_auc`` needs the validation rows' groups, and for every task a group with both
    classes among its validation labels."""
    if val_groups is None:
        raise InputError("hparams.select_by: val_worst_group_auc needs the validation rows' groups (a sensitive "
                         "attribute of the run)")  # fmt: skip
    groups = np.asarray(val_groups)
    for j, name in enumerate(tasks):
        known = ~np.isnan(y_val[:, j]) & (groups >= 0)
        if not any(0 < y_val[known & (groups == g), j].sum() < (known & (groups == g)).sum()
                   for g in np.unique(groups[known])):  # fmt: skip
            raise InputError(f"task {name!r}: no group has both classes among its validation labels, so the "
                             "worst-group AUC cannot select the epoch (set hparams.select_by to val_auc, val_loss or "
                             "last)")  # fmt: skip


SELECT_BY = ("val_auc", "val_loss", "last", "val_worst_group_auc")


class ModelSelection:
    """Keeps the state of the best epoch by ``select_by`` (val AUC, val loss, the last epoch, or the validation
    worst-group AUC) and asks to stop after ``patience`` epochs without gain. Shared by every trained usage: this
    probe, CLIP adaptation and :func:`fairfm.adapt.train.fit` (where it is an ``on_epoch_end`` callback)."""

    def __init__(self, select_by: str = "val_auc", patience: int | None = None) -> None:
        if select_by not in SELECT_BY:
            raise InputError(f"hparams.select_by: {select_by!r} is not one of {', '.join(SELECT_BY)}")
        self.select_by, self.patience = select_by, patience
        self.best_state: dict[str, "torch.Tensor"] | None = None
        self.best_epoch, self.best_score, self.since_best = 0, -math.inf, 0

    def update(self, epoch: int, val_auc: float, val_loss: float, state: Callable[[], dict[str, "torch.Tensor"]],
               val_worst_group_auc: float = math.nan) -> bool:  # fmt: skip
        """Record epoch ``epoch`` (1-based); ``state()`` is called only when it is the best so far. True: stop."""
        score = {"val_auc": val_auc, "val_loss": -val_loss, "last": float(epoch),
                 "val_worst_group_auc": val_worst_group_auc}[self.select_by]  # fmt: skip
        if self.best_state is None or score > self.best_score:
            self.best_state, self.best_epoch, self.best_score = state(), epoch, score
            self.since_best = 0
        else:
            self.since_best += 1
        return self.select_by != "last" and self.patience is not None and self.since_best >= self.patience

    def __call__(self, info: Any) -> bool:
        """As an ``on_epoch_end`` callback of :func:`fairfm.adapt.train.fit`."""
        return self.update(info.epoch, info.record["val_auc"], info.record["val_loss"], info.state,
                           info.record.get("val_worst_group_auc", math.nan))  # fmt: skip

    @property
    def reported_score(self) -> float:
        """The selection criterion at the selected epoch; NaN when the last epoch is taken."""
        return self.best_score if self.select_by != "last" else math.nan


def cpu_state(module: "torch.nn.Module") -> dict[str, "torch.Tensor"]:
    """A detached CPU copy of a module's state (what model selection keeps)."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def check_labels(y_train: np.ndarray, y_val: np.ndarray, tasks: Sequence[str], select_by: str,
                 trained: str) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(positives, negatives) per task of the training labels; an InputError when a task cannot be trained (one
    class in training) or, with ``select_by`` val_auc, cannot be selected (one class in validation)."""
    positives = np.nansum(y_train, axis=0)
    negatives = np.sum(~np.isnan(y_train), axis=0) - positives
    for j, name in enumerate(tasks):
        if positives[j] == 0 or negatives[j] == 0:
            which = "positive" if positives[j] == 0 else "negative"
            raise InputError(f"task {name!r}: the training split has no {which} sample; {trained} cannot be trained")
    if select_by == "val_auc":
        for j, name in enumerate(tasks):
            known = y_val[~np.isnan(y_val[:, j]), j]
            if not (known.size and 0 < known.sum() < known.size):
                raise InputError(f"task {name!r}: the validation split has only one class, so validation AUC cannot "
                                 "select the epoch (set hparams.select_by to val_loss or last)")
    return positives, negatives


def selection_codes(groups: "Mapping[str, np.ndarray] | None") -> np.ndarray | None:
    """The validation group codes model selection reads: ``val_selection`` (unknown groups as −1) when the run gives
    it, else ``val``."""
    groups = groups or {}
    return groups.get("val_selection", groups.get("val"))
