"""The Flower strategies with stand-in replies and grid (real Messages cannot be built outside a run):
sampling, the config they send, and that aggregate_train does the math of fairfm.federated.aggregation.
No Ray."""

import os
from types import SimpleNamespace

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from flwr.app import ConfigRecord, MetricRecord, RecordDict  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

from fairfm.errors import InputError  # noqa: E402
from fairfm.federated.aggregation import (  # noqa: E402
    fair_lora_average,
    half_shared,
    sample_clients,
    server_ema,
    weighted_average,
)
from fairfm.federated.strategies import (  # noqa: E402
    arrays_to_state,
    list_strategies,
    make_strategy,
    state_to_arrays,
)

NODES = [9001, 17, 4242]  # Flower's node ids are arbitrary integers


class Grid:
    def __init__(self, nodes=NODES):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return list(self.nodes)


class Reply:
    """What aggregate_train reads of a Message: ``.content``, ``.has_error()``, ``.metadata.src_node_id``."""

    def __init__(self, arrays=None, metrics=None, node=None, error=None):
        self.metadata = SimpleNamespace(src_node_id=node)
        self.error = SimpleNamespace(reason=error) if error else None
        if error is None:
            self.content = RecordDict({"arrays": state_to_arrays(arrays), "metrics": MetricRecord(metrics)})

    def has_error(self):
        return self.error is not None


def rng_state(seed, shapes):
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()}


def build(name, params=None, **kwargs):
    settings = dict(num_rounds=10, n_clients=3, fraction=0.8, seed=1)
    settings.update(kwargs)
    return make_strategy(name, params=params or {}, **settings)


def start_round(strategy, global_state, server_round=1, grid=None):
    record, nodes = strategy.plan_train(server_round, state_to_arrays(global_state),
                                        ConfigRecord({"lr": 0.01}), grid or Grid())  # fmt: skip
    return record, nodes


def test_registry_and_params():
    assert list_strategies() == ["fair_lora", "fedavg", "fedotp", "fedprox", "local", "lora", "prompt_fl",
                                 "sv_lora"]  # fmt: skip
    with pytest.raises(InputError, match=r"unknown parameter 'sharedhalf_s'; allowed: ema, beta_max, "
                                         r"shared_half_s"):  # fmt: skip
        build("fair_lora", {"sharedhalf_s": False})
    with pytest.raises(InputError, match="strategy 'fedavg': unknown parameter 'mu'; allowed: none"):
        build("fedavg", {"mu": 0.1})
    with pytest.raises(InputError, match="parameter 'mu' = -1"):
        build("fedprox", {"mu": -1})
    with pytest.raises(InputError, match="strategy 'scaffold' is not known; known strategies: fair_lora"):
        build("scaffold")
    # YAML-ish strings parse as booleans properly (the reference's argparse type=bool made "False" True)
    assert build("fair_lora", {"shared_half_s": "False"}).params.shared_half_s is False
    assert build("fedprox").params.mu == 0.5


def test_round_one_trains_every_client_and_sends_the_contract_config():
    strategy = build("fedprox", {"mu": 0.25}, local_epochs=2)
    record, nodes = start_round(strategy, {"w": np.zeros(2, np.float32)})
    assert nodes == sorted(NODES)
    config = record["config"]
    assert config["server-round"] == 1 and config["local-epochs"] == 2 and config["proximal-mu"] == 0.25
    assert config["local-patterns"] == "" and config["lr"] == 0.01
    assert arrays_to_state(record["arrays"]).keys() == {"w"}
    plain, _ = build("fedavg").plan_train(1, state_to_arrays({}), ConfigRecord(), Grid())
    assert plain["config"]["proximal-mu"] == 0
    assert start_round(build("fedotp"), {})[0]["config"]["local-patterns"] == "local_ctx"
    assert start_round(build("local"), {})[0]["config"]["local-patterns"] == "*"


