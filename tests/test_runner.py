"""End to end: spec → planted-bias dataset → tiny random-weight CLIP → usage → stored predictions and metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fairfm import runner
from fairfm.errors import InputError
from fairfm.results import Store
from fairfm.spec import RunSpec
from tests.adapt.helpers import make_synth, make_tiny_clip
from tests.conftest import run_cli

CONTRACT = ["run_id", "sample_id", "task", "split", "y_true", "y_score", "group_sex", "group_age"]


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    return make_synth(tmp_path_factory.mktemp("synth") / "data")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip")


def _spec(synth_dir: Path, clip_dir: Path, usage: str, **extra) -> RunSpec:
    hparams = {"epochs": 8, "batch_size": 32, "lr": 1e-2, "warmup_epochs": 1} if usage == "linear_probe" else {}
    return RunSpec.from_dict({"dataset": str(synth_dir), "model": "clip", "checkpoint": str(clip_dir),
                              "usage": usage, "hparams": hparams, "bootstrap": 50, "seed": 1, **extra})  # fmt: skip


def _count_computations(monkeypatch) -> list[str]:
    calls: list[str] = []
    original = runner.compute_run

    def counting(spec, **kwargs):
        calls.append(spec.usage)
        return original(spec, **kwargs)

    monkeypatch.setattr(runner, "compute_run", counting)
    return calls


def _count_encoder_calls(monkeypatch) -> list[int]:
    from fairfm.models.base import Encoder

    calls: list[int] = []
    original = Encoder.encode_image

    def counting(self, batch):
        calls.append(len(batch))
        return original(self, batch)

    monkeypatch.setattr(Encoder, "encode_image", counting)
    return calls


def test_linear_probe_run_writes_predictions_and_metrics_and_is_found_again(synth_dir, clip_dir, tmp_path,
                                                                              monkeypatch):  # fmt: skip
    store = Store(tmp_path / "store")
    computations = _count_computations(monkeypatch)
    encoder_calls = _count_encoder_calls(monkeypatch)
    spec = _spec(synth_dir, clip_dir, "linear_probe")
    first = runner.execute(spec, store, progress=False, want_report=True)
    assert first.computed and computations == ["linear_probe"]
    assert sum(encoder_calls) == len(pd.read_parquet(synth_dir / "samples.parquet"))  # every sample encoded once

    predictions = first.record.predictions
    assert list(predictions.columns) == CONTRACT
    assert set(predictions["split"]) == {"val", "test"}
    assert (predictions["run_id"] == first.record.run_id).all()
    assert predictions["y_score"].between(0, 1).all()
    samples = pd.read_parquet(synth_dir / "samples.parquet")[["sample_id", "split", "label_disease", "group_sex"]]
    joined = predictions.merge(samples, on="sample_id", suffixes=("", "_sample"), validate="many_to_one")
    assert len(joined) == len(predictions)
    assert (joined["split"] == joined["split_sample"]).all()
    assert (joined["y_true"] == joined["label_disease"]).all()
    assert (joined["group_sex"] == joined["group_sex_sample"]).all()

    metrics = first.record.metrics
    auc = metrics[(metrics["metric"] == "auc") & (metrics["attribute"] == "sex")]
    assert set(auc["group"]) >= {"F", "M"}
    gap = metrics[(metrics["metric"] == "auc_gap") & (metrics["attribute"] == "sex")]
    assert len(gap) == 1 and gap["ci_low"].notna().all()  # bootstrap intervals were computed
    assert set(metrics["threshold_policy"]) == {"best_f1@val"}

    meta = first.record.meta
    assert meta["seeds"]["run"] == 1 and meta["device"] == "cpu"
    assert {"features_s", "train_s", "metrics_s"} <= set(meta["timings"])
    assert meta["training"]["optimizer"] == "sgd" and 1 <= meta["training"]["best_epoch"] <= 8
    assert Path(meta["head"]).is_file()

    # The report kept from the run matches the stored MetricTable.
    sex = first.report.tasks["disease"].attributes["sex"]
    assert gap["value"].iloc[0] == pytest.approx(sex.summary["auc_gap"].value)

    second = runner.execute(spec, store, progress=False, want_report=True)
    assert not second.computed and computations == ["linear_probe"]  # found, not recomputed
    assert second.record.run_id == first.record.run_id
    assert second.report.tasks["disease"].attributes["sex"].summary["auc_gap"].value == pytest.approx(
        sex.summary["auc_gap"].value)  # fmt: skip

    # A different seed is a different run, which reuses the cached features (no encoder call).
    before = sum(encoder_calls)
    third = runner.execute(spec.replace(seed=2), store, progress=False)
    assert third.computed and third.record.run_id != first.record.run_id
    assert sum(encoder_calls) == before


def test_zero_shot_run(synth_dir, clip_dir, tmp_path):
    store = Store(tmp_path / "store")
    record = runner.run(_spec(synth_dir, clip_dir, "zero_shot", hparams={"ensemble": False}), store, progress=False)
    assert list(record.predictions.columns) == CONTRACT
    assert set(record.predictions["split"]) == {"val", "test"}
    assert record.predictions["y_score"].between(0, 1).all()
    assert record.meta["prompts"]["disease"] == {"negative": ["a chest X-ray of a normal lungs"],
                                                 "positive": ["a chest X-ray of a lung opacity"]}  # fmt: skip
    assert (record.metrics["metric"] == "auc").any()
    assert len(store) == 1


def test_a_crash_mid_run_leaves_nothing_and_the_next_call_recomputes(synth_dir, clip_dir, tmp_path, monkeypatch):
    store = Store(tmp_path / "store")
    spec = _spec(synth_dir, clip_dir, "zero_shot")

    def crash(*args, **kwargs):
        raise RuntimeError("killed while computing metrics")

    with monkeypatch.context() as patch:
        patch.setattr(runner, "report_from_predictions", crash)
        with pytest.raises(RuntimeError, match="killed"):
            runner.run(spec, store, progress=False)
    assert len(store) == 0 and store.find(spec) is None

    # A crash while the run folder is being written leaves no run and no temporary folder.
    original = pd.DataFrame.to_parquet

    def crash_on_metrics(self, path, *args, **kwargs):
        if str(path).endswith("metrics.parquet"):
            raise OSError("disk full")
        return original(self, path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(pd.DataFrame, "to_parquet", crash_on_metrics)
        with pytest.raises(OSError, match="disk full"):
            runner.run(spec, store, progress=False)
    assert len(store) == 0
    assert not any((store.path / "tmp").iterdir())

    computations = _count_computations(monkeypatch)
    result = runner.execute(spec, store, progress=False)
    assert result.computed and computations == ["zero_shot"]
    assert len(store) == 1 and store.find(spec) is not None


def test_unimplemented_usages_and_methods_say_so(synth_dir, clip_dir, tmp_path):
    store = Store(tmp_path / "store")
    with pytest.raises(InputError, match=r"samples\.parquet: SampleTable has no path_mask column: sam_prompt needs a "
                                         "segmentation dataset"):  # fmt: skip
        runner.run(_spec(synth_dir, clip_dir, "sam_prompt", model="medsam"), store, progress=False)
    with pytest.raises(InputError, match="method 'group_dro' does not serve usage 'zero_shot'"):
        runner.run(_spec(synth_dir, clip_dir, "zero_shot", method="group_dro"), store, progress=False)
    with pytest.raises(InputError, match="'resnet50_scratch' is a vision model: zero_shot needs a vision-language"):
        runner.run(RunSpec.from_dict({"dataset": str(synth_dir), "model": "resnet50_scratch", "usage": "zero_shot",
                                      "bootstrap": 0}), store, progress=False)  # fmt: skip
    assert len(store) == 0


def test_fairfm_run_cli(synth_dir, clip_dir, tmp_path, capsys):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({"dataset": str(synth_dir), "model": "clip", "checkpoint": str(clip_dir),
                                         "usage": "zero_shot", "bootstrap": 30}))  # fmt: skip
    store = tmp_path / "store"
    code, out, err = run_cli(capsys, "run", spec_file, "--store", store, "-q", "--set", "seed=3")
    assert code == 0, err
    run_id = Store(store).list()[0].run_id
    assert f"run {run_id}: computed" in out
    assert "AUC gap" in out and "sex" in out and "95% CI" in out
    assert Store(store).list()[0].spec["seed"] == 3

    code, out, err = run_cli(capsys, "run", spec_file, "--store", store, "-q", "--set", "seed=3")
    assert code == 0 and f"run {run_id}: found in the store (not recomputed)" in out
    assert len(Store(store)) == 1

    code, out, err = run_cli(capsys, "run", spec_file, "--store", store, "--set", "hparams.lr=0.1")
    assert code == 2 and err.strip() == "error: command line: hparams.lr: unknown field (check the spelling)"
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: nowhere\nmodel: clip\nusage: zero_shot\nbootstrap: -1\n")
    code, out, err = run_cli(capsys, "run", bad, "--store", store)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "bootstrap" in err and str(bad) in err
    code, out, err = run_cli(capsys, "run", spec_file, "--store", store, "--set", "usage=sam_prompt")
    assert code == 2 and "model 'clip' is a vision-language model: sam_prompt needs a promptable segmentation" in err
    code, out, err = run_cli(capsys, "run", spec_file, "--store", store, "--set", "usage=sam_prompt", "--set",
                             "model=medsam")  # fmt: skip
    assert code == 2 and "has no path_mask column: sam_prompt needs a segmentation dataset" in err


@pytest.mark.parametrize("usage", ["prototype", "clip_adapter"])
def test_clip_adaptation_usages_run_end_to_end(synth_dir, clip_dir, tmp_path, usage):
    """Prototype tuning and CLIP-Adapter train on cached features through fairfm run's pipeline and are stored."""
    store = Store(tmp_path / "store")
    spec = RunSpec.from_dict({"dataset": str(synth_dir), "model": "clip", "checkpoint": str(clip_dir),
                              "usage": usage, "bootstrap": 20, "seed": 0,
                              "hparams": {"epochs": 3, "batch_size": 32, "warmup_epochs": 0}})  # fmt: skip
    result = runner.execute(spec, store, progress=False)
    assert result.computed
    record = store.load(result.record.run_id)
    predictions = pd.read_parquet(record.path / "predictions.parquet")
    assert set(predictions["split"]) == {"val", "test"} and predictions["y_score"].between(0, 1).all()
    assert record.meta["n_samples"]["train"] > 0 and Path(record.meta["head"]).is_file()
    assert not runner.execute(spec, store, progress=False).computed


