"""``fairfm report [RUN…] [--where …]``: leaderboards, trade-off plots, curves and provenance of stored runs, as one
self-contained HTML file (or Markdown, LaTeX, CSV) — a thin layer over :mod:`fairfm.report.build`."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from fairfm.cli import app, err_console


class ReportFormat(str, Enum):
    html = "html"
    md = "md"
    latex = "latex"
    csv = "csv"


#: --out suffix → format, when --format is not given.
SUFFIX_FORMATS = {".html": "html", ".htm": "html", ".md": "md", ".tex": "latex", ".csv": "csv"}


def resolve_format(output_format: Optional[ReportFormat], out: Optional[Path]) -> str:
    if output_format is not None:
        return output_format.value
    if out is not None and out.suffix.lower() in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[out.suffix.lower()]
    return "html"


@app.command("report")
def report_command(
    runs: Optional[List[str]] = typer.Argument(None, metavar="[RUN]...", help="Run ids or prefixes (default: all)."),
    where: Optional[List[str]] = typer.Option(
        None, "--where", metavar="COLUMN=VALUE",
        help="Keep runs whose catalogue column matches (repeatable, all must hold; a,b = either; 'none' = missing): "
             "dataset, model, usage, method, seed, … ('fairfm runs list --json').",
    ),
    store_dir: Optional[Path] = typer.Option(None, "--store", help="Results store folder (default: $FAIRFM_STORE, "
                                                                   "else ./fairfm_runs)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write here (default: fairfm_report.html for html; "
                                                           "standard output for md, latex, csv)."),
    output_format: Optional[ReportFormat] = typer.Option(None, "--format", help="html (default), md, latex or csv "
                                                                                "(the leaderboards)."),
    task: Optional[List[str]] = typer.Option(None, "--task", help="Only these tasks (repeatable)."),
    attribute: Optional[List[str]] = typer.Option(None, "--attr", help="Only these attributes (repeatable)."),
    curves: int = typer.Option(6, "--curves", min=0, help="Configurations that get ROC, calibration and threshold "
                                                          "figures (0 = none)."),
    title: str = typer.Option("fairfm report", "--title", help="The report's title."),
) -> None:
    """Leaderboard (model × usage × method, mean ± std over seeds), utility–fairness trade-off with its Pareto
    front, fairness scores, per-group relative performance, a forest plot of every gap, per-group ROC /
    calibration / threshold curves, segmentation distributions, stored embedding analyses and the provenance of
    every number — read from the results store, nothing re-predicted."""
    from fairfm.report.build import ReportOptions, build_report
    from fairfm.report.output import write_report
    from fairfm.results import Store
    from fairfm.results.selection import parse_where, resolve_runs
    from fairfm.tableio import check_output_file

    fmt = resolve_format(output_format, out)
    if out is None and fmt == "html":
        out = Path("fairfm_report.html")
    if out is not None:
        check_output_file(out)  # before any figure is drawn
    store = Store(store_dir)
    records = resolve_runs(store, list(runs or []), parse_where(where), all_when_empty=True, combine=True)
    options = ReportOptions(title=title, tasks=list(task or []) or None, attributes=list(attribute or []) or None,
                            curves=curves)  # fmt: skip
    with err_console.status(f"building the report of {len(records)} run(s) …"):
        built = build_report(store, records, options)
        written = write_report(built, out, fmt)
    if written is not None:
        err_console.print(f"report of {len(records)} run(s) written to {written}", markup=False)
