"""``fairfm datasets list|prepare|describe|check`` and the ``fairfm.data.prepare`` API behind them."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
from chest_releases import write_chexpert, write_fairfedmed_chest, write_nih

from fairfm.cli import main
from fairfm.data.prepare import check, describe, load_prepared, prepare
from fairfm.data.splits import leaking_patients
from fairfm.errors import InputError


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return int(exit_info.value.code), captured.out, captured.err


def test_list_json_has_chest_cards(capsys):
    code, out, _ = run_cli(["datasets", "list", "--json"], capsys)
    assert code == 0
    cards = {card["name"]: card for card in json.loads(out)}
    for name in ("chexpert", "mimic_cxr", "nih_chestxray14", "padchest", "rsna_pneumonia", "fairfedmed_chest"):
        assert cards[name]["modality"] == "chest X-ray" and cards[name]["dims"] == 2
    assert "no_finding" in cards["chexpert"]["tasks"] and "race" in cards["chexpert"]["attributes"]
    assert cards["fairfedmed_chest"]["has_sites"] is True
    code, out, _ = run_cli(["datasets", "list"], capsys)
    assert code == 0 and "chexpert" in out and "PhysioNet" in out


def test_prepare_writes_parquet_and_manifest(tmp_path, capsys):
    root = write_chexpert(tmp_path / "raw", n_patients=40)
    out = tmp_path / "prepared"
    code, stdout, _ = run_cli(["datasets", "prepare", "chexpert", "--root", str(root), "--out", str(out),
                               "--split", "patient", "--seed", "7", "--fractions", "0.6,0.2,0.2",
                               "--age-bins", "40,60,80", "-o", "uncertain=ones"], capsys)
    assert code == 0 and "samples" in stdout
    frame, manifest = load_prepared(out)
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "samples.parquet"]  # no temp files left
    assert manifest["split"]["policy"] == "patient" and manifest["split"]["seed"] == 7
    assert manifest["split"]["fractions"] == [0.6, 0.2, 0.2] and manifest["age_edges"] == [40.0, 60.0, 80.0]
    assert manifest["source_options"] == {"uncertain": "ones", "age_edges": [40.0, 60.0, 80.0]}
    train_csv = root / "CheXpert-v1.0-small" / "train.csv"
    assert manifest["source_files"]["CheXpert-v1.0-small/train.csv"] == hashlib.sha256(train_csv.read_bytes()).hexdigest()
    assert "CHEXPERT DEMO.xlsx" in manifest["source_files"]
    assert leaking_patients(frame) == []
    assert set(frame["group_age"]) <= {"<40", "40–<60", "60–<80", "≥80", "unknown"}
    # counts per split × group × label agree with an independent groupby of the written table
    counts = pd.DataFrame(manifest["counts"])
    mine = counts[(counts["attribute"] == "sex") & (counts["task"] == "no_finding")].set_index(["split", "group"])
    oracle = frame.groupby(["split", "group_sex"])["label_no_finding"].agg(["size", "sum"])
    for (split, group), row in oracle.iterrows():
        assert mine.loc[(split, group), "n"] == row["size"] and mine.loc[(split, group), "positives"] == row["sum"]
    assert manifest["split_sizes"] == frame["split"].value_counts().to_dict() | {
        s: 0 for s in ("train", "val", "test") if s not in set(frame["split"])}
    # same inputs, same seed → byte-identical samples table
    again = tmp_path / "again"
    prepare("chexpert", root, again, split="patient", seed=7, split_params={"fractions": [0.6, 0.2, 0.2]},
            source_options={"uncertain": "ones"}, age_edges=[40, 60, 80])
    assert (again / "samples.parquet").read_bytes() == (out / "samples.parquet").read_bytes()


def test_age_edges_as_loader_option(tmp_path, capsys):
    root = write_chexpert(tmp_path / "raw", n_patients=10, demo=None, images=False)
    out = tmp_path / "prepared"
    code, _, _ = run_cli(["datasets", "prepare", "chexpert", "--root", str(root), "--out", str(out), "-o",
                          "age_edges=50"], capsys)
    assert code == 0
    frame, manifest = load_prepared(out)
    assert manifest["age_edges"] == [50.0] and set(frame["group_age"]) <= {"<50", "≥50", "unknown"}
    expected = np.where(frame["attr_age"].isna(), "unknown", np.where(frame["attr_age"] >= 50, "≥50", "<50"))
    assert frame["group_age"].tolist() == expected.tolist()
    code, _, err = run_cli(["datasets", "prepare", "chexpert", "--root", str(root), "--out", str(out), "-o",
                            "age_edges=old"], capsys)
    assert code == 2 and "age_edges='old'" in err


def test_prepare_bad_input_is_one_line_exit_2(tmp_path, capsys):
    code, _, err = run_cli(["datasets", "prepare", "chexpert", "--root", str(tmp_path), "--out",
                            str(tmp_path / "o")], capsys)
    assert code == 2 and err.startswith("error: chexpert: expected release file not found") and "Traceback" not in err
    assert not (tmp_path / "o" / "samples.parquet").exists()
    code, _, err = run_cli(["datasets", "prepare", "nosuch", "--root", str(tmp_path), "--out", str(tmp_path / "o")],
                           capsys)
    assert code == 2 and "unknown dataset 'nosuch'" in err
    # an unknown policy fails before the release is even looked for
    code, _, err = run_cli(["datasets", "prepare", "chexpert", "--root", str(tmp_path / "absent"), "--out",
                            str(tmp_path / "o"), "--split", "random"], capsys)
    assert code == 2 and "unknown split policy 'random'" in err and "fairmedfm" in err
    root = write_nih(tmp_path / "nih", n_patients=3, images=False)
    code, _, err = run_cli(["datasets", "prepare", "nih_chestxray14", "--root", str(root), "--out",
                            str(tmp_path / "o"), "--split", "sites"], capsys)
    assert code == 2 and "no column 'site'" in err
    code, _, err = run_cli(["datasets", "prepare", "nih_chestxray14", "--root", str(root), "--out",
                            str(tmp_path / "o"), "--fractions", "a,b"], capsys)
    assert code == 2 and "--fractions" in err


def test_official_split_file_through_cli(tmp_path, capsys):
    root = write_chexpert(tmp_path / "raw", n_patients=30, images=False)
    train = pd.read_csv(root / "CheXpert-v1.0-small" / "train.csv")
    patient = train["Path"].str.extract(r"(patient\d+)", expand=False)
    split = patient.map(lambda p: ["train", "validate", "test"][int(p[-5:]) % 3])
    split_file = tmp_path / "chexpert_split_2021_08_20.csv"
    pd.DataFrame({"index": train.index, "split": split}).iloc[::2].to_csv(split_file)
    out = tmp_path / "prepared"
    code, _, _ = run_cli(["datasets", "prepare", "chexpert", "--root", str(root), "--out", str(out), "--split",
                          "official", "--split-file", str(split_file)], capsys)
    assert code == 0
    frame, manifest = load_prepared(out)
    assert len(frame) == len(train.iloc[::2]) and manifest["split"]["patient_disjoint"] is True
    assert manifest["split"]["split_file"] == str(split_file)
    expected = split.iloc[::2].replace("validate", "val").to_numpy()
    assert frame.sort_values("source_index")["split"].tolist() == list(expected)


def test_describe_warns_for_small_groups(tmp_path, capsys):
    root = write_fairfedmed_chest(tmp_path / "raw", n_per_site=30)
    out = tmp_path / "prepared"
    prepare("fairfedmed_chest", root, out, split="sites", seed=0)
    summary = describe(out)
    assert summary["warnings"] and all(("val" in w or "test" in w) for w in summary["warnings"])
    assert any("samples (< 30)" in w for w in summary["warnings"])
    code, stdout, _ = run_cli(["datasets", "describe", str(out)], capsys)
    assert code == 0 and "warning:" in stdout and "pleural_effusion" in stdout
    code, stdout, _ = run_cli(["datasets", "describe", str(out), "--json", "--min-samples", "1",
                               "--min-positives", "0"], capsys)
    assert code == 0 and json.loads(stdout)["warnings"] == []
    # intersections: sex × race counts agree with a direct groupby; unknown if any part is unknown
    code, stdout, _ = run_cli(["datasets", "describe", str(out), "--json", "--intersect", "sex,race"], capsys)
    assert code == 0
    counts = pd.DataFrame(json.loads(stdout)["counts"])
    inter = counts[(counts["attribute"] == "sex×race") & (counts["task"] == "pleural_effusion")]
    frame, _ = load_prepared(out)
    oracle = (frame["group_sex"] + "|" + frame["group_race"]).where(
        (frame["group_sex"] != "unknown") & (frame["group_race"] != "unknown"), "unknown")
    expected = oracle.groupby(frame["split"]).value_counts().sort_index()
    assert inter.set_index(["split", "group"])["n"].sort_index().to_dict() == expected.to_dict()
    code, _, err = run_cli(["datasets", "describe", str(out), "--intersect", "sex,shoe"], capsys)
    assert code == 2 and "no column 'group_shoe'" in err
    code, _, err = run_cli(["datasets", "describe", str(tmp_path / "nothing")], capsys)
    assert code == 2 and "dataset.json" in err


def test_check_lists_all_missing_and_corrupt_files(tmp_path, capsys):
    missing = ("00000003_000.png", "00000006_000.png")
    root = write_nih(tmp_path / "raw", n_patients=5, missing=missing)
    out = tmp_path / "prepared"
    prepare("nih_chestxray14", root, out, split="official", seed=0)
    assert {p["sample_id"] for p in check(out)} == set(missing)
    frame, _ = load_prepared(out)
    corrupt = frame.loc[frame["sample_id"] == "00000001_000.png", "path"].iloc[0]
    (root / corrupt).write_bytes(b"not a png at all")
    problems = check(out)
    assert {p["sample_id"] for p in problems} == {*missing, "00000001_000.png"}
    for p in problems:
        assert frame.loc[p["row"], "sample_id"] == p["sample_id"]  # row points at the SampleTable row
    assert {p["problem"] for p in problems if p["sample_id"] in missing} == {"missing"}
    code, stdout, _ = run_cli(["datasets", "check", str(out)], capsys)
    assert code == 1 and "3 problem file(s)" in stdout and all(m in stdout for m in missing)
    (root / corrupt).unlink()
    with pytest.raises(InputError, match="dataset root not found"):
        check(out, root=tmp_path / "elsewhere")


def test_check_clean_dataset_exit_0(tmp_path, capsys):
    root = write_chexpert(tmp_path / "raw", n_patients=5, demo=None)
    out = tmp_path / "prepared"
    prepare("chexpert", root, out)
    code, stdout, _ = run_cli(["datasets", "check", str(out)], capsys)
    assert code == 0 and "all referenced files read correctly" in stdout


def test_console_script_one_line_error(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    fairfm = Path(sys.executable).parent / "fairfm"
    done = subprocess.run([str(fairfm), "datasets", "describe", str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ") and "dataset.json" in done.stderr
