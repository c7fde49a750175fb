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


def _copy_run(store: Store, source: str, run_id: str, *, change=None, meta=None, **spec) -> str:
    """A stored copy of run ``source`` under ``run_id``: its spec with ``spec`` overriding, its predictions passed
    through ``change``, ``meta`` added to its meta.json."""
    from fairfm.runner import report_from_predictions

    record = store.load(source)
    predictions = record.predictions.drop(columns=["run_id"])
    if change is not None:
        predictions = change(predictions.copy())
    document = {**record.spec, **spec}
    evaluation = SimpleNamespace(**{k: document[k] for k in ("threshold", "bootstrap", "seed")})
    store.run_derived(run_id, document, lambda: (predictions, report_from_predictions(predictions, evaluation),
                                                 dict(meta or {})))  # fmt: skip
    return run_id


def _rename_first_val_sample(predictions: pd.DataFrame) -> pd.DataFrame:
    first = predictions.index[predictions["split"] == "val"][0]
    predictions.loc[first, "sample_id"] = "elsewhere"
    return predictions


@pytest.mark.parametrize("spec,change,message", [
    ({"dataset": "/data/other"}, None, "dataset"),
    ({"split_seed": 3}, None, "split seed 3"),
    ({"tasks": ["y", "z"]}, None, "tasks"),
    ({}, _rename_first_val_sample, "sample 'elsewhere'"),
])  # fmt: skip
def test_fairfm_select_refuses_candidates_scored_on_other_validation_rows(candidates, capsys, spec, change, message):
    from fairfm.select import select

    store, ids = candidates
    odd = _copy_run(store, ids["B"], "ffff000000000000", change=change, **spec)
    with pytest.raises(InputError, match=f"run {odd}") as refused:
        select(store, [ids["A"], odd])
    assert message in str(refused.value) and ids["A"] in str(refused.value)
    code, _, err = run_cli(capsys, "select", ids["A"], ids["C"], odd, "--store", store.path)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (store.path / "selections").exists()
    # the same runs on the same dataset, split and rows are compared as before
    same = _copy_run(store, ids["B"], "9999000000000000", dataset=None, split_seed=None)
    assert select(store, [ids["A"], same]).chosen == ids["A"]


def test_worst_group_auc_compares_every_candidate_on_the_same_groups(candidates):
    """A small group O has both classes in B's validation rows (and a terrible AUC there) but one class in C's: it
    counts for no candidate, so B and C are compared on min(AUC_F, AUC_M) alone."""
    from fairfm.select import select

    store, ids = candidates

    def small_group(labels):
        def change(predictions):
            rows = predictions.index[predictions["split"] == "val"][: len(labels)]
            predictions.loc[rows, "group_sex"] = "O"
            predictions.loc[rows, "y_true"] = labels
            predictions.loc[rows, "y_score"] = 1.0 - np.asarray(labels, dtype=float)  # perfectly wrong
            return predictions
        return change

    with_o = _copy_run(store, ids["C"], "cccc111111111111", change=small_group([0, 1, 0, 1]))
    one_class = _copy_run(store, ids["B"], "bbbb111111111111", change=small_group([1, 1, 1, 1]))
    chosen = select(store, [one_class, with_o], rule="worst_group_auc")
    # oracle: per candidate, sklearn's AUC on F and M (the groups both candidates can score), the lower of the two
    worst = {}
    for run_id in (one_class, with_o):
        val = store.load(run_id).predictions.query("split == 'val' and group_sex != 'O'")
        worst[run_id] = min(roc_auc_score(r["y_true"], r["y_score"]) for _, r in val.groupby("group_sex"))
    assert worst[with_o] > worst[one_class]  # without O, C's copy has the better worst group
    assert chosen.chosen == with_o and chosen.groups == ["F", "M"]
    for c in chosen.candidates:
        assert c.worst_group_auc == pytest.approx(worst[c.run_id], abs=1e-12) and c.worst_group in ("F", "M")
    assert any("O left out" in note for note in chosen.notes)


def test_minimax_pareto_takes_the_erm_basis_without_ensembles_and_says_which(candidates, capsys):
    from fairfm.select import select

    store, ids = candidates
    # An "ensemble" perfect on F (D's scores on M): counted as ERM it would make M the min group (B's M is higher
    # than its F, the ensemble's F higher than B's M) and B the choice
    def perfect_on_f(predictions):
        f = predictions["group_sex"] == "F"
        predictions.loc[f, "y_score"] = predictions.loc[f, "y_true"].astype(float)
        return predictions

    ens = _copy_run(store, ids["D"], "eeee111111111111", change=perfect_on_f, usage="ensemble", model="ensemble",
                    method=None)  # fmt: skip
    runs = [ids["B"], ids["C"], ens]
    chosen = select(store, runs, rule="minimax_pareto")
    assert chosen.min_group == "F" and chosen.chosen == ens  # F: B's lower group; the ensemble is best on F
    assert chosen.erm_basis == [ids["B"]]
    assert ids["B"] in chosen.reason and ens not in chosen.reason
    code, out, err = run_cli(capsys, "select", *runs, "--rule", "minimax_pareto", "--json", "--store", store.path)
    assert code == 0 and json.loads(out)["erm_basis"] == [ids["B"]], err
    code, out, err = run_cli(capsys, "select", *runs, "--rule", "minimax_pareto", "--store", store.path)
    assert code == 0 and f"ERM basis: {ids['B']}" in out, err
    # ... no ERM candidate: refused in one line (METHODS.md §4 defines the min group over the ERM runs only)
    code, _, err = run_cli(capsys, "select", ids["C"], ids["D"], ens, "--rule", "minimax_pareto", "--store",
                           store.path)  # fmt: skip
    assert code == 2 and "no ERM candidate" in err and len(err.strip().splitlines()) == 1, err


def test_the_candidates_mark_attribute_aware_runs(candidates, capsys):
    store, ids = candidates
    aware = _copy_run(store, ids["C"], "cccc111111111111", method="group_thresholds",
                      meta={"method": {"name": "group_thresholds", "attribute": "sex", "attribute_at_test": True}})
    ens = _copy_run(store, ids["A"], "eeee222222222222", usage="ensemble", model="ensemble", method=None,
                    meta={"method": {"name": "ensemble", "attribute": "sex", "attribute_at_test": True}})
    runs = [ids["A"], ids["C"], aware, ens]
    code, out, err = run_cli(capsys, "select", *runs, "--json", "--store", store.path)
    assert code == 0, err
    marks = {c["run_id"]: c["attribute_at_test"] for c in json.loads(out)["candidates"]}
    assert marks == {ids["A"]: False, ids["C"]: False, aware: True, ens: True}
    labels = {c["run_id"]: c["label"] for c in json.loads(out)["candidates"]}
    assert "group_thresholds (attr@test)" in labels[aware] and "(attr@test)" in labels[ens]
    assert "attr@test" not in labels[ids["A"]] + labels[ids["C"]]
    code, out, err = run_cli(capsys, "select", *runs, "--store", store.path)
    assert code == 0, err
    assert out.count("(attr@test)") == 2 and "group_thresholds (attr@test)" in out
