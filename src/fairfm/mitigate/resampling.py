"""Data-level methods: resampling, loss reweighting and Khan et al.'s balanced fine-tuning (METHODS.md §3.1–§3.2).

Cells are groups of the method's attribute, group × class, or classes. With several tasks, the class of a sample is
its label on ``task`` (default: the run's first task; an unknown label is a class of its own).
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np
from pydantic import Field

from fairfm.adapt.seeding import derive_seed
from fairfm.errors import InputError
from fairfm.mitigate.base import LossInputs, Method, MethodParams, Needs, TrainContext, TrainHooks, register_method

Cells = Literal["group", "group_class", "class"]


class _CellParams(MethodParams):
    cells: Cells = Field("group", description="group, group_class (MEDFAIR 'balanced') or class")
    task: Optional[str] = Field(None, description="the task whose label defines a sample's class (null: the first)")


def cell_codes(context: TrainContext, cells: str, task: str | None) -> np.ndarray:
    """(N_train,) cell id of every training row: its group, (group, class) or class."""
    if task is not None and task not in context.tasks:
        raise InputError(f"method_params.task: {task!r} is not one of the run's tasks ({', '.join(context.tasks)})")
    column = context.tasks.index(task) if task is not None else 0
    labels = context.train_labels[:, column]
    classes = np.where(np.isnan(labels), 2, labels).astype(np.int64)  # 2: unknown label
    if cells == "group":
        return context.train_groups.astype(np.int64)
    if cells == "class":
        return classes
    return context.train_groups.astype(np.int64) * 3 + classes


def inverse_frequency(cells: np.ndarray) -> np.ndarray:
    """Per-row weight 1 / (size of the row's cell)."""
    _, inverse, counts = np.unique(cells, return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse]


@register_method("resampling")
class Resampling(Method):
    """MEDFAIR's sampler: each epoch draws N training rows with replacement, with probability ∝ 1/|cell|, so every
    cell is drawn equally often in expectation."""

    params_model = _CellParams
    needs = Needs(loops=("features", "images", "clip_head"))
    summary = "draw training rows with probability 1/|cell| (group, group × class or class), with replacement"
    reference = "MEDFAIR datasets/utils.py get_weights + WeightedRandomSampler (METHODS.md §3.1)"

    def training_hooks(self, context: TrainContext) -> TrainHooks:
        weights = inverse_frequency(cell_codes(context, self.params.cells, self.params.task))
        probabilities = weights / weights.sum()
        n = weights.size

        def rows(epoch: int) -> np.ndarray:
            rng = np.random.default_rng(derive_seed(context.seed, f"resampling:{epoch}"))
            return rng.choice(n, size=n, replace=True, p=probabilities)

        return TrainHooks(rows=rows, meta={"cells": self.params.cells})


@register_method("reweighting")
class Reweighting(Method):
    """Loss weights 1/|cell| per sample, normalised to mean 1 over the training rows: resampling's expectation
    without its draws."""

    params_model = _CellParams
    needs = Needs(loops=("features", "images", "clip_head"))
    summary = "weight each sample's loss by 1/|cell| (group, group × class or class), mean weight 1"
    reference = "METHODS.md §3.2 (in-expectation equivalent of MEDFAIR's resampling)"

    def training_hooks(self, context: TrainContext) -> TrainHooks:
        import torch

        weights = inverse_frequency(cell_codes(context, self.params.cells, self.params.task))
        weights = torch.as_tensor(weights / weights.mean(), dtype=torch.float32)

        def loss(inputs: LossInputs) -> torch.Tensor:
            if inputs.rows is None:
                raise ValueError("reweighting needs the training-row index of each sample")
            w = weights.to(inputs.per_element.device)[inputs.rows.to(weights.device)].to(inputs.per_element.device)
            return (inputs.per_element * w[:, None]).sum() / inputs.known.sum().clamp(min=1)

        return TrainHooks(loss=loss, meta={"cells": self.params.cells})


class _BalancedParams(MethodParams):
    cells: Cells = Field("group", description="equalise groups (Khan et al.), group × class cells or classes")
    task: Optional[str] = Field(None, description="the task whose label defines a sample's class (null: the first)")


@register_method("balanced")
class Balanced(Method):
    """Khan et al.'s balanced fine-tuning: one seeded undersample of the training rows to equal cell sizes (the
    smallest cell's), kept for every epoch and shuffled per epoch."""

    params_model = _BalancedParams
    needs = Needs(loops=("features", "images", "clip_head"))
    summary = "undersample the training set once to equal group (or cell) sizes"
    reference = "Khan et al. ML4H 2023 balanced fine-tuning (METHODS.md §3.1, DATASETS.md §5.4)"

    def training_hooks(self, context: TrainContext) -> TrainHooks:
        cells = cell_codes(context, self.params.cells, self.params.task)
        values, counts = np.unique(cells, return_counts=True)
        smallest = int(counts.min())
        rng = np.random.default_rng(derive_seed(context.seed, "balanced"))
        kept = np.sort(np.concatenate([rng.choice(np.flatnonzero(cells == v), smallest, replace=False)
                                       for v in values]))  # fmt: skip

        def rows(epoch: int) -> np.ndarray:
            return np.random.default_rng(derive_seed(context.seed, f"balanced:{epoch}")).permutation(kept)

        return TrainHooks(rows=rows, meta={"cells": self.params.cells, "rows_per_cell": smallest,
                                           "rows_kept": int(kept.size)})  # fmt: skip
