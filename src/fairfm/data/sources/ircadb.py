"""3D-IRCADb-01 liver CT with multi-structure masks (DATASETS.md §3.7).

Release: ``3Dircadb1/3Dircadb1.{1..20}/`` each holding ``PATIENT_DICOM/`` (the CT series, files ``image_0`` …),
``LABELLED_DICOM/`` (one combined label series), ``MASKS_DICOM/<structure>/`` and ``MESHES_VTK/`` — shipped as
folders or as ``PATIENT_DICOM.zip`` / ``LABELLED_DICOM.zip``. Sex and age come from the DICOM header of the
first CT slice (``PatientSex``, ``PatientAge`` or ``PatientBirthDate``), read without pixel data.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from fairfm.data.attributes import SEX
from fairfm.data.registry import DatasetCard, DatasetSource, register_dataset
from fairfm.data.sources._common import (
    add_age,
    add_group,
    age_edges,
    finish,
    natural_key,
    read_csv,
    require_columns,
)
from fairfm.errors import InputError

#: Every combined label code FairMedFM found in the LABELLED_DICOM series, mapped to consecutive class indices.
#: FairMedFM remapped only the codes ≥ 257 and left 1, 17, 33, … as class values > 10 (§7.18); here every code
#: has an index, and an unlisted code is an error (:func:`remap_labels`).
LABEL_CODES: tuple[int, ...] = (0, 1, 17, 33, 65, 97, 129, 193, 257, 321, 385, 449, 451, 453, 465, 481, 513)
LABEL_INDEX: dict[int, int] = {code: index for index, code in enumerate(LABEL_CODES)}
_CASE = re.compile(r"^3Dircadb1\.(\d+)$")


def remap_labels(labels: np.ndarray, *, source: str = "label volume") -> np.ndarray:
    """Combined IRCADb label codes → class indices 0…16 (:data:`LABEL_CODES` order)."""
    codes = np.asarray(labels).astype(np.int64)
    present = np.unique(codes)
    unknown = [int(c) for c in present if int(c) not in LABEL_INDEX]
    if unknown:
        raise InputError(
            f"{source}: label code(s) {unknown} are not IRCADb codes ({', '.join(map(str, LABEL_CODES))})"
        )
    lookup = np.zeros(int(max(LABEL_CODES)) + 1, dtype=np.int64)
    for code, index in LABEL_INDEX.items():
        lookup[code] = index
    return lookup[codes]


def _series(case_dir: Path, name: str) -> tuple[Path, list[str]] | None:
    """The series as a folder or a zip: (path, member names sorted naturally), or None when absent."""
    folder = case_dir / name
    if folder.is_dir():
        members = sorted(
            (p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")), key=natural_key
        )
        return folder, members
    archive = case_dir / f"{name}.zip"
    if archive.is_file():
        try:
            with zipfile.ZipFile(archive) as handle:
                members = [
                    m
                    for m in handle.namelist()
                    if not m.endswith("/") and "/." not in m and "__MACOSX" not in m
                ]
        except zipfile.BadZipFile:
            raise InputError(f"{archive}: not a valid zip archive") from None
        return archive, sorted(members, key=natural_key)
    return None


def _header(path: Path, member: str | None) -> dict[str, str]:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        if member is None:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        else:
            with zipfile.ZipFile(path) as handle:
                ds = pydicom.dcmread(io.BytesIO(handle.read(member)), stop_before_pixels=True, force=True)
    except (InvalidDicomError, OSError, KeyError) as exc:
        raise InputError(f"{path}{'!' + member if member else ''}: cannot be read as DICOM ({exc})") from None
    return {key: str(getattr(ds, key, "") or "") for key in ("PatientSex", "PatientAge", "PatientID")}


@register_dataset("ircadb")
class IRCADb(DatasetSource):
    option_values: ClassVar[dict[str, tuple[str, ...] | None]] = {"demographics_csv": None}
    card = DatasetCard(
        name="ircadb",
        title="3D-IRCADb-01 liver CT, multi-structure segmentation",
        modality="abdominal CT",
        dims=3,
        task_type="segmentation",
        tasks=("liver", "structures"),
        attributes=("sex", "age"),
        access="public (IRCAD), research use with citation",
        reference="Soler et al., IRCAD technical report 2010 (3D-IRCADb-01)",
        notes=(
            "path: the PATIENT_DICOM series (folder or .zip); path_mask: the LABELLED_DICOM series",
            "combined label codes " + ", ".join(map(str, LABEL_CODES)) + " map to classes 0–16 by "
            "fairfm.data.sources.ircadb.remap_labels (FairMedFM left codes > 10 unmapped, §7.18)",
            (
                "sex/age from the first CT slice's DICOM header; where it is empty, from a table given as "
                "demographics_csv=<file under root> (name|case, sex[, age]; e.g. FairMedFM's overview.csv)"
            ),
            "n_slices = files in the series",
            "one CT per patient: patient_id is the case number",
        ),
    )

    def _cases(self, root: Path) -> list[Path]:
        for base in (root / "3Dircadb1", root):
            cases = [p for p in base.glob("3Dircadb1.*") if p.is_dir() and _CASE.match(p.name)]
            if cases:
                return sorted(cases, key=lambda p: int(_CASE.match(p.name).group(1)))
        raise InputError(
            f"{self.card.name}: no 3Dircadb1.N case folders found in {root / '3Dircadb1'} or {root}"
        )

    def source_files(self, root: Path) -> list[Path]:
        # Metadata lives in the DICOM headers; only a user-supplied demographics table is a separate file.
        if "demographics_csv" in self.options:
            return [self.require(Path(root), str(self.options["demographics_csv"]))]
        return []

    def _fill_from_table(self, frame: pd.DataFrame, csv: Path) -> None:
        """Sex/age from a table (``name`` or ``case``, ``sex``, optional ``age``) where the DICOM header is empty.

        The IRCAD web page lists each patient's sex; FairMedFM's converted copy ships it as ``overview.csv``. A
        value that contradicts a non-empty header is an error, not a silent override.
        """
        table = read_csv(csv)
        key = "name" if "name" in table.columns else "case"
        require_columns(table, (key, "sex"), csv)
        numbers = table[key].str.extract(r"(\d+)\D*$")[0]
        if numbers.isna().any():
            row = int(numbers.isna().to_numpy().argmax())
            raise InputError(
                f"{csv}: column {key!r}, row {row}: {table[key].iloc[row]!r} names no case number"
            )
        by_case = table.assign(case=numbers.astype(int)).set_index("case")
        for column, field in (("sex", "sex"), ("age", "age")):
            if field not in by_case.columns:
                continue
            for row, (sample, header_value) in enumerate(zip(frame["sample_id"], frame[column])):
                number = int(_CASE.match(sample).group(1))
                if number not in by_case.index:
                    continue
                value = by_case.loc[number, field]
                value = "" if pd.isna(value) else str(value).strip()
                if header_value and value and header_value.strip().upper() != value.upper():
                    raise InputError(
                        f"{csv}: case {number}: {field} {value!r} contradicts the DICOM header "
                        f"({header_value!r} in {frame['header_file'].iloc[row]})"
                    )
                if not header_value:
                    frame.iloc[row, frame.columns.get_loc(column)] = value

    def load(self, root: Path) -> pd.DataFrame:
        root = Path(root)
        records = []
        for case_dir in self._cases(root):
            patient = _series(case_dir, "PATIENT_DICOM")
            labelled = _series(case_dir, "LABELLED_DICOM")
            for name, series in (("PATIENT_DICOM", patient), ("LABELLED_DICOM", labelled)):
                if series is None or not series[1]:
                    raise InputError(
                        f"{self.card.name}: expected release series not found or empty: {case_dir / name} (or {name}.zip)"
                    )
            image_path, image_members = patient
            header = (
                _header(image_path / image_members[0], None)
                if image_path.is_dir()
                else _header(image_path, image_members[0])
            )
            number = _CASE.match(case_dir.name).group(1)
            records.append(
                {
                    "sample_id": case_dir.name,
                    "patient_id": f"ircadb_{number}",
                    "path": image_path.relative_to(root).as_posix(),
                    "path_mask": labelled[0].relative_to(root).as_posix(),
                    "n_slices": len(image_members),
                    "sex": header["PatientSex"],
                    "age": header["PatientAge"],
                    "header_file": f"{image_path}{'/' if image_path.is_dir() else '!'}{image_members[0]}",
                }
            )
        frame = pd.DataFrame.from_records(records)
        if "demographics_csv" in self.options:
            self._fill_from_table(frame, self.require(root, str(self.options["demographics_csv"])))
        for row, value in enumerate(frame["age"].tolist()):
            if value and not re.fullmatch(r"\d{1,3}Y?", value.strip()):
                raise InputError(
                    f"{frame['header_file'].iloc[row]}: PatientAge {value!r} is not in years ('045Y')"
                )
        add_group(frame, "sex", frame.pop("sex"), SEX, source=root, column="PatientSex (DICOM)")
        add_age(
            frame,
            frame.pop("age"),
            source=root,
            column="PatientAge (DICOM)",
            edges=age_edges(self.options),
            strip_suffix="Y",
        )
        return finish(frame.drop(columns=["header_file"]), dataset=self.card.name)
