"""Image and volume readers: JPEG/PNG (Pillow), DICOM files, series folders and zipped series (pydicom),
NPZ/NPY (numpy), NIfTI (nibabel), MATLAB ``.mat`` (scipy; v7.3 via h5py), HDF5 (h5py) and MetaImage ``.mha``/``.mhd``.

Files that hold several arrays (NPZ, HDF5, MAT) are addressed per SampleTable row and per path column by locator
columns named after the path column (the convention is documented in :mod:`fairfm.data.sampletable`): ``path`` →
``npz_key`` / ``h5_key`` / ``h5_index``, ``path_<view>`` → ``npz_key_<view>`` / ``h5_key_<view>`` /
``h5_index_<view>`` (falling back to ``h5_index``: image and mask frames share the row's index). Without a key column,
image columns read the first ``image`` alias present and ``path_mask*`` columns the first ``mask`` alias.

Everything is lazy: :class:`SampleImages` opens one file per ``__getitem__`` and never holds the dataset in memory.
A file that cannot be read raises :class:`~fairfm.errors.InputError` naming the file (and the SampleTable row
when read through :class:`SampleImages`).

Arrays come back as ``float32`` in the file's own intensity units (DICOM: after ``RescaleSlope`` /
``RescaleIntercept``, i.e. Hounsfield units for CT), shape ``(H, W)`` for greyscale, ``(H, W, C)`` for colour and
``(D, H, W)`` for volumes (slices first). Normalisation to a model's input is each model's own preprocessing.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from fairfm.errors import InputError

PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
NIFTI_SUFFIXES = (".nii", ".nii.gz")
HDF5_SUFFIXES = {".h5", ".hdf5", ".hdf"}
META_SUFFIXES = {".mha", ".mhd"}

#: NPZ key aliases per role: the Harvard lab releases use different key names across versions (DATASETS.md §3.4,
#: §7.15). A recorded key that a file lacks is looked up among the aliases of its specific role (``slo_fundus`` →
#: ``fundus_slo``, ``fundus``, …), never among the generic ``image`` / ``volume`` roles, so an OCT column can never
#: silently read the fundus photograph.
NPZ_KEY_ALIASES: dict[str, tuple[str, ...]] = {
    "image": ("image", "img", "slo_fundus", "fundus_slo", "fundus", "rnflt", "oct_bscans", "oct", "data", "arr_0"),
    "slo": ("slo_fundus", "fundus_slo", "fundus", "slo"),
    "oct": ("oct_bscans", "oct", "oct_volume"),
    "rnflt": ("rnflt",),
    "mask": ("mask", "disc_cup_mask", "disc_cup", "disc_cup_borders", "label", "seg", "segmentation"),
    "volume": ("images", "image", "volume", "img", "data"),
}
_GENERIC_ROLES = ("image", "volume")


def image_kind(path: str | os.PathLike) -> str:
    """``pil``, ``dicom``, ``dicom_series`` (a folder or ``.zip`` of DICOM slices), ``nifti``, ``npz``, ``npy``,
    ``mat``, ``hdf5`` or ``metaimage`` from the name; DICOM files without a suffix are recognised by their ``DICM``
    preamble."""
    name = str(path).lower()
    if Path(path).is_dir():
        return "dicom_series"
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    suffix = Path(name).suffix
    kinds = {".npz": "npz", ".npy": "npy", ".mat": "mat", ".zip": "dicom_series"}
    if suffix in PIL_SUFFIXES:
        return "pil"
    if suffix in DICOM_SUFFIXES:
        return "dicom"
    if suffix in kinds:
        return kinds[suffix]
    if suffix in HDF5_SUFFIXES:
        return "hdf5"
    if suffix in META_SUFFIXES:
        return "metaimage"
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            if handle.read(4) == b"DICM":
                return "dicom"
    except OSError:
        pass
    raise InputError(f"{path}: unsupported image format (expected PNG/JPEG/TIFF, DICOM, NPZ/NPY, NIfTI, MAT, HDF5 "
                     "or MetaImage)")


def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("P", "PA", "LA", "RGBA", "CMYK", "YCbCr"):
                image = image.convert("RGB")
            array = np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: cannot be read as an image ({exc})") from None
    return array.astype(np.float32, copy=False)


def _dicom_dataset(source: Any, name: str) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        dataset = pydicom.dcmread(source)
        dataset.pixel_array  # decode now, so a damaged file fails here with its name
    except (InvalidDicomError, AttributeError, OSError, ValueError, RuntimeError, NotImplementedError, KeyError,
            TypeError, IndexError, EOFError, struct.error) as exc:  # pydicom reports damage with many types
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{name}: cannot be read as DICOM ({first})") from None
    return dataset


def _read_dicom(path: Path) -> np.ndarray:
    return _dicom_pixels(_dicom_dataset(path, str(path)))


def _dicom_pixels(dataset: Any) -> np.ndarray:
    pixels = dataset.pixel_array
    # Stored values → modality units (e.g. CT Hounsfield units); absent tags mean slope 1, intercept 0.
    slope = float(getattr(dataset, "RescaleSlope", 1) or 1)
    intercept = float(getattr(dataset, "RescaleIntercept", 0) or 0)
    array = pixels.astype(np.float32) * slope + intercept
    if getattr(dataset, "PhotometricInterpretation", "") == "MONOCHROME1":
        # MONOCHROME1: high values are dark; invert so that bone is bright as in MONOCHROME2.
        array = array.max() + array.min() - array
    return array


def _key_candidates(key: str | None) -> tuple[str, ...]:
    """Names to try for ``key``: a role's aliases, or the key itself then the aliases of its specific role(s)."""
    if key is None:
        return NPZ_KEY_ALIASES["image"]
    if key in NPZ_KEY_ALIASES:
        return NPZ_KEY_ALIASES[key]
    candidates = [key]
    for role, aliases in NPZ_KEY_ALIASES.items():
        if role not in _GENERIC_ROLES and key in aliases:
            candidates += [a for a in aliases if a not in candidates]
    return tuple(candidates)


