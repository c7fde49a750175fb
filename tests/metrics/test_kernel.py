"""The compiled bootstrap kernel computes exactly what the numpy kernels compute, on the same resample.

Each check draws resamples with :meth:`AttributeEngine.bootstrap` (the compiled kernel), rebuilds resample b's
sample indices with :meth:`AttributeEngine.resample_indices`, and compares every statistic with the numpy path
(:meth:`AttributeEngine._all_stats` on the counts of those indices) and the AUCs with sklearn's.
"""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fairfm.metrics import _engine as E
from fairfm.metrics import _kernel as K


def _counts_in_layout(engine, idx):
    """The numpy path's count vector (over the engine's sample layout) of a list of resampled indices."""
    position = np.empty(engine.layout.n, dtype=np.int64)
    position[engine.layout.order] = np.arange(engine.layout.n)
    return np.bincount(position[idx], minlength=engine.layout.n)


def _check(y, p, codes, n_groups, stratify, rules=None, extra=None, B=9):
    engine = E.AttributeEngine(y, p, codes, n_groups, rules or E.Rules(threshold=0.5), extra)
    assert engine._compiled_kernel() is K
    if stratify != "class":  # the point estimate first, as evaluate() does: the kernel then reuses its BCE terms
        engine.point_stats()
    seeds = np.random.SeedSequence(5)
    groups, overall = engine.bootstrap(B, seeds, stratify, n_jobs=2)
    strata = np.where(codes < 0, n_groups, codes)
    for b in range(B):
        idx = engine.resample_indices(b, B, np.random.SeedSequence(5), stratify)
        assert idx.size == y.size
        if stratify == "group":
            sizes = np.bincount(strata, minlength=n_groups + 1)
            assert np.array_equal(np.bincount(strata[idx], minlength=n_groups + 1), sizes)
        elif stratify == "class":
            assert y[idx].sum() == y.sum()
        else:
            for s in range(n_groups + 1):
                assert y[idx][strata[idx] == s].sum() == y[strata == s].sum()
        g_ref, o_ref = engine._all_stats(engine.samples, _counts_in_layout(engine, idx), None)
        assert list(groups) == list(g_ref) and list(overall) == list(o_ref)
        for key, ref in g_ref.items():
            np.testing.assert_allclose(groups[key][b], ref, rtol=2e-6, atol=1e-9, equal_nan=True, err_msg=key)
        for key, ref in o_ref.items():
            np.testing.assert_allclose(overall[key][b], ref, rtol=2e-6, atol=1e-9, equal_nan=True, err_msg=key)
        # Exact, not close: integer arithmetic up to the final division, as sklearn.
        if len(np.unique(y[idx])) == 2:
            assert abs(overall["auc"][b] - roc_auc_score(y[idx], p[idx])) < 1e-12
        for s in range(n_groups + 1):
            m = strata[idx] == s
            if len(np.unique(y[idx][m])) == 2:
                assert abs(groups["auc"][b, s] - roc_auc_score(y[idx][m], p[idx][m])) < 1e-12
            else:
                assert np.isnan(groups["auc"][b, s])


@pytest.mark.parametrize("stratify", ["group", "group_class", "class"])
@pytest.mark.parametrize("scores", ["distinct", "few-ties", "rounded"])
def test_compiled_kernel_equals_numpy_kernels_and_sklearn(stratify, scores):
    rng = np.random.default_rng(1)
    n = 700
    codes = rng.integers(-1, 4, n)  # -1: unknown stratum
    y = (rng.random(n) < 0.3).astype(np.uint8)
    p = rng.random(n) * 0.8 + 0.2 * y
    if scores == "few-ties":
        p[:60] = p[60:120]  # some ties, too few for cells: samples with tie blocks
    elif scores == "rounded":
        p = np.round(p, 1)  # cells of identical (group, score, label)
    engine = E.AttributeEngine(y, p, codes, 4, E.Rules(threshold=0.5))
    cells = engine._kernel_cells(K)
    assert cells.unit == (scores != "rounded")
    assert (cells.yflag >= 2).any() == (scores != "distinct")
    _check(y, p, codes, 4, stratify)


