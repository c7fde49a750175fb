"""Planted-bias data: each mechanism is actually present in the generated data, exactly as truth.json says."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image
from test_prepare_cli import run_cli

from fairfm.data.prepare import check, load_prepared
from fairfm.data.splits import leaking_patients
from fairfm.data.synth import MECHANISMS, generate
from fairfm.errors import InputError


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth_all")
    started = time.perf_counter()
    truth = generate(out, n=2000, size=64, seed=3)
    elapsed = time.perf_counter() - started
    frame, manifest = load_prepared(out)
    return out, truth, frame, manifest, elapsed


def _pixels(out, frame):
    return np.stack([np.asarray(Image.open(out / p), dtype=np.float32) / 255 for p in frame["path"]])


def test_generation_is_fast_and_a_valid_prepared_dataset(planted):
    out, truth, frame, manifest, elapsed = planted
    assert elapsed < 10, f"2,000 images took {elapsed:.1f} s"
    assert len(frame) == 2000 and truth["mechanisms"] == list(MECHANISMS)
    assert json.loads((out / "truth.json").read_text()) == truth
    assert leaking_patients(frame) == [] and set(frame["split"]) == {"train", "val", "test"}
    assert manifest["split"]["policy"] == "patient" and manifest["split"]["seed"] == 3
    assert check(out) == []  # every image readable
    assert Image.open(out / frame["path"].iloc[0]).size == (64, 64)


def test_prevalence_shift_and_under_representation(planted):
    _, truth, frame, _, _ = planted
    share = (frame["group_sex"] == "F").mean()
    patients = frame.groupby("patient_id")["group_sex"].first()
    assert abs((patients == "F").mean() - truth["planted"]["target_patient_fraction"]) < 0.04
    assert share < 0.3
    for group in ("F", "M"):
        rows = frame[frame["group_sex"] == group]
        p = truth["planted"]["prevalence"][group]
        se = np.sqrt(p * (1 - p) / len(rows))
        assert abs(rows["true_disease"].mean() - p) < 4 * se
        assert truth["observed"]["true_prevalence"][group] == pytest.approx(rows["true_disease"].mean())
    assert truth["planted"]["prevalence"]["F"] > truth["planted"]["prevalence"]["M"]


def test_label_noise_only_underdiagnoses_the_target_group(planted):
    _, truth, frame, _, _ = planted
    differs = frame["label_disease"] != frame["true_disease"]
    assert differs.equals(frame["noise_flipped"])
    assert set(frame.loc[differs, "group_sex"]) == {"F"}
    assert (frame.loc[differs, "true_disease"] == 1).all() and (frame.loc[differs, "label_disease"] == 0).all()
    assert int(differs.sum()) == truth["observed"]["flipped_labels"]["F"] > 0
    positives_f = frame[(frame["group_sex"] == "F") & (frame["true_disease"] == 1)]
    assert abs(positives_f["noise_flipped"].mean() - truth["planted"]["label_noise"]["flip_rate"]) < 0.1


def test_acquisition_shift_is_a_visible_shortcut(planted):
    out, truth, frame, _, _ = planted
    sample = frame.groupby("group_sex").head(60)
    pixels = _pixels(out, sample)
    is_f = (sample["group_sex"] == "F").to_numpy()
    corner = pixels[:, 1:8, -8:-1].mean(axis=(1, 2))
    assert (corner[is_f] > 0.95).all() and (corner[~is_f] < 0.5).all()  # the marker, in F only
    # contrast: body-vs-background spread is smaller in F images (contrast 0.6 vs 1.0)
    centre, background = pixels[:, 28:36, 28:36].mean(axis=(1, 2)), pixels[:, 60:, :8].mean(axis=(1, 2))
    spread = centre - background
    assert spread[is_f].mean() < 0.8 * spread[~is_f].mean()
    assert truth["parameters"]["acquisition_shift"]["contrast"] == 0.6


def test_appearance_shift_makes_target_lesions_fainter(planted):
    out, truth, frame, _, _ = planted
    positives = frame[frame["true_disease"] == 1].groupby("group_sex").head(40)
    pixels = _pixels(out, positives)
    size = pixels.shape[-1]
    peaks = []
    for image, (_, row) in zip(pixels, positives.iterrows()):
        y, x = int(row["lesion_y"] * size), int(row["lesion_x"] * size)
        y, x = min(max(y, 3), size - 4), min(max(x, 3), size - 4)
        peaks.append(image[y - 1:y + 2, x - 1:x + 2].mean() - image[y - 1:y + 2, x - 12 if x > 32 else x + 10].mean())
    peaks = np.asarray(peaks)
    is_f = (positives["group_sex"] == "F").to_numpy()
    assert peaks[is_f].mean() < 0.6 * peaks[~is_f].mean()
    assert set(positives.loc[is_f, "lesion_radius"]) == {truth["parameters"]["appearance_shift"]["lesion_radius"]}


def test_no_mechanism_means_no_bias_and_seed_determinism(tmp_path):
    truth = generate(tmp_path / "a", n=400, size=32, mechanisms=["none"], seed=1)
    frame, _ = load_prepared(tmp_path / "a")
    assert truth["mechanisms"] == [] and not frame["noise_flipped"].any()
    assert truth["planted"]["prevalence"] == {"F": 0.3, "M": 0.3}
    assert set(frame["lesion_radius"]) == {0.09}
    generate(tmp_path / "b", n=400, size=32, mechanisms=["none"], seed=1)
    generate(tmp_path / "c", n=400, size=32, mechanisms=["none"], seed=2)
    first = (tmp_path / "a" / "images" / "synth_000005.png").read_bytes()
    assert (tmp_path / "b" / "images" / "synth_000005.png").read_bytes() == first
    assert (tmp_path / "c" / "images" / "synth_000005.png").read_bytes() != first
    with pytest.raises(InputError, match="--mechanism 'magic'"):
        generate(tmp_path / "d", n=100, mechanisms=["magic"])


def test_synth_cli(tmp_path, capsys):
    code, stdout, _ = run_cli(["datasets", "synth", "--out", str(tmp_path / "s"), "--n", "200", "--size", "32",
                               "-m", "label_noise", "-m", "prevalence_shift", "--seed", "4"], capsys)
    assert code == 0 and "200 images" in stdout
    truth = json.loads((tmp_path / "s" / "truth.json").read_text())
    assert truth["mechanisms"] == ["label_noise", "prevalence_shift"] and truth["seed"] == 4
    code, _, err = run_cli(["datasets", "synth", "--out", str(tmp_path / "t"), "--n", "5"], capsys)
    assert code == 2 and "at least 20" in err


def test_only_the_task_is_a_label_column(tmp_path):
    """Bookkeeping columns must not look like tasks (``label_*``) to loaders, describe or evaluation."""
    from fairfm.data.sampletable import label_columns

    generate(tmp_path / "s", n=60, size=32, seed=0)
    frame, _ = load_prepared(tmp_path / "s")
    assert label_columns(frame) == ["label_disease"]
