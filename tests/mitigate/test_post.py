"""Post-processing methods: group-specific thresholds (fairlearn ThresholdOptimizer on validation scores) and fairlearn
reductions (ExponentiatedGradient over a logistic regression on cached features)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fairfm.errors import InputError
from fairfm.mitigate.base import ScoreSet, build_method
from fairfm.spec import RunSpec
from tests.adapt.helpers import make_tiny_clip
from tests.conftest import run_cli
from tests.mitigate.planted import GROUPS, planted_features, train_probe


def _scores(rng: np.random.Generator, n: int, n_tasks: int = 2) -> ScoreSet:
    groups = rng.integers(0, 3, size=n)
    labels = (rng.random((n, n_tasks)) < 0.4).astype(np.float64)
    labels[rng.random((n, n_tasks)) < 0.1] = np.nan  # unknown labels are left out of the fit
    shift = np.array([0.0, 0.8, -0.5])[groups][:, None]
    logits = 1.5 * np.nan_to_num(labels) + shift + rng.normal(size=(n, n_tasks))
    return ScoreSet(1 / (1 + np.exp(-logits)), labels, groups, ["a", "b", "c"], [f"t{j}" for j in range(n_tasks)])


@pytest.mark.parametrize("output", ["decision", "pmf"])
@pytest.mark.parametrize("constraint", ["equalized_odds", "demographic_parity", "true_positive_rate_parity"])
def test_group_thresholds_equal_fairlearn_used_directly(output, constraint):
    from fairlearn.postprocessing import ThresholdOptimizer
    from sklearn.linear_model import LogisticRegression

    from fairfm.mitigate.group_thresholds import draw_seed

    rng = np.random.default_rng(3)
    val, test = _scores(rng, 600), _scores(rng, 500)
    method = build_method("group_thresholds", {"constraint": constraint, "output": output})
    got_val, got_test = method.post_process(val, test, seed=7)
    for j in range(2):
        known = ~np.isnan(val.labels[:, j])
        # fairlearn's documented use: a prefit model whose predict_proba gives the scores. A logistic regression on
        # the logit of the score with weight 1 and bias 0 reproduces the scores exactly.
        model = LogisticRegression().fit(np.array([[-1.0], [1.0]]), [0, 1])
        model.coef_, model.intercept_ = np.array([[1.0]]), np.array([0.0])
        logit = {s: np.log(x.probabilities[:, j] / (1 - x.probabilities[:, j]))[:, None] for s, x in
                 (("val", val), ("test", test))}  # fmt: skip
        direct = ThresholdOptimizer(estimator=model, constraints=constraint, prefit=True,
                                    predict_method="predict_proba")  # fmt: skip
        direct.fit(logit["val"][known], val.labels[known, j].astype(int), sensitive_features=val.groups[known])
        for split, scores, got in (("val", val, got_val), ("test", test, got_test)):
            if output == "decision":
                expected = direct.predict(logit[split], sensitive_features=scores.groups,
                                          random_state=draw_seed(7, split, j))  # fmt: skip
                assert set(np.unique(got[:, j])) <= {0.0, 1.0}
            else:
                expected = direct._pmf_predict(logit[split], sensitive_features=scores.groups)[:, 1]
            np.testing.assert_allclose(got[:, j], expected, atol=1e-12)
    assert set(method.fitted["thresholds"]["t0"]) == {"a", "b", "c"}


def test_group_thresholds_read_the_group_at_test_time_and_are_seeded():
    rng = np.random.default_rng(0)
    val, test = _scores(rng, 600, 1), _scores(rng, 400, 1)
    method = build_method("group_thresholds", {})
    assert method.uses_attribute_at_test()
    first = method.post_process(val, test, seed=1)[1]
    np.testing.assert_array_equal(first, build_method("group_thresholds", {}).post_process(val, test, seed=1)[1])
    other = ScoreSet(test.probabilities, test.labels, rng.permutation(test.groups), test.group_names, test.tasks)
    assert not np.array_equal(first, method.post_process(val, other, seed=1)[1])


def test_group_thresholds_refuse_a_group_without_both_classes_or_unseen_in_validation():
    rng = np.random.default_rng(1)
    val, test = _scores(rng, 300, 1), _scores(rng, 300, 1)
    val.labels[(val.groups == 1), 0] = 0.0
    with pytest.raises(InputError, match=r"task 't0': group 'b' has only class 0 among its validation rows"):
        build_method("group_thresholds", {}).post_process(val, test, seed=0)
    val = _scores(rng, 300, 1)
    val = ScoreSet(val.probabilities[val.groups != 2], val.labels[val.groups != 2], val.groups[val.groups != 2],
                   val.group_names, val.tasks)  # fmt: skip
    with pytest.raises(InputError, match=r"group 'c' has test rows but no labelled validation row"):
        build_method("group_thresholds", {}).post_process(val, test, seed=0)


def test_reductions_equal_fairlearn_used_directly_and_never_read_the_test_groups():
    from fairlearn.reductions import EqualizedOdds, ExponentiatedGradient
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from fairfm.mitigate.reductions import draw_seed

    splits = planted_features("score_shift", seed=0, n_train=600, n_eval=400, dim=8)
    features = {s: splits[s].features for s in splits}
    method = build_method("reductions", {})
    assert not method.uses_attribute_at_test()
    got = method.fit_features(features, {s: splits[s].labels for s in ("train", "val")},
                              {s: splits[s].groups for s in splits}, seed=5)  # fmt: skip
    scaler = StandardScaler().fit(features["train"].astype(np.float64))
    direct = ExponentiatedGradient(LogisticRegression(max_iter=1000), EqualizedOdds(difference_bound=0.01))
    direct.fit(scaler.transform(features["train"].astype(np.float64)), splits["train"].labels[:, 0].astype(int),
               sensitive_features=splits["train"].groups)  # fmt: skip
    for split in ("val", "test"):
        expected = direct.predict(scaler.transform(features[split].astype(np.float64)),
                                  random_state=draw_seed(5, split, 0))  # fmt: skip
        np.testing.assert_array_equal(got[split][:, 0], expected)
    # Group-blind at test time: other groups for the val/test rows give the same predictions.
    shuffled = {s: (np.random.default_rng(9).permutation(splits[s].groups) if s != "train" else splits[s].groups)
                for s in splits}  # fmt: skip
    again = build_method("reductions", {}).fit_features(features, {s: splits[s].labels for s in ("train", "val")},
                                                        shuffled, seed=5)  # fmt: skip
    np.testing.assert_array_equal(again["test"], got["test"])
    pmf = build_method("reductions", {"output": "pmf"}).fit_features(
        features, {s: splits[s].labels for s in ("train", "val")}, {s: splits[s].groups for s in splits}, seed=5)
    np.testing.assert_allclose(pmf["test"][:, 0],
                               direct._pmf_predict(scaler.transform(features["test"].astype(np.float64)))[:, 1])


def _eod(split, decisions: np.ndarray) -> float:
    from fairlearn.metrics import equalized_odds_difference

    return float(equalized_odds_difference(split.labels[:, 0], decisions, sensitive_features=split.groups))


def _best_f1_threshold(split, scores: np.ndarray) -> float:
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(split.labels[:, 0], scores)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(thresholds[np.argmax(f1)])


def test_both_methods_reduce_the_equalized_odds_gap_of_a_harder_group_over_three_seeds():
    """score_shift: group B's label signal is half as strong; one shared threshold (chosen on val) leaves a TPR/FPR
    gap, group thresholds fitted on val (and the reductions' constrained head) close it on test."""
    differences = {"group_thresholds": [], "reductions": []}
    for seed in range(3):
        splits = planted_features("score_shift", seed=seed)
        erm, _ = train_probe(splits, None, seed=seed)
        threshold = _best_f1_threshold(splits["val"], erm["val"][:, 0])
        erm_eod = _eod(splits["test"], erm["test"][:, 0] >= threshold)
        sets = {s: ScoreSet(erm[s], splits[s].labels, splits[s].groups, GROUPS, ["y"]) for s in ("val", "test")}
        thresholded = build_method("group_thresholds", {}).post_process(sets["val"], sets["test"], seed=seed)[1]
        differences["group_thresholds"].append(erm_eod - _eod(splits["test"], thresholded[:, 0] >= 0.5))
        reduced = build_method("reductions", {}).fit_features(
            {s: splits[s].features for s in splits}, {s: splits[s].labels for s in ("train", "val")},
            {s: splits[s].groups for s in splits}, seed=seed)["test"]
        differences["reductions"].append(erm_eod - _eod(splits["test"], reduced[:, 0] >= 0.5))
    for name, gains in differences.items():
        gains = np.array(gains)
        assert (gains > 0).all() and gains.mean() > 2 * gains.std(), (name, gains)


def test_the_spec_sets_threshold_0_5_refuses_another_policy_and_other_usages(tmp_path):
    from tests.adapt.helpers import make_synth

    data = make_synth(tmp_path / "data", n=40, size=16)
    base = {"dataset": str(data), "model": "clip", "usage": "linear_probe", "method": "group_thresholds"}
    assert RunSpec.from_dict(base).threshold == "0.5"
    assert RunSpec.from_dict({**base, "threshold": 0.5}).threshold == "0.5"
    with pytest.raises(InputError, match=r"threshold: .*outputs decisions.*the threshold must be 0.5"):
        RunSpec.from_dict({**base, "threshold": "best_f1@val"})
    with pytest.raises(InputError, match=r"objective 'selection_rate' is not allowed with equalized_odds"):
        RunSpec.from_dict({**base, "method_params": {"objective": "selection_rate"}})
    with pytest.raises(InputError, match=r"method 'reductions' does not serve usage 'lora'"):
        RunSpec.from_dict({**base, "usage": "lora", "method": "reductions"})
    with pytest.raises(InputError, match=r"is a classification method; usage 'sam_prompt' segments"):
        RunSpec.from_dict({**base, "usage": "sam_prompt", "model": "medsam"})
    for usage in ("zero_shot", "prototype", "lora", "bitfit"):  # every classification usage is served
        assert RunSpec.from_dict({**base, "usage": usage}).method == "group_thresholds"


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    from fairfm.data.synth import generate

    folder = tmp_path_factory.mktemp("synth") / "data"
    generate(folder, n=240, size=32, seed=0, fractions=(0.5, 0.25, 0.25))
    return folder


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("store") / "store"  # shared: features are extracted once


def _run(capsys, synth_dir, clip_dir, store, usage, method, *extra) -> dict:
    code, out, err = run_cli(capsys, "run", "--dataset", synth_dir, "--model", "clip", "--checkpoint", clip_dir,
                             "--usage", usage, "--attr", "sex", "--method", method, "--bootstrap", 20, "--seed", 3,
                             "--store", store, "-q", *extra)  # fmt: skip
    assert code == 0, err
    run_id = next(line.split()[1] for line in out.splitlines() if line.startswith("run "))
    folder = Path(store) / "runs" / run_id.rstrip(":")
    return {"meta": json.loads((folder / "meta.json").read_text()), "folder": folder,
            "predictions": pd.read_parquet(folder / "predictions.parquet"),
            "metrics": pd.read_parquet(folder / "metrics.parquet")}  # fmt: skip


@pytest.mark.parametrize("usage,method,extra", [
    ("linear_probe", "group_thresholds", ("--hp", "epochs=3", "--hp", "batch_size=32")),
    ("zero_shot", "group_thresholds", ()),
    ("bitfit", "group_thresholds", ("--hp", "epochs=1", "--hp", "batch_size=32", "--hp", "warmup_epochs=0")),
    ("linear_probe", "reductions", ("--method-param", "max_iter=20")),
])  # fmt: skip
def test_fairfm_run_end_to_end(capsys, synth_dir, clip_dir, store, usage, method, extra):
    import shutil

    run = _run(capsys, synth_dir, clip_dir, store, usage, method, *extra)
    recorded = run["meta"]["method"]
    assert recorded["name"] == method and recorded["attribute"] == "sex"
    assert recorded["attribute_at_test"] is (method == "group_thresholds")
    assert recorded["params"]["constraint"] == "equalized_odds" and recorded["details"]
    predictions = run["predictions"]
    assert set(np.unique(predictions["y_score"])) <= {0.0, 1.0}  # decisions
    assert set(run["metrics"]["threshold_policy"]) == {"0.5"}
    assert any("not a ranking metric" in w for w in run["meta"]["report"]["warnings"])
    # The same spec computed again gives bit-identical predictions.
    shutil.rmtree(run["folder"])
    again = _run(capsys, synth_dir, clip_dir, store, usage, method, *extra)
    pd.testing.assert_frame_equal(predictions, again["predictions"])


def test_fairfm_run_refuses_before_any_work(capsys, synth_dir, clip_dir, tmp_path):
    code, _, err = run_cli(capsys, "run", "--dataset", synth_dir, "--model", "clip", "--checkpoint", clip_dir,
                           "--usage", "lora", "--method", "reductions", "--store", tmp_path / "s", "-q")  # fmt: skip
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "does not serve usage 'lora'" in err and not (tmp_path / "s" / "features").exists()
    code, _, err = run_cli(capsys, "run", "--dataset", synth_dir, "--model", "clip", "--checkpoint", clip_dir,
                           "--usage", "zero_shot", "--method", "group_thresholds", "--threshold", "best_f1@val",
                           "--store", tmp_path / "s", "-q")  # fmt: skip
    assert code == 2 and "the threshold must be 0.5" in err and len(err.strip().splitlines()) == 1
