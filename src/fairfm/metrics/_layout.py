"""Sorted sample layouts and the exact, count-weighted kernels behind every metric and every bootstrap resample.

A *layout* orders the samples by (stratum, score). Within a stratum, every threshold rule ``p ≥ t`` selects a
suffix and every equal-width calibration bin is a contiguous run, so all per-group statistics become differences
of cumulative sums. A bootstrap resample is a vector of integer counts over the samples (how often each was
drawn); the unweighted point estimate is the same kernel with all counts equal to one. Integer arithmetic is kept
up to the final division, so each AUC equals the Mann–Whitney AUC of the resampled data exactly (ties count ½).

Hand-written because no maintained library computes weighted, tie-exact per-group AUCs for a thousand resamples
in one pass (sklearn and fairlearn recompute from scratch per group and per resample).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Layout:
    """Samples ordered by (stratum, score); strata ``0..G-1`` are groups, stratum ``G`` the unknown-group samples."""

    order: np.ndarray  # layout position -> original sample index
    n_groups: int
    starts: np.ndarray  # (G+2,) stratum boundaries in layout positions
    y: np.ndarray  # uint8 labels in layout order
    p: np.ndarray  # float64 scores in layout order
    is_neg: np.ndarray  # uint8
    pos_index: np.ndarray  # layout positions of positives (ascending)
    pos_group: np.ndarray  # stratum of each positive
    pos_starts: np.ndarray  # (G+2,) boundaries of each stratum's positives inside pos_index
    block_lo: np.ndarray  # per positive: first layout position of its tie block
    block_hi: np.ndarray  # per positive: one past the last position of its tie block
    tied: bool  # False when no positive shares its score with a negative of its stratum
    _cut_cache: dict = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return int(self.order.size)

    def cut_positions(self, threshold: float, strict: bool) -> np.ndarray:
        """Per stratum, the first layout position predicted positive (``p ≥ t``, or ``p > t`` when strict)."""
        key = (float(threshold), bool(strict))
        if key not in self._cut_cache:
            side = "right" if strict else "left"
            cuts = np.empty(self.n_groups + 1, dtype=np.int64)
            for s in range(self.n_groups + 1):
                lo, hi = self.starts[s], self.starts[s + 1]
                cuts[s] = lo + np.searchsorted(self.p[lo:hi], threshold, side=side)
            self._cut_cache[key] = cuts
        return self._cut_cache[key]

    def bin_positions(self, edges: np.ndarray, right: bool = False) -> np.ndarray:
        """(S, len(edges)) layout positions of calibration-bin edges within each stratum."""
        side = "left" if not right else "right"
        out = np.empty((self.n_groups + 1, edges.size), dtype=np.int64)
        for s in range(self.n_groups + 1):
            lo, hi = self.starts[s], self.starts[s + 1]
            out[s] = lo + np.searchsorted(self.p[lo:hi], edges, side=side)
        return out


def build_layout(y: np.ndarray, p: np.ndarray, codes: np.ndarray, n_groups: int,
                 by_score: np.ndarray | None = None, by_score_yp: tuple | None = None) -> Layout:  # fmt: skip
    """``codes`` in ``0..G-1`` for known groups and ``-1`` for unknown; ``by_score`` may pass ``argsort(p)``
    and ``by_score_yp`` the labels and scores in that order (``y[by_score]``, ``p[by_score]``)."""
    if by_score is None:
        by_score = np.argsort(p, kind="quicksort")
    # A stable sort on the small integer strata keeps score order inside each stratum; numpy radix-sorts
    # integers of ≤ 16 bits (linear time), so the strata are narrow. Gathers through ``perm`` read the
    # score-sorted arrays as one ascending stream per stratum, which large data need (random gathers of the
    # original arrays miss the caches).
    narrow = np.uint8 if n_groups < 255 else np.uint16 if n_groups < 65535 else np.int64
    strata = codes.astype(narrow)
    strata[codes < 0] = n_groups
    strata_by_score = strata[by_score]
    perm = np.argsort(strata_by_score, kind="stable")
    ys, ps = by_score_yp if by_score_yp is not None else (y[by_score], p[by_score])
    return _layout_from_order(by_score[perm], y, p, strata, n_groups,
                              gathered=(ys[perm], ps[perm], strata_by_score[perm]))  # fmt: skip


def _layout_from_order(order, y, p, strata, n_groups, gathered=None) -> Layout:
    """``gathered``: ``(y[order], p[order], strata[order])`` when the caller has them (strata of any integer
    type)."""
    if gathered is None:
        ys, ps, ss = y[order], p[order], strata[order]
    else:
        ys, ps, ss = gathered
    ys = ys.astype(np.uint8, copy=False)
    ps = ps.astype(np.float64, copy=False)
    sizes = np.bincount(ss, minlength=n_groups + 1)
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n = order.size
    new_block = np.ones(n, dtype=bool)
    if n > 1:
        new_block[1:] = (ps[1:] != ps[:-1]) | (ss[1:] != ss[:-1])
    pos_index = np.flatnonzero(ys == 1)
    pos_group = ss[pos_index].astype(np.int64)
    pos_starts = np.searchsorted(pos_index, starts).astype(np.int64)
    # Each positive's tie block [lo, hi). Most blocks are single samples, so only the runs of two or more are
    # listed (no per-sample block ids, prefix sums or block lists: full-size temporaries cost page faults).
    continued = ~new_block  # the sample continues the block of the one before
    run_starts = np.flatnonzero(new_block[:-1] & continued[1:])
    run_ends = np.flatnonzero(continued[:-1] & new_block[1:]) + 1
    if n and continued[-1]:
        run_ends = np.append(run_ends, n)
    which = np.searchsorted(run_starts, pos_index, side="right") - 1
    inside = which >= 0
    which = np.maximum(which, 0)
    if run_starts.size:
        inside &= pos_index < run_ends[which]
    shared = np.flatnonzero(inside)
    lo, hi = pos_index.copy(), pos_index + 1
    lo[shared], hi[shared] = run_starts[which[shared]], run_ends[which[shared]]
    # A positive's tie block matters only if it also holds a negative; otherwise lo/hi collapse to itself.
    has_tied_neg = np.zeros(pos_index.size, dtype=bool)
    positives_in_block = np.searchsorted(pos_index, hi[shared]) - np.searchsorted(pos_index, lo[shared])
    has_tied_neg[shared] = positives_in_block < hi[shared] - lo[shared]
    lo = np.where(has_tied_neg, lo, pos_index)
    hi = np.where(has_tied_neg, hi, pos_index + 1)
    return Layout(
        order=order,
        n_groups=n_groups,
        starts=starts,
        y=ys,
        p=ps,
        is_neg=(ys == 0).astype(np.uint8),
        pos_index=pos_index,
        pos_group=pos_group,
        pos_starts=pos_starts,
        block_lo=lo.astype(np.int64, copy=False),
        block_hi=hi.astype(np.int64, copy=False),
        tied=bool(has_tied_neg.any()),
    )


def cells_of(layout: Layout, y: np.ndarray, p: np.ndarray, strata: np.ndarray,
             max_fraction: float = 0.6) -> tuple[Layout, Layout, np.ndarray] | None:  # fmt: skip
    """Group samples of identical (stratum, score, label) into cells, when that shrinks the problem.

    Every metric depends on a sample only through its stratum, score and label, so a resample can be summarised
    by how often each *cell* was drawn. Scores exported with few decimals tie a lot: 1e6 samples may form only
    ~1e5 cells, and every per-resample kernel then runs on the cells. Returns (the sample layout reordered so that
    cells are contiguous, the cell layout, the cells' start positions in the sample layout), or None when cells
    would save little.
    """
    n = layout.n
    if n == 0:
        return None
    stratum = np.repeat(np.arange(layout.n_groups + 1), np.diff(layout.starts))
    new_block = np.ones(n, dtype=bool)
    new_block[1:] = (layout.p[1:] != layout.p[:-1]) | (stratum[1:] != stratum[:-1])
    if new_block.all():
        return None
    key = np.cumsum(new_block, dtype=np.int64) * 2 + layout.y
    perm = np.argsort(key, kind="stable")  # only reorders labels inside each tie block
    key = key[perm]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    if starts.size > max_fraction * n:
        return None
    samples = _layout_from_order(layout.order[perm], y, p, strata, layout.n_groups)
    cells = _layout_from_order(np.arange(starts.size), samples.y[starts], samples.p[starts], stratum[perm][starts],
                               layout.n_groups)  # fmt: skip
    return samples, cells, np.append(starts, n)


def overall_layout(y: np.ndarray, p: np.ndarray, by_score: np.ndarray | None = None,
                   by_score_yp: tuple | None = None) -> Layout:  # fmt: skip
    """All samples as one stratum (used for overall metrics)."""
    if by_score is None:
        by_score = np.argsort(p, kind="quicksort")
    ys, ps = by_score_yp if by_score_yp is not None else (y[by_score], p[by_score])
    zeros = np.zeros(y.size, dtype=np.uint8)
    return _layout_from_order(by_score, y, p, zeros, 1, gathered=(ys, ps, zeros))


def _segment_sums(values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Sums of ``values`` over ``[bounds[k], bounds[k+1])``; empty segments give 0 (unlike ``np.add.reduceat``)."""
    cum = np.zeros(values.size + 1, dtype=np.result_type(values.dtype, np.int64))
    np.cumsum(values, out=cum[1:])
    return cum[bounds[1:]] - cum[bounds[:-1]]


@dataclass
class Counts:
    """Per-stratum counts (and, for AUC, twice the Mann–Whitney numerator) under one count vector."""

    n: np.ndarray  # (S,) samples
    n_pos: np.ndarray  # (S,) positives
    mw2: np.ndarray  # (S,) 2 × Σ_{pos} Σ_{neg} [p_pos > p_neg] + ½[=]
    cum_neg: np.ndarray  # (n+1,) exclusive prefix sums of negative counts in layout order
    cum_pos_at: np.ndarray  # (n_pos+1,) exclusive prefix sums of positive counts over pos_index

    @property
    def n_neg(self) -> np.ndarray:
        return self.n - self.n_pos

    def auc(self) -> np.ndarray:
        denom = 2.0 * self.n_pos * self.n_neg
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, self.mw2 / np.where(denom > 0, denom, 1), np.nan)


