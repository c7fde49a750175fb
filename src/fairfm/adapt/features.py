"""Frozen-encoder feature extraction with a content-addressed, memory-mapped, resumable cache.

A model's embeddings of a dataset are computed once: the cache folder name is a hash of (weights content and
architecture overrides, preprocessing, SampleTable: sample ids, the chosen path column and the array each row reads
inside its file, and each image file's size and mtime), so
ten probes × five seeds reuse one forward pass, and a changed checkpoint, transform, table or image file is never
served stale features. Layout of ``OUT/<key>/``::

    meta.json       what the key was made of; ``complete`` once every sample is done
    features.npy    float32 (rows, D), opened with ``np.load(mmap_mode="r")`` — never read whole into memory
    index.parquet   row → sample_id, slice_index (−1 for 2D images; 0… for slices of a volume), table row
    done.npy        bool per sample: resuming skips the samples already written

Each row's image is the array its locator columns name for the chosen path column (``column="path_oct"`` reads
``npz_key_oct`` of a Harvard-lab npz, TUSC rows read frame ``h5_index`` of dataset ``h5_key``; the convention of
:mod:`fairfm.data.sampletable`). A sample whose array is a volume (NIfTI, DICOM series, a 3D NPZ/NPY/HDF5/MAT array,
as read by :mod:`fairfm.data.images`) gets one row per slice.
Images are decoded in DataLoader worker processes while the main process runs the encoder under
``torch.inference_mode``; each finished batch is flushed before its samples are marked done, so an interrupted
extraction resumes where it stopped. An advisory file lock per entry makes concurrent extractors of the
same entry (a sweep on a process pool) wait for the first instead of writing twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fairfm.errors import InputError
from fairfm.tableio import atomic_path, read_table, write_text_atomic

if TYPE_CHECKING:
    from fairfm.models.base import Encoder

FORMAT_VERSION = 1


@dataclass
class FeatureSet:
    """Cached features: ``features`` (rows, D) read-only memmap aligned with ``index`` (sample_id, slice_index)."""

    path: Path
    key: str
    features: np.ndarray
    index: pd.DataFrame
    computed: int  # samples encoded by this call (0 when everything came from the cache)
    meta: dict[str, Any]

    def by_sample(self) -> dict[str, np.ndarray]:
        """Rows of each sample (one row for an image, one per slice for a volume)."""
        groups = self.index.groupby("sample_id", sort=False).indices
        return {str(k): self.features[v] for k, v in groups.items()}


# ------------------------------------------------------------------------------------------------ inputs


def load_sample_table(data: str | os.PathLike | pd.DataFrame) -> tuple[pd.DataFrame, Path | None]:
    """A SampleTable from ``DIR/samples.parquet`` (or a table file, or a DataFrame) and its folder."""
    from fairfm.data.sampletable import validate_sample_table

    if isinstance(data, pd.DataFrame):
        return validate_sample_table(data.reset_index(drop=True)), None
    path = Path(data)
    if path.is_dir():
        table_path = path / "samples.parquet"
        if not table_path.is_file():
            raise InputError(f"{path}: no samples.parquet (a prepared SampleTable) in this folder")
    else:
        table_path = path
    frame = read_table(table_path)
    return validate_sample_table(frame.reset_index(drop=True), source=str(table_path)), table_path.parent


def default_root(table_dir: Path) -> Path:
    """The folder a prepared table's paths are relative to: the release ``root`` recorded in ``dataset.json``
    by ``fairfm datasets prepare`` when that folder exists, else the table's own folder (synthetic datasets and
    hand-made tables keep their images beside ``samples.parquet``)."""
    manifest = table_dir / "dataset.json"
    if manifest.is_file():
        try:
            recorded = json.loads(manifest.read_text(encoding="utf-8")).get("root")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if recorded and Path(recorded).is_dir():
            return Path(recorded)
    return table_dir


@dataclass(frozen=True)
class ImageSource:
    """Where one SampleTable row's image is: the file, and the array inside it (NPZ/MAT key, HDF5 key and
    frame index) named by the row's locator columns for the chosen path column (:mod:`fairfm.data.sampletable`)."""

    path: Path
    key: str | None = None
    index: int | None = None

    def describe(self) -> str:
        parts = [str(self.path)]
        if self.key is not None:
            parts.append(f"[{self.key}]")
        if self.index is not None:
            parts.append(f"[{self.index}]")
        return "".join(parts)


