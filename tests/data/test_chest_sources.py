"""Chest-X-ray loaders on miniature releases (real layout) and on the real metadata tables from torchxrayvision."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from chest_releases import (
    BIG_PATIENT,
    real_chexpert,
    real_nih,
    real_padchest,
    real_rsna,
    write_chexpert,
    write_fairfedmed_chest,
    write_mimic,
    write_nih,
    write_padchest,
    write_rsna,
)

from fairfm.data import get_dataset
from fairfm.data.sampletable import validate_sample_table
from fairfm.errors import InputError
from fairfm.groups import UNKNOWN


def by_id(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.set_index("sample_id")


# --------------------------------------------------------------------------------------------------------- CheXpert

P1 = "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"
P2 = "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg"
P2L = "CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.jpg"
P3 = "CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg"


def test_chexpert_fixture_labels_attributes_and_demo(tmp_path):
    root = write_chexpert(tmp_path)
    table = validate_sample_table(get_dataset("chexpert").load(root))
    train = pd.read_csv(root / "CheXpert-v1.0-small" / "train.csv")
    valid = pd.read_csv(root / "CheXpert-v1.0-small" / "valid.csv")
    assert len(table) == len(train) + len(valid)
    t = by_id(table)
    assert (root / t.loc[P1, "path"]).is_file()
    assert t.loc[P2, "patient_id"] == t.loc[P2L, "patient_id"] == "patient00002"
    # default uncertain=zeros: -1 → 0, blank → 0, 1 → 1
    assert t.loc[P2, "label_cardiomegaly"] == 0.0 and t.loc[P2, "label_lung_opacity"] == 1.0
    assert t.loc[P1, "label_no_finding"] == 1.0 and t.loc[P2, "label_no_finding"] == 0.0
    # Unknown sex stays unknown (§7.10); age 0 is missing (§7.11)
    assert t.loc[P3, "group_sex"] == UNKNOWN and np.isnan(t.loc[P3, "attr_age"]) and t.loc[P3, "group_age"] == UNKNOWN
    assert t.loc[P1, "group_sex"] == "F" and t.loc[P1, "group_age"] == "≥60"
    # race from the DEMO sheet: explicit map; "Other" is not folded into non-White; refused → unknown (§7.9)
    assert t.loc[P1, "group_race"] == "White" and t.loc[P1, "attr_race"] == "White, non-Hispanic"
    assert t.loc[P2, "group_race"] == "Other" and t.loc[P2, "group_ethnicity"] == "Hispanic"
    assert t.loc[P3, "group_race"] == UNKNOWN and t.loc[P3, "group_ethnicity"] == UNKNOWN
    # patients without a demographics row (every 11th) → unknown race, row kept (no silent drop)
    assert (t.loc[t["patient_id"] == "patient00011", "group_race"] == UNKNOWN).all()
    # official split: train.csv → train, valid.csv → val; source_index = row of train.csv
    assert set(t.loc[t["patient_id"] == "patient64541", "split_official"]) == {"val"}
    assert t.loc[P2L, "source_index"] == 2
    # independent oracle for a whole column: No Finding == 1 in the CSV
    train_ids = table[table["split_official"] == "train"]
    np.testing.assert_array_equal(train_ids["label_no_finding"].to_numpy(), (train["No Finding"] == 1).to_numpy(float))


@pytest.mark.parametrize("policy, expected", [("ones", 1.0), ("ignore", np.nan), ("zeros", 0.0)])
def test_chexpert_uncertain_policy(tmp_path, policy, expected):
    root = write_chexpert(tmp_path, n_patients=2, demo=None, images=False)
    t = by_id(get_dataset("chexpert", uncertain=policy).load(root))
    np.testing.assert_equal(t.loc[P2, "label_edema"], expected)
    assert t.loc[P2, "label_lung_opacity"] == 1.0 and t.loc[P2, "label_pneumonia"] == 0.0  # blank → 0 always
    assert "group_race" not in t.columns  # no DEMO sheet: no race column invented


def test_chexpert_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="train.csv"):
        get_dataset("chexpert").load(tmp_path)
    with pytest.raises(InputError, match="uncertain"):
        get_dataset("chexpert", uncertain="maybe").load(write_chexpert(tmp_path, n_patients=1, images=False))
    root = write_chexpert(tmp_path / "bad", n_patients=1, demo="csv", images=False)
    demo = pd.read_csv(root / "CHEXPERT DEMO.csv")
    demo.loc[0, "PRIMARY_RACE"] = "Martian"
    demo.to_csv(root / "CHEXPERT DEMO.csv", index=False)
    with pytest.raises(InputError, match=r"CHEXPERT DEMO.csv: attribute 'race', row 0: value 'Martian'"):
        get_dataset("chexpert").load(root)


def test_chexpert_real_table(tmp_path):
    root = real_chexpert(tmp_path)
    table = validate_sample_table(get_dataset("chexpert").load(root))
    assert len(table) == 223_414  # DATASETS.md §8
    assert table["group_sex"].value_counts().to_dict() == {"M": 132_636, "F": 90_777, UNKNOWN: 1}
    assert int(table["attr_age"].isna().sum()) == 3  # the three age-0 placeholders
    assert table["view"].value_counts().to_dict() == {"Frontal": 191_027, "Lateral": 32_387}
    raw = pd.read_csv(root / "CheXpert-v1.0-small" / "train.csv")
    assert int(table["label_no_finding"].sum()) == int((raw["No Finding"] == 1).sum())
    assert table["patient_id"].str.fullmatch(r"patient\d{5}").all()


# -------------------------------------------------------------------------------------------------------- MIMIC-CXR

def test_mimic_fixture(tmp_path):
    root = write_mimic(tmp_path)
    table = validate_sample_table(get_dataset("mimic_cxr").load(root))
    meta = pd.read_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz")
    assert len(table) == len(meta)
    t = by_id(table)
    first = table[table["patient_id"] == "10000032"].iloc[0]
    assert first["path"].startswith("files/p10/p10000032/s") and (root / first["path"]).is_file()
    # first admission's race (WHITE), not the later one (BLACK/AFRICAN AMERICAN)
    assert first["group_race"] == "White" and first["group_sex"] == "F" and first["attr_age"] == 52
    assert first["group_marital"] == "Widowed"
    p764 = table[table["patient_id"] == "10000764"].iloc[0]
    assert p764["group_race"] == UNKNOWN and p764["group_language"] == UNKNOWN and p764["group_marital"] == UNKNOWN
    assert p764["group_age"] == "≥60"
    p898 = table[table["patient_id"] == "10000898"].iloc[0]
    assert p898["group_race"] == "Other" and p898["group_age"] == "≥60"  # age 60 is ≥60 (§7.5, recorded edges)
    # a study without a CheXpert-labeller row: labels unknown, not negative (§7.8's opposite failure)
    assert np.isnan(t.loc["nolabels-dicom", "label_no_finding"]) and t.loc["nolabels-dicom", "split_official"] == "train"
    labelled = table[table["sample_id"] != "nolabels-dicom"]
    assert labelled["label_no_finding"].notna().all()


def test_mimic_missing_mimic_iv_names_paths(tmp_path):
    root = write_mimic(tmp_path, n_patients=1, images=False)
    (root / "hosp" / "admissions.csv.gz").unlink()
    with pytest.raises(InputError, match=r"admissions\.csv\.gz"):
        get_dataset("mimic_cxr").load(root)


# ------------------------------------------------------------------------------------------------------------- NIH

@pytest.mark.parametrize("header", ["v2020", "nih_site"])
def test_nih_fixture_both_headers(tmp_path, header):
    root = write_nih(tmp_path, header=header)
    table = validate_sample_table(get_dataset("nih_chestxray14").load(root))
    assert not any(c.startswith("Unnamed") for c in table.columns)
    t = by_id(table)
    assert t.loc["00000001_001.png", "label_emphysema"] == 1.0 and t.loc["00000001_001.png", "label_cardiomegaly"] == 1.0
    assert t.loc["00000001_001.png", "label_no_finding"] == 0.0
    assert t.loc["00000006_000.png", "label_pleural_thickening"] == 1.0
    assert t.loc["00000005_000.png", "label_no_finding"] == 1.0
    assert np.isnan(t.loc["00000004_000.png", "attr_age"]) and np.isnan(t.loc["00000005_000.png", "attr_age"])
    assert t.loc["00000003_000.png", "group_sex"] == "F" and t.loc["00000003_000.png", "group_age"] == "≥60"
    assert t.loc["00000001_000.png", "patient_id"] == "00000001"
    # images found by name in the Kaggle layout
    assert t.loc["00000001_001.png", "path"] == "images_002/images/00000001_001.png"
    assert set(table["split_official"]) == {"train", "test"}
    assert t.loc["00000004_000.png", "split_official"] == "test"


def test_nih_real_table(tmp_path):
    table = validate_sample_table(get_dataset("nih_chestxray14").load(real_nih(tmp_path)))
    assert len(table) == 112_120 and table["patient_id"].nunique() == 30_805
    assert table["group_sex"].value_counts().to_dict() == {"M": 63_340, "F": 48_780}
    # DATASETS.md §2.13 counts, from an independent parse: finding counts split on '|'
    assert int(table["label_no_finding"].sum()) == 60_361
    assert int(table["label_infiltration"].sum()) == 19_894
    assert int(table["label_hernia"].sum()) == 227
    assert int(table["attr_age"].isna().sum()) == 14
    assert int((table["group_age"] == "≥60").sum()) == 26_438
    assert table["view"].value_counts().to_dict() == {"PA": 67_310, "AP": 44_810}


# -------------------------------------------------------------------------------------------------------- PadChest

def test_padchest_fixture(tmp_path):
    root = write_padchest(tmp_path)
    table = validate_sample_table(get_dataset("padchest").load(root))
    assert len(table) == len(pd.read_csv(root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"))
    t = by_id(table)
    first = f"{BIG_PATIENT}_04-014-084.png"
    assert t.loc[first, "patient_id"] == BIG_PATIENT  # 45 digits kept exactly, as text
    assert t.loc[first, "path"] == f"0/{first}" and (root / t.loc[first, "path"]).is_file()
    assert t.loc[first, "label_pleural_effusion"] == 1.0 and t.loc[first, "label_normal"] == 0.0
    assert t.loc[first, "attr_age"] == 2015 - 1939 and t.loc[first, "group_age"] == "≥60"
    normal = "135803415504923515076821959678074435083_fzis7b.png"
    assert t.loc[normal, "label_normal"] == 1.0 and t.loc[normal, "view"] == "AP_horizontal"
    empty = "113855343774216031107737439268243531979_3k951l.png"
    assert np.isnan(t.loc[empty, "label_normal"])  # empty list: unknown, not normal
    assert t.loc[empty, "group_sex"] == UNKNOWN and t.loc[empty, "group_age"] == UNKNOWN  # "O", no birth year
    assert t.loc["222_aaa.png", "label_nodule"] == 0.0  # 'pseudonodule' is not 'nodule': no substring matching


def test_padchest_real_table(tmp_path):
    table = validate_sample_table(get_dataset("padchest").load(real_padchest(tmp_path)))
    assert len(table) == 160_861 and table["patient_id"].nunique() == 67_625  # §2.14 (records, not lines)
    assert table["group_sex"].value_counts().to_dict() == {"M": 80_920, "F": 79_919, UNKNOWN: 22}
    # Unknown labels: 103 empty cells (§2.14) plus 777 rows whose list holds only an empty term, "['']".
    raw = pd.read_csv(tmp_path / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", dtype=str, usecols=["Labels"])
    assert int(raw["Labels"].isna().sum()) == 103 and int((raw["Labels"] == "['']").sum()) == 777
    assert int(table["label_normal"].isna().sum()) == 103 + 777
    assert int((table["group_age"] == "≥60").sum()) == 87_872
    assert table["path"].str.match(r"^\d+/").all()


# ------------------------------------------------------------------------------------------------------------ RSNA

@pytest.mark.parametrize("header_table", [False, True])
def test_rsna_fixture_headers_from_dicom_or_table(tmp_path, header_table):
    root = write_rsna(tmp_path, header_table=header_table)
    table = validate_sample_table(get_dataset("rsna_pneumonia").load(root))
    labels = pd.read_csv(root / "stage_2_train_labels.csv")
    assert len(table) == labels["patientId"].nunique()
    t = by_id(table)
    a, b, c = "0004cfab-14fd-4e49-80ba-63a80b6bddd6", "00436515-870c-4b36-a041-de91049b9ab4", "00704310-78a8-4b38-8475-49f4573b2dbb"
    assert t.loc[a, "label_lung_opacity"] == 0.0 and t.loc[b, "label_lung_opacity"] == 1.0 and t.loc[b, "n_boxes"] == 2
    assert t.loc[b, "attr_age"] == 48.0 and t.loc[b, "group_sex"] == "F"  # "048Y" parsed
    assert np.isnan(t.loc[c, "attr_age"])  # 155 → missing
    assert t.loc[a, "view"] == "PA" and t.loc[a, "path"] == f"stage_2_train_images/{a}.dcm"


def test_rsna_real_tables(tmp_path):
    table = validate_sample_table(get_dataset("rsna_pneumonia").load(real_rsna(tmp_path)))
    assert len(table) == 26_684 and int(table["label_lung_opacity"].sum()) == 6_012  # §2.17
    assert table["group_sex"].value_counts().to_dict() == {"M": 15_166, "F": 11_518}
    # 6,548 images are ≥ 60 in the raw headers (§2.17), 5 of them impossible (148–155) and therefore missing here.
    assert int(table["attr_age"].isna().sum()) == 5 and int((table["group_age"] == "≥60").sum()) == 6_548 - 5
    assert int(table["n_boxes"].sum()) == 9_555


# ------------------------------------------------------------------------------------------------ FairFedMed-Chest

def test_fairfedmed_chest_fixture(tmp_path):
    root = write_fairfedmed_chest(tmp_path)
    table = validate_sample_table(get_dataset("fairfedmed_chest").load(root))
    assert len(table) == 80 and set(table["site"]) == {"chexpert", "mimic"}
    raw = pd.read_csv(root / "meta_mimic_race_train.csv")
    mimic = by_id(table[table["site"] == "mimic"])
    for _, row in raw.iterrows():
        got = mimic.loc[f"mimic:{row['filename']}"]
        assert got["group_race"] == ["White", "Asian", "Black"][row["race_label"]]
        assert got["group_sex"] == ["M", "F"][row["gender_label"]]
        assert got["group_age"] == ["<60", "≥60"][row["age_label"]]
        assert got["label_pleural_effusion"] == row["disease_label"] and got["split_official"] == "train"
        assert (root / got["path"]).is_file()
    # patients are site-prefixed so the two releases never merge
    assert table["patient_id"].str.match(r"^(chexpert|mimic):").all()


def test_chexpert_options_frontal_only_and_demo_path(tmp_path):
    root = write_chexpert(tmp_path / "raw", n_patients=3, demo="csv", images=False)
    moved = tmp_path / "elsewhere.csv"
    (root / "CHEXPERT DEMO.csv").rename(moved)
    table = get_dataset("chexpert", frontal_only="true", demo=str(moved)).load(root)
    assert set(table["view"]) == {"Frontal"} and P2L not in set(table["sample_id"])
    assert by_id(table).loc[P1, "group_race"] == "White"
    assert moved in get_dataset("chexpert", demo=str(moved)).source_files(root)
    with pytest.raises(InputError, match="demographics file not found"):
        get_dataset("chexpert", demo=str(tmp_path / "nope.xlsx")).load(root)


def test_mimic_iv_v3_languages_and_unknown_race_spelling(tmp_path):
    root = write_mimic(tmp_path, n_patients=0, images=False)
    admissions = pd.read_csv(root / "hosp" / "admissions.csv.gz")
    admissions["language"] = ["English", "English", "Spanish", "Chinese"]
    admissions.to_csv(root / "hosp" / "admissions.csv.gz", index=False)
    table = get_dataset("mimic_cxr").load(root)
    languages = table.groupby("patient_id")["group_language"].first().to_dict()
    assert languages == {"10000032": "English", "10000764": "Spanish", "10000898": "Other"}
    admissions.loc[0, "race"] = "MARTIAN"
    admissions.to_csv(root / "hosp" / "admissions.csv.gz", index=False)
    with pytest.raises(InputError, match=r"admissions\.csv\.gz: attribute 'race', row \d+: value 'MARTIAN'"):
        get_dataset("mimic_cxr").load(root)
