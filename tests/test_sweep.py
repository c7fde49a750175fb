"""Sweeps: every executor (in-process, process pool, Ray) gives the same stored runs; a sweep resumes; failures are
reported per cell without stopping the others."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fairfm import runner
from fairfm.errors import InputError
from fairfm.results import Store
from fairfm.spec import SweepSpec
from fairfm.sweep import run_sweep
from fairfm.usages import base as usages_base, get_usage, list_usages
from tests.adapt.helpers import make_synth, make_tiny_clip
from tests.conftest import run_cli

TRAINED_USAGES = [u for u in list_usages() if get_usage(u).trains]


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


def _fail_inside_the_run(monkeypatch, ensemble: bool) -> None:
    original = runner.compute_run

    def failing(spec, **kwargs):
        if spec.hparams["ensemble"] is ensemble:
            raise InputError("planted failure inside the run")
        return original(spec, **kwargs)

    monkeypatch.setattr(runner, "compute_run", failing)


def test_a_failing_cell_is_reported_and_the_others_are_stored(synth_dir, clip_dir, tmp_path, monkeypatch):
    store = Store(tmp_path / "store")
    # The first cell fails inside the run; the second is computed.
    _fail_inside_the_run(monkeypatch, ensemble=True)
    sweep = SweepSpec.from_dict({"dataset": str(synth_dir), "checkpoint": str(clip_dir), "usage": "zero_shot",
                                 "bootstrap": 10, "model": "clip", "hparams": {"ensemble": [True, False]}})  # fmt: skip
    outcomes = run_sweep(sweep, store, progress=False)
    assert [o.status for o in outcomes] == ["failed", "computed"]
    assert outcomes[0].input_error and "planted failure inside the run" in outcomes[0].error
    assert len(store) == 1

    stopped = run_sweep(sweep, Store(tmp_path / "other"), keep_going=False, progress=False)
    assert [o.status for o in stopped] == ["failed"]


def test_a_model_of_the_wrong_family_fails_the_sweep_before_any_run(synth_dir, clip_dir, tmp_path):
    store = Store(tmp_path / "store")
    # bit_m_r50x1 is a vision-only model: its zero-shot cell is refused up front, so the CLIP cell does not run
    with pytest.raises(InputError, match=r"sweep cell 0: .*zero_shot needs a vision-language model"):
        sweep = SweepSpec.from_dict({"dataset": str(synth_dir), "checkpoint": str(clip_dir), "usage": "zero_shot",
                                     "bootstrap": 10, "model": ["bit_m_r50x1", "clip"]})  # fmt: skip
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


def test_cli_failures_exit_2_for_bad_input_and_name_the_cell(synth_dir, clip_dir, tmp_path, capsys, monkeypatch):
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({"dataset": str(synth_dir), "model": "clip", "usage": "zero_shot",
                                          "checkpoint": str(clip_dir), "seeds": [0, 1]}))  # fmt: skip
    _fail_inside_the_run(monkeypatch, ensemble=True)
    code, out, err = run_cli(capsys, "sweep", sweep_file, "--store", tmp_path / "store", "--quiet")
    assert code == 2 and "2 of 2 run(s) failed" in out and "planted failure" in out and "Traceback" not in out + err

    # A model of the wrong family for the usage (bit_m_r50x1 is vision-only) is refused before any run.
    sweep_file.write_text(yaml.safe_dump({"dataset": str(synth_dir), "model": "bit_m_r50x1", "usage": "zero_shot",
                                          "checkpoint": str(clip_dir), "seeds": [0, 1]}))  # fmt: skip
    code, out, err = run_cli(capsys, "sweep", sweep_file, "--store", tmp_path / "store2", "--quiet")
    assert code == 2 and "zero_shot needs a vision-language model" in err and "Traceback" not in out + err
    assert not (tmp_path / "store2" / "runs").exists()

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


def test_a_sweep_serves_stale_runs_marked_and_recomputes_them_when_asked(synth_dir, clip_dir, tmp_path, capsys,
                                                                         monkeypatch):  # fmt: skip
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({"dataset": str(synth_dir), "model": "clip", "checkpoint": str(clip_dir),
                                          "usage": "zero_shot", "bootstrap": 10,
                                          "hparams": {"ensemble": [True, False]}}))  # fmt: skip
    store = tmp_path / "store"
    assert run_cli(capsys, "sweep", sweep_file, "--store", store, "--quiet")[0] == 0
    old = {r.run_id for r in Store(store).list()}

    zero_shot = get_usage("zero_shot")  # a usage's results version is declared in its registration
    monkeypatch.setitem(usages_base._USAGES, "zero_shot",
                        dataclasses.replace(zero_shot, results_version=zero_shot.results_version + 1))  # fmt: skip
    calls = _count_computations(monkeypatch)
    code, out, _ = run_cli(capsys, "sweep", sweep_file, "--store", store, "--quiet")
    assert code == 0 and calls == [] and "2 stale run(s)" in out
    rows = [line for line in out.splitlines() if any(run_id in line for run_id in old)]
    assert len(rows) == 2 and all(" stale " in row for row in rows)
    code, out, _ = run_cli(capsys, "sweep", sweep_file, "--store", store, "--dry-run", "--recompute-stale")
    assert code == 0 and out.count("to run") == 2

    code, out, _ = run_cli(capsys, "sweep", sweep_file, "--store", store, "--quiet", "--recompute-stale")
    assert code == 0 and len(calls) == 2 and out.count("computed") == 2 and "stale run(s)" not in out
    assert len(Store(store)) == 4 and sum(r.stale for r in Store(store).list()) == 2
    outcomes = run_sweep(SweepSpec.from_yaml(sweep_file), Store(store), progress=False, recompute_stale=True)
    assert {o.status for o in outcomes} == {"found"} and len(calls) == 2


def test_a_sweep_prints_a_line_per_finished_run(synth_dir, clip_dir, tmp_path, capsys):
    sweep = SweepSpec.from_dict({"dataset": str(synth_dir), "model": "clip", "checkpoint": str(clip_dir),
                                 "usage": "zero_shot", "bootstrap": 10, "seeds": [0, 1]})  # fmt: skip
    outcomes = run_sweep(sweep, Store(tmp_path / "store"), progress=True)
    out = capsys.readouterr().out
    for outcome in outcomes:
        assert f"cell {outcome.index} (clip · zero_shot · seed {outcome.spec['seed']}): computed in " in out
        assert f"→ run {outcome.run_id}" in out


def test_a_seed_sweep_over_a_dataset_name_shares_one_split_and_aggregates(clip_dir, tmp_path, capsys):
    import json

    from tests.data.chest_releases import write_chexpert

    write_chexpert(tmp_path / "raw", n_patients=80, demo="csv")
    sweep_file = tmp_path / "sweep.yaml"
    base = {"dataset": "chexpert", "root": "raw", "model": "clip", "usage": "lp", "checkpoint": str(clip_dir),
            "bootstrap": 10, "tasks": ["no_finding"], "attributes": ["sex"],
            "hparams": {"epochs": 3, "batch_size": 16, "warmup_epochs": 0}}  # fmt: skip
    sweep_file.write_text(yaml.safe_dump({**base, "seeds": [0, 1, 2]}))
    store = tmp_path / "store"
    code, out, err = run_cli(capsys, "sweep", sweep_file, "--store", store, "--quiet")
    assert code == 0 and out.count("computed") == 3, out + err
    prepared = sorted((store / "datasets").iterdir())
    assert [p.name.split("-")[2] for p in prepared] == ["seed0"]  # one split for the three training seeds
    assert {r.spec["split_seed"] for r in Store(store).list()} == {0}

    code, out, _ = run_cli(capsys, "runs", "aggregate", "--store", store, "--metric", "auc", "--json")
    rows = [r for r in json.loads(out) if r["attribute"] == "__all__"]
    assert len(rows) == 1 and rows[0]["n_seeds"] == 3 and sorted(rows[0]["seeds"]) == [0, 1, 2]
    values = [r.metrics.query("attribute == '__all__' and metric == 'auc'")["value"].iloc[0]
              for r in Store(store).list()]  # fmt: skip
    assert rows[0]["std"] == pytest.approx(pd.Series(values).std()) and rows[0]["std"] > 0

    # A sweep over split seeds is its own axis: one prepared folder per split seed, aggregated with --over split_seed.
    split_file = tmp_path / "splits.yaml"
    split_file.write_text(yaml.safe_dump({**base, "split_seed": [1, 2]}))
    assert run_cli(capsys, "sweep", split_file, "--store", store, "--quiet")[0] == 0
    assert len(list((store / "datasets").iterdir())) == 3
    code, out, _ = run_cli(capsys, "runs", "aggregate", "--store", store, "--metric", "auc", "--json")
    by_seed = [r for r in json.loads(out) if r["attribute"] == "__all__"]
    assert sorted(r["n_seeds"] for r in by_seed) == [1, 1, 3]  # within each split seed: over training seeds
    code, out, _ = run_cli(capsys, "runs", "aggregate", "--store", store, "--metric", "auc", "--json",
                           "--over", "split_seed")  # fmt: skip
    over_splits = [r for r in json.loads(out) if r["attribute"] == "__all__"]
    assert len(over_splits) == 1 and over_splits[0]["n_seeds"] == 5
    assert sorted(over_splits[0]["split_seeds"]) == [0, 0, 0, 1, 2]


@pytest.fixture(scope="module")
def trained_local_reference(synth_dir, clip_dir, tmp_path_factory):
    """Each trained usage (one tiny epoch) in one in-process sweep: what every executor must reproduce."""
    sweep = SweepSpec.from_dict({"dataset": str(synth_dir), "model": "clip", "checkpoint": str(clip_dir),
                                 "bootstrap": 0, "device": "cpu", "usage": TRAINED_USAGES,
                                 "hparams": {"epochs": 1, "batch_size": 32, "warmup_epochs": 0}})  # fmt: skip
    store = Store(tmp_path_factory.mktemp("trained_local") / "store")
    # At the workers' thread count: a reduction split over another number of threads may differ in the last bit
    # (docs/usages.md), and what is tested here is that the cells run before a run in a process do not matter.
    import torch

    from fairfm.sweep import _threads_per_worker

    threads = torch.get_num_threads()
    torch.set_num_threads(_threads_per_worker(2))
    try:
        return sweep, store, run_sweep(sweep, store, progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("executor", ["pool", "ray"])
def test_every_trained_usage_stores_the_same_runs_in_parallel_as_in_process(trained_local_reference, tmp_path,
                                                                           executor):  # fmt: skip
    """A worker runs other cells before its own than the parent does, so this holds only when the spec's seed
    decides every initialisation (LoRA matrices, prompts, adapters, heads)."""
    sweep, local_store, local = trained_local_reference
    parallel_store = Store(tmp_path / executor)
    parallel = run_sweep(sweep, parallel_store, executor=executor, workers=2, progress=False)
    assert [o.status for o in local] == [o.status for o in parallel] == ["computed"] * len(TRAINED_USAGES), (
        [o.error for o in local + parallel])
    for a, b in zip(local, parallel):
        assert a.run_id == b.run_id
        pd.testing.assert_frame_equal(local_store.load(a.run_id).predictions,
                                      parallel_store.load(b.run_id).predictions, check_exact=True,
                                      obj=a.spec["usage"])  # fmt: skip
