"""Attribute harmonisation: explicit maps, unknowns, errors naming the value, age bins, binary projections."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fairfm.data import attributes as A
from fairfm.errors import InputError
from fairfm.groups import UNKNOWN


def test_sex_map_never_folds_unknown_into_female():
    raw = pd.Series(["Male", "female", " M", "F", "Unknown", None, "O", -1, "unknown"])
    assert A.harmonise(raw, A.SEX, attribute="sex", source="t").tolist() == [
        "M", "F", "M", "F", UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN]


def test_unmapped_value_is_an_error_naming_source_row_and_value():
    raw = pd.Series(["M", "F", "X", "X"])
    with pytest.raises(InputError, match=r"f\.csv: attribute 'sex', row 2: value 'X'.*2 row\(s\)"):
        A.harmonise(raw, A.SEX, attribute="sex", source="f.csv")


def test_extra_unknown_values_and_index_kept():
    raw = pd.Series(["WHITE", "UNABLE TO OBTAIN", "declined"], index=[10, 11, 12])
    out = A.harmonise(raw, A.RACE_MIMIC, attribute="race", source="t", unknown=["declined"])
    assert out.to_dict() == {10: "White", 11: UNKNOWN, 12: UNKNOWN}


def test_numeric_codes_match_in_any_spelling():
    raw = pd.Series([0, 1.0, "2", -1, np.nan])
    assert A.harmonise(raw, A.HARVARD_RACE_CODES, attribute="race", source="t").tolist() == [
        "Asian", "Black", "White", UNKNOWN, UNKNOWN]
    assert A.harmonise(pd.Series([0, 1]), A.HARVARD_GENDER_CODES, attribute="sex", source="t").tolist() == ["F", "M"]


@pytest.mark.parametrize("raw, expected", [
    ("White, Hispanic", "White"), ("Other", "Other"), ("Race and Ethnicity Unknown", UNKNOWN),
    ("Patient Refused", UNKNOWN), ("Black or African American", "Black"), ("Asian, non-Hispanic", "Asian"),
    ("Native Hawaiian or Other Pacific Islander", "Other"),
])
def test_chexpert_race_map(raw, expected):
    assert A.harmonise(pd.Series([raw]), A.RACE_CHEXPERT, attribute="race", source="t").iloc[0] == expected


def test_every_standard_map_targets_declared_groups():
    declared = {
        "sex": A.SEX, "race": A.RACE_CHEXPERT, "ethnicity": A.ETHNICITY_CHEXPERT, "language": A.LANGUAGE,
        "marital": A.MARITAL, "fitzpatrick": A.FITZPATRICK,
    }
    for attribute, mapping in declared.items():
        assert set(mapping.values()) <= set(A.GROUPS[attribute]) | {UNKNOWN}, attribute
    assert set(A.RACE_MIMIC.values()) <= set(A.GROUPS["race"]) | {UNKNOWN}
    assert len(A.RACE_MIMIC) == 33  # every MIMIC-IV race spelling


def test_clean_age_units_placeholders_and_errors():
    raw = pd.Series(["039Y", "0", "150", None, "60", "-1"])
    age = A.clean_age(raw, source="t", strip_suffix="Y", zero_is_missing=True)
    np.testing.assert_array_equal(age.to_numpy(), [39.0, np.nan, np.nan, np.nan, 60.0, np.nan])
    with pytest.raises(InputError, match=r"row 1: age 'old'"):
        A.clean_age(pd.Series(["12", "old"]), source="t")
    with pytest.raises(InputError, match=r"row 0: age -5"):
        A.clean_age(pd.Series([-5]), source="t")


def test_age_groups_default_and_custom_edges():
    age = pd.Series([59.9, 60.0, np.nan, 0.5, 85])
    assert A.age_groups(age).tolist() == ["<60", "≥60", UNKNOWN, "<60", "≥60"]
    assert A.age_groups(age, [40, 60, 80]).tolist() == ["40–<60", "60–<80", UNKNOWN, "<40", "≥80"]
    with pytest.raises(InputError, match="strictly increasing"):
        A.age_groups(age, [60, 40])


def test_binary_views_are_projections():
    race = pd.Series(["White", "Black", "Asian", "Other", UNKNOWN])
    assert A.binary_view(race, "race").tolist() == ["White", "non-White", "non-White", UNKNOWN, UNKNOWN]
    lang = pd.Series(["English", "Spanish", "Other"])
    assert A.binary_view(lang, "language").tolist() == ["English", "non-English", "non-English"]
    fitz = A.harmonise(pd.Series([1, 3, 4, 6, -1]), A.FITZPATRICK, attribute="fitzpatrick", source="t")
    assert A.fitzpatrick_coarse(fitz).tolist() == ["I–III", "I–III", "IV–VI", "IV–VI", UNKNOWN]
    assert A.binary_view(pd.Series([60, 59, np.nan]), "age").tolist() == ["≥60", "<60", UNKNOWN]
    assert A.binary_view(pd.Series([60, 61]), "age", age_threshold=61).tolist() == ["<61", "≥61"]
    with pytest.raises(InputError, match="no binary view"):
        A.binary_view(race, "shoe_size")


def test_add_attribute_sets_raw_and_group():
    frame = pd.DataFrame({"x": [1, 2]}, index=[5, 6])
    A.add_attribute(frame, "sex", pd.Series(["male", "female"]), A.SEX, source="t")
    assert frame["attr_sex"].tolist() == ["male", "female"] and frame["group_sex"].tolist() == ["M", "F"]


def test_harmonise_is_fast_on_large_columns():
    raw = pd.Series(np.random.default_rng(0).choice(["Male", "Female", "Unknown"], size=300_000))
    out = A.harmonise(raw, A.SEX, attribute="sex", source="t")
    assert (out[raw == "Male"] == "M").all() and (out[raw == "Unknown"] == UNKNOWN).all()
