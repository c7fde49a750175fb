"""The spec's seed decides every random initialisation (issue 9, A.2): a run gives bit-identical predictions whatever
ran before it in the process, and leaves the caller's random state where it was."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fairfm import runner
from fairfm.spec import RunSpec
from fairfm.usages import get_usage, list_usages
from tests.adapt.helpers import make_synth, make_tiny_clip

TRAINED_USAGES = [u for u in list_usages() if get_usage(u).trains]
# Tiny: one epoch of a 64-px, 2-block CLIP on 120 32-px images (a few seconds per run on one CPU core).
TINY_TRAINING = {"epochs": 1, "batch_size": 32, "warmup_epochs": 0}


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    return make_synth(tmp_path_factory.mktemp("synth") / "data")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip")


def _spec(synth_dir: Path, clip_dir: Path, usage: str, seed: int = 0) -> RunSpec:
    return RunSpec.from_dict({"dataset": str(synth_dir), "model": "clip", "checkpoint": str(clip_dir),
                              "usage": usage, "bootstrap": 0, "seed": seed, "device": "cpu",
                              "hparams": TINY_TRAINING})  # fmt: skip


def _predictions(spec: RunSpec, store: Path) -> pd.DataFrame:
    predictions, _, _ = runner.compute_run(spec, store_path=store, progress=False)
    return predictions


def test_every_trained_usage_is_listed():
    from fairfm.spec import TrainHParams, hparams_model

    trainable = {u for u in list_usages() if issubclass(hparams_model(u), TrainHParams)}
    assert trainable == set(TRAINED_USAGES)


@pytest.mark.parametrize("usage", TRAINED_USAGES)
def test_a_run_after_another_cell_gives_the_same_predictions_as_alone(synth_dir, clip_dir, tmp_path, usage):
    store = tmp_path / "store"
    spec = _spec(synth_dir, clip_dir, usage)

    torch.manual_seed(12345), np.random.seed(12345), random.seed(12345)  # a fresh process's state, say
    alone = _predictions(spec, store)

    # Another cell first (another usage, another seed), then some unrelated draws of the caller.
    other = "lora" if usage != "lora" else "adapter"
    _predictions(_spec(synth_dir, clip_dir, other, seed=3), store)
    torch.rand(17), np.random.rand(5), random.random()
    after_another = _predictions(spec, store)
    pd.testing.assert_frame_equal(alone, after_another, check_exact=True)


@pytest.mark.parametrize("usage", ["lora", "vpt"])
def test_a_run_leaves_the_callers_random_state_untouched(synth_dir, clip_dir, tmp_path, usage):
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    _predictions(_spec(synth_dir, clip_dir, usage), tmp_path / "store")
    after = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], after[0]) and np.array_equal(expected[1], after[1]) and expected[2] == after[2]


def test_the_seed_changes_the_initialisation(synth_dir, clip_dir, tmp_path):
    # Seeded, not constant: another seed gives other LoRA matrices (and so other predictions).
    store = tmp_path / "store"
    zero = _predictions(_spec(synth_dir, clip_dir, "lora", seed=0), store)
    one = _predictions(_spec(synth_dir, clip_dir, "lora", seed=1), store)
    assert not np.array_equal(zero["y_score"].to_numpy(), one["y_score"].to_numpy())
