"""Model selection on validation: over epochs (select_by val_worst_group_auc) and over stored runs (fairfm select)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from fairfm.adapt.selection import ModelSelection, worst_group_auc
from fairfm.errors import InputError
from fairfm.results import Store
from tests.conftest import run_cli


# ------------------------------------------------------------------------------------------------ over epochs


def test_worst_group_auc_is_the_mean_over_tasks_of_the_lowest_valid_group_auc():
    rng = np.random.default_rng(0)
    n = 300
    groups = rng.integers(0, 3, size=n)
    y = (rng.random((n, 2)) < 0.5).astype(np.float64)
    y[rng.random((n, 2)) < 0.1] = np.nan
    y[(groups == 2), 1] = 1.0  # group 2 has one class in task 1: it has no AUC there
    scores = rng.random((n, 2)) + 0.3 * np.nan_to_num(y) * (groups[:, None] + 1)
    expected = []
    for j in range(2):
        aucs = []
        for g in range(3):
            rows = (groups == g) & ~np.isnan(y[:, j])
            if len(np.unique(y[rows, j])) == 2:
                aucs.append(roc_auc_score(y[rows, j], scores[rows, j]))
        expected.append(min(aucs))
    assert len(expected) == 2
    assert worst_group_auc(y, scores, groups) == pytest.approx(np.mean(expected), abs=1e-12)
    # Rows of an unknown group (code −1) are in no group, however badly they are scored.
    unknown = np.concatenate([groups, np.full(50, -1)])
    y_more = np.concatenate([y, np.tile([[0.0, 1.0], [1.0, 0.0]], (25, 1))])
    scores_more = np.concatenate([scores, np.tile([[1.0, 0.0], [0.0, 1.0]], (25, 1))])
    assert worst_group_auc(y_more, scores_more, unknown) == pytest.approx(np.mean(expected), abs=1e-12)


def test_unknown_group_labels_get_code_minus_one():
    from fairfm.adapt.selection import known_group_codes

    codes = known_group_codes(np.array([0, 1, 2, 1, 0]), ["F", "M", "unknown"])
    assert codes.tolist() == [0, 1, -1, 1, 0]


def test_model_selection_keeps_the_epoch_with_the_best_worst_group_auc_and_stops_on_it():
    selection = ModelSelection("val_worst_group_auc", patience=2)
    states = []
    for epoch, (auc, worst) in enumerate([(0.9, 0.5), (0.95, 0.7), (0.97, 0.6), (0.99, 0.65)], start=1):
        stop = selection.update(epoch, auc, 0.1, lambda e=epoch: states.append(e) or {"epoch": e}, worst)
    assert selection.best_epoch == 2 and selection.best_state == {"epoch": 2} and selection.best_score == 0.7
    assert stop  # two epochs without a better worst-group AUC
    with pytest.raises(InputError, match="val_worst_group_auc"):
        ModelSelection("val_worst_auc")


def _probe(splits, select_by: str, groups=True):
    from fairfm.adapt.linear_probe import train_linear_probe
    from fairfm.spec import LinearProbeHParams

    hp = LinearProbeHParams(epochs=12, batch_size=128, lr=0.05, warmup_epochs=0, optimizer="adamw",
                            weight_decay=0.0, select_by=select_by, early_stopping_patience=None)  # fmt: skip
    return train_linear_probe(splits["train"].features, splits["train"].labels, splits["val"].features,
                              splits["val"].labels, hparams=hp, seed=0, predict={"test": splits["test"].features},
                              groups={s: splits[s].groups for s in splits} if groups else None)  # fmt: skip


def test_the_linear_probe_keeps_the_epoch_of_the_best_validation_worst_group_auc():
    from tests.mitigate.planted import planted_features

    splits = planted_features("under_representation", seed=0, n_train=1500, n_eval=800)
    result = _probe(splits, "val_worst_group_auc")
    curve = [h["val_worst_group_auc"] for h in result.history]
    assert len(set(np.round(curve, 6))) > 1  # the epochs differ, so the choice means something
    assert result.best_epoch == int(np.argmax(curve)) + 1
    # the kept head's validation predictions have exactly that worst-group AUC (sklearn per group)
    val = splits["val"]
    by_group = [roc_auc_score(val.labels[val.groups == g, 0], result.predictions["val"][val.groups == g, 0])
                for g in (0, 1)]  # fmt: skip
    assert min(by_group) == pytest.approx(curve[result.best_epoch - 1], abs=1e-9)
    assert result.best_score == pytest.approx(max(curve))
    with pytest.raises(InputError, match="val_worst_group_auc needs the validation rows' groups"):
        _probe(splits, "val_worst_group_auc", groups=False)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    from fairfm.data.synth import generate

    folder = tmp_path_factory.mktemp("synth") / "data"
    generate(folder, n=240, size=32, seed=0, fractions=(0.5, 0.25, 0.25))
    return folder


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    from tests.adapt.helpers import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip")


@pytest.mark.parametrize("usage,hparams", [("linear_probe", ("epochs=6", "lr=0.5")),
                                           ("prototype", ("epochs=3", "batch_size=32", "warmup_epochs=0")),
                                           ("bitfit", ("epochs=2", "batch_size=32", "warmup_epochs=0"))])
def test_fairfm_run_selects_by_the_first_attributes_worst_group_auc_without_a_method(capsys, synth_dir, clip_dir,
                                                                                      tmp_path, usage, hparams):
    flags = [item for h in ("select_by=val_worst_group_auc", *hparams) for item in ("--hp", h)]
    code, out, err = run_cli(capsys, "run", "--dataset", synth_dir, "--model", "clip", "--checkpoint", clip_dir,
                             "--usage", usage, "--bootstrap", 0, "--seed", 1, "--store", tmp_path / "s", "-q",
                             *flags)  # fmt: skip
    assert code == 0, err
    record = Store(tmp_path / "s").list()[0]
    training = record.meta["training"]
    assert training["selected_by"] == "val_worst_group_auc"
    curve = [h["val_worst_group_auc"] for h in training["history"]]
    assert training["best_epoch"] == int(np.argmax(curve)) + 1
    # The run's first attribute (sex) is the one selected on: its stored validation predictions give the value.
    val = record.predictions[record.predictions["split"] == "val"]
    aucs = [roc_auc_score(rows["y_true"], rows["y_score"]) for _, rows in val.groupby("group_sex")
            if rows["y_true"].nunique() == 2]  # fmt: skip
    assert min(aucs) == pytest.approx(curve[training["best_epoch"] - 1], abs=1e-6)


# ------------------------------------------------------------------------------------------------ over stored runs

#: (method, label signal of group F, of group M): A and B are ERM; C is fairer; D is dominated by C.
DESIGN = {"A": (None, 0.7, 3.0), "B": (None, 0.8, 1.2), "C": ("x", 0.9, 0.9), "D": ("x", 0.75, 0.75)}


def _fake_run(store: Store, name: str, method, signal_f: float, signal_m: float, *, seed: int = 0) -> str:
    """A stored run whose validation scores have the designed per-group signal; its test rows favour the opposite
    (if selection read them, it would choose differently)."""
    from fairfm.runner import report_from_predictions

    rng = np.random.default_rng(ord(name[0]))
    rows = []
    for split in ("val", "test"):
        for group, signal in (("F", signal_f), ("M", signal_m)):
            signal = signal if split == "val" else 2.5 - signal
            y = (rng.random(600) < 0.5).astype(int)
            score = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(size=600))))
            rows.append(pd.DataFrame({"sample_id": [f"{split}{group}{i}" for i in range(600)], "task": "y",
                                      "split": split, "y_true": y, "y_score": score, "group_sex": group}))
    predictions = pd.concat(rows, ignore_index=True)
    evaluation = {"threshold": "best_f1@val", "bootstrap": 0, "seed": seed}
    document = {"usage": "linear_probe", "model": f"fake{name}", "method": method, "tasks": ["y"],
                "attributes": ["sex"], **evaluation}  # fmt: skip
    run_id = f"{name.lower() * 4}{seed:012d}"[:16]
    store.run_derived(run_id, document, lambda: (predictions, report_from_predictions(
        predictions, SimpleNamespace(**evaluation)), {}))
    return run_id


@pytest.fixture
def candidates(tmp_path):
    store = Store(tmp_path / "store")
    ids = {name: _fake_run(store, name, *design) for name, design in DESIGN.items()}
    return store, ids


def _oracle(store: Store, ids: dict[str, str]) -> dict[str, str]:
    """The rules recomputed here from the validation rows with sklearn."""
    aucs, overall = {}, {}
    for name, run_id in ids.items():
        val = store.load(run_id).predictions.query("split == 'val'")
        overall[name] = roc_auc_score(val["y_true"], val["y_score"])
        aucs[name] = {g: roc_auc_score(r["y_true"], r["y_score"]) for g, r in val.groupby("group_sex")}
    names = list(ids)
    matrix = np.array([[aucs[n]["F"], aucs[n]["M"]] for n in names])
    pareto = [i for i in range(len(names))
              if not any((matrix[k] >= matrix[i]).all() and (matrix[k] > matrix[i]).any() for k in range(len(names)))]
    erm = [i for i, n in enumerate(names) if DESIGN[n][0] is None]
    min_group = int(np.argmin(matrix[erm].max(axis=0)))
    dto = np.linalg.norm(1 - matrix / matrix.max(axis=0), axis=1)
    return {"overall_auc": names[int(np.argmax([overall[n] for n in names]))],
            "worst_group_auc": names[int(np.argmax(matrix.min(axis=1)))],
            "minimax_pareto": names[max(pareto, key=lambda i: matrix[i, min_group])],
            "dto": names[int(np.argmin(dto))], "pareto": {names[i] for i in pareto}}  # fmt: skip


def test_each_rule_chooses_as_recomputed_from_the_validation_rows(candidates):
    from fairfm.select import select

    store, ids = candidates
    expected = _oracle(store, ids)
    assert expected["worst_group_auc"] == "C" and expected["minimax_pareto"] == "C" and "D" not in expected["pareto"]
    assert expected["overall_auc"] == "A"  # the rules disagree on this design, so each choice is tested
    name_of = {run_id: name for name, run_id in ids.items()}
    for rule in ("overall_auc", "worst_group_auc", "minimax_pareto", "dto"):
        chosen = select(store, list(ids.values()), rule=rule)
        assert name_of[chosen.chosen] == expected[rule], rule
        assert {name_of[c.run_id] for c in chosen.candidates if c.pareto} == expected["pareto"]
    chosen = select(store, list(ids.values()), rule="minimax_pareto")
    assert chosen.min_group == "F" and "group F" in chosen.reason and "2 ERM candidate(s)" in chosen.reason


def test_fairfm_select_prints_the_candidates_records_the_choice_and_filters_with_where(candidates, capsys):
    store, ids = candidates
    code, out, err = run_cli(capsys, "select", *ids.values(), "--rule", "dto", "--store", store.path)
    assert code == 0, err
    assert all(run_id in out for run_id in ids.values()) and "chosen:" in out and "Pareto" in out
    code, out, err = run_cli(capsys, "select", "--where", "method=none", "--rule", "worst_group_auc", "--json",
                             "--store", store.path)  # fmt: skip
    assert code == 0, err
    document = json.loads(out)
    assert {c["run_id"] for c in document["candidates"]} == {ids["A"], ids["B"]}  # the ERM runs only
    assert document["chosen"] == ids["B"] and document["split"] == "val"
    recorded = json.loads(Path(document["recorded"]).read_text())
    assert recorded["chosen"] == ids["B"] and recorded["rule"] == "worst_group_auc" and recorded["reason"]
    assert Path(document["recorded"]).parent == store.path / "selections"
    code, out, _ = run_cli(capsys, "select", "--where", "method=x", "--where", "model=fakeD", "--json",
                           "--store", store.path)  # fmt: skip
    assert code == 0 and json.loads(out)["chosen"] == ids["D"]


@pytest.mark.parametrize("args,message", [
    ((), "no candidates: give run ids or --where filters"),
    (("--where", "colour=red"), "--where colour=…: no such column"),
    (("--where", "model=nothing"), "no run in"),
    (("--where", "modelclip"), "expected COLUMN=VALUE"),
    (("--rule", "best"), "rule 'best': choose one of overall_auc, worst_group_auc, minimax_pareto, dto"),
    (("--attr", "race", "--where", "method=x"), "no column 'group_race'"),
])  # fmt: skip
def test_fairfm_select_refuses_bad_input_in_one_line(candidates, capsys, args, message):
    store, _ = candidates
    code, _, err = run_cli(capsys, "select", *args, "--store", store.path)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (store.path / "selections").exists()


def test_validation_scores_leave_an_unknown_group_out(candidates):
    from fairfm.runner import report_from_predictions
    from fairfm.select import validation_scores

    store, ids = candidates
    predictions = store.load(ids["C"]).predictions.drop(columns=["run_id"])
    extra = predictions[predictions["group_sex"] == "F"].head(40).assign(group_sex="unknown")
    extra["sample_id"] = [f"u{i}" for i in range(len(extra))]
    extra["y_score"] = 1.0 - extra["y_true"]  # perfectly wrong: an AUC of 0 if it counted as a group
    both = pd.concat([predictions, extra], ignore_index=True)
    evaluation = SimpleNamespace(threshold="best_f1@val", bootstrap=0, seed=0)
    store.run_derived("eeee000000000000", {"usage": "linear_probe", "model": "fakeE", "method": None,
                                           "attributes": ["sex"], "tasks": ["y"], "threshold": "best_f1@val",
                                           "bootstrap": 0, "seed": 0},
                      lambda: (both, report_from_predictions(both, evaluation), {}))  # fmt: skip
    scores = validation_scores(store.load("eeee000000000000"), "sex")
    assert set(scores.group_auc) == {"F", "M"}
    assert scores.group_auc == pytest.approx(validation_scores(store.load(ids["C"]), "sex").group_auc)


def test_the_candidate_table_has_one_row_per_run(candidates):
    from fairfm.select import candidates_frame, select

    store, ids = candidates
    frame = candidates_frame(select(store, list(ids.values()), rule="dto"))
    assert list(frame["run_id"]) == list(ids.values()) and frame["chosen"].sum() == 1
    assert {"auc_F", "auc_M", "pareto", "dto"} <= set(frame.columns)
    assert not frame[["auc_F", "auc_M"]].map(math.isnan).any().any()
