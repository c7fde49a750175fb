"""Server-side aggregation math of the federated strategies: pure numpy (no flwr, no torch).

A *state* is ``dict[str, np.ndarray]`` named as in the model's state dict. Floating tensors come back float32
(the sums run in float64 so the order of clients does not change the result beyond float32 rounding); an
integer tensor (BatchNorm's ``num_batches_tracked``) comes back rounded to its own dtype.

FairLoRA (reference/FEDERATED.md §3): every tensor is averaged with the clients' sample counts n_k, except the
per-group singular values S (G×r, names ending in ``lora_S``), whose row g is averaged with the clients'
counts n_{k,g} of group g; optional half-shared S; then the server EMA β_t = β_max·t/T. Client sampling
follows FairFedMed: round 1 trains every client, later rounds m = max(⌊fraction·K⌋, 1) of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fairfm.adapt.seeding import derive_seed
from fairfm.errors import InputError

State = dict[str, np.ndarray]


def _check_states(states: Sequence[Mapping[str, np.ndarray]]) -> list[str]:
    """The tensor names (of the first state); InputError naming the client and tensor that differ."""
    if not states:
        raise InputError("aggregation needs at least one client state, got none")
    names = list(states[0])
    reference = {name: np.shape(states[0][name]) for name in names}
    for k, state in enumerate(states[1:], start=1):
        missing = [n for n in names if n not in state]
        extra = [n for n in state if n not in reference]
        if missing or extra:
            what = f"lacks {missing[0]!r}" if missing else f"has an extra tensor {extra[0]!r}"
            raise InputError(f"client {k}'s state {what} (client 0 sends {len(names)} tensors)")
        for name in names:
            if np.shape(state[name]) != reference[name]:
                raise InputError(f"tensor {name!r}: client {k} sends shape {tuple(np.shape(state[name]))}, "
                                 f"client 0 {tuple(reference[name])}")  # fmt: skip
    return names


def _weights(weights: Sequence[float], n_states: int, what: str) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.size != n_states:
        raise InputError(f"{what}: {w.size} values for {n_states} client states")
    if not np.all(np.isfinite(w)) or (w < 0).any():
        raise InputError(f"{what}: every value must be finite and ≥ 0, got {w.tolist()}")
    if w.sum() <= 0:
        raise InputError(f"{what}: they sum to 0 (no client has any examples)")
    return w / w.sum()


def _cast_like(value: np.ndarray, like: np.ndarray) -> np.ndarray:
    like = np.asarray(like)
    if np.issubdtype(like.dtype, np.integer) or like.dtype == np.bool_:
        return np.rint(value).astype(like.dtype)
    return np.asarray(value, dtype=np.float32)


def weighted_average(states: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> State:
    """Σ_k (w_k / Σ_j w_j)·θ_k for every tensor θ (FedAvg with w_k = n_k)."""
    names = _check_states(states)
    w = _weights(weights, len(states), "weights")
    out: State = {}
    for name in names:
        total = sum(wk * np.asarray(state[name], dtype=np.float64) for wk, state in zip(w, states))
        out[name] = _cast_like(np.asarray(total), states[0][name])
    return out


def fair_lora_average(
    states: Sequence[Mapping[str, np.ndarray]],
    sizes: Sequence[float],
    group_counts: np.ndarray | Sequence[Sequence[int]],
    *,
    previous: Mapping[str, np.ndarray] | None = None,
    s_suffix: str = "lora_S",
) -> State:
    """FairLoRA's aggregation (reference/FEDERATED.md §3, steps 1–2).

    Tensors whose name ends with ``s_suffix`` (shape G×r, one row per group in the run's group order) are
    averaged row by row: S̄_g = Σ_k (n_{k,g} / Σ_j n_{j,g})·S_{k,g}, so a client without group-g data does not
    move row g. A row no client has data for is undefined (the reference divides by zero): it keeps
    ``previous[name][g]``, or with no previous state the unweighted mean of the clients' rows (they all
    started from the same global row, so that is the global row unless a client moved it). Every other tensor
    is averaged with the clients' sizes n_k. ``group_counts``: (K, G) counts n_{k,g}.
    """
    names = _check_states(states)
    out = weighted_average(states, sizes)
    counts = np.asarray(group_counts, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != len(states):
        raise InputError(f"group_counts: expected one row of per-group counts per client ({len(states)} "
                         f"rows), got shape {counts.shape}")  # fmt: skip
    if not np.all(np.isfinite(counts)) or (counts < 0).any():
        raise InputError(f"group_counts: counts must be finite and ≥ 0, got {counts.tolist()}")
    totals = counts.sum(axis=0)
    for name in names:
        if not name.endswith(s_suffix):
            continue
        shape = np.shape(states[0][name])
        if len(shape) != 2 or shape[0] != counts.shape[1]:
            raise InputError(f"tensor {name!r}: shape {shape} is not (groups × rank) with the "
                             f"{counts.shape[1]} groups of group-counts")  # fmt: skip
        stacked = np.stack([np.asarray(state[name], dtype=np.float64) for state in states])  # (K, G, r)
        with np.errstate(invalid="ignore", divide="ignore"):
            row_weights = np.where(totals > 0, counts / np.where(totals > 0, totals, 1.0), 0.0)  # (K, G)
        merged = np.einsum("kg,kgr->gr", row_weights, stacked)
        empty = totals <= 0
        if empty.any():
            if previous is not None and name in previous:
                before = np.asarray(previous[name], dtype=np.float64)
                if before.shape != shape:
                    raise InputError(f"tensor {name!r}: previous global shape {before.shape} differs from "
                                     f"the clients' {shape}")  # fmt: skip
                merged[empty] = before[empty]
            else:
                merged[empty] = stacked[:, empty].mean(axis=0)
        out[name] = merged.astype(np.float32)
    return out


def half_shared(s: np.ndarray) -> np.ndarray:
    """S (G×r) with its first ⌊r/2⌋ columns replaced by their mean over the groups (FairLoRA's shared_half_s):
    half of the singular values are common to every group, the rest stay group-specific."""
    s = np.asarray(s)
    if s.ndim != 2:
        raise InputError(f"half_shared: S must be groups × rank, got shape {s.shape}")
    out = np.array(s, dtype=np.float32, copy=True)
    half = s.shape[1] // 2
    out[:, :half] = np.asarray(s[:, :half], dtype=np.float64).mean(axis=0, keepdims=True)
    return out


def ema_beta(server_round: int, num_rounds: int, beta_max: float = 0.999) -> float:
    """β_t = β_max·t/T with t = server_round − 1 (rounds counted from 1, as Flower does)."""
    if num_rounds < 1 or not 1 <= server_round <= num_rounds:
        raise InputError(f"server EMA: round {server_round} is outside 1..{num_rounds}")
    if not 0 <= beta_max < 1:
        raise InputError(f"server EMA: beta_max {beta_max} must lie in [0, 1)")
    return beta_max * (server_round - 1) / num_rounds


def server_ema(
    current: Mapping[str, np.ndarray],
    previous: Mapping[str, np.ndarray],
    *,
    server_round: int,
    num_rounds: int,
    beta_max: float = 0.999,
) -> State:
    """θ = (1 − β)·current + β·previous with β = :func:`ema_beta` (t = 0 → ``current`` as is). A tensor the
    previous global state lacks (nothing to smooth towards) is taken as is."""
    beta = ema_beta(server_round, num_rounds, beta_max)
    out: State = {}
    for name, value in current.items():
        value = np.asarray(value)
        if beta == 0 or name not in previous:
            out[name] = _cast_like(value, value)
            continue
        before = np.asarray(previous[name])
        if before.shape != value.shape:
            raise InputError(f"server EMA: tensor {name!r} has shape {value.shape}, the previous global "
                             f"{before.shape}")  # fmt: skip
        mixed = (1 - beta) * value.astype(np.float64) + beta * before.astype(np.float64)
        out[name] = _cast_like(mixed, value)
    return out


def sample_clients(n_clients: int, fraction: float, server_round: int, seed: int) -> list[int]:
    """The client indices (sorted) that train in ``server_round`` (from 1): all of them in round 1, later
    m = max(⌊fraction·K⌋, 1) drawn without replacement by a generator seeded from (seed, round) — the same
    clients for the same seed whatever ran before."""
    if n_clients < 1:
        raise InputError(f"n_clients {n_clients}: a federation needs at least one client")
    if not 0 < fraction <= 1:
        raise InputError(f"client fraction {fraction}: expected a value in (0, 1]")
    if server_round < 1:
        raise InputError(f"server round {server_round}: rounds count from 1")
    if server_round == 1:
        return list(range(n_clients))
    m = max(int(np.floor(fraction * n_clients + 1e-9)), 1)  # 1e-9: 0.8·5 must give 4, not 3.9999
    rng = np.random.default_rng(derive_seed(seed, f"federated:clients:round{server_round}"))
    return sorted(int(k) for k in rng.choice(n_clients, size=m, replace=False))
