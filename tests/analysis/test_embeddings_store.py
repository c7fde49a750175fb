"""``run_embeddings`` / ``features_embeddings`` / ``fairfm analyze embeddings`` over a real feature-cache
layout written without torch: a prepared synthetic dataset, a cache entry whose rows are in another order than
the SampleTable, and stored runs pointing at it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from fairfm.analysis import EmbeddingAnalysis, analyze_embeddings, run_embeddings, stored_embedding_analyses
from fairfm.analysis import embeddings as embeddings_module
from fairfm.analysis.embeddings import features_embeddings
from fairfm.errors import InputError
from fairfm.results import Store
from tests.conftest import run_cli

KEY = "feat0123456789abcdef"
FAST = {"projection": "none", "bootstrap": 50}


def planted_features(table: pd.DataFrame, dim: int = 12) -> np.ndarray:
    """Per SampleTable row: sex shifts the first direction far beyond the noise; age is not encoded."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(len(table), dim)) * np.linspace(2.0, 0.5, dim)
    x[:, 0] += np.where(table["group_sex"].to_numpy() == "F", 6.0, -6.0)
    return x.astype(np.float32)


def write_cache(
    folder: Path, table: pd.DataFrame, features: np.ndarray, *, slices: int = 1, seed: int = 0
) -> None:
    """The layout of fairfm.adapt.features: rows in a shuffled order (as a cache made of another table
    order)."""
    folder.mkdir(parents=True)
    order = np.random.default_rng(seed).permutation(len(table))
    rows = np.repeat(order, slices)
    offsets = np.tile(np.arange(slices), len(order))
    # each slice is the sample's vector plus a slice-specific offset that averages out to zero
    matrix = features[rows] + (offsets - (slices - 1) / 2)[:, None].astype(np.float32)
    np.save(folder / "features.npy", matrix.astype(np.float32))
    np.save(folder / "done.npy", np.ones(len(table), dtype=bool))
    pd.DataFrame(
        {
            "sample_id": table["sample_id"].to_numpy()[rows],
            "slice_index": offsets if slices > 1 else -1,
            "table_row": rows,
        }
    ).to_parquet(folder / "index.parquet", index=False)
    meta = {
        "format": 1,
        "key": folder.name,
        "model": "fake-encoder",
        "rows": len(matrix),
        "samples": len(table),
        "dim": features.shape[1],
        "complete": True,
    }
    (folder / "meta.json").write_text(json.dumps(meta))


def store_run(
    store: Store, run_id: str, dataset: Path, *, usage: str = "linear_probe", key: str | None = KEY
) -> str:
    from fairfm.runner import report_from_predictions

    table = pd.read_parquet(dataset / "samples.parquet")
    rng = np.random.default_rng(0)
    rows = table[table["split"].isin(["val", "test"])]
    predictions = pd.DataFrame(
        {
            "sample_id": rows["sample_id"],
            "task": "disease",
            "split": rows["split"],
            "y_true": rows["label_disease"].astype(int),
            "y_score": rng.random(len(rows)),
            "group_sex": rows["group_sex"],
            "group_age": rows["group_age"],
        }
    )
    evaluation = {"threshold": "best_f1@val", "bootstrap": 0, "seed": 0}
    document = {
        "usage": usage,
        "model": "fake-encoder",
        "method": None,
        "tasks": ["disease"],
        "attributes": ["sex", "age"],
        "dataset": str(dataset),
        **evaluation,
    }
    meta = {"features": {"key": key, "computed": 0, "dim": 12}} if key else {}
    store.run_derived(
        run_id,
        document,
        lambda: (predictions, report_from_predictions(predictions, SimpleNamespace(**evaluation)), meta),
    )
    return run_id


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from fairfm.data.synth import generate

    folder = tmp_path_factory.mktemp("embsynth") / "data"
    generate(folder, n=400, size=16, seed=0, fractions=(0.5, 0.25, 0.25))
    return folder


@pytest.fixture
def store(tmp_path, dataset) -> Store:
    store = Store(tmp_path / "store")
    table = pd.read_parquet(dataset / "samples.parquet")
    write_cache(store.path / "features" / KEY, table, planted_features(table))
    store_run(store, "lp-run-0", dataset)
    return store


