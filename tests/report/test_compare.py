"""``fairfm compare``: paired-bootstrap differences between two stored runs (fairfm.metrics.paired,
fairfm.report.compare, fairfm.cli.compare), checked against the stored MetricTables, sklearn on the same resample
indices, and the symmetries a paired comparison must have."""

from __future__ import annotations

import csv
import io
import json
import shutil
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from fairfm.errors import InputError
from fairfm.metrics import evaluate
from fairfm.metrics.paired import COLUMNS, bootstrap_p_value, paired_bootstrap, paired_bootstrap_segmentation
from fairfm.report.compare import compare_runs
from fairfm.results import Store
from tests.conftest import run_cli

B = 200
KEYS = ["task", "attribute", "group", "metric"]


def _test_arrays(store, run_id: str, task: str):
    predictions = store.load(run_id).predictions
    rows = predictions[(predictions["split"] == "test") & (predictions["task"] == task)].sort_values("sample_id")
    return rows.reset_index(drop=True)


def _assert_points_equal_stored(comparison, store):
    for run_id, column in ((comparison.run_a, "value_a"), (comparison.run_b, "value_b")):
        stored = store.load(run_id).metrics[KEYS + ["value"]]
        merged = comparison.table.merge(stored, on=KEYS, how="left", validate="one_to_one")
        assert merged["value"].notna().sum() == merged[column].notna().sum() > 0
        assert not (merged["value"].isna() & merged[column].notna()).any(), "a compared metric is not stored"
        both = merged[merged["value"].notna()]
        np.testing.assert_allclose(both[column], both["value"], rtol=0, atol=1e-12)


@pytest.fixture(scope="module")
def a_vs_b(report_store):
    store, ids = report_store
    return compare_runs(store, ids[("fakeA", None, 0)], ids[("fakeB", None, 0)], bootstrap=B, seed=3)


def test_point_values_equal_each_runs_stored_metrics(report_store, a_vs_b):
    store, _ = report_store
    assert list(a_vs_b.table.columns) == list(COLUMNS)
    assert set(a_vs_b.table["task"]) == {"y", "z"}
    assert {"auc_gap", "worst_auc", "es_auc", "eod", "dpd", "ece_gap", "tpr_gap"} <= set(a_vs_b.table["metric"])
    _assert_points_equal_stored(a_vs_b, store)
    np.testing.assert_allclose(a_vs_b.table["difference"], a_vs_b.table["value_b"] - a_vs_b.table["value_a"])


def test_segmentation_points_equal_stored_metrics_and_self_difference_is_zero(report_store):
    store, ids = report_store
    run = ids[("fakeSAM", None, 0)]
    comparison = compare_runs(store, run, run, bootstrap=50)
    assert comparison.kind == "segmentation"
    assert {"mean_dice", "dice", "dice_gap", "worst_iou", "es_dice"} <= set(comparison.table["metric"])
    _assert_points_equal_stored(comparison, store)
    finite = comparison.table.dropna(subset=["p_value"])
    assert (finite["difference"] == 0).all() and (finite["p_value"] == 1).all()
    assert any("same run" in note for note in comparison.notes)


