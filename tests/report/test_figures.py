"""The report's figures: each checked against an independent computation of what it should show."""

from __future__ import annotations

import base64
import io
import itertools

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image
from sklearn.metrics import roc_auc_score, roc_curve

from fairfm.errors import InputError
from fairfm.report import figures as F


# -- helpers ---------------------------------------------------------------------------------------------------
def png_image(fig: Figure) -> Image.Image:
    uri = F.figure_data_uri(fig, dpi=fig.dpi)
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")


def assert_axes_not_blank(fig: Figure) -> None:
    """Every visible axes area of the rendered PNG holds more than one colour (something was drawn in it)."""
    image = png_image(fig)
    for ax in fig.axes:
        if not ax.get_visible() or not ax.has_data():
            continue
        box = ax.get_window_extent()
        crop = image.crop((int(box.x0) + 2, image.height - int(box.y1) + 2, int(box.x1) - 2,
                           image.height - int(box.y0) - 2))  # fmt: skip
        colours = crop.getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 1, f"axes {ax.get_title()!r} is blank"
        # more than the white background and the grey grid: the data's colours are there
        assert len(colours) > 3


def data_lines(ax) -> list[Line2D]:
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()]


def scores_frame(seed: int = 0, n: int = 600):
    rng = np.random.default_rng(seed)
    groups = rng.choice(["F", "M"], n)
    y = (rng.uniform(size=n) < 0.35).astype(float)
    score = np.clip(0.35 * y + rng.normal(0.35, 0.18, n) + 0.05 * (groups == "F"), 0, 1)
    return y, score, groups


def tradeoff_points(n: int = 8, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    u, f = rng.uniform(0.7, 0.9, n), rng.uniform(0.0, 0.12, n)
    return pd.DataFrame({
        "label": [f"model{i % 3} · method{i}" for i in range(n)], "utility": u, "utility_low": u - 0.02,
        "utility_high": u + 0.02, "fairness": f, "fairness_low": f - 0.01, "fairness_high": f + 0.015,
        "attribute_aware": [i % 3 == 0 for i in range(n)], "colour_by": [f"model{i % 3}" for i in range(n)],
        "marker_by": [f"method{i % 2}" for i in range(n)],
    })  # fmt: skip


# -- Pareto front ------------------------------------------------------------------------------------------------
def pareto_oracle(u, f):
    """Brute force straight from the definition."""
    out = []
    for i in range(len(u)):
        if np.isnan(u[i]) or np.isnan(f[i]):
            out.append(False)
            continue
        dominated = any(
            not (np.isnan(u[j]) or np.isnan(f[j])) and u[j] >= u[i] and f[j] <= f[i] and (u[j] > u[i] or f[j] < f[i])
            for j in range(len(u))
        )  # fmt: skip
        out.append(not dominated)
    return np.array(out, dtype=bool)


# small integer grids make ties (equal utility, equal unfairness, identical points) common
coordinate = st.one_of(st.integers(0, 4).map(float), st.just(float("nan")),
                       st.floats(0, 1, allow_nan=False))  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(coordinate, coordinate), max_size=25))
def test_pareto_front_matches_brute_force(points):
    u = np.array([p[0] for p in points], dtype=float)
    f = np.array([p[1] for p in points], dtype=float)
    front = F.pareto_front(u, f)
    assert front.dtype == bool and front.shape == u.shape
    np.testing.assert_array_equal(front, pareto_oracle(u, f))


def test_pareto_front_by_hand():
    # (0.9, 0.1) and (0.8, 0.05) trade off; (0.8, 0.1) is dominated by both; duplicates stay; NaN never
    u = [0.9, 0.8, 0.8, 0.9, np.nan, 0.95]
    f = [0.1, 0.05, 0.1, 0.1, 0.0, np.nan]
    assert F.pareto_front(u, f).tolist() == [True, True, False, True, False, False]
    with pytest.raises(InputError, match="3 values"):
        F.pareto_front([1, 2, 3], [1, 2])


