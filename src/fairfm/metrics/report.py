"""``evaluate``: every metric of METRICS.md, per attribute and task, with paired stratified bootstrap intervals.

The result is a :class:`Report` with a per-attribute ``summary``, a per-group table ``by_group``, the long
MetricTable of DESIGN.md (``to_metric_table``) and the JSON document of ``fairfm evaluate --format json``.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from fairfm.errors import InputError
from fairfm.metrics import _engine as E
from fairfm.metrics import _inputs as I
from fairfm.metrics import gap_inference as GI
from fairfm.metrics import thresholds as T
from fairfm.metrics.profiles import PROFILES, Profile, get_profile
from fairfm.metrics.significance import benjamini_hochberg

OVERALL_CLASSIFICATION = ("auc", "acc", "tpr", "tnr", "fpr", "fnr", "ppv", "f1", "pos_rate", "bce", "ece", "brier")
STRATIFY = ("group", "group_class", "class")
#: MetricTable column (an extension of DESIGN.md's contract): the row's threshold saw the evaluated set's labels.
METRIC_LEAK_COLUMN = "threshold_leaks_labels"


class FairnessWarning(UserWarning):
    """A result that exists but deserves attention (e.g. an attribute with fewer than two valid groups)."""


@dataclass
class Estimate:
    value: float
    ci_low: float = math.nan
    ci_high: float = math.nan

    def as_list(self) -> list[float | None]:
        return [_clean(self.ci_low), _clean(self.ci_high)]


@dataclass
class AttributeResult:
    name: str
    groups: list[str]
    group_counts: dict[str, tuple[int, int]]  # group -> (n, n_pos)
    group_metrics: dict[str, dict[str, Estimate]]  # group -> metric -> estimate
    excluded: dict[str, str]
    summary: dict[str, Estimate]
    significance: dict[str, float] = field(default_factory=dict)  # "<gap>_p" and, after BH, "<gap>_q"
    worst_group: dict[str, str] = field(default_factory=dict)  # "auc" -> group with the lowest AUC
    notes: list[str] = field(default_factory=list)
    metric_notes: dict[str, str] = field(default_factory=dict)  # summary metric -> why it is NaN or left a group out


@dataclass
class TaskResult:
    task: str
    n: int
    n_pos: int
    overall: dict[str, Estimate]
    threshold_policy: str
    threshold: float | None
    attributes: dict[str, AttributeResult]
    extra_thresholds: dict[str, float] = field(default_factory=dict)
    threshold_leaks_labels: bool = False  # the threshold was chosen with the evaluated set's own labels
    extra_threshold_leaks: dict[str, bool] = field(default_factory=dict)
    n_unknown_label: int = 0  # rows of the input without a label for this task (left out of its metrics)
    n_uncertain_label: int = 0  # rows labelled uncertain (−1), handled by Report.uncertain

    def leaks_labels(self, metric: str) -> bool:
        """Whether ``metric`` of this task was computed at a threshold that saw the evaluated set's labels
        (a threshold-free metric — AUC, BCE, ECE, Brier, counts — never did)."""
        name = metric[:-2] if metric.endswith(("_p", "_q")) else metric
        base, _, at = name.partition("@")
        if base not in E.THRESHOLDED and base not in _THRESHOLDED_SUMMARIES:
            return False
        return self.extra_threshold_leaks.get(at, self.threshold_leaks_labels) if at else self.threshold_leaks_labels


def _clean(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    return value


def _percentile_ci(samples: np.ndarray, level: float) -> tuple[float, float]:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return math.nan, math.nan
    alpha = (1 - level) / 2
    lo, hi = np.quantile(finite, [alpha, 1 - alpha])
    return float(lo), float(hi)


@dataclass
class Report:
    """The result of :func:`evaluate` (or :func:`evaluate_segmentation`)."""

    kind: str  # "classification" | "segmentation"
    tasks: dict[str, TaskResult]
    bootstrap: dict[str, Any]
    profile: Profile | None = None
    warnings: list[str] = field(default_factory=list)
    macro: dict[str, dict[str, float]] = field(default_factory=dict)  # attribute -> macro_<metric> over tasks
    shown_metrics: list[str] | None = None  # summary metrics a person asked to see (None: the default set)
    uncertain: str | None = None  # how uncertain (−1) labels were read: "ignore" | "ones" | "zeros"
    clients: dict[str, Any] | None = None  # client-averaged over sites (fairfedmed): the sites and their sizes
    #: what was evaluated, kept only when asked (``evaluate_frame(keep_inputs=True)``): the HTML report's curves
    inputs: Any = field(default=None, repr=False, compare=False)

    def restrict(self, metrics: list[str]) -> None:
        """Keep only these summary metrics (and their significance) in every attribute."""
        keep = set(metrics)
        for task in self.tasks.values():
            for attr in task.attributes.values():
                attr.summary = {m: e for m, e in attr.summary.items() if m in keep}
                attr.significance = {k: v for k, v in attr.significance.items() if k.rsplit("_", 1)[0] in keep}
                attr.metric_notes = {m: note for m, note in attr.metric_notes.items() if m in keep}
        self.shown_metrics = list(metrics)

    # -- tables ----------------------------------------------------------------------------------------------
    @property
    def multi_task(self) -> bool:
        return len(self.tasks) > 1

    @property
    def summary(self) -> pd.DataFrame:
        """One row per attribute (per task and attribute for multi-label input)."""
        rows = []
        for task in self.tasks.values():
            for attr in task.attributes.values():
                row: dict[str, Any] = {"task": task.task, "attribute": attr.name,
                                       "n_groups": len(attr.groups) - len(attr.excluded)}  # fmt: skip
                for metric, est in attr.summary.items():
                    row[metric] = est.value
                    row[f"{metric}_ci_low"] = est.ci_low
                    row[f"{metric}_ci_high"] = est.ci_high
                row.update(attr.significance)
                for metric, group in attr.worst_group.items():
                    row[f"worst_{metric}_group"] = group
                rows.append(row)
        frame = pd.DataFrame(rows)
        if frame.empty:
            return frame
        index = ["task", "attribute"] if self.multi_task else ["attribute"]
        if not self.multi_task:
            frame = frame.drop(columns="task")
        return frame.set_index(index)

    @property
    def by_group(self) -> pd.DataFrame:
        """One row per (attribute, group): n, n_pos, every group metric and its interval; excluded groups noted."""
        rows = []
        for task in self.tasks.values():
            for attr in task.attributes.values():
                for group in attr.groups:
                    n, n_pos = attr.group_counts[group]
                    row: dict[str, Any] = {"task": task.task, "attribute": attr.name, "group": group,
                                           "n": n, "n_pos": n_pos, "note": attr.excluded.get(group, "")}  # fmt: skip
                    for metric, est in attr.group_metrics.get(group, {}).items():
                        row[metric] = est.value
                        row[f"{metric}_ci_low"] = est.ci_low
                        row[f"{metric}_ci_high"] = est.ci_high
                    rows.append(row)
        frame = pd.DataFrame(rows)
        if frame.empty:
            return frame
        index = ["task", "attribute", "group"] if self.multi_task else ["attribute", "group"]
        if not self.multi_task:
            frame = frame.drop(columns="task")
        return frame.set_index(index)

    def to_metric_table(self, run_id: str = "") -> pd.DataFrame:
        """The long MetricTable of DESIGN.md: run_id, task, attribute, group, metric, value, ci, n, policy, note."""
        rows = []

        def add(task: TaskResult, attribute: str, group: str, metric: str, est: Estimate, n: int, note: str = ""):
            rows.append({
                "run_id": run_id, "task": task.task, "attribute": attribute, "group": group, "metric": metric,
                "value": est.value, "ci_low": est.ci_low, "ci_high": est.ci_high, "n": n,
                "threshold_policy": task.threshold_policy, "note": note,
                METRIC_LEAK_COLUMN: task.leaks_labels(metric),
            })  # fmt: skip

        for task in self.tasks.values():
            for metric, est in task.overall.items():
                add(task, "__all__", "__all__", metric, est, task.n)
            if task.n_unknown_label or task.n_uncertain_label:
                add(task, "__all__", "__all__", "n_unknown_label", Estimate(float(task.n_unknown_label)), task.n,
                    "rows without a label for this task, left out of its metrics")  # fmt: skip
                add(task, "__all__", "__all__", "n_uncertain_label", Estimate(float(task.n_uncertain_label)), task.n,
                    f"uncertain labels (-1) read by policy '{self.uncertain}'")  # fmt: skip
            for attr in task.attributes.values():
                for group in attr.groups:
                    n, n_pos = attr.group_counts[group]
                    note = attr.excluded.get(group, "")
                    metrics = attr.group_metrics.get(group, {})
                    if not metrics:
                        add(task, attr.name, group, "n_pos", Estimate(float(n_pos)), n, note)
                    for metric, est in metrics.items():
                        add(task, attr.name, group, metric, est, n, note)
                note = "; ".join(attr.notes)
                n_known = sum(attr.group_counts[g][0] for g in attr.groups)
                for metric, est in attr.summary.items():
                    metric_note = attr.metric_notes.get(metric, "")
                    if not math.isfinite(est.value) and note:
                        metric_note = "; ".join(filter(None, [metric_note, note]))
                    elif math.isfinite(est.value):
                        metric_note = "; ".join(filter(None, [metric_note, self._interval_note(metric)]))
                    add(task, attr.name, "__summary__", metric, est, n_known, metric_note)
                for key, value in attr.significance.items():
                    add(task, attr.name, "__summary__", key, Estimate(value), n_known, self._interval_note(key))
        columns = ["run_id", "task", "attribute", "group", "metric", "value", "ci_low", "ci_high", "n",
                   "threshold_policy", "note", METRIC_LEAK_COLUMN]  # fmt: skip
        return pd.DataFrame(rows, columns=columns)

    def _interval_note(self, metric: str) -> str:
        """Which interval (or test) a gap / worst-group row of the MetricTable has."""
        method = self.bootstrap.get("ci_method")
        if not self.bootstrap.get("B") or method is None:
            return ""
        if metric.endswith(("_p", "_q")):
            if metric[:-2] not in _EXTREMUM_SUMMARIES:
                return ""
            return "max-|t| test of no disparity" if method == "simultaneous" else "sign-flip share"
        if metric.split("@")[0] not in _EXTREMUM_SUMMARIES:
            return ""
        return "simultaneous max-|t| interval" if method == "simultaneous" else "percentile interval"

    # -- JSON ------------------------------------------------------------------------------------------------
    def _task_dict(self, task: TaskResult) -> dict[str, Any]:
        overall = {m: _clean(e.value) for m, e in task.overall.items()}
        overall.update({f"{m}_ci": e.as_list() for m, e in task.overall.items() if self.bootstrap["B"]})
        overall["n"], overall["n_pos"] = task.n, task.n_pos
        if self.kind == "classification":
            overall["n_unknown_label"], overall["n_uncertain_label"] = task.n_unknown_label, task.n_uncertain_label
        attributes = {}
        for attr in task.attributes.values():
            summary: dict[str, Any] = {}
            for metric, est in attr.summary.items():
                summary[metric] = _clean(est.value)
                if self.bootstrap["B"]:
                    summary[f"{metric}_ci"] = est.as_list()
            summary.update({k: _clean(v) for k, v in attr.significance.items()})
            summary.update({f"worst_{m}_group": g for m, g in attr.worst_group.items()})
            groups = {}
            for group in attr.groups:
                n, n_pos = attr.group_counts[group]
                entry: dict[str, Any] = {"n": n, "n_pos": n_pos}
                for metric, est in attr.group_metrics.get(group, {}).items():
                    entry[metric] = _clean(est.value)
                    if self.bootstrap["B"]:
                        entry[f"{metric}_ci"] = est.as_list()
                groups[group] = entry
            attributes[attr.name] = {"summary": summary, "groups": groups, "excluded_groups": dict(attr.excluded)}
            if attr.notes:
                attributes[attr.name]["notes"] = list(attr.notes)
            if attr.metric_notes:
                attributes[attr.name]["metric_notes"] = dict(attr.metric_notes)
        out: dict[str, Any] = {"overall": overall, "attributes": attributes}
        if self.kind == "classification":
            out["threshold"] = {"policy": task.threshold_policy, "value": _clean(task.threshold),
                                "leaks_labels": task.threshold_leaks_labels}  # fmt: skip
            if task.extra_thresholds:
                out["threshold"]["also_reported"] = {k: _clean(v) for k, v in task.extra_thresholds.items()}
                out["threshold"]["also_reported_leaks_labels"] = dict(task.extra_threshold_leaks)
        return out

    def to_dict(self) -> dict[str, Any]:
        if self.multi_task:
            doc: dict[str, Any] = {"tasks": {t: self._task_dict(r) for t, r in self.tasks.items()},
                                   "macro": {a: {k: _clean(v) for k, v in m.items()} for a, m in self.macro.items()}}  # fmt: skip
        else:
            doc = self._task_dict(next(iter(self.tasks.values())))
        doc["bootstrap"] = dict(self.bootstrap)
        if self.kind == "classification":
            doc["labels"] = {"unknown": "blank/NaN: left out of that task's metrics",
                             "uncertain": self.uncertain or "ignore", "uncertain_value": I.UNCERTAIN_LABEL}  # fmt: skip
        if self.clients is not None:
            doc["clients"] = dict(self.clients)
        if self.profile is not None:
            doc["profile"] = {
                "name": self.profile.name,
                "description": self.profile.description,
                "reported_metrics": list(self.profile.summary_metrics or ()),
                "reference_names": dict(self.profile.reference_names),
                "flags": list(self.profile.flags),
            }
        if self.warnings:
            doc["warnings"] = list(self.warnings)
        return doc

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, allow_nan=False)


# ---------------------------------------------------------------------------------------------------------------
def _resolve_policy(threshold: str | float | None, has_val: bool, profile: Profile | None) -> str:
    if threshold is not None:
        return str(threshold)
    if profile is not None:
        return profile.threshold
    return "best_f1@val" if has_val else "0.5"


def _threshold_value(policy_name: str, y, p, y_val, p_val, sklearn_roc: bool = False) -> tuple[float, bool]:
    """(threshold, leaks labels of the evaluated set). ``sklearn_roc``: rate targets use sklearn's ROC points
    (collinear points dropped), as the reference code did."""
    if policy_name == "fairmedfm_f1":
        return T.fairmedfm_threshold(y, p), True
    policy = T.parse_policy(policy_name)
    if sklearn_roc and policy.kind in ("fpr", "tpr"):
        y_use, p_use = (y_val, p_val) if policy.on == "val" else (y, p)
        if y_use is None:
            return T.choose_threshold(policy, y, p, y_val, p_val), policy.leaks_labels  # raises the usual error
        return T.rate_threshold(y_use, p_use, policy.kind, float(policy.target), drop_intermediate=True), policy.leaks_labels
    return T.choose_threshold(policy, y, p, y_val, p_val), policy.leaks_labels


def _extra_threshold_value(name: str, y, p) -> float:
    if name.startswith(("tnr@", "tpr@")):  # MEDFAIR: interpolated on sklearn's ROC points
        rate, target = name.split("@")
        fpr, tpr, thr = T.roc_points(y, p, drop_intermediate=True)
        x = (1 - fpr) if rate == "tnr" else tpr
        x, thr = x[1:], thr[1:]
        order = np.argsort(x, kind="stable")
        return float(np.interp(float(target), x[order], thr[order]))
    return float(name)


def _validity(n: np.ndarray, n_pos: np.ndarray, groups: list[str], min_group_size: int, need_both: bool):
    valid = np.ones(len(groups), dtype=bool)
    excluded: dict[str, str] = {}
    for i, group in enumerate(groups):
        if n[i] < min_group_size:
            valid[i] = False
            excluded[group] = f"fewer than {min_group_size} samples (n={int(n[i])})"
        elif need_both and (n_pos[i] == 0 or n_pos[i] == n[i]):
            valid[i] = False
            which = "positive" if n_pos[i] == n[i] else "negative"
            excluded[group] = f"only {which} samples (n={int(n[i])}, n_pos={int(n_pos[i])}): no AUC"
    return valid, excluded


def evaluate(
    y_true: Any,
    y_score: Any,
    *,
    groups: Any = None,
    val_true: Any = None,
    val_score: Any = None,
    threshold: str | float | None = None,
    profile: str | None = None,
    bootstrap: int | None = 1000,
    seed: int = 0,
    stratify: str | None = None,
    ci: float = 0.95,
    min_group_size: int = 1,
    pos_label: Any = 1,
    bins: Mapping[str, Sequence[float]] | None = None,
    intersect: Sequence[Sequence[str]] | None = None,
    uncertain: str = "ignore",
    sites: Any = None,
    n_jobs: int = 2,
    progress: bool = False,
    ci_method: str | None = None,
) -> Report:
    """Every classification metric for every attribute (and task), with stratified bootstrap intervals.

    ``y_true``/``y_score``: 1-D arrays, or 2-D arrays / DataFrames with one column per task (multi-label). A blank
    (NaN) label leaves that sample out of that task only (counted as ``n_unknown_label``); a label of −1 is
    uncertain and follows ``uncertain``: ``"ignore"`` (default: left out, like an unknown label, so no model is
    judged against a guessed ground truth), ``"ones"`` or ``"zeros"`` (CheXpert's U-Ones / U-Zeros).
    ``groups``: a DataFrame (one column per sensitive attribute), a mapping, or one array. ``val_true`` /
    ``val_score``: validation predictions for thresholds chosen on validation (the default policy when given);
    when both ``y_true`` and ``val_true`` are DataFrames their tasks are matched by column name, and score columns
    that name the same tasks as their label columns are matched to them by name (otherwise by position).
    ``bins``: ``{"age": [60]}`` bins a continuous column; ``intersect``: ``[["sex", "race"]]`` adds ``sex×race``.
    ``stratify``: resample within each ``group`` (default), ``group_class`` or ``class``. ``bootstrap=0`` skips
    intervals. ``sites``: one site (client) per sample; with a profile that averages over clients
    (``fairfedmed``) every metric is computed per site and averaged (percentile intervals, no test). ``progress``
    shows a progress bar on stderr while resampling. ``ci_method``: intervals and tests of gaps and
    worst/best-group metrics — ``"simultaneous"`` (default; see :mod:`fairfm.metrics.gap_inference`) or
    ``"percentile"`` (the references' profiles use it).
    """
    prof = get_profile(profile)
    prof, ci_method = _resolve_ci_method(ci_method, prof)
    B = int(prof.bootstrap if prof is not None and prof.bootstrap is not None and bootstrap == 1000 else bootstrap or 0)
    stratify = stratify or (prof.stratify if prof is not None else "group")
    if stratify not in STRATIFY:
        raise InputError(f"unknown stratification {stratify!r}; choose one of: {', '.join(STRATIFY)}")
    if not 0 < ci < 1:
        raise InputError(f"confidence level {ci!r} must lie strictly between 0 and 1")
    if B < 0:
        raise InputError(f"bootstrap resamples must be ≥ 0, got {B}")
    if B:
        E.preload_compiled_kernel()  # while the inputs are checked and the point estimates computed
    if uncertain not in I.UNCERTAIN_POLICIES:
        choices = ", ".join(I.UNCERTAIN_POLICIES)
        raise InputError(f"unknown uncertain-label policy {uncertain!r}; choose one of: {choices}")
    Y, task_names = I.as_task_matrix(y_true, "y_true")
    P, score_names = I.as_task_matrix(y_score, "y_score")
    P, score_names = _scores_by_name(P, score_names, task_names)
    if Y.shape != P.shape:
        raise InputError(f"y_true has shape {Y.shape} but y_score has shape {P.shape} (length mismatch)")
    has_val = val_true is not None and val_score is not None
    val_index: list[int] = []
    if has_val:
        YV, val_names = I.as_task_matrix(val_true, "val_true")
        PV, val_score_names = I.as_task_matrix(val_score, "val_score")
        PV, _ = _scores_by_name(PV, val_score_names, val_names)
        if YV.shape != PV.shape:
            raise InputError(f"validation labels {YV.shape} and scores {PV.shape} do not match")
        if isinstance(val_true, pd.DataFrame) and isinstance(y_true, pd.DataFrame):
            val_index = _match_tasks(task_names, val_names)  # by name: the two tables may list tasks in any order
        elif YV.shape[1] != Y.shape[1]:
            raise InputError(f"validation labels {YV.shape} and scores {PV.shape} do not match the tasks {Y.shape}")
        else:
            val_index = list(range(len(task_names)))
    policy_name = _resolve_policy(threshold, has_val, prof)
    if policy_name != "fairmedfm_f1":
        policy_name = T.parse_policy(policy_name).name  # unknown policies fail before any work; fpr@x → fpr@x@val
    frame = I.as_group_frame(groups, Y.shape[0])
    attributes = I.attribute_codes(frame, bins, intersect)
    site_codes, site_names = _site_codes(sites, Y.shape[0], prof)
    if site_codes is not None and ci_method != "percentile":
        # A client average is a mean of per-site values: its intervals are the percentile ones of that mean.
        raise InputError("client averages over sites have percentile intervals only: drop ci_method='simultaneous' "
                         "(--ci-method) or the sites (--site-column)")  # fmt: skip
    rules_base = dict(strict=prof.strict, bce=prof.bce, ece=prof.ece) if prof is not None else {}
    root_seed = np.random.SeedSequence(seed)
    task_seeds = root_seed.spawn(len(task_names))
    report_warnings: list[str] = []
    tasks: dict[str, TaskResult] = {}
    n_sites = max(len(site_names), 1)
    tracker = BootstrapProgress(bool(progress) and B > 0, len(task_names) * max(len(attributes), 1) * n_sites, B)
    for j, task in enumerate(task_names):
        label_col = task_names[j] if task_names[j] != "task" else "y_true"
        score_col = score_names[j] if score_names[j] != "task" else "y_score"
        labels = I.task_labels(Y[:, j], label_col, pos_label, uncertain)
        y = labels.y
        p = I.check_scores(P[:, j], score_col, used=labels.used)[labels.used]
        I.check_both_classes(y, label_col, _left_out(labels, uncertain))
        # Each task keeps only its own known-label samples; groups follow them.
        task_attributes = attributes if labels.all_used else {
            name: (codes[labels.used], names) for name, (codes, names) in attributes.items()}  # fmt: skip
        yv = pv = None
        if has_val:
            k = val_index[j]
            val_labels = I.task_labels(YV[:, k], f"validation {label_col}", pos_label, uncertain)
            yv = val_labels.y
            pv = I.check_scores(PV[:, k], f"validation {score_col}", used=val_labels.used)[val_labels.used]
        sklearn_roc = prof is not None and prof.sklearn_roc and threshold is None
        try:
            t_value, leaks = _threshold_value(policy_name, y, p, yv, pv, sklearn_roc)
        except InputError as exc:
            raise InputError(f"task {task!r}: {exc}" if len(task_names) > 1 else str(exc)) from None
        extra = {name: _extra_threshold_value(name, y, p) for name in (prof.extra_thresholds if prof else ())}
        rules = E.Rules(threshold=t_value, **rules_base)
        if site_codes is not None:
            result = _evaluate_sites(task, y, p, task_attributes, site_codes[labels.used], site_names, rules, extra,
                                     B, task_seeds[j], stratify, ci, min_group_size, n_jobs, report_warnings,
                                     tracker)  # fmt: skip
        else:
            result = _evaluate_task(task, y, p, task_attributes, rules, extra, B, task_seeds[j], stratify, ci,
                                    min_group_size, n_jobs, report_warnings, prof, tracker, ci_method)  # fmt: skip
        result.threshold_policy = policy_name
        result.threshold_leaks_labels = bool(leaks)
        result.extra_threshold_leaks = {name: not _is_number(name) for name in extra}  # tnr@/tpr@: on this set
        result.n_unknown_label, result.n_uncertain_label = labels.n_unknown, labels.n_uncertain
        tasks[task] = result
    tracker.close()
    report = Report(
        kind="classification",
        tasks=tasks,
        bootstrap={"B": B, "seed": seed, "stratify": stratify, "ci": ci, "method": "percentile",
                   "ci_method": ci_method, "gap_intervals": GI.DESCRIPTIONS[ci_method]},  # fmt: skip
        profile=prof,
        warnings=report_warnings,
        uncertain=uncertain,
    )
    if site_codes is not None:
        sizes = {name: int(np.sum(site_codes == k)) for k, name in enumerate(site_names)}
        report.clients = {"sites": site_names, "n": sizes,
                          "averaged": "each metric computed per site, then the mean over sites"}  # fmt: skip
    _add_significance(report)
    if len(tasks) > 1:
        report.macro = _macro(tasks)
    if prof is not None and prof.scale != 1.0:
        _scale(report, prof)
    return report


def merge_reports(reports: Sequence[Report]) -> Report:
    """One report of the tasks of several (e.g. one per task, when tasks have different known-label samples).

    Merged first, then ``macro_*`` and Benjamini–Hochberg are computed across all the tasks, as in one report."""
    if not reports:
        raise InputError("no reports to merge")
    first = reports[0]
    merged = Report(kind=first.kind, tasks={}, bootstrap=dict(first.bootstrap), profile=first.profile, warnings=[],
                    shown_metrics=first.shown_metrics, uncertain=first.uncertain, clients=first.clients)  # fmt: skip
    for report in reports:
        design = ("B", "stratify", "ci", "method", "ci_method")  # seeds may differ: parts resampled independently
        profile = report.profile.name if report.profile is not None else None
        if (report.kind != first.kind or any(report.bootstrap.get(k) != first.bootstrap.get(k) for k in design)
                or profile != (first.profile.name if first.profile is not None else None)):
            raise InputError("reports to merge must have the same kind, profile and bootstrap design (B, stratify, "
                             "ci, interval method)")  # fmt: skip
        for name, task in report.tasks.items():
            if name in merged.tasks:
                raise InputError(f"task {name!r} is in more than one of the reports to merge")
            merged.tasks[name] = task
        merged.warnings.extend(report.warnings)
    for task in merged.tasks.values():
        for attr in task.attributes.values():  # q-values of the parts were adjusted over too few tests
            attr.significance = {k: v for k, v in attr.significance.items() if not k.endswith("_q")}
    _add_significance(merged)
    if len(merged.tasks) > 1:
        merged.macro = _macro(merged.tasks)
    return merged


def _scores_by_name(scores: np.ndarray, score_names: list[str], label_names: list[str]):
    """Score columns in the order of the label columns when both name the same tasks (DataFrames listing them in
    different orders); otherwise the columns pair by position (e.g. ``label_a`` with ``score_a``)."""
    if len(score_names) > 1 and score_names != label_names and sorted(score_names) == sorted(label_names):
        order = [score_names.index(name) for name in label_names]
        return scores[:, order], list(label_names)
    return scores, score_names


def _match_tasks(task_names: list[str], val_names: list[str]) -> list[int]:
    """Column of each test task among the validation tasks, by name; a missing task is an error naming it."""
    duplicated = sorted({t for t in val_names if val_names.count(t) > 1})
    if duplicated:
        raise InputError(f"validation predictions list task {duplicated[0]!r} more than once")
    missing = [t for t in task_names if t not in val_names]
    if missing:
        raise InputError(f"validation predictions have no task {missing[0]!r} (their tasks: {', '.join(val_names)})")
    return [val_names.index(t) for t in task_names]


def _left_out(labels: I.TaskLabels, uncertain: str) -> str:
    parts = []
    if labels.n_unknown:
        parts.append(f"{labels.n_unknown} unknown label(s)")
    if labels.n_uncertain and uncertain == "ignore":
        parts.append(f"{labels.n_uncertain} uncertain (-1) label(s), --uncertain ignore")
    return " and ".join(parts)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class BootstrapProgress:
    """A rich progress bar on stderr over the resamples (``enabled`` True), a caller's callback called once per
    step (``enabled`` callable), or nothing."""

    def __init__(self, enabled: bool | Callable[[], None], total: int, n_resamples: int,
                 label: str = "bootstrap") -> None:  # fmt: skip
        self._bar = None
        self._callback = enabled if callable(enabled) else None
        if enabled is True:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn(f"{label} ×{n_resamples} {{task.description}}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=Console(stderr=True),
                                 transient=True)  # fmt: skip
            self._task = self._bar.add_task("", total=total)
            self._bar.start()

    def describe(self, text: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=text)

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.advance(self._task)
        if self._callback is not None:
            self._callback()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _evaluate_task(task, y, p, attributes, rules, extra, B, seed_seq, stratify, ci, min_group_size, n_jobs,
                   report_warnings, prof, tracker: BootstrapProgress | None = None,
                   ci_method: str = GI.DEFAULT_CI_METHOD) -> TaskResult:  # fmt: skip
    tracker = tracker or BootstrapProgress(False, 0, B)
    attr_seeds = seed_seq.spawn(max(len(attributes), 1))
    overall_point = overall_boot = None
    results: dict[str, AttributeResult] = {}
    items = list(attributes.items()) or [("__all__", (np.zeros(y.size, dtype=np.int64), ["all"]))]
    for k, (name, (codes, group_names)) in enumerate(items):
        engine = E.AttributeEngine(y, p, codes, len(group_names), rules, extra)
        g, o = engine.point_stats()
        gb = ob = None
        if B:
            tracker.describe(f"{task} · {name}" if name != "__all__" else task)
            gb, ob = engine.bootstrap(B, attr_seeds[k], stratify, n_jobs)
            tracker.advance()
        if overall_point is None:
            overall_point, overall_boot = o, ob
        if name == "__all__":
            continue
        results[name] = _attribute_result(name, group_names, g, o, gb, ob, extra, ci, min_group_size, report_warnings,
                                          ci_method)  # fmt: skip
    overall = {}
    names = list(OVERALL_CLASSIFICATION) + [f"{m}@{x}" for x in extra for m in E.THRESHOLDED]
    for metric in names:
        lo, hi = _percentile_ci(overall_boot[metric], ci) if overall_boot is not None else (math.nan, math.nan)
        overall[metric] = Estimate(float(overall_point[metric]), lo, hi)
    return TaskResult(task=task, n=int(y.size), n_pos=int(y.sum()), overall=overall, threshold_policy="",
                      threshold=rules.threshold, attributes=results, extra_thresholds=extra)  # fmt: skip


def _site_codes(sites: Any, n: int, prof: Profile | None) -> tuple[np.ndarray | None, list[str]]:
    """Integer site code per sample and the site names (sorted), or (None, []) without sites."""
    if sites is None:
        return None, []
    if prof is None or not prof.client_average:
        averaging = ", ".join(sorted(name for name, p in PROFILES.items() if p.client_average))
        raise InputError(f"a site column is averaged over by a profile that reports client averages ({averaging}); "
                         "give --profile, or --attr for a site as a sensitive attribute")  # fmt: skip
    values = pd.Series(np.asarray(sites, dtype=object).reshape(-1))
    if values.size != n:
        raise InputError(f"sites: {values.size} values but {n} predictions (length mismatch)")
    missing = values.isna() | (values.astype(str).str.strip() == "")
    if missing.any():
        raise InputError(f"sites: row {int(np.flatnonzero(missing.to_numpy())[0])} has no site")
    names = sorted(values.astype(str).unique())
    codes = pd.Categorical(values.astype(str), categories=names).codes.astype(np.int64)
    return codes, names


def _site_mean(points: list[float], boots: list[np.ndarray | None], ci: float) -> tuple[Estimate, list[int]]:
    """The mean over the sites where the point value exists, its paired resample means, and the sites left out."""
    use = [s for s, v in enumerate(points) if math.isfinite(v)]
    if not use:
        return Estimate(math.nan), list(range(len(points)))
    value = float(np.mean([points[s] for s in use]))
    lo = hi = math.nan
    if boots[use[0]] is not None:
        # Sites are resampled independently; resample b's client average is the mean of the sites' resample b.
        lo, hi = _percentile_ci(np.mean([np.asarray(boots[s], dtype=np.float64) for s in use], axis=0), ci)
    return Estimate(value, lo, hi), [s for s in range(len(points)) if s not in use]


def _evaluate_sites(task, y, p, attributes, site_codes, site_names, rules, extra, B, seed_seq, stratify, ci,
                    min_group_size, n_jobs, report_warnings, tracker: BootstrapProgress) -> TaskResult:  # fmt: skip
    """FairFedMed's client average: every metric computed on each site's samples, then the mean over sites."""
    S = len(site_names)
    site_seeds = seed_seq.spawn(S)
    items = list(attributes.items()) or [("__all__", (np.zeros(y.size, dtype=np.int64), ["all"]))]
    overall_sites: list[tuple[dict, dict | None]] = []
    attr_sites: dict[str, list[tuple]] = {name: [] for name, _ in items}
    for s in range(S):
        m = site_codes == s
        attr_seeds = site_seeds[s].spawn(len(items))
        for k, (name, (codes, group_names)) in enumerate(items):
            engine = E.AttributeEngine(y[m], p[m], codes[m], len(group_names), rules, extra)
            g, o = engine.point_stats()
            gb = ob = None
            if B:
                tracker.describe(f"{task} · {name} · site {site_names[s]}")
                gb, ob = engine.bootstrap(B, attr_seeds[k], stratify, n_jobs)
                tracker.advance()
            if k == 0:
                overall_sites.append((o, ob))
            attr_sites[name].append((g, o, gb, ob))

    def left_out_note(metric: str, sites_out: list[int]) -> str:
        return f"{metric}: undefined in site(s) {', '.join(site_names[s] for s in sites_out)}, left out of the average"

    overall = {}
    names = list(OVERALL_CLASSIFICATION) + [f"{m}@{x}" for x in extra for m in E.THRESHOLDED]
    for metric in names:
        overall[metric], out = _site_mean([float(o[metric]) for o, _ in overall_sites],
                                          [None if ob is None else ob[metric] for _, ob in overall_sites], ci)  # fmt: skip
        if metric == "auc" and out:
            report_warnings.append(f"task '{task}': {left_out_note('auc', out)} (a site with one class has no AUC)")
    results: dict[str, AttributeResult] = {}
    for name, (codes, group_names) in items:
        if name == "__all__":
            continue
        per_site = attr_sites[name]
        G = len(group_names)
        n = sum(np.asarray(g["n"][:G]) for g, *_ in per_site)
        n_pos = sum(np.asarray(g["n_pos"][:G]) for g, *_ in per_site)
        counts = {grp: (int(n[i]), int(n_pos[i])) for i, grp in enumerate(group_names)}
        validity = [_validity(g["n"][:G], g["n_pos"][:G], group_names, min_group_size, need_both=True)
                    for g, *_ in per_site]  # fmt: skip
        excluded: dict[str, str] = {}
        for i, grp in enumerate(group_names):
            reasons = [f"site {site_names[s]}: {ex[grp]}" for s, (_, ex) in enumerate(validity) if grp in ex]
            if len(reasons) == S:
                excluded[grp] = "; ".join(reasons)
        group_metrics: dict[str, dict[str, Estimate]] = {}
        metric_names = [m for m in per_site[0][0] if m not in ("n", "n_pos")]
        for i, grp in enumerate(group_names):
            if n[i] == 0:
                continue
            present = [s for s, (g, *_) in enumerate(per_site) if g["n"][i] > 0]
            group_metrics[grp] = {
                metric: _site_mean([float(per_site[s][0][metric][i]) for s in present],
                                   [None if per_site[s][2] is None else per_site[s][2][metric][:, i] for s in present],
                                   ci)[0]
                for metric in metric_names
            }  # fmt: skip
        summaries = [_summarise(g, o, gb, ob, validity[s][0], group_names) for s, (g, o, gb, ob) in enumerate(per_site)]
        summary: dict[str, Estimate] = {}
        metric_notes: dict[str, str] = {}

        def average(metric: str, parts: list[tuple]) -> None:
            summary[metric], out = _site_mean([float(pt[metric]) for pt, _, _ in parts],
                                              [None if bt is None else bt[metric] for _, bt, _ in parts], ci)  # fmt: skip
            reasons = [f"site {site_names[s]}: {parts[s][2][metric]}" for s in range(S) if metric in parts[s][2]]
            if out:
                reasons.insert(0, left_out_note(metric, out))
            if reasons:
                metric_notes[metric] = "; ".join(reasons)

        for metric in E.SUMMARY_METRICS:
            average(metric, summaries)
        for x in extra:
            parts = [_summarise(g, o, gb, ob, validity[s][0], group_names, suffix=f"@{x}")
                     for s, (g, o, gb, ob) in enumerate(per_site)]  # fmt: skip
            renamed = [({f"{m}@{x}": pt[m] for m in _THRESHOLDED_SUMMARIES},
                        None if bt is None else {f"{m}@{x}": bt[m] for m in _THRESHOLDED_SUMMARIES},
                        {f"{m}@{x}": v for m, v in nt.items()}) for pt, bt, nt in parts]  # fmt: skip
            for m in _THRESHOLDED_SUMMARIES:
                average(f"{m}@{x}", renamed)
        notes = [f"attribute '{name}': client-averaged over {S} site(s) ({', '.join(site_names)}); "
                 "no significance test for client averages"]  # fmt: skip
        results[name] = AttributeResult(name=name, groups=list(group_names), group_counts=counts,
                                        group_metrics=group_metrics, excluded=excluded, summary=summary,
                                        notes=notes, metric_notes=metric_notes)  # fmt: skip
    return TaskResult(task=task, n=int(y.size), n_pos=int(y.sum()), overall=overall, threshold_policy="",
                      threshold=rules.threshold, attributes=results, extra_thresholds=extra)  # fmt: skip


def _attribute_result(name, group_names, g, o, gb, ob, extra, ci, min_group_size, report_warnings,
                      ci_method: str = GI.DEFAULT_CI_METHOD) -> AttributeResult:  # fmt: skip
    G = len(group_names)
    valid, excluded = _validity(g["n"][:G], g["n_pos"][:G], group_names, min_group_size, need_both=True)
    counts = {grp: (int(g["n"][i]), int(g["n_pos"][i])) for i, grp in enumerate(group_names)}
    group_metrics: dict[str, dict[str, Estimate]] = {}
    metric_names = [m for m in g if m not in ("n", "n_pos")]
    for i, grp in enumerate(group_names):
        if g["n"][i] == 0:
            continue
        entry = {}
        for metric in metric_names:
            value = float(g[metric][i])
            lo, hi = _percentile_ci(gb[metric][:, i], ci) if gb is not None else (math.nan, math.nan)
            entry[metric] = Estimate(value, lo, hi)
        group_metrics[grp] = entry
    point, boot, metric_notes = _summarise(g, o, gb, ob, valid, group_names)
    summary = {m: _summary_estimate(point[m], boot[m] if boot else None, ci) for m in E.SUMMARY_METRICS}
    simultaneous = gb is not None and ci_method == "simultaneous"
    gap_p: dict[str, float] = {}
    if simultaneous:
        estimates, gap_p = _simultaneous_summaries(g, gb, valid, point, ci, E.GAP_METRICS, _CLASSIFICATION_EXTREMES,
                                                   o=o, ob=ob, spreads=_CLASSIFICATION_SPREADS)  # fmt: skip
        summary.update(estimates)
    for x in extra:
        point_x, boot_x, notes_x = _summarise(g, o, gb, ob, valid, group_names, suffix=f"@{x}")
        for m in _THRESHOLDED_SUMMARIES:
            summary[f"{m}@{x}"] = _summary_estimate(point_x[m], boot_x[m] if boot_x else None, ci)
        metric_notes.update({f"{m}@{x}": note for m, note in notes_x.items() if m in _THRESHOLDED_SUMMARIES})
        if simultaneous:
            gaps_x = {gap: f"{m}@{x}" for gap, m in E.GAP_METRICS.items() if gap in _THRESHOLDED_SUMMARIES}
            estimates, _ = _simultaneous_summaries(g, gb, valid, point_x, ci, gaps_x, {}, suffix=f"@{x}", o=o, ob=ob,
                                                   spreads={"es_acc": (f"acc@{x}", "es")})  # fmt: skip
            summary.update({f"{m}@{x}": est for m, est in estimates.items()})
    notes: list[str] = []
    if boot is not None and valid.sum() >= 2:
        degenerate = int(np.sum(~np.isfinite(boot["auc_gap"])))
        if degenerate:
            notes.append(f"attribute '{name}': in {degenerate} of {boot['auc_gap'].size} resamples a group lost one "
                         "class; AUC intervals use the other resamples (stratify='group_class' avoids this)")  # fmt: skip
    worst: dict[str, str] = {}
    if valid.sum() < 2:
        message = (f"attribute '{name}': fewer than two valid groups ({int(valid.sum())} of {G}); "
                   f"its gaps are NaN")  # fmt: skip
        notes.append(message)
        report_warnings.append(message)
        warnings.warn(message, FairnessWarning, stacklevel=4)
    else:
        auc_valid = np.where(valid, g["auc"][:G], np.inf)
        worst["auc"] = group_names[int(np.argmin(auc_valid))]
    result = AttributeResult(name=name, groups=list(group_names), group_counts=counts, group_metrics=group_metrics,
                             excluded=excluded, summary=summary, worst_group=worst, notes=notes,
                             metric_notes=metric_notes)  # fmt: skip
    if gb is not None and valid.sum() >= 2:
        result.significance = gap_p if simultaneous else _flip_p_values(g, gb, valid, E.GAP_METRICS)
    return result


def _summarise(g, o, gb, ob, valid, group_names, suffix: str = ""):
    """Summary metrics of the point estimate and the resamples, each over the groups valid for *that* metric
    (METRICS.md §5), with the reason where a metric is NaN or leaves a group out: (point, boot or None, notes)."""
    point = E.summarise(g, o, valid, suffix=suffix)
    boot = E.summarise(gb, ob, valid, suffix=suffix) if gb is not None else None
    notes: dict[str, str] = {}
    G, n_valid = valid.size, int(valid.sum())

    def set_nan(metric: str, reason: str) -> None:
        point[metric] = np.float64(np.nan)
        if boot is not None:
            boot[metric] = np.full(np.shape(boot[metric]), np.nan)
        notes[metric] = reason

    if n_valid < 2:  # a standard deviation of one value is not a spread of zero
        set_nan("auc_std", f"fewer than two valid groups ({n_valid} of {G}): no spread of group AUCs")
    # A group without predicted positives has no PPV: it leaves ppv_gap only, not every group's ppv_gap.
    ppv = np.asarray(g[f"ppv{suffix}"])[:G]
    no_ppv = valid & ~np.isfinite(ppv)
    if no_ppv.any():
        has_ppv = valid & np.isfinite(ppv)
        names = ", ".join(group_names[i] for i in np.flatnonzero(no_ppv))
        point["ppv_gap"] = _spread_over(ppv, has_ppv)
        if boot is not None:
            boot["ppv_gap"] = _spread_over(np.asarray(gb[f"ppv{suffix}"])[..., :G], has_ppv)
        if int(has_ppv.sum()) < 2:
            notes["ppv_gap"] = (f"no predicted positives in {names}: no PPV; fewer than two groups with a PPV remain, "
                                "so ppv_gap is NaN")  # fmt: skip
        else:
            notes["ppv_gap"] = f"no predicted positives in {names}: no PPV, left out of ppv_gap"
    # Ratios min/max are undefined (0/0) when the largest rate is 0: NaN with the reason, never a number.
    if n_valid >= 2:
        pos_rate = np.asarray(g[f"pos_rate{suffix}"])[:G][valid]
        if pos_rate.max() == 0:
            set_nan("dpr", "no valid group has a positive prediction: the ratio of selection rates is 0/0")
        for rate in ("tpr", "fpr"):
            values = np.asarray(g[f"{rate}{suffix}"])[:G][valid]
            if np.all(np.isfinite(values)) and values.max() == 0:
                name = rate.upper()
                set_nan("eor", f"the largest {name} over the valid groups is 0: the {name} ratio is 0/0")
    return point, boot, notes


def _spread_over(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """max − min over the masked groups (last axis); NaN with fewer than two groups."""
    chosen = values[..., mask]
    if chosen.shape[-1] < 2:
        return np.full(chosen.shape[:-1], np.nan)
    return chosen.max(axis=-1) - chosen.min(axis=-1)


_THRESHOLDED_SUMMARIES = ("acc_gap", "es_acc", "tpr_gap", "fpr_gap", "tnr_gap", "ppv_gap", "eqodds_score", "eod",
                          "eopp_score", "dpd", "dp_score", "dpr", "eor")  # fmt: skip


def _summary_estimate(point: Any, boot: np.ndarray | None, ci: float) -> Estimate:
    lo, hi = _percentile_ci(np.asarray(boot), ci) if boot is not None else (math.nan, math.nan)
    return Estimate(float(point), lo, hi)


# Summary metrics whose interval and test depend on ci_method: extremum statistics over groups and their transforms.
_CLASSIFICATION_EXTREMES = {"worst_auc": ("auc", "min"), "best_auc": ("auc", "max")}
_CLASSIFICATION_SPREADS = {"auc_std": ("auc", "std"), "es_auc": ("auc", "es"), "es_acc": ("acc", "es")}
_EXTREMUM_SUMMARIES = frozenset({*E.GAP_METRICS, *_CLASSIFICATION_EXTREMES, *_CLASSIFICATION_SPREADS, "eqodds_score",
                                 "eod", "eopp_score", "dp_score", "dpr", "eor", *E.SEG_GAP_METRICS,
                                 *(f"{w}_{k}" for w in ("worst", "best") for k in E.SEG_GROUP_METRICS),
                                 *(f"{k}_std" for k in E.SEG_GROUP_METRICS),
                                 *(f"es_{k}" for k in E.SEG_GROUP_METRICS)})  # fmt: skip
PERCENTILE_FLAG = ("percentile intervals for gaps and worst/best groups, as the reference reports them: they cannot "
                   "contain a gap of 0 (ci_method='simultaneous' gives honest ones)")  # fmt: skip


def _resolve_ci_method(ci_method: str | None, prof: Profile | None) -> tuple[Profile | None, str]:
    """The interval method (the caller's, else the profile's, else the default); a profile left on percentile
    intervals says so in its flags."""
    method = GI.check_ci_method(ci_method or (prof.ci_method if prof is not None else GI.DEFAULT_CI_METHOD))
    if prof is not None and method == "percentile":
        prof = replace(prof, flags=(*prof.flags, PERCENTILE_FLAG))
    return prof, method


def _simultaneous_summaries(g, gb, valid, point, ci, gap_metrics: Mapping[str, str],
                            extremes: Mapping[str, tuple[str, str]], suffix: str = "", o=None, ob=None,
                            spreads: Mapping[str, tuple[str, str]] | None = None):  # fmt: skip
    """(estimates, p-values) of the gaps and worst/best-group metrics with simultaneous max-|t| intervals
    (:mod:`fairfm.metrics.gap_inference`). Point values stay the plug-in ones of ``point``; a metric whose point
    value is NaN keeps NaN bounds and gets no p-value. Groups: the valid ones with a finite point value."""
    G = valid.size

    def groups_of(metric: str):
        values = np.asarray(g[metric][:G], dtype=np.float64)
        keep = valid & np.isfinite(values)
        return values[keep], np.asarray(gb[metric])[:, :G][:, keep]

    def finite(name: str) -> bool:
        return name in point and math.isfinite(float(point[name]))

    estimates: dict[str, Estimate] = {}
    p_values: dict[str, float] = {}
    for gap, metric in gap_metrics.items():
        if metric not in g or not finite(gap):
            continue
        inference = GI.gap_inference(*groups_of(metric), ci)
        estimates[gap] = Estimate(float(point[gap]), inference.low, inference.high)
        if math.isfinite(inference.p_value):
            p_values[f"{gap}_p"] = inference.p_value
    for name, (metric, which) in extremes.items():
        if finite(name):
            estimates[name] = Estimate(float(point[name]), *GI.extremum_interval(*groups_of(metric), ci, which))
    # SDs over groups ("std") and equity-scaled metrics ("es", needing the overall metric and its resamples).
    for name, (metric, kind) in (spreads or {}).items():
        if not finite(name) or metric not in g:
            continue
        if kind == "std":
            estimates[name] = Estimate(float(point[name]), *GI.std_interval(*groups_of(metric), ci))
        elif ob is not None and metric in ob:
            estimates[name] = Estimate(float(point[name]), *GI.es_interval(float(o[metric]), ob[metric],
                                                                            *groups_of(metric), ci))  # fmt: skip
    # Transforms of gaps: 1 − gap reverses the interval; sums and maxima of gaps need joint bounds.
    for score, gap in (("eopp_score", "tpr_gap"), ("dp_score", "dpd")):
        if finite(score) and gap in estimates:
            estimates[score] = Estimate(float(point[score]), 1 - estimates[gap].ci_high, 1 - estimates[gap].ci_low)
    rates = [f"{r}{suffix}" for r in ("tpr", "tnr", "fpr")]
    if all(r in g for r in rates) and (finite("eqodds_score") or finite("eod")):
        (tpr_lo, tpr_hi), (tnr_lo, tnr_hi), (fpr_lo, fpr_hi) = GI.joint_gap_intervals(
            *zip(*(groups_of(r) for r in rates)), level=ci)  # fmt: skip
        if finite("eqodds_score"):
            estimates["eqodds_score"] = Estimate(float(point["eqodds_score"]), 1 - (tpr_hi + tnr_hi) / 2,
                                                 1 - (tpr_lo + tnr_lo) / 2)  # fmt: skip
        if finite("eod"):
            estimates["eod"] = Estimate(float(point["eod"]), max(tpr_lo, fpr_lo), max(tpr_hi, fpr_hi))
    # Ratios min/max are gaps of log rates: dpr = exp(−gap of log pos_rate), eor = exp(−max(gaps of log tpr, fpr)).
    # A valid group with a rate of 0 at the point has no log: that ratio keeps its percentile interval.
    for ratio, rate_names in (("dpr", ("pos_rate",)), ("eor", ("tpr", "fpr"))):
        names = [f"{r}{suffix}" for r in rate_names]
        if not finite(ratio) or not all(n in g for n in names):
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = [(np.log(values), np.log(boot)) for values, boot in (groups_of(n) for n in names)]
        if not all(np.all(np.isfinite(values)) for values, _ in logs):
            continue
        bounds = GI.joint_gap_intervals([v for v, _ in logs], [b for _, b in logs], ci)
        low, high = max(b[0] for b in bounds), max(b[1] for b in bounds)
        estimates[ratio] = Estimate(float(point[ratio]), math.exp(-high), math.exp(-low))
    return estimates, p_values


def _flip_p_values(g, gb, valid, gap_metrics: Mapping[str, str]) -> dict[str, float]:
    """Share of resamples in which the point estimate's best-minus-worst difference is ≤ 0 (the sign flips)."""
    out = {}
    idx = np.flatnonzero(valid)
    for gap, metric in gap_metrics.items():
        values = g[metric][idx]
        if not np.all(np.isfinite(values)):
            continue
        hi_g, lo_g = idx[int(np.argmax(values))], idx[int(np.argmin(values))]
        diff = gb[metric][:, hi_g] - gb[metric][:, lo_g]
        diff = diff[np.isfinite(diff)]
        if diff.size == 0 or hi_g == lo_g:
            continue
        out[f"{gap}_p"] = float(np.mean(diff <= 0))
    return out


def _add_significance(report: Report) -> None:
    """Benjamini–Hochberg across the attributes and tasks of the report, separately for each gap."""
    keys = sorted({k for t in report.tasks.values() for a in t.attributes.values() for k in a.significance
                   if k.endswith("_p")})  # fmt: skip
    for key in keys:
        holders = [a for t in report.tasks.values() for a in t.attributes.values() if key in a.significance]
        q = benjamini_hochberg(np.array([a.significance[key] for a in holders]))
        for attr, q_value in zip(holders, q):
            attr.significance[key.replace("_p", "_q")] = float(q_value)


def _macro(tasks: dict[str, TaskResult]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {"__all__": {}}
    for metric in ("auc", "acc", "bce", "ece", "brier"):
        out["__all__"][f"macro_{metric}"] = float(np.nanmean([t.overall[metric].value for t in tasks.values()]))
    attrs = {a for t in tasks.values() for a in t.attributes}
    for attr in sorted(attrs):
        per = [t.attributes[attr] for t in tasks.values() if attr in t.attributes]
        metrics = per[0].summary.keys()
        out[attr] = {}
        for metric in metrics:
            vals = [a.summary[metric].value for a in per]
            finite = [v for v in vals if math.isfinite(v)]
            out[attr][f"macro_{metric}"] = float(np.mean(finite)) if finite else math.nan
    return out


def _scale(report: Report, prof: Profile) -> None:
    def scaled(est: Estimate) -> Estimate:
        return Estimate(est.value * prof.scale, est.ci_low * prof.scale, est.ci_high * prof.scale)

    for task in report.tasks.values():
        for metric in prof.scaled_metrics:
            if metric in task.overall:
                task.overall[metric] = scaled(task.overall[metric])
        for attr in task.attributes.values():
            for metric in prof.scaled_metrics:
                if metric in attr.summary:
                    attr.summary[metric] = scaled(attr.summary[metric])
                for entry in attr.group_metrics.values():
                    if metric in entry:
                        entry[metric] = scaled(entry[metric])
    for attr, metrics in report.macro.items():
        for metric in list(metrics):
            if metric.removeprefix("macro_") in prof.scaled_metrics:
                metrics[metric] *= prof.scale


# ---------------------------------------------------------------------------------------------------------------
def evaluate_segmentation(
    dice: Any = None,
    *,
    groups: Any = None,
    iou: Any = None,
    bootstrap: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    min_group_size: int = 1,
    bins: Mapping[str, Sequence[float]] | None = None,
    intersect: Sequence[Sequence[str]] | None = None,
    both_empty: Any = None,
    pred_masks: Any = None,
    true_masks: Any = None,
    task: str = "segmentation",
    ci_method: str | None = None,
) -> Report:
    """Segmentation fairness from per-sample Dice (and/or IoU) scores, or from mask stacks (METRICS.md §3).

    With ``pred_masks``/``true_masks`` (N, H, W[, D]) the per-sample Dice and IoU are computed here, a sample whose
    masks are both empty scores 1.0, and the report counts such samples (``n_both_empty``). ``ci_method`` as in
    :func:`evaluate`.
    """
    _, ci_method = _resolve_ci_method(ci_method, None)
    if pred_masks is not None or true_masks is not None:
        if pred_masks is None or true_masks is None or dice is not None or iou is not None:
            raise InputError("give both pred_masks and true_masks, and no dice/iou scores alongside them")
        from fairfm.metrics.functions import segmentation_scores

        scores = segmentation_scores(pred_masks, true_masks)
        dice, iou, both_empty = scores["dice"].to_numpy(), scores["iou"].to_numpy(), scores["both_empty"].to_numpy()
    values: dict[str, np.ndarray] = {}
    for name, arr in (("dice", dice), ("iou", iou)):
        if arr is None:
            continue
        scores = I.check_scores(np.asarray(arr).reshape(-1), name)
        bad = (scores < 0) | (scores > 1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(f"column '{name}', row {row}: {scores[row]} is not a {name} score in [0, 1]")
        values[name] = scores
    if not values:
        raise InputError("segmentation needs per-sample dice and/or iou scores")
    sizes = {v.size for v in values.values()}
    if len(sizes) > 1:
        raise InputError(f"dice and iou have different lengths {sorted(sizes)} (length mismatch)")
    n = sizes.pop()
    frame = I.as_group_frame(groups, n)
    attributes = I.attribute_codes(frame, bins, intersect)
    seeds = np.random.SeedSequence(seed).spawn(max(len(attributes), 1))
    report_warnings: list[str] = []
    results: dict[str, AttributeResult] = {}
    overall_point: dict[str, float] = {}
    overall_boot: dict[str, np.ndarray] | None = None
    items = list(attributes.items()) or [("__all__", (np.zeros(n, dtype=np.int64), ["all"]))]
    for k, (name, (codes, group_names)) in enumerate(items):
        engine = E.SegmentationEngine(values, codes, len(group_names))
        g, o = engine.group_stats(), engine.overall_stats()
        gb, ob = engine.bootstrap(bootstrap, seeds[k]) if bootstrap else (None, None)
        if k == 0:
            overall_point, overall_boot = o, ob
        if name == "__all__":
            continue
        G = len(group_names)
        valid, excluded = _validity(g["n"][:G], np.zeros(G), group_names, min_group_size, need_both=False)
        point = E.summarise_segmentation(g, o, valid)
        boot = E.summarise_segmentation(gb, ob, valid) if gb is not None else None
        summary = {m: _summary_estimate(point[m], boot[m] if boot else None, ci) for m in point}
        seg_gaps = {k: v for k, v in E.SEG_GAP_METRICS.items() if v in values}
        gap_p: dict[str, float] = {}
        if gb is not None and ci_method == "simultaneous":
            extremes = {f"{w}_{m}": (m, which) for m in values for w, which in (("worst", "min"), ("best", "max"))}
            spreads = {name: (m, kind) for m in values for name, kind in ((f"{m}_std", "std"), (f"es_{m}", "es"))}
            estimates, gap_p = _simultaneous_summaries(g, gb, valid, point, ci, seg_gaps, extremes, o=o, ob=ob,
                                                       spreads=spreads)  # fmt: skip
            summary.update(estimates)
        group_metrics = {}
        for i, grp in enumerate(group_names):
            if g["n"][i] == 0:
                continue
            group_metrics[grp] = {
                m: Estimate(float(g[m][i]), *(_percentile_ci(gb[m][:, i], ci) if gb is not None else (math.nan,) * 2))
                for m in values
            }
        notes, worst = [], {}
        if valid.sum() < 2:
            message = f"attribute '{name}': fewer than two valid groups ({int(valid.sum())} of {G}); its gaps are NaN"
            notes.append(message)
            report_warnings.append(message)
            warnings.warn(message, FairnessWarning, stacklevel=2)
        else:
            for m in values:
                worst[m] = group_names[int(np.argmin(np.where(valid, g[m][:G], np.inf)))]
        result = AttributeResult(name=name, groups=list(group_names),
                                 group_counts={grp: (int(g["n"][i]), 0) for i, grp in enumerate(group_names)},
                                 group_metrics=group_metrics, excluded=excluded, summary=summary,
                                 worst_group=worst, notes=notes)  # fmt: skip
        if gb is not None and valid.sum() >= 2:
            result.significance = gap_p if ci_method == "simultaneous" else _flip_p_values(g, gb, valid, seg_gaps)
        results[name] = result
    overall = {}
    for m in values:
        lo, hi = _percentile_ci(overall_boot[m], ci) if overall_boot is not None else (math.nan, math.nan)
        overall[f"mean_{m}"] = Estimate(float(overall_point[m]), lo, hi)
    if both_empty is not None:
        overall["n_both_empty"] = Estimate(float(np.asarray(both_empty, dtype=bool).sum()))
    task_result = TaskResult(task=task, n=n, n_pos=0, overall=overall, threshold_policy="none", threshold=None,
                             attributes=results)  # fmt: skip
    report = Report(kind="segmentation", tasks={task: task_result},
                    bootstrap={"B": int(bootstrap), "seed": seed, "stratify": "group", "ci": ci, "method": "percentile",
                               "ci_method": ci_method, "gap_intervals": GI.DESCRIPTIONS[ci_method]},
                    warnings=report_warnings)  # fmt: skip
    _add_significance(report)
    return report
