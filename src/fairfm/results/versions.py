"""Results versions: what a run's numbers depend on in the code, as one integer per component.

A run id hashes the resolved spec, the data and the weights and the results versions of the components the run uses
— not the git commit or the fairfm version, which change with every typo fix. Whoever changes a component so that
the *same* spec, data and weights would give *different* numbers (a metric definition, a training loop, feature
extraction, how predictions are assembled) bumps that component's version here. Runs stored under the older version
are then "stale": still found and served with a mark, recomputed with ``--recompute-stale`` (see docs/usages.md).
The exact code version (fairfm version, git commit) is still recorded in every run's ``meta.json``.
"""

from __future__ import annotations

#: component -> results version. Bump one when its numbers change for the same inputs; never lower one.
RESULTS_VERSIONS: dict[str, int] = {
    "metrics": 1,  # fairfm.metrics: every metric, threshold policy, bootstrap interval and p-value
    "runner": 1,  # fairfm.runner: PredictionTable rows, val/test split handling, how the Report is composed
    "features": 1,  # fairfm.adapt.features: frozen-encoder embeddings (decoding, preprocessing, slices)
    "usage.zero_shot": 1,
    "usage.linear_probe": 1,
    "usage.prototype": 1,
    "usage.clip_adapter": 1,
    "usage.lora": 1,
    "usage.bitfit": 1,
    "usage.vpt": 1,
    "usage.adapter": 1,
    "usage.full_finetune": 1,
    "usage.sam_prompt": 1,
    "usage.ensemble": 1,  # fairfm.ensemble: an ensemble run's predictions from its members'
}

#: Usages that start from cached frozen-encoder features (so their numbers also depend on "features").
FEATURE_USAGES = ("zero_shot", "linear_probe", "prototype", "clip_adapter")


def run_components(usage: str) -> dict[str, int]:
    """The results versions of the components a run of ``usage`` uses (part of its run id)."""
    names = ["metrics", "runner", *(["features"] if usage in FEATURE_USAGES else []), f"usage.{usage}"]
    return {name: RESULTS_VERSIONS.get(name, 0) for name in names}
