"""The one training loop of every trainable usage: LoRA, BitFit, full fine-tuning, and the mitigations.

A :class:`Classifier` is an image backbone (the library's own ``nn.Module``, frozen or partly trainable) with
a linear head, one output per task, trained with multi-label BCE (positive weight negatives/positives per task
on the training split when ``class_balanced``; NaN labels are masked). :func:`fit` runs it over a
:class:`ImageTable` (a SampleTable split read with the model card's own preprocessing, optional train-time
augmentation) with the spec's optimiser (SGD / AdamW / Adam, no weight decay on 1-D parameters), linear
warm-up then half-cosine (per epoch or per iteration), gradient clipping, layer-wise lr decay when
``layer_decay < 1`` (Khan et al. / Medical MAE's BEiT scheme on timm backbones, METHODS.md §2.6), mixed
precision on CUDA only, and model selection on the validation split by an epoch-end callback
(:class:`ModelSelection`: best val AUC / val loss / last epoch, with early-stopping patience). The selected
state is kept in memory (only what training can change: trainable parameters, head, buffers, extra parameters)
and can be written with safetensors.

Hook points the mitigation methods use (all optional, all arguments of :func:`fit`):

``sampler``
    a ``torch.utils.data.Sampler`` over the training rows (e.g. group-balanced resampling); replaces the
    seeded shuffle. It is used as given, so its own seeding decides the order.
``loss_wrapper(logits, targets, groups) -> loss``
    replaces the default loss. ``logits``/``targets`` are (B, T) (targets may hold NaN for unknown labels),
    ``groups`` is the (B,) long tensor of group codes of the batch (``ImageTable.group_names`` names them).
    :func:`masked_bce` gives the default per-element loss to build on (e.g. group DRO, group re-weighting).
``extra_parameters``
    parameters already on the training device (or an ``nn.Module``, which is moved) trained with the model,
    e.g. per-group temperatures or biases; they join the optimiser (no weight decay) and the kept state under
    ``extra.<i>``.
``adversary``
    an ``nn.Module`` whose ``forward(features, logits, targets, groups) -> loss`` is added to the task loss;
    its parameters join the optimiser. Gradient reversal (or alternating updates) is the adversary's own
    business.
``on_epoch_end``
    callables ``fn(info: EpochInfo) -> bool | None`` run after each validation; returning True stops training.
    :class:`ModelSelection` (always installed first) is one of them.

Federated clients and FairTune drive the same loop: ``fit(..., initial_state=weights, trainable=mask)`` trains
``epochs`` local epochs from given weights with only the masked parameters trainable and returns the trained
state (``result.last_state``) besides the selected one; ``resume=result.checkpoint`` continues an interrupted
run exactly (optimiser state and epoch; data order and dropout are seeded per (seed, epoch), so no RNG state
is needed).
"""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fairfm.adapt.linear_probe import ModelSelection, lr_at, macro_auc
from fairfm.errors import InputError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fairfm.spec import TrainHParams


# ------------------------------------------------------------------------------------------------ data


