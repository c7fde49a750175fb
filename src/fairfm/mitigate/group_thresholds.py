"""Group-specific thresholds (Hardt et al. 2016) with fairlearn's ``ThresholdOptimizer`` (METHODS.md §3.18).

Post-processing of any classification usage's scores: per task, a ``ThresholdOptimizer(prefit=True,
predict_method="predict_proba")`` over the usage's probabilities is fitted on the **validation** rows (labels and
groups; never test) under the chosen constraint and objective, then applied to the validation and test rows. The
optimiser is a *randomised* classifier: per group it mixes two thresholds (with probabilities p0, p1), so its output
is a decision drawn at random, which needs the sample's group (attribute-aware at test time).

What the run stores as ``y_score`` (``output``):

- ``decision`` (default): fairlearn's own draw, ``predict(X, sensitive_features=g, random_state=…)`` seeded from
  the run's seed — 0 or 1 per row, so the run's threshold policy must be ``0.5`` (it is set when the spec leaves
  ``threshold`` out, and any other policy is refused): the thresholded metrics (TPR, FPR, EOD, …) are then exactly
  those of the randomised classifier fairlearn fitted.
- ``pmf``: the probability of a positive decision (``_pmf_predict``), thresholded at 0.5 by the run: a
  deterministic rounding of the randomised classifier, whose rates can differ from it for the rows between a
  group's two thresholds.

Either way the stored scores are decisions, not the model's ranking: the run's AUC is that of the post-processed
decisions ((TPR + TNR) / 2 for ``decision``), not a ranking metric of the original model, and the report says so.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from fairfm.adapt.seeding import derive_seed
from fairfm.errors import InputError
from fairfm.mitigate.base import (LOOPS, Method, MethodParams, Needs, ScoreSet, TrainContext, register_method,
                                  require_package)

Constraint = Literal["equalized_odds", "demographic_parity", "true_positive_rate_parity", "false_positive_rate_parity"]
Objective = Literal["accuracy_score", "balanced_accuracy_score", "selection_rate", "true_positive_rate",
                    "true_negative_rate"]  # fmt: skip
Output = Literal["decision", "pmf"]

#: fairlearn allows only objectives that do not decrease with true positives under equalized odds.
_EQUALIZED_ODDS_OBJECTIVES = ("accuracy_score", "balanced_accuracy_score")

SCORE_WARNING = ("{name}: y_score holds post-processed decisions ({output}), thresholded at 0.5; AUC and the other "
                 "ranking metrics of this run are those of the decisions, not a ranking metric of the usage's model")


class GroupThresholdsParams(MethodParams):
    constraint: Constraint = Field("equalized_odds", description="fairness constraint of the thresholds (fairlearn "
                                   "ThresholdOptimizer constraints)")
    objective: Objective = Field("accuracy_score", description="what the thresholds maximise under the constraint "
                                 "(fairlearn's default; equalized_odds allows accuracy_score, balanced_accuracy_score)")
    grid_size: int = Field(1000, ge=2, description="grid of constraint values searched (fairlearn's default)")
    flip: bool = Field(False, description="allow flipping a group's decision when it improves the objective")
    output: Output = Field("decision", description="y_score: decision = fairlearn's seeded random draw (0/1); pmf = "
                           "the probability of a positive decision")

    @model_validator(mode="after")
    def _objective_fits_constraint(self) -> "GroupThresholdsParams":
        if self.constraint == "equalized_odds" and self.objective not in _EQUALIZED_ODDS_OBJECTIVES:
            raise ValueError(f"objective {self.objective!r} is not allowed with equalized_odds (choose "
                             f"{' or '.join(_EQUALIZED_ODDS_OBJECTIVES)})")  # fmt: skip
        return self


def scores_estimator() -> Any:
    """The usage's probabilities as a prefit sklearn estimator: ``predict_proba(X)`` of the one-column
    X = P(y = 1). ThresholdOptimizer post-processes an estimator and fairlearn has no score-only entry point, so this
    adapter is the estimator. (Built here: sklearn is imported only when the method runs.)"""
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Scores(ClassifierMixin, BaseEstimator):
        def __sklearn_is_fitted__(self) -> bool:  # nothing to fit: the scores are the model
            return True

        def fit(self, X: Any, y: Any = None) -> "Scores":
            return self

        def predict_proba(self, X: Any) -> np.ndarray:
            p = np.asarray(X, dtype=np.float64)[:, 0]
            return np.column_stack([1.0 - p, p])

    return Scores()


def threshold_optimizer(params: GroupThresholdsParams) -> Any:
    """An unfitted fairlearn ThresholdOptimizer over :func:`scores_estimator` with ``params``."""
    from fairlearn.postprocessing import ThresholdOptimizer

    return ThresholdOptimizer(estimator=scores_estimator(), constraints=params.constraint, objective=params.objective,
                              grid_size=params.grid_size, flip=params.flip, prefit=True,
                              predict_method="predict_proba")  # fmt: skip


def draw_seed(seed: int, split: str, task_index: int) -> int:
    """The numpy RandomState seed of the randomised decisions of one split and task."""
    return derive_seed(seed, f"group_thresholds:{split}:{task_index}") % (2**32)


def _name(names: Any, code: int) -> str:
    return str(names[code]) if names is not None and 0 <= code < len(names) else f"code {code}"


@register_method("group_thresholds")
class GroupThresholds(Method):
    params_model = GroupThresholdsParams
    needs = Needs(loops=LOOPS, attribute_at_train=True, attribute_at_test=True)
    summary = "group-specific (randomised) thresholds fitted on validation scores (fairlearn ThresholdOptimizer)"
    reference = "Hardt et al. NeurIPS 2016; fairlearn ThresholdOptimizer (METHODS.md §3.18)"
    decision_threshold = "0.5"

    def report_warnings(self) -> list[str]:
        return [SCORE_WARNING.format(name=self.name, output=self.params.output)]

    def check(self, context: TrainContext) -> None:
        require_package("fairlearn", self.name)
        if context.val_labels is None or context.val_groups is None:
            return
        test = context.test_groups if context.test_groups is not None else np.zeros(0, dtype=np.int64)
        for j, task in enumerate(context.tasks):
            self._check_task(task, context.val_labels[:, j], context.val_groups, test, context.group_names)

    def _check_task(self, task: str, val_labels: np.ndarray, val_groups: np.ndarray, test_groups: np.ndarray,
                    names: Any) -> None:  # fmt: skip
        """Every group needs both classes among its labelled validation rows, and every test group a threshold."""
        known = ~np.isnan(val_labels)
        y, groups = val_labels[known].astype(np.int64), np.asarray(val_groups)[known]
        for code in np.unique(groups):
            classes = np.unique(y[groups == code])
            if classes.size < 2:
                raise InputError(f"method {self.name!r}: task {task!r}: group {_name(names, int(code))!r} has "
                                 f"only class {int(classes[0])} among its validation rows; thresholds per group "
                                 "need both classes in every group")  # fmt: skip
        unseen = sorted(set(np.unique(test_groups).tolist()) - set(np.unique(groups).tolist()))
        if unseen:
            raise InputError(f"method {self.name!r}: task {task!r}: group {_name(names, int(unseen[0]))!r} has "
                             "test rows but no labelled validation row, so it has no threshold")  # fmt: skip

    def post_process(self, val: ScoreSet, test: ScoreSet, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
        n_tasks = val.probabilities.shape[1]
        out = {"val": np.empty_like(val.probabilities, dtype=np.float64),
               "test": np.empty_like(test.probabilities, dtype=np.float64)}  # fmt: skip
        names = val.group_names
        self.fitted = {"constraint": self.params.constraint, "objective": self.params.objective,
                        "output": self.params.output, "fitted_on": "val", "thresholds": {}}  # fmt: skip
        for j in range(n_tasks):
            task = val.tasks[j] if val.tasks is not None else f"task {j}"
            known = ~np.isnan(val.labels[:, j])
            y, groups = val.labels[known, j].astype(np.int64), val.groups[known]
            self._check_task(task, val.labels[:, j], val.groups, test.groups, names)
            optimizer = threshold_optimizer(self.params)
            optimizer.fit(val.probabilities[known, j][:, None], y, sensitive_features=groups)
            for split, scores in (("val", val), ("test", test)):
                X = scores.probabilities[:, j][:, None]
                if self.params.output == "decision":
                    out[split][:, j] = optimizer.predict(X, sensitive_features=scores.groups,
                                                         random_state=draw_seed(seed, split, j))  # fmt: skip
                else:
                    out[split][:, j] = optimizer._pmf_predict(X, sensitive_features=scores.groups)[:, 1]
            self.fitted["thresholds"][task] = _describe(optimizer, names)
        return out["val"], out["test"]


def _describe(optimizer: Any, names: Any) -> dict[str, Any]:
    """Per group, the two thresholds mixed and their probabilities (fairlearn's interpolation), JSON-able."""
    described = {}
    for code, rule in optimizer.interpolated_thresholder_.interpolation_dict.items():
        entry = {"p0": float(rule.p0), "operation0": str(rule.operation0), "p1": float(rule.p1),
                 "operation1": str(rule.operation1)}  # fmt: skip
        if "p_ignore" in rule:
            entry.update(p_ignore=float(rule.p_ignore), prediction_constant=float(rule.prediction_constant))
        described[_name(names, int(code))] = entry
    return described
