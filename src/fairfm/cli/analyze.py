"""``fairfm analyze embeddings RUN | --features DIR --data DIR``: Glocker et al.'s embedding-bias analysis."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(help="Analyses of stored runs and feature caches.", no_args_is_help=True)


@app.command("embeddings")
def embeddings_command(
    run: Optional[str] = typer.Argument(
        None, metavar="RUN", help="A stored run on cached features (id or prefix)."
    ),
    features: Optional[Path] = typer.Option(
        None,
        "--features",
        help="A feature cache entry (OUT/<key>/ of 'fairfm features extract'), instead of RUN.",
    ),
    data: Optional[Path] = typer.Option(
        None, "--data", help="The prepared dataset folder the --features were made of (samples.parquet)."
    ),
    store_dir: Optional[Path] = typer.Option(
        None, "--store", help="Results store folder (default: $FAIRFM_STORE, else ./fairfm_runs)."
    ),
    attributes: Optional[List[str]] = typer.Option(
        None, "--attr", help="Sensitive attribute (repeatable; default: the run's, or every group_* column)."
    ),
    split: str = typer.Option("test", "--split", help="train, val, test or all."),
    projection: str = typer.Option("tsne", "--projection", help="tsne, umap or none."),
    fdr: str = typer.Option(
        "bh", "--fdr", help="bh (Benjamini–Hochberg) or by (Benjamini–Yekutieli, Glocker et al.)."
    ),
    variance: float = typer.Option(0.99, "--variance", help="Fraction of the variance the PCA keeps."),
    max_points: int = typer.Option(3000, "--max-points", help="Most samples in the projection (balanced)."),
    bootstrap: int = typer.Option(
        1000, "--bootstrap", min=0, help="Resamples for the separability interval."
    ),
    seed: int = typer.Option(0, "--seed"),
    recompute: bool = typer.Option(False, "--recompute", help="Compute again even when stored."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Also write the analysis (points included) as JSON."
    ),
) -> None:
    """PCA keeping 99 % of the variance, a t-SNE/UMAP projection by group, KS tests of the first PCA modes
    between groups (FDR-corrected) and subgroup separability (cross-validated AUC of predicting the attribute
    from the frozen embedding). Reads the feature cache; stored under STORE/analyses/embeddings/."""
    from fairfm.analysis import features_embeddings, run_embeddings
    from fairfm.errors import InputError
    from fairfm.results import Store
    from fairfm.tableio import check_output_file, write_text_atomic

    if (run is None) == (features is None):
        raise InputError("give exactly one of RUN or --features DIR --data DIR")
    if features is not None and data is None:
        raise InputError("--features needs --data: the prepared dataset folder the features were made of")
    if run is not None and data is not None:
        raise InputError("--data goes with --features; a RUN names its own dataset")
    if out is not None:
        check_output_file(out)
    store = Store(store_dir)
    options = dict(
        split=split,
        attributes=attributes or None,
        projection=projection,
        fdr=fdr,
        variance=variance,
        max_points=max_points,
        bootstrap=bootstrap,
        seed=seed,
        recompute=recompute,
    )
    if run is not None:
        analysis = run_embeddings(store, run, **options)
    else:
        analysis = features_embeddings(features, data, store=store, **options)
    if out is not None:
        write_text_atomic(out, json.dumps(analysis.to_dict(), indent=2, ensure_ascii=False) + "\n")
    print_analysis(analysis)
    if out is not None:
        typer.echo(f"wrote {out}")


def print_analysis(analysis) -> None:
    """The PCA summary, the KS table (significant tests marked) and separability with intervals."""
    from rich import box
    from rich.table import Table

    from fairfm.cli import make_console

    console = make_console(highlight=False, soft_wrap=True)
    source, pca = analysis.source, analysis.pca
    what = f"run {source['run_id']}" if source.get("run_id") else f"features {source.get('key')}"
    console.print(
        f"{what} · {source.get('model') or 'model ?'} · split {source.get('split')} · "
        f"{pca['n_samples']} samples × {pca['dim']} dims",
        markup=False,
    )
    ratios = ", ".join(f"{100 * r:.1f} %" for r in pca["explained_variance_ratio"])
    console.print(
        f"PCA: {pca['n_components']} components keep {100 * pca['kept_variance']:.1f} % of the variance "
        f"(not standardised); first modes explain {ratios}",
        markup=False,
    )

    options = analysis.options
    fdr = {"bh": "Benjamini–Hochberg", "by": "Benjamini–Yekutieli"}[options["fdr"]]
    ks = analysis.ks
    table = Table(
        title=f"Kolmogorov–Smirnov tests of PCA modes: {int(ks['significant'].sum())} of {len(ks)} "
        f"significant ({fdr} q ≤ {options['alpha']:g})",
        box=box.SIMPLE_HEAD,
    )
    for column in ("attribute", "groups", "mode", "n", "KS D", "p", "q", ""):
        table.add_column(column, justify="right" if column in ("mode", "n", "KS D", "p", "q") else "left")
    for row in ks.itertuples():
        table.add_row(
            row.attribute,
            f"{row.group_a} vs {row.group_b}",
            str(row.mode),
            f"{row.n_a} / {row.n_b}",
            f"{row.statistic:.3f}",
            f"{row.p_value:.2g}",
            f"{row.q_value:.2g}",
            "significant" if row.significant else "",
        )
    console.print(table)

    table = Table(
        title="Subgroup separability: the attribute predicted from the frozen embedding (out-of-fold "
        "AUC, 95 % bootstrap interval; chance 0.5)",
        box=box.SIMPLE_HEAD,
    )
    for column in ("attribute", "AUC", "95 % interval", "n", "groups", "cross-validation", "note"):
        table.add_column(column, justify="right" if column in ("AUC", "n") else "left")
    for row in analysis.separability.itertuples():
        interval = "" if math.isnan(row.ci_low) else f"[{row.ci_low:.3f}, {row.ci_high:.3f}]"
        auc = "" if math.isnan(row.auc) else f"{row.auc:.3f}"
        kind = f" ({row.kind})" if row.kind == "macro one-vs-rest" else ""
        table.add_row(row.attribute, auc, interval, str(row.n), row.groups + kind, row.cv, row.note)
    console.print(table)
    for note in analysis.notes:
        console.print(f"note: {note}", markup=False)
    if source.get("analysis_id"):
        console.print(f"stored as analysis {source['analysis_id']}", markup=False)
