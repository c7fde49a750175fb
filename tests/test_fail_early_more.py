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
