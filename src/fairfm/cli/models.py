"""``fairfm models list`` / ``fairfm models show``: the model zoo's cards."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer

from fairfm.errors import InputError

if TYPE_CHECKING:
    from fairfm.models.registry import ModelCard

app = typer.Typer(help="The foundation-model zoo: model cards and offline loaders.", no_args_is_help=True)


def _console():
    # At least 120 columns when piped or in CI logs, where rich would otherwise assume 80 and wrap every cell.
    from fairfm.cli import make_console

    return make_console()


@app.command("list")
def list_command(
    family: str | None = typer.Option(None, "--family", help="vision, vision-language or segmentation"),
    pattern: str = typer.Option("*", "--pattern", help="glob on model names, e.g. 'sam*'"),
    wide: bool = typer.Option(False, "--wide", help="also show the library and the full input normalisation"),
    as_json: bool = typer.Option(False, "--json", help="print the cards as JSON"),
) -> None:
    """List the registered models: family, architecture, input size, embedding size, zero-shot, licence.

    `fairfm models show NAME` prints one model's full card (identifiers, checkpoint files, download)."""
    from fairfm.models import list_models

    cards = list_models(pattern, family=family)
    if as_json:
        typer.echo(json.dumps([card.to_dict() for card in cards], indent=2, ensure_ascii=False))
        return
    from rich import box
    from rich.table import Table

    console = _console()
    if not cards:
        typer.echo(
            "no registered model matches"
            + (f" --family {family}" if family else "")
            + f" --pattern {pattern!r}"
        )
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    if wide:
        columns = [
            "name",
            "family",
            "architecture",
            "library",
            "input / normalisation",
            "dim",
            "zero-shot",
            "licence",
        ]
        rows = [
            [
                c.name,
                c.family,
                c.architecture,
                c.library,
                c.preprocess.describe(),
                str(c.embed_dim),
                "yes" if c.zero_shot else "–",
                c.licence,
            ]
            for c in cards
        ]
        # Everything, folded within fixed widths: about 190 columns, for wide terminals and logs.
        folded = {"architecture": 40, "library": 20, "input / normalisation": 40, "licence": 20}
        for column in columns:
            table.add_column(
                column,
                overflow="fold",
                no_wrap=column not in folded,
                max_width=folded.get(column),
                justify="right" if column == "dim" else "left",
            )
        console.width = max(console.width, 190)
    else:
        # One line per model. The short columns keep their full width; the architecture takes what is left and
        # ends in "…" (rich would otherwise squeeze every column); below 100 columns the licence moves to `show`.
        with_licence = console.width >= 100
        columns = ["name", "family", "input", "dim", "zero-shot"] + (["licence"] if with_licence else [])
        rows = [
            [c.name, c.family, f"{c.preprocess.size}px", str(c.embed_dim), "yes" if c.zero_shot else "–"]
            + ([_clip(c.licence, 16)] if with_licence else [])
            for c in cards
        ]
        widths = [max([len(column)] + [len(row[i]) for row in rows]) for i, column in enumerate(columns)]
        # each column boundary takes 3 characters (padding, rule, padding)
        arch_width = max(8, console.width - sum(widths) - 3 * len(columns) - 1)
        for row, card in zip(rows, cards):
            row.insert(2, _clip(card.architecture, arch_width))
        columns.insert(2, "architecture")
        widths.insert(2, min(arch_width, max(len(row[2]) for row in rows) if rows else arch_width))
        for column, width in zip(columns, widths):
            table.add_column(
                column,
                no_wrap=True,
                min_width=width,
                max_width=width,
                justify="right" if column in ("input", "dim") else "left",
            )
    for row in rows:
        table.add_row(*row)
    console.print(f"fairfm models ({len(cards)})", style="bold", highlight=False)
    console.print(table)


@app.command("show")
def show_command(
    name: str = typer.Argument(..., help="model name (see `fairfm models list`)"),
    as_json: bool = typer.Option(False, "--json", help="print the card as JSON"),
) -> None:
    """One model's full card: identifiers, expected checkpoint files, normalisation, reference, download."""
    from fairfm.models import get_model, list_models

    try:
        card = get_model(name)
    except InputError:
        import difflib

        names = [c.name for c in list_models()]
        close = difflib.get_close_matches(name.lower(), names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise InputError(
            f"unknown model {name!r}; {hint}`fairfm models list` shows all {len(names)}"
        ) from None
    if as_json:
        typer.echo(
            json.dumps(
                {**card.to_dict(), "local_weights": _local_weights(card)}, indent=2, ensure_ascii=False
            )
        )
        return
    from rich.table import Table

    rows = [
        ("family", card.family),
        ("architecture", card.architecture),
        ("library", card.library),
        ("pre-training", card.pretraining or "–"),
        ("embedding", f"{card.embed_dim}-d"),
        ("zero-shot", "yes (image and text towers)" if card.zero_shot else "no (image encoder only)"),
        ("identifiers", "\n".join(card.identifiers) or "–"),
        ("Hugging Face repos", "\n".join(card.hf_repos) or "–"),
        ("checkpoint files", "\n".join(card.checkpoint_files) or "– (no weights needed)"),
        ("input", card.preprocess.describe()),
        ("licence", card.licence),
        ("reference", card.paper),
        ("download", card.download),
        ("local weights", _local_weights(card) or "none found offline (pass --checkpoint PATH)"),
    ]
    rows += [("note", note) for note in card.notes]
    table = Table(
        title=f"[bold]{card.name}[/bold]", title_justify="left", show_header=False, box=None, pad_edge=False
    )
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for label, value in rows:
        table.add_row(label, value)
    _console().print(table)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _local_weights(card: ModelCard) -> str | None:
    """Where the weights would be loaded from offline (the checkpoint search, no network), or None."""
    from fairfm.models.checkpoints import resolve_checkpoint

    if not card.needs_weights:
        return None
    try:
        found = resolve_checkpoint(card, None)
    except InputError:
        return None
    return str(found) if found is not None else None
