"""The leaderboard of stored runs: configurations, mean ± std over seeds, intervals, flags, Khan's fairness score."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fairfm.report.leaderboard import (configurations, fairness_scores, format_value, leaderboard, run_kind,
                                       tasks_of, attributes_of)  # fmt: skip
from tests.report.stored_runs import DESIGN, SEEDS


def _value(record, task, attribute, group, metric):
    m = record.metrics
    row = m[(m["task"] == task) & (m["attribute"] == attribute) & (m["group"] == group) & (m["metric"] == metric)]
    assert len(row) == 1
    return row.iloc[0]


def _classification(store):
    return [r for r in store.list() if r.spec["dataset"] == "synthetic"]


def test_labels_name_the_dataset_and_usage_only_when_they_vary(report_store):
    store, _ = report_store
    records = _classification(store)
    relabelled = [r for r in records if r.spec["model"] != "fakeA"]
    assert {c.label for c in configurations(relabelled)} == {"fakeB · ERM", "fakeB · reweighting", "fakeC · ERM"}
    erm_only = [r for r in records if r.spec.get("method") is None]
    assert {c.label for c in configurations(erm_only)} == {"fakeA", "fakeB", "fakeC"}


def test_runs_that_differ_only_by_seed_form_one_configuration_with_a_unique_label(report_store):
    store, ids = report_store
    configs = configurations(store.list())
    assert len(configs) == len(DESIGN) + 1  # + the segmentation run
    assert len({c.label for c in configs}) == len(configs)
    by_label = {c.label: c for c in configs}
    # labels name what varies among configurations of one kind: here model and method
    erm = by_label["fakeA · ERM"]
    assert sorted(r.run_id for r in erm.records) == sorted(ids[("fakeA", None, s)] for s in SEEDS)
    assert erm.seeds == list(SEEDS)
    assert by_label["fakeA · group_thresholds"].attribute_aware
    assert not erm.attribute_aware
    assert run_kind(by_label["fakeSAM"].first) == "segmentation"  # the one segmentation configuration


def test_the_leaderboard_is_the_mean_and_sample_std_over_seeds_of_the_stored_values(report_store):
    store, ids = report_store
    configs = configurations(_classification(store))
    board = leaderboard(configs, task="y", attribute="sex").set_index("label")
    for (model, method) in DESIGN:
        label = f"{model} · {method or 'ERM'}"
        runs = [store.load(ids[(model, method, s)]) for s in SEEDS]
        for metric, attribute, group in (("auc", "__all__", "__all__"), ("auc_gap", "sex", "__summary__"),
                                         ("worst_auc", "sex", "__summary__"), ("eod", "sex", "__summary__")):
            values = np.array([_value(r, "y", attribute, group, metric)["value"] for r in runs])
            assert board.loc[label, metric] == pytest.approx(values.mean(), abs=1e-12)
            assert board.loc[label, f"{metric}_std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
            assert math.isnan(board.loc[label, f"{metric}_low"])  # several seeds: no single interval
    assert board["n_seeds"].eq(len(SEEDS)).all()
    assert board.loc["fakeA · group_thresholds", "attribute_aware"]


def test_a_single_seed_shows_its_bootstrap_interval(report_store):
    store, ids = report_store
    record = store.load(ids[("fakeB", None, 0)])
    board = leaderboard(configurations([record]), task="z", attribute="age")
    row = _value(record, "z", "age", "__summary__", "auc_gap")
    assert board.loc[0, "auc_gap"] == row["value"]
    assert (board.loc[0, "auc_gap_low"], board.loc[0, "auc_gap_high"]) == (row["ci_low"], row["ci_high"])
    assert math.isnan(board.loc[0, "auc_gap_std"])


def test_the_designed_ordering_of_gaps_is_recovered(report_store):
    store, _ = report_store
    configs = configurations(_classification(store))
    board = leaderboard(configs, task="y", attribute="sex").set_index("label")
    # fakeA ERM separates F and M most (signals 0.6 vs 2.0), fakeB reweighting least (1.3 vs 1.3)
    assert board["auc_gap"].idxmax() == "fakeA · ERM"
    assert board.loc["fakeB · reweighting", "auc_gap"] < board.loc["fakeA · ERM", "auc_gap"]


def test_segmentation_and_classification_are_not_mixed_on_one_board(report_store):
    from fairfm.errors import InputError

    store, _ = report_store
    with pytest.raises(InputError, match="one kind"):
        leaderboard(configurations(store.list()), task="y", attribute="sex")
    seg = [c for c in configurations(store.list()) if c.kind == "segmentation"]
    assert len(seg) == 1
    board = leaderboard(seg, task="cup", attribute="sex")
    record = seg[0].first
    assert board.loc[0, "dice_gap"] == _value(record, "cup", "sex", "__summary__", "dice_gap")["value"]


def test_tasks_and_attributes_in_first_seen_order(report_store):
    store, _ = report_store
    assert tasks_of(store.list()) == ["y", "z", "cup"]
    assert attributes_of(store.list()) == ["sex", "age"]


@given(st.lists(st.floats(0, 0.5, allow_nan=False), min_size=1, max_size=8))
def test_fairness_score_is_max_gap_plus_one_minus_gap_in_points(gaps):
    scores = fairness_scores(pd.Series(gaps))
    points = np.array(gaps) * 100
    assert np.allclose(scores, points.max() + 1 - points)
    assert scores.min() == pytest.approx(1.0)  # the least fair model scores 1
    s = scores.to_numpy()
    assert all(s[i] >= s[j] for i in range(len(s)) for j in range(len(s)) if points[i] < points[j])  # fairer: higher


def test_fairness_score_keeps_missing_gaps_missing():
    scores = fairness_scores(pd.Series([0.02, math.nan, 0.05]))
    assert math.isnan(scores[1]) and scores[2] == pytest.approx(1.0) and scores[0] == pytest.approx(4.0)


def test_values_are_formatted_with_interval_or_spread():
    assert format_value(0.9123, low=0.89, high=0.93) == "0.912 [0.890, 0.930]"
    assert format_value(0.9123, std=0.004, n_seeds=3) == "0.912 ± 0.004"
    assert format_value(math.nan) == "–"
