"""``fairfm evaluate`` end to end: every output format, and every kind of bad input ends with exit code 2, one
line naming what is wrong, no traceback and no output file."""

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from fairfm.metrics.gap_inference import DESCRIPTIONS

BASE = ["--y-true", "label", "--y-score", "score", "--attr", "sex", "--attr", "race", "--bootstrap", "50"]


def test_table_output_lists_groups_and_gaps(run, preds):
    path, frame = preds
    result = run("evaluate", path, *BASE)
    assert result.code == 0, result.err
    for text in ("sex", "race", "Asian", "Black", "White", "AUC gap", "ES-AUC", "EOD", "DPD", "95% CI"):
        assert text in result.out
    assert "Unknown" not in result.out.split("race")[1].split("AUC gap")[0]  # unknown is not a group


def test_json_output_has_the_documented_structure(run, preds, tmp_path):
    path, frame = preds
    out = tmp_path / "r.json"
    result = run("evaluate", path, *BASE, "--bins", "age=60", "--attr", "age", "--intersect", "sex,race",
                 "--format", "json", "--out", out, "--seed", "7")  # fmt: skip
    assert result.code == 0, result.err
    doc = json.loads(out.read_text())
    assert set(doc) >= {"overall", "attributes", "threshold", "bootstrap"}
    assert doc["bootstrap"] == {"B": 50, "seed": 7, "stratify": "group", "ci": 0.95, "method": "percentile",
                                "ci_method": "simultaneous", "gap_intervals": DESCRIPTIONS["simultaneous"]}
    assert doc["threshold"] == {"policy": "0.5", "value": 0.5, "leaks_labels": False}
    assert doc["overall"]["auc"] == pytest.approx(roc_auc_score(frame.label, frame.score))
    assert set(doc["attributes"]) == {"sex", "race", "age", "sex×race"}
    race = doc["attributes"]["race"]
    assert set(race["groups"]) == {"Asian", "Black", "White"}
    assert set(race["groups"]["Black"]) >= {"n", "n_pos", "auc", "auc_ci", "tpr"}
    lo, hi = race["summary"]["auc_gap_ci"]
    assert lo <= hi and "auc_gap_p" in race["summary"] and "auc_gap_q" in race["summary"]
    assert set(doc["attributes"]["age"]["groups"]) == {"<60", "≥60"}
    assert "F|Black" in doc["attributes"]["sex×race"]["groups"]
    assert race["excluded_groups"] == {}


def test_csv_output_is_the_metric_table(run, preds, tmp_path):
    path, _ = preds
    out = tmp_path / "m.csv"
    assert run("evaluate", path, *BASE, "--format", "csv", "--out", out).code == 0
    table = pd.read_csv(out)
    assert list(table.columns) == ["run_id", "task", "attribute", "group", "metric", "value", "ci_low", "ci_high",
                                   "n", "threshold_policy", "note", "threshold_leaks_labels"]  # fmt: skip
    assert not table["threshold_leaks_labels"].any()
    assert {"__all__", "__summary__", "F", "M"} <= set(table.group)


def test_markdown_and_meta_join_and_parquet(run, preds, tmp_path):
    path, frame = preds
    frame[["sample_id", "label", "score"]].to_parquet(tmp_path / "p.parquet")
    frame[["sample_id", "sex", "race"]].sample(frac=1, random_state=0).to_csv(tmp_path / "meta.csv", index=False)
    result = run("evaluate", tmp_path / "p.parquet", "--meta", tmp_path / "meta.csv", "--on", "sample_id",
                 *BASE, "--format", "md")  # fmt: skip
    assert result.code == 0, result.err
    assert "### race" in result.out and "| Black |" in result.out


def test_validation_file_sets_the_threshold(run, preds, tmp_path):
    path, frame = preds
    frame.iloc[:200].to_csv(tmp_path / "val.csv", index=False)
    out = tmp_path / "r.json"
    assert run("evaluate", path, *BASE, "--val-file", tmp_path / "val.csv", "--format", "json", "--out", out).code == 0
    assert json.loads(out.read_text())["threshold"]["policy"] == "best_f1@val"


