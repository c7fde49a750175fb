"""Fail early and clearly, continued (issue 9, B.5/B.6/B.8/B.10): a process waiting for a run's lock never removes
the lock holder's files; a sweep checks every cell and the store before preparing any dataset; a folder given as
``--out`` that is an existing file is refused in one line before any work; a local sweep shows each run's bootstrap
bar."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from fairfm import runner
from fairfm.results import Store
from fairfm.spec import RunSpec
from tests.adapt.helpers import make_synth, make_tiny_clip
from tests.conftest import run_cli


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    return make_synth(tmp_path_factory.mktemp("synth") / "data")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip")


def _zero_shot(synth_dir: Path, clip_dir: Path, **extra) -> RunSpec:
    return RunSpec.from_dict({"dataset": str(synth_dir), "model": "clip", "checkpoint": str(clip_dir),
                              "usage": "zero_shot", "bootstrap": 5, **extra})  # fmt: skip


# ----------------------------------------------------------------------------------------- B.8 a waiter owns no files


class _SleepInterrupted:
    """The ``time`` module as the store sees it, except that waiting is interrupted (Ctrl-C while a process waits
    for another's lock)."""

    def __getattr__(self, name):
        return getattr(time, name)

    @staticmethod
    def sleep(seconds):
        raise KeyboardInterrupt


def test_a_process_interrupted_while_waiting_for_the_lock_keeps_the_holders_head(synth_dir, clip_dir, tmp_path,
                                                                                  monkeypatch):  # fmt: skip
    import fairfm.results.store as store_module

    store = Store(tmp_path / "store")
    spec = _zero_shot(synth_dir, clip_dir)
    run_id = store.run_id(spec)
    head = store.path / "heads" / f"{run_id}.safetensors"
    holding, release = threading.Event(), threading.Event()

    def holder():
        with store.lock(run_id):
            head.parent.mkdir(parents=True, exist_ok=True)
            head.write_bytes(b"the lock holder's head, being written")
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert holding.wait(30)
        monkeypatch.setattr(store_module, "time", _SleepInterrupted())
        with pytest.raises(KeyboardInterrupt):
            runner.execute(spec, store, progress=False)
        assert head.read_bytes() == b"the lock holder's head, being written"
    finally:
        release.set()
        thread.join()


# ----------------------------------------------------------------------------------------- B.5/B.6 a sweep checks first


@pytest.fixture(scope="module")
def chexpert_raw(tmp_path_factory) -> Path:
    from tests.data.chest_releases import write_chexpert

    return write_chexpert(tmp_path_factory.mktemp("raw"), n_patients=80, demo="csv")


def _sweep_file(folder: Path, **fields) -> Path:
    import yaml

    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump({"usage": "zero_shot", "bootstrap": 5, **fields}))
    return path


def _never_prepare(monkeypatch) -> list:
    import fairfm.data.cache as cache

    prepared: list = []
    monkeypatch.setattr(cache, "ensure_prepared", lambda *a, **k: prepared.append(a) or (_ for _ in ()).throw(
        AssertionError("prepared")))  # fmt: skip
    return prepared


@pytest.mark.parametrize("where", ["file", "inside_file"])
def test_a_sweep_on_a_dataset_name_with_a_store_that_is_a_file_is_one_line(where, chexpert_raw, clip_dir, tmp_path,
                                                                            capsys, monkeypatch):  # fmt: skip
    prepared = _never_prepare(monkeypatch)
    as_file = tmp_path / "store.txt"
    as_file.write_text("not a store")
    store = as_file if where == "file" else as_file / "store"
    sweep = _sweep_file(tmp_path, dataset="chexpert", root=str(chexpert_raw), model="clip", checkpoint=str(clip_dir))
    code, out, err = run_cli(capsys, "sweep", sweep, "--store", store, "--quiet")
    assert code == 2 and "Traceback" not in err and err.count("\n") <= 2, err
    expected = "is a file, not a folder" if where == "file" else f"{store} cannot be created: {as_file} is a file"
    assert f"store {store}: " in err and expected in err
    assert prepared == [] and as_file.read_text() == "not a store"


def test_a_sweep_on_a_dataset_name_with_a_read_only_store_prepares_nothing(chexpert_raw, clip_dir, tmp_path, capsys,
                                                                           monkeypatch):  # fmt: skip
    from tests.test_fail_early import _unwritable

    prepared = _never_prepare(monkeypatch)
    store = tmp_path / "store"
    _unwritable(store, monkeypatch)
    sweep = _sweep_file(tmp_path, dataset="chexpert", root=str(chexpert_raw), model="clip", checkpoint=str(clip_dir))
    try:
        code, _, err = run_cli(capsys, "sweep", sweep, "--store", store, "--quiet")
    finally:
        store.chmod(0o755)
    assert code == 2 and "Traceback" not in err and f"store {store}: cannot write in {store}" in err
    assert prepared == []


def test_a_bad_cell_later_in_the_grid_is_reported_before_any_dataset_is_prepared(chexpert_raw, clip_dir, tmp_path,
                                                                                 capsys):  # fmt: skip
    store = tmp_path / "store"
    missing = tmp_path / "no_such_checkpoint"
    sweep = _sweep_file(tmp_path, dataset="chexpert", root=str(chexpert_raw),
                        grid={"model": ["clip", "nosuchmodel", "clip"],
                              "checkpoint": [str(clip_dir), str(clip_dir), str(missing)]})  # fmt: skip
    code, _, err = run_cli(capsys, "sweep", sweep, "--store", store, "--quiet")
    assert code == 2 and "Traceback" not in err
    assert "sweep: 2 problem(s) found before running" in err
    assert "sweep cell 1 (nosuchmodel · zero_shot · seed 0): unknown model 'nosuchmodel'" in err
    assert "sweep cell 2 (clip · zero_shot · seed 0): " in err and f"{missing} not found" in err
    assert not (store / "datasets").exists() and not (store / "runs").exists()


