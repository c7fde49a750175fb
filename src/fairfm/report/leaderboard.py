"""The leaderboard of a selection of stored runs: one row per configuration (model × usage × method × …),
aggregated over seeds, read from the runs' MetricTables (nothing is recomputed).

A *configuration* is a run's ``config_id`` (the run id without the training seed), so the rows of one
configuration differ only by seed: each metric is shown as its value with the bootstrap interval when one seed
ran, and as mean ± sample standard deviation over seeds otherwise. Khan et al.'s fairness score (METRICS.md §2)
compares the configurations on one attribute: FS_k = max_j FG_j + 1 − FG_k with FG the AUC gap in AUC points
(×100), so the least fair scores 1 — a property of the comparison, never of one run.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import pandas as pd

from fairfm.errors import InputError

if TYPE_CHECKING:
    from fairfm.results.store import RunRecord

ALL, SUMMARY = "__all__", "__summary__"
#: (metric, where it lives: overall row or the attribute's summary, column title, higher is better)
CLASSIFICATION_COLUMNS = (
    ("auc", ALL, "AUC", True),
    ("worst_auc", SUMMARY, "worst-group AUC", True),
    ("auc_gap", SUMMARY, "AUC gap", False),
    ("es_auc", SUMMARY, "ES-AUC", True),
    ("eod", SUMMARY, "EOD", False),
    ("dpd", SUMMARY, "DPD", False),
    ("ece_gap", SUMMARY, "ECE gap", False),
)
SEGMENTATION_COLUMNS = (
    ("mean_dice", ALL, "Dice", True),
    ("worst_dice", SUMMARY, "worst-group Dice", True),
    ("dice_gap", SUMMARY, "Dice gap", False),
    ("es_dice", SUMMARY, "ES-Dice", True),
    ("iou_gap", SUMMARY, "IoU gap", False),
)
#: The utility and the gap of the trade-off plot, per kind of run.
TRADEOFF = {"classification": ("auc", "auc_gap"), "segmentation": ("mean_dice", "dice_gap")}


def run_kind(record: "RunRecord") -> str:
    """"segmentation" when the run's MetricTable has Dice rows, else "classification"."""
    return "segmentation" if (record.metrics["metric"] == "mean_dice").any() else "classification"


def attribute_aware(record: "RunRecord") -> bool:
    """Whether the run's method reads the sensitive attribute to predict (meta.json ``method.attribute_at_test``)."""
    return bool(((record.meta or {}).get("method") or {}).get("attribute_at_test"))


def method_name(record: "RunRecord") -> str:
    return str(record.spec.get("method") or "ERM")


@dataclass
class Configuration:
    """The runs of one configuration (they differ only by seed) and how it is named in tables and plots."""

    config_id: str
    records: list["RunRecord"]
    label: str = ""
    kind: str = "classification"

    @property
    def first(self) -> "RunRecord":
        return self.records[0]

    @property
    def seeds(self) -> list[Any]:
        return [r.spec.get("seed") for r in self.records]

    @property
    def attribute_aware(self) -> bool:
        return any(attribute_aware(r) for r in self.records)

    @property
    def stale(self) -> bool:
        return any(r.stale for r in self.records)

    def describe(self) -> dict[str, Any]:
        spec = self.first.spec
        return {"dataset": _dataset_name(self.first), "model": spec.get("model"), "usage": spec.get("usage"),
                "method": method_name(self.first)}  # fmt: skip


def configurations(records: Sequence["RunRecord"]) -> list[Configuration]:
    """The runs grouped by configuration, in the order of their first run, each with a unique readable label made
    of what tells configurations of its kind apart — the model, and the dataset, usage and method where they vary
    (the method whenever one is used) — plus a short config id when two would still share a label (e.g. two
    learning rates)."""
    groups: dict[str, Configuration] = {}
    for record in records:
        config_id = config_key(record)
        entry = groups.setdefault(config_id, Configuration(config_id, [], kind=run_kind(record)))
        entry.records.append(record)
    configs = list(groups.values())
    for config in configs:
        config.records.sort(key=lambda r: (_sortable(r.spec.get("split_seed")), _sortable(r.spec.get("seed"))))
    for kind in {c.kind for c in configs}:
        same_kind = [c for c in configs if c.kind == kind]
        described = [c.describe() for c in same_kind]
        # Only what tells the configurations apart (the model always, the method whenever one is used), so labels
        # stay short enough for plot legends and panel titles.
        varying = [k for k in ("dataset", "model", "usage", "method") if len({d[k] for d in described}) > 1
                   or k == "model" or (k == "method" and any(d[k] != "ERM" for d in described))]  # fmt: skip
        for config, parts in zip(same_kind, described):
            config.label = " · ".join(str(parts[k]) for k in varying)
    counts: dict[str, int] = {}
    for config in configs:
        counts[config.label] = counts.get(config.label, 0) + 1
    for config in configs:
        if counts[config.label] > 1:
            config.label = f"{config.label} [{config.config_id[:6]}]"
    return configs


