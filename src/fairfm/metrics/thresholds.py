"""Threshold policies (METRICS.md §4): which threshold turns scores into decisions, and on which data.

Grammar: a fixed number (``0.5``); ``best_f1@val`` / ``best_f1@self``; ``youden@val`` / ``youden@self``;
``fpr@X`` / ``tpr@X``, chosen on validation (``fpr@0.2`` is ``fpr@0.2@val``), or on the evaluated set itself only
when asked (``fpr@0.2@self``, as Glocker et al.). Policies that look at the evaluated set's labels leak them into
the threshold: ``ThresholdPolicy.leaks_labels`` says so, and every report carries the flag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from fairfm.errors import InputError

POLICY_HELP = ("0.5 (any number in (0,1)), best_f1@val, best_f1@self, youden@val, youden@self, "
               "fpr@X[@val], fpr@X@self, tpr@X[@val], tpr@X@self")
_RATE = re.compile(r"^(fpr|tpr)@([0-9]*\.?[0-9]+)(@(val|self))?$")


@dataclass(frozen=True)
class ThresholdPolicy:
    kind: str  # "fixed" | "best_f1" | "youden" | "fpr" | "tpr"
    on: str | None  # "val" | "self" | None (fixed)
    target: float | None = None  # fixed value, or the target rate for fpr/tpr

    @property
    def name(self) -> str:
        if self.kind == "fixed":
            return f"{self.target:g}"
        if self.kind in ("fpr", "tpr"):
            return f"{self.kind}@{self.target:g}@{self.on}"
        return f"{self.kind}@{self.on}"

    @property
    def leaks_labels(self) -> bool:
        """True when the threshold is chosen with the labels of the very set being evaluated."""
        return self.on == "self"


def parse_policy(text: str) -> ThresholdPolicy:
    text = str(text).strip()
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is not None:
        if not 0.0 < value < 1.0:
            raise InputError(f"threshold {text!r}: a fixed threshold must lie strictly between 0 and 1")
        return ThresholdPolicy("fixed", None, value)
    match = re.fullmatch(r"(best_f1|youden)@(val|self)", text)
    if match:
        return ThresholdPolicy(match.group(1), match.group(2))
    match = _RATE.fullmatch(text)
    if match:
        rate = float(match.group(2))
        if not 0.0 <= rate <= 1.0:
            raise InputError(f"threshold policy {text!r}: the target rate must lie in [0, 1]")
        return ThresholdPolicy(match.group(1), match.group(4) or "val", rate)  # validation unless asked
    raise InputError(f"unknown threshold policy {text!r}; choose one of: {POLICY_HELP}")


def _curve(y: np.ndarray, p: np.ndarray):
    """Distinct thresholds (descending) with cumulative TP and FP counts for ``ŷ = 1[p ≥ t]``."""
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    last_of_value = np.flatnonzero(np.r_[ps[1:] != ps[:-1], True])
    tps = np.cumsum(ys)[last_of_value].astype(np.float64)
    fps = (last_of_value + 1 - tps).astype(np.float64)
    return ps[last_of_value], tps, fps


def best_f1_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """Threshold maximising F1 = 2TP / (2TP + FP + FN) for ``ŷ = 1[p ≥ t]``; the highest such t on ties."""
    thresholds, tps, fps = _curve(y, p)
    f1 = 2 * tps / (2 * tps + fps + (tps[-1] - tps))
    return float(thresholds[int(np.argmax(f1))])


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """Threshold maximising TPR − FPR; the highest such t on ties."""
    thresholds, tps, fps = _curve(y, p)
    j = tps / tps[-1] - fps / fps[-1]
    return float(thresholds[int(np.argmax(j))])


def roc_points(y: np.ndarray, p: np.ndarray, drop_intermediate: bool = False):
    """(fpr, tpr, thresholds) like ``sklearn.metrics.roc_curve`` (which Glocker et al. used)."""
    thresholds, tps, fps = _curve(y, p)
    if drop_intermediate and tps.size > 2:
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        thresholds, tps, fps = thresholds[keep], tps[keep], fps[keep]
    tps = np.r_[0.0, tps]
    fps = np.r_[0.0, fps]
    thresholds = np.r_[np.inf, thresholds]
    return fps / fps[-1], tps / tps[-1], thresholds


def rate_threshold(y: np.ndarray, p: np.ndarray, rate: str, target: float, drop_intermediate: bool = False) -> float:
    """The ROC point whose FPR (or TPR) is closest to ``target``; the first (highest threshold) on ties."""
    fpr, tpr, thresholds = roc_points(y, p, drop_intermediate)
    values = fpr if rate == "fpr" else tpr
    idx = int(np.argmin(np.abs(values[1:] - target))) + 1  # the (0, 0) point has no finite threshold
    return float(thresholds[idx])


def fairmedfm_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """FairMedFM's threshold: the precision–recall-curve point of maximal F1 = 2PR/(P + R + 1e-8).

    Points follow ``sklearn.metrics.precision_recall_curve`` (ascending thresholds, one per distinct score); the
    final (recall 0) point has no threshold and is excluded; the first maximum (lowest threshold) wins.
    """
    thresholds, tps, fps = _curve(y, p)
    precision = np.divide(tps, tps + fps, out=np.zeros_like(tps), where=(tps + fps) > 0)
    recall = tps / tps[-1] if tps[-1] > 0 else np.ones_like(tps)
    precision, recall, thresholds = precision[::-1], recall[::-1], thresholds[::-1]
    f1 = 2 * (precision * recall) / (precision + recall + 1e-8)
    return float(thresholds[int(np.argmax(f1))])


def choose_threshold(policy: ThresholdPolicy, y_self: np.ndarray, p_self: np.ndarray,
                     y_val: np.ndarray | None = None, p_val: np.ndarray | None = None) -> float:  # fmt: skip
    if policy.kind == "fixed":
        return float(policy.target)
    if policy.on == "val":
        if y_val is None or p_val is None:
            on_self = ThresholdPolicy(policy.kind, "self", policy.target).name
            raise InputError(
                f"threshold policy {policy.name!r} needs validation predictions: pass --val-file or --split-column "
                f"(val_true=/val_score=), or choose {on_self!r}, which leaks the evaluated set's labels"
            )
        y, p = y_val, p_val
    else:
        y, p = y_self, p_self
    where = "validation" if policy.on == "val" else "evaluated"
    if y.size == 0:
        raise InputError(f"threshold policy {policy.name!r}: the {where} set has no sample with a known label")
    if y.min() == y.max():
        raise InputError(f"threshold policy {policy.name!r}: the {where} set has only one class")
    if policy.kind == "best_f1":
        return best_f1_threshold(y, p)
    if policy.kind == "youden":
        return youden_threshold(y, p)
    return rate_threshold(y, p, policy.kind, float(policy.target))