class ImageTable:
    """torch Dataset over SampleTable rows: ``(image (3, S, S), targets (T,), group code, row)``.

    Images are read as :mod:`fairfm.adapt.features` reads them (``read_array`` on the row's locator, so
    8/16-bit images keep their type for the card's preprocessing); ``augment`` (train time only) maps the
    decoded array to an augmented array before preprocessing. ``group_column`` (e.g. ``group_sex``) gives each
    row a group code (index into ``group_names``, sorted labels; without a group column every row gets code 0
    of the single group ``all``). Volumes are refused: fine-tuning on 3D samples needs a slice policy that is
    not defined yet.
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        root: str | os.PathLike,
        preprocess: Callable[[Any], "torch.Tensor"],
        tasks: Sequence[str],
        *,
        group_column: str | None = None,
        augment: Callable[[np.ndarray], np.ndarray] | None = None,
        column: str = "path",
        group_names: Sequence[str] | None = None,
    ) -> None:
        from fairfm.adapt.features import image_sources

        frame = frame.reset_index(drop=True)
        missing = [f"label_{t}" for t in tasks if f"label_{t}" not in frame.columns]
        if missing:
            raise InputError(f"SampleTable has no column {missing[0]!r} (tasks: {', '.join(tasks)})")
        self.frame = frame
        self.tasks = list(tasks)
        self.sources = image_sources(frame, Path(root), column)
        self.preprocess = preprocess
        self.augment = augment
        labels = (
            np.stack(
                [
                    pd.to_numeric(frame[f"label_{t}"], errors="coerce").to_numpy(dtype=np.float64)
                    for t in tasks
                ],
                axis=1,
            )
            if tasks
            else np.zeros((len(frame), 0))
        )
        bad = ~np.isnan(labels) & (labels != 0) & (labels != 1)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise InputError(
                f"SampleTable column 'label_{tasks[col]}', row {row}: value {float(labels[row, col])!r} "
                "(expected 0, 1 or missing)"
            )
        self.labels = labels
        if group_column is None:
            self.group_names = list(group_names or ["all"])
            self.groups = np.zeros(len(frame), dtype=np.int64)
        else:
            if group_column not in frame.columns:
                raise InputError(f"SampleTable has no group column {group_column!r}")
            values = frame[group_column].astype(str).to_numpy(dtype=object)
            self.group_names = list(group_names) if group_names is not None else sorted(set(values))
            lookup = {name: i for i, name in enumerate(self.group_names)}
            unseen = [v for v in values if v not in lookup]
            if unseen:
                raise InputError(
                    f"SampleTable column {group_column!r}: group {unseen[0]!r} is not one of "
                    f"{self.group_names}"
                )
            self.groups = np.array([lookup[v] for v in values], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.sources)

    def without_augmentation(self) -> "ImageTable":
        clone = object.__new__(ImageTable)
        clone.__dict__.update(self.__dict__)
        clone.augment = None
        return clone

    def __getitem__(self, i: int):
        import torch

        from fairfm.adapt.features import is_volume, read_array
        from fairfm.data.images import image_kind

        source = self.sources[i]
        try:
            array = read_array(source.path, key=source.key, index=source.index)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001 - a decoding failure is reported with its file and row
            raise InputError(f"{source.describe()} (SampleTable row {i}): cannot be read ({exc})") from None
        if is_volume(array, image_kind(source.path)):
            raise InputError(
                f"{source.describe()} (SampleTable row {i}): a volume; fine-tuning reads 2D images only"
            )
        if self.augment is not None:
            array = self.augment(array)
        image = self.preprocess(array)
        return image, torch.as_tensor(self.labels[i], dtype=torch.float32), int(self.groups[i]), i


def timm_randaugment(config: str) -> Callable[[np.ndarray], np.ndarray]:
    """timm's RandAugment (e.g. ``rand-m6-mstd0.5-inc1``, Medical MAE's setting) on a decoded 8-bit image.

    timm's ops are PIL operations, so only 8-bit arrays are accepted; DICOM/NIfTI intensities would have to be
    windowed first, which is a dataset decision this function does not take silently.
    """
    from PIL import Image
    from timm.data import rand_augment_transform

    try:
        transform = rand_augment_transform(config, {"translate_const": 0.45, "img_mean": (124, 116, 104)})
    except Exception as exc:  # noqa: BLE001 - timm raises assorted errors for a malformed string
        raise InputError(
            f"hparams.randaugment: {config!r} is not a timm RandAugment string ({exc})"
        ) from None

    def augment(array: np.ndarray) -> np.ndarray:
        if array.dtype != np.uint8:
            raise InputError(
                f"RandAugment needs 8-bit images; got {array.dtype} (set hparams.randaugment: null)"
            )
        grey = array.ndim == 2
        image = Image.fromarray(np.repeat(array[..., None], 3, axis=2) if grey else array[..., :3])
        out = np.asarray(transform(image))
        return out[..., 0] if grey else out

    return augment


# ------------------------------------------------------------------------------------------------ model


@functools.cache
def _nn():
    from torch import nn

    class Classifier(nn.Module):
        """``backbone`` (registered, so its parameters are named ``backbone.*``) + ``head = Linear(dim, T)``.

        ``features_fn(x) -> (B, dim)`` runs the backbone (it may call any method of it, e.g. open_clip's
        ``encode_image``); ``forward`` returns ``(logits, features)``.
        """

        def __init__(self, backbone: nn.Module, features_fn: Callable, dim: int, n_tasks: int) -> None:
            super().__init__()
            self.backbone = backbone
            # kept out of the module tree: it is usually the backbone itself (or one of its methods)
            self.__dict__["features_fn"] = features_fn
            self.head = nn.Linear(dim, n_tasks)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            features = self.features_fn(x).float().reshape(x.shape[0], -1)
            return self.head(features), features

    return Classifier


def make_classifier(backbone: "nn.Module", features_fn: Callable, dim: int, n_tasks: int, *, seed: int = 0):
    """A :class:`Classifier` whose head is initialised under ``seed`` (without touching the global RNG)."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _nn()(backbone, features_fn, dim, n_tasks)


