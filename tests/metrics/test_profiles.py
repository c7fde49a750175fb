"""Each reference profile against a hand-computed example and against the reference's own recipe."""

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.interpolate import interp1d
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

import fairfm.metrics as M
from fairfm.errors import InputError
from tests.metrics.helpers import make_data

# Two groups of six; worked by hand in the comments.
Y = np.array([0, 0, 1, 1, 0, 1, 0, 1, 0, 1, 1, 0])
P = np.array([0.1, 0.4, 0.35, 0.8, 0.5, 0.5, 0.2, 0.3, 0.6, 0.7, 0.9, 0.05])
G = np.array(["A"] * 6 + ["B"] * 6)
AUC_A = 6.5 / 9  # positives 0.35, 0.8, 0.5 beat 1, 3 and 2.5 of the negatives 0.1, 0.4, 0.5
AUC_B = 8 / 9  # positives 0.3, 0.7, 0.9 beat 2, 3 and 3 of the negatives 0.2, 0.6, 0.05


def test_khan_reports_auc_points_times_100():
    report = M.evaluate(Y, P, groups={"sex": G}, profile="khan", bootstrap=0)
    attr = report.tasks["task"].attributes["sex"]
    assert attr.summary["auc_gap"].value == pytest.approx(100 * (AUC_B - AUC_A))  # 16.67 points
    assert attr.group_metrics["A"]["auc"].value == pytest.approx(100 * AUC_A)
    assert report.tasks["task"].overall["auc"].value == pytest.approx(100 * roc_auc_score(Y, P))


def test_khan_takes_the_mean_over_tasks():
    y2 = Y[::-1].copy()
    report = M.evaluate(pd.DataFrame({"a": Y, "b": y2}), pd.DataFrame({"a": P, "b": P}), groups={"sex": G},
                        profile="khan", bootstrap=0)  # fmt: skip
    gap_b = M.auc_gap(y2, P, groups=G)
    assert report.macro["sex"]["macro_auc_gap"] == pytest.approx(100 * ((AUC_B - AUC_A) + gap_b) / 2)


def test_fairfedmed_uses_argmax_so_a_score_of_one_half_is_negative():
    report = M.evaluate(Y, P, groups={"sex": G}, profile="fairfedmed", bootstrap=0)
    summary = report.tasks["task"].attributes["sex"].summary
    # ŷ = p > 0.5: A → [0,0,0,1,0,0] (TPR 1/3, FPR 0, rate 1/6); B → [0,0,1,1,1,0] (TPR 2/3, FPR 1/3, rate 1/2)
    assert summary["dpd"].value == pytest.approx(1 / 2 - 1 / 6)
    assert summary["eod"].value == pytest.approx(1 / 3)
    overall = roc_auc_score(Y, P)
    assert summary["es_auc"].value == pytest.approx(overall / (1 + abs(AUC_A - overall) + abs(AUC_B - overall)))
    # The default rule ŷ = p ≥ 0.5 gives A [0,0,0,1,1,1]: rate 1/2, so no demographic-parity gap at all.
    default = M.evaluate(Y, P, groups={"sex": G}, threshold="0.5", bootstrap=0)
    assert default.tasks["task"].attributes["sex"].summary["dpd"].value == pytest.approx(0.0)


