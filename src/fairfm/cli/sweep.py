"""``fairfm sweep SWEEP.yaml``: every cell of a grid of runs, in-process, on a local process pool or on Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from fairfm.cli import app


@app.command("sweep")
def sweep_command(
    sweep_file: Path = typer.Argument(..., metavar="SWEEP.yaml", help="Sweep spec (YAML); see fairfm.spec.SweepSpec."),
    store_dir: Optional[Path] = typer.Option(
        None, "--store", help="Results store folder (default: $FAIRFM_STORE, else ./fairfm_runs)."
    ),
    executor: str = typer.Option("local", "--executor", "-x", help="local (in-process), pool, or ray."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help="Parallel runs (pool / ray)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (ray only; default local)."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first failed run."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="List the cells and whether each is stored; run nothing (named datasets are prepared)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    recompute_stale: bool = typer.Option(
        False, "--recompute-stale",
        help="Compute again the cells whose run is stored only by a fairfm with older results versions (by default "
             "they are shown as 'stale' and not recomputed); the stale runs stay in the store.",
    ),
) -> None:
    """Run every cell of a sweep that is not stored yet (finished runs are found, never recomputed) and print one
    line per run with its AUC and AUC gap (Dice for segmentation). A run stored by a fairfm whose results versions
    were older is shown as 'stale' (--recompute-stale computes it again). Exit 1 if a run failed, 2 if the failures
    were all bad input."""
    from rich import box
    from rich.table import Table

    from fairfm.cli import make_console
    from fairfm.results import Store
    from fairfm.spec import SweepSpec
    from fairfm.sweep import SweepOutcome, plan, run_sweep

    sweep = SweepSpec.from_yaml(sweep_file)
    store = Store(store_dir)
    console = make_console(highlight=False)
    axes = list(sweep.grid)

    def cell(outcome: SweepOutcome) -> list[str]:
        spec = outcome.spec
        values = []
        for axis in axes:
            value = spec.get("hparams", {}).get(axis.split(".", 1)[1]) if axis.startswith("hparams.") else spec.get(axis)
            values.append(str(value))
        return [*values, str(spec.get("seed"))]

    if dry_run:
        found, pending = plan(sweep, store, recompute_stale=recompute_stale)
        table = Table(title=f"{len(found) + len(pending)} run(s); {len(found)} already stored", box=box.SIMPLE_HEAD)
        for column in ("run", *axes, "seed", "state"):
            table.add_column(column)
        for outcome in sorted([*found, *(SweepOutcome(p.index, p.run_id, "to run", p.spec) for p in pending)],
                              key=lambda o: o.index):  # fmt: skip
            table.add_row(outcome.run_id, *cell(outcome), outcome.status)
        console.print(table)
        return

    def report_failure(outcome: SweepOutcome) -> None:
        if outcome.status == "failed":
            console.print(f"[red]failed[/red] cell {outcome.index} ({', '.join(cell(outcome))}): {outcome.error}",
                          markup=True)  # fmt: skip

    outcomes = run_sweep(sweep, store, executor=executor, workers=workers, address=address,
                         keep_going=not fail_fast, progress=not quiet, on_outcome=report_failure,
                         recompute_stale=recompute_stale)  # fmt: skip
    from fairfm.results.summary import key_metrics

    table = Table(title=f"sweep {sweep_file.name}: {len(outcomes)} run(s) in {store.path}", box=box.SIMPLE_HEAD,
                  caption="utility of the first task (AUC, or Dice for segmentation); gap over the first attribute "
                          "with its 95% bootstrap interval")  # fmt: skip
    for column in ("run", *axes, "seed", "state", "utility", "gap [95% CI]"):
        table.add_column(column, overflow="fold")
    for outcome in outcomes:
        utility = gap = "–"
        if outcome.status != "failed":
            keys = key_metrics(store.load(outcome.run_id))
            if keys.get("utility") is not None:
                utility = f"{keys['utility']:.3f}" + (" dice" if keys["utility_metric"] == "mean_dice" else "")
            if keys.get("gap") is not None:
                low, high = keys.get("gap_ci") or (float("nan"), float("nan"))
                gap = f"{keys['gap']:.3f} [{low:.3f}, {high:.3f}] {keys['attribute']}"
        table.add_row(outcome.run_id or "–", *cell(outcome), outcome.status, utility, gap)
    console.print(table)
    stale = sum(o.status == "stale" for o in outcomes)
    if stale:
        console.print(f"[yellow]{stale} stale run(s)[/yellow]: stored by a fairfm whose results versions were older, "
                      "so their numbers may differ from this version's; --recompute-stale computes them again")
    failures = [o for o in outcomes if o.status == "failed"]
    if failures:
        console.print(f"{len(failures)} of {len(outcomes)} run(s) failed; the others are stored")
        raise typer.Exit(2 if all(o.input_error for o in failures) else 1)
