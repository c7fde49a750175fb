"""Promptable segmentation (SAM family) with prompts taken from the ground-truth mask, scored by Dice and IoU.

The protocol of FairMedFM (METHODS.md §2.7), without its quirks:

* **Prompts** from each structure's ground-truth mask, all points positive: ``center`` (the centre of the mask's
  bounding box, ``((x_min + x_max) // 2, (y_min + y_max) // 2)``, as the reference — it can fall outside a
  non-convex object), ``centroid`` (the mask's centroid snapped to the nearest mask pixel, so it always lies on
  the object), ``rand`` (one foreground pixel drawn uniformly), ``rands`` (``n_points`` foreground pixels drawn
  uniformly *with* replacement) and ``bbox`` (the tight box ``x_min, y_min, x_max, y_max``). Coordinates are pixel
  indices of the image as read; :meth:`PromptableSegmenter.segment` maps them into the model's own frame (SAM's
  longest-side resize, MedSAM's 1024² squash).
* **Randomness** is seeded per (run seed, sample id, structure, slice) through a stable hash, so a sample's prompt
  does not depend on the order or batching of the samples.
* **Jitter** (off by default, as in FairMedFM): independent N(0, σ) noise on every coordinate (each box corner on
  its own), σ = ``jitter`` × the mean side of the mask's box, clipped to ± ``jitter_cap`` pixels. σ and the cap are
  measured in the frame the model sees (the reference jitters its 1024² resized image), then mapped back; the
  box is re-ordered if two corners crossed and everything is kept inside the image. The reference's quirks are
  not reproduced (one x-noise translating both x-corners, only positive noise capped, a shrinking "enlarge").
* **Decoding**: ``multimask`` output, the mask with the highest predicted IoU is kept.
* **Scores** (METRICS.md §3): per 2D sample ``dice = 2|P∩T| / (|P| + |T|)``, ``iou = |P∩T| / |P∪T|``. For 3D
  volumes the default row is the *volume* (intersections and areas summed over all slices; only slices whose
  ground truth has the structure are prompted, the others contribute an empty prediction); ``level="slice"`` gives
  FairMedFM's per-slice rows (only slices with foreground), a compatibility view whose slices are not independent.
* **Empty ground truth**: a structure absent from a 2D sample (or from every slice of a volume) cannot be
  prompted. Scoring it would always give "both empty" = 1.0 for free, so such a (sample, structure) row is kept
  with ``dice``/``iou`` NaN and ``note`` = :data:`EMPTY_NOTE`; the metrics leave it out and count it
  (``n_empty_ground_truth``), and the run's meta counts it per split and structure.

Which label values make each structure comes from ``structures`` (``{cup: [-2], rim: [-1]}``); the defaults per
dataset follow DATASETS.md §3 (:data:`DEFAULT_STRUCTURES`); a dataset without an entry has one structure,
``foreground``, made of every non-zero value.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fairfm.errors import InputError

if TYPE_CHECKING:
    from fairfm.models.base import PromptableSegmenter
    from fairfm.models.preprocess import Preprocess

PROMPTS = ("center", "centroid", "rand", "rands", "bbox")
LEVELS = ("volume", "slice")
#: The structure name of a dataset without a default entry: every non-zero label value.
FOREGROUND = "foreground"
#: The ``note`` of a (sample, structure) row that was not prompted because its ground truth is empty.
EMPTY_NOTE = "empty ground truth: not prompted, not scored"

#: Label values of each structure per dataset (DATASETS.md §3); None means every non-zero value (binary masks, or
#: a dataset whose one task is the union of its labels). Montgomery's two lung masks are merged first (their union
#: is the ``lungs`` task). FairSeg: codes −1 and −2, the inner code (−2) is the cup; the rim is the disc minus the
#: cup (use ``{disc: [-1, -2]}`` for the whole disc). KiTS23 ``kidney`` is the official "kidney and masses" region.
DEFAULT_STRUCTURES: dict[str, dict[str, tuple[float, ...] | None]] = {
    "ham10000_seg": {"lesion": None},
    "tusc": {"nodule": None},
    "montgomery": {"lungs": None},
    "fairseg": {"cup": (-2.0,), "rim": (-1.0,)},
    "kits23": {"kidney": (1.0, 2.0, 3.0), "tumor": (2.0,), "cyst": (3.0,)},
    "candi": {"brain_structures": None},
    "spider": {
        "vertebrae": tuple(float(v) for v in range(1, 100)),
        "canal": (100.0,),
        "discs": tuple(float(v) for v in range(201, 300)),
    },
}
#: Datasets whose label codes are too irregular for a default: ``hparams.structures`` must name them.
NEEDS_STRUCTURES: dict[str, str] = {
    "ircadb": "3D-IRCADb's LABELLED_DICOM holds combined organ codes (DATASETS.md §3.7); name the codes of each "
    "structure, e.g. structures: {liver: [...]}",
}

Structures = dict[str, "tuple[float, ...] | None"]


# --------------------------------------------------------------------------------------------------- structures


def dataset_structures(dataset: str | None, structures: Mapping[str, Sequence[float]] | None = None,
                       tasks: Sequence[str] | None = None, *, where: str = "") -> Structures:  # fmt: skip
    """The structures to segment, in order: ``structures`` (hparams) or the dataset's defaults, restricted to
    ``tasks`` when given. Errors name the spec field (and ``where``, e.g. the dataset folder)."""
    at = f" ({where})" if where else ""
    if structures:
        chosen: Structures = {}
        for name, values in structures.items():
            values = tuple(float(v) for v in values)
            if not values:
                raise InputError(f"hparams.structures.{name}: empty list of label values{at}")
            if 0.0 in values:
                raise InputError(f"hparams.structures.{name}: 0 is the background, not a structure{at}")
            chosen[str(name)] = values
    elif dataset in NEEDS_STRUCTURES:
        raise InputError(f"hparams.structures is required for dataset {dataset!r}{at}: {NEEDS_STRUCTURES[dataset]}")
    else:
        chosen = dict(DEFAULT_STRUCTURES.get(str(dataset), {FOREGROUND: None}))
    if tasks is None:
        return chosen
    missing = [t for t in tasks if t not in chosen]
    if missing:
        raise InputError(f"tasks: {missing[0]!r} is not a segmented structure of dataset {dataset!r}{at} "
                         f"(structures: {', '.join(chosen)}; define others with hparams.structures)")  # fmt: skip
    return {t: chosen[t] for t in tasks}


def segmentation_tasks(dataset_dir: Path, manifest: Mapping[str, Any], hparams: Mapping[str, Any],
                       tasks: Sequence[str] | None) -> list[str]:  # fmt: skip
    """The task names of a ``sam_prompt`` run (its structures), for :meth:`fairfm.spec.RunSpec.resolve`."""
    card = manifest.get("card") or {}
    if card.get("task_type") not in (None, "segmentation"):
        raise InputError(f"usage sam_prompt: {dataset_dir} holds the {card.get('task_type')} dataset "
                         f"{manifest.get('dataset')!r}; prompting needs a segmentation dataset (with path_mask)")
    return list(dataset_structures(manifest.get("dataset"), hparams.get("structures"), tasks, where=str(dataset_dir)))


def structure_mask(labels: np.ndarray, values: tuple[float, ...] | None) -> np.ndarray:
    """Boolean mask of a structure in a label map (None: every non-zero value)."""
    if values is None:
        return labels != 0
    return np.isin(labels, np.asarray(values, dtype=np.float64))


# ------------------------------------------------------------------------------------------------------ prompts


@dataclass(frozen=True)
class Prompt:
    """A prompt in pixel coordinates of the image as read: ``points`` (P, 2) x, y (all positive) or ``box``
    (4,) x0, y0, x1, y1."""

    kind: str
    points: np.ndarray | None = None
    box: np.ndarray | None = None

    def to_json(self) -> str:
        data: dict[str, Any] = {"kind": self.kind}
        if self.points is not None:
            data["points"] = [[round(float(v), 3) for v in p] for p in self.points]
        if self.box is not None:
            data["box"] = [round(float(v), 3) for v in self.box]
        return json.dumps(data, separators=(",", ":"))


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Tight bounding box ``[x_min, y_min, x_max, y_max]`` (inclusive pixel indices) of a non-empty 2D mask."""
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        raise ValueError("empty mask has no bounding box")
    y = np.flatnonzero(rows)
    x = np.flatnonzero(cols)
    return np.array([x[0], y[0], x[-1], y[-1]], dtype=np.int64)


