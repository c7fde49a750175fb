"""``fairfm runs``: list the finished runs of a store and show one (a thin layer over ``fairfm.results``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich import box
from rich.table import Table

from fairfm.cli import make_console

app = typer.Typer(help="Finished runs in the results store: list them, show one, aggregate over seeds.",
                  no_args_is_help=True)
console = make_console(highlight=False, soft_wrap=True)

_STORE_HELP = "Results store folder (default: $FAIRFM_STORE, else ./fairfm_runs)."
#: What ``runs show`` prints without ``--all``.
_SHOWN_OVERALL = ("auc", "acc", "tpr", "fpr", "ece", "mean_dice", "mean_iou")
#: The per-group metric behind each overall utility metric.
_GROUP_METRIC = {"auc": "auc", "mean_dice": "dice"}
_AGGREGATED = ("auc", "auc_gap", "worst_auc", "eod", "mean_dice", "dice_gap")
_SHOWN_SUMMARY = ("auc_gap", "worst_auc", "es_auc", "eod", "dpd", "ece_gap", "dice_gap", "worst_dice", "es_dice")


def _store(path: Optional[Path]):
    from fairfm.results import Store

    return Store(path)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "–" if math.isnan(number) else f"{number:.{digits}f}"


def _interval(row: Any) -> str:
    low, high = row.get("ci_low"), row.get("ci_high")
    if low is None or high is None or any(isinstance(v, float) and math.isnan(v) for v in (low, high)):
        return ""
    return f"[{_fmt(low)}, {_fmt(high)}]"


def _short_time(created: str) -> str:
    # ISO 8601 with milliseconds and offset -> "MM-DD HH:MM" (the full stamp is in --json and 'runs show')
    return created[5:16].replace("T", " ")


@app.command("list")
def list_command(
    store: Optional[Path] = typer.Option(None, "--store", help=_STORE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Every finished run: id, dataset, model, usage, method, seed, when, AUC and the AUC gap of the first attribute.
    Runs stored by a fairfm whose results versions were older (their numbers may differ) are marked stale."""
    from fairfm.results.summary import key_metrics

    from fairfm.cli import err_console

    results = _store(store)
    records = results.list()
    for folder, reason in results.damaged():  # on stderr: --json output stays parseable
        err_console.print(f"warning: damaged run folder {folder} ({reason}): not listed; it is recomputed the next "
                          "time its run is asked for, or delete that folder", markup=False)  # fmt: skip
    rows = []
    for record in records:
        row = results.runs_frame([record]).iloc[0]
        keys = key_metrics(record)
        rows.append({
            "run_id": record.run_id, "dataset": row["dataset"], "model": row["model"], "usage": row["usage"],
            "method": row["method"], "attribute_at_test": _attribute_at_test(record), "seed": int(row["seed"]),
            "created": record.created, "stale": record.stale, **keys,
        })  # fmt: skip
    if as_json:
        print(json.dumps(rows, indent=2, ensure_ascii=False, default=str))
        return
    if not rows:
        console.print(f"no runs in {results.path}")
        return
    # A borderless table: the list must stay readable in an 80-column terminal.
    stale = sum(row["stale"] for row in rows)
    caption = "AUC (Dice for segmentation) of the first task; gap: its gap over the first attribute"
    if any(row["attribute_at_test"] for row in rows):
        caption += "; (attr@test): the method reads the sensitive attribute to predict (attribute-aware)"
    if stale:
        caption += (f"; {stale} STALE run(s): stored by a fairfm whose results versions were older, so their numbers "
                    "may differ from this version's (fairfm run / sweep --recompute-stale computes them again)")
    table = Table(title=f"{len(rows)} run(s) in {results.path}", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True, caption=caption)  # fmt: skip
    table.add_column("run", no_wrap=True, min_width=16)
    for column in ("dataset", "model", "usage", "method"):
        table.add_column(column, overflow="fold")
    table.add_column("seed", justify="right")
    with_time = console.width >= 100  # narrow terminals: the time is left to --json and 'runs show'
    if with_time:
        table.add_column("created", no_wrap=True)
    table.add_column("AUC", no_wrap=True)
    table.add_column("gap", no_wrap=True)
    for row in rows:
        utility = _fmt(row.get("utility")) + (" (dice)" if row.get("utility_metric") == "mean_dice" else "")
        gap = f"{_fmt(row.get('gap'))} {row['attribute']}" if row.get("attribute") else "–"
        cells = [row["run_id"] + (" STALE" if row["stale"] else ""), str(row["dataset"]), str(row["model"]), str(row["usage"]), _method_cell(row),
                 str(row["seed"]), *([_short_time(row["created"])] if with_time else []), utility, gap]  # fmt: skip
        table.add_row(*cells)
    console.print(table)


