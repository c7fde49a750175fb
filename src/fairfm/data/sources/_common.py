"""Helpers shared by the source modules: reading release tables, label maps, finishing a SampleTable.

Not a dataset (it registers nothing); the leading underscore keeps it out of the way of the source modules.
"""

from __future__ import annotations

import re
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from fairfm.data.attributes import DEFAULT_AGE_EDGES, age_groups, clean_age, harmonise, normalise_key
from fairfm.data.registry import DatasetSource
from fairfm.data.sampletable import locator_column, validate_sample_table
from fairfm.errors import InputError
from fairfm.groups import UNKNOWN_SPELLINGS

__all__ = [
    "add_age",
    "add_array_keys",
    "add_group",
    "age_edges",
    "binary_label",
    "find_one",
    "finish",
    "map_values",
    "nifti_shape",
    "read_csv",
    "require_columns",
]


def read_csv(path: Path, **kwargs: Any) -> pd.DataFrame:
    """A release CSV with every column as text, so identifiers such as ``#002`` or ``039Y`` stay as written."""
    try:
        frame = pd.read_csv(path, dtype=str, **kwargs)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError, EOFError, zlib.error,
            zipfile.BadZipFile) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: cannot be read as CSV ({first_line})") from None
    # Some releases (and Excel round-trips) pad header names with spaces.
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.empty:
        raise InputError(f"{path}: file has a header but no rows")
    return frame


