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

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd

from fairfm.errors import InputError

if TYPE_CHECKING:
    from fairfm.metrics import Report
    from fairfm.results import RunRecord, Store
    from fairfm.spec import RunSpec

#: Usages the runner can execute today (the others have validated hyper-parameters but no implementation yet).
IMPLEMENTED_USAGES = ("linear_probe", "zero_shot", "prototype", "clip_adapter", "lora", "bitfit", "vpt", "adapter",
                      "full_finetune", "sam_prompt")  # fmt: skip
#: Usages that score their own rows with per-sample Dice/IoU (segmentation) instead of probabilities.
SEGMENTATION_USAGES = ("sam_prompt",)
#: Usages that train on the train split (and so need one).
TRAINED_USAGES = ("linear_probe", "prototype", "clip_adapter", "lora", "bitfit", "vpt", "adapter", "full_finetune")
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


@dataclass
class UsageOutput:
    """What a usage returns: (N, T) probabilities per split, and what to record in meta.json — or, for a usage
    that scores its own rows (segmentation: per-sample ``dice``/``iou``), the ready ``predictions`` rows (with
    ``sample_id``, ``task``, ``split`` and the sample's ``group_*`` columns) and empty ``probabilities``."""

    probabilities: dict[str, np.ndarray]
    meta: dict[str, Any]
    predictions: pd.DataFrame | None = None


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


#: The model family a usage needs (``None``: any image encoder, i.e. not a promptable segmenter).
_USAGE_FAMILY = {"zero_shot": "vision-language", "prototype": "vision-language", "clip_adapter": "vision-language",
                 "sam_prompt": "segmentation", "linear_probe": None}  # fmt: skip
_FAMILY_NEEDS = {"vision-language": "a vision-language model", "segmentation": "a promptable segmentation model"}


def preflight(spec: "RunSpec", store: "Store", *, check_store: bool = True, check_data: bool = True) -> None:
    """Everything a run can be refused for that is known before any work (model building, feature extraction,
    training): an unimplemented usage, an unknown model or one of the wrong family for the usage, a missing
    checkpoint or one that does not fit the model card (checked without loading it, see
    :func:`fairfm.models.check_model`), a split without both classes in val/test, and a store that could not take
    the result. A sweep calls it for every cell before the first runs (``check_data=False``: only the checks that
    need no prepared dataset, for a dataset given by name before it is prepared)."""
    from fairfm.models import check_model, get_model

    check_supported(spec)
    if check_data and spec.usage in SEGMENTATION_USAGES:  # the usage's own check (masks) before the family
        from fairfm.adapt.sam_prompting import mask_columns

        table_path = Path(spec.resolve()["dataset"]) / "samples.parquet"
        try:
            mask_columns(pd.read_parquet(table_path))
        except InputError as exc:
            raise InputError(f"{table_path}: {exc}") from None
    card = get_model(spec.model)
    if spec.usage in _USAGE_FAMILY:
        needs = _USAGE_FAMILY[spec.usage]
        if needs is not None and card.family != needs:
            raise InputError(f"model {card.name!r} is a {card.family} model: {spec.usage} needs {_FAMILY_NEEDS[needs]} "
                             "(see 'fairfm models list')")  # fmt: skip
        if needs is None and card.family == "segmentation":
            raise InputError(f"model {card.name!r} is a promptable segmentation model: {spec.usage} needs an image "
                             "encoder (family vision or vision-language; see 'fairfm models list')")  # fmt: skip
    check_model(spec.model, spec.checkpoint, trust_checkpoint=spec.trust_checkpoint, **spec.model_options)
    if check_data:
        check_split_classes(spec)
    if check_store:
        store.check_writable()


_LABELS_MEMO: dict[tuple[str, int, int], pd.DataFrame] = {}


