"""Every plot of the report, as matplotlib functions over plain arrays and frames.

The report builder computes the numbers; these functions only draw them. Each returns a
:class:`matplotlib.figure.Figure` built directly (never pyplot, so no global state and any backend works), sized
to be read at about 700 px wide, with the Okabe–Ito colour-blind-safe palette. :func:`figure_data_uri` turns a
figure into the ``data:`` URI the HTML report embeds. Output is deterministic: no dates in the files, seeded
jitter, fixed SVG ids.
"""

from __future__ import annotations

import base64
import functools
import io
import math
from typing import Any, Callable, Iterable, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from fairfm.errors import InputError
from fairfm.metrics import auc as auc_score
from fairfm.metrics import ece as ece_score
from fairfm.metrics.thresholds import roc_points

__all__ = [
    "figure_data_uri", "pareto_front", "tradeoff_plot", "fairness_score_plot", "relative_performance_plot",
    "forest_plot", "roc_plot", "calibration_plot", "threshold_plot", "distribution_plot", "metric_series_plot",
]  # fmt: skip

# Okabe & Ito (2008), "Color Universal Design": distinguishable with every common colour-vision deficiency.
# Ordered so the first colours are the most distinct on white; yellow (#F0E442) last, it is faint on white.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#56B4E9", "#CC79A7", "#F0E442")
OVERALL_COLOUR = "#000000"
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "*")
WARNING_COLOUR = "#C00000"
WIDTH_IN = 7.0  # 770 px at the default 110 dpi; shown at ~700 px the 9 pt text is ~12.5 px high

STYLE = {
    "font.size": 9.0, "axes.titlesize": 10.0, "axes.labelsize": 9.0, "xtick.labelsize": 8.5,
    "ytick.labelsize": 8.5, "legend.fontsize": 8.0, "figure.titlesize": 11.0, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.color": "#DDDDDD", "grid.linewidth": 0.6,
    "axes.axisbelow": True, "svg.hashsalt": "fairfm", "svg.fonttype": "path", "lines.linewidth": 1.6,
    "legend.frameon": False, "figure.facecolor": "white", "axes.facecolor": "white",
}  # fmt: skip

MAX_DOTS = 1500  # jittered points drawn per group in distribution_plot
THRESHOLD_METRICS = {"tpr": "TPR", "fpr": "FPR", "ppv": "PPV", "pos_rate": "positive rate", "acc": "accuracy"}


def _styled(func: Callable[..., Figure]) -> Callable[..., Figure]:
    """Run a plot function under the report style: artists take their font sizes etc. when they are created."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with matplotlib.rc_context(STYLE):
            return func(*args, **kwargs)

    return wrapper


def figure_data_uri(fig: Figure, fmt: str = "png", dpi: int = 110) -> str:
    """``data:image/png;base64,…`` (or ``data:image/svg+xml;base64,…`` for ``fmt="svg"``) of ``fig``."""
    mime = {"png": "image/png", "svg": "image/svg+xml"}.get(fmt)
    if mime is None:
        raise InputError(f"figure format {fmt!r} is not supported: use 'png' or 'svg'")
    buffer = io.BytesIO()
    # No software/date metadata: the same figure always gives the same bytes (reports diff cleanly).
    metadata = {"Software": None} if fmt == "png" else {"Date": None, "Creator": None}
    with matplotlib.rc_context({"svg.hashsalt": "fairfm", "svg.fonttype": "path"}):
        fig.savefig(buffer, format=fmt, dpi=dpi, metadata=metadata, facecolor="white")
    return f"data:{mime};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# -- input checks ----------------------------------------------------------------------------------------------
def _require(frame: Any, columns: Iterable[str], where: str) -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise InputError(f"{where}: expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"{where}: missing column(s) {', '.join(map(repr, missing))} "
                         f"(has {', '.join(map(repr, map(str, frame.columns)))})")  # fmt: skip
    if frame.empty:
        raise InputError(f"{where}: no rows to plot")
    return frame.reset_index(drop=True)


def _numeric(frame: pd.DataFrame, column: str, where: str) -> np.ndarray:
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = values.isna() & frame[column].notna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"{where}: column {column!r}, row {row}: {frame[column].iloc[row]!r} is not a number")
    return values.to_numpy(dtype=np.float64)


def _score_inputs(y: Any, score: Any, groups: Any, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y as 0/1 ints, score as floats, groups as str) with unlabelled rows dropped; errors name the row."""
    y_arr = pd.to_numeric(pd.Series(np.asarray(y).reshape(-1)), errors="coerce").to_numpy(dtype=np.float64)
    raw_y = np.asarray(y).reshape(-1)
    p = np.asarray(score, dtype=np.float64).reshape(-1)
    g = np.asarray(groups).reshape(-1)
    if not (y_arr.size == p.size == g.size):
        raise InputError(f"{where}: y has {y_arr.size} values, score {p.size}, groups {g.size} (length mismatch)")
    not_number = np.isnan(y_arr) & pd.notna(pd.Series(raw_y)).to_numpy()
    labelled = ~np.isnan(y_arr)
    bad = not_number | (labelled & ~np.isin(y_arr, (0.0, 1.0)))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        value = raw_y[row].item() if isinstance(raw_y[row], np.generic) else raw_y[row]
        raise InputError(f"{where}: y, row {row}: label {value!r} is not 0 or 1")
    bad = labelled & ~((p >= 0.0) & (p <= 1.0))  # also catches NaN
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"{where}: score, row {row}: {p[row]} is not a probability in [0, 1]")
    if not labelled.any():
        raise InputError(f"{where}: no labelled rows to plot (all {y_arr.size} labels are missing)")
    return y_arr[labelled].astype(np.int64), p[labelled], g[labelled].astype(str)


