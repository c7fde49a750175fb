"""Segmentation metrics (METRICS.md §3): per-sample Dice/IoU from masks and the group summaries."""

import numpy as np
import pytest

import fairfm.metrics as M


def test_dice_and_iou_of_hand_made_masks():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2, :2] = True  # 4 pixels
    b[1:3, 1:3] = True  # 4 pixels, 1 shared
    assert M.dice_score(a, b) == pytest.approx(2 * 1 / 8)
    assert M.iou_score(a, b) == pytest.approx(1 / 7)
    empty = np.zeros((4, 4), bool)
    assert M.dice_score(empty, empty) == 1.0 and M.iou_score(empty, empty) == 1.0
    assert M.dice_score(a, empty) == 0.0


def test_segmentation_scores_flags_both_empty_samples():
    pred = np.zeros((3, 5, 5), bool)
    true = np.zeros((3, 5, 5), bool)
    pred[0, :2] = True
    true[0, :3] = True  # dice = 2*10/(10+15)
    true[2, 0, 0] = True  # pred empty, truth not: dice 0
    scores = M.segmentation_scores(pred, true)
    np.testing.assert_allclose(scores.dice, [0.8, 1.0, 0.0])
    np.testing.assert_allclose(scores.iou, [10 / 15, 1.0, 0.0])
    assert scores.both_empty.tolist() == [False, True, False]


def test_group_summaries_follow_the_definitions():
    rng = np.random.default_rng(0)
    dice = rng.random(90)
    groups = np.array(["a", "b", "c"] * 30)
    means = np.array([dice[groups == g].mean() for g in "abc"])
    overall = dice.mean()
    assert M.mean_dice(dice, groups=groups) == pytest.approx(overall)
    assert M.dice_gap(dice, groups=groups) == pytest.approx(means.max() - means.min())
    assert M.worst_dice(dice, groups=groups) == pytest.approx(means.min())
    assert M.dice_std(dice, groups=groups) == pytest.approx(means.std())
    assert M.es_dice(dice, groups=groups) == pytest.approx(overall / (1 + np.abs(means - overall).sum()))
    assert M.es_dice_std(dice, groups=groups) == pytest.approx(overall / (1 + means.std()))
    assert M.dice_skewness(dice, groups=groups) == pytest.approx((1 - means.min()) / (1 - means.max()))


def test_fairmedfm_segmentation_formulas_on_two_groups():
    """FairMedFM evaluate_seg: delta = |D0 − D1|, std of the two means, es = mean / (1 + std)."""
    dice = np.array([0.9, 0.8, 0.7, 0.4, 0.5, 0.6])
    sex = np.array([0, 0, 0, 1, 1, 1])
    report = M.evaluate_segmentation(dice, groups={"sex": sex}, bootstrap=0)
    s = report.tasks["segmentation"].attributes["sex"].summary
    assert s["dice_gap"].value == pytest.approx(0.3)
    assert s["dice_std"].value == pytest.approx(0.15)
    assert s["es_dice_std"].value == pytest.approx(0.65 / 1.15)
    assert s["dice_skewness"].value == pytest.approx((1 - 0.5) / (1 - 0.8))


def test_segmentation_bootstrap_intervals_and_bad_scores():
    rng = np.random.default_rng(1)
    dice = np.clip(rng.normal(0.7, 0.1, 300), 0, 1)
    groups = rng.choice(["F", "M"], 300)
    report = M.evaluate_segmentation(dice, iou=dice * 0.8, groups={"sex": groups}, bootstrap=100, seed=1)
    est = report.tasks["segmentation"].attributes["sex"].summary["dice_gap"]
    assert est.ci_low <= est.ci_high and est.ci_high > 0
    with pytest.raises(ValueError, match="not a dice score"):
        M.evaluate_segmentation(np.array([0.5, 1.5]), groups={"s": ["a", "b"]})


def test_evaluate_from_masks_counts_both_empty_samples():
    rng = np.random.default_rng(3)
    true = rng.random((40, 8, 8)) > 0.6
    pred = true.copy()
    pred[20:] = rng.random((20, 8, 8)) > 0.6  # group b: noisy predictions
    pred[0], true[0] = False, False  # both empty: dice 1
    groups = np.array(["a"] * 20 + ["b"] * 20)
    report = M.evaluate_segmentation(pred_masks=pred, true_masks=true, groups={"g": groups}, bootstrap=0)
    task = report.tasks["segmentation"]
    assert task.overall["n_both_empty"].value == 1
    per_sample = [M.dice_score(pred[i], true[i]) for i in range(40)]
    assert task.overall["mean_dice"].value == pytest.approx(np.mean(per_sample))
    assert task.attributes["g"].worst_group["dice"] == "b"
