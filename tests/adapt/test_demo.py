"""``fairfm demo`` end to end on a small planted-bias set: nine runs stored, then found; the comparison printed; the
HTML report of the runs (with the embedding analysis) written and opened in Chromium."""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console
from sklearn.metrics import roc_auc_score

from fairfm.cli import main
from fairfm.demo import planted_description, run_demo
from fairfm.results import Store
from fairfm.spec import RunSpec
from tests.browser import chromium_page


def test_demo_runs_stores_and_finds_again(tmp_path):
    console = Console(record=True, width=140)
    rows = run_demo(tmp_path / "demo", n=240, seed=1, bootstrap=20, progress=False, console=console)
    methods = [("linear_probe", "reweighting"), ("linear_probe", "group_thresholds")]
    expected = [("clip", u, None) for u in ("zero_shot", "linear_probe", "lora")] + [("clip", *m) for m in methods]
    expected += [("clip_rn50", u, None) for u in ("zero_shot", "linear_probe")] + [("clip_rn50", *m) for m in methods]
    assert [(r.model, r.usage, r.method) for r in rows] == expected
    assert all(r.computed for r in rows)
    store = Store(tmp_path / "demo" / "store")
    assert len(store) == len(expected)
    for row in rows:
        gap = store.load(row.run_id).metrics.query("metric == 'auc_gap' and attribute == 'sex'")
        assert gap["value"].iloc[0] == row.gap.value
        # detected ⇔ the planted target group is worst and the paired no-disparity p-value (stored with the
        # run's metrics as the gap's p) is below 0.05
        p_value = store.load(row.run_id).metrics.query("metric == 'auc_gap_p' and attribute == 'sex'")["value"]
        assert row.p_value == p_value.iloc[0]
        # the worst group, recomputed independently (sklearn) from the stored test predictions
        test = store.load(row.run_id).predictions.query("split == 'test'")
        aucs = {g: roc_auc_score(rows["y_true"], rows["y_score"]) for g, rows in test.groupby("group_sex")}
        assert row.worst == min(aucs, key=aucs.get)
        assert row.groups["F"].value == pytest.approx(aucs["F"]) and row.groups["M"].value == pytest.approx(aucs["M"])
    text = console.export_text()
    assert "RANDOM weights" in text and "planted disparity" in text and "group F disadvantaged" in text
    for row in rows:
        assert row.run_id in text

    again = run_demo(tmp_path / "demo", n=240, seed=1, bootstrap=20, progress=False, console=Console(quiet=True))
    assert not any(r.computed for r in again) and [r.run_id for r in again] == [r.run_id for r in rows]
    # The written specs are the runs' specs: loading one finds its stored run.
    spec = RunSpec.load(tmp_path / "demo" / "specs" / "clip_rn50_linear_probe.yaml")
    assert store.run_id(spec) == rows[6].run_id

    report = tmp_path / "demo" / "report.html"
    html = report.read_text(encoding="utf-8")
    for row in rows:
        assert row.run_id in html
    for section in ('id="leaderboard"', 'id="tradeoff"', 'id="embeddings"', 'id="curves"', 'id="provenance"'):
        assert section in html
    with chromium_page(report) as page:
        assert page.console_errors() == []
        assert page.run("return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        # one embedding analysis per model's linear probe, stored and shown
        assert page.run("return document.querySelectorAll('#embeddings section').length") == 2


def test_planted_description_names_the_mechanisms(tmp_path):
    from fairfm.data.synth import generate

    truth = generate(tmp_path / "d", n=40, size=16, mechanisms=["label_noise"], seed=0)
    text = planted_description(truth)
    assert text.startswith("sex: group F disadvantaged relative to M")
    assert "35% of F's positives labelled negative" in text and "prevalence" not in text


def test_demo_cli_rejects_too_few_images(capsys, tmp_path):
    try:
        main(["demo", "--n", "50", "--out", str(tmp_path)])
        code = 0
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == "error: --n 50: the demo needs at least 200 images for a meaningful test split"
    assert list(tmp_path.iterdir()) == []  # nothing written


def _oracle_usage(disadvantaged: str | None):
    """A stand-in usage whose predictions have a known disparity: perfect scores for every group except
    ``disadvantaged``, whose scores are mostly inverted (AUC well below 0.5); None: perfect for everyone."""
    from fairfm.runner import UsageOutput

    def usage(spec, table, tasks, **_):
        rng = np.random.default_rng(0)
        labels = table[f"label_{tasks[0]}"].to_numpy(dtype=float)
        inverted = 0.7 - 0.4 * labels + 0.3 * rng.random(len(table))
        scores = np.where(table["group_sex"].astype(str).to_numpy() == disadvantaged, inverted, 0.1 + 0.8 * labels)
        split = table["split"].astype(str).to_numpy()
        return UsageOutput({s: scores[split == s, None] for s in ("val", "test")}, {})

    return usage


def test_detected_follows_the_planted_truth(tmp_path, monkeypatch):
    # Independent oracle: predictions whose disparity is planted by construction. The planted direction (truth.json:
    # F disadvantaged) must be detected; no disparity, and a disparity against the other group, must not be.
    import dataclasses
    import json

    from fairfm.usages import base as usages_base, get_usage

    import fairfm.demo

    monkeypatch.setattr(fairfm.demo, "DEMO_METHODS", ())  # the stand-in usages apply no method
    planted = {"zero_shot": "F", "linear_probe": None, "lora": "M"}
    for usage, group in planted.items():
        oracle = dataclasses.replace(get_usage(usage), run=_oracle_usage(group))
        monkeypatch.setitem(usages_base._USAGES, usage, oracle)
    rows = run_demo(tmp_path / "demo", n=400, seed=0, bootstrap=200, progress=False, console=Console(quiet=True))
    truth = json.loads(next((tmp_path / "demo").glob("synthetic_*/truth.json")).read_text())
    assert (truth["attribute"], truth["target_group"]) == ("sex", "F")
    for row in rows:
        expected = planted[row.usage] == truth["target_group"]
        assert row.detected is expected, (row.model, row.usage, row.worst, row.p_value)
        if planted[row.usage] is not None:
            assert row.worst == planted[row.usage] and row.groups[planted[row.usage]].value < 0.75