def test_auc_differences_equal_sklearn_on_the_same_resample_indices(report_store):
    """Oracle: for each resample's sample indices, sklearn's AUC of B minus A (overall, per group, the gap); the
    percentile interval and the p-value follow from those differences."""
    store, ids = report_store
    rows_a = _test_arrays(store, ids[("fakeA", None, 0)], "y")
    rows_b = _test_arrays(store, ids[("fakeB", None, 0)], "y")
    y, pa, pb = rows_a["y_true"].to_numpy(), rows_a["y_score"].to_numpy(), rows_b["y_score"].to_numpy()
    sex = rows_a["group_sex"].to_numpy()
    table, resamples = paired_bootstrap(y, pa, pb, {"sex": sex}, threshold_a=0.4, threshold_b=0.5, bootstrap=B,
                                        seed=11, task="y", return_resamples=True)  # fmt: skip
    counts = resamples["sex"]
    assert counts.shape == (B, y.size)
    # Stratified by sex: every resample keeps each group's size.
    for group in ("F", "M"):
        assert (counts[:, sex == group].sum(axis=1) == (sex == group).sum()).all()
    brute: dict[tuple[str, str], list[float]] = {("__all__", "auc"): [], ("F", "auc"): [], ("M", "auc"): [],
                                                 ("__summary__", "auc_gap"): []}  # fmt: skip
    for b in range(B):
        idx = np.repeat(np.arange(y.size), counts[b])
        brute[("__all__", "auc")].append(roc_auc_score(y[idx], pb[idx]) - roc_auc_score(y[idx], pa[idx]))
        gaps = []
        for p in (pa, pb):
            per_group = [roc_auc_score(y[idx][sex[idx] == g], p[idx][sex[idx] == g]) for g in ("F", "M")]
            gaps.append(max(per_group) - min(per_group))
        for g in ("F", "M"):
            sub = idx[sex[idx] == g]
            brute[(g, "auc")].append(roc_auc_score(y[sub], pb[sub]) - roc_auc_score(y[sub], pa[sub]))
        brute[("__summary__", "auc_gap")].append(gaps[1] - gaps[0])
    for (group, metric), diffs in brute.items():
        row = table[(table["group"] == group) & (table["metric"] == metric)].iloc[0]
        diffs = np.asarray(diffs)
        low, high = np.quantile(diffs, [0.025, 0.975])
        assert row["ci_low"] == pytest.approx(low, abs=1e-12) and row["ci_high"] == pytest.approx(high, abs=1e-12)
        tail = min(np.sum(diffs <= 0), np.sum(diffs >= 0))
        assert row["p_value"] == pytest.approx(min(1.0, 2 * (1 + tail) / (B + 1)), abs=1e-12)
    point = table[(table["group"] == "__all__") & (table["metric"] == "auc")].iloc[0]
    assert point["difference"] == pytest.approx(roc_auc_score(y, pb) - roc_auc_score(y, pa), abs=1e-12)


def test_a_run_compared_with_itself_differs_by_zero_with_p_one(report_store):
    store, ids = report_store
    run = ids[("fakeA", None, 0)]
    comparison = compare_runs(store, run, run, bootstrap=B)
    table = comparison.table.dropna(subset=["p_value"])
    assert len(table) > 150
    assert (table["difference"] == 0).all()
    assert (table["ci_low"] == 0).all() and (table["ci_high"] == 0).all()
    assert (table["p_value"] == 1).all() and (table["q_value"] == 1).all()


def test_swapping_the_runs_negates_differences_and_intervals(report_store, a_vs_b):
    store, ids = report_store
    b_vs_a = compare_runs(store, ids[("fakeB", None, 0)], ids[("fakeA", None, 0)], bootstrap=B, seed=3)
    forward, backward = a_vs_b.table.set_index(KEYS), b_vs_a.table.set_index(KEYS).loc[a_vs_b.table.set_index(KEYS).index]
    np.testing.assert_allclose(backward["difference"], -forward["difference"], atol=1e-12)
    np.testing.assert_allclose(backward["ci_low"], -forward["ci_high"], atol=1e-12)
    np.testing.assert_allclose(backward["ci_high"], -forward["ci_low"], atol=1e-12)
    np.testing.assert_allclose(backward["p_value"], forward["p_value"], atol=1e-12)
    np.testing.assert_allclose(backward["value_a"], forward["value_b"], atol=0)


def test_a_designed_large_difference_is_significant_and_a_small_one_is_not(a_vs_b):
    table = a_vs_b.table.set_index(KEYS)
    # fakeA's F group has a much weaker signal than fakeB's (0.6 vs 1.2): its AUC differs by design.
    large = table.loc[("y", "sex", "F", "auc")]
    assert large["difference"] > 0.1 and large["p_value"] < 0.05 and large["ci_low"] > 0
    assert table.loc[("y", "sex", "__summary__", "auc_gap"), "p_value"] < 0.05
    # Age shifts the signal of both models alike: their age AUC gaps differ little.
    small = table.loc[("y", "age", "__summary__", "auc_gap")]
    assert abs(small["difference"]) < 0.05 and small["p_value"] > 0.05 and small["ci_low"] < 0 < small["ci_high"]


