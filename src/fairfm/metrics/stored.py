"""A :class:`~fairfm.metrics.report.Report` read back from a stored MetricTable, without recomputing anything.

A finished run's metrics are in its ``metrics.parquet`` (the long MetricTable). Rebuilding its Report from the
predictions would redo every bootstrap (seconds to minutes on a large test set); reading the table is instant. The
MetricTable holds every value, interval and count, but not a few facts a Report also carries (the chosen threshold
value, the positives per group, worst groups, notes, the bootstrap settings): :func:`report_extras` writes those into
a small JSON-able document when the run is computed (the runner keeps it in ``meta.json`` → ``report``), and
:func:`report_from_metric_table` puts both back together.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import pandas as pd

from fairfm.metrics.report import METRIC_LEAK_COLUMN as LEAK_COLUMN
from fairfm.metrics.report import AttributeResult, Estimate, Report, TaskResult

ALL, SUMMARY = "__all__", "__summary__"
#: Overall rows of the MetricTable that are TaskResult fields, not overall metrics.
LABEL_COUNTS = ("n_unknown_label", "n_uncertain_label")


def report_extras(report: Report) -> dict[str, Any]:
    """What :func:`report_from_metric_table` needs besides the MetricTable (JSON-able; NaN becomes None)."""
    tasks = {}
    for name, task in report.tasks.items():
        tasks[name] = {
            "n_pos": task.n_pos,
            "threshold": _number(task.threshold),
            "extra_thresholds": {k: _number(v) for k, v in task.extra_thresholds.items()},
            "extra_threshold_leaks": dict(task.extra_threshold_leaks),
            "n_unknown_label": task.n_unknown_label,
            "n_uncertain_label": task.n_uncertain_label,
            "attributes": {a.name: {"n_pos": {g: int(c[1]) for g, c in a.group_counts.items()},
                                    "worst_group": dict(a.worst_group), "notes": list(a.notes),
                                    "metric_notes": dict(a.metric_notes)}
                           for a in task.attributes.values()},  # fmt: skip
        }
    return {
        "kind": report.kind,
        "bootstrap": dict(report.bootstrap),
        "profile": report.profile.name if report.profile is not None else None,
        "profile_flags": list(report.profile.flags) if report.profile is not None else None,
        "warnings": list(report.warnings),
        "macro": {a: {k: _number(v) for k, v in m.items()} for a, m in report.macro.items()},
        "shown_metrics": None if report.shown_metrics is None else list(report.shown_metrics),
        "uncertain": report.uncertain,
        "clients": report.clients,
        "tasks": tasks,
    }


def report_from_metric_table(table: pd.DataFrame, extras: Mapping[str, Any] | None = None) -> Report:
    """The Report whose :meth:`~Report.to_metric_table` is ``table`` (with ``extras`` from :func:`report_extras`).

    Without ``extras`` (a table from elsewhere) what the table cannot say is left empty: positives per group are 0,
    the threshold value unknown, and the bootstrap size taken as 0 when no row has an interval.
    """
    extras = dict(extras or {})
    task_extras: Mapping[str, Any] = extras.get("tasks") or {}
    metrics = table["metric"].astype(str)
    kind = extras.get("kind") or ("segmentation" if metrics.str.startswith("mean_dice").any()
                                  or metrics.str.startswith("mean_iou").any() else "classification")  # fmt: skip
    tasks: dict[str, TaskResult] = {}
    for task_name, rows in table.groupby("task", sort=False):
        task_name = str(task_name)
        info = task_extras.get(task_name) or {}
        overall_rows = rows[rows["attribute"] == ALL]
        overall = {str(r.metric): _estimate(r) for r in overall_rows.itertuples(index=False)}
        # Label counts are rows of the table but fields of the task (to_metric_table writes them from the fields).
        label_counts = {name: overall.pop(name).value for name in LABEL_COUNTS if name in overall}
        n = int(overall_rows["n"].iloc[0]) if not overall_rows.empty else int(rows["n"].max())
        policy = str(rows["threshold_policy"].iloc[0])
        attributes = {}
        for attr_name, attr_rows in rows[rows["attribute"] != ALL].groupby("attribute", sort=False):
            attributes[str(attr_name)] = _attribute(str(attr_name), attr_rows,
                                                    (info.get("attributes") or {}).get(str(attr_name)) or {})  # fmt: skip
        threshold = None if info.get("threshold") is None else float(info["threshold"])
        # The task's own threshold: its rows' flag, leaving out metrics at a profile's extra thresholds ("…@tnr@0.8").
        extra_names = tuple(f"@{name}" for name in info.get("extra_thresholds") or {})
        own = ~rows["metric"].astype(str).str.endswith(extra_names) if extra_names else slice(None)
        leaks = LEAK_COLUMN in rows.columns and bool(rows.loc[own, LEAK_COLUMN].fillna(False).astype(bool).any())
        tasks[task_name] = TaskResult(
            task=task_name, n=n, n_pos=int(info.get("n_pos") or 0), overall=overall, threshold_policy=policy,
            threshold=threshold, attributes=attributes,
            extra_thresholds={k: _float(v) for k, v in (info.get("extra_thresholds") or {}).items()},
            threshold_leaks_labels=leaks, extra_threshold_leaks=dict(info.get("extra_threshold_leaks") or {}),
            n_unknown_label=int(info.get("n_unknown_label") or label_counts.get("n_unknown_label") or 0),
            n_uncertain_label=int(info.get("n_uncertain_label") or label_counts.get("n_uncertain_label") or 0))
    bootstrap = dict(extras.get("bootstrap") or {})
    if not bootstrap:
        has_ci = table["ci_low"].notna().any()
        bootstrap = {"B": None if has_ci else 0, "seed": None, "stratify": "group", "ci": 0.95, "method": "percentile"}
    profile = None
    if extras.get("profile"):
        from fairfm.metrics.profiles import get_profile

        profile = get_profile(extras["profile"])
        if extras.get("profile_flags") is not None:  # flags added for this report (e.g. percentile gap intervals)
            profile = dataclasses.replace(profile, flags=tuple(extras["profile_flags"]))
    macro = {a: {k: _float(v) for k, v in m.items()} for a, m in (extras.get("macro") or {}).items()}
    return Report(kind=kind, tasks=tasks, bootstrap=bootstrap, profile=profile,
                  warnings=list(extras.get("warnings") or []), macro=macro,
                  shown_metrics=extras.get("shown_metrics"), uncertain=extras.get("uncertain"),
                  clients=extras.get("clients"))  # fmt: skip


def _attribute(name: str, rows: pd.DataFrame, info: Mapping[str, Any]) -> AttributeResult:
    group_rows = rows[rows["group"] != SUMMARY]
    summary_rows = rows[rows["group"] == SUMMARY]
    groups = [str(g) for g in dict.fromkeys(group_rows["group"])]
    n_pos = info.get("n_pos") or {}
    counts, group_metrics, excluded = {}, {}, {}
    for group, part in group_rows.groupby("group", sort=False):
        group = str(group)
        counts[group] = (int(part["n"].iloc[0]), int(n_pos.get(group, 0)))
        note = str(part["note"].iloc[0] or "")
        if note:
            excluded[group] = note
        # A group with no metrics (no samples) is stored as one "n_pos" row; it has no entry in group_metrics.
        entry = {str(r.metric): _estimate(r) for r in part.itertuples(index=False) if r.metric != "n_pos"}
        if entry:
            group_metrics[group] = entry
        elif group not in n_pos:
            counts[group] = (counts[group][0], int(part["value"].iloc[0]))
    summary: dict[str, Estimate] = {}
    significance: dict[str, float] = {}
    for r in summary_rows.itertuples(index=False):
        metric = str(r.metric)
        # p- and q-values follow their gap's summary row (``auc_gap`` → ``auc_gap_p``, ``auc_gap_q``).
        if metric.endswith(("_p", "_q")) and metric[:-2] in summary:
            significance[metric] = float(r.value)
        else:
            summary[metric] = _estimate(r)
    notes = list(info["notes"]) if "notes" in info else _notes_from_rows(summary_rows)
    return AttributeResult(name=name, groups=groups, group_counts=counts, group_metrics=group_metrics,
                           excluded=excluded, summary=summary, significance=significance,
                           worst_group=dict(info.get("worst_group") or {}), notes=notes,
                           metric_notes=dict(info.get("metric_notes") or {}))  # fmt: skip


def _notes_from_rows(rows: pd.DataFrame) -> list[str]:
    # Without extras: the attribute's notes are on its NaN summary rows, joined with "; " (finite rows carry the
    # interval method's note instead).
    for note, value in zip(rows["note"].astype(str), rows["value"]):
        if note and not math.isfinite(float(value)):
            return note.split("; ")
    return []


def _estimate(row: Any) -> Estimate:
    return Estimate(float(row.value), float(row.ci_low), float(row.ci_high))


def _number(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _float(value: Any) -> float | None:
    return math.nan if value is None else float(value)
