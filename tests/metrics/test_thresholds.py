"""Threshold policies against brute force and sklearn's curves."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score, precision_recall_curve, roc_auc_score, roc_curve

import fairfm.metrics as M
from fairfm.errors import InputError
from fairfm.metrics import thresholds as T
from tests.metrics.helpers import make_data


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_best_f1_threshold_is_the_brute_force_optimum(seed):
    y, p, _ = make_data(seed, n=300)
    candidates = np.unique(p)
    scores = [f1_score(y, (p >= t).astype(int)) for t in candidates]
    best = max(scores)
    expected = max(t for t, s in zip(candidates, scores) if np.isclose(s, best, atol=1e-15))
    assert T.best_f1_threshold(y, p) == expected


@pytest.mark.parametrize("seed", [0, 1])
def test_youden_threshold_is_the_brute_force_optimum(seed):
    y, p, _ = make_data(seed, n=300)
    candidates = np.unique(p)
    j = [((p >= t) & (y == 1)).sum() / y.sum() - ((p >= t) & (y == 0)).sum() / (y == 0).sum() for t in candidates]
    assert T.youden_threshold(y, p) == max(t for t, v in zip(candidates, j) if np.isclose(v, max(j)))


@pytest.mark.parametrize("drop", [False, True])
def test_fpr_threshold_matches_sklearn_roc_curve(drop):
    y, p, _ = make_data(7, n=500, ties=False)
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=drop)
    expected = thr[1:][np.argmin(np.abs(fpr[1:] - 0.2))]
    assert T.rate_threshold(y, p, "fpr", 0.2, drop_intermediate=drop) == expected
    ours = T.roc_points(y, p, drop_intermediate=drop)
    np.testing.assert_allclose(ours[0], fpr)
    np.testing.assert_allclose(ours[1], tpr)


def test_fairmedfm_threshold_follows_its_precision_recall_curve_recipe():
    y, p, _ = make_data(4, n=400)
    precision, recall, thresholds = precision_recall_curve(y, p)
    f1 = 2 * precision * recall / (precision + recall + 1e-8)
    expected = thresholds[np.flatnonzero(f1 == f1.max())[0]]
    assert T.fairmedfm_threshold(y, p) == expected


def test_threshold_on_validation_is_applied_to_test():
    y, p, g = make_data(1, n=400)
    yv, pv, _ = make_data(2, n=400)
    report = M.evaluate(y, p, groups={"g": g}, val_true=yv, val_score=pv, bootstrap=0)
    task = report.tasks["task"]
    assert task.threshold_policy == "best_f1@val"
    assert task.threshold == T.best_f1_threshold(yv, pv)
    assert task.overall["tpr"].value == pytest.approx(((p >= task.threshold) & (y == 1)).sum() / y.sum())


@pytest.mark.parametrize("text", ["best_f1", "f1@val", "1.5", "0", "fpr@2", "youden@test", "median"])
def test_unknown_or_invalid_policies_are_refused(text):
    with pytest.raises(InputError):
        T.parse_policy(text)


def test_val_policy_without_validation_data_is_an_error():
    y, p, g = make_data(1)
    with pytest.raises(InputError, match="needs validation predictions"):
        M.evaluate(y, p, groups={"g": g}, threshold="best_f1@val", bootstrap=0)


def test_policy_names_round_trip():
    for text in ["0.3", "best_f1@val", "best_f1@self", "youden@val", "fpr@0.2@self", "tpr@0.8@val"]:
        assert T.parse_policy(text).name == text
    assert T.parse_policy("best_f1@self").leaks_labels and not T.parse_policy("best_f1@val").leaks_labels
    # A rate target follows validation unless the evaluated set is asked for, and says which in its name.
    assert T.parse_policy("fpr@0.2").name == "fpr@0.2@val" and not T.parse_policy("fpr@0.2").leaks_labels
    assert T.parse_policy("tpr@0.8@self").leaks_labels


def _sklearn_best_f1(y, p):
    """Oracle: the highest threshold of maximal F1 on sklearn's precision-recall curve (ŷ = 1[p ≥ t])."""
    precision, recall, thresholds = precision_recall_curve(y, p)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))[:-1]
    return thresholds[np.flatnonzero(np.isclose(f1, f1.max(), rtol=0, atol=1e-12)).max()]


def _multi_task(seed, n, tasks):
    rng = np.random.default_rng(seed)
    y = pd.DataFrame({t: (rng.random(n) < 0.2 + 0.15 * k).astype(int) for k, t in enumerate(tasks)})
    p = pd.DataFrame({t: np.round(np.clip(rng.random(n) * 0.7 + (0.1 + 0.1 * k) * y[t], 0, 1), 3)
                      for k, t in enumerate(tasks)})  # fmt: skip
    return y, p


def test_validation_tasks_are_matched_by_name_not_position():
    tasks = ["atelectasis", "edema", "effusion"]
    y, p = _multi_task(0, 300, tasks)
    yv, pv = _multi_task(1, 200, tasks)
    reordered = ["effusion", "atelectasis", "edema"]  # validation lists the tasks in another order
    report = M.evaluate(y, p, groups={"g": np.arange(300) % 2}, val_true=yv[reordered], val_score=pv[reordered],
                        bootstrap=0)  # fmt: skip
    for task in tasks:
        expected = _sklearn_best_f1(yv[task].to_numpy(), pv[task].to_numpy())
        assert report.tasks[task].threshold == expected, task
    assert len({report.tasks[t].threshold for t in tasks}) == 3  # the oracle thresholds differ between tasks