def test_q_values_are_benjamini_hochberg_over_all_compared_metrics(a_vs_b):
    table = a_vs_b.table.dropna(subset=["p_value"])
    p = table["p_value"].to_numpy()
    m = p.size
    ranks = np.argsort(np.argsort(p, kind="stable"), kind="stable") + 1
    # Brute force of the definition: q_i = min over every p_j ≥ p_i of p_j · m / rank_j (capped at 1).
    expected = [min(1.0, min(p[j] * m / ranks[j] for j in range(m) if p[j] >= p[i])) for i in range(m)]
    np.testing.assert_allclose(table["q_value"], expected, atol=1e-12)
    assert m == 208 - int(a_vs_b.table["p_value"].isna().sum())


def test_runs_of_different_seeds_have_different_labels_and_are_refused(report_store, capsys):
    store, ids = report_store
    with pytest.raises(InputError, match=r"differ in their labels \(y_true\) for \d+ test sample\(s\)"):
        compare_runs(store, ids[("fakeA", None, 0)], ids[("fakeA", None, 1)], bootstrap=10)
    code, out, err = run_cli(capsys, "compare", ids[("fakeA", None, 0)], ids[("fakeB", None, 1)], "--store",
                             store.path, "--bootstrap", "10")  # fmt: skip
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and "labels" in err


def test_segmentation_and_classification_runs_are_refused(report_store):
    store, ids = report_store
    with pytest.raises(InputError, match="classification run and run B .* a segmentation run"):
        compare_runs(store, ids[("fakeA", None, 0)], ids[("fakeSAM", None, 0)], bootstrap=10)


@pytest.fixture
def own_store(report_store, tmp_path):
    """A writable store holding copies of two fixture runs and runs derived from their predictions."""
    store, ids = report_store
    mine = Store(tmp_path / "store")
    (mine.path / "runs").mkdir(parents=True)
    for key in (("fakeA", None, 0), ("fakeB", None, 0)):
        shutil.copytree(store.runs_dir / ids[key], mine.runs_dir / ids[key])
    return mine, store.load(ids[("fakeA", None, 0)]).predictions


def _derived(store, run_id, predictions, threshold="best_f1@val", dataset="synthetic"):
    from fairfm.runner import report_from_predictions

    evaluation = {"threshold": threshold, "bootstrap": 10, "seed": 0}
    document = {"usage": "linear_probe", "model": run_id, "dataset": dataset, **evaluation}
    store.run_derived(run_id, document, lambda: (predictions, report_from_predictions(
        predictions.drop(columns="run_id"), SimpleNamespace(**evaluation)), {}))  # fmt: skip
    return run_id


def test_runs_of_different_samples_are_refused_with_counts_and_examples(own_store):
    store, predictions = own_store
    renamed = predictions.copy()
    test_f = (renamed["split"] == "test") & renamed["sample_id"].isin(["test-F-0", "test-F-1", "test-F-2", "test-F-3"])
    renamed.loc[test_f, "sample_id"] = renamed.loc[test_f, "sample_id"] + "-other"
    _derived(store, "renamed", renamed)
    with pytest.raises(InputError) as caught:
        compare_runs(store, "fakeA-erm-0", "renamed", bootstrap=10)
    message = str(caught.value)
    assert "did not score the same test samples" in message
    assert "4 sample id(s) only in A (e.g. 'test-F-0', 'test-F-1', 'test-F-2', …)" in message
    assert "4 only in B (e.g. 'test-F-0-other'" in message


def test_runs_whose_groups_differ_are_refused_naming_the_column(own_store):
    store, predictions = own_store
    regrouped = predictions.copy()
    regrouped.loc[(regrouped["sample_id"] == "test-M-7"), "group_age"] = "young"  # test-M-7 is "old"
    _derived(store, "regrouped", regrouped)
    with pytest.raises(InputError, match=r"group column 'group_age' for 1 test sample\(s\) of task 'y' "
                                         r"\(e\.g\. 'test-M-7': 'old' in A, 'young' in B\)"):  # fmt: skip
        compare_runs(store, "fakeA-erm-0", "regrouped", bootstrap=10)