def _group_order(groups: np.ndarray) -> list[str]:
    return sorted(set(groups.tolist()))


def _colours(names: Sequence[Any]) -> dict[Any, str]:
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def _unique(values: Iterable[Any]) -> list[Any]:
    """Distinct values in order of first appearance (the caller's order is the reader's order)."""
    return list(dict.fromkeys(values))


def _legend_right(ax: Axes, handles: list[Any] | None = None, title: str | None = None) -> None:
    """The legend right of the axes, below any figure title (part of the axes' layout box, so never clipped)."""
    kwargs = {"handles": handles} if handles is not None else {}
    ax.legend(**kwargs, title=title, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
              alignment="left")  # fmt: skip


def _finish(fig: Figure, title: str) -> Figure:
    """Add the title, then fix the layout: constrained layout moves the axes a little on every draw (it converges
    slowly with some axes), so without this a figure saved twice would give different bytes."""
    if title:
        fig.suptitle(title)
    for _ in range(2):  # the second pass settles what the first one moved
        fig.draw_without_rendering()
    fig.set_layout_engine("none")
    return fig


def _interval_lines(ax: Axes, positions: np.ndarray, low: np.ndarray, high: np.ndarray, *, vertical: bool,
                    colour: Any = "#333333", gid: str = "interval") -> None:  # fmt: skip
    """Interval segments where both ends are known. Drawn from low to high, not as errors around the value: a
    percentile bootstrap interval of a gap need not contain its point estimate, and errorbar() would reject it."""
    known = np.isfinite(low) & np.isfinite(high) & np.isfinite(positions)
    if not known.any():
        return
    colours = np.broadcast_to(np.asarray(colour, dtype=object), positions.shape)[known].tolist()
    draw = ax.vlines if vertical else ax.hlines
    lines = draw(positions[known], low[known], high[known], colors=colours, linewidth=1.2, zorder=2)
    lines.set_gid(gid)


# -- Pareto front ----------------------------------------------------------------------------------------------
def pareto_front(utility: Any, unfairness: Any) -> np.ndarray:
    """Mask of the points no other point dominates when maximising utility and minimising unfairness.

    A point is dominated if another is ≥ on utility and ≤ on unfairness and strictly better on one; identical
    points do not dominate each other. Points with a NaN (or infinite) coordinate are never on the front.
    """
    u = np.asarray(utility, dtype=np.float64).reshape(-1)
    f = np.asarray(unfairness, dtype=np.float64).reshape(-1)
    if u.size != f.size:
        raise InputError(f"pareto_front: utility has {u.size} values but unfairness has {f.size}")
    front = np.zeros(u.size, dtype=bool)
    valid = np.flatnonzero(np.isfinite(u) & np.isfinite(f))
    # Sweep from the highest utility down: a point is on the front iff it is the fairest of its utility level and
    # strictly fairer than every point of higher utility. O(n log n).
    order = valid[np.lexsort((f[valid], -u[valid]))]
    best_above = math.inf  # lowest unfairness among points of strictly higher utility
    start = 0
    while start < order.size:
        stop = start
        while stop < order.size and u[order[stop]] == u[order[start]]:
            stop += 1
        level = order[start:stop]
        fairest = f[level[0]]  # sorted by unfairness within the level
        if fairest < best_above:
            front[level[f[level] == fairest]] = True
            best_above = fairest
        start = stop
    return front


