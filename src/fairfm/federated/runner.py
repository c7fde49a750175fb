"""``run_federated(spec, store)``: partition, check, simulate on Flower, predict, and store one run.

```python
from fairfm.federated.spec import FederatedSpec
from fairfm.federated.runner import run_federated
record = run_federated(FederatedSpec.from_yaml("fl.yaml"), Store("fairfm_runs"))
```

1. The rows become clients (the dataset's ``site`` column, or a seeded Dirichlet partition:
   :func:`fairfm.federated.partition.assign_clients`).
2. Everything is checked before Ray starts: every client has train, val and test rows with both classes of every
   task, every group of the method's attribute (FairLoRA's S rows are the run's groups), the model and checkpoint
   load, the strategy and its parameters are known, the store takes a write.
3. :func:`flwr.simulation.run_simulation` runs the ServerApp (:mod:`fairfm.federated.server`, checkpoint per round
   under ``STORE/federated/<run_id>/``) and one ClientApp per client (:mod:`fairfm.federated.client`), offline,
   telemetry and update checks off. A federation whose checkpoint is further along resumes after its last
   completed round; a complete one is not simulated again.
4. Every client's val and test rows are predicted with the final global model (+ that client's local tensors)
   in this process; ONE run is stored (:meth:`fairfm.results.Store.run_derived`, ``usage: federated``,
   ``local_usage``): a PredictionTable with a ``site`` column (the client) beside the ``group_*`` columns, the
   **pooled** MetricTable (:func:`fairfm.runner.report_from_predictions`), and in meta.json the
   **client-averaged** FairFedMed view (profile ``fairfedmed``, every metric per site and the mean), the
   **per-client** reports (AUC, ES-AUC, EOD, DPD, group AUCs with intervals), the partition, strategy, rounds and
   the per-round history.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd

from fairfm.errors import InputError
from fairfm.federated.client import FederatedJob, build_model, client_table, load_local, predict_client
from fairfm.federated.server import Checkpoint, FederationCheckpoint, RoundCallback, make_server_app
from fairfm.federated.spec import FederatedSpec

if TYPE_CHECKING:
    from fairfm.results import RunRecord, Store

FEDERATED_DIR = "federated"
#: the environment of an offline simulation (Flower telemetry and version check, Ray usage stats off)
OFFLINE_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "RAY_USAGE_STATS_ENABLED": "0",
               "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}  # fmt: skip
#: headline metrics kept per client and client-averaged in meta.json
HEADLINE = ("auc", "es_auc", "eod", "dpd", "auc_gap")


# ------------------------------------------------------------------------------------------------ partition


def partition(fspec: FederatedSpec, table: pd.DataFrame) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """(client names, client index per row, description) of the run's rows
    (:func:`fairfm.federated.partition.assign_clients`)."""
    from fairfm.federated.partition import assign_clients

    clients = fspec.federated.clients
    attribute = clients.attribute
    if clients.by == "dirichlet_group" and attribute is None:
        attribute = (fspec.run.attributes or [None])[0]
    seed = fspec.run.seed if clients.seed is None else clients.seed
    result = assign_clients(table, by=clients.by, n_clients=clients.n_clients, alpha=clients.alpha, seed=seed,
                            task=clients.task, attribute=attribute)  # fmt: skip
    return list(result.clients), np.asarray(result.assignment), dict(result.description)


# ------------------------------------------------------------------------------------------------ strategy


def strategy_factory(fspec: FederatedSpec, n_clients: int) -> Callable[[], Any]:
    """A function building the spec's strategy (called once here to validate it, once in the ServerApp)."""
    from fairfm.federated.strategies import make_strategy

    block = fspec.federated
    fraction = fspec.fraction_for(n_clients)

    def build() -> Any:
        return make_strategy(block.strategy, params=dict(block.strategy_params), num_rounds=int(block.rounds),
                             n_clients=n_clients, fraction=fraction, seed=fspec.run.seed,
                             local_epochs=int(block.local_epochs),
                             evaluate=bool(block.evaluate_every_round))  # fmt: skip

    build()  # unknown strategy or parameters: refused now, before Ray
    return build


# ------------------------------------------------------------------------------------------------ identity


