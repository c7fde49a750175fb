"""Split policies: no patient in two splits, determinism under a seed, and each protocol's promise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from chest_releases import (
    write_chexpert,
    write_fairfedmed_chest,
    write_mimic,
    write_nih,
    write_padchest,
    write_rsna,
)

from fairfm.data import get_dataset
from fairfm.data.attributes import UNKNOWN
from fairfm.data.sampletable import validate_sample_table
from fairfm.data.splits import is_patient_level, leaking_patients, list_split_policies, make_split
from fairfm.errors import InputError

WRITERS = {
    "chexpert": lambda d: write_chexpert(d, n_patients=80, images=False),
    "mimic_cxr": lambda d: write_mimic(d, n_patients=60, images=False),
    "nih_chestxray14": lambda d: write_nih(d, n_patients=60, images=False),
    "padchest": lambda d: write_padchest(d, n_patients=60, images=False),
    "rsna_pneumonia": lambda d: write_rsna(d, n_images=60, header_table=True),
    "fairfedmed_chest": lambda d: write_fairfedmed_chest(d, n_per_site=60, images=False),
}
# Which policies each dataset fixture supports (the others must fail with a clear InputError).
SUPPORTED = {
    "patient": set(WRITERS),
    "fairmedfm": set(WRITERS),
    "official": {"chexpert", "mimic_cxr", "nih_chestxray14", "fairfedmed_chest"},
    "glocker_resample": {"chexpert", "mimic_cxr", "fairfedmed_chest"},
    "khan_balanced": {"chexpert", "mimic_cxr", "fairfedmed_chest"},
    "sites": {"fairfedmed_chest"},
}


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    out = {}
    for name, writer in WRITERS.items():
        root = writer(tmp_path_factory.mktemp(name))
        out[name] = get_dataset(name).load(root)
    return out


def test_every_registered_policy_is_covered():
    # Every policy promising patient-level splits is tested below; the one compatibility policy that leaks by design
    # (fairmedfm_image) is tested in test_fairmedfm_image.py.
    patient_level = {p for p in list_split_policies() if is_patient_level(p)}
    assert patient_level == set(SUPPORTED)
    assert set(list_split_policies()) - patient_level == {"fairmedfm_image"}


def _signature(frame: pd.DataFrame) -> tuple:
    subsets = sorted(c for c in frame.columns if c.startswith("subset_"))
    ordered = frame.sort_values("sample_id")
    return (tuple(ordered["sample_id"]), tuple(ordered["split"]),
            tuple(tuple(ordered[c].tolist()) for c in subsets))


@pytest.mark.parametrize("policy", sorted(SUPPORTED))
@pytest.mark.parametrize("dataset", sorted(WRITERS))
def test_policy_no_leakage_and_deterministic(tables, policy, dataset):
    frame = tables[dataset]
    if dataset not in SUPPORTED[policy]:
        with pytest.raises(InputError):
            make_split(frame, policy, seed=0)
        return
    first = make_split(frame, policy, seed=0)
    table = validate_sample_table(first.frame)
    assert leaking_patients(table) == [], f"{policy} on {dataset} puts a patient in two splits"
    assert set(table["split"]) <= {"train", "val", "test"} and (table["split"] == "train").any()
    assert first.recipe["policy"] == policy and first.recipe["seed"] == 0
    # Same seed → identical result, whatever the input row order.
    shuffled = frame.sample(frac=1.0, random_state=123)
    assert _signature(make_split(shuffled, policy, seed=0).frame) == _signature(table)
    # Another seed changes the result (except the official split, which has no random step once it has a val).
    other = make_split(frame, policy, seed=1).frame
    if policy == "official" and not first.recipe.get("val_carved_from_train"):
        assert _signature(other) == _signature(table)
    else:
        assert _signature(other) != _signature(table)


def _synthetic(n_patients: int = 3000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        race = rng.choice(["White", "Black", "Asian", UNKNOWN], p=[0.6, 0.15, 0.2, 0.05])
        sex = rng.choice(["F", "M"])
        age = float(rng.integers(20, 90))
        prevalence = {"White": 0.3, "Black": 0.5, "Asian": 0.2, UNKNOWN: 0.3}[race]
        for k in range(int(rng.integers(1, 3))):
            pe = float(rng.random() < prevalence)
            rows.append({"sample_id": f"s{p}_{k}", "patient_id": f"p{p}", "path": f"img/{p}_{k}.png",
                         "label_pleural_effusion": pe, "label_no_finding": float(pe == 0 and rng.random() < 0.3),
                         "attr_age": age, "group_race": race, "group_sex": sex,
                         "group_age": "≥60" if age >= 60 else "<60"})
    return pd.DataFrame(rows)


def test_patient_split_fractions_and_stratification():
    frame = _synthetic()
    table = make_split(frame, "patient", seed=3, fractions=(0.6, 0.2, 0.2)).frame
    patients = table.groupby("patient_id")["split"].first().value_counts(normalize=True)
    assert abs(patients["train"] - 0.6) < 0.02 and abs(patients["val"] - 0.2) < 0.02
    # stratified: the positive rate per split is close to the overall one, within every race group
    for race, part in table.groupby("group_race"):
        overall = part["label_pleural_effusion"].mean()
        for split, rows in part.groupby("split"):
            assert abs(rows["label_pleural_effusion"].mean() - overall) < 0.08, (race, split)
    with pytest.raises(InputError, match="sum to 1"):
        make_split(frame, "patient", seed=0, fractions=(0.5, 0.1, 0.1))
    with pytest.raises(InputError, match="has no option 'colour'"):
        make_split(frame, "patient", seed=0, colour="red")
    with pytest.raises(InputError, match="unknown split policy 'random'"):
        make_split(frame, "random", seed=0)


def test_official_split_file_gichoya_style(tmp_path):
    frame = _synthetic(200)
    frame["source_index"] = np.arange(len(frame))
    patients = sorted(frame["patient_id"].unique())
    assign = {p: ["train", "validate", "test"][i % 3] for i, p in enumerate(patients)}
    chosen = frame[frame.index % 4 != 0]  # the file covers a subset of rows, like the 127,118 of 223,414
    split_file = tmp_path / "chexpert_split_2021_08_20.csv"
    pd.DataFrame({"index": chosen["source_index"], "split": chosen["patient_id"].map(assign)}).to_csv(split_file)
    result = make_split(frame, "official", seed=0, split_file=split_file)
    table = result.frame
    assert len(table) == len(chosen) and result.recipe["dropped_rows"] == len(frame) - len(chosen)
    assert len(result.recipe["split_file_sha256"]) == 64
    expected = chosen.set_index("sample_id")["patient_id"].map(assign).replace("validate", "val")
    assert table.set_index("sample_id")["split"].to_dict() == expected.to_dict()
    pd.DataFrame({"index": [10**9], "split": ["train"]}).to_csv(split_file)
    with pytest.raises(InputError, match="matches no sample"):
        make_split(frame, "official", seed=0, split_file=split_file)


def test_fairmedfm_sex_balanced_test_and_balanced_subsets():
    frame = _synthetic(1000)
    frame.loc[frame["patient_id"] == "p0", "group_sex"] = UNKNOWN
    result = make_split(frame, "fairmedfm", seed=5)
    table = result.frame
    test_patients = table[table["split"] == "test"].groupby("patient_id")["group_sex"].first()
    k = result.recipe["test_patients_per_sex"]
    per_patient = frame.groupby("patient_id")["group_sex"].first()
    assert k == min(int(0.2 * (per_patient == "F").sum()), int(0.2 * (per_patient == "M").sum()))
    assert test_patients.value_counts().to_dict() == {"F": k, "M": k}
    assert (table["split"] == "val").any()  # unlike FairMedFM, a validation split exists
    assert table.loc[table["patient_id"] == "p0", "split"].isin(["train", "val"]).all()
    for attribute in ("race", "age"):
        subset = table[table[f"subset_test_{attribute}"] == 1]
        assert (subset["split"] == "test").all()
        counts = subset[f"group_{attribute}"].value_counts()
        assert UNKNOWN not in counts.index and counts.nunique() == 1  # equal size per known group


def test_glocker_resample_balances_race_and_prevalence():
    frame = _synthetic(4000)
    result = make_split(frame, "glocker_resample", seed=42)
    table = result.frame
    counts = table["subset_test_resampled"].to_numpy()
    test = table["split"] == "test"
    assert counts[~test.to_numpy()].sum() == 0  # only test rows are drawn
    known_test = int((test & (table["group_race"] != UNKNOWN)).sum())
    assert counts.sum() == 3 * known_test == result.recipe["resample"]["size"]
    drawn = table.loc[table.index.repeat(counts)]
    race_share = drawn["group_race"].value_counts(normalize=True)
    assert (abs(race_share - 1 / 3) < 0.04).all()
    prevalence = drawn.groupby("group_race")["label_pleural_effusion"].mean()
    raw_prevalence = table[test & (table["group_race"] != UNKNOWN)].groupby("group_race")["label_pleural_effusion"].mean()
    assert raw_prevalence.max() - raw_prevalence.min() > 0.2  # the raw test set is unbalanced...
    assert prevalence.max() - prevalence.min() < 0.05  # ...the resampled one is not


def test_khan_balanced_train_cells_and_equal_prevalence_tests():
    frame = _synthetic(2000)
    result = make_split(frame, "khan_balanced", seed=1)
    table = result.frame
    train = table[table["split"] == "train"].groupby("patient_id")[["group_race", "group_sex"]].first()
    cells = train.value_counts()
    assert UNKNOWN not in set(train["group_race"]) and cells.nunique() == 1
    assert len(cells) == 6 and int(cells.iloc[0]) == result.recipe["train_patients_per_race_sex_cell"]
    # val/test untouched by the undersampling
    base = make_split(frame, "patient", seed=1).frame
    assert (base["split"] == "test").sum() == (table["split"] == "test").sum()
    subset = table[table["subset_test_pleural_effusion"] == 1]
    stats = subset.groupby("group_race")["label_pleural_effusion"].agg(["size", "mean"])
    assert stats["size"].nunique() == 1 and stats["mean"].nunique() == 1 and len(stats) == 3


def test_sites_split_within_each_site_and_rejects_shared_patients():
    frame = _synthetic(600)
    frame["site"] = np.where(frame["patient_id"].str[1:].astype(int) % 3 == 0, "A", "B")
    table = make_split(frame, "sites", seed=0).frame
    for _, part in table.groupby("site"):
        assert set(part["split"]) == {"train", "val", "test"}
    # one patient's two samples at two sites: they would leak between federated clients
    shared = pd.concat([frame, frame.iloc[[0]].assign(sample_id="extra", site="C")], ignore_index=True)
    with pytest.raises(InputError, match=f"patient '{frame['patient_id'].iloc[0]}' appears at more than one site"):
        make_split(shared, "sites", seed=0)


# ------------------------------------------------------------------------------------------------------------------
# Every other registered dataset (their miniature releases are written by tests/data/sources/source_releases.py):
# each policy either splits it without leakage, deterministically, or refuses with an InputError — never a crash.

def _other_writers():
    import sys
    from pathlib import Path

    from fairfm.data import list_datasets

    sys.path.insert(0, str(Path(__file__).parent / "sources"))
    import source_releases

    writers = {}
    for card in list_datasets():
        if card.name in WRITERS:
            continue
        # write_<prefix> whose prefix is the longest start of the dataset name (fairvision_amd → write_fairvision)
        candidates = [n for n in dir(source_releases) if n.startswith("write_") and card.name.startswith(n[6:])]
        assert candidates, f"no miniature release writer for dataset {card.name!r}"
        writers[card.name] = getattr(source_releases, max(candidates, key=len))
    return writers


def test_every_policy_on_every_other_dataset_fixture(tmp_path):
    for name, writer in sorted(_other_writers().items()):
        frame = get_dataset(name).load(writer(tmp_path / name))
        for policy in sorted(SUPPORTED):
            try:
                result = make_split(frame, policy, seed=0)
            except InputError:
                continue
            table = validate_sample_table(result.frame)
            assert leaking_patients(table) == [], f"{policy} on {name} puts a patient in two splits"
            again = make_split(frame.iloc[::-1], policy, seed=0).frame
            assert _signature(again) == _signature(table), f"{policy} on {name} is not deterministic"
