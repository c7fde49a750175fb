"""Every metric that has an independent oracle (sklearn, fairlearn, or a direct formula) is checked against it on
random data with tied scores, unknown group values and more than two groups."""

import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    demographic_parity_ratio,
    equalized_odds_difference,
    equalized_odds_ratio,
    false_positive_rate,
    selection_rate,
    true_negative_rate,
    true_positive_rate,
)
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

import fairfm.metrics as M
from tests.metrics.helpers import make_data

KNOWN = lambda g: g.notna().to_numpy() & (g != "unknown").to_numpy()  # noqa: E731


def ece_oracle(y, p, bins=10):
    """Bins [k/10, (k+1)/10) with exact rational edges (a score stored as 0.3 is 0.2999… in binary)."""
    total = 0.0
    idx = np.array([sum(Fraction(float(v)) >= Fraction(k, bins) for k in range(1, bins)) for v in p])
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() / len(p) * abs(p[m].mean() - y[m].mean())
    return total


def test_overall_utility_metrics(data):
    y, p, g = data
    assert M.auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    clipped = np.clip(p, 1e-7, 1 - 1e-7)
    assert M.bce(y, p) == pytest.approx(log_loss(y, clipped), abs=1e-12)
    assert M.brier(y, p) == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert M.ece(y, p) == pytest.approx(ece_oracle(y, p), abs=1e-12)


def test_group_metrics_match_sklearn(data):
    y, p, g = data
    table = M.group_metrics(y, p, groups=g, threshold=0.5)
    known = KNOWN(g)
    assert set(table.index) == set(g[known].unique())
    for name, row in table.iterrows():
        m = (g == name).to_numpy()
        yp = (p[m] >= 0.5).astype(int)
        assert row["n"] == m.sum() and row["n_pos"] == y[m].sum()
        assert row["auc"] == pytest.approx(roc_auc_score(y[m], p[m]), abs=1e-12)
        assert row["acc"] == pytest.approx(accuracy_score(y[m], yp), abs=1e-12)
        assert row["tpr"] == pytest.approx(recall_score(y[m], yp), abs=1e-12)
        assert row["tnr"] == pytest.approx(recall_score(1 - y[m], 1 - yp), abs=1e-12)
        assert row["fpr"] == pytest.approx(1 - recall_score(1 - y[m], 1 - yp), abs=1e-12)
        assert row["fnr"] == pytest.approx(1 - recall_score(y[m], yp), abs=1e-12)
        assert row["ppv"] == pytest.approx(precision_score(y[m], yp, zero_division=np.nan), abs=1e-12, nan_ok=True)
        assert row["f1"] == pytest.approx(f1_score(y[m], yp), abs=1e-12)
        assert row["pos_rate"] == pytest.approx(yp.mean(), abs=1e-12)
        assert row["brier"] == pytest.approx(brier_score_loss(y[m], p[m]), abs=1e-12)
        assert row["ece"] == pytest.approx(ece_oracle(y[m], p[m]), abs=1e-12)


def test_auc_family_matches_fairlearn_metricframe(data):
    y, p, g = data
    known = KNOWN(g)
    frame = MetricFrame(metrics=roc_auc_score, y_true=y[known], y_pred=p[known], sensitive_features=g[known])
    aucs = frame.by_group
    assert M.auc_gap(y, p, groups=g) == pytest.approx(frame.difference(), abs=1e-12)
    assert M.worst_auc(y, p, groups=g) == pytest.approx(frame.group_min(), abs=1e-12)
    assert M.best_auc(y, p, groups=g) == pytest.approx(frame.group_max(), abs=1e-12)
    assert M.auc_std(y, p, groups=g) == pytest.approx(np.std(aucs.to_numpy()), abs=1e-12)
    overall = roc_auc_score(y, p)  # unknown-group samples count in the overall AUC
    expected = overall / (1 + np.abs(aucs.to_numpy() - overall).sum())
    assert M.es_auc(y, p, groups=g) == pytest.approx(expected, abs=1e-12)


def test_calibration_gaps_match_direct_computation(data):
    y, p, g = data
    known = KNOWN(g)
    groups = sorted(g[known].unique())
    bces = [log_loss(y[(g == k).to_numpy()], np.clip(p[(g == k).to_numpy()], 1e-7, 1 - 1e-7), labels=[0, 1]) for k in groups]
    eces = [ece_oracle(y[(g == k).to_numpy()], p[(g == k).to_numpy()]) for k in groups]
    assert M.bce_gap(y, p, groups=g) == pytest.approx(max(bces) - min(bces), abs=1e-12)
    assert M.ece_gap(y, p, groups=g) == pytest.approx(max(eces) - min(eces), abs=1e-12)


