"""Shared inputs of the method tests: the planted-bias dataset and the tiny random-weight CLIP (one per module, as
the tests write stores beside them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.adapt.helpers import make_synth, make_tiny_clip


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    return make_synth(tmp_path_factory.mktemp("synth") / "data")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip")


@pytest.fixture(scope="module")
def synth_and_clip(synth_dir, clip_dir) -> tuple[Path, Path]:
    return synth_dir, clip_dir
