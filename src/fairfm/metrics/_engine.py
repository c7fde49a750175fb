"""Per-group statistics and summary metrics for one attribute, for the point estimate and every resample.

The point estimate and each bootstrap resample run the same code: group statistics come from
:func:`fairfm.metrics._layout.count_stats` under a count vector (``None`` for the data as observed), and summary
metrics (gaps, worst group, ES) are computed from the group statistics by :func:`summarise`, vectorised over the
resample axis. So a resample's gap is, by construction, the gap of that resample's own group metrics (paired).
Resamples of tied scores are evaluated on cells of identical (group, score, label) (:func:`L.cells_of`) and split
across forked worker processes; neither changes a number.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np

from fairfm.metrics import _layout as L
from fairfm.metrics import _resample as R

GROUP_METRICS = ("auc", "acc", "tpr", "tnr", "fpr", "fnr", "ppv", "f1", "pos_rate", "youden", "bce", "ece", "brier")
THRESHOLDED = ("acc", "tpr", "tnr", "fpr", "fnr", "ppv", "f1", "pos_rate", "youden")
SEG_GROUP_METRICS = ("dice", "iou")

# Summary metric -> (definition kind, group metric)
GAP_METRICS = {
    "auc_gap": "auc",
    "acc_gap": "acc",
    "bce_gap": "bce",
    "ece_gap": "ece",
    "tpr_gap": "tpr",
    "fpr_gap": "fpr",
    "tnr_gap": "tnr",
    "ppv_gap": "ppv",
    "dpd": "pos_rate",
}
SUMMARY_METRICS = (
    "auc_gap", "worst_auc", "best_auc", "es_auc", "auc_std", "acc_gap", "es_acc", "bce_gap", "ece_gap",
    "tpr_gap", "fpr_gap", "tnr_gap", "ppv_gap", "eqodds_score", "eod", "eopp_score", "dpd", "dp_score", "dpr", "eor",
)  # fmt: skip
SEG_SUMMARY_METRICS = tuple(
    name.format(k=kind)
    for kind in SEG_GROUP_METRICS
    for name in ("mean_{k}", "worst_{k}", "best_{k}", "{k}_gap", "{k}_std", "es_{k}", "es_{k}_std", "{k}_skewness")
)
SEG_GAP_METRICS = {"dice_gap": "dice", "iou_gap": "iou"}


@dataclass(frozen=True)
class Rules:
    """How thresholded and calibration metrics are computed (profiles change these)."""

    threshold: float
    strict: bool = False  # ŷ = 1[p > t] instead of 1[p ≥ t]
    bce: str = "clip"  # "clip": p clipped to [1e-7, 1-1e-7]; "torch": log terms clamped at -100 (torch BCELoss)
    ece: str = "unit"  # "unit": 10 equal-width bins on [0, 1]; "range": on [min p, max p] with pandas-cut edges
    ece_bins: int = 10


def item_bce(y: np.ndarray, p: np.ndarray, mode: str) -> np.ndarray:
    """Per-sample BCE terms, in chunks: the temporaries of large inputs would otherwise each be a fresh array of
    the input's size (page faults cost more than the arithmetic)."""
    if p.size <= _CHUNK:
        return _item_bce(y, p, mode)
    out = np.empty(p.shape)
    for lo in range(0, p.size, _CHUNK):
        out[lo:lo + _CHUNK] = _item_bce(y[lo:lo + _CHUNK], p[lo:lo + _CHUNK], mode)
    return out


_CHUNK = 1 << 16


def _item_bce(y: np.ndarray, p: np.ndarray, mode: str) -> np.ndarray:
    if mode == "torch":
        log_p = np.maximum(np.log(p, where=p > 0, out=np.full(p.shape, -np.inf)), -100.0)
        log_q = np.maximum(np.log1p(-p, where=p < 1, out=np.full(p.shape, -np.inf)), -100.0)
    else:
        clipped = np.clip(p, 1e-7, 1 - 1e-7)
        log_p, log_q = np.log(clipped), np.log1p(-clipped)
    return -(y * log_p + (1 - y) * log_q)


def _pandas_cut_edges(lo: float, hi: float, bins: int) -> np.ndarray:
    """Bin edges that ``pandas.cut(x, bins)`` uses for data spanning [lo, hi] (right-closed intervals)."""
    if lo == hi:
        lo -= 0.001 * abs(lo) if lo != 0 else 0.001
        hi += 0.001 * abs(hi) if hi != 0 else 0.001
        return np.linspace(lo, hi, bins + 1)
    edges = np.linspace(lo, hi, bins + 1)
    edges[0] -= (hi - lo) * 0.001
    return edges


