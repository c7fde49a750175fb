"""Test labels never reach training, model selection or the validation-chosen threshold (issue 9, D): flipping every
test label leaves the trained weights, the selected epoch, the predictions and the threshold exactly as they were —
only the test metrics move. A policy that does look at the test labels (``best_f1@self``) shows the check would see a
leak."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import load_file

from fairfm import runner
from fairfm.data.prepare import load_prepared, write_prepared
from fairfm.spec import RunSpec
from tests.adapt.helpers import make_synth, make_tiny_clip
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> tuple[Path, Path]:
    """The planted-bias set, and a copy of it whose test labels are all flipped (same images, same split)."""
    original = make_synth(tmp_path_factory.mktemp("synth") / "data")
    flipped = tmp_path_factory.mktemp("flipped") / "data"
    shutil.copytree(original, flipped)
    frame, manifest = load_prepared(flipped)
    test = frame["split"] == "test"
    for column in [c for c in frame.columns if c.startswith("label_")]:
        frame.loc[test, column] = 1 - frame.loc[test, column]
    write_prepared(frame, flipped, manifest)
    return original, flipped


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip")


def _run(dataset: Path, clip_dir: Path, usage: str, store: Path, name: str, threshold: str = "best_f1@val"):
    hparams = {"epochs": 3, "batch_size": 32, "warmup_epochs": 0, "lr": 1e-2, "early_stopping_patience": None}
    spec = RunSpec.from_dict({"dataset": str(dataset), "model": "clip", "checkpoint": str(clip_dir), "usage": usage,
                              "hparams": hparams, "bootstrap": 0, "seed": 0, "device": "cpu",
                              "threshold": threshold})  # fmt: skip
    return runner.compute_run(spec, store_path=store, run_id=name, progress=False)


@pytest.mark.parametrize("usage", ["linear_probe", "lora"])
def test_flipping_test_labels_changes_nothing_but_the_test_metrics(datasets, clip_dir, tmp_path, usage):
    original, flipped = datasets
    store = tmp_path / "store"
    predictions_a, report_a, meta_a = _run(original, clip_dir, usage, store, "original")
    predictions_b, report_b, meta_b = _run(flipped, clip_dir, usage, store, "flipped")

    # training and model selection: same history, same selected epoch, same weights
    assert meta_a["training"]["history"] == meta_b["training"]["history"]
    assert meta_a["training"]["best_epoch"] == meta_b["training"]["best_epoch"]
    weights = "head" if usage == "linear_probe" else "trained_state"
    state_a, state_b = load_file(meta_a[weights]), load_file(meta_b[weights])
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        np.testing.assert_array_equal(state_a[key], state_b[key], err_msg=key)
    # predictions of both splits, and the threshold chosen on validation
    pd.testing.assert_series_equal(predictions_a["y_score"], predictions_b["y_score"], check_exact=True)
    task = next(iter(report_a.tasks))
    assert report_a.tasks[task].threshold == report_b.tasks[task].threshold
    # …while the flip did reach the test metrics
    test_a, test_b = (p[p["split"] == "test"] for p in (predictions_a, predictions_b))
    assert (test_a["y_true"].to_numpy() == 1 - test_b["y_true"].to_numpy()).all()
    auc_a, auc_b = report_a.tasks[task].overall["auc"].value, report_b.tasks[task].overall["auc"].value
    assert auc_a == pytest.approx(1 - auc_b)


def test_a_threshold_chosen_on_the_test_labels_does_move(datasets, clip_dir, tmp_path):
    # The sensitivity of the check above: best_f1@self looks at the evaluated set's labels.
    original, flipped = datasets
    _, report_a, _ = _run(original, clip_dir, "linear_probe", tmp_path / "s", "a", threshold="best_f1@self")
    _, report_b, _ = _run(flipped, clip_dir, "linear_probe", tmp_path / "s", "b", threshold="best_f1@self")
    task = next(iter(report_a.tasks))
    assert report_a.tasks[task].threshold != report_b.tasks[task].threshold


def _predictions(path: Path, flip_test: bool) -> Path:
    rng = np.random.default_rng(3)
    n = 600
    y = rng.integers(0, 2, n)
    split = np.where(np.arange(n) < 250, "val", "test")
    frame = pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "split": split,
                          "y_true": np.where((split == "test") & flip_test, 1 - y, y),
                          "y_score": np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1).round(5),
                          "sex": rng.choice(["F", "M"], n)})  # fmt: skip
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize(("policy", "moves"), [("best_f1@val", False), ("youden@val", False), ("best_f1@self", True)])
def test_fairfm_evaluate_chooses_the_threshold_on_validation_rows_only(tmp_path, capsys, policy, moves):
    reports = []
    for flip in (False, True):
        out = tmp_path / f"report_{flip}.json"
        code, _, err = run_cli(capsys, "evaluate", _predictions(tmp_path / f"p{flip}.csv", flip), "--y-true", "y_true",
                               "--y-score", "y_score", "--attr", "sex", "--split-column", "split", "--threshold",
                               policy, "--bootstrap", "0", "--format", "json", "--out", out)  # fmt: skip
        assert code == 0, err
        reports.append(json.loads(out.read_text()))
    thresholds = [r["threshold"]["value"] for r in reports]  # one task: its report at the top level
    assert (thresholds[0] != thresholds[1]) is moves, thresholds
    aucs = [r["overall"]["auc"] for r in reports]
    assert aucs[0] == pytest.approx(1 - aucs[1])  # the flip reached the evaluated rows