def check_split_classes(spec: "RunSpec") -> None:
    """Every task needs both classes among the known labels of its test split (AUC), and of its val split when the
    threshold is chosen there or a model is selected there (trained usages)."""
    if spec.usage in SEGMENTATION_USAGES:
        return
    resolved = spec.resolve()
    table_path = Path(resolved["dataset"]) / "samples.parquet"
    tasks = list(resolved["tasks"])
    try:
        stat = table_path.stat()
        memo_key = (str(table_path.resolve()), stat.st_size, stat.st_mtime_ns)
        if memo_key not in _LABELS_MEMO:
            _LABELS_MEMO[memo_key] = pd.read_parquet(table_path)
        table = _LABELS_MEMO[memo_key]
    except (OSError, ValueError):
        return  # an unreadable table is reported, named, by the run itself
    if "split" not in table.columns:
        return
    splits = ["test"]
    if str(spec.threshold).endswith("@val") or spec.usage in TRAINED_USAGES:
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
    if spec.usage not in IMPLEMENTED_USAGES:
        raise InputError(f"usage {spec.usage!r} is not implemented yet in fairfm run (implemented: "
                         f"{', '.join(IMPLEMENTED_USAGES)}); its hyper-parameters are validated but no code trains it")
    if spec.method is not None:
        from fairfm.mitigate.runs import run_method

        method = run_method(spec)
        why = method.refusal(usage_loop(spec.usage), spec.usage)
        if why is not None:
            raise InputError(why)


# ----------------------------------------------------------------------------------------------------- compute


def compute_run(spec: "RunSpec", *, store_path: Path, run_id: str | None = None,
                progress: bool = True) -> tuple[pd.DataFrame, "Report", dict[str, Any]]:  # fmt: skip
    """Compute one run: (PredictionTable without run_id, metrics Report, meta)."""
    from fairfm.data.prepare import load_prepared
    from fairfm.metrics.stored import report_extras

    check_supported(spec)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    resolved = spec.resolve()
    dataset_dir = Path(resolved["dataset"])
    table, manifest = load_prepared(dataset_dir)
    tasks, attributes = list(resolved["tasks"]), list(resolved["attributes"])
    if "split" not in table.columns:
        raise InputError(f"{dataset_dir / 'samples.parquet'}: no 'split' column — prepare the dataset with a split")
    splits = table["split"].astype(str)
    needed = ("train", "val", "test") if spec.usage in TRAINED_USAGES else ("val", "test")
    if spec.usage in SEGMENTATION_USAGES:  # nothing trained or thresholded: score val when present, test always
        needed = ("val", "test") if (splits == "val").any() else ("test",)
    for name in needed:
        if not (splits == name).any():
            raise InputError(f"{dataset_dir / 'samples.parquet'}: the split has no '{name}' samples "
                             f"(the {spec.usage} usage needs {', '.join(needed)})")  # fmt: skip
    table = table[splits.isin(needed).to_numpy()].reset_index(drop=True)
    root = Path(resolved["root"]) if resolved.get("root") else dataset_dir
    device = resolve_device(spec.device)
    timings["load_s"] = time.perf_counter() - started

    method = None
    if spec.method is not None:  # refused here, before any work, when it cannot run on this data
        from fairfm.mitigate.runs import check_method, run_method

        method = run_method(spec)
        check_method(method, usage_loop(spec.usage), spec.usage, table, attributes)
    usage = _USAGES[spec.usage]
    output = usage(spec, table, tasks, root=root, features_dir=Path(store_path) / FEATURES_DIR, device=device,
                   progress=progress, heads_path=Path(store_path) / HEADS_DIR / f"{run_id}.safetensors" if run_id
                   else None, timings=timings)  # fmt: skip
    if method is not None and method.post_processes and output.predictions is None:
        from fairfm.mitigate.runs import method_attribute, method_meta, post_process

        output.probabilities = post_process(method, spec, table, tasks, output.probabilities)
        output.meta["method"] = method_meta(method, method_attribute(method, attributes))

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


# ----------------------------------------------------------------------------------------------------- usages

UsageFn = Callable[..., UsageOutput]
_USAGES: dict[str, UsageFn] = {}


def register_usage(name: str) -> Callable[[UsageFn], UsageFn]:
    """Register a usage; it runs with every random generator seeded from ``spec.seed`` (model construction,
    initialisation, dropout, data order) and the caller's random state restored afterwards, so a run gives the
    same numbers whatever ran before it in the process (a local or pool sweep)."""

    def decorate(fn: UsageFn) -> UsageFn:
        _USAGES[name] = _seeded_usage(fn)
        return fn

    return decorate


def _seeded_usage(fn: UsageFn) -> UsageFn:
    import functools

    @functools.wraps(fn)
    def run_seeded(spec: "RunSpec", *args: Any, **kwargs: Any) -> UsageOutput:
        from fairfm.adapt.seeding import derive_seed, seeded

        with seeded(derive_seed(spec.seed, "run")):
            return fn(spec, *args, **kwargs)

    return run_seeded


