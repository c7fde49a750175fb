"""Intervals and tests for extremum statistics of group metrics: max − min gaps and worst/best-group metrics.

A gap max_g θ_g − min_g θ_g is ≥ 0 in every bootstrap resample, so its percentile interval cannot contain 0 and a
"no disparity" test built on it rejects too often (METRICS.md §6). Here the gap is handled through the pairwise
differences d_gh = θ_g − θ_h, which are smooth in the data and have well-behaved bootstrap distributions:

* **Simultaneous intervals (max-|t|).** With bootstrap standard errors se_gh and the critical value
  c = (1 − α) quantile over resamples of max_{g<h} |d*_gh − d̂_gh| / se_gh, the intervals d̂_gh ± c·se_gh hold
  jointly with probability ≈ 1 − α. When they all hold, the gap max_gh |d_gh| lies in
  [max_gh dist(0, I_gh), max_gh max |I_gh|] — so this interval covers the gap with probability ≥ 1 − α whatever
  its size (≈ 1 − α at a gap of 0, conservative when one pair dominates), and its lower end is 0 exactly when every
  pairwise interval contains 0.
* **Test of no disparity.** Under "all θ_g equal" the observed max-|t| = max_gh |d̂_gh| / se_gh is one draw of the
  centred statistic, so the p-value is the share of resamples whose centred max-|t| reaches it (with the usual +1
  of a Monte-Carlo p-value). p ≤ α agrees with "the gap's lower end is > 0" up to the discreteness of B.
* **Worst/best group.** Simultaneous intervals [L_g, U_g] for every θ_g (max-|t| over groups) give
  [min_g L_g, min_g U_g] for min_g θ_g and [max_g L_g, max_g U_g] for max_g θ_g.
* **SD over groups and equity-scaled metrics** are functions of the same contrasts (pairwise differences; the
  overall metric and each group's deviation from it): their intervals are the function's extreme values over the
  joint intervals — valid, and conservative.

Hand-written because no maintained library offers max-|t| simultaneous bootstrap intervals for a given matrix of
paired resamples (arch's StepM and statsmodels' multipletests test hypotheses; neither returns these bounds).
Everything here works on plain numpy arrays: ``point`` is a (G,) vector of group metrics of the groups that enter
the metric, ``boot`` the (B, G) matrix of the same groups' metrics in B paired resamples. Resamples with a
non-finite value (a group that lost a class) are left out; a contrast whose bootstrap SE is 0 has a degenerate
interval (its t is 0 when it does not move, infinite when it is non-zero at the point).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

CI_METHODS = ("simultaneous", "percentile")
DEFAULT_CI_METHOD = "simultaneous"

#: What each method means for gap and worst/best-group metrics, as written in reports.
DESCRIPTIONS = {
    "simultaneous": "gaps, worst/best-group, SD and ES metrics: simultaneous max-|t| bootstrap intervals of the "
    "group contrasts; <gap>_p: max-|t| bootstrap test of no disparity; group and overall metrics: percentile",
    "percentile": "every metric: percentile bootstrap intervals (for a gap they cannot contain 0); <gap>_p: share "
    "of resamples in which the best-minus-worst difference flips sign",
}


@dataclass(frozen=True)
class MaxT:
    """Simultaneous intervals for M estimates from their paired resamples."""

    estimate: np.ndarray  # (M,)
    low: np.ndarray  # (M,)
    high: np.ndarray  # (M,)
    se: np.ndarray  # (M,) bootstrap standard errors
    critical: float  # c: the (1 − α) quantile of the centred max-|t|
    p_value: float  # test of "every estimate is 0": share of resamples with centred max-|t| ≥ observed max-|t|
    n_resamples: int  # finite resamples used


def _nan_maxt(m: int) -> MaxT:
    nan = np.full(m, np.nan)
    return MaxT(nan, nan, nan, nan, math.nan, math.nan, 0)


def _ratio(num: np.ndarray, se: np.ndarray) -> np.ndarray:
    """|num| / se, with 0/0 = 0 and x/0 = inf (a contrast that never moves in the bootstrap)."""
    num = np.abs(num)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = num / se
    return np.where(se > 0, t, np.where(num > 0, np.inf, 0.0))


def max_t(estimate: np.ndarray, resampled: np.ndarray, level: float = 0.95) -> MaxT:
    """Simultaneous ``level`` intervals for ``estimate`` (M,) from its paired resamples ``resampled`` (B, M).

    Rows of ``resampled`` with any non-finite entry are dropped; fewer than two finite rows give NaN.
    """
    estimate = np.asarray(estimate, dtype=np.float64)
    resampled = np.asarray(resampled, dtype=np.float64).reshape(-1, estimate.size)
    if estimate.size == 0 or not np.all(np.isfinite(estimate)):
        return _nan_maxt(estimate.size)
    resampled = resampled[np.all(np.isfinite(resampled), axis=1)]
    n = resampled.shape[0]
    if n < 2:
        return _nan_maxt(estimate.size)
    se = resampled.std(axis=0, ddof=1)
    centred = _ratio(resampled - estimate, se).max(axis=1)
    # The empirical quantile (the ⌈level·n⌉-th order statistic), no interpolation: P*(max-|t| ≤ c) ≥ level.
    critical = float(np.quantile(centred, level, method="inverted_cdf"))
    with np.errstate(invalid="ignore"):  # inf · 0 for a contrast that never moves: its interval is the point
        half = np.where(se > 0, critical * se, 0.0)
    observed = float(_ratio(estimate, se).max())
    p_value = float((1 + np.count_nonzero(centred >= observed)) / (n + 1))
    return MaxT(estimate, estimate - half, estimate + half, se, critical, p_value, n)


def pairs(n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays (i, j), i < j, of every pair of groups."""
    i, j = np.triu_indices(n_groups, k=1)
    return i, j


