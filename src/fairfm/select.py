"""Model selection over stored runs, on validation only (MEDFAIR's rules, METHODS.md §4).

Candidates are stored runs (a sweep's cells: one method's hyper-parameters and seeds). Each is scored on its own
**validation** predictions (``predictions.parquet`` rows with ``split == "val"``): the overall AUC and the AUC of
every group of one attribute (sklearn ``roc_auc_score``), averaged over the tasks (``task`` restricts it to one).
The test rows are never read, so the chosen run's test metrics are an honest report.

Rules:

- ``overall_auc``: the highest validation AUC.
- ``worst_group_auc``: the highest validation worst-group AUC (mean over tasks of min_g AUC_g, over the groups
  compared, the same for every candidate).
- ``minimax_pareto``: the "min group" is the group whose best validation AUC over the ERM candidates (those without
  a method that are not ensembles; refused when there is none) is lowest; among the candidates that are
  Pareto-optimal over the vector of group AUCs, the one with the highest AUC on that group.
- ``dto`` (distance to optimum): each group's AUC divided by its maximum over the candidates; the candidate with the
  smallest Euclidean distance to the all-ones utopia point.

Candidates must have been scored on the same validation rows: the same dataset, split policy and split seed, the same
tasks (unless ``task`` picks one) and the same ``(sample_id, task)`` validation keys; otherwise they are refused,
naming the first run that differs and how. Ties go to the first candidate in the order given. A group that has no AUC
(one class in its validation rows) in some candidate is left out of every candidate's vector and worst group, and the
selection says so. The choice is recorded atomically in
``STORE/selections/<selection_id>.json`` (the id hashes the rule, attribute, task and candidate run ids), with the
candidate table and the reason.

```python
from fairfm.select import select, record_selection
chosen = select(store, ["3f2a…", "9b1c…"], rule="dto", attribute="sex")
record_selection(store, chosen)
```
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

import numpy as np
import pandas as pd

from fairfm.errors import InputError
from fairfm.results.selection import resolve_runs

if TYPE_CHECKING:
    from fairfm.results import RunRecord, Store

Rule = Literal["overall_auc", "worst_group_auc", "minimax_pareto", "dto"]
RULES: tuple[str, ...] = ("overall_auc", "worst_group_auc", "minimax_pareto", "dto")
SELECTIONS_DIR = "selections"


@dataclass
class Candidate:
    """One run's validation scores."""

    run_id: str
    label: str  # model · usage · method · seed, "(attr@test)" after an attribute-aware method
    method: str | None
    overall_auc: float
    group_auc: dict[str, float]  # per group, mean over tasks
    worst_group_auc: float  # mean over tasks of min_g AUC_g (in a selection: over the groups it compares)
    worst_group: str | None  # the group with the lowest group_auc (in a selection: of those it compares)
    pareto: bool = False
    dto: float = math.nan
    usage: str | None = None
    attribute_at_test: bool = False  # reads the sensitive attribute to predict (meta.json method.attribute_at_test)
    task_group_auc: dict[str, dict[str, float]] = field(default_factory=dict)  # per task, per group


@dataclass
class Selection:
    """The candidates, the chosen run and why."""

    rule: str
    attribute: str
    task: str | None
    candidates: list[Candidate]
    chosen: str
    reason: str
    groups: list[str]  # the groups compared
    notes: list[str] = field(default_factory=list)
    min_group: str | None = None  # minimax_pareto: the group it maximises
    erm_basis: list[str] | None = None  # minimax_pareto: the ERM runs the min group was found over

    @property
    def selection_id(self) -> str:
        document = {"rule": self.rule, "attribute": self.attribute, "task": self.task,
                    "runs": sorted(c.run_id for c in self.candidates)}  # fmt: skip
        return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {"selection_id": self.selection_id, "rule": self.rule, "attribute": self.attribute, "task": self.task,
                "chosen": self.chosen, "reason": self.reason, "groups": self.groups, "min_group": self.min_group,
                "erm_basis": self.erm_basis, "notes": list(self.notes), "split": "val",
                "candidates": [_finite(asdict(c)) for c in self.candidates]}  # fmt: skip


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


# ------------------------------------------------------------------------------------------------ candidates


