"""Fixtures for the results store and spec tests (helpers in :mod:`tests.results.helpers`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fairfm.results import Store
from fairfm.spec import RunSpec
from tests.results.helpers import make_dataset


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "toy")


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture()
def spec(dataset: Path) -> RunSpec:
    return RunSpec.from_dict({"dataset": str(dataset), "model": "tiny_vit", "usage": "linear_probe",
                              "bootstrap": 20, "seed": 0})  # fmt: skip
