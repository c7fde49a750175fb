"""The results store: run ids, atomic writes, resume without recomputation, crash safety, catalogue, seeds."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fairfm
from fairfm.errors import InputError
from fairfm.results import METRIC_COLUMNS, RunOutput, Store, data_version
from fairfm.results import run_components
from fairfm.results import runid as runid_module
from fairfm.results import versions as versions_module
from fairfm.spec import RunSpec
from fairfm.usages import base as usages_base
from fairfm.usages import get_usage
from tests.results.helpers import compute, make_dataset

REPO = Path(__file__).resolve().parents[2]


class Counter:
    """A run function that counts its calls."""

    def __init__(self, fn=compute):
        self.calls, self.fn = 0, fn

    def __call__(self, spec):
        self.calls += 1
        return self.fn(spec)


# -- run ids --------------------------------------------------------------------------------------------------------


def test_run_id_changes_with_the_spec(store, spec):
    base = store.run_id(spec)
    assert len(base) == 16 and int(base, 16) >= 0
    assert store.run_id(spec) == base
    assert store.run_id(spec.model_dump()) == base  # a mapping is validated into the same spec
    for change in ({"seed": 1}, {"model": "other"}, {"hparams": {"lr": 1e-3}}, {"attributes": ["sex"]},
                   {"method": "group_dro"}, {"bootstrap": 21}, {"threshold": "youden@val"}):  # fmt: skip
        assert store.run_id(spec.replace(**change)) != base, change
    # execution fields are not part of what a run computes
    assert store.run_id(spec.replace(device="cpu")) == base
    assert store.run_id(spec.replace(trust_checkpoint=True)) == base
    # defaults written out explicitly are the same run
    explicit = spec.replace(tasks=["disease"], attributes=["sex", "age"], split="patient",
                            hparams=spec.hparams, threshold="best_f1@val")  # fmt: skip
    assert store.run_id(explicit) == base


def test_run_id_changes_with_the_data_version(store, spec, dataset):
    before, sha_before = store.run_id(spec), data_version(dataset)
    manifest = json.loads((dataset / "dataset.json").read_text())
    manifest["split"]["seed"] = 1  # e.g. the dataset was prepared again with another split seed
    (dataset / "dataset.json").write_text(json.dumps(manifest))
    assert data_version(dataset) != sha_before
    assert store.run_id(spec) != before


def test_run_id_survives_a_code_upgrade_but_follows_the_results_versions(tmp_path, spec, monkeypatch):
    # The run id used to hash the git commit and the fairfm version: every commit lost every stored run.
    detected = Store(tmp_path / "s").run_id(spec)
    assert Store(tmp_path / "s", code={"fairfm": "0.0.1", "git": "abc"}).run_id(spec) == detected
    monkeypatch.setattr(fairfm, "__version__", "9.9.9")
    monkeypatch.setattr(runid_module, "_git_commit", lambda: "0" * 40)
    assert Store(tmp_path / "s").run_id(spec) == detected
    assert Store(tmp_path / "s").key(spec).code == {"fairfm": "9.9.9", "git": "0" * 40}  # still recorded
    # A component whose numbers change bumps its results version: another run id, the same spec key.
    monkeypatch.setitem(versions_module.RESULTS_VERSIONS, "metrics", versions_module.RESULTS_VERSIONS["metrics"] + 1)
    bumped = Store(tmp_path / "s").key(spec)
    assert bumped.run_id != detected and bumped.spec_key == Store(tmp_path / "s").key(spec).spec_key
    # A component the run does not use changes nothing (a linear probe does not run SAM).
    monkeypatch.undo()
    monkeypatch.setitem(usages_base._USAGES, "sam_prompt", dataclasses.replace(get_usage("sam_prompt"), results_version=99))
    assert Store(tmp_path / "s").run_id(spec) == detected


def test_a_commit_only_change_still_finds_the_stored_run(store, spec, monkeypatch):
    store.run(spec, compute)
    monkeypatch.setattr(runid_module, "_git_commit", lambda: "f" * 40)
    counter = Counter()
    record = store.run(spec, counter)
    assert counter.calls == 0 and not record.stale
    assert record.meta["code"]["git"] != "f" * 40  # the exact code version it was made by is kept in meta.json


def test_a_bumped_results_version_makes_the_stored_run_stale(store, spec, monkeypatch):
    first = store.run(spec, compute)
    assert not first.stale and first.meta["results_versions"] == run_components("linear_probe")
    probe = get_usage("linear_probe")  # a usage's results version is declared in its registration
    monkeypatch.setitem(usages_base._USAGES, "linear_probe",
                        dataclasses.replace(probe, results_version=probe.results_version + 1))  # fmt: skip
    assert store.find(spec) is None
    stale = store.find_stale(spec)
    assert stale is not None and stale.run_id == first.run_id and stale.stale
    assert store.load(first.run_id).stale
    recomputed = store.run(spec, compute)  # Store.run never serves a stale run; the runner decides (see test_runner)
    assert recomputed.run_id != first.run_id and not recomputed.stale and len(store) == 2
    assert store.find_stale(spec).run_id == first.run_id
    agg = store.aggregate(metric="auc", attribute="__all__")  # never averaged together: two configurations
    assert len(agg) == 2 and sorted(agg["stale"]) == [False, True] and list(agg["n_seeds"]) == [1, 1]


def test_a_sample_table_edited_in_place_is_a_new_run(store, spec, dataset):
    first = store.run(spec, compute)
    samples = dataset / "samples.parquet"
    frame = pd.read_parquet(samples)
    frame["label_disease"] = 1.0 - frame["label_disease"]  # every label flipped, dataset.json untouched
    frame.to_parquet(samples, index=False)
    counter = Counter()
    second = store.run(spec, counter)
    assert counter.calls == 1 and second.run_id != first.run_id
    assert second.meta["data"]["samples_sha256"] != first.meta["data"]["samples_sha256"]
    assert not first.meta["data"]["edited_after_prepare"] and second.meta["data"]["edited_after_prepare"]
    assert store.find_stale(spec) is None  # other data is another run, not a stale one


def test_run_id_is_the_same_in_another_process(store, spec, tmp_path):
    path = tmp_path / "spec.yaml"
    spec.to_yaml(path)
    script = ("import sys; from fairfm.results import Store; from fairfm.spec import RunSpec; "
              "print(Store(sys.argv[1]).run_id(RunSpec.from_yaml(sys.argv[2])))")  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", script, str(store.path), str(path)], capture_output=True, text=True,
                         check=True, env=env, cwd=REPO)  # fmt: skip
    assert out.stdout.strip() == store.run_id(spec)


def test_config_id_ignores_only_the_seed(store, spec):
    assert store.key(spec).config_id == store.key(spec.replace(seed=7)).config_id
    assert store.key(spec).config_id != store.key(spec.replace(hparams={"lr": 1e-3})).config_id
    assert store.key(spec).config_id != store.key(spec).run_id


# -- write / find / load --------------------------------------------------------------------------------------------


def test_write_find_load_round_trip(store, spec):
    output = compute(spec)
    assert store.find(spec) is None
    run_id = store.write(spec, output.predictions, output.metrics, {"timings": {"train_s": 1.5}})
    assert run_id == store.run_id(spec)
    folder = store.path / "runs" / run_id
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "metrics.parquet", "predictions.parquet",
                                                        "spec.json"]  # fmt: skip
    from fairfm.tableio import default_mode

    assert (folder.stat().st_mode & 0o777) == default_mode(directory=True)  # not mkdtemp's private 0700
    record = store.find(spec)
    assert record is not None and record.run_id == run_id
    # real Parquet files, read back independently of the store
    predictions = pd.read_parquet(folder / "predictions.parquet")
    expected = output.predictions.assign(run_id=run_id)
    pd.testing.assert_frame_equal(predictions[expected.columns].reset_index(drop=True),
                                  expected.reset_index(drop=True), check_dtype=False)  # fmt: skip
    assert list(predictions.columns[:6]) == ["run_id", "sample_id", "task", "split", "y_true", "y_score"]
    assert {"group_sex", "group_age"} <= set(predictions.columns)
    metrics = pd.read_parquet(folder / "metrics.parquet")
    assert list(metrics.columns) == list(METRIC_COLUMNS)
    assert (metrics["run_id"] == run_id).all()
    np.testing.assert_allclose(metrics["value"].to_numpy(float), output.metrics["value"].to_numpy(float))
    assert metrics["metric"].tolist() == output.metrics["metric"].tolist()
    # the stored spec is the resolved spec, and loads back into the same run
    assert json.loads((folder / "spec.json").read_text()) == spec.resolve() == record.spec
    assert store.run_id(record.run_spec()) == run_id
    assert record.run_spec().device == spec.device
    meta = record.meta
    assert meta["run_id"] == run_id and meta["seed"] == spec.seed and meta["timings"] == {"train_s": 1.5}
    assert meta["data"]["sha256"] == data_version(spec.dataset) and meta["data"]["dataset"] == "toy"
    assert meta["code"]["fairfm"] == fairfm.__version__
    assert {"created", "host", "python", "platform", "config_id", "device"} <= set(meta)
    loaded = store.load(run_id)
    pd.testing.assert_frame_equal(loaded.metrics, record.metrics)
    assert store.load(run_id[:6]).run_id == run_id
    assert [r.run_id for r in store.list()] == [run_id] and len(store) == 1
    # nothing is left in the temporary area
    assert list((store.path / "tmp").iterdir()) == []


def test_write_accepts_a_report_and_keeps_a_finished_run(store, spec, dataset):
    import fairfm.metrics as fm

    output = compute(spec)
    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 20)
    report = fm.evaluate(y, rng.random(40), groups={"sex": np.repeat(["F", "M"], 20)}, bootstrap=0)
    run_id = store.write(spec, output.predictions, report)
    assert set(store.load(run_id).metrics["metric"]) == set(report.to_metric_table()["metric"])
    before = (store.path / "runs" / run_id / "metrics.parquet").read_bytes()
    store.write(spec, output.predictions, output.metrics)  # already stored: not overwritten
    assert (store.path / "runs" / run_id / "metrics.parquet").read_bytes() == before


def test_bad_tables_are_refused_before_anything_is_written(store, spec):
    output = compute(spec)
    with pytest.raises(InputError, match=r"PredictionTable: missing column\(s\) y_score"):
        store.write(spec, output.predictions.drop(columns="y_score"), output.metrics)
    doubled = pd.concat([output.predictions, output.predictions.iloc[:1]])
    with pytest.raises(InputError, match=r"PredictionTable: sample 's000' appears twice for task 'disease'"):
        store.write(spec, doubled, output.metrics)
    with pytest.raises(InputError, match=r"MetricTable: missing column\(s\) ci_low"):
        store.write(spec, output.predictions, output.metrics.drop(columns="ci_low"))
    with pytest.raises(InputError, match=r"meta: 'run_id' is set by the store"):
        store.write(spec, output.predictions, output.metrics, {"run_id": "x"})
    assert len(store) == 0 and not (store.path / "runs").exists()


def test_load_unknown_and_ambiguous_ids(store, spec):
    import shutil

    with pytest.raises(InputError, match=r"^no run 'deadbeef' in .* \(0 run\(s\); see 'fairfm runs list'\)$"):
        store.load("deadbeef")
    run_id = store.run(spec, compute).run_id
    twin = run_id[:8] + ("0" * 8 if run_id[8:] != "0" * 8 else "f" * 8)
    shutil.copytree(store.path / "runs" / run_id, store.path / "runs" / twin)
    with pytest.raises(InputError, match=rf"^run id '{run_id[:8]}' is ambiguous in .*: matches "):
        store.load(run_id[:8])
    assert store.load(run_id[:9] if run_id[8] != twin[8] else run_id).run_id == run_id
    assert store.load(run_id).run_id == run_id  # a full id is never ambiguous
    with pytest.raises(InputError, match=r"^no run 'zz' in .* \(2 run\(s\)"):
        store.load("zz")


# -- store.run: resume, never recompute, crash safety ----------------------------------------------------------------


def test_run_computes_once(store, spec):
    counter = Counter()
    first = store.run(spec, counter)
    second = store.run(spec, counter)
    third = Store(store.path).run(RunSpec.from_dict(spec.model_dump()), counter)  # a fresh process's view
    assert counter.calls == 1
    assert first.run_id == second.run_id == third.run_id
    pd.testing.assert_frame_equal(first.metrics, third.metrics)
    assert first.meta["timings"]["run_s"] >= 0
    store.run(spec.replace(seed=1), counter)
    assert counter.calls == 2


def test_run_accepts_a_tuple(store, spec):
    record = store.run(spec, lambda s: (compute(s).predictions, compute(s).metrics))
    assert store.exists(record.run_id)


def test_an_exception_during_the_run_leaves_nothing(store, spec):
    def failing(_spec):
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        store.run(spec, failing)
    assert store.find(spec) is None and len(store) == 0
    counter = Counter()
    store.run(spec, counter)
    assert counter.calls == 1


def test_an_exception_while_writing_leaves_nothing(store, spec, monkeypatch):
    real = pd.DataFrame.to_parquet

    def breaks_on_metrics(self, path, *args, **kwargs):
        if Path(path).name == "metrics.parquet":
            real(self, path, *args, **kwargs)  # the file exists, then the disk "fills up"
            raise OSError(28, "No space left on device")
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", breaks_on_metrics)
    with pytest.raises(OSError, match="No space left"):
        store.run(spec, compute)
    assert len(store) == 0 and store.find(spec) is None
    assert list((store.path / "tmp").iterdir()) == []  # cleaned up by the failing writer itself
    monkeypatch.undo()
    counter = Counter()
    store.run(spec, counter)
    assert counter.calls == 1


CRASH_SCRIPT = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    import pandas as pd
    from fairfm.results import Store
    from fairfm.spec import RunSpec
    from tests.results.helpers import compute

    store_dir, spec_path, where = sys.argv[1:4]
    real_to_parquet, real_replace = pd.DataFrame.to_parquet, os.replace

    def to_parquet(self, path, *args, **kwargs):
        real_to_parquet(self, path, *args, **kwargs)
        if where == "after-predictions" and Path(path).name == "predictions.parquet":
            os._exit(9)  # killed between two files

    def replace(src, dst):
        if where == "before-rename" and Path(dst).parent.name == "runs":
            os._exit(9)  # killed with every file written, just before the run is published
        return real_replace(src, dst)

    pd.DataFrame.to_parquet = to_parquet
    os.replace = replace
    Store(store_dir).run(RunSpec.from_yaml(spec_path), compute)
""")


