"""Harmonised sensitive attributes: explicit value maps raw → finer groups → binary view (DATASETS.md §0, §7).

Every loader keeps the raw value in ``attr_<name>`` and the harmonised finer group in ``group_<name>``. The binary
view used by some references (FairMedFM) is a *projection* of the finer group (:func:`binary_view`), never the
only thing stored. A raw value is mapped only through an explicit table: a value that is neither in the table nor
an unknown spelling is an :class:`~fairfm.errors.InputError` naming the source, the attribute, the row and the
value — never guessed from its position or from a substring.

Typical use in a source module::

    frame["attr_sex"] = raw["Sex"]
    frame["group_sex"] = harmonise(raw["Sex"], SEX, attribute="sex", source=str(csv_path))
    frame["attr_age"] = clean_age(raw["Age"], source=str(csv_path), zero_is_missing=True)
    frame["group_age"] = age_groups(frame["attr_age"])          # "<60" / "≥60" by default

or in one call: ``add_attribute(frame, "sex", raw["Sex"], SEX, source=...)``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from fairfm.errors import InputError
from fairfm.groups import UNKNOWN, UNKNOWN_SPELLINGS, bin_continuous

__all__ = [
    "UNKNOWN",
    "DEFAULT_AGE_EDGES",
    "SEX",
    "RACE",
    "RACE_CHEXPERT",
    "RACE_MIMIC",
    "ETHNICITY",
    "ETHNICITY_CHEXPERT",
    "LANGUAGE",
    "LANGUAGE_MIMIC",
    "MARITAL",
    "MARITAL_MIMIC",
    "FITZPATRICK",
    "HARVARD_GENDER_CODES",
    "HARVARD_RACE_CODES",
    "HARVARD_ETHNICITY_CODES",
    "HARVARD_LANGUAGE_CODES",
    "HARVARD_MARITAL_CODES",
    "GROUPS",
    "BINARY_VIEWS",
    "normalise_key",
    "harmonise",
    "clean_age",
    "age_groups",
    "fitzpatrick_coarse",
    "binary_view",
    "add_attribute",
]

#: Default age edges: ``<60`` and ``≥60`` (FairMedFM's dataset classes use ≥ 60 → "old"; recorded in dataset.json).
DEFAULT_AGE_EDGES: tuple[float, ...] = (60.0,)

# ----------------------------------------------------------------------------------------------------------------
# Harmonised finer groups (the values a ``group_<name>`` column may take, besides UNKNOWN).
GROUPS: dict[str, tuple[str, ...]] = {
    "sex": ("F", "M"),
    "race": ("White", "Black", "Asian", "Other"),
    "ethnicity": ("Non-Hispanic", "Hispanic"),
    "language": ("English", "Spanish", "Other"),
    "marital": ("Married/Partnered", "Single", "Divorced", "Widowed", "Separated"),
    "fitzpatrick": ("I", "II", "III", "IV", "V", "VI"),
    "fitzpatrick_coarse": ("I–III", "IV–VI"),
}

# ----------------------------------------------------------------------------------------------------------------
# Standard value maps. Keys are matched after :func:`normalise_key` (stripped, case-folded; integral numbers as
# integers), so "Male", " male" and "MALE" are one key. A key mapped to UNKNOWN is a *known* way of saying unknown.

SEX: dict[Any, str] = {
    "m": "M",
    "male": "M",
    "f": "F",
    "female": "F",
    # PadChest "O" (other) and HAM10000 "unknown": not a sex group, so unknown (§0: never folded into a group).
    "o": UNKNOWN,
    "other": UNKNOWN,
    "u": UNKNOWN,
}

#: Generic race spellings (Harvard lab CSVs, FairFedMed, Glocker sample CSVs).
RACE: dict[Any, str] = {
    "white": "White",
    "caucasian": "White",
    "black": "Black",
    "african american": "Black",
    "black or african american": "Black",
    "asian": "Asian",
    "other": "Other",
    "others": "Other",
}

#: CheXpert ``CHEXPERT DEMO.xlsx`` ``PRIMARY_RACE`` values (§2.1). Ethnicity suffixes belong to ``ETHNICITY``.
#: Generic "Other" is a stated race outside White/Black/Asian, so it is the finer group "Other"; the binary view
#: projects "Other" to unknown so it never lands in "non-White" (§7.9).
RACE_CHEXPERT: dict[Any, str] = {
    "white": "White",
    "white, non-hispanic": "White",
    "white, hispanic": "White",
    "white or caucasian": "White",
    "asian": "Asian",
    "asian, non-hispanic": "Asian",
    "asian, hispanic": "Asian",
    "asian - historical conv": "Asian",
    "black or african american": "Black",
    "black, non-hispanic": "Black",
    "black, hispanic": "Black",
    "native hawaiian or other pacific islander": "Other",
    "native hawaiian or other pacific islander, non-hispanic": "Other",
    "native hawaiian or other pacific islander, hispanic": "Other",
    "pacific islander, non-hispanic": "Other",
    "pacific islander, hispanic": "Other",
    "american indian or alaska native": "Other",
    "native american, non-hispanic": "Other",
    "native american, hispanic": "Other",
    "other": "Other",
    "other, hispanic": "Other",
    "other, non-hispanic": "Other",
    "race and ethnicity unknown": UNKNOWN,
    "patient refused": UNKNOWN,
    "unknown": UNKNOWN,
}

#: MIMIC-IV ``admissions.race`` values (MIMIC-IV 2.x lists these 33 spellings).
RACE_MIMIC: dict[Any, str] = {
    "white": "White",
    "white - other european": "White",
    "white - russian": "White",
    "white - eastern european": "White",
    "white - brazilian": "White",
    "portuguese": "White",
    "black/african american": "Black",
    "black/cape verdean": "Black",
    "black/caribbean island": "Black",
    "black/african": "Black",
    "asian": "Asian",
    "asian - chinese": "Asian",
    "asian - south east asian": "Asian",
    "asian - asian indian": "Asian",
    "asian - korean": "Asian",
    "hispanic or latino": "Other",
    "hispanic/latino - puerto rican": "Other",
    "hispanic/latino - dominican": "Other",
    "hispanic/latino - guatemalan": "Other",
    "hispanic/latino - salvadoran": "Other",
    "hispanic/latino - mexican": "Other",
    "hispanic/latino - columbian": "Other",
    "hispanic/latino - honduran": "Other",
    "hispanic/latino - cuban": "Other",
    "hispanic/latino - central american": "Other",
    "south american": "Other",
    "american indian/alaska native": "Other",
    "native hawaiian or other pacific islander": "Other",
    "multiple race/ethnicity": "Other",
    "other": "Other",
    "unknown": UNKNOWN,
    "unable to obtain": UNKNOWN,
    "patient declined to answer": UNKNOWN,
}

ETHNICITY: dict[Any, str] = {
    "non-hispanic": "Non-Hispanic",
    "not hispanic": "Non-Hispanic",
    "non-hispanic/non-latino": "Non-Hispanic",
    "hispanic": "Hispanic",
    "hispanic/latino": "Hispanic",
}

#: CheXpert ``ETHNICITY`` column (§2.1; "Non-Hispanic/Non-Latino" and "Not Hispanic" are both used).
ETHNICITY_CHEXPERT: dict[Any, str] = {
    **ETHNICITY,
    "patient refused": UNKNOWN,
}

LANGUAGE: dict[Any, str] = {
    "english": "English",
    "spanish": "Spanish",
    "other": "Other",
    "others": "Other",
}

#: MIMIC-IV ``admissions.language``: "ENGLISH" or "?" (unknown) in 2.x; 3.x spells out the language.
LANGUAGE_MIMIC: dict[Any, str] = {
    **LANGUAGE,
    **{language: "Other" for language in (
        "american sign language", "amharic", "arabic", "armenian", "bengali", "cape verdean", "chinese", "french",
        "haitian", "hindi", "italian", "japanese", "kabuverdianu", "khmer", "korean", "modern greek (1453-)",
        "persian", "polish", "portuguese", "russian", "somali", "thai", "vietnamese",
    )},
}

MARITAL: dict[Any, str] = {
    "married": "Married/Partnered",
    "married or partnered": "Married/Partnered",
    "partnered": "Married/Partnered",
    "single": "Single",
    "divorced": "Divorced",
    "widowed": "Widowed",
    "legally separated": "Separated",
    "separated": "Separated",
}

#: MIMIC-IV ``admissions.marital_status`` (MARRIED, SINGLE, DIVORCED, WIDOWED; blank = unknown).
MARITAL_MIMIC: dict[Any, str] = {**MARITAL}

#: Fitzpatrick skin type I–VI from the 1–6 scale (Fitzpatrick17k ``fitzpatrick_scale``, −1 = unknown) or roman.
FITZPATRICK: dict[Any, str] = {
    1: "I", 2: "II", 3: "III", 4: "IV", 5: "V", 6: "VI",
    "i": "I", "ii": "II", "iii": "III", "iv": "IV", "v": "V", "vi": "VI",
}

# Harvard Ophthalmology AI Lab npz integer codes (§0, §4.1). −1 = unknown everywhere.
HARVARD_GENDER_CODES: dict[Any, str] = {0: "F", 1: "M"}
HARVARD_RACE_CODES: dict[Any, str] = {0: "Asian", 1: "Black", 2: "White"}
HARVARD_ETHNICITY_CODES: dict[Any, str] = {0: "Non-Hispanic", 1: "Hispanic"}
HARVARD_LANGUAGE_CODES: dict[Any, str] = {0: "English", 1: "Spanish", 2: "Other"}
HARVARD_MARITAL_CODES: dict[Any, str] = {
    0: "Married/Partnered", 1: "Single", 2: "Divorced", 3: "Widowed", 4: "Separated",
}

# ----------------------------------------------------------------------------------------------------------------
# Binary views: finer group → binary group (FairMedFM convention, §0). Finer groups absent from a view → UNKNOWN.
BINARY_VIEWS: dict[str, dict[str, str]] = {
    "sex": {"F": "F", "M": "M"},
    # "Other" mixes unlisted and unreported races: excluded from the White/non-White contrast (§0, §7.9).
    "race": {"White": "White", "Black": "non-White", "Asian": "non-White"},
    "ethnicity": {"Non-Hispanic": "Non-Hispanic", "Hispanic": "Hispanic"},
    "language": {"English": "English", "Spanish": "non-English", "Other": "non-English"},
    "marital": {
        "Married/Partnered": "Married/Partnered",
        "Single": "not married",
        "Divorced": "not married",
        "Widowed": "not married",
        "Separated": "not married",
    },
    "fitzpatrick": {"I": "I–III", "II": "I–III", "III": "I–III", "IV": "IV–VI", "V": "IV–VI", "VI": "IV–VI"},
}


def normalise_key(value: Any) -> Any:
    """The lookup key of a raw value: stripped, case-folded text; integral numbers as ``int``; NaN as None."""
    if value is None or value is pd.NA:
        return None
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        return int(value) if float(value).is_integer() else float(value)
    text = str(value).strip().casefold()
    # Numeric text ("1", "1.0") is the same key as the number, so CSV and npz codes agree.
    try:
        number = float(text)
    except ValueError:
        return text
    if math.isfinite(number) and number.is_integer():
        return int(number)
    return text


def _show(value: Any) -> str:
    """A raw value as a message shows it: numpy scalars as plain Python values."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def _is_unknown_key(key: Any, extra: frozenset) -> bool:
    if key is None:
        return True
    if key in extra:
        return True
    return str(key) in UNKNOWN_SPELLINGS


