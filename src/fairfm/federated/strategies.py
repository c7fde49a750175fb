"""The federated strategies, as Flower strategies (``flwr.serverapp.strategy``, Message API).

Each one subclasses Flower's ``FedAvg`` and overrides ``configure_train`` (FairFedMed's client sampling,
seeded: :func:`fairfm.federated.aggregation.sample_clients`) and ``aggregate_train`` (the pure functions of
:mod:`fairfm.federated.aggregation`). The math lives there; here only records are unpacked and packed.

Contract with the ClientApp (binding):

- The server sends ``RecordDict({"arrays": ArrayRecord, "config": ConfigRecord})``. ``arrays`` is the global
  state; ``config`` carries ``"server-round"`` (the federated round, from 1, continued across a resume),
  ``"local-epochs"`` (int), ``"proximal-mu"`` (float; FedProx's μ, 0.0 for every other strategy) and
  ``"local-patterns"`` (comma-separated substrings: a tensor whose name contains one stays on the client and
  is never sent — ``"local_ctx"`` for FedOTP's local prompts, ``"*"`` for local-only training: nothing is
  shared; ``""`` shares every trainable tensor). These four keys belong to the strategy: it overwrites them in
  the ``train_config`` given to ``start``; any other key of that config is passed through.
- The client replies ``RecordDict({"arrays": ArrayRecord (the shared trainable tensors only; empty when
  nothing is shared), "metrics": MetricRecord({"num-examples": int, "group-counts": [int] * G, "train-loss":
  float, "partition-id": int, ...})})``. ``num-examples`` (n_k) weights the average; ``group-counts``
  (n_{k,g}, in the run's sorted group order) weights FairLoRA's S rows and is required by ``fair_lora`` only;
  ``partition-id`` (the node's ``node_config["partition-id"]``) lets the server map client indices to nodes
  (below). All values plain Python ``int``/``float`` (a MetricRecord refuses numpy scalars).
- Tensors a client sends although they match a local pattern are dropped with a warning, never averaged. A
  tensor of the global state no client sends (frozen weights, local tensors) is returned unchanged.

Client sampling: round 1 trains every client; later rounds ``sample_clients(K, fraction, round, seed)`` client
indices. Index k means the node that reported ``partition-id`` k (learnt from round 1, where every client
trains); until that is known (a resumed federation before its first reply) index k means the k-th node id in
sorted order. ``client_nodes`` can be set by the runner to fix the mapping itself.

Evaluation: Flower's federated evaluation is kept, on every client every round (``fraction_evaluate`` 1, as
FairFedMed evaluates every client every round with the global model), unless ``evaluate=False``. Per-client
train and evaluate metrics are kept in ``strategy.client_metrics`` (round → phase → partition-id → metrics),
and the aggregated MetricRecord (:func:`aggregate_client_metrics`) sums ``num-examples`` and ``group-counts``
and averages every other metric weighted by ``num-examples``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import sample_nodes, validate_message_reply_consistency
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fairfm.errors import InputError
from fairfm.federated.aggregation import (
    fair_lora_average,
    half_shared,
    sample_clients,
    server_ema,
    weighted_average,
)

log = logging.getLogger(__name__)

WEIGHT_KEY = "num-examples"
GROUP_COUNTS_KEY = "group-counts"
PARTITION_KEY = "partition-id"
#: Config keys the strategy owns (it overwrites them in the train config).
STRATEGY_CONFIG_KEYS = ("server-round", "local-epochs", "proximal-mu", "local-patterns")


# ------------------------------------------------------------------------------------------------ parameters

class StrategyParams(BaseModel):
    """Base of a strategy's parameters; unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_default=True)


class FedProxParams(StrategyParams):
    mu: float = Field(0.5, ge=0, description="proximal weight μ of the client term (μ/2)·‖w − w_global‖² "
                      "(FairFedMed: 0.5)")  # fmt: skip


class EmaParams(StrategyParams):
    ema: bool = Field(True, description="server EMA θ = (1 − β)·θ̄ + β·θ_prev, β = beta_max·t/T "
                      "(as the reference)")  # fmt: skip
    beta_max: float = Field(0.999, ge=0, lt=1, description="β at the last round's limit")


