"""Fail early and clearly (issue 9, B.2/B.3/B.5/B.6/B.8): a run or sweep that cannot succeed is refused before any
work, in one line (one per cell for a sweep) and exit code 2; nothing half-done is left behind (no head without its
run, no empty feature-cache folder); a damaged run folder is reported and recomputed instead of failing forever."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import pytest
import timm
import yaml
from safetensors.torch import save_file

from fairfm import runner
from fairfm.data.prepare import write_prepared
from fairfm.errors import InputError
from fairfm.results import Store
from fairfm.spec import RunSpec, SweepSpec
from fairfm.sweep import run_sweep
from tests.adapt.helpers import make_synth, make_tiny_clip
from tests.conftest import run_cli
from tests.models.model_fixtures import TINY_VIT

LP = {"epochs": 2, "batch_size": 32, "warmup_epochs": 0, "optimizer": "adamw", "lr": 1e-3}


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    return make_synth(tmp_path_factory.mktemp("synth") / "data")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip")


@pytest.fixture(scope="module")
def one_class_val(synth_dir, tmp_path_factory) -> Path:
    """The synthetic dataset with every validation label set to 0: no AUC, no threshold can be chosen on val."""
    frame = pd.read_parquet(synth_dir / "samples.parquet")
    frame.loc[frame["split"] == "val", "label_disease"] = 0
    manifest = {**json.loads((synth_dir / "dataset.json").read_text()), "root": str(synth_dir)}
    folder = tmp_path_factory.mktemp("one_class") / "data"
    write_prepared(frame, folder, manifest)
    return folder


def _no_compute(monkeypatch) -> list:
    calls: list = []
    monkeypatch.setattr(runner, "compute_run", lambda spec, **kw: calls.append(spec) or (_ for _ in ()).throw(
        AssertionError("compute_run reached")))  # fmt: skip
    return calls


def _entries(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# ----------------------------------------------------------------------------------------- B.2 model × checkpoint


def test_run_with_a_vit_checkpoint_for_clip_rn50_is_refused_before_any_work(run_cli_, synth_dir, clip_dir,
                                                                            tmp_path):  # fmt: skip
    store = tmp_path / "store"
    code, out, err = run_cli_("run", "--dataset", synth_dir, "--model", "clip_rn50", "--checkpoint", clip_dir,
                              "--usage", "lp", "--bootstrap", "5", "--store", store, "--quiet")  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: model 'clip_rn50' (modified ResNet-50") and str(clip_dir) in err
    assert "holds a ViT image tower" in err
    assert not (store / "runs").exists() and not (store / "heads").exists() and not (store / "features").exists()


def test_run_with_a_dinov2_checkpoint_of_other_shapes_is_one_line(run_cli_, synth_dir, tmp_path):
    other = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=224, **TINY_VIT)
    save_file(other.state_dict(), str(tmp_path / "model.safetensors"))
    code, _, err = run_cli_("run", "--dataset", synth_dir, "--model", "dinov2", "--checkpoint",
                            tmp_path / "model.safetensors", "--usage", "lp", "--store", tmp_path / "store", "--quiet")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert (f"error: model 'dinov2' (ViT-B/14): checkpoint {tmp_path / 'model.safetensors'} does not fit this "
            "architecture: 'cls_token' is (1, 1, 32) in the checkpoint but (1, 1, 768) in the model") in err
    assert _entries(tmp_path / "store") == []


@pytest.fixture
def run_cli_(capsys):
    return lambda *args: run_cli(capsys, *args)


# ----------------------------------------------------------------------------------------- B.3 pairing


def test_a_sweep_pairs_each_model_with_its_checkpoint(synth_dir, clip_dir, tmp_path):
    rn = tmp_path / "rn_clip"
    from tests.adapt.test_finetune_families import _clip_rn

    _clip_rn(rn)
    sweep = SweepSpec.from_dict({"dataset": str(synth_dir), "usage": "zero_shot", "bootstrap": 5,
                                 "model": ["clip", "clip_rn50"], "checkpoint": [str(clip_dir), str(rn)]})  # fmt: skip
    cells = list(sweep.expand())
    assert len(sweep) == 2 and len(cells) == 2
    assert [(c.model, Path(c.checkpoint)) for c in cells] == [("clip", clip_dir), ("clip_rn50", rn)]
    outcomes = run_sweep(sweep, Store(tmp_path / "store"), progress=False)
    assert [o.status for o in outcomes] == ["computed", "computed"], [o.error for o in outcomes]
    with pytest.raises(InputError, match="model has 2 values and checkpoint 3: a sweep pairs each model with its "
                       "own checkpoint"):  # fmt: skip
        SweepSpec.from_dict({"dataset": str(synth_dir), "usage": "zs", "model": ["clip", "clip_rn50"],
                             "checkpoint": [str(clip_dir), str(rn), str(rn)]})  # fmt: skip


# ----------------------------------------------------------------------------------------- B.6 sweep up front


def test_a_sweep_reports_every_bad_cell_up_front_and_runs_nothing(synth_dir, clip_dir, one_class_val, tmp_path,
                                                                   monkeypatch, capsys):  # fmt: skip
    calls = _no_compute(monkeypatch)
    missing = tmp_path / "no_such_checkpoint"
    sweep = SweepSpec.from_dict({
        "usage": "zero_shot", "bootstrap": 5,
        "grid": {"dataset": [str(synth_dir), str(one_class_val), "no_such_dataset"],
                 "model": ["clip", "nosuchmodel", "clip_rn50", "clip"],
                 "checkpoint": [str(clip_dir), str(clip_dir), str(clip_dir), str(missing)]},
    })  # fmt: skip
    assert len(sweep) == 12
    store = Store(tmp_path / "store")
    with pytest.raises(InputError) as exc:
        run_sweep(sweep, store, progress=False)
    message = str(exc.value)
    lines = message.splitlines()
    assert lines[0] == "sweep: 11 problem(s) found before running, so nothing was run:" and len(lines) == 12
    assert "sweep cell 1 (nosuchmodel · zero_shot · seed 0): unknown model 'nosuchmodel'" in message
    assert "sweep cell 2 (clip_rn50 · zero_shot · seed 0): model 'clip_rn50'" in message
    assert "holds a ViT image tower" in message
    assert "sweep cell 3 (clip · zero_shot · seed 0): checkpoint: " in message and str(missing) in message
    assert (f"sweep cell 4 (clip · zero_shot · seed 0): {one_class_val / 'samples.parquet'}: task 'disease' has "
            "only class 0 in split 'val'") in message
    assert "sweep cell 8 (clip · zero_shot · seed 0): dataset: 'no_such_dataset' is neither a prepared" in message
    assert calls == [] and len(store) == 0 and not (store.path / "features").exists()

    # through the command line: exit 2, one line per problem, no traceback
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({"usage": "zero_shot", "dataset": str(synth_dir),
                                          "model": ["clip", "nosuchmodel"],
                                          "checkpoint": [str(clip_dir), str(missing)]}))  # fmt: skip
    code, out, err = run_cli(capsys, "sweep", sweep_file, "--store", tmp_path / "cli", "--quiet")
    assert code == 2 and "Traceback" not in err and err.count("sweep cell") == 1
    assert "sweep cell 1 (nosuchmodel · zero_shot · seed 0)" in err and not (tmp_path / "cli" / "runs").exists()


def test_invalid_cells_of_a_sweep_are_all_listed(synth_dir):
    with pytest.raises(InputError) as exc:
        SweepSpec.from_dict({"dataset": str(synth_dir), "model": "clip", "usage": ["lora", "zs"],
                             "hparams": {"rank": [0, 4]}})  # fmt: skip
    assert str(exc.value).splitlines() == [
        "sweep: 3 of 4 sweep cell(s) are invalid:",
        "  sweep cell 0: hparams.rank: Input should be greater than or equal to 1",
        "  sweep cells 2, 3: hparams.rank: unknown field (check the spelling)",
    ]


# ----------------------------------------------------------------------------------------- B.5 file system


def _zero_shot(synth_dir: Path, clip_dir: Path, **extra) -> RunSpec:
    return RunSpec.from_dict({"dataset": str(synth_dir), "model": "clip", "checkpoint": str(clip_dir),
                              "usage": "zero_shot", "bootstrap": 5, **extra})  # fmt: skip


def _unwritable(folder: Path, monkeypatch) -> None:
    """Make ``folder`` refuse new files. chmod does not stop root (CI runs as root), so there the write probe's
    temporary file creation is refused for that folder — what a read-only mount does to any user."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve() == folder.resolve():
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_a_read_only_heads_folder_is_found_before_training(synth_dir, clip_dir, tmp_path, monkeypatch):
    calls = _no_compute(monkeypatch)
    store = Store(tmp_path / "store")
    _unwritable(store.path / "heads", monkeypatch)
    spec = RunSpec.from_dict({"dataset": str(synth_dir), "model": "clip", "checkpoint": str(clip_dir),
                              "usage": "linear_probe", "hparams": LP, "bootstrap": 5})  # fmt: skip
    try:
        with pytest.raises(InputError, match=rf"store {store.path}: cannot write in {store.path / 'heads'} "
                                             r"\(Permission denied\)"):  # fmt: skip
            runner.run(spec, store, progress=False)
    finally:
        (store.path / "heads").chmod(0o755)
    assert calls == []