def make_prompt(mask: np.ndarray, kind: str, rng: np.random.Generator, *, n_points: int = 5) -> Prompt:
    """A prompt of ``kind`` (one of :data:`PROMPTS`) from a non-empty 2D boolean mask."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2D mask, got shape {mask.shape}")
    if kind not in PROMPTS:
        raise ValueError(f"prompt {kind!r} is not one of {', '.join(PROMPTS)}")
    box = mask_box(mask)
    if kind == "bbox":
        return Prompt(kind, box=box.astype(np.float64))
    if kind == "center":
        point = np.array([[(box[0] + box[2]) // 2, (box[1] + box[3]) // 2]], dtype=np.float64)
        return Prompt(kind, points=point)
    ys, xs = np.nonzero(mask)
    if kind == "centroid":
        # The centroid of a non-convex object can lie outside it; snap to the nearest object pixel.
        cy, cx = ys.mean(), xs.mean()
        nearest = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
        return Prompt(kind, points=np.array([[xs[nearest], ys[nearest]]], dtype=np.float64))
    count = 1 if kind == "rand" else int(n_points)
    picks = rng.integers(0, len(xs), size=count)  # uniform over foreground pixels, with replacement
    return Prompt(kind, points=np.stack([xs[picks], ys[picks]], axis=1).astype(np.float64))


def model_frame_scale(preprocess: "Preprocess | None", height: int, width: int) -> tuple[float, float]:
    """Model-frame pixels per image pixel along x and y (how :class:`Preprocess` resizes an ``height × width``
    image); (1, 1) without a preprocessing."""
    if preprocess is None:
        return 1.0, 1.0
    if preprocess.resize == "squash":
        return preprocess.size / width, preprocess.size / height
    if preprocess.resize == "shortest-crop":
        target = preprocess.size / preprocess.crop_pct if preprocess.crop_pct < 1.0 else preprocess.size
        ratio = target / min(height, width)
    else:  # longest-pad
        ratio = preprocess.size / max(height, width)
    return ratio, ratio


def jitter_prompt(prompt: Prompt, reference_box: np.ndarray, rng: np.random.Generator, *, jitter: float, cap: float,
                  shape: tuple[int, int], scale: tuple[float, float] = (1.0, 1.0)) -> Prompt:  # fmt: skip
    """``prompt`` with independent N(0, σ) noise on every coordinate, σ = ``jitter`` × mean side of
    ``reference_box`` (the mask's box), noise clipped to ± ``cap``; σ and ``cap`` are in model-frame pixels
    (``scale`` = model pixels per image pixel along x, y). The result stays inside the ``shape`` (H, W) image and a
    box stays a valid box (x0 ≤ x1, y0 ≤ y1)."""
    if jitter <= 0:
        return prompt
    sx, sy = scale
    height, width = shape
    sides = (float(reference_box[2] - reference_box[0]) * sx, float(reference_box[3] - reference_box[1]) * sy)
    sigma = jitter * (sides[0] + sides[1]) / 2.0

    def shift(xy: np.ndarray) -> np.ndarray:
        noise = np.clip(rng.normal(0.0, sigma, size=xy.shape), -cap, cap) if sigma > 0 else np.zeros(xy.shape)
        moved = xy + noise / np.array([sx, sy])  # back to image pixels
        return np.clip(moved, 0.0, np.array([width - 1, height - 1], dtype=np.float64))

    if prompt.box is not None:
        corners = shift(prompt.box.reshape(2, 2).astype(np.float64))
        low, high = corners.min(axis=0), corners.max(axis=0)  # two corners that crossed are swapped back
        return Prompt(prompt.kind, box=np.concatenate([low, high]))
    return Prompt(prompt.kind, points=shift(np.asarray(prompt.points, dtype=np.float64)))


def prompt_rng(seed: int, sample_id: str, structure: str, slice_index: int = -1) -> np.random.Generator:
    """A generator that depends only on (seed, sample, structure, slice) — not on order or batching."""
    digest = hashlib.sha256(f"{sample_id}\0{structure}\0{slice_index}".encode()).digest()
    return np.random.default_rng([int(seed), int.from_bytes(digest[:16], "little")])


# ------------------------------------------------------------------------------------------------------ scoring


def overlap(pred: np.ndarray, true: np.ndarray) -> tuple[int, int, int]:
    """(|P ∩ T|, |P|, |T|) of two boolean masks of the same shape."""
    pred, true = np.asarray(pred, dtype=bool), np.asarray(true, dtype=bool)
    if pred.shape != true.shape:
        raise ValueError(f"predicted mask {pred.shape} and ground truth {true.shape} differ in shape")
    return int(np.logical_and(pred, true).sum()), int(pred.sum()), int(true.sum())


def dice_iou(intersection: int, pred_area: int, true_area: int) -> tuple[float, float]:
    """Dice and IoU from overlap counts; both masks empty scores 1.0 (METRICS.md §3)."""
    total = pred_area + true_area
    if total == 0:
        return 1.0, 1.0
    return 2.0 * intersection / total, intersection / (total - intersection)


def best_mask(model: "PromptableSegmenter", image: np.ndarray, prompt: Prompt, *,
              multimask: bool) -> tuple[np.ndarray, float]:  # fmt: skip
    """The model's mask for ``prompt`` with the highest predicted IoU, and that score."""
    points = prompt.points
    labels = None if points is None else np.ones(len(points), dtype=np.int64)
    masks, scores = model.segment(image, points=points, point_labels=labels, boxes=prompt.box, multimask=multimask)
    masks, scores = np.asarray(masks), np.asarray(scores, dtype=np.float64).reshape(-1)
    if masks.ndim != 3 or len(masks) != len(scores) or len(scores) == 0:
        raise ValueError(f"segment returned masks {masks.shape} and scores {scores.shape}")
    k = int(np.argmax(scores))
    return masks[k].astype(bool), float(scores[k])


# ------------------------------------------------------------------------------------------------------ reading


def mask_columns(table: pd.DataFrame) -> list[str]:
    """``path_mask`` or, without it, every ``path_mask_*`` column (Montgomery's left and right lungs)."""
    if "path_mask" in table.columns:
        return ["path_mask"]
    columns = sorted(c for c in table.columns if str(c).startswith("path_mask_"))
    if not columns:
        raise InputError("SampleTable has no path_mask column: sam_prompt needs a segmentation dataset with masks")
    return columns


class _PairReader:
    """Reads (image, label map) of a SampleTable row: the image as the feature extractor does (8-bit kept 8-bit),
    the mask(s) as float label values; several mask columns are merged into one binary map."""

    def __init__(self, table: pd.DataFrame, root: Path, *, volumes: bool | None, column: str = "path") -> None:
        from fairfm.data.images import row_locator

        if column not in table.columns:
            raise InputError(f"SampleTable has no image column {column!r}")
        self.table, self.root, self.column = table, Path(root), column
        self.ids = table["sample_id"].astype(str).tolist()
        self.image_locator = row_locator(table, column)
        self.mask_columns = mask_columns(table)
        self.mask_locators = {c: row_locator(table, c) for c in self.mask_columns}
        if volumes is None and len(table):  # no dataset card says 2D or 3D: the first mask decides
            raw = self._read_masks(0)[0][2]
            volumes = raw.ndim == 3 and raw.shape[-1] not in (3, 4)
        self.volumes = bool(volumes)

    def _where(self, row: int, column: str) -> str:
        return f"SampleTable row {row}, sample_id {self.ids[row]!r}, column {column!r}"

    def _path(self, row: int, column: str) -> Path:
        value = self.table[column].iloc[row]
        if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
            raise InputError(f"{self._where(row, column)}: no file given")
        return self.root / str(value)

    def read(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        from fairfm.adapt.features import read_array

        keys, indices = self.image_locator
        path = self._path(row, self.column)
        try:
            image = read_array(path, key=keys[row], index=indices[row])
        except InputError as exc:
            raise InputError(f"{exc} ({self._where(row, self.column)})") from None
        maps = [(p, self._label_map(m, p, row, c)) for c, p, m in self._read_masks(row)]
        labels = maps[0][1] if len(maps) == 1 else np.any([m != 0 for _, m in maps], axis=0).astype(np.float32)
        image = self._check(image, labels, path, maps[0][0], row)
        return image, labels

    def _read_masks(self, row: int) -> list[tuple[str, Path, np.ndarray]]:
        from fairfm.data.images import read_image

        out = []
        for column in self.mask_columns:
            mkeys, mindices = self.mask_locators[column]
            mask_path = self._path(row, column)
            try:
                out.append((column, mask_path, read_image(mask_path, key=mkeys[row], index=mindices[row])))
            except InputError as exc:
                raise InputError(f"{exc} ({self._where(row, column)})") from None
        return out

    def _label_map(self, labels: np.ndarray, path: Path, row: int, column: str) -> np.ndarray:
        expected = 3 if self.volumes else 2
        if labels.ndim == expected + 1 and labels.shape[-1] in (3, 4) and not self.volumes:
            if not (labels[..., :3] == labels[..., :1]).all():
                raise InputError(f"{path}: a colour mask (channels differ) cannot be read as label values "
                                 f"({self._where(row, column)})")  # fmt: skip
            labels = labels[..., 0]
        if labels.ndim != expected:
            raise InputError(f"{path}: mask of shape {labels.shape}, expected a {expected}D label map "
                             f"({self._where(row, column)})")  # fmt: skip
        return labels

    def _check(self, image: np.ndarray, labels: np.ndarray, path: Path, mask_path: Path, row: int) -> np.ndarray:
        if self.volumes:
            if image.ndim != 3 or image.shape != labels.shape:
                raise InputError(f"{path} {image.shape} and its mask {mask_path} {labels.shape}: expected two "
                                 f"volumes of the same (slices, H, W) shape ({self._where(row, self.column)})")  # fmt: skip
            return image
        if image.shape[:2] != labels.shape:
            raise InputError(f"{path} {image.shape[:2]} and its mask {mask_path} {labels.shape} differ in size "
                             f"({self._where(row, self.column)})")  # fmt: skip
        return image


def _unit_volume(volume: np.ndarray) -> np.ndarray:
    """Per-volume min–max to [0, 1] (FairMedFM's preprocessing of 3D data), so every slice keeps the volume's
    intensity scale instead of being stretched on its own by the model's preprocessing."""
    volume = volume.astype(np.float32, copy=False)
    low, high = float(volume.min()), float(volume.max())
    if not math.isfinite(low) or not math.isfinite(high):
        raise InputError("volume contains NaN or infinite values")
    if high <= low:
        return np.zeros_like(volume)
    return (volume - low) / (high - low)


# ------------------------------------------------------------------------------------------------------ running


def _open_mask_archive(stack: Any, path: str | Path) -> Any:
    """A ``.npz`` (a zip of ``.npy`` members, as numpy writes it) filled one mask at a time — numpy's savez needs
    every array in memory at once — published atomically when ``stack`` closes without error."""
    import zipfile

    from fairfm.tableio import atomic_path

    tmp = stack.enter_context(atomic_path(path))
    return stack.enter_context(zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True))


def _write_mask(archive: Any, key: str, mask: np.ndarray) -> None:
    with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array(member, np.ascontiguousarray(mask, dtype=bool), allow_pickle=False)


def read_masks(path: str | Path, keys: Sequence[str]) -> list[np.ndarray]:
    """The kept masks a run saved (``pred_mask_file`` / ``pred_mask_key`` columns of its PredictionTable)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: mask archive not found (was the run made with hparams.save_masks?)")
    with np.load(path, allow_pickle=False) as archive:
        missing = [k for k in keys if k not in archive.files]
        if missing:
            raise InputError(f"{path}: no mask {missing[0]!r}")
        return [archive[k] for k in keys]


@dataclass
class SamPromptResult:
    """Rows of a segmentation PredictionTable (without ``run_id``) and what to record in meta.json."""

    predictions: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)


def _location_columns(table: pd.DataFrame, column: str = "path") -> list[str]:
    from fairfm.data.sampletable import LOCATOR_KINDS

    return [c for c in table.columns
            if str(c) in ("path", column) or str(c).startswith("path_mask") or str(c).startswith(LOCATOR_KINDS)]  # fmt: skip


def run_sam_prompting(model: "PromptableSegmenter", table: pd.DataFrame, structures: Structures, *,
                      root: str | Path, prompt: str = "center", n_points: int = 5, jitter: float = 0.0,
                      jitter_cap: float = 20.0, multimask: bool = True, seed: int = 0, volumes: bool | None = None,
                      level: str = "volume", masks_out: str | Path | None = None, column: str = "path",
                      progress: bool = True) -> SamPromptResult:  # fmt: skip
    """Prompt ``model`` with every structure of every row of ``table`` and score the kept mask.

    ``volumes``: whether rows are 3D volumes (None: decided from the first row's mask); ``column``: the image column
    (``path``, or ``path_<view>`` of a multi-view sample). Returns one row per
    (sample, structure) — per (slice, structure) with ``volumes`` and ``level="slice"`` — with
    ``sample_id``, ``task``, ``split``, ``dice``, ``iou``, the overlap counts, the model's predicted IoU (2D and
    slices), the prompt (2D and slices), the ground-truth file locations and the sample's ``group_*`` columns.
    With ``masks_out`` the kept masks are written to that ``.npz`` (one boolean array per row — the whole predicted
    volume for a volume row — under the row's ``pred_mask_key``), atomically once every row is done.
    """
    if prompt not in PROMPTS:
        raise InputError(f"hparams.prompt: {prompt!r} is not one of {', '.join(PROMPTS)}")
    if level not in LEVELS:
        raise InputError(f"hparams.level: {level!r} is not one of {', '.join(LEVELS)}")
    if not structures:
        raise InputError("no structure to segment")
    table = table.reset_index(drop=True)
    reader = _PairReader(table, Path(root), volumes=volumes, column=column)
    volumes = reader.volumes
    splits = table["split"].astype(str).tolist() if "split" in table.columns else ["all"] * len(table)
    groups = [c for c in table.columns if str(c).startswith("group_")]
    locations = _location_columns(table, column)
    preprocess = getattr(model, "preprocess", None)
    per_slice = volumes and level == "slice"
    rows: list[dict[str, Any]] = []
    skipped: dict[str, dict[str, int]] = {}
    prompted = 0

    def context(row: int) -> dict[str, Any]:
        out = {"split": splits[row]}
        out.update({c: table[c].iloc[row] for c in locations})
        out.update({c: str(table[c].iloc[row]) for c in groups})
        return out

    def prompt_and_score(image: np.ndarray, truth: np.ndarray, sample_id: str, name: str,
                         slice_index: int) -> tuple[np.ndarray, float, Prompt]:  # fmt: skip
        rng = prompt_rng(seed, sample_id, name, slice_index)
        chosen = make_prompt(truth, prompt, rng, n_points=n_points)
        if jitter > 0:
            height, width = truth.shape
            chosen = jitter_prompt(chosen, mask_box(truth), rng, jitter=jitter, cap=jitter_cap, shape=(height, width),
                                   scale=model_frame_scale(preprocess, height, width))  # fmt: skip
        pred, score = best_mask(model, image, chosen, multimask=multimask)
        if pred.shape != truth.shape:
            raise ValueError(f"{sample_id}: the model returned a {pred.shape} mask for a {truth.shape} image")
        return pred, score, chosen

    from contextlib import ExitStack

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())  # fmt: skip
    with ExitStack() as stack:
        archive = _open_mask_archive(stack, masks_out) if masks_out is not None else None

        def keep(mask: np.ndarray) -> None:
            if archive is not None:
                rows[-1]["pred_mask_key"] = key = f"m{len(rows) - 1}"
                _write_mask(archive, key, mask)

        bar = stack.enter_context(Progress(*columns, console=Console(stderr=True), disable=not progress,
                                           transient=True))  # fmt: skip
        task_id = bar.add_task(f"sam_prompt ({prompt})", total=len(table))
        for row in range(len(table)):
            sample_id = reader.ids[row]
            image, labels = reader.read(row)
            if volumes:
                image = _unit_volume(image)
            for name, values in structures.items():
                truth_all = structure_mask(labels, values)
                if not truth_all.any():
                    counts = skipped.setdefault(name, {})
                    counts[splits[row]] = counts.get(splits[row], 0) + 1
                    # Listed, not scored: without a prompt "both empty" would score 1.0 for nothing.
                    rows.append({"sample_id": sample_id, "task": name, **context(row), "dice": math.nan,
                                 "iou": math.nan, "intersection": 0, "pred_area": 0, "true_area": 0,
                                 "note": EMPTY_NOTE,
                                 **({"volume_id": sample_id, "slice_index": -1} if per_slice else {})})  # fmt: skip
                    continue
                if not volumes:
                    pred, score, used = prompt_and_score(image, truth_all, sample_id, name, -1)
                    prompted += 1
                    inter, p_area, t_area = overlap(pred, truth_all)
                    dice, iou = dice_iou(inter, p_area, t_area)
                    rows.append({"sample_id": sample_id, "task": name, **context(row), "dice": dice, "iou": iou,
                                 "intersection": inter, "pred_area": p_area, "true_area": t_area,
                                 "pred_iou": score, "prompt": used.to_json()})  # fmt: skip
                    keep(pred)
                    continue
                totals = np.zeros(3, dtype=np.int64)
                n_prompted = 0
                predicted = np.zeros(truth_all.shape, dtype=bool) if archive is not None and not per_slice else None
                for k in np.flatnonzero(truth_all.reshape(len(truth_all), -1).any(axis=1)):
                    pred, score, used = prompt_and_score(image[k], truth_all[k], sample_id, name, int(k))
                    counts = overlap(pred, truth_all[k])
                    totals += counts
                    n_prompted += 1
                    if predicted is not None:
                        predicted[k] = pred
                    if per_slice:
                        dice, iou = dice_iou(*counts)
                        rows.append({"sample_id": f"{sample_id}:slice{int(k)}", "task": name, **context(row),
                                     "dice": dice, "iou": iou, "intersection": counts[0], "pred_area": counts[1],
                                     "true_area": counts[2], "pred_iou": score, "prompt": used.to_json(),
                                     "volume_id": sample_id, "slice_index": int(k)})  # fmt: skip
                        keep(pred)
                prompted += n_prompted
                if not per_slice:
                    dice, iou = dice_iou(*(int(v) for v in totals))
                    rows.append({"sample_id": sample_id, "task": name, **context(row), "dice": dice, "iou": iou,
                                 "intersection": int(totals[0]), "pred_area": int(totals[1]),
                                 "true_area": int(totals[2]), "n_slices": int(len(truth_all)),
                                 "n_slices_prompted": n_prompted})  # fmt: skip
                    if predicted is not None:
                        keep(predicted)
            bar.advance(task_id)
        if not any("note" not in r for r in rows):  # raised inside the stack: no empty mask archive is published
            raise InputError("sam_prompt: no sample has a non-empty ground-truth mask for "
                             f"{', '.join(structures)} — nothing can be prompted")  # fmt: skip
    predictions = pd.DataFrame.from_records(rows)
    if masks_out is not None:
        predictions.insert(predictions.columns.get_loc("pred_mask_key"), "pred_mask_file", str(masks_out))
    if "note" not in predictions.columns:
        predictions["note"] = ""
    predictions["note"] = predictions["note"].fillna("").astype(str)
    notes = [f"{name}: {n} {'volume' if volumes else 'sample'}(s) in {split} with an empty ground-truth mask were "
             "not prompted and are not scored (dice/iou NaN)" for name, counts in skipped.items()
             for split, n in counts.items()]  # fmt: skip
    if per_slice:
        notes.append("per-slice rows (FairMedFM compatibility view): slices of one volume are not independent, so "
                     "bootstrap intervals over them are too narrow; the volume level is the default")
    meta = {
        "prompt": prompt,
        "n_points": n_points if prompt == "rands" else None,
        "jitter": {"sigma_fraction": jitter, "cap_px": jitter_cap, "frame": "model"} if jitter > 0 else None,
        "multimask": multimask,
        "structures": {n: (None if v is None else [float(x) for x in v]) for n, v in structures.items()},
        "level": ("slice" if per_slice else "volume") if volumes else "image",
        "compatibility_view": bool(per_slice),
        "volume_intensity": "per-volume min-max to [0, 1]" if volumes else None,
        "n_prompts": prompted,
        "n_rows": int(len(predictions)),
        "empty_ground_truth": skipped,
        "notes": notes,
    }
    return SamPromptResult(predictions, meta)