def image_sources(frame: pd.DataFrame, base: Path, column: str = "path") -> list[ImageSource]:
    """Per row, the file and array that ``column`` reads (keys and indices from
    :func:`fairfm.data.images.row_locator`)."""
    from fairfm.data.images import row_locator
    from fairfm.data.sampletable import locator_column

    locator_column(column, "npz_key")  # a column that is not path / path_<view> fails here, named
    if column not in frame.columns:
        views = ", ".join(c for c in frame.columns if c == "path" or c.startswith("path_"))
        raise InputError(f"SampleTable has no column {column!r} (path columns: {views})")
    keys, indices = row_locator(frame, column)
    sources = []
    for row, value in enumerate(frame[column].tolist()):
        if (
            value is None
            or value is pd.NA
            or (isinstance(value, float) and np.isnan(value))
            or str(value) == ""
        ):
            raise InputError(
                f"SampleTable column {column!r}, row {row} (sample_id {frame['sample_id'].iloc[row]!r}): no file "
                "for this view; extract features from the rows that have one"
            )
        sources.append(ImageSource(base / str(value), keys[row], indices[row]))
    return sources


def table_hash(
    frame: pd.DataFrame,
    *,
    file_stamps: Sequence[str] = (),
    column: str = "path",
    locators: Sequence[tuple[str | None, int | None]] = (),
) -> str:
    """Hash of what determines the images read, in order: ``sample_id`` and the path ``column`` of every row, the
    array each row reads inside its file (``locators``: key and index), plus each file's size and modification time
    (so images regenerated or replaced under the same names are not served stale features; hashing every image's
    bytes would cost a full read of the dataset). Two views of the same files (``path`` → ``slo_fundus``,
    ``path_oct`` → ``oct_bscans``) therefore never share an entry."""
    digest = hashlib.sha256()
    for name, series in (("sample_id", frame["sample_id"]), (column, frame[column])):
        values = series.astype(str).to_numpy(dtype=object)
        digest.update(name.encode())
        digest.update("\x1f".join(values).encode("utf-8"))
    if locators:
        digest.update(b"locators")
        digest.update("\x1f".join(f"{k!r}:{i!r}" for k, i in locators).encode("utf-8"))
    digest.update("\x1f".join(file_stamps).encode())
    return digest.hexdigest()[:32]


