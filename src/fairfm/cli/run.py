"""``fairfm run SPEC.yaml``: one run (dataset × model × usage) from a spec to stored predictions and metrics."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fairfm.cli import app


@app.command("run")
def run_command(
    spec_file: Path = typer.Argument(..., metavar="SPEC.yaml", help="Run spec (YAML); see fairfm.spec.RunSpec."),
    assignments: Optional[List[str]] = typer.Option(
        None, "--set", metavar="FIELD=VALUE",
        help="Override a spec field (repeatable), e.g. --set hparams.lr=1e-3 --set seed=2 --set attributes=sex,race.",
    ),
    store_dir: Optional[Path] = typer.Option(
        None, "--store", help="Results store folder (default: $FAIRFM_STORE, else ./fairfm_runs)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Run a spec, or find its stored result, and print a per-attribute summary (AUC per group, AUC gap)."""
    from fairfm.cli import make_console
    from fairfm.report.tables import rich_tables
    from fairfm.results import Store
    from fairfm.runner import execute
    from fairfm.spec import RunSpec, parse_assignments

    spec = RunSpec.load(spec_file, parse_assignments(assignments or []))
    store = Store(store_dir)
    console = make_console(highlight=False)
    result = execute(spec, store, progress=not quiet, want_report=True)
    record = result.record
    state = "computed" if result.computed else "found in the store (not recomputed)"
    console.print(f"run [bold]{record.run_id}[/bold]: {state} — {spec.model} · {spec.usage} · seed {spec.seed}",
                  markup=True)  # fmt: skip
    console.print(f"[dim]stored in {record.path}[/dim]")
    report = result.report
    if report is not None:
        report.restrict(["auc_gap"])
        console.print(rich_tables(report))