def _place_labels(ax: Axes, x: np.ndarray, y: np.ndarray, labels: Sequence[str]) -> None:
    """Annotate points, choosing for each the offset whose text box overlaps least with the labels already placed
    and the other markers. Hand-written because adjustText (the maintained library) is not a dependency; for the
    ≤ ~20 points of a trade-off plot a greedy choice among 8 offsets is enough."""
    ax.figure.draw_without_rendering()  # settle the data→pixel transforms (the layout is fixed already)
    points = ax.transData.transform(np.column_stack([x, y]))
    offsets = [(6, 5, "left", "bottom"), (6, -5, "left", "top"), (-6, 5, "right", "bottom"),
               (-6, -5, "right", "top"), (0, 9, "center", "bottom"), (0, -9, "center", "top"),
               (12, 0, "left", "center"), (-12, 0, "right", "center")]  # fmt: skip
    offsets += [(3 * dx, 3 * dy, ha, va) for dx, dy, ha, va in offsets]  # a farther ring when the near one is full
    axes_box = ax.get_window_extent()
    placed: list[Any] = []
    for i, text in enumerate(labels):
        best = None
        for dx, dy, ha, va in offsets:
            ann = ax.annotate(text, (x[i], y[i]), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                              fontsize=7.5, color="#222222", zorder=5)  # fmt: skip
            ann.set_in_layout(False)  # else the layout would shrink the axes after placement and undo it
            box = ann.get_window_extent()
            cost = 3.0 * sum(_overlap(box, other) for other in placed)  # text on text is the worst
            cost += sum(box.width * box.height * 0.5 for j, pt in enumerate(points)
                        if j != i and box.expanded(1.1, 1.3).contains(*pt))  # fmt: skip
            cost += 0.05 * box.width * box.height * (abs(dx) + abs(dy) > 20)  # prefer the near ring
            cost += box.width * box.height - _overlap(box, axes_box)  # leaving the axes is almost as bad
            ann.remove()
            if best is None or cost < best[0]:
                best = (cost, (dx, dy, ha, va), box)
        dx, dy, ha, va = best[1]
        far = abs(dx) + abs(dy) > 20  # a leader line says which point a far label belongs to
        ann = ax.annotate(text, (x[i], y[i]), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                          fontsize=7.5, color="#222222", zorder=5, gid="point-label",
                          arrowprops={"arrowstyle": "-", "color": "#999999", "linewidth": 0.6, "shrinkA": 0,
                                      "shrinkB": 4} if far else None)  # fmt: skip
        ann.set_in_layout(False)
        placed.append(best[2])


def _overlap(a: Any, b: Any) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return width * height if width > 0 and height > 0 else 0.0


# -- comparison plots --------------------------------------------------------------------------------------------
TRADEOFF_COLUMNS = ("label", "utility", "utility_low", "utility_high", "fairness", "fairness_low", "fairness_high",
                    "attribute_aware")  # fmt: skip


