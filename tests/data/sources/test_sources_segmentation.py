"""Segmentation loaders (TUSC, Montgomery, KiTS23, 3D-IRCADb, CANDI, SPIDER) on miniature releases."""

from __future__ import annotations

import json

import numpy as np
import pytest
from source_releases import (
    KITS_RECORDS,
    SPIDER_HEADER,
    SPIDER_ROWS,
    TUSC_META,
    TUSC_META_HEADER,
    write_candi,
    write_csv,
    write_ircadb,
    write_kits23,
    write_montgomery,
    write_spider,
    write_tusc,
)

from fairfm.data import get_dataset
from fairfm.data.images import read_image
from fairfm.data.sources.ircadb import LABEL_CODES, remap_labels
from fairfm.errors import InputError
from fairfm.groups import UNKNOWN


def test_tusc_frames_joined_by_annot_id(tmp_path):
    root = write_tusc(tmp_path)
    table = get_dataset("tusc").load(root)
    assert len(table) == 6
    assert table["sample_id"].tolist() == ["2_0000", "2_0001", "1_0000", "3_0000", "1_0001", "1_0002"]
    assert table["h5_index"].tolist() == list(range(6))
    assert table["patient_id"].tolist() == ["2", "2", "1", "3", "1", "1"]
    # joined by annot_id, not by position: frames of "2_" are male, 67
    assert table["group_sex"].tolist() == ["M", "M", "F", "F", "F", "F"]
    assert table["group_age"].tolist() == ["≥60", "≥60", "<60", UNKNOWN, "<60", "<60"]
    assert set(table["path"]) == set(table["path_mask"]) == {"dataset.hdf5"}
    assert table["attr_histopath_diagnosis"].tolist()[:3] == ["Malignant", "Malignant", "Benign"]


def test_tusc_errors(tmp_path):
    root = write_tusc(tmp_path, frames=[("1_", 0), ("9_", 0)])
    with pytest.raises(InputError, match=r"frame 1 has annot_id '9_', which is not in .*metadata.csv"):
        get_dataset("tusc").load(root)
    write_tusc(tmp_path)
    write_csv(
        root / "metadata.csv",
        TUSC_META_HEADER,
        [TUSC_META[0], TUSC_META[1][:2] + ["X"] + TUSC_META[1][3:], TUSC_META[2]],
    )
    with pytest.raises(InputError, match=r"metadata.csv column 'sex'.*value 'X'"):
        get_dataset("tusc").load(root)
    (root / "dataset.hdf5").unlink()
    with pytest.raises(InputError, match="dataset.hdf5"):
        get_dataset("tusc").load(root)


def test_montgomery(tmp_path):
    root = write_montgomery(tmp_path)
    table = get_dataset("montgomery").load(root).set_index("sample_id")
    assert table.index.tolist() == ["MCUCXR_0001_0", "MCUCXR_0002_0", "MCUCXR_0104_1", "MCUCXR_0108_1"]
    assert table["path"].iloc[0] == "MontgomerySet/CXR_png/MCUCXR_0001_0.png"
    assert table["path_mask_left"].iloc[2] == "MontgomerySet/ManualMask/leftMask/MCUCXR_0104_1.png"
    assert table["path_mask_right"].iloc[2] == "MontgomerySet/ManualMask/rightMask/MCUCXR_0104_1.png"
    # M stays M and F stays F (FairMedFM's segmentation code reversed them, §7.16); "O" is unknown
    assert table["group_sex"].tolist() == ["M", "F", "F", UNKNOWN]
    assert table["attr_age"].tolist()[:3] == [44.0, 60.0, 28.0]
    assert table["group_age"].tolist() == ["<60", "≥60", "<60", UNKNOWN]
    assert table["label_tb"].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert table["patient_id"].tolist() == ["0001", "0002", "0104", "0108"]
    assert read_image(root / table["path_mask_left"].iloc[0]).max() == 255


def test_montgomery_missing_mask(tmp_path):
    root = write_montgomery(tmp_path)
    (root / "MontgomerySet" / "ManualMask" / "rightMask" / "MCUCXR_0002_0.png").unlink()
    with pytest.raises(InputError, match=r"rightMask/MCUCXR_0002_0.png"):
        get_dataset("montgomery").load(root)


@pytest.mark.parametrize("nnunet", [False, True])
def test_kits23_metadata_matched_by_case_id(tmp_path, nnunet):
    root = write_kits23(tmp_path, nnunet=nnunet)
    table = get_dataset("kits23").load(root).set_index("sample_id")
    assert table.index.tolist() == ["case_00000", "case_00002", "case_00400"]
    # the json lists case_00400 first and case_00001 (no volume) second: a positional lookup (§7.19) would
    # give case_00000 the record of case_00400
    assert table["group_sex"].tolist() == ["M", "F", "F"]
    assert table["attr_age"].tolist() == [60.0, 31.0, 45.0]
    assert table["group_age"].tolist() == ["≥60", "<60", "<60"]
    assert table["group_bmi"].tolist() == ["normal", UNKNOWN, "underweight"]
    assert table["volume_shape"].tolist() == ["3x8x8", "4x8x8", "5x8x8"]
    expected_mask = (
        "dataset/labelsTr/case_00000.nii.gz" if nnunet else "dataset/case_00000/segmentation.nii.gz"
    )
    assert table.loc["case_00000", "path_mask"] == expected_mask
    assert set(np.unique(read_image(root / expected_mask)).tolist()) == {0.0, 1.0, 2.0}


