"""Sweeps: every executor (in-process, process pool, Ray) gives the same stored runs; a sweep resumes; failures are
reported per cell without stopping the others."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from fairfm import runner
from fairfm.errors import InputError
from fairfm.results import Store
from fairfm.spec import SweepSpec
from fairfm.sweep import run_sweep
from tests.adapt.helpers import make_synth, make_tiny_clip
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    return make_synth(tmp_path_factory.mktemp("synth") / "data")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip")


def _sweep(synth_dir: Path, clip_dir: Path, **extra) -> SweepSpec:
    # Two usages × two seeds = four runs, cheap ones (zero-shot and a 3-epoch linear probe).
    return SweepSpec.from_dict({
        "dataset": str(synth_dir), "model": "clip", "checkpoint": str(clip_dir), "bootstrap": 20,
        "usage": ["zero_shot", "linear_probe"], "seeds": [0, 1],
        **extra,
    })  # fmt: skip


def _count_computations(monkeypatch) -> list[str]:
    calls: list[str] = []
    original = runner.compute_run

    def counting(spec, **kwargs):
        calls.append(f"{spec.usage}/{spec.seed}")
        return original(spec, **kwargs)

    monkeypatch.setattr(runner, "compute_run", counting)
    return calls


def test_local_sweep_runs_every_cell_once_and_resumes(synth_dir, clip_dir, tmp_path, monkeypatch):
    store = Store(tmp_path / "store")
    calls = _count_computations(monkeypatch)
    sweep = _sweep(synth_dir, clip_dir)
    assert len(sweep) == 4

    # Simulate a sweep killed after its second run: the two finished runs are stored, the rest are not.
    class Killed(Exception):
        pass

    seen = []

    def kill_after_two(outcome):
        seen.append(outcome)
        if len(seen) == 2:
            raise Killed

    with pytest.raises(Killed):
        run_sweep(sweep, store, progress=False, on_outcome=kill_after_two)
    assert len(store) == 2 and calls == ["zero_shot/0", "zero_shot/1"]

    outcomes = run_sweep(sweep, store, progress=False)
    assert [o.status for o in outcomes] == ["found", "found", "computed", "computed"]
    assert calls == ["zero_shot/0", "zero_shot/1", "linear_probe/0", "linear_probe/1"]  # nothing recomputed
    assert [(o.spec["usage"], o.spec["seed"]) for o in outcomes] == [
        ("zero_shot", 0), ("zero_shot", 1), ("linear_probe", 0), ("linear_probe", 1)]  # grid order, seeds fastest
    assert len(store) == 4 and len({o.run_id for o in outcomes}) == 4
    for outcome in outcomes:
        assert outcome.run_id == store.run_id(outcome.spec)

    again = run_sweep(sweep, store, progress=False)
    assert {o.status for o in again} == {"found"} and len(calls) == 4


def test_cells_that_are_the_same_run_are_run_once(synth_dir, clip_dir, tmp_path):
    # device is an execution field, not part of the run id: the two cells are one run.
    sweep = SweepSpec.from_dict({"dataset": str(synth_dir), "model": "clip", "checkpoint": str(clip_dir),
                                 "usage": "zero_shot", "bootstrap": 10, "device": ["cpu", "auto"]})  # fmt: skip
    outcomes = run_sweep(sweep, Store(tmp_path / "store"), progress=False)
    assert len(sweep) == 2 and len(outcomes) == 1 and outcomes[0].status == "computed"


@pytest.fixture(scope="module")
def local_reference(synth_dir, clip_dir, tmp_path_factory):
    """One zero-shot and one linear-probe run computed in-process: what every executor must reproduce."""
    sweep = SweepSpec.from_dict({"dataset": str(synth_dir), "model": "clip", "checkpoint": str(clip_dir),
                                 "bootstrap": 20, "usage": ["zero_shot", "linear_probe"]})  # fmt: skip
    store = Store(tmp_path_factory.mktemp("local") / "store")
    return sweep, store, run_sweep(sweep, store, progress=False)


@pytest.mark.parametrize("executor", ["pool", "ray"])
def test_parallel_executors_store_the_same_runs_as_the_local_one(local_reference, tmp_path, executor):
    sweep, local_store, local = local_reference
    parallel_store = Store(tmp_path / executor)
    parallel = run_sweep(sweep, parallel_store, executor=executor, workers=2, progress=False)
    assert [o.status for o in parallel] == ["computed"] * 2, [o.error for o in parallel]
    assert [o.run_id for o in parallel] == [o.run_id for o in local]
    for a, b in zip(local, parallel):
        # Same spec, same seed: the same predictions and metrics whichever process computed them.
        pd.testing.assert_frame_equal(local_store.load(a.run_id).predictions,
                                      parallel_store.load(b.run_id).predictions)  # fmt: skip
        pd.testing.assert_frame_equal(local_store.load(a.run_id).metrics, parallel_store.load(b.run_id).metrics)
    assert {o.status for o in run_sweep(sweep, parallel_store, executor=executor, progress=False)} == {"found"}


def test_a_cell_that_fails_while_running_is_reported_and_the_others_are_stored(synth_dir, clip_dir, tmp_path,
                                                                               monkeypatch):  # fmt: skip
    # A failure no up-front check can see (it happens inside the run): that cell fails, the other is computed.
    original = runner.compute_run

    def failing(spec, **kwargs):
        if spec.usage == "linear_probe":
            raise InputError("planted failure inside the run")
        return original(spec, **kwargs)

    monkeypatch.setattr(runner, "compute_run", failing)
    store = Store(tmp_path / "store")
    sweep = SweepSpec.from_dict({"dataset": str(synth_dir), "checkpoint": str(clip_dir), "model": "clip",
                                 "bootstrap": 10, "usage": ["linear_probe", "zero_shot"]})  # fmt: skip
    outcomes = run_sweep(sweep, store, progress=False)
    assert [o.status for o in outcomes] == ["failed", "computed"]
    assert outcomes[0].input_error and "planted failure inside the run" in outcomes[0].error
    assert len(store) == 1

    stopped = run_sweep(sweep, Store(tmp_path / "other"), keep_going=False, progress=False)
    assert [o.status for o in stopped] == ["failed"]


def test_a_model_of_the_wrong_family_fails_the_sweep_before_any_run(synth_dir, clip_dir, tmp_path):
    store = Store(tmp_path / "store")
    # bit_m_r50x1 is a vision-only model: its zero-shot cell is refused up front, so the CLIP cell does not run
    sweep = SweepSpec.from_dict({"dataset": str(synth_dir), "checkpoint": str(clip_dir), "usage": "zero_shot",
                                 "bootstrap": 10, "model": ["bit_m_r50x1", "clip"]})  # fmt: skip
    with pytest.raises(InputError, match=r"sweep cell 0 \(bit_m_r50x1 · zero_shot · seed 0\): .*zero_shot needs a "
                       "vision-language model"):  # fmt: skip
        run_sweep(sweep, store, progress=False)
    assert len(store) == 0


def test_a_missing_checkpoint_fails_the_sweep_before_any_run(synth_dir, clip_dir, tmp_path):
    missing = tmp_path / "no_such_checkpoint"
    sweep = SweepSpec.from_dict({"dataset": str(synth_dir), "model": "clip", "usage": "zero_shot",
                                 "checkpoint": [str(clip_dir), str(missing)]})  # fmt: skip
    store = Store(tmp_path / "store")
    with pytest.raises(InputError, match=r"sweep cell 1 \(clip · zero_shot · seed 0\): checkpoint: .*no_such_checkpoint"):
        run_sweep(sweep, store, progress=False)
    assert len(store) == 0


def test_bad_executor_arguments_are_input_errors(synth_dir, clip_dir, tmp_path):
    sweep = _sweep(synth_dir, clip_dir)
    store = Store(tmp_path / "store")
    with pytest.raises(InputError, match="executor 'dask' is not one of local, pool, ray"):
        run_sweep(sweep, store, executor="dask")
    with pytest.raises(InputError, match="workers: 0"):
        run_sweep(sweep, store, executor="pool", workers=0)
    with pytest.raises(InputError, match="--address .* is for the ray executor"):
        run_sweep(sweep, store, executor="pool", address="auto")
    with pytest.raises(InputError, match="local executor runs one run at a time"):
        run_sweep(sweep, store, workers=2, progress=False)
    assert len(store) == 0


def test_cli_dry_run_then_sweep_then_found(synth_dir, clip_dir, tmp_path, capsys):
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({"dataset": str(synth_dir), "model": "clip", "checkpoint": str(clip_dir),
                                          "usage": "zero_shot", "bootstrap": 20,
                                          "hparams": {"ensemble": [True, False]}}))  # fmt: skip
    store = tmp_path / "store"
    code, out, _ = run_cli(capsys, "sweep", sweep_file, "--store", store, "--dry-run")
    assert code == 0 and out.count("to run") == 2 and "hparams.ensemble" in out
    assert not (store / "runs").exists()

    code, out, _ = run_cli(capsys, "sweep", sweep_file, "--store", store, "--quiet")
    assert code == 0 and out.count("computed") == 2
    stored = Store(store)
    for record in stored.list():
        assert record.run_id in out
        gap = record.metrics.query("attribute == 'sex' and metric == 'auc_gap'")
        assert f"{gap['value'].iloc[0]:.3f} [{gap['ci_low'].iloc[0]:.3f}, {gap['ci_high'].iloc[0]:.3f}]" in out

    code, out, _ = run_cli(capsys, "sweep", sweep_file, "--store", store, "--quiet")
    assert code == 0 and out.count("found") == 2 and "computed" not in out


def test_cli_failures_exit_2_for_bad_input_and_name_the_cell(synth_dir, clip_dir, tmp_path, capsys):
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({"dataset": str(synth_dir), "model": "bit_m_r50x1", "usage": "zero_shot",
                                          "checkpoint": str(clip_dir), "seeds": [0, 1]}))  # fmt: skip
    code, out, err = run_cli(capsys, "sweep", sweep_file, "--store", tmp_path / "store", "--quiet")
    # refused up front: both cells named, nothing run
    assert code == 2 and "sweep cell 0 (bit_m_r50x1 · zero_shot · seed 0)" in err and "sweep cell 1" in err
    assert "vision-language" in err and "Traceback" not in out + err and not (tmp_path / "store" / "runs").exists()

    code, _, err = run_cli(capsys, "sweep", tmp_path / "nope.yaml", "--store", tmp_path / "store")
    assert code == 2 and "nope.yaml" in err and "Traceback" not in err


def test_a_sweep_over_a_dataset_name_prepares_it_once_in_the_parent(clip_dir, tmp_path):
    from tests.data.chest_releases import write_chexpert

    raw = write_chexpert(tmp_path / "raw", n_patients=80, demo="csv")
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({"dataset": "chexpert", "root": "raw", "model": "clip", "usage": "zs",
                                          "checkpoint": str(clip_dir), "bootstrap": 10, "tasks": ["no_finding"],
                                          "hparams": {"ensemble": [True, False]}}))  # fmt: skip
    sweep = SweepSpec.from_yaml(sweep_file)
    store = Store(tmp_path / "store")
    outcomes = run_sweep(sweep, store, progress=False)
    assert [o.status for o in outcomes] == ["computed", "computed"], [o.error for o in outcomes]
    prepared = sorted((store.path / "datasets").iterdir())
    assert len(prepared) == 1 and prepared[0].name.startswith("chexpert-patient-seed0-")
    for outcome in outcomes:  # the stored runs point at the prepared folder and read images from the raw release
        spec = store.load(outcome.run_id).spec
        assert spec["dataset"] == str(prepared[0]) and spec["root"] == str(raw.resolve())
    assert {o.status for o in run_sweep(sweep, store, progress=False)} == {"found"}