def harmonise(
    raw: pd.Series,
    mapping: Mapping[Any, str],
    *,
    attribute: str,
    source: str,
    unknown: Iterable[Any] = (),
) -> pd.Series:
    """Map raw attribute values to harmonised finer groups through ``mapping``.

    ``mapping`` keys are compared after :func:`normalise_key`. NaN, the spellings in
    :data:`fairfm.groups.UNKNOWN_SPELLINGS` (``unknown``, ``-1``, ``""``, …) and the extra ``unknown`` values map
    to :data:`UNKNOWN`. Any other unmapped value raises :class:`InputError` naming ``source``, ``attribute``, the
    first row (position) at fault and the value, plus how many rows share the problem.

    Returns an ``object`` Series of strings with ``raw``'s index.
    """
    table = {normalise_key(k): v for k, v in mapping.items()}
    extra = frozenset(normalise_key(v) for v in unknown)
    # Resolve each distinct raw value once: tables of 10^5 rows hold a handful of distinct values.
    codes, uniques = pd.factorize(raw, use_na_sentinel=True)
    resolved: list[str | None] = []
    for value in list(uniques):
        key = normalise_key(value)
        if key in table:
            resolved.append(table[key])
        elif _is_unknown_key(key, extra):
            resolved.append(UNKNOWN)
        else:
            resolved.append(None)
    bad_codes = [i for i, v in enumerate(resolved) if v is None]
    if bad_codes:
        rows = np.flatnonzero(np.isin(codes, bad_codes))
        first = int(rows[0])
        known = ", ".join(sorted({repr(k) for k in mapping}))
        raise InputError(
            f"{source}: attribute '{attribute}', row {first}: value {_show(raw.iloc[first])} has no harmonised group "
            f"({len(rows)} row(s) with {len(bad_codes)} unmapped value(s)); known values: {known}"
        )
    lookup = np.asarray(resolved + [UNKNOWN], dtype=object)  # code −1 (NaN) → the last entry, UNKNOWN
    return pd.Series(lookup[codes], index=raw.index, name=raw.name, dtype=object)