def validation_scores(record: "RunRecord", attribute: str, task: str | None = None) -> Candidate:
    """The run's validation AUC overall and per group of ``attribute`` (mean over tasks, or ``task`` alone)."""
    from sklearn.metrics import roc_auc_score

    from fairfm.groups import is_unknown

    predictions = record.predictions
    where = f"run {record.run_id}"
    if "y_score" not in predictions.columns:
        raise InputError(f"{where}: no y_score column (a segmentation run has no AUC to select on)")
    val = predictions[predictions["split"].astype(str) == "val"]
    if val.empty:
        raise InputError(f"{where}: no validation predictions (split 'val'); selection reads validation only")
    column = f"group_{attribute}"
    if column not in val.columns:
        raise InputError(f"{where}: no column {column!r} in its predictions (attributes: "
                         f"{', '.join(c[6:] for c in val.columns if str(c).startswith('group_')) or 'none'})")
    tasks = [task] if task is not None else list(dict.fromkeys(val["task"].astype(str)))
    overall, worst, per_group, per_task = [], [], {}, {}
    for name in tasks:
        rows = val[val["task"].astype(str) == name]
        if rows.empty:
            raise InputError(f"{where}: no validation predictions for task {name!r}")
        y, s = rows["y_true"].to_numpy(dtype=np.int64), rows["y_score"].to_numpy(dtype=np.float64)
        if len(np.unique(y)) < 2:
            raise InputError(f"{where}: task {name!r} has one class among its validation rows; no AUC to select on")
        overall.append(roc_auc_score(y, s))
        groups = rows[column].astype(str).to_numpy()
        unknown = set(groups[is_unknown(rows[column])])  # in no group (METRICS.md §5)
        aucs = {}
        for g in sorted(set(groups) - unknown):
            yg = y[groups == g]
            if 0 < yg.sum() < yg.size:
                aucs[g] = roc_auc_score(yg, s[groups == g])
        per_task[name] = aucs
        if aucs:
            worst.append(min(aucs.values()))
        for g, value in aucs.items():
            per_group.setdefault(g, []).append(value)
    group_auc = {g: float(np.mean(v)) for g, v in per_group.items()}
    spec = record.spec
    aware = bool(((record.meta or {}).get("method") or {}).get("attribute_at_test"))  # as 'fairfm runs list'
    method = spec.get("method") or ("–" if spec.get("usage") == "ensemble" else "erm")
    label = " · ".join(str(v) for v in (spec.get("model"), spec.get("usage"),
                                        method + (" (attr@test)" if aware else ""), f"seed {spec.get('seed')}"))
    return Candidate(run_id=record.run_id, label=label, method=spec.get("method"),
                     overall_auc=float(np.mean(overall)),
                     group_auc=group_auc, worst_group_auc=float(np.mean(worst)) if worst else math.nan,
                     worst_group=min(group_auc, key=group_auc.get) if group_auc else None,
                     usage=spec.get("usage"), attribute_at_test=aware, task_group_auc=per_task)  # fmt: skip


def _dataset_name(record: "RunRecord") -> str | None:
    """The dataset's name as the catalogue shows it (dataset.json's name, else the folder's)."""
    name = ((record.meta or {}).get("data") or {}).get("dataset")
    folder = record.spec.get("dataset")
    return name or (Path(str(folder)).name if folder else None)


def check_same_rows(records: Sequence["RunRecord"], task: str | None = None) -> None:
    """Refuses candidates not scored on the first one's validation rows (their AUCs would not be comparable):
    dataset, split policy, split seed, tasks (unless ``task`` picks one), then the ``(sample_id, task)`` keys."""
    first = records[0]

    def facts(record: "RunRecord") -> dict[str, Any]:
        spec = record.spec
        out = {"dataset": _dataset_name(record), "split": spec.get("split"), "split seed": spec.get("split_seed")}
        if task is None:
            out["tasks"] = ", ".join(str(t) for t in spec.get("tasks") or []) or None
        return out

    def keys(record: "RunRecord") -> pd.MultiIndex:
        predictions = record.predictions
        rows = predictions[predictions["split"].astype(str) == "val"]
        if task is not None:
            rows = rows[rows["task"].astype(str) == task]
        return pd.MultiIndex.from_arrays([rows["sample_id"].astype(str), rows["task"].astype(str)])

    why = ": candidates must be scored on the same validation rows (the same dataset, split and tasks)"
    expected, first_keys = facts(first), keys(first)
    for record in records[1:]:
        for name, value in facts(record).items():
            if value != expected[name]:
                raise InputError(f"run {record.run_id} has {name} {value!r} but run {first.run_id} has "
                                 f"{expected[name]!r}{why}")  # fmt: skip
        own = keys(record)
        extra, missing = own.difference(first_keys), first_keys.difference(own)
        if len(extra):
            raise InputError(f"run {record.run_id} has a validation prediction for sample {extra[0][0]!r}, task "
                             f"{extra[0][1]!r} that run {first.run_id} lacks{why}")  # fmt: skip
        if len(missing):
            raise InputError(f"run {record.run_id} has no validation prediction for sample {missing[0][0]!r}, task "
                             f"{missing[0][1]!r} that run {first.run_id} scored{why}")  # fmt: skip


