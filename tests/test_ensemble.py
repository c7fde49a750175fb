"""fairfm ensemble: member probabilities averaged into a run of its own, found again, refusing mismatched members."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from fairfm.results import Store
from tests.conftest import run_cli

KEYS = ["sample_id", "task", "split"]


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """A store with a linear probe (seeds 1 and 2) and a zero-shot run (seed 1) of one tiny CLIP on one dataset."""
    from fairfm import runner
    from fairfm.data.synth import generate
    from fairfm.spec import RunSpec
    from tests.adapt.helpers import make_tiny_clip

    root = tmp_path_factory.mktemp("ensemble")
    generate(root / "data", n=200, size=32, seed=0, fractions=(0.5, 0.25, 0.25))
    clip = make_tiny_clip(root / "clip")
    store = Store(root / "store")
    ids = {}
    for name, usage, seed, hparams, method in (("probe", "linear_probe", 1, {"epochs": 3}, None),
                                               ("zs", "zero_shot", 1, {}, None),
                                               ("probe2", "linear_probe", 2, {"epochs": 3}, None),
                                               ("probe_fin", "linear_probe", 1, {"epochs": 3}, "fin")):  # fmt: skip
        spec = RunSpec.from_dict({"dataset": str(root / "data"), "model": "clip", "checkpoint": str(clip),
                                  "usage": usage, "hparams": hparams, "bootstrap": 20, "seed": seed,
                                  "method": method})  # fmt: skip
        ids[name] = runner.run(spec, store, progress=False).run_id
    for name, method in (("zs_half", None), ("zs_thresholds", "group_thresholds")):  # threshold 0.5 both
        spec = RunSpec.from_dict({"dataset": str(root / "data"), "model": "clip", "checkpoint": str(clip),
                                  "usage": "zero_shot", "method": method, "threshold": "0.5", "bootstrap": 20,
                                  "seed": 1})  # fmt: skip
        ids[name] = runner.run(spec, store, progress=False).run_id
    return store, ids


def _ensemble(capsys, store: Store, *args) -> tuple[int, str, str]:
    return run_cli(capsys, "ensemble", *args, "--store", store.path, "-q")


def test_the_ensemble_is_a_run_of_the_members_mean_probability(members, capsys):
    store, ids = members
    code, out, err = _ensemble(capsys, store, ids["probe"], ids["zs"], "--name", "mixed")
    assert code == 0, err
    assert "computed" in out
    run_id = out.split()[1].rstrip(":")
    record = store.load(run_id)
    assert record.spec["usage"] == "ensemble" and record.spec["rule"] == "mean"
    assert sorted(record.spec["members"]) == sorted([ids["probe"], ids["zs"]])
    assert [m["run_id"] for m in record.meta["ensemble"]["members"]] == [ids["probe"], ids["zs"]]
    assert record.meta["name"] == "mixed" and record.meta["ensemble"]["attribute_at_test"] is False

    a, b = (store.load(ids[k]).predictions for k in ("probe", "zs"))
    merged = a.merge(b, on=KEYS, suffixes=("_a", "_b"), validate="one_to_one")
    got = record.predictions.merge(merged, on=KEYS, validate="one_to_one")
    assert len(got) == len(a) == len(record.predictions)
    np.testing.assert_allclose(got["y_score"], (got["y_score_a"] + got["y_score_b"]) / 2, atol=1e-15)
    assert (got["y_true"] == got["y_true_a"]).all() and (got["group_sex"] == got["group_sex_a"]).all()

    # Evaluated like any run: test AUC (sklearn) overall and per group, threshold chosen on val.
    metrics = record.metrics
    test = record.predictions[record.predictions["split"] == "test"]
    overall = metrics[(metrics["attribute"] == "__all__") & (metrics["metric"] == "auc")]["value"].iloc[0]
    assert overall == pytest.approx(roc_auc_score(test["y_true"], test["y_score"]), abs=1e-9)
    for group, rows in test.groupby("group_sex"):
        value = metrics[(metrics["attribute"] == "sex") & (metrics["group"] == group) & (metrics["metric"] == "auc")]
        if rows["y_true"].nunique() == 2:
            assert value["value"].iloc[0] == pytest.approx(roc_auc_score(rows["y_true"], rows["y_score"]), abs=1e-9)
    assert set(metrics["threshold_policy"]) == {"best_f1@val"}
    assert metrics[metrics["metric"] == "auc_gap"]["ci_low"].notna().all()  # the members' bootstrap (20)

    # Found again, whatever the order or the name; listed and shown like any run.
    code, out, _ = _ensemble(capsys, store, ids["zs"], ids["probe"], "--name", "other")
    assert code == 0 and out.split()[1].rstrip(":") == run_id and "found in the store" in out
    listing = json.loads(run_cli(capsys, "runs", "list", "--store", store.path, "--json")[1])
    assert any(row["run_id"] == run_id and row["usage"] == "ensemble" for row in listing)
    code, out, _ = run_cli(capsys, "runs", "show", run_id, "--store", store.path)
    assert code == 0 and "ensemble" in out
    code, out, err = run_cli(capsys, "select", run_id, ids["probe"], ids["zs"], "--json", "--store", store.path)
    assert code == 0, err
    assert {c["run_id"] for c in json.loads(out)["candidates"]} == {run_id, ids["probe"], ids["zs"]}


def test_a_seed_ensemble_needs_its_own_bootstrap_seed(members, capsys):
    store, ids = members
    code, _, err = _ensemble(capsys, store, ids["probe"], ids["probe2"])
    assert code == 2 and "has seed 2 but run" in err and "give --seed" in err and len(err.strip().splitlines()) == 1
    code, out, err = _ensemble(capsys, store, ids["probe"], ids["probe2"], "--seed", 5)
    assert code == 0, err
    assert store.load(out.split()[1].rstrip(":")).spec["seed"] == 5


def _copy_of(store: Store, run_id: str, name: str, edit, **spec_changes) -> str:
    """A stored run like ``run_id`` with its predictions edited (a member that scored other rows)."""
    from fairfm.runner import report_from_predictions

    record = store.load(run_id)
    predictions = edit(record.predictions.drop(columns=["run_id"]).copy())
    document = {**record.spec, **spec_changes, "model": name}
    evaluation = SimpleNamespace(**{k: document[k] for k in ("threshold", "bootstrap", "seed")})
    new_id = (name * 16)[:16]
    store.run_derived(new_id, document, lambda: (predictions, report_from_predictions(predictions, evaluation), {}))
    return new_id


def test_members_that_scored_other_rows_or_disagree_are_refused_naming_the_first_mismatch(members, capsys):
    store, ids = members
    base = store.load(ids["probe"]).predictions
    first = base.iloc[0]
    dropped = _copy_of(store, ids["probe"], "a", lambda p: p.iloc[1:])
    code, _, err = _ensemble(capsys, store, ids["probe"], dropped)
    assert code == 2 and f"run {dropped} has no prediction for sample {first['sample_id']!r}" in err

    def flip(p: pd.DataFrame) -> pd.DataFrame:
        p.loc[p.index[3], "y_true"] = 1 - p.loc[p.index[3], "y_true"]
        return p

    flipped = _copy_of(store, ids["probe"], "b", flip)
    code, _, err = _ensemble(capsys, store, ids["probe"], flipped)
    assert code == 2 and f"labels sample {base.iloc[3]['sample_id']!r}" in err
    other_bootstrap = _copy_of(store, ids["probe"], "c", lambda p: p, bootstrap=10)
    code, _, err = _ensemble(capsys, store, ids["probe"], other_bootstrap)
    assert code == 2 and "has bootstrap 10 but run" in err
    for args, message in (((ids["probe"],), "at least two member runs"), ((ids["probe"], ids["probe"]), "given twice"),
                          ((ids["probe"], ids["zs"], "--rule", "vote"), "rule 'vote': choose one of mean")):
        code, _, err = _ensemble(capsys, store, *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not list((store.path / "tmp").glob("*"))  # nothing half-written by the refused ensembles


def test_an_ensemble_with_an_attribute_aware_member_is_attribute_aware(members, capsys):
    store, ids = members
    code, out, err = _ensemble(capsys, store, ids["probe"], ids["probe_fin"])  # FIN reads the group to predict
    assert code == 0, err
    record = store.load(out.split()[1].rstrip(":"))
    assert record.meta["ensemble"]["attribute_at_test"] is True
    assert record.meta["method"]["attribute_at_test"] is True and record.meta["method"]["members"] == [
        ids["probe_fin"]]
    assert any("reads the sensitive attribute at test time" in w for w in record.meta["report"]["warnings"])
    code, _, err = _ensemble(capsys, store, ids["zs"], ids["zs_half"])  # best_f1@val and 0.5
    assert code == 2 and "has threshold" in err


def test_an_ensemble_refuses_a_member_whose_scores_are_decisions(members, capsys):
    store, ids = members
    # group_thresholds stores 0/1 decisions: averaging them with probabilities would mix two kinds of score
    assert set(store.load(ids["zs_thresholds"]).predictions["y_score"].unique()) <= {0.0, 1.0}
    code, _, err = _ensemble(capsys, store, ids["zs_half"], ids["zs_thresholds"])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"run {ids['zs_thresholds']} holds decisions of method 'group_thresholds'" in err
