"""Fixtures: tiny prepared datasets (the real ``samples.parquet`` + ``dataset.json`` pair) and a run function that
produces a real PredictionTable and a real MetricTable from ``fairfm.metrics.evaluate``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fairfm.data.prepare import write_prepared
from fairfm.results import RunOutput
from fairfm.spec import RunSpec


def make_dataset(folder: Path, *, n: int = 60, seed: int = 0, name: str = "toy", tasks=("disease",),
                 policy: str = "patient") -> Path:  # fmt: skip
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "sample_id": [f"s{i:03d}" for i in range(n)],
        "patient_id": [f"p{i // 2:03d}" for i in range(n)],
        "path": [f"img/{i:03d}.png" for i in range(n)],
        "group_sex": rng.choice(["F", "M"], n),
        "group_age": rng.choice(["<60", "≥60"], n),
        "split": np.where(np.arange(n) % 5 == 0, "val", "test"),
    })  # fmt: skip
    for task in tasks:
        frame[f"label_{task}"] = np.tile([0.0, 1.0], n // 2 + 1)[:n]
    manifest = {"format_version": 1, "dataset": name, "dataset_version": "1", "root": str(folder / "raw"),
                "split": {"policy": policy, "seed": 0}, "n_samples": n}  # fmt: skip
    write_prepared(frame, folder, manifest)
    return folder


def compute(spec: RunSpec) -> RunOutput:
    """A stand-in for a usage: scores with a seed-dependent signal, evaluated with the real metric engine."""
    import fairfm.metrics as fm

    samples = pd.read_parquet(Path(spec.dataset) / "samples.parquet")
    resolved = spec.resolve()
    rng = np.random.default_rng(spec.seed)
    rows, labels, scores = [], {}, {}
    for task in resolved["tasks"]:
        y = samples[f"label_{task}"].to_numpy()
        score = 1 / (1 + np.exp(-(1.5 * (y - 0.5) + rng.normal(0, 1, y.size))))
        labels[task], scores[task] = y, score
        part = samples[["sample_id", "split", *[f"group_{a}" for a in resolved["attributes"]]]].copy()
        part.insert(1, "task", task)
        part["y_true"], part["y_score"] = y, score
        rows.append(part)
    predictions = pd.concat(rows, ignore_index=True)
    labels, scores = pd.DataFrame(labels), pd.DataFrame(scores)
    test, val = (samples["split"] == "test").to_numpy(), (samples["split"] == "val").to_numpy()
    groups = samples.loc[test, [f"group_{a}" for a in resolved["attributes"]]]
    groups = groups.rename(columns=lambda c: c.removeprefix("group_")).reset_index(drop=True)
    report = fm.evaluate(labels[test].reset_index(drop=True), scores[test].reset_index(drop=True), groups=groups,
                         val_true=labels[val].reset_index(drop=True), val_score=scores[val].reset_index(drop=True),
                         threshold=spec.threshold, bootstrap=spec.bootstrap, seed=spec.seed, n_jobs=1)  # fmt: skip
    return RunOutput(predictions, report.to_metric_table(), {"note": "test run"})


