"""sklearn-style metric functions: ``auc_gap(y_true, y_score, *, groups)`` and friends.

Each is a thin wrapper over the same engine as :func:`fairfm.metrics.evaluate` (no bootstrap), so a function and
a report never disagree. Score-based metrics take probabilities ``y_score``; thresholded metrics take hard
predictions ``y_pred`` (0/1), like fairlearn. Groups with unknown membership (NaN, −1, "unknown") are left out of
group metrics; groups with fewer than two classes are left out of every gap (METRICS.md §5), and a gap over fewer
than two valid groups is NaN.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd

from fairfm.metrics import _engine as E
from fairfm.metrics import _inputs as I
from fairfm.metrics import _layout as L

__all__ = [
    "auc", "bce", "ece", "brier", "group_metrics",
    "auc_gap", "worst_auc", "best_auc", "es_auc", "auc_std", "bce_gap", "ece_gap",
    "acc_gap", "es_acc", "tpr_gap", "fpr_gap", "tnr_gap", "ppv_gap", "eqodds_score", "eod", "eopp_score",
    "dpd", "dp_score", "dpr", "eor",
    "dice_score", "iou_score", "segmentation_scores",
]  # fmt: skip


def _prepare(y_true, y_values, groups, *, values_are_scores: bool):
    y = I.check_labels(np.asarray(y_true).reshape(-1), "y_true")
    column = "y_score" if values_are_scores else "y_pred"
    v = I.check_scores(np.asarray(y_values).reshape(-1), column)
    if v.size != y.size:
        raise I.InputError(f"y_true has {y.size} samples but {column} has {v.size} (length mismatch)")
    if not values_are_scores and not np.isin(v, (0, 1)).all():
        row = int(np.flatnonzero(~np.isin(v, (0, 1)))[0])
        raise I.InputError(f"column 'y_pred', row {row}: {v[row]} is not a 0/1 prediction")
    frame = I.as_group_frame(groups, y.size)
    if frame.shape[1] != 1:
        raise I.InputError(f"groups: expected one sensitive attribute, got {frame.shape[1]} columns")
    codes, names = I.attribute_codes(frame)[str(frame.columns[0])]
    return y, v, codes, names


def _group_and_overall(y, v, codes, names):
    engine = E.AttributeEngine(y, v, codes, len(names), E.Rules(threshold=0.5))
    g, o = engine.point_stats()
    G = len(names)
    valid = (g["n"][:G] >= 1) & (g["n_pos"][:G] > 0) & (g["n_pos"][:G] < g["n"][:G])
    return g, o, valid


def _summary_function(metric: str, values_are_scores: bool) -> Callable[..., float]:
    arg = "y_score" if values_are_scores else "y_pred"

    def fn(y_true: Any, y_values: Any, *, groups: Any) -> float:
        y, v, codes, names = _prepare(y_true, y_values, groups, values_are_scores=values_are_scores)
        g, o, valid = _group_and_overall(y, v, codes, names)
        from fairfm.metrics.report import _summarise  # each metric over the groups valid for it (METRICS.md §5)

        return float(_summarise(g, o, None, None, valid, names)[0][metric])

    fn.__name__ = fn.__qualname__ = metric
    fn.__doc__ = (
        f"``{metric}`` over the groups of one sensitive attribute (METRICS.md §2).\n\n"
        f"Signature: ``{metric}(y_true, {arg}, *, groups)``; NaN when fewer than two groups are valid."
    )
    return fn


auc_gap = _summary_function("auc_gap", True)
worst_auc = _summary_function("worst_auc", True)
best_auc = _summary_function("best_auc", True)
es_auc = _summary_function("es_auc", True)
auc_std = _summary_function("auc_std", True)
bce_gap = _summary_function("bce_gap", True)
ece_gap = _summary_function("ece_gap", True)
acc_gap = _summary_function("acc_gap", False)
es_acc = _summary_function("es_acc", False)
tpr_gap = _summary_function("tpr_gap", False)
fpr_gap = _summary_function("fpr_gap", False)
tnr_gap = _summary_function("tnr_gap", False)
ppv_gap = _summary_function("ppv_gap", False)
eqodds_score = _summary_function("eqodds_score", False)
eod = _summary_function("eod", False)
eopp_score = _summary_function("eopp_score", False)
dpd = _summary_function("dpd", False)
dp_score = _summary_function("dp_score", False)
dpr = _summary_function("dpr", False)
eor = _summary_function("eor", False)


def _overall(y_true, y_score, metric: str) -> float:
    y = I.check_labels(np.asarray(y_true).reshape(-1), "y_true")
    p = I.check_scores(np.asarray(y_score).reshape(-1), "y_score")
    if p.size != y.size:
        raise I.InputError(f"y_true has {y.size} samples but y_score has {p.size} (length mismatch)")
    engine = E.AttributeEngine(y, p, np.zeros(y.size, dtype=np.int64), 1, E.Rules(threshold=0.5))
    return float(engine.point_stats()[1][metric])


def auc(y_true: Any, y_score: Any) -> float:
    """ROC AUC (Mann–Whitney, ties count ½); equals ``sklearn.metrics.roc_auc_score``. NaN with one class."""
    return _overall(y_true, y_score, "auc")


def bce(y_true: Any, y_score: Any) -> float:
    """Mean binary cross-entropy in float64 with p clipped to [1e-7, 1 − 1e-7]."""
    return _overall(y_true, y_score, "bce")


def ece(y_true: Any, y_score: Any) -> float:
    """Expected calibration error, 10 equal-width bins on [0, 1] (left-closed; the last bin includes 1)."""
    return _overall(y_true, y_score, "ece")


def brier(y_true: Any, y_score: Any) -> float:
    """Mean (p − y)²."""
    return _overall(y_true, y_score, "brier")


def group_metrics(y_true: Any, y_score: Any, *, groups: Any, threshold: float = 0.5) -> pd.DataFrame:
    """Every group metric (METRICS.md §1) per group at ``ŷ = 1[p ≥ threshold]``, one row per group."""
    y, p, codes, names = _prepare(y_true, y_score, groups, values_are_scores=True)
    engine = E.AttributeEngine(y, p, codes, len(names), E.Rules(threshold=float(threshold)))
    g = engine.point_stats()[0]
    G = len(names)
    frame = pd.DataFrame({k: v[:G] for k, v in g.items()}, index=pd.Index(names, name="group"))
    return frame.astype({"n": int, "n_pos": int})


# -- segmentation ----------------------------------------------------------------------------------------------
def _masks(pred: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
    pred, true = np.asarray(pred).astype(bool), np.asarray(true).astype(bool)
    if pred.shape != true.shape:
        raise I.InputError(f"predicted mask shape {pred.shape} differs from ground-truth shape {true.shape}")
    return pred, true


def dice_score(pred_mask: Any, true_mask: Any) -> float:
    """2|P∩T| / (|P| + |T|); 1.0 when both masks are empty (METRICS.md §3)."""
    pred, true = _masks(pred_mask, true_mask)
    denom = int(pred.sum()) + int(true.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.logical_and(pred, true).sum()) / denom


def iou_score(pred_mask: Any, true_mask: Any) -> float:
    """|P∩T| / |P∪T|; 1.0 when both masks are empty."""
    pred, true = _masks(pred_mask, true_mask)
    union = int(np.logical_or(pred, true).sum())
    return 1.0 if union == 0 else int(np.logical_and(pred, true).sum()) / union


def segmentation_scores(pred_masks: Any, true_masks: Any) -> pd.DataFrame:
    """Per-sample Dice and IoU for stacks of masks (N, ...) plus a ``both_empty`` flag per sample."""
    pred, true = _masks(pred_masks, true_masks)
    if pred.ndim < 2:
        raise I.InputError(f"expected a stack of masks (N, H, W[, D]), got shape {pred.shape}")
    flat_p, flat_t = pred.reshape(pred.shape[0], -1), true.reshape(true.shape[0], -1)
    inter = np.logical_and(flat_p, flat_t).sum(axis=1)
    sizes = flat_p.sum(axis=1) + flat_t.sum(axis=1)
    union = np.logical_or(flat_p, flat_t).sum(axis=1)
    both_empty = sizes == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(both_empty, 1.0, 2.0 * inter / np.where(both_empty, 1, sizes))
        iou = np.where(both_empty, 1.0, inter / np.where(both_empty, 1, union))
    return pd.DataFrame({"dice": dice, "iou": iou, "both_empty": both_empty})


def _segmentation_summary(metric: str, kind: str) -> Callable[..., float]:
    def fn(scores: Any, *, groups: Any) -> float:
        values = I.check_scores(np.asarray(scores).reshape(-1), kind)
        frame = I.as_group_frame(groups, values.size)
        codes, names = I.attribute_codes(frame)[str(frame.columns[0])]
        engine = E.SegmentationEngine({kind: values}, codes, len(names))
        g, o = engine.group_stats(), engine.overall_stats()
        valid = g["n"][: len(names)] >= 1
        return float(E.summarise_segmentation(g, o, valid)[metric])

    fn.__name__ = fn.__qualname__ = metric
    fn.__doc__ = f"``{metric}`` from per-sample {kind} scores over the groups of one attribute (METRICS.md §3)."
    return fn


for _kind in E.SEG_GROUP_METRICS:
    for _name in ("mean_{k}", "worst_{k}", "best_{k}", "{k}_gap", "{k}_std", "es_{k}", "es_{k}_std", "{k}_skewness"):
        _metric = _name.format(k=_kind)
        globals()[_metric] = _segmentation_summary(_metric, _kind)
        __all__.append(_metric)

del L
