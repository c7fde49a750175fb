"""Fitzpatrick17k, DDI, PAPILA and BRSET loaders on miniature copies of their releases."""

from __future__ import annotations

import numpy as np
import pytest
from source_releases import (
    BRSET_HEADER,
    BRSET_ROWS,
    FITZ_HEADER,
    FITZ_ROWS,
    write_brset,
    write_csv,
    write_ddi,
    write_fitzpatrick17k,
    write_papila,
)

from fairfm.data import get_dataset
from fairfm.errors import InputError
from fairfm.groups import UNKNOWN


def test_fitzpatrick17k(tmp_path):
    root = write_fitzpatrick17k(tmp_path)
    table = get_dataset("fitzpatrick17k").load(root).set_index("sample_id")
    assert len(table) == len(FITZ_ROWS)
    hashes = [r[0] for r in FITZ_ROWS]
    assert table.loc[hashes, "label_malignant"].tolist() == [0.0, 0.0, 1.0, 1.0, 0.0]
    assert table.loc[hashes, "group_fitzpatrick"].tolist() == ["III", "I", UNKNOWN, "VI", "IV"]
    assert table.loc[hashes, "group_fitzpatrick_coarse"].tolist() == [
        "I–III",
        "I–III",
        UNKNOWN,
        "IV–VI",
        "IV–VI",
    ]
    assert table.loc[hashes[0], "path"] == f"images/{hashes[0]}.jpg"
    assert all((root / p).is_file() for p in table["path"])


def test_fitzpatrick17k_unmapped_scale(tmp_path):
    rows = [list(r) for r in FITZ_ROWS]
    rows[3][1] = "7"
    write_csv(tmp_path / "fitzpatrick17k.csv", FITZ_HEADER, rows)
    with pytest.raises(InputError, match=r"fitzpatrick_scale.*row 3: value '7'"):
        get_dataset("fitzpatrick17k").load(tmp_path)


@pytest.mark.parametrize("in_images_folder", [True, False])
def test_ddi(tmp_path, in_images_folder):
    root = write_ddi(tmp_path, in_images_folder=in_images_folder)
    table = get_dataset("ddi").load(root).set_index("sample_id")
    assert table.index.tolist() == ["ddi_1", "ddi_2", "ddi_3", "ddi_4"]
    assert table["label_malignant"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert table["group_skin_tone"].tolist() == ["V–VI", "I–II", "III–IV", "III–IV"]
    assert all((root / p).is_file() for p in table["path"])


def test_ddi_legacy_label_column(tmp_path):
    table = get_dataset("ddi").load(write_ddi(tmp_path, legacy_label=True))
    assert table["label_malignant"].tolist() == [1.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize("xlsx", [False, True])
def test_papila_per_eye_with_real_age(tmp_path, xlsx):
    root = write_papila(tmp_path, xlsx=xlsx)
    table = get_dataset("papila").load(root).set_index("sample_id")
    # patient #004's left eye is a suspect (2) and is dropped by default
    assert sorted(table.index) == ["RET002OD", "RET002OS", "RET004OD", "RET005OD", "RET005OS"]
    assert table.loc["RET004OD", "path"] == "FundusImages/RET004OD.jpg"
    assert table.loc["RET005OS", "patient_id"] == table.loc["RET005OD", "patient_id"] == "005"
    assert table.loc[["RET002OD", "RET004OD", "RET005OS"], "label_glaucoma"].tolist() == [0.0, 1.0, 1.0]
    # Gender 0 = male, 1 = female
    assert table.loc[["RET002OD", "RET004OD"], "group_sex"].tolist() == ["M", "F"]
    # the FairMedFM bug made every PAPILA age group 0; here 39 → <60, 61 and 60 → ≥60 (§7.3)
    assert table.loc[["RET002OS", "RET004OD", "RET005OD"], "group_age"].tolist() == ["<60", "≥60", "≥60"]
    assert table["attr_age"].tolist() == [39.0, 61.0, 60.0, 39.0, 60.0]


def test_papila_keep_suspects(tmp_path):
    table = get_dataset("papila", keep_suspects=True).load(write_papila(tmp_path)).set_index("sample_id")
    assert len(table) == 6
    assert np.isnan(table.loc["RET004OS", "label_glaucoma"])


def test_papila_missing_sheet(tmp_path):
    write_papila(tmp_path)
    (tmp_path / "ClinicalData" / "patient_data_os.csv").unlink()
    with pytest.raises(InputError, match="patient_data_os"):
        get_dataset("papila").load(tmp_path)


def test_brset_sex_codes_and_missing_age(tmp_path):
    root = write_brset(tmp_path)
    table = get_dataset("brset").load(root).set_index("sample_id")
    assert table["patient_id"].tolist() == ["1", "1", "2", "3"]
    assert table["label_dr"].tolist() == [0.0, 1.0, 0.0, 1.0]
    # 1 = male, 2 = female (§7.25)
    assert table["group_sex"].tolist() == ["F", "F", "M", "M"]
    assert table["group_age"].tolist() == ["<60", "<60", UNKNOWN, "≥60"]
    assert table.loc["img00004", "path"] == "fundus_photos/img00004.jpg"


def test_brset_unmapped_sex_code(tmp_path):
    rows = [list(r) for r in BRSET_ROWS]
    rows[2][7] = "0"
    write_csv(tmp_path / "labels.csv", BRSET_HEADER, rows)
    with pytest.raises(InputError, match=r"patient_sex.*row 2: value '0'"):
        get_dataset("brset").load(tmp_path)


def test_papila_numeric_ids_are_zero_padded(tmp_path):
    from source_releases import PAPILA_HEADER

    root = write_papila(tmp_path)
    for eye in ("od", "os"):
        rows = [["2", "39", "0", "0"] + ["1"] * (len(PAPILA_HEADER) - 4)]
        write_csv(root / "ClinicalData" / f"patient_data_{eye}.csv", PAPILA_HEADER, rows)
    table = get_dataset("papila").load(root)
    assert table["path"].tolist() == ["FundusImages/RET002OD.jpg", "FundusImages/RET002OS.jpg"]
    assert table["patient_id"].tolist() == ["002", "002"]
