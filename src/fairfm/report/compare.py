"""Compare two stored runs that scored the same test samples: every metric's paired difference B − A with a
bootstrap interval, p-value and Benjamini–Hochberg q-value (:mod:`fairfm.metrics.paired`).

```python
from fairfm.report.compare import compare_runs
comparison = compare_runs(store, "fakeA-erm-0", "fakeB")   # ids or unique prefixes
comparison.table                                           # tidy: task, attribute, group, metric, value_a, …
print(comparison.to_markdown())
```
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from fairfm.errors import InputError
from fairfm.metrics import paired as P
from fairfm.metrics.report import BootstrapProgress

#: A difference is marked significant when its Benjamini–Hochberg q-value is below this.
SIGNIFICANCE_LEVEL = 0.05
#: What the terminal and Markdown views show by default: (attribute level, metric).
KEY_METRICS = {
    "classification": (("overall", "auc"), ("overall", "ece"), ("summary", "worst_auc"), ("summary", "auc_gap"),
                       ("summary", "eod"), ("summary", "dpd"), ("summary", "ece_gap")),
    "segmentation": (("overall", "mean_dice"), ("overall", "mean_iou"), ("summary", "worst_dice"),
                     ("summary", "dice_gap"), ("summary", "es_dice"), ("summary", "worst_iou"),
                     ("summary", "iou_gap")),
}  # fmt: skip


@dataclass
class Comparison:
    """The result of :func:`compare_runs`: the tidy table of paired differences and what a reader must know."""

    run_a: str
    run_b: str
    kind: str  # "classification" | "segmentation"
    table: pd.DataFrame
    bootstrap: dict[str, Any]
    thresholds: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # task -> "a"/"b" -> policy…
    notes: list[str] = field(default_factory=list)
    metrics: list[str] | None = None  # the metrics asked for (None: all)

    def key_rows(self) -> pd.DataFrame:
        """The rows a person reads first: the asked-for metrics, else the key metrics of :data:`KEY_METRICS`
        (overall and per attribute, never per group)."""
        table = self.table
        if self.metrics is not None:
            return table.reset_index(drop=True)
        parts = []
        for level, metric in KEY_METRICS[self.kind]:
            group = P.OVERALL if level == "overall" else P.SUMMARY
            parts.append(table[(table["group"] == group) & (table["metric"] == metric)])
        order = {name: k for k, (_, name) in enumerate(KEY_METRICS[self.kind])}
        rows = pd.concat(parts) if parts else table.iloc[:0]
        attribute_order = {a: k for k, a in enumerate(dict.fromkeys(table["attribute"]))}
        task_order = {t: k for k, t in enumerate(dict.fromkeys(table["task"]))}
        return rows.sort_values(by=["task", "attribute", "metric"], key=lambda col: col.map(
            {"task": task_order, "attribute": attribute_order, "metric": order}[col.name])).reset_index(drop=True)

    def to_dict(self) -> dict[str, Any]:
        rows = [{k: _clean(v) for k, v in row.items()} for row in self.table.to_dict(orient="records")]
        return {"run_a": self.run_a, "run_b": self.run_b, "kind": self.kind, "difference": "B - A",
                "bootstrap": dict(self.bootstrap), "thresholds": _clean_tree(self.thresholds),
                "notes": list(self.notes), "significance_level": SIGNIFICANCE_LEVEL, "rows": rows}  # fmt: skip

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, allow_nan=False)

    def to_csv(self) -> str:
        return self.table.to_csv(index=False)

    def to_markdown(self) -> str:
        """The key rows (or the asked-for metrics) as GitHub-flavoured Markdown, with the notes."""
        lines = [f"## Comparison: B = `{self.run_b}` vs A = `{self.run_a}`", "", self.design_line(), ""]
        lines += [f"> ⚠ {note}" for note in self.notes]
        if self.notes:
            lines.append("")
        head = ["task", "attribute", "group", "metric", "A", "B", "B − A [CI]", "p", "q", ""]
        lines += [_md_row(head), _md_row(["---"] * len(head))]
        for row in self.key_rows().itertuples(index=False):
            lines.append(_md_row(self.cells(row)))
        legend = f"✱: q < {SIGNIFICANCE_LEVEL:g} (Benjamini–Hochberg over the {self.n_tests} compared metrics)"
        lines += ["", legend, ""]
        return "\n".join(lines)

    # -- shared by the terminal and Markdown views ------------------------------------------------------------
    @property
    def n_tests(self) -> int:
        return int(self.table["p_value"].notna().sum())

    def design_line(self) -> str:
        b = self.bootstrap
        return (f"paired bootstrap: {b['B']} resamples of the same test samples for both runs, stratified by "
                f"{b['stratify']} (seed {b['seed']}); {int(round(b['ci'] * 100))}% percentile intervals of B − A; "
                "p: two-sided share of resampled differences beyond 0")  # fmt: skip

    def cells(self, row) -> list[str]:
        """Display cells of one table row: task, attribute, group, metric, A, B, B − A [CI], p, q, marker."""
        diff = _num(row.difference)
        if math.isfinite(row.ci_low) and math.isfinite(row.ci_high):
            diff += f" [{_num(row.ci_low)}, {_num(row.ci_high)}]"
        marker = "✱" if math.isfinite(row.q_value) and row.q_value < SIGNIFICANCE_LEVEL else ""
        group = "" if row.group in (P.OVERALL, P.SUMMARY) else row.group
        attribute = "overall" if row.attribute == P.OVERALL else row.attribute
        return [row.task, attribute, group, row.metric, _num(row.value_a), _num(row.value_b), diff, _p(row.p_value),
                _p(row.q_value), marker]  # fmt: skip


def compare_runs(store, run_a: str, run_b: str, *, bootstrap: int = 1000, seed: int = 0,
                 metrics: list[str] | None = None, ci: float = 0.95,
                 progress: bool | Callable[[], None] = False) -> Comparison:  # fmt: skip
    """Paired comparison of two stored runs on their shared test samples (B − A for every metric).

    Run ids may be unique prefixes. Both runs must have scored the same test samples of the same tasks with the
    same labels and group columns (else :class:`InputError` saying what differs). Each run keeps its own threshold,
    chosen again from its own val rows by its stored spec's policy exactly as the run's own report chose it, so
    the point values equal the runs' stored metrics. ``metrics`` keeps only these metric names (at every level;
    q-values then adjust over them only). ``progress``: a bar on stderr (True) or a callback per resample.
    """
    if int(bootstrap) < 1:
        raise InputError(f"--bootstrap must be at least 1 for intervals and p-values, got {bootstrap}")
    if metrics is not None:
        known = sorted(set(P.known_metrics("classification")) | set(P.known_metrics("segmentation")))
        for name in metrics:
            if name not in known:
                raise InputError(f"unknown metric {name!r}; known: {', '.join(known)}")
    record_a, record_b = resolve_run(store, run_a, "RUN_A"), resolve_run(store, run_b, "RUN_B")
    ids = {"a": record_a.run_id, "b": record_b.run_id}
    tests = {key: _test_rows(record) for key, record in (("a", record_a), ("b", record_b))}
    kinds = {key: ("segmentation" if "dice" in record.predictions.columns else "classification")
             for key, record in (("a", record_a), ("b", record_b))}  # fmt: skip
    if kinds["a"] != kinds["b"]:
        raise InputError(f"run A '{ids['a']}' is a {kinds['a']} run and run B '{ids['b']}' a {kinds['b']} run: "
                         "only runs of the same kind can be compared")  # fmt: skip
    kind = kinds["a"]
    if metrics is not None:
        unusable = [m for m in metrics if m not in P.known_metrics(kind)]
        if unusable:
            raise InputError(f"metric {unusable[0]!r} is not a {kind} metric; known: "
                             f"{', '.join(P.known_metrics(kind))}")  # fmt: skip
    aligned = _align(tests["a"], tests["b"], ids, kind)
    notes = _notes(record_a, record_b, ids)
    task_seeds = np.random.SeedSequence(int(seed)).spawn(len(aligned))
    n_attributes = len([c for c in tests["a"].columns if str(c).startswith("group_")])
    tracker = BootstrapProgress(progress, len(aligned) * n_attributes * int(bootstrap), int(bootstrap),
                                label="paired bootstrap")  # fmt: skip
    parts, thresholds = [], {}
    try:
        for (task, rows), task_seed in zip(aligned.items(), task_seeds):
            groups = {c.removeprefix("group_"): rows[f"{c}"].to_numpy() for c in rows.columns
                      if c.startswith("group_")}  # fmt: skip
            tracker.describe(task)
            if kind == "segmentation":
                values = [{k: rows[f"{k}_{x}"].to_numpy() for k in ("dice", "iou") if f"{k}_{x}" in rows.columns}
                          for x in ("a", "b")]  # fmt: skip
                table = P.paired_bootstrap_segmentation(values[0], values[1], groups, bootstrap=int(bootstrap),
                                                        seed=task_seed, ci=ci, task=task, metrics=metrics,
                                                        on_resample=tracker.advance)  # fmt: skip
            else:
                y = rows["y_true"].to_numpy(dtype=np.float64)
                chosen = {}
                for key, record in (("a", record_a), ("b", record_b)):
                    chosen[key] = _threshold(record, key, task, y, rows[f"y_score_{key}"].to_numpy(), ids)
                thresholds[task] = chosen
                table = P.paired_bootstrap(y, rows["y_score_a"].to_numpy(), rows["y_score_b"].to_numpy(), groups,
                                           threshold_a=chosen["a"]["value"], threshold_b=chosen["b"]["value"],
                                           bootstrap=int(bootstrap), seed=task_seed, ci=ci, task=task,
                                           metrics=metrics, on_resample=tracker.advance)  # fmt: skip
            parts.append(table)
    finally:
        tracker.close()
    table = P.add_q_values(pd.concat(parts, ignore_index=True))
    for task, chosen in thresholds.items():
        for key, label in (("a", "A"), ("b", "B")):
            if chosen[key]["leaks_labels"]:
                notes.append(f"run {label} '{ids[key]}', task '{task}': threshold policy {chosen[key]['policy']} "
                             "chose the threshold with the test labels; its thresholded metrics are optimistic")
        if chosen["a"]["policy"] != chosen["b"]["policy"]:
            notes.append(f"task '{task}': the runs use different threshold policies (A {chosen['a']['policy']}, "
                         f"B {chosen['b']['policy']}); thresholded differences include that choice")  # fmt: skip
    return Comparison(run_a=ids["a"], run_b=ids["b"], kind=kind, table=table,
                      bootstrap={"B": int(bootstrap), "seed": int(seed), "ci": ci, "stratify": "group",
                                 "method": "paired percentile"},
                      thresholds=thresholds, notes=notes, metrics=list(metrics) if metrics is not None else None)


def resolve_run(store, text: str, label: str = "run"):
    """The stored run named by ``text``: an id or a unique prefix of one (:meth:`Store.load`); an unknown or
    ambiguous one is an :class:`InputError` that says which argument (``label``) it was."""
    try:
        return store.load(text)
    except InputError as exc:
        raise InputError(f"{label}: {exc}") from None


# ---------------------------------------------------------------------------------------------------------------
def _test_rows(record) -> pd.DataFrame:
    predictions = record.predictions
    test = predictions[predictions["split"].astype(str) == "test"]
    if test.empty:
        raise InputError(f"run '{record.run_id}' has no test rows to compare (split 'test')")
    return test.reset_index(drop=True)


def _align(test_a: pd.DataFrame, test_b: pd.DataFrame, ids: dict[str, str], kind: str) -> dict[str, pd.DataFrame]:
    """Per task: the shared test samples (in A's order) with A's and B's scores side by side, after checking that
    both runs scored the same samples with the same labels and groups."""
    who = f"runs A '{ids['a']}' and B '{ids['b']}'"
    tasks_a = list(dict.fromkeys(test_a["task"].astype(str)))
    tasks_b = list(dict.fromkeys(test_b["task"].astype(str)))
    if set(tasks_a) != set(tasks_b):
        raise InputError(f"{who} have different tasks: only in A {sorted(set(tasks_a) - set(tasks_b)) or '–'}, "
                         f"only in B {sorted(set(tasks_b) - set(tasks_a)) or '–'}")  # fmt: skip
    # A's column order, as its own report: the first attribute's resamples give the overall rows' intervals.
    groups_a = [c for c in test_a.columns if str(c).startswith("group_")]
    groups_b = [c for c in test_b.columns if str(c).startswith("group_")]
    if sorted(groups_a) != sorted(groups_b):
        raise InputError(f"{who} have different group columns (A: {', '.join(groups_a) or '–'}; "
                         f"B: {', '.join(groups_b) or '–'}); a paired comparison needs the same attributes")  # fmt: skip
    if not groups_a:
        raise InputError(f"{who} have no sensitive attribute (group_* column) to compare fairness over")
    values = ["dice", "iou"] if kind == "segmentation" else ["y_score"]
    out: dict[str, pd.DataFrame] = {}
    for task in tasks_a:
        a = _task_rows(test_a, task, ids["a"], "A")
        b = _task_rows(test_b, task, ids["b"], "B")
        only_a, only_b = a.index.difference(b.index), b.index.difference(a.index)
        if len(only_a) or len(only_b):
            raise InputError(f"{who} did not score the same test samples (task '{task}'): {len(only_a)} sample id(s) "
                             f"only in A{_examples(only_a)}, {len(only_b)} only in B{_examples(only_b)}; a paired "
                             "comparison needs the same samples")  # fmt: skip
        b = b.loc[a.index]
        checks = ["y_true"] if kind == "classification" else []
        if kind == "segmentation":  # an unscored sample (empty ground truth) must be unscored in both
            a = a.assign(scored=a["dice"].notna())
            b = b.assign(scored=b["dice"].notna())
            checks.append("scored")
        for column in checks + groups_a:
            differs = ~_same(a[column], b[column])
            if differs.any():
                where = a.index[differs.to_numpy()]
                first = where[0]
                what = "labels (y_true)" if column == "y_true" else ("scored samples" if column == "scored"
                                                                       else f"group column '{column}'")
                value_a, value_b = _shown(a.at[first, column]), _shown(b.at[first, column])
                raise InputError(f"{who} differ in their {what} for {len(where)} test sample(s) of task '{task}' "
                                 f"(e.g. {first!r}: {value_a} in A, {value_b} in B); a paired comparison needs the "
                                 "same samples with the same labels and groups")
        if kind == "segmentation":
            keep = a["scored"].to_numpy()
            a, b = a[keep], b[keep]
        else:
            # Unknown (blank) and uncertain (−1) labels are left out, as the runs' own reports do.
            known = a["y_true"].isin([0, 1]).to_numpy()
            a, b = a[known], b[known]
        frame = a[[c for c in ["y_true", *groups_a] if c in a.columns]].copy()
        for column in values:
            if column in a.columns and column in b.columns:
                frame[f"{column}_a"] = a[column].to_numpy()
                frame[f"{column}_b"] = b[column].to_numpy()
        out[task] = frame
    return out


def _task_rows(test: pd.DataFrame, task: str, run_id: str, label: str) -> pd.DataFrame:
    rows = test[test["task"].astype(str) == task]
    ids = rows["sample_id"].astype(str)
    duplicated = ids[ids.duplicated()]
    if len(duplicated):
        raise InputError(f"run {label} '{run_id}': test sample {duplicated.iloc[0]!r} appears twice for task "
                         f"'{task}'")
    return rows.set_index(ids.to_numpy())


def _same(a: pd.Series, b: pd.Series) -> pd.Series:
    """Element-wise equality where two missing values are equal (labels as numbers, groups as text)."""
    both_missing = a.isna().to_numpy() & b.isna().to_numpy()
    if pd.api.types.is_numeric_dtype(a) and pd.api.types.is_numeric_dtype(b):
        equal = a.to_numpy(dtype=np.float64) == b.to_numpy(dtype=np.float64)
    else:
        equal = a.astype(str).to_numpy() == b.astype(str).to_numpy()
    return pd.Series(equal | both_missing, index=a.index)


def _shown(value: Any) -> str:
    return repr(value.item() if isinstance(value, np.generic) else value)


def _examples(index: pd.Index, k: int = 3) -> str:
    if not len(index):
        return ""
    shown = sorted(map(str, index))[:k]
    return " (e.g. " + ", ".join(repr(s) for s in shown) + (", …" if len(index) > k else "") + ")"


def _threshold(record, key: str, task: str, y: np.ndarray, scores: np.ndarray, ids: dict[str, str]) -> dict:
    """The run's threshold for ``task`` (:func:`fairfm.report.runs.run_threshold`: the value its report stored,
    else chosen again from its own val rows by its spec's policy, as its report chose it)."""
    from fairfm.report.runs import run_threshold

    try:
        found = run_threshold(record, task, y, scores)
    except InputError as exc:
        label = "A" if key == "a" else "B"
        raise InputError(f"run {label} '{ids[key]}', task '{task}': {exc}") from None
    return {"policy": found.policy, "value": found.value, "leaks_labels": found.leaks_labels}


def _notes(record_a, record_b, ids: dict[str, str]) -> list[str]:
    notes = []
    if ids["a"] == ids["b"]:
        notes.append("A and B are the same run: every difference is 0")
    for record, label in ((record_a, "A"), (record_b, "B")):
        if record.stale:
            notes.append(f"run {label} '{record.run_id}' is stale: it was made by code whose numbers differ from the "
                         "running code's (run it again to refresh)")  # fmt: skip
        method = record.meta.get("method") if isinstance(record.meta.get("method"), dict) else {}
        if method.get("attribute_at_test"):
            notes.append(f"run {label} '{record.run_id}' uses the sensitive attribute at test time "
                         f"(method {method.get('name')})")  # fmt: skip
    dataset_a, dataset_b = record_a.spec.get("dataset"), record_b.spec.get("dataset")
    if dataset_a != dataset_b:
        notes.append(f"the runs are on different datasets (A: {dataset_a}, B: {dataset_b}) that share sample ids, "
                     "labels and groups; check that they really are the same samples")  # fmt: skip
    return notes


def _num(value: float, digits: int = 3) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _p(value: float) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.3g}"


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _clean(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _clean_tree(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean_tree(v) for k, v in value.items()}
    return _clean(value)
