"""The SampleTable contract (DESIGN.md): one row per sample.

Columns: ``sample_id`` (unique string), ``patient_id``, ``path`` (relative to the dataset root; extra ``path_*``
columns for masks or other views), ``label_<task>`` (0/1, NaN unknown), ``attr_<name>`` (raw values as released),
``group_<name>`` (harmonised string groups, :data:`fairfm.groups.UNKNOWN` for unknown), ``split``
(train/val/test) and ``site`` where the data has sites. Split policies may add ``subset_<name>`` columns (integer
multiplicity of each sample in an evaluation subset, e.g. ``subset_test_race`` for a race-balanced test set; 0 = not
in it), keeping one row per sample.

Arrays inside multi-array files. When a path column points at a file holding several arrays (a Harvard lab
``.npz`` with ``slo_fundus`` and ``oct_bscans``, FairSeg's ``.npz`` with image and mask, TUSC's ``dataset.hdf5``,
OL3I's HDF5 of slices), the row records which array that column reads, in a *locator column named after the path
column*: for ``path`` → ``npz_key`` (NPZ/MAT array name) or ``h5_key`` (HDF5 dataset name), and ``h5_index`` (an
index along that dataset's first axis, one frame of many); for ``path_<view>`` → ``npz_key_<view>``,
``h5_key_<view>`` and ``h5_index_<view>`` (the latter falling back to ``h5_index``, since a row's image and mask
frames share their index). Examples: FairSeg ``path``/``npz_key`` = ``…/data_00001.npz``/``slo_fundus`` and
``path_mask``/``npz_key_mask`` = same file/``disc_cup_mask``; TUSC ``h5_key`` ``image``, ``h5_key_mask`` ``mask``,
``h5_index`` the frame. Readers (:class:`fairfm.data.images.SampleImages`) and ``fairfm datasets check`` use exactly
these columns; :func:`locator_column` builds the names.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fairfm.errors import InputError

REQUIRED_COLUMNS = ("sample_id", "patient_id", "path")
SPLITS = ("train", "val", "test")


#: Kinds of locator column (see the module docstring): NPZ/MAT array name, HDF5 dataset name, HDF5 frame index.
LOCATOR_KINDS = ("npz_key", "h5_key", "h5_index")


def locator_column(path_column: str, kind: str) -> str:
    """Name of the locator column of ``kind`` for ``path_column``: ``("path_mask", "npz_key")`` → ``npz_key_mask``."""
    if kind not in LOCATOR_KINDS:
        raise ValueError(f"locator kind must be one of {', '.join(LOCATOR_KINDS)}, got {kind!r}")
    if path_column != "path" and not path_column.startswith("path_"):
        raise InputError(f"column {path_column!r} is not a path column (path or path_<view>)")
    return kind + path_column.removeprefix("path")


def label_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("label_")]


def group_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("group_")]


def subset_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith("subset_")]


def validate_sample_table(frame: pd.DataFrame, *, source: str = "SampleTable") -> pd.DataFrame:
    """Check the contract; raise InputError naming the column and row at fault. Returns ``frame``."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(f"{source}: missing column(s) {', '.join(missing)}")
    ids = frame["sample_id"]
    if ids.isna().any():
        row = int(np.flatnonzero(ids.isna().to_numpy())[0])
        raise InputError(f"{source}: column 'sample_id', row {row}: empty sample id")
    dup = ids.duplicated().to_numpy()
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        raise InputError(f"{source}: column 'sample_id', row {row}: duplicate sample id {ids.iloc[row]!r}")
    for column in label_columns(frame):
        values = pd.to_numeric(frame[column], errors="coerce")
        bad = ~(values.isna() | values.isin([0, 1])) | (values.isna() & frame[column].notna())
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(
                f"{source}: column '{column}', row {row}: label {frame[column].iloc[row]!r} is not 0, 1 or empty"
            )
    if "split" in frame.columns:
        bad = ~frame["split"].isin(SPLITS)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(
                f"{source}: column 'split', row {row}: {frame['split'].iloc[row]!r} is not one of {', '.join(SPLITS)}"
            )
    return frame