@_styled
def tradeoff_plot(points: pd.DataFrame, *, utility: str = "AUC", fairness: str = "AUC gap",
                  lower_is_fairer: bool = True, title: str = "") -> Figure:  # fmt: skip
    """FairMedFM's utility–fairness trade-off: one marker per row of ``points`` with intervals both ways, the
    Pareto front as a step line, attribute-aware rows hollow. Optional columns ``colour_by`` and ``marker_by``
    (e.g. model and method) pick colour and marker. Labels are annotated when there are ≤ 20 points (only the
    front's otherwise)."""
    frame = _require(points, TRADEOFF_COLUMNS, "tradeoff_plot")
    u = _numeric(frame, "utility", "tradeoff_plot")
    f = _numeric(frame, "fairness", "tradeoff_plot")
    aware = frame["attribute_aware"].fillna(False).astype(bool).to_numpy()
    colour_keys = frame["colour_by"].astype(str).tolist() if "colour_by" in frame else ["_"] * len(frame)
    marker_keys = frame["marker_by"].astype(str).tolist() if "marker_by" in frame else ["_"] * len(frame)
    colour_of = _colours(_unique(colour_keys)) if "colour_by" in frame else {"_": PALETTE[0]}
    marker_of = {k: MARKERS[i % len(MARKERS)] for i, k in enumerate(_unique(marker_keys))}

    fig = Figure(figsize=(WIDTH_IN, 4.6), layout="constrained")
    ax = fig.add_subplot()
    colours = np.array([colour_of[k] for k in colour_keys], dtype=object)
    _interval_lines(ax, u, _numeric(frame, "fairness_low", "tradeoff_plot"),
                    _numeric(frame, "fairness_high", "tradeoff_plot"), vertical=True, colour=colours)  # fmt: skip
    _interval_lines(ax, f, _numeric(frame, "utility_low", "tradeoff_plot"),
                    _numeric(frame, "utility_high", "tradeoff_plot"), vertical=False, colour=colours)  # fmt: skip
    for i in range(len(frame)):
        colour = colour_of[colour_keys[i]]
        ax.scatter([u[i]], [f[i]], s=46, marker=marker_of[marker_keys[i]], linewidths=1.4, zorder=4,
                   facecolors="white" if aware[i] else colour, edgecolors=colour, gid="point")  # fmt: skip

    front = pareto_front(u, f if lower_is_fairer else -f)
    if front.any():
        order = np.flatnonzero(front)[np.argsort(u[front], kind="stable")]
        # steps-pre: from each front point the boundary of the region it dominates goes vertically first.
        ax.plot(u[order], f[order], drawstyle="steps-pre", color="#777777", linestyle=":", linewidth=1.4,
                zorder=3, label="Pareto front", gid="pareto-front")  # fmt: skip

    ax.set_xlabel(f"{utility} (higher is better)")
    ax.set_ylabel(f"{fairness} ({'lower' if lower_is_fairer else 'higher'} is fairer)")
    ax.margins(0.12)

    handles: list[Any] = []
    if "colour_by" in frame:
        handles += [Line2D([], [], linestyle="none", marker="o", color=c, label=k) for k, c in colour_of.items()]
    if "marker_by" in frame:
        handles += [Line2D([], [], linestyle="none", marker=m, color="#555555", label=k)
                    for k, m in marker_of.items()]  # fmt: skip
    if aware.any():
        handles.append(Line2D([], [], linestyle="none", marker="o", markerfacecolor="white",
                              markeredgecolor="#555555", color="#555555", label="uses attribute at test"))  # fmt: skip
    if front.any():
        handles.append(Line2D([], [], color="#777777", linestyle=":", label="Pareto front"))
    _legend_right(ax, handles)
    _finish(fig, title)
    # Labels last: their placement needs the final layout (legend and title take space).
    labels = frame["label"].astype(str).to_numpy()
    shown = np.arange(len(frame)) if len(frame) <= 20 else np.flatnonzero(front)
    finite = shown[np.isfinite(u[shown]) & np.isfinite(f[shown])]
    _place_labels(ax, u[finite], f[finite], labels[finite].tolist())
    return fig


@_styled
def fairness_score_plot(frame: pd.DataFrame, *, title: str = "") -> Figure:
    """Khan et al.'s fairness score: one panel per attribute, one horizontal bar per label. Scores are comparable
    only within an attribute (the constant C is per attribute), hence panels rather than one shared axis."""
    data = _require(frame, ("label", "attribute", "score"), "fairness_score_plot")
    scores = _numeric(data, "score", "fairness_score_plot")
    duplicated = data.duplicated(["label", "attribute"])
    if duplicated.any():
        row = data[duplicated].iloc[0]
        raise InputError(f"fairness_score_plot: label {row['label']!r}, attribute {row['attribute']!r} "
                         "appears more than once")  # fmt: skip
    attributes = _unique(data["attribute"].astype(str))
    labels = _unique(data["label"].astype(str))
    height = 0.7 + sum(0.55 + 0.28 * (data["attribute"].astype(str) == a).sum() for a in attributes)
    fig = Figure(figsize=(WIDTH_IN, max(2.4, height)), layout="constrained")
    axes = fig.subplots(len(attributes), 1, squeeze=False)[:, 0]
    colour_of = _colours(attributes)
    for ax, attribute in zip(axes, attributes):
        rows = np.flatnonzero(data["attribute"].astype(str).to_numpy() == attribute)
        rows = rows[np.argsort([labels.index(str(data["label"].iloc[r])) for r in rows], kind="stable")]
        ys = np.arange(rows.size)[::-1]
        ax.barh(ys, scores[rows], height=0.62, color=colour_of[attribute], gid="score-bar")
        ax.set_yticks(ys, [str(data["label"].iloc[r]) for r in rows])
        ax.grid(axis="y", visible=False)
        for yv, value in zip(ys, scores[rows]):
            if np.isfinite(value):
                ax.text(value, yv, f" {value:.1f}", va="center", ha="left", fontsize=8)
        ax.axvline(1.0, color="#555555", linewidth=0.9, linestyle="--", gid="least-fair-line")
        ax.set_title(f"{attribute}", loc="left", fontweight="bold")
        finite = scores[rows][np.isfinite(scores[rows])]
        ax.set_xlim(0, max(1.0, float(finite.max()) if finite.size else 1.0) * 1.12)
    axes[-1].set_xlabel("fairness score (higher is fairer; the least fair model scores 1, dashed)")
    return _finish(fig, title)


