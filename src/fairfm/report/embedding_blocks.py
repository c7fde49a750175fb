"""The report blocks of one stored embedding analysis (:mod:`fairfm.analysis.embeddings`): what was analysed, the
principal modes and the projection by group, subgroup separability with its interval, and the Kolmogorov–Smirnov
tests with their false-discovery-rate control."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from fairfm.report.document import Cell, DetailsBlock, FigureBlock, NoteBlock, TableBlock, TextBlock

if TYPE_CHECKING:
    from fairfm.analysis.embeddings import EmbeddingAnalysis


def _number(value: Any, digits: int = 3) -> Cell:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return Cell("–")
    if not math.isfinite(number):
        return Cell("–")
    text = f"{number:.{digits}g}" if abs(number) < 1e-3 and number != 0 else f"{number:.{digits}f}"
    return Cell(text, sort_value=number)


def embedding_blocks(analysis: "EmbeddingAnalysis") -> list[Any]:
    from fairfm.analysis.embedding_figures import embedding_scatter, separability_plot
    from fairfm.report.figures import figure_data_uri

    pca, options, source = analysis.pca, analysis.options, analysis.source
    ratios = list(pca.get("explained_variance_ratio") or [])
    shown = ", ".join(f"{100 * r:.1f}%" for r in ratios[:4])
    blocks: list[Any] = [TextBlock(
        f"{pca.get('n_samples')} samples of split {source.get('split', options.get('split', '?'))} "
        f"({pca.get('dim')}-dimensional embedding, feature cache {str(source.get('key', ''))[:12]}). PCA keeps "
        f"{100 * float(pca.get('variance', 0.99)):.0f}% of the variance in {pca.get('n_components')} components; the "
        f"first modes explain {shown or '–'}. Projection: {analysis.projection}. Tests: two-sample "
        f"Kolmogorov–Smirnov on the first {options.get('n_modes', 4)} modes, "
        f"{'Benjamini–Hochberg' if options.get('fdr', 'bh') == 'bh' else 'Benjamini–Yekutieli'} "
        f"false-discovery control at {options.get('alpha', 0.05)}.")]  # fmt: skip
    blocks.extend(NoteBlock(note, kind="info") for note in analysis.notes)
    sep = analysis.separability
    if not sep.empty:
        rows = [[r["attribute"], Cell(f"{r['auc']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
                                      if math.isfinite(r["auc"]) else "–",
                                      sort_value=r["auc"] if math.isfinite(r["auc"]) else None),
                 _number(r["chance"], 2), str(r["n_groups"]), str(r["cv"]), str(r["note"] or "")]
                for _, r in sep.iterrows()]  # fmt: skip
        blocks.append(TableBlock(["attribute", "separability AUC [95% CI]", "chance", "groups", "validation",
                                  "note"], rows, caption=(
            "How well each attribute is predicted from the frozen embedding (cross-validated logistic regression on "
            "the PCA features; out-of-fold AUC, macro one-vs-rest for several groups). High separability means the "
            "embedding encodes the attribute — a route for bias, not by itself unfairness.")))  # fmt: skip
        fig = separability_plot(analysis)
        best = sep.loc[sep["auc"].idxmax()] if sep["auc"].notna().any() else None
        alt = "Subgroup separability AUC per attribute with 95% intervals and the chance line at 0.5" + (
            f"; highest: {best['attribute']} ({best['auc']:.2f})." if best is not None else ".")
        blocks.append(FigureBlock(figure_data_uri(fig), alt=alt))
    modes = [c for c in analysis.points.columns if str(c).startswith("pc")]
    if len(modes) < 2:
        blocks.append(NoteBlock(f"PCA kept {len(modes)} mode(s) for {100 * float(pca.get('variance', 0.99)):.0f}% of "
                                "the variance: the embedding is nearly one-dimensional here, so there is no scatter "
                                "of two modes to draw.", kind="info"))  # fmt: skip
    for attribute in analysis.attributes:
        if attribute not in analysis.points.columns:
            continue
        for which, what in (("pca", "PCA modes 1–2 and 3–4"), ("projection", analysis.projection)):
            if (which == "projection" and analysis.projection == "none") or (which == "pca" and len(modes) < 2):
                continue
            fig = embedding_scatter(analysis, attribute, which=which)
            blocks.append(FigureBlock(figure_data_uri(fig), alt=(
                f"Scatter plot of the embedding's {what} coloured by {attribute} group, with each group's own "
                "marginal density curves.")))  # fmt: skip
    ks = analysis.ks
    if not ks.empty:
        rows = [[r["attribute"], f"{r['group_a']} vs {r['group_b']}", str(r["mode"]), _number(r["statistic"]),
                 _number(r["p_value"]), _number(r["q_value"]),
                 Cell("yes", flag="significant") if r["significant"] else "no", str(r["n_a"]), str(r["n_b"])]
                for _, r in ks.iterrows()]  # fmt: skip
        significant = int(ks["significant"].sum())
        blocks.append(DetailsBlock(f"Kolmogorov–Smirnov tests: {significant} of {len(ks)} significant", [
            TableBlock(["attribute", "groups", "mode", "KS statistic", "p", "q", "significant", "n a", "n b"], rows,
                       caption="Distribution of each PCA mode compared between two groups; q: adjusted for the "
                               "number of tests.")]))  # fmt: skip
    return blocks
