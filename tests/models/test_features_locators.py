"""Feature extraction reads the array each row's locator columns name (sampletable convention), on the real
miniature releases: Harvard-lab npz views (FairVision, FairFedMed-Oph, GF3300), TUSC / OL3I HDF5, Duke OCT MAT.

Oracles are independent of the code under test: arrays are read with numpy / h5py directly by their documented key
and fed to the encoder's own module."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from fairfm.adapt.features import count_slices, extract_features, read_array
from fairfm.cli import main
from fairfm.data import get_dataset
from fairfm.data.images import volume_depth
from fairfm.errors import InputError
from tests.models.test_features import CountingEncoder

sys.path.insert(0, str(Path(__file__).parents[1] / "data" / "sources"))
import source_releases as releases

RNG = np.random.default_rng(7)


def _randomise_npz(path: Path, **shapes: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Give the release's image arrays distinct random uint8 content (the writers store zeros), keeping every key.
    Values avoid 0 and 255 so that ÷255 and a min–max stretch give different inputs."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    for name, shape in shapes.items():
        arrays[name] = RNG.integers(10, 200, shape, dtype=np.uint8)
    np.savez(path, **arrays)
    return arrays


def _extract(table, root, encoder, out, **kwargs):
    return extract_features(
        table, encoder, out=out, root=root, num_workers=0, progress=False, batch_size=3, **kwargs
    )


@pytest.fixture
def fairvision(tmp_path):
    root = releases.write_fairvision(tmp_path / "release")
    table = get_dataset("fairvision_amd").load(root)
    arrays = {
        sid: _randomise_npz(root / path, slo_fundus=(12, 10), oct_bscans=(4, 9, 11))
        for sid, path in zip(table["sample_id"], table["path"])
    }
    return root, table, arrays


def test_each_view_reads_its_own_array_of_a_harvard_npz(fairvision, tmp_path):
    root, table, arrays = fairvision
    encoder = CountingEncoder()
    fundus = _extract(table, root, encoder, tmp_path / "cache")
    oct_ = _extract(table, root, encoder, tmp_path / "cache", column="path_oct")
    assert fundus.key != oct_.key  # same files, other view: never the other's cache entry
    assert fundus.features.shape == (3, 4) and (fundus.index["slice_index"] == -1).all()
    assert oct_.features.shape == (12, 4) and oct_.meta["column"] == "path_oct"
    assert oct_.meta["array_keys"] == ["oct_bscans"] and fundus.meta["array_keys"] == ["slo_fundus"]
    for row, sid in enumerate(table["sample_id"]):
        slo, volume = arrays[sid]["slo_fundus"], arrays[sid]["oct_bscans"]
        assert np.allclose(fundus.features[row], encoder.oracle(slo), atol=1e-5)
        assert not np.allclose(fundus.features[row], encoder.oracle(volume[0]), atol=1e-3)
        slices = oct_.by_sample()[sid]
        assert slices.shape[0] == volume_depth(root / table["path_oct"].iloc[row], key="oct_bscans") == 4
        for i in range(4):
            assert np.allclose(slices[i], encoder.oracle(volume[i]), atol=1e-5)
        assert not np.allclose(slices[0], encoder.oracle(slo), atol=1e-3)
    assert oct_.index["slice_index"].tolist() == [0, 1, 2, 3] * 3


def test_stored_uint8_arrays_keep_their_bit_depth(fairvision):
    root, table, arrays = fairvision
    path = root / table["path"].iloc[0]
    array = read_array(path, key="slo_fundus")
    stored = arrays[table["sample_id"].iloc[0]]["slo_fundus"]
    assert array.dtype == np.uint8 and np.array_equal(array, stored)
    encoder = CountingEncoder()
    # ÷255 (as the lab's PIL pipeline) differs from the min–max stretch a float32 copy would get
    assert not np.allclose(encoder.oracle(stored), encoder.oracle(stored.astype(np.float32)), atol=1e-3)


def test_fairfedmed_oct_rows_are_volumes_of_the_recorded_depth(tmp_path):
    root = releases.write_fairfedmed_oph(tmp_path / "release")
    table = get_dataset("fairfedmed_oph_oct").load(root)
    files = table["path"].unique()
    volumes = {
        p: _randomise_npz(root / p, slo_fundus=(6, 6), oct_bscans=(5, 7, 7))["oct_bscans"] for p in files
    }
    encoder = CountingEncoder()
    result = _extract(table, root, encoder, tmp_path / "cache")
    assert result.features.shape == (5 * len(table), 4)
    assert result.index["sample_id"].tolist() == [s for s in table["sample_id"] for _ in range(5)]
    for row, path in enumerate(table["path"]):
        rows = result.features[5 * row : 5 * row + 5]
        assert count_slices(root / path, key="oct_bscans") == volume_depth(root / path, key="oct_bscans") == 5
        expected = np.stack([encoder.oracle(s) for s in volumes[path]])
        assert np.allclose(rows, expected, atol=1e-5)
    slo = get_dataset("fairfedmed_oph_slo").load(root)
    assert _extract(slo, root, encoder, tmp_path / "cache").features.shape == (len(slo), 4)


def test_tusc_rows_read_their_own_frame_and_the_mask_view_reads_the_mask(tmp_path):
    root = releases.write_tusc(tmp_path / "release")
    table = get_dataset("tusc").load(root)
    with h5py.File(root / "dataset.hdf5", "r") as handle:
        images, masks = handle["image"][()], handle["mask"][()]
    encoder = CountingEncoder()
    result = _extract(table, root, encoder, tmp_path / "cache")
    assert result.features.shape == (len(table), 4) and (result.index["slice_index"] == -1).all()
    for row, frame in enumerate(table["h5_index"]):
        assert np.allclose(result.features[row], encoder.oracle(images[frame]), atol=1e-5)
        assert not np.allclose(
            result.features[row], encoder.oracle(images[(frame + 1) % len(images)]), atol=1e-3
        )
    mask = _extract(table, root, encoder, tmp_path / "cache", column="path_mask")
    assert mask.key != result.key
    assert np.allclose(mask.features[2], encoder.oracle(masks[table["h5_index"].iloc[2]]), atol=1e-5)
    workers = extract_features(
        table, CountingEncoder(), out=tmp_path / "w", root=root, num_workers=1, progress=False
    )
    assert np.allclose(np.asarray(workers.features), np.asarray(result.features), atol=1e-6)


def test_ol3i_rows_read_the_dataset_named_by_h5_key(tmp_path):
    root = releases.write_ol3i(tmp_path / "release")
    table = get_dataset("ol3i").load(root)
    encoder = CountingEncoder()
    result = _extract(table, root, encoder, tmp_path / "cache")
    assert result.features.shape == (3, 4)  # one 2D slice per patient, not one HDF5 stack
    with h5py.File(root / "l3_slices.h5", "r") as handle:
        for row, key in enumerate(table["h5_key"]):
            assert np.allclose(result.features[row], encoder.oracle(handle[key][()]), atol=1e-5)


def test_cache_key_follows_the_locator_values(tmp_path):
    root = releases.write_gf3300(tmp_path / "release")
    table = get_dataset("gf3300").load(root)
    for path in table["path"]:
        _randomise_npz(root / path, oct_bscans=(4, 5, 5))
    encoder = CountingEncoder()
    rnflt = _extract(table, root, encoder, tmp_path / "cache")
    assert rnflt.features.shape == (3, 4)
    other = table.assign(npz_key="oct_bscans")
    volumes = _extract(other, root, encoder, tmp_path / "cache")
    assert volumes.key != rnflt.key and volumes.computed == 3 and volumes.features.shape == (12, 4)
    again = _extract(table.copy(), root, CountingEncoder(), tmp_path / "cache")
    assert again.key == rnflt.key and again.computed == 0


@pytest.mark.parametrize(
    "writer, dataset",
    [
        (releases.write_fairvision, "fairvision_glaucoma"),
        (releases.write_gf3300, "gf3300"),
        (releases.write_ol3i, "ol3i"),
        (releases.write_tusc, "tusc"),
        (releases.write_duke_oct, "duke_oct"),
    ],
)
def test_slice_counts_from_headers_agree_with_the_data_package(tmp_path, writer, dataset):
    from fairfm.data.images import row_locator

    root = writer(tmp_path / "release")
    table = get_dataset(dataset).load(root)
    for column in [c for c in table.columns if c == "path" or c.startswith("path_")]:
        keys, indices = row_locator(table, column)
        for row, path in enumerate(table[column]):
            found = count_slices(root / path, key=keys[row], index=indices[row])
            assert found == volume_depth(root / path, key=keys[row], index=indices[row]), (column, row)


def test_a_wrong_or_empty_view_is_an_input_error(fairvision, tmp_path):
    root, table, _ = fairvision
    encoder = CountingEncoder()
    with pytest.raises(InputError, match=r"no column 'path_mask' \(path columns: path, path_oct\)"):
        _extract(table, root, encoder, tmp_path / "c", column="path_mask")
    with pytest.raises(InputError, match="'label_amd' is not a path column"):
        _extract(table, root, encoder, tmp_path / "c", column="label_amd")
    partial = table.copy()
    partial.loc[1, "path_oct"] = None
    with pytest.raises(InputError, match=r"column 'path_oct', row 1 .*no file for this view"):
        _extract(partial, root, encoder, tmp_path / "c", column="path_oct")
    wrong = table.assign(npz_key_oct="nope")
    with pytest.raises(InputError, match=r"no array for 'nope'.*SampleTable row 0, column 'path_oct'"):
        _extract(wrong, root, encoder, tmp_path / "c", column="path_oct")


def test_cli_extracts_the_oct_view_of_a_prepared_dataset(fairvision, tmp_path, capsys, open_clip_dir):
    from fairfm.data.prepare import prepare

    root, _, _ = fairvision
    prepared = tmp_path / "prepared"
    prepare("fairvision_amd", root, prepared, split="official")
    folder, _ = open_clip_dir
    argv = ["features", "extract", "--data", str(prepared), "--model", "clip", "--checkpoint", str(folder),
            "--out", str(tmp_path / "cache"), "--workers", "0", "--column", "path_oct"]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    assert info.value.code == 0, err
    assert (
        "12 × 64 features from 3 samples of path_oct (computed 3 samples)" in out
    )  # images under the release root
    entry = Path(out.strip().splitlines()[-1].split(":")[0])
    assert json.loads((entry / "meta.json").read_text())["array_keys"] == ["oct_bscans"]
    assert pd.read_parquet(entry / "index.parquet")["slice_index"].tolist() == [0, 1, 2, 3] * 3
    with pytest.raises(SystemExit) as info:
        main(argv[:-1] + ["path_nope"])
    _, err = capsys.readouterr()
    assert info.value.code == 2 and err.strip().count("\n") == 0 and "no column 'path_nope'" in err


def test_slice_counts_read_headers_only_and_bad_indices_are_named(fairvision, tmp_path, monkeypatch):
    from fairfm.data import images

    root, table, _ = fairvision
    path = root / table["path_oct"].iloc[0]
    with monkeypatch.context() as patch:
        patch.setattr(images, "read_image", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded")))
        assert count_slices(path, key="oct_bscans") == 4 and count_slices(path, key="slo_fundus") == 1
    tusc = releases.write_tusc(tmp_path / "tusc")
    frames = get_dataset("tusc").load(tusc)
    frames.loc[1, "h5_index"] = 99
    with pytest.raises(InputError, match=r"index 99 .*SampleTable row 1, column 'path'"):
        _extract(frames, tusc, CountingEncoder(), tmp_path / "c")