class FairLoRAParams(EmaParams):
    shared_half_s: bool = Field(True, description="the first ⌊r/2⌋ singular values shared by every group "
                                "(the reference's default)")  # fmt: skip


# ------------------------------------------------------------------------------------------------ helpers

def arrays_to_state(arrays: ArrayRecord | None) -> dict[str, np.ndarray]:
    """An ArrayRecord as ``{name: ndarray}``."""
    if arrays is None:
        return {}
    return {name: np.asarray(value.numpy()) for name, value in arrays.items()}


def state_to_arrays(state: Mapping[str, np.ndarray]) -> ArrayRecord:
    """``{name: ndarray}`` as an ArrayRecord (it refuses a plain dict of ndarrays: each becomes an
    ``Array``)."""
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in state.items()})


def parse_patterns(patterns: str) -> tuple[str, ...]:
    """``"a, b"`` → ``("a", "b")``; empty entries dropped."""
    return tuple(p.strip() for p in str(patterns).split(",") if p.strip())


def is_local(name: str, patterns: Iterable[str]) -> bool:
    """Whether tensor ``name`` stays on the client: ``"*"`` matches every name, any other pattern a
    substring."""
    return any(p == "*" or p in name for p in patterns)


def aggregate_client_metrics(records: list[RecordDict], weighted_by_key: str = WEIGHT_KEY) -> MetricRecord:
    """One MetricRecord for a round: ``num-examples`` and ``group-counts`` summed, ``partition-id`` dropped,
    every other metric (scalar or list, element-wise) averaged weighted by ``num-examples``; ``clients`` = the
    number of replies. (Flower's default would average the counts and drop ``num-examples``.)"""
    metrics = [next(iter(r.metric_records.values())) for r in records]
    raw = [m[weighted_by_key] for m in metrics]
    weights = np.array([float(v) for v in raw], dtype=np.float64)
    w = weights / weights.sum() if weights.sum() > 0 else np.full(len(metrics), 1 / max(len(metrics), 1))
    total = sum(raw) if all(isinstance(v, int) for v in raw) else float(weights.sum())
    out: dict[str, Any] = {"clients": len(metrics), weighted_by_key: total}
    keys = [k for k in metrics[0].keys() if k not in (weighted_by_key, PARTITION_KEY)] if metrics else []
    for key in keys:
        values = [m[key] for m in metrics if key in m]
        if len(values) != len(metrics):
            continue  # a metric only some clients report has no round value
        if key == GROUP_COUNTS_KEY:
            out[key] = [int(v) for v in np.sum(np.asarray(values, dtype=np.int64), axis=0)]
        elif isinstance(values[0], list):
            out[key] = [float(v) for v in np.einsum("k,kj->j", w, np.asarray(values, dtype=np.float64))]
        else:
            out[key] = float(np.dot(w, np.asarray(values, dtype=np.float64)))
    return MetricRecord(out)


# ------------------------------------------------------------------------------------------------ base class

