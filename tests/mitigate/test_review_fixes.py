"""Review fixes of the method files (issue 10): unknown labels are no class, reference defaults, DomainInd's seed,
method checks before any work, methods without an attribute, and clipping in the head loop."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fairfm.errors import InputError
from fairfm.mitigate.base import LossInputs, TrainContext, TrainHooks, build_method
from fairfm.results import Store
from tests.adapt.helpers import make_synth, make_tiny_clip

NAN = float("nan")


def _context(groups, labels, tasks=("y",), seed=0, epochs=3) -> TrainContext:
    groups = np.asarray(groups, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.float64).reshape(groups.size, -1)
    return TrainContext(loop="features", tasks=list(tasks), attribute="g",
                        group_names=[f"g{k}" for k in range(int(groups.max()) + 1)], train_groups=groups,
                        train_labels=labels, seed=seed, epochs=epochs, batch_size=4)  # fmt: skip


# ---------------------------------------------------------------------------------- 1. unknown labels: no class


def test_resampling_draws_unlabelled_rows_at_their_natural_rate_and_balances_the_labelled_cells():
    # 100 rows: 20 without a label (10 per group); the labelled 80 form 4 group × class cells of 50/10/5/15 rows
    groups = np.array([0] * 70 + [1] * 30)
    labels = np.array([1.0] * 50 + [0.0] * 10 + [NAN] * 10 + [1.0] * 5 + [0.0] * 15 + [NAN] * 10)
    hooks = build_method("resampling", {"cells": "group_class"}).training_hooks(_context(groups, labels))
    draws = np.concatenate([hooks.rows(e) for e in range(400)])
    unknown = np.isnan(labels[draws])
    assert abs(unknown.mean() - 0.2) < 0.01  # their share of the rows, as an unweighted draw (not a class of its own)
    cells = groups[draws[~unknown]] * 2 + labels[draws[~unknown]].astype(int)
    assert np.allclose(np.bincount(cells, minlength=4) / cells.size, 0.25, atol=0.01)


def test_reweighting_gives_unlabelled_rows_weight_1_and_the_labelled_mean_weight_1():
    # cells on task y by class; row 4 has no y label but a z label: its z loss keeps weight 1
    groups = [0, 0, 0, 1, 1]
    labels = [[1, 1], [1, 0], [0, 1], [0, 0], [NAN, 1]]
    hooks = build_method("reweighting", {"cells": "class"}).training_hooks(_context(groups, labels, ("y", "z")))
    per_element = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0], [0.0, 9.0]])
    known = torch.tensor([[True, True]] * 4 + [[False, True]])
    inputs = LossInputs(torch.zeros(5, 2), torch.zeros(5, 2), torch.as_tensor(groups), torch.zeros(5, 0),
                        per_element, known, 0, torch.arange(5))  # fmt: skip
    # class 1 has 2 rows, class 0 has 2: 1/|cell| = ½ each, normalised to mean 1 over the labelled rows: all 1
    weights = np.array([1.0, 1.0, 1.0, 1.0, 1.0])
    expected = (per_element.numpy() * weights[:, None]).sum() / 9
    assert float(hooks.loss(inputs)) == pytest.approx(expected)
    # an unbalanced case by hand: classes 3 : 1 among the labelled → weights ½·(4/2)… mean 1 over labelled rows
    labels = [[1, 1], [1, 0], [1, 1], [0, 0], [NAN, 1]]
    hooks = build_method("reweighting", {"cells": "class"}).training_hooks(_context(groups, labels, ("y", "z")))
    raw = np.array([1 / 3, 1 / 3, 1 / 3, 1.0])
    weights = np.append(raw / raw.mean(), 1.0)
    expected = (per_element.numpy() * weights[:, None]).sum() / 9
    assert float(hooks.loss(inputs)) == pytest.approx(expected, rel=1e-6)


def test_balanced_by_class_leaves_unlabelled_rows_out():
    groups = np.array([0] * 10 + [1] * 10)
    labels = np.array([1.0] * 6 + [0.0] * 3 + [NAN] + [1.0] * 4 + [0.0] * 4 + [NAN] * 2)
    hooks = build_method("balanced", {"cells": "group_class"}).training_hooks(_context(groups, labels))
    kept = hooks.rows(0)
    assert hooks.meta["rows_per_cell"] == 3 and hooks.meta["rows_kept"] == 12
    assert not np.isnan(labels[kept]).any()
    # cells: group keeps every row in its group's cell, labelled or not
    hooks = build_method("balanced", {"cells": "group"}).training_hooks(_context(groups, labels))
    assert hooks.meta["rows_per_cell"] == 10 and np.isnan(labels[hooks.rows(0)]).sum() == 3


# ------------------------------------------------------------------------------------ 2. reference defaults


def test_odr_gaussian_encoders_have_the_reference_hidden_layers():
    context = _context([0, 1, 0, 1], [0, 1, 1, 0])
    hooks = build_method("odr").training_hooks(context)
    head = hooks.wrap_head(torch.nn.Linear(16, 1))
    for encoder in (head.encoder, hooks.regularizer.parts["sensitive_encoder"]):
        widths = [m.out_features for m in encoder.trunk if isinstance(m, torch.nn.Linear)]
        assert widths == [256, 128] and encoder.mean.in_features == 128


def test_lnl_offers_medfairs_sigmoid_entropy():
    from fairfm.mitigate._layers import negative_entropy

    logits = torch.tensor([[0.0, 1.0, -2.0]])
    p = 1 / (1 + np.exp(-np.array([0.0, 1.0, -2.0])))
    assert float(negative_entropy(logits, "sigmoid")) == pytest.approx(float((p * np.log(p)).sum()), rel=1e-6)
    assert build_method("lnl").params.entropy == "softmax"
    groups, labels = [0, 1, 1, 0], [0, 1, 0, 1]
    hooks = build_method("lnl", {"predictor_hidden": 4, "entropy_weight": 0.3, "entropy": "sigmoid"}).training_hooks(
        TrainContext(loop="images", tasks=["y"], attribute="g", group_names=["a", "b"],
                     train_groups=np.array(groups), train_labels=np.array(labels, float)[:, None], seed=0, epochs=1,
                     batch_size=4))  # fmt: skip
    hooks.wrap_head(torch.nn.Linear(3, 1))
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    inputs = LossInputs(torch.zeros(4, 1), torch.tensor(labels, dtype=torch.float32)[:, None], torch.tensor(groups), z,
                        torch.zeros(4, 1), torch.ones(4, 1, dtype=torch.bool), 0)  # fmt: skip
    predictor = hooks.regularizer.parts["predictor"]
    with torch.no_grad():
        q = torch.sigmoid(predictor(z)).numpy()
        bias = float(torch.nn.functional.cross_entropy(predictor(z), torch.tensor(groups)))
    expected = 0.3 * (q * np.log(q)).sum(axis=1).mean() + bias
    assert float(hooks.regularizer(inputs).detach()) == pytest.approx(expected, rel=1e-5)


def test_laftr_clips_gradients_to_5_in_the_head_loop(monkeypatch):
    from fairfm.adapt.linear_probe import train_linear_probe
    from fairfm.usages.linear_probe import LinearProbeHParams

    hooks = build_method("laftr").training_hooks(_context([0, 1] * 20, [0, 1, 1, 0] * 10))
    assert hooks.clip_grad_norm == 5.0
    real = torch.nn.utils.clip_grad_norm_
    seen = []

    def spy(parameters, max_norm, *args, **kwargs):
        parameters = list(parameters)
        out = real(parameters, max_norm, *args, **kwargs)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in parameters
                                                     if p.grad is not None]))  # fmt: skip
        seen.append((max_norm, float(out), float(norm)))
        return out

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 4)).astype(np.float32) * 100, rng.integers(0, 2, size=(40, 1)).astype(float)
    hp = LinearProbeHParams.model_validate({"epochs": 1, "batch_size": 8})
    train_linear_probe(x, y, x, y, hparams=hp, seed=0, hooks=TrainHooks(clip_grad_norm=0.01), device="cpu")
    assert len(seen) == 5 and all(m == 0.01 and n <= 0.01 * (1 + 1e-4) for m, _, n in seen)
    assert max(before for _, before, _ in seen) > 0.01  # the gradients were larger: clipping acted


# -------------------------------------------------------------------------------------- 3. DomainInd's seed


def test_domain_ind_heads_are_drawn_from_the_runs_seed_alone():
    context = _context([0, 1, 0, 1], [0, 1, 1, 0], seed=7)

    def weights(draws: int) -> torch.Tensor:
        torch.manual_seed(draws)
        torch.randn(draws + 3)  # unrelated global draws
        head = build_method("domain_ind").training_hooks(context).wrap_head(torch.nn.Linear(5, 2))
        return torch.cat([p.detach().flatten() for p in head.parameters()])

    assert torch.equal(weights(1), weights(2))
    other = build_method("domain_ind").training_hooks(_context([0, 1, 0, 1], [0, 1, 1, 0], seed=8))
    assert not torch.equal(weights(1), torch.cat([p.detach().flatten() for p in
                                                  other.wrap_head(torch.nn.Linear(5, 2)).parameters()]))


# --------------------------------------------------------------------------- 4. checks before any work (preflight)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("review")
    return make_synth(root / "synth", n=200), make_tiny_clip(root / "clip")


def _edited(data_dir: Path, where: Path, edit) -> Path:
    shutil.copytree(data_dir, where)
    table = pd.read_parquet(where / "samples.parquet")
    edit(table).to_parquet(where / "samples.parquet", index=False)
    return where


def _preflight(dataset: Path, clip: Path, tmp_path: Path, usage: str, method: str, params: dict, **hparams) -> None:
    from fairfm import runner
    from fairfm.spec import RunSpec

    spec = RunSpec.from_dict({"dataset": str(dataset), "model": "clip", "checkpoint": str(clip), "usage": usage,
                              "method": method, "method_params": params, "hparams": hparams,
                              "attributes": ["sex"], "bootstrap": 10})  # fmt: skip
    runner.preflight(spec, Store(tmp_path / "store"))


def test_preflight_refuses_what_methods_could_only_find_while_training(data, tmp_path, monkeypatch):
    synth, clip = data

    def explode(*args, **kwargs):
        raise AssertionError("the usage must not run")

    from fairfm.adapt import linear_probe as probe_module

    monkeypatch.setattr(probe_module, "train_linear_probe", explode)
    cases = [
        ("linear_probe", "swa", {"swa_start": 5}, {"epochs": 2}, r"method_params.swa_start: 5 is after the last epoch"),
        ("linear_probe", "resampling", {"task": "nope"}, {}, r"method_params.task: 'nope' is not one of the run's"),
        ("linear_probe", "laftr", {"task": "nope"}, {}, r"method_params.task: 'nope' is not one of the run's"),
    ]
    for usage, method, params, hparams, message in cases:
        with pytest.raises(InputError, match=message):
            _preflight(synth, clip, tmp_path, usage, method, params, **hparams)

    def new_val_group(table: pd.DataFrame) -> pd.DataFrame:  # a group with rows in val but none in train
        table.loc[table.index[table["split"] == "val"][0], "group_sex"] = "X"
        return table

    lonely = _edited(synth, tmp_path / "lonely", new_val_group)
    for method, part in (("domain_ind", "head"), ("fin", "mean and scale")):
        with pytest.raises(InputError, match=rf"group 'X' of 'sex' has no training rows, so its {part}"):
            _preflight(lonely, clip, tmp_path, "linear_probe", method, {})


def test_preflight_refuses_group_thresholds_without_both_classes_or_a_val_group(data, tmp_path):
    synth, clip = data
    table = pd.read_parquet(synth / "samples.parquet")
    val = table["split"] == "val"
    assert set(table.loc[val & (table["group_sex"] == "M"), "label_disease"]) == {0.0, 1.0}

    def one_class(t: pd.DataFrame) -> pd.DataFrame:
        t.loc[(t["split"] == "val") & (t["group_sex"] == "F"), "label_disease"] = 0.0
        return t

    def test_only(t: pd.DataFrame) -> pd.DataFrame:
        t.loc[t.index[t["split"] == "test"][0], "group_sex"] = "X"
        return t

    with pytest.raises(InputError, match=r"task 'disease': group 'F' has only class 0 among its validation rows"):
        _preflight(_edited(synth, tmp_path / "one", one_class), clip, tmp_path, "zero_shot", "group_thresholds", {})
    with pytest.raises(InputError, match=r"group 'X' has test rows but no labelled validation row"):
        _preflight(_edited(synth, tmp_path / "test", test_only), clip, tmp_path, "zero_shot", "group_thresholds", {})


def test_preflight_refuses_reductions_on_volumes(data, tmp_path):
    synth, clip = data
    volumes = _edited(synth, tmp_path / "volumes", lambda t: t)
    manifest = json.loads((volumes / "dataset.json").read_text())
    (volumes / "dataset.json").write_text(json.dumps({**manifest, "card": {"dims": 3}}))
    _preflight(synth, clip, tmp_path, "linear_probe", "reductions", {})  # 2D: accepted
    with pytest.raises(InputError, match=r"method 'reductions' trains on one feature vector per sample; this "
                                         r"dataset's samples are volumes"):  # fmt: skip
        _preflight(volumes, clip, tmp_path, "linear_probe", "reductions", {})


def test_preflight_refuses_a_method_whose_optional_package_is_missing(data, tmp_path, monkeypatch):
    import importlib.util

    synth, clip = data
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("geomloss", "fairlearn") else real(name, *a))
    for usage, method, package in (("linear_probe", "fis", "geomloss"), ("clip_adapter", "fairclip", "geomloss"),
                                   ("zero_shot", "group_thresholds", "fairlearn"),
                                   ("linear_probe", "reductions", "fairlearn")):  # fmt: skip
        with pytest.raises(InputError) as error:
            _preflight(synth, clip, tmp_path, usage, method, {})
        message = str(error.value)
        assert f"method {method!r} needs the package {package!r}" in message and "fairfm[models]" in message
        assert "\n" not in message


# ------------------------------------------------------------------------------ 5. methods without an attribute


@pytest.mark.parametrize("method", ["swad", "sam"])
def test_a_method_that_reads_no_attribute_trains_without_attributes(data, tmp_path, method):
    from fairfm.data.prepare import load_prepared
    from fairfm.mitigate.runs import check_method, method_attribute
    from fairfm.spec import RunSpec
    from fairfm.usages import get_usage

    synth, clip = data
    bare = _edited(synth, tmp_path / "bare", lambda t: t.drop(columns=[c for c in t.columns
                                                                       if c.startswith(("group_", "attr_"))]))
    spec = RunSpec.from_dict({"dataset": str(bare), "model": "clip", "checkpoint": str(clip),
                              "usage": "linear_probe", "method": method, "hparams": {"epochs": 2},
                              "bootstrap": 10})  # fmt: skip
    assert spec.resolve()["attributes"] == []
    table, _ = load_prepared(bare)
    output = get_usage("linear_probe").run(spec, table, ["disease"], root=bare, features_dir=tmp_path / "features",
                                           device="cpu", progress=False, heads_path=None, timings={})  # fmt: skip
    assert output.meta["method"]["name"] == method and output.meta["method"]["attribute"] is None
    assert output.probabilities["test"].shape == ((table["split"] == "test").sum(), 1)
    assert method_attribute(build_method(method), []) is None
    assert check_method(build_method(method), "features", "linear_probe", table, [], spec=spec) is None
    with pytest.raises(InputError, match="method 'resampling' needs a sensitive attribute; the run has none"):
        method_attribute(build_method("resampling"), [])
