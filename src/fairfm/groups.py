"""Group columns: unknown values, binning of continuous attributes, intersections.

Pure pandas, shared by ``fairfm.data`` (harmonised ``group_*`` columns) and ``fairfm.metrics`` (``--bins``,
``--intersect``). Group labels are strings; an unknown value is :data:`UNKNOWN` (or NaN), which counts in every
overall metric and in no group metric.
"""

from __future__ import annotations

import math
import re
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from fairfm.errors import InputError

UNKNOWN = "unknown"
# Raw spellings that mean "not known" in the releases we read (case-insensitive, after stripping).
UNKNOWN_SPELLINGS = frozenset(
    {"", "unknown", "nan", "none", "null", "na", "n/a", "-1", "-1.0", "?", "missing", "not reported"}
)
INTERSECTION_SEP = "|"
INTERSECTION_NAME_SEP = "×"


def _label_of(value: object) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _unknown_value(value: object) -> bool:
    if value is None or (isinstance(value, (float, np.floating)) and np.isnan(value)) or value is pd.NA:
        return True
    return str(value).strip().lower() in UNKNOWN_SPELLINGS


def natural_key(label: str) -> tuple:
    """Sort numbers numerically and before text: 1, 2, 10, Asian, Black."""
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)


def factorize_groups(values: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Integer codes (−1 = unknown) and the known group labels, in natural order.

    Works on the distinct values only, so it stays fast on millions of rows.
    """
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    labels = [_label_of(u) for u in uniques]
    known = [i for i, u in enumerate(uniques) if not _unknown_value(u)]
    # Several raw values may print as one label (1 and 1.0): they become one group.
    ordered = sorted({labels[i] for i in known}, key=natural_key)
    position = {label: k for k, label in enumerate(ordered)}
    remap = np.full(len(uniques) + 1, -1, dtype=np.int64)
    for i in known:
        remap[i] = position[labels[i]]
    return remap[codes], ordered  # codes of -1 (NaN) index the final -1 of remap


def is_unknown(values: pd.Series) -> np.ndarray:
    """Boolean mask of values that mean 'unknown' (NaN, −1, 'unknown', empty, …)."""
    codes, _ = factorize_groups(values)
    return codes < 0


def as_group_labels(values: pd.Series) -> pd.Series:
    """Strings for group labels, with every unknown spelling replaced by :data:`UNKNOWN`.

    Integer-valued floats print without a trailing ``.0`` so that codes read as written (``1``, not ``1.0``).
    """
    codes, labels = factorize_groups(values)
    names = np.asarray(labels + [UNKNOWN], dtype=object)
    return pd.Series(names[codes], index=values.index, name=values.name, dtype=object)


def _fmt_edge(edge: float) -> str:
    return str(int(edge)) if float(edge).is_integer() else f"{edge:g}"


def bin_labels(edges: Sequence[float]) -> list[str]:
    """Labels of the bins defined by ascending ``edges``; bins are closed on the left: [lo, hi)."""
    names = [f"<{_fmt_edge(edges[0])}"]
    for lo, hi in zip(edges[:-1], edges[1:]):
        names.append(f"{_fmt_edge(lo)}–<{_fmt_edge(hi)}")
    names.append(f"≥{_fmt_edge(edges[-1])}")
    return names


def bin_continuous(values: pd.Series, edges: Sequence[float], *, column: str | None = None) -> pd.Series:
    """Bin a numeric column by explicit edges: ``[60]`` gives ``<60`` and ``≥60``.

    Non-numeric entries that are not an unknown spelling are an error naming the row; unknowns stay unknown.
    """
    column = column or str(values.name)
    edges = [float(e) for e in edges]
    if not edges or any(not math.isfinite(e) for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
        raise InputError(f"bins for column '{column}': edges must be finite and strictly increasing, got {edges}")
    unknown = is_unknown(values)
    numeric = pd.to_numeric(values.where(~unknown), errors="coerce")
    bad = numeric.isna().to_numpy() & ~unknown
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"column '{column}', row {row}: value {values.iloc[row]!r} is not a number and cannot be binned"
        )
    codes = np.searchsorted(np.asarray(edges), numeric.to_numpy(dtype=float), side="right")
    names = np.asarray(bin_labels(edges), dtype=object)
    labels = pd.Series(names[np.clip(codes, 0, len(edges))], index=values.index, name=values.name, dtype=object)
    labels[unknown] = UNKNOWN
    return labels


_BIN_SPEC = re.compile(r"^\s*([^=\s]+)\s*=\s*([^=]+)$")


def parse_bins(spec: str) -> tuple[str, list[float]]:
    """Parse ``age=60`` or ``age=40,60,80`` into ``("age", [40.0, 60.0, 80.0])``."""
    match = _BIN_SPEC.match(spec)
    if not match:
        raise InputError(f"--bins {spec!r}: expected COLUMN=EDGE[,EDGE…], e.g. age=60 or age=40,60,80")
    column, raw_edges = match.group(1), match.group(2)
    try:
        edges = [float(part) for part in raw_edges.split(",")]
    except ValueError:
        raise InputError(f"--bins {spec!r}: edges must be numbers, e.g. age=40,60,80") from None
    if any(not math.isfinite(e) for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
        raise InputError(f"--bins {spec!r}: edges must be finite and strictly increasing")
    return column, edges


def intersection_name(columns: Iterable[str]) -> str:
    return INTERSECTION_NAME_SEP.join(columns)


def intersect(frame: pd.DataFrame, columns: Sequence[str]) -> pd.Series:
    """Intersectional groups, e.g. ``sex`` × ``race`` → ``F|Black``; unknown if any part is unknown."""
    if len(columns) < 2:
        raise InputError(f"--intersect {','.join(columns)!r}: name at least two attributes, e.g. sex,race")
    parts = [as_group_labels(frame[c]) for c in columns]
    unknown = np.zeros(len(frame), dtype=bool)
    for part in parts:
        unknown |= (part == UNKNOWN).to_numpy()
    joined = parts[0].astype(str)
    for part in parts[1:]:
        joined = joined + INTERSECTION_SEP + part.astype(str)
    joined = joined.astype(object)
    joined[unknown] = UNKNOWN
    return joined.rename(intersection_name(columns))
