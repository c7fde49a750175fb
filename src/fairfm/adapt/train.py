"""The one training loop of every trainable usage: LoRA, BitFit, full fine-tuning, and the mitigations.

A :class:`Classifier` is an image backbone (the library's own ``nn.Module``, frozen or partly trainable) with
a linear head, one output per task, trained with multi-label BCE (positive weight negatives/positives per task
on the training split when ``class_balanced``; NaN labels are masked). :func:`fit` runs it over a
:class:`ImageTable` (a SampleTable split read with the model card's own preprocessing, optional train-time
augmentation) with the spec's optimiser (SGD / AdamW / Adam, no weight decay on 1-D parameters), linear
warm-up then half-cosine (per epoch or per iteration), gradient clipping, layer-wise lr decay when
``layer_decay < 1`` (Khan et al. / Medical MAE's BEiT scheme, METHODS.md §2.6; layers numbered per library by
:func:`fairfm.adapt.peft_usages.register_layer_ids`), mixed
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

from fairfm.adapt.selection import (ModelSelection, check_worst_group_selection, known_group_codes, lr_at, macro_auc,
                                    worst_group_auc)  # fmt: skip
from fairfm.errors import InputError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fairfm.mitigate.base import TrainHooks
    from fairfm.spec import TrainHParams


# ------------------------------------------------------------------------------------------------ data


class ImageTable:
    """torch Dataset over SampleTable rows: ``(image (3, S, S), targets (T,), group code, row)``.

    Images are read as :mod:`fairfm.adapt.features` reads them (``read_array`` on the row's locator, so
    8/16-bit images keep their type for the card's preprocessing); ``augment`` (train time only) maps the
    decoded array to an augmented array before preprocessing. ``group_column`` (e.g. ``group_sex``) gives each
    row a group code (index into ``group_names``, sorted labels; without a group column every row gets code 0
    of the single group ``all``). Volumes (:mod:`fairfm.adapt.volumes`) are read with ``volume``:
    ``"max_slice"`` gives every row as a ``(slices, 3, S, S)`` stack of its slices, each prepared by
    ``intensity`` then preprocessed (a 2D image is one slice), batched by ``collate_fn`` for the max-slice
    model; ``"oct_chunks"`` (FairFedMed) gives every ``slice_stride``-th slice, prepared and resized to the
    model's resolution, as a ``(chunks × chunk_size, S, S)`` stack in [0, 1] for the model's projector, every
    volume of the table giving the same number of chunks (checked from the headers). Without ``volume`` a
    volume is an error.
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
        volume: str | None = None,
        slice_stride: int = 1,
        chunk_size: int = 8,
        intensity: str = "unit",
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
        self.volume, self.slice_stride, self.chunk_size, self.intensity = volume, slice_stride, chunk_size, intensity
        self.volume_slices = self._volume_slices() if volume == "oct_chunks" else None
        # max_slice: each item is a (slices, 3, S, S) stack, batched as PackedSlices for the max-slice model
        self.collate_fn = None
        if volume == "max_slice":
            from fairfm.adapt.volumes import collate_slice_stacks

            self.collate_fn = collate_slice_stacks
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
        self.group_column = group_column
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

    def _volume_slices(self) -> int:
        """B-scans per volume after OCT chunking; the same for every row (one batch stacks them)."""
        from fairfm.adapt.features import count_slices
        from fairfm.adapt.volumes import oct_chunk_indices

        kept: int | None = None
        for row, source in enumerate(self.sources):
            try:
                depth = count_slices(source.path, key=source.key, index=source.index)
                if depth == 1:
                    raise InputError("a 2D image; hparams.volume: oct_chunks needs OCT volumes")
                n = oct_chunk_indices(depth, self.slice_stride, self.chunk_size).size
            except InputError as exc:
                raise InputError(f"{source.describe()} (SampleTable row {row}): {exc}") from None
            if kept is not None and n != kept:
                raise InputError(f"{source.describe()} (SampleTable row {row}): {depth} slices give {n} chunked "
                                 f"B-scans, row 0 gives {kept}; OCT chunking needs volumes of one depth")  # fmt: skip
            kept = n
        return int(kept or 0)

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
        if self.volume == "max_slice":  # every slice prepared and preprocessed; a 2D image is one slice
            from fairfm.adapt.volumes import prepare_slice

            slices = list(array) if is_volume(array, image_kind(source.path)) else [array]
            stack = torch.stack([self.preprocess(prepare_slice(s, self.intensity)) for s in slices])
            return stack, torch.as_tensor(self.labels[i], dtype=torch.float32), int(self.groups[i]), i
        if is_volume(array, image_kind(source.path)):
            if self.volume != "oct_chunks":
                raise InputError(
                    f"{source.describe()} (SampleTable row {i}): a volume among 2D images (fine-tuning takes a "
                    "table for volumes when its first training row is one: slice max-pooling, or OCT chunks "
                    "with hparams.volume: oct_chunks)"
                )
            from fairfm.adapt.volumes import oct_volume_tensor

            stack = oct_volume_tensor(array, self.preprocess, stride=self.slice_stride, chunk_size=self.chunk_size,
                                      intensity=self.intensity)  # fmt: skip
            if stack.shape[0] != self.volume_slices:
                raise InputError(f"{source.describe()} (SampleTable row {i}): {array.shape[0]} slices give "
                                 f"{stack.shape[0]} chunked B-scans, its header said {self.volume_slices}")
            return stack, torch.as_tensor(self.labels[i], dtype=torch.float32), int(self.groups[i]), i
        if self.volume == "oct_chunks":
            raise InputError(f"{source.describe()} (SampleTable row {i}): a 2D image; hparams.volume: oct_chunks "
                             "needs OCT volumes")  # fmt: skip
        if self.augment is not None:
            array = self.augment(array)
        image = self.preprocess(array)
        return image, torch.as_tensor(self.labels[i], dtype=torch.float32), int(self.groups[i]), i


def timm_randaugment(config: str) -> Callable[[np.ndarray], np.ndarray]:
    """timm's RandAugment (e.g. ``rand-m6-mstd0.5-inc1``, Medical MAE's setting) on a decoded image.

    8-bit images go through timm's own transform (PIL operations). 16-bit PNGs and float / integer DICOM or
    NIfTI slices cannot (PIL's enhance, posterize and solarize take 8-bit modes only), and squeezing them to 8
    bits would throw away the bit depth the model's preprocessing keeps. They get *the same policy*: timm's
    parsed ops (choice of ops, per-op probability, magnitude with its noise, level → argument functions) run
    on the float image with ``torchvision.transforms.v2.functional``. The image is scaled to [0, 1] as the
    card's preprocessing scales it (unsigned integers by their dtype's maximum, floats in [0, 1] as they are,
    anything else min–max) and mapped back to its dtype and range, so every op keeps the full intensity
    resolution except Posterize (which quantises by definition) and Equalize (histogram in 256 bins, as
    torchvision computes it). Shears act about the image centre (PIL's about the corner).
    """
    from PIL import Image
    from timm.data import rand_augment_transform

    try:
        transform = rand_augment_transform(config, {"translate_const": 0.45, "img_mean": (124, 116, 104)})
    except Exception as exc:  # noqa: BLE001 - timm raises assorted errors for a malformed string
        raise InputError(
            f"hparams.randaugment: {config!r} is not a timm RandAugment string ({exc})"
        ) from None
    unsupported = sorted({op.name for op in transform.ops} - set(_FLOAT_OPS))

    def augment(array: np.ndarray) -> np.ndarray:
        if array.dtype != np.uint8:
            if unsupported:
                raise InputError(
                    f"hparams.randaugment {config!r}: op(s) {', '.join(unsupported)} have no high-bit-depth "
                    f"version; got a {array.dtype} image"
                )
            return _randaugment_high_depth(array, transform)
        grey = array.ndim == 2
        image = Image.fromarray(np.repeat(array[..., None], 3, axis=2) if grey else array[..., :3])
        out = np.asarray(transform(image))
        return out[..., 0] if grey else out

    return augment


def _unit_scaling(array: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """``array`` as float32 in [0, 1] (as :func:`fairfm.models.preprocess.to_unit_float` reads it) and the map
    back to its dtype and range."""
    dtype = array.dtype
    values = array.astype(np.float64)
    if np.issubdtype(dtype, np.unsignedinteger):
        low, span = 0.0, float(np.iinfo(dtype).max)
    elif np.issubdtype(dtype, np.floating) and values.size and values.min() >= 0.0 and values.max() <= 1.0:
        low, span = 0.0, 1.0
    else:
        low = float(values.min()) if values.size else 0.0
        span = (float(values.max()) - low) if values.size else 0.0
        span = span or 1.0

    def back(unit: np.ndarray) -> np.ndarray:
        restored = unit.astype(np.float64) * span + low
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            return np.clip(np.rint(restored), info.min, info.max).astype(dtype)
        return restored.astype(dtype)

    return ((values - low) / span).astype(np.float32), back


def _solarize_add(image: "torch.Tensor", add: float, threshold: float = 128) -> "torch.Tensor":
    # timm's SolarizeAdd (a lookup table on 8-bit levels) on [0, 1] floats; torchvision has no such op
    import torch

    return torch.where(image < threshold / 256.0, (image + add / 255.0).clamp(max=1.0), image)


def _affine(**kwargs: Any):
    def op(image, value, fill):
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        params = {"angle": 0.0, "translate": [0.0, 0.0], "scale": 1.0, "shear": [0.0, 0.0]}
        for key, make in kwargs.items():
            params[key] = make(value, image)
        return F.affine(image, **params, interpolation=InterpolationMode.BILINEAR, fill=fill)

    return op


def _shear_degrees(factor: float) -> float:
    import math

    return math.degrees(math.atan(factor))


def _enhance(name: str):
    def op(image, factor, fill):
        from torchvision.transforms.v2 import functional as F

        return getattr(F, name)(image, factor)

    return op


def _simple(name: str, scale: float | None = None):
    def op(image, *args):
        from torchvision.transforms.v2 import functional as F

        values = args[:-1]  # the last argument is the fill
        if scale is not None:
            values = tuple(v / scale for v in values)
        if name == "posterize" and values and values[0] >= 8:
            return image  # timm: 8 or more bits kept is the identity
        return getattr(F, name)(image, *(int(v) if name == "posterize" else v for v in values))

    return op


#: timm op name -> ``fn(image (C, H, W) float in [0, 1], *timm level args, fill)``: timm's PIL semantics
_FLOAT_OPS: dict[str, Callable[..., Any]] = {
    "AutoContrast": _simple("autocontrast"),
    "Equalize": _simple("equalize"),
    "Invert": _simple("invert"),
    "Rotate": _affine(angle=lambda degrees, image: float(degrees)),
    **{name: _simple("posterize") for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal")},
    **{name: _simple("solarize", 256.0) for name in ("Solarize", "SolarizeIncreasing")},
    "SolarizeAdd": lambda image, add, fill: _solarize_add(image, add),
    **{f"{n}{s}": _enhance(f) for n, f in (("Color", "adjust_saturation"), ("Contrast", "adjust_contrast"),
                                           ("Brightness", "adjust_brightness"),
                                           ("Sharpness", "adjust_sharpness")) for s in ("", "Increasing")},
    # PIL's affine maps output (x, y) to input (x + f·y, y) / (x + p, y): torchvision's shear angle is
    # atan(f) and its translation moves content the other way
    "ShearX": _affine(shear=lambda f, image: [_shear_degrees(f), 0.0]),
    "ShearY": _affine(shear=lambda f, image: [0.0, _shear_degrees(f)]),
    "TranslateX": _affine(translate=lambda p, image: [-float(p), 0.0]),
    "TranslateY": _affine(translate=lambda p, image: [0.0, -float(p)]),
    "TranslateXRel": _affine(translate=lambda pct, image: [-float(pct) * image.shape[-1], 0.0]),
    "TranslateYRel": _affine(translate=lambda pct, image: [0.0, -float(pct) * image.shape[-2]]),
}  # fmt: skip


def _randaugment_high_depth(array: np.ndarray, transform: Any) -> np.ndarray:
    """One draw of timm's ``RandAugment`` (its ops, probabilities and magnitudes) on a non-8-bit image."""
    import torch

    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3)):
        raise InputError(f"RandAugment: expected an H×W or H×W×(1 or 3) image, got shape {array.shape}")
    unit, back = _unit_scaling(array)
    image = torch.from_numpy(unit[None] if unit.ndim == 2 else np.ascontiguousarray(unit.transpose(2, 0, 1)))
    # the same draws as timm's RandAugment.__call__ and AugmentOp.__call__ (numpy for the ops, random for
    # probability, magnitude noise and signs), so a seeded epoch augments reproducibly
    ops = np.random.choice(
        transform.ops, transform.num_layers, replace=transform.choice_weights is None, p=transform.choice_weights
    )
    for op in ops:
        if op.prob < 1.0 and random.random() > op.prob:
            continue
        magnitude = op.magnitude
        if op.magnitude_std == float("inf"):
            magnitude = random.uniform(0, magnitude)
        elif op.magnitude_std > 0:
            magnitude = random.gauss(magnitude, op.magnitude_std)
        magnitude = max(0.0, min(magnitude, op.magnitude_max or 10))
        args = op.level_fn(magnitude, op.hparams) if op.level_fn is not None else ()
        mean = [c / 255.0 for c in op.hparams.get("img_mean", (128, 128, 128))]
        fill = mean if image.shape[0] == 3 else [float(np.mean(mean))]
        image = _FLOAT_OPS[op.name](image, *args, fill).clamp(0.0, 1.0)
    out = image.numpy()
    out = out[0] if array.ndim == 2 else out.transpose(1, 2, 0)
    return back(out)


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


#: attribute of a Classifier holding its :class:`LayerIds` (set by :func:`fairfm.adapt.peft_usages.finetune`)
LAYER_IDS_ATTRIBUTE = "layer_ids"

# Position / class / register embeddings and relative-position tables are not weight-decayed (timm's
# ``no_weight_decay()`` lists them for its models; MAE and BEiT exclude them too); 1-D parameters never are.
_NO_DECAY_NAMES = (
    r"(^|\.)(pos_embed|positional_embedding|position_embeddings?|cls_token|class_embedding|reg_token|"
    r"register_tokens|dist_token|mask_token|rel_pos_h|rel_pos_w|relative_position_bias_table|query_tokens|"
    r"probe)(\.weight)?$"
)


@dataclass(frozen=True)
class LayerIds:
    """Layer numbering for layer-wise lr decay (BEiT / MAE, METHODS.md §2.6): embeddings = layer 0, block k
    (in execution order) = layer k, everything after the blocks (final norm, projection, pooling head, the task
    head) = layer ``top`` = L + 1. A parameter's lr scale is ``decay ** (top − id)``; names not listed are at
    the top (scale 1)."""

    ids: Mapping[str, int]
    top: int

    def __call__(self, name: str) -> int:
        return self.ids.get(name, self.top)

    def scale(self, name: str, decay: float) -> float:
        return float(decay) ** (self.top - self(name))

    def prefixed(self, prefix: str) -> "LayerIds":
        return LayerIds({prefix + name: i for name, i in self.ids.items()}, self.top)


def timm_layer_ids(timm_model: "nn.Module") -> "LayerIds | None":
    """timm's own layer grouping (``group_matcher(coarse=False)``, as ``param_groups_layer_decay`` uses it),
    with one change to follow BEiT / Medical MAE: parameters timm merges into the *last* block although they
    are no block's (the final ``norm`` of ViTs, ResNet-v2s, Swins, EfficientNet's conv_head) form the top
    layer with the head, so the last block gets ``decay`` instead of 1. None for a model without a
    ``group_matcher``."""
    import re

    if not hasattr(timm_model, "group_matcher"):
        return None
    from timm.models import group_parameters
    from timm.models._manipulate import MATCH_PREV_GROUP

    matcher = timm_model.group_matcher(coarse=False)
    ids = group_parameters(timm_model, matcher, reverse=True)
    if not ids:
        return None
    specs = matcher.get("blocks") if isinstance(matcher, dict) else None
    specs = [specs] if isinstance(specs, str) else list(specs or [])
    block_patterns = [
        re.compile(spec if isinstance(spec, str) else spec[0])
        for spec in specs
        if isinstance(spec, str) or spec[1] is None or tuple(spec[1]) != tuple(MATCH_PREV_GROUP)
    ]
    last = max(ids.values())
    in_last = [name for name, i in ids.items() if i == last]
    if any(pattern.match(name) for name in in_last for pattern in block_patterns):
        # the last group is a block: what timm merged into it without being in a block moves to the top
        moved = {name for name in in_last if not any(pattern.match(name) for pattern in block_patterns)}
        return LayerIds({n: (last + 1 if n in moved else i) for n, i in ids.items()}, last + 1)
    return LayerIds(dict(ids), last)  # timm's last group is already the neck / head


def _timm_backbone_ids(model: "nn.Module") -> "LayerIds | None":
    """The numbering of the first timm model (one with a ``group_matcher``) inside ``model.backbone``."""
    for name, module in model.backbone.named_modules():
        numbering = timm_layer_ids(module) if hasattr(module, "group_matcher") else None
        if numbering is not None:
            return numbering.prefixed(f"backbone.{name}." if name else "backbone.")
    return None


def _no_decay_names(model: "nn.Module") -> set[str]:
    """Names (in ``model``) listed by a sub-module's ``no_weight_decay()`` (timm models) or matching
    :data:`_NO_DECAY_NAMES`."""
    import re

    skip = {name for name, _ in model.named_parameters() if re.search(_NO_DECAY_NAMES, name)}
    for prefix, module in model.named_modules():
        if hasattr(module, "no_weight_decay") and callable(module.no_weight_decay):
            try:
                listed = module.no_weight_decay()
            except Exception:  # noqa: BLE001 - a model's helper failing only loses this refinement
                continue
            skip.update(f"{prefix}.{n}" if prefix else str(n) for n in listed)
    return skip


def _param_groups(model: "nn.Module", extras: list["nn.Parameter"], weight_decay: float, layer_decay: float):
    """Optimiser groups with an ``lr_scale`` each. With ``layer_decay < 1`` the model's trainable parameters
    are grouped by the :class:`LayerIds` the model carries (``model.layer_ids``: every model family of the
    zoo, set by ``finetune``) or, for a plain timm backbone, by :func:`timm_layer_ids`."""
    groups: list[dict[str, Any]] = []
    covered: set[int] = set()
    if layer_decay < 1.0:
        numbering = getattr(model, LAYER_IDS_ATTRIBUTE, None)
        if numbering is None and hasattr(model, "backbone"):
            numbering = _timm_backbone_ids(model)
        if numbering is None:
            raise InputError(
                "hparams.layer_decay < 1 needs a backbone whose layers fairfm can number (timm, open_clip, "
                "transformers, segment_anything models of the zoo); set layer_decay: 1.0 for this model"
            )
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        for group in _layer_decay_groups(named, weight_decay, layer_decay, numbering, _no_decay_names(model)):
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
    model: "nn.Module | Sequence[tuple[str, nn.Parameter]]",
    weight_decay: float,
    layer_decay: float,
    numbering: "LayerIds | None" = None,
    no_decay_names: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """Layer-wise lr decay groups: one group per (layer, weight decay or not), lr scale
    ``layer_decay ** (top − layer)`` (BEiT / Medical MAE ``param_groups_lrd``). ``model`` is a module (a timm
    model when ``numbering`` is None: :func:`timm_layer_ids`) or (name, parameter) pairs. No weight decay on
    1-D parameters nor on ``no_decay_names`` (position embedding, class token…), as in both codes."""
    if isinstance(model, Sequence):
        named = list(model)
        skip = set(no_decay_names or ())
    else:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        skip = set(no_decay_names) if no_decay_names is not None else _no_decay_names(model)
        numbering = numbering or timm_layer_ids(model)
    if numbering is None:
        raise InputError("layer-wise lr decay: this model's layers cannot be numbered (no timm group_matcher)")
    merged: dict[tuple[int, bool], list[Any]] = {}
    for name, param in named:
        merged.setdefault((numbering(name), param.ndim <= 1 or name in skip), []).append(param)
    return [
        {
            "params": params,
            "weight_decay": 0.0 if no_decay else weight_decay,
            "lr_scale": layer_decay ** (numbering.top - layer),
            "layer_id": layer,
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
    hooks: "TrainHooks | None" = None,
) -> np.ndarray:
    """(N, T) sigmoid probabilities of ``model`` on ``data`` (no augmentation), in row order. With a method's
    ``hooks``, the model reads each row's group when the method's inference is attribute-aware."""
    import torch

    logits = _logits(model, data, batch_size=batch_size, device=device, num_workers=num_workers, amp=amp,
                     hooks=hooks)  # fmt: skip
    return torch.sigmoid(logits).double().numpy()


def _logits(
    model: "nn.Module", data: ImageTable, *, batch_size: int, device: str, num_workers: int, amp: bool,
    hooks: "TrainHooks | None" = None,
) -> "torch.Tensor":
    import torch

    loader = torch.utils.data.DataLoader(
        data.without_augmentation(), batch_size=batch_size, shuffle=False, num_workers=num_workers,
        collate_fn=getattr(data, "collate_fn", None),
    )
    model.eval()
    out = []
    context = hooks.group_context if hooks is not None else None
    aware = hooks is not None and hooks.attribute_aware_inference
    with torch.no_grad(), _autocast(device, amp):
        for images, _, group_codes, _ in _batches(loader):
            if context is not None:
                context.codes = _codes_per_input(images, group_codes.to(device)) if aware else None
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


def _codes_per_input(images: Any, codes: "torch.Tensor") -> "torch.Tensor":
    """The group codes a method's modules see: one per image, or per slice of a batch of volumes (each slice
    carries its volume's code; the slices are scored one by one before max-pooling)."""
    from fairfm.adapt.volumes import PackedSlices

    if not isinstance(images, PackedSlices):
        return codes
    import torch

    return codes.repeat_interleave(torch.as_tensor(images.sizes, device=codes.device))


def _no_hooks() -> "TrainHooks":
    from fairfm.mitigate.base import TrainHooks

    return TrainHooks()


def _apply_model_hooks(model: "nn.Module", hooks: "TrainHooks", trainable: Any) -> Any:
    """Apply a method's backbone and head wrappers to a Classifier; the trainable names grow by the parameters
    they add (a wrapped head trains whole)."""
    if hooks.wrap_backbone is None and hooks.wrap_head is None:
        return trainable
    names = _trainable_names(model, trainable)
    if hooks.wrap_backbone is not None:
        names += [f"backbone.{n}" for n in hooks.wrap_backbone(model.backbone)]
    if hooks.wrap_head is not None:
        model.head = hooks.wrap_head(model.head)
        names = [n for n in names if not n.startswith("head.")]
        names += [f"head.{n}" for n, _ in model.head.named_parameters()]
    return list(dict.fromkeys(names))


class _RowsSampler:
    """A method's rows for one epoch, as a DataLoader sampler (drawn and seeded by the method)."""

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = np.asarray(rows, dtype=np.int64)

    def __iter__(self):
        return iter(self.rows.tolist())

    def __len__(self) -> int:
        return int(self.rows.size)


def _loss_inputs(logits: "torch.Tensor", targets: "torch.Tensor", groups: "torch.Tensor", features: "torch.Tensor",
                 pos_weight: "torch.Tensor | None", smoothing: float, epoch: int, rows: Any = None):  # fmt: skip
    """The :class:`~fairfm.mitigate.LossInputs` of a batch: the default per-element loss and what a method's loss
    reads."""
    import torch

    from fairfm.mitigate.base import LossInputs

    per_element = masked_bce(logits, targets, pos_weight, smoothing)
    rows = torch.as_tensor(rows) if rows is not None else None
    return LossInputs(logits, targets, groups, features, per_element, ~torch.isnan(targets), epoch, rows)


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
    hooks: "TrainHooks | None" = None,
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
    ``FitResult.checkpoint`` to continue from. ``hooks``: a mitigation method's :class:`~fairfm.mitigate.TrainHooks`
    (its rows, loss, regulariser, head/backbone wrappers, group context, optimiser step, callbacks); the model is
    changed in place by its wrappers before training.
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
    val_known_groups = None
    if hp.select_by == "val_worst_group_auc":  # the groups of the ImageTable's group column (unknown: no group)
        if getattr(val, "group_column", None):
            val_known_groups = known_group_codes(val.groups, val.group_names)
        check_worst_group_selection(val.labels, val_known_groups, val.tasks)
    use_amp = bool(hp.amp) and str(device).startswith("cuda")  # mixed precision only on CUDA

    hooks = hooks if hooks is not None else _no_hooks()
    if hooks.clip_grad_norm is not None:  # a method's clipping (LAFTR's 5.0); with the usage's own, the tighter
        clip_grad_norm = min(clip_grad_norm or hooks.clip_grad_norm, hooks.clip_grad_norm)
    trainable = _apply_model_hooks(model, hooks, trainable)
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
    regularizer = hooks.regularizer
    adversary_params = list(adversary.parameters()) if adversary is not None else []
    if regularizer is not None:
        adversary_params += list(regularizer.parameters())
    model.to(device)
    if adversary is not None:
        adversary.to(device)
    if regularizer is not None:
        regularizer.to(device)

    trainable_ids = {id(p) for p in model.parameters() if p.requires_grad}

    def state() -> dict[str, torch.Tensor]:
        out = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if id(p) in trainable_ids}
        out.update({f"buffer.{n}": b.detach().cpu().clone() for n, b in model.named_buffers()})
        out.update({f"extra.{i}": p.detach().cpu().clone() for i, p in enumerate(extras)})
        if adversary is not None:
            out.update(
                {f"adversary.{n}": v.detach().cpu().clone() for n, v in adversary.state_dict().items()}
            )
        if regularizer is not None:
            out.update(
                {f"regularizer.{n}": v.detach().cpu().clone() for n, v in regularizer.state_dict().items()}
            )
        return out

    def load(saved: Mapping[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        adv, reg = {}, {}
        with torch.no_grad():
            for key, value in saved.items():
                if key.startswith("buffer.") and key[7:] in buffers:
                    buffers[key[7:]].copy_(value)
                elif key.startswith("extra."):
                    extras[int(key[6:])].copy_(value)
                elif key.startswith("adversary."):
                    adv[key[10:]] = value
                elif key.startswith("regularizer."):
                    reg[key[12:]] = value
                elif key in params:
                    params[key].copy_(value)
                else:
                    raise InputError(f"initial state: {key!r} is not a parameter of this model")
        if adv and adversary is not None:
            adversary.load_state_dict(adv)
        if reg and regularizer is not None:
            regularizer.load_state_dict(reg)

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
    if hooks.step is not None and scaler is not None and scaler.is_enabled():
        raise InputError("hparams.amp: fp16 mixed precision (this GPU has no bf16) cannot scale a method's two-pass "
                         "optimiser step (SAM); set amp: false")  # fmt: skip

    pos_weight = torch.as_tensor(
        negatives / positives if hp.class_balanced else np.ones(len(train.tasks)),
        dtype=torch.float32,
        device=device,
    )

    def default_loss(logits: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        return mean_known(masked_bce(logits, targets, pos_weight, hp.label_smoothing), targets)

    loss_fn = loss_wrapper or default_loss
    if hooks.rows is not None:
        if sampler is not None:
            raise ValueError("fit: give a sampler or a method's rows, not both")
        n_draws = len(hooks.rows(start_epoch))
    else:
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
    callbacks = [selection, *on_epoch_end, *hooks.on_epoch_end]
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
            epoch_sampler = sampler if hooks.rows is None else _RowsSampler(hooks.rows(epoch))
            loader = torch.utils.data.DataLoader(
                train,
                batch_size=hp.batch_size,
                sampler=epoch_sampler,
                shuffle=epoch_sampler is None,
                generator=generator if epoch_sampler is None else None,
                num_workers=hp.num_workers,
                worker_init_fn=_seed_worker,
                drop_last=drop_last,
                collate_fn=getattr(train, "collate_fn", None),  # volumes: slice stacks (ImageTable)
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
                for step_in_epoch, (images, targets, group_codes, rows) in enumerate(_batches(loader)):
                    if per_iteration:
                        lr = set_lr(epoch * unit + step_in_epoch)
                    images, targets = images.to(device), targets.to(device)
                    group_codes = group_codes.to(device)
                    if hooks.group_context is not None:
                        hooks.group_context.codes = _codes_per_input(images, group_codes)

                    def batch_loss() -> torch.Tensor:
                        with _autocast(device, use_amp):
                            logits, features = model(images)
                        logits, features = logits.float(), features.float()
                        if hooks.loss is None and hooks.regularizer is None:
                            loss = loss_fn(logits, targets, group_codes)
                        else:
                            inputs = _loss_inputs(logits, targets, group_codes, features, pos_weight,
                                                  hp.label_smoothing, epoch, rows)  # fmt: skip
                            loss = hooks.loss(inputs) if hooks.loss is not None else inputs.default
                            if hooks.regularizer is not None:
                                loss = loss + hooks.regularizer(inputs)
                        if adversary is not None:
                            loss = loss + adversary(features, logits, targets, group_codes)
                        return loss

                    def backward(loss: torch.Tensor) -> None:
                        if scaler is not None and scaler.is_enabled():
                            scaler.scale(loss).backward()
                            scaler.unscale_(optimizer)
                        else:
                            loss.backward()
                        if clip_grad_norm:
                            torch.nn.utils.clip_grad_norm_(
                                [p for g in optimizer.param_groups for p in g["params"]], clip_grad_norm
                            )

                    optimizer.zero_grad(set_to_none=True)
                    loss = batch_loss()
                    backward(loss)
                    if hooks.step is not None:  # e.g. SAM: a second pass at perturbed weights, then the step

                        def closure() -> torch.Tensor:
                            optimizer.zero_grad(set_to_none=True)
                            again = batch_loss()
                            backward(again)
                            return again

                        hooks.step(optimizer, closure)
                    elif scaler is not None and scaler.is_enabled():
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    for after in hooks.after_step:
                        after(model)
                    running += float(loss.detach()) * len(targets)
                    seen += len(targets)
                np.random.set_state(np_state)
                random.setstate(py_state)
            val_logits = _logits(
                model, val, batch_size=hp.batch_size, device=device, num_workers=hp.num_workers, amp=use_amp,
                hooks=hooks,
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
            if hp.select_by == "val_worst_group_auc":
                record["val_worst_group_auc"] = worst_group_auc(y_val, val_probs, val_known_groups)
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
    if hooks.final_state is not None:  # e.g. SWAD: the averaged weights replace the selected ones
        replaced = hooks.final_state(best, model)
        if replaced is not None:
            best = {**best, **replaced}
            if hooks.update_bn and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
                # averaged weights need BatchNorm statistics of their own: one pass over the training rows
                from torch.optim.swa_utils import update_bn

                load(best)
                loader = torch.utils.data.DataLoader(train.without_augmentation(), batch_size=hp.batch_size,
                                                     shuffle=False, num_workers=hp.num_workers,
                                                     collate_fn=getattr(train, "collate_fn", None))  # fmt: skip
                update_bn((images.to(device) for images, *_ in _batches(loader)), model)
                best = {**best, **state()}
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
