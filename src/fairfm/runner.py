"""One run from spec to stored results: dataset → model → usage → PredictionTables → metrics → results store.

```python
from fairfm.runner import run
from fairfm.results import Store
record = run(RunSpec.load("spec.yaml"), Store("fairfm_runs"))   # computed once, found afterwards
```

The usage produces validation and test probabilities; both become rows of one PredictionTable (``split`` val /
test), the decision threshold is chosen on the validation rows (``spec.threshold``, default ``best_f1@val``) and
the MetricTable with bootstrap intervals (``spec.bootstrap``, ``spec.seed``) is computed on the test rows by
:func:`fairfm.metrics.evaluate_frame`. Everything is written through :meth:`fairfm.results.Store.run`, so a
finished run is found instead of recomputed and a run killed half-way leaves nothing behind. Frozen-encoder
features are cached under ``STORE/features`` and shared by every run of the same model, weights and dataset.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fairfm.errors import InputError
from fairfm.usages import UsageOutput, get_usage  # noqa: F401 - UsageOutput: what a usage returns, re-exported

if TYPE_CHECKING:
    from fairfm.metrics import Report
    from fairfm.results import RunRecord, Store
    from fairfm.spec import RunSpec

FEATURES_DIR = "features"
HEADS_DIR = "heads"
MASKS_DIR = "masks"


@dataclass
class RunResult:
    """A stored run, whether it was computed by this call, its metrics Report, and whether it is stale (found under
    older results versions: its numbers may differ from what the running code computes; see ``recompute_stale``)."""

    record: "RunRecord"
    computed: bool
    report: "Report | None" = None
    stale: bool = False


# ----------------------------------------------------------------------------------------------------- public


def run(spec: "RunSpec", store: "Store", *, progress: bool = True, recompute_stale: bool = False) -> "RunRecord":
    """The stored run of ``spec``: found in ``store``, or computed and stored."""
    return execute(spec, store, progress=progress, recompute_stale=recompute_stale).record


def execute(spec: "RunSpec", store: "Store", *, progress: bool = True, want_report: bool = False,
            recompute_stale: bool = False) -> RunResult:  # fmt: skip
    """Like :func:`run`, also saying whether the run was computed and (``want_report``) returning its Report —
    the one computed, or for a found run the one read from its stored MetricTable (no bootstrap is redone).

    A run stored under older results versions (same spec, data and weights; see :mod:`fairfm.results.versions`) is
    served with ``stale=True`` unless ``recompute_stale``, which computes the run under the current versions (a new
    run id; the stale run stays in the store, marked)."""
    from fairfm.data.cache import resolve_dataset

    check_supported(spec)
    check_store_before_preparing(spec, store)
    spec, _ = resolve_dataset(spec, store.path, progress=progress)  # a dataset name + raw root: prepared once
    key = store.key(spec)
    found = store.find(spec)
    if found is None and not recompute_stale:
        found = store.find_stale(spec, _key=key)
    if found is not None:
        report = stored_report(found, spec) if want_report else None
        return RunResult(found, computed=False, report=report, stale=found.stale)
    preflight(spec, store)
    kept: dict[str, Any] = {}
    run_id = key.run_id

    def compute(resolved_spec: "RunSpec"):
        from fairfm.results import RunOutput

        kept["started"] = True  # this process holds the run's lock: the run's files are its own
        predictions, report, meta = compute_run(resolved_spec, store_path=store.path, run_id=run_id,
                                                progress=progress)  # fmt: skip
        kept["report"] = report
        return RunOutput(predictions, report, meta)

    try:
        record = store.run(spec, compute)
    except BaseException:
        # A run this process started and did not store leaves none of its files behind. A process that was only
        # waiting for the run's lock (interrupted, or the lock could not be taken) owns no files: the heads it
        # sees are the lock holder's, being written.
        if kept.get("started") and not store.exists(run_id):
            remove_run_files(store.path, run_id)
        raise
    report = kept.get("report")
    if report is None and want_report:  # another process computed it while this one waited for the run's lock
        report = stored_report(record, spec)
    return RunResult(record, computed="report" in kept, report=report)


def stored_report(record: "RunRecord", spec: "RunSpec") -> "Report":
    """The Report of a stored run, read from its MetricTable (instant); a run stored without the report's extras
    in meta.json (before they were kept) is evaluated again from its predictions (the same numbers)."""
    extras = record.meta.get("report")
    if extras is None:
        return report_from_predictions(record.predictions, spec)
    from fairfm.metrics.stored import report_from_metric_table

    return report_from_metric_table(record.metrics, extras)


def check_store_before_preparing(spec: "RunSpec", store: "Store") -> None:
    """A dataset given by name is prepared into ``STORE/datasets`` first: the store must take it (checked by a real
    write) before the raw release is read."""
    from fairfm.data.cache import is_prepared, resolve_dataset

    _, prepared = resolve_dataset(spec, store.path, prepare=False)
    if prepared is not None and not is_prepared(prepared.folder):
        store.check_writable()


def remove_run_files(store_path: Path, run_id: str) -> list[Path]:
    """Remove the per-run files a usage writes beside the store (``heads/<run_id>.safetensors``, ``masks/<run_id>.npz``)
    of a run that failed: a head without its run is an orphan nothing refers to. (Feature caches are shared by runs
    and kept: a partly filled entry resumes.)"""
    removed = []
    store_path = Path(store_path)
    for path in (store_path / HEADS_DIR / f"{run_id}.safetensors", store_path / MASKS_DIR / f"{run_id}.npz"):
        if path.is_file():
            path.unlink()
            removed.append(path)
    return removed


def preflight(spec: "RunSpec", store: "Store", *, check_store: bool = True, check_data: bool = True) -> None:
    """Everything a run can be refused for that is known before any work (model building, feature extraction,
    training): an unknown model or one of the wrong family for the usage (the family it declares), a missing
    checkpoint or one that does not fit the model card (checked without loading it, see
    :func:`fairfm.models.check_model`), a split without both classes in val/test, and a store that could not take
    the result. A sweep calls it for every cell before the first runs (``check_data=False``: only the checks that
    need no prepared dataset, for a dataset given by name before it is prepared)."""
    from fairfm.models import check_model, get_model

    check_supported(spec)
    usage = get_usage(spec.usage)
    if check_data and usage.segmentation:  # the usage's own check (masks) before the family
        from fairfm.adapt.sam_prompting import mask_columns

        table_path = Path(spec.resolve()["dataset"]) / "samples.parquet"
        try:
            mask_columns(pd.read_parquet(table_path))
        except InputError as exc:
            raise InputError(f"{table_path}: {exc}") from None
    check_model_family(spec)
    check_model(spec.model, spec.checkpoint, trust_checkpoint=spec.trust_checkpoint, **spec.model_options)
    if check_data:
        check_split_classes(spec)
        if spec.method is not None:  # its attribute and group count, on the prepared table
            from fairfm.mitigate.runs import check_method, run_method

            resolved = spec.resolve()
            check_method(run_method(spec), get_usage(spec.usage).loop, spec.usage,
                         _samples(Path(resolved["dataset"]) / "samples.parquet"), list(resolved["attributes"]),
                         get_model(spec.model).family, spec=spec)  # fmt: skip
    if check_store:
        store.check_writable()


_LABELS_MEMO: dict[tuple[str, int, int], pd.DataFrame] = {}


def _samples(table_path: Path) -> pd.DataFrame:
    """A prepared SampleTable, read once per file version (a sweep's pre-flight checks read it for every cell)."""
    stat = table_path.stat()
    memo_key = (str(table_path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo_key not in _LABELS_MEMO:
        _LABELS_MEMO[memo_key] = pd.read_parquet(table_path)
    return _LABELS_MEMO[memo_key]


def check_model_family(spec: "RunSpec") -> None:
    """The model must be of the family the usage declares (:meth:`fairfm.usages.Usage.family_refusal`, the rule
    spec validation applies too)."""
    from fairfm.models import get_model

    card = get_model(spec.model)
    refusal = get_usage(spec.usage).family_refusal(card.name, card.family)
    if refusal is not None:
        raise InputError(refusal)


def check_split_classes(spec: "RunSpec") -> None:
    """Every task needs both classes among the known labels of its test split (AUC), and of its val split when the
    threshold is chosen there or a model is selected there (trained usages)."""
    usage = get_usage(spec.usage)
    if usage.segmentation:
        return
    resolved = spec.resolve()
    table_path = Path(resolved["dataset"]) / "samples.parquet"
    tasks = list(resolved["tasks"])
    try:
        table = _samples(table_path)
    except (OSError, ValueError):
        return  # an unreadable table is reported, named, by the run itself
    if "split" not in table.columns:
        return
    splits = ["test"]
    if str(spec.threshold).endswith("@val") or usage.trains:
        splits.insert(0, "val")
    split_of = table["split"].astype(str)
    for task in tasks:
        if f"label_{task}" not in table.columns:
            continue
        labels = pd.to_numeric(table[f"label_{task}"], errors="coerce")
        for split in splits:
            known = labels[(split_of == split).to_numpy()].dropna()
            classes = sorted(int(v) for v in known.unique())
            if len(known) and len(classes) < 2:
                why = ("AUC and the validation threshold/model selection need both" if split == "val"
                       else "AUC needs both")  # fmt: skip
                raise InputError(f"{table_path}: task {task!r} has only class {classes[0]} in split {split!r} "
                                 f"({len(known)} labelled samples): {why} classes — prepare the dataset with another "
                                 "split or split seed")  # fmt: skip


def check_supported(spec: "RunSpec") -> None:
    """Fail fast, before any work, for what the runner cannot do yet."""
    if spec.method is not None:
        from fairfm.mitigate.runs import run_method

        method = run_method(spec)
        why = method.refusal(get_usage(spec.usage).loop, spec.usage)
        if why is not None:
            raise InputError(why)


# ----------------------------------------------------------------------------------------------------- compute


def compute_run(spec: "RunSpec", *, store_path: Path, run_id: str | None = None,
                progress: bool = True) -> tuple[pd.DataFrame, "Report", dict[str, Any]]:  # fmt: skip
    """Compute one run: (PredictionTable without run_id, metrics Report, meta)."""
    from fairfm.data.prepare import load_prepared
    from fairfm.metrics.stored import report_extras

    check_supported(spec)
    usage = get_usage(spec.usage)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    resolved = spec.resolve()
    dataset_dir = Path(resolved["dataset"])
    table, manifest = load_prepared(dataset_dir)
    tasks, attributes = list(resolved["tasks"]), list(resolved["attributes"])
    if "split" not in table.columns:
        raise InputError(f"{dataset_dir / 'samples.parquet'}: no 'split' column — prepare the dataset with a split")
    splits = table["split"].astype(str)
    needed = usage.needed_splits(has_val=bool((splits == "val").any()))
    for name in needed:
        if not (splits == name).any():
            raise InputError(f"{dataset_dir / 'samples.parquet'}: the split has no '{name}' samples "
                             f"(the {spec.usage} usage needs {', '.join(needed)})")  # fmt: skip
    table = table[splits.isin(needed).to_numpy()].reset_index(drop=True)
    root = Path(resolved["root"]) if resolved.get("root") else dataset_dir
    device = resolve_device(spec.device)
    check_model_family(spec)  # as preflight does (a direct call of compute_run is checked too)
    timings["load_s"] = time.perf_counter() - started

    method = None
    if spec.method is not None:  # refused here, before any work, when it cannot run on this data
        from fairfm.mitigate.runs import check_method, run_method

        method = run_method(spec)
        check_method(method, get_usage(spec.usage).loop, spec.usage, table, attributes, spec=spec)
    output = usage.run(spec, table, tasks, root=root, features_dir=Path(store_path) / FEATURES_DIR, device=device,
                   progress=progress, heads_path=Path(store_path) / HEADS_DIR / f"{run_id}.safetensors" if run_id
                   else None, timings=timings)  # fmt: skip
    if method is not None and method.post_processes and output.predictions is None:
        from fairfm.mitigate.runs import method_attribute, method_meta, post_process

        output.probabilities = post_process(method, spec, table, tasks, output.probabilities)
        output.meta["method"] = method_meta(method, method_attribute(method, attributes))
    if method is not None and "method" not in output.meta:  # never store an ERM run under a method's run id
        raise InputError(f"usage {spec.usage!r} did not apply method {spec.method!r}: a usage on a training loop "
                         "must take its hooks from fairfm.mitigate.runs.loop_setup and record them (see "
                         "docs/methods.md)")  # fmt: skip

    started = time.perf_counter()
    split_of = table["split"].astype(str).to_numpy()
    if output.predictions is not None:  # the usage scored its own rows; keep the groups of the run's attributes
        keep = {f"group_{a}" for a in attributes}
        predictions = output.predictions.drop(columns=[c for c in output.predictions.columns
                                                       if str(c).startswith("group_") and c not in keep])  # fmt: skip
    else:
        parts = []
        for split in ("val", "test"):
            rows = np.flatnonzero(split_of == split)
            parts.append(prediction_rows(table.iloc[rows], output.probabilities[split], tasks, attributes, split))
        predictions = pd.concat(parts, ignore_index=True)
    report = report_from_predictions(predictions, spec, progress=progress)
    if method is not None:  # e.g. a post-processed run's AUC is that of its decisions
        report.warnings.extend(method.report_warnings())
    timings["metrics_s"] = time.perf_counter() - started
    meta = {
        "usage": spec.usage,
        "seeds": {"run": spec.seed, "bootstrap": spec.seed, "split": (manifest.get("split") or {}).get("seed")},
        "device": device,
        "requested_device": spec.device,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "n_samples": {s: int((split_of == s).sum()) for s in needed},
        **output.meta,
        "report": report_extras(report),  # what the MetricTable lacks to give back this Report (stored_report)
    }
    return predictions, report, meta


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device: {requested!r} asked for, but no CUDA device is available")
    return requested


def prediction_rows(samples: pd.DataFrame, probabilities: np.ndarray, tasks: list[str], attributes: list[str],
                    split: str) -> pd.DataFrame:  # fmt: skip
    """PredictionTable rows of one split: one per (sample, task) with a known label, with the sample's groups."""
    if probabilities.shape != (len(samples), len(tasks)):
        expected = (len(samples), len(tasks))
        raise ValueError(f"{split}: probabilities of shape {probabilities.shape}, expected {expected}")
    frames = []
    for j, task in enumerate(tasks):
        labels = pd.to_numeric(samples[f"label_{task}"], errors="coerce").to_numpy(dtype=np.float64)
        known = ~np.isnan(labels)
        frame = pd.DataFrame({
            "sample_id": samples["sample_id"].astype(str).to_numpy()[known],
            "task": task,
            "split": split,
            "y_true": labels[known].astype(np.int64),
            "y_score": probabilities[known, j].astype(np.float64),
        })
        for attribute in attributes:
            frame[f"group_{attribute}"] = samples[f"group_{attribute}"].astype(str).to_numpy()[known]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def report_from_predictions(predictions: pd.DataFrame, spec: "RunSpec", *, progress: bool = False) -> "Report":
    """The metrics Report of a PredictionTable: threshold chosen on the val rows, metrics on the test rows
    (``progress``: a bar on stderr during the bootstrap)."""
    from fairfm.metrics import evaluate_frame

    group_columns = [c for c in predictions.columns if str(c).startswith("group_")]
    frame = predictions.rename(columns={c: c.removeprefix("group_") for c in group_columns})
    attributes = [c.removeprefix("group_") for c in group_columns]
    if not attributes:
        raise InputError("the run has no sensitive attribute (group_* column) to evaluate fairness over")
    if "dice" in predictions.columns:
        return segmentation_report(predictions, spec)

    def evaluate(rows: pd.DataFrame) -> "Report":
        return evaluate_frame(rows.reset_index(drop=True), y_true=["y_true"], y_score=["y_score"],
                              attributes=attributes, task_column="task", split_column="split", on="sample_id",
                              threshold=spec.threshold, bootstrap=spec.bootstrap, seed=spec.seed,
                              progress=progress)  # fmt: skip

    # Tasks with different known-label samples share one report: a (sample, task) without a row is an unknown
    # label of that task, so macro metrics and Benjamini–Hochberg run across all tasks.
    return evaluate(frame)


def segmentation_report(predictions: pd.DataFrame, spec: "RunSpec") -> "Report":
    """The metrics Report of a segmentation PredictionTable: per-sample Dice/IoU of the test rows, per task, with
    bootstrap intervals (``spec.bootstrap``, ``spec.seed``); nothing is thresholded. Rows without a score (an empty
    ground truth, not prompted) are left out and counted as ``n_empty_ground_truth``."""
    from fairfm.metrics import evaluate_segmentation
    from fairfm.metrics.report import Estimate

    test = predictions[predictions["split"].astype(str) == "test"]
    if test.empty:
        raise InputError("the run has no test rows to evaluate (segmentation metrics are computed on split 'test')")
    group_columns = [c for c in predictions.columns if str(c).startswith("group_")]
    merged: "Report | None" = None
    warnings: list[str] = []
    for task in dict.fromkeys(test["task"].astype(str)):
        rows = test[test["task"].astype(str) == task]
        unscored = int(rows["dice"].isna().sum())
        rows = rows[rows["dice"].notna()]
        if rows.empty:
            warnings.append(f"{task}: no test sample has this structure in its ground truth; nothing to evaluate")
            continue
        groups = {c.removeprefix("group_"): rows[c].astype(str).to_numpy() for c in group_columns}
        iou = rows["iou"].to_numpy(dtype=np.float64) if "iou" in rows.columns else None
        report = evaluate_segmentation(rows["dice"].to_numpy(dtype=np.float64), iou=iou, groups=groups,
                                       bootstrap=spec.bootstrap, seed=spec.seed, task=task)  # fmt: skip
        report.tasks[task].overall["n_empty_ground_truth"] = Estimate(float(unscored))
        if unscored:
            warnings.append(f"{task}: {unscored} test sample(s) with an empty ground truth were not prompted and "
                            "are not scored")  # fmt: skip
        if merged is None:
            merged = report
        else:
            merged.tasks.update(report.tasks)
            merged.warnings.extend(report.warnings)
    if merged is None:
        raise InputError("the run has no scored test rows: " + "; ".join(warnings))
    merged.warnings.extend(warnings)
    if "slice_index" in predictions.columns:
        merged.warnings.append("per-slice rows (FairMedFM compatibility view): slices of one volume are not "
                               "independent, so the bootstrap intervals are too narrow")  # fmt: skip
    return merged
