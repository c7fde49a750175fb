"""Feature extraction: values against a direct forward pass, cache hits, resume, 3D slices, errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fairfm.adapt.features import extract_features, read_array
from fairfm.errors import InputError
from fairfm.models import Encoder, get_model
from fairfm.models.preprocess import Preprocess

PREP = Preprocess(16, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), interpolation="bilinear")


class CountingEncoder(Encoder):
    """A tiny real encoder that counts its calls and can fail after a number of batches."""

    def __init__(self, preprocess: Preprocess = PREP, fail_after: int | None = None, seed: int = 0):
        torch.manual_seed(seed)
        module = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 4, stride=4),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        )
        super().__init__(
            get_model("resnet50_scratch"),
            module,
            None,
            self._forward,
            embed_dim=4,
            preprocess=preprocess,
            weights_extra=f"tiny-{seed}",
        )
        self.calls, self.images, self.fail_after = 0, 0, fail_after

    def _forward(self, batch):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("interrupted")
        self.calls += 1
        self.images += batch.shape[0]
        return self.module(batch)

    def oracle(self, array: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.module(self.preprocess(array)[None])[0].numpy()


def _dataset(root, n: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        shape = (20 + 3 * i, 24) if i % 2 else (18, 30, 3)
        array = rng.integers(0, 255, shape, dtype=np.uint8)
        if i == 3:
            array = array.astype(np.uint16) * 257  # a 16-bit PNG
        (root / "img").mkdir(exist_ok=True)
        Image.fromarray(array).save(root / "img" / f"s{i}.png")
        rows.append({"sample_id": f"s{i}", "patient_id": f"p{i // 2}", "path": f"img/s{i}.png"})
    table = pd.DataFrame(rows)
    table.to_parquet(root / "samples.parquet", index=False)
    return table


def test_features_match_a_direct_forward_pass_and_are_cached(tmp_path):
    table = _dataset(tmp_path)
    encoder = CountingEncoder()
    result = extract_features(
        tmp_path, encoder, out=tmp_path / "cache", batch_size=2, num_workers=0, progress=False
    )
    assert result.features.shape == (5, 4) and result.computed == 5 and encoder.calls == 3
    assert isinstance(result.features, np.memmap) and not result.features.flags.writeable
    assert result.index["sample_id"].tolist() == table["sample_id"].tolist()
    assert (result.index["slice_index"] == -1).all()
    for row, path in enumerate(table["path"]):
        assert np.allclose(result.features[row], encoder.oracle(read_array(tmp_path / path)), atol=1e-5)

    again = CountingEncoder()
    cached = extract_features(tmp_path, again, out=tmp_path / "cache", num_workers=0, progress=False)
    assert again.calls == 0 and cached.computed == 0 and cached.path == result.path
    assert np.array_equal(np.asarray(cached.features), np.asarray(result.features))


def test_an_interrupted_extraction_resumes(tmp_path):
    _dataset(tmp_path)
    failing = CountingEncoder(fail_after=1)
    with pytest.raises(RuntimeError, match="interrupted"):
        extract_features(
            tmp_path, failing, out=tmp_path / "cache", batch_size=2, num_workers=0, progress=False
        )
    resumed = CountingEncoder()
    result = extract_features(
        tmp_path, resumed, out=tmp_path / "cache", batch_size=2, num_workers=0, progress=False
    )
    assert resumed.images == 3 and result.computed == 3  # the first batch of 2 was kept
    fresh = extract_features(
        tmp_path, CountingEncoder(), out=tmp_path / "other", num_workers=0, progress=False
    )
    assert np.allclose(np.asarray(result.features), np.asarray(fresh.features), atol=1e-6)


def test_cache_key_follows_weights_preprocessing_and_table(tmp_path):
    table = _dataset(tmp_path)
    base = extract_features(
        tmp_path, CountingEncoder(), out=tmp_path / "c", num_workers=0, progress=False
    ).key
    other_weights = extract_features(
        tmp_path, CountingEncoder(seed=1), out=tmp_path / "c", num_workers=0, progress=False
    ).key
    other_prep = extract_features(
        tmp_path,
        CountingEncoder(Preprocess(16, (0.5,) * 3, (0.2,) * 3)),
        out=tmp_path / "c",
        num_workers=0,
        progress=False,
    ).key
    table.iloc[:3].to_parquet(tmp_path / "samples.parquet", index=False)
    fewer = extract_features(tmp_path, CountingEncoder(), out=tmp_path / "c", num_workers=0, progress=False)
    assert len({base, other_weights, other_prep, fewer.key}) == 4 and fewer.features.shape == (3, 4)
    Image.fromarray(np.zeros((9, 9), dtype=np.uint8)).save(tmp_path / "img" / "s0.png")  # regenerated image
    replaced = extract_features(
        tmp_path, CountingEncoder(), out=tmp_path / "c", num_workers=0, progress=False
    )
    assert replaced.key != fewer.key and replaced.computed == 3


def test_decoding_in_worker_processes_gives_the_same_features(tmp_path):
    _dataset(tmp_path)
    inline = extract_features(tmp_path, CountingEncoder(), out=tmp_path / "a", num_workers=0, progress=False)
    workers = extract_features(
        tmp_path, CountingEncoder(), out=tmp_path / "b", num_workers=1, batch_size=2, progress=True
    )
    assert np.allclose(np.asarray(inline.features), np.asarray(workers.features), atol=1e-6)


def test_volumes_give_one_row_per_slice(tmp_path):
    import nibabel

    rng = np.random.default_rng(1)
    volume = rng.random((20, 22, 3)).astype(np.float32) * 1000  # NIfTI (x, y, z): 3 axial slices
    nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), str(tmp_path / "ct.nii.gz"))
    np.save(tmp_path / "vol.npy", rng.random((2, 16, 18)).astype(np.float32))  # slices first
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(tmp_path / "x.png")
    table = pd.DataFrame(
        {
            "sample_id": ["ct", "vol", "x"],
            "patient_id": ["a", "b", "c"],
            "path": ["ct.nii.gz", "vol.npy", "x.png"],
        }
    )
    table.to_parquet(tmp_path / "samples.parquet", index=False)
    encoder = CountingEncoder()
    result = extract_features(
        tmp_path, encoder, out=tmp_path / "cache", batch_size=2, num_workers=0, progress=False
    )
    assert result.index["sample_id"].tolist() == ["ct"] * 3 + ["vol"] * 2 + ["x"]
    assert result.index["slice_index"].tolist() == [0, 1, 2, 0, 1, -1]
    ct = read_array(tmp_path / "ct.nii.gz")
    assert ct.shape[0] == 3 and np.allclose(ct[1], volume[:, :, 1], atol=1e-3)  # axial slice z = 1
    assert np.allclose(result.features[1], encoder.oracle(ct[1]), atol=1e-5)
    assert result.by_sample()["vol"].shape == (2, 4)


def test_bad_inputs_name_the_file_and_row(tmp_path):
    table = _dataset(tmp_path, n=3)
    with pytest.raises(InputError, match="no samples.parquet"):
        extract_features(tmp_path / "img", CountingEncoder(), out=tmp_path / "c", progress=False)
    (tmp_path / "img" / "s1.png").write_bytes(b"broken")
    with pytest.raises(InputError, match=r"s1\.png \(SampleTable row 1\): cannot be read"):
        extract_features(tmp_path, CountingEncoder(), out=tmp_path / "c", num_workers=0, progress=False)
    table.loc[2, "path"] = "img/missing.png"
    table.to_parquet(tmp_path / "samples.parquet", index=False)
    with pytest.raises(InputError, match=r"missing\.png: image file not found \(SampleTable row 2"):
        extract_features(tmp_path, CountingEncoder(), out=tmp_path / "c", progress=False)


def test_a_complete_cache_is_served_without_building_the_model(tmp_path, monkeypatch):
    import fairfm.models

    _dataset(tmp_path, n=2)
    first = extract_features(
        tmp_path,
        "resnet50_scratch",
        out=tmp_path / "c",
        num_workers=0,
        progress=False,
        model_options={"layers": [1, 1, 1, 1]},
    )
    assert first.features.shape == (2, 2048) and first.computed == 2

    def no_build(*args, **kwargs):
        raise AssertionError("the model must not be built for a complete cache entry")

    monkeypatch.setattr(fairfm.models, "create_model", no_build)
    again = extract_features(
        tmp_path,
        "resnet50_scratch",
        out=tmp_path / "c",
        progress=False,
        model_options={"layers": [1, 1, 1, 1]},
    )
    assert again.computed == 0 and again.key == first.key


def test_a_second_extractor_waits_for_the_first(tmp_path):
    import fcntl
    import threading

    _dataset(tmp_path, n=2)
    encoder = CountingEncoder()
    key = extract_features(tmp_path, encoder, out=tmp_path / "probe", num_workers=0, progress=False).key
    lock = tmp_path / "cache" / key / ".lock"
    lock.parent.mkdir(parents=True)
    results = []
    with open(lock, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # another process is extracting into this entry
        worker = threading.Thread(
            target=lambda: results.append(
                extract_features(
                    tmp_path, CountingEncoder(), out=tmp_path / "cache", num_workers=0, progress=False
                )
            )
        )
        worker.start()
        worker.join(timeout=0.5)
        assert worker.is_alive() and not results
        fcntl.flock(handle, fcntl.LOCK_UN)
    worker.join(timeout=30)
    assert results and results[0].computed == 2 and results[0].key == key
