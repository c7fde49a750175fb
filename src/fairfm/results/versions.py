"""Results versions: what a run's numbers depend on in the code, as one integer per component.

A run id hashes the resolved spec, the data and the weights and the results versions of the components the run uses
— not the git commit or the fairfm version, which change with every typo fix. Whoever changes a component so that
the *same* spec, data and weights would give *different* numbers (a metric definition, a training loop, feature
extraction, how predictions are assembled) bumps that component's version here — a usage's own version where the
usage is registered (``results_version`` in :func:`fairfm.usages.register_usage`). Runs stored under the older version
are then "stale": still found and served with a mark, recomputed with ``--recompute-stale`` (see docs/usages.md).
The exact code version (fairfm version, git commit) is still recorded in every run's ``meta.json``.
"""

from __future__ import annotations

#: component -> results version. Bump one when its numbers change for the same inputs; never lower one.
RESULTS_VERSIONS: dict[str, int] = {
    "metrics": 1,  # fairfm.metrics: every metric, threshold policy, bootstrap interval and p-value
    "runner": 1,  # fairfm.runner: PredictionTable rows, val/test split handling, how the Report is composed
    "features": 1,  # fairfm.adapt.features: frozen-encoder embeddings (decoding, preprocessing, slices)
    "usage.ensemble": 1,  # fairfm.ensemble: a run derived from stored runs (not a registered usage)
    "usage.federated": 1,  # fairfm.federated: rounds, client training, pooled/client-averaged views (+ local usage's)
}
# A usage's own version is declared where the usage is, in its registration (fairfm.usages: ``results_version``,
# and ``cached_features`` when its numbers also depend on "features").


def run_components(usage: str, method: str | None = None) -> dict[str, int]:
    """The results versions of the components a run of ``usage`` uses (part of its run id): ``metrics``, ``runner``,
    ``features`` for a usage on cached features, ``usage.<name>``, and ``method.<name>`` for a run with a mitigation
    method. A usage or method not registered in this process (a plug-in module not imported) counts as version 0
    without features, as every unknown component does; a kind of run that is not a registered usage (``ensemble``)
    declares its version in :data:`RESULTS_VERSIONS`."""
    from fairfm.errors import InputError
    from fairfm.usages import get_usage

    try:
        entry = get_usage(usage)
    except InputError:
        entry = None
    names = ["metrics", "runner", *(["features"] if entry is not None and entry.cached_features else [])]
    versions = {name: RESULTS_VERSIONS.get(name, 0) for name in names}
    fallback = RESULTS_VERSIONS.get(f"usage.{usage}", 0)
    versions[f"usage.{usage}"] = entry.results_version if entry is not None else fallback
    if method is not None:  # a mitigation method's own version, declared on its class (Method.results_version)
        from fairfm.mitigate.base import get_method_class

        try:
            versions[f"method.{method}"] = get_method_class(method).results_version
        except InputError:
            versions[f"method.{method}"] = 0
    return versions
