"""The aggregation math against hand-computed values and its defining properties (hypothesis)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairfm.errors import InputError
from fairfm.federated.aggregation import (
    ema_beta,
    fair_lora_average,
    half_shared,
    sample_clients,
    server_ema,
    weighted_average,
)

SHAPES = {"blocks.0.lora_A": (3, 2), "blocks.0.lora_B": (2, 4), "head.bias": (4,)}


@st.composite
def client_states(draw, min_clients=1, max_clients=5):
    k = draw(st.integers(min_clients, max_clients))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    states = [{name: rng.normal(size=shape).astype(np.float32) for name, shape in SHAPES.items()}
              for _ in range(k)]  # fmt: skip
    weights = draw(st.lists(st.integers(1, 1000), min_size=k, max_size=k))
    return states, weights


def _close(a, b, tol=1e-5):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=tol, atol=tol, err_msg=name)


def test_weighted_average_hand_computed():
    states = [{"w": np.array([1.0, 2.0], np.float32)}, {"w": np.array([4.0, 8.0], np.float32)}]
    out = weighted_average(states, [1, 3])
    np.testing.assert_allclose(out["w"], [0.25 * 1 + 0.75 * 4, 0.25 * 2 + 0.75 * 8])
    assert out["w"].dtype == np.float32


def test_weighted_average_keeps_integer_tensors_integer():
    states = [{"bn.num_batches_tracked": np.array(10, np.int64)},
              {"bn.num_batches_tracked": np.array(21, np.int64)}]  # fmt: skip
    out = weighted_average(states, [1, 1])
    assert out["bn.num_batches_tracked"].dtype == np.int64 and int(out["bn.num_batches_tracked"]) == 16


@settings(max_examples=40)
@given(client_states())
def test_weighted_average_is_the_normalised_weighted_sum(data):
    states, weights = data
    w = np.asarray(weights, float) / sum(weights)
    expected = {n: sum(wk * s[n].astype(np.float64) for wk, s in zip(w, states)) for n in SHAPES}
    _close(weighted_average(states, weights), expected)
    # scaling every weight changes nothing (they are normalised)
    _close(weighted_average(states, [7 * x for x in weights]), expected)


@settings(max_examples=40)
@given(client_states(min_clients=2), st.randoms(use_true_random=False))
def test_weighted_average_ignores_client_order(data, rnd):
    states, weights = data
    order = list(range(len(states)))
    rnd.shuffle(order)
    permuted = weighted_average([states[i] for i in order], [weights[i] for i in order])
    _close(weighted_average(states, weights), permuted)


@settings(max_examples=40)
@given(client_states())
def test_zero_weight_client_changes_nothing_and_one_client_is_itself(data):
    states, weights = data
    rng = np.random.default_rng(0)
    outsider = {name: rng.normal(size=shape).astype(np.float32) * 100 for name, shape in SHAPES.items()}
    _close(weighted_average(states + [outsider], weights + [0]), weighted_average(states, weights))
    _close(weighted_average(states[:1], weights[:1]), states[0], tol=0)


def test_weighted_average_errors_name_tensor_and_client():
    a = {"x": np.zeros(2, np.float32), "y": np.zeros(3, np.float32)}
    with pytest.raises(InputError, match=r"tensor 'y': client 1 sends shape \(4,\)"):
        weighted_average([a, {"x": np.zeros(2), "y": np.zeros(4)}], [1, 1])
    with pytest.raises(InputError, match=r"client 1's state lacks 'y'"):
        weighted_average([a, {"x": np.zeros(2)}], [1, 1])
    with pytest.raises(InputError, match="sum to 0"):
        weighted_average([a, a], [0, 0])
    with pytest.raises(InputError, match="2 values for 1"):
        weighted_average([a], [1, 2])


def test_fair_lora_rows_by_group_counts_hand_computed():
    # 2 clients, 3 groups, rank 2; group 2 only at client 1, group 0 only at client 0.
    s0 = np.array([[1, 1], [2, 2], [9, 9]], np.float32)
    s1 = np.array([[7, 7], [4, 4], [3, 3]], np.float32)
    a0, a1 = np.full((2, 2), 1.0, np.float32), np.full((2, 2), 5.0, np.float32)
    states = [{"l.lora_A": a0, "l.fair_lora.lora_S": s0}, {"l.lora_A": a1, "l.fair_lora.lora_S": s1}]
    counts = [[10, 30, 0], [0, 10, 40]]
    out = fair_lora_average(states, [40, 50], counts)
    np.testing.assert_allclose(out["l.lora_A"], 40 / 90 * 1 + 50 / 90 * 5)
    np.testing.assert_allclose(out["l.fair_lora.lora_S"][0], [1, 1])  # only client 0 has group 0
    np.testing.assert_allclose(out["l.fair_lora.lora_S"][1], [0.75 * 2 + 0.25 * 4] * 2)
    np.testing.assert_allclose(out["l.fair_lora.lora_S"][2], [3, 3])  # only client 1 has group 2


def test_fair_lora_missing_group_keeps_previous_or_unweighted_mean():
    s0 = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    s1 = np.array([[5.0, 6.0], [7.0, 8.0]], np.float32)
    states = [{"x.lora_S": s0}, {"x.lora_S": s1}]
    counts = [[5, 0], [15, 0]]  # nobody has group 1
    previous = {"x.lora_S": np.array([[0.0, 0.0], [-1.0, -2.0]], np.float32)}
    kept = fair_lora_average(states, [5, 15], counts, previous=previous)["x.lora_S"]
    np.testing.assert_allclose(kept[0], 0.25 * s0[0] + 0.75 * s1[0])
    np.testing.assert_allclose(kept[1], [-1.0, -2.0])
    assert np.isfinite(kept).all()
    fallback = fair_lora_average(states, [5, 15], counts)["x.lora_S"]
    np.testing.assert_allclose(fallback[1], (s0[1] + s1[1]) / 2)


@settings(max_examples=30)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(1, 4), st.integers(1, 6))
def test_fair_lora_rows_equal_brute_force(seed, k, g, r):
    rng = np.random.default_rng(seed)
    states = [{"m.lora_S": rng.normal(size=(g, r)).astype(np.float32), "m.lora_B": rng.normal(size=(r, 3))}
              for _ in range(k)]  # fmt: skip
    counts = rng.integers(0, 5, size=(k, g))
    counts[:, 0] += 1  # group 0 always present somewhere
    sizes = counts.sum(axis=1)
    out = fair_lora_average(states, sizes, counts)
    for group in range(g):
        total = counts[:, group].sum()
        if total == 0:
            continue
        expected = sum(counts[j, group] / total * states[j]["m.lora_S"][group].astype(float)
                       for j in range(k))  # fmt: skip
        np.testing.assert_allclose(out["m.lora_S"][group], expected, rtol=1e-5, atol=1e-5)
    b_average = weighted_average([{"b": s["m.lora_B"]} for s in states], sizes)["b"]
    _close({"m.lora_B": out["m.lora_B"]}, {"m.lora_B": b_average})


def test_fair_lora_shape_errors():
    states = [{"x.lora_S": np.zeros((3, 2), np.float32)}]
    with pytest.raises(InputError, match="x.lora_S.*2 groups"):
        fair_lora_average(states, [1], [[1, 1]])
    with pytest.raises(InputError, match="one row of per-group counts per client"):
        fair_lora_average(states, [1], [[1, 1, 1], [1, 1, 1]])


@settings(max_examples=30)
@given(st.integers(0, 2**31 - 1), st.integers(1, 5), st.integers(1, 9))
def test_half_shared(seed, g, r):
    s = np.random.default_rng(seed).normal(size=(g, r)).astype(np.float32)
    out = half_shared(s)
    half = r // 2
    # the shared half: every group equal to the group mean; the rest untouched; the column means unchanged
    np.testing.assert_allclose(out[:, :half], np.broadcast_to(s[:, :half].mean(axis=0), (g, half)), rtol=1e-5,
                               atol=1e-6)  # fmt: skip
    np.testing.assert_array_equal(out[:, half:], s[:, half:])
    np.testing.assert_allclose(out.mean(axis=0), s.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(half_shared(out), out, rtol=1e-6, atol=1e-6)  # idempotent
    assert s is not out


def test_half_shared_hand_computed():
    s = np.array([[1.0, 2.0, 3.0, 4.0, 5.0], [3.0, 6.0, 7.0, 8.0, 9.0]], np.float32)
    np.testing.assert_allclose(half_shared(s), [[2, 4, 3, 4, 5], [2, 4, 7, 8, 9]])


def test_server_ema_values():
    current, previous = {"w": np.array([10.0], np.float32)}, {"w": np.array([0.0], np.float32)}
    np.testing.assert_array_equal(server_ema(current, previous, server_round=1, num_rounds=50)["w"], [10.0])
    beta = 0.999 * 49 / 50
    last = server_ema(current, previous, server_round=50, num_rounds=50)["w"]
    np.testing.assert_allclose(last, [(1 - beta) * 10], rtol=1e-6)
    assert ema_beta(3, 4, 0.5) == pytest.approx(0.5 * 2 / 4)
    # a tensor the previous state lacks is taken as is
    assert server_ema({"n": np.ones(2)}, {}, server_round=5, num_rounds=5)["n"].tolist() == [1, 1]
    with pytest.raises(InputError, match="round 6 is outside 1..5"):
        server_ema(current, previous, server_round=6, num_rounds=5)
    with pytest.raises(InputError, match="shape"):
        server_ema(current, {"w": np.zeros(2)}, server_round=2, num_rounds=5)


@settings(max_examples=30)
@given(st.integers(1, 12), st.floats(0.05, 1.0), st.integers(1, 30), st.integers(0, 10**6))
def test_sample_clients(k, fraction, server_round, seed):
    chosen = sample_clients(k, fraction, server_round, seed)
    assert chosen == sample_clients(k, fraction, server_round, seed)  # deterministic
    assert chosen == sorted(set(chosen)) and all(0 <= c < k for c in chosen)
    if server_round == 1:
        assert chosen == list(range(k))
    else:
        assert len(chosen) == max(int(np.floor(fraction * k + 1e-9)), 1)


def test_sample_clients_fairfedmed_and_variety():
    assert sample_clients(3, 0.8, 1, 1) == [0, 1, 2]
    draws = [tuple(sample_clients(3, 0.8, t, 1)) for t in range(2, 50)]
    assert {len(d) for d in draws} == {2}
    assert len(set(draws)) == 3  # every pair of the three sites occurs over 48 rounds
    assert sample_clients(5, 0.8, 2, 0) != sample_clients(5, 0.8, 2, 1) or \
        sample_clients(5, 0.8, 3, 0) != sample_clients(5, 0.8, 3, 1)  # the seed matters
    with pytest.raises(InputError, match="fraction"):
        sample_clients(3, 0.0, 2, 0)
