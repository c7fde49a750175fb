"""Fairness and utility metrics for medical-imaging models (METRICS.md), on numpy/scipy/pandas and numba (the
bootstrap kernel), never torch.

``evaluate`` computes everything at once with paired, stratified bootstrap intervals and returns a
:class:`Report`; the sklearn-style functions (``auc_gap(y_true, y_score, *, groups)``, …) give single numbers.
Importing this package never imports torch.
"""

from fairfm.metrics.functions import *  # noqa: F401,F403  (the metric functions are the public API)
from fairfm.metrics.functions import __all__ as _function_names
from fairfm.metrics.frames import evaluate_frame
from fairfm.metrics.profiles import PROFILES, Profile, get_profile
from fairfm.metrics.report import Estimate, FairnessWarning, Report, evaluate, evaluate_segmentation, merge_reports
from fairfm.metrics.significance import benjamini_hochberg
from fairfm.metrics.thresholds import ThresholdPolicy, parse_policy

__all__ = [
    *_function_names,
    "PROFILES", "Profile", "get_profile", "Estimate", "FairnessWarning", "Report", "evaluate",
    "evaluate_segmentation", "evaluate_frame", "merge_reports", "benjamini_hochberg", "ThresholdPolicy",
    "parse_policy",
]  # fmt: skip