def require_columns(frame: pd.DataFrame, columns: Iterable[str], source: Path | str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(
            f"{source}: missing column(s) {', '.join(repr(c) for c in missing)}; found: {', '.join(map(str, frame.columns))}"
        )


class MetadataTableSource(DatasetSource):
    """A release described by one metadata CSV (``metadata``, relative to the root): that file is what
    ``dataset.json`` checksums, and :meth:`read_metadata` reads it with the columns ``load`` needs."""

    metadata: ClassVar[str]

    def source_files(self, root: Path) -> list[Path]:
        return [self.require(root, self.metadata)]

    def read_metadata(self, root: Path, columns: Iterable[str] = ()) -> tuple[Path, pd.DataFrame]:
        """(path, table) of the metadata CSV, failing with one line on a missing file or column."""
        csv = self.require(root, self.metadata)
        raw = read_csv(csv)
        require_columns(raw, columns, csv)
        return csv, raw


def map_values(
    raw: pd.Series,
    mapping: Mapping[Any, Any],
    *,
    source: Path | str,
    column: str,
    unknown: Iterable[Any] = (),
    missing_value: Any = np.nan,
) -> pd.Series:
    """Map raw codes through an explicit table (keys compared after ``normalise_key``).

    NaN, the unknown spellings of :mod:`fairfm.groups` and ``unknown`` give ``missing_value``; any other value
    absent from ``mapping`` is an InputError naming the file, column, row and value.
    """
    table = {normalise_key(k): v for k, v in mapping.items()}
    extra = {normalise_key(v) for v in unknown}
    out: list[Any] = []
    for row, value in enumerate(raw.tolist()):
        key = normalise_key(value)
        if key in table:
            out.append(table[key])
        elif key is None or key in extra or str(key) in UNKNOWN_SPELLINGS:
            out.append(missing_value)
        else:
            known = ", ".join(sorted(repr(k) for k in mapping))
            raise InputError(f"{source}: column '{column}', row {row}: value {value!r} is not one of {known}")
    return pd.Series(out, index=raw.index, name=raw.name, dtype=object)


def binary_label(
    raw: pd.Series,
    positive: Iterable[Any],
    negative: Iterable[Any],
    *,
    source: Path | str,
    column: str,
    unknown: Iterable[Any] = (),
) -> pd.Series:
    """0/1 label (float, NaN unknown) from explicit positive and negative raw values."""
    mapping: dict[Any, float] = {v: 1.0 for v in positive}
    mapping.update({v: 0.0 for v in negative})
    values = map_values(raw, mapping, source=source, column=column, unknown=unknown)
    return pd.to_numeric(values, errors="raise").astype(float)


def add_group(
    frame: pd.DataFrame,
    name: str,
    raw: pd.Series,
    mapping: Mapping[Any, str],
    *,
    source: Path | str,
    column: str,
    unknown: Iterable[Any] = (),
) -> None:
    """``attr_<name>`` (raw, as released) and ``group_<name>`` (harmonised) from one release column."""
    raw = pd.Series(raw.to_numpy(), index=frame.index, name=column)
    frame[f"attr_{name}"] = raw.astype(object)
    frame[f"group_{name}"] = harmonise(
        raw, mapping, attribute=name, source=f"{source} column '{column}'", unknown=unknown
    )


def add_array_keys(frame: pd.DataFrame, keys: Mapping[str, str], *, kind: str = "npz_key") -> None:
    """Record which array of a multi-array file each path column reads (``{"path_mask": "disc_cup_mask"}`` →
    column ``npz_key_mask``), the locator convention of :mod:`fairfm.data.sampletable`."""
    for column, key in keys.items():
        if column not in frame.columns:
            raise ValueError(f"add_array_keys: the table has no path column {column!r}")
        frame[locator_column(column, kind)] = key


def age_edges(options: Mapping[str, Any]) -> tuple[float, ...]:
    """Age bin edges from the source options (``age_edges=[40, 60]``), default ``<60`` / ``≥60``."""
    edges = options.get("age_edges", DEFAULT_AGE_EDGES)
    if isinstance(edges, (int, float)):
        edges = (edges,)
    return tuple(float(e) for e in edges)


def add_age(
    frame: pd.DataFrame,
    raw: pd.Series,
    *,
    source: Path | str,
    column: str,
    edges: Sequence[float],
    **clean: Any,
) -> None:
    """Numeric ``attr_age`` (years) and binned ``group_age``."""
    raw = pd.Series(raw.to_numpy(), index=frame.index, name=column)
    age = clean_age(raw, source=f"{source} column '{column}'", **clean)
    frame["attr_age"] = age.to_numpy(dtype=float)
    frame["group_age"] = age_groups(frame["attr_age"], edges)


def find_one(root: Path, names: Sequence[str], *, dataset: str, what: str) -> Path:
    """The first of ``names`` (relative to ``root``) that exists, else an InputError listing every path tried."""
    for name in names:
        path = root / name
        if path.exists():
            return path
    tried = ", ".join(str(root / n) for n in names)
    raise InputError(f"{dataset}: {what} not found; looked for: {tried}")


def nifti_shape(path: Path) -> str:
    """``AxBxC`` from a NIfTI header (nibabel loads lazily: the voxels are not read)."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        shape = nib.load(str(path)).shape  # header only; the voxels are not read
    except (ImageFileError, OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: cannot be read as NIfTI ({type(exc).__name__}: {exc})") from None
    return "x".join(str(int(s)) for s in shape)


_NATURAL = re.compile(r"(\d+)")


def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``case_2`` before ``case_10``."""
    return [int(part) if part.isdigit() else part for part in _NATURAL.split(text)]


def finish(
    frame: pd.DataFrame, *, dataset: str, leading: Sequence[str] = ("sample_id", "patient_id", "path")
) -> pd.DataFrame:
    """Order columns (ids, paths, labels, attributes, groups, the rest), reset the index and validate."""
    frame = frame.reset_index(drop=True)
    for column in ("sample_id", "patient_id"):
        frame[column] = frame[column].astype(str).astype(object)
    order = list(leading)
    order += sorted(c for c in frame.columns if c.startswith("path_") and c not in order)
    order += [c for c in frame.columns if c.startswith("label_")]
    order += [c for c in frame.columns if c.startswith("attr_")]
    order += [c for c in frame.columns if c.startswith("group_")]
    order += [c for c in ("split_official", "site") if c in frame.columns]
    order += [c for c in frame.columns if c not in order]
    frame = frame[order]
    return validate_sample_table(frame, source=dataset)