def feature_cache_key(weights_id: str, preprocess_key: str, sample_table_hash: str) -> str:
    payload = json.dumps(
        {
            "v": FORMAT_VERSION,
            "weights": weights_id,
            "preprocess": preprocess_key,
            "table": sample_table_hash,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


# ------------------------------------------------------------------------------------------------ decoding

#: Formats whose arrays are stored as plain numeric arrays: their stored integer type is kept (see read_array).
_ARRAY_KINDS = ("npz", "npy", "hdf5", "mat")


def read_array(path: str | os.PathLike, *, key: str | None = None, index: int | None = None) -> np.ndarray:
    """Decode the array a SampleTable row names: ``(H, W)`` grey, ``(H, W, C)`` colour or ``(D, H, W)`` volume.

    ``key`` / ``index`` select the array inside NPZ/MAT/HDF5 files, exactly as :func:`fairfm.data.images.read_image`
    (which does the reading, with its key aliases and error messages). The model's preprocessing maps integer
    pixels to [0, 1] by their type's range (uint8 ÷ 255, uint16 ÷ 65535) — as the models' authors did with PIL — but
    min–max rescales floats outside [0, 1]. ``read_image`` returns float32, which would turn an 8-bit fundus
    photograph stored in an NPZ into a min–max stretched one, so:

    * PNG/JPEG/TIFF are decoded here with Pillow, keeping their integer type (and skipping the float copy);
    * NPZ/NPY/HDF5/MAT arrays stored as uint8/uint16 are cast back to that type (exact: float32 holds every
      16-bit integer), read from the array's header without decoding it twice;
    * DICOM, NIfTI and MetaImage stay float32 in modality units (rescale slope/intercept applied), which the
      preprocessing windows by min–max.
    """
    from fairfm.data import images

    path = Path(path)
    kind = images.image_kind(path)
    if kind == "pil":
        return _read_pil(path)
    array = images.read_image(path, key=key, index=index)
    if kind in _ARRAY_KINDS:
        probe = _probe(path, kind, key)
        if probe is not None and probe[0].kind == "u" and probe[0].itemsize <= 2:
            array = array.astype(probe[0])
    return array


def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("L", "RGB", "I;16", "I;16B", "I", "F"):
                image = image.convert("RGB")
            return np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: cannot be read as an image ({exc})") from None


def _probe(path: Path, kind: str, key: str | None) -> tuple[np.dtype, tuple[int, ...]] | None:
    """Stored dtype and shape of the array ``read_image(path, key=key)`` reads, from headers only (no pixel
    decoding); None where the format gives no cheap header. The key is resolved by the data package's own alias
    rules (``fairfm.data.images._pick_npz_key``), so the probe and the reader always name the same array."""
    from fairfm.data.images import _pick_npz_key

    try:
        if kind == "npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            return array.dtype, tuple(array.shape)
        if kind == "npz":
            with np.load(path, allow_pickle=False) as archive:
                name = _pick_npz_key(list(archive.files), key, path)
                with archive.zip.open(f"{name}.npy") as member:
                    version = np.lib.format.read_magic(member)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read_header(member)
                return np.dtype(dtype), tuple(shape)
        if kind == "hdf5":
            import h5py

            with h5py.File(path, "r") as handle:
                name = (
                    key
                    if key is not None and key in handle
                    else _pick_npz_key(list(handle.keys()), key, path)
                )
                dataset = handle[name]
                return np.dtype(dataset.dtype), tuple(dataset.shape)
        if kind == "mat":
            from scipy.io import whosmat

            entries = {name: (shape, cls) for name, shape, cls in whosmat(path)}
            name = _pick_npz_key(list(entries), key or "volume", path)
            shape, cls = entries[name]
            return np.dtype(cls), tuple(shape)
    except Exception:  # noqa: BLE001 - no cheap header: the caller falls back to decoding (which names errors)
        return None
    return None


def is_volume(array: np.ndarray, kind: str = "npy") -> bool:
    """Whether a decoded array is a stack of slices, by the data package's rule for files of ``kind``."""
    from fairfm.data.images import _is_volume

    return _is_volume(array, kind)


def count_slices(path: str | os.PathLike, *, key: str | None = None, index: int | None = None) -> int:
    """Slices the array at (``path``, ``key``, ``index``) contributes (1 for 2D images), from headers where the
    format has them, else :func:`fairfm.data.images.volume_depth` (which decodes the array)."""
    from fairfm.data import images

    path = Path(path)
    kind = images.image_kind(path)
    if kind in ("pil", "dicom"):
        return 1
    if kind in _ARRAY_KINDS:
        probe = _probe(path, kind, key)
        if probe is not None:
            _, shape = probe
            if kind == "mat" and len(shape) == 3:  # MATLAB stacks slices last; the reader moves them first
                shape = (shape[2], shape[0], shape[1])
            if kind == "hdf5" and index is not None:  # one item along the first axis (a TUSC frame)
                if not shape or not -shape[0] <= index < shape[0]:
                    return images.volume_depth(path, key=key, index=index)  # the reader names the bad index
                shape = shape[1:]
            dummy = np.broadcast_to(np.zeros((), dtype=np.float32), shape)  # shape only, no memory
            return int(shape[0]) if images._is_volume(dummy, kind) else 1
    return images.volume_depth(path, key=key, index=index)


class _Samples:
    """torch Dataset of samples → (sample position, preprocessed slices (k, 3, S, S), error message)."""

    def __init__(self, sources: Sequence[ImageSource], rows: Sequence[int], preprocess: Any):
        self.sources, self.rows, self.preprocess = list(sources), list(rows), preprocess

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int):
        import torch

        from fairfm.data.images import image_kind

        source = self.sources[i]
        try:
            array = read_array(source.path, key=source.key, index=source.index)
            slices = list(array) if is_volume(array, image_kind(source.path)) else [array]
            return self.rows[i], torch.stack([self.preprocess(s) for s in slices]), ""
        # any decoding failure is reported with its file and row, not a worker traceback
        except Exception as exc:  # noqa: BLE001
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return (
                self.rows[i],
                None,
                f"{source.describe()} (SampleTable row {self.rows[i]}): cannot be read ({detail})",
            )


def _collate(items):
    return items


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)  # decoding workers must not compete with the encoder's threads


