"""Simulated predictions with a planted, known disparity (for the demo, documentation and tests).

A latent disease severity drives both the label and the score; for one group the score is noisier (a model that
sees that group less clearly), so its AUC is lower by construction. Sex, race and age are independent of the
label, some demographics are unknown, and the validation split comes from the same process.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

RACES = ("Asian", "Black", "White")


def planted_predictions(n: int = 20000, seed: int = 0, disadvantaged: str = "Black", extra_noise: float = 1.0,
                        val_fraction: float = 0.25) -> tuple[pd.DataFrame, pd.DataFrame, dict]:  # fmt: skip
    """(test predictions, validation predictions, truth) with columns sample_id, label, score, sex, race, age."""
    rng = np.random.default_rng(seed)
    total = int(n * (1 + val_fraction))
    race = rng.choice(RACES, size=total, p=[0.15, 0.2, 0.65]).astype(object)
    sex = rng.choice(["F", "M"], size=total).astype(object)
    age = np.clip(rng.normal(58, 16, size=total).round(), 18, 95)
    severity = rng.normal(size=total)
    label = (severity + rng.normal(scale=0.8, size=total) > 0.9).astype(int)
    noise = np.where(race == disadvantaged, 1.0 + extra_noise, 1.0)
    logit = 1.6 * severity - 1.2 + rng.normal(size=total) * noise
    score = 1 / (1 + np.exp(-logit))
    race[rng.random(total) < 0.03] = "Unknown"
    sex[rng.random(total) < 0.005] = None
    frame = pd.DataFrame({
        "sample_id": [f"s{i:06d}" for i in range(total)], "label": label, "score": score.round(6),
        "sex": sex, "race": race, "age": age,
    })  # fmt: skip
    val = frame.iloc[n:].reset_index(drop=True)
    test = frame.iloc[:n].reset_index(drop=True)
    truth = {
        "description": f"scores for race={disadvantaged} carry {1 + extra_noise:.1f}× the noise of other groups; "
        "sex and age carry no disparity",
        "attribute": "race",
        "disadvantaged_group": disadvantaged,
        "seed": seed,
    }
    return test, val, truth
