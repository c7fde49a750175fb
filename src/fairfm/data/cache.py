"""Datasets prepared on the fly: ``fairfm run --dataset chexpert --root RAW`` without a ``datasets prepare`` step.

A registered dataset name plus its raw release folder is prepared once (:func:`fairfm.data.prepare.prepare`) into

    STORE/datasets/<name>-<split>-seed<seed>-<hash>/   samples.parquet + dataset.json

where the hash covers the release root, the split policy and seed, the fairfm and loader versions and the size and
modification time of every metadata file the loader reads (so an edited release is prepared again, not silently
reused). The folder is built under a temporary name beside it and renamed into place in one step, so a prepare that
is killed leaves no half-written folder that a later run could mistake for a finished one; the next call finds the
finished folder and does not prepare it again.

The split seed is the spec's ``split_seed`` (default 0; recorded by ``prepare`` in ``dataset.json`` → ``split.seed``),
not the run's ``seed``: runs over several seeds share one split and vary training only, and a sweep over
``split_seed`` prepares one folder per split seed. The default policy is ``patient``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fairfm.errors import InputError
from fairfm.tableio import host_tag, pid_alive

if TYPE_CHECKING:
    from fairfm.spec import RunSpec

DATASETS_DIR = "datasets"
DEFAULT_SPLIT = "patient"
DEFAULT_SPLIT_SEED = 0
_SAMPLES_FILE, _MANIFEST_FILE = "samples.parquet", "dataset.json"
_HASH_LENGTH = 10


@dataclass(frozen=True)
class PreparedDataset:
    """Where a named dataset was prepared, and whether this call prepared it (False: found from an earlier call)."""

    name: str
    root: Path
    folder: Path
    prepared_now: bool


def is_prepared(folder: str | os.PathLike) -> bool:
    """True for a folder written by ``fairfm datasets prepare`` (both of its files present)."""
    folder = Path(folder)
    return (folder / _MANIFEST_FILE).is_file() and (folder / _SAMPLES_FILE).is_file()


def dataset_names() -> list[str]:
    from fairfm.data.registry import list_datasets

    return [card.name for card in list_datasets()]


def prepared_folder(store_path: str | os.PathLike, name: str, root: str | os.PathLike, *,
                    split: str = DEFAULT_SPLIT, seed: int = 0) -> Path:  # fmt: skip
    """The cache folder of ``name`` prepared from ``root`` with ``split``/``seed`` (whether or not it exists yet).

    Fails fast, naming what was looked for, on an unknown dataset or split policy, a missing root, or a release
    without the metadata files its loader needs.
    """
    from fairfm import __version__
    from fairfm.data.prepare import FORMAT_VERSION
    from fairfm.data.registry import get_dataset
    from fairfm.data.splits import get_split_policy
    from fairfm.spec import canonical_json

    source = get_dataset(name)
    try:
        get_split_policy(split)
    except InputError as exc:
        raise InputError(f"split: {exc}") from None
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise InputError(f"root: {root}: raw release folder of dataset {name!r} not found (the folder as downloaded)")
    files = []
    for path in source.source_files(root):
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{name}: source file not found: {path}")
        stat = path.stat()
        files.append([str(path), stat.st_size, stat.st_mtime_ns])
    key = {
        "dataset": name, "root": str(root), "split": split, "seed": int(seed), "fairfm": __version__,
        "format": FORMAT_VERSION, "dataset_version": getattr(source, "version", None) or source.card.title,
        "files": files,
    }  # fmt: skip
    digest = hashlib.sha256(canonical_json(key).encode("utf-8")).hexdigest()[:_HASH_LENGTH]
    return Path(os.path.abspath(store_path)) / DATASETS_DIR / f"{name}-{split}-seed{int(seed)}-{digest}"


def ensure_prepared(store_path: str | os.PathLike, name: str, root: str | os.PathLike, *,
                    split: str = DEFAULT_SPLIT, seed: int = 0, progress: bool = False) -> PreparedDataset:  # fmt: skip
    """``name`` prepared from ``root`` under ``STORE/datasets``: found when an earlier call prepared it, otherwise
    prepared now, atomically (a temporary folder renamed into place)."""
    import importlib

    from fairfm.tableio import default_mode

    folder = prepared_folder(store_path, name, root, split=split, seed=seed)
    root = Path(root).expanduser().resolve()
    if is_prepared(folder):
        return PreparedDataset(name, root, folder, prepared_now=False)
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.{host_tag()}.{os.getpid()}.", dir=folder.parent))
    try:
        os.chmod(tmp, default_mode(directory=True))  # mkdtemp makes it private; a prepared dataset is shared
        # Looked up at call time (not bound at import) so that the module's current ``prepare`` is the one called.
        importlib.import_module("fairfm.data.prepare").prepare(name, root, tmp, split=split, seed=seed,
                                                               progress=progress)  # fmt: skip
        try:
            os.rename(tmp, folder)  # one step: the folder is either absent or complete
        except OSError:
            if not is_prepared(folder):  # not a concurrent call that finished first
                raise InputError(f"{folder}: exists and is not a prepared dataset folder; remove it") from None
            return PreparedDataset(name, root, folder, prepared_now=False)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return PreparedDataset(name, root, folder, prepared_now=True)


def resolve_dataset(spec: "RunSpec", store_path: str | os.PathLike, *, prepare: bool = True,
                    progress: bool = False) -> tuple["RunSpec", PreparedDataset | None]:  # fmt: skip
    """The spec with ``dataset`` pointing at a prepared folder.

    ``dataset`` may be a prepared folder (returned unchanged) or a registered dataset name with ``root`` naming its
    raw release: that is prepared under ``STORE/datasets`` (see :func:`ensure_prepared`) with ``split`` (default
    ``patient``) and ``split_seed`` (default 0, not the run's seed). With ``prepare=False`` nothing is written: a name whose
    folder does not exist yet is returned unchanged, with the folder it will be prepared into.
    """
    value = Path(spec.dataset).expanduser()
    if is_prepared(value):
        return spec, None
    text = str(spec.dataset)
    names = dataset_names() if len(Path(text).parts) == 1 else []
    if text not in names:
        looked = Path(os.path.abspath(value)) / _MANIFEST_FILE
        known = ", ".join(dataset_names())
        raise InputError(f"dataset: {text!r} is neither a prepared dataset folder ({looked} not found) nor a "
                         f"registered dataset name (known: {known}); a raw release is given as NAME with its "
                         "folder as root")  # fmt: skip
    if spec.root is None:
        raise InputError(f"root: dataset {text!r} is a dataset name, so root must give its raw release folder "
                         f"(--root RAW_RELEASE) to prepare it from")  # fmt: skip
    split = spec.split or DEFAULT_SPLIT
    split_seed = spec.split_seed if spec.split_seed is not None else DEFAULT_SPLIT_SEED
    if not prepare:
        folder = prepared_folder(store_path, text, spec.root, split=split, seed=split_seed)
        root = Path(spec.root).expanduser().resolve()
        found = is_prepared(folder)
        resolved = (spec.replace(dataset=str(folder), split=split, split_seed=split_seed, root=str(root)) if found
                    else spec)  # fmt: skip
        return resolved, PreparedDataset(text, root, folder, prepared_now=False)
    prepared = ensure_prepared(store_path, text, spec.root, split=split, seed=split_seed, progress=progress)
    return spec.replace(dataset=str(prepared.folder), split=split, split_seed=split_seed,
                        root=str(prepared.root)), prepared  # fmt: skip




def _remove_abandoned(folder: Path) -> None:
    """Temporary folders of ``folder`` left by a killed prepare on this host (its process no longer exists)."""
    for tmp in folder.parent.glob(f".{folder.name}.{host_tag()}.*"):
        parts = tmp.name[len(folder.name) + 2:].split(".")
        pid = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        if pid and not pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)