@dataclass
class _View:
    """What the statistics are computed on: the samples, or cells of identical (group, score, label)."""

    layout: L.Layout
    overall: L.Layout
    make_values: Callable[[], np.ndarray]  # (K, 3): p, BCE term, Brier term per position, float64
    make_block: Callable[[int, int], np.ndarray]  # rows [lo, hi) of make_values()
    unit_edges: np.ndarray | None
    to_overall: Callable[[np.ndarray], np.ndarray]  # counts in this layout -> counts in the overall layout
    _values: np.ndarray | None = None
    _values32: np.ndarray | None = None

    @property
    def values(self) -> np.ndarray:
        """Per-position values (point estimates), made on first use: 24 bytes per sample."""
        if self._values is None:
            self._values = self.make_values()
        return self._values

    @property
    def values32(self) -> np.ndarray:
        """``values`` in float32 (resamples of the numpy kernels), made on first use."""
        if self._values32 is None:
            self._values32 = self.values.astype(np.float32)
        return self._values32

    def release(self) -> None:
        """Drop the per-position values (remade when needed): the compiled kernel does not use them."""
        self._values = self._values32 = None


class _Blocks:
    """A view's per-position values as the unweighted calibration sums read them, segment by segment: each block
    is made when read and dropped after (the point estimate reads every position once), so no (n, 3) array of
    24 bytes a sample is made — the block ``values[lo:hi]`` would have been, so its sums are the same."""

    def __init__(self, make_block: Callable[[int, int], np.ndarray], n: int, keep_bce32: bool) -> None:
        self.shape = (n, 3)
        self._make_block = make_block
        self.bce32 = np.empty(n, dtype=np.float32) if keep_bce32 else None
        self._seen = 0

    def __getitem__(self, rows: slice) -> np.ndarray:
        block = self._make_block(rows.start, rows.stop)
        if self.bce32 is not None:
            self.bce32[rows.start:rows.stop] = block[:, 1]
            self._seen += block.shape[0]
        return block

    def complete(self) -> bool:
        """Whether ``bce32`` holds every position (the segments read cover the layout once)."""
        return self.bce32 is not None and self._seen == self.shape[0]


