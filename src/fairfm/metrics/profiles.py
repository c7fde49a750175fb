"""Reporting profiles that reproduce each reference system's numbers (METRICS.md §6).

A profile changes *how* metrics are computed (threshold rule, strict ``>``, BCE/ECE conventions, bootstrap
design, scaling) so that fairfm's numbers can stand next to a paper's. Profiles that choose the threshold on the
evaluated set's own labels are flagged: that leaks test labels into the threshold and is never fairfm's default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fairfm.errors import InputError


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    threshold: str  # a policy of fairfm.metrics.thresholds, or "fairmedfm_f1" (PR-curve F1 on the evaluated set)
    strict: bool = False  # ŷ = 1[p > t]
    bce: str = "clip"
    ece: str = "unit"
    bootstrap: int | None = None  # resamples the reference used; None keeps the caller's
    stratify: str = "group"
    scale: float = 1.0  # multiply the scaled metrics (Khan et al. print AUC points ×100)
    scaled_metrics: tuple[str, ...] = ()
    extra_thresholds: tuple[str, ...] = ()  # thresholds also reported, e.g. "0.5"
    summary_metrics: tuple[str, ...] | None = None  # None: every summary metric
    reference_names: dict[str, str] = field(default_factory=dict)
    flags: tuple[str, ...] = ()
    sklearn_roc: bool = False  # fpr@/tpr@ thresholds on sklearn's ROC points (collinear points dropped)
    client_average: bool = False  # with sites given: every metric per site (client), then the mean over sites
    ci_method: str = "percentile"  # gap intervals as the references report them (flagged; docs/metrics.md)


PROFILES: dict[str, Profile] = {
    "fairmedfm": Profile(
        name="fairmedfm",
        description="FairMedFM utils/metrics.py: one best-F1 threshold (PR curve, whole evaluated set), ŷ = p > t, "
        "torch-style BCE, ECE bins over each set's own [min p, max p]",
        threshold="fairmedfm_f1",
        strict=True,
        bce="torch",
        ece="range",
        extra_thresholds=("0.5",),
        summary_metrics=("worst_auc", "auc_gap", "acc_gap", "bce_gap", "ece_gap", "eqodds_score", "tpr_gap"),
        reference_names={
            "auc": "overall-auc", "acc": "overall-acc", "bce": "overall-bce", "ece": "overall-ece",
            "worst_auc": "worst-auc", "auc_gap": "auc-gap", "acc_gap": "acc-gap", "bce_gap": "bce-gap",
            "ece_gap": "ece-gap", "eqodds_score": "eod", "tpr_gap": "eo",
        },  # fmt: skip
        flags=("threshold chosen on the evaluated set's own labels (as FairMedFM does on its test set)",),
    ),
    "medfair": Profile(
        name="medfair",
        description="MEDFAIR utils/evaluation.py: best-F1 threshold on the evaluated set, ŷ = p > t; DP, EqOpp, "
        "EqOdd scores also at 0.5, at specificity 0.8 and at sensitivity 0.8",
        threshold="fairmedfm_f1",
        strict=True,
        bce="torch",
        ece="range",
        extra_thresholds=("0.5", "tnr@0.8", "tpr@0.8"),
        summary_metrics=("worst_auc", "auc_gap", "dp_score", "eopp_score", "eqodds_score", "ece_gap", "bce_gap"),
        reference_names={"dp_score": "DP", "eopp_score": "EqOpp1", "eqodds_score": "EqOdd", "worst_auc": "worst-auc"},
        flags=("threshold chosen on the evaluated set's own labels (MEDFAIR issue #16)",),
    ),
    "fairfedmed": Profile(
        name="fairfedmed",
        description="FairFedMed / Harvard lab: argmax of a 2-class softmax (ŷ = p > 0.5), ES-AUC (sum over groups), "
        "fairlearn-style DPD and EOD; with a site column, every metric per site (client) and the mean over sites",
        threshold="0.5",
        strict=True,
        client_average=True,
        summary_metrics=("es_auc", "auc_gap", "worst_auc", "dpd", "eod", "es_acc"),
        reference_names={"es_auc": "ESAUC", "dpd": "DPD", "eod": "EOD", "es_acc": "ESACC"},
    ),
    "glocker": Profile(
        name="glocker",
        description="Glocker et al. 2023: one threshold at overall FPR 0.20 on the evaluated set (sklearn ROC "
        "points), TPR/FPR/Youden per group, 2,000 bootstrap resamples stratified on the target",
        threshold="fpr@0.2@self",
        bootstrap=2000,
        stratify="class",
        sklearn_roc=True,
        summary_metrics=("auc_gap", "worst_auc", "tpr_gap", "fpr_gap"),
        flags=("threshold chosen on the evaluated set (overall FPR 0.20), as in Glocker et al.",),
    ),
    "khan": Profile(
        name="khan",
        description="Khan et al. 2023: AUC and fairness gap (best − worst subgroup AUC) in AUC points ×100, "
        "mean over tasks",
        threshold="0.5",
        scale=100.0,
        scaled_metrics=("auc", "auc_gap", "worst_auc", "best_auc"),
        summary_metrics=("auc_gap", "worst_auc", "best_auc"),
        reference_names={"auc_gap": "fairness gap"},
    ),
}


def get_profile(name: str | None) -> Profile | None:
    if name is None:
        return None
    if name not in PROFILES:
        raise InputError(f"unknown profile {name!r}; choose one of: {', '.join(sorted(PROFILES))}")
    return PROFILES[name]