def _fairmedfm_recipe(y, p, groups):
    """FairMedFM utils/metrics.py as published: PR-curve F1 threshold on all samples, p > t, torch BCELoss,
    pandas-cut ECE over each set's own score range."""

    def ece(pp, yy):
        bins = pd.cut(pp, 10, labels=False)
        df = pd.DataFrame({"p": pp, "y": yy, "b": bins}).groupby("b").agg(pm=("p", "mean"), ym=("y", "mean"), n=("p", "size"))
        return float(np.average(np.abs(df.pm - df.ym), weights=df.n / len(pp)))

    def bce(pp, yy):
        return float(torch.nn.BCELoss()(torch.tensor(pp), torch.tensor(yy, dtype=torch.float64)))

    prec, rec, thr = precision_recall_curve(y, p)
    f1 = 2 * prec * rec / (prec + rec + 1e-8)
    t = thr[np.where(f1 == max(f1))][0]
    per = {}
    for g in np.unique(groups):
        m = groups == g
        yp = (p[m] > t).astype(int)
        tp, fn = ((yp == 1) & (y[m] == 1)).sum(), ((yp == 0) & (y[m] == 1)).sum()
        tn, fp = ((yp == 0) & (y[m] == 0)).sum(), ((yp == 1) & (y[m] == 0)).sum()
        per[g] = dict(auc=roc_auc_score(y[m], p[m]), acc=(tp + tn) / m.sum(), tpr=tp / (tp + fn), tnr=tn / (tn + fp),
                      bce=bce(p[m], y[m]), ece=ece(p[m], y[m]))  # fmt: skip
    col = lambda k: np.array([v[k] for v in per.values()])  # noqa: E731
    spread = lambda k: col(k).max() - col(k).min()  # noqa: E731
    yp_all = (p > t).astype(int)
    return t, {
        "overall-auc": roc_auc_score(y, p), "overall-acc": (yp_all == y).mean(), "overall-bce": bce(p, y),
        "overall-ece": ece(p, y), "worst-auc": col("auc").min(), "auc-gap": spread("auc"),
        "acc-gap": spread("acc"), "bce-gap": spread("bce"), "ece-gap": spread("ece"),
        "eod": 1 - (spread("tpr") + spread("tnr")) / 2, "eo": spread("tpr"),
    }  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fairmedfm_profile_reproduces_its_recipe(seed):
    y, p, g = make_data(seed, n=500, unknown=False)
    p = np.clip(p, 0.01, 0.99)
    groups = g.to_numpy().astype(str)
    t, expected = _fairmedfm_recipe(y, p, groups)
    report = M.evaluate(y, p, groups={"a": groups}, profile="fairmedfm", bootstrap=0)
    task = report.tasks["task"]
    assert task.threshold == t
    summary = task.attributes["a"].summary
    names = report.profile.reference_names
    for ours, value in [(m, summary[m].value) for m in report.profile.summary_metrics] + [
        (m, task.overall[m].value) for m in ("auc", "acc", "bce", "ece")
    ]:
        assert value == pytest.approx(expected[names[ours]], abs=1e-9), ours
    assert report.to_dict()["profile"]["flags"], "a test-set threshold must be flagged"


def test_fairmedfm_hand_example_threshold_and_strict_rule():
    report = M.evaluate(Y, P, groups={"sex": G}, profile="fairmedfm", bootstrap=0)
    # PR curve: at t = 0.3, 9 scores ≥ t hold all 6 positives: P = 6/9, R = 1, F1 = 0.8 (t = 0.2: 0.75; 0.35: 0.71).
    assert report.tasks["task"].threshold == pytest.approx(0.3)
    # ŷ = p > 0.3 leaves the positive scored exactly 0.3 negative: overall TPR 5/6.
    assert report.tasks["task"].overall["tpr"].value == pytest.approx(5 / 6)


def test_medfair_scores_at_specificity_and_sensitivity_targets():
    y, p, g = make_data(9, n=400, unknown=False, n_groups=2, ties=False)
    groups = g.to_numpy().astype(str)
    report = M.evaluate(y, p, groups={"a": groups}, profile="medfair", bootstrap=0)
    fpr, tpr, thr = roc_curve(y, p)
    t_spec = float(interp1d(1 - fpr, thr)(0.8))
    assert report.tasks["task"].extra_thresholds["tnr@0.8"] == pytest.approx(t_spec, rel=1e-9)
    a = groups == groups[0]
    yp = (p > t_spec).astype(float)
    c = [yp[a & (y == 0)].mean(), yp[~a & (y == 0)].mean(), yp[a & (y == 1)].mean(), yp[~a & (y == 1)].mean()]
    eqodd = 1 - 0.5 * (abs(c[0] - c[1]) + abs(c[2] - c[3]))  # MEDFAIR cal_eqodd
    assert report.tasks["task"].attributes["a"].summary["eqodds_score@tnr@0.8"].value == pytest.approx(eqodd)