def masked_bce(
    logits: "torch.Tensor",
    targets: "torch.Tensor",
    pos_weight: "torch.Tensor | None" = None,
    smoothing: float = 0.0,
) -> "torch.Tensor":
    """Per-element BCE-with-logits (B, T), 0 where the target is NaN (unknown label)."""
    import torch
    import torch.nn.functional as F

    known = ~torch.isnan(targets)
    clean = torch.where(known, targets, torch.zeros_like(targets))
    if smoothing:
        clean = clean * (1 - smoothing) + 0.5 * smoothing
    return (
        F.binary_cross_entropy_with_logits(logits.float(), clean, pos_weight=pos_weight, reduction="none")
        * known
    )


def mean_known(losses: "torch.Tensor", targets: "torch.Tensor") -> "torch.Tensor":
    """Mean of per-element losses over the known labels."""
    import torch

    return losses.sum() / (~torch.isnan(targets)).sum().clamp(min=1)


# ------------------------------------------------------------------------------------------------ callbacks


@dataclass
class EpochInfo:
    """What an ``on_epoch_end`` callback sees after epoch ``epoch`` (1-based)."""

    epoch: int
    record: dict[str, float]  # loss, val_loss, val_auc, lr of this epoch
    history: list[dict[str, float]]
    model: Any  # the Classifier
    val_probabilities: np.ndarray
    state: Callable[[], dict[str, "torch.Tensor"]]  # a CPU copy of the current trainable state


# ------------------------------------------------------------------------------------------------ results


@dataclass
class FitResult:
    """The selected state, the last state, the resumable checkpoint and the per-epoch history."""

    # trainable parameters + head + buffers + extras at the selected epoch
    best_state: dict[str, "torch.Tensor"]
    best_epoch: int
    best_score: float  # nan when select_by is 'last'
    last_state: dict[str, "torch.Tensor"]
    checkpoint: dict[str, Any]  # {"model": state, "optimizer": state_dict, "epoch": epochs done}
    history: list[dict[str, float]] = field(default_factory=list)
    trainable: list[str] = field(default_factory=list)  # names of the trained parameters
    settings: dict[str, Any] = field(default_factory=dict)  # values used (lr, betas, layer decay…)

    def save(self, path: str | os.PathLike, *, metadata: Mapping[str, str] | None = None) -> None:
        """Write the selected state with safetensors (atomically)."""
        from safetensors.torch import save_file

        from fairfm.tableio import atomic_path

        meta = {"best_epoch": str(self.best_epoch), **(metadata or {})}
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in self.best_state.items()}, str(tmp), metadata=meta)


# ------------------------------------------------------------------------------------------------ the loop


def _trainable_names(model: "nn.Module", trainable: Any) -> list[str]:
    names = [n for n, _ in model.named_parameters()]
    if trainable is None:
        return [n for n, p in model.named_parameters() if p.requires_grad]
    if callable(trainable):
        chosen = [n for n, p in model.named_parameters() if trainable(n, p)]
    else:
        chosen = list(trainable)
        unknown = sorted(set(chosen) - set(names))
        if unknown:
            raise InputError(f"trainable mask names unknown parameter {unknown[0]!r}")
    return chosen


