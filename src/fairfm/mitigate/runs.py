"""How a run uses its method: the method of a spec, its training hooks for a usage's loop, its post-processing,
and what the run records about it. The runner calls these; a method module never needs to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fairfm.errors import InputError
from fairfm.mitigate.base import Loop, Method, ScoreSet, TrainContext, TrainHooks, build_method, group_codes

if TYPE_CHECKING:
    from fairfm.spec import RunSpec


def run_method(spec: "RunSpec") -> Method | None:
    """The spec's method with its validated parameters, or None."""
    if spec.method is None:
        return None
    return build_method(spec.method, spec.method_params)


def method_attribute(method: Method, attributes: list[str]) -> str | None:
    """The attribute the method acts on: its ``attribute`` parameter, else the run's first attribute; None for a
    method that reads no attribute (SAM, SWA, SWAD: ``needs.attribute_at_train`` false), which runs without one."""
    if not method.needs.attribute_at_train and not method.uses_attribute_at_test():
        return None
    if not attributes:
        raise InputError(f"method {method.name!r} needs a sensitive attribute; the run has none")
    wanted = method.params.attribute or attributes[0]
    if wanted not in attributes:
        raise InputError(f"method_params.attribute: {wanted!r} is not one of the run's attributes "
                         f"({', '.join(attributes)})")  # fmt: skip
    return wanted


def group_names(table: pd.DataFrame, attribute: str) -> list[str]:
    """The sorted group labels of ``attribute`` over every row of the run (codes index this list)."""
    column = f"group_{attribute}"
    if column not in table.columns:
        raise InputError(f"SampleTable has no column {column!r} for the method's attribute")
    return sorted(set(table[column].astype(str)))


def check_method(method: Method, loop: Loop, usage: str, table: pd.DataFrame, attributes: list[str],
                 model_family: str | None = None, *, spec: "RunSpec | None" = None) -> str | None:  # fmt: skip
    """Refuse (InputError) a method that cannot run here, before any work; returns its attribute. With the run's
    ``spec``, the method's own :meth:`~fairfm.mitigate.base.Method.check` sees the table's training rows."""
    attribute = method_attribute(method, attributes)
    n_groups = len(group_names(table, attribute)) if attribute is not None else None
    why = method.refusal(loop, usage, n_groups=n_groups, model_family=model_family)
    if why is not None:
        raise InputError(why)
    if spec is not None and "split" in table.columns:
        tasks = list(spec.resolve()["tasks"])
        if all(f"label_{t}" in table.columns for t in tasks):  # else the run names the missing column
            context, _ = train_context(spec, table, tasks, loop, spec.typed_hparams(), attribute)
            method.check(context)
    return attribute


def _label_matrix(rows: pd.DataFrame, tasks: list[str]) -> np.ndarray:
    return np.stack([pd.to_numeric(rows[f"label_{t}"], errors="coerce").to_numpy(dtype=np.float64)
                     for t in tasks], axis=1)  # fmt: skip


def _volumes(spec: "RunSpec") -> bool:
    """Whether the run's samples are volumes: a 3D dataset card read without a 2D view."""
    try:
        card = spec.manifest().get("card") or {}
    except InputError:
        return False
    return card.get("dims") == 3 and spec.view is None


def train_context(spec: "RunSpec", table: pd.DataFrame, tasks: list[str], loop: Loop,
                  hparams: Any, attribute: str | None, *, device: str = "cpu", feature_dim: int | None = None,
                  ) -> tuple[TrainContext, dict[str, np.ndarray] | None]:  # fmt: skip
    """(a method's TrainContext, group codes per split) for a run whose ``table`` has a ``split`` column, acting on
    ``attribute``; the codes are None for a method without an attribute (its context holds one group, "all")."""
    split = table["split"].astype(str).to_numpy()
    if attribute is None:
        names = ["all"]
        by_split = {name: np.zeros(int((split == name).sum()), dtype=np.int64) for name in ("train", "val", "test")}
    else:
        names, by_split = group_names(table, attribute), _codes_by_split(table, attribute)
    context = TrainContext(loop=loop, tasks=list(tasks), attribute=attribute, group_names=names,
                           train_groups=by_split["train"], train_labels=_label_matrix(table[split == "train"], tasks),
                           seed=spec.seed, epochs=int(getattr(hparams, "epochs", 0) or 0),
                           batch_size=int(getattr(hparams, "batch_size", 1) or 1), device=device,
                           feature_dim=feature_dim, val_groups=by_split["val"],
                           val_labels=_label_matrix(table[split == "val"], tasks),
                           test_groups=by_split["test"], volumes=_volumes(spec))  # fmt: skip
    return context, (by_split if attribute is not None else None)


