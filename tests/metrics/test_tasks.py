"""Multi-label reports: tasks with their own known-label samples, uncertain labels, and merged reports keep the
macro metrics and the Benjamini–Hochberg correction across tasks."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import false_discovery_control
from sklearn.metrics import roc_auc_score

import fairfm.metrics as M
from fairfm.errors import InputError


def _tasks(seed=0, n=400):
    rng = np.random.default_rng(seed)
    sex = rng.choice(["F", "M"], n)
    y = pd.DataFrame({t: (rng.random(n) < 0.4).astype(float) for t in ("a", "b", "c")})
    p = pd.DataFrame({t: np.clip(rng.random(n) * 0.7 + (0.2 + 0.2 * k) * y[t] * np.where(sex == "F", 1.5, 1.0), 0, 1)
                      for k, t in enumerate(y.columns)})  # fmt: skip
    return y, p, sex


def _gap(y, p, g):
    aucs = [roc_auc_score(y[g == k], p[g == k]) for k in np.unique(g)]
    return max(aucs) - min(aucs)


def test_each_task_keeps_only_its_known_labels_and_macro_runs_across_tasks():
    y, p, sex = _tasks()
    y.loc[::5, "b"] = np.nan  # b: every fifth sample unlabelled
    y.loc[1::7, "c"] = -1  # c: uncertain
    report = M.evaluate(y, p, groups={"sex": sex}, bootstrap=100)
    gaps = []
    for task in ("a", "b", "c"):
        keep = np.isfinite(y[task]).to_numpy() & (y[task] != -1).to_numpy()
        yt, pt, gt = y[task].to_numpy()[keep], p[task].to_numpy()[keep], sex[keep]
        result = report.tasks[task]
        assert result.n == keep.sum()
        assert result.overall["auc"].value == pytest.approx(roc_auc_score(yt, pt))
        gaps.append(_gap(yt, pt, gt))
        assert result.attributes["sex"].summary["auc_gap"].value == pytest.approx(gaps[-1])
    assert (report.tasks["b"].n_unknown_label, report.tasks["c"].n_uncertain_label) == (80, len(range(1, 400, 7)))
    assert report.macro["sex"]["macro_auc_gap"] == pytest.approx(np.mean(gaps))
    p_values = [report.tasks[t].attributes["sex"].significance["auc_gap_p"] for t in "abc"]
    q_values = [report.tasks[t].attributes["sex"].significance["auc_gap_q"] for t in "abc"]
    assert q_values == pytest.approx(false_discovery_control(p_values))


@pytest.mark.parametrize("policy, value", [("ones", 1), ("zeros", 0)])
def test_uncertain_labels_follow_the_policy(policy, value):
    y, p, sex = _tasks(1)
    y.loc[::6, "a"] = -1
    report = M.evaluate(y[["a"]], p[["a"]], groups={"sex": sex}, uncertain=policy, bootstrap=0)
    mapped = np.where(y["a"] == -1, value, y["a"])
    assert report.tasks["a"].n == len(y) and report.tasks["a"].n_uncertain_label == 67
    assert report.tasks["a"].overall["auc"].value == pytest.approx(roc_auc_score(mapped, p["a"]))
    assert report.uncertain == policy and report.to_dict()["labels"]["uncertain"] == policy


def test_a_task_left_with_one_class_says_what_was_left_out():
    y, p, sex = _tasks(2, n=50)
    y["a"] = np.where(np.arange(50) < 10, np.nan, 0.0)
    with pytest.raises(InputError, match=r"column 'a': every sample has label 0 \(10 unknown label\(s\) left out\)"):
        M.evaluate(y, p, groups={"sex": sex}, bootstrap=0)
    with pytest.raises(InputError, match="unknown uncertain-label policy 'sometimes'"):
        M.evaluate(y, p, groups={"sex": sex}, bootstrap=0, uncertain="sometimes")


def test_merged_per_task_reports_get_macro_metrics_and_bh_across_tasks():
    from fairfm.metrics.report import merge_reports

    y, p, sex = _tasks(3)
    parts = [M.evaluate(y[[t]], p[[t]], groups={"sex": sex}, bootstrap=100, seed=k) for k, t in enumerate("abc")]
    for part in parts:  # alone, each part's BH has one test: q = p
        sig = part.tasks[next(iter(part.tasks))].attributes["sex"].significance
        assert sig["auc_gap_q"] == sig["auc_gap_p"]
    merged = merge_reports(parts)
    assert list(merged.tasks) == ["a", "b", "c"]
    gaps = [_gap(y[t].to_numpy(), p[t].to_numpy(), sex) for t in "abc"]
    assert merged.macro["sex"]["macro_auc_gap"] == pytest.approx(np.mean(gaps))
    assert merged.macro["__all__"]["macro_auc"] == pytest.approx(np.mean([roc_auc_score(y[t], p[t]) for t in "abc"]))
    p_values = [merged.tasks[t].attributes["sex"].significance["auc_gap_p"] for t in "abc"]
    q_values = [merged.tasks[t].attributes["sex"].significance["auc_gap_q"] for t in "abc"]
    assert q_values == pytest.approx(false_discovery_control(p_values))
    assert "macro" in merged.to_dict() and not math.isnan(merged.macro["sex"]["macro_auc_gap"])
    with pytest.raises(InputError, match="task 'a' is in more than one"):
        merge_reports([parts[0], parts[0]])
    # Parts with other interval methods or profiles cannot share one bootstrap record.
    percentile = M.evaluate(y[["b"]], p[["b"]], groups={"sex": sex}, bootstrap=100, ci_method="percentile")
    with pytest.raises(InputError, match="same kind, profile and bootstrap design"):
        merge_reports([parts[0], percentile])
    khan = M.evaluate(y[["b"]], p[["b"]], groups={"sex": sex}, bootstrap=100, profile="khan", ci_method="simultaneous")
    with pytest.raises(InputError, match="same kind, profile and bootstrap design"):
        merge_reports([parts[0], khan])
