"""Property tests (hypothesis): invariances every correct AUC and gap must have."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

import fairfm.metrics as M

# Random draws often leave an attribute with a single valid group; that warning is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::fairfm.metrics.FairnessWarning")


@st.composite
def labelled(draw, min_size=6, max_size=80):
    n = draw(st.integers(min_size, max_size))
    y = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    # A small pool of score values forces ties, within and between classes.
    pool = draw(st.lists(st.integers(0, 100), min_size=1, max_size=6))
    p = np.array(draw(st.lists(st.sampled_from(pool), min_size=n, max_size=n)), dtype=np.float64) / 100
    g = np.array(draw(st.lists(st.sampled_from(["a", "b", "c", "unknown"]), min_size=n, max_size=n)), dtype=object)
    if y.min() == y.max():
        y[0] = 1 - y[0]
    return y, p, g


@settings(max_examples=60, deadline=None)
@given(labelled(), st.sampled_from(["exp", "cube", "logit", "affine"]))
def test_auc_is_invariant_under_monotone_transforms(data, transform):
    y, p, _ = data
    f = {"exp": np.exp, "cube": lambda x: x**3 + x, "logit": lambda x: np.log((x + 1e-3) / (1 + 1e-3 - x)),
         "affine": lambda x: 3 * x - 7}[transform]  # fmt: skip
    transformed = f(p)
    # A strictly increasing map keeps every tie a tie; rounding could merge values, so check it did not.
    assert len(np.unique(transformed)) == len(np.unique(p))
    assert math.isclose(M.auc(y, p), M.auc(y, transformed), abs_tol=1e-12)
    assert math.isclose(M.auc(y, p), roc_auc_score(y, p), abs_tol=1e-12)


@settings(max_examples=60, deadline=None)
@given(labelled(), st.randoms(use_true_random=False))
def test_metrics_are_invariant_under_reordering(data, random):
    y, p, g = data
    order = np.arange(y.size)
    random.shuffle(order)
    for fn in (M.auc_gap, M.es_auc, M.worst_auc):
        a, b = fn(y, p, groups=g), fn(y[order], p[order], groups=g[order])
        assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, abs_tol=1e-12)
    assert math.isclose(M.auc(y, p), M.auc(y[order], p[order]), abs_tol=1e-12)


@settings(max_examples=60, deadline=None)
@given(labelled())
def test_gaps_are_non_negative_and_es_auc_at_most_auc(data):
    y, p, g = data
    report = M.evaluate(y, p, groups={"g": g}, bootstrap=0, threshold="0.5")
    summary = report.tasks["task"].attributes["g"].summary
    for name in ("auc_gap", "acc_gap", "bce_gap", "ece_gap", "tpr_gap", "fpr_gap", "tnr_gap", "ppv_gap", "dpd",
                 "auc_std"):  # fmt: skip
        value = summary[name].value
        assert math.isnan(value) or value >= 0
    es, auc = summary["es_auc"].value, report.tasks["task"].overall["auc"].value
    assert math.isnan(es) or es <= auc + 1e-15
    for score in ("eqodds_score", "eopp_score", "dp_score", "dpr", "eor"):
        value = summary[score].value
        assert math.isnan(value) or 0 <= value <= 1


@settings(max_examples=40, deadline=None)
@given(labelled())
def test_renaming_groups_changes_no_summary_value(data):
    y, p, g = data
    renamed = np.array([{"a": "zeta", "b": "alpha", "c": "mid"}.get(v, v) for v in g], dtype=object)
    one = M.evaluate(y, p, groups={"g": g}, bootstrap=0).tasks["task"].attributes["g"].summary
    two = M.evaluate(y, p, groups={"g": renamed}, bootstrap=0).tasks["task"].attributes["g"].summary
    for name, est in one.items():
        other = two[name].value
        assert (math.isnan(est.value) and math.isnan(other)) or math.isclose(est.value, other, abs_tol=1e-12), name