def _features(spec: "RunSpec", table: pd.DataFrame, model: Any, *, root: Path, features_dir: Path,
              progress: bool, timings: dict[str, float]):  # fmt: skip
    """Cached features of ``table``: an (N, D) matrix for 2D images, or — when samples are volumes — the
    :class:`~fairfm.adapt.volumes.SliceBags` of their per-slice rows (max-pooled over slices by the usage).
    Slices of a 3D dataset are prepared as its ``hparams.slice_intensity`` says (CT window, per-slice min–max)
    before the model's preprocessing; the choice is part of the cache key and recorded in meta."""
    from fairfm.adapt.features import extract_features
    from fairfm.adapt.volumes import (SliceBags, check_volume_policy, resolve_intensity, volume_meta,
                                      with_slice_intensity)  # fmt: skip

    hp = spec.typed_hparams()
    volume = str(getattr(hp, "volume", "max_slice"))
    check_volume_policy(volume, spec.usage)
    card = spec.manifest().get("card") or {}
    intensity = "unit"
    if card.get("dims") == 3:
        intensity = resolve_intensity(str(getattr(hp, "slice_intensity", "auto")), card.get("modality"), volume)
        if intensity != "unit":
            if isinstance(model, str):
                from fairfm.models import create_model

                model = create_model(spec.model, spec.checkpoint, trust_checkpoint=spec.trust_checkpoint,
                                     **spec.model_options)  # fmt: skip
            model = with_slice_intensity(model, intensity)
    started = time.perf_counter()
    features = extract_features(table, model, out=features_dir, checkpoint=spec.checkpoint,
                                trust_checkpoint=spec.trust_checkpoint, root=root, column=spec.image_column(),
                                progress=progress)  # fmt: skip
    timings["features_s"] = time.perf_counter() - started
    index = features.index
    meta: dict[str, Any] = {"features": {"key": features.key, "computed": int(features.computed),
                                         "dim": int(features.features.shape[1])}}  # fmt: skip
    if len(index) != len(table) or (index["slice_index"] >= 0).any():
        bags = SliceBags.from_table_rows(features.features, index["table_row"].to_numpy(), len(table))
        meta["volumes"] = volume_meta(volume, intensity, bags)
        return bags, meta
    rows = index["table_row"].to_numpy()
    matrix = np.empty((len(table), features.features.shape[1]), dtype=np.float32)
    matrix[rows] = np.asarray(features.features, dtype=np.float32)
    return matrix, meta


def _require_family(spec: "RunSpec", family: str, needs: str) -> Any:
    """The model card of ``spec.model``, which must be of ``family`` for this usage."""
    from fairfm.models import get_model

    card = get_model(spec.model)
    if card.family != family:
        raise InputError(f"model {card.name!r} is a {card.family} model: {spec.usage} needs {needs} (see 'fairfm "
                         "models list')")  # fmt: skip
    return card


def _labels(table: pd.DataFrame, tasks: list[str]) -> np.ndarray:
    return np.stack([pd.to_numeric(table[f"label_{t}"], errors="coerce").to_numpy(dtype=np.float64) for t in tasks],
                    axis=1)  # fmt: skip


@register_usage("linear_probe")
def _linear_probe(spec: "RunSpec", table: pd.DataFrame, tasks: list[str], *, root: Path, features_dir: Path,
                  device: str, progress: bool, heads_path: Path | None, timings: dict[str, float]) -> UsageOutput:
    from fairfm.adapt.linear_probe import train_linear_probe

    hp = spec.typed_hparams()
    method = None
    if spec.method is not None:
        from fairfm.mitigate.runs import run_method

        method = run_method(spec)
    model: Any = spec.model
    if spec.model_options:
        from fairfm.models import create_model

        model = create_model(spec.model, spec.checkpoint, trust_checkpoint=spec.trust_checkpoint,
                             **spec.model_options)  # fmt: skip
    features, meta = _features(spec, table, model, root=root, features_dir=features_dir, progress=progress,
                               timings=timings)  # fmt: skip
    split = table["split"].astype(str).to_numpy()
    labels = _labels(table, tasks)
    part = {name: np.flatnonzero(split == name) for name in ("train", "val", "test")}
    started = time.perf_counter()
    hooks, groups = None, None
    if method is not None and not method.post_processes:
        from fairfm.mitigate.runs import method_meta, training_setup

        if method.replaces_probe:  # e.g. fairlearn reductions: the method trains its own head on the features
            return _method_on_features(method, spec, table, tasks, features, labels, part, meta, timings, started)
        hooks, groups, attribute = training_setup(method, spec, table, tasks, "features", hp, device=device,
                                                  feature_dim=int(features.shape[1]) if hasattr(features, "shape")
                                                  else None)  # fmt: skip
    if groups is None and hp.select_by == "val_worst_group_auc":
        groups = selection_groups(spec, table)
    result = train_linear_probe(features[part["train"]], labels[part["train"]], features[part["val"]],
                                labels[part["val"]], hparams=hp, seed=spec.seed,
                                predict={"test": features[part["test"]]}, tasks=tasks, device=device,
                                progress=progress, hooks=hooks, groups=groups)  # fmt: skip
    timings["train_s"] = time.perf_counter() - started
    if hooks is not None:
        meta["method"] = method_meta(method, attribute, hooks)
    if heads_path is not None:
        result.save(heads_path)
        meta["head"] = str(heads_path)
    meta["training"] = {"best_epoch": result.best_epoch, "epochs_run": len(result.history),
                        "selected_by": hp.select_by,
                        "best_score": None if math.isnan(result.best_score) else result.best_score,
                        "optimizer": hp.optimizer, "history": result.history}  # fmt: skip
    return UsageOutput({"val": result.predictions["val"], "test": result.predictions["test"]}, meta)


