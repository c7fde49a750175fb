"""Reading user tables (CSV / Parquet) and writing results atomically."""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pandas as pd

from fairfm.errors import InputError

_PARQUET_SUFFIXES = {".parquet", ".pq"}


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV (optionally compressed) or Parquet file, with errors that name the file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a CSV or Parquet file")
    try:
        if path.suffix.lower() in _PARQUET_SUFFIXES:
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, low_memory=False)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: cannot be read as {'Parquet' if path.suffix.lower() in _PARQUET_SUFFIXES else 'CSV'} ({first_line})") from None
    if frame.shape[0] == 0:
        raise InputError(f"{path}: file has a header but no rows")
    return frame


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The permissions a plain ``open``/``mkdir`` would give (temporary files are created private)."""
    return (0o777 if directory else 0o666) & ~_umask()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``, on error removed.

    A reader never sees a half-written file, and a crash leaves the previous version (or nothing) in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def probe_writable(folder: str | os.PathLike, label: str) -> None:
    """Fail now, in one line starting with ``label``, when files cannot be created in ``folder`` (or, if it does
    not exist yet, in the folder that would hold it) — before any work whose result would then be lost.

    A real write probe (create and delete a temporary file), not ``os.access``: root passes every permission check
    of ``os.access``, and read-only mounts or full disks only show when writing."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        if existing == folder:
            raise InputError(f"{label}: {folder} is a file, not a folder")
        raise InputError(f"{label}: {folder} cannot be created: {existing} is a file")
    try:
        fd, name = tempfile.mkstemp(prefix=".fairfm-write-probe.", dir=existing)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise InputError(f"{label}: cannot write in {existing} ({exc.strerror or exc})") from None


def check_output_file(path: str | os.PathLike, flag: str = "--out") -> None:
    """Before any work: ``path`` can be written as a file. An existing *file* is replaced (atomically, as every
    output is written) — that is what an output option means; an existing *folder* is refused, never written into."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{flag} {path}: is a folder; give the name of the file to write")
    probe_writable(path.parent, f"{flag} {path}")


def check_output_folder(path: str | os.PathLike, flag: str = "--out") -> None:
    """Before any work: ``path`` can be written as a folder (created if missing). An existing *file* is refused,
    never replaced: the option names a folder that will hold several files."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path}: is a file; give the folder to write into")
    probe_writable(path, f"{flag} {path}")


def host_tag() -> str:
    """This host's name, usable inside a dotted temporary-folder name (no dots): temporary folders are named
    ``<what>.<host>.<pid>.<random>`` so a later process can tell its own host's abandoned ones."""
    import socket

    return "".join(ch if ch.isalnum() or ch == "-" else "-" for ch in socket.gethostname()) or "host"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still exists (a temporary folder of a dead one is abandoned)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def require_columns(frame: pd.DataFrame, columns: list[str], source: str | os.PathLike) -> None:
    """InputError naming the first missing column and the columns that do exist."""
    for column in columns:
        if column not in frame.columns:
            shown = ", ".join(map(str, list(frame.columns)[:20]))
            raise InputError(f"{source}: no column '{column}' (columns: {shown})")


def _first_duplicate(ids: pd.Series) -> tuple[object, list[int]]:
    dup = ids[ids.duplicated(keep=False)]
    value = dup.iloc[0]
    rows = [int(i) for i in ids.index[ids == value][:3]]
    return value, rows


def join_on(
    left: pd.DataFrame,
    right: pd.DataFrame,
    on: str,
    left_source: str | os.PathLike,
    right_source: str | os.PathLike,
    left_unique: bool = True,
) -> pd.DataFrame:
    """Join ``right`` (e.g. demographics) onto ``left`` (predictions) by id; every left id must match once.

    ``left_unique=False`` allows repeated ids on the left (a long table: one row per sample and task).
    """
    require_columns(left, [on], left_source)
    require_columns(right, [on], right_source)
    for frame, source in ((left, left_source), (right, right_source))[0 if left_unique else 1:]:
        ids = frame[on].astype(str)
        if ids.duplicated().any():
            value, rows = _first_duplicate(ids.reset_index(drop=True))
            raise InputError(f"{source}: column '{on}' has duplicate id {value!r} (rows {', '.join(map(str, rows))})")
    left_ids = left[on].astype(str)
    right_ids = right[on].astype(str)
    missing = ~left_ids.isin(set(right_ids))
    if missing.all():
        raise InputError(
            f"{right_source}: none of its '{on}' values match those of {left_source} "
            f"(e.g. {left_ids.iloc[0]!r} vs {right_ids.iloc[0]!r})"
        )
    if missing.any():
        row = int(missing.to_numpy().nonzero()[0][0])
        raise InputError(
            f"{right_source}: {int(missing.sum())} id(s) of {left_source} have no row in it "
            f"(first: {left_ids.iloc[row]!r}, row {row} of {left_source})"
        )
    overlap = [c for c in right.columns if c in left.columns and c != on]
    right = right.drop(columns=overlap)
    validate = "one_to_one" if left_unique else "many_to_one"
    merged = left.assign(**{on: left_ids}).merge(right.assign(**{on: right_ids}), on=on, how="left", validate=validate)
    return merged


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (never the whole file in memory)."""
    import hashlib

    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