def run_document(fspec: FederatedSpec, n_clients: int) -> dict[str, Any]:
    """The stored run's spec.json: the resolved run spec with ``usage: federated``, the client's usage as
    ``local_usage`` and the resolved federated block."""
    from fairfm.spec import canonical

    resolved = dict(fspec.run.resolve())
    resolved["local_usage"] = resolved["usage"]
    resolved["usage"] = "federated"
    resolved["federated"] = fspec.resolved_block(n_clients)
    return canonical(resolved)


def federated_run_id(document: dict[str, Any]) -> str:
    """Hash of the document + data version + weights + results versions (the local usage's and "federated")."""
    from fairfm.results.runid import compute_run_id, data_version, weights_version
    from fairfm.results.versions import run_components

    results = run_components(document["local_usage"], document.get("method"))
    results.update(run_components("federated", document.get("method")))
    return compute_run_id(document, data_version(document["dataset"]), weights_version(document.get("checkpoint")),
                          results)  # fmt: skip


# ------------------------------------------------------------------------------------------------ checks


def check_clients(fspec: FederatedSpec, table: pd.DataFrame, clients: list[str], assignment: np.ndarray,
                  tasks: list[str], attributes: list[str]) -> str | None:  # fmt: skip
    """Refuse a partition a client cannot train or be evaluated on; returns the group-counts attribute."""
    from fairfm.mitigate.runs import check_method, group_names, method_attribute, run_method
    from fairfm.usages import get_usage

    method = run_method(fspec.run)
    attribute = method_attribute(method, attributes) if method is not None else None
    group_attribute = attribute or (attributes[0] if attributes else None)
    run_groups = group_names(table, group_attribute) if group_attribute else []
    split = table["split"].astype(str).to_numpy() if "split" in table.columns else None
    if split is None:
        raise InputError("the dataset has no 'split' column — prepare it with a split")
    for k, name in enumerate(clients):
        rows = table[(assignment == k) & np.isin(split, ("train", "val", "test"))]
        where = f"client {name!r}"
        for part in ("train", "val", "test"):
            part_rows = rows[rows["split"].astype(str) == part]
            if part_rows.empty:
                raise InputError(f"{where} has no {part} rows (every client trains, is validated and tested)")
            for task in tasks:
                known = pd.to_numeric(part_rows[f"label_{task}"], errors="coerce").dropna()
                if known.nunique() < 2:
                    raise InputError(f"{where}: task {task!r} has {'no labels' if known.empty else 'one class'} in "
                                     f"its {part} rows; every client needs both classes (AUC, training)")
        if attribute is not None:
            present = set(rows[f"group_{attribute}"].astype(str))
            missing = [g for g in run_groups if g not in present]
            if missing:
                raise InputError(f"{where} has no row of group {missing[0]!r} of {attribute!r}; method "
                                 f"{fspec.run.method!r} keeps one set of parameters per group of the run, in the "
                                 "run's group order, so every client needs every group")  # fmt: skip
        if method is not None:
            check_method(method, get_usage(fspec.run.usage).loop, fspec.run.usage, rows.reset_index(drop=True),
                         attributes, spec=fspec.run)  # fmt: skip
    return group_attribute


def _check_images_2d(job: FederatedJob) -> None:
    from fairfm.adapt.volumes import first_row_is_volume

    table = client_table(job, 0)
    if first_row_is_volume(table[table["split"].astype(str) == "train"], job.root, job.spec().image_column()):
        raise InputError("federated runs read 2D images; this dataset's samples are volumes (not supported yet)")


# ------------------------------------------------------------------------------------------------ running


@dataclass
class FederationPlan:
    """A checked federation, before anything runs: its job, stored document and run id, the partition, and the
    strategy's factory."""

    job: FederatedJob
    document: dict[str, Any]
    run_id: str
    clients: list[str]
    description: dict[str, Any]
    build_strategy: Callable[[], Any] | None
    manifest: dict[str, Any]


