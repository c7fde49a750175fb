"""FairFedMed-Oph, COVID-CT-MD, ADNI, OL3I and Duke OCT loaders on miniature copies of their releases."""

from __future__ import annotations

import numpy as np
import pytest
from source_releases import (
    COVID_HEADER,
    COVID_ROWS,
    FEDMED_HEADER,
    FEDMED_SITES,
    write_adni,
    write_covid_ct_md,
    write_csv,
    write_duke_oct,
    write_fairfedmed_oph,
    write_ol3i,
)

from fairfm.data import get_dataset
from fairfm.data.images import read_image
from fairfm.errors import InputError
from fairfm.groups import UNKNOWN


@pytest.mark.parametrize(
    "name,key,ndim", [("fairfedmed_oph_slo", "slo_fundus", 2), ("fairfedmed_oph_oct", "oct_bscans", 3)]
)
def test_fairfedmed_oph_sites(tmp_path, name, key, ndim):
    root = write_fairfedmed_oph(tmp_path)
    source = get_dataset(name)
    table = source.load(root).set_index("sample_id")
    assert len(table) == sum(len(rows) for rows in FEDMED_SITES.values())
    assert table.loc["fairclip_data_00001", "path"] == "DATA/fairfedmed/all/fairclip_data_00001.npz"
    assert table["site"].tolist() == ["site1", "site1", "site1", "site2", "site2", "site3", "site3"]
    assert table["split_official"].tolist() == ["train", "train", "test", "train", "test", "train", "test"]
    assert table["label_glaucoma"].tolist() == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    assert table["group_sex"].tolist() == ["M", "F", "F", "M", "F", "M", "F"]
    assert table["group_race"].tolist() == ["White", "Asian", "Black", "Asian", "White", "Black", "White"]
    assert table["group_language"].tolist() == [
        "English",
        "Other",
        "Spanish",
        UNKNOWN,
        "English",
        "English",
        "English",
    ]
    assert table["group_ethnicity"].tolist()[:3] == ["Non-Hispanic", UNKNOWN, "Hispanic"]
    assert table["group_marital"].tolist()[3:6] == [UNKNOWN, "Widowed", "Separated"]
    assert table["group_age"].tolist() == ["≥60", "<60", "≥60", "<60", "≥60", "≥60", UNKNOWN]
    assert table["attr_source_release"].tolist()[:3] == ["fairclip", "harvard30kglaucoma", "fairdomain_cls"]
    assert read_image(root / table["path"].iloc[0], key=source.npz_keys["path"]).ndim == ndim
    assert source.card.has_sites and source.card.dims == ndim


def test_fairfedmed_oph_partition_option_and_errors(tmp_path):
    root = write_fairfedmed_oph(tmp_path, partition="language")
    with pytest.raises(InputError, match="meta_site1_race_train.csv"):
        get_dataset("fairfedmed_oph_slo").load(root)
    assert len(get_dataset("fairfedmed_oph_slo", partition="language").load(root)) == 7
    with pytest.raises(InputError, match="option partition='site'; expected one of race, language, ethnicity"):
        get_dataset("fairfedmed_oph_slo", partition="site").load(root)
    # a file in two sites is refused
    rows = FEDMED_SITES[(2, "train")] + [FEDMED_SITES[(1, "train")][0]]
    write_csv(root / "DATA" / "fairfedmed" / "meta_site2_language_train.csv", FEDMED_HEADER, rows)
    with pytest.raises(InputError, match="fairclip_data_00001 is listed in both"):
        get_dataset("fairfedmed_oph_slo", partition="language").load(root)


def test_covid_ct_md(tmp_path):
    root = write_covid_ct_md(tmp_path)
    table = get_dataset("covid_ct_md").load(root).set_index("sample_id")
    assert table["path"].tolist() == [
        "COVID-19 Cases/P001",
        "Cap Cases/cap001",
        "Normal Cases/normal001",
        "COVID-19 Cases/P002",
    ]
    assert table["label_pneumonia"].tolist() == [1.0, 1.0, 0.0, 1.0]
    # "039Y" is 39 years (FairMedFM parsed two characters of the string, §7.24)
    assert table["attr_age"].tolist()[:3] == [39.0, 72.0, 60.0]
    assert np.isnan(table.loc["P002", "attr_age"])
    assert table["group_age"].tolist() == ["<60", "≥60", "≥60", UNKNOWN]
    assert table["group_sex"].tolist() == ["M", "F", "F", "M"]
    assert table["n_slices"].tolist() == [2, 3, 4, 5]
    assert table["patient_id"].tolist() == ["P001", "cap001", "normal001", "P002"]


