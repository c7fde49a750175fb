"""Paired bootstrap comparison of two models scored on the same samples: every metric's difference B − A.

Each resample draws one set of samples (stratified by the attribute's groups, as :func:`fairfm.metrics.evaluate`
does by default) as a count vector in the original sample order; both runs' metric engines read that same vector,
mapped into their own layouts, so resample ``b`` of run A and of run B are the very same samples. The metrics
themselves come from the engine (:class:`fairfm.metrics._engine.AttributeEngine`, ``summarise``), so the point
values equal those of ``evaluate`` / ``evaluate_segmentation`` for every metric listed.

p-value (two-sided): with ``d_1..d_m`` the finite resampled differences, ``m⁻ = #{d_b ≤ 0}`` and
``m⁺ = #{d_b ≥ 0}``, ``p = min(1, 2·(1 + min(m⁻, m⁺)) / (m + 1))`` — twice the smaller tail share of 0 in the
bootstrap distribution of the difference, with the usual +1 so that it is never 0 (the smallest value is
2/(m + 1)). It is the smallest α at which the (1 − α) percentile interval of the difference excludes 0. A
difference that is 0 in every resample (a run compared with itself) has p = 1.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from fairfm.errors import InputError
from fairfm.metrics import _engine as E
from fairfm.metrics import _inputs as I
from fairfm.metrics import _resample as R
from fairfm.metrics import report as MR
from fairfm.metrics import thresholds as T
from fairfm.metrics.significance import benjamini_hochberg

COLUMNS = ("task", "attribute", "group", "metric", "value_a", "value_b", "difference", "ci_low", "ci_high",
           "p_value", "q_value", "n")  # fmt: skip
OVERALL = "__all__"
SUMMARY = "__summary__"
SEGMENTATION_OVERALL = tuple(f"mean_{k}" for k in E.SEG_GROUP_METRICS)


def known_metrics(kind: str) -> tuple[str, ...]:
    """Every metric name a comparison of this kind ("classification" | "segmentation") reports."""
    if kind == "segmentation":
        return (*SEGMENTATION_OVERALL, *E.SEG_GROUP_METRICS, *E.SEG_SUMMARY_METRICS)
    return tuple(dict.fromkeys((*MR.OVERALL_CLASSIFICATION, *E.GROUP_METRICS, *E.SUMMARY_METRICS)))


def run_threshold(policy: str | float | None, y: np.ndarray, p: np.ndarray, y_val: np.ndarray | None = None,
                  p_val: np.ndarray | None = None) -> tuple[float, bool, str]:  # fmt: skip
    """(threshold, whether it saw the evaluated set's labels, policy name), chosen exactly as :func:`evaluate`
    chooses it (``policy=None``: best F1 on validation when given, else 0.5)."""
    has_val = y_val is not None and p_val is not None
    name = MR._resolve_policy(policy, has_val, None)
    if name != "fairmedfm_f1":
        name = T.parse_policy(name).name
    value, leaks = MR._threshold_value(name, y, p, y_val, p_val)
    return float(value), bool(leaks), name


def bootstrap_p_value(differences: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "no difference" (module docstring); NaN without finite resamples."""
    d = np.asarray(differences, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return math.nan
    tail = min(int(np.sum(d <= 0)), int(np.sum(d >= 0)))
    return min(1.0, 2.0 * (1 + tail) / (d.size + 1))


def paired_bootstrap(
    y: Any,
    score_a: Any,
    score_b: Any,
    groups: Any,
    *,
    threshold_a: float,
    threshold_b: float,
    bootstrap: int = 1000,
    seed: int | np.random.SeedSequence = 0,
    ci: float = 0.95,
    task: str = "task",
    metrics: Sequence[str] | None = None,
    min_group_size: int = 1,
    return_resamples: bool = False,
    on_resample: Callable[[], None] | None = None,
):
    """Paired differences B − A of every classification metric (overall, per group, summaries) of two score
    vectors on the same samples (``y``), each thresholded at its own threshold.

    ``groups``: a DataFrame / mapping with one column per attribute (−1/NaN/"unknown": unknown group).
    Resamples are drawn per attribute, stratified by its groups; the overall rows use the first attribute's resamples (as
    :func:`evaluate`). Returns the tidy table (:data:`COLUMNS`); with ``return_resamples=True`` also
    ``{attribute: (B, n) counts}`` — how often each sample (in input order) was drawn in each resample.
    ``on_resample`` is called after each resample (a progress bar).
    """
    y = I.check_labels(np.asarray(y).reshape(-1), "y_true").astype(np.uint8)
    n = y.size
    scores = []
    for name, values in (("score_a", score_a), ("score_b", score_b)):
        values = I.check_scores(np.asarray(values).reshape(-1), name)
        if values.size != n:
            raise InputError(f"{name}: {values.size} scores but {n} labels (length mismatch)")
        scores.append(values)
    I.check_both_classes(y, "y_true")
    _check_design(bootstrap, ci)
    attributes = _attributes(groups, n)
    wanted = _wanted(metrics, "classification")
    seeds = _seed_sequence(seed).spawn(len(attributes))
    rows: list[dict[str, Any]] = []
    resamples: dict[str, np.ndarray] = {}
    for k, (name, (codes, group_names)) in enumerate(attributes.items()):
        G = len(group_names)
        engines = [E.AttributeEngine(y, p, codes, G, E.Rules(threshold=float(t)))
                   for p, t in zip(scores, (threshold_a, threshold_b))]  # fmt: skip
        points = [engine.point_stats() for engine in engines]
        for engine in engines:
            engine.cells  # noqa: B018  (building the cells reorders the layout: read it before mapping counts)
        layouts = [(engine.layout.order, np.diff(engine.layout.starts)) for engine in engines]
        boot: list[tuple[list[dict], list[dict]]] = [([], []), ([], [])]
        kept = np.empty((bootstrap, n), dtype=np.uint8) if return_resamples else None
        for b, counts in enumerate(_draws(codes, G, bootstrap, seeds[k])):
            for j, engine in enumerate(engines):
                order, sizes = layouts[j]
                g, o = engine.resample_stats(counts[order], sizes)
                boot[j][0].append(g)
                boot[j][1].append(o)
            if kept is not None:
                kept[b] = counts
            if on_resample is not None:
                on_resample()
        if kept is not None:
            resamples[name] = kept
        stacked = [(_stack(gs), _stack(os_)) for gs, os_ in boot] if bootstrap else [(None, None)] * 2
        (g_a, o_a), (g_b, o_b) = points
        (gb_a, ob_a), (gb_b, ob_b) = stacked
        valid, _ = MR._validity(g_a["n"][:G], g_a["n_pos"][:G], group_names, min_group_size, need_both=True)
        point_a, sb_a, _ = MR._summarise(g_a, o_a, gb_a, ob_a, valid, group_names)
        point_b, sb_b, _ = MR._summarise(g_b, o_b, gb_b, ob_b, valid, group_names)
        if k == 0:
            for metric in MR.OVERALL_CLASSIFICATION:
                rows.append(_row(task, OVERALL, OVERALL, metric, o_a[metric], o_b[metric], _get(ob_a, metric),
                                 _get(ob_b, metric), n, ci))  # fmt: skip
        group_metrics = [m for m in g_a if m not in ("n", "n_pos")]
        for i, group in enumerate(group_names):
            if g_a["n"][i] == 0:
                continue
            for metric in group_metrics:
                rows.append(_row(task, name, group, metric, g_a[metric][i], g_b[metric][i],
                                 _get(gb_a, metric, i), _get(gb_b, metric, i), int(g_a["n"][i]), ci))  # fmt: skip
        n_known = int(np.sum(g_a["n"][:G]))
        for metric in E.SUMMARY_METRICS:
            rows.append(_row(task, name, SUMMARY, metric, point_a[metric], point_b[metric], _get(sb_a, metric),
                             _get(sb_b, metric), n_known, ci))  # fmt: skip
    return _finish(rows, wanted, resamples if return_resamples else None)


def paired_bootstrap_segmentation(
    values_a: Mapping[str, Any],
    values_b: Mapping[str, Any],
    groups: Any,
    *,
    bootstrap: int = 1000,
    seed: int | np.random.SeedSequence = 0,
    ci: float = 0.95,
    task: str = "segmentation",
    metrics: Sequence[str] | None = None,
    min_group_size: int = 1,
    return_resamples: bool = False,
    on_resample: Callable[[], None] | None = None,
):
    """:func:`paired_bootstrap` for segmentation: per-sample scores of both runs on the same samples, as
    ``{"dice": …, "iou": …}`` (the same keys in both); rows as :func:`evaluate_segmentation` reports them
    (``mean_dice`` overall, ``dice`` per group, the summaries)."""
    if set(values_a) != set(values_b) or not values_a:
        raise InputError(f"segmentation scores: run A has {sorted(values_a)} and run B {sorted(values_b)}; "
                         "compare the same per-sample scores (dice and/or iou)")  # fmt: skip
    kinds = [k for k in E.SEG_GROUP_METRICS if k in values_a]
    unknown = sorted(set(values_a) - set(kinds))
    if unknown:
        known = ", ".join(E.SEG_GROUP_METRICS)
        raise InputError(f"segmentation scores: unknown score {unknown[0]!r} (known: {known})")
    checked = []
    n = None
    for run, values in (("A", values_a), ("B", values_b)):
        out = {}
        for kind in kinds:
            scores = I.check_scores(np.asarray(values[kind]).reshape(-1), f"run {run} {kind}")
            if n is not None and scores.size != n:
                raise InputError(f"run {run} {kind}: {scores.size} scores but {n} expected (length mismatch)")
            n = scores.size
            out[kind] = scores
        checked.append(out)
    _check_design(bootstrap, ci)
    attributes = _attributes(groups, n)
    wanted = _wanted(metrics, "segmentation")
    seeds = _seed_sequence(seed).spawn(len(attributes))
    rows: list[dict[str, Any]] = []
    resamples: dict[str, np.ndarray] = {}
    for k, (name, (codes, group_names)) in enumerate(attributes.items()):
        G = len(group_names)
        engines = [E.SegmentationEngine(values, codes, G) for values in checked]
        points = [(engine.group_stats(), engine.overall_stats()) for engine in engines]
        boot: list[tuple[list[dict], list[dict]]] = [([], []), ([], [])]
        kept = np.empty((bootstrap, n), dtype=np.uint8) if return_resamples else None
        for b, counts in enumerate(_draws(codes, G, bootstrap, seeds[k])):
            for j, engine in enumerate(engines):
                in_layout = counts[engine.layout.order]
                boot[j][0].append(engine.group_stats(in_layout))
                boot[j][1].append(engine.overall_stats(in_layout))
            if kept is not None:
                kept[b] = counts
            if on_resample is not None:
                on_resample()
        if kept is not None:
            resamples[name] = kept
        stacked = [(_stack(gs), _stack(os_)) for gs, os_ in boot] if bootstrap else [(None, None)] * 2
        (g_a, o_a), (g_b, o_b) = points
        (gb_a, ob_a), (gb_b, ob_b) = stacked
        valid, _ = MR._validity(g_a["n"][:G], np.zeros(G), group_names, min_group_size, need_both=False)
        point_a, point_b = E.summarise_segmentation(g_a, o_a, valid), E.summarise_segmentation(g_b, o_b, valid)
        sb_a = E.summarise_segmentation(gb_a, ob_a, valid) if gb_a is not None else None
        sb_b = E.summarise_segmentation(gb_b, ob_b, valid) if gb_b is not None else None
        if k == 0:
            for kind in kinds:
                rows.append(_row(task, OVERALL, OVERALL, f"mean_{kind}", o_a[kind], o_b[kind], _get(ob_a, kind),
                                 _get(ob_b, kind), n, ci))  # fmt: skip
        for i, group in enumerate(group_names):
            if g_a["n"][i] == 0:
                continue
            for kind in kinds:
                rows.append(_row(task, name, group, kind, g_a[kind][i], g_b[kind][i], _get(gb_a, kind, i),
                                 _get(gb_b, kind, i), int(g_a["n"][i]), ci))  # fmt: skip
        n_known = int(np.sum(g_a["n"][:G]))
        for metric in point_a:
            rows.append(_row(task, name, SUMMARY, metric, point_a[metric], point_b[metric], _get(sb_a, metric),
                             _get(sb_b, metric), n_known, ci))  # fmt: skip
    return _finish(rows, wanted, resamples if return_resamples else None)


def add_q_values(table: pd.DataFrame) -> pd.DataFrame:
    """``q_value``: Benjamini–Hochberg over every row of ``table`` with a p-value (a copy)."""
    out = table.copy()
    out["q_value"] = benjamini_hochberg(out["p_value"].to_numpy(dtype=np.float64)) if len(out) else []
    return out


# ---------------------------------------------------------------------------------------------------------------
def _check_design(bootstrap: int, ci: float) -> None:
    if int(bootstrap) < 1:
        raise InputError(f"bootstrap resamples must be ≥ 1 for intervals and p-values, got {bootstrap}")
    if not 0 < ci < 1:
        raise InputError(f"confidence level {ci!r} must lie strictly between 0 and 1")


def _attributes(groups: Any, n: int) -> dict[str, tuple[np.ndarray, list[str]]]:
    attributes = I.attribute_codes(I.as_group_frame(groups, n))
    if not attributes:
        raise InputError("a comparison needs at least one sensitive attribute (groups)")
    return attributes


def _wanted(metrics: Sequence[str] | None, kind: str) -> set[str] | None:
    if metrics is None:
        return None
    known = known_metrics(kind)
    for name in metrics:
        if name not in known:
            raise InputError(f"unknown {kind} metric {name!r}; known: {', '.join(known)}")
    return set(metrics)


def _seed_sequence(seed: int | np.random.SeedSequence) -> np.random.SeedSequence:
    return seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(int(seed))


def _draws(codes: np.ndarray, n_groups: int, n_resamples: int, seed_sequence: np.random.SeedSequence):
    """Count vectors (uint8, original sample order) of resamples stratified by group, unknown group a stratum of
    its own — the engine's default stratification. Drawn on the samples sorted by stratum (contiguous strata, the
    fast path of :func:`R.draw_counts`) and scattered back to the input order."""
    strata = np.where(codes < 0, n_groups, codes).astype(np.int64)
    by_stratum = np.argsort(strata, kind="stable")
    starts = np.searchsorted(strata[by_stratum], np.arange(n_groups + 2))
    layout = R.Strata(n=strata.size, starts=starts)
    for seed in seed_sequence.spawn(n_resamples):
        drawn = R.draw_counts(R.generator(seed), layout)
        counts = np.empty_like(drawn)
        counts[by_stratum] = drawn
        yield counts


def _stack(parts: list[dict]) -> dict[str, np.ndarray] | None:
    if not parts:
        return None
    return {key: np.asarray([np.asarray(part[key], dtype=np.float64) for part in parts]) for key in parts[0]}


def _get(stats: dict[str, np.ndarray] | None, metric: str, column: int | None = None) -> np.ndarray | None:
    if stats is None or metric not in stats:
        return None
    values = np.asarray(stats[metric], dtype=np.float64)
    return values if column is None else values[:, column]


def _row(task: str, attribute: str, group: str, metric: str, value_a: Any, value_b: Any,
         boot_a: np.ndarray | None, boot_b: np.ndarray | None, n: int, ci: float) -> dict[str, Any]:  # fmt: skip
    value_a, value_b = float(value_a), float(value_b)
    difference = value_b - value_a
    low = high = p_value = math.nan
    if math.isfinite(difference) and boot_a is not None and boot_b is not None:
        resampled = boot_b - boot_a  # NaN where either run's metric is undefined in that resample
        low, high = MR._percentile_ci(resampled, ci)
        p_value = bootstrap_p_value(resampled)
    return {"task": task, "attribute": attribute, "group": group, "metric": metric, "value_a": value_a,
            "value_b": value_b, "difference": difference, "ci_low": low, "ci_high": high, "p_value": p_value,
            "q_value": math.nan, "n": int(n)}  # fmt: skip


def _finish(rows: list[dict[str, Any]], wanted: set[str] | None, resamples: dict[str, np.ndarray] | None):
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    if wanted is not None:
        table = table[table["metric"].isin(wanted)].reset_index(drop=True)
    table = add_q_values(table)
    return (table, resamples) if resamples is not None else table