@pytest.mark.parametrize("where", ["after-predictions", "before-rename"])
def test_a_killed_run_is_invisible_and_redone(store, spec, tmp_path, where):
    spec_path = tmp_path / "spec.yaml"
    spec.to_yaml(spec_path)
    result = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(store.path), str(spec_path), where],
                            capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert result.returncode == 9, result.stderr
    # the killed writer left its temporary folder, and no visible run
    leftovers = list((store.path / "tmp").iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(store.run_id(spec) + ".")
    assert (leftovers[0] / "predictions.parquet").exists()
    assert store.find(spec) is None and store.list() == []
    assert store.query("SELECT count(*) AS n FROM metrics")["n"].iloc[0] == 0
    # the next call cleans up and recomputes
    counter = Counter()
    record = store.run(spec, counter)
    assert counter.calls == 1 and store.exists(record.run_id)
    assert list((store.path / "tmp").iterdir()) == []


def test_a_live_writers_temporary_folder_is_not_removed(store, spec):
    run_id = store.run_id(spec)
    from fairfm.tableio import host_tag

    live = store.path / "tmp" / f"{run_id}.{host_tag()}.{os.getpid()}.abc"
    live.mkdir(parents=True)
    dead = store.path / "tmp" / f"{run_id}.{host_tag()}.999999999.abc"
    dead.mkdir()
    foreign_old = store.path / "tmp" / f"{run_id}.another-host.12.abc"
    foreign_new = store.path / "tmp" / f"{run_id}.another-host.13.abc"
    foreign_old.mkdir()
    foreign_new.mkdir()
    two_days_ago = __import__("time").time() - 2 * 24 * 3600
    os.utime(foreign_old, (two_days_ago, two_days_ago))
    assert sorted(store.clean()) == sorted([dead, foreign_old])  # a foreign pid cannot be checked: only by age
    assert live.exists() and foreign_new.exists() and not dead.exists() and not foreign_old.exists()


def test_a_concurrent_writer_that_finished_first_wins(store, spec, monkeypatch):
    output = compute(spec)
    run_id = store.write(spec, output.predictions, output.metrics, {"writer": "first"})
    real_exists = Store.exists
    answers = [False]  # the second writer checked before the first one had published

    monkeypatch.setattr(Store, "exists", lambda self, rid: answers.pop() if answers else real_exists(self, rid))
    assert store.write(spec, output.predictions, output.metrics, {"writer": "second"}) == run_id
    assert not answers  # the early check really was bypassed
    assert store.load(run_id).meta["writer"] == "first"
    assert list((store.path / "tmp").iterdir()) == []


# -- catalogue ------------------------------------------------------------------------------------------------------


def test_duckdb_query_over_two_runs(store, spec):
    a = store.run(spec, compute)
    b = store.run(spec.replace(model="other_vit"), compute)
    counts = store.query("SELECT run_id, count(*) AS n FROM metrics GROUP BY run_id ORDER BY run_id")
    expected = sorted([(a.run_id, len(a.metrics)), (b.run_id, len(b.metrics))])
    assert list(counts.itertuples(index=False, name=None)) == expected
    joined = store.query("""SELECT r.model, m.value FROM metrics m JOIN runs r USING (run_id)
                            WHERE m.metric = 'auc' AND m.attribute = '__all__' ORDER BY r.model""")
    truth = {rec.spec["model"]: rec.metrics.query("metric == 'auc' and attribute == '__all__'")["value"].iloc[0]
             for rec in (a, b)}  # fmt: skip
    assert joined["model"].tolist() == sorted(truth)
    np.testing.assert_allclose(joined["value"].to_numpy(), [truth[m] for m in sorted(truth)])
    preds = store.query("SELECT run_id, count(*) AS n FROM predictions GROUP BY run_id ORDER BY run_id")
    assert preds["n"].tolist() == [len(a.predictions), len(b.predictions)]
    with pytest.raises(InputError, match=r"^query 'SELECT nope FROM metrics': .*nope"):
        store.query("SELECT nope FROM metrics")


def test_metrics_filters(store, spec):
    store.run(spec, compute)
    store.run(spec.replace(method="group_dro"), compute)
    gaps = store.metrics(metric="auc_gap", attribute=["sex", "age"])
    assert len(gaps) == 4 and set(gaps["metric"]) == {"auc_gap"}
    baseline = store.metrics(method=None, metric="auc", attribute="__all__")
    assert len(baseline) == 1 and baseline["method"].isna().all()
    assert len(store.metrics(method="group_dro", metric="auc", attribute="__all__")) == 1
    assert len(store.metrics(metric=[])) == 0
    with pytest.raises(InputError, match=r"unknown filter 'modle'"):
        store.metrics(modle="x")


def test_empty_store_catalogue(store):
    assert store.list() == [] and len(store) == 0
    assert store.query("SELECT count(*) AS n FROM metrics")["n"].iloc[0] == 0
    assert store.metrics(metric="auc").empty
    assert store.aggregate().empty


def _value(metrics, task, attribute, group, metric):
    hit = metrics[(metrics["task"] == task) & (metrics["attribute"] == attribute) & (metrics["group"] == group)
                  & (metrics["metric"] == metric)]  # fmt: skip
    assert len(hit) == 1
    return float(hit["value"].iloc[0])


def test_aggregate_over_seeds_matches_numpy(store, spec):
    seeds = [0, 1, 2]
    records = [store.run(spec.replace(seed=s), compute) for s in seeds]
    other = store.run(spec.replace(hparams={"lr": 1e-3}), compute)  # another config: never mixed in
    agg = store.aggregate(metric=["auc", "auc_gap", "worst_auc"])
    main = agg[agg["config_id"] == records[0].meta["config_id"]]
    for _, row in main.iterrows():
        values = [_value(r.metrics, row["task"], row["attribute"], row["group"], row["metric"]) for r in records]
        assert row["n_seeds"] == 3 and list(row["seeds"]) == seeds
        assert row["mean"] == pytest.approx(np.mean(values), rel=1e-12)
        assert row["std"] == pytest.approx(np.std(values, ddof=1), rel=1e-9)
    assert len(main) == len(records[0].metrics.query("metric in ['auc', 'auc_gap', 'worst_auc']"))
    assert (main["std"] > 0).all()  # the seeds really differ, so the check above is not trivially 0 == 0
    single = agg[agg["config_id"] == other.meta["config_id"]]
    assert (single["n_seeds"] == 1).all() and single["std"].isna().all()
    assert set(agg["model"]) == {"tiny_vit"} and set(agg["usage"]) == {"linear_probe"}


def test_aggregate_skips_missing_values(store, spec):
    records = []
    for seed in (0, 1, 2):
        def with_gap(s, seed=seed):
            out = compute(s)
            metrics = out.metrics.copy()
            if seed == 1:  # e.g. a group without positives in this seed: no AUC gap
                metrics.loc[metrics["metric"] == "auc_gap", "value"] = np.nan
            return RunOutput(out.predictions, metrics)

        records.append(store.run(spec.replace(seed=seed), with_gap))
    row = store.aggregate(metric="auc_gap", attribute="sex").iloc[0]
    values = [r.metrics.query("metric == 'auc_gap' and attribute == 'sex'")["value"].iloc[0] for r in records]
    assert np.isnan(values[1])
    assert row["n_seeds"] == 2
    assert row["mean"] == pytest.approx(np.nanmean(values))
    assert row["std"] == pytest.approx(np.nanstd(values, ddof=1))


def test_store_location_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRFM_STORE", str(tmp_path / "elsewhere"))
    assert Store().path == tmp_path / "elsewhere"
    monkeypatch.delenv("FAIRFM_STORE")
    assert Store().path == Path("fairfm_runs")


def test_two_datasets_are_two_runs(tmp_path, store):
    a = make_dataset(tmp_path / "a", seed=0)
    b = make_dataset(tmp_path / "b", seed=1, name="other")
    spec_a = RunSpec.from_dict({"dataset": str(a), "model": "m", "usage": "linear_probe", "bootstrap": 0})
    ra = store.run(spec_a, compute)
    rb = store.run(spec_a.replace(dataset=str(b)), compute)
    assert ra.run_id != rb.run_id
    assert set(store.runs_frame()["dataset"]) == {"toy", "other"}


def test_run_id_follows_the_checkpoint_content(tmp_path, store, spec):
    checkpoint = tmp_path / "encoder.safetensors"
    checkpoint.write_bytes(b"weights v1")
    with_ckpt = spec.replace(checkpoint=str(checkpoint))
    first = store.key(with_ckpt)
    assert first.run_id != store.run_id(spec) and first.weights is not None
    checkpoint.write_bytes(b"weights v2 (re-trained, same file name)")
    second = store.key(with_ckpt)
    assert second.run_id != first.run_id and second.weights != first.weights
    record = store.run(with_ckpt, compute)
    assert record.meta["weights"] == second.weights
    with pytest.raises(InputError, match=r"^checkpoint: .*missing\.pt not found$"):
        store.run_id(spec.replace(checkpoint=str(tmp_path / "missing.pt")))


def test_a_sweep_runs_through_the_store_and_aggregates_by_seed(store, dataset):
    from fairfm.spec import SweepSpec

    sweep = SweepSpec.from_dict({"dataset": str(dataset), "model": ["vit_a", "vit_b"], "usage": "linear_probe",
                                 "bootstrap": 0, "seeds": [0, 1, 2]})  # fmt: skip
    counter = Counter()
    for cell in sweep.expand():
        store.run(cell, counter)
    for cell in sweep.expand():  # the sweep resumed: every cell is found
        store.run(cell, counter)
    assert counter.calls == len(sweep) == 6 and len(store) == 6
    agg = store.aggregate(metric="auc", attribute="__all__")
    assert agg["model"].tolist() == ["vit_a", "vit_b"]
    assert agg["n_seeds"].tolist() == [3, 3]
    assert [list(s) for s in agg["seeds"]] == [[0, 1, 2], [0, 1, 2]]


# -- concurrency: one run, one computation ------------------------------------------------------------------------

_SLOW_RUN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from fairfm.results import Store
    from fairfm.spec import RunSpec
    from tests.results.helpers import compute

    store_path, spec_path, counter, go, ready = sys.argv[1:6]
    Path(ready).touch()
    while not Path(go).exists():  # both processes start computing at the same moment
        time.sleep(0.01)

    def slow(spec):
        with open(counter, "a") as handle:
            handle.write("computed\\n")
        time.sleep(1.0)  # long enough for the other process to ask for the same run meanwhile
        return compute(spec)

    print(Store(store_path).run(RunSpec.from_yaml(spec_path), slow).run_id)
""")


def test_two_processes_asked_for_the_same_run_compute_it_once(store, spec, tmp_path):
    spec_path, counter, go = tmp_path / "spec.yaml", tmp_path / "counter.txt", tmp_path / "go"
    spec.to_yaml(spec_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]), "OMP_NUM_THREADS": "1"}
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", _SLOW_RUN, str(store.path), str(spec_path), str(counter), str(go),
                               str(flag)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
             for flag in ready]  # fmt: skip
    import time

    deadline = time.monotonic() + 60
    while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
        time.sleep(0.05)  # both have imported fairfm and poll for the start signal
    go.touch()
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    ids = {out.strip() for out, _ in results}
    assert ids == {store.run_id(spec)}
    assert counter.read_text().splitlines() == ["computed"]  # the second process waited and found the first's run
    assert len(store) == 1 and not any((store.path / "locks").iterdir())


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_lock_of_a_crashed_holder_is_recovered(store, spec):
    from fairfm.tableio import host_tag

    run_id = store.run_id(spec)
    lock = store.path / "locks" / f"{run_id}.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"host": host_tag(), "pid": _dead_pid(), "time": 0}))
    counter = Counter()
    record = store.run(spec, counter)
    assert counter.calls == 1 and record.run_id == run_id and not lock.exists()


def test_a_live_foreign_lock_is_waited_for_and_an_abandoned_one_taken(store, spec, monkeypatch):
    import threading
    import time

    from fairfm.results import store as store_module

    run_id = store.run_id(spec)
    lock = store.path / "locks" / f"{run_id}.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"host": "another-host", "pid": 1, "time": time.time()}))
    done = threading.Event()
    counter = Counter()
    worker = threading.Thread(target=lambda: (store.run(spec, counter), done.set()))
    worker.start()
    time.sleep(1.0)
    assert not done.is_set() and counter.calls == 0  # another host's lock, refreshed recently: wait
    monkeypatch.setattr(store_module, "LOCK_STALE_FOREIGN_S", 0.5)  # ... until it is no longer refreshed
    worker.join(timeout=30)
    assert done.is_set() and counter.calls == 1 and not lock.exists()


def test_the_split_seed_is_its_own_field(store, spec):
    assert store.key(spec).resolved["split_seed"] == 0  # the prepared folder's recorded split seed
    assert store.run_id(spec.replace(split_seed=0)) == store.run_id(spec)
    with pytest.raises(InputError, match=r"split_seed: the spec asks for 3 but .*dataset\.json was split with seed 0"):
        store.run_id(spec.replace(split_seed=3))
    # The training seed is not the split seed: another seed is the same split, so the same seed-free configuration.
    assert store.key(spec.replace(seed=5)).resolved["split_seed"] == 0