@pytest.mark.parametrize("stratify", ["group", "group_class", "class"])
def test_edge_cases_one_class_groups_tiny_groups_and_all_tied(stratify):
    rng = np.random.default_rng(2)
    n = 300
    codes = np.repeat([0, 1, 2, 3, 4], [250, 30, 1, 2, 17])
    y = (rng.random(n) < 0.4).astype(np.uint8)
    y[250:280] = 0  # group 1 has negatives only
    y[283:300] = 1  # group 4 has positives only
    y[281:283] = [0, 1]  # group 3: two samples, one of each class
    p = np.round(rng.random(n), 2)
    p[283:300] = 0.5  # group 4: one score
    p[:40] = 0.5  # a tie block spanning groups and classes
    _check(y, p, codes, 5, stratify, B=13)


def test_thresholds_rules_and_extra_thresholds():
    """Strict thresholds, the torch BCE rule and extra thresholds, with scores on the thresholds."""
    rng = np.random.default_rng(3)
    n = 500
    codes = rng.integers(0, 3, n)
    y = (rng.random(n) < 0.5).astype(np.uint8)
    p = np.round(rng.random(n), 2)
    p[:50] = 0.4
    p[50:60] = 0.0
    p[60:70] = 1.0
    _check(y, p, codes, 3, "group", E.Rules(threshold=0.4, strict=True, bce="torch"), {"0.5": 0.5, "0.9": 0.9})


def test_stream_continues_numpys_sfc64():
    seed = np.random.SeedSequence(42)
    state = K.generator_states([seed])[0].copy()
    expected = np.random.SFC64(seed).random_raw(5)
    assert [int(K._next(state)) for _ in range(5)] == [int(v) for v in expected]


def test_large_counts_fall_back_to_the_numpy_kernels(monkeypatch):
    """A uint8 count that would overflow is refused by the kernel; bootstrap then uses the numpy kernels."""
    rng = np.random.default_rng(4)
    y = (rng.random(200) < 0.5).astype(np.uint8)
    p = rng.random(200)
    codes = np.zeros(200, dtype=np.int64)
    engine = E.AttributeEngine(y, p, codes, 1, E.Rules(threshold=0.5))
    calls = []

    def overflow(*args, **kwargs):
        calls.append(1)
        raise OverflowError("resample count exceeds 255")

    monkeypatch.setattr(K, "run", overflow)
    groups, _ = engine.bootstrap(60, np.random.SeedSequence(0), n_jobs=1)
    assert calls and groups["auc"].shape == (60, 2) and np.isfinite(groups["auc"][:, 0]).all()


def _double(x):
    return 2 * x


@pytest.mark.parametrize("decorator", ["_jit", "_jit_fastmath"])
def test_without_a_writable_cache_the_kernel_compiles_in_process(monkeypatch, decorator):
    """numba refuses ``cache=True`` where no cache location is usable; the kernel then compiles per process."""
    import numba.core.config

    jit = getattr(K, decorator)
    assert jit(_double)._cache.__class__.__name__ == "FunctionCache"  # a writable location: cached
    # Only the zip-file locator is allowed: it finds nothing for a plain source file, as no writable place would.
    monkeypatch.setattr(numba.core.config, "CACHE_LOCATOR_CLASSES", "ZipCacheLocator")
    with pytest.raises(RuntimeError, match="no locator"):
        numba.njit(cache=True)(_double)
    compiled = jit(_double)
    assert compiled._cache.__class__.__name__ == "NullCache" and compiled(21) == 42