def common_attribute(records: Sequence["RunRecord"]) -> str:
    """The first attribute of the first run, which every run must have."""
    first = list(records[0].spec.get("attributes") or [])
    if not first:
        raise InputError(f"run {records[0].run_id} has no sensitive attribute")
    for record in records[1:]:
        if first[0] not in (record.spec.get("attributes") or []):
            raise InputError(f"run {record.run_id} has no attribute {first[0]!r} (give --attr)")
    return first[0]


# ------------------------------------------------------------------------------------------------ rules


def pareto_front(matrix: np.ndarray) -> np.ndarray:
    """Rows not dominated by another (≥ in every column and > in one)."""
    n = len(matrix)
    front = np.ones(n, dtype=bool)
    for i in range(n):
        others = np.delete(matrix, i, axis=0)
        dominated = ((others >= matrix[i]).all(axis=1) & (others > matrix[i]).any(axis=1)).any()
        front[i] = not dominated
    return front


def erm_candidates(candidates: Sequence[Candidate]) -> list[int]:
    """The indices of the ERM candidates: no method, and not an ensemble (whose members may have one)."""
    return [k for k, c in enumerate(candidates) if c.method is None and c.usage != "ensemble"]


def _worst_over(candidate: Candidate, candidates: Sequence[Candidate],
                groups: Sequence[str]) -> tuple[float, str | None]:  # fmt: skip
    """(mean over tasks of the lowest group AUC, the group with the lowest mean AUC), over ``groups`` where every
    candidate has an AUC in that task."""
    worst = []
    for name, aucs in candidate.task_group_auc.items():
        shared = [g for g in groups if all(g in c.task_group_auc.get(name, {}) for c in candidates)]
        if shared:
            worst.append(min(aucs[g] for g in shared))
    lowest = min(groups, key=lambda g: candidate.group_auc[g]) if groups else None
    return (float(np.mean(worst)) if worst else math.nan), lowest