def plan_federation(fspec: FederatedSpec, store: "Store") -> FederationPlan:
    """Partition and check everything a federation can be refused for (see the module doc, step 2); for a run
    already stored only the partition is made (``build_strategy`` None)."""
    from fairfm.data.prepare import load_prepared
    from fairfm.mitigate.runs import group_names
    from fairfm.models import check_model
    from fairfm.runner import check_model_family, resolve_device

    run = fspec.run
    resolved = run.resolve()
    table, manifest = load_prepared(resolved["dataset"])
    tasks, attributes = list(resolved["tasks"]), list(resolved["attributes"])
    clients, assignment, description = partition(fspec, table)
    if len(clients) < 2:
        raise InputError(f"the partition has {len(clients)} client(s); a federation needs at least two")
    document = run_document(fspec, len(clients))
    run_id = federated_run_id(document)
    sample_ids = table["sample_id"].astype(str).to_numpy()
    root = resolved.get("root") or resolved["dataset"]
    job = FederatedJob(run_id=run_id, run_spec=run.model_dump(mode="json"), tasks=tasks, attributes=attributes,
                       dataset=str(resolved["dataset"]), root=str(root), clients=list(clients),
                       client_samples=[sample_ids[assignment == k].tolist() for k in range(len(clients))],
                       group_attribute=None, group_names=[],
                       rounds=int(fspec.federated.rounds), local_epochs=int(fspec.federated.local_epochs),
                       workdir=str(Path(store.path) / FEDERATED_DIR / run_id), device="cpu",
                       evaluate_every_round=bool(fspec.federated.evaluate_every_round))  # fmt: skip
    if store.exists(run_id):
        return FederationPlan(job, document, run_id, list(clients), description, None, manifest)
    check_model_family(run)
    check_model(run.model, run.checkpoint, trust_checkpoint=run.trust_checkpoint, **run.model_options)
    job.group_attribute = check_clients(fspec, table, clients, assignment, tasks, attributes)
    job.group_names = group_names(table, job.group_attribute) if job.group_attribute else []
    job.device = resolve_device(run.device)
    build_strategy = strategy_factory(fspec, len(clients))
    check_strategy_fits(fspec, job, build_strategy())
    store.check_writable()
    _check_images_2d(job)
    return FederationPlan(job, document, run_id, list(clients), description, build_strategy, manifest)


#: strategy → (what it aggregates needs, a check of the run spec): a strategy that found nothing of its kind to
#: aggregate would silently be FedAvg under another name in the stored run.
def _strategy_needs(run: Any) -> dict[str, tuple[str, bool]]:
    from fairfm.usages import get_usage

    params = run.method_params or {}
    shared = params.get("singular_values", "per_group") == "shared"
    local_prompts = int(getattr(get_usage(run.usage).typed_hparams(run), "local_prompts", 0) or 0)
    return {
        "fair_lora": ("method fair_lora with per-group singular values", run.method == "fair_lora" and not shared),
        "sv_lora": ("method fair_lora with singular_values: shared (SVLoRA)", run.method == "fair_lora" and shared),
        "lora": ("usage lora (its LoRA tensors are what the strategy averages)", run.usage == "lora"),
        "prompt_fl": ("usage coop without local prompts", run.usage == "coop" and local_prompts == 0),
        "fedotp": ("usage coop with local_prompts ≥ 1 (FedOTP's local prompts)",
                   run.usage == "coop" and local_prompts >= 1),
    }  # fmt: skip


def check_strategy_fits(fspec: FederatedSpec, job: FederatedJob, strategy: Any) -> None:
    """Refuse, before Ray starts, a strategy whose tensors the run does not train, and FedProx with a method that
    brings its own optimiser step (the proximal term is added in the step)."""
    run = fspec.run
    needs = _strategy_needs(run).get(fspec.federated.strategy)
    if needs is not None and not needs[1]:
        raise InputError(f"federated.strategy {fspec.federated.strategy!r} needs {needs[0]}; the run has usage "
                         f"{run.usage!r} and method {run.method!r}")  # fmt: skip
    if float(getattr(strategy, "proximal_mu", 0.0)) > 0 and run.method is not None:
        from fairfm.federated.client import with_proximal

        built = build_model(job, federation_rows(job))
        with_proximal(built.hooks, float(strategy.proximal_mu), built.model, {}, run.method)


