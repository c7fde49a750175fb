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
                      "full_finetune")  # fmt: skip
#: Usages that train on the train split (and so need one).
TRAINED_USAGES = ("linear_probe", "prototype", "clip_adapter", "lora", "bitfit", "vpt", "adapter", "full_finetune")
FEATURES_DIR = "features"
HEADS_DIR = "heads"


@dataclass
class RunResult:
    """A stored run, whether it was computed by this call, and its metrics Report."""

    record: "RunRecord"
    computed: bool
    report: "Report | None" = None


@dataclass
class UsageOutput:
    """What a usage returns: (N, T) probabilities per split, and what to record in meta.json."""

    probabilities: dict[str, np.ndarray]
    meta: dict[str, Any]


# ----------------------------------------------------------------------------------------------------- public


def run(spec: "RunSpec", store: "Store", *, progress: bool = True) -> "RunRecord":
    """The stored run of ``spec``: found in ``store``, or computed and stored."""
    return execute(spec, store, progress=progress).record


def execute(spec: "RunSpec", store: "Store", *, progress: bool = True, want_report: bool = False) -> RunResult:
    """Like :func:`run`, also saying whether the run was computed and (``want_report``) returning its Report —
    the one computed, or for a found run the same Report rebuilt from its stored predictions (deterministic)."""
    check_supported(spec)
    found = store.find(spec)
    if found is not None:
        report = report_from_predictions(found.predictions, spec) if want_report else None
        return RunResult(found, computed=False, report=report)
    kept: dict[str, Any] = {}
    run_id = store.run_id(spec)

    def compute(resolved_spec: "RunSpec"):
        from fairfm.results import RunOutput

        predictions, report, meta = compute_run(resolved_spec, store_path=store.path, run_id=run_id,
                                                progress=progress)  # fmt: skip
        kept["report"] = report
        return RunOutput(predictions, report, meta)

    record = store.run(spec, compute)
    return RunResult(record, computed="report" in kept, report=kept.get("report"))


def check_supported(spec: "RunSpec") -> None:
    """Fail fast, before any work, for what the runner cannot do yet."""
    if spec.usage not in IMPLEMENTED_USAGES:
        raise InputError(f"usage {spec.usage!r} is not implemented yet in fairfm run (implemented: "
                         f"{', '.join(IMPLEMENTED_USAGES)}); its hyper-parameters are validated but no code trains it")
    if spec.method is not None:
        raise InputError(f"method {spec.method!r}: mitigation methods are not implemented yet in fairfm run "
                         "(leave method out)")


# ----------------------------------------------------------------------------------------------------- compute