def clean_age(
    raw: pd.Series,
    *,
    source: str,
    attribute: str = "age",
    zero_is_missing: bool = False,
    max_age: float | None = 120.0,
    strip_suffix: str | None = None,
) -> pd.Series:
    """Numeric age in years (float, NaN = missing) for ``attr_age``.

    ``zero_is_missing`` treats age 0 as a placeholder (CheXpert, NIH: §2.13, §7.11); ages above ``max_age`` are
    implausible and become missing (NIH 2017 table, RSNA headers); ``strip_suffix`` removes a unit such as ``"Y"``
    from DICOM-style strings (``"039Y"``). Negative numbers other than the −1 unknown code, and text that is not a
    number, raise :class:`InputError` naming the row.
    """
    values = raw
    if strip_suffix is not None:
        text = raw.astype("string").str.strip()
        values = text.str.removesuffix(strip_suffix).str.removesuffix(strip_suffix.lower())
    keys = pd.Series([normalise_key(v) for v in values.tolist()], index=raw.index, dtype=object)
    unknown = np.array([_is_unknown_key(k, frozenset()) for k in keys.tolist()], dtype=bool)
    numeric = pd.to_numeric(keys.where(~unknown), errors="coerce").astype(float)
    bad = numeric.isna().to_numpy() & ~unknown
    negative = (numeric < 0).fillna(False).to_numpy()
    problems = bad | negative
    if problems.any():
        row = int(np.flatnonzero(problems)[0])
        raise InputError(f"{source}: attribute '{attribute}', row {row}: age {_show(raw.iloc[row])} is not a valid age")
    if zero_is_missing:
        numeric = numeric.mask(numeric == 0)
    if max_age is not None:
        numeric = numeric.mask(numeric > max_age)
    return numeric.rename(raw.name)