# -- data URI ----------------------------------------------------------------------------------------------------
def test_figure_data_uri_png_and_svg_are_deterministic():
    y, s, g = scores_frame()
    first, second = F.roc_plot(y, s, g), F.roc_plot(y, s, g)
    png = F.figure_data_uri(first)
    assert png == F.figure_data_uri(second) == F.figure_data_uri(first)
    image = Image.open(io.BytesIO(base64.b64decode(png.split(",", 1)[1])))
    assert image.format == "PNG" and 700 <= image.width <= 800  # 7 in at 110 dpi: readable at ~700 px
    svg = F.figure_data_uri(first, fmt="svg")
    assert svg.startswith("data:image/svg+xml;base64,")
    text = base64.b64decode(svg.split(",", 1)[1]).decode()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    assert svg == F.figure_data_uri(second, fmt="svg")
    with pytest.raises(InputError, match="'jpg'"):
        F.figure_data_uri(first, fmt="jpg")


# -- trade-off ---------------------------------------------------------------------------------------------------
def test_tradeoff_front_points_and_markers():
    points = tradeoff_points(n=12)
    fig = F.tradeoff_plot(points, title="trade-off")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    (front_line,) = [line for line in ax.get_lines() if line.get_gid() == "pareto-front"]
    front = F.pareto_front(points["utility"], points["fairness"])
    order = np.argsort(points["utility"][front].to_numpy())
    np.testing.assert_allclose(front_line.get_xdata(), points["utility"][front].to_numpy()[order])
    np.testing.assert_allclose(front_line.get_ydata(), points["fairness"][front].to_numpy()[order])
    assert front_line.get_drawstyle() == "steps-pre"
    markers = [c for c in ax.collections if c.get_gid() == "point"]
    assert len(markers) == len(points)
    hollow = [tuple(m.get_facecolor()[0]) == (1.0, 1.0, 1.0, 1.0) for m in markers]
    assert hollow == points["attribute_aware"].tolist()
    texts = legend_texts(ax)
    assert "uses attribute at test" in texts and "Pareto front" in texts
    assert {"model0", "model1", "model2", "method0", "method1"} <= set(texts)
    # both interval directions drawn, one segment per point each
    intervals = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert sorted(len(c.get_segments()) for c in intervals) == [12, 12]
    assert_axes_not_blank(fig)


def test_tradeoff_labels_do_not_overlap():
    points = tradeoff_points(n=12, seed=3)
    fig = F.tradeoff_plot(points)
    fig.draw_without_rendering()
    labels = [t for t in fig.axes[0].texts if t.get_gid() == "point-label"]
    assert sorted(t.get_text() for t in labels) == sorted(points["label"])
    boxes = [t.get_window_extent() for t in labels]
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), "two point labels overlap"


def test_tradeoff_higher_is_fairer_flips_the_front_and_nan_intervals_are_fine():
    points = tradeoff_points(n=6).assign(attribute_aware=False)
    points.loc[:, ["utility_low", "utility_high", "fairness_low"]] = np.nan
    points = points.drop(columns=["colour_by", "marker_by"])
    fig = F.tradeoff_plot(points, fairness="worst AUC", lower_is_fairer=False)
    ax = fig.axes[0]
    (front_line,) = [line for line in ax.get_lines() if line.get_gid() == "pareto-front"]
    front = F.pareto_front(points["utility"], -points["fairness"])
    assert sorted(front_line.get_xdata()) == sorted(points["utility"][front])
    assert "uses attribute at test" not in legend_texts(ax)
    assert not [c for c in ax.collections if isinstance(c, LineCollection)]  # no complete interval to draw
    assert "higher is fairer" in ax.get_ylabel()
    assert_axes_not_blank(fig)


def test_tradeoff_single_point_and_missing_columns():
    fig = F.tradeoff_plot(tradeoff_points(n=1))
    (front_line,) = [line for line in fig.axes[0].get_lines() if line.get_gid() == "pareto-front"]
    assert len(front_line.get_xdata()) == 1
    with pytest.raises(InputError, match="'fairness_high'.*'attribute_aware'"):
        F.tradeoff_plot(tradeoff_points().drop(columns=["fairness_high", "attribute_aware"]))
    with pytest.raises(InputError, match="no rows"):
        F.tradeoff_plot(tradeoff_points().iloc[:0])