def count_stats(layout: Layout, counts: np.ndarray | None = None, sizes: np.ndarray | None = None) -> Counts:
    """Counts and exact AUC numerators for every stratum, for one count vector (``None`` = every sample once).

    ``sizes`` may pass the per-stratum totals when they are known (a resample stratified by these strata).
    Prefix sums are kept in int32 where the totals allow it: memory traffic, not arithmetic, bounds this kernel.
    """
    n = layout.n
    if counts is None:
        draws = n
    else:
        draws = int(sizes.sum()) if sizes is not None else int(counts.sum(dtype=np.int64))
    acc = np.int32 if draws < 2**29 else np.int64  # prefix sums of counts stay below 2·draws
    if counts is None:
        neg_counts = layout.is_neg
        cp = np.ones(layout.pos_index.size, dtype=acc)
        sizes = np.diff(layout.starts)
    else:
        neg_counts = counts * layout.is_neg
        cp = counts[layout.pos_index].astype(acc)
        if sizes is None:
            sizes = _segment_sums(counts, layout.starts)
    cum_neg = np.empty(n + 1, dtype=acc)
    cum_neg[0] = 0
    np.cumsum(neg_counts, out=cum_neg[1:], dtype=acc)
    if layout.tied:
        below2 = cum_neg[layout.block_lo] + cum_neg[layout.block_hi]
    else:
        below2 = cum_neg[layout.pos_index]
        below2 += below2
    cum_cp = np.empty(cp.size + 1, dtype=np.int64)
    cum_cp[0] = 0
    np.cumsum(cp, out=cum_cp[1:])
    weighted = np.empty(cp.size + 1, dtype=np.int64)
    weighted[0] = 0
    np.cumsum(np.multiply(cp, below2, dtype=np.int64), out=weighted[1:])
    ps = layout.pos_starts
    n_pos = cum_cp[ps[1:]] - cum_cp[ps[:-1]]
    # Negatives below a positive were counted from the start of the layout; remove the earlier strata's.
    mw2 = (weighted[ps[1:]] - weighted[ps[:-1]]) - 2 * n_pos * cum_neg[layout.starts[:-1]].astype(np.int64)
    return Counts(n=np.asarray(sizes, dtype=np.int64), n_pos=n_pos, mw2=mw2, cum_neg=cum_neg, cum_pos_at=cum_cp)