def _pick_npz_key(names: Sequence[str], key: str | None, path: Path) -> str:
    if key is not None and key in names:
        return key
    candidates = _key_candidates(key)
    for candidate in candidates:
        if candidate in names:
            return candidate
    if key is None and len(names) == 1:
        return names[0]
    raise InputError(f"{path}: no array for {key or 'image'!r} (tried {', '.join(candidates)}); keys: {', '.join(names)}")


def _read_npz(path: Path, key: str | None) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            name = _pick_npz_key(list(archive.files), key, path)
            array = archive[name]
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise InputError(f"{path}: cannot be read as NPZ ({exc})") from None
    return _as_float32(array, path, name)


def _as_float32(array: Any, path: Path, key: str | None = None) -> np.ndarray:
    """Numeric array → float32; an array of text or objects (a wrong key, e.g. a note) is an InputError."""
    try:
        return np.asarray(array, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        where = f" array {key!r}" if key else ""
        raise InputError(f"{path}:{where} is not numeric image data ({exc})") from None


def _read_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"{path}: cannot be read as NPY ({exc})") from None
    return _as_float32(array, path)


def _read_nifti(path: Path) -> np.ndarray:
    import nibabel as nib

    try:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32)  # scl_slope/scl_inter applied by nibabel
        axis = _nifti_slice_axis(image)
    except Exception as exc:  # nibabel raises many types (ImageFileError, EOFError, zlib.error, ...)
        raise InputError(f"{path}: cannot be read as NIfTI ({type(exc).__name__}: {exc})") from None
    if data.ndim >= 3:
        data = np.moveaxis(data, axis, 0)
    return data


def _nifti_slice_axis(image: Any) -> int:
    """The voxel axis that runs inferior–superior (axial slices), from the affine.

    Most NIfTI files store ``(x, y, z)`` with z axial, but some releases put the slices first — KiTS19/23
    ``imaging.nii.gz`` is ``(slices, 512, 512)`` with an affine mapping voxel axis 0 to z — so the axis is read
    from the orientation codes rather than assumed. Falls back to axis 2 when the affine names no S/I axis.
    """
    import nibabel as nib

    if len(image.shape) < 3:
        return 0
    try:
        codes = nib.aff2axcodes(image.affine)
    except Exception:  # a degenerate affine has no orientation: keep the NIfTI convention
        return 2
    axial = [i for i, code in enumerate(codes[:3]) if code in ("S", "I")]
    return axial[0] if axial else 2