def test_glocker_profile_threshold_bootstrap_and_stratification():
    y, p, g = make_data(3, n=300, ties=True)  # ties make collinear ROC points, which sklearn drops
    fpr, tpr, thr = roc_curve(y, p)
    report = M.evaluate(y, p, groups={"race": g}, profile="glocker", bootstrap=1000)
    assert report.tasks["task"].threshold == thr[1:][np.argmin(np.abs(fpr[1:] - 0.2))]
    assert report.bootstrap["B"] == 2000 and report.bootstrap["stratify"] == "class"
    assert report.tasks["task"].overall["fpr"].value == pytest.approx(fpr[1:][np.argmin(np.abs(fpr[1:] - 0.2))])
    youden = report.by_group.loc["race"]["youden"]
    tprs, fprs = report.by_group.loc["race"]["tpr"], report.by_group.loc["race"]["fpr"]
    np.testing.assert_allclose(youden, tprs - fprs)


def test_unknown_profile_is_refused():
    with pytest.raises(InputError, match="unknown profile 'fairness'"):
        M.evaluate(Y, P, groups={"sex": G}, profile="fairness")


def test_medfair_hand_example_at_one_half():
    report = M.evaluate(Y, P, groups={"sex": G}, profile="medfair", bootstrap=0)
    summary = report.tasks["task"].attributes["sex"].summary
    # p > 0.5: A → [0,0,0,1,0,0], B → [0,0,1,1,1,0]; FPR 0 vs 1/3, TPR 1/3 vs 2/3, positive rate 1/6 vs 1/2.
    assert summary["eqodds_score@0.5"].value == pytest.approx(1 - 0.5 * (1 / 3 + 1 / 3))  # MEDFAIR EqOdd = 2/3
    assert summary["eopp_score@0.5"].value == pytest.approx(2 / 3)  # EqOpp1
    assert summary["dp_score@0.5"].value == pytest.approx(1 - (1 / 2 - 1 / 6))  # DP


def test_glocker_hand_example_threshold_at_fpr_one_sixth():
    report = M.evaluate(Y, P, groups={"sex": G}, profile="glocker", bootstrap=0)
    task = report.tasks["task"]
    # sklearn's ROC points (collinear ones dropped) have FPR 0, 1/6, 2/6, 3/6, 1; 1/6 (at t = 0.6) is closest to 0.2.
    assert task.threshold == pytest.approx(0.6)
    assert task.overall["fpr"].value == pytest.approx(1 / 6) and task.overall["tpr"].value == pytest.approx(1 / 2)
    groups = report.by_group.loc["sex"]
    assert groups.loc["A", "tpr"] == pytest.approx(1 / 3) and groups.loc["A", "fpr"] == pytest.approx(0)
    assert groups.loc["B", "tpr"] == pytest.approx(2 / 3) and groups.loc["B", "fpr"] == pytest.approx(1 / 3)
    assert groups.loc["A", "youden"] == pytest.approx(1 / 3) and groups.loc["B", "youden"] == pytest.approx(1 / 3)


def test_glocker_uses_sklearn_roc_points_where_they_differ_from_all_thresholds():
    # Negatives strung along one horizontal ROC segment: sklearn drops its inner points.
    y = np.array([1, 0, 0, 0, 0, 0, 1, 1, 0])
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.1, 0.95, 0.05])
    g = np.array(["a", "b"] * 4 + ["a"])
    fpr, _, thr = roc_curve(y, p)
    sklearn_choice = thr[1:][np.argmin(np.abs(fpr[1:] - 0.2))]
    glocker = M.evaluate(y, p, groups={"g": g}, profile="glocker", bootstrap=0).tasks["task"].threshold
    native = M.evaluate(y, p, groups={"g": g}, threshold="fpr@0.2@self", bootstrap=0).tasks["task"].threshold
    assert glocker == sklearn_choice == 0.95  # kept points have FPR 0 or ≥ 5/6; the first FPR-0 point wins
    assert native == 0.8  # among all thresholds, FPR 1/6 at t = 0.8 is closest to 0.2