def test_covid_ct_md_errors(tmp_path):
    root = write_covid_ct_md(tmp_path)
    rows = [list(r) for r in COVID_ROWS]
    rows[1][1] = "Pneumonia"
    write_csv(root / "Clinical-data.csv", COVID_HEADER, rows)
    with pytest.raises(InputError, match=r"column 'Diagnosis', row 1: value 'Pneumonia'"):
        get_dataset("covid_ct_md").load(root)
    rows[1][1] = "CAP"
    rows[2][2] = "normal099"
    write_csv(root / "Clinical-data.csv", COVID_HEADER, rows)
    with pytest.raises(InputError, match=r"row 2: DICOM series folder not found: .*Normal Cases/normal099"):
        get_dataset("covid_ct_md").load(root)


def test_adni(tmp_path):
    root = write_adni(tmp_path)
    table = get_dataset("adni").load(root).set_index("sample_id")
    assert table.index.tolist() == ["I118671", "I118672", "I97327"]  # MCI dropped
    assert table["patient_id"].tolist() == ["002_S_0295", "002_S_0295", "002_S_0619"]
    assert table["label_ad"].tolist() == [0.0, 0.0, 1.0]
    assert table["group_sex"].tolist() == ["M", "M", "F"]
    assert table["group_age"].tolist() == ["≥60", "≥60", "<60"]
    assert set(table["volume_shape"]) == {"6x6x5"}
    assert all(
        (root / p).is_file() and p.endswith(".nii") and f"/{i}/" in p for i, p in table["path"].items()
    )
    kept = get_dataset("adni", keep_mci=True, age_edges=[70]).load(root).set_index("sample_id")
    assert np.isnan(kept.loc["I40657", "label_ad"]) and kept.loc["I40657", "group_age"] == "<70"


def test_adni_missing_volume(tmp_path):
    root = write_adni(tmp_path)
    for nifti in (root / "ADNI" / "002_S_0619").rglob("*.nii"):
        nifti.unlink()
    with pytest.raises(InputError, match=r"'Image Data ID', row 2: no NIfTI found .*002_S_0619.*I97327"):
        get_dataset("adni").load(root)


def test_ol3i(tmp_path):
    root = write_ol3i(tmp_path)
    table = get_dataset("ol3i").load(root).set_index("sample_id")
    assert table["path"].unique().tolist() == ["l3_slices.h5"]
    assert table["h5_key"].tolist() == ["a1b2c3", "d4e5f6", "g7h8i9"]
    assert table["label_ihd_1y"].tolist() == [0.0, 1.0, 0.0]
    assert table["label_ihd_5y"].tolist() == [0.0, 1.0, 1.0]
    assert table["split_official"].tolist() == ["train", "val", "test"]
    assert table["group_sex"].tolist() == ["M", "F", "F"]
    assert table["group_age"].tolist() == ["≥60", "<60", UNKNOWN]
    (root / "l3_slices.h5").unlink()
    with pytest.raises(InputError, match="l3_slices.h5"):
        get_dataset("ol3i").load(root)


def test_duke_oct_label_is_amd(tmp_path):
    root = write_duke_oct(tmp_path)
    table = get_dataset("duke_oct").load(root).set_index("sample_id")
    assert table.loc["Farsiu_Ophthalmology_2013_AMD_Subject_1001", "label_amd"] == 1.0
    # MEDFAIR coded Control = 1 (§7.13): here control is the negative class
    assert table.loc["Farsiu_Ophthalmology_2013_Control_Subject_1001", "label_amd"] == 0.0
    assert table["attr_age"].tolist() == [81.0, 60.0, 55.5]
    assert table["group_age"].tolist() == ["≥60", "≥60", "<60"]
    assert table["n_slices"].tolist() == [7, 7, 7]
    assert table["path"].iloc[2] == "Control/Farsiu_Ophthalmology_2013_Control_Subject_1001.mat"
    medfair = get_dataset("duke_oct", age_edges=[70]).load(root)
    assert medfair["group_age"].tolist() == ["≥70", "<70", "<70"]