def _slice_position(dataset: Any, fallback: int) -> tuple[float, float]:
    position = getattr(dataset, "ImagePositionPatient", None)
    z = float(position[2]) if position is not None and len(position) == 3 else float("nan")
    number = getattr(dataset, "InstanceNumber", None)
    return (z if np.isfinite(z) else float(number if number is not None else fallback), float(fallback))


def _read_dicom_series(path: Path) -> np.ndarray:
    """A folder (or ``.zip``) of single-slice DICOM files → ``(D, H, W)`` ordered by slice position."""
    import io

    datasets = []
    if path.is_dir():
        members = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        for i, member in enumerate(members):
            datasets.append((member.name, _dicom_dataset(member, str(member)), i))
    else:
        try:
            with zipfile.ZipFile(path) as archive:
                names = sorted(n for n in archive.namelist() if not n.endswith("/"))
                for i, name in enumerate(names):
                    datasets.append((name, _dicom_dataset(io.BytesIO(archive.read(name)), f"{path}:{name}"), i))
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise InputError(f"{path}: not a valid zip archive ({exc})") from None
    if not datasets:
        raise InputError(f"{path}: DICOM series is empty")
    datasets.sort(key=lambda item: _slice_position(item[1], item[2]))
    slices = [_dicom_pixels(ds) for _, ds, _ in datasets]
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        raise InputError(f"{path}: DICOM series slices differ in shape ({sorted(shapes)})")
    return np.stack(slices)


def _read_mat(path: Path, key: str | None) -> np.ndarray:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        contents = loadmat(path)
        names = [k for k in contents if not k.startswith("__")]
        array = contents[_pick_npz_key(names, key or "volume", path)]
    except NotImplementedError:  # MATLAB v7.3 files are HDF5
        return _read_hdf5(path, key or "volume", None, matlab=True)
    except InputError:
        raise
    except (MatReadError, ValueError, OSError, TypeError, KeyError, IndexError, EOFError, zlib.error) as exc:
        # scipy's MAT parser reports damaged files with many exception types
        raise InputError(f"{path}: cannot be read as a MATLAB file ({type(exc).__name__}: {exc})") from None
    array = _as_float32(array, path, key)
    # MATLAB stacks volumes along the third axis (e.g. Duke OCT images: rows × columns × B-scans); slices first.
    return np.moveaxis(array, 2, 0) if array.ndim == 3 else array


def _read_hdf5(path: Path, key: str | None, index: int | None, *, matlab: bool = False) -> np.ndarray:
    from fairfm.data.optional import import_optional

    h5py = import_optional("h5py", f"reading {path} (HDF5)")

    try:
        with h5py.File(path, "r") as handle:
            names = list(handle.keys())
            name = key if key is not None and key in handle else _pick_npz_key(names, key, path)
            dataset = handle[name]
            array = dataset[int(index)] if index is not None else dataset[()]
    except InputError:
        raise
    except (OSError, KeyError, IndexError, ValueError, TypeError, RuntimeError) as exc:
        where = f", index {index}" if index is not None else ""
        raise InputError(f"{path}: cannot read HDF5 dataset {key or 'image'!r}{where} ({exc})") from None
    array = _as_float32(array, path, key)
    # h5py returns MATLAB v7.3 arrays transposed (column-major); undo it so shapes match loadmat's.
    if matlab:
        array = array.T
        return np.moveaxis(array, 2, 0) if array.ndim == 3 else array
    return array


_META_TYPES = {
    "MET_UCHAR": np.uint8, "MET_CHAR": np.int8, "MET_USHORT": np.uint16, "MET_SHORT": np.int16,
    "MET_UINT": np.uint32, "MET_INT": np.int32, "MET_ULONG": np.uint64, "MET_LONG": np.int64,
    "MET_FLOAT": np.float32, "MET_DOUBLE": np.float64,
}


