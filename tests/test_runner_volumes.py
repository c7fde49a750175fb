"""End to end on miniature 3D releases: OCT volumes (FairFedMed-Oph npz) and CT DICOM series (COVID-CT-MD) →
tiny random-weight CLIP → slice max-pooling or OCT chunking → one stored prediction per volume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fairfm import runner
from fairfm.data.prepare import prepare
from fairfm.errors import InputError
from fairfm.results import Store
from fairfm.spec import RunSpec
from tests.adapt.helpers import make_tiny_clip
from tests.data.sources.source_releases import COVID_HEADER, FEDMED_HEADER, write_csv, write_dicom, write_npz

OCT_DEPTH = 16


def write_oct_release(root: Path, *, n: int = 40, depth: int = OCT_DEPTH, size: int = 8, seed: int = 0) -> Path:
    """A FairFedMed-Oph layout (three sites, train/test CSVs, npz with ``oct_bscans``); glaucoma volumes carry
    one bright B-scan at a random depth — a lesion on one slice, the case slice max-pooling is made for."""
    rng = np.random.default_rng(seed)
    base = root / "DATA" / "fairfedmed"
    rows: dict[tuple[int, str], list[list[str]]] = {}
    for i in range(n):
        label = i % 2
        name = f"fairclip_data_{i:05d}.npz"
        volume = rng.integers(0, 60, (depth, size, size)).astype(np.uint8)
        if label:
            volume[rng.integers(depth)] = 255
        write_npz(base / "all" / name, oct_bscans=volume, slo_fundus=np.zeros((size, size), np.uint8), glaucoma=label)
        site, split = 1 + i % 3, "train" if i % 5 else "test"
        rows.setdefault((site, split), []).append([str(i), name, str(40 + i), "female" if i % 4 < 2 else "male",
                                                   "white", "non-hispanic", "english", "single",
                                                   "yes" if label else "no"])  # fmt: skip
    for site in (1, 2, 3):
        for split in ("train", "test"):
            write_csv(base / f"meta_site{site}_race_{split}.csv", FEDMED_HEADER, rows.get((site, split), []))
    return root


def write_ct_release(root: Path, *, n: int = 24) -> Path:
    """A COVID-CT-MD layout: Clinical-data.csv and one DICOM series (2–4 slices, int16 with intercept −1024,
    so Hounsfield units from −1024 to 975) per patient."""
    folders = {"COVID-19": ("COVID-19 Cases", "P"), "Normal": ("Normal Cases", "normal")}
    rows = []
    for i in range(n):
        diagnosis = "COVID-19" if i % 2 else "Normal"
        folder, prefix = folders[diagnosis]
        name = f"{prefix}{i:03d}"
        rows.append([str(i + 1), diagnosis, name, "M" if i % 4 < 2 else "F", f"0{40 + i}Y", "70"])
        for k in range(2 + i % 3):
            write_dicom(root / folder / name / f"IM{k:04d}.dcm", rows=8, columns=8, InstanceNumber=k + 1,
                        ImagePositionPatient=[0, 0, float(k)])  # fmt: skip
    write_csv(root / "Clinical-data.csv", COVID_HEADER, rows)
    return root


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny_clip")


@pytest.fixture(scope="module")
def oct_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("oct")
    write_oct_release(folder / "raw")
    prepare("fairfedmed_oph_oct", folder / "raw", folder / "prepared", split="patient",
            split_params={"groups": ["sex"], "fractions": [0.6, 0.2, 0.2]})  # fmt: skip
    return folder / "prepared"


@pytest.fixture(scope="module")
def ct_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ct")
    write_ct_release(folder / "raw")
    prepare("covid_ct_md", folder / "raw", folder / "prepared", split="patient",
            split_params={"groups": ["sex"], "fractions": [0.4, 0.3, 0.3]})  # fmt: skip
    return folder / "prepared"


@pytest.fixture(scope="module")
def oct_store(tmp_path_factory) -> Store:
    return Store(tmp_path_factory.mktemp("store") / "store")


def _spec(dataset: Path, clip_dir: Path, usage: str, **hparams) -> RunSpec:
    return RunSpec.from_dict({"dataset": str(dataset), "model": "clip", "checkpoint": str(clip_dir), "usage": usage,
                              "hparams": hparams, "bootstrap": 20, "attributes": ["sex"], "seed": 0})  # fmt: skip


def _cached_rows(store: Store, meta: dict) -> tuple[np.ndarray, pd.DataFrame]:
    folder = store.path / runner.FEATURES_DIR / meta["features"]["key"]
    return np.load(folder / "features.npy"), pd.read_parquet(folder / "index.parquet")


def _one_row_per_volume(predictions: pd.DataFrame, dataset: Path) -> None:
    table = pd.read_parquet(dataset / "samples.parquet")
    expected = table[table["split"].isin(["val", "test"])]
    assert len(predictions) == len(expected) and predictions["sample_id"].is_unique
    assert set(predictions["sample_id"]) == set(expected["sample_id"])
    assert predictions["y_score"].between(0, 1).all()


def test_linear_probe_max_pools_the_slices_of_each_oct_volume(oct_dir, clip_dir, oct_store):
    spec = _spec(oct_dir, clip_dir, "linear_probe", epochs=6, batch_size=8, lr=1e-2, warmup_epochs=1)
    record = runner.run(spec, oct_store, progress=False)
    predictions = record.predictions
    _one_row_per_volume(predictions, oct_dir)
    volumes = record.meta["volumes"]
    n_samples = len(pd.read_parquet(oct_dir / "samples.parquet"))
    assert volumes["aggregation"] == "max_slice" and volumes["slice_intensity"] == "minmax"
    assert volumes["slices"] == n_samples * OCT_DEPTH and volumes["min_slices"] == volumes["max_slices"] == OCT_DEPTH
    # Oracle: the stored head on every cached slice, then the top slice per volume.
    from safetensors.torch import load_file

    head = load_file(record.meta["head"])
    features, index = _cached_rows(oct_store, record.meta)
    assert (index["slice_index"] >= 0).all() and len(index) == n_samples * OCT_DEPTH
    logits = features @ head["weight"].numpy().T + head["bias"].numpy()
    table = pd.read_parquet(oct_dir / "samples.parquet")
    per_slice = pd.DataFrame({"sample_id": table["sample_id"].to_numpy()[index["table_row"].to_numpy()],
                              "p": 1 / (1 + np.exp(-logits[:, 0]))})  # fmt: skip
    expected = per_slice.groupby("sample_id")["p"].max()
    np.testing.assert_allclose(predictions["y_score"].to_numpy(), expected[predictions["sample_id"]].to_numpy(),
                               atol=1e-6)  # fmt: skip
    # The cache recorded how slices were prepared.
    cache_meta = json.loads((oct_store.path / runner.FEATURES_DIR / record.meta["features"]["key"] / "meta.json")
                            .read_text())  # fmt: skip
    assert cache_meta["preprocess"]["slice_intensity"] == "minmax"


@pytest.mark.parametrize("usage", ["zero_shot", "prototype", "clip_adapter"])
def test_vision_language_usages_give_one_probability_per_oct_volume(usage, oct_dir, clip_dir, oct_store):
    hparams = {} if usage == "zero_shot" else {"epochs": 2, "batch_size": 8, "select_by": "last"}
    record = runner.run(_spec(oct_dir, clip_dir, usage, **hparams), oct_store, progress=False)
    _one_row_per_volume(record.predictions, oct_dir)
    assert record.meta["volumes"]["aggregation"] == "max_slice"
    assert np.ptp(record.predictions["y_score"]) > 0


def test_zero_shot_on_ct_windows_hounsfield_units_and_keeps_the_top_slice(ct_dir, clip_dir, tmp_path):
    from fairfm.adapt.prompts import prompts_for
    from fairfm.adapt.zero_shot import class_embeddings
    from fairfm.data.images import read_image
    from fairfm.models import create_model

    store = Store(tmp_path / "store")
    record = runner.run(_spec(ct_dir, clip_dir, "zero_shot", ensemble=False), store, progress=False)
    _one_row_per_volume(record.predictions, ct_dir)
    assert record.meta["volumes"]["slice_intensity"] == "ct_window"
    assert record.meta["volumes"]["ct_window_hu"] == [-1250.0, 250.0]
    assert record.meta["volumes"]["min_slices"] == 2 and record.meta["volumes"]["max_slices"] == 4

    # Oracle, independently of the cache: read each series, window it by hand, encode, score, take the max.
    clip = create_model("clip", clip_dir)
    negative, positive = prompts_for("covid_ct_md").prompts("pneumonia", ensemble=False)
    text = class_embeddings(clip, [negative, positive])
    table = pd.read_parquet(ct_dir / "samples.parquet").set_index("sample_id")
    root = Path(json.loads((ct_dir / "dataset.json").read_text())["root"])
    for sample_id, score in zip(record.predictions["sample_id"], record.predictions["y_score"]):
        volume = read_image(root / table.loc[sample_id, "path"])
        assert volume.max() > 250 and volume.min() > -1250  # clipped at the top; not min–max (−1250 ↦ 0)
        windowed = (np.clip(volume, -1250, 250) + 1250) / 1500
        images = torch.stack([clip.preprocess(s.astype(np.float32)) for s in windowed])
        probabilities = torch.softmax(clip.similarity_logits(clip.encode_image(images), text).double(), dim=-1)[:, 1]
        assert score == pytest.approx(float(probabilities.max()), abs=1e-5)


def test_oct_chunks_on_cached_features_is_refused_with_the_reason(oct_dir, clip_dir, tmp_path):
    with pytest.raises(InputError, match="oct_chunks trains a projector"):
        runner.run(_spec(oct_dir, clip_dir, "linear_probe", volume="oct_chunks"), Store(tmp_path / "s"), progress=False)


def test_lora_with_oct_chunks_trains_the_projector_and_predicts_per_volume(oct_dir, clip_dir, tmp_path):
    from safetensors.torch import load_file

    from fairfm.adapt.volumes import oct_chunk_projector
    from fairfm.models import create_model

    spec = _spec(oct_dir, clip_dir, "lora", epochs=2, batch_size=8, lr=1e-3, warmup_epochs=0, select_by="last",
                 volume="oct_chunks", oct_slice_stride=2, oct_chunk_size=4)  # fmt: skip
    record = runner.run(spec, Store(tmp_path / "store"), progress=False)
    _one_row_per_volume(record.predictions, oct_dir)
    volumes = record.meta["volumes"]
    assert volumes["aggregation"] == "oct_chunks" and volumes["slice_intensity"] == "unit"
    assert volumes["slice_stride"] == 2 and volumes["chunk_size"] == 4
    state = load_file(record.meta["trained_state"])
    assert state["projector.conv.weight"].shape == (3, 4, 5, 5)  # Conv2d(chunk_size → 3, kernel 5)
    assert any("lora_" in name for name in state)
    initial = oct_chunk_projector(create_model("clip", clip_dir).preprocess, chunk_size=4, seed=spec.seed)
    assert not torch.allclose(state["projector.conv.weight"], initial.conv.weight)  # the projector trained
    assert np.ptp(record.predictions["y_score"]) > 0


def test_bitfit_runs_volumes_slice_by_slice_with_max_pooling(oct_dir, clip_dir, tmp_path):
    spec = _spec(oct_dir, clip_dir, "bitfit", epochs=1, batch_size=8, lr=1e-3, warmup_epochs=0, select_by="last")
    record = runner.run(spec, Store(tmp_path / "store"), progress=False)
    _one_row_per_volume(record.predictions, oct_dir)
    assert record.meta["volumes"] == {"aggregation": "max_slice", "slice_intensity": "minmax"}
    assert record.meta["randaugment"] is None
    assert np.ptp(record.predictions["y_score"]) > 0


def test_finetune_windows_ct_slices_when_given_the_modality(ct_dir, clip_dir):
    from fairfm.adapt.peft_usages import finetune
    from fairfm.data.prepare import load_prepared
    from fairfm.models import create_model
    from fairfm.spec import BitFitHParams

    table, manifest = load_prepared(ct_dir)
    hp = BitFitHParams(epochs=1, batch_size=8, lr=1e-3, warmup_epochs=0, select_by="last")
    out = finetune("bitfit", hp, create_model("clip", clip_dir), table, ["pneumonia"], root=manifest["root"],
                   modality=manifest["card"]["modality"])  # fmt: skip
    assert out.meta["volumes"] == {"aggregation": "max_slice", "slice_intensity": "ct_window",
                                   "ct_window_hu": [-1250.0, 250.0]}  # fmt: skip
    for split in ("val", "test"):
        assert out.probabilities[split].shape == ((table["split"] == split).sum(), 1)
