"""Input checking for the metric API: every error names the column, row or value at fault."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from fairfm.errors import InputError
from fairfm.groups import INTERSECTION_SEP, bin_continuous, bin_labels, factorize_groups, intersection_name


def _first_row(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def as_task_matrix(values: Any, name: str) -> tuple[np.ndarray, list[str]]:
    """1-D → (n, 1); 2-D arrays or DataFrames → (n, T), with task names from the columns."""
    if isinstance(values, pd.DataFrame):
        return values.to_numpy(), [str(c) for c in values.columns]
    if isinstance(values, pd.Series):
        return values.to_numpy().reshape(-1, 1), [str(values.name) if values.name is not None else "task"]
    arr = np.asarray(values)
    if arr.ndim == 1:
        return arr.reshape(-1, 1), ["task"]
    if arr.ndim == 2:
        return arr, [f"task{j}" for j in range(arr.shape[1])]
    raise InputError(f"{name}: expected a 1-D or 2-D array, got shape {arr.shape}")


def _where(row: int, line_offset: int | None) -> str:
    return f"row {row}" + (f" (line {row + line_offset} of the file)" if line_offset is not None else "")


def check_scores(values: np.ndarray, column: str, line_offset: int | None = None,
                 used: np.ndarray | None = None) -> np.ndarray:
    """Scores as float64; every score must be a finite number. ``used``: only these rows must be (a row whose
    label is unknown is not scored, so its score may be blank)."""
    try:
        scores = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        numeric = pd.to_numeric(pd.Series(values), errors="coerce")
        not_number = numeric.isna().to_numpy() & pd.Series(values).notna().to_numpy()
        if used is not None:
            not_number &= used
        if not_number.any():
            row = _first_row(not_number)
            raise InputError(f"column '{column}', {_where(row, line_offset)}: score {values[row]!r} is not a number") from None
        scores = numeric.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(scores)
    if used is not None:
        bad &= used
    if bad.any():
        row = _first_row(bad)
        raise InputError(
            f"column '{column}', {_where(row, line_offset)}: score is {scores[row]} — scores must be finite "
            f"({int(bad.sum())} non-finite value(s) in total)"
        )
    return scores


def check_labels(values: np.ndarray, column: str, pos_label: Any = 1, line_offset: int | None = None, *,
                 rows: np.ndarray | None = None) -> np.ndarray:
    """Map labels to {0, 1}: ``pos_label`` → 1, the other value → 0; anything else is an error naming the row.

    ``rows``: the original row numbers of ``values`` when they are a subset, so that messages name those rows."""

    def where(row: int) -> str:
        return _where(int(rows[row]) if rows is not None else row, line_offset)

    series = pd.Series(values)
    if series.isna().any():
        row = _first_row(series.isna().to_numpy())
        raise InputError(f"column '{column}', {where(row)}: label is missing")
    if pos_label == 1 or pos_label is None:
        numeric = pd.to_numeric(series, errors="coerce")
        bad = ~numeric.isin([0, 1]).to_numpy()
        if bad.any():
            row = _first_row(bad)
            raise InputError(
                f"column '{column}', {where(row)}: label {series.iloc[row]!r} is not 0 or 1 "
                f"(use --pos-label to name the positive class)"
            )
        return numeric.to_numpy().astype(np.uint8)
    as_text = series.astype(str).str.strip()
    positive = as_text == str(pos_label).strip()
    values_seen = pd.unique(as_text)
    if not positive.any():
        raise InputError(f"column '{column}': no row has the positive label {pos_label!r}")
    if len(values_seen) > 2:
        others = [v for v in values_seen if v != str(pos_label).strip()]
        row = _first_row((as_text == others[1]).to_numpy())
        raise InputError(
            f"column '{column}', {where(row)}: label {series.iloc[row]!r} is a third class "
            f"(positive {pos_label!r}, negative {others[0]!r})"
        )
    return positive.to_numpy().astype(np.uint8)


#: How uncertain labels (−1, as in CheXpert) are read (CheXpert's U-Ignore, U-Ones, U-Zeros).
UNCERTAIN_POLICIES = ("ignore", "ones", "zeros")
UNCERTAIN_LABEL = -1


def read_labels(values: np.ndarray, column: str, pos_label: Any = 1, line_offset: int | None = None) -> np.ndarray:
    """Labels as float64 in {0, 1}, NaN where unknown (blank) and −1 where uncertain (numeric labels only; with an
    explicit text ``pos_label`` every non-blank value is a class). Anything else is an error naming the row."""
    array = np.asarray(values)
    if (pos_label == 1 or pos_label is None) and array.dtype.kind in "biuf":
        # Numeric labels (the usual case, millions of rows): one vectorised check; the general path below only
        # runs to name the first bad row.
        out = array.astype(np.float64)
        if (np.isnan(out) | (out == 0) | (out == 1) | (out == UNCERTAIN_LABEL)).all():
            return out
    series = pd.Series(values)
    unknown = series.isna().to_numpy()
    out = np.full(series.size, np.nan)
    rows = np.flatnonzero(~unknown)
    if rows.size == 0:
        return out
    known = series[~unknown].to_numpy(dtype=object)
    if pos_label == 1 or pos_label is None:
        uncertain = (pd.to_numeric(pd.Series(known), errors="coerce") == UNCERTAIN_LABEL).to_numpy()
        checked = check_labels(np.where(uncertain, 0, known), column, 1, line_offset, rows=rows)
        out[rows] = np.where(uncertain, float(UNCERTAIN_LABEL), checked.astype(np.float64))
        return out
    out[rows] = check_labels(known, column, pos_label, line_offset, rows=rows)
    return out


@dataclass(frozen=True)
class TaskLabels:
    """One task's labels after the unknown/uncertain rules: ``y`` (0/1) on the ``used`` rows only."""

    y: np.ndarray
    used: np.ndarray
    n_unknown: int
    n_uncertain: int

    @property
    def all_used(self) -> bool:
        return bool(self.used.all())


