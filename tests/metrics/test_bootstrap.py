"""The bootstrap is exact: each resample's AUC is sklearn's AUC of that same resample; strata sizes are fixed;
results are reproducible by seed and do not depend on threading."""

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

import fairfm.metrics as M
from fairfm.metrics import _engine as E
from fairfm.metrics import _resample as R
from tests.metrics.helpers import make_data


def _engine(seed=0, n=400, ties=True):
    y, p, g = make_data(seed, n=n, n_groups=3, ties=ties)
    codes = np.select([g == "g0", g == "g1", g == "g2"], [0, 1, 2], -1)
    return y, p, codes, E.AttributeEngine(y, p, codes, 3, E.Rules(threshold=0.5))


@pytest.mark.parametrize("ties", [True, False], ids=["tied-scores-cells", "distinct-scores"])
@pytest.mark.parametrize("stratify", ["group", "group_class", "class"])
def test_each_resample_auc_equals_sklearn_on_that_resample(stratify, ties):
    y, p, codes, engine = _engine(ties=ties)
    assert (engine.cells is not None) == ties  # tied scores are summarised as cells
    seeds = np.random.SeedSequence(11)
    groups, overall = engine.bootstrap(25, seeds, stratify, n_jobs=2)
    for b in range(25):
        idx = engine.resample_indices(b, 25, np.random.SeedSequence(11), stratify)
        assert abs(overall["auc"][b] - roc_auc_score(y[idx], p[idx])) < 1e-12
        for k in range(3):
            m = codes[idx] == k
            assert abs(groups["auc"][b, k] - roc_auc_score(y[idx][m], p[idx][m])) < 1e-12
            yp = (p[idx][m] >= 0.5).astype(int)
            tpr = (yp[y[idx][m] == 1]).mean()
            assert abs(groups["tpr"][b, k] - tpr) < 1e-12
        if stratify == "group":
            assert np.array_equal(np.bincount(codes[idx] + 1, minlength=4), np.bincount(codes + 1, minlength=4))
        if stratify == "class":
            assert y[idx].sum() == y.sum() and idx.size == y.size
        if stratify == "group_class":
            for k in range(-1, 3):
                assert y[idx][codes[idx] == k].sum() == y[codes == k].sum()


def test_bootstrap_is_reproducible_by_seed_and_independent_of_threads():
    y, p, g = make_data(5)
    one = M.evaluate(y, p, groups={"g": g}, bootstrap=60, seed=3, n_jobs=1).summary
    two = M.evaluate(y, p, groups={"g": g}, bootstrap=60, seed=3, n_jobs=2).summary
    other = M.evaluate(y, p, groups={"g": g}, bootstrap=60, seed=4, n_jobs=2).summary
    assert one.equals(two)
    assert not np.isclose(one["auc_gap_ci_high"].iloc[0], other["auc_gap_ci_high"].iloc[0])


def test_gap_intervals_are_paired_with_group_intervals():
    """A resample's gap is the spread of that same resample's group AUCs (not of independently drawn ones)."""
    y, p, codes, engine = _engine(2)
    groups, overall = engine.bootstrap(40, np.random.SeedSequence(1), "group", n_jobs=1)
    valid = np.ones(3, dtype=bool)
    summary = E.summarise(groups, overall, valid)
    aucs = groups["auc"][:, :3]
    np.testing.assert_allclose(summary["auc_gap"], aucs.max(axis=1) - aucs.min(axis=1), atol=0)


def test_poisson_counts_follow_poisson_one():
    counts = R.poisson_counts(np.random.default_rng(0), 400_000)
    observed = np.bincount(counts, minlength=7)[:7]
    expected_p = stats.poisson.pmf(np.arange(7), 1.0)
    expected_p[-1] += stats.poisson.sf(6, 1.0)
    observed[-1] += (counts > 6).sum()
    chi2 = stats.chisquare(observed, expected_p * counts.size)
    assert chi2.pvalue > 1e-4


def test_stratified_counts_are_multinomial_in_each_stratum():
    """Pooled over resamples, each item of a stratum of size m is drawn Binomial(m, 1/m) times."""
    strata = R.Strata(n=30, starts=np.array([0, 10, 30]))
    draws = np.array([R.draw_counts(np.random.default_rng(s), strata) for s in range(4000)])
    assert (draws[:, :10].sum(axis=1) == 10).all() and (draws[:, 10:].sum(axis=1) == 20).all()
    # Mean 1 per item and the multinomial variance (m-1)/m.
    np.testing.assert_allclose(draws.mean(axis=0), 1.0, atol=0.06)
    np.testing.assert_allclose(draws[:, :10].var(axis=0).mean(), 0.9, atol=0.05)
    np.testing.assert_allclose(draws[:, 10:].var(axis=0).mean(), 0.95, atol=0.05)


