"""Ensembles of stored runs: the members' probabilities averaged into a run of its own (issue 10 item 3).

``ensemble(store, ["3f2a…", "9b1c…"], name="natural")`` checks that every member scored the same
``(sample_id, task, split)`` rows with the same labels and groups (refused otherwise, naming the first mismatch),
averages their ``y_score`` per row (``rule="mean"``: the mean of the members' probabilities, Khan et al.'s most
likely combination rule — unverified, METHODS.md §5) and evaluates the result like any run: threshold chosen on the
validation rows with the members' threshold policy, bootstrap intervals with the members' bootstrap size and seed
(members that disagree are refused; ``seed=`` evaluates a seed ensemble with one bootstrap seed of its own).

The ensemble is stored as a run (``usage: ensemble`` in its spec.json, its members and rule there and in
meta.json), so ``fairfm runs list/show``, :meth:`Store.metrics`, ``fairfm select`` and any comparison treat it like
every other run. Its run id hashes the sorted member ids, the rule and the evaluation settings, so asking again for the
same ensemble finds it (the ``name`` is a label in meta.json, not part of the id). An ensemble is attribute-aware at
test time when any member is.
"""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np
import pandas as pd

from fairfm.errors import InputError

if TYPE_CHECKING:
    from fairfm.results import RunRecord, Store

RULES = ("mean",)
Rule = Literal["mean"]
KEYS = ["sample_id", "task", "split"]
#: What every member must agree on to be evaluated as one run.
EVALUATION_FIELDS = ("threshold", "bootstrap", "seed")


def ensemble_id(members: Sequence[str], rule: str, evaluation: dict[str, Any]) -> str:
    """The run id of an ensemble: its sorted member ids, rule and evaluation settings."""
    document = {"kind": "ensemble", "members": sorted(members), "rule": rule, "evaluation": evaluation}
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]


def _evaluation(records: Sequence["RunRecord"], seed: int | None) -> dict[str, Any]:
    evaluation: dict[str, Any] = {}
    for field in EVALUATION_FIELDS:
        if field == "seed" and seed is not None:
            evaluation["seed"] = int(seed)
            continue
        first = records[0].spec.get(field)
        for record in records[1:]:
            if record.spec.get(field) != first:
                hint = " (give --seed for a seed ensemble)" if field == "seed" else ""
                raise InputError(f"run {record.run_id} has {field} {record.spec.get(field)!r} but run "
                                 f"{records[0].run_id} has {first!r}: an ensemble is evaluated with its members' "
                                 f"{field}{hint}")  # fmt: skip
        evaluation[field] = first
    return evaluation


def _check_rows(records: Sequence["RunRecord"], tables: Sequence[pd.DataFrame]) -> list[str]:
    """The group columns every member has; refuses members that did not score the same rows."""
    first, base = records[0], tables[0]
    base_keys = base.set_index(KEYS)
    for record, table in zip(records[1:], tables[1:]):
        keys = table.set_index(KEYS)
        missing = base_keys.index.difference(keys.index)
        extra = keys.index.difference(base_keys.index)
        if len(missing) or len(extra):
            row, who, other = (missing[0], record, first) if len(missing) else (extra[0], first, record)
            raise InputError(f"run {who.run_id} has no prediction for sample {row[0]!r}, task {row[1]!r}, split "
                             f"{row[2]!r} that run {other.run_id} scored: an ensemble needs members that scored the "
                             "same rows")  # fmt: skip
        aligned = keys.loc[base_keys.index]
        differs = aligned["y_true"].to_numpy() != base_keys["y_true"].to_numpy()
        if differs.any():
            row = base_keys.index[np.argmax(differs)]
            raise InputError(f"run {record.run_id} labels sample {row[0]!r} (task {row[1]!r}, split {row[2]!r}) "
                             f"differently from run {first.run_id}")  # fmt: skip
    groups = [c for c in base.columns if str(c).startswith("group_") and all(c in t.columns for t in tables)]
    if not groups:
        raise InputError("the members share no sensitive attribute (group_* column) to evaluate fairness over")
    for record, table in zip(records[1:], tables[1:]):
        aligned = table.set_index(KEYS).loc[base_keys.index]
        for column in groups:
            differs = aligned[column].astype(str).to_numpy() != base_keys[column].astype(str).to_numpy()
            if differs.any():
                row = base_keys.index[np.argmax(differs)]
                raise InputError(f"run {record.run_id} puts sample {row[0]!r} in another {column[6:]!r} group than "
                                 f"run {first.run_id}")  # fmt: skip
    return groups


