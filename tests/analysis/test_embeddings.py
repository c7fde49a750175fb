"""The embedding-bias analysis on planted structure, against scikit-learn and scipy as oracles."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import false_discovery_control, ks_2samp
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score

from fairfm.analysis import EmbeddingAnalysis, analyze_embeddings
from fairfm.analysis.embeddings import balanced_subsample, bootstrap_auc
from fairfm.errors import InputError


def planted(n: int = 400, dim: int = 16, seed: int = 0):
    """Features whose first direction is shifted by site (A vs B) — far beyond the noise; sex is
    independent."""
    rng = np.random.default_rng(seed)
    site = np.where(rng.random(n) < 0.5, "A", "B")
    sex = np.where(rng.random(n) < 0.5, "F", "M")
    x = rng.normal(size=(n, dim)) * np.linspace(2.0, 0.5, dim)
    x[:, 0] += np.where(site == "A", 8.0, -8.0)
    label = (rng.random(n) < 0.4).astype(float)
    return x, pd.DataFrame({"site": site, "sex": sex}), pd.DataFrame({"label_y": label})


@pytest.fixture(scope="module")
def planted_analysis():
    x, groups, labels = planted()
    return x, groups, labels, analyze_embeddings(x, groups, labels=labels, projection="none", bootstrap=300)


def test_a_planted_site_shift_is_found_by_ks_on_mode_1_and_separability(planted_analysis):
    _, _, _, analysis = planted_analysis
    ks = analysis.ks.set_index(["attribute", "mode"])
    assert ks.loc[("site", 1), "significant"]
    assert ks.loc[("site", 1), "statistic"] > 0.9
    site = analysis.separability.set_index("attribute").loc["site"]
    assert site["auc"] > 0.98
    assert site["ci_low"] > 0.9
    assert site["kind"] == "binary" and site["n"] == 400


def test_an_independent_attribute_is_not_separable_and_rarely_rejected(planted_analysis):
    _, _, _, analysis = planted_analysis
    sex = analysis.separability.set_index("attribute").loc["sex"]
    assert sex["ci_low"] < 0.5 < sex["ci_high"]
    assert sex["chance"] == 0.5
    assert analysis.ks[analysis.ks["attribute"] == "sex"]["significant"].sum() <= 1
    # the independent label too: its positives and negatives were tested
    label = analysis.ks[analysis.ks["attribute"] == "label_y"]
    assert list(label["group_a"].unique()) == ["positive"] and len(label) == 4


def test_ks_rows_and_q_values_equal_scipy(planted_analysis):
    x, groups, labels, analysis = planted_analysis
    scores = PCA(n_components=0.99, svd_solver="full").fit_transform(x)
    expected = []
    for _, row in analysis.ks.iterrows():
        if row["attribute"] == "label_y":
            a, b = labels["label_y"].to_numpy() == 1, labels["label_y"].to_numpy() == 0
        else:
            values = groups[row["attribute"]].to_numpy()
            a, b = values == row["group_a"], values == row["group_b"]
        test = ks_2samp(scores[a, row["mode"] - 1], scores[b, row["mode"] - 1])
        assert row["statistic"] == pytest.approx(test.statistic)
        assert row["p_value"] == pytest.approx(test.pvalue, rel=1e-9, abs=1e-300)
        assert (row["n_a"], row["n_b"]) == (a.sum(), b.sum())
        expected.append(test.pvalue)
    np.testing.assert_allclose(
        analysis.ks["q_value"], false_discovery_control(expected, method="bh"), rtol=1e-9
    )
    assert (analysis.ks["significant"] == (analysis.ks["q_value"] <= 0.05)).all()


def test_benjamini_yekutieli_on_request():
    x, groups, _ = planted(n=200)
    analysis = analyze_embeddings(x, groups, projection="none", bootstrap=0, fdr="by")
    np.testing.assert_allclose(
        analysis.ks["q_value"], false_discovery_control(analysis.ks["p_value"], method="by")
    )


@pytest.mark.parametrize("variance", [0.5, 0.9, 0.99, 1.0])
def test_pca_keeps_as_many_components_as_sklearn(variance):
    x, groups, _ = planted(n=150, dim=12)
    analysis = analyze_embeddings(x, groups, variance=variance, projection="none", bootstrap=0)
    reference = PCA(n_components=variance if variance < 1 else None, svd_solver="full").fit(x)
    assert analysis.pca["n_components"] == reference.n_components_
    np.testing.assert_allclose(
        analysis.pca["explained_variance_ratio"],
        reference.explained_variance_ratio_[: min(4, reference.n_components_)],
    )
    assert analysis.pca["standardised"] is False


def test_fewer_components_than_modes_tests_the_modes_there_are():
    rng = np.random.default_rng(1)
    x = np.outer(rng.normal(size=120), rng.normal(size=8)) + 1e-6 * rng.normal(size=(120, 8))
    analysis = analyze_embeddings(
        x, pd.DataFrame({"g": np.repeat(["a", "b"], 60)}), projection="none", bootstrap=0
    )
    assert analysis.pca["n_components"] == 1
    assert list(analysis.ks["mode"]) == [1]
    assert any("1 mode(s) tested instead of 4" in note for note in analysis.notes)


def test_multi_group_separability_is_sklearns_macro_one_vs_rest_auc():
    rng = np.random.default_rng(2)
    group = np.repeat(["a", "b", "c"], 80)
    x = rng.normal(size=(240, 6))
    x[:, 1] += np.select([group == "a", group == "b"], [1.5, -1.5], 0.0)
    analysis = analyze_embeddings(x, pd.DataFrame({"g": group}), projection="none", bootstrap=100)
    row = analysis.separability.iloc[0]
    assert row["kind"] == "macro one-vs-rest" and row["n_groups"] == 3
    assert 0.6 < row["auc"] < 1 and row["ci_low"] < row["auc"] < row["ci_high"]
    assert len(analysis.ks) == 3 * 4  # 3 pairs × 4 modes


def test_a_group_smaller_than_the_folds_is_left_out_with_a_note_and_unknowns_are_ignored():
    x, groups, _ = planted(n=200)
    groups = groups.copy()
    groups.loc[:2, "site"] = "C"  # 3 samples < 5 folds
    groups.loc[3:10, "sex"] = np.nan
    groups.loc[11:14, "sex"] = ""
    analysis = analyze_embeddings(x, groups, projection="none", bootstrap=0)
    site = analysis.separability.set_index("attribute").loc["site"]
    assert site["groups"] == "A, B" and site["n"] == 197
    assert any("C (3 samples) left out" in note for note in analysis.notes)
    sex = analysis.separability.set_index("attribute").loc["sex"]
    assert sex["n"] == 200 - 12
    assert set(analysis.ks[analysis.ks["attribute"] == "sex"][["n_a", "n_b"]].sum(axis=1)) == {188}
    assert ("site", "A", "C") in set(map(tuple, analysis.ks[["attribute", "group_a", "group_b"]].to_numpy()))


def test_folds_and_resamples_by_patient_keep_a_patients_images_together(monkeypatch):
    from sklearn import model_selection

    x, groups, _ = planted(n=200)
    patients = np.arange(200) // 2  # two images per patient
    groups = groups.copy()
    groups["site"] = np.repeat(groups["site"].to_numpy()[::2], 2)  # a patient's images share a site
    seen = []
    original = model_selection.StratifiedGroupKFold.split

    def spy(self, X, y=None, groups=None):
        for train, test in original(self, X, y, groups):
            seen.append((set(groups[train]), set(groups[test])))
            yield train, test

    monkeypatch.setattr(model_selection.StratifiedGroupKFold, "split", spy)
    analysis = analyze_embeddings(x, groups, patient_ids=patients, projection="none", bootstrap=50)
    assert len(seen) == 2 * 5  # two attributes × five folds
    assert all(not (train & test) for train, test in seen)
    assert analysis.separability["cv"].str.contains("by patient").all()
    assert analysis.options["by_patient"] is True


def test_the_analysis_is_deterministic_under_its_seed_and_changes_with_it():
    x, groups, _ = planted(n=300)
    first = analyze_embeddings(x, groups, projection="tsne", max_points=120, bootstrap=100, seed=3)
    again = analyze_embeddings(x, groups, projection="tsne", max_points=120, bootstrap=100, seed=3)
    other = analyze_embeddings(x, groups, projection="tsne", max_points=120, bootstrap=100, seed=4)
    pd.testing.assert_frame_equal(first.points, again.points)
    pd.testing.assert_frame_equal(first.separability, again.separability)
    assert first.to_dict() == again.to_dict()
    assert not np.array_equal(first.points["row"], other.points["row"])
    assert first.separability["ci_low"].tolist() != other.separability["ci_low"].tolist()


def test_the_tsne_points_are_a_balanced_subsample_with_their_groups():
    x, groups, _ = planted(n=300)
    groups = groups.copy()
    groups["site"] = np.where(np.arange(300) < 30, "A", "B")  # 30 A, 270 B
    analysis = analyze_embeddings(x, groups[["site"]], projection="tsne", max_points=100, bootstrap=0)
    points = analysis.points
    assert len(points) == 100 and points["site"].value_counts().to_dict() == {"A": 30, "B": 70}
    assert points[["proj1", "proj2"]].notna().all().all()
    assert (points["site"].to_numpy() == groups["site"].to_numpy()[points["row"]]).all()
    reference = PCA(0.99, svd_solver="full").fit_transform(x)[points["row"], 0]
    assert np.allclose(np.abs(points["pc1"]), np.abs(reference))  # the same mode, up to its sign


def test_the_umap_projection_runs_on_small_data():
    x, groups, _ = planted(n=80, dim=6)
    analysis = analyze_embeddings(x, groups, projection="umap", bootstrap=0)
    coordinates = analysis.points[["proj1", "proj2"]].to_numpy()
    assert coordinates.shape == (80, 2) and np.isfinite(coordinates).all()
    # the planted site shift survives the projection: the groups' centres are apart
    site = analysis.points["site"].to_numpy()
    gap = np.linalg.norm(coordinates[site == "A"].mean(axis=0) - coordinates[site == "B"].mean(axis=0))
    assert gap > coordinates.std(axis=0).mean()


@settings(max_examples=25)
@given(st.integers(0, 2**32 - 1), st.integers(2, 4), st.booleans())
def test_bootstrap_auc_equals_roc_auc_score_on_the_resampled_rows(seed, classes, clustered):
    rng = np.random.default_rng(seed)
    n = 40
    y = np.r_[np.arange(classes), rng.integers(0, classes, n - classes)]
    raw = rng.integers(1, 4, size=(n, classes)).astype(float)
    proba = raw / raw.sum(axis=1, keepdims=True)  # rows summing to 1, with many ties
    clusters = np.arange(n) // 2 if clustered else None
    values = bootstrap_auc(y, proba, 20, np.random.default_rng(seed), clusters=clusters, chunk=7)

    def oracle(rows):
        if len(set(y[rows])) < classes:
            return np.nan
        if classes == 2:
            return roc_auc_score(y[rows], proba[rows, 1])
        return roc_auc_score(y[rows], proba[rows], multi_class="ovr", average="macro")

    assert values[0] == pytest.approx(oracle(np.arange(n)))
    replay = np.random.default_rng(seed)
    units = n if clusters is None else n // 2
    drawn = []
    for start in range(0, 20, 7):
        counts = replay.multinomial(units, np.full(units, 1 / units), size=min(7, 20 - start))
        drawn.extend(counts if clusters is None else counts[:, clusters])
    for value, counts in zip(values[1:], drawn):
        expected = oracle(np.repeat(np.arange(n), counts))
        if np.isnan(expected):
            # a resample missing a class: NaN overall (binary) — in one-vs-rest the class's own AUC is
            # undefined
            assert np.isnan(value)
        else:
            assert value == pytest.approx(expected)


def test_balanced_subsample_gives_small_strata_everything_and_shares_the_rest():
    groups = pd.DataFrame({"g": ["a"] * 5 + ["b"] * 50 + ["c"] * 200})
    chosen = balanced_subsample(groups, 61, np.random.default_rng(0))
    counts = groups["g"].to_numpy()[chosen]
    assert {g: int((counts == g).sum()) for g in "abc"} == {"a": 5, "b": 28, "c": 28}
    assert len(set(chosen)) == 61 and (np.diff(chosen) > 0).all()


def test_json_round_trip_keeps_every_table():
    x, groups, labels = planted(n=150)
    analysis = analyze_embeddings(x, groups, labels=labels, projection="tsne", max_points=60, bootstrap=30)
    document = json.loads(json.dumps(analysis.to_dict(), allow_nan=False))
    back = EmbeddingAnalysis.from_dict(document)
    pd.testing.assert_frame_equal(back.ks, analysis.ks)
    pd.testing.assert_frame_equal(back.separability, analysis.separability)
    pd.testing.assert_frame_equal(back.points, analysis.points)
    assert back.pca == analysis.pca and back.options == analysis.options and back.notes == analysis.notes


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"projection": "pca"}, "projection 'pca'"),
        ({"fdr": "bonferroni"}, "fdr 'bonferroni'"),
        ({"variance": 1.5}, "variance 1.5"),
        ({"cv_folds": 1}, "cv_folds 1"),
    ],
)
def test_bad_options_are_input_errors(kwargs, message):
    x, groups, _ = planted(n=50)
    with pytest.raises(InputError, match=message):
        analyze_embeddings(x, groups, **kwargs)


def test_bad_inputs_name_what_is_wrong():
    x, groups, _ = planted(n=50)
    with pytest.raises(InputError, match="groups: 49 rows for 50"):
        analyze_embeddings(x, groups.iloc[:49])
    bad = x.copy()
    bad[7, 2] = np.nan
    with pytest.raises(InputError, match="first row 7"):
        analyze_embeddings(bad, groups)
    with pytest.raises(InputError, match="label_y.*holds 2"):
        analyze_embeddings(x, groups, labels=pd.DataFrame({"label_y": [2.0] * 50}))


def test_unknown_spellings_are_unknown_and_groups_are_in_natural_order():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(120, 5))
    age = pd.Series(np.tile(["10", "9", "unknown", "-1", "80"], 24))
    analysis = analyze_embeddings(x, pd.DataFrame({"age": age}), projection="none", bootstrap=0)
    pairs = analysis.ks[analysis.ks["mode"] == 1][["group_a", "group_b"]].to_numpy().tolist()
    assert pairs == [["9", "10"], ["9", "80"], ["10", "80"]]
    row = analysis.separability.iloc[0]
    assert row["groups"] == "9, 10, 80" and row["n"] == 72
    assert set(analysis.points["age"]) == {"9", "10", "80", ""}
