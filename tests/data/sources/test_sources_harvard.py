"""Harvard lab releases (FairVLMed10k, GF3300, FairVision30k, FairSeg) on miniature copies."""

from __future__ import annotations

import numpy as np
import pytest
from source_releases import (
    FAIRSEG_FILES,
    FAIRVLMED_ROWS,
    SUMMARY_HEADER,
    write_csv,
    write_fairseg,
    write_fairvision,
    write_fairvlmed10k,
    write_gf3300,
    write_npz,
)

from fairfm.data import get_dataset
from fairfm.data.images import read_image
from fairfm.errors import InputError
from fairfm.groups import UNKNOWN


@pytest.mark.parametrize("readme_folder", [True, False])
def test_fairvlmed10k(tmp_path, readme_folder):
    root = write_fairvlmed10k(tmp_path, readme_folder=readme_folder)
    table = get_dataset("fairvlmed10k").load(root).set_index("sample_id")
    assert table.index.tolist() == [
        "fairvlmed_data_00001",
        "fairvlmed_data_00002",
        "fairvlmed_data_00003",
        "fairvlmed_data_00004",
    ]
    assert table["path"].tolist() == [
        "Training/data_00001.npz",
        "Training/data_00002.npz",
        "Validation/data_00003.npz",
        "Test/data_00004.npz",
    ]
    assert table["split_official"].tolist() == ["train", "train", "val", "test"]
    assert table["label_glaucoma"].tolist() == [1.0, 0.0, 0.0, 1.0]
    # strings mapped explicitly: males stay male (FairMedFM made everyone female, §7.1)
    assert table["group_sex"].tolist() == ["F", "M", "M", "F"]
    assert table["group_race"].tolist() == ["White", "Asian", "Black", "White"]
    assert table["group_ethnicity"].tolist() == ["Non-Hispanic", UNKNOWN, "Hispanic", "Non-Hispanic"]
    assert table["group_language"].tolist() == ["English", "Spanish", UNKNOWN, "Other"]
    assert table["group_marital"].tolist() == ["Married/Partnered", "Single", UNKNOWN, "Widowed"]
    assert table["group_age"].tolist() == ["≥60", "<60", "≥60", "<60"]
    assert table["text_note"].iloc[0] == "pt with poag"
    assert table["patient_id"].is_unique
    image = read_image(root / table["path"].iloc[0], key="slo_fundus")
    assert image.shape == (12, 10)


def test_fairvlmed10k_renamed_split_folders(tmp_path):
    root = write_fairvlmed10k(tmp_path)
    for released, renamed in (("Training", "train"), ("Validation", "val"), ("Test", "test")):
        (root / released).rename(root / renamed)
    table = get_dataset("fairvlmed10k").load(root)
    assert table["path"].tolist() == [
        "train/data_00001.npz",
        "train/data_00002.npz",
        "val/data_00003.npz",
        "test/data_00004.npz",
    ]
    assert table["split_official"].tolist() == ["train", "train", "val", "test"]


def test_fairvlmed10k_errors(tmp_path):
    root = write_fairvlmed10k(tmp_path)
    (root / "Test" / "data_00004.npz").unlink()
    with pytest.raises(InputError, match=r"column 'filename', row 3: .*Test/data_00004.npz not found"):
        get_dataset("fairvlmed10k").load(root)
    root = write_fairvlmed10k(tmp_path)
    rows = [list(r) for r in FAIRVLMED_ROWS]
    rows[1][2] = "M?"
    write_csv(
        root / "ReadMe" / "data_summary.csv",
        SUMMARY_HEADER + ["note", "gpt4_summary", "glaucoma", "use"],
        rows,
    )
    with pytest.raises(InputError, match=r"column 'gender'.*row 1: value 'M\?'"):
        get_dataset("fairvlmed10k").load(root)


def test_gf3300_sex_language_and_dataset_folder(tmp_path):
    root = write_gf3300(tmp_path)
    table = get_dataset("gf3300").load(root).set_index("sample_id")
    assert table["path"].tolist() == [
        "dataset-001/Training/data_0001.npz",
        "dataset-001/Training/data_0002.npz",
        "dataset-001/Test/data_0003.npz",
    ]
    assert table["group_sex"].tolist() == ["F", "M", "F"]
    assert table["group_language"].tolist() == ["English", "Other", UNKNOWN]
    assert table["group_marital"].tolist() == ["Divorced", "Separated", "Single"]
    assert table["group_age"].tolist() == ["<60", "≥60", UNKNOWN]
    assert table["label_glaucoma"].tolist() == [1.0, 0.0, 1.0]
    assert table["split_official"].tolist() == ["train", "train", "test"]
    assert read_image(root / table["path"].iloc[0], key="rnflt").shape == (20, 20)