def test_multilabel_columns_are_paired(run, preds, tmp_path):
    path, frame = preds
    frame["label2"] = 1 - frame.label
    frame["score2"] = 1 - frame.score
    frame.to_csv(path, index=False)
    out = tmp_path / "r.json"
    result = run("evaluate", path, "--y-true", "label", "--y-score", "score", "--y-true", "label2", "--y-score",
                 "score2", "--attr", "sex", "--bootstrap", "0", "--format", "json", "--out", out)  # fmt: skip
    assert result.code == 0, result.err
    doc = json.loads(out.read_text())
    assert set(doc["tasks"]) == {"label", "label2"} and "macro_auc_gap" in doc["macro"]["sex"]


def test_segmentation_columns(run, tmp_path):
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"dice": rng.random(200), "iou": rng.random(200), "sex": rng.choice(["F", "M"], 200)})
    frame.to_csv(tmp_path / "seg.csv", index=False)
    out = tmp_path / "r.json"
    result = run("evaluate", tmp_path / "seg.csv", "--dice", "dice", "--iou", "iou", "--attr", "sex",
                 "--bootstrap", "20", "--format", "json", "--out", out)  # fmt: skip
    assert result.code == 0, result.err
    doc = json.loads(out.read_text())
    f = frame.dice[frame.sex == "F"].mean()
    m = frame.dice[frame.sex == "M"].mean()
    assert doc["attributes"]["sex"]["summary"]["dice_gap"] == pytest.approx(abs(f - m))
    assert doc["overall"]["mean_dice"] == pytest.approx(frame.dice.mean())


def test_attribute_with_one_valid_group_warns_but_succeeds(run, preds):
    path, frame = preds
    frame["site"] = "only-site"
    frame.to_csv(path, index=False)
    result = run("evaluate", path, *BASE, "--attr", "site", "--format", "json")
    assert result.code == 0
    assert "warning: attribute 'site': fewer than two valid groups" in result.err
    assert json.loads(result.out)["attributes"]["site"]["summary"]["auc_gap"] is None


# -- bad input ----------------------------------------------------------------------------------------------------
def _write(path, text):
    path.write_text(text)
    return path


BAD_CASES = {
    "missing file": (lambda d, f: ["evaluate", d / "nope.csv", *BASE], "nope.csv: file not found"),
    "empty file": (lambda d, f: ["evaluate", _write(d / "e.csv", ""), *BASE], "e.csv: file is empty"),
    "header only": (lambda d, f: ["evaluate", _write(d / "h.csv", "label,score\n"), *BASE], "no rows"),
    "unreadable parquet": (lambda d, f: ["evaluate", _write(d / "x.parquet", "not parquet"), *BASE], "cannot be read as Parquet"),
    "missing column": (lambda d, f: ["evaluate", f, "--y-true", "label", "--y-score", "prob", "--attr", "sex"], "no column 'prob'"),
    "nan score": (lambda d, f: ["evaluate", _edit(f, "score", 5, np.nan), *BASE], "column 'score', row 5 (line 7 of the file)"),
    "infinite score": (lambda d, f: ["evaluate", _edit(f, "score", 3, np.inf), *BASE], "score is inf"),
    "label outside 0/1": (lambda d, f: ["evaluate", _edit(f, "label", 2, 2), *BASE], "--pos-label"),
    "unpaired columns": (lambda d, f: ["evaluate", f, "--y-true", "label", "--y-true", "sex", "--y-score", "score", "--attr", "sex"], "pair them"),
    "duplicate ids": (lambda d, f: ["evaluate", f, "--meta", _dup_meta(d, f), *BASE], "duplicate id 's0'"),
    "meta ids do not match": (lambda d, f: ["evaluate", f, "--meta", _other_meta(d, f), *BASE], "none of its 'sample_id' values match"),
    "meta ids missing": (lambda d, f: ["evaluate", f, "--meta", _partial_meta(d, f), *BASE], "have no row in it"),
    "one class": (lambda d, f: ["evaluate", _edit(f, "label", slice(None), 0), *BASE], "every sample has label 0"),
    "no two valid groups": (lambda d, f: ["evaluate", f, "--y-true", "label", "--y-score", "score", "--attr", "const"], "no attribute has two valid groups"),
    "unknown metric": (lambda d, f: ["evaluate", f, *BASE, "--metric", "auc_gapp"], "unknown metric 'auc_gapp'"),
    "unknown profile": (lambda d, f: ["evaluate", f, *BASE, "--profile", "fairmedfn"], "unknown profile 'fairmedfn'"),
    "unknown threshold": (lambda d, f: ["evaluate", f, *BASE, "--threshold", "best_f2@val"], "unknown threshold policy"),
    "unparseable bins": (lambda d, f: ["evaluate", f, *BASE, "--attr", "age", "--bins", "age=sixty"], "--bins 'age=sixty'"),
    "bins not increasing": (lambda d, f: ["evaluate", f, *BASE, "--attr", "age", "--bins", "age=60,40"], "strictly increasing"),
}  # fmt: skip


