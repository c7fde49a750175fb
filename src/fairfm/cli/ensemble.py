"""``fairfm ensemble RUN… [--name NAME] [--rule mean]``: average member runs' probabilities into a run of its own."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from fairfm.cli import app


@app.command("ensemble")
def ensemble_command(
    runs: List[str] = typer.Argument(..., metavar="RUN...", help="Member run ids (or prefixes), two or more."),
    name: Optional[str] = typer.Option(None, "--name", help="A label for the ensemble (kept in meta.json)."),
    rule: str = typer.Option("mean", "--rule", help="How member probabilities combine: mean."),
    seed: Optional[int] = typer.Option(
        None, "--seed", help="Bootstrap seed of the evaluation (default: the members', which must agree; give it for "
                             "an ensemble of seeds)."),
    store_dir: Optional[Path] = typer.Option(
        None, "--store", help="Results store folder (default: $FAIRFM_STORE, else ./fairfm_runs)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Average the members' probabilities (they must have scored the same samples), evaluate the result with the
    members' threshold policy and bootstrap, and store it as a run of its own (found again, not recomputed)."""
    from fairfm.cli import make_console
    from fairfm.ensemble import ensemble
    from fairfm.results import Store
    from fairfm.results.summary import key_metrics

    store = Store(store_dir)
    record, computed = ensemble(store, runs, rule=rule, name=name, seed=seed, progress=not quiet)
    console = make_console(highlight=False, soft_wrap=True)
    state = "computed" if computed else "found in the store"
    label = f" ({record.meta.get('name')})" if record.meta.get("name") else ""
    console.print(f"run [bold]{record.run_id}[/bold]: {state} — ensemble{label} of {len(record.spec['members'])} "
                  f"runs, rule {record.spec['rule']}")  # fmt: skip
    keys = key_metrics(record)
    if keys.get("utility") is not None:
        gap = keys.get("gap")
        console.print(f"{keys['task']}: AUC {keys['utility']:.3f}"
                      + (f", AUC gap {gap:.3f} ({keys['attribute']})" if gap is not None else ""))
    console.print(f"[dim]stored in {record.path}[/dim]", soft_wrap=True)
