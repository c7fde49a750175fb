"""Embedding-bias analysis of a frozen encoder (Glocker et al., METHODS.md §6), read from the feature cache.

What it computes from an (N, D) embedding matrix and the samples' groups (nothing is re-encoded; no torch):

1. **PCA** keeping ``variance`` (99 %) of the variance, on the raw embeddings (centred, not standardised — as
   Glocker et al., whose notebooks apply scikit-learn's PCA to the embeddings directly): the number of
   components and the explained-variance ratio of the first modes.
2. **A 2-D projection** (t-SNE from scikit-learn with random init and automatic learning rate, as Glocker
   et al.; or UMAP) of the PCA output on a seeded subsample of at most ``max_points`` samples, balanced over
   the groups (Glocker et al. drew 1,000 scans per race); the points keep their groups for plotting.
3. **Two-sample Kolmogorov–Smirnov tests** of each of the first ``n_modes`` PCA modes between every pair of
   groups of each attribute (and positives vs negatives of each task when labels are given), with a
   false-discovery-rate correction over all tests: Benjamini–Hochberg by default, Benjamini–Yekutieli
   (Glocker et al.) with ``fdr="by"``.
4. **Subgroup separability**: how well the attribute is predicted from the frozen embedding — a
   cross-validated logistic regression on the PCA features, its out-of-fold scores summarised as AUC (macro
   one-vs-rest for more than two groups) with a bootstrap percentile interval; chance is 0.5.

:func:`run_embeddings` and :func:`features_embeddings` read a stored run's (or a feature folder's) cache and
the prepared SampleTable, and store the result under ``STORE/analyses/embeddings/<analysis_id>/``
(``analysis.json`` + ``projection.parquet``), found instead of recomputed when asked again;
:func:`stored_embedding_analyses` lists them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from fairfm.errors import InputError

if TYPE_CHECKING:
    from fairfm.results import Store

#: Bump when the same features, groups and options would give different numbers (part of every analysis id).
ANALYSIS_VERSION = 1

ANALYSES_DIR = Path("analyses") / "embeddings"
ANALYSIS_FILE = "analysis.json"
POINTS_FILE = "projection.parquet"
PROJECTIONS = ("tsne", "umap", "none")
FDR_METHODS = ("bh", "by")
KS_COLUMNS = [
    "attribute",
    "group_a",
    "group_b",
    "mode",
    "statistic",
    "p_value",
    "q_value",
    "significant",
    "n_a",
    "n_b",
]
SEPARABILITY_COLUMNS = [
    "attribute",
    "auc",
    "ci_low",
    "ci_high",
    "chance",
    "n",
    "n_groups",
    "groups",
    "kind",
    "cv",
    "note",
]
#: positives / negatives of a task in the KS table (attribute ``label_<task>``)
POSITIVE, NEGATIVE = "positive", "negative"


@dataclass
class EmbeddingAnalysis:
    """The result of :func:`analyze_embeddings`.

    ``pca``: n_samples, dim, variance (the fraction kept), n_components, explained_variance_ratio (first
    modes), standardised (False). ``ks``: one row per test (:data:`KS_COLUMNS`). ``separability``: one row per
    attribute (:data:`SEPARABILITY_COLUMNS`). ``points``: the subsample — ``row`` (position in the analysed
    matrix), ``sample_id`` when known, ``pc1``… (the first modes), ``proj1``/``proj2`` (the projection; absent
    for "none"), one column per attribute (group, "" unknown) and ``label_<task>`` columns when labels were
    given. ``options`` are the arguments it was computed with, ``source`` what it was computed from (run id or
    cache key, split, dataset) and ``notes`` what a reader must know (groups left out, volumes averaged,
    …)."""

    pca: dict[str, Any]
    ks: pd.DataFrame
    separability: pd.DataFrame
    points: pd.DataFrame
    options: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)
    version: int = ANALYSIS_VERSION

    @property
    def attributes(self) -> list[str]:
        return list(self.options.get("attributes") or [])

    @property
    def projection(self) -> str:
        return str(self.options.get("projection", "none"))

    def to_dict(self, *, points: bool = True) -> dict[str, Any]:
        """JSON-able (NaN as null); ``points=False`` leaves the subsample out (stored beside it as
        Parquet)."""
        document = {
            "version": self.version,
            "source": _jsonable(self.source),
            "options": _jsonable(self.options),
            "pca": _jsonable(self.pca),
            "ks": _records(self.ks),
            "separability": _records(self.separability),
            "notes": list(self.notes),
        }
        if points:
            document["points"] = {
                "columns": [str(c) for c in self.points.columns],
                "data": _jsonable(self.points.to_numpy(dtype=object).tolist()),
            }
        return document

    @classmethod
    def from_dict(
        cls, document: dict[str, Any], *, points: pd.DataFrame | None = None
    ) -> "EmbeddingAnalysis":
        if points is None:
            stored = document.get("points") or {"columns": [], "data": []}
            points = _typed_points(pd.DataFrame(stored["data"], columns=stored["columns"]))
        ks = pd.DataFrame(document.get("ks") or [], columns=KS_COLUMNS)
        for column in ("statistic", "p_value", "q_value"):
            ks[column] = pd.to_numeric(ks[column]).astype(float)
        for column in ("mode", "n_a", "n_b"):
            ks[column] = ks[column].astype(int)
        ks["significant"] = ks["significant"].astype(bool)
        separability = pd.DataFrame(document.get("separability") or [], columns=SEPARABILITY_COLUMNS)
        for column in ("auc", "ci_low", "ci_high", "chance"):
            separability[column] = pd.to_numeric(separability[column]).astype(float)
        separability["note"] = separability["note"].fillna("")
        return cls(
            pca=dict(document["pca"]),
            ks=ks,
            separability=separability,
            points=points,
            options=dict(document.get("options") or {}),
            notes=list(document.get("notes") or []),
            source=dict(document.get("source") or {}),
            version=int(document.get("version", 0)),
        )


# -------------------------------------------------------------------------------- the analysis


def analyze_embeddings(
    features: np.ndarray,
    groups: pd.DataFrame,
    *,
    labels: pd.DataFrame | None = None,
    variance: float = 0.99,
    n_modes: int = 4,
    projection: str = "tsne",
    max_points: int = 3000,
    fdr: str = "bh",
    alpha: float = 0.05,
    cv_folds: int = 5,
    patient_ids: Sequence[Any] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    sample_ids: Sequence[Any] | None = None,
) -> EmbeddingAnalysis:
    """PCA, projection, KS tests and subgroup separability of ``features`` (N, D) by ``groups`` (one column
    per attribute — ``sex`` or ``group_sex`` — strings; NaN, "", "unknown", −1 … are unknown, as in
    :mod:`fairfm.groups`); see the module docstring.

    ``labels``: ``label_<task>`` columns (0/1, NaN unknown) whose positives and negatives are KS-tested too
    (Glocker et al.'s disease vs no-finding). ``patient_ids``: cross-validation folds and bootstrap resamples
    by patient."""
    from scipy.stats import false_discovery_control, ks_2samp
    from sklearn.decomposition import PCA

    x = _check_features(features)
    n = len(x)
    group_frame = _group_frame(groups, n)
    label_frame = _label_frame(labels, n)
    _check_options(
        variance=variance,
        n_modes=n_modes,
        projection=projection,
        max_points=max_points,
        fdr=fdr,
        alpha=alpha,
        cv_folds=cv_folds,
        bootstrap=bootstrap,
    )
    patients = None
    if patient_ids is not None:
        patients = np.asarray(pd.Series(list(patient_ids)).astype(str))
        if len(patients) != n:
            raise InputError(f"patient_ids: {len(patients)} values for {n} feature rows")
    notes: list[str] = []
    seeds = np.random.SeedSequence(seed).spawn(3)  # subsample, bootstrap; CV and t-SNE take ``seed`` itself

    # 1. PCA on the raw embeddings (centred by PCA, not standardised: Glocker et al.).
    pca = PCA(n_components=None if variance >= 1 else float(variance), svd_solver="full")
    scores = pca.fit_transform(x)
    modes = min(n_modes, scores.shape[1])
    if modes < n_modes:
        notes.append(
            f"PCA kept {scores.shape[1]} component(s) for {variance:g} of the variance: {modes} mode(s) "
            f"tested instead of {n_modes}"
        )
    pca_summary = {
        "n_samples": n,
        "dim": int(x.shape[1]),
        "variance": float(variance),
        "n_components": int(pca.n_components_),
        "explained_variance_ratio": [float(v) for v in pca.explained_variance_ratio_[:modes]],
        "kept_variance": float(np.sum(pca.explained_variance_ratio_)),
        "standardised": False,
    }

    # 2. KS tests of each mode between every pair of groups, then positives vs negatives of each task.
    comparisons: list[tuple[str, str, str, np.ndarray, np.ndarray]] = []
    for attribute in group_frame.columns:
        values = group_frame[attribute].to_numpy()
        for a, b in itertools.combinations(group_names(values), 2):
            comparisons.append((attribute, a, b, values == a, values == b))
    for column in label_frame.columns:
        y = label_frame[column].to_numpy()
        positive, negative = y == 1, y == 0
        if positive.any() and negative.any():
            comparisons.append((column, POSITIVE, NEGATIVE, positive, negative))
        else:
            notes.append(
                f"{column}: no KS test (positives {int(positive.sum())}, negatives {int(negative.sum())})"
            )
    rows = []
    for attribute, a, b, in_a, in_b in comparisons:
        for mode in range(modes):
            test = ks_2samp(scores[in_a, mode], scores[in_b, mode])
            rows.append(
                {
                    "attribute": attribute,
                    "group_a": a,
                    "group_b": b,
                    "mode": mode + 1,
                    "statistic": float(test.statistic),
                    "p_value": float(test.pvalue),
                    "n_a": int(in_a.sum()),
                    "n_b": int(in_b.sum()),
                }
            )
    ks = pd.DataFrame(rows, columns=[c for c in KS_COLUMNS if c not in ("q_value", "significant")])
    ks["q_value"] = false_discovery_control(ks["p_value"].to_numpy(), method=fdr) if len(ks) else []
    ks["significant"] = ks["q_value"].to_numpy() <= alpha
    ks = ks[KS_COLUMNS].astype({"q_value": float, "significant": bool})

    # 3. Subgroup separability from the PCA features.
    separability_rows = []
    for attribute in group_frame.columns:
        row, note = _separability(
            scores,
            group_frame[attribute].to_numpy(),
            patients,
            attribute,
            cv_folds=cv_folds,
            bootstrap=bootstrap,
            seed=seed,
            rng_seed=seeds[1],
        )
        separability_rows.append(row)
        if note:
            notes.append(note)
    separability = pd.DataFrame(separability_rows, columns=SEPARABILITY_COLUMNS)

    # 4. The projection on a balanced subsample, with the groups of each point.
    chosen = balanced_subsample(group_frame, max_points, np.random.default_rng(seeds[0]))
    if len(chosen) < n:
        notes.append(
            f"scatter plots and the {projection} projection show a subsample of {len(chosen)} of {n} "
            "samples, balanced over the groups"
        )
    points = pd.DataFrame({"row": chosen.astype(np.int64)})
    if sample_ids is not None:
        ids = np.asarray(pd.Series(list(sample_ids)).astype(str))
        if len(ids) != n:
            raise InputError(f"sample_ids: {len(ids)} values for {n} feature rows")
        points["sample_id"] = ids[chosen]
    for mode in range(modes):
        points[f"pc{mode + 1}"] = scores[chosen, mode]
    if projection != "none":
        coordinates = np.asarray(_project(scores[chosen], projection, seed), dtype=np.float64)
        points["proj1"], points["proj2"] = coordinates[:, 0], coordinates[:, 1]
    for attribute in group_frame.columns:
        points[attribute] = group_frame[attribute].to_numpy()[chosen]
    for column in label_frame.columns:
        points[column] = label_frame[column].to_numpy()[chosen]

    options = {
        "attributes": list(group_frame.columns),
        "tasks": [c.removeprefix("label_") for c in label_frame],
        "variance": float(variance),
        "n_modes": int(n_modes),
        "projection": projection,
        "max_points": int(max_points),
        "fdr": fdr,
        "alpha": float(alpha),
        "cv_folds": int(cv_folds),
        "by_patient": patients is not None,
        "bootstrap": int(bootstrap),
        "seed": int(seed),
    }
    return EmbeddingAnalysis(
        pca=pca_summary,
        ks=ks.reset_index(drop=True),
        separability=separability,
        points=points,
        options=options,
        notes=notes,
    )


def balanced_subsample(groups: pd.DataFrame, max_points: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted row positions of at most ``max_points`` rows, as equal as possible over the strata (each
    combination of the attributes' groups, unknown included): every stratum gets the same share, a smaller one
    all its rows and the rest goes to the others (Glocker et al. drew 1,000 scans per race)."""
    n = len(groups)
    if n <= max_points:
        return np.arange(n)
    keys = groups.astype(str).agg("\x1f".join, axis=1) if groups.shape[1] else pd.Series([""] * n)
    members = [np.flatnonzero(mask) for mask in (keys.to_numpy() == k for k in sorted(set(keys)))]
    sizes = np.array([len(m) for m in members])
    take = np.zeros(len(members), dtype=int)
    left = max_points
    open_strata = list(np.argsort(sizes))  # smallest first: they are filled and their surplus share passes on
    while open_strata:
        share = left // len(open_strata)
        smallest = open_strata[0]
        if sizes[smallest] <= share:
            take[smallest] = sizes[smallest]
            left -= sizes[smallest]
            open_strata.pop(0)
            continue
        for k, stratum in enumerate(open_strata):  # the remainder goes one each to the first strata
            take[stratum] = share + (1 if k < left - share * len(open_strata) else 0)
        break
    chosen = [rng.choice(m, size=t, replace=False) for m, t in zip(members, take) if t]
    return np.sort(np.concatenate(chosen))


def _project(points: np.ndarray, projection: str, seed: int) -> np.ndarray:
    if len(points) < 4:
        raise InputError(f"--projection {projection}: {len(points)} sample(s) are too few to project")
    if projection == "tsne":
        from sklearn.manifold import TSNE

        # perplexity must stay below the number of points; 30 is scikit-learn's default (Glocker et al. kept
        # it)
        perplexity = float(min(30.0, (len(points) - 1) / 3))
        return TSNE(
            n_components=2, init="random", learning_rate="auto", perplexity=perplexity, random_state=seed
        ).fit_transform(points)
    import umap  # slow to import (numba); only when asked

    neighbours = int(min(15, len(points) - 1))
    return umap.UMAP(n_components=2, n_neighbors=neighbours, random_state=seed, n_jobs=1).fit_transform(
        points
    )


def _separability(
    scores: np.ndarray,
    values: np.ndarray,
    patients: np.ndarray | None,
    attribute: str,
    *,
    cv_folds: int,
    bootstrap: int,
    seed: int,
    rng_seed: np.random.SeedSequence,
):
    """One separability row and a note (or ""): cross-validated logistic regression of the attribute's
    groups."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    names = group_names(values)
    unit = "patients" if patients is not None else "samples"
    sizes = {
        g: (len(set(patients[values == g])) if patients is not None else int((values == g).sum()))
        for g in names
    }
    kept = [g for g in names if sizes[g] >= cv_folds]
    left_out = [g for g in names if g not in kept]
    note = ""
    if left_out:
        small = ", ".join(f"{g} ({sizes[g]} {unit})" for g in left_out)
        note = (
            f"separability of {attribute}: group(s) {small} left out: fewer {unit} than the {cv_folds} folds"
        )
    cv_name = (
        f"StratifiedGroupKFold({cv_folds}) by patient"
        if patients is not None
        else f"StratifiedKFold({cv_folds})"
    )
    row = {
        "attribute": attribute,
        "auc": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "chance": 0.5,
        "n": 0,
        "n_groups": len(kept),
        "groups": ", ".join(kept),
        "kind": "",
        "cv": cv_name,
        "note": "",
    }
    if len(kept) < 2:
        row["note"] = f"fewer than 2 groups with at least {cv_folds} {unit}"
        return row, note
    mask = np.isin(values, kept)
    code = {g: k for k, g in enumerate(kept)}
    x, y = scores[mask], np.array([code[v] for v in values[mask]])
    cv: Any
    if patients is not None:
        cv = StratifiedGroupKFold(n_splits=cv_folds, shuffle=True, random_state=seed)
    else:
        cv = StratifiedKFold(n_splits=cv_folds, shuffle=True, random_state=seed)
    # Standardised components: the L2 penalty then treats every kept mode alike, and lbfgs converges.
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    proba = cross_val_predict(
        model, x, y, cv=cv, groups=patients[mask] if patients is not None else None, method="predict_proba"
    )
    cluster = np.unique(patients[mask], return_inverse=True)[1] if patients is not None else None
    estimates = bootstrap_auc(y, proba, bootstrap, np.random.default_rng(rng_seed), clusters=cluster)
    row.update(
        auc=float(estimates[0]), n=int(mask.sum()), kind="binary" if len(kept) == 2 else "macro one-vs-rest"
    )
    resampled = estimates[1:]
    if bootstrap and np.isfinite(resampled).sum() >= max(10, bootstrap // 2):
        row["ci_low"], row["ci_high"] = (float(v) for v in np.nanpercentile(resampled, [2.5, 97.5]))
    elif bootstrap:
        row["note"] = "too few resamples held every group for an interval"
    return row, note


def bootstrap_auc(
    y: np.ndarray,
    proba: np.ndarray,
    bootstrap: int,
    rng: np.random.Generator,
    *,
    clusters: np.ndarray | None = None,
    chunk: int = 64,
) -> np.ndarray:
    """AUC of out-of-fold scores (binary: ``proba[:, 1]``; more groups: the macro mean of one-vs-rest AUCs, as
    ``roc_auc_score(multi_class="ovr")``) on the data, then on ``bootstrap`` resamples: an array of 1 +
    bootstrap values (NaN for a resample missing a group). Resamples draw samples with replacement, or whole
    ``clusters`` (patients: codes 0…P−1) with replacement.

    Hand-written: each resample is a vector of draw counts applied as weights to one sort of the scores (ties
    count ½), so a thousand resamples cost a few array passes instead of a thousand ``roc_auc_score`` calls;
    scikit-learn has no bootstrap of AUC. Equal to ``roc_auc_score`` on the resampled rows (tested)."""
    n = len(y)
    columns = [1] if proba.shape[1] == 2 else list(range(proba.shape[1]))
    out = np.empty(1 + bootstrap)
    prepared = []
    for k in columns:
        order = np.argsort(proba[:, k], kind="stable")
        sorted_scores = proba[order, k]
        starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
        prepared.append((order, starts, (y[order] == k).astype(np.float64)))

    def aucs(weights: np.ndarray) -> np.ndarray:  # weights (R, n) → AUC per row
        values = []
        for order, starts, positive in prepared:
            w = weights[:, order]
            pos = np.add.reduceat(w * positive, starts, axis=1)
            neg = np.add.reduceat(w * (1 - positive), starts, axis=1)
            below = np.cumsum(neg, axis=1) - neg  # negatives with a strictly lower score
            with np.errstate(invalid="ignore", divide="ignore"):
                values.append((pos * (below + 0.5 * neg)).sum(axis=1) / (pos.sum(axis=1) * neg.sum(axis=1)))
        return np.mean(values, axis=0)  # NaN when a resample lacks a group of some one-vs-rest pair

    out[0] = aucs(np.ones((1, n)))[0]
    units = n if clusters is None else int(clusters.max()) + 1
    for start in range(0, bootstrap, chunk):
        size = min(chunk, bootstrap - start)
        counts = rng.multinomial(units, np.full(units, 1.0 / units), size=size).astype(np.float64)
        out[1 + start : 1 + start + size] = aucs(counts if clusters is None else counts[:, clusters])
    return out


# -------------------------------------------------------------------------------- inputs


def _check_features(features: Any) -> np.ndarray:
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2 or x.shape[1] < 1:
        raise InputError(
            f"features: expected a (samples, dims) matrix with at least 2 rows, got shape {x.shape}"
        )
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise InputError(
            f"features: {int(bad.sum())} row(s) hold NaN or infinite values (first row "
            f"{int(np.flatnonzero(bad)[0])}); a feature cache entry not yet complete?"
        )
    return x


def _group_frame(groups: pd.DataFrame, n: int) -> pd.DataFrame:
    if not isinstance(groups, pd.DataFrame) or groups.shape[1] == 0:
        raise InputError("groups: expected a DataFrame with one column per sensitive attribute")
    if len(groups) != n:
        raise InputError(f"groups: {len(groups)} rows for {n} feature rows")
    from fairfm.groups import factorize_groups

    frame = pd.DataFrame(index=range(n))
    for column in groups.columns:
        name = str(column).removeprefix("group_")
        # the unknown spellings of fairfm.groups (NaN, "", "unknown", -1, …) as "", every other label as a
        # string
        codes, labels = factorize_groups(groups[column].reset_index(drop=True))
        frame[name] = np.asarray([*labels, ""], dtype=object)[codes].astype(str)
    return frame


def group_names(values: np.ndarray) -> list[str]:
    """The known groups in natural order (numbers numerically, then text), as the metrics order them."""
    from fairfm.groups import natural_key

    return sorted({str(v) for v in values if v}, key=natural_key)


def _label_frame(labels: pd.DataFrame | None, n: int) -> pd.DataFrame:
    if labels is None:
        return pd.DataFrame(index=range(n))
    if len(labels) != n:
        raise InputError(f"labels: {len(labels)} rows for {n} feature rows")
    frame = pd.DataFrame(index=range(n))
    for column in labels.columns:
        name = str(column) if str(column).startswith("label_") else f"label_{column}"
        values = pd.to_numeric(labels[column].reset_index(drop=True), errors="coerce")
        odd = sorted(set(values.dropna().unique()) - {0.0, 1.0})
        if odd:
            raise InputError(f"labels: column {column!r} holds {float(odd[0]):g}; expected 0, 1 or unknown")
        frame[name] = values.to_numpy(dtype=float)
    return frame


def _check_options(*, variance, n_modes, projection, max_points, fdr, alpha, cv_folds, bootstrap) -> None:
    if not 0 < variance <= 1:
        raise InputError(f"variance {variance!r}: expected a fraction in (0, 1] of the variance to keep")
    if n_modes < 1:
        raise InputError(f"n_modes {n_modes!r}: expected at least 1 PCA mode to test")
    if projection not in PROJECTIONS:
        raise InputError(f"projection {projection!r}: expected one of {', '.join(PROJECTIONS)}")
    if fdr not in FDR_METHODS:
        raise InputError(f"fdr {fdr!r}: expected bh (Benjamini–Hochberg) or by (Benjamini–Yekutieli)")
    if max_points < 4:
        raise InputError(f"max_points {max_points!r}: expected at least 4 points")
    if not 0 < alpha < 1:
        raise InputError(f"alpha {alpha!r}: expected a level in (0, 1)")
    if cv_folds < 2:
        raise InputError(f"cv_folds {cv_folds!r}: expected at least 2 folds")
    if bootstrap < 0:
        raise InputError(f"bootstrap {bootstrap!r}: expected 0 (no interval) or more resamples")


# -------------------------------------------------------------------------------- the store


def run_embeddings(
    store: "Store",
    run_id: str,
    *,
    split: str = "test",
    attributes: Sequence[str] | None = None,
    recompute: bool = False,
    **options: Any,
) -> EmbeddingAnalysis:
    """The analysis of a stored run's cached frozen-encoder features (``meta.json["features"]["key"]`` →
    ``STORE/features/<key>/``) on the samples of ``split`` (``all``: every row) of its prepared dataset; the
    run's attributes (or ``attributes``) and tasks. Stored, and found instead of recomputed unless
    ``recompute``."""
    record = store.load(run_id)
    key = (record.meta.get("features") or {}).get("key")
    if not key:
        raise InputError(
            f"run {record.run_id}: no cached frozen-encoder features (usage {record.spec.get('usage')!r};"
            f" {record.path / 'meta.json'} has no features.key) — the embedding analysis reads the "
            "feature cache of a usage on frozen features, such as linear_probe"
        )
    features_dir = store.path / "features" / str(key)
    dataset = record.spec.get("dataset")
    if not dataset:
        raise InputError(f"run {record.run_id}: {record.path / 'spec.json'} names no dataset folder")
    chosen = list(attributes) if attributes else list(record.spec.get("attributes") or [])
    tasks = list(record.spec.get("tasks") or [])
    return _analyse_cache(
        store,
        features_dir,
        Path(dataset),
        source={"run_id": record.run_id, "key": str(key)},
        split=split,
        attributes=chosen or None,
        tasks=tasks,
        recompute=recompute,
        options=options,
    )


def features_embeddings(
    features_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    *,
    store: "Store | None" = None,
    split: str = "test",
    attributes: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    recompute: bool = False,
    **options: Any,
) -> EmbeddingAnalysis:
    """The analysis of a feature cache entry (``fairfm features extract``'s ``OUT/<key>/``) joined by sample
    id with a prepared dataset folder; stored in ``store`` when given. Attributes and tasks default to every
    ``group_*`` and ``label_*`` column."""
    folder = Path(features_dir)
    meta = _cache_meta(folder)
    return _analyse_cache(
        store,
        folder,
        Path(data_dir),
        source={"run_id": None, "key": str(meta.get("key") or folder.name)},
        split=split,
        attributes=attributes,
        tasks=tasks,
        recompute=recompute,
        options=options,
    )


def stored_embedding_analyses(
    store: "Store", run_ids: Sequence[str] | None = None, keys: Sequence[str] | None = None
) -> list[tuple[str, EmbeddingAnalysis]]:
    """Every stored analysis as (run id, or cache key for a ``--features`` analysis, analysis), oldest first.
    ``run_ids`` / ``keys``: keep those of these runs or of these feature-cache keys (an analysis made with
    ``--features`` on the cache a run reads belongs to that run too); several per run when made with other options
    or splits."""
    folder = store.path / ANALYSES_DIR
    if not folder.is_dir():
        return []
    filtered = run_ids is not None or keys is not None
    wanted_runs, wanted_keys = set(run_ids or ()), set(keys or ())
    found = []
    for entry in sorted(folder.iterdir()):
        analysis = _read_stored(entry)
        if analysis is None:
            continue
        name = analysis.source.get("run_id") or analysis.source.get("key")
        if filtered and analysis.source.get("run_id") not in wanted_runs \
                and analysis.source.get("key") not in wanted_keys:
            continue
        found.append((str(analysis.source.get("created", "")), str(name), analysis))
    return [(name, analysis) for _, name, analysis in sorted(found, key=lambda item: item[:2])]


def _cache_meta(folder: Path) -> dict[str, Any]:
    for name in ("meta.json", "features.npy", "index.parquet"):
        if not (folder / name).is_file():
            raise InputError(
                f"feature cache {folder}: {name} not found (a folder written by 'fairfm features "
                "extract' or a run on cached features holds meta.json, features.npy, index.parquet)"
            )
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"{folder / 'meta.json'}: not valid JSON ({exc})") from None
    if meta.get("complete") is False:
        raise InputError(
            f"feature cache {folder}: incomplete (meta.json complete=false) — the extraction was "
            "interrupted; run it again to finish it"
        )
    return meta


def _analyse_cache(
    store: "Store | None",
    features_dir: Path,
    data_dir: Path,
    *,
    source: dict[str, Any],
    split: str,
    attributes: Sequence[str] | None,
    tasks: Sequence[str] | None,
    recompute: bool,
    options: dict[str, Any],
) -> EmbeddingAnalysis:
    from fairfm.data.prepare import load_prepared
    from fairfm.results.runid import data_version

    meta = _cache_meta(features_dir)
    if not data_dir.is_dir():
        raise InputError(
            f"dataset folder {data_dir}: not found (the prepared SampleTable the features were made of)"
        )
    table, _ = load_prepared(data_dir)
    samples_path = data_dir / "samples.parquet"
    group_columns = [c for c in table.columns if str(c).startswith("group_")]
    chosen = [a.removeprefix("group_") for a in attributes] if attributes else [c[6:] for c in group_columns]
    for attribute in chosen:
        if f"group_{attribute}" not in table.columns:
            raise InputError(
                f"attribute {attribute!r}: {samples_path} has no column 'group_{attribute}' (has "
                f"{', '.join(group_columns) or 'none'})"
            )
    if not chosen:
        raise InputError(f"{samples_path}: no group_* column to analyse")
    label_columns = [c for c in table.columns if str(c).startswith("label_")]
    task_names = [t for t in (tasks if tasks is not None else [c[6:] for c in label_columns])]
    for task in task_names:
        if f"label_{task}" not in table.columns:
            raise InputError(f"task {task!r}: {samples_path} has no column 'label_{task}'")
    unknown = set(options) - _OPTION_NAMES
    if unknown:
        raise InputError(f"embedding analysis: unknown option(s) {', '.join(sorted(unknown))}")
    document = {
        "source": source["run_id"] or source["key"],
        "key": source["key"],
        "split": split,
        "data": data_version(data_dir),
        "attributes": chosen,
        "tasks": task_names,
        "options": {name: options.get(name, default) for name, default in _OPTION_DEFAULTS.items()},
        "version": ANALYSIS_VERSION,
    }
    analysis_id = hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()[:20]
    folder = store.path / ANALYSES_DIR / analysis_id if store is not None else None
    if folder is not None and not recompute:
        found = _read_stored(folder)
        if found is not None:
            return found
    if folder is not None:  # before the work: a result that cannot be stored would be lost
        from fairfm.tableio import probe_writable

        probe_writable(folder.parent, f"store {store.path}")

    x, rows, notes = _split_features(features_dir, meta, table, split, samples_path)
    selected = table.iloc[rows].reset_index(drop=True)
    patients = selected["patient_id"].astype(str).to_numpy() if "patient_id" in selected.columns else None
    analysis = analyze_embeddings(
        x,
        selected[[f"group_{a}" for a in chosen]],
        labels=selected[[f"label_{t}" for t in task_names]],
        patient_ids=patients,
        sample_ids=selected["sample_id"].astype(str).to_numpy(),
        **options,
    )
    analysis.notes[:0] = notes
    analysis.source = {
        **source,
        "analysis_id": analysis_id,
        "split": split,
        "dataset": str(data_dir),
        "features": str(features_dir),
        "model": meta.get("model"),
        "n_samples": len(x),
        "created": pd.Timestamp.now(tz="UTC").isoformat(timespec="milliseconds"),
    }
    if folder is not None:
        _write_stored(folder, analysis)
    return analysis


_OPTION_DEFAULTS = {
    "variance": 0.99,
    "n_modes": 4,
    "projection": "tsne",
    "max_points": 3000,
    "fdr": "bh",
    "alpha": 0.05,
    "cv_folds": 5,
    "bootstrap": 1000,
    "seed": 0,
}
_OPTION_NAMES = set(_OPTION_DEFAULTS)


def _split_features(
    features_dir: Path, meta: dict[str, Any], table: pd.DataFrame, split: str, samples_path: Path
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(features per sample, the SampleTable rows they belong to, notes) for the samples of ``split`` present
    in the cache; a volume's slice rows are averaged into one row per sample."""
    index = pd.read_parquet(features_dir / "index.parquet")
    features = np.load(features_dir / "features.npy", mmap_mode="r")
    if len(index) != len(features):
        raise InputError(
            f"feature cache {features_dir}: index.parquet has {len(index)} rows, features.npy {len(features)}"
        )
    if split != "all":
        if "split" not in table.columns:
            raise InputError(f"{samples_path}: no 'split' column (use --split all)")
        splits = table["split"].astype(str)
        if not (splits == split).any():
            present = ", ".join(sorted(splits.unique()))
            raise InputError(
                f"--split {split}: {samples_path} has no such samples (splits: {present}; or all)"
            )
        wanted = table.index[splits == split].to_numpy()
    else:
        wanted = np.arange(len(table))
    position = pd.Series(np.arange(len(table)), index=table["sample_id"].astype(str))
    cache_rows = index["sample_id"].astype(str)
    table_row = position.reindex(cache_rows.to_numpy()).to_numpy()
    keep = np.isin(table_row, wanted)  # NaN (a sample no longer in the table) is never kept
    notes = []
    present = np.unique(table_row[keep]).astype(np.int64)
    if len(present) == 0:
        raise InputError(
            f"feature cache {features_dir}: none of the {len(wanted)} {split} sample(s) of "
            f"{samples_path} is in it (made from another SampleTable?)"
        )
    if len(present) < len(wanted):
        notes.append(
            f"{len(wanted) - len(present)} of {len(wanted)} {split} sample(s) have no cached features "
            "and are left out"
        )
    cache_positions = np.flatnonzero(keep)
    block = np.asarray(features[cache_positions], dtype=np.float64)
    owners = np.searchsorted(present, table_row[keep].astype(np.int64))
    slices = np.bincount(owners, minlength=len(present))
    if (slices > 1).any():
        sums = np.zeros((len(present), block.shape[1]))
        np.add.at(sums, owners, block)
        block = sums / slices[:, None]
        notes.append(
            f"volumes: each sample's {int(slices.min())}–{int(slices.max())} slice embeddings are averaged "
            "into one (mean over slices)"
        )
    else:
        block = block[np.argsort(owners)]
    return block, present, notes


def _write_stored(folder: Path, analysis: EmbeddingAnalysis) -> None:
    from fairfm.tableio import atomic_path, write_text_atomic

    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / POINTS_FILE) as tmp:
        analysis.points.to_parquet(tmp, index=False)
    # analysis.json last: its presence marks a complete entry
    write_text_atomic(folder / ANALYSIS_FILE, json.dumps(analysis.to_dict(points=False), indent=2) + "\n")


def _read_stored(folder: Path) -> EmbeddingAnalysis | None:
    document_path, points_path = folder / ANALYSIS_FILE, folder / POINTS_FILE
    if not (document_path.is_file() and points_path.is_file()):
        return None
    try:
        document = json.loads(document_path.read_text(encoding="utf-8"))
        points = pd.read_parquet(points_path)
    except (OSError, ValueError):
        return None  # a damaged entry is recomputed
    if document.get("version") != ANALYSIS_VERSION:
        return None
    return EmbeddingAnalysis.from_dict(document, points=points)


# -------------------------------------------------------------------------------- JSON


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [_jsonable(row) for row in frame.to_dict(orient="records")]


def _typed_points(points: pd.DataFrame) -> pd.DataFrame:
    """Points read back from JSON: coordinates and labels as floats (null → NaN), groups as strings."""
    for column in points.columns:
        if column == "row":
            points[column] = points[column].astype(np.int64)
        elif re.fullmatch(r"pc\d+|proj[12]", column) or column.startswith("label_"):
            points[column] = pd.to_numeric(points[column]).astype(float)
        else:
            points[column] = points[column].fillna("").astype(str)
    return points