def _edit(path, column, row, value):
    frame = pd.read_csv(path)
    frame.loc[frame.index[row] if not isinstance(row, slice) else row, column] = value
    frame.to_csv(path, index=False)
    return path


def _dup_meta(d, f):
    meta = pd.read_csv(f)[["sample_id", "age"]]
    pd.concat([meta, meta.iloc[:1]]).to_csv(d / "dup.csv", index=False)
    return d / "dup.csv"


def _other_meta(d, f):
    pd.DataFrame({"sample_id": ["x1", "x2"], "age": [1, 2]}).to_csv(d / "other.csv", index=False)
    return d / "other.csv"


def _partial_meta(d, f):
    pd.read_csv(f)[["sample_id", "age"]].iloc[10:].to_csv(d / "partial.csv", index=False)
    return d / "partial.csv"


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_exits_2_with_one_clear_line_and_no_output(case, run, preds, tmp_path):
    path, frame = preds
    frame["const"] = "x"
    frame.drop(columns=["age"]).assign(age=frame.age).to_csv(path, index=False)
    build, expected = BAD_CASES[case]
    out = tmp_path / "out" / "report.json"
    args = build(tmp_path, path) + ["--format", "json", "--out", out]
    if case == "unpaired columns":
        args = build(tmp_path, path) + ["--out", out]
    result = run(*args)
    assert result.code == 2, (case, result.out, result.err)
    assert "Traceback" not in result.err
    lines = [line for line in result.err.strip().splitlines() if line]
    assert len(lines) == 1, result.err
    assert expected in lines[0], lines[0]
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


def test_a_long_prediction_table_with_splits(run, preds, tmp_path):
    """fairfm's own PredictionTable: one row per (sample, task), val rows choose the threshold for test rows."""
    path, frame = preds
    rows = []
    for task, flip in (("effusion", False), ("edema", True)):
        part = frame.assign(task=task, y_true=(1 - frame.label) if flip else frame.label,
                            y_score=(1 - frame.score) if flip else frame.score)  # fmt: skip
        part["split"] = np.where(np.arange(len(frame)) < 150, "val", "test")
        rows.append(part)
    long = pd.concat(rows).sample(frac=1, random_state=1)
    long.drop(columns=["sex"]).to_parquet(tmp_path / "predictions.parquet")
    # one row per sample, joined many-to-one; named as in a SampleTable: --attr sex finds group_sex
    frame[["sample_id", "sex"]].rename(columns={"sex": "group_sex"}).to_csv(tmp_path / "meta.csv", index=False)
    out = tmp_path / "r.json"
    result = run("evaluate", tmp_path / "predictions.parquet", "--meta", tmp_path / "meta.csv", "--y-true", "y_true",
                 "--y-score", "y_score", "--attr", "sex", "--task-column", "task", "--split-column", "split",
                 "--bootstrap", "0", "--format", "json", "--out", out)  # fmt: skip
    assert result.code == 0, result.err
    doc = json.loads(out.read_text())
    assert set(doc["tasks"]) == {"effusion", "edema"}
    test = frame.iloc[150:]
    effusion = doc["tasks"]["effusion"]
    assert effusion["overall"]["n"] == len(test)
    assert effusion["overall"]["auc"] == pytest.approx(roc_auc_score(test.label, test.score))
    assert effusion["threshold"]["policy"] == "best_f1@val"
    assert set(effusion["attributes"]) == {"sex"}
    from fairfm.metrics.thresholds import best_f1_threshold

    val = frame.iloc[:150]
    assert effusion["threshold"]["value"] == pytest.approx(best_f1_threshold(val.label.to_numpy(), val.score.to_numpy()))
    edema_threshold = _sklearn_best_f1(1 - val.label.to_numpy(), 1 - val.score.to_numpy())  # every task, by name
    assert doc["tasks"]["edema"]["threshold"]["value"] == pytest.approx(edema_threshold)


def _sklearn_best_f1(y, p):
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(y, p)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))[:-1]
    return thresholds[np.flatnonzero(np.isclose(f1, f1.max(), rtol=0, atol=1e-12)).max()]


