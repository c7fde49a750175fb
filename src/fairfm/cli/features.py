"""``fairfm features extract``: cached embeddings of a prepared dataset."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Frozen-encoder features with a content-addressed cache.", no_args_is_help=True)


@app.command("extract")
def extract_command(
    data: Path = typer.Option(..., "--data", help="folder with samples.parquet (a prepared SampleTable)"),
    model: str = typer.Option(..., "--model", help="model name (see `fairfm models list`)"),
    out: Path = typer.Option(..., "--out", help="feature cache folder"),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="weights file or local model folder"),
    trust_checkpoint: bool = typer.Option(
        False,
        "--trust-checkpoint",
        help="allow checkpoints that need Python pickle (only from a trusted source)",
    ),
    root: Path | None = typer.Option(
        None,
        "--root",
        help="folder the image paths are relative to (default: the release root recorded in "
        "--data/dataset.json, "
        "else --data)",
    ),
    column: str = typer.Option(
        "path",
        "--column",
        help="path column (view) to embed, e.g. path_oct; each row reads the array its locator columns name",
    ),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    workers: int | None = typer.Option(None, "--workers", min=0, help="image-decoding worker processes"),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch threads for the encoder"),
) -> None:
    """Embed every sample once; a repeated call returns the cached features, an interrupted one resumes."""
    from fairfm.adapt.features import extract_features
    from fairfm.tableio import check_output_folder

    check_output_folder(out)  # before the model is built
    result = extract_features(
        data,
        model,
        out=out,
        checkpoint=checkpoint,
        trust_checkpoint=trust_checkpoint,
        root=root,
        batch_size=batch_size,
        num_workers=workers,
        threads=threads,
        column=column,
    )
    status = "cached" if result.computed == 0 else f"computed {result.computed} samples"
    rows, dim = result.features.shape
    samples = result.meta.get("samples", rows)
    per = "" if rows == samples else f" from {samples} samples"
    typer.echo(f"{result.path}: {rows} × {dim} features{per} of {column} ({status})")