def compute_run(spec: "RunSpec", *, store_path: Path, run_id: str | None = None,
                progress: bool = True) -> tuple[pd.DataFrame, "Report", dict[str, Any]]:  # fmt: skip
    """Compute one run: (PredictionTable without run_id, metrics Report, meta)."""
    from fairfm.data.prepare import load_prepared

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
    for name in needed:
        if not (splits == name).any():
            raise InputError(f"{dataset_dir / 'samples.parquet'}: the split has no '{name}' samples "
                             f"(the {spec.usage} usage needs {', '.join(needed)})")  # fmt: skip
    table = table[splits.isin(needed).to_numpy()].reset_index(drop=True)
    root = Path(resolved["root"]) if resolved.get("root") else dataset_dir
    device = resolve_device(spec.device)
    timings["load_s"] = time.perf_counter() - started

    usage = _USAGES[spec.usage]
    output = usage(spec, table, tasks, root=root, features_dir=Path(store_path) / FEATURES_DIR, device=device,
                   progress=progress, heads_path=Path(store_path) / HEADS_DIR / f"{run_id}.safetensors" if run_id
                   else None, timings=timings)  # fmt: skip

    started = time.perf_counter()
    split_of = table["split"].astype(str).to_numpy()
    parts = []
    for split in ("val", "test"):
        rows = np.flatnonzero(split_of == split)
        parts.append(prediction_rows(table.iloc[rows], output.probabilities[split], tasks, attributes, split))
    predictions = pd.concat(parts, ignore_index=True)
    report = report_from_predictions(predictions, spec)
    timings["metrics_s"] = time.perf_counter() - started
    meta = {
        "usage": spec.usage,
        "seeds": {"run": spec.seed, "bootstrap": spec.seed, "split": (manifest.get("split") or {}).get("seed")},
        "device": device,
        "requested_device": spec.device,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "n_samples": {s: int((split_of == s).sum()) for s in needed},
        **output.meta,
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


def report_from_predictions(predictions: pd.DataFrame, spec: "RunSpec") -> "Report":
    """The metrics Report of a PredictionTable: threshold chosen on the val rows, metrics on the test rows."""
    from fairfm.metrics import evaluate_frame
    from fairfm.metrics.report import Report

    group_columns = [c for c in predictions.columns if str(c).startswith("group_")]
    frame = predictions.rename(columns={c: c.removeprefix("group_") for c in group_columns})
    attributes = [c.removeprefix("group_") for c in group_columns]
    if not attributes:
        raise InputError("the run has no sensitive attribute (group_* column) to evaluate fairness over")

    def evaluate(rows: pd.DataFrame) -> "Report":
        return evaluate_frame(rows.reset_index(drop=True), y_true=["y_true"], y_score=["y_score"],
                              attributes=attributes, task_column="task", split_column="split", on="sample_id",
                              threshold=spec.threshold, bootstrap=spec.bootstrap, seed=spec.seed)  # fmt: skip

    tasks = list(dict.fromkeys(frame["task"].astype(str)))
    samples_per_task = {t: frozenset(frame.loc[frame["task"] == t, "sample_id"]) for t in tasks}
    if len(set(samples_per_task.values())) == 1:
        return evaluate(frame)
    # Tasks with different known-label samples cannot share one wide matrix: evaluate each task on its own rows.
    reports = [evaluate(frame[frame["task"] == t]) for t in tasks]
    merged = Report(kind="classification", tasks={}, bootstrap=reports[0].bootstrap, profile=reports[0].profile,
                    warnings=[])  # fmt: skip
    for report in reports:
        merged.tasks.update(report.tasks)
        merged.warnings.extend(report.warnings)
    return merged


# ----------------------------------------------------------------------------------------------------- usages

UsageFn = Callable[..., UsageOutput]
_USAGES: dict[str, UsageFn] = {}


def register_usage(name: str) -> Callable[[UsageFn], UsageFn]:
    def decorate(fn: UsageFn) -> UsageFn:
        _USAGES[name] = fn
        return fn

    return decorate


def _features(spec: "RunSpec", table: pd.DataFrame, model: Any, *, root: Path, features_dir: Path,
              progress: bool, timings: dict[str, float]):  # fmt: skip
    from fairfm.adapt.features import extract_features

    started = time.perf_counter()
    features = extract_features(table, model, out=features_dir, checkpoint=spec.checkpoint,
                                trust_checkpoint=spec.trust_checkpoint, root=root, progress=progress)  # fmt: skip
    timings["features_s"] = time.perf_counter() - started
    index = features.index
    if len(index) != len(table) or (index["slice_index"] >= 0).any():
        raise InputError(f"model {spec.model!r} on {spec.dataset}: the samples are volumes (several slices each); "
                         f"3D aggregation for {spec.usage} is not implemented yet in fairfm run")  # fmt: skip
    rows = index["table_row"].to_numpy()
    matrix = np.empty((len(table), features.features.shape[1]), dtype=np.float32)
    matrix[rows] = np.asarray(features.features, dtype=np.float32)
    return matrix, {"features": {"key": features.key, "computed": int(features.computed), "dim": int(matrix.shape[1])}}


def _labels(table: pd.DataFrame, tasks: list[str]) -> np.ndarray:
    return np.stack([pd.to_numeric(table[f"label_{t}"], errors="coerce").to_numpy(dtype=np.float64) for t in tasks],
                    axis=1)  # fmt: skip


@register_usage("linear_probe")
def _linear_probe(spec: "RunSpec", table: pd.DataFrame, tasks: list[str], *, root: Path, features_dir: Path,
                  device: str, progress: bool, heads_path: Path | None, timings: dict[str, float]) -> UsageOutput:
    from fairfm.adapt.linear_probe import train_linear_probe

    hp = spec.typed_hparams()
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
    result = train_linear_probe(features[part["train"]], labels[part["train"]], features[part["val"]],
                                labels[part["val"]], hparams=hp, seed=spec.seed,
                                predict={"test": features[part["test"]]}, tasks=tasks, device=device,
                                progress=progress)  # fmt: skip
    timings["train_s"] = time.perf_counter() - started
    if heads_path is not None:
        result.save(heads_path)
        meta["head"] = str(heads_path)
    meta["training"] = {"best_epoch": result.best_epoch, "epochs_run": len(result.history),
                        "selected_by": hp.select_by,
                        "best_score": None if math.isnan(result.best_score) else result.best_score,
                        "optimizer": hp.optimizer, "history": result.history}  # fmt: skip
    return UsageOutput({"val": result.predictions["val"], "test": result.predictions["test"]}, meta)


@register_usage("zero_shot")
def _zero_shot(spec: "RunSpec", table: pd.DataFrame, tasks: list[str], *, root: Path, features_dir: Path,
               device: str, progress: bool, heads_path: Path | None, timings: dict[str, float]) -> UsageOutput:
    from fairfm.adapt.prompts import prompts_for
    from fairfm.adapt.zero_shot import zero_shot
    from fairfm.models import create_model, get_model

    card = get_model(spec.model)
    if card.family != "vision-language":
        raise InputError(f"model {card.name!r} is a {card.family} model: zero-shot needs a vision-language model "
                         "(see 'fairfm models list')")  # fmt: skip
    hp = spec.typed_hparams()
    started = time.perf_counter()
    encoder = create_model(spec.model, spec.checkpoint, trust_checkpoint=spec.trust_checkpoint, **spec.model_options)
    timings["model_s"] = time.perf_counter() - started
    features, meta = _features(spec, table, encoder, root=root, features_dir=features_dir, progress=progress,
                               timings=timings)  # fmt: skip
    dataset = spec.manifest().get("dataset")
    prompt_set = prompts_for(dataset).with_overrides(hp.templates, hp.classnames)
    started = time.perf_counter()
    result = zero_shot(encoder, features, tasks, prompt_set, ensemble=hp.ensemble, batch_size=hp.batch_size)
    timings["zero_shot_s"] = time.perf_counter() - started
    split = table["split"].astype(str).to_numpy()
    meta["prompts"] = {task: {"negative": neg, "positive": pos} for task, (neg, pos) in result.prompts.items()}
    meta["logit_scale"] = encoder.logit_scale
    return UsageOutput({s: result.probabilities[split == s] for s in ("val", "test")}, meta)


@register_usage("prototype")
@register_usage("clip_adapter")
def _clip_adaptation(spec: "RunSpec", table: pd.DataFrame, tasks: list[str], *, root: Path, features_dir: Path,
                     device: str, progress: bool, heads_path: Path | None,
                     timings: dict[str, float]) -> UsageOutput:  # fmt: skip
    """Prototype tuning or CLIP-Adapter on the cached image features of a vision-language model."""
    from fairfm.adapt.clip_adaptation import clip_adapter, prototype_tuning
    from fairfm.adapt.prompts import prompts_for
    from fairfm.models import create_model, get_model

    card = get_model(spec.model)
    if card.family != "vision-language":
        raise InputError(f"model {card.name!r} is a {card.family} model: {spec.usage} needs a vision-language "
                         "model (see 'fairfm models list')")  # fmt: skip
    hp = spec.typed_hparams()
    started = time.perf_counter()
    encoder = create_model(spec.model, spec.checkpoint, trust_checkpoint=spec.trust_checkpoint, **spec.model_options)
    timings["model_s"] = time.perf_counter() - started
    features, meta = _features(spec, table, encoder, root=root, features_dir=features_dir, progress=progress,
                               timings=timings)  # fmt: skip
    prompt_set = prompts_for(spec.manifest().get("dataset")).with_overrides(hp.templates, hp.classnames)
    split = table["split"].astype(str).to_numpy()
    labels = _labels(table, tasks)
    part = {name: np.flatnonzero(split == name) for name in ("train", "val", "test")}
    train = {"prototype": prototype_tuning, "clip_adapter": clip_adapter}[spec.usage]
    started = time.perf_counter()
    result = train({name: features[rows] for name, rows in part.items()},
                   {name: labels[part[name]] for name in ("train", "val")}, encoder, tasks, prompt_set,
                   hparams=hp, seed=spec.seed, device=device, progress=progress)  # fmt: skip
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
    out = finetune(spec.usage, hp, encoder, table, tasks, root=root, seed=spec.seed, device=device,
                   progress=progress)  # fmt: skip
    timings["train_s"] = time.perf_counter() - started
    meta = dict(out.meta)
    if heads_path is not None:
        out.save(heads_path)
        meta["trained_state"] = str(heads_path)
    return UsageOutput({"val": out.probabilities["val"], "test": out.probabilities["test"]}, meta)


for _usage in ("lora", "bitfit", "vpt", "adapter", "full_finetune"):
    register_usage(_usage)(_finetune)