def age_groups(age: pd.Series, edges: Sequence[float] = DEFAULT_AGE_EDGES) -> pd.Series:
    """``group_age`` from numeric ages (:func:`clean_age`) with :func:`fairfm.groups.bin_continuous`: bins closed on
    the left (``[60]`` → ``<60`` / ``≥60``), the same labels as ``fairfm evaluate --bins``; NaN → unknown."""
    numeric = pd.to_numeric(age, errors="coerce").astype(float)
    return bin_continuous(numeric, list(edges), column="age").astype(object)


def fitzpatrick_coarse(groups: pd.Series) -> pd.Series:
    """Fitzpatrick I–VI → ``I–III`` / ``IV–VI`` (MEDFAIR ``skin_binary``); unknown stays unknown."""
    return binary_view(groups, "fitzpatrick")


def binary_view(groups: pd.Series, attribute: str, *, age_threshold: float | None = None) -> pd.Series:
    """Project a harmonised ``group_<attribute>`` column onto its binary view (§0).

    For ``age`` pass the numeric ``attr_age`` and ``age_threshold`` (default 60, ``≥`` threshold is "old"). Finer
    groups outside the view (e.g. race "Other") become :data:`UNKNOWN` rather than joining either side.
    """
    if attribute == "age":
        threshold = 60.0 if age_threshold is None else float(age_threshold)
        return age_groups(groups, [threshold])
    if attribute not in BINARY_VIEWS:
        raise InputError(f"no binary view for attribute {attribute!r}; known: {', '.join(sorted(BINARY_VIEWS))}")
    view = BINARY_VIEWS[attribute]
    values = [view.get(str(v), UNKNOWN) if isinstance(v, str) else UNKNOWN for v in groups.tolist()]
    return pd.Series(values, index=groups.index, name=groups.name, dtype=object)


def add_attribute(
    frame: pd.DataFrame,
    name: str,
    raw: pd.Series,
    mapping: Mapping[Any, str],
    *,
    source: str,
    unknown: Iterable[Any] = (),
) -> pd.DataFrame:
    """Set ``attr_<name>`` (raw, as released) and ``group_<name>`` (harmonised) on ``frame``; returns it."""
    raw = pd.Series(raw.to_numpy(), index=frame.index, name=raw.name)
    frame[f"attr_{name}"] = raw
    frame[f"group_{name}"] = harmonise(raw, mapping, attribute=name, source=source, unknown=unknown)
    return frame