def choose(candidates: list[Candidate], rule: str, groups: list[str]) -> tuple[int, str, str | None]:
    """(index of the chosen candidate, reason, minimax group) of ``rule`` over ``candidates``."""
    if rule not in RULES:
        raise InputError(f"rule {rule!r}: choose one of {', '.join(RULES)}")
    matrix = np.array([[c.group_auc[g] for g in groups] for c in candidates], dtype=np.float64).reshape(
        len(candidates), len(groups))
    for c in candidates:  # worst group over the groups compared, so every candidate is judged on the same ones
        c.worst_group_auc, c.worst_group = _worst_over(c, candidates, groups)
    if groups:
        front = pareto_front(matrix)
        best = matrix.max(axis=0)
        distances = np.sqrt(((1.0 - matrix / best) ** 2).sum(axis=1))
        for c, on_front, distance in zip(candidates, front, distances):
            c.pareto, c.dto = bool(on_front), float(distance)
    n = len(candidates)

    def runner_up(values: np.ndarray, chosen: int, higher: bool = True) -> str:
        rest = [i for i in range(n) if i != chosen]
        if not rest:
            return "the only candidate"
        other = max(rest, key=lambda i: values[i]) if higher else min(rest, key=lambda i: values[i])
        return f"next: {values[other]:.4f} by {candidates[other].run_id}"

    if rule == "overall_auc":
        values = np.array([c.overall_auc for c in candidates])
        i = int(np.argmax(values))
        return i, f"highest validation AUC ({values[i]:.4f}; {runner_up(values, i)})", None
    if rule == "worst_group_auc":
        values = np.array([c.worst_group_auc for c in candidates])
        if np.isnan(values).all():
            raise InputError("no group has both classes among the validation rows of every candidate")
        i = int(np.nanargmax(values))
        return i, (f"highest validation worst-group AUC ({values[i]:.4f}, group {candidates[i].worst_group}; "
                   f"{runner_up(np.nan_to_num(values, nan=-np.inf), i)})"), None  # fmt: skip
    if not groups:
        raise InputError(f"rule {rule}: no group has a validation AUC in every candidate")
    if rule == "dto":
        i = int(np.argmin(distances))
        return i, (f"closest to the utopia point of per-group best validation AUCs (distance {distances[i]:.4f}; "
                   f"{runner_up(distances, i, higher=False)})"), None  # fmt: skip
    erm = erm_candidates(candidates)
    if not erm:  # METHODS.md §4 defines the min group over ERM runs only, with no fallback
        raise InputError("rule minimax_pareto: no ERM candidate (a run without a method that is not an ensemble) to "
                         "find the min group over; add ERM runs to the candidates or choose another rule")  # fmt: skip
    best_erm = matrix[erm].max(axis=0)
    g = int(np.argmin(best_erm))
    on_front = np.flatnonzero(front)
    i = int(on_front[np.argmax(matrix[on_front, g])])
    who = f"the {len(erm)} ERM candidate(s) ({', '.join(candidates[k].run_id for k in erm)})"
    return i, (f"Pareto-optimal over the group AUCs ({len(on_front)} of {n}) with the highest validation AUC on "
               f"group {groups[g]} ({matrix[i, g]:.4f}), the group whose best AUC over {who} is lowest "
               f"({best_erm[g]:.4f})"), groups[g]  # fmt: skip


def select(store: "Store", runs: Sequence[str] = (), *, rule: str = "overall_auc", attribute: str | None = None,
           task: str | None = None, where: Mapping[str, str] | None = None) -> Selection:  # fmt: skip
    """Choose one of the stored ``runs`` (or those matching ``where``) by ``rule`` on their validation predictions."""
    if rule not in RULES:
        raise InputError(f"rule {rule!r}: choose one of {', '.join(RULES)}")
    records = resolve_runs(store, runs, where)
    attribute = attribute or common_attribute(records)
    candidates = [validation_scores(record, attribute, task) for record in records]
    check_same_rows(records, task)
    everywhere = set.intersection(*(set(c.group_auc) for c in candidates))
    groups = sorted(everywhere)
    notes = []
    dropped = sorted(set().union(*(set(c.group_auc) for c in candidates)) - everywhere)
    if dropped:
        notes.append(f"group(s) {', '.join(dropped)} left out: not both classes among some candidate's validation "
                     "rows")  # fmt: skip
    index, reason, min_group = choose(candidates, rule, groups)
    erm_basis = [candidates[k].run_id for k in erm_candidates(candidates)] if rule == "minimax_pareto" else None
    return Selection(rule=rule, attribute=attribute, task=task, candidates=candidates,
                     chosen=candidates[index].run_id, reason=reason, groups=groups, notes=notes,
                     min_group=min_group, erm_basis=erm_basis)  # fmt: skip


def record_selection(store: "Store", selection: Selection) -> Path:
    """Write ``STORE/selections/<selection_id>.json`` atomically (the same candidates and rule overwrite it)."""
    from fairfm.tableio import write_text_atomic

    path = Path(store.path) / SELECTIONS_DIR / f"{selection.selection_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {**selection.to_dict(), "created": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}
    write_text_atomic(path, json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return path


def candidates_frame(selection: Selection) -> pd.DataFrame:
    """One row per candidate: run, label, overall and worst-group AUC, per-group AUCs, Pareto, DTO, chosen."""
    rows = []
    for c in selection.candidates:
        rows.append({"run_id": c.run_id, "label": c.label, "attribute_at_test": c.attribute_at_test,
                     "overall_auc": c.overall_auc,
                     "worst_group_auc": c.worst_group_auc, **{f"auc_{g}": c.group_auc.get(g, math.nan)
                                                               for g in selection.groups},
                     "pareto": c.pareto, "dto": c.dto, "chosen": c.run_id == selection.chosen})  # fmt: skip
    return pd.DataFrame(rows)