def direct(dataset: Path, split: str = "test", **options) -> EmbeddingAnalysis:
    """The oracle: the same analysis on the planted features in SampleTable order."""
    table = pd.read_parquet(dataset / "samples.parquet")
    x = planted_features(table).astype(np.float64)
    keep = (table["split"] == split).to_numpy() if split != "all" else np.ones(len(table), dtype=bool)
    rows = table[keep]
    return analyze_embeddings(
        x[keep],
        rows[["group_sex", "group_age"]],
        labels=rows[["label_disease"]],
        patient_ids=rows["patient_id"].to_numpy(),
        sample_ids=rows["sample_id"].to_numpy(),
        **options,
    )


def comparable(analysis: EmbeddingAnalysis) -> dict:
    document = analysis.to_dict()
    document.pop("source")
    document["notes"] = [n for n in document["notes"] if "slice" not in n]
    return document


def test_a_runs_analysis_reads_its_cache_by_sample_id_on_the_test_split(store, dataset):
    analysis = run_embeddings(store, "lp-run-0", **FAST)
    assert comparable(analysis) == comparable(direct(dataset, **FAST))
    table = pd.read_parquet(dataset / "samples.parquet")
    assert analysis.pca["n_samples"] == int((table["split"] == "test").sum())
    assert analysis.source["run_id"] == "lp-run-0" and analysis.source["key"] == KEY
    assert analysis.source["model"] == "fake-encoder"
    separability = analysis.separability.set_index("attribute")
    assert separability.loc["sex", "ci_low"] > 0.9
    assert separability.loc["sex", "cv"].endswith("by patient")
    assert set(analysis.ks["attribute"]) == {"sex", "age", "label_disease"}


def test_split_all_and_chosen_attributes(store, dataset):
    analysis = run_embeddings(store, "lp-run-0", split="all", attributes=["age"], **FAST)
    assert analysis.pca["n_samples"] == 400
    assert analysis.attributes == ["age"] and list(analysis.separability["attribute"]) == ["age"]


def test_the_analysis_is_stored_and_found_instead_of_recomputed(store, monkeypatch):
    first = run_embeddings(store, "lp-run-0", **FAST)
    folder = store.path / "analyses" / "embeddings" / first.source["analysis_id"]
    assert (folder / "analysis.json").is_file() and (folder / "projection.parquet").is_file()

    def refuse(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr(embeddings_module, "analyze_embeddings", refuse)
    again = run_embeddings(store, "lp-run-0", **FAST)
    assert again.to_dict() == first.to_dict()
    with pytest.raises(AssertionError, match="recomputed"):
        run_embeddings(store, "lp-run-0", **{**FAST, "seed": 1})  # other options: another analysis
    with pytest.raises(AssertionError, match="recomputed"):
        run_embeddings(store, "lp-run-0", recompute=True, **FAST)


def test_stored_analyses_are_listed_for_the_report(store, dataset):
    store_run(store, "lp-run-1", dataset)
    assert stored_embedding_analyses(store) == []
    a = run_embeddings(store, "lp-run-0", **FAST)
    b = run_embeddings(store, "lp-run-1", **FAST)
    found = stored_embedding_analyses(store)
    assert [name for name, _ in found] == ["lp-run-0", "lp-run-1"]
    assert found[0][1].to_dict() == a.to_dict() and found[1][1].to_dict() == b.to_dict()
    assert [name for name, _ in stored_embedding_analyses(store, ["lp-run-1"])] == ["lp-run-1"]


def test_volume_slices_are_averaged_into_one_row_per_sample(tmp_path, dataset):
    store = Store(tmp_path / "store")
    table = pd.read_parquet(dataset / "samples.parquet")
    write_cache(store.path / "features" / KEY, table, planted_features(table), slices=3)
    store_run(store, "vol-run", dataset)
    analysis = run_embeddings(store, "vol-run", **FAST)
    expected = direct(dataset, **FAST)
    np.testing.assert_allclose(analysis.points["pc1"].abs(), expected.points["pc1"].abs(), rtol=1e-5)
    assert analysis.pca["n_components"] == expected.pca["n_components"]
    assert any("3–3 slice embeddings are averaged" in note for note in analysis.notes)


def test_the_features_form_joins_a_cache_folder_with_a_dataset_folder(store, dataset):
    analysis = features_embeddings(store.path / "features" / KEY, dataset, store=store, **FAST)
    assert analysis.source["run_id"] is None and analysis.source["key"] == KEY
    assert set(analysis.attributes) == {"sex", "age"} and analysis.options["tasks"] == ["disease"]
    assert [name for name, _ in stored_embedding_analyses(store)] == [KEY]
    assert stored_embedding_analyses(store, ["lp-run-0"]) == []


def test_missing_samples_are_left_out_with_a_note(tmp_path, dataset):
    table = pd.read_parquet(dataset / "samples.parquet")
    test_rows = table.index[table["split"] == "test"]
    partial = table.drop(index=test_rows[:5]).reset_index(drop=True)
    write_cache(tmp_path / "cache", partial, planted_features(partial))
    analysis = features_embeddings(tmp_path / "cache", dataset, **FAST)
    assert analysis.pca["n_samples"] == len(test_rows) - 5
    assert f"5 of {len(test_rows)} test sample(s) have no cached features" in analysis.notes[0]


def test_a_run_without_cached_features_is_refused_naming_it(store, dataset):
    store_run(store, "ft-run", dataset, usage="finetune", key=None)
    with pytest.raises(
        InputError,
        match=r"run ft-run: no cached frozen-encoder features \(usage 'finetune';.*"
        r"meta.json has no features.key",
    ):
        run_embeddings(store, "ft-run")


def test_a_missing_cache_entry_or_dataset_folder_is_named(store, dataset, tmp_path):
    shutil.rmtree(store.path / "features" / KEY)
    with pytest.raises(
        InputError, match=f"feature cache {store.path / 'features' / KEY}: meta.json not found"
    ):
        run_embeddings(store, "lp-run-0")
    moved = tmp_path / "moved"
    shutil.copytree(dataset, moved)
    other = Store(tmp_path / "other")
    table = pd.read_parquet(moved / "samples.parquet")
    write_cache(other.path / "features" / KEY, table, planted_features(table))
    store_run(other, "lp", moved)
    shutil.rmtree(moved)
    with pytest.raises(InputError, match=f"dataset folder {moved}: not found"):
        run_embeddings(other, "lp")


def test_bad_split_attribute_and_incomplete_cache(store, tmp_path, dataset):
    with pytest.raises(InputError, match="--split validation: .* has no such samples"):
        run_embeddings(store, "lp-run-0", split="validation")
    with pytest.raises(InputError, match="attribute 'race': .* has no column 'group_race'"):
        run_embeddings(store, "lp-run-0", attributes=["race"])
    meta = store.path / "features" / KEY / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "complete": False}))
    with pytest.raises(InputError, match="incomplete"):
        features_embeddings(meta.parent, dataset)