def task_labels(values: np.ndarray, column: str, pos_label: Any = 1, uncertain: str = "ignore") -> TaskLabels:
    """Blank labels leave the task (counted); −1 follows ``uncertain``: dropped, read as 1 or read as 0."""
    if uncertain not in UNCERTAIN_POLICIES:
        choices = ", ".join(UNCERTAIN_POLICIES)
        raise InputError(f"unknown uncertain-label policy {uncertain!r}; choose one of: {choices}")
    labels = read_labels(values, column, pos_label)
    unknown = np.isnan(labels)
    is_uncertain = labels == UNCERTAIN_LABEL
    if uncertain == "ones":
        labels = np.where(is_uncertain, 1.0, labels)
    elif uncertain == "zeros":
        labels = np.where(is_uncertain, 0.0, labels)
    used = ~unknown & ~(is_uncertain if uncertain == "ignore" else np.zeros_like(unknown))
    return TaskLabels(labels[used].astype(np.uint8), used, int(unknown.sum()), int(is_uncertain.sum()))


def check_both_classes(y: np.ndarray, column: str, left_out: str = "") -> None:
    """``left_out``: what was set aside before (e.g. "12 unknown labels"), said in the message."""
    why = f" ({left_out} left out)" if left_out else ""
    if y.size == 0:
        raise InputError(f"column '{column}': no samples with a known label{why}")
    if y.min() == y.max():
        raise InputError(
            f"column '{column}': every sample has label {int(y[0])}{why}; AUC and the fairness gaps need both classes"
        )


def as_group_frame(groups: Any, n: int) -> pd.DataFrame:
    if groups is None:
        return pd.DataFrame(index=range(n))
    if isinstance(groups, pd.DataFrame):
        frame = groups.reset_index(drop=True)
    elif isinstance(groups, pd.Series):
        frame = groups.reset_index(drop=True).to_frame(name=groups.name if groups.name is not None else "group")
    elif isinstance(groups, Mapping):
        frame = pd.DataFrame({str(k): np.asarray(v) for k, v in groups.items()})
    else:
        arr = np.asarray(groups)
        if arr.ndim != 1:
            raise InputError(f"groups: expected one value per sample, got shape {arr.shape}")
        frame = pd.DataFrame({"group": arr})
    if len(frame) != n:
        raise InputError(f"groups: {len(frame)} rows but {n} predictions (length mismatch)")
    return frame


def attribute_codes(
    frame: pd.DataFrame,
    bins: Mapping[str, Sequence[float]] | None = None,
    intersections: Sequence[Sequence[str]] | None = None,
) -> dict[str, tuple[np.ndarray, list[str]]]:
    """Per attribute: integer group codes (−1 = unknown) and the group labels in display order."""
    bins = dict(bins or {})
    for column in bins:
        if column not in frame.columns:
            raise InputError(f"--bins {column}=…: no attribute column '{column}'")
    out: dict[str, tuple[np.ndarray, list[str]]] = {}
    for column in frame.columns:
        values = frame[column]
        if column in bins:
            labels = bin_continuous(values, bins[column], column=str(column))
            codes, found = factorize_groups(labels)
            order = [g for g in bin_labels(bins[column]) if g in found]  # bins keep their numeric order
            remap = np.array([order.index(g) for g in found] + [-1], dtype=np.int64)
            codes = remap[codes]
        else:
            codes, order = factorize_groups(values)
        out[str(column)] = (codes, order)
    for columns in intersections or ():
        columns = [str(c) for c in columns]
        if len(columns) < 2:
            raise InputError(f"--intersect {','.join(columns)}: name at least two attributes, e.g. sex,race")
        missing = [c for c in columns if c not in out]
        if missing:
            raise InputError(f"--intersect {','.join(columns)}: no attribute column '{missing[0]}'")
        combined = np.zeros(len(frame), dtype=np.int64)
        unknown = np.zeros(len(frame), dtype=bool)
        for c in columns:
            codes, order = out[c]
            combined = combined * max(len(order), 1) + np.maximum(codes, 0)
            unknown |= codes < 0
        combined[unknown] = -1
        present = np.unique(combined[~unknown])
        names = []
        for key in present.tolist():
            parts = []
            for c in reversed(columns):
                order = out[c][1]
                key, digit = divmod(key, max(len(order), 1))
                parts.append(order[digit])
            names.append(INTERSECTION_SEP.join(reversed(parts)))
        codes = np.where(unknown, -1, np.searchsorted(present, combined))
        # present is sorted by the per-attribute orders, so the labels read in a natural nested order
        out[intersection_name(columns)] = (codes.astype(np.int64), names)
    return out