def config_key(record: "RunRecord") -> str:
    """The run's configuration: its stored ``config_id`` (the run id without the seed, hashed with the data and
    results versions); for a run derived from other runs (an ensemble), whose config id is its run id, a hash of
    its spec without the seed."""
    config_id = (record.meta or {}).get("config_id")
    if config_id and config_id != record.run_id:
        return str(config_id)
    document = {k: v for k, v in record.spec.items() if k != "seed"}
    digest = hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"spec-{digest}"


def _sortable(value: Any) -> tuple[int, Any]:
    return (1, 0) if value is None else (0, value)


def _dataset_name(record: "RunRecord") -> str:
    data = (record.meta or {}).get("data") or {}
    name = data.get("dataset") or str(record.spec.get("dataset") or "")
    return name.rstrip("/").rsplit("/", 1)[-1] or "?"


def tasks_of(records: Iterable["RunRecord"]) -> list[str]:
    """Every task of the runs, in first-seen order."""
    seen: dict[str, None] = {}
    for record in records:
        for task in record.metrics["task"].astype(str):
            seen.setdefault(task, None)
    return list(seen)


def attributes_of(records: Iterable["RunRecord"]) -> list[str]:
    """Every sensitive attribute of the runs, in first-seen order."""
    seen: dict[str, None] = {}
    for record in records:
        for attribute in record.metrics["attribute"].astype(str):
            if attribute != ALL:
                seen.setdefault(attribute, None)
    return list(seen)


@dataclass
class Cell:
    """One leaderboard value: over seeds (mean, std, n) and, with one seed, its bootstrap interval."""

    mean: float
    std: float = math.nan
    n_seeds: int = 0
    ci_low: float = math.nan
    ci_high: float = math.nan
    per_seed: list[tuple[Any, float, float, float]] = field(default_factory=list)  # (seed, value, low, high)
    leaks_labels: bool = False


def metric_value(record: "RunRecord", task: str, attribute: str, metric: str,
                 where: str) -> tuple[float, float, float, bool] | None:
    """(value, ci_low, ci_high, threshold_leaks_labels) of one MetricTable row — overall (``where="__all__"``), the
    attribute's summary (``"__summary__"``) or one group (the group's name) — or None when it is absent."""
    key = (task, ALL, ALL, metric) if where == ALL else (task, attribute, where, metric)
    return metric_index(record).get(key)


#: run folder + creation stamp -> its MetricTable rows by key. Stored runs are written once, so the pair
#: identifies the table's content; a report reads each run's table once however many cells it fills.
_INDEX_CACHE: dict[tuple[str, str], dict[tuple[str, str, str, str], tuple[float, float, float, bool]]] = {}


def metric_index(record: "RunRecord") -> dict[tuple[str, str, str, str], tuple[float, float, float, bool]]:
    key = (str(record.path), record.created)
    cached = _INDEX_CACHE.get(key)
    if cached is None:
        m = record.metrics
        leaks = m["threshold_leaks_labels"] if "threshold_leaks_labels" in m.columns else pd.Series(False, index=m.index)
        cached = {(str(t), str(a), str(g), str(k)): (_float(v), _float(lo), _float(hi), bool(x))
                  for t, a, g, k, v, lo, hi, x in zip(m["task"], m["attribute"], m["group"], m["metric"], m["value"],
                                                      m["ci_low"], m["ci_high"], leaks)}  # fmt: skip
        if len(_INDEX_CACHE) > 4096:
            _INDEX_CACHE.clear()
        _INDEX_CACHE[key] = cached
    return cached


