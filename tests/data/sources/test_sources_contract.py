"""Every source module of this folder: a complete card, a valid SampleTable from its miniature release, real
relative paths, harmonised groups drawn from the documented vocabularies, and a round trip through ``prepare``."""

from __future__ import annotations

import pytest
import source_releases as releases

from fairfm.data import get_dataset, list_datasets
from fairfm.data.attributes import GROUPS
from fairfm.data.prepare import load_prepared, prepare
from fairfm.data.sampletable import validate_sample_table
from fairfm.groups import UNKNOWN

WRITERS = {
    "ham10000": releases.write_ham10000,
    "ham10000_seg": releases.write_ham10000,
    "fitzpatrick17k": releases.write_fitzpatrick17k,
    "ddi": releases.write_ddi,
    "papila": releases.write_papila,
    "brset": releases.write_brset,
    "fairvlmed10k": releases.write_fairvlmed10k,
    "gf3300": releases.write_gf3300,
    "fairvision_amd": releases.write_fairvision,
    "fairvision_dr": releases.write_fairvision,
    "fairvision_glaucoma": releases.write_fairvision,
    "fairfedmed_oph_slo": releases.write_fairfedmed_oph,
    "fairfedmed_oph_oct": releases.write_fairfedmed_oph,
    "covid_ct_md": releases.write_covid_ct_md,
    "adni": releases.write_adni,
    "ol3i": releases.write_ol3i,
    "duke_oct": releases.write_duke_oct,
    "fairseg": releases.write_fairseg,
    "tusc": releases.write_tusc,
    "montgomery": releases.write_montgomery,
    "kits23": releases.write_kits23,
    "ircadb": releases.write_ircadb,
    "candi": releases.write_candi,
    "spider": releases.write_spider,
}
# Vocabularies of the harmonised groups that are not in fairfm.data.attributes.GROUPS.
EXTRA_GROUPS = {
    "skin_tone": ("I–II", "III–IV", "V–VI"),
    "bmi": ("underweight", "normal", "overweight", "obese"),
}


def test_all_sources_registered():
    cards = {card.name: card for card in list_datasets()}
    assert set(WRITERS) <= set(cards)
    mine = [cards[name] for name in WRITERS]
    assert sum(card.task_type == "classification" for card in mine) >= 12
    assert sum(card.task_type == "segmentation" for card in mine) == 8


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_source_contract(tmp_path, name):
    root = WRITERS[name](tmp_path / "raw")
    source = get_dataset(name)
    card = source.card
    assert card.title and card.modality and card.access and card.reference and card.tasks and card.attributes
    assert card.dims in (2, 3) and card.task_type in ("classification", "segmentation")

    table = validate_sample_table(source.load(root), source=name)
    assert len(table) >= 2
    assert table["sample_id"].map(type).eq(str).all() and table["patient_id"].map(type).eq(str).all()
    for column in [c for c in table.columns if c == "path" or c.startswith("path_")]:
        for value in table[column].dropna():
            assert not value.startswith("/"), f"{column} must be relative to the root: {value}"
            assert (root / value).exists(), f"{name}: {column} {value} does not exist"
    if card.task_type == "classification":
        for task in card.tasks:
            assert f"label_{task}" in table.columns
    else:
        assert any(c.startswith("path_mask") for c in table.columns)
    for attribute in card.attributes:
        groups = table[f"group_{attribute}"]
        assert groups.map(type).eq(str).all(), f"group_{attribute} must hold strings"
        allowed = set(GROUPS.get(attribute, EXTRA_GROUPS.get(attribute, ()))) | {UNKNOWN}
        if attribute == "age":
            allowed = {"<60", "≥60", UNKNOWN}
        assert set(groups) <= allowed, f"group_{attribute}: {set(groups) - allowed}"
    assert ("split_official" in table.columns) == card.official_split
    assert ("site" in table.columns) == card.has_sites
    for path in source.source_files(root):
        assert path.is_file()

    manifest = prepare(name, root, tmp_path / "prepared", seed=3)
    prepared, saved = load_prepared(tmp_path / "prepared")
    assert saved["n_samples"] == len(prepared) == len(table)
    assert set(prepared["split"]) <= {"train", "val", "test"}
    # patient-level split: no patient in two splits
    assert prepared.groupby("patient_id")["split"].nunique().max() == 1
    assert manifest["dataset"] == name
