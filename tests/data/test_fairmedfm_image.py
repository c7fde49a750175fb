"""The ``fairmedfm_image`` compatibility split: FairMedFM's image-level sex-balanced split, which DOES leak patients —
flagged in the recipe, in ``dataset.json`` and by ``describe``, and never the default."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from chest_releases import write_chexpert

from fairfm.cli import main
from fairfm.data.prepare import describe, load_prepared
from fairfm.data.splits import is_patient_level, leaking_patients, make_split
from fairfm.errors import InputError
from fairfm.groups import UNKNOWN


def _many_images_per_patient(n_patients: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        sex = rng.choice(["F", "M", UNKNOWN], p=[0.55, 0.4, 0.05])
        race = rng.choice(["White", "Black", "Asian"])
        for k in range(int(rng.integers(2, 6))):
            rows.append({"sample_id": f"p{p}_{k}", "patient_id": f"p{p}", "path": f"img/{p}_{k}.png",
                         "label_finding": float(rng.random() < 0.3), "group_sex": sex, "group_race": race})
    return pd.DataFrame(rows)


def test_image_level_split_leaks_patients_and_says_so():
    frame = _many_images_per_patient()
    result = make_split(frame, "fairmedfm_image", seed=0)
    out = result.frame
    # It DOES put patients in both splits (this is what distinguishes it from every other policy) ...
    leaking = leaking_patients(out)
    assert len(leaking) > 10
    # ... and records it: the count agrees with an independent groupby of the split table.
    independent = int((out.groupby("patient_id")["split"].nunique() > 1).sum())
    assert result.recipe["leaks_patients"] is True and result.recipe["unit"] == "image"
    assert result.recipe["leaking_patients"] == independent == len(leaking)
    assert not is_patient_level("fairmedfm_image") and is_patient_level("patient") and is_patient_level("fairmedfm")
    # FairMedFM's protocol: k = min(⌊0.2·N_F⌋, ⌊0.2·N_M⌋) images per sex in test, train/test only.
    n_f, n_m = int((frame["group_sex"] == "F").sum()), int((frame["group_sex"] == "M").sum())
    k = min(int(np.floor(0.2 * n_f)), int(np.floor(0.2 * n_m)))
    test = out[out["split"] == "test"]
    assert test["group_sex"].value_counts().to_dict() == {"F": k, "M": k}
    assert set(out["split"]) == {"train", "test"}
    # FairMedFM's unknown-sex-as-female bug is not reproduced: unknown-sex images never enter the test set.
    assert (out.loc[out["group_sex"] == UNKNOWN, "split"] == "train").all()
    # The per-attribute balanced test subset is seeded and balanced.
    subset = out[out["subset_test_race"] > 0]
    assert subset["split"].eq("test").all() and subset["group_race"].value_counts().nunique() == 1


def test_image_level_split_is_seeded_and_order_free():
    frame = _many_images_per_patient()
    first = make_split(frame, "fairmedfm_image", seed=0).frame.sort_values("sample_id")
    again = make_split(frame.sample(frac=1.0, random_state=7), "fairmedfm_image", seed=0).frame.sort_values("sample_id")
    other = make_split(frame, "fairmedfm_image", seed=1).frame.sort_values("sample_id")
    assert first["split"].tolist() == again["split"].tolist()
    assert first["subset_test_race"].tolist() == again["subset_test_race"].tolist()
    assert first["split"].tolist() != other["split"].tolist()
    with pytest.raises(InputError, match="fewer than two known groups"):
        make_split(frame.assign(group_sex="F"), "fairmedfm_image", seed=0)


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return int(exit_info.value.code), capsys.readouterr().out


def test_flag_recorded_in_dataset_json_and_warned_by_describe(tmp_path, capsys):
    root = write_chexpert(tmp_path / "raw", n_patients=60, images=False)
    out = tmp_path / "compat"
    code, stdout = run_cli(["datasets", "prepare", "chexpert", "--root", str(root), "--out", str(out),
                            "--split", "fairmedfm_image"], capsys)
    assert code == 0 and "image-level" in stdout
    frame, manifest = load_prepared(out)
    saved = json.loads((out / "dataset.json").read_text(encoding="utf-8"))["split"]
    assert saved["policy"] == "fairmedfm_image" and saved["leaks_patients"] is True
    assert saved["leaking_patients"] == len(leaking_patients(frame)) > 0
    code, stdout = run_cli(["datasets", "describe", str(out)], capsys)
    assert code == 0 and "splits by image, not by patient" in stdout
    assert any("splits by image" in w for w in describe(out)["warnings"])

    # The default policy on the same release records no leakage and describe gives no such warning.
    code, _ = run_cli(["datasets", "prepare", "chexpert", "--root", str(root), "--out", str(tmp_path / "default")],
                      capsys)
    assert code == 0
    _, default = load_prepared(tmp_path / "default")
    assert default["split"]["policy"] == "patient" and "leaks_patients" not in default["split"]
    assert not any("splits by image" in w for w in describe(tmp_path / "default")["warnings"])
