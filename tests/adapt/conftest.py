"""Fixtures for the adaptation tests (helpers in :mod:`tests.adapt.helpers`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.adapt.helpers import make_synth, make_tiny_clip


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    return make_synth(tmp_path_factory.mktemp("synth") / "data")


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip")


@pytest.fixture(scope="session")
def clip(clip_dir):
    from fairfm.models import create_model

    return create_model("clip", clip_dir)
