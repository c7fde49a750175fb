"""``fairfm demo``: the main job on data that needs no download.

Until the run pipeline lands (issue 5), the demo generates predictions with a planted disparity — a model that is
noisier for one group — writes them as a CSV, and evaluates them exactly as a user would with ``fairfm evaluate``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from fairfm.cli import app


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("demo_out"), "--out", help="Folder for the generated predictions and reports."),
    n: int = typer.Option(20000, "--n", help="Number of generated predictions."),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated data and of the bootstrap."),
) -> None:
    """Generate predictions with a known disparity and evaluate them."""
    from fairfm.metrics import evaluate_frame
    from fairfm.simulate import planted_predictions
    from fairfm.report.tables import console as make_console
    from fairfm.report.tables import rich_tables
    from fairfm.tableio import atomic_path, write_text_atomic

    console = make_console(highlight=False)
    test, val, truth = planted_predictions(n=n, seed=seed)
    out.mkdir(parents=True, exist_ok=True)
    for frame, name in ((test, "predictions.csv"), (val, "val_predictions.csv")):
        with atomic_path(out / name) as tmp:
            frame.to_csv(tmp, index=False)
    console.print(f"[bold]fairfm demo[/bold] — generated predictions in {out}/ (no model, no download)")
    console.print(f"planted: {truth['description']}")
    command = (f"fairfm evaluate {out}/predictions.csv --y-true label --y-score score --attr sex --attr race "
               f"--attr age --bins age=40,60,80 --val-file {out}/val_predictions.csv")  # fmt: skip
    console.print(f"[dim]$ {command}[/dim]\n")
    report = evaluate_frame(
        out / "predictions.csv", y_true=["label"], y_score=["score"], attributes=["sex", "race", "age"],
        bins=["age=40,60,80"], val_file=out / "val_predictions.csv", seed=seed,
    )  # fmt: skip
    console.print(rich_tables(report))
    write_text_atomic(out / "report.json", report.to_json() + "\n")
    race = report.tasks["label"].attributes["race"]
    worst = race.worst_group.get("auc")
    gap = race.summary["auc_gap"]
    detected = worst == truth["disadvantaged_group"] and gap.ci_low > 0
    verdict = "detected" if detected else "NOT detected"
    console.print(
        f"\n[bold]planted disparity {verdict}[/bold]: worst race group by AUC is {worst!r} "
        f"(planted: {truth['disadvantaged_group']!r}); race AUC gap {gap.value:.3f} "
        f"[{gap.ci_low:.3f}, {gap.ci_high:.3f}]. Full report: {out}/report.json"
    )