def test_a_store_that_is_a_file_or_inside_one(synth_dir, clip_dir, tmp_path, capsys):
    as_file = tmp_path / "store.txt"
    as_file.write_text("not a store")
    code, out, err = run_cli(capsys, "runs", "list", "--store", as_file)
    assert code == 2 and f"store {as_file}: is a file, not a folder" in err and "no runs" not in out
    with pytest.raises(InputError, match=f"store {as_file}: is a file, not a folder"):
        runner.run(_zero_shot(synth_dir, clip_dir), Store(as_file), progress=False)
    inside = as_file / "store"
    with pytest.raises(InputError, match=f"store {inside}: {inside} cannot be created: {as_file} is a file"):
        runner.run(_zero_shot(synth_dir, clip_dir), Store(inside), progress=False)
    assert as_file.read_text() == "not a store"


def test_evaluate_out_is_checked_before_evaluating(preds_file, tmp_path, capsys, monkeypatch):
    import fairfm.metrics

    evaluated = []
    original = fairfm.metrics.evaluate_frame
    monkeypatch.setattr(fairfm.metrics, "evaluate_frame", lambda *a, **k: evaluated.append(1) or original(*a, **k))
    args = ["evaluate", preds_file, "--y-true", "label", "--y-score", "score", "--attr", "sex", "--bootstrap", "0",
            "--format", "csv"]  # fmt: skip
    folder = tmp_path / "a_folder"
    folder.mkdir()
    code, _, err = run_cli(capsys, *args, "--out", folder)
    assert code == 2 and f"--out {folder}: is a folder; give the name of the file to write" in err
    parent_file = tmp_path / "file.txt"
    parent_file.write_text("x")
    code, _, err = run_cli(capsys, *args, "--out", parent_file / "out.csv")
    assert code == 2 and f"--out {parent_file / 'out.csv'}: {parent_file} is a file, not a folder" in err
    read_only = tmp_path / "read_only"
    _unwritable(read_only, monkeypatch)
    try:
        code, _, err = run_cli(capsys, *args, "--out", read_only / "out.csv")
    finally:
        read_only.chmod(0o755)
    assert code == 2 and f"cannot write in {read_only}" in err and err.count("\n") == 1
    assert evaluated == []
    existing = tmp_path / "out.csv"
    existing.write_text("old")
    code, _, err = run_cli(capsys, *args, "--out", existing)
    assert code == 0 and existing.read_text().startswith("run_id,task,attribute") and evaluated == [1]