def confusion_at(layout: Layout, stats: Counts, threshold: float, strict: bool = False) -> dict[str, np.ndarray]:
    """Per-stratum TP/FP/TN/FN for ``ŷ = 1[p ≥ t]`` (or ``p > t``) from the cumulative counts."""
    cuts = layout.cut_positions(threshold, strict)
    starts = layout.starts[:-1]
    tn = stats.cum_neg[cuts].astype(np.int64) - stats.cum_neg[starts]
    pos_cut = np.searchsorted(layout.pos_index, cuts)
    pos_start = layout.pos_starts[:-1]
    fn = stats.cum_pos_at[pos_cut] - stats.cum_pos_at[pos_start]
    return {"tp": stats.n_pos - fn, "fn": fn, "tn": tn, "fp": stats.n_neg - tn}


def segment_sums(values: np.ndarray, bounds: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Σ weight·value over consecutive segments ``[bounds[k], bounds[k+1])`` for each column of ``values``.

    One BLAS matrix–vector product per segment reads ``values`` once and allocates nothing of size n.
    """
    out = np.zeros((bounds.size - 1, values.shape[1]))
    for k in range(bounds.size - 1):
        lo, hi = bounds[k], bounds[k + 1]
        if hi > lo:
            out[k] = values[lo:hi].sum(axis=0) if weights is None else weights[lo:hi] @ values[lo:hi]
    return out
