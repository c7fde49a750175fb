"""The ClientApp: one client (hospital) trains the run's usage on its own rows with the project's training loop.

Each client is one partition of the dataset (``context.node_config["partition-id"]``). A train message carries the
global shared tensors (``arrays``) and a ``config`` (``server-round``, ``local-epochs``, ``proximal-mu``,
``local-patterns``; the contract is in :mod:`fairfm.federated.strategies`). The client builds the model exactly as
the central usage does (:func:`fairfm.adapt.peft_usages.image_model`, seeded; the method's backbone/head wrappers
from :func:`fairfm.mitigate.runs.loop_setup` on the client's own rows), loads the global tensors and its own local
ones, runs :func:`fairfm.adapt.train.fit` for the local epochs and replies with the trained shared tensors (the
last epoch's state: a round trains through, nothing is selected on validation) and its ``num-examples``,
``group-counts`` (train rows per group, in the run's sorted group order — the order of FairLoRA's S rows),
``train-loss`` and ``partition-id``.

Tensors whose names contain a ``local-patterns`` substring stay on the client: in ``context.state`` while the
node lives, and in ``<workdir>/clients/<k>/local-round-<r>.safetensors`` so that a resumed federation (a new
node process) continues from them. Every train call appends one line to ``<workdir>/clients/<k>/train-log.jsonl``
(round, rows, loss, seconds).

The model is rebuilt for every message: ClientApps are ephemeral, and a method's wrappers (FairLoRA) and peft's
injection change the model in place, so a cached model would carry one round's optimiser-free but wrapper-laden
state into the next. Building a model is small next to a local epoch at realistic sizes (see docs/federated.md).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from fairfm.errors import InputError

if TYPE_CHECKING:
    import torch

    from fairfm.mitigate.base import TrainHooks
    from fairfm.spec import RunSpec

LOCAL_ONLY = "*"


@dataclass
class FederatedJob:
    """Everything a client or the server needs to rebuild its part of a federated run (picklable: it travels to
    the simulation's worker processes inside the ClientApp)."""

    run_id: str
    run_spec: dict[str, Any]  # RunSpec fields (model_dump), rebuilt with RunSpec.from_dict in a worker
    tasks: list[str]
    attributes: list[str]
    dataset: str
    root: str
    clients: list[str]  # client names (sites), index = partition id
    client_samples: list[list[str]]  # sample ids of each client's rows (all splits)
    group_attribute: str | None  # the attribute of group-counts (the method's, else the run's first)
    group_names: list[str]  # its sorted groups over the whole run
    rounds: int
    local_epochs: int
    workdir: str  # STORE/federated/<run_id>
    device: str = "cpu"
    evaluate_every_round: bool = True
    _spec: Any = field(default=None, repr=False, compare=False)

    def spec(self) -> "RunSpec":
        if self._spec is None:
            from fairfm.spec import RunSpec

            self._spec = RunSpec.from_dict(self.run_spec, source=f"federated run {self.run_id}")
        return self._spec

    def client_dir(self, client: int) -> Path:
        return Path(self.workdir) / "clients" / str(client)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_spec"] = None
        return state


# --------------------------------------------------------------------------------------------- client rows

_TABLES: dict[tuple[str, int, int], pd.DataFrame] = {}


def full_table(job: FederatedJob) -> pd.DataFrame:
    """The run's prepared SampleTable (read once per file version and process)."""
    from fairfm.data.prepare import load_prepared

    path = Path(job.dataset) / "samples.parquet"
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _TABLES:
        _TABLES.clear()
        _TABLES[key] = load_prepared(job.dataset)[0]
    return _TABLES[key]


def client_table(job: FederatedJob, client: int) -> pd.DataFrame:
    """Client ``client``'s rows of the train, val and test splits, in the table's order."""
    table = full_table(job)
    wanted = set(job.client_samples[client])
    rows = table[table["sample_id"].astype(str).isin(wanted).to_numpy()]
    return rows[rows["split"].astype(str).isin(("train", "val", "test")).to_numpy()].reset_index(drop=True)


def group_counts(job: FederatedJob, table: pd.DataFrame) -> list[int]:
    """Train rows per group of ``job.group_attribute`` in the run's sorted group order (zeros without one)."""
    train = table[table["split"].astype(str) == "train"]
    if job.group_attribute is None:
        return [int(len(train))]
    values = train[f"group_{job.group_attribute}"].astype(str)
    return [int((values == name).sum()) for name in job.group_names]


# --------------------------------------------------------------------------------------------- the model


@dataclass
class ClientModel:
    """A client's freshly built model: the Classifier with the method's wrappers applied, the names of its
    trainable parameters, the method's hooks for :func:`fit` (wrappers removed: already applied), the loop setup
    and the encoder (its preprocessing reads the images)."""

    model: Any
    trainable: list[str]
    hooks: "TrainHooks | None"
    setup: Any
    encoder: Any
    meta: dict[str, Any]


def _hparams(spec: "RunSpec") -> Any:
    from fairfm.usages import get_usage

    return get_usage(spec.usage).typed_hparams(spec)


def build_model(job: FederatedJob, table: pd.DataFrame, device: str = "cpu") -> ClientModel:
    """The usage's model as the central run builds it, seeded from the run's seed (so every client and the server
    start from the same initial tensors), with the method's wrappers applied for ``table``'s rows."""
    from fairfm.adapt.peft_usages import model_overrides
    from fairfm.adapt.seeding import derive_seed, seeded
    from fairfm.adapt.train import _apply_model_hooks
    from fairfm.mitigate.runs import loop_setup
    from fairfm.models import create_model, get_model

    from fairfm.usages import get_usage

    spec = job.spec()
    usage = get_usage(spec.usage)
    hp = usage.typed_hparams(spec)
    options = {**spec.model_options, **model_overrides(spec.usage, hp, get_model(spec.model).library)}
    with seeded(derive_seed(spec.seed, "fl:model")):
        encoder = create_model(spec.model, spec.checkpoint, trust_checkpoint=spec.trust_checkpoint, **options)
        model, trainable, meta = usage.build_model_fn()(spec.usage, encoder, hp, job.tasks, spec.seed)
        setup = loop_setup(spec, table, job.tasks, "images", hp, device=device)
        hooks = setup.hooks
        if hooks is not None:
            # Applied once here, so the trainable names (FairLoRA's S, A, B) are known before training; fit must
            # not apply them a second time.
            trainable = _apply_model_hooks(model, hooks, trainable)
            hooks = dataclasses.replace(hooks, wrap_backbone=None, wrap_head=None)
    return ClientModel(model, list(trainable), hooks, setup, encoder, meta)


def split_names(trainable: Sequence[str], patterns: str) -> tuple[list[str], list[str]]:
    """(shared, local) trainable tensor names for the comma-separated ``local-patterns`` (``*``: all local)."""
    items = [p.strip() for p in str(patterns or "").split(",") if p.strip()]
    if LOCAL_ONLY in items:
        return [], list(trainable)
    local = [n for n in trainable if any(p in n for p in items)]
    return [n for n in trainable if n not in set(local)], local


def image_tables(job: FederatedJob, built: ClientModel, table: pd.DataFrame,
                 splits: Sequence[str]) -> dict[str, Any]:  # fmt: skip
    """ImageTables of ``splits`` of the client's rows, read with the model's preprocessing (as finetune does)."""
    from fairfm.adapt.train import ImageTable, timm_randaugment

    spec = job.spec()
    hp = _hparams(spec)
    split = table["split"].astype(str).to_numpy()
    randaugment = getattr(hp, "randaugment", None) if spec.usage == "full_finetune" else None
    augment = timm_randaugment(randaugment) if randaugment else None
    group_column = built.setup.group_column
    groups = sorted(set(table[group_column].astype(str))) if group_column else None
    return {name: ImageTable(table[split == name], job.root, built.encoder.preprocess, job.tasks,
                             group_column=group_column, augment=augment if name == "train" else None,
                             column=spec.image_column(), group_names=groups)
            for name in splits}  # fmt: skip


# --------------------------------------------------------------------------------------------- FedProx


def proximal_step(mu: float, parameters: Mapping[str, "torch.nn.Parameter"],
                  global_tensors: Mapping[str, "torch.Tensor"]) -> Callable[[Any, Callable], None]:  # fmt: skip
    """A :class:`~fairfm.mitigate.TrainHooks` ``step``: FedProx's proximal term (μ/2)·‖w − w_global‖² on the shared
    trainable tensors, added as its gradient μ(w − w_global) to the loss gradient the loop has just computed, then
    the optimiser's step. (The loop computes the loss and its gradient before calling ``step``; adding the term's
    gradient there is the same as adding the term to the loss, without a second forward pass.)"""
    import torch

    pairs = []
    for name, tensor in global_tensors.items():
        if name in parameters:
            param = parameters[name]
            pairs.append((param, tensor.detach().to(device=param.device, dtype=param.dtype)))

    def step(optimizer: Any, closure: Callable[[], Any]) -> None:
        with torch.no_grad():
            for param, anchor in pairs:
                if not param.requires_grad:
                    continue
                term = (param - anchor) * mu
                if param.grad is None:
                    param.grad = term.clone()
                else:
                    param.grad.add_(term)
        optimizer.step()

    return step


def with_proximal(hooks: "TrainHooks | None", mu: float, model: Any, global_tensors: Mapping[str, "torch.Tensor"],
                  method: str | None) -> "TrainHooks | None":  # fmt: skip
    """The method's hooks with FedProx's step added (μ > 0); a method that brings its own optimiser step (SAM) is
    refused, naming both."""
    if mu <= 0:
        return hooks
    from fairfm.mitigate.base import TrainHooks

    if hooks is not None and hooks.step is not None:
        raise InputError(f"strategy 'fedprox' adds its proximal term in the optimiser step, and method {method!r} "
                         "brings its own step (two-pass optimiser); they cannot be combined")  # fmt: skip
    step = proximal_step(mu, dict(model.named_parameters()), global_tensors)
    return TrainHooks(step=step) if hooks is None else dataclasses.replace(hooks, step=step)


# --------------------------------------------------------------------------------------------- one client


@dataclass
class ClientUpdate:
    shared: dict[str, np.ndarray]
    local: dict[str, np.ndarray]
    metrics: dict[str, Any]


def train_client(job: FederatedJob, client: int, server_round: int, global_state: Mapping[str, Any],
                 local_state: Mapping[str, Any] | None, *, local_epochs: int, mu: float = 0.0,
                 patterns: str = "") -> ClientUpdate:  # fmt: skip
    """One client's local training of one round (pure: the ClientApp and an in-process run call the same)."""
    import torch

    from fairfm.adapt.seeding import derive_seed
    from fairfm.adapt.train import fit

    started = time.perf_counter()
    spec = job.spec()
    hp = _hparams(spec)
    table = client_table(job, client)
    built = build_model(job, table, job.device)
    shared, local = split_names(built.trainable, patterns)
    initial = {k: torch.as_tensor(np.asarray(v)) for k, v in global_state.items() if k in set(shared)}
    initial.update({k: torch.as_tensor(np.asarray(v)) for k, v in (local_state or {}).items()})
    anchor = {k: v for k, v in initial.items() if k in set(shared)}  # the global model: the proximal term's centre
    hooks = with_proximal(built.hooks, float(mu), built.model, anchor, spec.method)
    parts = image_tables(job, built, table, ("train", "val"))
    result = fit(built.model, parts["train"], parts["val"], hparams=hp,
                 seed=derive_seed(spec.seed, f"fl:{server_round}:{client}"), epochs=int(local_epochs),
                 initial_state=initial, trainable=built.trainable, hooks=hooks, device=job.device,
                 description=f"client {job.clients[client]} round {server_round}")  # fmt: skip
    last = result.last_state
    out_shared = {n: last[n].float().numpy() for n in shared}
    out_local = {n: last[n].float().numpy() for n in local}
    seconds = time.perf_counter() - started
    metrics = {"num-examples": int(len(parts["train"])), "group-counts": group_counts(job, table),
               "train-loss": float(result.history[-1]["loss"]), "partition-id": int(client),
               "train-seconds": float(round(seconds, 4))}  # fmt: skip
    _append_log(job, client, {"round": int(server_round), "rows": metrics["num-examples"],
                              "loss": metrics["train-loss"], "seconds": metrics["train-seconds"]})  # fmt: skip
    if out_local:
        save_local(job, client, server_round, out_local)
    return ClientUpdate(out_shared, out_local, metrics)


def load_global(built: ClientModel, global_state: Mapping[str, Any], local_state: Mapping[str, Any] | None) -> None:
    """Load the global shared tensors and the client's local ones into a built model (non-strict subset)."""
    import torch

    from fairfm.adapt.train import load_state

    state = {k: torch.as_tensor(np.asarray(v)) for k, v in global_state.items()}
    state.update({k: torch.as_tensor(np.asarray(v)) for k, v in (local_state or {}).items()})
    unknown = [k for k in state if k not in dict(built.model.named_parameters())]
    if unknown:
        raise InputError(f"global state: {unknown[0]!r} is not a parameter of the client's model")
    load_state(built.model, state)


def predict_client(job: FederatedJob, client: int, global_state: Mapping[str, Any],
                   local_state: Mapping[str, Any] | None,
                   splits: Sequence[str] = ("val", "test")) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:  # fmt: skip
    """(the client's rows, (N, T) probabilities per split) of the global model with the client's local tensors."""
    from fairfm.adapt.train import predict

    hp = _hparams(job.spec())
    table = client_table(job, client)
    built = build_model(job, table, job.device)
    load_global(built, global_state, local_state)
    parts = image_tables(job, built, table, splits)
    probabilities = {name: predict(built.model, parts[name], batch_size=hp.batch_size, device=job.device,
                                   num_workers=hp.num_workers, amp=hp.amp, hooks=built.hooks)
                     for name in splits}  # fmt: skip
    return table, probabilities


def evaluate_client(job: FederatedJob, client: int, global_state: Mapping[str, Any],
                    local_state: Mapping[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    """The global model's validation macro AUC and size on the client's own validation rows."""
    from fairfm.adapt.selection import macro_auc

    table, probabilities = predict_client(job, client, global_state, local_state, splits=("val",))
    val = table[table["split"].astype(str) == "val"]
    labels = np.stack([pd.to_numeric(val[f"label_{t}"], errors="coerce").to_numpy(dtype=np.float64)
                       for t in job.tasks], axis=1)  # fmt: skip
    auc = macro_auc(labels, probabilities["val"])
    return {"num-examples": int(len(val)), "val-auc": float(auc) if np.isfinite(auc) else -1.0,
            "partition-id": int(client)}  # fmt: skip


# --------------------------------------------------------------------------------------------- local state


def save_local(job: FederatedJob, client: int, server_round: int, tensors: Mapping[str, np.ndarray]) -> Path:
    """Write the client's local tensors after ``server_round`` (atomically). Earlier rounds' files stay: a client
    that was not sampled in the previous round redoes a crashed round from the newest one before it."""
    from safetensors.numpy import save_file

    from fairfm.tableio import atomic_path

    folder = job.client_dir(client)
    path = folder / f"local-round-{server_round}.safetensors"
    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))
    return path


def load_local(job: FederatedJob, client: int, before_round: int) -> dict[str, np.ndarray] | None:
    """The client's newest local tensors written in a round before ``before_round`` (None if there are none)."""
    from safetensors.numpy import load_file

    files = [p for p in job.client_dir(client).glob("local-round-*.safetensors") if _round_of(p) < before_round]
    if not files:
        return None
    return dict(load_file(str(max(files, key=_round_of))))


def _round_of(path: Path) -> int:
    try:
        return int(path.name.removeprefix("local-round-").split(".")[0])
    except ValueError:
        return -1


def _append_log(job: FederatedJob, client: int, entry: Mapping[str, Any]) -> None:
    folder = job.client_dir(client)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train-log.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(dict(entry)) + "\n")