def _float(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out


def cell_of(config: Configuration, task: str, attribute: str, metric: str, where: str) -> Cell | None:
    """The metric over the configuration's seeds (None when no run has it)."""
    found = []
    for record in config.records:
        row = metric_value(record, task, attribute, metric, where)
        if row is not None:
            found.append((record.spec.get("seed"), *row))
    if not found:
        return None
    values = np.array([f[1] for f in found], dtype=np.float64)
    finite = values[np.isfinite(values)]
    mean = float(finite.mean()) if finite.size else math.nan
    std = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
    cell = Cell(mean, std, int(finite.size), per_seed=[(s, v, lo, hi) for s, v, lo, hi, _ in found],
                leaks_labels=any(f[4] for f in found))
    if finite.size == 1:  # one seed with a value (another may lack it): that run's interval
        only = next(f for f in found if math.isfinite(f[1]))
        cell.ci_low, cell.ci_high = only[2], only[3]
    return cell


def leaderboard(configs: Sequence[Configuration], *, task: str, attribute: str) -> pd.DataFrame:
    """One row per configuration of the given kind-homogeneous list: its label, description, seeds and, per
    leaderboard metric, ``<metric>`` (mean over seeds), ``<metric>_std``, ``<metric>_low``/``_high`` (the bootstrap
    interval when one seed has a value), ``<metric>_n`` (seeds with a value), ``<metric>_leaks`` (a threshold chosen
    on test labels) and ``<metric>_per_seed`` ([(seed, value, ci_low, ci_high)], for display; not in CSV)."""
    if not configs:
        raise InputError("no runs to put on a leaderboard")
    kinds = {c.kind for c in configs}
    if len(kinds) > 1:
        raise InputError("a leaderboard compares runs of one kind; got classification and segmentation runs")
    columns = SEGMENTATION_COLUMNS if kinds == {"segmentation"} else CLASSIFICATION_COLUMNS
    rows = []
    for config in configs:
        row: dict[str, Any] = {"label": config.label, "config_id": config.config_id, **config.describe(),
                               "task": task, "attribute": attribute, "n_seeds": len(config.records),
                               "seeds": ",".join(str(s) for s in config.seeds),
                               "run_ids": ",".join(r.run_id for r in config.records),
                               "attribute_aware": config.attribute_aware, "stale": config.stale}  # fmt: skip
        present = False
        for metric, where, _, _ in columns:
            cell = cell_of(config, task, attribute, metric, where)
            if cell is None:
                cell = Cell(math.nan)
            else:
                present = True
            row.update({metric: cell.mean, f"{metric}_std": cell.std, f"{metric}_low": cell.ci_low,
                        f"{metric}_high": cell.ci_high, f"{metric}_n": cell.n_seeds,
                        f"{metric}_leaks": cell.leaks_labels, f"{metric}_per_seed": cell.per_seed})  # fmt: skip
        if present:
            rows.append(row)
    return pd.DataFrame(rows)


def leaderboard_columns(kind: str) -> tuple[tuple[str, str, str, bool], ...]:
    return SEGMENTATION_COLUMNS if kind == "segmentation" else CLASSIFICATION_COLUMNS


def fairness_scores(gaps: pd.Series) -> pd.Series:
    """Khan et al.'s fairness score of each compared model from its AUC gap (fraction, not points):
    FS_k = C − FG_k, C = max_j FG_j + 1, FG in AUC points (×100). NaN gaps stay NaN."""
    points = pd.to_numeric(gaps, errors="coerce") * 100.0
    if points.notna().sum() == 0:
        return points
    return points.max() + 1.0 - points


def format_value(mean: float, std: float = math.nan, low: float = math.nan, high: float = math.nan,
                 n_seeds: int = 1, digits: int = 3) -> str:
    """``0.912 [0.890, 0.930]`` for one seed, ``0.912 ± 0.004`` (mean ± sd) for several, ``–`` when missing."""
    if mean is None or not math.isfinite(mean):
        return "–"
    text = f"{mean:.{digits}f}"
    if n_seeds > 1 and math.isfinite(std):
        return f"{text} ± {std:.{digits}f}"
    if math.isfinite(low) and math.isfinite(high):
        return f"{text} [{low:.{digits}f}, {high:.{digits}f}]"
    return text