def test_a_sweep_on_a_dataset_name_still_prepares_it_once_and_runs(chexpert_raw, clip_dir, tmp_path):
    from fairfm.spec import SweepSpec
    from fairfm.sweep import plan, run_sweep

    store = Store(tmp_path / "store")
    sweep = SweepSpec.from_dict({"usage": "zero_shot", "bootstrap": 5, "dataset": "chexpert",
                                 "root": str(chexpert_raw), "model": "clip", "checkpoint": str(clip_dir),
                                 "tasks": ["no_finding"], "attributes": ["sex"], "seeds": [0, 1]})  # fmt: skip
    found, pending = plan(sweep, store, prepare=False)  # writes nothing: the run ids are not known yet
    assert found == [] and [p.run_id for p in pending] == ["", ""] and not store.path.exists()
    outcomes = run_sweep(sweep, store, progress=False)
    assert [o.status for o in outcomes] == ["computed", "computed"], [o.error for o in outcomes]
    assert len(list((store.path / "datasets").iterdir())) == 1


# ----------------------------------------------------------------------------------------- B.5 a folder --out


def _folder_out_commands(synth_dir: Path, clip_dir: Path, raw: Path) -> dict[str, list]:
    """Every command whose --out names a folder, with the arguments that would otherwise make it do its work."""
    return {
        "datasets synth": ["datasets", "synth", "--n", "40", "--size", "16"],
        "datasets prepare": ["datasets", "prepare", "chexpert", "--root", raw],
        "demo": ["demo", "--n", "200", "--bootstrap", "5", "--quiet"],
        "features extract": ["features", "extract", "--data", synth_dir, "--model", "clip", "--checkpoint", clip_dir],
    }


COMMANDS = ["datasets synth", "datasets prepare", "demo", "features extract"]


def _files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_folder_out_that_is_an_existing_file_is_one_line(command, synth_dir, clip_dir, chexpert_raw, tmp_path,
                                                           capsys):  # fmt: skip
    args = _folder_out_commands(synth_dir, clip_dir, chexpert_raw)[command]
    work = tmp_path / "work"
    work.mkdir()
    as_file = work / "out.txt"
    as_file.write_text("keep me")
    code, out, err = run_cli(capsys, *args, "--out", as_file)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert err == f"error: --out {as_file}: is a file; give the folder to write into\n"
    inside = as_file / "sub"
    code, out, err = run_cli(capsys, *args, "--out", inside)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert f"--out {inside}: {inside} cannot be created: {as_file} is a file" in err
    assert _files_under(work) == {"out.txt": b"keep me"}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_folder_out_that_cannot_be_written_is_refused_before_work(command, synth_dir, clip_dir, chexpert_raw,
                                                                    tmp_path, capsys, monkeypatch):  # fmt: skip
    from tests.test_fail_early import _unwritable

    args = _folder_out_commands(synth_dir, clip_dir, chexpert_raw)[command]
    read_only = tmp_path / "read_only"
    _unwritable(read_only, monkeypatch)
    try:
        code, _, err = run_cli(capsys, *args, "--out", read_only / "out")
    finally:
        read_only.chmod(0o755)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert f"--out {read_only / 'out'}: cannot write in {read_only}" in err
    assert list(read_only.iterdir()) == []


# ----------------------------------------------------------------------------------------- B.10 a local sweep's bars


def test_a_local_sweep_with_progress_shows_each_runs_bootstrap_bar(synth_dir, clip_dir, tmp_path, monkeypatch):
    import fairfm.metrics
    import fairfm.sweep as sweep_module
    from fairfm.spec import SweepSpec

    seen: list[bool] = []
    original = fairfm.metrics.evaluate_frame
    monkeypatch.setattr(fairfm.metrics, "evaluate_frame",
                        lambda *a, **k: seen.append(k.get("progress")) or original(*a, **k))  # fmt: skip
    base = {"dataset": str(synth_dir), "model": "clip", "checkpoint": str(clip_dir), "usage": "zero_shot",
            "bootstrap": 5}  # fmt: skip
    outcomes = sweep_module.run_sweep(SweepSpec.from_dict({**base, "seeds": [0, 1]}), Store(tmp_path / "a"),
                                      progress=True)  # fmt: skip
    assert [o.status for o in outcomes] == ["computed", "computed"] and seen == [True, True]
    seen.clear()
    outcomes = sweep_module.run_sweep(SweepSpec.from_dict(base), Store(tmp_path / "b"), progress=False)
    assert [o.status for o in outcomes] == ["computed"] and seen == [False]

    # pool and Ray workers have no terminal: they are not asked for bars (their line per cell says it)
    asked: list[dict] = []

    def fake_pool(pending, store_path, **options):
        asked.append(options)
        return iter([sweep_module.run_one(run.spec, str(store_path), run.index) for run in pending])

    monkeypatch.setitem(sweep_module._EXECUTORS, "pool", fake_pool)
    sweep_module.run_sweep(SweepSpec.from_dict(base), Store(tmp_path / "c"), executor="pool", progress=True)
    assert asked == [{"workers": None, "address": None}]