# -- fairness score, relative performance, forest ------------------------------------------------------------------
def test_fairness_score_bars_per_attribute():
    frame = pd.DataFrame({"label": ["A", "B", "C"] * 2, "attribute": ["sex"] * 3 + ["age"] * 3,
                          "score": [1.0, 4.5, 2.0, 3.0, 1.0, 6.0]})  # fmt: skip
    fig = F.fairness_score_plot(frame, title="FS")
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["sex", "age"]
    for ax, attribute in zip(fig.axes, ["sex", "age"]):
        bars = [p for p in ax.patches if p.get_gid() == "score-bar"]
        expected = frame[frame.attribute == attribute]
        # top to bottom in the frame's order
        by_height = sorted(bars, key=lambda b: -b.get_y())
        np.testing.assert_allclose([b.get_width() for b in by_height], expected["score"])
        ticks = sorted(zip(ax.get_yticks(), [t.get_text() for t in ax.get_yticklabels()]), reverse=True)
        assert [text for _, text in ticks] == expected["label"].tolist()
    assert_axes_not_blank(fig)
    with pytest.raises(InputError, match="'B'.*'sex'.*more than once"):
        F.fairness_score_plot(pd.concat([frame, frame.iloc[[1]]]))
    with pytest.raises(InputError, match="'score'"):
        F.fairness_score_plot(frame.drop(columns="score"))


def relative_frame(labels=("m1", "m2", "m3"), tasks=("y", "z")):
    rows = []
    for i, (label, task, group) in enumerate(itertools.product(labels, tasks, ["F", "M", "old"])):
        delta = 0.01 * (i % 5 - 2)
        rows.append({"label": label, "task": task, "group": group, "delta": delta, "delta_low": delta - 0.01,
                     "delta_high": delta + 0.01})  # fmt: skip
    return pd.DataFrame(rows)


def test_relative_performance_panels_bars_and_zero_line():
    frame = relative_frame()
    fig = F.relative_performance_plot(frame, title="relative")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title(loc="left") for ax in visible] == ["m1", "m2", "m3"]
    for ax, label in zip(visible, ["m1", "m2", "m3"]):
        bars = [p for p in ax.patches if p.get_gid() == "delta-bar"]
        assert sorted(b.get_height() for b in bars) == pytest.approx(sorted(frame[frame.label == label]["delta"]))
        assert any(line.get_gid() == "zero-line" and line.get_ydata()[0] == 0 for line in ax.get_lines())
        assert [t.get_text() for t in ax.get_xticklabels()] == ["y", "z"]
    assert legend_texts(visible[1]) == ["F", "M", "old"]
    assert "group AUC − population AUC" in visible[0].get_ylabel()
    assert_axes_not_blank(fig)


def test_relative_performance_one_label_is_one_panel_per_task():
    frame = relative_frame(labels=("only",))
    frame.loc[0, ["delta_low", "delta_high"]] = np.nan
    fig = F.relative_performance_plot(frame, metric="Dice")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title(loc="left") for ax in visible] == ["y", "z"]
    assert [t.get_text() for t in visible[0].get_xticklabels()] == ["F", "M", "old"]
    segments = [c for c in visible[0].collections if isinstance(c, LineCollection)]
    assert sum(len(c.get_segments()) for c in segments) == 2  # the NaN interval is not drawn
    assert "Dice" in visible[0].get_ylabel()


def forest_frame(n_labels=3, metrics=("AUC gap", "EOD")):
    rows = [{"label": f"run{i}", "metric": m, "value": 0.02 * i + 0.01 * j, "low": 0.02 * i - 0.01,
             "high": 0.02 * i + 0.03} for j, m in enumerate(metrics) for i in range(n_labels)]  # fmt: skip
    return pd.DataFrame(rows)