# ------------------------------------------------------------------------------------------------ extraction


def extract_features(
    data: str | os.PathLike | pd.DataFrame,
    model: str | Encoder,
    *,
    out: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    trust_checkpoint: bool = False,
    root: str | os.PathLike | None = None,
    batch_size: int = 16,
    num_workers: int | None = None,
    threads: int | None = None,
    progress: bool = True,
    model_options: dict[str, Any] | None = None,
    column: str = "path",
) -> FeatureSet:
    """Embed every sample of a SampleTable with a frozen encoder, through the feature cache.

    The default batch of 16: larger batches were not faster on 2 CPU cores (benchmarks/bench_features.py).

    ``data``: a folder with ``samples.parquet``, a table file, or a DataFrame; image paths are relative to
    ``root`` (default: the release root recorded in the folder's ``dataset.json``, else the table's folder).
    ``column``: the path column (view) to embed — ``path``, or ``path_<view>`` such as ``path_oct``; each row reads
    the array its locator columns name for that view (``npz_key_oct``, ``h5_key`` / ``h5_index``, …, see
    :mod:`fairfm.data.sampletable`), and a 3D array gives one feature row per slice. ``model``: a registered model
    name (built with ``checkpoint`` and ``model_options``) or an already built
    :class:`~fairfm.models.base.Encoder`. A complete cache entry is returned
    without building the model; a partial one is resumed.
    """
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    frame, table_dir = load_sample_table(data)
    base = Path(root) if root is not None else (default_root(table_dir) if table_dir is not None else None)
    if base is None:
        raise InputError("a DataFrame SampleTable needs root= (the folder its paths are relative to)")
    if not base.is_dir():
        raise InputError(f"data root {base} is not a folder")
    sources = image_sources(frame, base, column)
    stamps, missing, seen = [], [], {}
    for row, source in enumerate(sources):
        if source.path not in seen:  # many rows may share one file (TUSC, OL3I: one HDF5 for the dataset)
            try:
                stat = source.path.stat()
                seen[source.path] = f"{stat.st_size}:{stat.st_mtime_ns}"
            except OSError:
                seen[source.path] = None
        if seen[source.path] is None:
            missing.append((row, source.path))
        stamps.append(seen[source.path] or "")
    if missing:
        row, path = missing[0]
        raise InputError(
            f"{path}: image file not found (SampleTable row {row}, column {column!r}; "
            f"{len(missing)} missing in all)"
        )

    options = dict(model_options or {})
    encoder: Encoder | None = None
    if isinstance(model, str):
        from fairfm.models import get_model
        from fairfm.models.checkpoints import ensure_offline, resolve_checkpoint, weights_id

        card = get_model(model)
        if card.family == "segmentation":
            raise InputError(
                f"model {card.name!r} is a promptable segmentation model; feature extraction needs an "
                "image encoder (family vision or vision-language)"
            )
        ensure_offline()
        weights = resolve_checkpoint(card, checkpoint)
        wid = weights_id(weights, extra=f"{card.name}|{sorted(options.items())!r}")
        preprocess_key, model_name = card.preprocess.key(), card.name
    else:
        encoder = model
        if not hasattr(encoder, "encode_image"):
            raise InputError(f"model {encoder.card.name!r} has no image encoder to extract features with")
        wid, preprocess_key, model_name = encoder.weights_id, encoder.preprocess.key(), encoder.card.name
    locators = [(s.key, s.index) for s in sources]
    thash = table_hash(frame, file_stamps=stamps, column=column, locators=locators)
    key = feature_cache_key(wid, preprocess_key, thash)
    folder = Path(out) / key
    meta_path = folder / "meta.json"

    meta = _read_meta(meta_path)
    if meta is not None and meta.get("complete"):
        return _open(folder, key, meta, computed=0)

    if encoder is None:
        # Built before the entry's folder exists: a checkpoint that cannot be loaded leaves no folder behind.
        from fairfm.models import create_model

        encoder = create_model(model, checkpoint, trust_checkpoint=trust_checkpoint, **options)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    # a second process on the same entry waits, then finds it complete
    with _removed_unless_started(folder, created), _exclusive(folder / ".lock"):
        meta = _read_meta(meta_path)
        if meta is not None and meta.get("complete"):
            return _open(folder, key, meta, computed=0)
        slice_counts = _slice_counts(sources, column, progress=progress)
        offsets = np.concatenate([[0], np.cumsum(slice_counts)])
        n_rows = int(offsets[-1])
        if meta is None or meta.get("rows") != n_rows or meta.get("dim") != encoder.embed_dim:
            meta = _create_entry(
                folder,
                frame,
                slice_counts,
                encoder,
                key=key,
                wid=wid,
                table_hash_=thash,
                preprocess_key=preprocess_key,
                model_name=model_name,
                column=column,
                locators=locators,
            )
        features = np.load(folder / "features.npy", mmap_mode="r+")
        done = np.load(folder / "done.npy", mmap_mode="r+")
        todo = np.flatnonzero(~done)
        computed = _run(
            encoder,
            sources,
            todo,
            offsets,
            features,
            done,
            batch_size=batch_size,
            num_workers=num_workers,
            threads=threads,
            progress=progress,
            volumes=bool((slice_counts > 1).any()),
            name=model_name,
        )
        del features, done
        meta["complete"] = True
        meta["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_text_atomic(meta_path, json.dumps(meta, indent=2))
        return _open(folder, key, meta, computed=computed)


def _slice_counts(sources: Sequence[ImageSource], column: str, *, progress: bool) -> np.ndarray:
    """Feature rows per sample, from headers where the format has them (formats without one — DICOM series,
    MetaImage — are decoded, so a progress bar shows on large tables)."""
    from rich.console import Console
    from rich.progress import Progress

    counts = np.empty(len(sources), dtype=np.int64)
    with Progress(console=Console(stderr=True), transient=True, disable=not progress) as bar:
        task = bar.add_task("counting slices", total=len(sources))
        for row, source in enumerate(sources):
            try:
                counts[row] = count_slices(source.path, key=source.key, index=source.index)
            except InputError as exc:
                raise InputError(f"{exc} (SampleTable row {row}, column {column!r})") from None
            bar.advance(task)
    return counts


@contextmanager
def _removed_unless_started(folder: Path, created: bool) -> Iterator[None]:
    """On failure, remove an entry folder this call created that never got its meta.json (it holds nothing but the
    lock file). A partly filled entry (meta.json, features.npy, done.npy) is kept on purpose: the next call resumes
    it."""
    try:
        yield
    except BaseException:
        if created and not (folder / "meta.json").exists() and {p.name for p in folder.iterdir()} <= {".lock"}:
            shutil.rmtree(folder, ignore_errors=True)
        raise


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An advisory lock (flock) held while one process extracts into a cache entry."""
    import fcntl

    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_meta(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    needed = ("features.npy", "done.npy", "index.parquet")
    return meta if all((path.parent / n).is_file() for n in needed) else None


def _create_entry(
    folder: Path,
    frame: pd.DataFrame,
    slice_counts: np.ndarray,
    encoder: Encoder,
    *,
    key: str,
    wid: str,
    table_hash_: str,
    preprocess_key: str,
    model_name: str,
    column: str = "path",
    locators: Sequence[tuple[str | None, int | None]] = (),
) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    n_rows = int(slice_counts.sum())
    row_of = np.repeat(np.arange(len(frame)), slice_counts)
    start = np.repeat(np.cumsum(slice_counts) - slice_counts, slice_counts)
    slice_index = np.where(np.repeat(slice_counts > 1, slice_counts), np.arange(n_rows) - start, -1)
    index = pd.DataFrame(
        {
            "sample_id": frame["sample_id"].astype(str).to_numpy()[row_of],
            "slice_index": slice_index.astype(np.int64),
            "table_row": row_of.astype(np.int64),
        }
    )
    with atomic_path(folder / "index.parquet") as tmp:
        index.to_parquet(tmp, index=False)
    for name, shape, dtype in (
        ("features.npy", (n_rows, encoder.embed_dim), np.float32),
        ("done.npy", (len(frame),), np.bool_),
    ):
        with atomic_path(folder / name) as tmp:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            array.flush()
            del array
    meta = {
        "format": FORMAT_VERSION,
        "key": key,
        "model": model_name,
        "weights_id": wid,
        "preprocess_key": preprocess_key,
        "preprocess": encoder.preprocess.to_dict(),
        "table_hash": table_hash_,
        "column": column,
        # the arrays read, as recorded (e.g. ["oct_bscans"] for an OCT view); per-row indices are in the table
        "array_keys": sorted({str(k) for k, _ in locators if k is not None}),
        "rows": n_rows,
        "samples": len(frame),
        "dim": encoder.embed_dim,
        "complete": False,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_text_atomic(folder / "meta.json", json.dumps(meta, indent=2))
    return meta


def _open(folder: Path, key: str, meta: dict[str, Any], *, computed: int) -> FeatureSet:
    features = np.load(folder / "features.npy", mmap_mode="r")
    index = pd.read_parquet(folder / "index.parquet")
    return FeatureSet(path=folder, key=key, features=features, index=index, computed=computed, meta=meta)


def _run(
    encoder: Encoder,
    sources: list[ImageSource],
    todo: np.ndarray,
    offsets: np.ndarray,
    features: np.ndarray,
    done: np.ndarray,
    *,
    batch_size: int,
    num_workers: int | None,
    threads: int | None,
    progress: bool,
    volumes: bool,
    name: str,
) -> int:
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from torch.utils.data import DataLoader

    if len(todo) == 0:
        return 0
    cores = os.cpu_count() or 1
    workers = min(2, max(0, cores - 1)) if num_workers is None else num_workers
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or cores)
    dataset = _Samples([sources[i] for i in todo], todo.tolist(), encoder.preprocess)
    loader = DataLoader(
        dataset,
        batch_size=1 if volumes else batch_size,
        num_workers=workers,
        collate_fn=_collate,
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} images/s"),
        TimeRemainingColumn(),
    ]
    started, images, computed = time.perf_counter(), 0, 0
    try:
        # on stderr, so stdout carries only results (scripts and CI logs read it)
        with Progress(*columns, console=Console(stderr=True), disable=not progress, transient=False) as bar:
            task = bar.add_task(f"features {name}", total=len(todo), rate="–")
            for items in loader:
                errors = [message for _, _, message in items if message]
                if errors:
                    raise InputError(errors[0])
                positions = [pos for pos, _, _ in items]
                for pos, tensor, _ in items:
                    if tensor.shape[0] != offsets[pos + 1] - offsets[pos]:
                        raise InputError(
                            f"{sources[pos].describe()} (SampleTable row {pos}): "
                            f"{tensor.shape[0]} slices decoded, "
                            f"{offsets[pos + 1] - offsets[pos]} expected from its header"
                        )
                stacked = torch.cat([tensor for _, tensor, _ in items])
                outputs = [encoder.encode_image(chunk) for chunk in stacked.split(batch_size)]
                result = torch.cat(outputs).numpy()
                if result.shape[1] != features.shape[1]:
                    raise InputError(
                        f"model {name!r} returned {result.shape[1]}-d features, expected {features.shape[1]}"
                    )
                rows = np.concatenate([np.arange(offsets[p], offsets[p + 1]) for p in positions])
                features[rows] = result
                features.flush()  # features reach the disk before their samples are marked done
                done[positions] = True
                done.flush()
                images += len(rows)
                computed += len(positions)
                rate = images / max(time.perf_counter() - started, 1e-9)
                bar.update(task, advance=len(positions), rate=f"{rate:.1f}")
    finally:
        torch.set_num_threads(previous_threads)
    return computed
