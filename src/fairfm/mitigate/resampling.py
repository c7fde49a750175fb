"""Data-level methods: resampling, loss reweighting and Khan et al.'s balanced fine-tuning (METHODS.md §3.1–§3.2).

Cells are groups of the method's attribute, group × class, or classes. With several tasks, the class of a sample is
its label on ``task`` (default: the run's first task). A row whose label on ``task`` is unknown has no class, so it
belongs to no class or group × class cell: resampling draws such rows at their natural rate (each with probability
1/N, as an unweighted draw would), reweighting gives them weight 1, and balanced fine-tuning leaves them out.
With ``cells: group`` every row is in its group's cell.
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


def check_task(context: TrainContext, task: str | None) -> None:
    if task is not None and task not in context.tasks:
        raise InputError(f"method_params.task: {task!r} is not one of the run's tasks ({', '.join(context.tasks)})")


def cell_codes(context: TrainContext, cells: str, task: str | None) -> np.ndarray:
    """(N_train,) cell id of every training row: its group, (group, class) or class; −1 for a row without a class
    (its label on ``task`` unknown) when cells involve the class."""
    check_task(context, task)
    if cells == "group":
        return context.train_groups.astype(np.int64)
    column = context.tasks.index(task) if task is not None else 0
    labels = context.train_labels[:, column]
    known = ~np.isnan(labels)
    classes = np.where(known, labels, 0).astype(np.int64)
    codes = classes if cells == "class" else context.train_groups.astype(np.int64) * 2 + classes
    return np.where(known, codes, -1)


def inverse_frequency(cells: np.ndarray) -> np.ndarray:
    """Per-row weight 1 / (size of the row's cell); NaN for a row without a cell (code −1)."""
    _, inverse, counts = np.unique(cells, return_inverse=True, return_counts=True)
    weights = 1.0 / counts[inverse].astype(np.float64)
    return np.where(cells >= 0, weights, np.nan)


def draw_probabilities(cells: np.ndarray) -> np.ndarray:
    """Per-row draw probability: every cell equally likely among the rows with a cell, which together keep their
    share of the training rows; a row without a cell is drawn at its natural rate 1/N."""
    n = cells.size
    in_cell = cells >= 0
    weights = inverse_frequency(cells)
    probabilities = np.full(n, 1.0 / n)
    if in_cell.any():
        probabilities[in_cell] = weights[in_cell] / weights[in_cell].sum() * (in_cell.sum() / n)
    return probabilities


def weighted_rows(probabilities: np.ndarray, seed: int, purpose: str):
    """``rows(epoch)``: N training rows drawn with replacement with ``probabilities``, seeded per (run, purpose,
    epoch) — MEDFAIR's ``WeightedRandomSampler`` with the run's seed deciding every draw."""
    n = probabilities.size

    def rows(epoch: int) -> np.ndarray:
        rng = np.random.default_rng(derive_seed(seed, f"{purpose}:{epoch}"))
        return rng.choice(n, size=n, replace=True, p=probabilities)

    return rows


class _TaskChecked(Method):
    def check(self, context: TrainContext) -> None:
        check_task(context, self.params.task)


@register_method("resampling")
class Resampling(_TaskChecked):
    """MEDFAIR's sampler: each epoch draws N training rows with replacement, with probability ∝ 1/|cell|, so every
    cell is drawn equally often in expectation."""

    params_model = _CellParams
    needs = Needs(loops=("features", "images", "clip_head"))
    summary = "draw training rows with probability 1/|cell| (group, group × class or class), with replacement"
    reference = "MEDFAIR datasets/utils.py get_weights + WeightedRandomSampler (METHODS.md §3.1)"

    def training_hooks(self, context: TrainContext) -> TrainHooks:
        probabilities = draw_probabilities(cell_codes(context, self.params.cells, self.params.task))
        return TrainHooks(rows=weighted_rows(probabilities, context.seed, "resampling"),
                          meta={"cells": self.params.cells})  # fmt: skip


@register_method("reweighting")
class Reweighting(_TaskChecked):
    """Loss weights 1/|cell| per sample, normalised to mean 1 over the training rows with a cell (rows without a
    class: weight 1): resampling's expectation without its draws."""

    params_model = _CellParams
    needs = Needs(loops=("features", "images", "clip_head"))
    summary = "weight each sample's loss by 1/|cell| (group, group × class or class), mean weight 1"
    reference = "METHODS.md §3.2 (in-expectation equivalent of MEDFAIR's resampling)"

    def training_hooks(self, context: TrainContext) -> TrainHooks:
        import torch

        weights = inverse_frequency(cell_codes(context, self.params.cells, self.params.task))
        in_cell = ~np.isnan(weights)  # rows without a class keep weight 1 (their loss on the task is 0 anyway)
        weights = np.where(in_cell, weights / (weights[in_cell].mean() if in_cell.any() else 1.0), 1.0)
        weights = torch.as_tensor(weights, dtype=torch.float32)

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
class Balanced(_TaskChecked):
    """Khan et al.'s balanced fine-tuning: one seeded undersample of the training rows to equal cell sizes (the
    smallest cell's), kept for every epoch and shuffled per epoch."""

    params_model = _BalancedParams
    needs = Needs(loops=("features", "images", "clip_head"))
    summary = "undersample the training set once to equal group (or cell) sizes"
    reference = "Khan et al. ML4H 2023 balanced fine-tuning (METHODS.md §3.1, DATASETS.md §5.4)"

    def training_hooks(self, context: TrainContext) -> TrainHooks:
        cells = cell_codes(context, self.params.cells, self.params.task)
        values, counts = np.unique(cells[cells >= 0], return_counts=True)  # rows without a class are left out
        if values.size == 0:
            raise InputError(f"method {self.name!r}: no training row has a known label on the cells' task")
        smallest = int(counts.min())
        rng = np.random.default_rng(derive_seed(context.seed, "balanced"))
        kept = np.sort(np.concatenate([rng.choice(np.flatnonzero(cells == v), smallest, replace=False)
                                       for v in values]))  # fmt: skip

        def rows(epoch: int) -> np.ndarray:
            return np.random.default_rng(derive_seed(context.seed, f"balanced:{epoch}")).permutation(kept)

        return TrainHooks(rows=rows, meta={"cells": self.params.cells, "rows_per_cell": smallest,
                                           "rows_kept": int(kept.size)})  # fmt: skip