# -------------------------------------------------------------------------------- the CLI


def test_cli_prints_pca_ks_and_separability_and_writes_json(store, capsys, tmp_path):
    out = tmp_path / "analysis.json"
    code, stdout, err = run_cli(
        capsys,
        "analyze",
        "embeddings",
        "lp-run-0",
        "--store",
        store.path,
        "--projection",
        "none",
        "--bootstrap",
        50,
        "--out",
        out,
    )
    assert code == 0, err
    assert "PCA:" in stdout and "components keep" in stdout
    assert "Kolmogorov–Smirnov tests of PCA modes" in stdout and "significant" in stdout
    assert "F vs M" in stdout and "positive vs negative" in stdout
    assert "Subgroup separability" in stdout and "StratifiedGroupKFold(5) by patient" in stdout
    analysis = EmbeddingAnalysis.from_dict(json.loads(out.read_text()))
    stored = stored_embedding_analyses(store)[0][1]
    assert analysis.to_dict() == stored.to_dict()
    sex = analysis.separability.set_index("attribute").loc["sex"]
    assert f"{sex['auc']:.3f}" in stdout and f"[{sex['ci_low']:.3f}, {sex['ci_high']:.3f}]" in stdout
    significant = int(analysis.ks["significant"].sum())
    assert f"{significant} of {len(analysis.ks)} significant (Benjamini–Hochberg" in stdout


def test_cli_features_form_with_tsne_and_by(store, dataset, capsys):
    code, stdout, err = run_cli(
        capsys,
        "analyze",
        "embeddings",
        "--features",
        store.path / "features" / KEY,
        "--data",
        dataset,
        "--store",
        store.path,
        "--attr",
        "sex",
        "--fdr",
        "by",
        "--bootstrap",
        20,
        "--max-points",
        40,
        "--seed",
        2,
    )
    assert code == 0, err
    assert f"features {KEY}" in stdout and "Benjamini–Yekutieli" in stdout
    ((_, analysis),) = stored_embedding_analyses(store)
    assert analysis.options["projection"] == "tsne" and analysis.options["seed"] == 2
    assert len(analysis.points) == 40 and analysis.points["proj1"].notna().all()