class FederatedStrategy(FedAvg):
    """FedAvg with fairfm's seeded client sampling, local patterns, per-client metrics and the server EMA.

    Subclasses set ``local_patterns`` and override :meth:`aggregate_states`."""

    name: ClassVar[str] = ""
    params_model: ClassVar[type[StrategyParams]] = StrategyParams
    local_patterns: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""

    def __init__(self, params: StrategyParams, *, num_rounds: int, n_clients: int, fraction: float, seed: int,
                 local_epochs: int = 1, evaluate: bool = True, first_round: int = 1) -> None:  # fmt: skip
        if num_rounds < 1:
            raise InputError(f"num_rounds {num_rounds}: a federation needs at least one round")
        if n_clients < 1:
            raise InputError(f"n_clients {n_clients}: a federation needs at least one client")
        if not 0 < fraction <= 1:
            raise InputError(f"client fraction {fraction}: expected a value in (0, 1]")
        if local_epochs < 1:
            raise InputError(f"local_epochs {local_epochs}: expected at least 1")
        if not 1 <= first_round <= num_rounds:
            raise InputError(f"first_round {first_round}: expected 1..{num_rounds}")
        super().__init__(
            fraction_train=fraction, fraction_evaluate=1.0 if evaluate else 0.0, min_train_nodes=1,
            min_evaluate_nodes=n_clients if evaluate else 0, min_available_nodes=n_clients,
            weighted_by_key=WEIGHT_KEY, train_metrics_aggr_fn=aggregate_client_metrics,
            evaluate_metrics_aggr_fn=aggregate_client_metrics,
        )  # fmt: skip
        self.params = params
        self.num_rounds = int(num_rounds)
        self.n_clients = int(n_clients)
        self.fraction = float(fraction)
        self.seed = int(seed)
        self.local_epochs = int(local_epochs)
        self.first_round = int(first_round)
        #: partition-id → node id, learnt from the replies (or set by the runner).
        self.client_nodes: dict[int, int] = {}
        #: round → "train"/"evaluate" → client (partition-id, else "node-<id>") → metrics.
        self.client_metrics: dict[int, dict[str, dict[str, dict[str, Any]]]] = {}
        self._previous: dict[str, np.ndarray] = {}

    # ---- what the strategy sends

    @property
    def proximal_mu(self) -> float:
        return 0.0

    @property
    def uses_ema(self) -> bool:
        return False

    def federated_round(self, server_round: int) -> int:
        """The federated round (from 1, across a resume) of Flower's ``server_round`` of this start."""
        return server_round + self.first_round - 1

    def describe(self) -> dict[str, Any]:
        """What to record in the run."""
        return {"strategy": self.name, "params": self.params.model_dump(), "num_rounds": self.num_rounds,
                "n_clients": self.n_clients, "fraction": self.fraction, "seed": self.seed,
                "local_epochs": self.local_epochs, "local_patterns": list(self.local_patterns),
                "evaluate_every_round": self.fraction_evaluate > 0}  # fmt: skip

    def _ordered_nodes(self, nodes: list[int]) -> list[int]:
        known = [self.client_nodes.get(k) for k in range(self.n_clients)]
        if all(node in nodes for node in known):
            return [int(node) for node in known]  # type: ignore[arg-type]
        return sorted(int(n) for n in nodes)

    def plan_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                   grid: Any) -> tuple[RecordDict, list[int]]:  # fmt: skip
        """The record every selected node receives and the selected node ids (what ``configure_train``
        sends)."""
        self._previous = arrays_to_state(arrays)
        federated_round = self.federated_round(server_round)
        _, nodes = sample_nodes(grid, self.n_clients, self.n_clients)  # waits until every client is connected
        nodes = list(nodes)
        if len(nodes) != self.n_clients:
            raise InputError(f"the federation has {len(nodes)} connected nodes, the run expects "
                             f"{self.n_clients} clients")  # fmt: skip
        ordered = self._ordered_nodes(nodes)
        indices = sample_clients(self.n_clients, self.fraction, federated_round, self.seed)
        chosen = [ordered[k] for k in indices]
        log.info("round %d: training clients %s of %d", federated_round, chosen, self.n_clients)
        sent = ConfigRecord(dict(config.items()))
        sent["server-round"] = federated_round
        sent["local-epochs"] = self.local_epochs
        sent["proximal-mu"] = float(self.proximal_mu)
        sent["local-patterns"] = ",".join(self.local_patterns)
        return RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: sent}), chosen

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Any) -> Any:
        if self.fraction_train == 0.0:
            return []
        record, nodes = self.plan_train(server_round, arrays, config, grid)
        return self._construct_messages(record, nodes, MessageType.TRAIN)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Any) -> Any:  # fmt: skip
        config = ConfigRecord(dict(config.items()))
        # a local-only client evaluates its own model, a FedOTP client its own local prompts
        config["local-patterns"] = ",".join(self.local_patterns)
        return super().configure_evaluate(self.federated_round(server_round), arrays, config, grid)

    # ---- what the strategy receives

    def _valid_contents(self, replies: Iterable[Any], phase: str, server_round: int) -> list[RecordDict]:
        valid = []
        for msg in replies:
            if msg.has_error():
                reason = getattr(getattr(msg, "error", None), "reason", "?")
                log.warning("%s: a client replied with an error (%s); it is left out of this round", phase,
                            reason)  # fmt: skip
            else:
                valid.append(msg)
        if valid:
            validate_message_reply_consistency([m.content for m in valid], self.weighted_by_key,
                                               check_arrayrecord=phase == "train")  # fmt: skip
        per_round = self.client_metrics.setdefault(self.federated_round(server_round), {})
        round_metrics = per_round.setdefault(phase, {})
        for msg in valid:
            metrics = dict(next(iter(msg.content.metric_records.values())).items())
            node = getattr(getattr(msg, "metadata", None), "src_node_id", None)
            partition = metrics.get(PARTITION_KEY)
            if partition is not None and node is not None:
                self.client_nodes[int(partition)] = int(node)
            round_metrics[str(partition) if partition is not None else f"node-{node}"] = metrics
        return [m.content for m in valid]

    def _shared_state(self, content: RecordDict) -> dict[str, np.ndarray]:
        state = {}
        for name, value in arrays_to_state(next(iter(content.array_records.values()))).items():
            if is_local(name, self.local_patterns):
                log.warning("tensor %r matches a local pattern of %s (%s) but was sent; it is not averaged",
                            name, self.name, ",".join(self.local_patterns))  # fmt: skip
                continue
            state[name] = value
        return state

    def aggregate_states(self, states: list[dict[str, np.ndarray]], sizes: list[float],
                         metrics: list[Mapping[str, Any]]) -> dict[str, np.ndarray]:  # fmt: skip
        """The aggregated shared tensors of one round (before the server EMA). Default: FedAvg."""
        return weighted_average(states, sizes)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Any]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        contents = self._valid_contents(list(replies), "train", server_round)
        if not contents:
            return None, None
        metrics = [dict(next(iter(c.metric_records.values())).items()) for c in contents]
        states = [self._shared_state(c) for c in contents]
        sizes = [float(m[self.weighted_by_key]) for m in metrics]
        merged = self.aggregate_states(states, sizes, metrics) if any(states) else {}
        if self.uses_ema and merged:
            beta_max = float(self.params.beta_max)  # type: ignore[attr-defined]
            merged = server_ema(merged, self._previous, server_round=self.federated_round(server_round),
                                num_rounds=self.num_rounds, beta_max=beta_max)  # fmt: skip
        new_global = {**self._previous, **merged}
        self._previous = new_global
        return state_to_arrays(new_global), self.train_metrics_aggr_fn(contents, self.weighted_by_key)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Any]) -> MetricRecord | None:
        contents = self._valid_contents(list(replies), "evaluate", server_round)
        return self.evaluate_metrics_aggr_fn(contents, self.weighted_by_key) if contents else None