def _read_metaimage(path: Path) -> np.ndarray:
    """MetaImage (``.mha`` with the voxels after the header, ``.mhd`` + raw file), as SPIDER ships.

    Hand-written because the format is a short text header plus raw (optionally zlib-compressed) voxels, and the
    maintained readers (SimpleITK, ITK) are large binary dependencies for this one format.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc})") from None
    header: dict[str, str] = {}
    offset = 0
    while offset < len(raw):
        end = raw.find(b"\n", offset)
        if end < 0:
            break
        line = raw[offset:end].decode("ascii", errors="replace").strip()
        offset = end + 1
        if "=" not in line:
            raise InputError(f"{path}: not a MetaImage header line: {line[:60]!r}")
        name, value = (part.strip() for part in line.split("=", 1))
        header[name] = value
        if name == "ElementDataFile":
            break
    try:
        dims = [int(v) for v in header["DimSize"].split()]
        dtype = np.dtype(_META_TYPES[header["ElementType"]])
        data_file = header["ElementDataFile"]
        channels = int(header.get("ElementNumberOfChannels", "1"))
    except KeyError as exc:
        raise InputError(f"{path}: MetaImage header lacks or mis-spells {exc}") from None
    except ValueError as exc:
        raise InputError(f"{path}: MetaImage header has a non-integer size ({exc})") from None
    if header.get("BinaryDataByteOrderMSB", header.get("ElementByteOrderMSB", "False")).lower() == "true":
        dtype = dtype.newbyteorder(">")
    if data_file == "LOCAL":
        payload = raw[offset:]
    else:
        detached = path.parent / data_file
        try:
            payload = detached.read_bytes()
        except OSError:
            raise InputError(f"{path}: its voxel file {detached} is missing or unreadable") from None
    if header.get("CompressedData", "False").lower() == "true":
        try:
            payload = zlib.decompress(payload)
        except zlib.error as exc:
            raise InputError(f"{path}: compressed MetaImage data cannot be inflated ({exc})") from None
    count = int(np.prod(dims)) * channels
    if len(payload) < count * dtype.itemsize:
        raise InputError(f"{path}: MetaImage holds {len(payload)} bytes, {count * dtype.itemsize} expected (truncated)")
    array = np.frombuffer(payload[: count * dtype.itemsize], dtype=dtype)
    shape = tuple(reversed(dims)) + ((channels,) if channels > 1 else ())
    return array.reshape(shape).astype(np.float32)  # DimSize is x y z; C order gives (z, y, x): slices first


def read_image(path: str | os.PathLike, *, key: str | None = None, index: int | None = None) -> np.ndarray:
    """Read one image or volume as ``float32``.

    ``key`` selects an array of an NPZ/MAT/HDF5 file (aliases in :data:`NPZ_KEY_ALIASES`, e.g. ``"mask"``);
    ``index`` selects one item along the first axis of an HDF5 dataset (one frame of many).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    kind = image_kind(path)
    if kind == "pil":
        return _read_pil(path)
    if kind == "dicom":
        return _read_dicom(path)
    if kind == "dicom_series":
        return _read_dicom_series(path)
    if kind == "npz":
        return _read_npz(path, key)
    if kind == "npy":
        return _read_npy(path)
    if kind == "mat":
        return _read_mat(path, key)
    if kind == "hdf5":
        return _read_hdf5(path, key, index)
    if kind == "metaimage":
        return _read_metaimage(path)
    return _read_nifti(path)