def test_forest_plot_rows_reference_and_height():
    frame = forest_frame()
    fig = F.forest_plot(frame, reference=0.0)
    axes = [ax for ax in fig.axes if ax.get_title(loc="left")]
    assert [ax.get_title(loc="left") for ax in axes] == ["AUC gap", "EOD"]
    for ax, metric in zip(axes, ["AUC gap", "EOD"]):
        (points,) = [line for line in ax.get_lines() if line.get_gid() == "forest-point"]
        np.testing.assert_allclose(points.get_xdata(), frame[frame.metric == metric]["value"])
        (ref,) = [line for line in ax.get_lines() if line.get_gid() == "reference-line"]
        assert ref.get_xdata()[0] == 0.0
        (intervals,) = [c for c in ax.collections if isinstance(c, LineCollection)]
        assert len(intervals.get_segments()) == 3
    right_texts = [t.get_text() for ax in fig.axes for t in ax.get_yticklabels()]
    assert "0.030 [0.010, 0.050]" in right_texts
    assert_axes_not_blank(fig)
    taller = F.forest_plot(forest_frame(n_labels=12), reference=None)
    assert taller.get_figheight() > fig.get_figheight()
    assert not [line for ax in taller.axes for line in ax.get_lines() if line.get_gid() == "reference-line"]


# -- per-sample plots ----------------------------------------------------------------------------------------------
def test_roc_curves_match_sklearn_and_legend_names_auc_and_n():
    y, s, g = scores_frame()
    y[:7] = np.nan  # dropped, not an error
    fig = F.roc_plot(y, s, g, title="ROC")
    ax = fig.axes[0]
    lines = data_lines(ax)
    assert len(lines) == 3  # F, M, all
    labelled = ~np.isnan(y)
    texts = legend_texts(ax)
    for name, line in zip(["F", "M", "all"], lines):
        mask = labelled & ((g == name) if name != "all" else True)
        auc = roc_auc_score(y[mask], s[mask])
        assert f"{name}: AUC {auc:.3f}, n={int(mask.sum())}" in texts
        fpr, tpr, _ = roc_curve(y[mask], s[mask], drop_intermediate=True)
        np.testing.assert_allclose(line.get_xdata(), fpr)
        np.testing.assert_allclose(line.get_ydata(), tpr)
    assert lines[-1].get_linestyle() == "--"
    assert_axes_not_blank(fig)


def test_roc_single_class_group_gets_no_curve_and_one_group_works():
    y, s, g = scores_frame()
    g = g.astype(object)
    g[:40] = "tiny"
    y[:40] = 0
    fig = F.roc_plot(y, s, g)
    ax = fig.axes[0]
    assert len(data_lines(ax)) == 3
    assert "tiny: n=40, one class only — no curve" in legend_texts(ax)
    one = F.roc_plot(y, s, np.full(y.size, "everyone"))
    assert len(data_lines(one.axes[0])) == 2


def test_calibration_points_are_bin_means_and_fractions():
    y, s, g = scores_frame(seed=2)
    bins = 5
    fig = F.calibration_plot(y, s, g, bins=bins)
    ax = fig.axes[0]
    lines = [line for line in ax.get_lines() if line.get_gid() == "calibration-line"]
    dots = [c for c in ax.collections if c.get_gid() == "calibration-points"]
    assert len(lines) == len(dots) == 2
    edges = np.linspace(0, 1, bins + 1)
    for name, line, dot in zip(["F", "M"], lines, dots):
        ys, ss = y[g == name], s[g == name]
        xs, fractions, counts = [], [], []
        for k in range(bins):  # brute force, the last bin closed on the right
            inside = (ss >= edges[k]) & ((ss < edges[k + 1]) if k < bins - 1 else (ss <= 1.0))
            if inside.any():
                xs.append(ss[inside].mean())
                fractions.append(ys[inside].mean())
                counts.append(inside.sum())
        np.testing.assert_allclose(line.get_xdata(), xs)
        np.testing.assert_allclose(line.get_ydata(), fractions)
        sizes = dot.get_sizes()
        assert np.all(np.argsort(sizes, kind="stable") == np.argsort(counts, kind="stable"))  # area grows with n
    texts = legend_texts(ax)
    assert any(t.startswith(f"F: n={(g == 'F').sum()}, ECE ") for t in texts)
    assert any(line.get_label() == "_perfect" for line in ax.get_lines())
    assert_axes_not_blank(fig)
    with pytest.raises(InputError, match="bins"):
        F.calibration_plot(y, s, g, bins=0)