@pytest.fixture
def preds_file(tmp_path) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    n = 200
    y = rng.integers(0, 2, n)
    path = tmp_path / "preds.csv"
    pd.DataFrame({"label": y, "score": (rng.random(n) + y) / 2, "sex": rng.choice(["F", "M"], n)}).to_csv(path,
                                                                                                         index=False)
    return path


def test_a_damaged_run_folder_is_reported_and_recomputed(synth_dir, clip_dir, tmp_path, capsys):
    store = Store(tmp_path / "store")
    spec = _zero_shot(synth_dir, clip_dir)
    record = runner.run(spec, store, progress=False)
    folder = record.path

    (folder / "metrics.parquet").write_bytes(b"PAR1 truncated")
    code, out, err = run_cli(capsys, "runs", "show", record.run_id, "--store", store.path)
    assert code == 2 and err.count("\n") == 1
    assert f"run folder {folder} is damaged (metrics.parquet is not a readable Parquet file" in err
    code, out, err = run_cli(capsys, "runs", "list", "--store", store.path)
    assert code == 0 and f"damaged run folder {folder} (metrics.parquet is not a readable Parquet file" in err
    assert "no runs in" in out

    again = runner.execute(spec, store, progress=False)  # recomputed, not a traceback, not found
    assert again.computed and again.record.run_id == record.run_id
    assert len(store.list()) == 1 and store.damaged() == []
    aside = list((store.path / "damaged").iterdir())
    assert len(aside) == 1 and aside[0].name.startswith(record.run_id)

    (folder / "meta.json").unlink()  # a folder without meta.json: in a sweep, the cell is recomputed too
    sweep = SweepSpec.from_dict({"dataset": str(synth_dir), "model": "clip", "checkpoint": str(clip_dir),
                                 "usage": "zero_shot", "bootstrap": 5})  # fmt: skip
    code, _, err = run_cli(capsys, "runs", "list", "--store", store.path)
    assert f"damaged run folder {folder} (no meta.json)" in err
    outcomes = run_sweep(sweep, store, progress=False)
    assert [o.status for o in outcomes] == ["computed"], [o.error for o in outcomes]
    assert store.exists(record.run_id) and len(list((store.path / "damaged").iterdir())) == 2


