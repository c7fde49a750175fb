"""``fairfm models list``: the model zoo's cards."""

from __future__ import annotations

import json
from typing import Optional

import typer

app = typer.Typer(help="The foundation-model zoo: model cards and offline loaders.", no_args_is_help=True)


@app.command("list")
def list_command(
    family: Optional[str] = typer.Option(None, "--family", help="vision, vision-language or segmentation"),
    pattern: str = typer.Option("*", "--pattern", help="glob on model names, e.g. 'sam*'"),
    as_json: bool = typer.Option(False, "--json", help="print the cards as JSON"),
) -> None:
    """List the registered models with their identifiers, preprocessing, embedding size and licence."""
    from fairfm.models import list_models

    cards = list_models(pattern, family=family)
    if as_json:
        typer.echo(json.dumps([card.to_dict() for card in cards], indent=2, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"fairfm models ({len(cards)})", show_lines=False)
    for column in (
        "name",
        "family",
        "architecture",
        "library",
        "input / normalisation",
        "dim",
        "zero-shot",
        "licence",
    ):
        table.add_column(column, overflow="fold")
    for card in cards:
        table.add_row(
            card.name,
            card.family,
            card.architecture,
            card.library,
            card.preprocess.describe(),
            str(card.embed_dim),
            "yes" if card.zero_shot else "no",
            card.licence,
        )
    Console().print(table)