def test_each_run_keeps_its_own_threshold_policy_and_leaks_are_noted(own_store):
    """A run thresholded on its own test labels (best_f1@self): its threshold is re-derived by that policy (the
    point values equal its stored metrics) and the comparison says that it leaked the test labels."""
    store, predictions = own_store
    _derived(store, "selfthreshold", predictions, threshold="best_f1@self", dataset="other")
    comparison = compare_runs(store, "fakeA-erm-0", "selfthreshold", bootstrap=20)
    _assert_points_equal_stored(comparison, store)
    assert comparison.thresholds["y"]["b"]["policy"] == "best_f1@self"
    assert comparison.thresholds["y"]["a"]["value"] != comparison.thresholds["y"]["b"]["value"]
    table = comparison.table.set_index(KEYS)
    assert table.loc[("y", "__all__", "__all__", "auc"), "difference"] == 0  # same scores
    thresholded = [table.loc[("y", "__all__", "__all__", m), "difference"] for m in ("acc", "tpr", "fpr", "ppv")]
    assert any(d != 0 for d in thresholded)  # other threshold
    notes = " ".join(comparison.notes)
    assert "run B 'selfthreshold', task 'y': threshold policy best_f1@self chose the threshold with the test " \
           "labels" in notes
    assert "different threshold policies" in notes and "different datasets (A: synthetic, B: other)" in notes


def test_a_stale_run_is_noted(own_store):
    store, _ = own_store
    meta_path = store.runs_dir / "fakeB-erm-0" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["results_versions"] = {"metrics": "an older version"}
    meta_path.write_text(json.dumps(meta))
    comparison = compare_runs(store, "fakeA-erm-0", "fakeB-erm-0", bootstrap=10)
    assert any(note.startswith("run B 'fakeB-erm-0' is stale") for note in comparison.notes)


def test_run_ids_resolve_from_unique_prefixes_and_unknown_or_ambiguous_ones_list_candidates(report_store):
    store, _ = report_store
    comparison = compare_runs(store, "fakeSAM", "fakeSAM-seg", metrics=["dice_gap"], bootstrap=10)
    assert comparison.run_a == comparison.run_b == "fakeSAM-seg-0"
    ambiguous = r"RUN_A: run id 'fakeA-erm' is ambiguous .*: matches fakeA-erm-0, fakeA-erm-1$"
    with pytest.raises(InputError, match=ambiguous):
        compare_runs(store, "fakeA-erm", "fakeB-erm-0", bootstrap=10)
    with pytest.raises(InputError, match=r"RUN_B: run id 'fake' is ambiguous .*… \(13 in all\)"):
        compare_runs(store, "fakeA-erm-0", "fake", bootstrap=10)
    unknown = r"RUN_A: no run 'fakeZ-erm-0' in .*\(13 run\(s\); see 'fairfm runs list'\)"
    with pytest.raises(InputError, match=unknown):
        compare_runs(store, "fakeZ-erm-0", "fakeB-erm-0", bootstrap=10)


def test_metric_filter_keeps_those_metrics_and_unknown_names_are_refused(report_store):
    store, ids = report_store
    comparison = compare_runs(store, ids[("fakeA", None, 0)], ids[("fakeB", None, 0)], bootstrap=20,
                              metrics=["auc", "eod"])  # fmt: skip
    assert set(comparison.table["metric"]) == {"auc", "eod"}
    assert set(comparison.table["group"]) == {"__all__", "F", "M", "young", "old", "__summary__"}
    with pytest.raises(InputError, match="unknown metric 'auc_gapp'"):
        compare_runs(store, ids[("fakeA", None, 0)], ids[("fakeB", None, 0)], metrics=["auc_gapp"])
    with pytest.raises(InputError, match="'dice_gap' is not a classification metric"):
        compare_runs(store, ids[("fakeA", None, 0)], ids[("fakeB", None, 0)], metrics=["dice_gap"])


# -- the CLI -------------------------------------------------------------------------------------------------
def _cli(capsys, store, *args):
    return run_cli(capsys, "compare", "fakeA-erm-0", "fakeB-erm-0", "--store", store.path, "--bootstrap", "30",
                   "--quiet", *args)  # fmt: skip