def selection_groups(spec: "RunSpec", table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Group codes per split of the run's first attribute (−1: unknown): what ``select_by: val_worst_group_auc``
    reads when no training method gives the groups of its own attribute."""
    attributes = list(spec.resolve()["attributes"])
    if not attributes:
        raise InputError("hparams.select_by: val_worst_group_auc needs a sensitive attribute; the run has none")
    from fairfm.adapt.linear_probe import known_group_codes

    column = f"group_{attributes[0]}"
    codes, names = pd.factorize(table[column].astype(str), sort=True)
    codes = known_group_codes(codes, list(names))  # an unknown group is in no group (METRICS.md)
    split = table["split"].astype(str).to_numpy()
    return {name: codes[split == name] for name in ("train", "val", "test")}


def _method_on_features(method: Any, spec: "RunSpec", table: pd.DataFrame, tasks: list[str], features: Any,
                        labels: np.ndarray, part: dict[str, np.ndarray], meta: dict[str, Any],
                        timings: dict[str, float], started: float) -> UsageOutput:  # fmt: skip
    """A method that trains its own head on the cached features (fairlearn reductions) instead of the probe."""
    from fairfm.mitigate.base import group_codes
    from fairfm.mitigate.runs import group_names, method_attribute, method_meta

    if not isinstance(features, np.ndarray):
        raise InputError(f"method {method.name!r} trains on one feature vector per sample; this dataset's samples "
                         "are volumes (slice bags)")  # fmt: skip
    attribute = method_attribute(method, list(spec.resolve()["attributes"]))
    codes = group_codes(table[f"group_{attribute}"].astype(str).to_numpy(), group_names(table, attribute))
    probabilities = method.fit_features({s: features[rows] for s, rows in part.items()},
                                        {s: labels[part[s]] for s in ("train", "val")},
                                        {s: codes[rows] for s, rows in part.items()}, seed=spec.seed)  # fmt: skip
    timings["train_s"] = time.perf_counter() - started
    meta["method"] = method_meta(method, attribute)
    return UsageOutput({"val": probabilities["val"], "test": probabilities["test"]}, meta)


def usage_loop(usage: str) -> str | None:
    """The training loop a usage runs (what a method's ``needs.loops`` is matched against)."""
    if usage == "linear_probe":
        return "features"
    if usage in ("prototype", "clip_adapter"):
        return "clip_head"
    if usage in ("lora", "bitfit", "vpt", "adapter", "full_finetune"):
        return "images"
    return None


def _vision_language_inputs(spec: "RunSpec", table: pd.DataFrame, *, root: Path, features_dir: Path,
                            progress: bool, timings: dict[str, float]) -> tuple[Any, Any, Any, dict[str, Any]]:  # fmt: skip
    """What the prompt-based usages (zero-shot, prototype, CLIP-Adapter) start from: the vision-language encoder,
    its cached image features, the dataset's prompts with the spec's overrides, and the meta so far."""
    from fairfm.adapt.prompts import prompts_for
    from fairfm.models import create_model

    _require_family(spec, "vision-language", "a vision-language model")
    hp = spec.typed_hparams()
    started = time.perf_counter()
    encoder = create_model(spec.model, spec.checkpoint, trust_checkpoint=spec.trust_checkpoint, **spec.model_options)
    timings["model_s"] = time.perf_counter() - started
    features, meta = _features(spec, table, encoder, root=root, features_dir=features_dir, progress=progress,
                               timings=timings)  # fmt: skip
    prompt_set = prompts_for(spec.manifest().get("dataset")).with_overrides(hp.templates, hp.classnames)
    return encoder, features, prompt_set, meta


@register_usage("zero_shot")
def _zero_shot(spec: "RunSpec", table: pd.DataFrame, tasks: list[str], *, root: Path, features_dir: Path,
               device: str, progress: bool, heads_path: Path | None, timings: dict[str, float]) -> UsageOutput:
    from fairfm.adapt.volumes import SliceBags, max_slice_probabilities
    from fairfm.adapt.zero_shot import zero_shot

    hp = spec.typed_hparams()
    encoder, features, prompt_set, meta = _vision_language_inputs(spec, table, root=root, features_dir=features_dir,
                                                                  progress=progress, timings=timings)  # fmt: skip
    started = time.perf_counter()

    bags = features if isinstance(features, SliceBags) else None
    rows = np.array(bags.rows, dtype=np.float32) if bags is not None else features  # a copy of the read-only cache
    result = zero_shot(encoder, rows, tasks, prompt_set, ensemble=hp.ensemble, batch_size=hp.batch_size)
    # Volumes: per task, the slice with the highest P(positive) (FairMedFM's max-pooling).
    probabilities = max_slice_probabilities(bags, result.probabilities) if bags is not None else result.probabilities
    timings["zero_shot_s"] = time.perf_counter() - started
    split = table["split"].astype(str).to_numpy()
    meta["prompts"] = {task: {"negative": neg, "positive": pos} for task, (neg, pos) in result.prompts.items()}
    meta["logit_scale"] = encoder.logit_scale
    return UsageOutput({s: probabilities[split == s] for s in ("val", "test")}, meta)


@register_usage("prototype")
@register_usage("clip_adapter")
def _clip_adaptation(spec: "RunSpec", table: pd.DataFrame, tasks: list[str], *, root: Path, features_dir: Path,
                     device: str, progress: bool, heads_path: Path | None,
                     timings: dict[str, float]) -> UsageOutput:  # fmt: skip
    """Prototype tuning or CLIP-Adapter on the cached image features of a vision-language model."""
    from fairfm.adapt.clip_adaptation import clip_adapter, prototype_tuning

    hp = spec.typed_hparams()
    encoder, features, prompt_set, meta = _vision_language_inputs(spec, table, root=root, features_dir=features_dir,
                                                                  progress=progress, timings=timings)  # fmt: skip
    split = table["split"].astype(str).to_numpy()
    labels = _labels(table, tasks)
    part = {name: np.flatnonzero(split == name) for name in ("train", "val", "test")}
    train = {"prototype": prototype_tuning, "clip_adapter": clip_adapter}[spec.usage]
    groups = selection_groups(spec, table) if hp.select_by == "val_worst_group_auc" else None
    started = time.perf_counter()
    result = train({name: features[rows] for name, rows in part.items()},
                   {name: labels[part[name]] for name in ("train", "val")}, encoder, tasks, prompt_set,
                   hparams=hp, seed=spec.seed, device=device, progress=progress, groups=groups)  # fmt: skip
    timings["train_s"] = time.perf_counter() - started
    if heads_path is not None:
        result.save(heads_path)
        meta["head"] = str(heads_path)
    meta.update(result.meta)
    return UsageOutput({"val": result.probabilities["val"], "test": result.probabilities["test"]}, meta)


def _finetune(spec: "RunSpec", table: pd.DataFrame, tasks: list[str], *, root: Path, features_dir: Path,
              device: str, progress: bool, heads_path: Path | None, timings: dict[str, float]) -> UsageOutput:
    """LoRA, BitFit or full fine-tuning on the one training loop (:mod:`fairfm.adapt.train`)."""
    from fairfm.adapt.peft_usages import finetune, model_overrides
    from fairfm.models import create_model, get_model

    hp = spec.typed_hparams()
    started = time.perf_counter()
    # A fresh encoder per run: fine-tuning changes it in place.
    options = {**spec.model_options, **model_overrides(spec.usage, hp, get_model(spec.model).library)}
    encoder = create_model(spec.model, spec.checkpoint, trust_checkpoint=spec.trust_checkpoint, **options)
    timings["model_s"] = time.perf_counter() - started
    started = time.perf_counter()
    modality = (spec.manifest().get("card") or {}).get("modality")  # CT slices are windowed, others min-max'd
    method_hooks: dict[str, Any] = {}
    if spec.method is not None:
        from fairfm.mitigate.runs import run_method, training_setup

        method = run_method(spec)
        if not method.post_processes:
            hooks, _, attribute = training_setup(method, spec, table, tasks, "images", hp, device=device)
            method_hooks = {"hooks": hooks, "group_column": f"group_{attribute}"}
    group_column = {}
    if not method_hooks and hp.select_by == "val_worst_group_auc":  # the run's first attribute's groups
        attributes = list(spec.resolve()["attributes"])
        if not attributes:
            raise InputError("hparams.select_by: val_worst_group_auc needs a sensitive attribute; the run has none")
        group_column = {"group_column": f"group_{attributes[0]}"}
    out = finetune(spec.usage, hp, encoder, table, tasks, root=root, seed=spec.seed, device=device,
                   column=spec.image_column(), progress=progress, modality=modality, **method_hooks,
                   **group_column)  # fmt: skip
    timings["train_s"] = time.perf_counter() - started
    meta = dict(out.meta)
    if method_hooks:
        from fairfm.mitigate.runs import method_meta

        meta["method"] = method_meta(method, attribute, method_hooks["hooks"])
    if heads_path is not None:
        out.save(heads_path)
        meta["trained_state"] = str(heads_path)
    return UsageOutput({"val": out.probabilities["val"], "test": out.probabilities["test"]}, meta)


for _usage in ("lora", "bitfit", "vpt", "adapter", "full_finetune"):
    register_usage(_usage)(_finetune)


@register_usage("sam_prompt")
def _sam_prompt(spec: "RunSpec", table: pd.DataFrame, tasks: list[str], *, root: Path, features_dir: Path,
                device: str, progress: bool, heads_path: Path | None, timings: dict[str, float]) -> UsageOutput:
    """Promptable segmentation with prompts from the ground-truth mask (:mod:`fairfm.adapt.sam_prompting`)."""
    from fairfm.adapt.sam_prompting import dataset_structures, mask_columns, run_sam_prompting
    from fairfm.models import create_model
    from fairfm.models.base import PromptableSegmenter

    try:
        mask_columns(table)
    except InputError as exc:
        raise InputError(f"{Path(spec.dataset) / 'samples.parquet'}: {exc}") from None
    card = _require_family(spec, "segmentation", "a promptable segmentation model")
    hp = spec.typed_hparams()
    manifest = spec.manifest()
    structures = dataset_structures(manifest.get("dataset"), hp.structures, tasks, where=str(spec.dataset))
    dims = (manifest.get("card") or {}).get("dims")
    volumes = None if dims is None else int(dims) == 3  # no card (a hand-made dataset): the masks decide
    started = time.perf_counter()
    model = create_model(spec.model, spec.checkpoint, trust_checkpoint=spec.trust_checkpoint, **spec.model_options)
    if not isinstance(model, PromptableSegmenter):
        raise InputError(f"model {card.name!r} did not build a promptable segmenter")
    model.module.to(device)  # segment() follows the module's device and encodes each image once
    timings["model_s"] = time.perf_counter() - started
    # The run's kept masks go beside its other per-run files (STORE/heads/<run_id>… → STORE/masks/<run_id>.npz).
    masks_out = heads_path.parent.parent / MASKS_DIR / f"{heads_path.stem}.npz" if hp.save_masks and heads_path else None
    started = time.perf_counter()
    result = run_sam_prompting(model, table, structures, root=root, prompt=hp.prompt, n_points=hp.n_points,
                               jitter=hp.jitter, jitter_cap=hp.jitter_cap, multimask=hp.multimask, seed=spec.seed,
                               volumes=volumes, level=hp.level, masks_out=masks_out, column=spec.image_column(),
                               progress=progress)  # fmt: skip
    timings["segment_s"] = time.perf_counter() - started
    predictions = result.predictions
    if masks_out is not None:  # named relative to the store folder, so a moved store still finds its masks
        predictions["pred_mask_file"] = f"{MASKS_DIR}/{masks_out.name}"
    meta = {"sam_prompt": result.meta, "model_preprocess": model.preprocess.describe(), "segment_device": device,
            "masks": None if masks_out is None else f"{MASKS_DIR}/{masks_out.name}"}  # fmt: skip
    return UsageOutput({}, meta, predictions=predictions)
