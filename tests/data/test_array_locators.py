"""Which array a SampleTable row reads from a multi-array file (the locator columns of ``fairfm.data.sampletable``),
NIfTI slice orientation from the affine, and damaged files: readers and loaders raise InputError naming the file."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from chest_releases import write_chexpert, write_mimic, write_nih

from fairfm.data import get_dataset
from fairfm.data.images import SampleImages, locator_columns, read_image, row_locator, verify_table_files, volume_depth
from fairfm.data.sampletable import locator_column
from fairfm.errors import InputError

sys.path.insert(0, str(Path(__file__).parent / "sources"))
import source_releases as releases  # noqa: E402


def test_locator_column_names_follow_the_path_column():
    assert locator_column("path", "npz_key") == "npz_key"
    assert locator_column("path_mask", "npz_key") == "npz_key_mask"
    assert locator_column("path_mask_left", "h5_key") == "h5_key_mask_left"
    assert locator_column("path_oct", "h5_index") == "h5_index_oct"
    assert locator_columns("path_mask") == (("npz_key_mask", "h5_key_mask"), ("h5_index_mask", "h5_index"))
    with pytest.raises(InputError, match="not a path column"):
        locator_column("label_x", "npz_key")


def test_row_locator_reads_each_columns_own_key_and_shared_index():
    table = pd.DataFrame({
        "sample_id": ["a", "b", "c"], "path": ["f.npz"] * 3, "path_mask": ["f.npz"] * 3,
        "npz_key": ["slo_fundus", None, "fundus"], "npz_key_mask": ["disc_cup_mask", "disc_cup", None],
        "h5_index": [0, 1, 2], "h5_index_mask": [None, 5, None],
    })
    assert row_locator(table, "path") == (["slo_fundus", None, "fundus"], [0, 1, 2])
    # a row without a mask key falls back to the mask role; the mask index falls back to the row's h5_index
    assert row_locator(table, "path_mask") == (["disc_cup_mask", "disc_cup", "mask"], [0, 5, 2])
    with pytest.raises(InputError, match="'h5_index', row 1: index 'x'"):
        row_locator(table.assign(h5_index=[0, "x", 2]), "path")
    with pytest.raises(InputError, match="'h5_index', row 2: index 'y'"):  # the fallback column is the one named
        row_locator(table.assign(h5_index=[0, 1, "y"]), "path_mask")


def test_recorded_key_falls_back_only_within_its_own_role(tmp_path):
    slo = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.savez(tmp_path / "data_00001.npz", fundus=slo, oct_bscans=np.ones((2, 3, 4)), note=np.array("text"))
    # a copy that names the fundus "fundus" still serves a table that recorded "slo_fundus" (§3.4 key variants) ...
    np.testing.assert_array_equal(read_image(tmp_path / "data_00001.npz", key="slo_fundus"), slo)
    np.savez(tmp_path / "slo_only.npz", slo_fundus=slo)
    # ... but a recorded OCT key never silently reads the fundus photograph, whatever the generic aliases say
    with pytest.raises(InputError, match=r"slo_only\.npz: no array for 'oct_bscans'.*keys: slo_fundus"):
        read_image(tmp_path / "slo_only.npz", key="oct_bscans")
    with pytest.raises(InputError, match=r"data_00001\.npz: array 'note' is not numeric"):
        read_image(tmp_path / "data_00001.npz", key="note")


def test_sample_images_and_check_use_the_recorded_keys(tmp_path):
    import h5py

    np.savez(tmp_path / "a.npz", slo_fundus=np.zeros((3, 4)), oct_bscans=np.ones((5, 3, 4)),
             disc_cup_mask=np.full((3, 4), -1))
    with h5py.File(tmp_path / "frames.hdf5", "w") as handle:
        handle["image"] = np.arange(2 * 3 * 3).reshape(2, 3, 3)
        handle["mask"] = np.arange(2 * 3 * 3).reshape(2, 3, 3) * 10
    table = pd.DataFrame({"sample_id": ["s0", "s1"], "path": ["a.npz", "frames.hdf5"],
                          "path_oct": ["a.npz", None], "path_mask": ["a.npz", "frames.hdf5"],
                          "npz_key": ["slo_fundus", None], "npz_key_oct": ["oct_bscans", None],
                          "npz_key_mask": ["disc_cup_mask", None], "h5_key": [None, "image"],
                          "h5_key_mask": [None, "mask"], "h5_index": [None, 1]})
    assert SampleImages(table, tmp_path, column="path_oct")[0].shape == (5, 3, 4)
    assert SampleImages(table, tmp_path, column="path_mask")[0].min() == -1
    np.testing.assert_array_equal(SampleImages(table, tmp_path)[1], np.arange(9, 18).reshape(3, 3))
    np.testing.assert_array_equal(SampleImages(table, tmp_path, column="path_mask")[1],
                                  np.arange(9, 18).reshape(3, 3) * 10)
    slices = SampleImages(table.iloc[[0]], tmp_path, column="path_oct", as_slices=True)
    assert len(slices) == 5
    np.savez(tmp_path / "rgb.npz", image=np.zeros((8, 8, 3)))
    assert volume_depth(tmp_path / "rgb.npz") == 1  # one colour image, not three slices
    assert verify_table_files(table, tmp_path) == []
    wrong = table.assign(npz_key_oct=["oct_volume_missing", None], h5_key_mask=[None, "labels"])
    problems = verify_table_files(wrong, tmp_path)
    assert [(p["row"], p["column"]) for p in problems] == [(0, "path_oct"), (1, "path_mask")]
    assert "oct_volume_missing" in problems[0]["problem"] and "labels" in problems[1]["problem"]


def test_check_lists_an_unexpected_decoder_error_and_goes_on(tmp_path, monkeypatch):
    from fairfm.data import images

    real = images.read_image

    def flaky(path, **kwargs):
        if Path(path).name == "b.npy":
            raise RuntimeError("decoder blew up")
        return real(path, **kwargs)

    for name in ("a.npy", "b.npy", "c.npy"):
        np.save(tmp_path / name, np.zeros((2, 2)))
    monkeypatch.setattr(images, "read_image", flaky)
    table = pd.DataFrame({"sample_id": ["a", "b", "c"], "path": ["a.npy", "b.npy", "c.npy"]})
    problems = verify_table_files(table, tmp_path)
    expected = "unexpected decoder error (RuntimeError: decoder blew up)"
    assert [(p["row"], p["problem"]) for p in problems] == [(1, expected)]


def test_nifti_slices_follow_the_affine(tmp_path):
    data = np.arange(3 * 4 * 5, dtype=np.int16).reshape(3, 4, 5)
    # KiTS-style: voxel axis 0 runs along the patient's z axis, so the file is already slices first
    kits = np.array([[0, 0, -0.8, 0], [0, -0.8, 0, 0], [-3.0, 0, 0, 0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, kits), tmp_path / "imaging.nii.gz")
    volume = read_image(tmp_path / "imaging.nii.gz")
    assert volume.shape == (3, 4, 5) and volume_depth(tmp_path / "imaging.nii.gz") == 3
    np.testing.assert_array_equal(volume[2], data[2])
    # the usual (x, y, z) storage: z (axis 2) becomes the first axis
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "ras.nii.gz")
    assert read_image(tmp_path / "ras.nii.gz").shape == (5, 3, 4) and volume_depth(tmp_path / "ras.nii.gz") == 5


def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _garble(path: Path) -> Path:
    path.write_bytes(bytes(range(128, 256)))  # not UTF-8, not any format
    return path


def _cut_gzip(path: Path) -> Path:
    path.write_bytes(gzip.compress(b"subject_id,gender\n1,F\n")[:-12])  # gzip stream without its end
    return path


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


# dataset: (writer, damage applied to one release file → that file)
DAMAGED_SOURCES = {
    "chexpert": (lambda root: write_chexpert(root, n_patients=4, images=False),
                 lambda root: _truncate(root / "CHEXPERT DEMO.xlsx")),
    "mimic_cxr": (lambda root: write_mimic(root, n_patients=4, images=False),
                  lambda root: _cut_gzip(root / "hosp" / "patients.csv.gz")),
    "nih_chestxray14": (lambda root: write_nih(root, n_patients=4, images=False),
                        lambda root: _garble(root / "test_list.txt")),
    "fairseg": (releases.write_fairseg, lambda root: _truncate(root / "Training" / "data_00001.npz")),
    "duke_oct": (releases.write_duke_oct, lambda root: _empty(root / "AMD" / releases.DUKE_FILES[0][1])),
    "tusc": (releases.write_tusc, lambda root: _truncate(root / "dataset.hdf5")),
}


@pytest.mark.parametrize("name", sorted(DAMAGED_SOURCES))
def test_loaders_report_a_damaged_release_file_as_input_error(tmp_path, name):
    writer, damage = DAMAGED_SOURCES[name]
    root = writer(tmp_path / "raw")
    damaged = damage(root)
    with pytest.raises(InputError) as error:
        get_dataset(name).load(root)
    assert damaged.name in str(error.value)


def test_hdf5_sources_read_each_rows_own_frame(tmp_path):
    """OL3I (one dataset per anon_id) and TUSC (frame i of datasets image / mask): every row, image and mask, is
    compared with the array h5py reads directly."""
    import h5py

    root = releases.write_ol3i(tmp_path / "ol3i")
    table = get_dataset("ol3i").load(root)
    images = SampleImages(table, root)
    with h5py.File(root / "l3_slices.h5", "r") as handle:
        for row, anon_id in enumerate(table["sample_id"]):
            np.testing.assert_array_equal(images[row], handle[anon_id][()].astype(np.float32))

    root = releases.write_tusc(tmp_path / "tusc")
    table = get_dataset("tusc").load(root)
    frames, masks = SampleImages(table, root), SampleImages(table, root, column="path_mask")
    with h5py.File(root / "dataset.hdf5", "r") as handle:
        for row, index in enumerate(table["h5_index"]):
            np.testing.assert_array_equal(frames[row], handle["image"][index].astype(np.float32))
            np.testing.assert_array_equal(masks[row], handle["mask"][index].astype(np.float32))
    assert not np.array_equal(frames[0], masks[0])


def test_slices_of_a_mixed_table_keep_2d_images_whole(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((6, 5, 3), 9, np.uint8)).save(tmp_path / "photo.png")
    np.savez(tmp_path / "oct.npz", oct_bscans=np.arange(3 * 4 * 4).reshape(3, 4, 4))
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 1), np.int16), np.eye(4)), tmp_path / "one.nii.gz")
    table = pd.DataFrame({"sample_id": ["p", "o", "n"], "path": ["photo.png", "oct.npz", "one.nii.gz"],
                          "npz_key": [None, "oct_bscans", None]})
    slices = SampleImages(table, tmp_path, as_slices=True)
    assert len(slices) == 1 + 3 + 1
    items = [slices[i] for i in range(len(slices))]
    assert [a.shape for a in items] == [(6, 5, 3), (4, 4), (4, 4), (4, 4), (4, 4)]
    assert [a.shape for a in slices] == [a.shape for a in items]  # iterating agrees with indexing
    np.testing.assert_array_equal(items[2], np.arange(16, 32).reshape(4, 4))


def test_a_missing_optional_library_is_one_clear_input_error(tmp_path, monkeypatch):
    import h5py

    with h5py.File(tmp_path / "frames.hdf5", "w") as handle:
        handle["image"] = np.zeros((1, 2, 2))
    monkeypatch.setitem(sys.modules, "h5py", None)  # as if h5py were not installed
    with pytest.raises(InputError, match=r"frames\.hdf5 \(HDF5\) needs the 'h5py' package.*pip install h5py"):
        read_image(tmp_path / "frames.hdf5", key="image")
