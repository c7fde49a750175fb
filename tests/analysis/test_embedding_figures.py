"""The embedding figures draw the analysis' own points, per-group densities and intervals."""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from fairfm.analysis import analyze_embeddings
from fairfm.analysis.embedding_figures import PALETTE, embedding_scatter, separability_plot
from fairfm.errors import InputError


@pytest.fixture(scope="module")
def analysis():
    rng = np.random.default_rng(0)
    n = 300
    race = rng.choice(["Asian", "Black", "White"], p=[0.2, 0.2, 0.6], size=n)
    sex = np.where(rng.random(n) < 0.5, "F", "M").astype(object)
    sex[:10] = None
    x = rng.normal(size=(n, 10)) * np.linspace(3, 0.5, 10)
    x[:, 0] += np.select([race == "Asian", race == "Black"], [4.0, -4.0], 0.0)
    labels = pd.DataFrame({"label_y": (rng.random(n) < 0.3).astype(float)})
    return analyze_embeddings(
        x,
        pd.DataFrame({"race": race, "sex": sex}),
        labels=labels,
        projection="tsne",
        max_points=200,
        bootstrap=100,
    )


def _png_pixels(fig: Figure) -> np.ndarray:
    from matplotlib.image import imread

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=60)
    buffer.seek(0)
    return imread(buffer)


def test_pca_scatter_draws_each_groups_points_of_modes_1_2_and_3_4(analysis):
    fig = embedding_scatter(analysis, "race")
    assert isinstance(fig, Figure) and len(fig.axes) == 6  # two joint plots: main, top and right marginals
    mains = [ax for ax in fig.axes if ax.get_xlabel().startswith("PCA mode")]
    assert [ax.get_xlabel().split(" (")[0] for ax in mains] == ["PCA mode 1", "PCA mode 3"]
    points = analysis.points
    for ax, (x_name, y_name) in zip(mains, [("pc1", "pc2"), ("pc3", "pc4")]):
        drawn = {tuple(np.round(c.get_facecolor()[0][:3], 3)): c.get_offsets() for c in ax.collections}
        for i, group in enumerate(["Asian", "Black", "White"]):
            colour = tuple(np.round(np.array([int(PALETTE[i][k : k + 2], 16) for k in (1, 3, 5)]) / 255, 3))
            expected = points.loc[points["race"] == group, [x_name, y_name]].to_numpy()
            np.testing.assert_allclose(np.asarray(drawn[colour]), expected)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    counts = points["race"].value_counts()
    assert legend == [f"{g} ({counts[g]})" for g in ["Asian", "Black", "White"]]
    ratio = analysis.pca["explained_variance_ratio"][0]
    assert mains[0].get_xlabel() == f"PCA mode 1 ({100 * ratio:.1f} % of variance)"


def test_each_groups_marginal_density_is_normalised_on_its_own(analysis):
    fig = embedding_scatter(analysis, "race")
    top = fig.axes[1]  # above modes 1–2
    areas = [np.trapezoid(line.get_ydata(), line.get_xdata()) for line in top.get_lines()]
    assert len(areas) == 3
    # each group's KDE integrates to ~1 over its range (common_norm=False), whatever the group's size
    np.testing.assert_allclose(areas, 1.0, atol=0.05)


def test_unknown_groups_are_not_drawn_and_the_title_says_so(analysis):
    fig = embedding_scatter(analysis, "sex")
    drawn = sum(len(c.get_offsets()) for c in fig.axes[0].collections)
    unknown = int((analysis.points["sex"] == "").sum())
    assert unknown > 0 and drawn == len(analysis.points) - unknown
    assert f"{unknown} of unknown sex not drawn" in fig._suptitle.get_text()


def test_a_task_is_drawn_as_positives_and_negatives(analysis):
    fig = embedding_scatter(analysis, "label_y")
    assert [t.get_text().split(" (")[0] for t in fig.legends[0].get_texts()] == ["positive", "negative"]
    assert fig._suptitle.get_text().startswith("task y: PCA modes 1–2 and 3–4")


def test_projection_scatter_and_its_refusals(analysis):
    fig = embedding_scatter(analysis, "race", which="projection")
    assert len(fig.axes) == 3 and fig.axes[0].get_xlabel() == "t-SNE dimension 1"
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == len(analysis.points)
    pixels = _png_pixels(fig)
    assert pixels[..., :3].std() > 0.05  # not a blank image
    flat = analyze_embeddings(
        np.random.default_rng(1).normal(size=(40, 5)),
        pd.DataFrame({"g": ["a", "b"] * 20}),
        projection="none",
        bootstrap=0,
    )
    with pytest.raises(InputError, match="projection 'none': no projection to draw"):
        embedding_scatter(flat, "g", which="projection")
    with pytest.raises(InputError, match="attribute 'age': not in the analysis"):
        embedding_scatter(analysis, "age")


def test_separability_plot_draws_each_interval_the_chance_line_and_the_values(analysis):
    fig = separability_plot(analysis)
    ax = fig.axes[0]
    table = analysis.separability
    segments = [
        line.get_xdata()
        for line in ax.get_lines()
        if len(line.get_xdata()) == 2 and line.get_linestyle() == "-"
    ]
    np.testing.assert_allclose(sorted(map(tuple, segments)), sorted(zip(table["ci_low"], table["ci_high"])))
    chance = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(chance) == 1 and list(chance[0].get_xdata()) == [0.5, 0.5]
    texts = [t.get_text().strip() for t in ax.texts]
    for row in table.itertuples():
        assert f"{row.auc:.3f} [{row.ci_low:.3f}, {row.ci_high:.3f}]" in texts
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["race\n(3 groups, one-vs-rest)", "sex\n(F, M)"]
    assert ax.get_xlim()[0] <= 0.4 and ax.get_xlim()[1] == 1.0
    assert _png_pixels(fig)[..., :3].std() > 0.05


def test_figures_are_deterministic(analysis):
    def svg(fig: Figure) -> bytes:
        buffer = io.BytesIO()
        with matplotlib.rc_context({"svg.hashsalt": "fairfm"}):  # fixed ids of the rasterised scatter images
            fig.savefig(buffer, format="svg", metadata={"Date": None})
        return buffer.getvalue()

    assert svg(embedding_scatter(analysis, "race")) == svg(embedding_scatter(analysis, "race"))
    assert svg(separability_plot(analysis)) == svg(separability_plot(analysis))