def test_later_rounds_sample_by_partition_id_seeded():
    strategy = build("fedavg", fraction=0.8, seed=7)
    start_round(strategy, {"w": np.zeros(1, np.float32)})
    # partition ids are not in node-id order: client k must mean the node that reported partition-id k
    partition_of = {4242: 0, 9001: 1, 17: 2}
    replies = [Reply({"w": np.ones(1, np.float32)}, {"num-examples": 5, "partition-id": p}, node=n)
               for n, p in partition_of.items()]  # fmt: skip
    strategy.aggregate_train(1, replies)
    assert strategy.client_nodes == {0: 4242, 1: 9001, 2: 17}
    node_of = {p: n for n, p in partition_of.items()}
    for server_round in range(2, 8):
        _, nodes = start_round(strategy, {"w": np.zeros(1, np.float32)}, server_round)
        assert nodes == [node_of[k] for k in sample_clients(3, 0.8, server_round, 7)]
        assert len(nodes) == 2
    # deterministic: a fresh strategy with the same seed picks the same clients (before it knows partition
    # ids: the sorted node ids)
    fresh = build("fedavg", fraction=0.8, seed=7)
    assert start_round(fresh, {}, 3)[1] == [sorted(NODES)[k] for k in sample_clients(3, 0.8, 3, 7)]


def test_configure_train_builds_one_message_per_selected_node(monkeypatch):
    strategy = build("fedavg", fraction=0.5)
    sent = []
    def construct(record, nodes, kind):
        sent.append((record, nodes, kind))
        return nodes

    monkeypatch.setattr(strategy, "_construct_messages", construct)
    out = strategy.configure_train(2, state_to_arrays({"w": np.zeros(1, np.float32)}), ConfigRecord(), Grid())
    assert len(out) == 1 and sent[0][2] == "train" and sent[0][0]["config"]["server-round"] == 2


def test_resumed_federation_continues_rounds():
    strategy = build("sv_lora", num_rounds=10, first_round=4)
    record, nodes = start_round(strategy, {"w": np.zeros(1, np.float32)}, server_round=1)
    assert record["config"]["server-round"] == 4
    assert nodes == [sorted(NODES)[k] for k in sample_clients(3, 0.8, 4, 1)]