@pytest.mark.parametrize("usage", ["lora", "bitfit", "vpt", "adapter"])
def test_fine_tuning_usages_run_end_to_end(synth_dir, clip_dir, tmp_path, usage):
    """LoRA and BitFit train the image tower on the train split through fairfm run's pipeline and are stored."""
    from safetensors.numpy import load_file

    store = Store(tmp_path / "store")
    spec = RunSpec.from_dict({"dataset": str(synth_dir), "model": "clip", "checkpoint": str(clip_dir),
                              "usage": usage, "bootstrap": 20, "seed": 0,
                              "hparams": {"epochs": 2, "batch_size": 32, "warmup_epochs": 0}})  # fmt: skip
    result = runner.execute(spec, store, progress=False)
    assert result.computed
    record = store.load(result.record.run_id)
    predictions = pd.read_parquet(record.path / "predictions.parquet")
    assert set(predictions["split"]) == {"val", "test"} and predictions["y_score"].between(0, 1).all()
    meta = record.meta
    assert meta["usage"] == usage and meta["n_samples"]["train"] > 0
    state = load_file(meta["trained_state"])
    trained = [name for name in state if name.startswith("backbone.")]  # head, buffers are kept too
    assert trained, "the image tower must have trainable parameters"
    expected = {"lora": "lora_", "bitfit": ".bias", "vpt": "vpt_prompts", "adapter": "bottleneck_adapter"}[usage]
    assert all(expected in name for name in trained), trained
    assert not runner.execute(spec, store, progress=False).computed