def _fairfedmed_client(y, p, g):
    """FairFedMed's per-client numbers, from sklearn/fairlearn: AUC, ES-AUC, AUC gap, DPD and EOD at p > 0.5."""
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    auc_all = roc_auc_score(y, p)
    aucs = np.array([roc_auc_score(y[g == k], p[g == k]) for k in np.unique(g)])
    yp = (p > 0.5).astype(int)
    return {"auc": auc_all, "es_auc": auc_all / (1 + np.abs(aucs - auc_all).sum()), "auc_gap": aucs.max() - aucs.min(),
            "dpd": demographic_parity_difference(y, yp, sensitive_features=g),
            "eod": equalized_odds_difference(y, yp, sensitive_features=g)}  # fmt: skip


def test_fairfedmed_averages_every_metric_over_sites():
    rng = np.random.default_rng(11)
    n = 900
    site = rng.choice(["hospital_a", "hospital_b", "hospital_c"], n, p=[0.5, 0.3, 0.2])
    race = rng.choice(["Asian", "Black", "White"], n)
    y = (rng.random(n) < np.where(site == "hospital_b", 0.5, 0.3)).astype(int)
    p = np.clip(rng.random(n) * 0.6 + y * np.where(site == "hospital_c", 0.2, 0.4), 0, 1).round(3)
    report = M.evaluate(y, p, groups={"race": race}, profile="fairfedmed", sites=site, bootstrap=50)
    per_site = [_fairfedmed_client(y[site == s], p[site == s], race[site == s]) for s in np.unique(site)]
    expected = {m: np.mean([c[m] for c in per_site]) for m in per_site[0]}
    task = report.tasks["task"]
    summary = task.attributes["race"].summary
    assert task.overall["auc"].value == pytest.approx(expected["auc"], abs=1e-12)
    for metric in ("es_auc", "auc_gap", "dpd", "eod"):
        assert summary[metric].value == pytest.approx(expected[metric], abs=1e-12), metric
        assert np.isfinite(summary[metric].ci_low) and summary[metric].ci_low < summary[metric].ci_high
    pooled = _fairfedmed_client(y, p, race)
    assert abs(pooled["es_auc"] - expected["es_auc"]) > 1e-3  # the client average is not the pooled number
    groups = report.by_group.loc["race"]
    black = [roc_auc_score(y[(site == s) & (race == "Black")], p[(site == s) & (race == "Black")]) for s in np.unique(site)]
    assert groups.loc["Black", "auc"] == pytest.approx(np.mean(black), abs=1e-12)
    assert groups.loc["Black", "n"] == (race == "Black").sum()
    assert report.clients["sites"] == ["hospital_a", "hospital_b", "hospital_c"]
    assert report.to_dict()["clients"]["sites"] == ["hospital_a", "hospital_b", "hospital_c"]


def test_sites_need_a_client_averaging_profile():
    with pytest.raises(InputError, match="client averages \\(fairfedmed\\)"):
        M.evaluate(Y, P, groups={"sex": G}, sites=G, bootstrap=0)
    with pytest.raises(InputError, match="client averages over sites have percentile intervals only"):
        M.evaluate(Y, P, groups={"sex": G}, sites=G, profile="fairfedmed", ci_method="simultaneous", bootstrap=10)
    with pytest.raises(InputError, match="sites: row 1 has no site"):
        M.evaluate(Y, P, groups={"sex": G}, sites=["x", None] + ["x"] * (len(Y) - 2), profile="fairfedmed",
                   bootstrap=0)  # fmt: skip
