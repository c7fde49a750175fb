"""Image/volume readers on real DICOMs (pydicom test data, pydicom-data), PNG/JPEG, NPZ and NIfTI."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from fairfm.data.images import SampleImages, image_kind, iter_slices, read_image, verify_table_files, volume_depth
from fairfm.errors import InputError


def pydicom_data_file(name: str) -> Path:
    spec = importlib.util.find_spec("data_store")  # the pydicom-data package (offline copy of the larger files)
    assert spec is not None and spec.origin is not None
    path = Path(spec.origin).parent / "data" / name
    assert path.is_file()
    return path


def test_ct_small_rescaled_to_hounsfield_units():
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    image = read_image(path)
    assert image.dtype == np.float32 and image.shape == (128, 128)
    # independent oracle: stored values × slope + intercept (slope 1, intercept −1024 in this file)
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(image, expected)
    assert float(ds.RescaleIntercept) == -1024 and image.min() < 0


def test_real_chest_cr_monochrome1_is_inverted():
    path = pydicom_data_file("RG1_UNCR.dcm")  # a real chest CR, MONOCHROME1
    ds = pydicom.dcmread(path)
    image = read_image(path)
    raw = ds.pixel_array.astype(np.float32)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and image.shape == raw.shape
    np.testing.assert_allclose(image, raw.max() + raw.min() - raw)
    assert image_kind(path) == "dicom"


def test_mr_small_without_rescale_tags_and_suffixless_dicom(tmp_path):
    path = Path(get_testdata_file("MR_small.dcm"))
    copy = tmp_path / "IM0001"  # DICOM series often have no suffix: recognised by the DICM preamble
    copy.write_bytes(path.read_bytes())
    np.testing.assert_array_equal(read_image(copy), pydicom.dcmread(path).pixel_array.astype(np.float32))


def test_png_jpeg_palette_and_16bit(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), grey)
    deep = (np.arange(64, dtype=np.uint16) * 1000).reshape(8, 8)
    Image.fromarray(deep).save(tmp_path / "d.png")
    np.testing.assert_array_equal(read_image(tmp_path / "d.png"), deep)  # 16-bit PadChest-style PNG kept exact
    Image.fromarray(grey).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (8, 8, 3)
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "c.jpg")
    assert read_image(tmp_path / "c.jpg").shape == (8, 8, 3)


def test_npz_aliases_and_missing_key(tmp_path):
    slo = np.random.default_rng(0).random((6, 5)).astype(np.float32)
    oct_volume = np.zeros((4, 6, 5), np.float32)
    np.savez(tmp_path / "fairclip_data_00001.npz", slo_fundus=slo, oct_bscans=oct_volume, glaucoma=np.array(1))
    np.testing.assert_array_equal(read_image(tmp_path / "fairclip_data_00001.npz"), slo)  # "image" → slo_fundus
    assert read_image(tmp_path / "fairclip_data_00001.npz", key="oct").shape == (4, 6, 5)
    with pytest.raises(InputError, match=r"fairclip_data_00001\.npz: no array for 'mask'.*keys: slo_fundus"):
        read_image(tmp_path / "fairclip_data_00001.npz", key="mask")


def test_nifti_volume_slices_first_and_scaling(tmp_path):
    data = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)  # (x, y, z)
    image = nib.Nifti1Image(data, np.eye(4))
    image.header.set_slope_inter(2.0, -5.0)
    path = tmp_path / "case_00000.nii.gz"
    nib.save(image, path)
    volume = read_image(path)
    assert volume.shape == (4, 2, 3)  # z first
    np.testing.assert_allclose(volume[1], data[:, :, 1] * 2.0 - 5.0)
    assert volume_depth(path) == 4
    assert [s.shape for s in iter_slices(volume, step=2)] == [(2, 3), (2, 3)]


def test_sample_images_lazy_slices_and_row_in_errors(tmp_path):
    for i in range(2):
        nib.save(nib.Nifti1Image(np.full((3, 3, 2 + i), i, np.float32), np.eye(4)), tmp_path / f"v{i}.nii.gz")
    table = pd.DataFrame({"sample_id": ["a", "b", "c"], "path": ["v0.nii.gz", "v1.nii.gz", "gone.nii.gz"]})
    volumes = SampleImages(table.iloc[:2], tmp_path)
    assert len(volumes) == 2 and volumes[1].shape == (3, 3, 3)
    slices = SampleImages(table.iloc[:2], tmp_path, as_slices=True)
    assert len(slices) == 5 and [float(s.mean()) for s in slices] == [0, 0, 1, 1, 1]
    assert float(slices[4].mean()) == 1.0
    with pytest.raises(InputError, match=r"gone\.nii\.gz: file not found \(SampleTable row 2, sample_id 'c'"):
        SampleImages(table, tmp_path)[2]


def test_bad_files_are_input_errors_naming_the_file(tmp_path):
    for name in ("broken.png", "broken.dcm", "broken.npz", "broken.nii.gz"):
        (tmp_path / name).write_bytes(b"garbage")
        with pytest.raises(InputError, match=name.replace(".", r"\.")):
            read_image(tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="unsupported image format"):
        read_image(tmp_path / "notes.txt")


def test_verify_table_files_reports_every_problem(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"nope")
    table = pd.DataFrame({"sample_id": ["s0", "s1", "s2", "s3"], "path": ["ok.png", "bad.png", "gone.png", "ok.png"],
                          "path_mask": ["ok.png", None, "gone_mask.png", "ok.png"]})
    problems = verify_table_files(table, tmp_path, progress=True)
    assert [(p["row"], p["column"], p["problem"] == "missing") for p in problems] == [
        (1, "path", False), (2, "path", True), (2, "path_mask", True)]


def _ct_slice(path: Path, z: float, value: int, instance: int) -> None:
    """A real CT slice (pydicom's CT_small.dcm) re-positioned at ``z`` with constant pixels ``value``."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.InstanceNumber = instance
    ds.PixelData = np.full((ds.Rows, ds.Columns), value, dtype=np.int16).tobytes()
    ds.save_as(path)


def test_dicom_series_folder_and_zip_ordered_by_position(tmp_path):
    import zipfile

    series = tmp_path / "P001"
    series.mkdir()
    # file names and instance numbers deliberately disagree with the slice positions
    for name, z, value, instance in (("a.dcm", 10.0, 3, 1), ("b.dcm", -5.0, 1, 3), ("c.dcm", 2.5, 2, 2)):
        _ct_slice(series / name, z, value, instance)
    volume = read_image(series)
    assert volume.shape == (3, 128, 128) and image_kind(series) == "dicom_series"
    # slope 1, intercept −1024 applied to each slice; order follows z (−5, 2.5, 10)
    assert [float(v) for v in volume[:, 0, 0]] == [1 - 1024, 2 - 1024, 3 - 1024]
    archive = tmp_path / "PATIENT_DICOM.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for p in sorted(series.iterdir()):
            handle.write(p, f"PATIENT_DICOM/{p.name}")
    np.testing.assert_array_equal(read_image(archive), volume)
    (series / "c.dcm").write_bytes(b"broken")
    with pytest.raises(InputError, match=r"c\.dcm: cannot be read as DICOM"):
        read_image(series)


def test_mat_volume_slices_first(tmp_path):
    from scipy.io import savemat

    images = np.random.default_rng(1).random((5, 7, 3))  # rows × columns × B-scans, as Duke OCT stores them
    savemat(tmp_path / "Subject_1001.mat", {"images": images, "Age": 81.0})
    volume = read_image(tmp_path / "Subject_1001.mat")
    assert volume.shape == (3, 5, 7)
    np.testing.assert_allclose(volume[2], images[:, :, 2], rtol=1e-6)


def test_hdf5_frames_by_index_and_key(tmp_path):
    import h5py

    path = tmp_path / "dataset.hdf5"
    with h5py.File(path, "w") as handle:
        handle["image"] = np.arange(3 * 4 * 4).reshape(3, 4, 4)
        handle["mask"] = np.zeros((3, 4, 4))
        handle["a1b2c3"] = np.full((4, 4), 7.0)
    table = pd.DataFrame({"sample_id": ["f0", "f2"], "path": ["dataset.hdf5"] * 2, "path_mask": ["dataset.hdf5"] * 2,
                          "h5_index": [0, 2]})
    frames = SampleImages(table, tmp_path)
    np.testing.assert_array_equal(frames[1], np.arange(32, 48).reshape(4, 4))
    assert SampleImages(table, tmp_path, column="path_mask")[0].sum() == 0
    assert read_image(path, key="a1b2c3").mean() == 7.0
    bad = table.assign(h5_index=[0, 9])
    problems = verify_table_files(bad, tmp_path)
    assert [(p["row"], p["column"]) for p in problems] == [(1, "path"), (1, "path_mask")]


@pytest.mark.parametrize("variant", ["local", "compressed", "msb", "detached"])
def test_metaimage(tmp_path, variant):
    import zlib

    volume = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4) - 5  # (z, y, x)
    payload = volume.astype(">i2" if variant == "msb" else "<i2").tobytes()
    header = ["ObjectType = Image", "NDims = 3", "BinaryData = True",
              f"BinaryDataByteOrderMSB = {'True' if variant == 'msb' else 'False'}", "DimSize = 4 3 2",
              "ElementSpacing = 0.9 0.9 3.3", "ElementType = MET_SHORT"]
    if variant == "compressed":
        payload = zlib.compress(payload)
        header.insert(3, "CompressedData = True")
    if variant == "detached":
        (tmp_path / "1_t1.raw").write_bytes(payload)
        path = tmp_path / "1_t1.mhd"
        path.write_text("\n".join(header + ["ElementDataFile = 1_t1.raw"]) + "\n")
    else:
        path = tmp_path / "1_t1.mha"
        path.write_bytes(("\n".join(header + ["ElementDataFile = LOCAL"]) + "\n").encode() + payload)
    np.testing.assert_array_equal(read_image(path), volume)
    if variant == "local":
        path.write_bytes(path.read_bytes()[:-10])
        with pytest.raises(InputError, match="truncated"):
            read_image(path)


def test_check_reads_every_format_of_every_other_dataset(tmp_path):
    """``fairfm datasets check`` on every other source's miniature release: every file reads (the OL3I fixture now
    writes a real HDF5 file of slices)."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_splits import _other_writers

    from fairfm.data import get_dataset

    for name, writer in sorted(_other_writers().items()):
        root = writer(tmp_path / name)
        table = get_dataset(name).load(root)
        problems = verify_table_files(table, root)
        assert problems == [], f"{name}: {problems[:2]}"
