"""``fairfm evaluate``: score predictions made anywhere, per group, with intervals."""

from __future__ import annotations

import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from fairfm.cli import app, err_console
from fairfm.errors import InputError


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"
    md = "md"
    html = "html"


@app.command("evaluate")
def evaluate_command(
    pred_file: Path = typer.Argument(..., help="Predictions: CSV or Parquet, one row per sample."),
    y_true: list[str] = typer.Option([], "--y-true", help="Label column (repeat, paired with --y-score, for multi-label)."),
    y_score: list[str] = typer.Option([], "--y-score", help="Score column: probability of the positive class."),
    attr: list[str] = typer.Option([], "--attr", help="Sensitive-attribute column (repeatable)."),
    meta: Optional[Path] = typer.Option(None, "--meta", help="Demographics table joined on --on."),
    on: str = typer.Option("sample_id", "--on", help="Id column shared by PRED_FILE and --meta."),
    bins: list[str] = typer.Option([], "--bins", help="Bin a continuous attribute: age=60 or age=40,60,80."),
    intersect: list[str] = typer.Option([], "--intersect", help="Intersectional attribute, e.g. sex,race."),
    threshold: Optional[str] = typer.Option(None, "--threshold", help="Threshold policy (default best_f1@val with --val-file, else 0.5)."),
    val_file: Optional[Path] = typer.Option(None, "--val-file", help="Validation predictions with the same columns."),
    bootstrap: Optional[int] = typer.Option(None, "--bootstrap", help="Bootstrap resamples (default 1000; 0 = none)."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed (recorded in the output)."),
    profile: Optional[str] = typer.Option(None, "--profile", help="Reproduce a reference: fairmedfm, medfair, fairfedmed, glocker, khan."),
    stratify: Optional[str] = typer.Option(None, "--stratify", help="Resample within group (default), group_class or class."),
    pos_label: Optional[str] = typer.Option(None, "--pos-label", help="Label value of the positive class (default 1)."),
    min_group_size: int = typer.Option(1, "--min-group-size", help="Groups smaller than this get no metrics."),
    metric: list[str] = typer.Option([], "--metric", help="Show only these summary metrics (repeatable)."),
    dice: Optional[str] = typer.Option(None, "--dice", help="Per-sample Dice column (segmentation)."),
    iou: Optional[str] = typer.Option(None, "--iou", help="Per-sample IoU column (segmentation)."),
    split_column: Optional[str] = typer.Option(None, "--split-column", help="Evaluate --eval-split rows; --val-split rows choose the threshold."),
    eval_split: str = typer.Option("test", "--eval-split", help="Split value to evaluate (with --split-column)."),
    val_split: str = typer.Option("val", "--val-split", help="Split value used as validation (with --split-column)."),
    task_column: Optional[str] = typer.Option(None, "--task-column", help="Long format (a PredictionTable): one row per sample and task."),
    uncertain: str = typer.Option("ignore", "--uncertain", help="Labels of -1 (uncertain, CheXpert): ignore (left out, default), ones or zeros. Blank labels are always left out of that task."),
    site_column: Optional[str] = typer.Option(None, "--site-column", help="Site (client) of each row: with --profile fairfedmed every metric is computed per site and averaged."),
    output_format: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table, json, csv (MetricTable), md or html (a self-contained report with per-group curves; needs --out)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write here (atomically) instead of standard output."),
    ci_method: Optional[str] = typer.Option(None, "--ci-method", help="Gap and worst-group intervals: simultaneous (default) or percentile (the profiles' default)."),
) -> None:
    """Per-group utility and fairness metrics with bootstrap intervals for a file of predictions."""
    from fairfm.metrics import evaluate_frame  # imported here: the CLI starts without the metric engine
    from fairfm.metrics.report import FairnessWarning
    from fairfm.tableio import check_output_file

    if output_format is OutputFormat.html:
        if out is None:
            raise InputError("--format html writes a file: give --out report.html")
        import fairfm.report.figures  # noqa: F401  (matplotlib, jinja2: a missing 'report' extra fails before the
        import fairfm.report.html  # noqa: F401  bootstrap, in one line)
    if out is not None:
        check_output_file(out)  # before the bootstrap: an unwritable --out must not cost the computation
    if bootstrap != 0:
        from fairfm.metrics._engine import preload_compiled_kernel

        preload_compiled_kernel()  # loads while the file is read

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FairnessWarning)
        report = evaluate_frame(
            pred_file, y_true=y_true, y_score=y_score, attributes=attr, meta=meta, on=on, bins=bins,
            intersect=intersect, threshold=threshold, val_file=val_file, bootstrap=bootstrap, seed=seed,
            profile=profile, stratify=stratify, pos_label=pos_label, min_group_size=min_group_size,
            dice=dice, iou=iou, metrics=metric, split_column=split_column, eval_split=eval_split,
            val_split=val_split, task_column=task_column, uncertain=uncertain, site_column=site_column,
            progress=True, ci_method=ci_method, keep_inputs=output_format is OutputFormat.html,
        )  # fmt: skip
    for warning in caught:
        if issubclass(warning.category, FairnessWarning):
            err_console.print(f"warning: {warning.message}", markup=False)
    provenance: list[str] = []
    if output_format is OutputFormat.html:
        from fairfm.tableio import sha256_file

        for what, path in (("predictions", pred_file), ("demographics (--meta)", meta), ("validation", val_file)):
            if path is not None and Path(path).is_file():
                provenance.append(f"{what}: {Path(path).name} sha256 {sha256_file(path)}")
        options = {"y_true": y_true, "y_score": y_score, "attributes": attr, "bins": bins, "intersect": intersect,
                   "threshold": threshold, "profile": profile, "stratify": stratify, "uncertain": uncertain,
                   "split_column": split_column, "task_column": task_column, "min_group_size": min_group_size,
                   "ci_method": ci_method}  # fmt: skip
        provenance.append("options: " + ", ".join(f"{k}={v}" for k, v in options.items() if v not in (None, [], ())))
    _emit(report, output_format, out, metric, source=pred_file.name, provenance=provenance)


def _emit(report, output_format: OutputFormat, out: Path | None, metrics: list[str], *, source: str = "",
          provenance: list[str] | None = None) -> None:  # fmt: skip
    from fairfm.cli import make_console
    from fairfm.report.tables import markdown, rich_tables
    from fairfm.tableio import atomic_path, write_text_atomic

    if output_format is OutputFormat.table:
        if out is None:
            make_console(highlight=False).print(rich_tables(report))
            return
        with atomic_path(out) as tmp, tmp.open("w", encoding="utf-8") as handle:
            Console(file=handle, width=160, highlight=False, color_system=None).print(rich_tables(report))
        return
    if output_format is OutputFormat.html:
        from fairfm.report.build import build_evaluation_report
        from fairfm.report.output import write_report

        with err_console.status("drawing the report …"):
            write_report(build_evaluation_report(report, report.inputs, source=source, provenance=provenance or []),
                         out, "html")  # fmt: skip
        err_console.print(f"report written to {out}", markup=False)
        return
    if output_format is OutputFormat.json:
        text = report.to_json() + "\n"
    elif output_format is OutputFormat.md:
        text = markdown(report)
    else:
        text = report.to_metric_table().to_csv(index=False)
    if out is None:
        sys.stdout.write(text)
    else:
        write_text_atomic(out, text)