def combine(tables: Sequence[pd.DataFrame], rule: str = "mean", groups: Sequence[str] = ()) -> pd.DataFrame:
    """The ensemble's PredictionTable (without run_id): the first member's rows and groups, ``y_score`` combined."""
    if rule not in RULES:
        raise InputError(f"rule {rule!r}: choose one of {', '.join(RULES)}")
    base = tables[0].drop(columns=["run_id"], errors="ignore")
    base = base[[*KEYS, "y_true", *groups]].reset_index(drop=True)
    index = pd.MultiIndex.from_frame(base[KEYS])
    scores = np.stack([t.set_index(KEYS)["y_score"].reindex(index).to_numpy(dtype=np.float64) for t in tables])
    base["y_score"] = scores.mean(axis=0)
    return base[[*KEYS, "y_true", "y_score", *groups]]


def _decision_method(record: "RunRecord") -> str | None:
    """The method of a member whose stored scores are decisions (``decision_threshold`` set), or None."""
    from fairfm.mitigate.base import get_method_class

    name = record.spec.get("method")
    if not name:
        return None
    try:
        cls = get_method_class(str(name))
    except InputError:  # a method this version does not know: its scores are taken as stored
        return None
    return str(name) if cls.decision_threshold is not None else None


def ensemble(store: "Store", members: Sequence[str], *, rule: str = "mean", name: str | None = None,
             seed: int | None = None, progress: bool = False) -> tuple["RunRecord", bool]:  # fmt: skip
    """The stored ensemble of ``members`` (run ids or prefixes): (record, computed by this call)."""
    from fairfm.metrics.stored import report_extras
    from fairfm.runner import report_from_predictions

    if rule not in RULES:
        raise InputError(f"rule {rule!r}: choose one of {', '.join(RULES)}")
    records = [store.load(member) for member in members]
    ids = [r.run_id for r in records]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise InputError(f"run {duplicate} is given twice")
    if len(records) < 2:
        raise InputError("an ensemble needs at least two member runs")
    for record in records:
        if "y_score" not in record.predictions.columns:
            raise InputError(f"run {record.run_id} has no y_score (a segmentation run cannot be averaged)")
        decisions = _decision_method(record)
        if decisions is not None:
            raise InputError(f"run {record.run_id} holds decisions of method {decisions!r} (0/1 y_score), not "
                             "probabilities; an ensemble averages probabilities, so it cannot include it")  # fmt: skip
    evaluation = _evaluation(records, seed)
    run_id = ensemble_id(ids, rule, evaluation)
    computed = {"done": False}

    def compute():
        tables = [record.predictions for record in records]
        groups = _check_rows(records, tables)
        predictions = combine(tables, rule, groups)
        report = report_from_predictions(predictions, SimpleNamespace(**evaluation), progress=progress)
        aware = [r for r in records if (r.meta.get("method") or {}).get("attribute_at_test")]
        if aware:
            report.warnings.append("a member reads the sensitive attribute at test time, so the ensemble does too")
        meta = {
            "usage": "ensemble",
            "name": name,
            "ensemble": {"rule": rule, "members": [{"run_id": r.run_id, "model": r.spec.get("model"),
                                                    "usage": r.spec.get("usage"), "method": r.spec.get("method"),
                                                    "seed": r.spec.get("seed")} for r in records],
                         "attribute_at_test": bool(aware),
                         "stale_members": [r.run_id for r in records if r.stale]},
            "data": records[0].meta.get("data"),
            "n_samples": {s: int((predictions["split"] == s).sum()) for s in ("val", "test")},
            "report": report_extras(report),
        }  # fmt: skip
        if aware:  # marked like a run whose method reads the attribute at test time (meta.json method)
            meta["method"] = {"name": "ensemble", "attribute": aware[0].meta["method"].get("attribute"),
                              "attribute_at_test": True, "members": [r.run_id for r in aware]}  # fmt: skip
        computed["done"] = True
        return predictions, report, meta

    first = records[0].spec
    document = {
        "usage": "ensemble", "model": "ensemble", "method": None, "rule": rule, "members": sorted(ids),
        "dataset": first.get("dataset"), "split": first.get("split"), "split_seed": first.get("split_seed"),
        "tasks": first.get("tasks"), **evaluation,
        "attributes": [a for a in first.get("attributes") or []
                       if all(a in (r.spec.get("attributes") or []) for r in records)],
    }  # fmt: skip
    record = store.run_derived(run_id, document, compute)
    return record, computed["done"]