def test_kits23_case_without_metadata(tmp_path):
    root = write_kits23(tmp_path)
    records = [r for r in KITS_RECORDS if r["case_id"] != "case_00002"]
    (root / "dataset" / "kits23.json").write_text(json.dumps(records), encoding="utf-8")
    with pytest.raises(InputError, match="no record with case_id 'case_00002'"):
        get_dataset("kits23").load(root)


def test_ircadb_folders_and_zips(tmp_path):
    root = write_ircadb(tmp_path)
    table = get_dataset("ircadb").load(root).set_index("sample_id")
    assert table.index.tolist() == ["3Dircadb1.1", "3Dircadb1.2", "3Dircadb1.10"]
    assert table["path"].tolist() == [
        "3Dircadb1/3Dircadb1.1/PATIENT_DICOM",
        "3Dircadb1/3Dircadb1.2/PATIENT_DICOM.zip",
        "3Dircadb1/3Dircadb1.10/PATIENT_DICOM",
    ]
    assert table["path_mask"].tolist()[1] == "3Dircadb1/3Dircadb1.2/LABELLED_DICOM.zip"
    assert table["n_slices"].tolist() == [3, 2, 2]
    assert table["group_sex"].tolist() == ["F", "M", UNKNOWN]
    assert table["attr_age"].tolist()[:2] == [57.0, 45.0]
    assert table["group_age"].tolist() == ["<60", "<60", UNKNOWN]
    assert table["patient_id"].tolist() == ["ircadb_1", "ircadb_2", "ircadb_10"]


def test_ircadb_demographics_table_fills_empty_headers(tmp_path):
    root = write_ircadb(tmp_path)
    write_csv(
        root / "overview.csv", ["name", "sex", "age"], [["3Dircadb1.10", "F", "61"], ["3Dircadb1.1", "F", ""]]
    )
    source = get_dataset("ircadb", demographics_csv="overview.csv")
    table = source.load(root).set_index("sample_id")
    assert table["group_sex"].tolist() == ["F", "M", "F"]
    assert table["group_age"].tolist() == ["<60", "<60", "≥60"]
    assert source.source_files(root) == [root / "overview.csv"]
    write_csv(root / "overview.csv", ["name", "sex"], [["3Dircadb1.2", "F"]])
    with pytest.raises(InputError, match=r"case 2: sex 'F' contradicts the DICOM header \('M'"):
        source.load(root)


def test_ircadb_label_codes_all_remapped():
    codes = np.array(LABEL_CODES).reshape(1, -1)
    remapped = remap_labels(codes)
    # every code gets its own class index in 0..16 (FairMedFM left 1, 17, … 193 as values > 10, §7.18)
    assert remapped.tolist() == [list(range(len(LABEL_CODES)))]
    assert remapped.max() == 16
    with pytest.raises(InputError, match=r"label code\(s\) \[2\]"):
        remap_labels(np.array([0, 2, 17]), source="LABELLED_DICOM/image_0")


def test_candi(tmp_path):
    root = write_candi(tmp_path)
    table = get_dataset("candi").load(root).set_index("sample_id")
    assert sorted(table.index) == ["BPDwPsy_031", "HC_001", "HC_002", "SS_084"]
    # every spelling mapped (FairMedFM's == "female" test made "F"/"Female" male, §7.20)
    assert table.loc[["HC_001", "HC_002", "BPDwPsy_031", "SS_084"], "group_sex"].tolist() == [
        "M",
        "F",
        "F",
        "M",
    ]
    assert table.loc["SS_084", "group_age"] == UNKNOWN
    assert table.loc["HC_002", "attr_age"] == 7.0
    assert table.loc["BPDwPsy_031", "attr_cohort"] == "BPDwithPsy"
    assert table.loc["HC_001", "path"] == "SchizBull_2008/HC/HC_001/HC_001_procimg.nii.gz"
    assert table.loc["HC_001", "path_mask"] == "SchizBull_2008/HC/HC_001/HC_001_seg.nii.gz"
    assert set(table["volume_shape"]) == {"6x6x4"}


def test_candi_missing_subject_volume(tmp_path):
    root = write_candi(tmp_path)
    (root / "SchizBull_2008" / "SS" / "SS_084" / "SS_084_procimg.nii.gz").unlink()
    with pytest.raises(
        InputError, match=r"SS_Basic_Demographics.csv: column 'Subject', row 0: no SS_084_procimg"
    ):
        get_dataset("candi").load(root)


def test_spider_sex_per_series(tmp_path):
    root = write_spider(tmp_path)
    table = get_dataset("spider").load(root).set_index("sample_id")
    assert table.index.tolist() == ["spider_1_t1", "spider_1_t2", "spider_2_t2_SPACE", "spider_3_t1"]
    # per-row sex: FairMedFM gave every slice the first subject's sex (§7.17)
    assert table["group_sex"].tolist() == ["F", "F", "M", "M"]
    assert table["patient_id"].tolist() == ["spider_1", "spider_1", "spider_2", "spider_3"]
    assert table["path_mask"].iloc[2] == "masks/2_t2_SPACE.mha"
    assert table["volume_shape"].tolist() == ["8x6x3", "8x6x4", "8x6x5", "8x6x6"]


def test_spider_missing_mask(tmp_path):
    root = write_spider(tmp_path)
    (root / "masks" / "3_t1.mha").unlink()
    with pytest.raises(InputError, match=r"row 3: masks file not found"):
        get_dataset("spider").load(root)
    rows = [list(r) for r in SPIDER_ROWS]
    rows[0][2] = "female?"
    write_spider(root)
    write_csv(root / "overview.csv", SPIDER_HEADER, rows)
    with pytest.raises(InputError, match=r"column 'sex'.*row 0: value 'female\?'"):
        get_dataset("spider").load(root)
