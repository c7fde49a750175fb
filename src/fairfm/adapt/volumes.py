"""3D classification with 2D foundation models (METHODS.md §2.8).

Two ways of turning a volume (CT, MRI, OCT) into one prediction per sample:

``max_slice`` — FairMedFM's slice max-pooling MIL (``trainers/cls.py --is_3d``)
    every slice goes through the 2D model and the head; per volume and per task the slice with the highest
    P(class 1) is selected, and *its* logits are the volume's logits, for the loss and for the evaluation.
    With cached features a volume is a bag of feature rows (:class:`SliceBags`); :func:`max_over_slices` does
    the selection on a batch of bags, so gradients reach only the selected slice of each bag.
``oct_chunks`` — FairFedMed's OCT chunking (``CustomCLIP.forward``)
    keep every ``stride``-th B-scan (128 → 32), split them into chunks of ``chunk_size`` (32 / 8 = 4 chunks),
    map each chunk with a trainable ``Conv2d(chunk_size → 3, kernel 5, padding 2)`` to a 3-channel image,
    min–max normalise it per chunk, apply the model's own normalisation, encode it and score it with the head;
    the volume's logits are the mean over its chunks (:func:`oct_chunk_projector`, :func:`chunked_classifier`).
    It needs a trainable projector, so it runs in the one training loop (the fine-tuning usages).

Slice intensities are prepared as the references do before the model's own preprocessing
(:func:`prepare_slice`): CT in Hounsfield units through the lung window [−1250, 250] HU → [0, 1] (FairMedFM's
COVID-CT-MD), MRI/OCT slices min–max normalised one by one (FairMedFM's ADNI); ``unit`` keeps the model's own
scaling (integers by their type's range, as FairFedMed's OCT ÷ 255).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from fairfm.errors import InputError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fairfm.models.base import Encoder
    from fairfm.models.preprocess import Preprocess

VOLUME_POLICIES = ("max_slice", "oct_chunks")
SLICE_INTENSITIES = ("auto", "ct_window", "minmax", "unit")
#: FairMedFM's lung window for COVID-CT-MD (DATASETS.md §2.8), in Hounsfield units.
CT_WINDOW = (-1250.0, 250.0)
#: FairFedMed's OCT defaults (FEDERATED.md §1.3): every 4th B-scan, 8 B-scans per chunk, a 5×5 projector.
OCT_SLICE_STRIDE, OCT_CHUNK_SIZE, OCT_KERNEL = 4, 8, 5


# ------------------------------------------------------------------------------------------------ intensities


def resolve_intensity(policy: str, modality: str | None, volume: str = "max_slice") -> str:
    """The slice intensity preparation ``policy`` stands for: ``auto`` is the CT window for CT (a modality that
    names ``CT``), the model's own scaling for OCT chunks (FairFedMed divides by 255; the chunk min–max follows)
    and per-slice min–max otherwise (FairMedFM's ADNI)."""
    if policy not in SLICE_INTENSITIES:
        raise InputError(f"hparams.slice_intensity: {policy!r} is not one of {', '.join(SLICE_INTENSITIES)}")
    if policy != "auto":
        return policy
    if modality and re.search(r"\bCT\b", str(modality)):  # "chest CT", not "OCT B-scans"
        return "ct_window"
    return "unit" if volume == "oct_chunks" else "minmax"


def prepare_slice(array: np.ndarray, intensity: str) -> np.ndarray:
    """One decoded slice, prepared for the model's preprocessing: ``ct_window`` clips Hounsfield units to
    [−1250, 250] and maps them linearly to [0, 1]; ``minmax`` rescales the slice to [0, 1] (a constant slice
    becomes 0); ``unit`` returns it unchanged (the model maps integers by their type's range)."""
    if intensity == "unit":
        return array
    values = np.asarray(array, dtype=np.float32)
    if not np.isfinite(values).all():
        raise InputError("slice contains NaN or infinite values")
    if intensity == "ct_window":
        low, high = CT_WINDOW
        return ((np.clip(values, low, high) - low) / (high - low)).astype(np.float32)
    if intensity == "minmax":
        low, high = float(values.min()), float(values.max())
        if high <= low:
            return np.zeros_like(values)
        return ((values - low) / (high - low)).astype(np.float32)
    raise InputError(f"slice intensity {intensity!r} is not one of {', '.join(SLICE_INTENSITIES[1:])}")


@dataclass(frozen=True)
class SlicePreprocess:
    """A model's :class:`~fairfm.models.preprocess.Preprocess` preceded by :func:`prepare_slice`. Its ``key()``
    and ``to_dict()`` include the intensity choice, so cached features of the two never mix and the choice is
    recorded in the cache's ``meta.json``."""

    base: "Preprocess"
    intensity: str

    def __getattr__(self, name: str) -> Any:  # size, mean, std, resize, scale… of the model's preprocessing
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def to_dict(self) -> dict[str, Any]:
        return {**self.base.to_dict(), "slice_intensity": self.intensity}

    def key(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> str:
        return f"{self.base.describe()}, slices {self.intensity}"

    def __call__(self, image: Any):
        return self.base(prepare_slice(np.asarray(image), self.intensity))


def with_slice_intensity(encoder: "Encoder", intensity: str) -> "Encoder":
    """A shallow copy of ``encoder`` (same module and weights) whose preprocessing prepares slices first;
    ``unit`` returns ``encoder`` itself (the model's own scaling, the same cache entries as before)."""
    if intensity == "unit":
        return encoder
    prepared = copy.copy(encoder)
    prepared.preprocess = SlicePreprocess(encoder.preprocess, intensity)
    return prepared


# ------------------------------------------------------------------------------------------------ slice bags


class SliceBags:
    """``N`` samples, each a bag of consecutive rows of ``rows`` (feature rows or preprocessed slices):
    sample ``i`` owns ``rows[starts[i] : starts[i] + sizes[i]]``. A 2D image is a bag of one row.

    Indexing with sample positions (``bags[train_rows]``) gives the bags of those samples over the same rows,
    so a split of a cached feature matrix costs no copy. ``shape`` is ``(N, *row shape)``: samples × features.
    """

    def __init__(self, rows: Any, sizes: Sequence[int] | np.ndarray, starts: Sequence[int] | np.ndarray | None = None):
        self.rows = rows
        self.sizes = np.asarray(sizes, dtype=np.int64).reshape(-1)
        if (self.sizes < 1).any():
            raise InputError(f"sample {int(np.argmax(self.sizes < 1))} has no slice")
        self.starts = (np.cumsum(self.sizes) - self.sizes if starts is None
                       else np.asarray(starts, dtype=np.int64).reshape(-1))  # fmt: skip
        if len(self.starts) != len(self.sizes):
            raise ValueError("starts and sizes differ in length")
        if len(self.sizes) and int((self.starts + self.sizes).max()) > len(rows):
            raise ValueError(f"bags reach row {int((self.starts + self.sizes).max())} of {len(rows)} rows")

    @classmethod
    def from_table_rows(cls, rows: Any, table_row: np.ndarray, n_samples: int) -> "SliceBags":
        """Bags from a feature cache's ``index.table_row`` (rows of one sample are consecutive, in table order)."""
        table_row = np.asarray(table_row, dtype=np.int64)
        if len(table_row) != len(rows):
            raise ValueError(f"{len(table_row)} index rows for {len(rows)} feature rows")
        if len(table_row) and (np.diff(table_row) < 0).any():
            raise ValueError("feature rows are not grouped by sample in table order")
        sizes = np.bincount(table_row, minlength=n_samples)
        if len(sizes) != n_samples or (sizes == 0).any():
            missing = int(np.argmax(sizes == 0)) if (sizes == 0).any() else n_samples
            raise InputError(f"the feature cache has no row for SampleTable row {missing}")
        return cls(rows, sizes)

    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *tuple(np.shape(self.rows)[1:]))

    def __getitem__(self, index: Any) -> "SliceBags":
        chosen = np.arange(len(self))[np.asarray(index) if not isinstance(index, slice) else index]
        return SliceBags(self.rows, self.sizes[chosen], self.starts[chosen])

    def with_rows(self, rows: Any) -> "SliceBags":
        """The same bags over other rows aligned with these (e.g. the rows as a torch tensor)."""
        return SliceBags(rows, self.sizes, self.starts)

    def row_index(self, samples: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """(rows of ``samples`` concatenated in order, position in ``samples`` of each row's sample)."""
        samples = np.arange(len(self)) if samples is None else np.asarray(samples, dtype=np.int64).reshape(-1)
        sizes, starts = self.sizes[samples], self.starts[samples]
        segments = np.repeat(np.arange(len(samples)), sizes)
        offsets = np.cumsum(sizes) - sizes
        rows = np.repeat(starts, sizes) + (np.arange(int(sizes.sum())) - np.repeat(offsets, sizes))
        return rows, segments

    def take(self, samples: Any) -> tuple[Any, np.ndarray]:
        """(the rows of ``samples``, concatenated, and each row's position in ``samples``)."""
        rows, segments = self.row_index(samples)
        source = self.rows
        if hasattr(source, "index_select"):  # a torch tensor
            import torch

            return source.index_select(0, torch.as_tensor(rows, device=source.device)), segments
        return source[rows], segments


def max_over_slices(logits: "torch.Tensor", segments: Any, n_bags: int,
                    scores: "torch.Tensor | None" = None) -> tuple["torch.Tensor", "torch.Tensor"]:  # fmt: skip
    """FairMedFM's MIL selection on a batch of bags: per bag and task, the logits of the slice with the highest
    ``scores`` (default: the logits themselves, (R, T) — for two-class logits (R, T, 2) pass
    ``logit₁ − logit₀``, which orders slices as P(class 1) does).

    ``logits``: (R, T) or (R, T, C) for R rows; ``segments``: (R,) bag of each row, non-decreasing, every bag
    of ``0..n_bags-1`` present. Returns ``(pooled (n_bags, T[, C]), selected rows (n_bags, T))``; gradients
    reach only the selected rows. Ties go to the first slice.
    """
    import torch

    if scores is None:
        if logits.ndim != 2:
            raise ValueError("scores are needed for logits with a class dimension")
        scores = logits
    segments = torch.as_tensor(np.asarray(segments), dtype=torch.long, device=logits.device)
    n_rows, n_tasks = scores.shape
    if len(segments) != n_rows:
        raise ValueError(f"{len(segments)} segment ids for {n_rows} rows")
    if n_rows and bool((segments[1:] < segments[:-1]).any()):
        raise ValueError("the rows of a bag must be consecutive (segments non-decreasing)")
    counts = torch.bincount(segments, minlength=n_bags)
    if len(counts) != n_bags or bool((counts == 0).any()):
        raise ValueError("every bag needs at least one row")
    starts = torch.cumsum(counts, 0) - counts
    position = torch.arange(n_rows, device=logits.device) - starts[segments]
    padded = scores.new_full((n_bags, int(counts.max()), n_tasks), float("-inf"))
    padded[segments, position] = scores.detach()
    selected = starts[:, None] + padded.argmax(dim=1)
    return logits[selected, torch.arange(n_tasks, device=logits.device)], selected


def max_slice_probabilities(bags: SliceBags, row_probabilities: np.ndarray) -> np.ndarray:
    """(N, T) per volume and task, the highest P(class 1) among its slices; ``row_probabilities`` (R, T) is
    aligned with ``bags.rows``."""
    values = np.asarray(row_probabilities, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    rows, segments = bags.row_index()
    out = np.full((len(bags), values.shape[1]), -np.inf)
    np.maximum.at(out, segments, values[rows])
    return out


def slice_summary(bags: SliceBags) -> dict[str, Any]:
    """What to record about the bags of a run."""
    return {"samples": int(len(bags)), "slices": int(bags.sizes.sum()), "min_slices": int(bags.sizes.min()),
            "max_slices": int(bags.sizes.max())}  # fmt: skip


class PackedSlices:
    """A batch of volumes for the training loop: their preprocessed slices concatenated ``(R, 3, S, S)`` and
    the slice count of each volume. ``.to(device)`` and ``len()`` (volumes) as the loop uses a tensor."""

    def __init__(self, slices: "torch.Tensor", sizes: Sequence[int] | np.ndarray) -> None:
        self.slices = slices
        self.sizes = np.asarray(sizes, dtype=np.int64)
        if int(self.sizes.sum()) != len(slices):
            raise ValueError(f"{len(slices)} slices for volumes of {self.sizes.tolist()} slices")

    def to(self, *args: Any, **kwargs: Any) -> "PackedSlices":
        return PackedSlices(self.slices.to(*args, **kwargs), self.sizes)

    def __len__(self) -> int:
        return len(self.sizes)


def collate_slice_stacks(items: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    """DataLoader ``collate_fn`` for :class:`~fairfm.adapt.train.ImageTable` items whose image is a
    ``(slices, 3, S, S)`` stack of one volume: ``(PackedSlices, targets, group codes, rows)``."""
    import torch

    stacks = [item[0] for item in items]
    packed = PackedSlices(torch.cat(stacks), [len(stack) for stack in stacks])
    return (packed, torch.stack([item[1] for item in items]), torch.as_tensor([item[2] for item in items]),
            torch.as_tensor([item[3] for item in items]))  # fmt: skip


def max_slice_classifier(classifier: "nn.Module") -> "nn.Module":
    """``classifier`` applied slice by slice to batches of volumes, max-pooled per volume and task."""
    return _modules()[2](classifier)


# ------------------------------------------------------------------------------------------------ OCT chunks


def oct_chunk_indices(depth: int, stride: int = OCT_SLICE_STRIDE, chunk_size: int = OCT_CHUNK_SIZE) -> np.ndarray:
    """(chunks, chunk_size) B-scan indices FairFedMed feeds its projector: every ``stride``-th B-scan from the
    first (128 → 32), cut into consecutive chunks of ``chunk_size`` (→ 4 × 8). Kept B-scans that do not fill a
    last chunk are left out; a volume too thin for one chunk is an error."""
    if stride < 1 or chunk_size < 1:
        raise InputError(f"OCT chunking needs stride ≥ 1 and chunk size ≥ 1, got {stride} and {chunk_size}")
    kept = np.arange(0, int(depth), stride)
    n_chunks = len(kept) // chunk_size
    if n_chunks == 0:
        raise InputError(f"a volume of {depth} slices keeps {len(kept)} with every {stride}th slice, fewer than "
                         f"one chunk of {chunk_size} (lower hparams.oct_slice_stride or oct_chunk_size)")  # fmt: skip
    return kept[: n_chunks * chunk_size].reshape(n_chunks, chunk_size)


def oct_volume_tensor(volume: np.ndarray, preprocess: "Preprocess", *, stride: int = OCT_SLICE_STRIDE,
                      chunk_size: int = OCT_CHUNK_SIZE, intensity: str = "unit") -> "torch.Tensor":  # fmt: skip
    """(chunks × chunk_size, S, S) float32: the kept B-scans of a (D, H, W) volume, each prepared
    (:func:`prepare_slice`) and resized to the model's resolution by the model's own resize, in [0, 1] before
    any normalisation (the projector's per-chunk min–max and the model's normalisation come after the
    convolution)."""
    import torch

    indices = oct_chunk_indices(volume.shape[0], stride, chunk_size).reshape(-1)
    mean = torch.tensor(preprocess.mean, dtype=torch.float32)[0]
    std = torch.tensor(preprocess.std, dtype=torch.float32)[0]
    value_range = 255.0 if getattr(preprocess, "scale", "unit") == "raw255" else 1.0
    slices = []
    for index in indices:
        # The model's preprocessing resizes and crops exactly as for its 2D inputs; a grey slice is replicated
        # to three identical channels, so channel 0 un-normalised is the resized slice.
        normalised = preprocess(prepare_slice(volume[index], intensity))
        slices.append((normalised[0] * std + mean) / value_range)
    return torch.stack(slices).clamp(0.0, 1.0)


@functools.cache
def _modules():
    import torch
    from torch import nn

    class OctChunkProjector(nn.Module):
        """Chunks of B-scans → normalised 3-channel images: ``Conv2d(chunk_size → 3, k, padding k // 2)``,
        min–max per chunk to [0, 1] (× 255 for models that take 0–255 pixels), then the model's mean/std."""

        def __init__(self, chunk_size: int, mean: Sequence[float], std: Sequence[float], *,
                     kernel_size: int = OCT_KERNEL, value_range: float = 1.0) -> None:  # fmt: skip
            super().__init__()
            self.chunk_size = int(chunk_size)
            self.conv = nn.Conv2d(self.chunk_size, 3, kernel_size=kernel_size, padding=kernel_size // 2)
            self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1),
                                 persistent=False)  # fmt: skip
            self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1),
                                 persistent=False)  # fmt: skip
            self.value_range = float(value_range)

        def forward(self, volumes: torch.Tensor) -> torch.Tensor:
            """(B, K, S, S) with K a multiple of ``chunk_size`` → (B × K / chunk_size, 3, S, S)."""
            batch, depth, height, width = volumes.shape
            if depth % self.chunk_size:
                raise ValueError(f"{depth} slices do not split into chunks of {self.chunk_size}")
            chunks = volumes.reshape(batch * (depth // self.chunk_size), self.chunk_size, height, width)
            images = self.conv(chunks)
            low = images.amin(dim=(1, 2, 3), keepdim=True)
            high = images.amax(dim=(1, 2, 3), keepdim=True)
            images = (images - low) / (high - low).clamp(min=1e-6) * self.value_range
            return (images - self.mean) / self.std

    class ChunkedClassifier(nn.Module):
        """A :func:`fairfm.adapt.train.make_classifier` Classifier fed by an :class:`OctChunkProjector`: the
        encoder and head score every chunk, the volume's logits (and features) are the mean over its chunks.
        Parameters keep the classifier's names (``backbone.*``, ``head.*``) plus ``projector.*``."""

        def __init__(self, classifier: nn.Module, projector: nn.Module) -> None:
            super().__init__()
            self.backbone = classifier.backbone
            self.head = classifier.head
            self.__dict__["features_fn"] = classifier.features_fn
            self.projector = projector

        def forward(self, volumes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            images = self.projector(volumes)
            n_chunks = images.shape[0] // volumes.shape[0]
            features = self.features_fn(images).float().reshape(images.shape[0], -1)
            logits = self.head(features)
            return (logits.reshape(volumes.shape[0], n_chunks, -1).mean(dim=1),
                    features.reshape(volumes.shape[0], n_chunks, -1).mean(dim=1))  # fmt: skip

    class MaxSliceClassifier(nn.Module):
        """A Classifier run on every slice of a batch of volumes (:class:`PackedSlices`); per volume and task
        the logit of the slice with the highest P(class 1) is the volume's (FairMedFM's MIL, so the loss reaches
        only that slice), its features the mean over its slices. Plain image batches pass straight through."""

        def __init__(self, classifier: nn.Module) -> None:
            super().__init__()
            self.backbone = classifier.backbone
            self.head = classifier.head
            self.__dict__["features_fn"] = classifier.features_fn

        def score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # the Classifier's forward with this module's head: a method's wrapped head replaces ``self.head``
            features = self.features_fn(x).float().reshape(x.shape[0], -1)
            return self.head(features), features

        def forward(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
            if not isinstance(batch, PackedSlices):
                return self.score(batch)
            logits, features = self.score(batch.slices)
            segments = np.repeat(np.arange(len(batch)), batch.sizes)
            pooled, _ = max_over_slices(logits, segments, len(batch))
            index = torch.as_tensor(segments, device=features.device)
            sums = features.new_zeros((len(batch), features.shape[1])).index_add_(0, index, features)
            counts = torch.as_tensor(batch.sizes, dtype=features.dtype, device=features.device)[:, None]
            return pooled, sums / counts

    return OctChunkProjector, ChunkedClassifier, MaxSliceClassifier


def oct_chunk_projector(preprocess: "Preprocess", *, chunk_size: int = OCT_CHUNK_SIZE, seed: int = 0,
                        kernel_size: int = OCT_KERNEL) -> "nn.Module":  # fmt: skip
    """FairFedMed's trainable projector for a model with ``preprocess`` (its mean/std and pixel range), its
    convolution initialised under ``seed`` (without touching the global RNG)."""
    import torch

    projector_class = _modules()[0]
    value_range = 255.0 if getattr(preprocess, "scale", "unit") == "raw255" else 1.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return projector_class(chunk_size, preprocess.mean, preprocess.std, kernel_size=kernel_size,
                               value_range=value_range)  # fmt: skip


def chunked_classifier(classifier: "nn.Module", projector: "nn.Module") -> "nn.Module":
    """``classifier`` scoring chunks made by ``projector``, logits averaged over each volume's chunks."""
    return _modules()[1](classifier, projector)


def volume_options(hparams: Any, *, has_volumes: bool, modality: str | None = None) -> dict[str, Any]:
    """:class:`~fairfm.adapt.train.ImageTable` options for fine-tuning: OCT chunks when ``hparams.volume`` is
    ``oct_chunks``, slice stacks for max-pooling when the samples are volumes, ``{}`` for 2D images."""
    volume = str(getattr(hparams, "volume", "max_slice"))
    policy = str(getattr(hparams, "slice_intensity", "auto"))
    if volume == "oct_chunks":
        return {"volume": "oct_chunks", "slice_stride": int(hparams.oct_slice_stride),
                "chunk_size": int(hparams.oct_chunk_size),
                "intensity": resolve_intensity(policy, modality, "oct_chunks")}  # fmt: skip
    if not has_volumes:
        return {}
    return {"volume": "max_slice", "intensity": resolve_intensity(policy, modality, "max_slice")}


def first_row_is_volume(frame: Any, root: Any, column: str = "path") -> bool:
    """Whether the first row of a SampleTable is a volume (from its header where the format has one)."""
    from pathlib import Path

    from fairfm.adapt.features import count_slices, image_sources

    if len(frame) == 0:
        return False
    source = image_sources(frame.iloc[:1], Path(root), column)[0]
    return count_slices(source.path, key=source.key, index=source.index) > 1


def volume_model(classifier: "nn.Module", preprocess: "Preprocess", options: dict[str, Any],
                 seed: int = 0) -> tuple["nn.Module", list[str], dict[str, Any]]:  # fmt: skip
    """The model :func:`fairfm.adapt.train.fit` trains for volume ``options`` (:func:`volume_options`), the
    names of the extra parameters that train (the OCT projector's) and what to record."""
    if options["volume"] == "max_slice":
        return max_slice_classifier(classifier), [], volume_meta("max_slice", options["intensity"])
    projector = oct_chunk_projector(preprocess, chunk_size=options["chunk_size"], seed=seed)
    model = chunked_classifier(classifier, projector)
    names = [f"projector.{name}" for name, _ in projector.named_parameters()]
    meta = volume_meta("oct_chunks", options["intensity"], slice_stride=options["slice_stride"],
                       chunk_size=options["chunk_size"], projector=f"Conv2d({options['chunk_size']}→3, "
                       f"kernel {OCT_KERNEL}, padding {OCT_KERNEL // 2})")  # fmt: skip
    return model, names, meta


def check_volume_policy(volume: str, usage: str) -> None:
    """The volume policy of ``usage``, a usage on cached features (the only caller: their features pool slices);
    OCT chunking needs a trainable projector before the encoder."""
    if volume not in VOLUME_POLICIES:
        raise InputError(f"hparams.volume: {volume!r} is not one of {', '.join(VOLUME_POLICIES)}")
    if volume == "oct_chunks":
        raise InputError(f"hparams.volume: oct_chunks trains a projector in front of the encoder, which {usage} "
                         "(on cached features) cannot do; use max_slice, or a fine-tuning usage (lora, bitfit, "
                         "vpt, adapter, full_finetune)")  # fmt: skip


def volume_meta(policy: str, intensity: str, bags: SliceBags | None = None, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"aggregation": policy, "slice_intensity": intensity}
    if intensity == "ct_window":
        meta["ct_window_hu"] = list(CT_WINDOW)
    if bags is not None:
        meta.update(slice_summary(bags))
    meta.update(extra)
    return meta
