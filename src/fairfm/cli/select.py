"""``fairfm select RUN… | --where COLUMN=VALUE``: choose one stored run by a rule on validation predictions."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Optional

import typer

from fairfm.cli import app


@app.command("select")
def select_command(
    runs: Optional[List[str]] = typer.Argument(None, metavar="[RUN]...", help="Candidate run ids (or prefixes)."),
    where: Optional[List[str]] = typer.Option(
        None, "--where", metavar="COLUMN=VALUE",
        help="Candidates by catalogue column instead of ids (repeatable, all must hold; 'none' matches a missing "
             "value): dataset, model, usage, method, seed, config_id, … ('fairfm runs list --json').",
    ),
    rule: str = typer.Option("overall_auc", "--rule", help="overall_auc, worst_group_auc, minimax_pareto or dto."),
    attribute: Optional[str] = typer.Option(None, "--attr", help="Sensitive attribute (default: the runs' first)."),
    task: Optional[str] = typer.Option(None, "--task", help="One task (default: the mean over tasks)."),
    store_dir: Optional[Path] = typer.Option(
        None, "--store", help="Results store folder (default: $FAIRFM_STORE, else ./fairfm_runs)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the selection as JSON."),
) -> None:
    """Score every candidate on its VALIDATION predictions (AUC overall and per group), choose one by the rule,
    print the candidates with the chosen one and why, and record the choice in STORE/selections/<id>.json."""
    from rich import box
    from rich.table import Table

    from fairfm.cli import make_console
    from fairfm.results import Store
    from fairfm.results.selection import parse_where
    from fairfm.select import record_selection, select

    store = Store(store_dir)
    selection = select(store, list(runs or []), rule=rule, attribute=attribute, task=task, where=parse_where(where))
    path = record_selection(store, selection)
    if as_json:
        print(json.dumps({**selection.to_dict(), "recorded": str(path)}, indent=2, ensure_ascii=False))
        return
    console = make_console(highlight=False, soft_wrap=True)
    table = Table(title=f"{len(selection.candidates)} candidate(s), rule {rule}, attribute {selection.attribute} "
                  f"(validation)", box=box.SIMPLE_HEAD)  # fmt: skip
    for column in ("", "run", "model · usage · method · seed", "AUC", "worst-group AUC",
                   *(f"AUC {g}" for g in selection.groups), "Pareto", "DTO"):  # fmt: skip
        table.add_column(column, overflow="fold")

    def fmt(value: float) -> str:
        return "–" if value is None or math.isnan(value) else f"{value:.4f}"

    for c in selection.candidates:
        mark = "→" if c.run_id == selection.chosen else ""
        table.add_row(mark, c.run_id, c.label, fmt(c.overall_auc), fmt(c.worst_group_auc),
                      *(fmt(c.group_auc.get(g, math.nan)) for g in selection.groups),
                      "yes" if c.pareto else "", fmt(c.dto))  # fmt: skip
    console.print(table)
    console.print(f"chosen: [bold]{selection.chosen}[/bold] — {selection.reason}")
    if selection.erm_basis is not None:
        console.print(f"ERM basis: {', '.join(selection.erm_basis)}")
    for note in selection.notes:
        console.print(f"note: {note}")
    console.print(f"[dim]recorded in {path}[/dim]")