# ----------------------------------------------------------------------------------------- B.8 no orphans


def test_a_run_that_fails_after_its_head_is_written_leaves_no_head(synth_dir, clip_dir, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("planted failure after training")

    monkeypatch.setattr(runner, "report_from_predictions", broken)
    store = Store(tmp_path / "store")
    spec = RunSpec.from_dict({"dataset": str(synth_dir), "model": "clip", "checkpoint": str(clip_dir),
                              "usage": "linear_probe", "hparams": LP, "bootstrap": 5})  # fmt: skip
    with pytest.raises(RuntimeError, match="planted failure after training"):
        runner.run(spec, store, progress=False)
    assert list((store.path / "heads").glob("*")) == [] and len(store) == 0
    # the feature cache is kept on purpose: it is shared and complete, the next run reuses it
    entries = list((store.path / "features").iterdir())
    assert len(entries) == 1 and json.loads((entries[0] / "meta.json").read_text())["complete"]


def test_a_checkpoint_that_cannot_be_loaded_leaves_no_feature_folder(synth_dir, clip_dir, tmp_path):
    from fairfm.adapt.features import extract_features

    out = tmp_path / "features"
    with pytest.raises(InputError, match="holds a ViT image tower"):
        extract_features(synth_dir, "clip_rn50", out=out, checkpoint=clip_dir, progress=False)
    garbage = tmp_path / "garbage"
    shutil.copytree(clip_dir, garbage)
    (garbage / "open_clip_pytorch_model.bin").write_bytes(b"garbage" * 10)
    with pytest.raises(InputError, match="open_clip_pytorch_model.bin: cannot be read as a weights file"):
        extract_features(synth_dir, "clip", out=out, checkpoint=garbage, progress=False)
    assert _entries(out) == []


def test_a_dataset_name_is_not_prepared_into_a_store_that_cannot_take_it(clip_dir, tmp_path, capsys, monkeypatch):
    import fairfm.data.cache as cache
    from tests.data.chest_releases import write_chexpert

    raw = write_chexpert(tmp_path / "raw", n_patients=20, demo="csv")
    prepared = []
    monkeypatch.setattr(cache, "ensure_prepared", lambda *a, **k: prepared.append(a) or (_ for _ in ()).throw(
        AssertionError("prepared")))  # fmt: skip
    store = tmp_path / "store"
    _unwritable(store, monkeypatch)
    try:
        code, _, err = run_cli(capsys, "run", "--dataset", "chexpert", "--root", raw, "--model", "clip",
                               "--checkpoint", clip_dir, "--usage", "zs", "--store", store, "--quiet")  # fmt: skip
    finally:
        store.chmod(0o755)
    assert code == 2 and f"store {store}: cannot write in {store}" in err and prepared == []