@dataclass(frozen=True)
class GapInference:
    """Interval of a max − min gap and the test of no disparity."""

    low: float
    high: float
    p_value: float


def _gap_bounds(low: np.ndarray, high: np.ndarray) -> tuple[float, float]:
    """[max dist(0, I), max max|I|] over pairwise intervals I = [low, high]."""
    if low.size == 0 or not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        return math.nan, math.nan
    near, far = _distance_and_reach(low, high)
    return float(near.max()), float(far.max())


def _pairwise(point: np.ndarray, boot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    point = np.asarray(point, dtype=np.float64).reshape(-1)
    boot = np.asarray(boot, dtype=np.float64).reshape(-1, point.size)
    i, j = pairs(point.size)
    with np.errstate(invalid="ignore"):  # inf − inf in a resample (a log rate of 0): NaN, dropped by max_t
        return point[i] - point[j], boot[:, i] - boot[:, j]


def gap_inference(point: np.ndarray, boot: np.ndarray, level: float = 0.95) -> GapInference:
    """Simultaneous interval of max_g θ_g − min_g θ_g and the max-|t| p-value of "all θ_g are equal".

    ``point``: (G,) group metrics; ``boot``: (B, G) the same groups in paired resamples. NaN with < 2 groups.
    """
    if np.asarray(point).size < 2:
        return GapInference(math.nan, math.nan, math.nan)
    d, d_boot = _pairwise(point, boot)
    result = max_t(d, d_boot, level)
    low, high = _gap_bounds(result.low, result.high)
    return GapInference(low, high, result.p_value)


def joint_gap_intervals(points: Sequence[np.ndarray], boots: Sequence[np.ndarray],
                        level: float = 0.95) -> list[tuple[float, float]]:  # fmt: skip
    """Intervals of several gaps (one per metric) that hold *jointly* with probability ≥ ``level``.

    The max-|t| runs over the pairwise differences of every metric at once, so sums and maxima of the gaps
    (``eqodds_score``, ``eod``) get intervals from the corner values of these bounds.
    """
    if not points or any(np.asarray(p).size < 2 for p in points):
        return [(math.nan, math.nan)] * len(points)
    parts = [_pairwise(p, b) for p, b in zip(points, boots)]
    sizes = [d.size for d, _ in parts]
    result = max_t(np.concatenate([d for d, _ in parts]), np.concatenate([db for _, db in parts], axis=1), level)
    bounds, start = [], 0
    for size in sizes:
        bounds.append(_gap_bounds(result.low[start:start + size], result.high[start:start + size]))
        start += size
    return bounds


def extremum_interval(point: np.ndarray, boot: np.ndarray, level: float = 0.95,
                      which: str = "min") -> tuple[float, float]:  # fmt: skip
    """Interval of min_g θ_g (``which="min"``, the worst group of a higher-is-better metric) or max_g θ_g."""
    if np.asarray(point).size == 0:
        return math.nan, math.nan
    result = max_t(np.asarray(point, dtype=np.float64), boot, level)
    if not (np.all(np.isfinite(result.low)) and np.all(np.isfinite(result.high))):
        return math.nan, math.nan
    reduce = np.min if which == "min" else np.max
    return float(reduce(result.low)), float(reduce(result.high))


def _distance_and_reach(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per interval: the smallest and the largest |x| over x in [low, high]."""
    return np.where(low > 0, low, np.where(high < 0, -high, 0.0)), np.maximum(np.abs(low), np.abs(high))


def std_interval(point: np.ndarray, boot: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Interval of the SD over groups (ddof 0) from the simultaneous pairwise intervals I_gh: SD = √(Σ_{g<h} d_gh²) / G,
    so it lies in [√(Σ dist(0, I_gh)²) / G, √(Σ max|I_gh|²) / G] when they all hold."""
    n_groups = np.asarray(point).size
    if n_groups < 2:
        return math.nan, math.nan
    result = max_t(*_pairwise(point, boot), level)
    if not (np.all(np.isfinite(result.low)) and np.all(np.isfinite(result.high))):
        return math.nan, math.nan
    near, far = _distance_and_reach(result.low, result.high)
    return float(np.sqrt(np.sum(near**2)) / n_groups), float(np.sqrt(np.sum(far**2)) / n_groups)


def es_interval(overall: float, overall_boot: np.ndarray, point: np.ndarray, boot: np.ndarray,
                level: float = 0.95) -> tuple[float, float]:  # fmt: skip
    """Interval of an equity-scaled metric A / (1 + Σ_g |θ_g − A|) (A: the overall metric, ≥ 0).

    One max-|t| over A and the deviations θ_g − A gives joint intervals; the bounds are the corner values."""
    point = np.asarray(point, dtype=np.float64).reshape(-1)
    if point.size < 2:
        return math.nan, math.nan
    boot = np.asarray(boot, dtype=np.float64).reshape(-1, point.size)
    overall_boot = np.asarray(overall_boot, dtype=np.float64).reshape(-1, 1)
    estimate = np.concatenate([[overall], point - overall])
    resampled = np.concatenate([overall_boot, boot - overall_boot], axis=1)
    result = max_t(estimate, resampled, level)
    if not (np.all(np.isfinite(result.low)) and np.all(np.isfinite(result.high))):
        return math.nan, math.nan
    near, far = _distance_and_reach(result.low[1:], result.high[1:])
    a_low, a_high = float(result.low[0]), float(result.high[0])
    low = a_low / (1 + far.sum()) if a_low >= 0 else a_low / (1 + near.sum())
    return float(low), float(a_high / (1 + near.sum()))


def check_ci_method(name: str) -> str:
    from fairfm.errors import InputError

    if name not in CI_METHODS:
        raise InputError(f"unknown interval method {name!r}; choose one of: {', '.join(CI_METHODS)}")
    return name
