"""``fairfm report`` and ``fairfm evaluate --format html`` end to end: what the report contains, the formats, bad
input, and the HTML in headless Chromium."""

from __future__ import annotations

import csv
import io
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from fairfm.cli import main
from fairfm.report.build import ReportOptions, build_report, scored_rows
from tests.browser import chromium_page, image_is_blank
from tests.report.stored_runs import DESIGN, SEEDS


def _cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def html_report(report_store, tmp_path_factory):
    store, ids = report_store
    out = tmp_path_factory.mktemp("html") / "report.html"
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--store", str(store.path), "--out", str(out), "--curves", "2"])
    assert exit_info.value.code == 0
    return out, store, ids


def test_the_report_has_every_section_and_every_run(html_report):
    out, store, ids = html_report
    html = out.read_text(encoding="utf-8")
    for section in ("overview", "leaderboard", "tradeoff", "fairness-score", "relative", "forest", "curves",
                    "segmentation", "provenance"):
        assert f'id="{section}"' in html, section
    for run_id in ids.values():
        assert run_id in html
    assert "attribute-aware" in html
    assert not re.search(r'(src|href)\s*=\s*"https?://', html)  # self-contained: nothing fetched


def test_the_html_report_renders_in_chromium_without_errors_and_sorts(html_report, tmp_path):
    out, _, _ = html_report
    with chromium_page(out) as page:
        assert page.console_errors() == []
        n_images = page.run("return document.images.length")
        assert n_images >= 10
        assert page.run("return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        decoded = page.decoded_images()  # collapsed ones too
        assert len(decoded) == n_images
        assert [i for i, image in enumerate(decoded) if image_is_blank(image)] == []
        for index in (0, n_images // 2):  # and as shown on screen
            assert not image_is_blank(page.element_screenshot("img", index=index)), index
        table = "#leaderboard-cla-synthetic-y-sex table"  # two datasets in the store: boards per dataset
        before = page.column_values(table, 2)  # the AUC column
        page.click(f"{table} th:nth-child(3) button")
        ascending = page.column_values(table, 2)
        numbers = [float(v.split()[0]) for v in ascending]
        assert numbers == sorted(numbers) and sorted(before) == sorted(ascending)
        page.click(f"{table} th:nth-child(3) button")
        assert [float(v.split()[0]) for v in page.column_values(table, 2)] == sorted(numbers, reverse=True)
        page.screenshot(tmp_path / "report.png")


def test_where_restricts_the_runs_and_csv_has_one_row_per_configuration(report_store, capsys):
    store, ids = report_store
    code, out, err = _cli(["report", "--store", str(store.path), "--where", "model=fakeA", "--format", "csv",
                           "--task", "y", "--attr", "sex"], capsys)  # fmt: skip
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    methods = {m for (model, m) in DESIGN if model == "fakeA"}
    assert {r["method"] for r in rows} == {m or "ERM" for m in methods}
    assert all(r["n_seeds"] == str(len(SEEDS)) for r in rows)
    by_method = {r["method"]: r for r in rows}
    aucs = [store.load(ids[("fakeA", None, s)]).metrics.query(
        "task == 'y' and attribute == '__all__' and metric == 'auc'")["value"].iloc[0] for s in SEEDS]
    assert float(by_method["ERM"]["auc"]) == pytest.approx(np.mean(aucs))


def test_markdown_and_latex_reports(report_store, tmp_path, capsys):
    store, _ = report_store
    fast = ["--curves", "0", "--task", "y", "--attr", "sex"]
    code, out, err = _cli(["report", "--store", str(store.path), "--where", "model=fakeB", "--format", "md", *fast],
                          capsys)  # fmt: skip
    assert code == 0, err
    assert "# fairfm report" in out and "| configuration |" in out
    path = tmp_path / "r.md"
    code, _, err = _cli(["report", "--store", str(store.path), "--where", "model=fakeB", "--out", str(path),
                         *fast], capsys)  # fmt: skip
    assert code == 0, err
    figures = list((tmp_path / "r_figures").glob("*.png"))
    assert figures and all(f.name in path.read_text(encoding="utf-8") for f in figures)
    code, out, err = _cli(["report", "--store", str(store.path), "--where", "model=fakeC,fakeSAM", "--format",
                           "latex", "--curves", "1"], capsys)  # fmt: skip
    assert code == 0, err
    assert "\\section" in out and "\\toprule" in out
    # pdflatex (inputenc utf8) knows Latin letters; every other sign the report uses must arrive escaped
    assert [c for c in out if ord(c) > 127 and not ("À" <= c <= "ÿ" and c.isalpha())] == []


@pytest.mark.parametrize("args, message", [
    (["--where", "model"], "expected COLUMN=VALUE"),
    (["--where", "colour=red"], "no such column"),
    (["--where", "model=nope"], "no run"),
    (["--attr", "height"], "--attr height: not in the selected runs"),
    (["nosuchrun"], "no run 'nosuchrun'"),
])  # fmt: skip
def test_bad_selections_are_one_line_and_exit_2(report_store, tmp_path, capsys, args, message):
    store, _ = report_store
    out = tmp_path / "r.html"
    code, _, err = _cli(["report", "--store", str(store.path), "--out", str(out), *args], capsys)
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_the_curves_use_the_threshold_the_run_chose_on_validation(report_store):
    from fairfm.runner import report_from_predictions

    store, ids = report_store
    record = store.load(ids[("fakeB", "reweighting", 1)])
    scored = scored_rows(record, "z")
    report = report_from_predictions(record.predictions, SimpleNamespace(threshold="best_f1@val", bootstrap=0,
                                                                         seed=1))  # fmt: skip
    assert scored.threshold == pytest.approx(report.tasks["z"].threshold)
    assert scored.policy == "best_f1@val" and not scored.leaks
    test = record.predictions.query("task == 'z' and split == 'test'")
    assert len(scored.y) == len(test) and set(scored.groups.columns) == {"sex", "age"}


def test_build_report_restricts_tasks_and_attributes(report_store):
    store, _ = report_store
    records = [r for r in store.list() if r.spec["dataset"] == "synthetic"]
    built = build_report(store, records, ReportOptions(tasks=["z"], attributes=["age"], curves=0))
    assert set(built.leaderboards["task"]) == {"z"} and set(built.leaderboards["attribute"]) == {"age"}
    ids = [s.id for s in built.document.sections]
    assert "curves" not in ids and "segmentation" not in ids


def _write_predictions(path):
    rng = np.random.default_rng(3)
    n = 800
    sex = np.where(rng.random(n) < 0.5, "F", "M")
    y = (rng.random(n) < 0.4).astype(int)
    signal = np.where(sex == "F", 0.7, 2.0)
    score = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(size=n))))
    split = np.where(np.arange(n) < 300, "val", "test")
    pd.DataFrame({"sample_id": np.arange(n), "label": y, "prob": score, "sex": sex, "age": rng.integers(20, 90, n),
                  "split": split}).to_csv(path, index=False)


