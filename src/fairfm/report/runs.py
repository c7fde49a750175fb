"""What a report or a comparison needs to know about a stored run beyond its tables: the threshold it used."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fairfm.results.store import RunRecord


@dataclass(frozen=True)
class RunThreshold:
    value: float
    policy: str
    leaks_labels: bool  # chosen on the evaluated (test) set's own labels
    stored: bool  # read from the run's meta.json (False: chosen again from its val rows)


def run_threshold(record: "RunRecord", task: str, y_test: np.ndarray, p_test: np.ndarray) -> RunThreshold:
    """The decision threshold the run used for ``task``: the value its report stored (meta.json ``report``), else
    chosen again from the run's own val rows by its spec's threshold policy exactly as the metric engine chooses
    it (``fairfm.metrics.paired.run_threshold``)."""
    from fairfm.metrics.paired import run_threshold as choose

    extras = (((record.meta or {}).get("report") or {}).get("tasks") or {}).get(task) or {}
    predictions = record.predictions
    rows = predictions[predictions["task"].astype(str) == task]
    val = rows[(rows["split"].astype(str) == "val") & rows["y_true"].isin([0, 1])]
    y_val = val["y_true"].to_numpy(dtype=np.uint8) if len(val) else None
    p_val = val["y_score"].to_numpy(dtype=np.float64) if len(val) else None
    value, leaks, policy = choose(record.spec.get("threshold"), np.asarray(y_test).astype(np.uint8),
                                  np.asarray(p_test, dtype=np.float64), y_val, p_val)  # fmt: skip
    stored = extras.get("threshold")
    if stored is not None and math.isfinite(float(stored)):
        return RunThreshold(float(stored), _stored_policy(record, task) or policy, _stored_leaks(record, task, leaks),
                            stored=True)  # fmt: skip
    return RunThreshold(value, policy, leaks, stored=False)


def _stored_policy(record: "RunRecord", task: str) -> str | None:
    m = record.metrics
    rows = m[(m["task"].astype(str) == task) & m["threshold_policy"].notna()]
    return str(rows["threshold_policy"].iloc[0]) if len(rows) else None


def _stored_leaks(record: "RunRecord", task: str, default: bool) -> bool:
    m = record.metrics
    if "threshold_leaks_labels" not in m.columns:
        return default
    rows = m[(m["task"].astype(str) == task) & (m["metric"] == "acc")]
    return bool(rows["threshold_leaks_labels"].iloc[0]) if len(rows) else default
