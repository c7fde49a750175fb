"""Every registered dataset end to end: its miniature release → ``prepare`` → ``check`` finds nothing → the first
sample's image (and mask, and every other view) reads as the array the release holds, per slice for volumes; a
damaged copy of that file is reported by ``check`` with its row, never as a crash."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from chest_releases import (
    write_chexpert,
    write_fairfedmed_chest,
    write_mimic,
    write_nih,
    write_padchest,
    write_rsna,
)

from fairfm.data import check, list_datasets, load_prepared, prepare
from fairfm.data.images import SampleImages

sys.path.insert(0, str(Path(__file__).parent / "sources"))
import source_releases as releases  # noqa: E402

WRITERS = {
    "adni": releases.write_adni,
    "brset": releases.write_brset,
    "candi": releases.write_candi,
    "chexpert": write_chexpert,
    "covid_ct_md": releases.write_covid_ct_md,
    "ddi": releases.write_ddi,
    "duke_oct": releases.write_duke_oct,
    "fairfedmed_chest": lambda root: write_fairfedmed_chest(root, n_per_site=12),
    "fairfedmed_oph_oct": releases.write_fairfedmed_oph,
    "fairfedmed_oph_slo": releases.write_fairfedmed_oph,
    "fairseg": releases.write_fairseg,
    "fairvision_amd": releases.write_fairvision,
    "fairvision_dr": releases.write_fairvision,
    "fairvision_glaucoma": releases.write_fairvision,
    "fairvlmed10k": releases.write_fairvlmed10k,
    "fitzpatrick17k": releases.write_fitzpatrick17k,
    "gf3300": releases.write_gf3300,
    "ham10000": releases.write_ham10000,
    "ham10000_seg": releases.write_ham10000,
    "ircadb": releases.write_ircadb,
    "kits23": releases.write_kits23,
    "mimic_cxr": lambda root: write_mimic(root, n_patients=12),
    "montgomery": releases.write_montgomery,
    "nih_chestxray14": lambda root: write_nih(root, n_patients=12),
    "ol3i": releases.write_ol3i,
    "padchest": lambda root: write_padchest(root, n_patients=8),
    "papila": releases.write_papila,
    "rsna_pneumonia": lambda root: write_rsna(root, n_images=12),
    "spider": releases.write_spider,
    "tusc": releases.write_tusc,
}

# What each path column of the first sample must read as, derived by hand from the writers: the shape (None = any
# depth: series differ in length) and, for masks, the values the writer drew. Multi-array files are told apart by
# shape or values: an OCT column must not return the fundus photograph, a mask column must not return the image.
RGB, GREY = (6, 8, 3), (8, 8)
EXPECTED: dict[str, dict[str, tuple[tuple[int | None, ...], set[float] | None]]] = {
    "adni": {"path": ((5, 6, 6), None)},  # NIfTI (x, y, z) = (6, 6, 5) → slices first
    "brset": {"path": (RGB, None)},
    "candi": {"path": ((4, 6, 6), None), "path_mask": ((4, 6, 6), None)},
    "chexpert": {"path": (GREY, None)},
    "covid_ct_md": {"path": ((None, 4, 4), None)},
    "ddi": {"path": (RGB, None)},
    "duke_oct": {"path": ((7, 10, 12), None)},  # .mat rows × columns × B-scans → B-scans first
    "fairfedmed_chest": {"path": (GREY, None)},
    "fairfedmed_oph_oct": {"path": ((8, 6, 6), None)},  # oct_bscans, not the (6, 6) slo_fundus beside it
    "fairfedmed_oph_slo": {"path": ((6, 6), None)},
    "fairseg": {"path": ((8, 8), None), "path_mask": ((8, 8), {0.0, -1.0, -2.0})},
    "fairvision_amd": {"path": ((6, 6), None), "path_oct": ((4, 6, 6), None)},
    "fairvision_dr": {"path": ((6, 6), None), "path_oct": ((4, 6, 6), None)},
    "fairvision_glaucoma": {"path": ((6, 6), None), "path_oct": ((4, 6, 6), None)},
    "fairvlmed10k": {"path": ((12, 10), None)},
    "fitzpatrick17k": {"path": (RGB, None)},
    "gf3300": {"path": ((20, 20), None)},  # rnflt, not the (4, 5, 5) oct_bscans beside it
    "ham10000": {"path": (RGB, None)},
    "ham10000_seg": {"path": (RGB, None), "path_mask": ((6, 8), {0.0, 255.0})},
    "ircadb": {"path": ((None, 4, 4), None), "path_mask": ((None, 4, 4), None)},
    "kits23": {"path": ((None, 8, 8), None), "path_mask": ((None, 8, 8), {0.0, 1.0, 2.0})},  # slices first
    "mimic_cxr": {"path": (GREY, None)},
    "montgomery": {"path": ((6, 8), None), "path_mask_left": ((6, 8), {0.0, 255.0}),
                   "path_mask_right": ((6, 8), {0.0, 255.0})},
    "nih_chestxray14": {"path": (GREY, None)},
    "ol3i": {"path": ((10, 12), None)},
    "padchest": {"path": (GREY, None)},
    "papila": {"path": (RGB, None)},
    "rsna_pneumonia": {"path": (GREY, None)},
    "spider": {"path": ((None, 6, 8), None), "path_mask": ((None, 6, 8), None)},  # MetaImage x y z → z first
    "tusc": {"path": ((8, 8), None), "path_mask": ((8, 8), {0.0, 255.0})},
}
CARDS = {card.name: card for card in list_datasets()}


def test_every_registered_dataset_has_a_fixture_and_expectations():
    assert set(WRITERS) == set(CARDS) == set(EXPECTED)
    assert len(CARDS) == 30


def _matches(shape: tuple[int, ...], pattern: tuple[int | None, ...]) -> bool:
    return len(shape) == len(pattern) and all(p is None or p == s for s, p in zip(shape, pattern))


def _first_file(target: Path) -> Path:
    """The file to damage: the path itself, or the first slice of a DICOM series folder."""
    return target if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())[0]


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_prepare_check_and_read_first_sample(tmp_path, name):
    root = WRITERS[name](tmp_path / "raw")
    prepare(name, root, tmp_path / "prepared", seed=0)
    assert check(tmp_path / "prepared") == []
    frame, manifest = load_prepared(tmp_path / "prepared")
    assert manifest["dataset"] == name and len(frame) >= 2
    card = CARDS[name]
    columns = [c for c in frame.columns if c == "path" or c.startswith("path_")]
    assert set(columns) == set(EXPECTED[name])
    if card.task_type == "segmentation":
        assert any(c.startswith("path_mask") for c in columns)
    first = frame.iloc[[0]].reset_index(drop=True)
    arrays = {}
    for column in columns:
        pattern, values = EXPECTED[name][column]
        array = SampleImages(first, root, column=column)[0]
        arrays[column] = array
        assert array.dtype == np.float32, f"{name} {column}: {array.dtype}"
        assert _matches(array.shape, pattern), f"{name} {column}: shape {array.shape}, expected {pattern}"
        if values is not None:
            assert set(np.unique(array).tolist()) == values, f"{name} {column}: values {np.unique(array)}"
        if len(pattern) == 3 and pattern[-1] != 3:  # a volume: per-slice access gives the same voxels
            slices = SampleImages(first, root, column=column, as_slices=True)
            assert len(slices) == array.shape[0]
            np.testing.assert_array_equal(np.stack(list(slices)), array)
            np.testing.assert_array_equal(slices[len(slices) - 1], array[-1])
    for column in columns:
        if column.startswith("path_mask"):  # a mask covers its image voxel for voxel
            assert arrays["path"].shape[: arrays[column].ndim] == arrays[column].shape

    # A damaged first file is reported with its row and sample id; check neither crashes nor stops at it.
    damaged = _first_file(root / frame["path"].iloc[0])
    damaged.write_bytes(damaged.read_bytes()[: max(1, damaged.stat().st_size // 2)])
    problems = check(tmp_path / "prepared")
    hits = [p for p in problems if p["row"] == 0 and p["column"] == "path"]
    assert len(hits) == 1 and hits[0]["sample_id"] == frame["sample_id"].iloc[0]
    assert hits[0]["problem"] != "missing" and not hits[0]["problem"].startswith("unexpected decoder error")