def test_fedavg_equals_flower_fedavg_and_weighted_average():
    shapes = {"blocks.0.attn.qkv.lora_A.weight": (4, 3), "blocks.0.attn.qkv.lora_B.weight": (3, 4),
              "head.w": (2,)}  # fmt: skip
    states = [rng_state(s, shapes) for s in range(3)]
    sizes = [12, 30, 7]
    replies = [Reply(st, {"num-examples": n, "train-loss": float(i), "partition-id": i}, node=NODES[i])
               for i, (st, n) in enumerate(zip(states, sizes))]  # fmt: skip
    for name in ("fedavg", "fedprox", "lora", "prompt_fl"):
        strategy = build(name)
        start_round(strategy, rng_state(99, shapes))
        arrays, metrics = strategy.aggregate_train(1, replies)
        ours = arrays_to_state(arrays)
        flower, _ = FedAvg().aggregate_train(1, replies)
        expected = weighted_average(states, sizes)
        for tensor in shapes:
            np.testing.assert_allclose(ours[tensor], arrays_to_state(flower)[tensor], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(ours[tensor], expected[tensor], rtol=1e-6)
        assert metrics["num-examples"] == 49 and metrics["clients"] == 3
        assert metrics["train-loss"] == pytest.approx((0 * 12 + 1 * 30 + 2 * 7) / 49)


def test_tensors_no_client_sends_stay_and_error_replies_are_left_out():
    strategy = build("fedavg")
    frozen = np.arange(4, dtype=np.float32)
    start_round(strategy, {"w": np.zeros(2, np.float32), "backbone.frozen": frozen})
    replies = [Reply({"w": np.full(2, 2.0, np.float32)}, {"num-examples": 1, "partition-id": 0}, node=17),
               Reply({"w": np.full(2, 4.0, np.float32)}, {"num-examples": 3, "partition-id": 1}, node=4242),
               Reply(node=9001, error="client crashed")]  # fmt: skip
    arrays, metrics = strategy.aggregate_train(1, replies)
    out = arrays_to_state(arrays)
    np.testing.assert_allclose(out["w"], [3.5, 3.5])
    np.testing.assert_array_equal(out["backbone.frozen"], frozen)
    assert metrics["clients"] == 2
    assert set(strategy.client_metrics[1]["train"]) == {"0", "1"}
    assert strategy.aggregate_train(2, [Reply(node=17, error="boom")]) == (None, None)


def test_fedotp_never_averages_local_prompts():
    strategy = build("fedotp")
    previous = {"prompt.global_ctx": np.zeros((2, 4), np.float32),
                "prompt.local_ctx": np.full((2, 4), -1.0, np.float32)}  # fmt: skip
    start_round(strategy, previous)
    replies = [Reply({"prompt.global_ctx": np.full((2, 4), 1.0, np.float32),
                      "prompt.local_ctx": np.full((2, 4), 100.0, np.float32)}, {"num-examples": 1}, node=17),
               Reply({"prompt.global_ctx": np.full((2, 4), 3.0, np.float32),
                      "prompt.local_ctx": np.full((2, 4), 200.0, np.float32)}, {"num-examples": 1},
                     node=4242)]  # fmt: skip
    out = arrays_to_state(strategy.aggregate_train(1, replies)[0])
    np.testing.assert_allclose(out["prompt.global_ctx"], 2.0)
    np.testing.assert_array_equal(out["prompt.local_ctx"], previous["prompt.local_ctx"])


def test_local_only_returns_the_previous_global_state():
    strategy = build("local")
    previous = {"lora_A": np.ones((2, 2), np.float32)}
    start_round(strategy, previous)
    replies = [Reply({}, {"num-examples": 4, "train-loss": 0.5}, node=17),
               Reply({}, {"num-examples": 6, "train-loss": 1.0}, node=4242)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    np.testing.assert_array_equal(arrays_to_state(arrays)["lora_A"], previous["lora_A"])
    assert metrics["train-loss"] == pytest.approx(0.8)
    # even a client that (wrongly) sends its tensors does not move the global state
    leaked = [Reply({"lora_A": np.full((2, 2), 9.0, np.float32)}, {"num-examples": 1}, node=17)]
    after_leak = arrays_to_state(strategy.aggregate_train(2, leaked)[0])
    np.testing.assert_array_equal(after_leak["lora_A"], previous["lora_A"])


def fair_lora_round(params, server_round=2, num_rounds=10):
    shapes = {"blocks.0.attn.qkv.lora_A": (6, 4), "blocks.0.attn.qkv.lora_B": (4, 6),
              "blocks.0.attn.qkv.fair_lora.lora_S": (3, 4)}  # fmt: skip
    states = [rng_state(s, shapes) for s in range(2)]
    previous = rng_state(50, shapes)
    counts = [[10, 0, 5], [2, 0, 20]]  # group 1: nobody this round
    sizes = [sum(c) for c in counts]
    strategy = build("fair_lora", params, num_rounds=num_rounds, n_clients=2, fraction=1.0)
    start_round(strategy, previous, server_round, grid=Grid([17, 4242]))
    replies = [Reply(st, {"num-examples": n, "group-counts": c, "train-loss": 0.1}, node=node)
               for st, n, c, node in zip(states, sizes, counts, [17, 4242])]  # fmt: skip
    arrays, metrics = strategy.aggregate_train(server_round, replies)
    return arrays_to_state(arrays), metrics, states, previous, counts, sizes


def test_fair_lora_rows_by_counts_without_half_sharing_or_ema():
    out, metrics, states, previous, counts, sizes = fair_lora_round({"shared_half_s": False, "ema": False})
    s_name = "blocks.0.attn.qkv.fair_lora.lora_S"
    s = [st[s_name] for st in states]
    np.testing.assert_allclose(out[s_name][0], 10 / 12 * s[0][0] + 2 / 12 * s[1][0], rtol=1e-5)
    np.testing.assert_allclose(out[s_name][1], previous[s_name][1])  # no client has group 1: kept
    np.testing.assert_allclose(out[s_name][2], 5 / 25 * s[0][2] + 20 / 25 * s[1][2], rtol=1e-5)
    a_name = "blocks.0.attn.qkv.lora_A"
    np.testing.assert_allclose(out[a_name], (15 * states[0][a_name] + 22 * states[1][a_name]) / 37, rtol=1e-5)
    assert metrics["group-counts"] == [12, 0, 25] and metrics["num-examples"] == 37


def test_fair_lora_default_is_half_shared_then_ema():
    server_round, num_rounds = 3, 10
    out, _, states, previous, counts, sizes = fair_lora_round({}, server_round, num_rounds)
    merged = fair_lora_average(states, sizes, counts, previous=previous)
    merged = {n: half_shared(v) if n.endswith("lora_S") else v for n, v in merged.items()}
    expected = server_ema(merged, previous, server_round=server_round, num_rounds=num_rounds)
    for name in expected:
        np.testing.assert_allclose(out[name], expected[name], rtol=1e-5, atol=1e-6)
    # the EMA really moved the result towards the previous state (β = 0.999·2/10)
    beta = 0.999 * 2 / 10
    a = "blocks.0.attn.qkv.lora_A"
    np.testing.assert_allclose(out[a], (1 - beta) * merged[a] + beta * previous[a], rtol=1e-5, atol=1e-6)
    assert not np.allclose(out[a], merged[a])


def test_fair_lora_needs_group_counts():
    strategy = build("fair_lora", n_clients=2, fraction=1.0)
    start_round(strategy, {"x.lora_S": np.zeros((2, 2), np.float32)}, grid=Grid([1, 2]))
    replies = [Reply({"x.lora_S": np.ones((2, 2), np.float32)}, {"num-examples": 3, "partition-id": k},
                     node=k + 1) for k in range(2)]  # fmt: skip
    with pytest.raises(InputError, match="no 'group-counts' metric"):
        strategy.aggregate_train(1, replies)


def test_sv_lora_applies_the_server_ema_unless_off():
    previous = {"l.lora_S": np.zeros((1, 4), np.float32)}
    replies = [Reply({"l.lora_S": np.ones((1, 4), np.float32)}, {"num-examples": 2}, node=n) for n in NODES]
    with_ema = build("sv_lora", num_rounds=5)
    start_round(with_ema, previous, 5)
    np.testing.assert_allclose(arrays_to_state(with_ema.aggregate_train(5, replies)[0])["l.lora_S"],
                               1 - 0.999 * 4 / 5, rtol=1e-6)  # fmt: skip
    first = build("sv_lora", num_rounds=5)
    start_round(first, previous, 1)
    round_one = arrays_to_state(first.aggregate_train(1, replies)[0])
    np.testing.assert_allclose(round_one["l.lora_S"], 1.0)  # t = 0: no smoothing
    off = build("sv_lora", {"ema": False}, num_rounds=5)
    start_round(off, previous, 5)
    np.testing.assert_allclose(arrays_to_state(off.aggregate_train(5, replies)[0])["l.lora_S"], 1.0)


def test_evaluate_aggregates_weighted_and_keeps_per_client_metrics():
    strategy = build("fedavg")
    replies = [Reply({}, {"num-examples": 10, "auc": 0.6, "group-auc": [0.5, 0.7], "partition-id": 0},
                     node=17),
               Reply({}, {"num-examples": 30, "auc": 0.8, "group-auc": [0.9, 0.7], "partition-id": 1},
                     node=4242)]  # fmt: skip
    metrics = strategy.aggregate_evaluate(2, replies)
    assert metrics["auc"] == pytest.approx(0.75) and metrics["group-auc"] == pytest.approx([0.8, 0.7])
    assert metrics["num-examples"] == 40 and isinstance(metrics["num-examples"], int)
    assert "partition-id" not in metrics
    assert strategy.client_metrics[2]["evaluate"]["1"]["auc"] == pytest.approx(0.8)
    assert build("fedavg", evaluate=False).fraction_evaluate == 0.0
