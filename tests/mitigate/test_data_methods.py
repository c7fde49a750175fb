"""Data- and loss-level methods (resampling, reweighting, balanced fine-tuning, group DRO) and the method plug-in
surface: registry, spec validation, `fairfm methods`, `fairfm run --method` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fairfm.mitigate.base import LossInputs, TrainContext, build_method, list_methods
from fairfm.results import Store
from tests.conftest import run_cli
from tests.mitigate.planted import group_auc_gap, planted_features, train_probe


def _context(groups, labels=None, seed=0) -> TrainContext:
    groups = np.asarray(groups, dtype=np.int64)
    labels = np.zeros((groups.size, 1)) if labels is None else np.asarray(labels, dtype=np.float64).reshape(-1, 1)
    names = [f"g{k}" for k in range(int(groups.max()) + 1)]
    return TrainContext(loop="features", tasks=["y"], attribute="g", group_names=names, train_groups=groups,
                        train_labels=labels, seed=seed, epochs=3, batch_size=4)  # fmt: skip


def _inputs(per_sample_losses, groups, rows=None) -> LossInputs:
    per_element = torch.tensor(per_sample_losses, dtype=torch.float32)[:, None]
    known = torch.ones_like(per_element, dtype=torch.bool)
    logits = torch.zeros_like(per_element)
    rows = torch.as_tensor(rows) if rows is not None else None
    return LossInputs(logits, torch.zeros_like(per_element), torch.as_tensor(groups), torch.zeros((len(groups), 0)),
                      per_element, known, 0, rows)  # fmt: skip


def test_resampling_draws_every_group_equally_often_and_is_seeded():
    groups = np.array([0] * 90 + [1] * 10)
    hooks = build_method("resampling").training_hooks(_context(groups, seed=3))
    draws = np.concatenate([hooks.rows(epoch) for epoch in range(200)])
    assert all(len(hooks.rows(e)) == 100 for e in range(3))  # N rows per epoch, with replacement
    share_minority = np.isin(draws, np.flatnonzero(groups == 1)).mean()
    assert abs(share_minority - 0.5) < 0.02  # 1/|cell| weights: each group half the draws (90/10 without)
    again = build_method("resampling").training_hooks(_context(groups, seed=3))
    assert np.array_equal(hooks.rows(5), again.rows(5)) and not np.array_equal(hooks.rows(5), hooks.rows(6))


def test_resampling_by_group_and_class_balances_the_four_cells():
    groups = np.array([0] * 60 + [1] * 40)
    labels = np.array([1] * 50 + [0] * 10 + [1] * 5 + [0] * 35)
    hooks = build_method("resampling", {"cells": "group_class"}).training_hooks(_context(groups, labels))
    draws = np.concatenate([hooks.rows(e) for e in range(300)])
    cells = groups[draws] * 2 + labels[draws]
    shares = np.bincount(cells, minlength=4) / draws.size
    assert np.allclose(shares, 0.25, atol=0.015)


def test_reweighting_loss_is_the_inverse_cell_frequency_weighted_mean():
    groups = np.array([0, 0, 0, 1])  # weights 1/3, 1/3, 1/3, 1 → normalised to mean 1: 2/3, 2/3, 2/3, 2
    hooks = build_method("reweighting").training_hooks(_context(groups))
    losses = [1.0, 2.0, 3.0, 4.0]
    got = float(hooks.loss(_inputs(losses, groups, rows=[0, 1, 2, 3])))
    assert math.isclose(got, (2 / 3 * (1 + 2 + 3) + 2 * 4) / 4, rel_tol=1e-6)
    # rows pick the weights: the same losses on rows 3, 0 weigh 2 and 2/3
    assert math.isclose(float(hooks.loss(_inputs([1.0, 1.0], [1, 0], rows=[3, 0]))), (2 + 2 / 3) / 2, rel_tol=1e-6)


def test_balanced_keeps_one_equal_subset_for_every_epoch():
    groups = np.array([0] * 30 + [1] * 7 + [2] * 12)
    hooks = build_method("balanced").training_hooks(_context(groups, seed=1))
    epochs = [hooks.rows(e) for e in range(3)]
    assert all(np.array_equal(np.sort(epochs[0]), np.sort(rows)) for rows in epochs)  # the same subset
    assert not np.array_equal(epochs[0], epochs[1])  # shuffled per epoch
    assert np.array_equal(np.bincount(groups[epochs[0]]), [7, 7, 7]) and len(set(epochs[0])) == 21
    assert hooks.meta["rows_per_cell"] == 7


def test_group_dro_weights_follow_the_exponentiated_update():
    groups = np.array([0, 0, 1, 1])
    method = build_method("group_dro", {"step_size": 0.5, "balanced_sampler": False})
    hooks = method.training_hooks(_context(groups))
    assert hooks.rows is None
    q = np.array([0.5, 0.5])
    for losses in ([1.0, 3.0, 0.5, 0.5], [2.0, 2.0, 4.0, 0.0]):
        group_losses = np.array([np.mean(losses[:2]), np.mean(losses[2:])])
        q = q * np.exp(0.5 * group_losses)
        q = q / q.sum()
        got = float(hooks.loss(_inputs(losses, groups)))
        assert math.isclose(got, float(q @ group_losses), rel_tol=1e-5)
    # a group absent from the batch keeps its weight's share (its loss counts 0)
    got = float(hooks.loss(_inputs([1.0, 1.0], [0, 0])))
    q = q * np.exp(0.5 * np.array([1.0, 0.0]))
    q = q / q.sum()
    assert math.isclose(got, q[0] * 1.0, rel_tol=1e-5)


@pytest.mark.parametrize("name", ["resampling", "reweighting", "group_dro", "balanced"])
def test_under_representation_gap_closes(name):
    """Planted under-representation (the minority is 10% of training rows and carries its own signal): each method
    lowers the test AUC gap by more than twice the seed-to-seed spread of the improvement."""
    improvements = []
    for seed in range(3):
        splits = planted_features("under_representation", seed=seed)
        erm, _ = train_probe(splits, None, seed=seed)
        mitigated, _ = train_probe(splits, name, seed=seed)
        improvements.append(group_auc_gap(splits["test"], erm["test"])[2]
                            - group_auc_gap(splits["test"], mitigated["test"])[2])  # fmt: skip
    improvements = np.array(improvements)
    assert (improvements > 0).all() and improvements.mean() > 2 * improvements.std(), improvements


def test_every_method_is_listed_and_shown(capsys):
    code, out, _ = run_cli(capsys, "methods", "list", "--json")
    assert code == 0
    listed = {m["name"]: m for m in json.loads(out)}
    assert set(listed) == set(list_methods()) >= {"resampling", "reweighting", "balanced", "group_dro"}
    assert listed["group_dro"]["params"]["step_size"]["default"] == 0.01
    code, out, _ = run_cli(capsys, "methods", "show", "group_dro")
    assert code == 0 and "Sagawa" in out and "linear_probe" in out and "step_size = 0.01" in out
    code, _, err = run_cli(capsys, "methods", "show", "no_such_method")
    assert code == 2 and "method 'no_such_method' is not known" in err and "Traceback" not in err


def _run(capsys, store: Path, synth: Path, clip: Path, *extra: str) -> tuple[int, str, str]:
    return run_cli(capsys, "run", "--dataset", synth, "--model", "clip", "--checkpoint", clip, "--bootstrap", "10",
                   "--seed", "1", "--store", store, "--quiet", *extra)  # fmt: skip


def test_fairfm_run_with_a_method_end_to_end(capsys, tmp_path, synth_and_clip):
    synth, clip = synth_and_clip
    store = tmp_path / "store"
    probe = ("--usage", "linear_probe", "--hp", "epochs=3", "--hp", "batch_size=32", "--hp", "lr=0.05")
    code, _, err = _run(capsys, store, synth, clip, *probe, "--method", "group_dro", "--method-param", "step_size=0.1")
    assert code == 0, err
    code, _, err = _run(capsys, store, synth, clip, *probe)  # ERM: another run
    assert code == 0, err
    code, _, err = _run(capsys, store, synth, clip, "--usage", "bitfit", "--hp", "epochs=1", "--hp", "batch_size=32",
                        "--method", "reweighting", "--method-param", "cells=group_class")  # fmt: skip
    assert code == 0, err
    records = {(r.spec["usage"], r.spec["method"]): r for r in Store(store).list()}
    assert set(records) == {("linear_probe", "group_dro"), ("linear_probe", None), ("bitfit", "reweighting")}
    dro = records[("linear_probe", "group_dro")]
    assert dro.meta["method"]["name"] == "group_dro" and dro.meta["method"]["params"]["step_size"] == 0.1
    assert dro.meta["method"]["attribute"] == "sex" and dro.meta["method"]["attribute_at_test"] is False
    assert set(dro.meta["method"]["details"]["final_group_weights"]) == {"F", "M"}
    assert records[("bitfit", "reweighting")].meta["method"]["params"]["cells"] == "group_class"
    erm, dro_scores = (pd.read_parquet(records[k].path / "predictions.parquet")["y_score"].to_numpy()
                       for k in (("linear_probe", None), ("linear_probe", "group_dro")))  # fmt: skip
    assert np.abs(erm - dro_scores).max() > 1e-3  # the method changed the training
    # the same spec again is found, not recomputed; the same predictions as the stored run
    code, out, err = _run(capsys, store, synth, clip, *probe, "--method", "group_dro", "--method-param",
                          "step_size=0.1")  # fmt: skip
    assert code == 0 and len(Store(store)) == 3, err


def test_a_method_is_refused_before_any_work(capsys, tmp_path, synth_and_clip):
    synth, clip = synth_and_clip
    store = tmp_path / "store"
    for extra, message in [
        (("--usage", "zero_shot", "--method", "group_dro"), "method 'group_dro' does not serve usage 'zero_shot'"),
        (("--usage", "linear_probe", "--method", "group_dro", "--method-param", "eta=1"),
         "--method-param eta=1: unknown field"),
        (("--usage", "linear_probe", "--method", "resampling", "--method-param", "attribute=race"),
         "method_params.attribute: 'race' is not one of the run's attributes (sex, age)"),
        (("--usage", "linear_probe", "--method", "resampling", "--method-param", "cells=sex"),
         "--method-param cells=sex: 'sex' is not one of 'group', 'group_class' or 'class'"),
    ]:
        code, _, err = _run(capsys, store, synth, clip, *extra)
        assert code == 2 and message in err and "Traceback" not in err, (extra, err)
    assert not (store / "features").exists() or not any((store / "features").iterdir())