def training_setup(method: Method, spec: "RunSpec", table: pd.DataFrame, tasks: list[str], loop: Loop,
                   hparams: Any, *, device: str = "cpu", feature_dim: int | None = None,
                   ) -> tuple[TrainHooks, dict[str, np.ndarray] | None, str | None]:  # fmt: skip
    """(hooks, group codes per split, attribute) of ``method`` for a run whose ``table`` has a ``split`` column."""
    attributes = list(spec.resolve()["attributes"])
    attribute = method_attribute(method, attributes)
    context, by_split = train_context(spec, table, tasks, loop, hparams, attribute, device=device,
                                      feature_dim=feature_dim)  # fmt: skip
    method.check(context)  # as the pre-flight did (a direct call is checked too)
    return method.training_hooks(context), by_split, attribute


def post_process(method: Method, spec: "RunSpec", table: pd.DataFrame, tasks: list[str],
                 probabilities: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # fmt: skip
    """The usage's val/test probabilities after the method's post-processing (fitted on val only)."""
    attributes = list(spec.resolve()["attributes"])
    attribute = method_attribute(method, attributes)
    names = group_names(table, attribute)
    split = table["split"].astype(str).to_numpy()
    sets = {}
    for name in ("val", "test"):
        rows = table[split == name]
        labels = np.stack([pd.to_numeric(rows[f"label_{t}"], errors="coerce").to_numpy(dtype=np.float64)
                           for t in tasks], axis=1)  # fmt: skip
        codes = group_codes(rows[f"group_{attribute}"].astype(str).to_numpy(), names)
        sets[name] = ScoreSet(np.asarray(probabilities[name], dtype=np.float64), labels if name == "val" else None,
                              codes, names, list(tasks))  # the test labels stay out of reach  # fmt: skip
    val, test = method.post_process(sets["val"], sets["test"], seed=spec.seed)
    return {"val": np.asarray(val, dtype=np.float64), "test": np.asarray(test, dtype=np.float64)}


def method_meta(method: Method, attribute: str | None, hooks: TrainHooks | None = None) -> dict[str, Any]:
    """What the run records about its method (meta.json ``method``)."""
    details = {**(hooks.meta if hooks is not None else {}), **method.fitted}
    return {"name": method.name, "params": method.params.model_dump(mode="json"), "attribute": attribute,
            "attribute_at_test": bool(method.uses_attribute_at_test()), "reference": method.reference,
            **({"details": details} if details else {})}  # fmt: skip


@dataclass
class LoopSetup:
    """What a usage's training loop takes from the run's method (and its model selection): the hooks (None without
    a training method), group codes per split (``train``, ``val``, ``test`` as the method sees them, ``val_selection``
    with unknown groups as −1, for ``select_by: val_worst_group_auc``) and the attribute they are of, and the
    attribute the method acts on (None for a method that reads none)."""

    method: Method | None = None
    hooks: TrainHooks | None = None
    groups: dict[str, np.ndarray] | None = None
    group_attribute: str | None = None
    attribute: str | None = None

    @property
    def group_column(self) -> str | None:
        return None if self.group_attribute is None else f"group_{self.group_attribute}"

    def record(self, meta: dict[str, Any]) -> None:
        """Record the method in a usage's meta (the runner checks that a training method was recorded)."""
        if self.hooks is not None and self.method is not None:
            meta["method"] = method_meta(self.method, self.attribute, self.hooks)


def loop_setup(spec: "RunSpec", table: pd.DataFrame, tasks: list[str], loop: Loop, hparams: Any, *,
               device: str = "cpu", feature_dim: int | None = None) -> LoopSetup:  # fmt: skip
    """The one place a usage asks for its method's hooks and the groups its loop reads: every usage on a training
    loop calls it (so a method cannot be wired differently per usage)."""
    method = run_method(spec)
    setup = LoopSetup(method)
    if method is not None and not method.post_processes and not method.replaces_probe:
        hooks, groups, attribute = training_setup(method, spec, table, tasks, loop, hparams, device=device,
                                                  feature_dim=feature_dim)  # fmt: skip
        setup = LoopSetup(method, hooks, groups, attribute, attribute)
    if setup.groups is None and getattr(hparams, "select_by", None) == "val_worst_group_auc":
        attributes = list(spec.resolve()["attributes"])  # the run's first attribute's groups select the epoch
        if not attributes:
            raise InputError("hparams.select_by: val_worst_group_auc needs a sensitive attribute; the run has none")
        setup.groups, setup.group_attribute = _codes_by_split(table, attributes[0]), attributes[0]
    return setup


def _codes_by_split(table: pd.DataFrame, attribute: str) -> dict[str, np.ndarray]:
    """Group codes of ``attribute`` per split, and ``val_selection``: the val codes with unknown groups as −1 (an
    unknown group is in no group, METRICS.md §5)."""
    from fairfm.adapt.selection import known_group_codes

    names = group_names(table, attribute)
    split = table["split"].astype(str).to_numpy()
    codes = group_codes(table[f"group_{attribute}"].astype(str).to_numpy(), names)
    by_split = {name: codes[split == name] for name in ("train", "val", "test")}
    by_split["val_selection"] = known_group_codes(by_split["val"], names)
    return by_split
