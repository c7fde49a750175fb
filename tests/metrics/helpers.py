"""Shared test data for the metric tests."""

import numpy as np
import pandas as pd


def make_data(seed: int, n: int = 600, n_groups: int = 4, ties: bool = True, unknown: bool = True):
    """Random labels and scores with tied scores, several groups and some unknown group values."""
    rng = np.random.default_rng(seed)
    names = np.array([f"g{k}" for k in range(n_groups)], dtype=object)
    groups = names[rng.integers(0, n_groups, n)]
    if unknown:
        groups[rng.random(n) < 0.08] = None
        groups[rng.random(n) < 0.03] = "unknown"
    y = (rng.random(n) < 0.35).astype(int)
    p = rng.random(n) * 0.7 + 0.3 * y * rng.random(n)
    if ties:
        p = np.round(p, 1)  # many exact ties, also between classes
    return y, np.clip(p, 0, 1), pd.Series(groups, name="grp")
