"""Choosing stored runs: by id (or unambiguous prefix), or by catalogue columns (``--where model=clip``).

Used by every command that reads several runs (``fairfm select``, ``fairfm report``): one parser and one matcher,
so ``--where`` means the same everywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np

from fairfm.errors import InputError

if TYPE_CHECKING:
    from fairfm.results.store import RunRecord, Store

#: Values of ``--where`` that match a missing catalogue value (a run without a method).
MISSING_VALUES = ("none", "null")


def parse_where(items: Iterable[str] | None) -> dict[str, str]:
    """``["model=clip", "method=none"]`` → ``{"model": "clip", "method": "none"}`` (a repeated column: last wins)."""
    out: dict[str, str] = {}
    for item in items or []:
        column, sep, value = str(item).partition("=")
        if not sep or not column.strip():
            raise InputError(f"--where {item!r}: expected COLUMN=VALUE (e.g. --where model=clip)")
        out[column.strip()] = value.strip()
    return out


def resolve_runs(store: "Store", runs: Sequence[str] = (), where: Mapping[str, str] | None = None, *,
                 all_when_empty: bool = False, combine: bool = False) -> list["RunRecord"]:
    """The runs named (ids or unambiguous prefixes), else those whose catalogue columns match every ``where``
    value (``{"model": "clip", "method": "none"}``; ``none``/``null`` match a missing value; ``a,b`` matches
    either), in the store's order.

    ``all_when_empty``: no ids and no filter select every run (a report of the whole store) instead of an error.
    ``combine``: ids and filters together keep the named runs that match the filters (otherwise giving both is an
    error: a selection rule must not silently drop a candidate the user named).
    """
    if runs and where and not combine:
        raise InputError("give run ids or --where filters, not both")
    if runs:
        records = [store.load(run) for run in runs]
        seen = set()
        for record in records:
            if record.run_id in seen:
                raise InputError(f"run {record.run_id} is given twice")
            seen.add(record.run_id)
    elif not where and not all_when_empty:
        raise InputError("no candidates: give run ids or --where filters (e.g. --where model=clip)")
    else:
        records = store.list()
        if not records:
            raise InputError(f"no finished run in {store.path} (see 'fairfm runs list')")
    if not where:
        return records
    frame = store.runs_frame(records)
    keep = np.ones(len(frame), dtype=bool)
    for column, wanted in where.items():
        if column not in frame.columns:
            raise InputError(f"--where {column}=…: no such column; filter on: {', '.join(frame.columns)}")
        values = frame[column]
        matched = np.zeros(len(frame), dtype=bool)
        for option in str(wanted).split(","):
            option = option.strip()
            if option.lower() in MISSING_VALUES:
                matched |= values.isna().to_numpy()
            else:
                matched |= (values.astype(str) == option).to_numpy() & values.notna().to_numpy()
        keep &= matched
    chosen = [record for record, kept in zip(records, keep) if kept]
    if not chosen:
        shown = ", ".join(f"{k}={v}" for k, v in where.items())
        raise InputError(f"no run in {store.path} matches {shown} ({len(records)} run(s); see 'fairfm runs list')")
    return chosen