def train_log(job: FederatedJob, client: int) -> list[dict[str, Any]]:
    """The client's train calls, one entry per call (round, rows, loss, seconds)."""
    path = job.client_dir(client) / "train-log.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------- the ClientApp


def make_client_app(job: FederatedJob):
    """The Flower ClientApp of ``job`` (Message API: ``@app.train()``, ``@app.evaluate()``)."""
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    def local_state(context: Any, client: int, server_round: int) -> dict[str, np.ndarray] | None:
        record = context.state.array_records.get("local") if hasattr(context.state, "array_records") else None
        if record is None and "local" in context.state:
            record = context.state["local"]
        if record is not None and len(record):
            return {k: record[k].numpy() for k in record.keys()}
        return load_local(job, client, server_round)  # a new node process (resumed federation)

    @app.train()
    def train(msg: Any, context: Any) -> Any:
        client = int(context.node_config["partition-id"])
        config = msg.content["config"]
        server_round = int(config["server-round"])
        arrays = msg.content["arrays"]
        update = train_client(job, client, server_round, {k: arrays[k].numpy() for k in arrays.keys()},
                              local_state(context, client, server_round),
                              local_epochs=int(config["local-epochs"]) if "local-epochs" in config
                              else job.local_epochs,
                              mu=float(config["proximal-mu"]) if "proximal-mu" in config else 0.0,
                              patterns=str(config["local-patterns"]) if "local-patterns" in config else "")  # fmt: skip
        if update.local:
            context.state["local"] = _array_record(update.local)
        content = RecordDict({"arrays": _array_record(update.shared), "metrics": MetricRecord(update.metrics)})
        return Message(content=content, reply_to=msg)

    @app.query()
    def query(msg: Any, context: Any) -> Any:
        """Which partition (client) this node serves: the server maps partitions to node ids with it."""
        partition = int(context.node_config["partition-id"])
        return Message(content=RecordDict({"metrics": MetricRecord({"partition-id": partition})}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Any, context: Any) -> Any:
        client = int(context.node_config["partition-id"])
        config = msg.content["config"] if "config" in msg.content else {}
        server_round = int(config["server-round"]) if "server-round" in config else job.rounds
        arrays = msg.content["arrays"]
        metrics = evaluate_client(job, client, {k: arrays[k].numpy() for k in arrays.keys()},
                                  local_state(context, client, server_round + 1))  # fmt: skip
        return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    del train, evaluate  # registered on the app
    return app


def _array_record(tensors: Mapping[str, np.ndarray]) -> Any:
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({k: Array(np.ascontiguousarray(v, dtype=np.float32)) for k, v in tensors.items()})
