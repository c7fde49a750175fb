from __future__ import annotations

import numpy as np
import pytest
from source_releases import HAM_ROWS, write_csv, write_ham10000

from fairfm.data import get_dataset
from fairfm.errors import InputError
from fairfm.groups import UNKNOWN


def test_ham10000_reads_release(tmp_path):
    root = write_ham10000(tmp_path)
    table = get_dataset("ham10000").load(root)
    assert len(table) == len(HAM_ROWS)
    by_id = table.set_index("sample_id")
    assert by_id.loc["ISIC_0026769", "path"] == "HAM10000_images_part_2/ISIC_0026769.jpg"
    assert (root / by_id.loc["ISIC_0027419", "path"]).is_file()
    # malignant = akiec or mel
    assert by_id["label_malignant"].to_dict() == {
        "ISIC_0027419": 0.0,
        "ISIC_0025030": 0.0,
        "ISIC_0026769": 1.0,
        "ISIC_0031633": 1.0,
        "ISIC_0030000": 0.0,
    }
    # lesion id is the patient unit
    assert by_id.loc["ISIC_0025030", "patient_id"] == by_id.loc["ISIC_0027419", "patient_id"] == "HAM_0000118"
    # 'unknown' sex stays unknown, never female (§7.10)
    assert by_id["group_sex"].to_dict() == {
        "ISIC_0027419": "M",
        "ISIC_0025030": "M",
        "ISIC_0026769": "F",
        "ISIC_0031633": UNKNOWN,
        "ISIC_0030000": "F",
    }
    # age 60 is ≥60; empty age is unknown
    assert by_id["group_age"].to_dict() == {
        "ISIC_0027419": "≥60",
        "ISIC_0025030": "≥60",
        "ISIC_0026769": "≥60",
        "ISIC_0031633": UNKNOWN,
        "ISIC_0030000": "<60",
    }
    assert np.isnan(by_id.loc["ISIC_0031633", "attr_age"])


def test_ham10000_age_edges_option(tmp_path):
    table = get_dataset("ham10000", age_edges=[40, 70]).load(write_ham10000(tmp_path))
    assert table.set_index("sample_id")["group_age"].to_dict()["ISIC_0026769"] == "40–<70"


def test_ham10000_segmentation_rows_with_masks(tmp_path):
    root = write_ham10000(tmp_path)
    table = get_dataset("ham10000_seg").load(root)
    assert sorted(table["sample_id"]) == ["ISIC_0026769", "ISIC_0027419", "ISIC_0031633"]
    row = table.set_index("sample_id").loc["ISIC_0031633"]
    assert row["path_mask"] == "HAM10000_segmentations_lesion_tschandl/ISIC_0031633_segmentation.png"
    assert row["group_sex"] == UNKNOWN  # FairMedFM's ISIC.py made it "M"


def test_ham10000_segmentation_isic2018_masks_pair_with_isic2018_inputs(tmp_path):
    from fairfm.data.images import read_image

    root = write_ham10000(tmp_path, masks_for=("ISIC_0027419",), isic2018_for=("ISIC_0030000",))
    table = get_dataset("ham10000_seg").load(root).set_index("sample_id")
    assert table.index.tolist() == ["ISIC_0027419", "ISIC_0030000"]
    row = table.loc["ISIC_0030000"]
    assert row["path"] == "ISIC2018_Task1-2_Training_Input/ISIC_0030000.jpg"
    assert row["path_mask"] == "ISIC2018_Task1_Training_GroundTruth/ISIC_0030000_segmentation.png"
    # image and mask have the same size (the HAM10000 copy of this image is smaller)
    assert (
        read_image(root / row["path"]).shape[:2] == read_image(root / row["path_mask"]).shape[:2] == (9, 12)
    )
    assert table.loc["ISIC_0027419", "path"] == "HAM10000_images_part_1/ISIC_0027419.jpg"
    (root / row["path"]).unlink()
    with pytest.raises(InputError, match="has no ISIC 2018 input image"):
        get_dataset("ham10000_seg").load(root)


def test_ham10000_errors_name_the_fault(tmp_path):
    with pytest.raises(InputError, match="HAM10000_metadata.csv"):
        get_dataset("ham10000").load(tmp_path)
    root = write_ham10000(tmp_path)
    (root / "HAM10000_images_part_2" / "ISIC_0026769.jpg").unlink()
    with pytest.raises(InputError, match=r"row 2: image ISIC_0026769\.jpg not found"):
        get_dataset("ham10000").load(root)


def test_ham10000_unmapped_codes(tmp_path):
    root = write_ham10000(tmp_path)
    rows = [list(r[:7]) for r in HAM_ROWS]
    rows[4][2] = "xyz"
    write_csv(
        root / "HAM10000_metadata.csv",
        ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"],
        rows,
    )
    with pytest.raises(InputError, match=r"column 'dx', row 4: value 'xyz'"):
        get_dataset("ham10000").load(root)
    rows[4][2] = "nv"
    rows[1][5] = "intersex?"
    write_csv(
        root / "HAM10000_metadata.csv",
        ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"],
        rows,
    )
    with pytest.raises(InputError, match=r"column 'sex'.*row 1: value 'intersex\?'"):
        get_dataset("ham10000").load(root)