# ------------------------------------------------------------------------------------------------ registry

STRATEGIES: dict[str, type[FederatedStrategy]] = {}


def register_strategy(name: str) -> Callable[[type[FederatedStrategy]], type[FederatedStrategy]]:
    """Class decorator: register a :class:`FederatedStrategy` subclass under ``name``."""

    def decorate(cls: type[FederatedStrategy]) -> type[FederatedStrategy]:
        if name in STRATEGIES and STRATEGIES[name] is not cls:
            raise ValueError(f"strategy {name!r} registered twice")
        cls.name = name
        STRATEGIES[name] = cls
        return cls

    return decorate


def list_strategies() -> list[str]:
    return sorted(STRATEGIES)


def validate_params(name: str, params: Mapping[str, Any] | None) -> StrategyParams:
    """The validated parameters of strategy ``name``; InputError naming an unknown key (and the allowed ones)
    or a bad value."""
    if name not in STRATEGIES:
        raise InputError(f"strategy {name!r} is not known; known strategies: {', '.join(list_strategies())}")
    model = STRATEGIES[name].params_model
    params = dict(params or {})
    allowed = list(model.model_fields)
    unknown = [key for key in params if key not in allowed]
    if unknown:
        raise InputError(f"strategy {name!r}: unknown parameter {unknown[0]!r}; allowed: "
                         f"{', '.join(allowed) or 'none'}")  # fmt: skip
    try:
        return model.model_validate(params)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(f"strategy {name!r}: parameter {where!r} = {first.get('input')!r}: "
                         f"{first['msg']}") from None