@pytest.mark.parametrize(
    "args,message",
    [
        ((), "exactly one of RUN or --features"),
        (("lp-run-0", "--features", "x", "--data", "y"), "exactly one of RUN or --features"),
        (("--features", "x"), "--features needs --data"),
        (("ft-run",), "run ft-run: no cached frozen-encoder features"),
        (("lp-run-0", "--projection", "pca"), "projection 'pca'"),
        (("nope",), "no run 'nope'"),
    ],
)
def test_cli_refuses_bad_input_in_one_line(store, dataset, capsys, args, message):
    store_run(store, "ft-run", dataset, usage="finetune", key=None)
    code, stdout, err = run_cli(capsys, "analyze", "embeddings", *args, "--store", store.path)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------------ a real run


def test_a_real_linear_probe_runs_feature_cache_is_analysed(tmp_path, capsys):
    """End to end: a tiny CLIP linear-probe run stores its features key; the analysis finds the cache entry
    the run wrote (STORE/features/<key>/) and analyses its test samples."""
    from fairfm.data.synth import generate
    from tests.adapt.helpers import make_tiny_clip

    data = tmp_path / "data"
    generate(data, n=240, size=32, seed=0, fractions=(0.5, 0.25, 0.25))
    clip = make_tiny_clip(tmp_path / "clip")
    store = Store(tmp_path / "store")
    code, _, err = run_cli(
        capsys,
        "run",
        "--dataset",
        data,
        "--model",
        "clip",
        "--checkpoint",
        clip,
        "--usage",
        "linear_probe",
        "--bootstrap",
        0,
        "--store",
        store.path,
        "-q",
        "--hp",
        "epochs=2",
    )
    assert code == 0, err
    (record,) = store.list()
    code, stdout, err = run_cli(
        capsys,
        "analyze",
        "embeddings",
        record.run_id,
        "--store",
        store.path,
        "--projection",
        "none",
        "--bootstrap",
        50,
    )
    assert code == 0, err
    ((name, analysis),) = stored_embedding_analyses(store)
    assert name == record.run_id and analysis.source["key"] == record.meta["features"]["key"]
    table = pd.read_parquet(data / "samples.parquet")
    test_ids = set(table.loc[table["split"] == "test", "sample_id"])
    assert (
        analysis.pca["n_samples"] == len(test_ids) and analysis.pca["dim"] == record.meta["features"]["dim"]
    )
    assert set(analysis.points["sample_id"]) == test_ids
    assert f"run {record.run_id} · clip · split test" in stdout


def test_figures_draw_a_stored_analysis_read_back_from_the_store(store):
    from fairfm.analysis.embedding_figures import embedding_scatter, separability_plot

    run_embeddings(store, "lp-run-0", projection="tsne", bootstrap=20, max_points=60)
    ((_, analysis),) = stored_embedding_analyses(store)
    for attribute in ("sex", "age", "label_disease"):
        fig = embedding_scatter(analysis, attribute)
        assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == len(analysis.points)
    assert len(embedding_scatter(analysis, "sex", which="projection").axes) == 3
    assert len(separability_plot(analysis).axes[0].texts) >= 2


def test_a_store_that_cannot_be_written_is_refused_before_the_work(store, monkeypatch, capsys):
    store.path.joinpath("analyses").write_text("not a folder")

    def refuse(*args, **kwargs):
        raise AssertionError("computed although the result could not be stored")

    monkeypatch.setattr(embeddings_module, "analyze_embeddings", refuse)
    code, _, err = run_cli(capsys, "analyze", "embeddings", "lp-run-0", "--store", store.path)
    assert code == 2 and err.startswith(f"error: store {store.path}:") and "is a file" in err


def test_the_report_shows_the_analysis_of_a_runs_feature_cache_once(store, dataset):
    from fairfm.report.build import ReportOptions, build_report

    features_embeddings(store.path / "features" / KEY, dataset, store=store, **FAST)  # --features: no run id
    assert [name for name, _ in stored_embedding_analyses(store, ["lp-run-0"], [KEY])] == [KEY]

    def embedding_titles():
        built = build_report(store, [store.load("lp-run-0")], ReportOptions(curves=0))
        section = next(s for s in built.document.sections if s.id == "embeddings")
        return [s.title for s in section.subsections]

    assert embedding_titles() == [f"feature cache {KEY[:12]} (test split)"]
    run_embeddings(store, "lp-run-0", **FAST)  # the same cache, split and options, now by run: shown once, newest
    assert embedding_titles() == ["fake-encoder (run lp-run-0, test split)"]