def test_thresholded_fairness_matches_fairlearn(data):
    y, p, g = data
    known = KNOWN(g)
    yp = (p >= 0.5).astype(int)
    yk, pk, gk = y[known], yp[known], g[known]
    assert M.dpd(y, yp, groups=g) == pytest.approx(demographic_parity_difference(yk, pk, sensitive_features=gk), abs=1e-12)
    assert M.dpr(y, yp, groups=g) == pytest.approx(demographic_parity_ratio(yk, pk, sensitive_features=gk), abs=1e-12)
    assert M.eod(y, yp, groups=g) == pytest.approx(equalized_odds_difference(yk, pk, sensitive_features=gk), abs=1e-12)
    assert M.eor(y, yp, groups=g) == pytest.approx(equalized_odds_ratio(yk, pk, sensitive_features=gk), abs=1e-12)
    frame = MetricFrame(
        metrics={"tpr": true_positive_rate, "fpr": false_positive_rate, "tnr": true_negative_rate,
                 "acc": accuracy_score, "sel": selection_rate},
        y_true=yk, y_pred=pk, sensitive_features=gk,
    )  # fmt: skip
    diff = frame.difference()
    assert M.tpr_gap(y, yp, groups=g) == pytest.approx(diff["tpr"], abs=1e-12)
    assert M.fpr_gap(y, yp, groups=g) == pytest.approx(diff["fpr"], abs=1e-12)
    assert M.tnr_gap(y, yp, groups=g) == pytest.approx(diff["tnr"], abs=1e-12)
    assert M.acc_gap(y, yp, groups=g) == pytest.approx(diff["acc"], abs=1e-12)
    assert M.eqodds_score(y, yp, groups=g) == pytest.approx(1 - (diff["tpr"] + diff["tnr"]) / 2, abs=1e-12)
    assert M.eopp_score(y, yp, groups=g) == pytest.approx(1 - diff["tpr"], abs=1e-12)
    assert M.dp_score(y, yp, groups=g) == pytest.approx(1 - diff["sel"], abs=1e-12)
    acc_all = accuracy_score(y, yp)
    expected = acc_all / (1 + np.abs(frame.by_group["acc"].to_numpy() - acc_all).sum())
    assert M.es_acc(y, yp, groups=g) == pytest.approx(expected, abs=1e-12)


def test_evaluate_agrees_with_the_functions_and_sklearn(data):
    y, p, g = data
    report = M.evaluate(y, p, groups={"grp": g}, bootstrap=0, threshold="0.5")
    summary = report.summary.loc["grp"]
    assert summary["auc_gap"] == pytest.approx(M.auc_gap(y, p, groups=g), abs=1e-12)
    assert summary["dpd"] == pytest.approx(M.dpd(y, (p >= 0.5).astype(int), groups=g), abs=1e-12)
    overall = report.tasks["task"].overall
    assert overall["auc"].value == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert overall["acc"].value == pytest.approx(accuracy_score(y, (p >= 0.5).astype(int)), abs=1e-12)
    assert overall["ece"].value == pytest.approx(ece_oracle(y, p), abs=1e-12)
    by_group = report.by_group.loc["grp"]
    for name, row in by_group.iterrows():
        m = (g == name).to_numpy()
        assert row["auc"] == pytest.approx(roc_auc_score(y[m], p[m]), abs=1e-12)


def test_multilabel_macro_is_the_mean_of_per_task_metrics():
    y1, p1, g = make_data(3)
    y2, p2, _ = make_data(4)
    report = M.evaluate(pd.DataFrame({"a": y1, "b": y2}), pd.DataFrame({"a": p1, "b": p2}), groups={"grp": g},
                        bootstrap=0)  # fmt: skip
    assert set(report.tasks) == {"a", "b"}
    gaps = [M.auc_gap(y1, p1, groups=g), M.auc_gap(y2, p2, groups=g)]
    assert report.macro["grp"]["macro_auc_gap"] == pytest.approx(np.mean(gaps), abs=1e-12)
    assert report.macro["__all__"]["macro_auc"] == pytest.approx(np.mean([roc_auc_score(y1, p1), roc_auc_score(y2, p2)]))
    assert list(report.summary.index.names) == ["task", "attribute"]


def test_single_class_and_small_groups_are_excluded_with_a_reason():
    y = np.array([0, 1, 0, 1, 0, 1, 0, 0, 1])
    p = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.6, 0.4, 0.2, 0.7])
    g = np.array(["a", "a", "b", "b", "b", "b", "c", "c", "d"])  # c: only negatives; d: one sample
    report = M.evaluate(y, p, groups={"s": g}, bootstrap=0, min_group_size=2)
    attr = report.tasks["task"].attributes["s"]
    assert "only negative" in attr.excluded["c"]
    assert "fewer than 2 samples" in attr.excluded["d"]
    aucs = [roc_auc_score(y[g == k], p[g == k]) for k in "ab"]
    assert attr.summary["auc_gap"].value == pytest.approx(max(aucs) - min(aucs))


def test_fewer_than_two_valid_groups_gives_nan_gaps_and_a_warning():
    y = np.array([0, 1, 0, 1, 0, 0])
    p = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.4])
    g = np.array(["a", "a", "a", "a", "b", "b"])
    with pytest.warns(M.FairnessWarning, match="fewer than two valid groups"):
        report = M.evaluate(y, p, groups={"s": g}, bootstrap=0)
    attr = report.tasks["task"].attributes["s"]
    assert math.isnan(attr.summary["auc_gap"].value) and math.isnan(attr.summary["es_auc"].value)
    table = report.to_metric_table()
    gap_row = table[(table.metric == "auc_gap") & (table.group == "__summary__")].iloc[0]
    assert "fewer than two valid groups" in gap_row["note"]