def _attribute_at_test(record: Any) -> bool:
    """Whether the run's method read the sensitive attribute to predict (meta.json ``method.attribute_at_test``)."""
    return bool(((record.meta or {}).get("method") or {}).get("attribute_at_test"))


def _method_cell(row: dict[str, Any]) -> str:
    mark = " (attr@test)" if row["attribute_at_test"] else ""  # an ensemble of attribute-aware members too
    if not row["method"]:
        return "–" + mark if mark else "–"
    return str(row["method"]) + mark


@app.command("show")
def show_command(
    run: str = typer.Argument(..., help="Run id (or an unambiguous prefix of it)."),
    store: Optional[Path] = typer.Option(None, "--store", help=_STORE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print spec, meta and metrics as JSON."),
    show_all: bool = typer.Option(False, "--all", help="Every metric, not only the key ones."),
) -> None:
    """One run: its spec, versions and timings, and a summary of its metrics with intervals."""
    from fairfm.results.summary import KEY_METRICS

    record = _store(store).load(run)
    metrics = record.metrics
    if as_json:
        doc = {"run_id": record.run_id, "spec": record.spec, "meta": record.meta,
               "metrics": json.loads(metrics.to_json(orient="records"))}  # fmt: skip
        print(json.dumps(doc, indent=2, ensure_ascii=False, default=str))
        return
    spec_table = Table(title=f"run {record.run_id}", show_header=False)
    spec_table.add_column("field", style="bold")
    spec_table.add_column("value", overflow="fold")
    for name, value in record.spec.items():
        if name == "hparams":
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, (list, dict)):
            value = json.dumps(value, ensure_ascii=False)
        spec_table.add_row(name, "–" if value is None else str(value))
    meta = record.meta
    code = meta.get("code") or {}
    method = meta.get("method") or {}
    if method:
        aware = ("yes — predictions read it (attribute-aware)" if method.get("attribute_at_test") else "no")
        spec_table.add_row("method use", f"{method.get('name')} on {method.get('attribute')}; attribute at test "
                           f"time: {aware}")  # fmt: skip
    spec_table.add_row("device", str(meta.get("device", "–")))
    spec_table.add_row("created", str(meta.get("created", "")))
    spec_table.add_row("code", f"fairfm {code.get('fairfm')}" + (f" @ {code['git'][:12]}" if code.get("git") else ""))
    versions = meta.get("results_versions") or {}
    spec_table.add_row("results", (", ".join(f"{k} v{v}" for k, v in versions.items()) or "not recorded")
                       + (" — STALE: older than this fairfm's, numbers may differ" if record.stale else ""))
    data = meta.get("data") or {}
    spec_table.add_row("data", f"{data.get('dataset')} sha256 {str(data.get('sha256'))[:12]}")
    timings = meta.get("timings") or {}
    if timings:
        spec_table.add_row("timings", ", ".join(f"{k} {_fmt(v, 1)} s" for k, v in timings.items()))
    console.print(spec_table)

    overall = metrics[metrics["attribute"] == "__all__"]
    summary = metrics[(metrics["group"] == "__summary__") & ~metrics["metric"].str.endswith(("_p", "_q"))]
    if not show_all:
        overall = overall[overall["metric"].isin(_SHOWN_OVERALL)]
        summary = summary[summary["metric"].isin(_SHOWN_SUMMARY)]
    if not overall.empty:
        table = Table(title="overall")
        for column in ("task", "metric", "value", "95% CI", "n"):
            table.add_column(column)
        for _, row in overall.iterrows():
            table.add_row(str(row["task"]), str(row["metric"]), _fmt(row["value"]), _interval(row), str(row["n"]))
        console.print(table)
    if not summary.empty:
        table = Table(title="fairness gaps")
        for column in ("task", "attribute", "metric", "value", "95% CI", "note"):
            table.add_column(column, overflow="fold")
        for _, row in summary.iterrows():
            table.add_row(str(row["task"]), str(row["attribute"]), str(row["metric"]), _fmt(row["value"]),
                          _interval(row), str(row["note"] or ""))  # fmt: skip
        console.print(table)
    utility = next((u for u, _ in KEY_METRICS if (metrics["metric"] == u).any()), None)
    utility = _GROUP_METRIC.get(utility, utility)
    groups = metrics[~metrics["group"].isin(["__all__", "__summary__"]) & (metrics["metric"] == utility)]
    if not groups.empty:
        table = Table(title=f"{utility} per group")
        for column in ("task", "attribute", "group", "n", utility, "95% CI", "note"):
            table.add_column(column, overflow="fold")
        for _, row in groups.iterrows():
            table.add_row(str(row["task"]), str(row["attribute"]), str(row["group"]), str(row["n"]),
                          _fmt(row["value"]), _interval(row), str(row["note"] or ""))  # fmt: skip
        console.print(table)