def run_federated(fspec: FederatedSpec, store: "Store", *, progress: bool = True,
                  on_round: RoundCallback | None = None) -> "RunRecord":  # fmt: skip
    """The stored run of ``fspec``: found in ``store``, or federated, predicted and stored (see the module doc).
    ``on_round(round, entry)`` is called after every round (progress)."""
    started = time.perf_counter()
    plan = plan_federation(fspec, store)
    if plan.build_strategy is None:
        return store.load(plan.run_id)
    run, job, clients, description, manifest = fspec.run, plan.job, plan.clients, plan.description, plan.manifest
    run_id, document, build_strategy = plan.run_id, plan.document, plan.build_strategy
    timings: dict[str, float] = {"prepare_s": time.perf_counter() - started}

    checkpoint = FederationCheckpoint(job.workdir)
    state = checkpoint.load()
    resumed_from = state.round if state is not None else 0
    if state is None:
        state = Checkpoint(0, initial_arrays(job))
    if state.round < job.rounds:
        started = time.perf_counter()
        simulate(job, build_strategy, checkpoint, state, on_round=on_round, progress=progress)
        timings["simulation_s"] = time.perf_counter() - started
        state = checkpoint.load()
        if state is None or state.round < job.rounds:
            raise InputError(f"the federation stopped after round {0 if state is None else state.round} of "
                             f"{job.rounds}; run the same command again to resume from there")  # fmt: skip

    def compute():
        from fairfm.metrics.stored import report_extras
        from fairfm.runner import report_from_predictions

        predict_started = time.perf_counter()
        predictions = federated_predictions(job, state.arrays)
        timings["predict_s"] = time.perf_counter() - predict_started
        metrics_started = time.perf_counter()
        report = report_from_predictions(predictions, run, progress=progress)
        method = _method_meta(job)
        if method is not None and method.get("attribute_at_test"):
            report.warnings.append(f"method {method['name']!r} reads the sensitive attribute at test time "
                                   "(attribute-aware inference)")  # fmt: skip
        views = client_views(predictions, run, job)
        timings["metrics_s"] = time.perf_counter() - metrics_started
        meta = {
            "usage": "federated",
            "local_usage": run.usage,
            "seeds": {"run": run.seed, "bootstrap": run.seed, "split": (manifest.get("split") or {}).get("seed")},
            "device": job.device,
            "federated": {
                "strategy": fspec.federated.strategy, "strategy_params": dict(fspec.federated.strategy_params),
                "rounds": job.rounds, "local_epochs": job.local_epochs, "fraction": fspec.fraction_for(len(clients)),
                "clients": list(clients), "partition": description, "profile": fspec.federated.profile,
                "defaults_applied": dict(fspec.defaults_applied), "resumed_from_round": resumed_from,
                "history": state.history, "attribute_aware": bool((method or {}).get("attribute_at_test", False)),
                "group_counts_attribute": job.group_attribute, "engine": "flwr.simulation.run_simulation",
            },
            "client_averaged": views["client_averaged"],
            "per_client": views["per_client"],
            "n_samples": {s: int((predictions["split"] == s).sum()) for s in ("val", "test")},
            "timings": {k: round(v, 3) for k, v in timings.items()},
            "report": report_extras(report),
        }  # fmt: skip
        if method is not None:
            meta["method"] = method
        return predictions, report, meta

    return store.run_derived(run_id, document, compute)


def federation_rows(job: FederatedJob) -> pd.DataFrame:
    """Every client's train, val and test rows of the dataset (what the global model is built for)."""
    from fairfm.federated.client import full_table

    table = full_table(job)
    wanted = {s for ids in job.client_samples for s in ids}
    rows = table[table["sample_id"].astype(str).isin(wanted).to_numpy()].reset_index(drop=True)
    return rows[rows["split"].astype(str).isin(("train", "val", "test")).to_numpy()]


def initial_arrays(job: FederatedJob) -> dict[str, np.ndarray]:
    """The global model's trainable tensors before round 1: the model every client builds, seeded from the run's
    seed, with the method's wrappers applied for the run's rows."""
    built = build_model(job, federation_rows(job))
    params = dict(built.model.named_parameters())
    return {name: params[name].detach().cpu().float().numpy().copy() for name in built.trainable}


