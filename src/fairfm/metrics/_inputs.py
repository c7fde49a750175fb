"""Input checking for the metric API: every error names the column, row or value at fault."""

from __future__ import annotations

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


def check_scores(values: np.ndarray, column: str, line_offset: int | None = None) -> np.ndarray:
    try:
        scores = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        numeric = pd.to_numeric(pd.Series(values), errors="coerce")
        row = _first_row(numeric.isna().to_numpy() & pd.Series(values).notna().to_numpy())
        raise InputError(f"column '{column}', {_where(row, line_offset)}: score {values[row]!r} is not a number") from None
    bad = ~np.isfinite(scores)
    if bad.any():
        row = _first_row(bad)
        raise InputError(
            f"column '{column}', {_where(row, line_offset)}: score is {scores[row]} — scores must be finite "
            f"({int(bad.sum())} non-finite value(s) in total)"
        )
    return scores


def check_labels(values: np.ndarray, column: str, pos_label: Any = 1, line_offset: int | None = None) -> np.ndarray:
    """Map labels to {0, 1}: ``pos_label`` → 1, the other value → 0; anything else is an error naming the row."""
    series = pd.Series(values)
    if series.isna().any():
        row = _first_row(series.isna().to_numpy())
        raise InputError(f"column '{column}', {_where(row, line_offset)}: label is missing")
    if pos_label == 1 or pos_label is None:
        numeric = pd.to_numeric(series, errors="coerce")
        bad = ~numeric.isin([0, 1]).to_numpy()
        if bad.any():
            row = _first_row(bad)
            raise InputError(
                f"column '{column}', {_where(row, line_offset)}: label {series.iloc[row]!r} is not 0 or 1 "
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
            f"column '{column}', {_where(row, line_offset)}: label {series.iloc[row]!r} is a third class "
            f"(positive {pos_label!r}, negative {others[0]!r})"
        )
    return positive.to_numpy().astype(np.uint8)


def check_both_classes(y: np.ndarray, column: str) -> None:
    if y.size == 0:
        raise InputError(f"column '{column}': no samples")
    if y.min() == y.max():
        raise InputError(
            f"column '{column}': every sample has label {int(y[0])}; AUC and the fairness gaps need both classes"
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