@pytest.mark.parametrize("size", [1, 7, 8, 64, 65, 1000, 4099, 30011])
def test_the_per_lane_draw_consumes_the_stream_as_the_reference_draw(size):
    """The fast draw of the usual layout (one stratum of single samples, state in registers) gives the counts,
    the running sums every 64 samples and the generator state of :func:`_fill`, byte-straddling refinements
    included — so resamples stay those of the documented stream."""
    for seed in range(3):
        fast_state = K.generator_states([np.random.SeedSequence(seed)])[0].copy()
        ref_state = fast_state.copy()
        fast, ref = np.zeros(size + 3, np.uint8), np.zeros(size + 3, np.uint8)
        fast_checks, ref_checks = np.zeros(size // 64 + 2, np.int64), np.zeros(size // 64 + 2, np.int64)
        fast_total = K._fill_lane(fast_state, fast, 2, 2 + size, K._BYTE_COUNT, K._STEPS, fast_checks)
        ref_total = K._fill(ref_state, ref, 2, 2 + size, K._BYTE_COUNT, K._STEPS, ref_checks)
        assert fast_total == ref_total == int(ref.sum())
        assert np.array_equal(fast, ref) and np.array_equal(fast_checks, ref_checks)
        assert np.array_equal(fast_state, ref_state)
        assert size < 200 or (ref == 0).any() and (ref >= 3).any()


def test_tie_blocks_are_the_runs_of_equal_scores():
    flag = np.array([0, 2, 3, 1, 2, 0, 3, 3, 2, 1, 0], dtype=np.uint8)  # bit 2: the next cell ties
    assert K.tie_blocks_of(flag).tolist() == [[1, 4], [4, 6], [6, 10]]
    assert K.tie_blocks_of(np.zeros(4, np.uint8)).shape == (0, 2)


def test_the_kernel_is_loaded_in_a_background_thread(tmp_path):
    """``preload_compiled_kernel`` loads both kernel specialisations (single-sample and tied-score cells) in a
    daemon thread, once per process, so that the first bootstrap does not wait for numba."""
    import subprocess
    import sys

    script = (
        "from fairfm.metrics import _engine as E\n"
        "E.preload_compiled_kernel(); E.preload_compiled_kernel()\n"
        "assert len(E._PRELOAD) == 1 and E._PRELOAD[0].daemon\n"
        "E._PRELOAD[0].join()\n"
        "from fairfm.metrics import _kernel as K\n"
        "print(sorted(str(signature[-3]) for signature in K._resamples.signatures))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['array(int32, 2d, C)', 'array(uint8, 2d, C)']"


@pytest.mark.parametrize("bce, ece", [("clip", "unit"), ("torch", "range")])
def test_point_estimates_read_values_block_by_block_with_the_same_sums(monkeypatch, bce, ece):
    """The point estimate makes each segment's values when it sums them (no array of 24 bytes a sample) and gets
    exactly the numbers of the materialised values; the kernel then reuses its BCE terms."""
    rng = np.random.default_rng(8)
    y = (rng.random(5000) < 0.4).astype(np.uint8)
    p = np.round(rng.random(5000), 3)
    p[:20], p[20:40] = 0.0, 1.0
    codes = rng.integers(-1, 4, 5000)
    rules = E.Rules(threshold=0.4, bce=bce, ece=ece)
    reference = E.AttributeEngine(y, p, codes, 4, rules)
    expected = reference._all_stats(reference.samples, None, None)  # the materialised (n, 3) values

    engine = E.AttributeEngine(y, p, codes, 4, rules)

    def no_full_array():
        raise AssertionError("the point estimate made the (n, 3) values")

    monkeypatch.setattr(engine.samples, "make_values", no_full_array)
    groups, overall = engine.point_stats()
    for key, value in expected[0].items():
        np.testing.assert_array_equal(groups[key], value, err_msg=key)
    assert overall == expected[1]
    if ece == "unit":
        bce_terms = reference.samples.values[:, 1].astype(np.float32)
        np.testing.assert_array_equal(engine._point_bce32, bce_terms)
