"""Duke SD-OCT AMD study, the OCT set MEDFAIR uses (DATASETS.md §2.12).

Release: ``AMD/*.mat`` and ``Control/*.mat`` (e.g. ``Farsiu_Ophthalmology_2013_AMD_Subject_1001.mat``), MATLAB
files with the B-scan stack ``images`` (rows × columns × B-scans) and the subject's ``Age``.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from fairfm.data.registry import DatasetCard, DatasetSource, register_dataset
from fairfm.data.sources._common import add_age, age_edges, finish, natural_key
from fairfm.errors import InputError

#: Positive class is AMD (MEDFAIR coded control = 1, §7.13).
CLASS_FOLDERS = {"AMD": 1.0, "Control": 0.0}


def _read_header(path: Path) -> tuple[float, int | None]:
    """``Age`` and the number of B-scans, without loading the image stack (scipy skips unrequested variables)."""
    from scipy.io import loadmat, whosmat
    from scipy.io.matlab import MatReadError

    try:
        shapes = {name: shape for name, shape, _ in whosmat(path)}
        age = loadmat(path, variable_names=["Age"]).get("Age")
    except NotImplementedError:
        return _read_header_v73(path)
    except (MatReadError, OSError, ValueError, TypeError, KeyError, IndexError, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: cannot be read as a MATLAB file ({type(exc).__name__}: {exc})") from None
    if age is None:
        raise InputError(f"{path}: no 'Age' variable (variables: {', '.join(shapes)})")
    shape = shapes.get("images")
    n_slices = int(shape[2]) if shape is not None and len(shape) == 3 else None
    return float(np.asarray(age).reshape(-1)[0]), n_slices


def _read_header_v73(path: Path) -> tuple[float, int | None]:
    """The same from a MATLAB v7.3 file, which is HDF5 (h5py lists arrays transposed: MATLAB is column-major)."""
    from fairfm.data.optional import import_optional

    h5py = import_optional("h5py", f"reading {path} (MATLAB v7.3)")

    try:
        with h5py.File(path, "r") as handle:
            if "Age" not in handle:
                raise InputError(f"{path}: no 'Age' variable (variables: {', '.join(handle.keys())})")
            age = np.asarray(handle["Age"][()], dtype=float)
            shape = handle["images"].shape[::-1] if "images" in handle else None
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise InputError(f"{path}: cannot be read as a MATLAB v7.3 file ({type(exc).__name__}: {exc})") from None
    n_slices = int(shape[2]) if shape is not None and len(shape) == 3 else None
    return float(age.reshape(-1)[0]), n_slices


@register_dataset("duke_oct")
class DukeOCT(DatasetSource):
    card = DatasetCard(
        name="duke_oct",
        title="Duke SD-OCT AMD vs control volumes",
        modality="retinal OCT volume",
        dims=3,
        task_type="classification",
        tasks=("amd",),
        attributes=("age",),
        access="public (Duke University, Farsiu lab); cite Farsiu et al. 2014",
        reference="Farsiu et al., Ophthalmology 2014",
        notes=(
            "label amd: AMD = 1, Control = 0 (MEDFAIR's inverted coding is not reproduced, §7.13)",
            "only age exists; MEDFAIR binarised at 70 (age_edges=[70]); the default here is 60",
            "one eye per subject: patient_id is the file stem; n_slices from the 'images' header",
        ),
    )

    def _files(self, root: Path) -> list[tuple[Path, float]]:
        files = []
        for folder, label in CLASS_FOLDERS.items():
            directory = root / folder
            if not directory.is_dir():
                raise InputError(f"{self.card.name}: expected release folder not found: {directory}")
            files += [(p, label) for p in sorted(directory.glob("*.mat"), key=lambda p: natural_key(p.name))]
        if not files:
            raise InputError(f"{self.card.name}: no .mat files in {root / 'AMD'} or {root / 'Control'}")
        return files

    def source_files(self, root: Path) -> list[Path]:
        # The metadata (Age) lives inside each multi-GB-in-total .mat volume and there is no separate table;
        # checksumming every volume would read the whole release, so no file is listed.
        self._files(Path(root))
        return []

    def load(self, root: Path) -> pd.DataFrame:
        root = Path(root)
        records = []
        for path, label in self._files(root):
            age, n_slices = _read_header(path)
            records.append(
                {
                    "sample_id": path.stem,
                    "patient_id": path.stem,
                    "path": path.relative_to(root).as_posix(),
                    "label_amd": label,
                    "age": age,
                    "n_slices": n_slices,
                }
            )
        frame = pd.DataFrame.from_records(records)
        add_age(frame, frame.pop("age"), source=root, column="Age", edges=age_edges(self.options))
        return finish(frame, dataset=self.card.name)
