"""``fairfm datasets``: list, prepare, describe, check and synthesise datasets (a thin layer over ``fairfm.data``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from fairfm.cli import make_console
from fairfm.errors import InputError

app = typer.Typer(help="Datasets: list, prepare (load + split), describe, check files, synthesise planted-bias data.",
                  no_args_is_help=True)
console = make_console(highlight=False, soft_wrap=True)


def _parse_options(options: list[str] | None) -> dict[str, object]:
    parsed: dict[str, object] = {}
    for option in options or []:
        if "=" not in option:
            raise InputError(f"--option {option!r}: expected KEY=VALUE, e.g. uncertain=ones")
        key, value = option.split("=", 1)
        parsed[key.strip()] = value.strip()
    return parsed


def _parse_floats(text: str | None, what: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputError(f"{what} {text!r}: expected comma-separated numbers") from None


@app.command("list")
def list_command(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """The registered datasets: name, modality, 2D/3D, tasks, attributes, licence/access."""
    from fairfm.data import list_datasets

    cards = list_datasets()
    if as_json:
        print(json.dumps([card.to_dict() for card in cards], indent=2, ensure_ascii=False))
        return
    table = Table(title=f"{len(cards)} datasets")
    for column in ("name", "modality", "dim", "type", "tasks", "attributes", "access"):
        table.add_column(column, overflow="fold")
    for card in cards:
        tasks = ", ".join(card.tasks[:4]) + (f" (+{len(card.tasks) - 4})" if len(card.tasks) > 4 else "")
        table.add_row(card.name, card.modality, f"{card.dims}D", card.task_type, tasks, ", ".join(card.attributes),
                      card.access)
    console.print(table)


@app.command("prepare")
def prepare_command(
    name: str = typer.Argument(..., help="Dataset name (see 'fairfm datasets list')."),
    root: Path = typer.Option(..., "--root", help="The raw release folder, as downloaded."),
    out: Path = typer.Option(..., "--out", help="Output folder for samples.parquet and dataset.json."),
    split: str = typer.Option("patient", "--split", help="Split policy: patient, official, fairmedfm, "
                              "glocker_resample, khan_balanced, sites; fairmedfm_image reproduces FairMedFM's "
                              "image-level split for comparison only (it leaks patients)."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random step (recorded)."),
    fractions: Optional[str] = typer.Option(None, "--fractions", help="train,val,test fractions, e.g. 0.7,0.1,0.2."),
    split_file: Optional[Path] = typer.Option(None, "--split-file", help="A published split file (policy official, "
                                              "glocker_resample, khan_balanced), e.g. chexpert_split_2021_08_20.csv."),
    age_bins: Optional[str] = typer.Option(None, "--age-bins", help="Age bin edges, e.g. 60 or 40,60,80 (default 60)."),
    option: Optional[List[str]] = typer.Option(None, "--option", "-o", help="Loader option KEY=VALUE, repeatable "
                                               "(e.g. uncertain=ones)."),
) -> None:
    """Load a raw release, split it and write DIR/samples.parquet + DIR/dataset.json."""
    from fairfm.data.prepare import prepare
    from fairfm.tableio import check_output_folder

    check_output_folder(out)  # before reading the raw release

    params: dict[str, object] = {}
    parsed_fractions = _parse_floats(fractions, "--fractions")
    if parsed_fractions is not None:
        params["fractions"] = parsed_fractions
    if split_file is not None:
        params["split_file"] = split_file
    manifest = prepare(name, root, out, split=split, seed=seed, split_params=params,
                       source_options=_parse_options(option), age_edges=_parse_floats(age_bins, "--age-bins"),
                       progress=True)
    from fairfm.data.prepare import image_presence_warning

    sizes = ", ".join(f"{k} {v}" for k, v in manifest["split_sizes"].items())
    console.print(f"{name}: {manifest['n_samples']} samples of {manifest['n_patients']} patients ({sizes}) → {out}")
    presence = manifest["images_found"]
    warning = image_presence_warning(presence, root)
    if warning is not None:
        console.print(f"[yellow]warning:[/yellow] {warning}", markup=True)
    elif presence["checked"]:
        console.print(f"{presence['found']} of {presence['checked']} referenced images checked at random exist")
    if manifest["split"].get("leaks_patients"):
        console.print(f"[yellow]warning:[/yellow] split {split!r} is image-level: "
                      f"{manifest['split'].get('leaking_patients')} patient(s) are in more than one split "
                      "(compatibility mode; do not report its results as patient-level)", markup=True)


@app.command("describe")
def describe_command(
    directory: Path = typer.Argument(..., help="A folder written by 'fairfm datasets prepare'."),
    min_samples: int = typer.Option(30, "--min-samples", min=0, help="Warn for val/test groups with fewer samples."),
    min_positives: int = typer.Option(10, "--min-positives", min=0, help="Warn for fewer positives or negatives."),
    intersect: Optional[List[str]] = typer.Option(None, "--intersect", help="Intersectional groups, e.g. sex,race "
                                                  "(repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Counts per split × group × label, with warnings for groups too small to evaluate."""
    from fairfm.data.prepare import describe

    intersections = [[part.strip() for part in spec.split(",") if part.strip()] for spec in intersect or []]
    for spec, parts in zip(intersect or [], intersections):
        if len(parts) < 2:
            raise InputError(f"--intersect {spec!r}: name at least two attributes, e.g. sex,race")
    summary = describe(directory, min_samples=min_samples, min_positives=min_positives, intersections=intersections)
    if as_json:
        print(json.dumps(summary, indent=2, ensure_ascii=False, default=str))
        return
    recipe = summary["split"] or {}
    console.print(f"{summary['dataset']}: {summary['n_samples']} samples; split policy {recipe.get('policy')!s}, "
                  f"seed {recipe.get('seed')!s}")
    table = Table()
    for column in ("attribute", "group", "split", "task", "n", "patients", "positives", "negatives", "unknown"):
        table.add_column(column, justify="right" if column in ("n", "patients", "positives", "negatives", "unknown") else "left")
    for r in summary["counts"]:
        table.add_row(r["attribute"], str(r["group"]), str(r["split"]), str(r["task"] or ""), str(r["n"]),
                      str(r["patients"]), str(r["positives"] if r["positives"] is not None else ""),
                      str(r["negatives"] if r["negatives"] is not None else ""),
                      str(r["unknown_label"] if r["unknown_label"] is not None else ""))
    console.print(table)
    for warning in summary["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}", markup=True)