@pytest.mark.parametrize("huggingface_layout", [True, False])
def test_fairvision_cohorts(tmp_path, huggingface_layout):
    root = write_fairvision(tmp_path, huggingface_layout=huggingface_layout)
    amd = get_dataset("fairvision_amd").load(root).set_index("sample_id")
    prefix = "AMD/Dataset/" if huggingface_layout else "AMD/"
    assert amd["path"].tolist() == [
        prefix + "Training/data_00001.npz",
        prefix + "Validation/data_00002.npz",
        prefix + "Test/data_00003.npz",
    ]
    assert amd["path_oct"].tolist() == amd["path"].tolist()
    assert amd["label_amd"].tolist() == [1.0, 0.0, 1.0]
    assert amd["attr_amd"].tolist() == ["late amd", "normal", "early amd"]
    assert amd["group_sex"].tolist() == ["F", "M", "M"]
    dr = get_dataset("fairvision_dr").load(root).set_index("sample_id")
    assert dr["label_dr"].tolist() == [1.0, 0.0]
    assert dr["group_ethnicity"].tolist() == ["Hispanic", "Non-Hispanic"]
    glaucoma = get_dataset("fairvision_glaucoma").load(root).set_index("sample_id")
    assert glaucoma["label_glaucoma"].tolist() == [1.0, 0.0]
    assert glaucoma["split_official"].tolist() == ["train", "test"]
    # stems restart in every cohort: ids must not collide (§2.16 pitfall 1)
    ids = set(amd.index) | set(dr.index) | set(glaucoma.index)
    assert len(ids) == len(amd) + len(dr) + len(glaucoma)
    assert read_image(root / amd["path_oct"].iloc[0], key="oct_bscans").shape == (4, 6, 6)


@pytest.mark.parametrize("keys", ["readme", "samed", "fairmedfm"])
def test_fairseg_npz_attributes_and_key_aliases(tmp_path, keys):
    root = write_fairseg(tmp_path, keys=keys)
    table = get_dataset("fairseg").load(root).set_index("sample_id")
    assert table.index.tolist() == ["fairseg_data_00001", "fairseg_data_00002", "fairseg_data_08001"]
    assert (
        table["path"].tolist()
        == table["path_mask"].tolist()
        == ["Training/data_00001.npz", "Training/data_00002.npz", "Test/data_08001.npz"]
    )
    assert table["split_official"].tolist() == ["train", "train", "test"]
    # gender 0 = female, 1 = male (§7.14)
    assert table["group_sex"].tolist() == ["F", "M", "M"]
    assert table["group_race"].tolist() == ["White", "Asian", "Black"]
    assert table["group_ethnicity"].tolist() == ["Non-Hispanic", UNKNOWN, "Hispanic"]
    assert table["group_language"].tolist() == ["English", "Other", UNKNOWN]
    assert table["group_marital"].tolist() == ["Married/Partnered", "Separated", UNKNOWN]
    assert table["group_age"].tolist() == ["≥60", "<60", "≥60"]
    mask_key = table["npz_key_mask"].iloc[0]
    mask = read_image(root / table["path_mask"].iloc[0], key=mask_key)
    assert set(np.unique(mask).tolist()) == {0.0, -1.0, -2.0}


def test_fairseg_string_race_values(tmp_path):
    root = write_fairseg(tmp_path)
    write_npz(
        root / "Training" / "data_00002.npz",
        slo_fundus=np.zeros((4, 4)),
        disc_cup_mask=np.zeros((4, 4)),
        gender=1,
        race="Black or African American",
        ethnicity=0,
        language=0,
        maritalstatus=0,
        age=40.0,
    )
    table = get_dataset("fairseg").load(root).set_index("sample_id")
    assert table.loc["fairseg_data_00002", "group_race"] == "Black"
    assert table.loc["fairseg_data_00001", "group_race"] == "White"


def test_fairseg_age_in_days_and_bad_codes(tmp_path):
    root = write_fairseg(tmp_path, age_scale=365.25)
    with pytest.raises(InputError, match="age_unit='days'"):
        get_dataset("fairseg").load(root)
    table = get_dataset("fairseg", age_unit="days").load(root)
    np.testing.assert_allclose(table["attr_age"], [f[-1] for f in FAIRSEG_FILES])
    write_npz(
        root / "Training" / "data_00002.npz",
        slo_fundus=np.zeros((4, 4)),
        disc_cup_mask=np.zeros((4, 4)),
        gender=1,
        race=7,
        ethnicity=0,
        language=0,
        maritalstatus=0,
        age=40.0,
    )
    with pytest.raises(InputError, match=r"data_00002.npz: key race: value 7 is not one of"):
        get_dataset("fairseg").load(root)