def locator_columns(column: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The SampleTable columns that locate ``column``'s array inside a multi-array file: (key columns, index
    columns), first match wins. ``path`` → (``npz_key``, ``h5_key``), (``h5_index``); ``path_mask`` →
    (``npz_key_mask``, ``h5_key_mask``), (``h5_index_mask``, ``h5_index``)."""
    from fairfm.data.sampletable import locator_column

    keys = (locator_column(column, "npz_key"), locator_column(column, "h5_key"))
    index = locator_column(column, "h5_index")
    return keys, (index, "h5_index") if index != "h5_index" else (index,)


def row_locator(table: pd.DataFrame, column: str) -> tuple[list[str | None], list[int | None]]:
    """Per-row (key, index) for reading ``column`` (see :func:`locator_columns`). Rows without a recorded key
    get the role of the column — ``mask`` for ``path_mask*``, None (the image aliases) otherwise."""
    n = len(table)

    def first(names: Sequence[str]) -> list[tuple[Any, str | None]]:
        """Per row, the first non-missing value among ``names`` and the column it came from."""
        out: list[tuple[Any, str | None]] = [(None, None)] * n
        for name in reversed(names):  # earlier names override later ones
            if name not in table.columns:
                continue
            for row, value in enumerate(table[name].tolist()):
                if not _missing(value):
                    out[row] = (value, name)
        return out

    key_columns, index_columns = locator_columns(column)
    default = "mask" if column.startswith("path_mask") else None
    keys = [default if k is None else str(k) for k, _ in first(key_columns)]
    indices: list[int | None] = []
    for row, (value, name) in enumerate(first(index_columns)):
        if value is None:
            indices.append(None)
            continue
        try:
            indices.append(int(value))
        except (TypeError, ValueError):
            raise InputError(f"SampleTable column {name!r}, row {row}: index {value!r} is not an integer") from None
    return keys, indices


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def iter_slices(volume: np.ndarray, *, step: int = 1) -> Iterator[np.ndarray]:
    """Axial slices of a ``(D, H, W)`` volume, every ``step``-th one (FairFedMed keeps every 4th OCT B-scan)."""
    if volume.ndim < 3:
        raise InputError(f"expected a 3D volume, got an array of shape {volume.shape}")
    for index in range(0, volume.shape[0], step):
        yield volume[index]


class SampleImages:
    """Lazy, indexable access to the images of a SampleTable.

    ``SampleImages(table, root)[i]`` reads row ``i``'s ``path`` (or ``column``) relative to ``root``. With
    ``as_slices=True`` a 3D volume row expands to one item per slice (the slice count is read from each volume's
    header on first use). Errors name the file, the row and its ``sample_id``.
    """

    def __init__(
        self,
        table: pd.DataFrame,
        root: str | os.PathLike,
        *,
        column: str = "path",
        key: str | None = None,
        as_slices: bool = False,
        slice_step: int = 1,
    ) -> None:
        if column not in table.columns:
            raise InputError(f"SampleTable has no column {column!r}")
        self.paths = table[column].tolist()
        self.keys, self.indices = row_locator(table, column)
        self.sample_ids = table["sample_id"].tolist() if "sample_id" in table.columns else list(range(len(table)))
        self.root = Path(root)
        self.column = column
        self.key = key
        self.as_slices = as_slices
        self.slice_step = slice_step
        self._slice_index: list[tuple[int, int]] | None = None

    def path(self, row: int) -> Path:
        return self.root / str(self.paths[row])

    def read_row(self, row: int) -> np.ndarray:
        try:
            return read_image(self.path(row), key=self.key or self.keys[row], index=self.indices[row])
        except InputError as exc:
            raise InputError(f"{exc} (SampleTable row {row}, sample_id {self.sample_ids[row]!r}, column {self.column!r})") from None

    def _slices(self) -> list[tuple[int, int]]:
        if self._slice_index is None:
            index = []
            for row in range(len(self.paths)):
                try:
                    depth = volume_depth(self.path(row), key=self.key or self.keys[row], index=self.indices[row])
                except InputError as exc:
                    raise InputError(f"{exc} (SampleTable row {row}, sample_id {self.sample_ids[row]!r}, "
                                     f"column {self.column!r})") from None
                index.extend((row, s) for s in range(0, depth, self.slice_step))
            self._slice_index = index
        return self._slice_index

    def __len__(self) -> int:
        return len(self._slices()) if self.as_slices else len(self.paths)

    def __getitem__(self, item: int) -> np.ndarray:
        if not self.as_slices:
            return self.read_row(item)
        row, index = self._slices()[item]
        array = self.read_row(row)
        return array[index] if _is_volume(array, image_kind(self.path(row))) else array

    def __iter__(self) -> Iterator[np.ndarray]:
        if not self.as_slices:
            for row in range(len(self.paths)):
                yield self.read_row(row)
            return
        for row in range(len(self.paths)):
            volume = self.read_row(row)
            if _is_volume(volume, image_kind(self.path(row))):
                yield from iter_slices(volume, step=self.slice_step)
            else:
                yield volume  # a 2D image is its own single slice, as in __len__


def volume_depth(path: str | os.PathLike, *, key: str | None = None, index: int | None = None) -> int:
    """Number of axial slices, from the header where the format allows it (NIfTI) without reading voxels."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    if image_kind(path) == "nifti":
        import nibabel as nib

        try:
            image = nib.load(str(path))
            shape = image.shape
            axis = _nifti_slice_axis(image)
        except Exception as exc:
            raise InputError(f"{path}: cannot be read as NIfTI ({type(exc).__name__}: {exc})") from None
        return int(shape[axis]) if len(shape) >= 3 else 1
    kind = image_kind(path)
    if kind == "pil":
        return 1
    return _slice_count(read_image(path, key=key, index=index), kind)


