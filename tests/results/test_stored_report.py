"""A Report read back from its stored MetricTable (fairfm.metrics.stored) equals the one computed: classification
(one and several tasks, an excluded group, a profile), segmentation; and without the extras, what the table holds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import fairfm.metrics as fm
from fairfm.metrics.stored import report_extras, report_from_metric_table


def _classification(n: int = 300, tasks: int = 1, **kwargs):
    rng = np.random.default_rng(0)
    y = pd.DataFrame({f"t{j}": rng.integers(0, 2, n) for j in range(tasks)})
    p = pd.DataFrame({c: np.clip(y[c] * 0.3 + rng.uniform(0, 0.7, n), 0, 1) for c in y})
    groups = pd.DataFrame({"sex": rng.choice(["F", "M"], n), "site": rng.choice(["a", "b", "c"], n)})
    groups.loc[:3, "site"] = "tiny"  # four samples, all negative: not a valid group for AUC (excluded, with a note)
    y.iloc[:4] = 0
    yv = pd.DataFrame({c: rng.integers(0, 2, 80) for c in y})
    pv = pd.DataFrame({c: rng.uniform(0, 1, 80) for c in y})
    return fm.evaluate(y if tasks > 1 else y["t0"], p if tasks > 1 else p["t0"], groups=groups,
                       val_true=yv if tasks > 1 else yv["t0"], val_score=pv if tasks > 1 else pv["t0"],
                       bootstrap=50, seed=3, n_jobs=1, **kwargs)  # fmt: skip


def _round_trip(report):
    table = report.to_metric_table("r1")
    # Through Parquet types as the store keeps them (the extras through JSON).
    import json

    extras = json.loads(json.dumps(report_extras(report)))
    return report_from_metric_table(table, extras), table


@pytest.mark.parametrize("tasks", [1, 3])
def test_a_classification_report_round_trips(tasks):
    report = _classification(tasks=tasks)
    restored, table = _round_trip(report)
    pd.testing.assert_frame_equal(restored.summary, report.summary)
    pd.testing.assert_frame_equal(restored.by_group, report.by_group)
    pd.testing.assert_frame_equal(restored.to_metric_table("r1"), table)
    assert restored.to_json() == report.to_json()  # thresholds, worst groups, notes, macro, bootstrap, warnings


def test_a_profile_report_round_trips():
    report = _classification(profile="fairmedfm")
    restored, _ = _round_trip(report)
    assert restored.profile is not None and restored.profile.name == report.profile.name
    assert restored.to_json() == report.to_json()


def test_a_segmentation_report_round_trips():
    rng = np.random.default_rng(1)
    dice = rng.uniform(0.4, 0.95, 120)
    report = fm.evaluate_segmentation(dice, iou=dice / (2 - dice), groups={"sex": rng.choice(["F", "M"], 120)},
                                      bootstrap=40, seed=2)  # fmt: skip
    restored, _ = _round_trip(report)
    assert restored.kind == "segmentation"
    pd.testing.assert_frame_equal(restored.summary, report.summary)
    pd.testing.assert_frame_equal(restored.by_group, report.by_group)
    assert restored.to_json() == report.to_json()


def test_without_extras_the_table_alone_gives_every_value_and_interval():
    report = _classification()
    restored = report_from_metric_table(report.to_metric_table("r1"))
    columns = [c for c in report.summary.columns if not c.startswith("worst_")]
    pd.testing.assert_frame_equal(restored.summary[columns], report.summary[columns])
    expected = report.by_group.drop(columns="n_pos")
    pd.testing.assert_frame_equal(restored.by_group.drop(columns="n_pos"), expected)
    assert restored.by_group.loc[("site", "tiny"), "note"] != ""  # the excluded group keeps its reason


def test_a_report_with_unknown_and_uncertain_labels_round_trips_without_duplicate_rows():
    rng = np.random.default_rng(4)
    y = pd.DataFrame({"a": rng.integers(0, 2, 200).astype(float), "b": rng.integers(0, 2, 200).astype(float)})
    y.loc[:9, "a"] = np.nan  # unknown labels of task a
    y.loc[10:14, "b"] = -1  # uncertain labels of task b
    p = pd.DataFrame({c: rng.uniform(0, 1, 200) for c in y})
    report = fm.evaluate(y, p, groups={"sex": rng.choice(["F", "M"], 200)}, bootstrap=30, seed=1)
    table = report.to_metric_table("r1")
    restored = _round_trip(report)[0]
    pd.testing.assert_frame_equal(restored.to_metric_table("r1"), table)  # the label counts once, not twice
    assert restored.to_json() == report.to_json()
    alone = report_from_metric_table(table)  # without extras: the counts still come back once, as task fields
    assert alone.tasks["a"].n_unknown_label == 10 and alone.tasks["b"].n_uncertain_label == 5
    again = alone.to_metric_table("r1")
    assert len(again) == len(table) and (again["metric"] == "n_unknown_label").sum() == 2  # one row per task
    pd.testing.assert_series_equal(again["value"], table["value"])


def test_without_extras_notes_come_from_missing_values_not_interval_notes():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 120)
    groups = {"g": np.where(np.arange(120) < 117, "big", "tiny")}  # one valid group: the gaps are NaN with a note
    y[117:] = 0
    report = fm.evaluate(y, rng.uniform(0, 1, 120), groups=groups, bootstrap=20, seed=1)
    restored = report_from_metric_table(report.to_metric_table("r1"))
    assert restored.tasks["task"].attributes["g"].notes
    assert all("interval" not in note for note in restored.tasks["task"].attributes["g"].notes)
