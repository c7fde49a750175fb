"""``fairfm compare RUN_A RUN_B``: every metric's paired difference B − A with a bootstrap interval and p-value."""

from __future__ import annotations

import io
from pathlib import Path
from typing import List, Optional

import typer

from fairfm.cli import app

FORMATS = ("table", "json", "csv", "md")


@app.command("compare")
def compare_command(
    run_a: str = typer.Argument(..., metavar="RUN_A", help="The reference run (id or unique prefix)."),
    run_b: str = typer.Argument(..., metavar="RUN_B", help="The run compared with it: differences are B − A."),
    store_dir: Optional[Path] = typer.Option(
        None, "--store", help="Results store folder (default: $FAIRFM_STORE, else ./fairfm_runs)."
    ),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Paired bootstrap resamples."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    metric: Optional[List[str]] = typer.Option(
        None, "--metric", metavar="M",
        help="Only this metric, at every level (repeatable; e.g. auc, auc_gap, eod)."),
    output_format: str = typer.Option("table", "--format", help="table (terminal), json, csv or md."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write to this file (atomically) instead of stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Compare two runs that scored the same test samples: each resample draws one set of samples and both runs'
    metrics are computed on it; B − A gets a percentile interval, a two-sided bootstrap p-value and a
    Benjamini–Hochberg q-value. Each run keeps its own threshold. Runs of different samples are refused."""
    from fairfm.errors import InputError
    from fairfm.report.compare import compare_runs
    from fairfm.results import Store
    from fairfm.tableio import check_output_file, write_text_atomic

    if output_format not in FORMATS:
        raise InputError(f"--format {output_format!r}: choose one of {', '.join(FORMATS)}")
    if out is not None:
        check_output_file(out)
    comparison = compare_runs(Store(store_dir), run_a, run_b, bootstrap=bootstrap, seed=seed,
                              metrics=list(metric) if metric else None, progress=not quiet)  # fmt: skip
    if output_format == "json":
        text = comparison.to_json() + "\n"
    elif output_format == "csv":
        text = comparison.to_csv()
    elif output_format == "md":
        text = comparison.to_markdown()
    else:
        text = None
    if text is not None:
        if out is not None:
            write_text_atomic(out, text)
        else:
            typer.echo(text, nl=False)
        return
    from rich.console import Console

    from fairfm.cli import make_console

    if out is not None:
        buffer = io.StringIO()
        _print_table(Console(file=buffer, width=160, highlight=False, soft_wrap=True), comparison)
        write_text_atomic(out, buffer.getvalue())
    else:
        _print_table(make_console(highlight=False, soft_wrap=True), comparison)


def _print_table(console, comparison) -> None:
    from rich import box
    from rich.table import Table

    table = Table(title=f"B = {comparison.run_b}  vs  A = {comparison.run_a}", box=box.SIMPLE_HEAD,
                  title_justify="left")  # fmt: skip
    for name, justify in (("task", "left"), ("attribute", "left"), ("group", "left"), ("metric", "left"),
                          ("A", "right"), ("B", "right"), ("B − A [95% CI]" if comparison.bootstrap["ci"] == 0.95
                                                           else "B − A [CI]", "right"),
                          ("p", "right"), ("q", "right"), ("", "left")):  # fmt: skip
        table.add_column(name, justify=justify, no_wrap=name.startswith("B −"))
    for row in comparison.key_rows().itertuples(index=False):
        table.add_row(*comparison.cells(row), style="bold" if comparison.cells(row)[-1] else None)
    console.print(table)
    for note in comparison.notes:
        console.print(f"[yellow]⚠ {note}[/yellow]")
    console.print(f"[dim]{comparison.design_line()}; ✱: q < 0.05 (Benjamini–Hochberg over {comparison.n_tests} "
                  "metrics). All rows: --format csv|json; one metric at every level: --metric M[/dim]")
