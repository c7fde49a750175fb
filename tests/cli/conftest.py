import numpy as np
import pandas as pd
import pytest

from tests.conftest import run_cli


class Result:
    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def run(capsys):
    """Run ``fairfm ARGS`` in-process; returns exit code, stdout and stderr."""

    def _run(*args):
        return Result(*run_cli(capsys, *args))

    return _run


@pytest.fixture
def preds(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 2, n)
    frame = pd.DataFrame({
        "sample_id": [f"s{i}" for i in range(n)],
        "label": y,
        "score": np.clip(rng.random(n) * 0.6 + 0.4 * y, 0, 1).round(4),
        "sex": rng.choice(["F", "M"], n),
        "race": rng.choice(["Asian", "Black", "White", "Unknown"], n),
        "age": rng.integers(20, 90, n),
    })  # fmt: skip
    path = tmp_path / "preds.csv"
    frame.to_csv(path, index=False)
    return path, frame