def _param_groups(model: "nn.Module", extras: list["nn.Parameter"], weight_decay: float, layer_decay: float):
    """Optimiser groups with an ``lr_scale`` each: timm's layer-decay groups for the backbone when asked."""
    groups: list[dict[str, Any]] = []
    covered: set[int] = set()
    if layer_decay < 1.0:
        timm_model = next((m for m in model.backbone.modules() if hasattr(m, "group_matcher")), None)
        if timm_model is None:
            raise InputError(
                "hparams.layer_decay < 1 needs a timm backbone (its group_matcher numbers the blocks); "
                "set layer_decay: 1.0 for this model"
            )
        for group in _layer_decay_groups(timm_model, weight_decay, layer_decay):
            groups.append(group)
            covered.update(id(p) for p in group["params"])
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in covered]
    decay = [p for p in rest if p.ndim > 1]
    no_decay = [p for p in rest if p.ndim <= 1] + [p for p in extras if id(p) not in covered]
    for params, wd in ((decay, weight_decay), (no_decay, 0.0)):
        if params:
            groups.append({"params": params, "weight_decay": wd, "lr_scale": 1.0})
    return groups


def _layer_decay_groups(
    timm_model: "nn.Module", weight_decay: float, layer_decay: float
) -> list[dict[str, Any]]:
    """Layer-wise lr decay groups for a timm backbone.

    ViT-style models (``blocks.i``) get the BEiT / Medical MAE scheme (``param_groups_lrd``): embeddings =
    layer 0, block i = layer i+1, everything after the blocks (final norm, head) = layer L+1 with scale 1, so
    the last block already has scale ``layer_decay``. This is written here because timm's
    ``param_groups_layer_decay`` groups the final norm with the last block and gives that block scale 1 — one
    layer off the recipe (METHODS.md §2.6). Other timm models use timm's own grouping. No weight decay on 1-D
    parameters nor the model's ``no_weight_decay()`` names (position embedding, class token), as in both
    codes.
    """
    import re

    skip = set(timm_model.no_weight_decay()) if hasattr(timm_model, "no_weight_decay") else set()
    blocks = getattr(timm_model, "blocks", None)
    if blocks is None or not hasattr(blocks, "__len__"):
        from timm.optim import param_groups_layer_decay

        return [
            {"params": g["params"], "weight_decay": g["weight_decay"], "lr_scale": g.get("lr_scale", 1.0)}
            for g in param_groups_layer_decay(
                timm_model, weight_decay=weight_decay, layer_decay=layer_decay, no_weight_decay_list=skip
            )
        ]
    n_layers = len(blocks) + 1
    stem = ("cls_token", "pos_embed", "patch_embed", "reg_token", "dist_token", "mask_token")
    merged: dict[tuple[int, bool], list[Any]] = {}
    for name, param in timm_model.named_parameters():
        if not param.requires_grad:
            continue
        match = re.match(r"blocks\.(\d+)\.", name)
        layer = int(match.group(1)) + 1 if match else (0 if name.startswith(stem) else n_layers)
        no_decay = param.ndim <= 1 or name in skip
        merged.setdefault((layer, no_decay), []).append(param)
    return [
        {
            "params": params,
            "weight_decay": 0.0 if no_decay else weight_decay,
            "lr_scale": layer_decay ** (n_layers - layer),
        }
        for (layer, no_decay), params in sorted(merged.items())
    ]


def _optimizer(hp: "TrainHParams", groups: list[dict[str, Any]], lr: float):
    import torch

    if hp.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=hp.momentum)
    if hp.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(hp.betas))
    if hp.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=tuple(hp.betas))
    raise InputError(f"hparams.optimizer: {hp.optimizer!r} is not one of sgd, adamw, adam")


def predict(
    model: "nn.Module",
    data: ImageTable,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    num_workers: int = 0,
    amp: bool = False,
) -> np.ndarray:
    """(N, T) sigmoid probabilities of ``model`` on ``data`` (no augmentation), in row order."""
    import torch

    logits = _logits(model, data, batch_size=batch_size, device=device, num_workers=num_workers, amp=amp)
    return torch.sigmoid(logits).double().numpy()


def _logits(
    model: "nn.Module", data: ImageTable, *, batch_size: int, device: str, num_workers: int, amp: bool
) -> "torch.Tensor":
    import torch

    loader = torch.utils.data.DataLoader(
        data.without_augmentation(), batch_size=batch_size, shuffle=False, num_workers=num_workers
    )
    model.eval()
    out = []
    with torch.no_grad(), _autocast(device, amp):
        for images, _, _, _ in _batches(loader):
            logits, _ = model(images.to(device))
            out.append(logits.float().cpu())
    return torch.cat(out) if out else torch.zeros((0, len(data.tasks)))