def _is_volume(array: np.ndarray, kind: str) -> bool:
    """Whether an array read from a file of ``kind`` is a stack of slices (else a 2D grey or colour image)."""
    if kind == "pil" or array.ndim < 3:
        return False
    if kind in ("dicom_series", "metaimage", "mat", "nifti"):  # volume formats: 3D is always slices first
        return True
    # Generic arrays (NPZ/NPY/HDF5, multi-frame DICOM): (H, W, 3|4) with H and W larger than the channel count is
    # one colour image, not 3 or 4 slices.
    return not (array.ndim == 3 and array.shape[-1] in (3, 4) and array.shape[-1] < min(array.shape[:2]))


def _slice_count(array: np.ndarray, kind: str) -> int:
    return int(array.shape[0]) if _is_volume(array, kind) else 1


def verify_table_files(
    table: pd.DataFrame,
    root: str | os.PathLike,
    *,
    columns: Sequence[str] | None = None,
    progress: bool = False,
    workers: int | None = None,
) -> list[dict[str, Any]]:
    """Read every file the table references; return *all* problems as records (row, sample_id, column, path,
    problem), in table order. Files are decoded one at a time per worker thread (image decoders release the GIL),
    in bounded chunks, so memory stays flat however large the table."""
    from concurrent.futures import ThreadPoolExecutor

    root = Path(root)
    columns = list(columns) if columns is not None else [c for c in table.columns if c == "path" or c.startswith("path_")]
    sample_ids = table["sample_id"].tolist() if "sample_id" in table.columns else list(range(len(table)))
    jobs = []
    for column in columns:
        keys, indices = row_locator(table, column)
        for row, value in enumerate(table[column].tolist()):
            if _missing(value):
                continue  # optional views (e.g. a mask that a sample does not have)
            jobs.append((column, row, str(value), keys[row], indices[row]))

    def check(job: tuple[str, int, str, str | None, int | None]) -> dict[str, Any] | None:
        column, row, value, key, index = job
        path = root / value
        try:
            read_image(path, key=key, index=index)
        except InputError as exc:
            problem = "missing" if not path.exists() else str(exc).removeprefix(f"{path}: ")
        except Exception as exc:  # noqa: BLE001 - check must list every bad file, whatever a decoder raises
            problem = f"unexpected decoder error ({type(exc).__name__}: {exc})"
        else:
            return None
        return {"row": row, "sample_id": sample_ids[row], "column": column, "path": str(path), "problem": problem}

    workers = workers or min(8, os.cpu_count() or 1)
    problems: list[dict[str, Any]] = []
    chunk = 256 * workers

    def run(advance) -> None:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(jobs), chunk):
                batch = jobs[start:start + chunk]
                problems.extend(p for p in pool.map(check, batch) if p is not None)
                advance(len(batch))

    if progress:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task("checking files", total=len(jobs))
            run(lambda k: bar.advance(task, k))
    else:
        run(lambda k: None)
    return problems