def test_cli_table_shows_key_metrics_with_intervals_and_markers(report_store, capsys):
    store, _ = report_store
    code, out, err = _cli(capsys, store)
    assert code == 0, err
    for text in ("B = fakeB-erm-0", "A = fakeA-erm-0", "worst_auc", "auc_gap", "eod", "dpd", "ece_gap",
                 "B − A [95% CI]", "Benjamini–Hochberg"):  # fmt: skip
        assert text in out
    assert "tpr_gap" not in out  # not a key metric; --metric or --format csv shows it


def test_cli_json_parses_and_csv_has_the_table_columns(report_store, capsys):
    store, _ = report_store
    code, out, err = _cli(capsys, store, "--format", "json")
    assert code == 0, err
    document = json.loads(out)
    assert document["run_a"] == "fakeA-erm-0" and document["bootstrap"]["B"] == 30
    assert set(document["rows"][0]) == set(COLUMNS) and len(document["rows"]) == 208
    code, out, err = _cli(capsys, store, "--format", "csv", "--metric", "auc_gap")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == list(COLUMNS)
    assert {r["metric"] for r in rows} == {"auc_gap"} and len(rows) == 4  # 2 tasks × 2 attributes


def test_cli_out_writes_atomically_and_refuses_a_folder_before_work(report_store, capsys, tmp_path):
    store, _ = report_store
    target = tmp_path / "comparison.md"
    code, out, err = _cli(capsys, store, "--format", "md", "--out", target)
    assert code == 0, err
    assert target.read_text().startswith("## Comparison: B = `fakeB-erm-0` vs A = `fakeA-erm-0`")
    assert [p.name for p in tmp_path.iterdir()] == ["comparison.md"]  # no temporary file left beside it
    code, out, err = _cli(capsys, store, "--out", tmp_path)
    assert code == 2 and "is a folder" in err and err.count("\n") == 1
    code, out, err = _cli(capsys, store, "--format", "xml")
    assert code == 2 and "--format 'xml'" in err


# -- properties of the paired bootstrap ------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1, 1, allow_nan=False), min_size=1, max_size=60))
def test_bootstrap_p_value_is_symmetric_in_0_1_and_never_below_its_floor(differences):
    d = np.asarray(differences)
    p = bootstrap_p_value(d)
    assert 2 / (d.size + 1) - 1e-15 <= p <= 1
    assert bootstrap_p_value(-d) == p
    assert bootstrap_p_value(np.zeros(d.size)) == 1


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.2, 0.8), st.floats(0.2, 0.8))
def test_point_values_equal_evaluate_on_random_data(seed, threshold_a, threshold_b):
    """Ties, three groups and an unknown group: every point value is the metric engine's (via ``evaluate``)."""
    rng = np.random.default_rng(seed)
    n = 120
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    groups = {"site": rng.choice(["a", "b", "c"], n), "sex": rng.choice(["F", "M", "unknown"], n)}
    pa, pb = np.round(rng.random(n), 2), np.clip(rng.random(n) * 0.5 + 0.5 * y, 0, 1)
    table = paired_bootstrap(y, pa, pb, groups, threshold_a=threshold_a, threshold_b=threshold_b, bootstrap=5,
                             seed=seed)  # fmt: skip
    for p, t, column in ((pa, threshold_a, "value_a"), (pb, threshold_b, "value_b")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a group with one class is expected now and then
            stored = evaluate(y, p, groups=groups, threshold=t, bootstrap=0).to_metric_table()
        merged = table.merge(stored[KEYS + ["value"]], on=KEYS, how="inner")
        assert len(merged) == len(table)
        np.testing.assert_allclose(merged[column], merged["value"], rtol=0, atol=1e-12, equal_nan=True)


def test_segmentation_paired_bootstrap_checks_its_inputs():
    with pytest.raises(InputError, match="run A has \\['dice'\\] and run B \\['dice', 'iou'\\]"):
        paired_bootstrap_segmentation({"dice": [0.5]}, {"dice": [0.5], "iou": [0.3]}, {"sex": ["F"]})
    with pytest.raises(InputError, match="run B dice: 1 scores but 2 expected"):
        paired_bootstrap_segmentation({"dice": [0.5, 0.6]}, {"dice": [0.5]}, {"sex": ["F", "M"]})