def test_score_columns_are_matched_to_their_label_columns_by_name():
    tasks = ["atelectasis", "edema", "effusion"]
    y, p = _multi_task(0, 300, tasks)
    yv, pv = _multi_task(1, 200, tasks)
    # Labels and scores of each split list the tasks in different orders (a review found val_score taken by position).
    report = M.evaluate(y, p[["edema", "effusion", "atelectasis"]], groups={"g": np.arange(300) % 2},
                        val_true=yv[["effusion", "atelectasis", "edema"]], val_score=pv[["edema", "atelectasis",
                        "effusion"]], bootstrap=0)  # fmt: skip
    for task in tasks:
        assert report.tasks[task].threshold == _sklearn_best_f1(yv[task].to_numpy(), pv[task].to_numpy()), task
        assert report.tasks[task].overall["auc"].value == pytest.approx(roc_auc_score(y[task], p[task])), task


def test_a_task_missing_from_validation_is_named():
    y, p = _multi_task(0, 100, ["a", "b"])
    yv, pv = _multi_task(1, 100, ["b", "c"])
    with pytest.raises(InputError, match="validation predictions have no task 'a'"):
        M.evaluate(y, p, groups={"g": np.arange(100) % 2}, val_true=yv, val_score=pv, bootstrap=0)


def test_rate_targets_follow_validation_when_it_exists():
    y, p, g = make_data(5, n=400, ties=False)
    yv, pv, _ = make_data(6, n=400, ties=False)
    on_val = M.evaluate(y, p, groups={"g": g}, val_true=yv, val_score=pv, threshold="fpr@0.2", bootstrap=0)
    task = on_val.tasks["task"]
    fpr, _, thr = roc_curve(yv, pv, drop_intermediate=False)
    assert task.threshold == thr[1:][np.argmin(np.abs(fpr[1:] - 0.2))]
    assert task.threshold_policy == "fpr@0.2@val" and not task.threshold_leaks_labels
    on_self = M.evaluate(y, p, groups={"g": g}, val_true=yv, val_score=pv, threshold="fpr@0.2@self", bootstrap=0)
    fpr, _, thr = roc_curve(y, p, drop_intermediate=False)
    assert on_self.tasks["task"].threshold == thr[1:][np.argmin(np.abs(fpr[1:] - 0.2))]
    assert on_self.tasks["task"].threshold_policy == "fpr@0.2@self" and on_self.tasks["task"].threshold_leaks_labels
    with pytest.raises(InputError, match="'fpr@0.2@val' needs validation predictions.*'fpr@0.2@self'"):
        M.evaluate(y, p, groups={"g": g}, threshold="fpr@0.2", bootstrap=0)


@pytest.mark.parametrize("threshold, profile, leaks", [
    ("best_f1@self", None, True), ("youden@self", None, True), ("tpr@0.8@self", None, True),
    ("best_f1@val", None, False), ("0.3", None, False), (None, "fairmedfm", True), (None, "glocker", True),
    (None, "khan", False),
])  # fmt: skip
def test_the_label_leak_flag_is_kept_and_written_everywhere(threshold, profile, leaks):
    from fairfm.report.tables import markdown, rich_tables
    from rich.console import Console

    y, p, g = make_data(8, n=300)
    yv, pv, _ = make_data(9, n=300)
    report = M.evaluate(y, p, groups={"g": g}, val_true=yv, val_score=pv, threshold=threshold, profile=profile,
                        bootstrap=0)  # fmt: skip
    assert report.tasks["task"].threshold_leaks_labels is leaks
    assert report.to_dict()["threshold"]["leaks_labels"] is leaks
    table = report.to_metric_table("r")
    assert table["threshold_leaks_labels"].dtype == bool
    at_fixed_extra = table.metric.str.endswith("@0.5")  # fairmedfm also reports every rate at 0.5: no leak there
    # Only metrics computed at the threshold carry the flag: AUC, BCE, ECE, Brier and counts never saw a threshold.
    base = table.metric.str.split("@").str[0].str.removesuffix("_p").str.removesuffix("_q")
    thresholded = base.isin(["acc", "tpr", "tnr", "fpr", "fnr", "ppv", "f1", "pos_rate", "youden", "acc_gap",
                             "es_acc", "tpr_gap", "fpr_gap", "tnr_gap", "ppv_gap", "eqodds_score", "eod",
                             "eopp_score", "dpd", "dp_score", "dpr", "eor"])  # fmt: skip
    assert thresholded.any() and (~thresholded).any()
    assert (table.loc[thresholded & ~at_fixed_extra, "threshold_leaks_labels"] == leaks).all()
    assert not table.loc[at_fixed_extra | ~thresholded, "threshold_leaks_labels"].any()
    console = Console(width=200, record=True, color_system=None)
    console.print(rich_tables(report))
    for text in (console.export_text(), markdown(report)):
        assert ("saw the evaluated set's labels" in text) is leaks


def test_the_store_keeps_the_leak_column():
    from fairfm.results.store import _metric_table

    y, p, g = make_data(8, n=200)
    stored = _metric_table(M.evaluate(y, p, groups={"g": g}, threshold="best_f1@self", bootstrap=0), "r1")
    assert stored.loc[stored.metric.isin(["acc", "tpr_gap", "eod"]), "threshold_leaks_labels"].all()
    assert not stored.loc[stored.metric.isin(["auc", "auc_gap", "bce", "n_pos"]), "threshold_leaks_labels"].any()
    stored = _metric_table(M.evaluate(y, p, groups={"g": g}, bootstrap=0), "r1")
    assert not stored["threshold_leaks_labels"].any()