def test_tasks_with_different_known_labels_share_one_report_with_macro_and_bh():
    import numpy as np

    rng = np.random.default_rng(0)
    rows = []
    for split, n in (("val", 60), ("test", 120)):
        for i in range(n):
            sex = "F" if i % 3 == 0 else "M"
            for task in ("a", "b"):
                if task == "b" and i % 5 == 0:
                    continue  # unknown label of task b: no row
                y = int(rng.random() < 0.4)
                rows.append({"sample_id": f"{split}{i}", "task": task, "split": split, "y_true": y,
                             "y_score": float(np.clip(0.3 * y + rng.random() * 0.7, 0, 1)), "group_sex": sex})
    predictions = pd.DataFrame(rows)
    spec = RunSpec.from_dict({"dataset": "x", "model": "clip", "usage": "zero_shot", "bootstrap": 200})
    report = runner.report_from_predictions(predictions, spec)
    assert set(report.tasks) == {"a", "b"}
    # Merged first, then macro metrics and Benjamini–Hochberg across both tasks (not per task, where q = p).
    gaps = [report.tasks[t].attributes["sex"].summary["auc_gap"].value for t in ("a", "b")]
    assert report.macro["sex"]["macro_auc_gap"] == pytest.approx(sum(gaps) / 2)
    from scipy.stats import false_discovery_control

    p_values = [report.tasks[t].attributes["sex"].significance["auc_gap_p"] for t in ("a", "b")]
    q_values = [report.tasks[t].attributes["sex"].significance["auc_gap_q"] for t in ("a", "b")]
    assert q_values == pytest.approx(list(false_discovery_control(p_values)))
    from fairfm.metrics import evaluate_frame

    only_b = predictions[predictions["task"] == "b"].rename(columns={"group_sex": "sex"}).reset_index(drop=True)
    oracle = evaluate_frame(only_b, y_true=["y_true"], y_score=["y_score"], attributes=["sex"], task_column="task",
                            split_column="split", bootstrap=0)  # fmt: skip
    assert report.tasks["b"].n == 96  # the test rows of task b only
    assert report.tasks["b"].attributes["sex"].summary["auc_gap"].value == pytest.approx(
        oracle.tasks["b"].attributes["sex"].summary["auc_gap"].value)  # fmt: skip


