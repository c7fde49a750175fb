"""fairlearn reductions (Agarwal et al. 2018): ``ExponentiatedGradient`` over a logistic-regression head on the
cached features (METHODS.md §3.18).

Replaces the linear probe's training (``fit_features``; usage ``linear_probe`` only). Per task, on the training rows
with a known label: the features are standardised (mean and scale of the training rows), and
``ExponentiatedGradient(LogisticRegression(C, max_iter), constraints=<Moment>(difference_bound=…), eps, max_iter,
nu, eta0)`` is fitted with the training rows' groups. The result is a *randomised* classifier: a weighted mixture of
the logistic regressions found, each giving a hard decision. Predicting does not read the sample's group (fairlearn's
``predict(X)`` / ``_pmf_predict(X)`` take the features only), so the run is attribute-blind at test time.

``output`` says what ``y_score`` holds, as for ``group_thresholds``: ``decision`` (default) = fairlearn's seeded draw
``predict(X, random_state=…)`` (0/1; the run's threshold is 0.5), ``pmf`` = the probability of a positive decision
Σ_j w_j·h_j(x) (a deterministic rounding at 0.5). The run's AUC is that of these decisions, not of a ranking model.
"""

from __future__ import annotations

from typing import Any, Literal, Mapping

import numpy as np
from pydantic import Field

from fairfm.adapt.seeding import derive_seed
from fairfm.errors import InputError
from fairfm.mitigate.base import Method, MethodParams, Needs, TrainContext, register_method, require_package
from fairfm.mitigate.group_thresholds import SCORE_WARNING, Output

Constraint = Literal["equalized_odds", "demographic_parity", "true_positive_rate_parity",
                     "false_positive_rate_parity", "error_rate_parity"]  # fmt: skip
_MOMENTS = {"equalized_odds": "EqualizedOdds", "demographic_parity": "DemographicParity",
            "true_positive_rate_parity": "TruePositiveRateParity",
            "false_positive_rate_parity": "FalsePositiveRateParity", "error_rate_parity": "ErrorRateParity"}


class ReductionsParams(MethodParams):
    constraint: Constraint = Field("equalized_odds", description="fairlearn reductions moment")
    difference_bound: float = Field(0.01, gt=0, description="largest allowed difference of the constrained rate "
                                    "between groups (fairlearn's default)")
    eps: float = Field(0.01, gt=0, description="allowed constraint violation of the optimisation (fairlearn's default)")
    max_iter: int = Field(50, ge=1, description="exponentiated-gradient iterations (fairlearn's default)")
    nu: float | None = Field(None, gt=0, description="duality-gap convergence threshold (null: fairlearn's automatic)")
    eta0: float = Field(2.0, gt=0, description="initial learning rate of the Lagrange multipliers")
    C: float = Field(1.0, gt=0, description="inverse L2 strength of the logistic regression (sklearn's default)")
    lr_max_iter: int = Field(1000, ge=1, description="lbfgs iterations of each logistic-regression fit")
    output: Output = Field("decision", description="y_score: decision = fairlearn's seeded random draw (0/1); pmf = "
                           "the probability of a positive decision")


def exponentiated_gradient(params: ReductionsParams) -> Any:
    """An unfitted fairlearn ExponentiatedGradient with ``params`` over sklearn's LogisticRegression."""
    import fairlearn.reductions as reductions
    from sklearn.linear_model import LogisticRegression

    moment = getattr(reductions, _MOMENTS[params.constraint])(difference_bound=params.difference_bound)
    return reductions.ExponentiatedGradient(LogisticRegression(C=params.C, max_iter=params.lr_max_iter), moment,
                                            eps=params.eps, max_iter=params.max_iter, nu=params.nu,
                                            eta0=params.eta0)  # fmt: skip


def draw_seed(seed: int, split: str, task_index: int) -> int:
    """The numpy RandomState seed of the randomised decisions of one split and task."""
    return derive_seed(seed, f"reductions:{split}:{task_index}") % (2**32)


@register_method("reductions")
class Reductions(Method):
    params_model = ReductionsParams
    needs = Needs(loops=("features",), attribute_at_train=True, attribute_at_test=False)
    summary = "fairlearn ExponentiatedGradient over a logistic-regression head on cached features (randomised)"
    reference = "Agarwal et al. ICML 2018; fairlearn ExponentiatedGradient (METHODS.md §3.18)"
    decision_threshold = "0.5"

    def report_warnings(self) -> list[str]:
        return [SCORE_WARNING.format(name=self.name, output=self.params.output)]

    def check(self, context: TrainContext) -> None:
        require_package("fairlearn", self.name)
        if context.volumes:
            raise InputError(f"method {self.name!r} trains on one feature vector per sample; this dataset's samples "
                             "are volumes (slice bags)")  # fmt: skip
        for j, task in enumerate(context.tasks):
            self._check_task(f"task {task!r}", context.train_labels[:, j], context.train_groups, context.group_names)

    def _check_task(self, task: str, labels: np.ndarray, groups: np.ndarray, names: Any) -> None:
        """Both classes among the labelled training rows, and in every group unless the constraint ignores y."""
        known = ~np.isnan(labels)
        y, g = labels[known].astype(np.int64), groups[known]
        for code in np.unique(g):
            classes = np.unique(y[g == code])
            if classes.size < 2 and self.params.constraint != "demographic_parity":
                group = repr(str(names[int(code)])) if names is not None else f"code {int(code)}"
                raise InputError(f"method {self.name!r}: {task}: group {group} has only class "
                                 f"{int(classes[0])} among its training rows; the {self.params.constraint} "
                                 "constraint needs both classes in every group")  # fmt: skip
        if np.unique(y).size < 2:
            raise InputError(f"method {self.name!r}: {task}: the training split has only one class")

    def fit_features(self, features: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                     groups: Mapping[str, np.ndarray], *, seed: int) -> dict[str, np.ndarray]:  # fmt: skip
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(np.asarray(features["train"], dtype=np.float64))
        X = {s: scaler.transform(np.asarray(features[s], dtype=np.float64)) for s in ("train", "val", "test")}
        y_train = np.asarray(labels["train"], dtype=np.float64)
        y_train = y_train[:, None] if y_train.ndim == 1 else y_train
        out = {s: np.empty((len(X[s]), y_train.shape[1]), dtype=np.float64) for s in ("val", "test")}
        self.fitted = {"constraint": self.params.constraint, "output": self.params.output, "tasks": []}
        for j in range(y_train.shape[1]):
            known = ~np.isnan(y_train[:, j])
            y, g = y_train[known, j].astype(np.int64), np.asarray(groups["train"])[known]
            self._check_task(f"task {j}", y_train[:, j], np.asarray(groups["train"]), None)
            model = exponentiated_gradient(self.params)
            model.fit(X["train"][known], y, sensitive_features=g)
            for split in ("val", "test"):  # the features only: predictions never read the group
                if self.params.output == "decision":
                    out[split][:, j] = model.predict(X[split], random_state=draw_seed(seed, split, j))
                else:
                    out[split][:, j] = model._pmf_predict(X[split])[:, 1]
            weights = np.asarray(model.weights_, dtype=np.float64)
            self.fitted["tasks"].append({"predictors": int(weights.size), "used": int((weights > 0).sum()),
                                          "weights": [float(w) for w in weights[weights > 0]],
                                          "best_gap": float(model.best_gap_)})  # fmt: skip
        return out
