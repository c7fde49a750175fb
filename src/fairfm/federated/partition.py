"""Which client (hospital) holds each row of a prepared dataset.

Three ways: ``site`` — the table's own ``site`` column (FairFedMed-Oph's three sites, FairFedMed-Chest's
CheXpert and MIMIC-CXR clients); ``dirichlet_label`` / ``dirichlet_group`` — the usual non-IID recipe (Hsu,
Qi, Brown 2019, arXiv 1909.06335) for a dataset without sites: for each value of the task's label (or each
group of an attribute) the share of each client is drawn from Dir(α·1_K); small α gives skewed clients, large
α near-IID ones.

Rows are assigned **by patient**: all rows of one ``patient_id`` go to one client, since a patient is never
split across hospitals. The table's ``split`` column is kept (splits were made by patient already); the same
drawn shares are applied within each split, so a client's validation and test sets look like its training set.
Every client must get train, val and test rows of both classes; a draw that fails this is redrawn (a bounded
number of times, with seeds derived from ``seed``, so the result stays deterministic) before the call gives
up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from fairfm.adapt.seeding import derive_seed
from fairfm.errors import InputError

PartitionBy = Literal["site", "dirichlet_label", "dirichlet_group"]
BY = ("site", "dirichlet_label", "dirichlet_group")
SPLITS = ("train", "val", "test")
#: Draws tried before a Dirichlet partition gives up (each with a seed derived from the run's seed).
MAX_DRAWS = 50


@dataclass
class ClientPartition:
    """``clients``: client names, in client-index order; ``assignment``: the client index of each table row;
    ``description``: what to record in the run (how it was made and counts per client × split ×
    label/group)."""

    clients: list[str]
    assignment: np.ndarray
    description: dict[str, Any] = field(default_factory=dict)

    def rows(self, client: int | str) -> np.ndarray:
        """Row positions (into the partitioned table) of one client, by index or name."""
        index = self.clients.index(client) if isinstance(client, str) else int(client)
        return np.flatnonzero(self.assignment == index)


def _resolve_task(table: pd.DataFrame, task: str | None) -> str:
    labels = [c.removeprefix("label_") for c in table.columns if c.startswith("label_")]
    if task is None:
        if len(labels) == 1:
            return labels[0]
        known = ", ".join(labels) or "none: the table has no label_ columns"
        raise InputError(f"partition: name the task (one of {known})")
    if f"label_{task}" not in table.columns:
        raise InputError(f"partition: task {task!r} has no column 'label_{task}'; the table's tasks: "
                         f"{', '.join(labels) or 'none'}")  # fmt: skip
    return task


def _group_column(table: pd.DataFrame, attribute: str | None) -> str:
    groups = [c.removeprefix("group_") for c in table.columns if c.startswith("group_")]
    if attribute is None:
        known = ", ".join(groups) or "none"
        raise InputError(f"partition by dirichlet_group needs an attribute (one of {known})")
    if f"group_{attribute}" not in table.columns:
        raise InputError(f"partition: attribute {attribute!r} has no column 'group_{attribute}'; the table's "
                         f"attributes: {', '.join(groups) or 'none'}")  # fmt: skip
    return f"group_{attribute}"


def _check_table(table: pd.DataFrame) -> None:
    missing = [c for c in ("patient_id", "split") if c not in table.columns]
    if missing:
        raise InputError(f"partition: the table lacks column(s) {', '.join(missing)}; its columns: "
                         f"{', '.join(map(str, table.columns))}")  # fmt: skip
    bad = ~table["split"].isin(SPLITS)
    if bad.any():
        rows = np.flatnonzero(bad.to_numpy())[:5].tolist()
        raise InputError(f"partition: column 'split' has values other than {', '.join(SPLITS)} in rows "
                         f"{rows}")  # fmt: skip


def _counts(table: pd.DataFrame, assignment: np.ndarray, clients: list[str], column: str | None) -> dict:
    """{client: {split: {value: rows}}} (values as strings; NaN as 'unknown'); without a column, rows per
    split."""
    out: dict[str, dict[str, Any]] = {}
    split = table["split"].to_numpy()
    values = None
    if column is not None:
        raw = table[column]
        if column.startswith("label_"):
            raw = pd.to_numeric(raw, errors="coerce")
            values = np.where(raw.isna(), "unknown", raw.fillna(-1).astype(int).astype(str))
        else:
            values = raw.astype(object).where(raw.notna(), "unknown").astype(str).to_numpy()
    for k, name in enumerate(clients):
        mine = assignment == k
        per_split: dict[str, Any] = {}
        for s in SPLITS:
            sel = mine & (split == s)
            if values is None:
                per_split[s] = int(sel.sum())
            else:
                vals, n = np.unique(values[sel], return_counts=True)
                per_split[s] = {str(v): int(c) for v, c in zip(vals, n)}
        out[name] = per_split
    return out


def _missing_cells(table: pd.DataFrame, assignment: np.ndarray, clients: list[str], task: str,
                   min_per_client: int) -> list[str]:  # fmt: skip
    """'client/split/class' cells with fewer than ``min_per_client`` rows (and clients with no rows at all,
    which no ``min_per_client`` allows)."""
    y = pd.to_numeric(table[f"label_{task}"], errors="coerce").to_numpy()
    split = table["split"].to_numpy()
    missing = []
    for k, name in enumerate(clients):
        if not np.any(assignment == k):
            missing.append(f"{name} (no rows)")
        for s in SPLITS:
            for cls in (0, 1):
                if int(np.sum((assignment == k) & (split == s) & (y == cls))) < min_per_client:
                    missing.append(f"{name}/{s}/class {cls}")
    return missing


def _patient_strata(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """One row per patient: its split and its stratum (the most frequent value of ``column`` among its rows;
    ties broken by the sorted value, unknown values only when the patient has nothing else)."""
    values = table[column]
    if column.startswith("label_"):
        numbers = pd.to_numeric(values, errors="coerce")
        values = numbers.map(lambda v: "unknown" if pd.isna(v) else str(int(v)))
    else:
        values = values.astype(object).where(values.notna(), "unknown").astype(str)
    frame = pd.DataFrame({"patient": table["patient_id"].astype(str).to_numpy(),
                          "split": table["split"].to_numpy(), "value": values.to_numpy()})  # fmt: skip
    splits = frame.groupby("patient", sort=True)["split"].nunique()
    if (splits > 1).any():
        patient = splits.index[np.argmax(splits.to_numpy() > 1)]
        raise InputError(f"partition: patient {patient!r} has rows in more than one split; the table's split "
                         "must be by patient")  # fmt: skip
    known = frame.assign(known=frame["value"] != "unknown")
    counted = known.groupby(["patient", "value"], sort=True).agg(n=("value", "size"),
                                                                 known=("known", "first"))  # fmt: skip
    counted = counted.reset_index().sort_values(["patient", "known", "n", "value"],
                                                ascending=[True, False, False, True])  # fmt: skip
    first = counted.drop_duplicates("patient").set_index("patient")["value"]
    out = frame.drop_duplicates("patient").set_index("patient")[["split"]]
    out["stratum"] = first
    out["rows"] = frame.groupby("patient").size()
    return out.sort_index()


def _dirichlet_draw(patients: pd.DataFrame, n_clients: int, alpha: float, seed: int) -> pd.Series:
    """Client index per patient: per stratum, shares p ~ Dir(α·1_K); within each split the stratum's patients,
    in a seeded random order, are cut where their cumulative row count crosses the cumulative shares."""
    rng = np.random.default_rng(seed)
    client = pd.Series(-1, index=patients.index, dtype=np.int64)
    for stratum in sorted(patients["stratum"].unique()):
        shares = rng.dirichlet(np.full(n_clients, float(alpha)))
        bounds = np.cumsum(shares)[:-1]
        for s in SPLITS:
            members = patients.index[(patients["stratum"] == stratum) & (patients["split"] == s)].to_numpy()
            if members.size == 0:
                continue
            members = members[rng.permutation(members.size)]
            rows = patients.loc[members, "rows"].to_numpy(dtype=np.float64)
            # A patient's position is the middle of its rows in the cumulative order (so a large patient lands
            # where most of its rows would).
            middle = (np.cumsum(rows) - rows / 2) / rows.sum()
            client.loc[members] = np.searchsorted(bounds, middle, side="right")
    return client


def assign_clients(
    table: pd.DataFrame,
    *,
    by: PartitionBy,
    n_clients: int | None = None,
    alpha: float = 0.5,
    seed: int = 0,
    task: str | None = None,
    attribute: str | None = None,
    min_per_client: int = 1,
) -> ClientPartition:
    """Assign every row of a prepared SampleTable to a client (see the module docstring).

    ``by="site"`` uses the ``site`` column (clients = sorted site names; ``n_clients``, when given, must
    match). ``by="dirichlet_label"`` draws client shares per value of ``label_<task>``;
    ``by="dirichlet_group"`` per group of ``group_<attribute>`` (``n_clients`` ≥ 2 and ``alpha`` > 0 needed).
    ``task`` (default: the table's only task) is the label every client needs ``min_per_client`` rows of each
    class of, in each split.
    """
    if by not in BY:
        raise InputError(f"partition by {by!r}: expected one of {', '.join(BY)}")
    _check_table(table)
    if isinstance(min_per_client, bool) or int(min_per_client) < 0:
        raise InputError(f"min_per_client {min_per_client}: expected an integer ≥ 0")
    if by == "site":
        return _by_site(table, n_clients=n_clients, task=task, min_per_client=int(min_per_client))
    if n_clients is None or int(n_clients) < 2:
        raise InputError(f"partition by {by}: n_clients {n_clients}: a Dirichlet partition needs at least 2 "
                         "clients")  # fmt: skip
    if not (np.isfinite(alpha) and alpha > 0):
        raise InputError(f"partition by {by}: alpha {alpha}: expected a positive number")
    n_clients = int(n_clients)
    task = _resolve_task(table, task)
    column = f"label_{task}" if by == "dirichlet_label" else _group_column(table, attribute)
    patients = _patient_strata(table, column)
    if patients.shape[0] < n_clients:
        raise InputError(f"partition: {patients.shape[0]} patients cannot fill {n_clients} clients")
    row_patient = table["patient_id"].astype(str).to_numpy()
    clients = [f"client_{k}" for k in range(n_clients)]
    missing: list[str] = []
    for draw in range(MAX_DRAWS):
        draw_seed = derive_seed(seed, f"federated:partition:{by}:{draw}")
        per_patient = _dirichlet_draw(patients, n_clients, alpha, draw_seed)
        assignment = per_patient.reindex(row_patient).to_numpy(dtype=np.int64)
        missing = _missing_cells(table, assignment, clients, task, int(min_per_client))
        if not missing:
            description = {
                "by": by, "alpha": float(alpha), "seed": int(seed), "draw": draw, "n_clients": n_clients,
                "task": task, "attribute": attribute if by == "dirichlet_group" else None,
                "min_per_client": int(min_per_client),
                "counts": _counts(table, assignment, clients, f"label_{task}"),
            }  # fmt: skip
            if by == "dirichlet_group":
                description["group_counts"] = _counts(table, assignment, clients, column)
            return ClientPartition(clients, assignment, description)
    shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
    raise InputError(f"partition by {by} (alpha {alpha:g}, {n_clients} clients, seed {seed}): in {MAX_DRAWS} "
                     f"draws no partition gave every client at least {min_per_client} row(s) of both classes "
                     f"of {task!r} in train, val and test (last draw lacks {shown}); use a larger alpha or "
                     "fewer clients")  # fmt: skip


def _by_site(table: pd.DataFrame, *, n_clients: int | None, task: str | None,
             min_per_client: int) -> ClientPartition:  # fmt: skip
    if "site" not in table.columns:
        raise InputError(f"partition by site: the table has no 'site' column; its columns: "
                         f"{', '.join(map(str, table.columns))} (use by=dirichlet_label or dirichlet_group)")
    site = table["site"]
    text = site.astype(object).where(site.notna(), "").astype(str).str.strip()
    blank = (text == "") | text.str.lower().isin(["unknown", "nan", "none"])
    if blank.any():
        rows = np.flatnonzero(blank.to_numpy())
        raise InputError(f"partition by site: column 'site' is blank or unknown in {rows.size} row(s), e.g. "
                         f"rows {rows[:5].tolist()}; every row needs its site")  # fmt: skip
    clients = sorted(text.unique().tolist())
    if n_clients is not None and int(n_clients) != len(clients):
        raise InputError(f"partition by site: n_clients {n_clients} differs from the table's {len(clients)} "
                         f"sites ({', '.join(clients)})")  # fmt: skip
    patients = pd.DataFrame({"patient": table["patient_id"].astype(str), "site": text})
    per_patient = patients.groupby("patient")["site"]
    spread = per_patient.nunique()
    if (spread > 1).any():
        patient = spread.index[np.argmax(spread.to_numpy() > 1)]
        raise InputError(f"partition by site: patient {patient!r} has rows at more than one site "
                         f"({', '.join(sorted(per_patient.unique()[patient]))})")  # fmt: skip
    index = {name: k for k, name in enumerate(clients)}
    assignment = text.map(index).to_numpy(dtype=np.int64)
    labels = [c for c in table.columns if c.startswith("label_")]
    resolved = _resolve_task(table, task) if task is not None or len(labels) == 1 else None
    if resolved is not None and min_per_client > 0:
        missing = _missing_cells(table, assignment, clients, resolved, min_per_client)
        if missing:
            raise InputError(f"partition by site: site/split/class cells with fewer than {min_per_client} "
                             f"row(s) of {resolved!r}: {', '.join(missing[:6])}; every client needs train, "
                             "val and test rows of both classes")  # fmt: skip
    description = {"by": "site", "alpha": None, "seed": None, "n_clients": len(clients), "task": resolved,
                   "counts": _counts(table, assignment, clients, f"label_{resolved}" if resolved else None)}
    return ClientPartition(clients, assignment, description)