def test_device_resolution():
    import torch

    assert runner.resolve_device("cpu") == "cpu"
    assert runner.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert runner.resolve_device("cuda:0") == "cuda:0"
    else:
        with pytest.raises(InputError, match="'cuda:0' asked for, but no CUDA device is available"):
            runner.resolve_device("cuda:0")


def test_model_options_build_a_small_model_and_are_part_of_the_run_id(synth_dir, tmp_path):
    """``model_options`` reach the model's constructor (here a one-block-per-stage ResNet-50 baseline)."""
    store = Store(tmp_path / "store")
    base = {"dataset": str(synth_dir), "model": "resnet50_scratch", "usage": "linear_probe", "bootstrap": 0,
            "hparams": {"epochs": 2, "batch_size": 32, "warmup_epochs": 0}}  # fmt: skip
    small = RunSpec.from_dict({**base, "model_options": {"layers": [1, 1, 1, 1]}})
    result = runner.execute(small, store, progress=False)
    assert result.computed
    assert store.load(result.record.run_id).spec["model_options"] == {"layers": [1, 1, 1, 1]}
    smaller = RunSpec.from_dict({**base, "model_options": {"layers": [1, 1, 1, 1], "base_width": 32}})
    assert store.find(smaller) is None  # different constructor options: a different run


