"""The ServerApp: the strategy's rounds, each one recorded and checkpointed so that a crashed federation resumes.

The round loop is the body of Flower's ``Strategy.start`` written out (``configure_train`` → ``send_and_receive`` →
``aggregate_train`` → ``configure_evaluate`` → …) because ``start`` always begins at round 1: a resumed federation
begins at the round after its checkpoint, with the same ``server-round`` numbers (client sampling, FairLoRA's EMA
β_t depend on them). After every round the global arrays, the round number, the history and the strategy's own
state (``strategy.strategy_state() -> {name: ndarray}``, restored with ``strategy.load_strategy_state(state)``, when
the strategy has them — e.g. an EMA's previous state) are written as one safetensors file, atomically:
``STORE/federated/<run_id>/global.safetensors``. A crash leaves the last completed round's file in place.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from fairfm.errors import InputError

CHECKPOINT_FILE = "global.safetensors"
_STRATEGY_PREFIX = "strategy::"


class FederationError(InputError):
    """A client failed during a round (its error reply's reason is in the message): one line from the CLI, and the
    same command resumes from the last completed round."""


@dataclass
class Checkpoint:
    """The state of a federation after ``round`` completed rounds."""

    round: int
    arrays: dict[str, np.ndarray]
    history: list[dict[str, Any]] = field(default_factory=list)
    strategy_state: dict[str, np.ndarray] = field(default_factory=dict)


class FederationCheckpoint:
    """``folder/global.safetensors``: the global arrays + ``strategy::``-prefixed strategy state, with the round
    and the history in the file's metadata (one file, so the parts never disagree)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / CHECKPOINT_FILE

    def load(self) -> Checkpoint | None:
        if not self.path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="numpy") as handle:
                metadata = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        except Exception as exc:  # noqa: BLE001 - safetensors raises several types for a damaged file
            raise InputError(f"{self.path}: damaged federation checkpoint ({str(exc).splitlines()[0]}); remove it "
                             "to start the federation again") from None  # fmt: skip
        arrays = {k: v for k, v in tensors.items() if not k.startswith(_STRATEGY_PREFIX)}
        strategy = {k[len(_STRATEGY_PREFIX):]: v for k, v in tensors.items() if k.startswith(_STRATEGY_PREFIX)}
        return Checkpoint(int(metadata.get("round", 0)), arrays, json.loads(metadata.get("history", "[]")), strategy)

    def save(self, checkpoint: Checkpoint) -> None:
        from safetensors.numpy import save_file

        from fairfm.tableio import atomic_path

        tensors = {k: np.ascontiguousarray(v) for k, v in checkpoint.arrays.items()}
        tensors.update({_STRATEGY_PREFIX + k: np.ascontiguousarray(v) for k, v in checkpoint.strategy_state.items()})
        metadata = {"round": str(checkpoint.round), "history": json.dumps(checkpoint.history)}
        with atomic_path(self.path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)


def arrays_of(record: Any) -> dict[str, np.ndarray]:
    """A Flower ArrayRecord as ``{name: ndarray}``."""
    return {key: np.asarray(record[key].numpy()) for key in record.keys()}


def array_record(arrays: Mapping[str, np.ndarray]) -> Any:
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _metrics(record: Any) -> dict[str, Any]:
    return {key: (list(value) if isinstance(value, (list, tuple)) else value) for key, value in dict(record).items()}


RoundCallback = Callable[[int, dict[str, Any]], None]


def learn_partitions(grid: Any, n_clients: int, timeout: float) -> dict[int, int]:
    """partition-id → node id of every connected client, asked once per start with a query message. Node ids are
    new in every simulation (and every deployment start), so a resumed federation must learn them again before it
    samples its clients by partition — otherwise other sites would train than in an uninterrupted run."""
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict
    from flwr.serverapp.strategy.strategy_utils import sample_nodes

    _, nodes = sample_nodes(grid, n_clients, n_clients)  # waits until every client is connected
    messages = [Message(content=RecordDict({"config": ConfigRecord({"query": "partition-id"})}), dst_node_id=node,
                        message_type=MessageType.QUERY) for node in nodes]  # fmt: skip
    replies = list(grid.send_and_receive(messages=messages, timeout=timeout))
    _raise_errors(replies, 0, "the partition query")
    return {int(r.content["metrics"]["partition-id"]): int(r.metadata.src_node_id) for r in replies}