def test_evaluate_writes_an_html_report_that_renders(tmp_path, capsys):
    preds = tmp_path / "preds.csv"
    _write_predictions(preds)
    out = tmp_path / "audit.html"
    code, _, err = _cli(["evaluate", str(preds), "--y-true", "label", "--y-score", "prob", "--attr", "sex",
                         "--attr", "age", "--bins", "age=60", "--split-column", "split", "--bootstrap", "100",
                         "--format", "html", "--out", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    html = out.read_text(encoding="utf-8")
    assert "best_f1@val" in html
    assert "&lt;60" in html and "≥60" in html  # the binned age groups, escaped
    with chromium_page(out) as page:
        assert page.console_errors() == []
        assert page.run("return document.images.length") >= 6
        assert page.run("return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")


def test_evaluate_html_needs_an_output_file(tmp_path, capsys):
    preds = tmp_path / "preds.csv"
    _write_predictions(preds)
    code, _, err = _cli(["evaluate", str(preds), "--y-true", "label", "--y-score", "prob", "--attr", "sex",
                         "--format", "html"], capsys)  # fmt: skip
    assert code == 2 and "--out" in err


def _walk(blocks):
    from fairfm.report.document import DetailsBlock

    for block in blocks:
        yield block
        if isinstance(block, DetailsBlock):
            yield from _walk(block.blocks)


def test_over_several_seeds_each_seeds_interval_is_shown(report_store):
    from fairfm.report.document import DetailsBlock, TableBlock

    store, ids = report_store
    records = [store.load(ids[("fakeB", None, s)]) for s in SEEDS]
    built = build_report(store, records, ReportOptions(tasks=["y"], attributes=["sex"], curves=0))
    board = next(s for s in built.document.sections if s.id == "leaderboard").subsections[0]
    table = board.blocks[0]
    auc_cell = table.cells()[0][2]
    for record in records:
        auc = record.metrics.query("task == 'y' and attribute == '__all__' and metric == 'auc'").iloc[0]
        assert f"seed {record.spec['seed']}: {auc['value']:.3f} [{auc['ci_low']:.3f}, {auc['ci_high']:.3f}]" in (
            auc_cell.title)
    details = next(b for b in board.blocks if isinstance(b, DetailsBlock))
    per_seed = next(b for b in _walk(details.blocks) if isinstance(b, TableBlock))
    assert [row[1].text for row in per_seed.cells()] == [str(s) for s in SEEDS]  # one row per seed, visible


def test_curves_leave_unknown_groups_out_as_the_metrics_do(report_store, monkeypatch):
    import fairfm.report.figures as figures
    from fairfm.report.build import _Scored, curve_blocks

    seen = []
    real = figures.roc_plot
    monkeypatch.setattr(figures, "roc_plot", lambda y, p, g, **kw: seen.append(set(g)) or real(y, p, g, **kw))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 120).astype(float)
    scored = _Scored(y, rng.random(120), pd.DataFrame({"sex": np.array(["F", "M", "unknown"] * 40)}), 0.5,
                     "best_f1@val", False)  # fmt: skip
    curve_blocks(scored, "sex", where="a test")
    assert seen == [{"F", "M"}]


def test_scored_rows_read_unknown_group_values_as_unknown(report_store, tmp_path):
    from fairfm.results import Store
    from tests.report.stored_runs import classification_predictions

    from fairfm.runner import report_from_predictions

    predictions = classification_predictions(1.0, 2.0, seed=0, model="fakeU")
    predictions.loc[predictions.index[::7], "group_sex"] = None
    evaluation = {"threshold": "best_f1@val", "bootstrap": 0, "seed": 0}
    store = Store(tmp_path / "store")
    document = {"usage": "linear_probe", "model": "fakeU", "method": None, "tasks": ["y", "z"],
                "attributes": ["sex", "age"], "dataset": "synthetic", **evaluation}  # fmt: skip
    record = store.run_derived("unknown-sex", document, lambda: (predictions, report_from_predictions(
        predictions, SimpleNamespace(**evaluation)), {}))
    scored = scored_rows(record, "y")
    assert set(scored.groups["sex"]) == {"F", "M", "unknown"}  # not "None" or "nan": left out by curve_blocks


def test_evaluate_html_with_free_text_task_and_intersectional_attribute_names(tmp_path, capsys):
    rng = np.random.default_rng(5)
    n = 600
    frame = pd.DataFrame({"No Finding": rng.integers(0, 2, n), "prob": rng.random(n),
                          "sex": rng.choice(["F", "M"], n), "race": rng.choice(["Asian", "Black", "White"], n)})
    frame.loc[::11, "race"] = ""  # unknown
    preds = tmp_path / "p.csv"
    frame.to_csv(preds, index=False)
    out = tmp_path / "x.html"
    code, _, err = _cli(["evaluate", str(preds), "--y-true", "No Finding", "--y-score", "prob", "--attr", "sex",
                         "--attr", "race", "--intersect", "sex,race", "--bootstrap", "20", "--format", "html",
                         "--out", str(out)], capsys)  # fmt: skip
    assert code == 0, err
    html = out.read_text(encoding="utf-8")
    assert "sex×race" in html and "No Finding" in html
    assert re.search(r"p\.csv sha256 [0-9a-f]{64}", html)  # what was evaluated, by checksum
    assert "Traceback" not in err