def make_strategy(name: str, *, params: Mapping[str, Any] | None, num_rounds: int, n_clients: int,
                  fraction: float, seed: int, local_epochs: int = 1, evaluate: bool = True,
                  first_round: int = 1) -> FederatedStrategy:  # fmt: skip
    """The strategy ``name`` with validated ``params``, for ``num_rounds`` federated rounds over ``n_clients``
    clients of which ``fraction`` train after round 1 (sampled from ``seed``). ``first_round`` > 1 continues a
    resumed federation (Flower's round 1 of this start is that federated round: sampling and EMA go on)."""
    validated = validate_params(name, params)
    return STRATEGIES[name](validated, num_rounds=num_rounds, n_clients=n_clients, fraction=fraction,
                            seed=seed, local_epochs=local_epochs, evaluate=evaluate,
                            first_round=first_round)  # fmt: skip


# ------------------------------------------------------------------------------------------- the strategies

@register_strategy("local")
class LocalOnly(FederatedStrategy):
    description = "no aggregation: each client trains and keeps its own model; the global state never changes"
    local_patterns = ("*",)

    def aggregate_states(self, states, sizes, metrics):  # noqa: ANN001 — nothing is shared
        return {}


@register_strategy("fedavg")
class FedAvgStrategy(FederatedStrategy):
    description = "FedAvg (McMahan et al. 2017): the shared trainable tensors averaged weighted by n_k"


@register_strategy("fedprox")
class FedProxStrategy(FederatedStrategy):
    description = "FedProx (Li et al. 2020): FedAvg; the client adds (μ/2)·‖w − w_global‖² to its loss"
    params_model = FedProxParams

    @property
    def proximal_mu(self) -> float:
        return float(self.params.mu)  # type: ignore[attr-defined]


class _EmaStrategy(FederatedStrategy):
    params_model = EmaParams
    # FairFedMed trains its LoRA variants on FedOTP's prompt learner: its local prompts stay local here too
    local_patterns = ("local_ctx",)

    @property
    def uses_ema(self) -> bool:
        return bool(self.params.ema)  # type: ignore[attr-defined]


@register_strategy("lora")
class LoRAStrategy(_EmaStrategy):
    description = ("plain LoRA: FedAvg of the LoRA tensors (and any other shared trainable tensor), then the server "
                   "EMA, as the reference runs its LoRA baseline (average_weights_EMA)")  # fmt: skip


@register_strategy("sv_lora")
class SVLoRAStrategy(_EmaStrategy):
    description = ("SVLoRA: LoRA with one shared row of singular values S; FedAvg of A, B and S, then the "
                   "server EMA")  # fmt: skip


@register_strategy("fair_lora")
class FairLoRAStrategy(_EmaStrategy):
    description = ("FairLoRA (FairFedMed): A, B by n_k, each group's row of S by that group's counts "
                   "n_{k,g}, optional half-shared S, then the server EMA")  # fmt: skip
    params_model = FairLoRAParams
    s_suffix: ClassVar[str] = "lora_S"

    def aggregate_states(self, states, sizes, metrics):  # noqa: ANN001
        counts = []
        for k, m in enumerate(metrics):
            if GROUP_COUNTS_KEY not in m:
                partition = m.get(PARTITION_KEY, "?")
                raise InputError(f"fair_lora: client reply {k} (partition-id {partition}) has no "
                                 f"{GROUP_COUNTS_KEY!r} metric; FairLoRA weights S rows by per-group counts")
            counts.append([int(v) for v in m[GROUP_COUNTS_KEY]])
        if len({len(c) for c in counts}) > 1:
            lengths = [len(c) for c in counts]
            raise InputError(f"fair_lora: clients report group-counts of different lengths {lengths}")
        merged = fair_lora_average(states, sizes, np.asarray(counts), previous=self._previous,
                                   s_suffix=self.s_suffix)  # fmt: skip
        if self.params.shared_half_s:  # type: ignore[attr-defined]
            merged = {n: half_shared(v) if n.endswith(self.s_suffix) else v for n, v in merged.items()}
        return merged


@register_strategy("prompt_fl")
class PromptFLStrategy(FederatedStrategy):
    description = "PromptFL (Guo et al.): CLIP frozen; FedAvg of the CoOp prompt context vectors"


@register_strategy("fedotp")
class FedOTPStrategy(FederatedStrategy):
    description = ("FedOTP (Li et al. 2024): FedAvg of the global prompts; the local prompts (names "
                   "containing 'local_ctx') stay on each client")  # fmt: skip
    local_patterns = ("local_ctx",)
