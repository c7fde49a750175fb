"""``fairfm demo``: the whole pipeline on data and models that need no download (see :mod:`fairfm.demo`).

Planted-bias synthetic images → two tiny random-weight CLIP models of real architectures → zero-shot, linear
probe and LoRA through the ``fairfm run`` runner → the results store → a comparison of AUC and the AUC gap with intervals,
naming the planted disparity and whether each run detected it.
"""

from __future__ import annotations

from pathlib import Path

import typer

from fairfm.cli import app, make_console


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("demo_out"), "--out", help="Folder for the data, tiny models, specs and store."),
    n: int = typer.Option(2000, "--n", help="Number of generated images."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data, the random weights, training and bootstrap."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the intervals."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Planted-bias data → tiny random-weight models → zero-shot, linear probe, LoRA → stored, compared results."""

    from fairfm.demo import run_demo
    from fairfm.errors import InputError

    from fairfm.tableio import check_output_folder

    if n < 200:
        raise InputError(f"--n {n}: the demo needs at least 200 images for a meaningful test split")
    check_output_folder(out)
    console = make_console(highlight=False)
    console.print("[bold]fairfm demo[/bold] — planted-bias data, tiny models with RANDOM weights, no download")
    run_demo(out, n=n, seed=seed, bootstrap=bootstrap, progress=not quiet, console=console)
