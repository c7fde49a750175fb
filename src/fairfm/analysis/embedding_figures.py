"""Figures of an :class:`~fairfm.analysis.embeddings.EmbeddingAnalysis`: Glocker et al.'s joint scatter plots
with per-group marginal densities, and the subgroup-separability AUCs with their intervals.

Built as :class:`matplotlib.figure.Figure` objects directly (never pyplot: no global state, any backend), in
the Okabe–Ito colour-blind-safe palette, at the report's 7-inch width."""

from __future__ import annotations

import math
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from fairfm.analysis.embeddings import NEGATIVE, POSITIVE, EmbeddingAnalysis, group_names
from fairfm.errors import InputError
from fairfm.report.figures import PALETTE, WIDTH_IN
from fairfm.report.figures import STYLE as REPORT_STYLE

__all__ = ["embedding_scatter", "separability_plot"]

# The report's palette, width and style (fairfm.report.figures), without grid lines: scatter plots of
# embeddings read better on a plain background.
STYLE = {**REPORT_STYLE, "axes.grid": False, "legend.fontsize": 8.5}
PROJECTION_NAMES = {"tsne": "t-SNE", "umap": "UMAP"}


def embedding_scatter(analysis: EmbeddingAnalysis, attribute: str, *, which: str = "pca") -> Figure:
    """The subsample's points coloured by the groups of ``attribute`` (or ``label_<task>``: positives vs
    negatives): PCA modes 1+2 and 3+4 side by side (``which="pca"``) or the 2-D projection
    (``which="projection"``), each with every group's density along both axes above and right of it — each
    group's curve normalised on its own (seaborn's ``common_norm=False``), so a small group's shape is as
    visible as a large one's."""
    points = analysis.points
    if attribute not in points.columns or attribute in ("row", "sample_id"):
        names = [
            c for c in points.columns if c not in ("row", "sample_id") and not c.startswith(("pc", "proj"))
        ]
        raise InputError(f"attribute {attribute!r}: not in the analysis (has {', '.join(names)})")
    if which == "pca":
        modes = [c for c in points.columns if c.startswith("pc")]
        pairs = [(modes[i], modes[i + 1]) for i in range(0, len(modes) - 1, 2)][:2]
        if not pairs:
            raise InputError("the analysis kept a single PCA mode: no scatter of two modes to draw")
    elif which == "projection":
        if "proj1" not in points.columns:
            raise InputError(
                f"the analysis was made with projection {analysis.projection!r}: no projection to draw "
                "(analyse again with --projection tsne or umap)"
            )
        pairs = [("proj1", "proj2")]
    else:
        raise InputError(f"which {which!r}: expected pca or projection")
    groups = _groups(points[attribute], attribute)
    known = groups != ""
    names = [POSITIVE, NEGATIVE] if attribute.startswith("label_") else group_names(groups)
    names = [name for name in names if (groups == name).any()]
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    with matplotlib.rc_context(STYLE):
        single = len(pairs) == 1
        fig = Figure(
            figsize=(WIDTH_IN if not single else 6.0, 4.1 if not single else 5.4), layout="constrained"
        )
        columns = [4, 1] * len(pairs)
        grid = fig.add_gridspec(
            2, len(columns), width_ratios=columns, height_ratios=[1, 4], wspace=0.02, hspace=0.02
        )
        for k, (x_name, y_name) in enumerate(pairs):
            main = fig.add_subplot(grid[1, 2 * k])
            top = fig.add_subplot(grid[0, 2 * k], sharex=main)
            right = fig.add_subplot(grid[1, 2 * k + 1], sharey=main)
            for name in names:
                mask = groups == name
                main.scatter(
                    points.loc[mask, x_name],
                    points.loc[mask, y_name],
                    s=7,
                    alpha=0.55,
                    color=colours[name],
                    linewidths=0,
                    rasterized=True,
                )
                _density(top, points.loc[mask, x_name].to_numpy(), colours[name], vertical=False)
                _density(right, points.loc[mask, y_name].to_numpy(), colours[name], vertical=True)
            main.set_xlabel(_axis_label(analysis, x_name))
            main.set_ylabel(_axis_label(analysis, y_name))
            for ax in (top, right):
                ax.tick_params(labelbottom=False, labelleft=False, bottom=False, left=False)
                for side in ("top", "right", "left", "bottom"):
                    ax.spines[side].set_visible(False)
            top.spines["bottom"].set_visible(True)
            right.spines["left"].set_visible(True)
            top.set_ylim(bottom=0)
            right.set_xlim(left=0)
            if which == "projection":  # t-SNE/UMAP coordinates have no unit: their values mean nothing
                main.set_xticks([])
                main.set_yticks([])
        counts = {name: int((groups == name).sum()) for name in names}
        handles = [
            Line2D(
                [],
                [],
                marker="o",
                linestyle="",
                markersize=6,
                color=colours[name],
                label=f"{name} ({counts[name]})",
            )
            for name in names
        ]
        fig.legend(
            handles=handles,
            title=f"{_attribute_title(attribute)} (points drawn)",
            loc="outside lower center",
            ncols=min(len(names), 5),
        )
        what = (
            "PCA modes " + " and ".join(f"{a[2:]}–{b[2:]}" for a, b in pairs)
            if which == "pca"
            else PROJECTION_NAMES.get(analysis.projection, analysis.projection) + " of the PCA features"
        )
        unknown = int((~known).sum())
        total = analysis.pca["n_samples"]
        shown = (
            f"all {total} samples"
            if len(points) == total
            else f"{len(points)} of {total} samples (a subsample balanced over the groups)"
        )
        if unknown:
            shown += f"; {unknown} of unknown {_attribute_title(attribute)} not drawn"
        fig.suptitle(f"{_attribute_title(attribute)}: {what}\n{shown}", linespacing=1.5)
        fig.draw_without_rendering()  # fix the constrained layout once, so saving twice gives the same bytes
        fig.set_layout_engine("none")
    return fig