def run_rounds(grid: Any, strategy: Any, checkpoint: FederationCheckpoint, initial: Checkpoint, *, rounds: int,
               local_epochs: int, evaluate: bool = True, on_round: RoundCallback | None = None,
               timeout: float = 3600.0) -> Checkpoint:  # fmt: skip
    """Rounds ``initial.round + 1 … rounds`` of ``strategy`` on ``grid``; a checkpoint after each (see the module
    doc). ``on_round(round, entry)`` runs after a round is recorded and before it is checkpointed (progress; a test
    makes it raise to simulate a crash in that round)."""
    from flwr.app import ConfigRecord

    state = initial
    if state.strategy_state and hasattr(strategy, "load_strategy_state"):
        strategy.load_strategy_state(state.strategy_state)
    if hasattr(strategy, "client_nodes"):
        strategy.client_nodes.update(learn_partitions(grid, int(strategy.n_clients), timeout))
    arrays = array_record(state.arrays)
    for server_round in range(state.round + 1, rounds + 1):
        started = time.perf_counter()
        train_config = ConfigRecord({"local-epochs": int(local_epochs), "proximal-mu": 0.0, "local-patterns": ""})
        messages = strategy.configure_train(server_round, arrays, train_config, grid)
        replies = list(grid.send_and_receive(messages=messages, timeout=timeout))
        _raise_errors(replies, server_round, "training")
        clients = sorted((_metrics(r.content["metrics"]) for r in replies), key=lambda m: m.get("partition-id", 0))
        aggregated, train_metrics = strategy.aggregate_train(server_round, replies)
        if aggregated is not None:
            arrays = aggregated
        train_s = time.perf_counter() - started
        entry: dict[str, Any] = {
            "round": server_round,
            "clients": [int(m.get("partition-id", -1)) for m in clients],
            "train_loss": {str(int(m.get("partition-id", -1))): float(m.get("train-loss", float("nan")))
                           for m in clients},
            "client_train_s": {str(int(m.get("partition-id", -1))): float(m.get("train-seconds", float("nan")))
                               for m in clients},
            "aggregated": _metrics(train_metrics) if train_metrics is not None else {},
            "train_round_s": round(train_s, 4),
        }  # fmt: skip
        if evaluate:
            eval_started = time.perf_counter()
            eval_config = ConfigRecord({"server-round": int(server_round)})
            messages = strategy.configure_evaluate(server_round, arrays, eval_config, grid)
            replies = list(grid.send_and_receive(messages=messages, timeout=timeout))
            _raise_errors(replies, server_round, "evaluation")
            evaluated = [_metrics(r.content["metrics"]) for r in replies]
            entry["val_auc"] = {str(int(m.get("partition-id", -1))): float(m.get("val-auc", float("nan")))
                                for m in sorted(evaluated, key=lambda m: m.get("partition-id", 0))}  # fmt: skip
            entry["evaluate_round_s"] = round(time.perf_counter() - eval_started, 4)
        history = [*state.history, entry]
        strategy_state = strategy.strategy_state() if hasattr(strategy, "strategy_state") else {}
        state = Checkpoint(server_round, arrays_of(arrays), history, dict(strategy_state or {}))
        if on_round is not None:
            on_round(server_round, entry)
        checkpoint.save(state)
    return state


def _raise_errors(replies: list[Any], server_round: int, what: str) -> None:
    failed = [r for r in replies if r.has_error()]
    if failed:
        reason = failed[0].error.reason
        raise FederationError(f"round {server_round}: {len(failed)} of {len(replies)} client(s) failed in {what}: "
                              f"{reason}")  # fmt: skip
    if not replies:
        raise FederationError(f"round {server_round}: no client replied in {what}")


def make_server_app(strategy_factory: Callable[[], Any], checkpoint: FederationCheckpoint, initial: Checkpoint, *,
                    rounds: int, local_epochs: int, evaluate: bool = True,
                    on_round: RoundCallback | None = None) -> Any:  # fmt: skip
    """The Flower ServerApp running :func:`run_rounds` (``@app.main()``)."""
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Any, context: Any) -> None:
        run_rounds(grid, strategy_factory(), checkpoint, initial, rounds=rounds, local_epochs=local_epochs,
                   evaluate=evaluate, on_round=on_round)  # fmt: skip

    del main
    return app
