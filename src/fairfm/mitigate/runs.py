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


def method_attribute(method: Method, attributes: list[str]) -> str:
    """The attribute the method acts on: its ``attribute`` parameter, else the run's first attribute."""
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
                 model_family: str | None = None) -> str:  # fmt: skip
    """Refuse (InputError) a method that cannot run here, before any work; returns its attribute."""
    attribute = method_attribute(method, attributes)
    why = method.refusal(loop, usage, n_groups=len(group_names(table, attribute)), model_family=model_family)
    if why is not None:
        raise InputError(why)
    return attribute


def training_setup(method: Method, spec: "RunSpec", table: pd.DataFrame, tasks: list[str], loop: Loop,
                   hparams: Any, *, device: str = "cpu", feature_dim: int | None = None,
                   ) -> tuple[TrainHooks, dict[str, np.ndarray], str]:  # fmt: skip
    """(hooks, group codes per split, attribute) of ``method`` for a run whose ``table`` has a ``split`` column."""
    attributes = list(spec.resolve()["attributes"])
    attribute = method_attribute(method, attributes)
    names = group_names(table, attribute)
    split = table["split"].astype(str).to_numpy()
    by_split = _codes_by_split(table, attribute)
    train = table[split == "train"]
    labels = np.stack([pd.to_numeric(train[f"label_{t}"], errors="coerce").to_numpy(dtype=np.float64)
                       for t in tasks], axis=1)  # fmt: skip
    context = TrainContext(loop=loop, tasks=list(tasks), attribute=attribute, group_names=names,
                           train_groups=by_split["train"], train_labels=labels, seed=spec.seed,
                           epochs=int(hparams.epochs), batch_size=int(hparams.batch_size), device=device,
                           feature_dim=feature_dim)  # fmt: skip
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


def method_meta(method: Method, attribute: str, hooks: TrainHooks | None = None) -> dict[str, Any]:
    """What the run records about its method (meta.json ``method``)."""
    details = {**(hooks.meta if hooks is not None else {}), **method.fitted}
    return {"name": method.name, "params": method.params.model_dump(mode="json"), "attribute": attribute,
            "attribute_at_test": bool(method.uses_attribute_at_test()), "reference": method.reference,
            **({"details": details} if details else {})}  # fmt: skip


@dataclass
class LoopSetup:
    """What a usage's training loop takes from the run's method (and its model selection): the hooks (None without
    a training method), group codes per split (``train``, ``val``, ``test`` as the method sees them, ``val_selection``
    with unknown groups left out, for ``select_by: val_worst_group_auc``), and the group column they come from."""

    method: Method | None = None
    hooks: TrainHooks | None = None
    groups: dict[str, np.ndarray] | None = None
    attribute: str | None = None

    @property
    def group_column(self) -> str | None:
        return None if self.attribute is None else f"group_{self.attribute}"

    def record(self, meta: dict[str, Any]) -> None:
        """Record the method in a usage's meta (the runner checks that a training method was recorded)."""
        if self.hooks is not None and self.method is not None:
            meta["method"] = method_meta(self.method, self.attribute, self.hooks)


def loop_setup(spec: "RunSpec", table: pd.DataFrame, tasks: list[str], loop: Loop, hparams: Any, *,
               device: str = "cpu", feature_dim: int | None = None) -> LoopSetup:  # fmt: skip
    """The one place a usage asks for its method's hooks and the groups its loop reads: every usage on a training
    loop calls it (so a method cannot be wired differently per usage)."""
    method = run_method(spec)
    if method is not None and not method.post_processes and not method.replaces_probe:
        hooks, groups, attribute = training_setup(method, spec, table, tasks, loop, hparams, device=device,
                                                  feature_dim=feature_dim)  # fmt: skip
        return LoopSetup(method, hooks, groups, attribute)
    if getattr(hparams, "select_by", None) == "val_worst_group_auc":  # the run's first attribute's groups
        attributes = list(spec.resolve()["attributes"])
        if not attributes:
            raise InputError("hparams.select_by: val_worst_group_auc needs a sensitive attribute; the run has none")
        return LoopSetup(method, None, _codes_by_split(table, attributes[0]), attributes[0])
    return LoopSetup(method)


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