@app.command("check")
def check_command(
    directory: Path = typer.Argument(..., help="A folder written by 'fairfm datasets prepare'."),
    root: Optional[Path] = typer.Option(None, "--root", help="Where the images are (default: the prepared root)."),
) -> None:
    """Read every referenced file; list ALL missing or corrupt files with their rows; exit 1 if any."""
    from fairfm.data.prepare import check

    problems = check(directory, root=root, progress=True)
    if not problems:
        console.print("all referenced files read correctly")
        return
    table = Table(title=f"{len(problems)} problem file(s)")
    for column in ("row", "sample_id", "column", "path", "problem"):
        table.add_column(column, overflow="fold")
    for p in problems:
        table.add_row(str(p["row"]), str(p["sample_id"]), p["column"], p["path"], p["problem"])
    console.print(table)
    raise typer.Exit(1)


@app.command("synth")
def synth_command(
    out: Path = typer.Option(..., "--out", help="Output folder (images/, samples.parquet, dataset.json, truth.json)."),
    n: int = typer.Option(2000, "--n", help="Number of images."),
    size: int = typer.Option(64, "--size", help="Image side in pixels."),
    mechanism: Optional[List[str]] = typer.Option(
        None, "--mechanism", "-m",
        help="Planted bias, repeatable: prevalence_shift, under_representation, label_noise, acquisition_shift, "
             "appearance_shift (default: all)."),
    seed: int = typer.Option(0, "--seed", help="Seed (recorded in truth.json)."),
) -> None:
    """Generate a planted-bias dataset whose biases are known exactly (truth.json)."""
    from fairfm.data.synth import generate
    from fairfm.tableio import check_output_folder

    check_output_folder(out)

    truth = generate(out, n=n, size=size, mechanisms=mechanism, seed=seed, progress=True)
    console.print(f"synthetic dataset: {truth['n_samples']} images, mechanisms "
                  f"{', '.join(truth['mechanisms']) or 'none'} → {out}")