def _group_gap(y, p, g):
    aucs = [roc_auc_score(y[g == k], p[g == k]) for k in np.unique(g)]
    return max(aucs) - min(aucs)


def test_long_format_tasks_with_other_samples_and_order_keep_thresholds_macro_and_bh(run, tmp_path):
    """CheXpert-like: task b is unlabelled for some samples (no row), and the val rows list the tasks in the other
    order. Each task's threshold comes from its own val rows; macro metrics and BH run across both tasks."""
    from scipy.stats import false_discovery_control

    rng = np.random.default_rng(3)
    rows = []
    for split, n in (("test", 300), ("val", 200)):
        for task in (("a", "b") if split == "test" else ("b", "a")):
            strength = 0.25 if task == "a" else 0.5
            for i in range(n):
                if task == "b" and i % 4 == 0:
                    continue  # task b unknown for this sample: no row
                y = int(rng.random() < (0.3 if task == "a" else 0.45))
                sex = "F" if i % 2 else "M"
                boost = strength * y * (1.6 if (sex == "F" and task == "b") else 1.0)
                rows.append({"sample_id": f"{split}{i}", "task": task, "split": split, "y_true": y,
                             "y_score": round(float(np.clip(rng.random() * 0.7 + boost, 0, 1)), 3), "sex": sex})
    long = pd.DataFrame(rows)
    long.to_csv(tmp_path / "long.csv", index=False)
    out = tmp_path / "r.json"
    result = run("evaluate", tmp_path / "long.csv", "--y-true", "y_true", "--y-score", "y_score", "--attr", "sex",
                 "--task-column", "task", "--split-column", "split", "--bootstrap", "200", "--format", "json",
                 "--out", out)  # fmt: skip
    assert result.code == 0, result.err
    doc = json.loads(out.read_text())
    gaps, p_values = {}, {}
    for task in ("a", "b"):
        rows_t = long[long.task == task]
        test, val = rows_t[rows_t.split == "test"], rows_t[rows_t.split == "val"]
        entry = doc["tasks"][task]
        assert entry["threshold"]["value"] == pytest.approx(_sklearn_best_f1(val.y_true.to_numpy(), val.y_score.to_numpy()))
        assert entry["overall"]["n"] == len(test)
        assert entry["overall"]["n_unknown_label"] == (75 if task == "b" else 0)
        gaps[task] = _group_gap(test.y_true.to_numpy(), test.y_score.to_numpy(), test.sex.to_numpy())
        assert entry["attributes"]["sex"]["summary"]["auc_gap"] == pytest.approx(gaps[task])
        p_values[task] = entry["attributes"]["sex"]["summary"]["auc_gap_p"]
    assert doc["macro"]["sex"]["macro_auc_gap"] == pytest.approx(np.mean(list(gaps.values())))
    q = false_discovery_control([p_values["a"], p_values["b"]])
    assert [doc["tasks"][t]["attributes"]["sex"]["summary"]["auc_gap_q"] for t in ("a", "b")] == pytest.approx(q)
    assert p_values["a"] != p_values["b"]  # so that BH across tasks differs from BH per task (q = p)


def test_a_task_missing_from_the_val_rows_is_named(run, preds, tmp_path):
    path, frame = preds
    long = pd.concat([frame.assign(task="a", split="test"), frame.assign(task="b", split="test"),
                      frame.assign(task="a", split="val", sample_id=frame.sample_id + "v")])  # fmt: skip
    long.to_csv(tmp_path / "long.csv", index=False)
    result = run("evaluate", tmp_path / "long.csv", "--y-true", "label", "--y-score", "score", "--attr", "sex",
                 "--task-column", "task", "--split-column", "split", "--bootstrap", "0")  # fmt: skip
    assert result.code == 2 and "no task 'b' (their tasks: a)" in result.err, result.err