RELATIVE_COLUMNS = ("label", "task", "group", "delta", "delta_low", "delta_high")


@_styled
def relative_performance_plot(frame: pd.DataFrame, *, metric: str = "AUC", title: str = "") -> Figure:
    """Khan et al.'s per-subgroup relative performance: group metric − population metric as bars per (task,
    group), one panel per label (per task when there is one label), a zero line and intervals."""
    data = _require(frame, RELATIVE_COLUMNS, "relative_performance_plot")
    delta = _numeric(data, "delta", "relative_performance_plot")
    low = _numeric(data, "delta_low", "relative_performance_plot")
    high = _numeric(data, "delta_high", "relative_performance_plot")
    labels = _unique(data["label"].astype(str))
    tasks = _unique(data["task"].astype(str))
    groups = _unique(data["group"].astype(str))
    by_task = len(labels) == 1
    panels = tasks if by_task else labels
    panel_column = "task" if by_task else "label"
    categories = [labels[0]] if by_task else tasks  # x categories within a panel

    ncols = 1 if len(panels) == 1 else 2
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(WIDTH_IN, 0.8 + 2.7 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    colour_of = _colours(groups)
    width = 0.8 / len(groups)
    for index, panel in enumerate(panels):
        ax = axes.flat[index]
        in_panel = data[panel_column].astype(str).to_numpy() == panel
        for gi, group in enumerate(groups):
            rows = np.flatnonzero(in_panel & (data["group"].astype(str).to_numpy() == group))
            if rows.size == 0:
                continue
            cat = data["label" if by_task else "task"].astype(str).to_numpy()[rows]
            xs = np.array([categories.index(c) for c in cat], dtype=float) + (gi - (len(groups) - 1) / 2) * width
            ax.bar(xs, delta[rows], width=width * 0.92, color=colour_of[group], label=group, gid="delta-bar")
            _interval_lines(ax, xs, low[rows], high[rows], vertical=True)
        ax.axhline(0.0, color="#333333", linewidth=0.9, gid="zero-line")
        ax.grid(axis="x", visible=False)
        if by_task:  # one bar per group: name them on the axis
            ax.set_xticks((np.arange(len(groups)) - (len(groups) - 1) / 2) * width, groups)
        else:
            ax.set_xticks(range(len(categories)), categories)
        ax.set_title(panel, loc="left", fontweight="bold", fontsize=9)
        if index % ncols == 0:
            ax.set_ylabel(f"group {metric} − population {metric}")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    handles = [Patch(color=colour_of[g], label=g) for g in groups]
    _legend_right(axes.flat[ncols - 1], handles, title="group")
    return _finish(fig, title)


FOREST_COLUMNS = ("label", "metric", "value", "low", "high")


@_styled
def forest_plot(frame: pd.DataFrame, *, reference: float | None = 0.0, title: str = "") -> Figure:
    """A forest plot: one row per (label, metric) — point and interval, the numbers on the right — grouped by
    metric (one panel each, shared x axis), with a vertical reference line (none when ``reference`` is None)."""
    data = _require(frame, FOREST_COLUMNS, "forest_plot")
    value = _numeric(data, "value", "forest_plot")
    low = _numeric(data, "low", "forest_plot")
    high = _numeric(data, "high", "forest_plot")
    metrics = _unique(data["metric"].astype(str))
    counts = [int((data["metric"].astype(str) == m).sum()) for m in metrics]
    fig = Figure(figsize=(WIDTH_IN, 0.9 + sum(0.45 + 0.26 * c for c in counts)), layout="constrained")
    axes = fig.subplots(len(metrics), 1, squeeze=False, sharex=True, height_ratios=[c + 1.2 for c in counts])[:, 0]
    for ax, metric, count in zip(axes, metrics, counts):
        rows = np.flatnonzero(data["metric"].astype(str).to_numpy() == metric)
        ys = np.arange(count, dtype=float)[::-1]
        _interval_lines(ax, ys, low[rows], high[rows], vertical=False, colour=PALETTE[0])
        ax.plot(value[rows], ys, linestyle="none", marker="D", markersize=5, color=PALETTE[0], gid="forest-point")
        ax.set_yticks(ys, data["label"].astype(str).to_numpy()[rows])
        ax.set_ylim(-0.7, count - 0.3)
        ax.grid(axis="y", visible=False)
        if reference is not None:
            ax.axvline(reference, color="#555555", linewidth=0.9, linestyle="--", gid="reference-line")
        ax.set_title(metric, loc="left", fontweight="bold", fontsize=9)
        right = ax.twinx()
        right.set_ylim(ax.get_ylim())
        texts = [_value_with_interval(value[r], low[r], high[r]) for r in rows]
        right.set_yticks(ys, texts)
        right.tick_params(axis="y", length=0, labelsize=8)
        right.grid(False)
        right.spines[["top", "right"]].set_visible(False)
    axes[-1].set_xlabel("value with interval" + (f" (dashed: {reference:g})" if reference is not None else ""))
    return _finish(fig, title)


def _value_with_interval(value: float, low: float, high: float) -> str:
    if not np.isfinite(value):
        return "–"
    text = f"{value:.3f}"
    if np.isfinite(low) and np.isfinite(high):
        text += f" [{low:.3f}, {high:.3f}]"
    return text


# -- per-sample plots ------------------------------------------------------------------------------------------
@_styled
def roc_plot(y: Any, score: Any, groups: Any, *, title: str = "") -> Figure:
    """Glocker et al.'s subgroup ROC curves: one curve per group with both classes, "all" dashed, each legend
    entry with the group's AUC and n; a group with one class is listed without a curve."""
    y, p, g = _score_inputs(y, score, groups, "roc_plot")
    names = _group_order(g)
    colour_of = _colours(names)
    fig = Figure(figsize=(WIDTH_IN, 4.4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="#BBBBBB", linewidth=0.9, linestyle=":", label="_chance")
    handles: list[Any] = []
    for name in [*names, None]:
        mask = np.ones(y.size, dtype=bool) if name is None else g == name
        n, n_pos = int(mask.sum()), int(y[mask].sum())
        shown = "all" if name is None else name
        if n_pos == 0 or n_pos == n:
            handles.append(Line2D([], [], linestyle="none", label=f"{shown}: n={n}, one class only — no curve"))
            continue
        fpr, tpr, _ = roc_points(y[mask], p[mask], drop_intermediate=True)
        label = f"{shown}: AUC {auc_score(y[mask], p[mask]):.3f}, n={n}"
        style = {"color": OVERALL_COLOUR, "linestyle": "--", "linewidth": 1.3} if name is None else {
            "color": colour_of[name]}  # fmt: skip
        (line,) = ax.plot(fpr, tpr, label=label, gid="roc-all" if name is None else "roc-group", **style)
        handles.append(line)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    _legend_right(ax, handles)
    return _finish(fig, title)


@_styled
def calibration_plot(y: Any, score: Any, groups: Any, *, bins: int = 10, title: str = "") -> Figure:
    """Reliability diagram per group: in each of ``bins`` equal-width score bins the mean score against the
    fraction positive, marker area ∝ the bin's count; the diagonal is perfect calibration. The legend's ECE is
    the report's metric (10 equal-width bins)."""
    if not isinstance(bins, (int, np.integer)) or bins < 1:
        raise InputError(f"calibration_plot: bins must be a positive integer, got {bins!r}")
    y, p, g = _score_inputs(y, score, groups, "calibration_plot")
    names = _group_order(g)
    colour_of = _colours(names)
    fig = Figure(figsize=(WIDTH_IN, 4.4), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="#999999", linewidth=0.9, linestyle="--", label="_perfect")
    # Left-closed bins, the last one including 1, as fairfm.metrics.ece bins.
    index = np.minimum(np.floor(p * bins).astype(np.int64), bins - 1)
    largest = max(int(np.bincount(index[g == name], minlength=bins).max()) for name in names)
    handles: list[Any] = []
    for name in names:
        mask = g == name
        counts = np.bincount(index[mask], minlength=bins)
        used = counts > 0
        mean_score = np.bincount(index[mask], weights=p[mask], minlength=bins)[used] / counts[used]
        positive = np.bincount(index[mask], weights=y[mask], minlength=bins)[used] / counts[used]
        colour = colour_of[name]
        (line,) = ax.plot(mean_score, positive, color=colour, linewidth=1.2, marker=None, gid="calibration-line",
                          label=f"{name}: n={int(mask.sum())}, ECE {ece_score(y[mask], p[mask]):.3f}")  # fmt: skip
        ax.scatter(mean_score, positive, s=12 + 140 * counts[used] / largest, color=colour, alpha=0.85,
                   edgecolors="white", linewidths=0.5, zorder=3, gid="calibration-points")  # fmt: skip
        handles.append(line)
    ax.set_xlabel(f"mean predicted probability ({bins} equal-width bins)")
    ax.set_ylabel("fraction positive")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    handles.append(Line2D([], [], linestyle="none", marker="o", color="#777777", label="marker area ∝ bin count"))
    _legend_right(ax, handles)
    return _finish(fig, title)


def _threshold_curve(y: np.ndarray, p: np.ndarray, metric: str, thresholds: np.ndarray) -> np.ndarray:
    """``metric`` at ŷ = 1[p ≥ t] for every t (NaN where undefined, e.g. PPV with no positive prediction)."""
    order = np.sort(p)
    predicted_pos = p.size - np.searchsorted(order, thresholds, side="left")
    positives = np.sort(p[y == 1])
    tp = positives.size - np.searchsorted(positives, thresholds, side="left")
    fp = predicted_pos - tp
    n_pos, n_neg = positives.size, p.size - positives.size
    with np.errstate(invalid="ignore", divide="ignore"):
        if metric == "tpr":
            return tp / n_pos if n_pos else np.full(thresholds.shape, np.nan)
        if metric == "fpr":
            return fp / n_neg if n_neg else np.full(thresholds.shape, np.nan)
        if metric == "ppv":
            return np.where(predicted_pos > 0, tp / np.maximum(predicted_pos, 1), np.nan)
        if metric == "pos_rate":
            return predicted_pos / p.size
        return (tp + (n_neg - fp)) / p.size  # acc


@_styled
def threshold_plot(y: Any, score: Any, groups: Any, *, metric: str, threshold: float | None, policy: str,
                   leaks_labels: bool, title: str = "") -> Figure:  # fmt: skip
    """A thresholded metric (tpr, fpr, ppv, pos_rate or acc) per group as the threshold runs over [0, 1], the
    chosen threshold as a vertical line labelled with its policy, and a red warning when it was chosen on the test
    labels (``leaks_labels``)."""
    if metric not in THRESHOLD_METRICS:
        raise InputError(f"threshold_plot: metric {metric!r} is not one of {', '.join(THRESHOLD_METRICS)}")
    if threshold is not None and not (np.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise InputError(f"threshold_plot: threshold {threshold!r} is not in [0, 1]")
    y, p, g = _score_inputs(y, score, groups, "threshold_plot")
    names = _group_order(g)
    colour_of = _colours(names)
    grid = np.linspace(0.0, 1.0, 201)
    fig = Figure(figsize=(WIDTH_IN, 4.0), layout="constrained")
    ax = fig.add_subplot()
    handles: list[Any] = []
    for name in [*names, None]:
        mask = np.ones(y.size, dtype=bool) if name is None else g == name
        shown = "all" if name is None else name
        values = _threshold_curve(y[mask], p[mask], metric, grid)
        if not np.isfinite(values).any():
            handles.append(Line2D([], [], linestyle="none", label=f"{shown}: n={int(mask.sum())}, undefined"))
            continue
        style = {"color": OVERALL_COLOUR, "linestyle": "--", "linewidth": 1.3} if name is None else {
            "color": colour_of[name]}  # fmt: skip
        (line,) = ax.plot(grid, values, label=f"{shown} (n={int(mask.sum())})",
                          gid="threshold-all" if name is None else "threshold-group", **style)  # fmt: skip
        handles.append(line)
    if threshold is not None:
        line = ax.axvline(threshold, color="#444444", linewidth=1.1, linestyle=":", gid="chosen-threshold",
                          label=f"threshold {threshold:.3f} ({policy})")  # fmt: skip
        handles.append(line)
        ax.annotate(f"{policy}: {threshold:.3f}", (threshold, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(4, -4), textcoords="offset points", ha="left" if threshold < 0.75 else "right",
                    va="top", fontsize=8, color="#444444")  # fmt: skip
    if leaks_labels:
        warning = ax.set_title("⚠ threshold chosen on the test labels (optimistic)", loc="left",
                               color=WARNING_COLOUR, fontweight="bold", fontsize=9)  # fmt: skip
        warning.set_gid("leak-warning")
    ax.set_xlabel("threshold t (predict positive when score ≥ t)")
    ax.set_ylabel(THRESHOLD_METRICS[metric])
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    _legend_right(ax, handles)
    return _finish(fig, title)


@_styled
def distribution_plot(values: Any, groups: Any, *, metric: str = "Dice", title: str = "") -> Figure:
    """Per-group distribution of a per-sample score (segmentation Dice/IoU): a box (quartiles, whiskers at
    1.5 IQR) over the jittered samples, each group's n in its tick label. NaN values are dropped."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    g = np.asarray(groups).reshape(-1)
    if v.size != g.size:
        raise InputError(f"distribution_plot: values has {v.size} entries but groups has {g.size}")
    keep = ~np.isnan(v)
    v, g = v[keep], g[keep].astype(str)
    if v.size == 0:
        raise InputError("distribution_plot: no values to plot (all are missing)")
    names = _group_order(g)
    colour_of = _colours(names)
    fig = Figure(figsize=(WIDTH_IN, 3.8), layout="constrained")
    ax = fig.add_subplot()
    rng = np.random.default_rng(0)  # seeded: the same data always gives the same picture
    samples = [v[g == name] for name in names]
    for i, (name, sample) in enumerate(zip(names, samples)):
        # The box uses every sample; the dots a seeded subset, as more only blurs (and bloats the PNG).
        dots = sample if sample.size <= MAX_DOTS else rng.choice(sample, MAX_DOTS, replace=False)
        jitter = rng.uniform(-0.18, 0.18, dots.size)
        ax.scatter(i + jitter, dots, s=9 if dots.size < 500 else 4, color=colour_of[name],
                   alpha=0.55 if dots.size < 500 else 0.3, linewidths=0, zorder=2, gid="samples",
                   rasterized=dots.size >= 500)  # fmt: skip
    ax.boxplot(samples, positions=range(len(names)), widths=0.5, showfliers=False, zorder=3,
               medianprops={"color": "#000000", "linewidth": 1.6}, boxprops={"linewidth": 1.1},
               whiskerprops={"linewidth": 1.1}, capprops={"linewidth": 1.1}, patch_artist=False)  # fmt: skip
    ax.set_xticks(range(len(names)), [f"{name}\n(n={sample.size})" for name, sample in zip(names, samples)])
    subsampled = any(sample.size > MAX_DOTS for sample in samples)
    ax.set_xlabel("group" + (f" (dots: a random {MAX_DOTS:,} per group; boxes: all samples)" if subsampled else ""))
    ax.set_ylabel(f"{metric} per sample")
    ax.grid(axis="x", visible=False)
    return _finish(fig, title)


@_styled
def metric_series_plot(frame: pd.DataFrame, *, x: str, title: str = "") -> Figure:
    """One line per (label, metric) over the column ``x`` (e.g. a checkpoint's step) with its interval as a
    band. Numeric x is sorted; other x values are categories in order of appearance."""
    data = _require(frame, (x, "metric", "value", "low", "high"), "metric_series_plot")
    value = _numeric(data, "value", "metric_series_plot")
    low = _numeric(data, "low", "metric_series_plot")
    high = _numeric(data, "high", "metric_series_plot")
    numeric_x = pd.api.types.is_numeric_dtype(data[x])
    categories = [] if numeric_x else _unique(data[x].astype(str))
    xs = data[x].to_numpy(dtype=np.float64) if numeric_x else np.array(
        [categories.index(c) for c in data[x].astype(str)], dtype=np.float64)  # fmt: skip
    label_keys = data["label"].astype(str).to_numpy() if "label" in data else np.full(len(data), "")
    metric_keys = data["metric"].astype(str).to_numpy()
    series = _unique(zip(label_keys, metric_keys))
    colour_of = _colours(series)
    fig = Figure(figsize=(WIDTH_IN, 3.8), layout="constrained")
    ax = fig.add_subplot()
    for key in series:
        rows = np.flatnonzero((label_keys == key[0]) & (metric_keys == key[1]))
        rows = rows[np.argsort(xs[rows], kind="stable")]
        name = " · ".join(k for k in key if k)
        ax.plot(xs[rows], value[rows], marker="o", markersize=3.5, color=colour_of[key], label=name, gid="series")
        band = np.isfinite(low[rows]) & np.isfinite(high[rows])
        if band.any():
            ax.fill_between(xs[rows], low[rows], high[rows], where=band, color=colour_of[key], alpha=0.18,
                            linewidth=0, gid="series-band")  # fmt: skip
    if not numeric_x:
        ax.set_xticks(range(len(categories)), categories)
    ax.set_xlabel(x)
    metrics = _unique(metric_keys)
    ax.set_ylabel(metrics[0] if len(metrics) == 1 else "value")
    _legend_right(ax)
    return _finish(fig, title)
