"""Evaluate tables of predictions (CSV / Parquet / DataFrames): the API behind ``fairfm evaluate``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from fairfm.errors import InputError
from fairfm.groups import parse_bins
from fairfm.metrics import _engine as E
from fairfm.metrics import _inputs as I
from fairfm.metrics.gap_inference import check_ci_method
from fairfm.metrics.profiles import get_profile
from fairfm.metrics.report import Report, _left_out, evaluate, evaluate_segmentation
from fairfm.metrics.thresholds import parse_policy
from fairfm.tableio import join_on, read_table, require_columns


@dataclass
class EvaluatedInputs:
    """The rows an evaluation scored (evaluated split only), one column per task, with the raw attribute columns
    and the binning/intersection options that made the groups — so curves drawn later group the samples exactly as
    the metrics did (:func:`fairfm.metrics._inputs.attribute_codes`)."""

    groups: pd.DataFrame
    labels: pd.DataFrame | None = None  # classification: one column per task (0/1, NaN unknown, −1 uncertain)
    scores: pd.DataFrame | None = None
    values: dict[str, np.ndarray] = field(default_factory=dict)  # segmentation: "dice"/"iou" per sample
    bins: dict[str, list[float]] = field(default_factory=dict)
    intersections: list[list[str]] = field(default_factory=list)
    uncertain: str = "ignore"  # how labels of −1 were read (as the metrics read them)

    def group_labels(self, attribute: str) -> np.ndarray | None:
        """Each row's group of ``attribute`` as the metrics saw it ("unknown" for an unknown value), or None."""
        codes = I.attribute_codes(self.groups, self.bins, self.intersections).get(attribute)
        if codes is None:
            return None
        code, names = codes
        return np.array([names[c] if c >= 0 else "unknown" for c in code], dtype=object)

    def classification(self, task: str, attribute: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(y, score, group) of the rows with a known 0/1 label for ``task``, or None."""
        if self.labels is None or self.scores is None or task not in self.labels.columns:
            return None
        groups = self.group_labels(attribute)
        if groups is None:
            return None
        labels = I.task_labels(self.labels[task].to_numpy(), task, 1, self.uncertain)
        p = pd.to_numeric(self.scores[task], errors="coerce").to_numpy(np.float64)[labels.used]
        return labels.y.astype(np.float64), p, groups[labels.used]

    def segmentation(self, attribute: str, metric: str = "dice") -> tuple[np.ndarray, np.ndarray] | None:
        """(per-sample values, group) of a segmentation evaluation, or None."""
        values = self.values.get(metric)
        groups = self.group_labels(attribute)
        if values is None or groups is None:
            return None
        known = np.isfinite(values)
        return values[known], groups[known]


def _load(table: str | os.PathLike | pd.DataFrame, name: str) -> tuple[pd.DataFrame, str, int | None]:
    """(frame, how to name it in messages, line offset of data row 0 in the file or None)."""
    if isinstance(table, pd.DataFrame):
        if table.empty:
            raise InputError(f"{name}: the table has no rows")
        return table.reset_index(drop=True), name, None
    path = Path(table)
    frame = read_table(path)
    is_csv = path.suffix.lower() not in {".parquet", ".pq"}
    return frame, str(path), (2 if is_csv else None)


def known_summary_metrics() -> list[str]:
    return list(E.SUMMARY_METRICS) + list(E.SEG_SUMMARY_METRICS)


def evaluate_frame(
    predictions: str | os.PathLike | pd.DataFrame,
    *,
    y_true: Sequence[str] = (),
    y_score: Sequence[str] = (),
    attributes: Sequence[str] = (),
    meta: str | os.PathLike | pd.DataFrame | None = None,
    on: str = "sample_id",
    bins: Sequence[str] = (),
    intersect: Sequence[str] = (),
    threshold: str | None = None,
    val_file: str | os.PathLike | pd.DataFrame | None = None,
    bootstrap: int | None = None,
    seed: int = 0,
    profile: str | None = None,
    stratify: str | None = None,
    pos_label: Any = None,
    min_group_size: int = 1,
    dice: str | None = None,
    iou: str | None = None,
    metrics: Sequence[str] = (),
    split_column: str | None = None,
    eval_split: str = "test",
    val_split: str = "val",
    task_column: str | None = None,
    uncertain: str = "ignore",
    site_column: str | None = None,
    progress: bool = False,
    ci_method: str | None = None,
    keep_inputs: bool = False,
) -> Report:
    """Read, join and check a predictions table, then :func:`evaluate` it. Errors name file, column and row.

    A PredictionTable (DESIGN.md) has one row per (sample, task) and a split column: ``task_column="task"`` reads
    that long format (one ``y_true``/``y_score`` pair, tasks from the column), and ``split_column="split"``
    evaluates the ``eval_split`` rows while the ``val_split`` rows, when present, choose the threshold.
    Validation tasks are matched to the evaluated tasks by name. A blank label leaves that sample out of that task
    (counted; in the long format a sample without a row for a task is the same), and a label of −1 is uncertain,
    read by ``uncertain`` (``ignore`` | ``ones`` | ``zeros``). ``site_column``: the site (client) of each row, for
    a profile that averages over clients (``fairfedmed``).
    """
    # Options first, so a typo fails before any file is read.
    get_profile(profile)
    if ci_method is not None:
        check_ci_method(ci_method)
    if threshold is not None:
        parse_policy(threshold)
    bin_specs = dict(parse_bins(spec) for spec in bins)
    intersections = [[c.strip() for c in spec.split(",") if c.strip()] for spec in intersect]
    known = known_summary_metrics()
    for name in metrics:
        if name not in known:
            raise InputError(f"unknown metric {name!r}; known summary metrics: {', '.join(known)}")
    segmentation = dice is not None or iou is not None
    if segmentation and (y_true or y_score):
        raise InputError("give either --dice/--iou (segmentation) or --y-true/--y-score (classification), not both")
    if not segmentation:
        if not y_true or not y_score:
            raise InputError("name the label and score columns: --y-true COL --y-score COL")
        if len(y_true) != len(y_score):
            raise InputError(f"{len(y_true)} --y-true column(s) but {len(y_score)} --y-score column(s); pair them")
    if uncertain not in I.UNCERTAIN_POLICIES:
        raise InputError(f"unknown --uncertain {uncertain!r}; choose one of: {', '.join(I.UNCERTAIN_POLICIES)}")
    if site_column is not None:
        if segmentation:
            raise InputError("--site-column applies to classification (--y-true/--y-score)")
        prof = get_profile(profile)
        if prof is None or not prof.client_average:
            raise InputError(f"--site-column {site_column}: sites are averaged over by --profile fairfedmed "
                             "(client average); to compare sites as groups, give --attr " + site_column)  # fmt: skip
    if min_group_size < 1:
        raise InputError(f"--min-group-size must be at least 1, got {min_group_size}")
    if not attributes:
        raise InputError("name at least one sensitive attribute: --attr COL")

    frame, source, offset = _load(predictions, "predictions")
    if meta is not None:
        meta_frame, meta_source, _ = _load(meta, "meta")
        frame = join_on(frame, meta_frame, on, source, meta_source, left_unique=task_column is None)
        # A left join keeps the prediction file's row order, so rows still map to its lines.
    # A SampleTable or PredictionTable names its harmonised groups group_<name>: --attr sex finds group_sex.
    renames = {f"group_{a}": a for a in attributes if a not in frame.columns and f"group_{a}" in frame.columns}
    frame = frame.rename(columns=renames)
    value_columns = [c for c in (dice, iou) if c] if segmentation else [*y_true, *y_score]
    site_columns = [site_column] if site_column else []
    require_columns(frame, value_columns + list(attributes) + site_columns,
                    source if meta is None else f"{source} joined with {meta}")  # fmt: skip
    for column in bin_specs:
        if column not in attributes:
            raise InputError(f"--bins {column}=…: '{column}' is not one of the --attr columns")
    for columns in intersections:
        for column in columns:
            if column not in attributes:
                raise InputError(f"--intersect {','.join(columns)}: '{column}' is not one of the --attr columns")

    def checked(check, *args):
        try:
            return check(*args)
        except InputError as exc:
            raise InputError(f"{source}: {exc}") from None

    if segmentation:
        groups = frame[list(attributes)]
        values = {name: checked(I.check_scores, frame[col].to_numpy(), col, offset) for name, col in (("dice", dice), ("iou", iou)) if col}
        report = evaluate_segmentation(values.get("dice"), iou=values.get("iou"), groups=groups,
                                       bootstrap=1000 if bootstrap is None else bootstrap, seed=seed,
                                       min_group_size=min_group_size, bins=bin_specs, intersect=intersections,
                                       ci_method=ci_method)  # fmt: skip
        if keep_inputs:
            report.inputs = EvaluatedInputs(groups.reset_index(drop=True), values=values, bins=bin_specs,
                                            intersections=intersections)  # fmt: skip
    else:
        label = 1 if pos_label is None else pos_label
        # Check every row of the file first, so that a message's row is the file's row. Labels stay 0/1 with
        # NaN (unknown) and −1 (uncertain); a score is needed where its label is.
        checked_frame = _checked(frame, y_true, y_score, label, offset, source)
        eval_frame, val_frame_from_split = _select_splits(checked_frame, source, split_column, eval_split, val_split)
        labels, scores, groups = _wide(eval_frame, y_true, y_score, [*attributes, *site_columns], task_column, on,
                                       source)  # fmt: skip
        sites = groups.pop(site_column) if site_column else None
        val_labels = val_scores = None
        if val_file is not None:
            val_frame, val_source, val_offset = _load(val_file, "validation predictions")
            require_columns(val_frame, [*y_true, *y_score] + ([task_column, on] if task_column else []), val_source)
            val_frame = _checked(val_frame, y_true, y_score, label, val_offset, val_source)
            val_labels, val_scores, _ = _wide(val_frame, y_true, y_score, [], task_column, on, val_source)
            val_labels, val_scores = _match_tasks(labels, val_labels, val_scores, val_source)
        elif val_frame_from_split is not None:
            val_labels, val_scores, _ = _wide(val_frame_from_split, y_true, y_score, [], task_column, on, source)
            val_labels, val_scores = _match_tasks(labels, val_labels, val_scores, f"{source} ({val_split} rows)")
        for c in labels.columns:
            known = I.task_labels(labels[c].to_numpy(), c, 1, uncertain)
            checked(I.check_both_classes, known.y, c, _left_out(known, uncertain))
        kwargs = {} if bootstrap is None else {"bootstrap": bootstrap}
        single = labels.shape[1] == 1
        first = lambda frame_: frame_.iloc[:, 0] if single else frame_  # noqa: E731
        report = evaluate(
            first(labels), first(scores), groups=groups,
            val_true=None if val_labels is None else first(val_labels),
            val_score=None if val_scores is None else first(val_scores),
            threshold=threshold, profile=profile, seed=seed, stratify=stratify, min_group_size=min_group_size,
            bins=bin_specs, intersect=intersections, uncertain=uncertain, sites=sites, progress=progress,
            ci_method=ci_method, **kwargs,
        )  # fmt: skip
        if keep_inputs:
            report.inputs = EvaluatedInputs(groups.reset_index(drop=True), labels=labels, scores=scores,
                                            bins=bin_specs, intersections=intersections,
                                            uncertain=uncertain)  # fmt: skip
    usable = [a for t in report.tasks.values() for a in t.attributes.values() if len(a.groups) - len(a.excluded) >= 2]
    if not usable:
        details = "; ".join(
            f"'{a.name}': " + (", ".join(f"{g} ({r})" for g, r in a.excluded.items()) or f"only {a.groups}")
            for t in report.tasks.values() for a in t.attributes.values()
        )  # fmt: skip
        raise InputError(f"{source}: no attribute has two valid groups to compare — {details}")
    if metrics:
        report.restrict(list(metrics))
    return report


def _checked(frame: pd.DataFrame, y_true: Sequence[str], y_score: Sequence[str], label: Any, offset: int | None,
             source: str) -> pd.DataFrame:
    out = frame.copy()
    try:
        for c_true, c_score in zip(y_true, y_score):
            out[c_true] = I.read_labels(frame[c_true].to_numpy(), c_true, label, offset)
            labelled = ~np.isnan(out[c_true].to_numpy())
            out[c_score] = I.check_scores(frame[c_score].to_numpy(), c_score, offset, used=labelled)
    except InputError as exc:
        raise InputError(f"{source}: {exc}") from None
    return out


def _match_tasks(labels: pd.DataFrame, val_labels: pd.DataFrame, val_scores: pd.DataFrame, val_source: str):
    """Validation columns in the order of the evaluated tasks, matched by name (never by position)."""
    missing = [t for t in labels.columns if t not in val_labels.columns]
    if missing:
        raise InputError(f"{val_source}: the validation predictions have no task {missing[0]!r} "
                         f"(their tasks: {', '.join(map(str, val_labels.columns))})")  # fmt: skip
    order = list(labels.columns)
    return val_labels[order], val_scores[order]


def _select_splits(frame: pd.DataFrame, source: str, split_column: str | None, eval_split: str, val_split: str):
    """(rows to evaluate, validation rows or None) by the split column."""
    if split_column is None:
        return frame, None
    require_columns(frame, [split_column], source)
    splits = frame[split_column].astype(str)
    if not (splits == eval_split).any():
        found = ", ".join(sorted(splits.unique())[:10])
        raise InputError(f"{source}: column '{split_column}' has no '{eval_split}' rows (values: {found})")
    val = frame[splits == val_split] if (splits == val_split).any() else None
    return frame[splits == eval_split].reset_index(drop=True), None if val is None else val.reset_index(drop=True)


def _wide(frame: pd.DataFrame, y_true: Sequence[str], y_score: Sequence[str], attributes: Sequence[str],
          task_column: str | None, on: str, source: str):  # fmt: skip
    """(labels, scores, groups) with one column per task; the long format is pivoted on (sample id, task)."""
    if task_column is None:
        labels = frame[list(y_true)].copy()
        scores = frame[list(y_score)].copy()
        labels.columns = scores.columns = list(y_true)  # tasks are named after their label columns
        return labels, scores, frame[list(attributes)]
    if len(y_true) != 1:
        raise InputError(f"--task-column {task_column}: give one --y-true/--y-score pair (the long format's columns)")
    require_columns(frame, [task_column, on], source)
    keys = frame[[on, task_column]].astype(str)
    dup = keys.duplicated()
    if dup.any():
        row = int(dup.to_numpy().nonzero()[0][0])
        raise InputError(f"{source}: sample {keys.iloc[row, 0]!r} appears twice for task {keys.iloc[row, 1]!r}")
    ids = keys[on]
    tasks = list(dict.fromkeys(keys[task_column]))
    # A sample without a row for a task has an unknown label for it (NaN): it leaves that task only.
    labels = frame.assign(_id=ids, _task=keys[task_column]).pivot(index="_id", columns="_task", values=y_true[0])
    scores = frame.assign(_id=ids, _task=keys[task_column]).pivot(index="_id", columns="_task", values=y_score[0])
    order = list(dict.fromkeys(ids))
    labels, scores = labels.loc[order, tasks], scores.loc[order, tasks]
    labels.columns.name = scores.columns.name = None
    groups = frame.assign(_id=ids).drop_duplicates("_id").set_index("_id").loc[order, list(attributes)]
    return labels.reset_index(drop=True), scores.reset_index(drop=True), groups.reset_index(drop=True)
