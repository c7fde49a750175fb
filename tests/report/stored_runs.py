"""Stored runs for the report tests, written without torch: designed per-group signal, several models, methods
and seeds, two attributes, two tasks, one attribute-aware method and one segmentation run.

The score of a sample is a logistic function of ``signal * (2y - 1)`` plus noise, with the signal chosen per
(model, method, group): a larger signal is a higher AUC, so each run's ordering of groups is known by design.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from fairfm.results import Store

#: (model, method) -> signal per sex group (F, M); age groups shift the signal by AGE_SHIFT.
DESIGN = {
    ("fakeA", None): (0.6, 2.0),
    ("fakeA", "reweighting"): (1.0, 1.6),
    ("fakeA", "group_thresholds"): (0.6, 2.0),  # attribute-aware post-processing: same scores, other thresholds
    ("fakeB", None): (1.2, 1.4),
    ("fakeB", "reweighting"): (1.3, 1.3),
    ("fakeC", None): (0.4, 0.6),
}
AGE_SHIFT = {"young": 0.2, "old": -0.2}
TASKS = ("y", "z")
SEEDS = (0, 1)
N_PER_GROUP = 150
BOOTSTRAP = 40


def classification_predictions(signal_f: float, signal_m: float, *, seed: int, model: str) -> pd.DataFrame:
    """val and test rows of both tasks; the same sample ids (and labels, groups) for every run of one seed."""
    rng_labels = np.random.default_rng(1000 + seed)  # shared across models: paired comparisons are possible
    rng_noise = np.random.default_rng(zlib.crc32(f"{model}/{seed}".encode()))
    rows = []
    for split in ("val", "test"):
        for sex, signal in (("F", signal_f), ("M", signal_m)):
            age = np.where(np.arange(N_PER_GROUP) % 2 == 0, "young", "old")
            ids = [f"{split}-{sex}-{i}" for i in range(N_PER_GROUP)]
            for task in TASKS:
                y = (rng_labels.random(N_PER_GROUP) < 0.4).astype(int)
                s = signal + np.vectorize(AGE_SHIFT.get)(age) + (0.3 if task == "z" else 0.0)
                score = 1 / (1 + np.exp(-(s * (2 * y - 1) + rng_noise.normal(size=N_PER_GROUP) - 0.4)))
                rows.append(pd.DataFrame({"sample_id": ids, "task": task, "split": split, "y_true": y,
                                          "y_score": score, "group_sex": sex, "group_age": age}))
    return pd.concat(rows, ignore_index=True)


def write_classification_run(store: Store, model: str, method: str | None, seed: int, *,
                             usage: str = "linear_probe") -> str:
    from fairfm.runner import report_from_predictions

    signal_f, signal_m = DESIGN[(model, method)]
    predictions = classification_predictions(signal_f, signal_m, seed=seed, model=model)
    evaluation = {"threshold": "best_f1@val", "bootstrap": BOOTSTRAP, "seed": seed}
    document = {"usage": usage, "model": model, "method": method, "tasks": list(TASKS),
                "attributes": ["sex", "age"], "dataset": "synthetic", **evaluation}
    aware = method == "group_thresholds"
    meta = {"method": {"name": method, "attribute_at_test": aware}} if method else {}
    run_id = f"{model}-{method or 'erm'}-{seed}".replace("_", "")[:40]
    store.run_derived(run_id, document, lambda: (predictions, report_from_predictions(
        predictions, SimpleNamespace(**evaluation)), meta))
    return run_id


def write_segmentation_run(store: Store, model: str = "fakeSAM", seed: int = 0) -> str:
    from fairfm.runner import segmentation_report

    rng = np.random.default_rng(seed)
    rows = []
    for sex, centre in (("F", 0.62), ("M", 0.78)):
        for split in ("val", "test"):
            dice = np.clip(rng.normal(centre, 0.1, size=80), 0, 1)
            rows.append(pd.DataFrame({"sample_id": [f"{split}-{sex}-{i}" for i in range(80)], "task": "cup",
                                      "split": split, "y_true": np.nan, "y_score": np.nan, "dice": dice,
                                      "iou": dice / (2 - dice), "group_sex": sex}))
    predictions = pd.concat(rows, ignore_index=True)
    evaluation = {"bootstrap": BOOTSTRAP, "seed": seed}
    document = {"usage": "sam_prompt", "model": model, "method": None, "tasks": ["cup"], "attributes": ["sex"],
                "dataset": "synthetic-seg", **evaluation}
    run_id = f"{model}-seg-{seed}"
    store.run_derived(run_id, document, lambda: (predictions, segmentation_report(
        predictions, SimpleNamespace(**evaluation)), {}))
    return run_id


def build_store(path: Path) -> tuple[Store, dict[tuple[str, str | None, int], str]]:
    """Every designed run (each seed) plus one segmentation run; returns the store and run ids by
    (model, method, seed); the segmentation run is under ("fakeSAM", None, 0)."""
    store = Store(path)
    ids = {(model, method, seed): write_classification_run(store, model, method, seed)
           for (model, method) in DESIGN for seed in SEEDS}
    ids[("fakeSAM", None, 0)] = write_segmentation_run(store)
    return store, ids
