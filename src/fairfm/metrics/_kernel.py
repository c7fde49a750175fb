"""The stratified bootstrap in compiled passes (numba), exact like the numpy kernels of :mod:`_layout`.

Cells are samples — or, when scores tie a lot, runs of identical (stratum, score, label) — ordered by (stratum,
score). Four resamples at a time, per resample and pass:

1. **Draw.** Poisson(1) counts per sample by inverse CDF from one random byte (refined when the byte straddles a
   CDF step), conditioned exactly on each resampling stratum's size: a uniformly random subset of the surplus
   draws is removed (found through running sums every 64 samples) or the missing draws are added to uniform
   samples — the multinomial of resampling with replacement, as in :mod:`_resample`. The random stream is SFC64,
   continuing numpy's ``SFC64(seed)`` state, so resample b depends on its seed only, not on threads or chunking.
2. **Groups.** One run per stratum with running sums in registers: draws, positives, twice the Mann–Whitney
   numerator and count-weighted sums of p, BCE and Brier terms, recorded at the threshold and calibration-bin
   edges (each a position in the run, as scores are sorted). The run is branch-free (labels and zero counts are
   unpredictable branches); the few blocks of equal scores are corrected afterwards so that ties count ½.
3. **Overall AUC.** The cells in overall score order (a merge of the strata's runs).

Four resamples share every load of the cells' data and interleave four chains of running sums, which the CPU
overlaps. Integers stay integers, so each resample's AUC equals sklearn's on the same resampled indices.

Hand-written because no maintained library computes weighted, tie-exact per-group AUCs for a thousand resamples;
compiled because the numpy version (:mod:`_layout`, :mod:`_resample`) needs ~20 array passes per resample and
cannot be fused, and these passes are the whole cost of ``evaluate(..., bootstrap=1000)`` on large data.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numba
import numpy as np
from numba.cpython.unsafe.numbers import trailing_zeros

from fairfm.metrics import _resample as R


def _jit(func):
    """``njit`` with an on-disk cache (compiling takes seconds, loading a fraction of one). numba writes the cache
    to ``$NUMBA_CACHE_DIR`` when set, else to ``__pycache__`` next to this file, else to the user cache directory;
    where no location is writable it refuses ``cache=True``, and the kernel is then compiled once per process."""
    try:
        return numba.njit(cache=True, nogil=True)(func)
    except RuntimeError:
        return numba.njit(cache=False, nogil=True)(func)


_U1 = np.uint64(1)
_U3 = np.uint64(3)
_U8 = np.uint64(8)
_U11 = np.uint64(11)
_U24 = np.uint64(24)
_U32 = np.uint64(32)
_U40 = np.uint64(40)
_U255 = np.uint64(255)
_LOW32 = np.uint64(0xFFFFFFFF)
_TWO32 = np.uint64(1 << 32)
_LANES = 4  # resamples per pass over the data (benchmarked: 4 and 8)
_MAX_STRATUM = 1 << 28  # draws per stratum (≤ 13 per sample) must stay below 2^32 for the 32-bit uniforms
_BYTE_COUNT = R._BYTE_TABLE.astype(np.int64)  # Poisson(1) count per leading byte, 255 where ambiguous
_STEPS = R._T.astype(np.uint64)  # u ≥ T_k ⇔ count ≥ k, on 32-bit uniforms
# The ambiguous bytes, each repeated in the eight bytes of a word (to find them in a word at once), and the count
# at the start of each byte's interval (the refined count is this or more).
_AMBIGUOUS_WORDS = np.flatnonzero(R._BYTE_TABLE == 255).astype(np.uint64) * np.uint64(0x0101010101010101)
_FIRST_COUNT = np.searchsorted(_STEPS, np.arange(256, dtype=np.uint64) << np.uint64(24), side="right").astype(np.int64)
_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)


@_jit
def _next(state):
    """One output of SFC64 (numpy's ``SFC64`` algorithm, state a, b, c, counter)."""
    a, b, c, w = state[0], state[1], state[2], state[3]
    out = a + b + w
    state[3] = w + _U1
    state[0] = b ^ (b >> _U11)
    state[1] = c + (c << _U3)
    state[2] = ((c << _U24) | (c >> _U40)) + out
    return out


@_jit
def _below(state, n):
    """A uniform integer in [0, n), n < 2^32, without bias (Lemire's multiply-and-reject)."""
    bound = np.uint64(n)
    m = (_next(state) >> _U32) * bound
    if (m & _LOW32) < bound:
        reject = (_TWO32 - bound) % bound
        while (m & _LOW32) < reject:
            m = (_next(state) >> _U32) * bound
    return np.int64(m >> _U32)


@_jit
def _distinct_sorted(state, k, total, out):
    """``out[:k]`` = k distinct uniform integers of [0, total), sorted: i.i.d. draws with repeats dropped and
    topped up. The procedure commutes with every relabelling of [0, total), so the set is uniform."""
    filled = 0
    while filled < k:
        for i in range(filled, k):
            out[i] = _below(state, total)
        out[:k].sort()
        filled = 1
        for i in range(1, k):
            if out[i] != out[filled - 1]:
                out[filled] = out[i]
                filled += 1


@_jit
def _refine(state, byte, steps):
    """The Poisson(1) count of a byte that straddles a CDF step, from 24 more random bits."""
    u = (byte << _U24) | (_next(state) >> _U40)
    v = 0
    while v < steps.size and u >= steps[v]:
        v += 1
    return v


@_jit
def _fill(state, out, lo, hi, byte_count, steps, checkpoints):
    """``out[lo:hi]`` = i.i.d. Poisson(1) counts, one random byte each, eight per random word; returns their sum.
    ``checkpoints[t]`` (when not empty) receives the sum of ``out[lo:lo + 64 t]``."""
    total = 0
    i = lo
    record = checkpoints.size > 0
    while i + 8 <= hi:
        if record and ((i - lo) & 63) == 0:
            checkpoints[(i - lo) >> 6] = total
        word = _next(state)
        for j in range(8):
            byte = (word >> np.uint64(8 * j)) & _U255
            v = byte_count[byte]
            if v == 255:
                v = _refine(state, byte, steps)
            out[i + j] = v
            total += v
        i += 8
    if record and i < hi and ((i - lo) & 63) == 0:
        checkpoints[(i - lo) >> 6] = total
    if i < hi:
        word = _next(state)
        for j in range(hi - i):
            byte = (word >> np.uint64(8 * j)) & _U255
            v = byte_count[byte]
            if v == 255:
                v = _refine(state, byte, steps)
            out[i + j] = v
            total += v
    return total


@_jit
def _fill_lane(state, out, lo, hi, byte_count, steps, checkpoints):
    """:func:`_fill` of one stratum of single samples, with the generator state in registers and the eight bytes
    of each word looked up unconditionally; a word holding a byte that straddles a CDF step (15% of words) then
    refines those bytes in order, so the stream is consumed exactly as :func:`_fill` consumes it. Returns the sum;
    ``checkpoints[t]`` receives the sum of ``out[lo:lo + 64 t]`` (summed afterwards, in a loop that vectorises)."""
    a, b, c, w = state[0], state[1], state[2], state[3]
    out = out[lo:hi]  # indices from 0: no negative-index checks
    n = hi - lo
    for i in range(0, n - 7, 8):
        word = a + b + w  # _next, inlined on registers
        w = w + _U1
        a = b ^ (b >> _U11)
        b = c + (c << _U3)
        c = ((c << _U24) | (c >> _U40)) + word
        ambiguous = 0
        for j in range(8):
            v = byte_count[(word >> np.uint64(8 * j)) & _U255]
            out[i + j] = v
            ambiguous |= v
        if ambiguous & 128:  # only the ambiguous entry (255) has this bit
            # Bit 8j + 7 of ``where`` marks byte j as ambiguous (an exact zero-byte test of word ^ repeated byte):
            # the ambiguous bytes are refined in ascending order without a branch per byte.
            where = np.uint64(0)
            for m in range(_AMBIGUOUS_WORDS.size):
                x = word ^ _AMBIGUOUS_WORDS[m]
                where |= ~(((x & _LOW7) + _LOW7) | x | _LOW7)
            while where:
                j = trailing_zeros(where) >> 3
                where &= where - _U1
                byte = (word >> (np.uint64(8) * j)) & _U255
                refined = a + b + w
                w = w + _U1
                a = b ^ (b >> _U11)
                b = c + (c << _U3)
                c = ((c << _U24) | (c >> _U40)) + refined
                out[i + j] = _count_of(byte, refined, steps)
    i = n - (n & 7)
    if i < n:
        word = a + b + w
        w = w + _U1
        a = b ^ (b >> _U11)
        b = c + (c << _U3)
        c = ((c << _U24) | (c >> _U40)) + word
        for j in range(n - i):
            byte = (word >> np.uint64(8 * j)) & _U255
            v = byte_count[byte]
            if v == 255:
                refined = a + b + w
                w = w + _U1
                a = b ^ (b >> _U11)
                b = c + (c << _U3)
                c = ((c << _U24) | (c >> _U40)) + refined
                v = _count_of(byte, refined, steps)
            out[i + j] = v
    state[0], state[1], state[2], state[3] = a, b, c, w
    total = 0
    for t in range((n + 63) >> 6):
        checkpoints[t] = total
        block = out[t << 6:min(n, (t + 1) << 6)]
        for j in range(block.size):
            total += np.int64(block[j])
    return total


@_jit
def _count_of(byte, word, steps):
    """:func:`_refine` given the next random word, from the count where the byte's interval starts (one step
    falls inside the intervals of all ambiguous bytes but the last: decided without a loop)."""
    u = (byte << _U24) | (word >> _U40)
    v = _FIRST_COUNT[byte]
    if v < steps.size:
        v += np.int64(u >= steps[v])
        while v < steps.size and u >= steps[v]:
            v += 1
    return v


@_jit
def _condition_run(state, counts, lo, hi, total, checkpoints):
    """Condition the counts of one contiguous stratum of single samples on hi − lo draws: the surplus draws'
    slots are found through the running sums every 64 samples (no pass over the stratum); a missing draw goes
    to a uniform sample."""
    m = hi - lo
    surplus = total - m
    if surplus > 0:
        slots = np.empty(surplus, dtype=np.int64)
        _distinct_sorted(state, surplus, total, slots)
        n_checks = (m + 63) >> 6
        where = np.empty(surplus, dtype=np.int64)
        for j in range(surplus):  # locate every slot first: removals must not shift the later slots
            a, b = 0, n_checks - 1  # the last checkpoint t with checkpoints[t] <= slot
            while a < b:
                mid = (a + b + 1) >> 1
                if checkpoints[mid] <= slots[j]:
                    a = mid
                else:
                    b = mid - 1
            i = lo + (a << 6)
            run = checkpoints[a] + counts[i]
            while run <= slots[j]:
                i += 1
                run += counts[i]
            where[j] = i
        for j in range(surplus):
            counts[where[j]] -= 1
    elif surplus < 0:
        for _ in range(-surplus):
            i = lo + _below(state, m)
            if counts[i] == 255:  # uint8 counts: ≥ 243 extra draws on one sample, never seen in practice
                raise OverflowError("resample count exceeds 255")
            counts[i] += 1


@_jit
def _draw(state, sizes, unit, cell_starts, members, member_off, contiguous, counts, scratch, checkpoints,
          byte_count, steps):  # fmt: skip
    """One resample's counts per cell: Poisson(1) per sample (summed per cell through ``scratch``, one entry
    per sample), then each resampling stratum (``members[member_off[r]:member_off[r+1]]``, cells in layout
    order; cells ``member_off[r]:member_off[r+1]`` when ``contiguous``) conditioned on its number of samples:
    a uniformly random subset of the surplus draws is removed, or the missing draws are added to uniformly
    drawn samples of the stratum (a cell receives one with probability proportional to its size)."""
    n_strata = member_off.size - 1
    totals = np.zeros(n_strata, dtype=np.int64)
    if unit and contiguous:  # members[i] == i: draw and condition stratum by stratum
        for r in range(n_strata):
            lo, hi = member_off[r], member_off[r + 1]
            total = _fill(state, counts, lo, hi, byte_count, steps, checkpoints)
            _condition_run(state, counts, lo, hi, total, checkpoints)
        return
    no_checkpoints = checkpoints[:0]
    if unit:
        _fill(state, counts, 0, counts.size, byte_count, steps, no_checkpoints)
    else:
        _fill(state, scratch, 0, scratch.size, byte_count, steps, no_checkpoints)
        for k in range(counts.size):
            c = 0
            for i in range(cell_starts[k], cell_starts[k + 1]):
                c += scratch[i]
            counts[k] = c
    for r in range(n_strata):
        for i in range(member_off[r], member_off[r + 1]):
            totals[r] += counts[i if contiguous else members[i]]
    for r in range(n_strata):
        lo, hi = member_off[r], member_off[r + 1]
        total = totals[r]
        if unit:
            size = hi - lo
        else:
            size = 0
            for i in range(lo, hi):
                size += sizes[i if contiguous else members[i]]
        surplus = total - size
        if surplus > 0:
            slots = np.empty(surplus, dtype=np.int64)
            _distinct_sorted(state, surplus, total, slots)
            j = 0
            run = 0
            for i in range(lo, hi):  # the draw with slot s lies in the cell where the running total passes s
                k = i if contiguous else members[i]
                run += counts[k]
                while j < surplus and slots[j] < run:
                    counts[k] -= 1
                    j += 1
                if j == surplus:
                    break
        elif surplus < 0:
            need = -surplus
            targets = np.empty(need, dtype=np.int64)
            for j in range(need):
                targets[j] = _below(state, size)
            targets.sort()
            j = 0
            run = 0
            for i in range(lo, hi):
                k = i if contiguous else members[i]
                run += 1 if unit else sizes[k]
                while j < need and targets[j] < run:
                    if unit and counts[k] == 255:
                        raise OverflowError("resample count exceeds 255")
                    counts[k] += 1
                    j += 1
                if j == need:
                    break


def _jit_fastmath(func):
    """:func:`_jit` allowing floating-point reassociation, so that sums vectorise (their rounding then depends
    on the summation order, which is fixed: results still do not depend on threads)."""
    try:
        return numba.njit(cache=True, nogil=True, fastmath=True)(func)
    except RuntimeError:
        return numba.njit(cache=False, nogil=True, fastmath=True)(func)


@_jit_fastmath
def _weighted_sums(counts, yflag, p32, bce32, lo, hi, out):
    """``out[r]`` += (Σ c·p, Σ c·BCE term, Σ c·(p − y)²) over cells [lo, hi) for the 4 resamples ``counts[r]``:
    branch-free, on contiguous rows indexed from 0 (no negative-index checks), so that it vectorises."""
    lane0, lane1, lane2, lane3 = counts[0, lo:hi], counts[1, lo:hi], counts[2, lo:hi], counts[3, lo:hi]
    p32, bce32, yflag = p32[lo:hi], bce32[lo:hi], yflag[lo:hi]
    cp0 = 0.0
    bce0 = 0.0
    brier0 = 0.0
    cp1 = 0.0
    bce1 = 0.0
    brier1 = 0.0
    cp2 = 0.0
    bce2 = 0.0
    brier2 = 0.0
    cp3 = 0.0
    bce3 = 0.0
    brier3 = 0.0
    for k in range(hi - lo):
        pv = np.float64(p32[k])
        bv = np.float64(bce32[k])
        d = pv - np.float64(yflag[k] & 1)
        d2 = d * d
        c0 = np.float64(lane0[k])
        cp0 += c0 * pv
        bce0 += c0 * bv
        brier0 += c0 * d2
        c1 = np.float64(lane1[k])
        cp1 += c1 * pv
        bce1 += c1 * bv
        brier1 += c1 * d2
        c2 = np.float64(lane2[k])
        cp2 += c2 * pv
        bce2 += c2 * bv
        brier2 += c2 * d2
        c3 = np.float64(lane3[k])
        cp3 += c3 * pv
        bce3 += c3 * bv
        brier3 += c3 * d2
    out[0, 0] += cp0
    out[0, 1] += bce0
    out[0, 2] += brier0
    out[1, 0] += cp1
    out[1, 1] += bce1
    out[1, 2] += brier1
    out[2, 0] += cp2
    out[2, 1] += bce2
    out[2, 2] += brier2
    out[3, 0] += cp3
    out[3, 1] += bce3
    out[3, 2] += brier3


@_jit
def _tie_corrections(counts, flag, blocks, source, gather, lane_mw):
    """Add to ``lane_mw[r]`` (twice the Mann–Whitney numerator of lane r, summed as if no scores tied) what the
    blocks of equal scores change: a positive of a block sees each of the block's negatives at ½ (1 in twice
    the numerator), not only those before it at 1 (2). ``blocks`` (M, 2): [start, end) of each block in the walk;
    the walk's i-th cell is ``counts[:, source[i]]`` when ``gather``, else ``counts[:, i]``."""
    lane0, lane1, lane2, lane3 = counts[0], counts[1], counts[2], counts[3]
    for m in range(blocks.shape[0]):
        # Per lane: the block's positives and negatives, and Σ over its positives of count × negatives earlier
        # in the block; branch-free, the four lanes together (blocks are common when 5e6 float32 scores collide).
        pos0 = neg0 = before0 = 0
        pos1 = neg1 = before1 = 0
        pos2 = neg2 = before2 = 0
        pos3 = neg3 = before3 = 0
        for i in range(blocks[m, 0], blocks[m, 1]):
            j = np.uint64(source[i]) if gather else np.uint64(i)
            positive = -np.int64(flag[i] & 1)
            c = np.int64(lane0[j])
            cy = c & positive
            before0 += cy * neg0
            pos0 += cy
            neg0 += c - cy
            c = np.int64(lane1[j])
            cy = c & positive
            before1 += cy * neg1
            pos1 += cy
            neg1 += c - cy
            c = np.int64(lane2[j])
            cy = c & positive
            before2 += cy * neg2
            pos2 += cy
            neg2 += c - cy
            c = np.int64(lane3[j])
            cy = c & positive
            before3 += cy * neg3
            pos3 += cy
            neg3 += c - cy
        lane_mw[0] += pos0 * neg0 - 2 * before0
        lane_mw[1] += pos1 * neg1 - 2 * before1
        lane_mw[2] += pos2 * neg2 - 2 * before2
        lane_mw[3] += pos3 * neg3 - 2 * before3


@_jit
def _resamples(states, sizes, unit, cell_starts, members, member_off, contiguous, stratum_bounds, yflag, p32, bce32,
               snap_at, overall_source, overall_flag, tie_blocks, overall_tie_blocks, out_int, out_sums, out_snap_int,
               out_snap_cp, out_overall, emit, counts, scratch, checkpoints):  # fmt: skip
    """Every statistic of resamples ``states[b]`` into ``out_*[b]``, 4 resamples per pass over the cells
    (``states`` has a multiple of 4 rows); ``emit`` (K,) receives resample 0's final counts when not empty.

    4 independent resamples per pass share every load of the cells' data and interleave 4 chains of
    running sums, which the CPU overlaps (one resample alone is bound by the latency of its running sums).
    Work buffers: ``counts`` (4, K), one row per resample (contiguous rows vectorise the weighted sums) — uint8 when cells are single samples (a quarter of the memory traffic),
    else int32 —, ``scratch`` (samples,) uint8 when cells are not single samples, ``checkpoints`` (4, K/64 + 2).

    Cells are ordered by (stratum, score), so each stratum is one run with running sums in registers;
    ``snap_at[s]`` lists the cell positions (ascending, inside stratum s's run) where the running sums are
    recorded. ``yflag`` = label + 2 × (the next cell has the same score and stratum); ``tie_blocks`` (M, 2) are
    the [start, end) runs of equal scores (:func:`tie_blocks_of`), where :func:`_tie_corrections` makes tied
    pairs count ½ (twice the numerator: 1). The overall AUC walks all
    cells in score order: ``overall_source[i]`` is the layout position of the i-th (a merge of the strata's
    sorted runs, so counts are read as S ascending streams); ``overall_flag``: label + 2 × next ties, and
    ``overall_tie_blocks`` its runs of equal scores.
    """
    K = yflag.size
    S = stratum_bounds.size - 1
    Q = snap_at.shape[1]
    sums = np.zeros((4, 3))
    lane_mw = np.zeros(4, dtype=np.int64)
    for b0 in range(0, states.shape[0], 4):
        lane_states = states[b0:b0 + 4].copy()
        # The usual case (single samples resampled within groups) draws each group just before its run, while
        # its counts are in the cache (see _fill_lane; the same counts as _draw); otherwise everything first.
        fused = unit and contiguous
        if not fused:
            for r in range(4):
                _draw(lane_states[r], sizes, unit, cell_starts, members, member_off, contiguous, counts[r],
                      scratch, checkpoints[r], _BYTE_COUNT, _STEPS)  # fmt: skip
        tb = 0
        for s in range(S):
            if fused:
                lo, hi = member_off[s], member_off[s + 1]
                for r in range(4):
                    total = _fill_lane(lane_states[r], counts[r], lo, hi, _BYTE_COUNT, _STEPS, checkpoints[r])
                    _condition_run(lane_states[r], counts[r], lo, hi, total, checkpoints[r])
            k = stratum_bounds[s]
            pos0 = 0
            neg0 = 0
            mw0 = 0
            pos1 = 0
            neg1 = 0
            mw1 = 0
            pos2 = 0
            neg2 = 0
            mw2 = 0
            pos3 = 0
            neg3 = 0
            mw3 = 0
            sums[:] = 0.0
            for q in range(Q + 1):
                end = snap_at[s, q] if q < Q else stratum_bounds[s + 1]
                _weighted_sums(counts, yflag, p32, bce32, k, end, sums)
                lane0, lane1, lane2, lane3 = counts[0, k:end], counts[1, k:end], counts[2, k:end], counts[3, k:end]
                flags = yflag[k:end]
                for i in range(end - k):  # branch-free (labels and zero counts are unpredictable); ties below
                    positive = -np.int64(flags[i] & 1)  # all ones for a positive
                    c = np.int64(lane0[i])
                    cy = c & positive
                    mw0 += cy * neg0
                    pos0 += cy
                    neg0 += c - cy
                    c = np.int64(lane1[i])
                    cy = c & positive
                    mw1 += cy * neg1
                    pos1 += cy
                    neg1 += c - cy
                    c = np.int64(lane2[i])
                    cy = c & positive
                    mw2 += cy * neg2
                    pos2 += cy
                    neg2 += c - cy
                    c = np.int64(lane3[i])
                    cy = c & positive
                    mw3 += cy * neg3
                    pos3 += cy
                    neg3 += c - cy
                k = end
                if q < Q:
                    out_snap_int[b0 + 0, q, s, 0] = neg0
                    out_snap_int[b0 + 0, q, s, 1] = pos0
                    out_snap_cp[b0 + 0, q, s] = sums[0, 0]
                    out_snap_int[b0 + 1, q, s, 0] = neg1
                    out_snap_int[b0 + 1, q, s, 1] = pos1
                    out_snap_cp[b0 + 1, q, s] = sums[1, 0]
                    out_snap_int[b0 + 2, q, s, 0] = neg2
                    out_snap_int[b0 + 2, q, s, 1] = pos2
                    out_snap_cp[b0 + 2, q, s] = sums[2, 0]
                    out_snap_int[b0 + 3, q, s, 0] = neg3
                    out_snap_int[b0 + 3, q, s, 1] = pos3
                    out_snap_cp[b0 + 3, q, s] = sums[3, 0]
            ties = tb
            while tb < tie_blocks.shape[0] and tie_blocks[tb, 0] < stratum_bounds[s + 1]:
                tb += 1
            lane_mw[0] = 2 * mw0
            lane_mw[1] = 2 * mw1
            lane_mw[2] = 2 * mw2
            lane_mw[3] = 2 * mw3
            _tie_corrections(counts, yflag, tie_blocks[ties:tb], overall_source, False, lane_mw)
            out_int[b0 + 0, s, 0] = pos0 + neg0
            out_int[b0 + 0, s, 1] = pos0
            out_int[b0 + 1, s, 0] = pos1 + neg1
            out_int[b0 + 1, s, 1] = pos1
            out_int[b0 + 2, s, 0] = pos2 + neg2
            out_int[b0 + 2, s, 1] = pos2
            out_int[b0 + 3, s, 0] = pos3 + neg3
            out_int[b0 + 3, s, 1] = pos3
            for r in range(4):
                out_int[b0 + r, s, 2] = lane_mw[r]
                for j in range(3):
                    out_sums[b0 + r, s, j] = sums[r, j]
        if emit.size:
            emit[:] = counts[0]
        neg0 = 0
        mw0 = 0
        neg1 = 0
        mw1 = 0
        neg2 = 0
        mw2 = 0
        neg3 = 0
        mw3 = 0
        for i in range(K):  # the same sums over all cells in score order
            positive = -np.int64(overall_flag[i] & 1)
            j = np.uint64(overall_source[i])  # unsigned: no negative-index check
            c = np.int64(counts[0, j])
            cy = c & positive
            mw0 += cy * neg0
            neg0 += c - cy
            c = np.int64(counts[1, j])
            cy = c & positive
            mw1 += cy * neg1
            neg1 += c - cy
            c = np.int64(counts[2, j])
            cy = c & positive
            mw2 += cy * neg2
            neg2 += c - cy
            c = np.int64(counts[3, j])
            cy = c & positive
            mw3 += cy * neg3
            neg3 += c - cy
        lane_mw[0] = 2 * mw0
        lane_mw[1] = 2 * mw1
        lane_mw[2] = 2 * mw2
        lane_mw[3] = 2 * mw3
        _tie_corrections(counts, overall_flag, overall_tie_blocks, overall_source, True, lane_mw)
        for r in range(4):
            out_overall[b0 + r] = lane_mw[r]


@dataclass
class ScoreCells:
    """One attribute's samples as cells of identical (stratum, score, label), ordered by (stratum, score)."""

    order: np.ndarray  # sample indices sorted so that cells are contiguous runs
    cell_starts: np.ndarray  # (K+1,) cell boundaries in ``order`` (empty when cells are samples)
    stratum_bounds: np.ndarray  # (S+1,) cell boundaries of strata
    y: np.ndarray  # (K,) uint8 label
    yflag: np.ndarray  # (K,) uint8 label + 2 × (next cell ties in stratum and score)
    p: np.ndarray  # (K,) float64 score
    p32: np.ndarray  # (K,) float32 score (resample sums)
    bce32: np.ndarray  # (K,) float32 BCE term
    sizes: np.ndarray  # (K,) int64 samples per cell (empty when cells are samples)
    unit: bool  # every cell is one sample
    overall_source: np.ndarray  # (K,) int32: layout position of each cell in ascending score order
    overall_flag: np.ndarray  # (K,) label + 2 × (next cell in that order has the same score)

    @classmethod
    def build(cls, y: np.ndarray, p: np.ndarray, strata: np.ndarray, n_strata: int, layout_order: np.ndarray,
              bce_of: Callable[[np.ndarray, np.ndarray], np.ndarray], by_score: np.ndarray | None = None,
              in_order: tuple | None = None, max_fraction: float = 0.6,
              sample_bce32: np.ndarray | None = None) -> "ScoreCells":  # fmt: skip
        """``layout_order``: sample indices sorted by (stratum, score); ``bce_of(y, p)``: BCE terms;
        ``by_score``: ``argsort(p)`` when known; ``in_order``: (y, p, stratum starts) in ``layout_order``
        when known (shared, not copied); ``sample_bce32``: the float32 BCE terms in ``layout_order`` when known
        (used when cells are samples)."""
        order = layout_order
        if in_order is not None:
            ys, ps, bounds = in_order
        else:
            ys, ps = y[order], p[order]
            bounds = np.searchsorted(strata[order], np.arange(n_strata + 1))
        n = ps.size
        new_block = np.ones(n, dtype=bool)  # a new (stratum, score) block starts here
        new_block[1:] = ps[1:] != ps[:-1]
        inner = bounds[1:-1]
        new_block[inner[inner < n]] = True
        cell_start = None
        if np.count_nonzero(new_block) < max_fraction * n:
            # Cells pay off when they are much fewer than samples (scores with few decimals), else each sample is
            # a cell. A tie block holds two cells when it holds both labels.
            block_starts = np.flatnonzero(new_block)
            block_pos = np.add.reduceat(ys, block_starts, dtype=np.int64)
            block_size = np.diff(np.append(block_starts, n))
            n_cells = block_starts.size + np.count_nonzero((block_pos > 0) & (block_pos < block_size))
            if n_cells < max_fraction * n:
                # Within a tie block, positives after negatives, so that identical samples form one cell.
                perm = np.argsort(np.cumsum(new_block, dtype=np.int64) * 2 + ys, kind="stable")
                order = order[perm]
                cell_start = new_block.copy()  # blocks keep their positions under ``perm``
                ys = y[order]
                cell_start[1:] |= ys[1:] != ys[:-1]
        if cell_start is None:  # cells are samples: no copies
            starts = None
            first, cy, cp, stratum_bounds = order, ys.astype(np.uint8, copy=False), ps, bounds
            K = n
        else:
            starts = np.flatnonzero(cell_start)
            first = order[starts]
            cy = ys[starts].astype(np.uint8)
            cp = p[first].astype(np.float64)
            stratum_bounds = np.searchsorted(strata[first], np.arange(n_strata + 1))
            K = starts.size
        cp = cp.astype(np.float64, copy=False)
        ties_next = np.zeros(K, dtype=np.uint8)
        ties_next[:-1] = ~(new_block[1:] if starts is None else new_block[starts[1:]])
        if starts is None and by_score is not None:  # cells are samples: reuse the engine's sort
            layout_position = np.empty(n, dtype=np.int32)
            layout_position[order] = np.arange(n, dtype=np.int32)
            by_score = layout_position[by_score]
            del layout_position
        else:
            by_score = np.argsort(cp, kind="stable")
        o_ties = np.zeros(K, dtype=np.uint8)
        sorted_p = cp[by_score]
        o_ties[:-1] = sorted_p[1:] == sorted_p[:-1]
        del sorted_p
        unit = starts is None
        return cls(order=order, cell_starts=np.empty(0, np.int64) if unit else np.append(starts, n).astype(np.int64),
                   stratum_bounds=np.asarray(stratum_bounds, dtype=np.int64), y=cy,
                   yflag=cy + 2 * ties_next, p=cp, p32=cp.astype(np.float32),
                   bce32=sample_bce32 if unit and sample_bce32 is not None else
                   _chunked(lambda lo, hi: bce_of(cy[lo:hi].astype(np.float64), cp[lo:hi]), K),
                   sizes=np.empty(0, np.int64) if unit else np.diff(np.append(starts, n)).astype(np.int64), unit=unit,
                   overall_source=by_score.astype(np.int32), overall_flag=cy[by_score] + 2 * o_ties)  # fmt: skip

    def positions(self, edges: np.ndarray, strict: bool) -> np.ndarray:
        """(S, len(edges)): per stratum, the first cell with p ≥ edge (p > edge when ``strict``)."""
        side = "right" if strict else "left"
        bounds = self.stratum_bounds
        rows = [bounds[s] + np.searchsorted(self.p[bounds[s]:bounds[s + 1]], edges, side=side)
                for s in range(bounds.size - 1)]  # fmt: skip
        return np.array(rows, dtype=np.int64).reshape(bounds.size - 1, edges.size)

    def resampling_strata(self, stratify: str) -> tuple[np.ndarray, np.ndarray]:
        """(members, offsets): the cells of each resampling stratum, in layout order (no members when the
        strata are the contiguous groups)."""
        S = self.stratum_bounds.size - 1
        if stratify == "group":  # contiguous: the kernel reads no members
            return np.empty(0, dtype=np.int64), self.stratum_bounds
        if stratify == "group_class":
            parts = []
            for s in range(S):
                idx = np.arange(self.stratum_bounds[s], self.stratum_bounds[s + 1])
                parts += [idx[self.y[idx] == 1], idx[self.y[idx] == 0]]
        elif stratify == "class":
            parts = [np.flatnonzero(self.y == 1), np.flatnonzero(self.y == 0)]
        else:
            raise ValueError(f"unknown stratification {stratify!r}")
        offsets = np.concatenate([[0], np.cumsum([part.size for part in parts])]).astype(np.int64)
        return np.concatenate(parts).astype(np.int64), offsets


def _chunked(compute: Callable[[int, int], np.ndarray], n: int, chunk: int = 1 << 20) -> np.ndarray:
    """``compute(lo, hi)`` for consecutive chunks, into one float32 array: bounds the float64 temporaries."""
    out = np.empty(n, dtype=np.float32)
    for lo in range(0, n, chunk):
        out[lo:lo + chunk] = compute(lo, min(lo + chunk, n))
    return out


def tie_blocks_of(flag: np.ndarray) -> np.ndarray:
    """(M, 2) [start, end) of every run of cells whose flag says "the next cell ties" (bit 2), with that next cell."""
    ties = np.zeros(flag.size + 1, dtype=bool)
    ties[1:] = (flag & 2) != 0
    starts = np.flatnonzero(ties[1:] & ~ties[:-1])
    ends = np.flatnonzero(~ties[1:] & ties[:-1]) + 1
    return np.stack([starts, ends], axis=1).astype(np.int64)


def generator_states(seeds: list[np.random.SeedSequence]) -> np.ndarray:
    """(B, 4) SFC64 states, as numpy's ``SFC64(seed)`` initialises them."""
    return np.array([np.random.SFC64(s).state["state"]["state"] for s in seeds], dtype=np.uint64).reshape(-1, 4)


@dataclass
class RawResamples:
    """What the kernel returns for B resamples; :mod:`fairfm.metrics._engine` turns it into statistics."""

    ints: np.ndarray  # (B, S, 3) draws, positives, twice the Mann–Whitney numerator
    sums: np.ndarray  # (B, S, 3) Σ c·p, Σ c·BCE term, Σ c·Brier term
    snap_ints: np.ndarray  # (B, Q, S, 2) negatives and positives drawn below each snapshot point
    snap_cp: np.ndarray  # (B, Q, S) Σ c·p below each snapshot point
    overall_mw2: np.ndarray  # (B,) the overall AUC numerator (×2)


def run(cells: ScoreCells, states: np.ndarray, stratify: str, snap_at: np.ndarray, n_jobs: int = 1,
        emit: np.ndarray | None = None) -> RawResamples:  # fmt: skip
    """The kernel over all resamples, split into ``n_jobs`` threads (the kernel releases the GIL).

    ``snap_at`` (S, Q): per stratum, ascending cell positions where running sums are recorded."""
    members, member_off = cells.resampling_strata(stratify)
    if cells.order.size >= _MAX_STRATUM:  # a stratum holds at most every sample
        raise OverflowError("too many samples for the compiled kernel's 32-bit uniforms")
    B, S, Q = states.shape[0], cells.stratum_bounds.size - 1, snap_at.shape[1]
    padded = -(-B // _LANES) * _LANES  # the kernel takes _LANES resamples at a time; padding is computed, dropped
    states = np.concatenate([states, np.repeat(states[-1:], padded - B, axis=0)])
    raw = RawResamples(np.zeros((padded, S, 3), np.int64), np.zeros((padded, S, 3)),
                       np.zeros((padded, Q, S, 2), np.int64), np.zeros((padded, Q, S)),
                       np.zeros(padded, np.int64))  # fmt: skip
    emit = np.empty(0, dtype=np.int64) if emit is None else emit
    snap_at = np.ascontiguousarray(snap_at, dtype=np.int64)
    tie_blocks, overall_tie_blocks = tie_blocks_of(cells.yflag), tie_blocks_of(cells.overall_flag)

    def chunk(lo: int, hi: int) -> None:
        K = cells.y.size
        counts = np.empty((_LANES, K), dtype=np.uint8 if cells.unit else np.int32)
        scratch = np.empty(0 if cells.unit else int(cells.cell_starts[-1]), dtype=np.uint8)
        checkpoints = np.empty((_LANES, (K >> 6) + 2), dtype=np.int64)
        _resamples(states[lo:hi], cells.sizes, cells.unit, cells.cell_starts, members, member_off, stratify == "group",
                   cells.stratum_bounds, cells.yflag, cells.p32, cells.bce32, snap_at, cells.overall_source,
                   cells.overall_flag, tie_blocks, overall_tie_blocks, raw.ints[lo:hi], raw.sums[lo:hi], raw.snap_ints[lo:hi], raw.snap_cp[lo:hi],
                   raw.overall_mw2[lo:hi], emit, counts, scratch, checkpoints)  # fmt: skip

    bounds = _LANES * np.linspace(0, padded // _LANES, max(1, min(n_jobs, padded // _LANES)) + 1).astype(int)
    if bounds.size == 2:
        chunk(0, padded)
    else:
        with ThreadPoolExecutor(bounds.size - 1) as pool:
            list(pool.map(chunk, bounds[:-1], bounds[1:]))
    return RawResamples(raw.ints[:B], raw.sums[:B], raw.snap_ints[:B], raw.snap_cp[:B], raw.overall_mw2[:B])