@pytest.mark.parametrize("policy", ["ignore", "ones", "zeros", None])
def test_wide_multilabel_csv_with_blank_and_uncertain_labels(run, tmp_path, policy):
    """A CheXpert-style export: blank where a finding was not labelled, -1 where it was uncertain."""
    rng = np.random.default_rng(5)
    n = 400
    findings = ["edema", "effusion", "cardiomegaly"]
    frame = pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "sex": rng.choice(["F", "M"], n)})
    for k, f in enumerate(findings):
        y = (rng.random(n) < 0.35).astype(float)
        frame[f"p_{f}"] = np.clip(rng.random(n) * 0.7 + 0.3 * y, 0, 1).round(4)
        y[rng.random(n) < 0.1 + 0.05 * k] = np.nan
        y[rng.random(n) < 0.08] = -1
        frame[f] = y
    frame.loc[3, "p_edema"] = np.nan  # a blank score is allowed where the label is blank too
    frame.loc[3, "edema"] = np.nan
    frame.to_csv(tmp_path / "wide.csv", index=False)
    args = [a for f in findings for a in ("--y-true", f, "--y-score", f"p_{f}")]
    extra = [] if policy is None else ["--uncertain", policy]
    out = tmp_path / "r.json"
    result = run("evaluate", tmp_path / "wide.csv", *args, "--attr", "sex", "--bootstrap", "20", *extra,
                 "--format", "json", "--out", out)  # fmt: skip
    assert result.code == 0, result.err
    doc = json.loads(out.read_text())
    used_policy = policy or "ignore"
    assert doc["labels"]["uncertain"] == used_policy
    aucs = []
    for f in findings:
        y = frame[f].to_numpy()
        if used_policy == "ones":
            y = np.where(y == -1, 1, y)
        elif used_policy == "zeros":
            y = np.where(y == -1, 0, y)
        keep = np.isfinite(y) & (y != -1)
        entry = doc["tasks"][f]["overall"]
        assert entry["n"] == keep.sum()
        assert entry["n_unknown_label"] == frame[f].isna().sum()
        assert entry["n_uncertain_label"] == (frame[f] == -1).sum()
        auc = roc_auc_score(y[keep], frame[f"p_{f}"].to_numpy()[keep])
        assert entry["auc"] == pytest.approx(auc)
        aucs.append(auc)
        g = frame.sex.to_numpy()[keep]
        gap = _group_gap(y[keep], frame[f"p_{f}"].to_numpy()[keep], g)
        assert doc["tasks"][f]["attributes"]["sex"]["summary"]["auc_gap"] == pytest.approx(gap)
    assert doc["macro"]["__all__"]["macro_auc"] == pytest.approx(np.mean(aucs))
    assert all("auc_gap_q" in doc["tasks"][f]["attributes"]["sex"]["summary"] for f in findings)
    csv = run("evaluate", tmp_path / "wide.csv", *args, "--attr", "sex", "--bootstrap", "0", *extra, "--format", "csv")
    table = pd.read_csv(__import__("io").StringIO(csv.out))
    counts = table[(table.metric == "n_uncertain_label")].set_index("task")
    assert counts.loc["edema", "value"] == (frame.edema == -1).sum() and used_policy in counts.loc["edema", "note"]


def test_an_unknown_uncertain_policy_is_refused(run, preds):
    path, _ = preds
    result = run("evaluate", path, *BASE, "--uncertain", "maybe")
    assert result.code == 2 and "unknown --uncertain 'maybe'; choose one of: ignore, ones, zeros" in result.err


def test_site_column_averages_the_fairfedmed_profile_over_clients(run, preds, tmp_path):
    path, frame = preds
    frame["hospital"] = np.where(np.arange(len(frame)) % 3 == 0, "north", "south")
    frame.to_csv(path, index=False)
    out = tmp_path / "r.json"
    result = run("evaluate", path, "--y-true", "label", "--y-score", "score", "--attr", "sex", "--profile",
                 "fairfedmed", "--site-column", "hospital", "--bootstrap", "0", "--format", "json", "--out", out)  # fmt: skip
    assert result.code == 0, result.err
    doc = json.loads(out.read_text())
    expected = np.mean([roc_auc_score(frame.label[frame.hospital == s], frame.score[frame.hospital == s])
                        for s in ("north", "south")])  # fmt: skip
    assert doc["overall"]["auc"] == pytest.approx(expected)
    assert doc["clients"]["sites"] == ["north", "south"]
    refused = run("evaluate", path, "--y-true", "label", "--y-score", "score", "--attr", "sex", "--site-column",
                  "hospital")  # fmt: skip
    assert refused.code == 2 and "--site-column hospital: sites are averaged over by --profile fairfedmed" in refused.err
    table = run("evaluate", path, "--y-true", "label", "--y-score", "score", "--attr", "sex", "--profile",
                "fairfedmed", "--site-column", "hospital", "--bootstrap", "0")  # fmt: skip
    assert table.code == 0 and "client-averaged" in table.out
