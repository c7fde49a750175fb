"""SAM prompting: prompts from ground-truth masks, jitter, decoding, per-sample / per-slice / per-volume Dice and IoU."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fairfm.adapt import sam_prompting as sp
from fairfm.errors import InputError
from fairfm.metrics.functions import segmentation_scores
from fairfm.models.preprocess import Preprocess

masks_2d = arrays(bool, st.tuples(st.integers(1, 12), st.integers(1, 12))).filter(lambda m: m.any())


# ----------------------------------------------------------------------------------------------------- prompts


@given(mask=masks_2d)
def test_bbox_contains_the_mask_and_is_tight(mask):
    prompt = sp.make_prompt(mask, "bbox", np.random.default_rng(0))
    x0, y0, x1, y1 = prompt.box.astype(int)
    ys, xs = np.nonzero(mask)
    assert (xs >= x0).all() and (xs <= x1).all() and (ys >= y0).all() and (ys <= y1).all()
    # tight: every side of the box touches the mask
    assert mask[:, x0].any() and mask[:, x1].any() and mask[y0, :].any() and mask[y1, :].any()
    assert prompt.points is None


@given(mask=masks_2d, kind=st.sampled_from(["rand", "rands", "centroid"]), seed=st.integers(0, 2**32 - 1),
       n_points=st.integers(1, 7))  # fmt: skip
def test_points_always_lie_in_the_mask(mask, kind, seed, n_points):
    prompt = sp.make_prompt(mask, kind, np.random.default_rng(seed), n_points=n_points)
    expected = {"rand": 1, "rands": n_points, "centroid": 1}[kind]
    assert prompt.points.shape == (expected, 2) and prompt.box is None
    xs, ys = prompt.points[:, 0].astype(int), prompt.points[:, 1].astype(int)
    assert np.array_equal(prompt.points, np.stack([xs, ys], axis=1))  # integer pixel indices
    assert mask[ys, xs].all()


def test_center_is_the_box_centre_and_can_miss_a_non_convex_object_unlike_centroid():
    ring = np.zeros((9, 11), bool)
    ring[1:8, 2:9] = True
    ring[3:6, 4:7] = False  # a hole in the middle: the box centre (5, 4) falls in it
    center = sp.make_prompt(ring, "center", np.random.default_rng(0))
    assert center.points.tolist() == [[(2 + 8) // 2, (1 + 7) // 2]] == [[5, 4]]
    assert not ring[4, 5]
    centroid = sp.make_prompt(ring, "centroid", np.random.default_rng(0))
    x, y = centroid.points[0].astype(int)
    assert ring[y, x]
    # the snapped point is the mask pixel nearest to the centroid (5, 4): hand-checked distance 2
    assert (x - 5) ** 2 + (y - 4) ** 2 == 4


def test_rands_draws_uniformly_with_replacement():
    mask = np.zeros((6, 6), bool)
    mask[1, 1] = mask[1, 4] = mask[4, 1] = mask[4, 4] = True
    prompt = sp.make_prompt(mask, "rands", np.random.default_rng(1), n_points=4000)
    pairs, counts = np.unique(prompt.points.astype(int), axis=0, return_counts=True)
    assert sorted(map(tuple, pairs.tolist())) == [(1, 1), (1, 4), (4, 1), (4, 4)]
    assert (np.abs(counts - 1000) < 150).all()  # ≈ 5 standard deviations of a binomial(4000, 1/4)
    small = sp.make_prompt(mask, "rands", np.random.default_rng(2), n_points=5)
    assert len(np.unique(small.points, axis=0)) < 5  # 5 draws from 4 pixels must repeat one: with replacement


def test_prompts_reject_unknown_kinds_and_empty_masks():
    with pytest.raises(ValueError, match="not one of"):
        sp.make_prompt(np.ones((3, 3), bool), "scribble", np.random.default_rng(0))
    with pytest.raises(ValueError, match="empty mask"):
        sp.make_prompt(np.zeros((3, 3), bool), "bbox", np.random.default_rng(0))


def test_prompt_rng_depends_on_the_sample_not_on_order():
    a = sp.prompt_rng(3, "case_1", "cup", 2).integers(0, 2**31, 4)
    b = sp.prompt_rng(3, "case_1", "cup", 2).integers(0, 2**31, 4)
    assert np.array_equal(a, b)
    for other in (sp.prompt_rng(4, "case_1", "cup", 2), sp.prompt_rng(3, "case_2", "cup", 2),
                  sp.prompt_rng(3, "case_1", "rim", 2), sp.prompt_rng(3, "case_1", "cup", 3)):  # fmt: skip
        assert not np.array_equal(a, other.integers(0, 2**31, 4))


# ------------------------------------------------------------------------------------------------------ jitter

boxes = st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(0, 40), st.integers(0, 40)).map(
    lambda b: np.array([min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])], dtype=np.float64)
)


@settings(max_examples=150)
@given(box=boxes, jitter=st.floats(0.001, 5.0), cap=st.integers(0, 30), sx=st.floats(0.25, 8.0),
       sy=st.floats(0.25, 8.0), seed=st.integers(0, 2**32 - 1), as_box=st.booleans())  # fmt: skip
def test_jitter_stays_within_the_cap_and_the_image(box, jitter, cap, sx, sy, seed, as_box):
    shape = (41, 41)
    prompt = sp.Prompt("bbox", box=box) if as_box else sp.Prompt("rands", points=box.reshape(2, 2))
    moved = sp.jitter_prompt(prompt, box, np.random.default_rng(seed), jitter=jitter, cap=cap, shape=shape,
                             scale=(sx, sy))  # fmt: skip
    xy = (moved.box if as_box else moved.points).reshape(2, 2)
    assert (xy >= 0).all() and (xy[:, 0] <= shape[1] - 1).all() and (xy[:, 1] <= shape[0] - 1).all()
    if as_box:
        assert xy[0, 0] <= xy[1, 0] and xy[0, 1] <= xy[1, 1]  # still a valid box
        # each coordinate moved by at most the cap (a crossed pair is swapped, which keeps that bound per axis)
        original = np.sort(box.reshape(2, 2), axis=0)
    else:
        original = box.reshape(2, 2)
    shift = np.abs(xy - original) * np.array([sx, sy])  # in model-frame pixels
    assert (shift <= cap + 1e-6).all()


def test_jitter_noise_is_independent_per_corner_gaussian_and_symmetric():
    box = np.array([100.0, 100.0, 200.0, 140.0])
    rng = np.random.default_rng(0)
    shifts = []
    for _ in range(3000):
        moved = sp.jitter_prompt(sp.Prompt("bbox", box=box), box, rng, jitter=0.05, cap=1000, shape=(1000, 1000))
        shifts.append(moved.box - box)
    shifts = np.array(shifts)
    sigma = 0.05 * (100 + 40) / 2  # 3.5 px
    assert np.allclose(shifts.std(axis=0), sigma, rtol=0.08)
    assert np.allclose(shifts.mean(axis=0), 0, atol=0.3)
    # FairMedFM moved x0 and x1 by the same noise (a translated box); here the corners move independently
    assert abs(np.corrcoef(shifts[:, 0], shifts[:, 2])[0, 1]) < 0.1
    assert (shifts < 0).mean() == pytest.approx(0.5, abs=0.05)  # negative noise is as common as positive


def test_jitter_cap_and_sigma_are_in_the_model_frame():
    from scipy.stats import norm

    box = np.array([10.0, 10.0, 30.0, 30.0])
    rng = np.random.default_rng(1)

    def shifts(scale: float) -> np.ndarray:
        moved = [sp.jitter_prompt(sp.Prompt("center", points=np.array([[50.0, 50.0]])), box, rng, jitter=2.0, cap=20,
                                  shape=(100, 100), scale=(scale, scale)).points[0] for _ in range(1000)]  # fmt: skip
        return np.abs(np.array(moved) - 50.0)

    # A 4× upscaling model: mean box side 80 model px, σ = 160 model px, cap 20 model px = 5 image px.
    four = shifts(4.0)
    assert four.max() == pytest.approx(5.0)
    assert np.isclose(four, 5.0).mean() == pytest.approx(2 * norm.sf(20 / 160), abs=0.04)
    # At the image's own scale: σ = 40 px, cap 20 px — a different share of draws reaches the cap.
    one = shifts(1.0)
    assert one.max() == pytest.approx(20.0)
    assert np.isclose(one, 20.0).mean() == pytest.approx(2 * norm.sf(20 / 40), abs=0.04)
    unchanged = sp.jitter_prompt(sp.Prompt("bbox", box=box), box, rng, jitter=0.0, cap=20, shape=(100, 100))
    assert np.array_equal(unchanged.box, box)


def test_model_frame_scale_follows_the_model_resize():
    sam = Preprocess(1024, (0,) * 3, (1,) * 3, resize="longest-pad")
    medsam = Preprocess(1024, (0,) * 3, (1,) * 3, resize="squash")
    assert sp.model_frame_scale(sam, 256, 512) == (2.0, 2.0)
    assert sp.model_frame_scale(medsam, 256, 512) == (2.0, 4.0)
    assert sp.model_frame_scale(None, 256, 512) == (1.0, 1.0)


# ----------------------------------------------------------------------------------------------------- scores


def test_dice_and_iou_hand_computed():
    pred = np.array([[1, 1], [1, 0]], bool)
    true = np.array([[1, 0], [0, 1]], bool)
    counts = sp.overlap(pred, true)
    assert counts == (1, 3, 2)
    assert sp.dice_iou(*counts) == pytest.approx((2 / 5, 1 / 4))
    assert sp.dice_iou(0, 0, 0) == (1.0, 1.0)  # both empty (METRICS.md §3)
    assert sp.dice_iou(0, 4, 0) == (0.0, 0.0)
    with pytest.raises(ValueError, match="differ in shape"):
        sp.overlap(pred, true[:1])


@given(pred=arrays(bool, (5, 6, 7)), true=arrays(bool, (5, 6, 7)))
def test_dice_and_iou_match_the_metrics_package(pred, true):
    oracle = segmentation_scores(pred[None], true[None]).iloc[0]
    dice, iou = sp.dice_iou(*sp.overlap(pred, true))
    assert dice == pytest.approx(oracle["dice"]) and iou == pytest.approx(oracle["iou"])
    # numpy set arithmetic as a second oracle
    inter, union = np.sum(pred & true), np.sum(pred | true)
    if union:
        assert iou == pytest.approx(inter / union) and dice == pytest.approx(2 * inter / (pred.sum() + true.sum()))


# ------------------------------------------------------------------------------------------------- structures


def test_structures_defaults_overrides_and_errors():
    assert sp.dataset_structures("fairseg") == {"cup": (-2.0,), "rim": (-1.0,)}
    assert sp.dataset_structures("ham10000_seg") == {"lesion": None}
    assert sp.dataset_structures("my_own_binary_set") == {"foreground": None}
    assert sp.dataset_structures("kits23", tasks=["tumor"]) == {"tumor": (2.0,)}
    assert sp.dataset_structures("fairseg", {"cup": [-2], "disc": [-1, -2]}) == {"cup": (-2.0,), "disc": (-1.0, -2.0)}
    with pytest.raises(InputError, match="hparams.structures is required for dataset 'ircadb'"):
        sp.dataset_structures("ircadb")
    with pytest.raises(InputError, match="tasks: 'disc' is not a segmented structure of dataset 'fairseg'"):
        sp.dataset_structures("fairseg", tasks=["disc"])
    with pytest.raises(InputError, match="0 is the background"):
        sp.dataset_structures("fairseg", {"cup": [0, -2]})
    labels = np.array([[0, -1, -2], [255, -2, 0]], np.float32)
    assert sp.structure_mask(labels, (-2.0,)).tolist() == [[False, False, True], [False, True, False]]
    assert sp.structure_mask(labels, (-1.0, -2.0)).sum() == 3
    assert sp.structure_mask(labels, None).sum() == 4


# ------------------------------------------------------------------------------------------------------ running


class FakeSegmenter:
    """A stand-in PromptableSegmenter: three candidate masks per prompt — a 3×3 square around the first point (or
    the box), the whole image and nothing — with predicted IoUs that rank the square first. Records every call."""

    preprocess = None

    def __init__(self, best: int = 0) -> None:
        self.calls: list[dict] = []
        self.best = best

    def segment(self, image, *, points=None, point_labels=None, boxes=None, multimask=True):
        height, width = np.asarray(image).shape[:2]
        square = np.zeros((height, width), bool)
        if boxes is not None:
            x0, y0, x1, y1 = np.round(np.asarray(boxes).reshape(4)).astype(int)
            square[y0 : y1 + 1, x0 : x1 + 1] = True
        else:
            x, y = np.round(np.asarray(points)[0]).astype(int)
            square[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] = True
        candidates = np.stack([square, np.ones_like(square), np.zeros_like(square)])
        scores = np.array([0.2, 0.1, 0.05])
        scores[self.best] = 0.9
        self.calls.append({"image": np.asarray(image).copy(), "points": points, "labels": point_labels,
                           "boxes": boxes, "multimask": multimask, "masks": candidates,
                           "kept": candidates[self.best]})  # fmt: skip
        return (candidates if multimask else candidates[self.best][None]), (scores if multimask else scores[[self.best]])


def _write_2d(tmp_path):
    rng = np.random.default_rng(0)
    masks = []
    for i in range(4):
        mask = np.zeros((10, 12), np.uint8)
        if i < 3:
            mask[2 + i : 6 + i, 3 : 8 + i] = 255
        masks.append(mask)  # sample 3 has an empty mask
        np.save(tmp_path / f"img{i}.npy", rng.integers(0, 255, (10, 12, 3)).astype(np.uint8))
        np.save(tmp_path / f"mask{i}.npy", mask)
    table = pd.DataFrame({
        "sample_id": [f"s{i}" for i in range(4)], "patient_id": [f"p{i}" for i in range(4)],
        "path": [f"img{i}.npy" for i in range(4)], "path_mask": [f"mask{i}.npy" for i in range(4)],
        "split": ["val", "test", "test", "test"], "group_sex": ["F", "M", "F", "M"],
    })  # fmt: skip
    return table, masks


@pytest.mark.parametrize("best", [0, 1])
def test_run_keeps_the_highest_predicted_iou_mask_and_scores_it(tmp_path, best):
    table, masks = _write_2d(tmp_path)
    model = FakeSegmenter(best=best)
    result = sp.run_sam_prompting(model, table, {"lesion": None}, root=tmp_path, prompt="center", progress=False)
    listed = result.predictions
    assert listed["sample_id"].tolist() == ["s0", "s1", "s2", "s3"]
    # s3 (empty ground truth) is listed but not prompted and not scored (a free "both empty" 1.0 otherwise)
    empty = listed.iloc[3]
    assert np.isnan(empty["dice"]) and np.isnan(empty["iou"]) and empty["note"] == sp.EMPTY_NOTE
    assert (listed["note"].iloc[:3] == "").all()
    frame = listed.iloc[:3]
    assert len(model.calls) == 3 and all(c["multimask"] for c in model.calls)
    kept = np.stack([c["kept"] for c in model.calls])
    oracle = segmentation_scores(kept, np.stack(masks[:3]) > 0)
    assert np.allclose(frame["dice"], oracle["dice"]) and np.allclose(frame["iou"], oracle["iou"])
    assert frame["pred_iou"].tolist() == [0.9] * 3
    assert frame["split"].tolist() == ["val", "test", "test"] and frame["group_sex"].tolist() == ["F", "M", "F"]
    assert frame["path_mask"].tolist() == ["mask0.npy", "mask1.npy", "mask2.npy"]
    for call, mask in zip(model.calls, masks):
        (x, y), = call["points"]
        ys, xs = np.nonzero(mask)
        assert (x, y) == ((xs.min() + xs.max()) // 2, (ys.min() + ys.max()) // 2) and call["labels"].tolist() == [1]
        assert call["image"].dtype == np.uint8  # 8-bit pixels reach the model as 8-bit (not min–max stretched)
    assert json.loads(frame["prompt"].iloc[0])["kind"] == "center"
    assert result.meta["empty_ground_truth"] == {"lesion": {"test": 1}}
    assert any("lesion: 1 sample(s) in test with an empty ground-truth mask" in n for n in result.meta["notes"])
    assert result.meta["n_prompts"] == 3


def test_a_view_column_is_the_image_the_model_sees(tmp_path):
    table, _ = _write_2d(tmp_path)
    for i in range(4):  # a second view of every sample: the inverted image
        np.save(tmp_path / f"alt{i}.npy", 255 - np.load(tmp_path / f"img{i}.npy"))
    table["path_alt"] = [f"alt{i}.npy" for i in range(4)]
    model = FakeSegmenter()
    result = sp.run_sam_prompting(model, table, {"lesion": None}, root=tmp_path, column="path_alt", progress=False)
    for call, i in zip(model.calls, range(3)):
        assert np.array_equal(call["image"], 255 - np.load(tmp_path / f"img{i}.npy"))
    assert result.predictions["path_alt"].tolist() == table["path_alt"].tolist()
    with pytest.raises(InputError, match="no image column 'path_oct'"):
        sp.run_sam_prompting(model, table, {"lesion": None}, root=tmp_path, column="path_oct", progress=False)


def test_run_is_independent_of_row_order(tmp_path):
    table, _ = _write_2d(tmp_path)
    forward = sp.run_sam_prompting(FakeSegmenter(), table, {"lesion": None}, root=tmp_path, prompt="rands",
                                   jitter=0.2, seed=5, progress=False).predictions  # fmt: skip
    backward = sp.run_sam_prompting(FakeSegmenter(), table.iloc[::-1], {"lesion": None}, root=tmp_path,
                                    prompt="rands", jitter=0.2, seed=5, progress=False).predictions  # fmt: skip
    merged = forward.merge(backward, on="sample_id", suffixes=("", "_b")).dropna(subset=["dice"])
    assert len(merged) == 3 and (merged["prompt"] == merged["prompt_b"]).all()
    assert np.allclose(merged["dice"], merged["dice_b"])
    other_seed = sp.run_sam_prompting(FakeSegmenter(), table, {"lesion": None}, root=tmp_path, prompt="rands",
                                      seed=6, progress=False).predictions  # fmt: skip
    scored = forward["dice"].notna()
    assert (other_seed.loc[scored, "prompt"] != forward.loc[scored, "prompt"]).any()


def test_run_multi_label_masks_give_one_task_per_structure(tmp_path):
    labels = np.zeros((8, 8), np.int8)
    labels[1:7, 1:7] = -1
    labels[3:5, 3:5] = -2
    np.savez(tmp_path / "data_00001.npz", slo_fundus=np.full((8, 8), 7, np.uint8), disc_cup_mask=labels)
    table = pd.DataFrame({"sample_id": ["a"], "patient_id": ["a"], "path": ["data_00001.npz"],
                          "path_mask": ["data_00001.npz"], "npz_key": ["slo_fundus"],
                          "npz_key_mask": ["disc_cup_mask"], "split": ["test"], "group_race": ["Black"]})  # fmt: skip
    model = FakeSegmenter()
    structures = sp.dataset_structures("fairseg", {"cup": [-2], "disc": [-1, -2]})
    frame = sp.run_sam_prompting(model, table, structures, root=tmp_path, prompt="bbox", progress=False).predictions
    assert frame["task"].tolist() == ["cup", "disc"]
    assert [c["boxes"].tolist() for c in model.calls] == [[3, 3, 4, 4], [1, 1, 6, 6]]
    assert frame["dice"].tolist() == [1.0, 1.0]  # the fake returns exactly the box, which is each structure here
    assert frame["npz_key_mask"].tolist() == ["disc_cup_mask"] * 2


def _write_volume(tmp_path):
    import nibabel as nib

    truth = np.zeros((5, 8, 8), np.uint8)  # (slices, H, W) once read (axial axis first)
    truth[1, 2:5, 2:5] = 1
    truth[2, 3:7, 1:6] = 1
    truth[3, 0:2, 0:2] = 2  # another structure only
    image = np.random.default_rng(0).normal(300, 100, truth.shape).astype(np.float32)
    # NIfTI stores (x, y, z) with z axial: write the volume with the slice axis last
    nib.save(nib.Nifti1Image(np.moveaxis(image, 0, -1), np.eye(4)), str(tmp_path / "vol.nii.gz"))
    nib.save(nib.Nifti1Image(np.moveaxis(truth, 0, -1), np.eye(4)), str(tmp_path / "seg.nii.gz"))
    table = pd.DataFrame({"sample_id": ["v1"], "patient_id": ["v1"], "path": ["vol.nii.gz"],
                          "path_mask": ["seg.nii.gz"], "split": ["test"], "group_sex": ["F"]})  # fmt: skip
    return table, truth


def test_volumes_score_per_volume_and_per_slice(tmp_path):
    from fairfm.data.images import read_image

    table, _ = _write_volume(tmp_path)
    truth = read_image(tmp_path / "seg.nii.gz") == 1  # the oracle reads the mask back the same way
    model = FakeSegmenter()
    # volumes=None: without a dataset card, the 3D mask itself says the rows are volumes
    volume = sp.run_sam_prompting(model, table, {"one": (1.0,)}, root=tmp_path, progress=False)
    assert len(model.calls) == 2  # only the slices whose ground truth has the structure are prompted
    predicted = np.zeros_like(truth)
    for k, call in zip(np.flatnonzero(truth.any(axis=(1, 2))), model.calls):
        predicted[k] = call["kept"]
        assert 0.0 <= call["image"].min() and call["image"].max() <= 1.0  # per-volume min–max intensities
    oracle = segmentation_scores(predicted[None], truth[None]).iloc[0]
    row = volume.predictions.iloc[0]
    assert len(volume.predictions) == 1 and row["sample_id"] == "v1"
    assert row["dice"] == pytest.approx(oracle["dice"]) and row["iou"] == pytest.approx(oracle["iou"])
    assert (row["n_slices"], row["n_slices_prompted"]) == (5, 2)
    assert volume.meta["level"] == "volume" and not volume.meta["compatibility_view"]

    slices = sp.run_sam_prompting(FakeSegmenter(), table, {"one": (1.0,), "absent": (9.0,)}, root=tmp_path,
                                  volumes=True, level="slice", progress=False)  # fmt: skip
    absent = slices.predictions[slices.predictions["task"] == "absent"]
    assert len(absent) == 1 and absent["dice"].isna().all() and absent["slice_index"].tolist() == [-1]
    assert slices.meta["empty_ground_truth"] == {"absent": {"test": 1}}
    frame = slices.predictions[slices.predictions["task"] == "one"]
    assert frame["sample_id"].tolist() == ["v1:slice1", "v1:slice2"] and frame["slice_index"].tolist() == [1, 2]
    per_slice = segmentation_scores(predicted[[1, 2]], truth[[1, 2]])
    assert np.allclose(frame["dice"], per_slice["dice"]) and (frame["volume_id"] == "v1").all()
    assert slices.meta["compatibility_view"] and "not independent" in slices.meta["notes"][-1]


def test_run_errors_name_the_fault(tmp_path):
    table, _ = _write_2d(tmp_path)
    with pytest.raises(InputError, match="no path_mask column"):
        sp.run_sam_prompting(FakeSegmenter(), table.drop(columns=["path_mask"]), {"x": None}, root=tmp_path,
                             progress=False)  # fmt: skip
    np.save(tmp_path / "small.npy", np.zeros((4, 4), np.uint8))
    bad = table.assign(path_mask=["small.npy"] * 4)
    with pytest.raises(InputError, match=r"differ in size .*sample_id 's0'"):
        sp.run_sam_prompting(FakeSegmenter(), bad, {"x": None}, root=tmp_path, progress=False)
    with pytest.raises(InputError, match=r"missing\.npy: file not found .*column 'path_mask'"):
        sp.run_sam_prompting(FakeSegmenter(), table.assign(path_mask="missing.npy"), {"x": None}, root=tmp_path,
                             progress=False)  # fmt: skip
    with pytest.raises(InputError, match="nothing can be prompted"):
        sp.run_sam_prompting(FakeSegmenter(), table.iloc[[3]], {"x": None}, root=tmp_path, progress=False)


def test_kept_masks_are_saved_atomically_and_read_back(tmp_path):
    table, masks = _write_2d(tmp_path)
    model = FakeSegmenter(best=1)
    out = tmp_path / "store" / "masks" / "run.npz"
    listed = sp.run_sam_prompting(model, table, {"lesion": None}, root=tmp_path, masks_out=out, progress=False)
    frame = listed.predictions.dropna(subset=["dice"])  # the empty-ground-truth row has no mask
    assert listed.predictions["pred_mask_key"].isna().sum() == 1
    assert (frame["pred_mask_file"] == str(out)).all() and frame["pred_mask_key"].is_unique
    saved = sp.read_masks(out, frame["pred_mask_key"].tolist())
    assert all(np.array_equal(m, c["kept"]) for m, c in zip(saved, model.calls))
    assert np.allclose(segmentation_scores(np.stack(saved), np.stack(masks[:3]) > 0)["dice"], frame["dice"])

    volume_table, truth = _write_volume(tmp_path)
    model = FakeSegmenter()
    volume_out = tmp_path / "volume.npz"
    row = sp.run_sam_prompting(model, volume_table, {"one": (1.0,)}, root=tmp_path, masks_out=volume_out,
                               progress=False).predictions.iloc[0]  # fmt: skip
    (saved_volume,) = sp.read_masks(volume_out, [row["pred_mask_key"]])
    prompted = np.flatnonzero((truth == 1).any(axis=(1, 2)))  # slices 1 and 2
    assert saved_volume.shape == (5, 8, 8) and not saved_volume[[0, 3, 4]].any()  # unprompted slices stay empty
    assert all(np.array_equal(saved_volume[k], c["kept"]) for k, c in zip(prompted, model.calls))

    failed = tmp_path / "failed.npz"
    with pytest.raises(InputError, match="nothing can be prompted"):
        sp.run_sam_prompting(FakeSegmenter(), table.iloc[[3]], {"x": None}, root=tmp_path, masks_out=failed,
                             progress=False)  # fmt: skip
    assert not failed.exists() and not list(tmp_path.glob(".failed.npz.*"))  # nothing half-written is left
    with pytest.raises(InputError, match="mask archive not found"):
        sp.read_masks(failed, ["m0"])


def test_single_mask_decoding_passes_multimask_false(tmp_path):
    table, masks = _write_2d(tmp_path)
    model = FakeSegmenter(best=2)  # the empty candidate: every Dice is 0
    frame = sp.run_sam_prompting(model, table, {"lesion": None}, root=tmp_path, multimask=False,
                                 progress=False).predictions.iloc[:3]  # fmt: skip
    assert [c["multimask"] for c in model.calls] == [False] * 3
    assert frame["dice"].tolist() == [0.0] * 3 and frame["pred_area"].tolist() == [0] * 3
    assert frame["true_area"].tolist() == [int((m > 0).sum()) for m in masks[:3]]


def test_several_mask_columns_are_one_structure_their_union(tmp_path):
    """Montgomery: path_mask_left and path_mask_right; the lungs task is their union."""
    left, right = np.zeros((10, 12), np.uint8), np.zeros((10, 12), np.uint8)
    left[2:8, 1:4] = 255
    right[3:9, 7:11] = 255
    np.save(tmp_path / "left.npy", left)
    np.save(tmp_path / "right.npy", right)
    np.save(tmp_path / "cxr.npy", np.full((10, 12), 90, np.uint8))
    table = pd.DataFrame({"sample_id": ["MCUCXR_0001_0"], "patient_id": ["1"], "path": ["cxr.npy"],
                          "path_mask_left": ["left.npy"], "path_mask_right": ["right.npy"], "split": ["test"]})  # fmt: skip
    model = FakeSegmenter()
    row = sp.run_sam_prompting(model, table, sp.dataset_structures("montgomery"), root=tmp_path, prompt="bbox",
                               progress=False).predictions.iloc[0]  # fmt: skip
    assert model.calls[0]["boxes"].tolist() == [1, 2, 10, 8]  # the box of both lungs
    union = (left > 0) | (right > 0)
    oracle = segmentation_scores(model.calls[0]["kept"][None], union[None]).iloc[0]
    assert row["task"] == "lungs" and row["dice"] == pytest.approx(oracle["dice"]) and row["true_area"] == union.sum()
    assert (row["path_mask_left"], row["path_mask_right"]) == ("left.npy", "right.npy")


def test_tusc_hdf5_frames_are_read_through_their_locators(tmp_path):
    """TUSC rows name one frame of dataset.hdf5 (h5_key image / h5_key_mask mask, h5_index the frame)."""
    import h5py

    from fairfm.data.registry import get_dataset
    from tests.data.sources.source_releases import write_tusc

    root = write_tusc(tmp_path / "tusc")
    table = get_dataset("tusc").load(root).assign(split="test")
    model = FakeSegmenter()
    frame = sp.run_sam_prompting(model, table, sp.dataset_structures("tusc"), root=root, prompt="centroid",
                                 progress=False).predictions  # fmt: skip
    assert len(frame) == len(table) and set(frame["task"]) == {"nodule"}
    with h5py.File(root / "dataset.hdf5") as handle:
        for (_, row), call in zip(frame.iterrows(), model.calls):
            index = int(row["h5_index"])
            assert np.array_equal(call["image"], handle["image"][index])  # the row's own frame, as 8-bit pixels
            truth = handle["mask"][index] > 0
            assert row["dice"] == pytest.approx(segmentation_scores(call["kept"][None], truth[None])["dice"][0])
            (x, y), = call["points"]
            assert truth[int(y), int(x)]


@pytest.mark.parametrize("hparams, message", [
    ({"structures": {}}, "hparams.structures: empty mapping"),
    ({"structures": {"cup": []}}, "structure 'cup': empty list of label values"),
    ({"structures": {"bad name": [1]}}, "structure name 'bad name' is not a valid name"),
    ({"prompt": "scribble"}, "hparams.prompt: 'scribble' is not one of"),
    ({"level": "voxel"}, "hparams.level: 'voxel' is not one of"),
    ({"jitter": -0.1}, "hparams.jitter"),
])  # fmt: skip
def test_sam_prompt_hparams_are_validated_naming_the_field(hparams, message):
    from fairfm.spec import RunSpec

    with pytest.raises(InputError, match=message):
        RunSpec.from_dict({"dataset": "d", "model": "sam_vit_b", "usage": "sam_prompt", "hparams": hparams})
    ok = RunSpec.from_dict({"dataset": "d", "model": "sam_vit_b", "usage": "sam_prompt",
                            "hparams": {"prompt": "centroid", "structures": {"cup": [-2], "disc": [-1, -2]}}})
    assert ok.typed_hparams().structures == {"cup": [-2.0], "disc": [-1.0, -2.0]} and not ok.hparams["save_masks"]
