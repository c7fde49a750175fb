"""``fairfm demo`` end to end on a small planted-bias set: five runs stored, then found; the comparison printed."""

from __future__ import annotations

from rich.console import Console

from fairfm.cli import main
from fairfm.demo import planted_description, run_demo
from fairfm.results import Store
from fairfm.spec import RunSpec


def test_demo_runs_stores_and_finds_again(tmp_path):
    console = Console(record=True, width=140)
    rows = run_demo(tmp_path / "demo", n=240, seed=1, bootstrap=20, progress=False, console=console)
    assert [(r.model, r.usage) for r in rows] == [("clip", "zero_shot"), ("clip", "linear_probe"), ("clip", "lora"),
                                                  ("clip_rn50", "zero_shot"), ("clip_rn50", "linear_probe")]
    assert all(r.computed for r in rows)
    store = Store(tmp_path / "demo" / "store")
    assert len(store) == 5
    for row in rows:
        gap = store.load(row.run_id).metrics.query("metric == 'auc_gap' and attribute == 'sex'")
        assert gap["value"].iloc[0] == row.gap.value
        # detected ⇔ the planted target group is worst and the paired no-disparity p-value (stored with the
        # run's metrics as the gap's p) is below 0.05
        p_value = store.load(row.run_id).metrics.query("metric == 'auc_gap_p' and attribute == 'sex'")["value"]
        assert row.p_value == p_value.iloc[0]
        assert row.detected == (row.worst == "F" and row.p_value < 0.05)
    text = console.export_text()
    assert "RANDOM weights" in text and "planted disparity" in text and "group F disadvantaged" in text
    for row in rows:
        assert row.run_id in text

    again = run_demo(tmp_path / "demo", n=240, seed=1, bootstrap=20, progress=False, console=Console(quiet=True))
    assert not any(r.computed for r in again) and [r.run_id for r in again] == [r.run_id for r in rows]
    # The written specs are the runs' specs: loading one finds its stored run.
    spec = RunSpec.load(tmp_path / "demo" / "specs" / "clip_rn50_linear_probe.yaml")
    assert store.run_id(spec) == rows[4].run_id


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