def brute_force_rate(y, s, metric, t):
    pred = s >= t
    if metric == "tpr":
        return pred[y == 1].mean() if (y == 1).any() else np.nan
    if metric == "fpr":
        return pred[y == 0].mean() if (y == 0).any() else np.nan
    if metric == "ppv":
        return y[pred].mean() if pred.any() else np.nan
    if metric == "pos_rate":
        return pred.mean()
    return (pred == (y == 1)).mean()


@pytest.mark.parametrize("metric", ["tpr", "fpr", "ppv", "pos_rate", "acc"])
def test_threshold_curves_match_brute_force(metric):
    y, s, g = scores_frame(seed=4, n=300)
    s[:20] = 0.5  # ties at a grid point: ŷ = 1[p ≥ t] includes them
    fig = F.threshold_plot(y, s, g, metric=metric, threshold=0.5, policy="fixed", leaks_labels=False)
    ax = fig.axes[0]
    lines = [line for line in ax.get_lines() if line.get_gid() in ("threshold-group", "threshold-all")]
    assert len(lines) == 3
    for name, line in zip(["F", "M", "all"], lines):
        mask = (g == name) if name != "all" else np.ones(y.size, dtype=bool)
        expected = [brute_force_rate(y[mask], s[mask], metric, t) for t in line.get_xdata()]
        np.testing.assert_allclose(line.get_ydata(), expected, equal_nan=True)


def test_threshold_line_policy_and_leak_warning():
    y, s, g = scores_frame()
    leaky = F.threshold_plot(y, s, g, metric="tpr", threshold=0.37, policy="youden@test", leaks_labels=True)
    ax = leaky.axes[0]
    (chosen,) = [line for line in ax.get_lines() if line.get_gid() == "chosen-threshold"]
    assert chosen.get_xdata()[0] == 0.37
    assert "threshold 0.370 (youden@test)" in legend_texts(ax)
    all_text = [t.get_text() for t in leaky.findobj(lambda a: hasattr(a, "get_text"))]
    assert any("chosen on the test labels" in t for t in all_text)
    assert_axes_not_blank(leaky)
    clean = F.threshold_plot(y, s, g, metric="fpr", threshold=None, policy="—", leaks_labels=False)
    texts = [t.get_text() for t in clean.findobj(lambda a: hasattr(a, "get_text"))]
    assert not any("chosen on the test labels" in t for t in texts)
    assert not [line for line in clean.axes[0].get_lines() if line.get_gid() == "chosen-threshold"]
    with pytest.raises(InputError, match="'auc'"):
        F.threshold_plot(y, s, g, metric="auc", threshold=0.5, policy="x", leaks_labels=False)
    with pytest.raises(InputError, match="threshold 1.5"):
        F.threshold_plot(y, s, g, metric="tpr", threshold=1.5, policy="x", leaks_labels=False)


def test_threshold_group_without_positives_is_listed_not_drawn():
    y, s, g = scores_frame()
    g = g.astype(object)
    g[:30] = "negatives"
    y[:30] = 0
    fig = F.threshold_plot(y, s, g, metric="tpr", threshold=0.5, policy="fixed", leaks_labels=False)
    ax = fig.axes[0]
    assert len([line for line in ax.get_lines() if line.get_gid() == "threshold-group"]) == 2
    assert "negatives: n=30, undefined" in legend_texts(ax)


def test_distribution_plot_points_and_counts():
    rng = np.random.default_rng(5)
    values = rng.beta(8, 2, 90)
    groups = np.array(["F"] * 50 + ["M"] * 40)
    values[0] = np.nan
    fig = F.distribution_plot(values, groups, metric="IoU")
    ax = fig.axes[0]
    samples = [c for c in ax.collections if isinstance(c, PathCollection) and c.get_gid() == "samples"]
    assert [len(c.get_offsets()) for c in samples] == [49, 40]
    np.testing.assert_allclose(np.sort(samples[1].get_offsets()[:, 1]), np.sort(values[50:]))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["F\n(n=49)", "M\n(n=40)"]
    assert ax.get_ylabel() == "IoU per sample"
    # the box's median line sits at each group's median
    medians = [line for line in ax.get_lines() if line.get_color() == "#000000" and len(line.get_ydata()) == 2
               and line.get_ydata()[0] == line.get_ydata()[1]]  # fmt: skip
    assert any(np.isclose(m.get_ydata()[0], np.nanmedian(values[:50])) for m in medians)
    assert_axes_not_blank(fig)
    assert [t.get_text() for t in F.distribution_plot([0.5], ["solo"]).axes[0].get_xticklabels()] == ["solo\n(n=1)"]


