"""Per-metric validity (METRICS.md §2, §5): max/min run over the groups valid for the metric, and a metric that
cannot be computed is NaN with its reason — never a silent 0 or a 0/0."""

import math

import numpy as np
import pytest
from fairlearn.metrics import demographic_parity_ratio, equalized_odds_ratio
from sklearn.metrics import precision_score, roc_auc_score

import fairfm.metrics as M


def _summary_note(report, metric, attribute="g"):
    table = report.to_metric_table()
    row = table[(table.attribute == attribute) & (table.group == "__summary__") & (table.metric == metric)]
    return row.iloc[0]["note"]


def test_auc_std_with_one_valid_group_is_nan_with_a_reason():
    y = np.array([0, 1, 0, 1, 0, 1, 0, 0, 0])
    p = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.6, 0.4, 0.2, 0.3])
    g = np.array(["a"] * 6 + ["b"] * 3)  # b has only negatives: one valid group
    with pytest.warns(M.FairnessWarning):
        report = M.evaluate(y, p, groups={"g": g}, bootstrap=30)
    est = report.tasks["task"].attributes["g"].summary["auc_std"]
    assert math.isnan(est.value) and math.isnan(est.ci_low) and math.isnan(est.ci_high)
    assert "fewer than two valid groups" in _summary_note(report, "auc_std")
    assert math.isnan(M.auc_std(y, p, groups=g))


def test_auc_std_is_the_population_std_of_the_valid_groups():
    rng = np.random.default_rng(1)
    y, p, g = rng.integers(0, 2, 300), rng.random(300), rng.choice(["a", "b", "c"], 300)
    report = M.evaluate(y, p, groups={"g": g}, bootstrap=0)
    aucs = [roc_auc_score(y[g == k], p[g == k]) for k in "abc"]
    assert report.tasks["task"].attributes["g"].summary["auc_std"].value == pytest.approx(np.std(aucs), abs=1e-12)


def test_a_group_without_predicted_positives_leaves_ppv_gap_only():
    rng = np.random.default_rng(2)
    n = 300
    g = np.array(["a", "b", "c"] * (n // 3))
    y = rng.integers(0, 2, n)
    p = rng.random(n)
    p[g == "c"] = rng.random((g == "c").sum()) * 0.4  # group c: every score below the threshold 0.5
    report = M.evaluate(y, p, groups={"g": g}, threshold=0.5, bootstrap=50)
    attr = report.tasks["task"].attributes["g"]
    yp = (p >= 0.5).astype(int)
    ppv = {k: precision_score(y[g == k], yp[g == k]) for k in "ab"}
    assert attr.summary["ppv_gap"].value == pytest.approx(max(ppv.values()) - min(ppv.values()), abs=1e-12)
    assert np.isfinite([attr.summary["ppv_gap"].ci_low, attr.summary["ppv_gap"].ci_high]).all()
    assert math.isnan(attr.group_metrics["c"]["ppv"].value)  # c has no PPV ...
    assert "no predicted positives in c" in _summary_note(report, "ppv_gap")  # ... and the gap says so
    assert "c" not in attr.excluded  # c stays in every other metric
    tprs = [((yp == 1) & (y == 1) & (g == k)).sum() / ((y == 1) & (g == k)).sum() for k in "abc"]
    assert attr.summary["tpr_gap"].value == pytest.approx(max(tprs) - min(tprs))
    assert M.ppv_gap(y, yp, groups=g) == pytest.approx(attr.summary["ppv_gap"].value)


def test_ratios_with_a_largest_rate_of_zero_are_nan_with_a_reason():
    rng = np.random.default_rng(3)
    n = 200
    y, g = rng.integers(0, 2, n), rng.choice(["a", "b"], n)
    p = rng.random(n) * 0.9
    report = M.evaluate(y, p, groups={"g": g}, threshold=0.95, bootstrap=0)  # nobody is predicted positive
    summary = report.tasks["task"].attributes["g"].summary
    assert math.isnan(summary["dpr"].value) and math.isnan(summary["eor"].value)
    assert math.isnan(demographic_parity_ratio(y, np.zeros(n), sensitive_features=g))  # fairlearn: 0/0 as well
    assert "0/0" in _summary_note(report, "dpr") and "0/0" in _summary_note(report, "eor")
    assert summary["dpd"].value == 0.0  # a difference of zero rates is a true zero


def test_eor_is_nan_when_every_false_positive_rate_is_zero():
    # Every negative scores below the threshold, positives straddle it: TPR ratio exists, FPR ratio is 0/0.
    y = np.array([1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0])
    p = np.array([0.9, 0.8, 0.3, 0.7, 0.1, 0.2, 0.9, 0.2, 0.3, 0.6, 0.1, 0.2])
    g = np.array(["a"] * 6 + ["b"] * 6)
    report = M.evaluate(y, p, groups={"g": g}, threshold=0.5, bootstrap=0)
    summary = report.tasks["task"].attributes["g"].summary
    yp = (p >= 0.5).astype(int)
    # fairlearn silently returns the TPR ratio alone here (it drops the undefined FPR ratio); fairfm says why not.
    assert equalized_odds_ratio(y, yp, sensitive_features=g) == pytest.approx(2 / 3)
    assert math.isnan(summary["eor"].value)
    assert "largest FPR over the valid groups is 0" in _summary_note(report, "eor")
    assert summary["dpr"].value == pytest.approx(demographic_parity_ratio(y, yp, sensitive_features=g))