def _with_second_view(synth_dir: Path, folder: Path) -> tuple[Path, Path]:
    """Two prepared datasets over one image root: one whose ``path_alt`` view holds inverted images, and one whose
    ``path`` holds those same inverted images (the oracle for reading the view)."""
    import numpy as np
    from PIL import Image

    samples = pd.read_parquet(synth_dir / "samples.parquet")
    manifest = json.loads((synth_dir / "dataset.json").read_text())
    root = Path(manifest.get("root") or synth_dir)
    alt = []
    for relative in samples["path"]:
        out = folder / "images" / "alt" / Path(relative).name
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - np.asarray(Image.open(root / relative))).save(out)
        alt.append(str(out.relative_to(folder / "images")))
        (folder / "images" / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / "images" / relative).write_bytes((root / relative).read_bytes())
    datasets = []
    for name, table in (("with_view", samples.assign(path_alt=alt)), ("swapped", samples.assign(path=alt))):
        target = folder / name
        target.mkdir()
        table.to_parquet(target / "samples.parquet", index=False)
        (target / "dataset.json").write_text(json.dumps({**manifest, "root": str(folder / "images")}))
        datasets.append(target)
    return datasets[0], datasets[1]


@pytest.mark.parametrize("usage", ["zero_shot", "bitfit"])
def test_view_reads_the_named_image_column(synth_dir, clip_dir, tmp_path, usage):
    with_view, swapped = _with_second_view(synth_dir, tmp_path)
    hparams = {"epochs": 1, "batch_size": 32} if usage == "bitfit" else {}
    store = Store(tmp_path / "store")

    def scores(dataset: Path, **fields) -> pd.Series:
        record = runner.run(_spec(dataset, clip_dir, usage, hparams=hparams, **fields), store, progress=False)
        return record.predictions.set_index(["sample_id", "split"])["y_score"].sort_index()

    default = scores(with_view)
    from_view = scores(with_view, view="alt")
    oracle = scores(swapped)
    pd.testing.assert_series_equal(from_view, oracle, rtol=1e-6, atol=1e-6)
    assert (from_view - default).abs().max() > 1e-4  # the view is not the default image
    with pytest.raises(InputError, match=r"view: .*has no column 'path_oct' \(views: alt\)"):
        _spec(with_view, clip_dir, usage, view="oct").resolve()
    assert _spec(with_view, clip_dir, usage, view="path_alt").view == "alt"
    assert _spec(with_view, clip_dir, usage, view="path").view is None


# -- found runs: the stored MetricTable, stale runs, progress ------------------------------------------------------


def test_a_found_run_reads_its_report_from_the_stored_metric_table(synth_dir, clip_dir, tmp_path, monkeypatch):
    import fairfm.metrics

    store = Store(tmp_path / "store")
    spec = _spec(synth_dir, clip_dir, "zero_shot", tasks=["disease"])
    first = runner.execute(spec, store, progress=False, want_report=True)
    assert first.computed

    def no_bootstrap(*args, **kwargs):
        raise AssertionError("a found run must not be evaluated again")

    monkeypatch.setattr(fairfm.metrics, "evaluate_frame", no_bootstrap)
    monkeypatch.setattr(runner, "report_from_predictions", no_bootstrap)
    found = runner.execute(spec, store, progress=False, want_report=True)
    assert not found.computed and not found.stale
    pd.testing.assert_frame_equal(found.report.summary, first.report.summary)
    pd.testing.assert_frame_equal(found.report.by_group, first.report.by_group)
    original, restored = first.report.tasks["disease"], found.report.tasks["disease"]
    assert restored.threshold == original.threshold and restored.n_pos == original.n_pos
    assert restored.attributes["sex"].worst_group == original.attributes["sex"].worst_group
    assert found.report.bootstrap == first.report.bootstrap
    pd.testing.assert_frame_equal(found.report.to_metric_table(found.record.run_id), found.record.metrics,
                                  check_dtype=False)  # fmt: skip
    assert found.report.to_json() == first.report.to_json()


