"""Weight averaging: SWAD (dense averaging in the validation-loss valley; Cha et al. NeurIPS 2021) and plain SWA
(Izmailov et al. 2018) — MEDFAIR ``models/SWAD``, ``models/SWA`` (METHODS.md §3.10).

The averages are of the trained tensors only (a frozen backbone is never copied), with torch's own SWA update
(``torch.optim.swa_utils.get_swa_multi_avg_fn``); ``AveragedModel`` itself would deep-copy the whole model, frozen
backbone included. The averaged weights replace the validation-selected ones (``final_state``), and in the image
loop BatchNorm statistics are re-estimated for them on the training rows (``torch.optim.swa_utils.update_bn``).

**SWAD.** After every optimiser step the weights join the running mean of the current *segment*; a segment ends
at each validation, which our loops run once per epoch (the reference evaluates every ``checkpoint_freq``
iterations, so here a segment is an epoch and the valley is located at epoch granularity). With the validation
losses ℓ_1, ℓ_2, … of the segments:

- the valley starts at the first segment s whose loss is the minimum of ℓ_s … ℓ_{s+n_converge−1} (the loss has
  stopped improving); the threshold is (1 + tolerance_ratio) × the minimum of those n_converge losses (ℓ_s;
  ``threshold_base: min``, METHODS.md's "min loss × (1 + 0.05)") or × their mean (``threshold_base: mean``, what
  Cha et al.'s ``LossValley`` code computes);
- segment i ≥ s joins the average once the n_tolerance losses ℓ_i … ℓ_{i+n_tolerance−1} are known and their minimum
  is within the threshold; the first segment whose window exceeds it ends the valley (nothing after it joins);
- at the end of training the segments still waiting join while the minimum of the losses from them to the last
  is within the threshold (the reference's ``get_final_model``);
- the result is the mean of the joined segments' means; a run that never converges keeps its last segment's mean,
  as the reference does.

Not copied from the reference's ``LossValley``: when ``n_tolerance > n_converge`` it re-adds the starting segment and
extends the valley backwards, and when the valley is found before its queue is full it adds the same (oldest)
segment again at every later evaluation. ``n_tolerance`` defaults to 9, what MEDFAIR passes (3 + 6); Cha et al.'s
own default is 6.

**SWA.** The weights at the end of every epoch from ``swa_start`` on are averaged (one snapshot per epoch), under
the loop's own learning-rate schedule (MEDFAIR's SWA learning rate 1e-4 with 3 annealing epochs is not applied:
the loops own the schedule).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from fairfm.errors import InputError
from fairfm.mitigate.base import Method, MethodParams, Needs, TrainContext, TrainHooks, register_method


class SWADParams(MethodParams):
    n_converge: int = Field(3, ge=1, description="validations whose first must be the minimum to start the valley")
    n_tolerance: int = Field(9, ge=1, description="validations above the threshold that end the valley "
                                                  "(MEDFAIR passes 3 + 6 = 9; Cha et al.'s default 6)")  # fmt: skip
    tolerance_ratio: float = Field(0.05, ge=0, description="threshold = (1 + ratio) × the base loss at convergence")
    threshold_base: Literal["min", "mean"] = Field(
        "min", description="the base loss of the threshold: min (METHODS.md: min loss × (1 + ratio)) or mean of the "
        "n_converge losses at convergence (Cha et al.'s LossValley code)")  # fmt: skip


class SWAParams(MethodParams):
    swa_start: int = Field(7, ge=1, description="first epoch (1-based) whose end-of-epoch weights are averaged "
                                                "(MEDFAIR: 7)")  # fmt: skip


def _trained(model: Any) -> tuple[list[str], list[Any]]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [n for n, _ in named], [p.detach() for _, p in named]


class _Mean:
    """Running mean of lists of tensors (torch's SWA update), kept on the device of the first tensors given."""

    def __init__(self) -> None:
        from torch.optim.swa_utils import get_swa_multi_avg_fn

        self._update = get_swa_multi_avg_fn()
        self.names: list[str] = []
        self.values: list[Any] | None = None
        self.count = 0

    def add(self, names: list[str], tensors: list[Any]) -> None:
        if self.values is None:
            self.names, self.values = list(names), [t.detach().clone().float() for t in tensors]
        else:
            self._update(self.values, [t.to(self.values[0].device).float() for t in tensors], self.count)
        self.count += 1

    def state(self, like: Any) -> dict[str, Any]:
        """The mean as a CPU state ({name: tensor}) in the dtypes of ``like``'s parameters."""
        params = dict(like.named_parameters())
        return {n: v.detach().cpu().to(params[n].dtype) for n, v in zip(self.names, self.values or [])}


@dataclass
class _Segment:
    epoch: int
    loss: float
    names: list[str]
    mean: list[Any]  # CPU tensors


class LossValley:
    """SWAD's valley detection over segments (see the module doc); ``final`` holds the mean of the joined ones."""

    def __init__(self, n_converge: int, n_tolerance: int, tolerance_ratio: float, base: str = "min") -> None:
        self.n_converge, self.n_tolerance, self.ratio, self.base = n_converge, n_tolerance, tolerance_ratio, base
        self.pending: deque[_Segment] = deque()  # seen, not yet decided
        self.losses: list[float] = []
        self.final = _Mean()
        self.joined: list[int] = []  # epochs averaged
        self.start: int | None = None  # epoch where the valley starts
        self.threshold: float | None = None
        self.dead = False
        self.last: _Segment | None = None

    def observe(self, segment: _Segment) -> None:
        self.last = segment
        if self.dead:
            return
        self.pending.append(segment)
        if self.start is None:
            while len(self.pending) > self.n_converge:
                self.pending.popleft()
            if len(self.pending) < self.n_converge:
                return
            losses = [s.loss for s in self.pending]
            if min(range(len(losses)), key=losses.__getitem__) != 0:
                return
            self.start = self.pending[0].epoch
            base = min(losses) if self.base == "min" else sum(losses) / len(losses)
            self.threshold = base * (1.0 + self.ratio)
            self._join(self.pending.popleft())
        while len(self.pending) >= self.n_tolerance:  # the front segment's window is complete: decide it
            if min(s.loss for s in list(self.pending)[: self.n_tolerance]) > self.threshold:
                self.dead = True
                self.pending.clear()
                return
            self._join(self.pending.popleft())

    def finish(self) -> None:
        """Training ended: the waiting segments join while the minimum loss from them to the last is in the valley."""
        if self.start is None or self.dead:
            return
        while self.pending and min(s.loss for s in self.pending) <= self.threshold:
            self._join(self.pending.popleft())
        self.pending.clear()

    def _join(self, segment: _Segment) -> None:
        self.final.add(segment.names, segment.mean)
        self.joined.append(segment.epoch)


@register_method("swad")
class SWAD(Method):
    params_model = SWADParams
    needs = Needs(loops=("features", "images", "clip_head"), attribute_at_train=False)
    summary = "dense weight averaging over the epochs of the validation-loss valley (SWAD)"
    reference = "Cha et al. NeurIPS 2021; MEDFAIR models/SWAD (METHODS.md §3.10)"

    def training_hooks(self, context: TrainContext) -> TrainHooks:
        p = self.params
        valley = LossValley(p.n_converge, p.n_tolerance, p.tolerance_ratio, p.threshold_base)
        segment = _Mean()
        hooks = TrainHooks(update_bn=True, meta={"granularity": "epoch", "threshold_base": p.threshold_base})

        def after_step(model: Any) -> None:
            segment.add(*_trained(model))

        def on_epoch_end(info: Any) -> None:
            nonlocal segment
            if segment.values is not None:
                valley.observe(_Segment(info.epoch, float(info.record["val_loss"]), segment.names,
                                        [v.cpu() for v in segment.values]))  # fmt: skip
            segment = _Mean()

        def final_state(selected: Any, model: Any) -> dict[str, Any] | None:
            valley.finish()
            hooks.meta.update({"converged_epoch": valley.start, "threshold": valley.threshold,
                               "valley_ended": valley.dead, "averaged_epochs": list(valley.joined)})  # fmt: skip
            if valley.final.values is not None:
                return valley.final.state(model)
            if valley.last is None:
                return None
            last = _Mean()  # never converged: the last segment's mean, as the reference
            last.add(valley.last.names, valley.last.mean)
            hooks.meta["averaged_epochs"] = [valley.last.epoch]
            return last.state(model)

        hooks.after_step, hooks.on_epoch_end, hooks.final_state = [after_step], [on_epoch_end], final_state
        return hooks


@register_method("swa")
class SWA(Method):
    params_model = SWAParams
    needs = Needs(loops=("features", "images", "clip_head"), attribute_at_train=False)
    summary = "stochastic weight averaging of the end-of-epoch weights from epoch swa_start on"
    reference = "Izmailov et al. UAI 2018; MEDFAIR models/SWA (METHODS.md §3.10)"

    def check(self, context: TrainContext) -> None:
        start = self.params.swa_start
        if start > context.epochs:
            raise InputError(f"method_params.swa_start: {start} is after the last epoch (hparams.epochs "
                             f"{context.epochs}); nothing would be averaged")  # fmt: skip

    def training_hooks(self, context: TrainContext) -> TrainHooks:
        start = self.params.swa_start
        mean = _Mean()
        hooks = TrainHooks(update_bn=True, meta={"averaged_epochs": []})

        def on_epoch_end(info: Any) -> None:
            if info.epoch >= start:
                mean.add(*_trained(info.model))
                hooks.meta["averaged_epochs"].append(info.epoch)

        def final_state(selected: Any, model: Any) -> dict[str, Any] | None:
            return mean.state(model) if mean.values is not None else None  # stopped early: the selected state

        hooks.on_epoch_end, hooks.final_state = [on_epoch_end], final_state
        return hooks