def simulate(job: FederatedJob, build_strategy: Callable[[], Any], checkpoint: FederationCheckpoint,
             state: Checkpoint, *, on_round: RoundCallback | None = None, progress: bool = True) -> None:  # fmt: skip
    """Flower's simulation engine on this machine (Ray, one CPU per ClientApp), offline."""
    import logging

    # Offline switches for this simulation only (Ray's workers inherit them); the caller's environment is restored.
    saved_env = {key: os.environ.get(key) for key in (*OFFLINE_ENV, "PYTHONPATH")}
    os.environ.update(OFFLINE_ENV)
    from flwr.simulation import run_simulation

    from fairfm.federated.client import make_client_app

    server_app = make_server_app(build_strategy, checkpoint, state, rounds=job.rounds, local_epochs=job.local_epochs,
                                 evaluate=job.evaluate_every_round, on_round=on_round)  # fmt: skip
    cpus = max(1, min(len(job.clients), os.cpu_count() or 1))
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": cpus, "include_dashboard": False, "address": "local",
                             "logging_level": logging.ERROR, "log_to_driver": bool(progress)}}  # fmt: skip
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if not progress:
        flwr_logger.setLevel(logging.WARNING)
    try:
        run_simulation(server_app=server_app, client_app=make_client_app(job), num_supernodes=len(job.clients),
                       backend_config=backend)  # fmt: skip
    finally:
        flwr_logger.setLevel(level)
        for key, value in saved_env.items():  # Flower's Ray backend also rewrites PYTHONPATH for its workers
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ------------------------------------------------------------------------------------------------ results


def federated_predictions(job: FederatedJob, global_arrays: dict[str, np.ndarray]) -> pd.DataFrame:
    """Every client's val and test rows predicted with the global model and its local tensors, with ``site``."""
    from fairfm.runner import prediction_rows

    parts = []
    for k, name in enumerate(job.clients):
        table, probabilities = predict_client(job, k, global_arrays, load_local(job, k, job.rounds + 1))
        split = table["split"].astype(str).to_numpy()
        for part in ("val", "test"):
            rows = prediction_rows(table[split == part], probabilities[part], job.tasks, job.attributes, part)
            rows["site"] = name
            parts.append(rows)
    return pd.concat(parts, ignore_index=True)


def _method_meta(job: FederatedJob) -> dict[str, Any] | None:
    from fairfm.mitigate.runs import method_attribute, method_meta, run_method

    method = run_method(job.spec())
    return None if method is None else method_meta(method, method_attribute(method, job.attributes))


def headline(report: Any) -> dict[str, Any]:
    """Per task: overall AUC and, per attribute, ES-AUC, EOD, DPD, AUC gap and the group AUCs, each as
    ``{"value", "ci"}`` (None where not computed)."""

    def estimate(e: Any) -> dict[str, Any] | None:
        if e is None:
            return None
        clean = lambda v: None if v is None or not math.isfinite(float(v)) else float(v)  # noqa: E731
        return {"value": clean(e.value), "ci": [clean(e.ci_low), clean(e.ci_high)]}

    out: dict[str, Any] = {}
    for task, result in report.tasks.items():
        entry: dict[str, Any] = {"n": int(result.n), "auc": estimate(result.overall.get("auc")), "attributes": {}}
        for name, attribute in result.attributes.items():
            entry["attributes"][name] = {
                **{metric: estimate(attribute.summary.get(metric)) for metric in HEADLINE if metric != "auc"},
                "group_auc": {g: estimate(m.get("auc")) for g, m in attribute.group_metrics.items()},
            }
        out[task] = entry
    return out


def client_views(predictions: pd.DataFrame, spec: Any, job: FederatedJob) -> dict[str, Any]:
    """The client-averaged FairFedMed report (every metric per site, then the mean) and one report per client
    (FairFedMed's profile: threshold 0.5), as :func:`headline` dictionaries."""
    from fairfm.metrics import evaluate_frame

    frame = predictions.rename(columns={f"group_{a}": a for a in job.attributes})

    def evaluate(rows: pd.DataFrame, sites: bool) -> Any:
        return evaluate_frame(rows.reset_index(drop=True), y_true=["y_true"], y_score=["y_score"],
                              attributes=list(job.attributes), task_column="task", split_column="split",
                              on="sample_id", profile="fairfedmed", bootstrap=spec.bootstrap, seed=spec.seed,
                              site_column="site" if sites else None)  # fmt: skip

    averaged = evaluate(frame, True)
    per_client = {}
    for name in job.clients:
        try:
            per_client[name] = headline(evaluate(frame[frame["site"] == name], False))
        except InputError as exc:  # e.g. a client whose test rows hold one group only: say so, keep the rest
            per_client[name] = {"error": str(exc)}
    return {"client_averaged": {"profile": "fairfedmed", "metrics": headline(averaged),
                                "clients": averaged.clients}, "per_client": per_client}  # fmt: skip