@app.command("aggregate")
def aggregate_command(
    store: Optional[Path] = typer.Option(None, "--store", help=_STORE_HELP),
    metric: Optional[List[str]] = typer.Option(None, "--metric", help="Metric(s) to show (repeatable; default: "
                                               "AUC / Dice and the key gaps)."),  # fmt: skip
    attribute: Optional[List[str]] = typer.Option(None, "--attribute", help="Attribute(s) to show (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    over: str = typer.Option("seed", "--over", help="seed: runs that differ only by the training seed (one split); "
                             "split_seed: runs of one release that differ by split seed (and seed)."),  # fmt: skip
) -> None:
    """Mean ± std over seeds of runs that differ only by seed (overall values and fairness gaps); --over split_seed
    aggregates over split seeds instead."""
    results = _store(store)
    _check_known(results, metric, attribute)
    filters: dict[str, Any] = {"metric": list(metric) if metric else list(_AGGREGATED)}
    if attribute:
        filters["attribute"] = ["__all__", *attribute]
    frame = results.aggregate(over=over, **filters)
    frame = frame[frame["group"].isin(["__all__", "__summary__"])]
    if as_json:
        print(frame.to_json(orient="records", force_ascii=False))
        return
    if frame.empty:
        console.print(f"no matching runs in {results.path}")
        return
    over_what = "split seeds" if over == "split_seed" else "seeds"
    key = "split_config_id" if over == "split_seed" else "config_id"
    aware = {(r.meta or {}).get(key) or (r.meta or {}).get("config_id")
             for r in results.list() if _attribute_at_test(r)}  # fmt: skip
    notes = ["STALE: runs stored by a fairfm whose results versions were older (their numbers may differ); "
             "--recompute-stale on fairfm run / sweep computes them again"] if frame["stale"].any() else []
    if aware & set(frame["config_id"]):
        notes.append("(attr@test): the method reads the sensitive attribute to predict (attribute-aware)")
    caption = "; ".join(notes) or None
    table = Table(title=f"mean ± std over {over_what} ({results.path})", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True, caption=caption)  # fmt: skip
    for column in ("dataset", "model", "usage", "method", "task", "attribute"):
        table.add_column(column, overflow="fold")
    for column in ("metric", "mean ± std", "seeds"):
        table.add_column(column, no_wrap=True)
    for _, row in frame.iterrows():
        attr = "–" if row["attribute"] == "__all__" else str(row["attribute"])
        spread = "" if row["n_seeds"] < 2 else f" ± {_fmt(row['std'])}"
        table.add_row(str(row["dataset"]), str(row["model"]), str(row["usage"]),
                      ("–" if row["method"] is None or row["method"] != row["method"] else str(row["method"]))
                      + (" (attr@test)" if row["config_id"] in aware else ""),
                      str(row["task"]), attr, str(row["metric"]), _fmt(row["mean"]) + spread,
                      str(int(row["n_seeds"])) + (" STALE" if row.get("stale") else ""))  # fmt: skip
    console.print(table)


def _check_known(results: Any, metrics: Optional[List[str]], attributes: Optional[List[str]]) -> None:
    """A --metric or --attribute that no stored run has is an error naming it and listing the stored ones (a typo
    must not read as "no matching runs", nor silently drop rows)."""
    import difflib

    from fairfm.errors import InputError

    if not (metrics or attributes):
        return
    stored = results.query("SELECT DISTINCT metric, attribute FROM metrics")
    if stored.empty:
        return  # an empty store says so below
    for flag, asked, known in (("--metric", metrics, stored["metric"]),
                               ("--attribute", attributes, stored["attribute"])):  # fmt: skip
        names = sorted({str(v) for v in known.dropna()} - {"__all__"})
        for value in asked or []:
            if value not in names:
                close = difflib.get_close_matches(value, names, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise InputError(f"{flag} {value!r}: no stored run has it ({hint}stored in {results.path}: "
                                 f"{', '.join(names)})")  # fmt: skip
