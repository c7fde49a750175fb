"""Attribute handling (unknowns, bins, intersections), Benjamini–Hochberg, and the no-torch import rule."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import fairfm.metrics as M
from fairfm.errors import InputError
from fairfm.groups import bin_continuous, factorize_groups, intersect, parse_bins


def test_unknown_spellings_are_not_groups():
    codes, groups = factorize_groups(pd.Series(["F", "M", None, "Unknown", "unknown", " F", -1, np.nan, ""]))
    assert groups == ["F", "M"]
    assert codes.tolist() == [0, 1, -1, -1, -1, 0, -1, -1, -1]


def test_bins_are_closed_on_the_left_and_named():
    labels = bin_continuous(pd.Series([39.9, 40, 59, 60, 80, None]), [40, 60, 80])
    assert labels.tolist() == ["<40", "40–<60", "40–<60", "60–<80", "≥80", "unknown"]
    assert parse_bins("age=60") == ("age", [60.0])
    for bad in ["age", "age=", "age=a,b", "=60", "age=60,50"]:
        with pytest.raises(InputError):
            parse_bins(bad)


def test_intersections_name_groups_and_propagate_unknown():
    frame = pd.DataFrame({"sex": ["F", "M", "F", None], "race": ["Black", "White", "Unknown", "Asian"]})
    assert intersect(frame, ["sex", "race"]).tolist() == ["F|Black", "M|White", "unknown", "unknown"]


def test_evaluate_bins_and_intersections():
    rng = np.random.default_rng(0)
    n = 800
    frame = pd.DataFrame({"sex": rng.choice(["F", "M"], n), "race": rng.choice(["A", "B"], n), "age": rng.integers(20, 90, n)})
    y = rng.integers(0, 2, n)
    p = rng.random(n)
    report = M.evaluate(y, p, groups=frame, bins={"age": [60]}, intersect=[["sex", "race"]], bootstrap=0)
    attrs = report.tasks["task"].attributes
    assert attrs["age"].groups == ["<60", "≥60"]
    assert attrs["sex×race"].groups == ["F|A", "F|B", "M|A", "M|B"]
    n_fb = ((frame.sex == "F") & (frame.race == "B")).sum()
    assert attrs["sex×race"].group_counts["F|B"][0] == n_fb


def test_benjamini_hochberg_hand_example():
    p = np.array([0.01, 0.04, 0.03, 0.20, np.nan])
    # sorted 0.01, 0.03, 0.04, 0.20 → 0.04, 0.06, 0.0533, 0.20 → monotone: 0.04, 0.0533, 0.0533, 0.20
    np.testing.assert_allclose(M.benjamini_hochberg(p)[:4], [0.04, 0.16 / 3, 0.16 / 3, 0.20])
    assert np.isnan(M.benjamini_hochberg(p)[4])


def test_length_mismatch_is_an_error():
    with pytest.raises(InputError, match="length mismatch"):
        M.evaluate([0, 1, 0], [0.1, 0.9], groups={"g": ["a", "b", "a"]})
    with pytest.raises(InputError, match="length mismatch"):
        M.evaluate([0, 1, 0], [0.1, 0.9, 0.3], groups={"g": ["a", "b"]})


def test_importing_the_metrics_never_imports_torch():
    code = "import sys, fairfm.metrics, fairfm.cli; fairfm.metrics.evaluate([0,1,0,1],[.1,.9,.2,.8], groups={'g': list('aabb')}, bootstrap=5); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_metric_table_has_the_contract_columns_and_rows():
    rng = np.random.default_rng(2)
    y, p, g = rng.integers(0, 2, 300), rng.random(300), rng.choice(["a", "b"], 300)
    table = M.evaluate(y, p, groups={"g": g}, bootstrap=20).to_metric_table(run_id="r1")
    assert (table.run_id == "r1").all()
    gap = table[(table.group == "__summary__") & (table.metric == "auc_gap")].iloc[0]
    assert np.isfinite([gap.value, gap.ci_low, gap.ci_high]).all() and gap.ci_low <= gap.ci_high
    group_rows = table[(table.attribute == "g") & (table.metric == "auc") & table.group.isin(["a", "b"])]
    assert sorted(group_rows.group) == ["a", "b"] and (group_rows.n == [(g == "a").sum(), (g == "b").sum()]).all()
    overall = table[(table.group == "__all__") & (table.metric == "auc")].iloc[0]
    assert overall.n == 300 and overall.threshold_policy == "0.5"


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    """Temporary files are created private (0600); the published file must have the umask's usual mode."""
    import os
    import stat

    from fairfm.tableio import default_mode, write_text_atomic

    write_text_atomic(tmp_path / "out.json", "{}")
    mode = stat.S_IMODE(os.stat(tmp_path / "out.json").st_mode)
    assert mode == default_mode() and mode & 0o044  # group/others can read under a usual umask