def separability_plot(analysis: EmbeddingAnalysis) -> Figure:
    """Each attribute's out-of-fold AUC of predicting it from the frozen embedding, with its 95 % bootstrap
    interval and the 0.5 chance line; the value and interval are written beside each row."""
    table = analysis.separability
    if table.empty:
        raise InputError("the analysis has no attribute to show the separability of")
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(WIDTH_IN, 1.3 + 0.42 * len(table)), layout="constrained")
        ax = fig.add_subplot()
        y = np.arange(len(table))[::-1]
        finite = table["auc"].notna().to_numpy()
        lows = table["ci_low"].fillna(table["auc"]).to_numpy(dtype=float)
        left = min(0.4, np.nanmin(lows[finite]) - 0.05) if finite.any() else 0.4
        ax.axvline(0.5, color="#777777", linestyle="--", linewidth=1.0, zorder=1)
        ax.text(
            0.5,
            1.0,
            " chance 0.5",
            transform=ax.get_xaxis_transform(),
            color="#555555",
            va="bottom",
            ha="left",
            fontsize=8,
        )
        for position, row in zip(y, table.itertuples()):
            if math.isnan(row.auc):
                ax.text(
                    0.5,
                    position,
                    f"  not estimable: {row.note or 'too few samples'}",
                    va="center",
                    color="#555555",
                    fontsize=8,
                )
                continue
            colour = PALETTE[0]
            if not math.isnan(row.ci_low):
                ax.plot(
                    [row.ci_low, row.ci_high],
                    [position, position],
                    color=colour,
                    linewidth=2.2,
                    solid_capstyle="butt",
                    zorder=2,
                )
                label = f"{row.auc:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}]"
            else:
                label = f"{row.auc:.3f} (no interval)"
            ax.plot([row.auc], [position], "o", color=colour, markersize=6, zorder=3, clip_on=False)
            ax.text(
                1.0, position, "    " + label, transform=ax.get_yaxis_transform(), va="center", fontsize=8.5
            )
        ax.set_yticks(y, [_row_label(row) for row in table.itertuples()])
        ax.set_xlim(left, 1.0)  # a dot at AUC 1 is drawn unclipped on the edge
        ax.set_ylim(-0.6, len(table) - 0.4)
        ax.grid(axis="x", color="#DDDDDD", linewidth=0.6)
        ax.set_axisbelow(True)
        ax.set_xlabel("AUC of predicting the attribute from the embedding (95 % bootstrap interval)")
        cv = table["cv"].iloc[0] if len(table) else ""
        fig.suptitle(
            "Subgroup separability of the frozen embedding\n"
            f"out-of-fold logistic regression on the PCA features, {cv}",
            linespacing=1.5,
        )
        fig.draw_without_rendering()
        fig.set_layout_engine("none")
    return fig


# -------------------------------------------------------------------------------- helpers


def _groups(values: pd.Series, attribute: str) -> np.ndarray:
    if attribute.startswith("label_"):
        numeric = pd.to_numeric(values, errors="coerce").to_numpy()
        return np.where(numeric == 1, POSITIVE, np.where(numeric == 0, NEGATIVE, ""))
    return values.fillna("").astype(str).to_numpy()


def _density(ax: Axes, values: np.ndarray, colour: str, *, vertical: bool) -> None:
    """One group's Gaussian KDE (scipy), normalised on its own; nothing for fewer than 2 distinct values."""
    from scipy.stats import gaussian_kde

    values = values[np.isfinite(values)]
    if len(values) < 2 or np.ptp(values) == 0:
        return
    grid = np.linspace(values.min() - 0.1 * np.ptp(values), values.max() + 0.1 * np.ptp(values), 200)
    density = gaussian_kde(values)(grid)
    if vertical:
        ax.plot(density, grid, color=colour, linewidth=1.3)
        ax.fill_betweenx(grid, density, color=colour, alpha=0.12, linewidth=0)
    else:
        ax.plot(grid, density, color=colour, linewidth=1.3)
        ax.fill_between(grid, density, color=colour, alpha=0.12, linewidth=0)


def _axis_label(analysis: EmbeddingAnalysis, column: str) -> str:
    if column.startswith("pc"):
        mode = int(column[2:])
        ratios = analysis.pca.get("explained_variance_ratio") or []
        share = f" ({100 * ratios[mode - 1]:.1f} % of variance)" if mode <= len(ratios) else ""
        return f"PCA mode {mode}{share}"
    name = PROJECTION_NAMES.get(analysis.projection, analysis.projection)
    return f"{name} dimension {column[-1]}"


def _attribute_title(attribute: str) -> str:
    return f"task {attribute.removeprefix('label_')}" if attribute.startswith("label_") else attribute


def _row_label(row: Any) -> str:
    if row.kind == "macro one-vs-rest":
        return f"{row.attribute}\n({row.n_groups} groups, one-vs-rest)"
    groups = str(row.groups) if len(str(row.groups)) <= 24 else f"{row.n_groups} groups"
    return f"{row.attribute}\n({groups})"
