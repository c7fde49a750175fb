"""End to end: ``usage: sam_prompt`` — miniature HAM10000 (2D) and CANDI (3D NIfTI) releases → tiny random-weight
SAM → stored segmentation PredictionTable and MetricTable, found again on the second call, through the API and CLI.

The SAM is random, so the tests check structure, and that every stored Dice/IoU equals an independent recomputation
from the masks the model returned (recorded by wrapping ``PromptableSegmenter.segment``) against the ground truth
read straight from the release files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from fairfm import runner
from fairfm.adapt.sam_prompting import read_masks
from fairfm.data.prepare import prepare
from fairfm.errors import InputError
from fairfm.metrics import FairnessWarning
from fairfm.metrics.functions import segmentation_scores
from fairfm.models.base import PromptableSegmenter
from fairfm.models.sam_family import build_sam_modules
from fairfm.results import Store
from fairfm.spec import RunSpec
from tests.conftest import run_cli
from tests.data.sources.source_releases import write_csv, write_nifti
from tests.models.model_fixtures import TINY_SAM

SIZE = 64  # the tiny SAM's input size
MODEL_OPTIONS = {"img_size": SIZE, **{k: list(v) if isinstance(v, tuple) else v for k, v in TINY_SAM.items()}}
FRACTIONS = [0.25, 0.25, 0.5]


@pytest.fixture(scope="module")
def sam_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    sam = build_sam_modules(variant="vit_b", image_size=SIZE, **TINY_SAM).eval()
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b_01ec64.pth"
    torch.save(sam.state_dict(), path)  # the official SAM checkpoint format (a plain state dict)
    return path


def _blob(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    y0, x0 = rng.integers(1, shape[0] // 2), rng.integers(1, shape[1] // 2)
    mask[y0 : y0 + rng.integers(3, shape[0] // 2), x0 : x0 + rng.integers(3, shape[1] // 2)] = 255
    return mask


@pytest.fixture(scope="module")
def ham_dir(tmp_path_factory) -> Path:
    """A miniature HAM10000 + lesion-mask release (real file layout and columns), prepared with a patient split."""
    root = tmp_path_factory.mktemp("ham") / "release"
    rng = np.random.default_rng(0)
    rows = []
    for i in range(16):
        image_id = f"ISIC_{24000 + i:07d}"
        rows.append((f"HAM_{i:07d}", image_id, "nv", "histo", f"{30 + 3 * i}.0", ("male", "female")[i % 2], "back"))
        folder = root / "HAM10000_images_part_1"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(folder / f"{image_id}.jpg")
        masks = root / "HAM10000_segmentations_lesion_tschandl"
        masks.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_blob((30, 40), rng), mode="L").save(masks / f"{image_id}_segmentation.png")
    write_csv(root / "HAM10000_metadata.csv", ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"],
              rows)  # fmt: skip
    out = root.parent / "prepared"
    prepare("ham10000_seg", root, out, split="patient", seed=0, split_params={"fractions": FRACTIONS})
    return out


@pytest.fixture(scope="module")
def candi_dir(tmp_path_factory) -> Path:
    """A miniature CANDI release: demographics CSVs + T1 and label NIfTI volumes (slices along the last axis)."""
    root = tmp_path_factory.mktemp("candi") / "release"
    rng = np.random.default_rng(1)
    base = root / "SchizBull_2008"
    subjects = [(f"HC_{i:03d}", ("male", "female")[i % 2], str(6 + i), "R") for i in range(8)]
    write_csv(base / "HC_Basic_Demographics.csv", ["Subject", "Gender", "Age", "Handedness"], subjects)
    for index, (subject, *_) in enumerate(subjects):
        labels = np.zeros((24, 20, 5), np.uint8)  # x, y, z: 5 axial slices of 20 × 24
        dx, dy = rng.integers(0, 6, 2)
        labels[4 + dx : 14 + dx, 5 + dy : 12 + dy, 1] = 2
        if index % 4 in (0, 3):  # structure 41 is in half of the volumes only (two of each sex)
            labels[6:16, 4 + dy : 13 + dy, 2] = 41
        labels[8 + dx : 12 + dx, 8:10, 3] = 2  # slices 0 and 4 hold no structure
        write_nifti(base / "HC" / subject / f"{subject}_procimg.nii.gz", (24, 20, 5), np.int16,
                    rng.normal(400, 120, (24, 20, 5)))  # fmt: skip
        write_nifti(base / "HC" / subject / f"{subject}_seg.nii.gz", (24, 20, 5), np.uint8, labels)
    out = root.parent / "prepared"
    prepare("candi", root, out, split="patient", seed=0, split_params={"fractions": FRACTIONS})
    return out


def _spec(dataset: Path, checkpoint: Path, **extra) -> RunSpec:
    fields = {"dataset": str(dataset), "model": "sam_vit_b", "checkpoint": str(checkpoint),
              "model_options": MODEL_OPTIONS, "usage": "sam_prompt", "bootstrap": 40, "seed": 3, **extra}
    return RunSpec.from_dict(fields)  # fmt: skip


def _record_segment(monkeypatch) -> list[dict]:
    calls: list[dict] = []
    original = PromptableSegmenter.segment

    def recording(self, image, **kwargs):
        masks, scores = original(self, image, **kwargs)
        calls.append({"shape": np.asarray(image).shape, "kept": masks[int(np.argmax(scores))], **kwargs})
        return masks, scores

    monkeypatch.setattr(PromptableSegmenter, "segment", recording)
    return calls


def _metric(metrics: pd.DataFrame, name: str, attribute: str = "__all__", group: str = "__all__",
            task: str | None = None) -> float:  # fmt: skip
    rows = metrics[(metrics["metric"] == name) & (metrics["attribute"] == attribute) & (metrics["group"] == group)]
    if task is not None:
        rows = rows[rows["task"] == task]
    assert len(rows) == 1, (name, attribute, group, rows)
    return float(rows["value"].iloc[0])


def test_2d_sam_prompt_run_is_stored_scored_exactly_and_found_again(ham_dir, sam_checkpoint, tmp_path, monkeypatch):
    calls = _record_segment(monkeypatch)
    store = Store(tmp_path / "store")
    spec = _spec(ham_dir, sam_checkpoint, hparams={"prompt": "bbox", "save_masks": True}, attributes=["sex"])
    first = runner.execute(spec, store, progress=False, want_report=True)
    assert first.computed
    record = store.load(first.record.run_id)
    predictions = record.predictions
    samples = pd.read_parquet(ham_dir / "samples.parquet")
    evaluated = samples[samples["split"].isin(["val", "test"])]
    assert set(predictions["split"]) == {"val", "test"}  # no training: train rows are not segmented
    assert sorted(predictions["sample_id"]) == sorted(evaluated["sample_id"])
    assert set(predictions["task"]) == {"lesion"}
    assert {"run_id", "dice", "iou", "path", "path_mask", "group_sex", "prompt", "pred_iou"} <= set(predictions.columns)
    assert "group_age" not in predictions.columns and "y_score" not in predictions.columns

    # Oracle: the kept mask of every call against the ground truth read with Pillow from the release.
    assert len(calls) == len(predictions) and all(c["multimask"] for c in calls)
    root = Path(spec.manifest()["root"])
    truth = np.stack([np.asarray(Image.open(root / p)) > 0 for p in predictions["path_mask"]])
    oracle = segmentation_scores(np.stack([c["kept"] for c in calls]), truth)
    assert np.allclose(predictions["dice"], oracle["dice"]) and np.allclose(predictions["iou"], oracle["iou"])
    for call, mask in zip(calls, truth):
        ys, xs = np.nonzero(mask)
        assert call["boxes"].tolist() == [xs.min(), ys.min(), xs.max(), ys.max()] and call["points"] is None
        assert call["shape"] == (30, 40, 3)
    # the kept masks were saved in the store, named relative to it
    assert set(predictions["pred_mask_file"]) == {f"masks/{record.run_id}.npz"} == {record.meta["masks"]}
    saved = read_masks(store.path / predictions["pred_mask_file"].iloc[0], predictions["pred_mask_key"].tolist())
    assert all(np.array_equal(m, c["kept"]) for m, c in zip(saved, calls))

    # Metrics on the test rows only, exactly the group means of the stored Dice.
    metrics = record.metrics
    test = predictions[predictions["split"] == "test"]
    assert _metric(metrics, "mean_dice") == pytest.approx(test["dice"].mean())
    assert _metric(metrics, "mean_iou") == pytest.approx(test["iou"].mean())
    for group, value in test.groupby("group_sex")["dice"].mean().items():
        assert _metric(metrics, "dice", "sex", group) == pytest.approx(value)
    means = test.groupby("group_sex")["dice"].mean()
    assert _metric(metrics, "dice_gap", "sex", "__summary__") == pytest.approx(means.max() - means.min())
    assert record.meta["sam_prompt"]["prompt"] == "bbox" and record.meta["sam_prompt"]["level"] == "image"
    assert "train" not in record.meta["n_samples"]

    again = runner.execute(spec, store, progress=False, want_report=True)
    assert not again.computed and again.record.run_id == record.run_id and len(calls) == len(predictions)
    gap = again.report.tasks["lesion"].attributes["sex"].summary["dice_gap"]
    assert gap.value == pytest.approx(_metric(metrics, "dice_gap", "sex", "__summary__"))


def test_3d_sam_prompt_scores_volumes_by_default_and_slices_on_request(candi_dir, sam_checkpoint, tmp_path,
                                                                       monkeypatch):  # fmt: skip
    import nibabel as nib

    calls = _record_segment(monkeypatch)
    store = Store(tmp_path / "store")
    structures = {"left": [2], "right": [41]}
    volume_spec = _spec(candi_dir, sam_checkpoint, attributes=["sex"],
                        hparams={"prompt": "rands", "n_points": 3, "jitter": 0.1, "structures": structures})
    record = runner.run(volume_spec, store, progress=False)
    predictions = record.predictions.sort_values(["sample_id", "task"]).reset_index(drop=True)
    assert set(predictions["task"]) == {"left", "right"} and predictions["sample_id"].is_unique is False
    assert "slice_index" not in predictions.columns and record.spec["tasks"] == ["left", "right"]

    # Oracle: rebuild each predicted volume from the recorded calls (empty where a slice was not prompted).
    root = Path(volume_spec.manifest()["root"])
    per_call = iter(calls)
    rebuilt = {}
    for _, row in record.predictions.iterrows():  # calls happened in the stored row order
        labels = np.moveaxis(np.asarray(nib.load(str(root / row["path_mask"])).dataobj), -1, 0)
        truth = labels == structures[row["task"]][0]
        predicted = np.zeros_like(truth)
        for k in np.flatnonzero(truth.any(axis=(1, 2))):
            call = next(per_call)
            assert call["points"].shape == (3, 2) and call["shape"] == (24, 20)  # one axial slice
            predicted[k] = call["kept"]
        rebuilt[(row["sample_id"], row["task"])] = (predicted, truth)
        if not truth.any():  # listed, not prompted, not scored
            assert np.isnan(row["dice"]) and row["note"] == "empty ground truth: not prompted, not scored"
            continue
        oracle = segmentation_scores(predicted[None], truth[None]).iloc[0]
        assert row["dice"] == pytest.approx(oracle["dice"]) and row["iou"] == pytest.approx(oracle["iou"])
        assert row["n_slices"] == 5 and row["n_slices_prompted"] == int(truth.any(axis=(1, 2)).sum())
    assert next(per_call, None) is None
    test = record.predictions[record.predictions["split"] == "test"]
    for task in ("left", "right"):
        rows = test[test["task"] == task]
        assert _metric(record.metrics, "mean_dice", task=task) == pytest.approx(rows["dice"].dropna().mean())
        assert _metric(record.metrics, "n_empty_ground_truth", task=task) == rows["dice"].isna().sum()
    assert (test.loc[test["task"] == "right", "dice"].isna().sum() > 0)  # the fixture's split puts some in test

    # FairMedFM's per-slice view: a different run, one row per (slice with foreground, structure), same prompts.
    calls.clear()
    slice_spec = volume_spec.replace(hparams={**volume_spec.hparams, "level": "slice"})
    sliced = runner.run(slice_spec, store, progress=False)
    assert sliced.run_id != record.run_id and sliced.meta["sam_prompt"]["compatibility_view"]
    frame = sliced.predictions
    assert (frame["slice_index"] >= 0).sum() == frame["dice"].notna().sum()
    assert set(frame["volume_id"]) == set(record.predictions["sample_id"])
    for _, row in frame.iterrows():
        predicted, truth = rebuilt[(row["volume_id"], row["task"])]
        if not truth.any():
            assert row["slice_index"] == -1 and np.isnan(row["dice"])
            continue
        k = int(row["slice_index"])
        assert truth[k].any() and row["sample_id"] == f"{row['volume_id']}:slice{k}"
        oracle = segmentation_scores(predicted[k][None], truth[k][None]).iloc[0]
        assert row["dice"] == pytest.approx(oracle["dice"])  # the seeded prompts do not depend on the level


def test_fairfm_run_cli_with_sam_prompt(ham_dir, sam_checkpoint, tmp_path, capsys):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({"dataset": str(ham_dir), "model": "sam_vit_b", "checkpoint": str(sam_checkpoint),
                                         "model_options": MODEL_OPTIONS, "usage": "sam_prompt", "bootstrap": 20}))
    store = tmp_path / "store"

    code, out, err = run_cli(capsys, "run", spec_file, "--store", store, "-q", "--set", "hparams.prompt=centroid")
    assert code == 0, err
    run_id = Store(store).list()[0].run_id
    assert f"run {run_id}: computed" in out and "Dice" in out and "IoU" in out
    stored = Store(store).load(run_id)
    assert stored.spec["hparams"]["prompt"] == "centroid" and "dice" in stored.predictions.columns
    code, out, err = run_cli(capsys, "run", spec_file, "--store", store, "-q", "--set", "hparams.prompt=centroid")
    assert code == 0 and f"run {run_id}: found in the store (not recomputed)" in out and len(Store(store)) == 1
    code, out, err = run_cli(capsys, "run", spec_file, "--store", store, "--set", "hparams.prompt=scribble")
    assert code == 2 and "hparams.prompt" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(capsys, "run", spec_file, "--store", store, "--set", "tasks=cup")
    assert code == 2 and f"tasks: 'cup' is not a segmented structure of dataset 'ham10000_seg' ({ham_dir})" in err


def test_sam_prompt_errors_name_the_fault(ham_dir, candi_dir, sam_checkpoint, tmp_path):
    store = Store(tmp_path / "store")
    with pytest.raises(InputError, match="'clip' is a vision-language model: sam_prompt needs a promptable"):
        runner.run(RunSpec.from_dict({"dataset": str(ham_dir), "model": "clip", "usage": "sam_prompt"}), store,
                   progress=False)  # fmt: skip
    with pytest.raises(InputError, match="structure 'cup': 0 is the background"):
        _spec(candi_dir, sam_checkpoint, hparams={"structures": {"cup": [0, 2]}})
    classification = tmp_path / "ham_classification"
    prepare("ham10000", ham_dir.parent / "release", classification, split="patient", seed=0,
            split_params={"fractions": FRACTIONS})  # fmt: skip
    with pytest.raises(InputError, match="holds the classification dataset 'ham10000'; prompting needs a segmentation"):
        runner.run(_spec(classification, sam_checkpoint), store, progress=False)
    missing = _spec(candi_dir, sam_checkpoint, hparams={"structures": {"absent": [99]}})
    with pytest.raises(InputError, match="no sample has a non-empty ground-truth mask for absent"):
        runner.run(missing, store, progress=False)
    assert len(store) == 0


def test_multi_label_fairseg_npz_scores_each_structure_on_the_test_split(sam_checkpoint, tmp_path, monkeypatch):
    """FairSeg's npz masks hold −1/−2 codes: the default structures are the cup (−2) and the rim (−1); the
    official split has no validation fold, so only the test rows are segmented."""
    from tests.data.sources.source_releases import write_fairseg

    root = write_fairseg(tmp_path / "fairseg", keys="samed")
    out = tmp_path / "prepared"
    prepare("fairseg", root, out, split="official", seed=0)
    samples = pd.read_parquet(out / "samples.parquet")
    assert "val" not in set(samples["split"])
    calls = _record_segment(monkeypatch)
    with pytest.warns(FairnessWarning, match="attribute 'race': fewer than two valid groups"):  # one test sample
        record = runner.run(_spec(out, sam_checkpoint, attributes=["race"], hparams={"prompt": "center"}),
                            Store(tmp_path / "store"), progress=False)  # fmt: skip
    frame = record.predictions
    test_ids = sorted(samples.loc[samples["split"] == "test", "sample_id"])
    assert set(frame["split"]) == {"test"} and sorted(set(frame["sample_id"])) == test_ids
    assert list(frame["task"]) == ["cup", "rim"] * len(test_ids) and record.spec["tasks"] == ["cup", "rim"]
    assert set(frame["npz_key_mask"]) == {"disc_cup"}
    for (_, row), call in zip(frame.iterrows(), calls):
        with np.load(root / row["path_mask"]) as archive:
            truth = archive["disc_cup"] == {"cup": -2, "rim": -1}[row["task"]]
        ys, xs = np.nonzero(truth)
        assert call["points"].tolist() == [[(xs.min() + xs.max()) // 2, (ys.min() + ys.max()) // 2]]
        oracle = segmentation_scores(call["kept"][None], truth[None]).iloc[0]
        assert row["dice"] == pytest.approx(oracle["dice"]) and row["iou"] == pytest.approx(oracle["iou"])
    assert record.meta["n_samples"] == {"test": len(test_ids)}


def test_medsam_jitter_is_measured_in_its_squashed_1024_style_frame(ham_dir, sam_checkpoint, tmp_path, monkeypatch):
    """MedSAM squashes the image to its square input: a cap of 4 model pixels is 4 × 40/64 = 2.5 image pixels
    along x and 4 × 30/64 = 1.875 along y for the 40 × 30 images; the box is scaled per axis by the loader."""
    medsam = tmp_path / "medsam_vit_b.pth"
    medsam.write_bytes(sam_checkpoint.read_bytes())
    calls = _record_segment(monkeypatch)
    spec = _spec(ham_dir, medsam, model="medsam", attributes=["sex"],
                 hparams={"prompt": "bbox", "jitter": 1.0, "jitter_cap": 4})  # fmt: skip
    record = runner.run(spec, Store(tmp_path / "store"), progress=False)
    assert record.meta["model_preprocess"].startswith(f"{SIZE}px squash")
    root = Path(spec.manifest()["root"])
    shifts = []
    for path, call in zip(record.predictions["path_mask"], calls):
        ys, xs = np.nonzero(np.asarray(Image.open(root / path)) > 0)
        shifts.append(np.abs(call["boxes"].reshape(2, 2) - [[xs.min(), ys.min()], [xs.max(), ys.max()]]))
    shifts = np.array(shifts)
    assert len(shifts) == len(record.predictions) == len(calls)
    assert shifts[..., 0].max() == pytest.approx(4 * 40 / SIZE) and shifts[..., 1].max() == pytest.approx(4 * 30 / SIZE)


def test_segmentation_report_leaves_unscored_rows_out_and_counts_them():
    rng = np.random.default_rng(0)
    dice = rng.uniform(0.2, 0.9, 12)
    dice[[1, 6]] = np.nan  # two samples whose ground truth lacked the structure
    frame = pd.DataFrame({"sample_id": [f"s{i}" for i in range(12)], "task": "lesion",
                          "split": ["val", "val"] + ["test"] * 10, "dice": dice, "iou": dice / (2 - dice),
                          "group_sex": list("FMFMFMFMFMFM")})  # fmt: skip
    frame = pd.concat([frame, frame.assign(task="cyst", dice=np.nan, iou=np.nan)], ignore_index=True)
    spec = RunSpec.from_dict({"dataset": "d", "model": "sam_vit_b", "usage": "sam_prompt", "bootstrap": 30})
    report = runner.report_from_predictions(frame, spec)
    table = report.to_metric_table("r")
    test = frame[(frame["split"] == "test") & (frame["task"] == "lesion")].dropna(subset=["dice"])
    assert _metric(table, "mean_dice", task="lesion") == pytest.approx(test["dice"].mean())
    assert _metric(table, "n_empty_ground_truth", task="lesion") == 1  # s6; s1 is a validation row
    for group, value in test.groupby("group_sex")["dice"].mean().items():
        assert _metric(table, "dice", "sex", group, task="lesion") == pytest.approx(value)
    assert set(table["task"]) == {"lesion"}  # cyst has no scored test row
    assert any("cyst: no test sample has this structure" in w for w in report.warnings)
    with pytest.raises(InputError, match="no scored test rows"):
        runner.report_from_predictions(frame[frame["task"] == "cyst"], spec)