def test_a_stale_run_is_served_with_a_mark_and_recomputed_when_asked(synth_dir, clip_dir, tmp_path, capsys,
                                                                     monkeypatch):  # fmt: skip
    from fairfm.results import versions

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({"dataset": str(synth_dir), "model": "clip", "checkpoint": str(clip_dir),
                                         "usage": "zero_shot", "bootstrap": 20}))  # fmt: skip
    store = tmp_path / "store"
    code, out, err = run_cli(capsys, "run", spec_file, "--store", store, "-q")
    assert code == 0, err
    old_id = Store(store).list()[0].run_id

    monkeypatch.setitem(versions.RESULTS_VERSIONS, "metrics", versions.RESULTS_VERSIONS["metrics"] + 1)
    computations = _count_computations(monkeypatch)
    code, out, err = run_cli(capsys, "run", spec_file, "--store", store, "-q")
    assert code == 0 and computations == [] and f"run {old_id}: found in the store, STALE" in out
    assert "--recompute-stale" in out and "AUC gap" in out
    code, out, _ = run_cli(capsys, "runs", "list", "--store", store)
    assert code == 0 and f"{old_id} STALE" in out

    code, out, err = run_cli(capsys, "run", spec_file, "--store", store, "-q", "--recompute-stale")
    assert code == 0 and computations == ["zero_shot"]
    new_id = next(r.run_id for r in Store(store).list() if r.run_id != old_id)
    assert f"run {new_id}: computed" in out
    code, out, err = run_cli(capsys, "run", spec_file, "--store", store, "-q", "--recompute-stale")
    assert code == 0 and f"run {new_id}: found in the store (not recomputed)" in out and len(computations) == 1
    listing = json.loads(run_cli(capsys, "runs", "list", "--store", store, "--json")[1])
    assert {row["run_id"]: row["stale"] for row in listing} == {old_id: True, new_id: False}


@pytest.mark.parametrize("quiet", [False, True])
def test_fairfm_run_shows_the_bootstrap_progress_unless_quiet(synth_dir, clip_dir, tmp_path, capsys, monkeypatch,
                                                              quiet):  # fmt: skip
    import fairfm.metrics

    asked: list[bool] = []
    original = fairfm.metrics.evaluate_frame

    def recording(*args, **kwargs):
        asked.append(kwargs.get("progress", False))
        return original(*args, **kwargs)

    monkeypatch.setattr(fairfm.metrics, "evaluate_frame", recording)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({"dataset": str(synth_dir), "model": "clip", "checkpoint": str(clip_dir),
                                         "usage": "zero_shot", "bootstrap": 20}))  # fmt: skip
    code, _, err = run_cli(capsys, "run", spec_file, "--store", tmp_path / "store", *(["-q"] if quiet else []))
    assert code == 0, err
    assert asked == [not quiet]


def test_labels_flipped_in_place_are_computed_again_not_found(tmp_path, clip_dir):
    # The review's case: every label of samples.parquet flipped in place, dataset.json untouched.
    synth = make_synth(tmp_path / "data")
    store = Store(tmp_path / "store")
    spec = _spec(synth, clip_dir, "zero_shot", bootstrap=0)
    first = runner.execute(spec, store, progress=False)
    samples = synth / "samples.parquet"
    frame = pd.read_parquet(samples)
    labels = [c for c in frame.columns if c.startswith("label_")]
    frame[labels] = 1.0 - frame[labels]
    frame.to_parquet(samples, index=False)
    second = runner.execute(spec, store, progress=False)
    assert second.computed and second.record.run_id != first.record.run_id and not second.stale

    def auc(record):
        return record.metrics.query("attribute == '__all__' and metric == 'auc'")["value"].iloc[0]

    assert auc(second.record) == pytest.approx(1 - auc(first.record))
