"""``fairfm methods list`` / ``fairfm methods show``: the registered mitigation methods and what each needs."""

from __future__ import annotations

import json

import typer

app = typer.Typer(help="Unfairness mitigation methods: what each does, needs and serves.", no_args_is_help=True)


def _described(name: str) -> dict:
    """The method's description with the usages it serves (those its refusal lets through)."""
    from fairfm.mitigate.base import build_method
    from fairfm.usages import get_usage, list_usages

    method = build_method(name)
    usages = [u for u in list_usages() if method.refusal(get_usage(u).loop, u) is None]
    return {**method.describe(), "usages": usages}


@app.command("list")
def list_command(as_json: bool = typer.Option(False, "--json", help="print every method's description as JSON")) -> None:
    """List the methods: which usages' training loops each serves and whether it reads the sensitive attribute at
    training and at test time. `fairfm methods show NAME` prints one method's parameters and reference."""
    from rich import box
    from rich.table import Table

    from fairfm.cli import make_console
    from fairfm.mitigate.base import list_methods

    methods = [_described(name) for name in list_methods()]
    if as_json:
        typer.echo(json.dumps(methods, indent=2, ensure_ascii=False))
        return
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in ("name", "usages", "attribute at train", "attribute at test", "summary"):
        table.add_column(column, overflow="fold")
    for method in methods:
        needs = method["needs"]
        table.add_row(method["name"], ", ".join(method["usages"]),
                      "yes" if needs["attribute_at_train"] else "–", _at_test(method), method["summary"])  # fmt: skip
    make_console().print(table)


def _at_test(method: dict) -> str:
    needs = method["needs"]
    if needs["attribute_at_test"]:
        return "yes"
    return "optional" if "inference" in method["params"] else "–"


@app.command("show")
def show_command(name: str = typer.Argument(..., help="method name ('fairfm methods list')"),
                 as_json: bool = typer.Option(False, "--json", help="print the description as JSON")) -> None:  # fmt: skip
    """One method: summary, reference, needs and every parameter with its default."""
    method = _described(name)
    if as_json:
        typer.echo(json.dumps(method, indent=2, ensure_ascii=False))
        return
    needs = method["needs"]
    lines = [f"{method['name']}: {method['summary']}", f"reference: {method['reference']}",
             f"serves: {', '.join(needs['loops'])} (usages: {', '.join(method['usages'])})",
             f"attribute at train: {'yes' if needs['attribute_at_train'] else 'no'}; "
             f"at test: {_at_test(method)}", "parameters:"]  # fmt: skip
    for key, info in method["params"].items():
        lines.append(f"  {key} = {json.dumps(info['default'])}  {info['description']}")
    typer.echo("\n".join(lines))

