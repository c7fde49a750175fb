"""Frozen-encoder feature extraction with a content-addressed, memory-mapped, resumable cache.

A model's embeddings of a dataset are computed once: the cache folder name is a hash of (weights content and
architecture overrides, preprocessing, SampleTable: sample ids, paths and each image file's size and mtime), so
ten probes × five seeds reuse one forward pass, and a changed checkpoint, transform, table or image file is never
served stale features. Layout of ``OUT/<key>/``::

    meta.json       what the key was made of; ``complete`` once every sample is done
    features.npy    float32 (rows, D), opened with ``np.load(mmap_mode="r")`` — never read whole into memory
    index.parquet   row → sample_id, slice_index (−1 for 2D images; 0… for slices of a volume), table row
    done.npy        bool per sample: resuming skips the samples already written

A sample whose file is a volume (NIfTI, or a 3D ``.npy``/``.npz`` stored slices-first, as read by
:mod:`fairfm.data.images`) gets one row per slice.
Images are decoded in DataLoader worker processes while the main process runs the encoder under
``torch.inference_mode``; each finished batch is flushed before its samples are marked done, so an interrupted
extraction resumes where it stopped. An advisory file lock per entry makes concurrent extractors of the
same entry (a sweep on a process pool) wait for the first instead of writing twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

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


def table_hash(frame: pd.DataFrame, *, file_stamps: Sequence[str] = ()) -> str:
    """Hash of what determines the images read, in order: ``sample_id`` and ``path`` of every row, plus each
    file's size and modification time (so images regenerated or replaced under the same names are not served
    stale features; hashing every image's bytes would cost a full read of the dataset)."""
    digest = hashlib.sha256()
    for column in ("sample_id", "path"):
        values = frame[column].astype(str).to_numpy(dtype=object)
        digest.update(column.encode())
        digest.update("\x1f".join(values).encode("utf-8"))
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


def read_array(path: Path) -> np.ndarray:
    """Decode one file: ``(H, W)`` grey, ``(H, W, C)`` colour, or ``(D, H, W)`` volume (slices first).

    DICOM, NIfTI and NPY/NPZ go through :func:`fairfm.data.images.read_image`. Pillow images are decoded here
    keeping their integer dtype, because ``read_image`` returns float32 and the model's preprocessing needs the
    bit depth to map 8-/16-bit pixels to [0, 1] exactly as the model's authors did.
    """
    from fairfm.data import images

    if images.image_kind(path) != "pil":
        return images.read_image(path)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("L", "RGB", "I;16", "I;16B", "I", "F"):
                image = image.convert("RGB")
            return np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: cannot be read as an image ({exc})") from None


def is_volume(array: np.ndarray) -> bool:
    return array.ndim == 3 and array.shape[-1] not in (3, 4)


def count_slices(path: Path) -> int:
    """Slices a file contributes (1 for 2D images), from the header where the format has one."""
    from fairfm.data import images

    if images.image_kind(path) in ("pil", "dicom"):
        return 1
    return images.volume_depth(path)


class _Samples:
    """torch Dataset of samples → (sample position, preprocessed slices (k, 3, S, S), error message)."""

    def __init__(self, paths: Sequence[Path], rows: Sequence[int], positions: Sequence[int], preprocess: Any):
        self.paths, self.rows, self.positions, self.preprocess = (
            list(paths),
            list(rows),
            list(positions),
            preprocess,
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        import torch

        path = self.paths[i]
        try:
            array = read_array(path)
            slices = list(array) if is_volume(array) else [array]
            return self.positions[i], torch.stack([self.preprocess(s) for s in slices]), ""
        except (
            Exception
        ) as exc:  # any decoding failure is reported with its file and row, not a worker traceback
            detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return (
                self.positions[i],
                None,
                f"{path} (SampleTable row {self.rows[i]}): cannot be read ({detail})",
            )


def _collate(items):
    return items


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)  # decoding workers must not compete with the encoder's threads


# ------------------------------------------------------------------------------------------------ extraction


def extract_features(
    data: str | os.PathLike | pd.DataFrame,
    model: "str | Encoder",
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
) -> FeatureSet:
    """Embed every sample of a SampleTable with a frozen encoder, through the feature cache.

    The default batch of 16: larger batches were not faster on 2 CPU cores (benchmarks/bench_features.py).

    ``data``: a folder with ``samples.parquet``, a table file, or a DataFrame; image paths are relative to
    ``root`` (default: the table's folder). ``model``: a registered model name (built with ``checkpoint`` and
    ``model_options``) or an already built :class:`~fairfm.models.base.Encoder`. A complete cache entry is returned
    without building the model; a partial one is resumed.
    """
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    frame, table_dir = load_sample_table(data)
    base = Path(root) if root is not None else table_dir
    if base is None:
        raise InputError("a DataFrame SampleTable needs root= (the folder its paths are relative to)")
    if not base.is_dir():
        raise InputError(f"data root {base} is not a folder")
    paths = [base / str(p) for p in frame["path"]]
    stamps, missing = [], []
    for row, path in enumerate(paths):
        try:
            stat = path.stat()
            stamps.append(f"{stat.st_size}:{stat.st_mtime_ns}")
        except OSError:
            missing.append((row, path))
    if missing:
        row, path = missing[0]
        raise InputError(
            f"{path}: image file not found (SampleTable row {row}; {len(missing)} missing in all)"
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
    thash = table_hash(frame, file_stamps=stamps)
    key = feature_cache_key(wid, preprocess_key, thash)
    folder = Path(out) / key
    meta_path = folder / "meta.json"

    meta = _read_meta(meta_path)
    if meta is not None and meta.get("complete"):
        return _open(folder, key, meta, computed=0)

    folder.mkdir(parents=True, exist_ok=True)
    with _exclusive(folder / ".lock"):  # a second process on the same entry waits, then finds it complete
        meta = _read_meta(meta_path)
        if meta is not None and meta.get("complete"):
            return _open(folder, key, meta, computed=0)
        if encoder is None:
            from fairfm.models import create_model

            encoder = create_model(model, checkpoint, trust_checkpoint=trust_checkpoint, **options)
        slice_counts = np.array([count_slices(p) for p in paths], dtype=np.int64)
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
            )
        features = np.load(folder / "features.npy", mmap_mode="r+")
        done = np.load(folder / "done.npy", mmap_mode="r+")
        todo = np.flatnonzero(~done)
        computed = _run(
            encoder,
            paths,
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
    encoder: "Encoder",
    *,
    key: str,
    wid: str,
    table_hash_: str,
    preprocess_key: str,
    model_name: str,
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
    encoder: "Encoder",
    paths: list[Path],
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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from torch.utils.data import DataLoader

    if len(todo) == 0:
        return 0
    cores = os.cpu_count() or 1
    workers = min(2, max(0, cores - 1)) if num_workers is None else num_workers
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or cores)
    dataset = _Samples([paths[i] for i in todo], todo.tolist(), todo.tolist(), encoder.preprocess)
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
        with Progress(*columns, disable=not progress, transient=False) as bar:
            task = bar.add_task(f"features {name}", total=len(todo), rate="–")
            for items in loader:
                errors = [message for _, _, message in items if message]
                if errors:
                    raise InputError(errors[0])
                positions = [pos for pos, _, _ in items]
                for pos, tensor, _ in items:
                    if tensor.shape[0] != offsets[pos + 1] - offsets[pos]:
                        raise InputError(
                            f"{paths[pos]} (SampleTable row {pos}): {tensor.shape[0]} slices decoded, "
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
