"""Split policies: SampleTable → SampleTable with a ``split`` column (train/val/test) and a recorded recipe.

Every policy is seeded (``numpy.random.default_rng(seed)``), works at the *patient* level unless it says
otherwise, and is deterministic regardless of the input row order (rows are put in ``sample_id`` order first). Policies
that define extra evaluation subsets (balanced or resampled test sets) add ``subset_<name>`` columns holding how
many times each sample belongs to the subset (0 = not in it; >1 only for resampling with replacement), so the
SampleTable keeps one row per sample.

Policies (DATASETS.md §5):

- ``patient`` (default): stratified by label × group, train/val/test fractions (0.7/0.1/0.2).
- ``official``: the release's ``split_official`` column, or a user split file (e.g. Gichoya/Glocker
  ``chexpert_split_2021_08_20.csv`` with ``index, split``); a validation split is carved by patient if missing.
- ``fairmedfm``: FairMedFM's sex-balanced test set and per-attribute balanced test subsets (§5.1), but by patient,
  seeded, and with a validation split.
- ``glocker_resample``: a base split plus the three-round race/disease/age test resampling (§5.3).
- ``khan_balanced``: training set undersampled to equal race × sex cells, plus per-finding test subsets with equal
  prevalence across race groups (§5.4).
- ``sites``: a patient-level split within each ``site`` (federated use).
- ``fairmedfm_image``: **compatibility only, leaks patients.** FairMedFM's sex-balanced ``split_82`` as it was run —
  by *image*, train/test only (DATASETS.md §5.1, §7.7) — seeded, for comparing with FairMedFM's published numbers.
  Registered with ``patient_level=False``; its recipe records ``leaks_patients`` and the number of leaking patients,
  and ``fairfm datasets describe`` warns about it. Never the default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from fairfm.data.attributes import UNKNOWN, age_groups
from fairfm.data.sampletable import SPLITS, group_columns, label_columns
from fairfm.errors import InputError

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.1, 0.2)
#: Official split spellings → fairfm split names.
OFFICIAL_SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validate": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
#: Glocker's eight age bins: ≤20, 21–30, …, 71–80, >80 (integer ages; edges closed on the left at 21, 31, …).
GLOCKER_AGE_EDGES = (21, 31, 41, 51, 61, 71, 81)


@dataclass
class SplitResult:
    """The split SampleTable and the recipe that reproduces it (written into ``dataset.json``)."""

    frame: pd.DataFrame
    recipe: dict[str, Any] = field(default_factory=dict)


SplitPolicy = Callable[..., SplitResult]
_POLICIES: dict[str, SplitPolicy] = {}
_IMAGE_LEVEL: set[str] = set()


def register_split(name: str, *, patient_level: bool = True) -> Callable[[SplitPolicy], SplitPolicy]:
    """Register a split policy. ``patient_level=False`` marks a policy that may put one patient's samples in two
    splits (compatibility modes only); everything else promises — and is tested for — no patient leakage."""
    def decorate(fn: SplitPolicy) -> SplitPolicy:
        if name in _POLICIES and _POLICIES[name] is not fn:
            raise ValueError(f"split policy {name!r} registered twice")
        _POLICIES[name] = fn
        if not patient_level:
            _IMAGE_LEVEL.add(name)
        return fn

    return decorate


def list_split_policies() -> list[str]:
    return sorted(_POLICIES)


def is_patient_level(name: str) -> bool:
    """Whether policy ``name`` promises that no patient has samples in two splits."""
    get_split_policy(name)
    return name not in _IMAGE_LEVEL


def get_split_policy(name: str) -> SplitPolicy:
    if name not in _POLICIES:
        raise InputError(f"unknown split policy {name!r}; known policies: {', '.join(list_split_policies())}")
    return _POLICIES[name]


def make_split(frame: pd.DataFrame, policy: str = "patient", *, seed: int = 0, **params: Any) -> SplitResult:
    """Apply the named policy. The recipe always records ``policy`` and ``seed``."""
    if "patient_id" not in frame.columns:
        raise InputError("SampleTable: missing column 'patient_id', needed for patient-level splits")
    patients = frame["patient_id"]
    if patients.isna().any():
        row = int(np.flatnonzero(patients.isna().to_numpy())[0])
        raise InputError(f"SampleTable: column 'patient_id', row {row}: empty patient id")
    # Canonical row order (by sample_id) so that the result never depends on how the input rows were ordered.
    order = np.argsort(frame["sample_id"].astype(str).to_numpy(), kind="stable")
    canonical = frame.iloc[order].reset_index(drop=True)
    result = _call_policy(get_split_policy(policy), policy, canonical, int(seed), params)
    result.recipe = {"policy": policy, "seed": int(seed), **result.recipe}
    return result


# ---------------------------------------------------------------------------------------------------------------
# Building blocks


def _call_policy(fn: SplitPolicy, name: str, frame: pd.DataFrame, seed: int, params: dict[str, Any]) -> SplitResult:
    """Call a policy, turning an option it does not take into an InputError that lists the ones it does."""
    import inspect

    signature = inspect.signature(fn)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    accepted = [p for p in signature.parameters if p not in ("frame", "seed") and
                signature.parameters[p].kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = [k for k in params if k not in accepted]
    if unknown and not takes_any:
        raise InputError(f"split policy {name!r} has no option {unknown[0]!r}; options: {', '.join(accepted)}")
    return fn(frame, seed=seed, **params)


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3:
        raise InputError(f"split fractions must be three numbers train,val,test; got {list(fractions)}")
    values = tuple(float(f) for f in fractions)
    if any(f < 0 for f in values) or not np.isclose(sum(values), 1.0):
        raise InputError(f"split fractions must be non-negative and sum to 1; got {list(values)}")
    return values  # type: ignore[return-value]


def _resolve_label(frame: pd.DataFrame, label: str | None) -> str | None:
    labels = label_columns(frame)
    if label is None:
        return labels[0] if labels else None
    column = label if label.startswith("label_") else f"label_{label}"
    if column not in frame.columns:
        raise InputError(f"stratify label {label!r}: no column {column!r}; label columns: {', '.join(labels)}")
    return column


def _resolve_group(frame: pd.DataFrame, attribute: str) -> str:
    column = attribute if attribute.startswith("group_") else f"group_{attribute}"
    if column not in frame.columns:
        raise InputError(
            f"attribute {attribute!r}: no column {column!r}; group columns: {', '.join(group_columns(frame)) or 'none'}"
        )
    return column


def _patient_strata(frame: pd.DataFrame, label: str | None, groups: Sequence[str]) -> pd.Series:
    """One stratum key per patient: its label (any positive sample) × its groups (first sample's value)."""
    parts = []
    by_patient = frame.groupby("patient_id", sort=True)
    if label is not None:
        values = pd.to_numeric(frame[label], errors="coerce")
        parts.append(values.groupby(frame["patient_id"], sort=True).max().fillna(-1).astype(int).astype(str))
    for column in groups:
        parts.append(by_patient[column].first().astype(str))
    if not parts:
        index = pd.Index(sorted(frame["patient_id"].unique()), name="patient_id")
        return pd.Series("all", index=index)
    key = parts[0]
    for part in parts[1:]:
        key = key + "|" + part
    return key


_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0


def _assign_patients(
    strata: pd.Series, fractions: tuple[float, float, float], rng: np.random.Generator
) -> dict[Any, str]:
    """Assign patients to splits, proportionally within every stratum.

    Patients are listed stratum by stratum (shuffled within each) and position ``i`` gets the point
    ``frac(offset + i·φ)`` of a golden-ratio sequence, which falls in train/val/test with the split fractions. The
    sequence is low-discrepancy, so every run of consecutive positions — every stratum, even one of 1–3 patients
    spread over strata — is divided close to the fractions, and the totals match them to within one patient.
    (Rounding per stratum would send every stratum of one patient to train.)
    """
    ordered: list[Any] = []
    for _, members in strata.groupby(strata, sort=True):
        patients = np.asarray(members.index.tolist(), dtype=object)
        ordered.extend(patients[rng.permutation(len(patients))].tolist())
    points = (rng.random() + np.arange(len(ordered)) * _GOLDEN) % 1.0
    buckets = np.searchsorted(np.cumsum(fractions)[:-1], points, side="right")
    return {patient: SPLITS[bucket] for patient, bucket in zip(ordered, buckets)}


def _split_by_patient(
    frame: pd.DataFrame,
    *,
    rng: np.random.Generator,
    fractions: tuple[float, float, float],
    label: str | None,
    groups: Sequence[str],
) -> pd.Series:
    strata = _patient_strata(frame, label, groups)
    assignment = _assign_patients(strata, fractions, rng)
    return frame["patient_id"].map(assignment).astype(object)


def _carve_val(frame: pd.DataFrame, split: pd.Series, rng: np.random.Generator, val_fraction: float) -> pd.Series:
    """Move ``val_fraction`` of the training *patients* (seeded) to val, when the base split has no val."""
    split = split.copy()
    train = split == "train"
    patients = np.asarray(sorted(frame.loc[train, "patient_id"].unique()), dtype=object)
    n_val = int(np.rint(val_fraction * len(patients)))
    chosen = set(patients[rng.permutation(len(patients))[:n_val]].tolist())
    split[train & frame["patient_id"].isin(chosen)] = "val"
    return split


def _default_groups(frame: pd.DataFrame, groups: Sequence[str] | str | None) -> list[str]:
    if groups is None:
        return group_columns(frame)
    if isinstance(groups, str):
        groups = [g for g in groups.split(",") if g]
    return [_resolve_group(frame, g) for g in groups]


def leaking_patients(frame: pd.DataFrame, split: str = "split") -> list[Any]:
    """Patients whose samples fall in more than one split (empty for every patient-level policy)."""
    counts = frame.groupby("patient_id")[split].nunique()
    return counts[counts > 1].index.tolist()


# ---------------------------------------------------------------------------------------------------------------
# Policies


@register_split("patient")
def patient_split(
    frame: pd.DataFrame,
    *,
    seed: int,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    label: str | None = None,
    groups: Sequence[str] | str | None = None,
) -> SplitResult:
    """Seeded patient-level split stratified by (primary label × harmonised groups)."""
    fractions = _check_fractions(fractions)
    label_column = _resolve_label(frame, label)
    group_cols = _default_groups(frame, groups)
    rng = np.random.default_rng(seed)
    out = frame.copy()
    out["split"] = _split_by_patient(out, rng=rng, fractions=fractions, label=label_column, groups=group_cols)
    return SplitResult(
        out,
        {"unit": "patient", "fractions": list(fractions), "stratify": ([label_column] if label_column else []) + group_cols},
    )


def _read_split_file(path: Path) -> pd.DataFrame:
    from fairfm.tableio import read_table

    table = read_table(path)
    if "split" not in table.columns:
        raise InputError(f"{path}: split file needs a 'split' column; columns: {', '.join(map(str, table.columns))}")
    return table


def _normalise_official(values: pd.Series, source: str) -> pd.Series:
    keys = values.astype("string").str.strip().str.lower()
    mapped = keys.map(OFFICIAL_SPLIT_NAMES)
    bad = mapped.isna() & values.notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(
            f"{source}: row {row}: split {values.iloc[row]!r} is not one of {', '.join(sorted(OFFICIAL_SPLIT_NAMES))}"
        )
    return mapped.astype(object).where(mapped.notna(), None)


@register_split("official")
def official_split(
    frame: pd.DataFrame,
    *,
    seed: int,
    split_file: str | Path | None = None,
    val_fraction: float = 0.1,
) -> SplitResult:
    """The published split: ``split_official`` or a split file. Rows outside the split are dropped.

    A split file is matched on ``sample_id`` if it has that column, else on ``index`` (row index into the
    release's table, stored by the loader as ``source_index`` — the Gichoya/Glocker CheXpert file), else on
    ``Path``/``path``. Without a val split, ``val_fraction`` of the training patients become val (seeded).
    """
    rng = np.random.default_rng(seed)
    recipe: dict[str, Any] = {"unit": "official"}
    if split_file is not None:
        path = Path(split_file)
        table = _read_split_file(path)
        recipe["split_file"] = str(path)
        from fairfm.data.checksums import sha256_file

        recipe["split_file_sha256"] = sha256_file(path)
        if "sample_id" in table.columns:
            key_frame, key_file = frame["sample_id"].astype(str), table["sample_id"].astype(str)
        elif "index" in table.columns:
            if "source_index" not in frame.columns:
                raise InputError(f"{path}: split file is indexed by 'index' but this dataset has no 'source_index'")
            key_frame = pd.to_numeric(frame["source_index"], errors="coerce")
            key_file = pd.to_numeric(table["index"], errors="coerce")
        elif "Path" in table.columns or "path" in table.columns:
            column = "Path" if "Path" in table.columns else "path"
            key_frame, key_file = frame["path"].astype(str), table[column].astype(str)
        else:
            raise InputError(f"{path}: split file needs a 'sample_id', 'index' or 'path' column")
        if key_file.duplicated().any():
            row = int(np.flatnonzero(key_file.duplicated().to_numpy())[0])
            raise InputError(f"{path}: row {row}: key {key_file.iloc[row]!r} appears twice")
        lookup = pd.Series(_normalise_official(table["split"], str(path)).to_numpy(), index=key_file.to_numpy())
        unmatched = ~key_file.isin(key_frame.dropna())
        if unmatched.any():
            row = int(np.flatnonzero(unmatched.to_numpy())[0])
            raise InputError(f"{path}: row {row}: {key_file.iloc[row]!r} matches no sample of the dataset")
        split = key_frame.map(lookup)
    elif "split_official" in frame.columns:
        split = _normalise_official(frame["split_official"], "column 'split_official'")
        recipe["column"] = "split_official"
    else:
        raise InputError("split policy 'official': this dataset has no 'split_official' column; pass a split file")
    keep = split.notna().to_numpy()
    out = frame.loc[keep].reset_index(drop=True)
    split = pd.Series(split.to_numpy()[keep], dtype=object)
    recipe["dropped_rows"] = int((~keep).sum())
    if not (split == "val").any():
        split = _carve_val(out, split, rng, val_fraction)
        recipe["val_carved_from_train"] = float(val_fraction)
    out["split"] = split.to_numpy()
    recipe["patient_disjoint"] = not leaking_patients(out)
    return SplitResult(out, recipe)


def _base_split(frame: pd.DataFrame, seed: int, base: str, params: dict[str, Any]) -> SplitResult:
    if base == "official":
        return _call_policy(official_split, "official", frame, seed, params)
    if base == "patient":
        return _call_policy(patient_split, "patient", frame, seed, params)
    raise InputError(f"base split {base!r}: expected 'patient' or 'official'")


@register_split("fairmedfm")
def fairmedfm_split(
    frame: pd.DataFrame,
    *,
    seed: int,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    sex: str = "sex",
    attributes: Sequence[str] | str | None = None,
) -> SplitResult:
    """FairMedFM's protocol made patient-level: k = min(⌊0.2·N_F⌋, ⌊0.2·N_M⌋) *patients* per sex go to test.

    Unknown-sex patients stay in training. Then ``val_fraction`` of the remaining patients become val, and for
    every other attribute a test subset with equal counts per known group is drawn (seeded; ``subset_test_<attr>``).
    """
    rng = np.random.default_rng(seed)
    sex_column = _resolve_group(frame, sex)
    per_patient = frame.groupby("patient_id", sort=True)[sex_column].first()
    known = per_patient[per_patient != UNKNOWN]
    groups = sorted(known.unique())
    if len(groups) < 2:
        raise InputError(f"split policy 'fairmedfm': column {sex_column!r} has fewer than two known groups")
    k = min(int(np.floor(test_fraction * (known == g).sum())) for g in groups)
    test_patients: set[Any] = set()
    for g in groups:
        members = np.asarray(known[known == g].index.tolist(), dtype=object)
        test_patients.update(members[rng.permutation(len(members))[:k]].tolist())
    split = pd.Series(np.where(frame["patient_id"].isin(test_patients), "test", "train"), dtype=object)
    split = _carve_val(frame, split, rng, val_fraction / max(1e-9, 1 - test_fraction))
    out = frame.copy()
    out["split"] = split.to_numpy()
    balanced = _default_groups(frame, attributes)
    subsets = {}
    for column in balanced:
        if column == sex_column:
            continue
        name = column.removeprefix("group_")
        out[f"subset_test_{name}"] = _balanced_subset(out, column, rng)
        subsets[name] = int(out[f"subset_test_{name}"].sum())
    return SplitResult(
        out,
        {
            "unit": "patient",
            "test_patients_per_sex": k,
            "sex_column": sex_column,
            "test_fraction": test_fraction,
            "val_fraction": val_fraction,
            "balanced_test_subsets": subsets,
        },
    )


@register_split("fairmedfm_image", patient_level=False)
def fairmedfm_image_split(
    frame: pd.DataFrame,
    *,
    seed: int,
    test_fraction: float = 0.2,
    sex: str = "sex",
    attributes: Sequence[str] | str | None = None,
) -> SplitResult:
    """FairMedFM's ``split_82`` as published, for comparing with its numbers: **by image**, so patients leak.

    k = min(⌊0.2·N_F⌋, ⌊0.2·N_M⌋) *images* per sex go to test, the rest to train; no validation split (FairMedFM has
    none). FairMedFM used ``train_test_split(random_state=0)``; here the draw is ``default_rng(seed)`` (seed 0 by
    default), so the protocol — not the exact image list — is reproduced. Its other bugs are not: unknown-sex images
    stay in train (FairMedFM counted them as female) and the per-attribute balanced test subsets are seeded.
    """
    rng = np.random.default_rng(seed)
    sex_column = _resolve_group(frame, sex)
    values = frame[sex_column].astype(str).to_numpy()
    groups = sorted(set(values.tolist()) - {UNKNOWN})
    if len(groups) < 2:
        raise InputError(f"split policy 'fairmedfm_image': column {sex_column!r} has fewer than two known groups")
    k = min(int(np.floor(test_fraction * (values == g).sum())) for g in groups)
    test = np.zeros(len(frame), dtype=bool)
    for g in groups:
        members = np.flatnonzero(values == g)
        test[members[rng.permutation(len(members))[:k]]] = True
    out = frame.copy()
    out["split"] = np.where(test, "test", "train").astype(object)
    subsets = {}
    for column in _default_groups(frame, attributes):
        if column == sex_column:
            continue
        name = column.removeprefix("group_")
        out[f"subset_test_{name}"] = _balanced_subset(out, column, rng)
        subsets[name] = int(out[f"subset_test_{name}"].sum())
    leaking = leaking_patients(out)
    return SplitResult(
        out,
        {
            "unit": "image",
            "leaks_patients": True,
            "leaking_patients": len(leaking),
            "compatibility": "FairMedFM split_82 (image-level, no validation split; DATASETS.md §5.1, §7.7)",
            "test_images_per_sex": k,
            "sex_column": sex_column,
            "test_fraction": test_fraction,
            "balanced_test_subsets": subsets,
        },
    )


def _balanced_subset(frame: pd.DataFrame, column: str, rng: np.random.Generator) -> np.ndarray:
    """Test rows downsampled so every known group of ``column`` has the same number of samples."""
    flags = np.zeros(len(frame), dtype=int)
    test = frame.index[(frame["split"] == "test") & (frame[column] != UNKNOWN)]
    values = frame.loc[test, column]
    counts = values.value_counts()
    if len(counts) < 2:
        return flags
    size = int(counts.min())
    for g in sorted(counts.index):
        members = np.asarray(values.index[values == g])
        flags[members[rng.permutation(len(members))[:size]]] = 1
    return flags


def _three_class_disease(frame: pd.DataFrame, label: str | None) -> pd.Series:
    """Glocker's 3-class disease: Pleural Effusion (precedence) / No Finding / Other; else the primary label."""
    if {"label_pleural_effusion", "label_no_finding"} <= set(frame.columns):
        pe = pd.to_numeric(frame["label_pleural_effusion"], errors="coerce") == 1
        nf = pd.to_numeric(frame["label_no_finding"], errors="coerce") == 1
        return pd.Series(np.where(pe, "Pleural Effusion", np.where(nf, "No Finding", "Other")), index=frame.index)
    column = _resolve_label(frame, label)
    if column is None:
        raise InputError("split policy 'glocker_resample': the dataset has no label column")
    return pd.to_numeric(frame[column], errors="coerce").fillna(0).astype(int).astype(str)


def _weighted_draw(index: np.ndarray, weights: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    probabilities = weights / weights.sum()
    return rng.choice(index, size=size, replace=True, p=probabilities)


@register_split("glocker_resample")
def glocker_resample_split(
    frame: pd.DataFrame,
    *,
    seed: int,
    base: str | None = None,
    race: str = "race",
    label: str | None = None,
    factor: int = 3,
    **base_params: Any,
) -> SplitResult:
    """Base split (``base``; default: ``official`` with a split file, else ``patient``) + Glocker's three-round
    test resampling.

    Round 1: draw ``factor``·|test| samples with replacement, weights 1/P(race) → equal race sizes. Round 2: within
    each race, resample (same size) with weights P(disease)/P(disease | race) → equal disease prevalence. Round 3:
    within each (race, disease), resample with weights P(age bin | disease)/P(age bin | race, disease), 8 age bins.
    ``subset_test_resampled`` counts how many times each test row was drawn.
    """
    base_name = base or ("official" if base_params.get("split_file") is not None else "patient")
    base_result = _base_split(frame, seed, base_name, base_params)
    out = base_result.frame
    rng = np.random.default_rng([seed, 1])
    race_column = _resolve_group(out, race)
    test = out[(out["split"] == "test") & (out[race_column] != UNKNOWN)]
    if test[race_column].nunique() < 2:
        raise InputError(f"split policy 'glocker_resample': test set has fewer than two known {race_column} groups")
    disease = _three_class_disease(out, label).loc[test.index]
    age = pd.to_numeric(out.get("attr_age", pd.Series(np.nan, index=out.index)), errors="coerce").loc[test.index]
    age_bin = age_groups(age, GLOCKER_AGE_EDGES)
    index = test.index.to_numpy()
    race_of = test[race_column]

    # Round 1: race balance.
    race_p = race_of.value_counts(normalize=True)
    drawn = _weighted_draw(index, (1.0 / race_of.map(race_p)).to_numpy(dtype=float), factor * len(test), rng)
    # Round 2: equal disease prevalence within each race.
    overall_disease = disease.loc[drawn].value_counts(normalize=True)
    round2 = []
    for g in sorted(race_of.unique()):
        members = drawn[race_of.loc[drawn].to_numpy() == g]
        local = disease.loc[members].value_counts(normalize=True)
        weights = (disease.loc[members].map(overall_disease) / disease.loc[members].map(local)).to_numpy(dtype=float)
        round2.append(_weighted_draw(members, weights, len(members), rng))
    drawn = np.concatenate(round2)
    # Round 3: age distribution within (race, disease) matched to the overall one given disease.
    round3 = []
    frame3 = pd.DataFrame({"race": race_of.loc[drawn].to_numpy(), "disease": disease.loc[drawn].to_numpy(),
                           "age": age_bin.loc[drawn].to_numpy()}, index=np.arange(len(drawn)))
    age_given_disease = frame3.groupby("disease")["age"].value_counts(normalize=True)
    for (_, d), cell in frame3.groupby(["race", "disease"], sort=True):
        local = cell["age"].value_counts(normalize=True)
        target = age_given_disease.loc[d]
        weights = (cell["age"].map(target) / cell["age"].map(local)).to_numpy(dtype=float)
        round3.append(_weighted_draw(drawn[cell.index.to_numpy()], weights, len(cell), rng))
    drawn = np.concatenate(round3)
    counts = np.bincount(drawn, minlength=len(out))
    out["subset_test_resampled"] = counts
    recipe = dict(base_result.recipe)
    recipe.update(
        {
            "base": base_name,
            "resample": {"factor": factor, "race_column": race_column, "age_edges": list(GLOCKER_AGE_EDGES),
                         "rng": "numpy default_rng([seed, 1])", "size": int(counts.sum())},
        }
    )
    return SplitResult(out, recipe)


@register_split("khan_balanced")
def khan_balanced_split(
    frame: pd.DataFrame,
    *,
    seed: int,
    base: str | None = None,
    race: str = "race",
    sex: str = "sex",
    **base_params: Any,
) -> SplitResult:
    """Base split + a training set undersampled (by patient) to equal race × sex cells, then per-finding test
    subsets ``subset_test_<task>`` with the overall prevalence in every race group and equal group sizes.

    Training rows not selected (and training rows of unknown race or sex) are removed from the table.
    """
    base_name = base or ("official" if base_params.get("split_file") is not None else "patient")
    base_result = _base_split(frame, seed, base_name, base_params)
    out = base_result.frame
    rng = np.random.default_rng([seed, 2])
    race_column, sex_column = _resolve_group(out, race), _resolve_group(out, sex)

    train = out[out["split"] == "train"]
    per_patient = train.groupby("patient_id", sort=True)[[race_column, sex_column]].first()
    per_patient = per_patient[(per_patient[race_column] != UNKNOWN) & (per_patient[sex_column] != UNKNOWN)]
    cells = per_patient.groupby([race_column, sex_column], sort=True)
    size = int(cells.size().min()) if len(per_patient) else 0
    keep_patients: set[Any] = set()
    for _, members in cells:
        ids = np.asarray(members.index.tolist(), dtype=object)
        keep_patients.update(ids[rng.permutation(len(ids))[:size]].tolist())
    drop = (out["split"] == "train") & ~out["patient_id"].isin(keep_patients)
    out = out.loc[~drop.to_numpy()].reset_index(drop=True)

    subsets = {}
    for column in label_columns(out):
        name = column.removeprefix("label_")
        out[f"subset_test_{name}"] = _equal_prevalence_subset(out, column, race_column, rng)
        subsets[name] = int(out[f"subset_test_{name}"].sum())
    recipe = dict(base_result.recipe)
    recipe.update({"base": base_name, "train_patients_per_race_sex_cell": size,
                   "removed_train_rows": int(drop.sum()), "per_finding_test_subsets": subsets})
    return SplitResult(out, recipe)


def _equal_prevalence_subset(frame: pd.DataFrame, label: str, group: str, rng: np.random.Generator) -> np.ndarray:
    flags = np.zeros(len(frame), dtype=int)
    values = pd.to_numeric(frame[label], errors="coerce")
    test = (frame["split"] == "test") & (frame[group] != UNKNOWN) & values.notna()
    if not test.any():
        return flags
    prevalence = float(values[test].mean())
    groups = sorted(frame.loc[test, group].unique())
    if len(groups) < 2 or prevalence in (0.0, 1.0):
        return flags
    capacity = []
    for g in groups:
        in_group = test & (frame[group] == g)
        n_pos = int((values[in_group] == 1).sum())
        n_neg = int((values[in_group] == 0).sum())
        capacity.append(min(n_pos / prevalence, n_neg / (1 - prevalence)))
    size = int(np.floor(min(capacity)))
    n_pos = int(np.floor(size * prevalence))
    n_neg = size - n_pos
    for g in groups:
        for value, n in ((1, n_pos), (0, n_neg)):
            members = np.flatnonzero((test & (frame[group] == g) & (values == value)).to_numpy())
            flags[members[rng.permutation(len(members))[:n]]] = 1
    return flags


@register_split("sites")
def sites_split(
    frame: pd.DataFrame,
    *,
    seed: int,
    site: str = "site",
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    label: str | None = None,
    groups: Sequence[str] | str | None = None,
) -> SplitResult:
    """A stratified patient-level split inside each site (each site's train/val/test for federated clients).

    A patient seen at two sites would leak between clients, so it is an error naming the patient.
    """
    if site not in frame.columns:
        raise InputError(f"split policy 'sites': no column {site!r}; columns: {', '.join(map(str, frame.columns))}")
    sites_per_patient = frame.groupby("patient_id")[site].nunique()
    if (sites_per_patient > 1).any():
        patient = sites_per_patient[sites_per_patient > 1].index[0]
        raise InputError(f"split policy 'sites': patient {patient!r} appears at more than one site")
    fractions = _check_fractions(fractions)
    label_column = _resolve_label(frame, label)
    group_cols = _default_groups(frame, groups)
    out = frame.copy()
    out["split"] = None
    counts = {}
    for i, (name, part) in enumerate(frame.groupby(site, sort=True)):
        rng = np.random.default_rng([seed, i])
        out.loc[part.index, "split"] = _split_by_patient(
            part, rng=rng, fractions=fractions, label=label_column, groups=group_cols
        ).to_numpy()
        counts[str(name)] = int(len(part))
    return SplitResult(
        out,
        {"unit": "patient within site", "site_column": site, "fractions": list(fractions), "samples_per_site": counts,
         "stratify": ([label_column] if label_column else []) + group_cols},
    )
