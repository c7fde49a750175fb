"""Threshold policies against brute force and sklearn's curves."""

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_recall_curve, roc_curve

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
    for text in ["0.3", "best_f1@val", "best_f1@self", "youden@val", "fpr@0.2", "tpr@0.8@val"]:
        assert T.parse_policy(text).name == text
    assert T.parse_policy("best_f1@self").leaks_labels and not T.parse_policy("best_f1@val").leaks_labels