def _autocast(device: str, amp: bool):
    import contextlib

    import torch

    if amp and str(device).startswith("cuda"):
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def _batches(loader: Any):
    """Iterate a DataLoader, turning an InputError raised in a worker process back into a one-line InputError
    (DataLoader re-raises it with the worker's traceback folded into the message)."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - only a wrapped InputError is rewritten; others propagate
            marker = "fairfm.errors.InputError: "
            if marker not in str(exc):
                raise
            raise InputError(str(exc).rsplit(marker, 1)[1].strip().splitlines()[0]) from None
        yield batch


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**63 - 1)


def fit(
    model: "nn.Module",
    train: ImageTable,
    val: ImageTable,
    *,
    hparams: "TrainHParams",
    seed: int = 0,
    epochs: int | None = None,
    layer_decay: float = 1.0,
    clip_grad_norm: float | None = None,
    initial_state: Mapping[str, "torch.Tensor"] | None = None,
    resume: Mapping[str, Any] | None = None,
    trainable: Iterable[str] | Callable[[str, Any], bool] | None = None,
    sampler: Any = None,
    loss_wrapper: Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"] | None = None,
    extra_parameters: Any = None,
    adversary: "nn.Module | None" = None,
    on_epoch_end: Sequence[Callable[[EpochInfo], bool | None]] = (),
    device: str = "cpu",
    progress: bool = False,
    description: str = "training",
) -> FitResult:
    """Train ``model`` (a :func:`make_classifier` Classifier) on ``train``, select on ``val``; see the module
    doc.

    ``epochs`` overrides ``hparams.epochs`` (a federated round's local epochs). ``clip_grad_norm``: the total
    gradient norm is clipped to this value (None: no clipping, the MAE / Medical MAE fine-tuning default).
    ``trainable``: parameter names or a predicate ``(name, parameter) -> bool`` — exactly those train, every
    other parameter is frozen; None keeps the model's ``requires_grad`` flags. ``initial_state``: weights
    loaded (non-strictly: a trainable-state subset is fine) before training. ``resume``: a previous
    ``FitResult.checkpoint`` to continue from.
    """
    import torch

    hp = hparams
    if hp.schedule == "step":
        raise InputError(
            "hparams.schedule: 'step' is not implemented for fine-tuning (use cosine or constant)"
        )
    if len(train) == 0 or len(val) == 0:
        raise InputError("fine-tuning: the training and validation splits must both have samples")
    n_epochs = int(epochs if epochs is not None else hp.epochs)
    positives = np.nansum(train.labels, axis=0)
    negatives = np.sum(~np.isnan(train.labels), axis=0) - positives
    for j, name in enumerate(train.tasks):
        if positives[j] == 0 or negatives[j] == 0:
            which = "positive" if positives[j] == 0 else "negative"
            raise InputError(
                f"task {name!r}: the training split has no {which} sample; a model cannot be trained"
            )
    if hp.select_by == "val_auc":
        for j, name in enumerate(val.tasks):
            known = val.labels[~np.isnan(val.labels[:, j]), j]
            if not (known.size and 0 < known.sum() < known.size):
                raise InputError(
                    f"task {name!r}: the validation split has only one class, so validation AUC cannot "
                    "select the epoch (set hparams.select_by to val_loss or last)"
                )
    use_amp = bool(hp.amp) and str(device).startswith("cuda")  # mixed precision only on CUDA

    names = _trainable_names(model, trainable)
    chosen = set(names)
    if trainable is not None:
        for n, p in model.named_parameters():
            p.requires_grad_(n in chosen)
    if not names:
        raise InputError("fine-tuning: no parameter is trainable")
    if extra_parameters is None:
        extras: list[torch.nn.Parameter] = []
    elif isinstance(extra_parameters, torch.nn.Module):
        extras = list(extra_parameters.to(device).parameters())
    else:
        extras = list(extra_parameters)
    adversary_params = list(adversary.parameters()) if adversary is not None else []
    model.to(device)
    if adversary is not None:
        adversary.to(device)

    trainable_ids = {id(p) for p in model.parameters() if p.requires_grad}

    def state() -> dict[str, torch.Tensor]:
        out = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if id(p) in trainable_ids}
        out.update({f"buffer.{n}": b.detach().cpu().clone() for n, b in model.named_buffers()})
        out.update({f"extra.{i}": p.detach().cpu().clone() for i, p in enumerate(extras)})
        if adversary is not None:
            out.update(
                {f"adversary.{n}": v.detach().cpu().clone() for n, v in adversary.state_dict().items()}
            )
        return out

    def load(saved: Mapping[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        adv = {}
        with torch.no_grad():
            for key, value in saved.items():
                if key.startswith("buffer.") and key[7:] in buffers:
                    buffers[key[7:]].copy_(value)
                elif key.startswith("extra."):
                    extras[int(key[6:])].copy_(value)
                elif key.startswith("adversary."):
                    adv[key[10:]] = value
                elif key in params:
                    params[key].copy_(value)
                else:
                    raise InputError(f"initial state: {key!r} is not a parameter of this model")
        if adv and adversary is not None:
            adversary.load_state_dict(adv)

    if initial_state is not None:
        load(initial_state)
    base_lr = hp.lr * (hp.batch_size / 256 if hp.lr_scaling == "linear" else 1.0)
    min_lr = min(hp.min_lr, base_lr)
    groups = _param_groups(model, extras + adversary_params, hp.weight_decay, layer_decay)
    optimizer = _optimizer(hp, groups, base_lr)
    start_epoch = 0
    if resume is not None:
        load(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        start_epoch = int(resume["epoch"])
    scaler = (
        torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported())
        if use_amp
        else None
    )

    pos_weight = torch.as_tensor(
        negatives / positives if hp.class_balanced else np.ones(len(train.tasks)),
        dtype=torch.float32,
        device=device,
    )

    def default_loss(logits: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        return mean_known(masked_bce(logits, targets, pos_weight, hp.label_smoothing), targets)

    loss_fn = loss_wrapper or default_loss
    n_draws = len(sampler) if sampler is not None else len(train)
    # A last batch of one sample is dropped: BatchNorm cannot train on it, and it would be a one-sample step.
    drop_last = n_draws > 1 and n_draws % hp.batch_size == 1
    steps_per_epoch = n_draws // hp.batch_size + (1 if n_draws % hp.batch_size > 1 else 0)
    per_iteration = hp.schedule_per == "iteration"
    unit = steps_per_epoch if per_iteration else 1
    total, warmup = n_epochs * unit, hp.warmup_epochs * unit

    def set_lr(step: float) -> float:
        lr = lr_at(step, total, warmup, base_lr, min_lr, hp.schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    selection = ModelSelection(hp.select_by, hp.early_stopping_patience)
    if resume is not None and resume.get("selection"):
        # model selection and the patience counter continue where the interrupted run left them
        for key, value in resume["selection"].items():
            setattr(selection, key, value)
    callbacks = [selection, *on_epoch_end]
    history: list[dict[str, float]] = list(resume.get("history", [])) if resume is not None else []
    y_val = val.labels
    settings = {
        "optimizer": hp.optimizer,
        "lr": base_lr,
        "min_lr": min_lr,
        "betas": list(hp.betas),
        "weight_decay": hp.weight_decay,
        "layer_decay": layer_decay,
        "schedule": hp.schedule,
        "schedule_per": hp.schedule_per,
        "warmup_epochs": hp.warmup_epochs,
        "epochs": n_epochs,
        "batch_size": hp.batch_size,
        "clip_grad_norm": clip_grad_norm,
        "amp": use_amp,
        "seed": seed,
        "trainable_parameters": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
    }

    from rich.progress import BarColumn, Progress, TextColumn

    columns = [
        TextColumn(f"[bold]{description}"),
        BarColumn(),
        TextColumn("epoch {task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]} val AUC {task.fields[auc]}"),
    ]
    epoch = start_epoch
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task_bar = bar.add_task("fit", total=n_epochs, completed=start_epoch, loss="–", auc="–")
        for epoch in range(start_epoch, n_epochs):
            epoch_seed = _epoch_seed(seed, epoch)
            generator = torch.Generator().manual_seed(epoch_seed)
            loader = torch.utils.data.DataLoader(
                train,
                batch_size=hp.batch_size,
                sampler=sampler,
                shuffle=sampler is None,
                generator=generator if sampler is None else None,
                num_workers=hp.num_workers,
                worker_init_fn=_seed_worker,
                drop_last=drop_last,
            )
            model.train()
            if adversary is not None:
                adversary.train()
            running, seen = 0.0, 0
            lr = set_lr(epoch * unit) if not per_iteration else base_lr
            with torch.random.fork_rng(devices=[]):  # dropout/drop-path/augmentation seeded per epoch
                torch.manual_seed(epoch_seed)
                np_state, py_state = np.random.get_state(), random.getstate()
                np.random.seed(epoch_seed % (2**32))  # timm's RandAugment draws from numpy and random
                random.seed(epoch_seed)
                for step_in_epoch, (images, targets, group_codes, _) in enumerate(_batches(loader)):
                    if per_iteration:
                        lr = set_lr(epoch * unit + step_in_epoch)
                    images, targets = images.to(device), targets.to(device)
                    group_codes = group_codes.to(device)
                    with _autocast(device, use_amp):
                        logits, features = model(images)
                    loss = loss_fn(logits.float(), targets, group_codes)
                    if adversary is not None:
                        loss = loss + adversary(features.float(), logits.float(), targets, group_codes)
                    optimizer.zero_grad(set_to_none=True)
                    if scaler is not None and scaler.is_enabled():
                        scaler.scale(loss).backward()
                        scaler.unscale_(optimizer)
                    else:
                        loss.backward()
                    if clip_grad_norm:
                        torch.nn.utils.clip_grad_norm_(
                            [p for g in optimizer.param_groups for p in g["params"]], clip_grad_norm
                        )
                    if scaler is not None and scaler.is_enabled():
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    running += float(loss.detach()) * len(targets)
                    seen += len(targets)
                np.random.set_state(np_state)
                random.setstate(py_state)
            val_logits = _logits(
                model, val, batch_size=hp.batch_size, device=device, num_workers=hp.num_workers, amp=use_amp
            )
            val_probs = torch.sigmoid(val_logits).double().numpy()
            with torch.no_grad():
                val_targets = torch.as_tensor(y_val, dtype=torch.float32)
                val_loss = float(
                    mean_known(masked_bce(val_logits, val_targets, pos_weight.cpu()), val_targets)
                )
            record = {
                "epoch": epoch + 1,
                "loss": running / max(seen, 1),
                "val_loss": val_loss,
                "val_auc": macro_auc(y_val, val_probs),
                "lr": float(lr),
            }
            history.append(record)
            bar.update(task_bar, advance=1, loss=f"{record['loss']:.4f}", auc=f"{record['val_auc']:.3f}")
            info = EpochInfo(epoch + 1, record, history, model, val_probs, state)
            stop = False
            for callback in callbacks:
                stop = bool(callback(info)) or stop
            if stop:
                epoch += 1
                break
        else:
            epoch = n_epochs

    last = state()
    best = selection.best_state if selection.best_state is not None else last
    checkpoint = {
        "model": last,
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "history": list(history),
        "selection": {
            "best_state": selection.best_state,
            "best_epoch": selection.best_epoch,
            "best_score": selection.best_score,
            "since_best": selection.since_best,
        },
    }
    return FitResult(
        best_state=best,
        best_epoch=selection.best_epoch,
        best_score=selection.reported_score,
        last_state=last,
        checkpoint=checkpoint,
        history=history,
        trainable=[n for n, p in model.named_parameters() if p.requires_grad],
        settings=settings,
    )


def load_state(model: "nn.Module", saved: Mapping[str, "torch.Tensor"]) -> None:
    """Load a :class:`FitResult` state (trainable parameters, ``buffer.*``) into ``model``."""
    import torch

    params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
    with torch.no_grad():
        for key, value in saved.items():
            if key.startswith("buffer."):
                buffers[key[7:]].copy_(value)
            elif key in params:
                params[key].copy_(value)


def _seed_worker(worker_id: int) -> None:
    import random

    import torch

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