class AttributeEngine:
    """Everything needed to compute one attribute's group statistics quickly, many times."""

    def __init__(self, y: np.ndarray, p: np.ndarray, codes: np.ndarray, n_groups: int, rules: Rules,
                 extra_thresholds: dict[str, float] | None = None) -> None:  # fmt: skip
        self.rules = rules
        self.n_groups = n_groups
        self.extra_thresholds = dict(extra_thresholds or {})
        self._y, self._p = y, p
        self._strata = np.where(codes < 0, n_groups, codes).astype(np.int64)
        by_score = np.argsort(p, kind="quicksort")  # one sort serves every layout
        by_score_yp = (y[by_score], p[by_score])  # the one random gather of each; the layouts stream from here
        self.layout = L.build_layout(y, p, codes, n_groups, by_score, by_score_yp)
        self._overall = L.overall_layout(y, p, by_score, by_score_yp)
        del by_score_yp
        self.samples = self._samples_view()
        self._cells: _View | None | bool = False  # built on first use: only resamples need them
        self._score_cells = None  # the compiled kernel's layout, built on first use ...
        self._point_bce32: np.ndarray | None = None  # ... with the BCE terms of the point estimate, when made
        # ... from this layout (``cells`` may reorder ``self.layout`` later): references, not copies
        self._kernel_layout = (self.layout.order, (self.layout.y, self.layout.p, self.layout.starts))

    def _samples_view(self) -> _View:
        layout, overall, gather = self.layout, self._overall, []

        def to_overall(counts: np.ndarray) -> np.ndarray:
            if not gather:  # made on first use: only the numpy resampling kernels need it
                position = np.empty(layout.n, dtype=np.int64)
                position[layout.order] = np.arange(layout.n)
                gather.append(position[overall.order])  # overall position -> sample-layout position
            return counts[gather[0]]

        return self._view(layout, overall, to_overall)

    @property
    def cells(self) -> _View | None:
        """Cells of identical (group, score, label), when they shrink the problem (see :func:`L.cells_of`)."""
        if self._cells is False:
            found = L.cells_of(self.layout, self._y, self._p, self._strata)
            self._cells = None
            if found is not None:
                # Resampling happens on samples reordered so that cells are contiguous; statistics on cells.
                self.layout, cell_layout, self.cell_starts = found
                self.samples = self._samples_view()
                # Overall cells: identical (score, label) across groups; a resample's overall counts are sums.
                o_order = np.lexsort((cell_layout.y, cell_layout.p))
                oy, op = cell_layout.y[o_order], cell_layout.p[o_order]
                o_starts = np.flatnonzero(np.r_[True, (op[1:] != op[:-1]) | (oy[1:] != oy[:-1])])
                o_layout = L._layout_from_order(np.arange(o_starts.size), oy[o_starts], op[o_starts],
                                                np.zeros(o_starts.size, dtype=np.int64), 1)  # fmt: skip
                o_ends = np.append(o_starts[1:], o_order.size) - 1
                self._cells = self._view(cell_layout, o_layout, lambda counts: R.run_sums(counts[o_order], o_ends))
        return self._cells

    def _view(self, layout: L.Layout, overall: L.Layout, to_overall) -> _View:
        def make_block(lo: int, hi: int) -> np.ndarray:
            # Per-position values whose count-weighted sums give calibration metrics: p, BCE term, Brier term.
            ly, lp = layout.y[lo:hi].astype(np.float64), layout.p[lo:hi]
            block = np.empty((lp.size, 3))
            block[:, 0] = lp
            block[:, 1] = _item_bce(ly, lp, self.rules.bce)
            block[:, 2] = (lp - ly) ** 2
            return block

        def make_values() -> np.ndarray:
            values = np.empty((layout.n, 3))
            for lo in range(0, layout.n, _CHUNK):  # in chunks: no full-size temporaries (see item_bce)
                values[lo:lo + _CHUNK] = make_block(lo, min(lo + _CHUNK, layout.n))
            return values

        unit_edges = None
        if self.rules.ece == "unit":
            edges = np.linspace(0.0, 1.0, self.rules.ece_bins + 1)[1:-1]
            inner = layout.bin_positions(edges, right=False)  # left-closed bins; the last is [0.9, 1]
            unit_edges = np.concatenate([layout.starts[:-1, None], inner, layout.starts[1:, None]], 1)
        # Resample sums use float32: half the memory traffic of this memory-bound step, relative error ~1e-6, far
        # inside any interval. AUCs and rates stay exact integers; point estimates use float64.
        return _View(layout, overall, make_values, make_block, unit_edges, to_overall)

    def _range_edges(self, layout: L.Layout, counts: np.ndarray | None) -> np.ndarray:
        """pandas-cut edges over each stratum's own [min p, max p] of the samples present (FairMedFM's ECE)."""
        out = np.empty((layout.n_groups + 1, self.rules.ece_bins + 1), dtype=np.int64)
        for s in range(layout.n_groups + 1):
            lo, hi = layout.starts[s], layout.starts[s + 1]
            if hi == lo:
                out[s] = lo
                continue
            if counts is None:
                first, last = lo, hi - 1
            else:
                present = np.flatnonzero(counts[lo:hi])
                first, last = lo + present[0], lo + present[-1]
            edges = _pandas_cut_edges(layout.p[first], layout.p[last], self.rules.ece_bins)
            out[s] = lo + np.searchsorted(layout.p[lo:hi], edges, side="right")
            out[s, 0], out[s, -1] = lo, hi
        return out

    @staticmethod
    def _binned(layout: L.Layout, stats: L.Counts, edges: np.ndarray, values: np.ndarray, weights):
        """Per stratum and bin: sample counts, positive counts and weighted sums of ``values`` columns."""
        bounds = np.append(edges[:, :-1].ravel(), edges[-1, -1])
        sums = L.segment_sums(values, bounds, weights).reshape(edges.shape[0], edges.shape[1] - 1, values.shape[1])
        neg = stats.cum_neg[edges].astype(np.int64)
        pos = stats.cum_pos_at[np.searchsorted(layout.pos_index, edges)]
        return np.diff(neg + pos, axis=1), np.diff(pos, axis=1), sums

    def _all_stats(self, view: _View, counts: np.ndarray | None, sizes: np.ndarray | None, values=None):
        """``values``: what the calibration sums read instead of the view's values (see :class:`_Blocks`)."""
        lay, rules = view.layout, self.rules
        weights = None if counts is None else counts.astype(np.float32)
        if values is None:
            values = view.values if counts is None else view.values32
        stats = L.count_stats(lay, counts, sizes)
        edges = view.unit_edges if rules.ece == "unit" else self._range_edges(lay, counts)
        _, pos_bin, sums = self._binned(lay, stats, edges, values, weights)
        sums = sums.astype(np.float64)
        n = stats.n.astype(np.float64)
        group: dict[str, np.ndarray] = {"n": stats.n, "n_pos": stats.n_pos, "auc": stats.auc()}
        conf = {"": L.confusion_at(lay, stats, rules.threshold, rules.strict)}
        for name, t in self.extra_thresholds.items():
            conf[f"@{name}"] = L.confusion_at(lay, stats, t, rules.strict)
        with np.errstate(invalid="ignore", divide="ignore"):
            for suffix, c in conf.items():
                group.update({f"{k}{suffix}": v for k, v in _rates(c, n).items()})
            group["bce"] = sums[:, :, 1].sum(axis=1) / n
            group["brier"] = sums[:, :, 2].sum(axis=1) / n
            group["ece"] = np.abs(sums[:, :, 0] - pos_bin).sum(axis=1) / n

            # Overall statistics: every sum adds up over strata; only the AUC needs the overall order.
            total = float(n.sum())
            c_all = None if counts is None else view.to_overall(counts)
            o_stats = L.count_stats(view.overall, c_all, None if counts is None else np.array([int(stats.n.sum())]))
            overall: dict[str, float] = {"n": float(total), "n_pos": float(stats.n_pos.sum()),
                                         "auc": float(o_stats.auc()[0])}  # fmt: skip
            for suffix, c in conf.items():
                summed = {k: np.array([v.sum()]) for k, v in c.items()}
                overall.update({f"{k}{suffix}": float(v[0]) for k, v in _rates(summed, np.array([total])).items()})
            overall["bce"] = float(sums[:, :, 1].sum() / total)
            overall["brier"] = float(sums[:, :, 2].sum() / total)
            if rules.ece == "unit":
                overall["ece"] = float(np.abs(sums[:, :, 0].sum(axis=0) - pos_bin.sum(axis=0)).sum() / total)
            else:
                o_edges = self._range_edges(view.overall, c_all)
                o_weights = None if c_all is None else c_all.astype(np.float64)
                o_values = view.overall.p[:, None]
                _, o_pos, o_sums = self._binned(view.overall, o_stats, o_edges, o_values, o_weights)
                overall["ece"] = float(np.abs(o_sums[:, :, 0] - o_pos).sum() / total)
        return group, overall

    def resample_stats(self, counts: np.ndarray, sizes: np.ndarray | None = None):
        """Group and overall statistics of one resample given as counts over the sample layout (read
        :attr:`cells` first: building the cells reorders the layout)."""
        if self.cells is not None:
            return self._all_stats(self.cells, R.run_sums(counts, self.cell_starts[1:] - 1), sizes)
        return self._all_stats(self.samples, counts, sizes)

    def _draw(self, seed: np.random.SeedSequence, stratify: str, strata: R.Strata | None = None):
        """(statistics view, counts over it) of one resample. Stratified by group with cells, the resample is
        drawn on the cells directly; otherwise per sample."""
        rng = R.generator(seed)
        if self.cells is not None and stratify == "group":
            counts = R.draw_cell_counts(rng, self.layout.n, self.cell_starts, self.cells.layout.starts,
                                        self.layout.starts)  # fmt: skip
            return self.cells, counts
        counts = R.draw_counts(rng, strata if strata is not None else self.strata(stratify))
        if self.cells is not None:
            return self.cells, R.run_sums(counts, self.cell_starts[1:] - 1)
        return self.samples, counts

    def point_stats(self) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Per stratum (G groups, then the unknown stratum) and overall statistics of the data as observed."""
        # The compiled kernel's BCE terms are kept, if it will run on this layout (4 bytes a sample).
        keep = self.rules.ece == "unit" and self.layout.order is self._kernel_layout[0]
        blocks = _Blocks(self.samples.make_block, self.layout.n, keep)
        stats = self._all_stats(self.samples, None, None, blocks)
        if blocks.complete():
            self._point_bce32 = blocks.bce32
        self.samples.release()
        return stats

    def strata(self, stratify: str) -> R.Strata:
        lay = self.layout
        if stratify == "group":
            return R.Strata(n=lay.n, starts=lay.starts)
        if stratify == "group_class":
            members = []
            for s in range(lay.n_groups + 1):
                idx = np.arange(lay.starts[s], lay.starts[s + 1])
                members += [idx[lay.y[idx] == 1], idx[lay.y[idx] == 0]]
            return R.Strata(n=lay.n, members=members)
        if stratify == "class":
            return R.Strata(n=lay.n, members=[lay.pos_index, np.flatnonzero(lay.y == 0)])
        raise ValueError(f"unknown stratification {stratify!r}")

    def bootstrap(self, n_resamples: int, seed_sequence: np.random.SeedSequence, stratify: str = "group",
                  n_jobs: int = 2) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:  # fmt: skip
        """Group (B, S) and overall (B,) statistics for ``n_resamples`` stratified resamples.

        Resample ``b`` uses its own generator (spawned from ``seed_sequence``), so results do not depend on
        ``n_jobs``. Work is split across forked worker processes: the kernels are memory-bound sequences of
        numpy calls, which threads cannot overlap (the GIL is re-taken between calls).
        """
        seeds = seed_sequence.spawn(n_resamples)
        if n_resamples == 0:
            return {}, {}
        _wait_for_preload()  # before any fork below: a child must not inherit the loading thread's locks
        if self._compiled_kernel() is not None:
            try:
                return self._compiled_bootstrap(seeds, stratify, n_jobs)
            except OverflowError:  # a sample drawn > 255 times: never in practice; the numpy kernels have no limit
                pass
        self.cells  # noqa: B018  (built now: it reorders the layout, and forked workers should inherit it)
        big_enough = n_resamples >= _MIN_PARALLEL_RESAMPLES and n_resamples * self.layout.n >= _MIN_PARALLEL_WORK
        if n_jobs > 1 and big_enough and _can_fork():
            chunks = [c for c in np.array_split(np.arange(n_resamples), n_jobs) if c.size]
            parts = _forked_map(self, [(seeds[c[0]:c[-1] + 1], stratify) for c in chunks])
        else:
            parts = [self._bootstrap_chunk(seeds, stratify)]
        groups = {k: np.concatenate([part[0][k] for part in parts]) for k in parts[0][0]}
        overall = {k: np.concatenate([part[1][k] for part in parts]) for k in parts[0][1]}
        return groups, overall

    def _compiled_kernel(self):
        """The compiled kernel module when it applies (numba importable, ECE on [0, 1] bins), else None: the
        numpy kernels below then compute the same statistics, slower."""
        _wait_for_preload()
        if self.rules.ece != "unit" or self.layout.n >= _KERNEL_MAX_SAMPLES:
            return None
        try:
            from fairfm.metrics import _kernel
        except ImportError:  # numba missing or incompatible with this numpy
            return None
        return _kernel

    def _kernel_cells(self, kernel):
        if self._score_cells is None:
            order, in_order = self._kernel_layout
            self._score_cells = kernel.ScoreCells.build(self._y, self._p, self._strata, self.n_groups + 1, order,
                                                        lambda y, p: item_bce(y, p, self.rules.bce),
                                                        self._overall.order, in_order,
                                                        sample_bce32=self._point_bce32)  # fmt: skip
            self._point_bce32 = None
        return self._score_cells

    def _compiled_bootstrap(self, seeds, stratify: str, n_jobs: int):
        """:meth:`bootstrap` with the fused kernel of :mod:`fairfm.metrics._kernel`: one pass per resample
        yields running sums per group and their snapshots at the threshold and bin edges; the rates, AUCs and
        calibration metrics follow here, vectorised over resamples, with the formulas of :meth:`_all_stats`."""
        kernel = self._compiled_kernel()
        cells = self._kernel_cells(kernel)
        rules = self.rules
        thresholds = {"": rules.threshold} | {f"@{k}": t for k, t in self.extra_thresholds.items()}
        # Snapshot points in ascending (value, side) order, so that every stratum's positions ascend too.
        points = [(t, rules.strict, name) for name, t in thresholds.items()]
        points += [(float(e), False, k) for k, e in enumerate(np.linspace(0.0, 1.0, rules.ece_bins + 1)[1:-1])]
        points.sort(key=lambda point: (point[0], point[1]))
        snap_at = np.concatenate([cells.positions(np.array([v]), strict) for v, strict, _ in points], axis=1)
        raw = kernel.run(cells, kernel.generator_states(seeds), stratify, snap_at, n_jobs)
        self._score_cells = None  # ~40 bytes per sample; rebuilt if needed again (resample_indices)
        where = {name: q for q, (_, _, name) in enumerate(points) if isinstance(name, str)}
        at_edges = np.array([q for q, (_, _, name) in enumerate(points) if not isinstance(name, str)], dtype=np.int64)

        n, n_pos, mw2 = (raw.ints[..., i].astype(np.float64) for i in range(3))
        n_neg = n - n_pos
        groups: dict[str, np.ndarray] = {"n": n, "n_pos": n_pos}
        total, total_pos = n.sum(axis=1), n_pos.sum(axis=1)
        overall: dict[str, np.ndarray] = {"n": total, "n_pos": total_pos}
        with np.errstate(invalid="ignore", divide="ignore"):
            denom = 2.0 * n_pos * n_neg
            groups["auc"] = np.where(denom > 0, mw2 / np.where(denom > 0, denom, 1), np.nan)
            o_denom = 2.0 * total_pos * (total - total_pos)
            overall["auc"] = np.where(o_denom > 0, raw.overall_mw2 / np.where(o_denom > 0, o_denom, 1), np.nan)
            for name, q in where.items():
                tn, fn = raw.snap_ints[:, q, :, 0].astype(np.float64), raw.snap_ints[:, q, :, 1].astype(np.float64)
                conf = {"tp": n_pos - fn, "fn": fn, "tn": tn, "fp": n_neg - tn}
                groups.update({f"{k}{name}": v for k, v in _rates(conf, n).items()})
                summed = {k: v.sum(axis=1) for k, v in conf.items()}
                overall.update({f"{k}{name}": v for k, v in _rates(summed, total).items()})
            groups["bce"] = raw.sums[..., 1] / n
            groups["brier"] = raw.sums[..., 2] / n
            zeros = np.zeros_like(n[:, None, :])
            cum_p = np.concatenate([zeros, raw.snap_cp[:, at_edges, :], raw.sums[:, None, :, 0]], axis=1)
            cum_pos = np.concatenate([zeros, raw.snap_ints[..., 1][:, at_edges, :], n_pos[:, None, :]], axis=1)
            bin_p, bin_pos = np.diff(cum_p, axis=1), np.diff(cum_pos, axis=1)  # (B, bins, S)
            groups["ece"] = np.abs(bin_p - bin_pos).sum(axis=1) / n
            overall["bce"] = raw.sums[..., 1].sum(axis=1) / total
            overall["brier"] = raw.sums[..., 2].sum(axis=1) / total
            overall["ece"] = np.abs(bin_p.sum(axis=2) - bin_pos.sum(axis=2)).sum(axis=1) / total
        order = ["n", "n_pos", "auc"] + [f"{k}{name}" for name in thresholds for k in _RATE_NAMES]
        groups = {k: groups[k] for k in order + ["bce", "brier", "ece"]}
        overall = {k: overall[k] for k in order + ["bce", "brier", "ece"]}
        return groups, overall

    def _bootstrap_chunk(self, seeds: list[np.random.SeedSequence], stratify: str):
        strata = self.strata(stratify)
        sizes = np.diff(self.layout.starts) if stratify == "group" else None
        groups: dict[str, np.ndarray] = {}
        overall: dict[str, np.ndarray] = {}
        for b, seed in enumerate(seeds):
            view, counts = self._draw(seed, stratify, strata)
            g, o = self._all_stats(view, counts, sizes)
            if b == 0:
                groups = {k: np.empty((len(seeds), v.size)) for k, v in g.items()}
                overall = {k: np.empty(len(seeds)) for k in o}
            for key, value in g.items():
                groups[key][b] = value
            for key, value in o.items():
                overall[key][b] = value
        return groups, overall

    def resample_indices(self, b: int, n_resamples: int, seed_sequence: np.random.SeedSequence,
                         stratify: str = "group") -> np.ndarray:  # fmt: skip
        """The sample indices of resample ``b`` of :meth:`bootstrap` — to check a resample against other tools.

        A cell's draws are spread over its samples uniformly at random (with a separate generator); every metric
        is the same whichever of a cell's identical samples were drawn.
        """
        kernel = self._compiled_kernel()
        if kernel is not None:
            cells = self._kernel_cells(kernel)
            counts = np.zeros(cells.y.size, dtype=np.int64)
            states = kernel.generator_states(seed_sequence.spawn(n_resamples)[b:b + 1])
            kernel.run(cells, states, stratify, np.empty((cells.stratum_bounds.size - 1, 0), np.int64), emit=counts)
            picked = np.repeat(np.arange(counts.size), counts)
            if cells.unit:
                return cells.order[picked]
            offsets = np.random.default_rng(b).integers(0, cells.sizes[picked])
            return cells.order[cells.cell_starts[picked] + offsets]
        self.cells  # noqa: B018  (the layout the resample refers to is the one with cells, when there are cells)
        view, counts = self._draw(seed_sequence.spawn(n_resamples)[b], stratify)
        if view is self.samples:
            return R.counts_to_indices(self.layout.order, counts)
        spread = np.random.default_rng(b)
        starts, sizes = self.cell_starts[:-1], np.diff(self.cell_starts)
        cells = np.repeat(np.arange(counts.size), counts)
        return self.layout.order[starts[cells] + spread.integers(0, sizes[cells])]


_PRELOAD: list[threading.Thread] = []  # the thread loading the compiled kernel (at most one per process)


def preload_compiled_kernel() -> None:
    """Load the compiled bootstrap kernel in a background thread while the caller reads data and computes point
    estimates: a fresh process spends ~0.4 s importing numba, loading the kernel's cached machine code and
    building numba's typing context on the first call, mostly while the main thread waits in numpy or Parquet
    code. The first bootstrap waits for the thread. Idempotent; harmless where the kernel cannot be used."""
    if not _PRELOAD:
        _PRELOAD.append(threading.Thread(target=_load_compiled_kernel, name="fairfm-kernel", daemon=True))
        _PRELOAD[0].start()


def _wait_for_preload() -> None:
    for thread in _PRELOAD:
        if thread is not threading.current_thread():
            thread.join()


def _load_compiled_kernel() -> None:
    # Both kernel specialisations: cells that are single samples (uint8 counts) and cells of tied scores (int32).
    y = np.tile(np.array([0, 1], dtype=np.uint8), 128)
    codes = np.repeat(np.arange(2), 128)
    for p in (np.linspace(0.0, 1.0, y.size), np.round(np.linspace(0.0, 1.0, y.size), 1)):
        try:
            AttributeEngine(y, p, codes, 2, Rules(threshold=0.5)).bootstrap(4, np.random.SeedSequence(0), n_jobs=1)
        except Exception:  # noqa: BLE001  (nothing to report here: the real bootstrap meets the same problem)
            return


_KERNEL_MAX_SAMPLES = 1 << 28  # the compiled kernel's 32-bit uniforms; larger data use the numpy kernels
_RATE_NAMES = ("acc", "tpr", "tnr", "fpr", "fnr", "ppv", "f1", "pos_rate", "youden")
_MIN_PARALLEL_RESAMPLES = 50
_MIN_PARALLEL_WORK = 20_000_000  # samples × resamples below which forking costs more than it saves
_FORKED_ENGINE: "AttributeEngine | None" = None  # read by forked workers; set only around a pool's lifetime


def _can_fork() -> bool:
    # Linux only: on macOS fork() is unsafe with system frameworks; elsewhere the work runs in this process.
    return sys.platform.startswith("linux") and not multiprocessing.current_process().daemon


def _forked_chunk(args):
    seeds, stratify = args
    return _FORKED_ENGINE._bootstrap_chunk(seeds, stratify)


def _forked_map(engine: "AttributeEngine", tasks: list) -> list:
    """Run chunks in forked processes that inherit ``engine`` (no pickling of the large arrays)."""
    global _FORKED_ENGINE
    _FORKED_ENGINE = engine
    try:
        with warnings.catch_warnings():
            # Python ≥ 3.12 warns about fork() in a multi-threaded process; the workers only run numpy.
            warnings.simplefilter("ignore", DeprecationWarning)
            context = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(len(tasks), mp_context=context) as pool:
                return list(pool.map(_forked_chunk, tasks))
    finally:
        _FORKED_ENGINE = None


def _rates(conf: dict[str, np.ndarray], n: np.ndarray) -> dict[str, np.ndarray]:
    tp, fp, tn, fn = (conf[k].astype(np.float64) for k in ("tp", "fp", "tn", "fn"))
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = tp / (tp + fn)
        fpr = fp / (fp + tn)
        return {
            "acc": (tp + tn) / n,
            "tpr": tpr,
            "tnr": tn / (tn + fp),
            "fpr": fpr,
            "fnr": fn / (fn + tp),
            "ppv": tp / (tp + fp),
            "f1": 2 * tp / (2 * tp + fp + fn),
            "pos_rate": (tp + fp) / n,
            "youden": tpr - fpr,
        }


def _spread(values: np.ndarray) -> np.ndarray:
    """max − min across groups (last axis); NaN when any group is NaN or fewer than two groups."""
    if values.shape[-1] < 2:
        return np.full(values.shape[:-1], np.nan)
    return values.max(axis=-1) - values.min(axis=-1)


def _ratio(values: np.ndarray) -> np.ndarray:
    if values.shape[-1] < 2:
        return np.full(values.shape[:-1], np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        return values.min(axis=-1) / values.max(axis=-1)


def summarise(groups: dict[str, np.ndarray], overall: dict[str, np.ndarray], valid: np.ndarray,
              suffix: str = "") -> dict[str, np.ndarray]:  # fmt: skip
    """Summary metrics from group statistics. Arrays are (..., S) for groups and (...) for overall.

    Only ``valid`` groups enter any gap, worst-group, ratio or ES metric (METRICS.md §5). ``suffix`` selects the
    thresholded statistics of an extra threshold (``"@0.5"``).
    """
    G = valid.size
    sel = {k: v[..., :G][..., valid] for k, v in groups.items()}
    overall = {k: np.asarray(v, dtype=np.float64) for k, v in overall.items()}
    out: dict[str, np.ndarray] = {}
    auc_g = sel["auc"]
    out["auc_gap"] = _spread(auc_g)
    out["worst_auc"] = auc_g.min(axis=-1) if auc_g.shape[-1] else np.full(auc_g.shape[:-1], np.nan)
    out["best_auc"] = auc_g.max(axis=-1) if auc_g.shape[-1] else np.full(auc_g.shape[:-1], np.nan)
    out["auc_std"] = auc_g.std(axis=-1) if auc_g.shape[-1] else np.full(auc_g.shape[:-1], np.nan)
    if auc_g.shape[-1] >= 2:
        out["es_auc"] = overall["auc"] / (1 + np.abs(auc_g - overall["auc"][..., None]).sum(axis=-1))
    else:
        out["es_auc"] = np.full(auc_g.shape[:-1], np.nan)
    for name in ("bce", "ece"):
        out[f"{name}_gap"] = _spread(sel[name])
    acc_g = sel[f"acc{suffix}"]
    out["acc_gap"] = _spread(acc_g)
    if acc_g.shape[-1] >= 2:
        out["es_acc"] = overall[f"acc{suffix}"] / (1 + np.abs(acc_g - overall[f"acc{suffix}"][..., None]).sum(axis=-1))
    else:
        out["es_acc"] = np.full(acc_g.shape[:-1], np.nan)
    for rate in ("tpr", "fpr", "tnr", "ppv"):
        out[f"{rate}_gap"] = _spread(sel[f"{rate}{suffix}"])
    out["dpd"] = _spread(sel[f"pos_rate{suffix}"])
    out["eqodds_score"] = 1 - (out["tpr_gap"] + out["tnr_gap"]) / 2
    out["eod"] = np.maximum(out["tpr_gap"], out["fpr_gap"])
    out["eopp_score"] = 1 - out["tpr_gap"]
    out["dp_score"] = 1 - out["dpd"]
    out["dpr"] = _ratio(sel[f"pos_rate{suffix}"])
    out["eor"] = np.minimum(_ratio(sel[f"tpr{suffix}"]), _ratio(sel[f"fpr{suffix}"]))
    return out


def summarise_segmentation(groups: dict[str, np.ndarray], overall: dict[str, np.ndarray],
                           valid: np.ndarray) -> dict[str, np.ndarray]:  # fmt: skip
    G = valid.size
    overall = {k: np.asarray(v, dtype=np.float64) for k, v in overall.items()}
    out: dict[str, np.ndarray] = {}
    for kind in [k for k in SEG_GROUP_METRICS if k in groups]:
        vals = groups[kind][..., :G][..., valid]
        mean = overall[kind]
        out[f"mean_{kind}"] = mean
        has = vals.shape[-1] >= 1
        out[f"worst_{kind}"] = vals.min(axis=-1) if has else np.full(vals.shape[:-1], np.nan)
        out[f"best_{kind}"] = vals.max(axis=-1) if has else np.full(vals.shape[:-1], np.nan)
        out[f"{kind}_gap"] = _spread(vals)
        out[f"{kind}_std"] = vals.std(axis=-1) if vals.shape[-1] >= 2 else np.full(vals.shape[:-1], np.nan)
        if vals.shape[-1] >= 2:
            out[f"es_{kind}"] = mean / (1 + np.abs(vals - mean[..., None]).sum(axis=-1))
            out[f"es_{kind}_std"] = mean / (1 + out[f"{kind}_std"])
            with np.errstate(invalid="ignore", divide="ignore"):
                skew = (1 - out[f"worst_{kind}"]) / (1 - out[f"best_{kind}"])
            out[f"{kind}_skewness"] = np.where(np.isfinite(skew), skew, np.nan)
        else:
            for name in (f"es_{kind}", f"es_{kind}_std", f"{kind}_skewness"):
                out[name] = np.full(vals.shape[:-1], np.nan)
    return out


class SegmentationEngine:
    """Group means of per-sample Dice/IoU, for the point estimate and stratified resamples."""

    def __init__(self, values: dict[str, np.ndarray], codes: np.ndarray, n_groups: int) -> None:
        first = next(iter(values.values()))
        zeros = np.zeros(first.size, dtype=np.uint8)
        # Scores play no role here; the layout only groups samples into contiguous strata.
        self.layout = L.build_layout(zeros, np.zeros(first.size), codes, n_groups)
        self.values = {k: np.asarray(v, dtype=np.float64)[self.layout.order] for k, v in values.items()}
        self.n_groups = n_groups

    def group_stats(self, counts: np.ndarray | None = None) -> dict[str, np.ndarray]:
        weights = None if counts is None else counts.astype(np.float64)
        n = np.diff(self.layout.starts).astype(np.float64)
        out = {"n": n}
        with np.errstate(invalid="ignore", divide="ignore"):
            for key, vals in self.values.items():
                out[key] = L.segment_sums(vals[:, None], self.layout.starts, weights)[:, 0] / n
        return out

    def overall_stats(self, counts: np.ndarray | None = None) -> dict[str, float]:
        out = {}
        for key, vals in self.values.items():
            out[key] = vals.mean() if counts is None else float(np.dot(counts.astype(np.float64), vals) / vals.size)
        return out

    def bootstrap(self, n_resamples: int, seed_sequence: np.random.SeedSequence):
        strata = R.Strata(n=self.layout.n, starts=self.layout.starts)
        rngs = [R.generator(s) for s in seed_sequence.spawn(n_resamples)]
        groups: dict[str, list] = {}
        overall: dict[str, list] = {}
        for rng in rngs:
            counts = R.draw_counts(rng, strata)
            for k, v in self.group_stats(counts).items():
                groups.setdefault(k, []).append(v)
            for k, v in self.overall_stats(counts).items():
                overall.setdefault(k, []).append(v)
        return ({k: np.asarray(v) for k, v in groups.items()}, {k: np.asarray(v) for k, v in overall.items()})
