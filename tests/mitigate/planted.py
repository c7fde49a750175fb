"""Planted-bias cached features for the direction-of-effect tests of the mitigation methods.

Two groups (code 0 = majority "A", 1 = minority "B"), ``dim`` Gaussian features, one task. Each mechanism mirrors one
of ``fairfm datasets synth`` at the level of the features a frozen encoder would give:

- ``under_representation``: B is ``minority`` of the training rows (val/test balanced); the label moves features
  0–3 in A and 4–7 in B, so a head fitted mostly on A ranks B worse (B's AUC, the AUC gap).
- ``prevalence_shift``: P(y = 1) is 0.7 in A and 0.2 in B in every split; signal as above but shared dims, so
  an unweighted loss is dominated by A's positives and B's negatives (calibration / TPR gaps).
- ``shortcut``: feature 8 encodes the group; in training P(y = 1 | A) = 0.85 and P(y = 1 | B) = 0.15, in val/test
  0.5 in both — a head that uses the marker misses B's positives at test time (TPR gap, EOD).
- ``score_shift``: no training bias, but B's label signal is half as strong (a harder group): group-specific
  thresholds can equalise TPR/FPR (EOD), a shared head cannot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GROUPS = ["A", "B"]


@dataclass
class PlantedSplit:
    features: np.ndarray  # (N, dim) float32
    labels: np.ndarray  # (N, 1) float64 0/1
    groups: np.ndarray  # (N,) int64 codes into GROUPS


def planted_features(mechanism: str, *, seed: int = 0, n_train: int = 2000, n_eval: int = 2000, dim: int = 16,
                     signal: float = 1.2, minority: float = 0.1) -> dict[str, PlantedSplit]:  # fmt: skip
    """``{"train", "val", "test"}`` splits of planted-bias features (see the module doc)."""
    rng = np.random.default_rng(seed)

    def split(n: int, b_fraction: float, prevalence: tuple[float, float]) -> PlantedSplit:
        groups = (rng.random(n) < b_fraction).astype(np.int64)
        p = np.where(groups == 1, prevalence[1], prevalence[0])
        y = (rng.random(n) < p).astype(np.float64)
        x = rng.normal(size=(n, dim))
        a, b = groups == 0, groups == 1
        if mechanism in ("under_representation",):
            x[a, 0:4] += signal * y[a, None]
            x[b, 4:8] += signal * y[b, None]
        elif mechanism == "score_shift":
            x[a, 0:4] += signal * y[a, None]
            x[b, 0:4] += 0.5 * signal * y[b, None]
        else:
            x[:, 0:4] += signal * y[:, None]
        if mechanism == "shortcut":
            x[:, 8] = 3.0 * (2 * groups - 1) + 0.3 * rng.normal(size=n)
        return PlantedSplit(x.astype(np.float32), y[:, None], groups)

    if mechanism == "under_representation":
        return {"train": split(n_train, minority, (0.5, 0.5)), "val": split(n_eval, 0.5, (0.5, 0.5)),
                "test": split(n_eval, 0.5, (0.5, 0.5))}  # fmt: skip
    if mechanism == "prevalence_shift":
        return {name: split(n_train if name == "train" else n_eval, 0.5, (0.7, 0.2)) for name in ("train", "val", "test")}
    if mechanism == "shortcut":
        return {"train": split(n_train, 0.5, (0.85, 0.15)), "val": split(n_eval, 0.5, (0.5, 0.5)),
                "test": split(n_eval, 0.5, (0.5, 0.5))}  # fmt: skip
    if mechanism == "score_shift":
        return {name: split(n_train if name == "train" else n_eval, 0.5, (0.5, 0.5)) for name in ("train", "val", "test")}
    raise ValueError(f"unknown mechanism {mechanism!r}")


def group_auc_gap(split: PlantedSplit, probabilities: np.ndarray) -> tuple[float, float, float]:
    """(AUC of A, AUC of B, |gap|) on one split."""
    from sklearn.metrics import roc_auc_score

    aucs = [roc_auc_score(split.labels[split.groups == g, 0], probabilities[split.groups == g, 0]) for g in (0, 1)]
    return aucs[0], aucs[1], abs(aucs[0] - aucs[1])


def train_probe(splits: dict[str, PlantedSplit], method_name: str | None, *, seed: int = 0,
                method_params: dict | None = None, epochs: int = 30, lr: float = 0.05):  # fmt: skip
    """The linear probe trained on planted features with a method's hooks (None: ERM); returns its predictions
    (``"val"``, ``"test"``) and the hooks."""
    from fairfm.adapt.linear_probe import train_linear_probe
    from fairfm.mitigate.base import TrainContext, build_method
    from fairfm.spec import LinearProbeHParams

    hp = LinearProbeHParams(epochs=epochs, batch_size=128, lr=lr, warmup_epochs=0, optimizer="adamw",
                            weight_decay=0.0, select_by="last")  # fmt: skip
    hooks = None
    if method_name is not None:
        method = build_method(method_name, method_params or {})
        context = TrainContext(loop="features", tasks=["y"], attribute="group", group_names=GROUPS,
                               train_groups=splits["train"].groups, train_labels=splits["train"].labels, seed=seed,
                               epochs=epochs, batch_size=hp.batch_size, feature_dim=splits["train"].features.shape[1])
        hooks = method.training_hooks(context)
    result = train_linear_probe(splits["train"].features, splits["train"].labels, splits["val"].features,
                                splits["val"].labels, hparams=hp, seed=seed, predict={"test": splits["test"].features},
                                tasks=["y"], hooks=hooks, groups={s: splits[s].groups for s in splits})  # fmt: skip
    return result.predictions, hooks