def test_distribution_plot_caps_the_dots_not_the_box():
    values = np.random.default_rng(6).uniform(size=F.MAX_DOTS + 500)
    ax = F.distribution_plot(values, np.full(values.size, "all")).axes[0]
    (samples,) = [c for c in ax.collections if c.get_gid() == "samples"]
    assert len(samples.get_offsets()) == F.MAX_DOTS
    assert set(samples.get_offsets()[:, 1]) <= set(values)
    assert ax.get_xticklabels()[0].get_text() == f"all\n(n={values.size})"
    assert "random 1,500" in ax.get_xlabel()


def test_metric_series_lines_and_bands():
    frame = pd.DataFrame([{"step": st_, "metric": m, "label": lab, "value": 0.7 + 0.01 * st_, "low": 0.69,
                           "high": 0.8 if st_ != 2 else np.nan}
                          for lab in ["a", "b"] for m in ["AUC", "worst AUC"] for st_ in [3, 1, 2]])  # fmt: skip
    fig = F.metric_series_plot(frame, x="step")
    ax = fig.axes[0]
    series = [line for line in ax.get_lines() if line.get_gid() == "series"]
    assert [line.get_label() for line in series] == ["a · AUC", "a · worst AUC", "b · AUC", "b · worst AUC"]
    np.testing.assert_allclose(series[0].get_xdata(), [1, 2, 3])  # sorted by x
    assert len([c for c in ax.collections if c.get_gid() == "series-band"]) == 4
    assert ax.get_xlabel() == "step"
    assert_axes_not_blank(fig)
    categorical = F.metric_series_plot(frame.drop(columns="label").assign(step=lambda d: d.step.map(str)), x="step")
    assert [t.get_text() for t in categorical.axes[0].get_xticklabels()] == ["3", "1", "2"]
    with pytest.raises(InputError, match="'epoch'"):
        F.metric_series_plot(frame, x="epoch")


# -- bad input ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("plot", [F.roc_plot, F.calibration_plot])
def test_score_inputs_are_checked(plot):
    y, s, g = scores_frame(n=50)
    with pytest.raises(InputError, match="length mismatch"):
        plot(y[:-1], s, g)
    bad = y.copy()
    bad[3] = 2
    with pytest.raises(InputError, match="row 3: label 2.0 is not 0 or 1"):
        plot(bad, s, g)
    scores = s.copy()
    scores[5] = 1.5
    with pytest.raises(InputError, match="score, row 5: 1.5"):
        plot(y, scores, g)
    with pytest.raises(InputError, match="no labelled rows"):
        plot(np.full(50, np.nan), s, g)


def test_figures_are_built_without_pyplot():
    import sys

    y, s, g = scores_frame(n=60)
    F.roc_plot(y, s, g)
    assert "matplotlib.pyplot" not in sys.modules or not sys.modules["matplotlib.pyplot"].get_fignums()


# -- from stored runs --------------------------------------------------------------------------------------------
def test_stored_run_roc_legend_matches_stored_group_aucs(report_store):
    store, ids = report_store
    record = store.load(ids[("fakeA", None, 0)])
    test = record.predictions.query("split == 'test' and task == 'y'")
    fig = F.roc_plot(test["y_true"], test["y_score"], test["group_sex"])
    texts = legend_texts(fig.axes[0])
    stored = record.metrics.query("task == 'y' and attribute == 'sex' and metric == 'auc'")
    assert len(stored) == 2
    for row in stored.itertuples():
        assert f"{row.group}: AUC {row.value:.3f}, n={int(row.n)}" in texts


def test_tradeoff_with_many_points_labels_only_the_front():
    points = tradeoff_points(n=30, seed=7)
    fig = F.tradeoff_plot(points)
    labels = sorted(t.get_text() for t in fig.axes[0].texts if t.get_gid() == "point-label")
    front = F.pareto_front(points["utility"], points["fairness"])
    assert labels == sorted(points["label"][front])