def test_intervals_cover_the_truth_on_simulated_data():
    """On data whose group AUCs are known by construction, the 95% intervals cover them most of the time."""
    from scipy.stats import norm

    hits = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        n = 800
        g = rng.integers(0, 2, n)
        y = rng.integers(0, 2, n)
        shift = np.where(g == 0, 1.0, 0.5)  # AUC = Φ(shift/√2)
        p = rng.normal(size=n) + shift * y
        report = M.evaluate(y, p, groups={"g": g}, bootstrap=200, seed=seed)
        est = report.tasks["task"].attributes["g"].group_metrics["0"]["auc"]
        hits += est.ci_low <= norm.cdf(1.0 / np.sqrt(2)) <= est.ci_high
    assert hits >= 16


def test_resamples_where_a_small_group_loses_a_class_are_reported():
    rng = np.random.default_rng(0)
    n = 300
    g = np.array(["big"] * (n - 6) + ["tiny"] * 6)
    y = rng.integers(0, 2, n)
    y[-6:] = [1, 0, 0, 0, 0, 0]  # one positive: often drawn zero times
    p = rng.random(n)
    report = M.evaluate(y, p, groups={"g": g}, bootstrap=200, seed=0)
    notes = report.tasks["task"].attributes["g"].notes
    assert any("resamples a group lost one class" in note for note in notes)
    fixed = M.evaluate(y, p, groups={"g": g}, bootstrap=200, seed=0, stratify="group_class")
    assert not fixed.tasks["task"].attributes["g"].notes


@pytest.mark.parametrize("profile", [None, "fairmedfm"])
def test_cells_give_the_same_statistics_as_samples(profile):
    """Summarising a resample by cells of identical (group, score, label) changes no statistic."""
    from fairfm.metrics.profiles import get_profile

    y, p, g = make_data(8, n=500, n_groups=3)
    codes = np.select([g == "g0", g == "g1", g == "g2"], [0, 1, 2], -1)
    prof = get_profile(profile)
    rules = E.Rules(threshold=0.45, **({} if prof is None else dict(strict=prof.strict, bce=prof.bce, ece=prof.ece)))
    engine = E.AttributeEngine(y, p, codes, 3, rules, {"0.5": 0.5})
    assert engine.cells is not None and engine.cells.layout.n < 0.6 * y.size
    strata = R.Strata(n=y.size, starts=engine.layout.starts)
    for seed in range(5):
        counts = R.draw_counts(np.random.default_rng(seed), strata)  # a resample over samples
        g_cells, o_cells = engine.resample_stats(counts)
        g_samples, o_samples = engine._all_stats(engine.samples, counts, None)
        for key, value in g_samples.items():
            np.testing.assert_allclose(g_cells[key], value, rtol=1e-5, atol=1e-7, err_msg=key)
        for key, value in o_samples.items():
            assert o_cells[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key


def test_cell_resamples_are_stratified_multinomial():
    """Drawn on cells, each stratum keeps its size, and each cell is drawn in proportion to its size."""
    starts = np.array([0, 3, 10, 12, 20])  # cells of 3, 7, 2 and 8 samples
    bounds_cells, bounds_items = np.array([0, 2, 4]), np.array([0, 10, 20])
    draws = np.array([R.draw_cell_counts(np.random.default_rng(s), 20, starts, bounds_cells, bounds_items)
                      for s in range(4000)])  # fmt: skip
    assert (draws[:, :2].sum(axis=1) == 10).all() and (draws[:, 2:].sum(axis=1) == 10).all()
    np.testing.assert_allclose(draws.mean(axis=0), [3, 7, 2, 8], rtol=0.04)
    # Multinomial variance of a cell with share q of a stratum of m draws: m·q·(1 − q).
    np.testing.assert_allclose(draws.var(axis=0), [10 * 0.3 * 0.7, 10 * 0.7 * 0.3, 10 * 0.2 * 0.8, 10 * 0.8 * 0.2],
                               rtol=0.1)  # fmt: skip
