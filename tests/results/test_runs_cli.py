"""``fairfm runs list`` and ``fairfm runs show``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.results.helpers import compute

FAIRFM = Path(sys.executable).parent / "fairfm"


def metric(record, metric, attribute="__all__", group="__all__"):
    m = record.metrics
    hit = m[(m["metric"] == metric) & (m["attribute"] == attribute) & (m["group"] == group)]
    return float(hit["value"].iloc[0])


@pytest.fixture()
def two_runs(store, spec):
    return [store.run(spec, compute), store.run(spec.replace(seed=1, method="group_dro"), compute)]


def test_list_json_has_the_key_metrics(capsys, store, two_runs):
    code, out, err = run_cli(capsys, "runs", "list", "--store", store.path, "--json")
    assert code == 0, err
    rows = {row["run_id"]: row for row in json.loads(out)}
    assert set(rows) == {r.run_id for r in two_runs}
    for record in two_runs:
        row = rows[record.run_id]
        assert (row["dataset"], row["model"], row["usage"], row["seed"]) == ("toy", "tiny_vit", "linear_probe",
                                                                             record.spec["seed"])  # fmt: skip
        assert row["method"] == record.spec["method"]
        assert row["created"] == record.meta["created"]
        assert (row["utility_metric"], row["gap_metric"], row["attribute"]) == ("auc", "auc_gap", "sex")
        assert row["utility"] == pytest.approx(metric(record, "auc"))
        assert row["gap"] == pytest.approx(metric(record, "auc_gap", "sex", "__summary__"))


def test_list_table(capsys, store, two_runs, monkeypatch):
    from fairfm.cli import runs as runs_cli

    code, out, _ = run_cli(capsys, "runs", "list", "--store", store.path)  # 80 columns: ids are never wrapped
    assert code == 0 and all(record.run_id in out for record in two_runs)
    monkeypatch.setattr(runs_cli.console, "width", 160)
    code, out, _ = run_cli(capsys, "runs", "list", "--store", store.path)
    assert code == 0
    for record in two_runs:
        line = next(line for line in out.splitlines() if record.run_id in line)
        assert f"{metric(record, 'auc'):.3f}" in line
        assert f"{metric(record, 'auc_gap', 'sex', '__summary__'):.3f} sex" in line
        assert "linear_probe" in line and (record.spec["method"] or "–") in line
    assert "2 run(s)" in out


def test_list_empty_store(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "runs", "list", "--store", tmp_path / "empty")
    assert code == 0 and "no runs in" in out
    code, out, _ = run_cli(capsys, "runs", "list", "--store", tmp_path / "empty", "--json")
    assert code == 0 and json.loads(out) == []


def test_show(capsys, store, two_runs):
    record = two_runs[1]
    code, out, err = run_cli(capsys, "runs", "show", record.run_id[:8], "--store", store.path)
    assert code == 0, err
    assert f"run {record.run_id}" in out
    assert "group_dro" in out and "linear_probe" in out and "best_f1@val" in out
    assert f"{metric(record, 'auc'):.3f}" in out
    assert f"{metric(record, 'auc_gap', 'sex', '__summary__'):.3f}" in out
    assert "auc per group" in out
    assert "eqodds_score" not in out  # only the key metrics without --all
    code, out, _ = run_cli(capsys, "runs", "show", record.run_id, "--store", store.path, "--all")
    assert code == 0 and "eqodds_score" in out


def test_show_json(capsys, store, two_runs):
    record = two_runs[0]
    code, out, _ = run_cli(capsys, "runs", "show", record.run_id, "--store", store.path, "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["run_id"] == record.run_id and doc["spec"] == record.spec
    assert len(doc["metrics"]) == len(record.metrics)


def test_show_unknown_run_is_one_line_and_exit_2(store, two_runs):
    env = {**os.environ, "FAIRFM_STORE": str(store.path)}  # also checks the environment variable
    result = subprocess.run([str(FAIRFM), "runs", "show", "0123456789"], capture_output=True, text=True, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: no run '0123456789' in {store.path} (2 run(s); see 'fairfm runs list')"]
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_store_from_the_environment(capsys, store, two_runs, monkeypatch):
    monkeypatch.setenv("FAIRFM_STORE", str(store.path))
    code, out, _ = run_cli(capsys, "runs", "list", "--json")
    assert code == 0 and len(json.loads(out)) == 2


def test_aggregate_over_seeds(capsys, store, spec, monkeypatch):
    import numpy as np

    from fairfm.cli import runs as runs_cli

    records = [store.run(spec.replace(seed=s), compute) for s in (0, 1, 2)]
    code, out, err = run_cli(capsys, "runs", "aggregate", "--store", store.path, "--json", "--attribute", "sex")
    assert code == 0, err
    rows = json.loads(out)
    by_metric = {(r["attribute"], r["metric"]): r for r in rows}
    assert set(by_metric) == {("__all__", "auc"), ("sex", "auc_gap"), ("sex", "worst_auc"), ("sex", "eod")}
    gaps = [metric(r, "auc_gap", "sex", "__summary__") for r in records]
    assert by_metric[("sex", "auc_gap")]["mean"] == pytest.approx(np.mean(gaps))
    assert by_metric[("sex", "auc_gap")]["std"] == pytest.approx(np.std(gaps, ddof=1))
    assert by_metric[("sex", "auc_gap")]["n_seeds"] == 3
    monkeypatch.setattr(runs_cli.console, "width", 160)
    code, out, _ = run_cli(capsys, "runs", "aggregate", "--store", store.path, "--metric", "auc_gap")
    assert code == 0
    assert f"{np.mean(gaps):.3f} ± {np.std(gaps, ddof=1):.3f}" in out
    assert "worst_auc" not in out


def test_a_segmentation_run_is_listed_and_shown_with_dice(capsys, store, dataset, monkeypatch):
    import numpy as np
    import pandas as pd

    import fairfm.metrics as fm
    from fairfm.cli import runs as runs_cli
    from fairfm.spec import RunSpec

    def segment(spec):
        samples = pd.read_parquet(dataset / "samples.parquet")
        dice = np.random.default_rng(spec.seed).uniform(0.3, 0.9, len(samples))
        predictions = samples[["sample_id", "split", "group_sex"]].assign(task="disease", dice=dice)
        report = fm.evaluate_segmentation(dice, groups={"sex": samples["group_sex"].to_numpy()}, bootstrap=0)
        return predictions, report

    spec = RunSpec.from_dict({"dataset": str(dataset), "model": "tiny_sam", "usage": "sam_prompt",
                              "attributes": ["sex"]})  # fmt: skip
    record = store.run(spec, segment)
    assert "dice" in record.predictions.columns and "y_score" not in record.predictions.columns
    monkeypatch.setattr(runs_cli.console, "width", 160)
    code, out, _ = run_cli(capsys, "runs", "list", "--store", store.path)
    assert code == 0
    assert f"{metric(record, 'mean_dice'):.3f} (dice)" in out
    assert f"{metric(record, 'dice_gap', 'sex', '__summary__'):.3f} sex" in out
    code, out, _ = run_cli(capsys, "runs", "show", record.run_id, "--store", store.path)
    assert code == 0 and "dice per group" in out
    for group in ("F", "M"):
        assert f"{metric(record, 'dice', 'sex', group):.3f}" in out
