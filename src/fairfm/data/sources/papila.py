"""PAPILA fundus photographs (DATASETS.md §2.4).

Release: ``FundusImages/RET{id}{OD|OS}.jpg`` and ``ClinicalData/patient_data_od`` / ``patient_data_os``
(spreadsheets; ``.xlsx`` needs openpyxl, a ``.csv`` conversion is read as is). Columns used: ``ID`` (``#002``),
``Age``, ``Gender`` (0 male, 1 female), ``Diagnosis`` (0 healthy, 1 glaucoma, 2 suspect). One image per eye.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import ClassVar

import pandas as pd

from fairfm.data.registry import BOOLEAN, DatasetCard, DatasetSource, register_dataset
from fairfm.data.sources._common import add_age, add_group, age_edges, binary_label, finish, read_csv
from fairfm.errors import InputError

EYES = ("od", "os")
#: PAPILA codes (MEDFAIR PAPILA.ipynb): Gender 0 = male, 1 = female.
GENDER = {0: "M", 1: "F"}
DIAGNOSIS_SUSPECT = 2


def _read_sheet(path: Path) -> pd.DataFrame:
    """The clinical sheet, with the header taken from the row that holds ``ID`` (the xlsx has title rows)."""
    if path.suffix == ".xlsx":
        try:
            grid = pd.read_excel(path, header=None, dtype=str)
        except ImportError:
            raise InputError(
                f"{path}: reading .xlsx needs the 'openpyxl' package (or supply a .csv conversion)"
            ) from None
        except (ValueError, OSError, KeyError, zipfile.BadZipFile) as exc:  # .xlsx is a zip of XML parts
            raise InputError(f"{path}: cannot be read as a spreadsheet ({type(exc).__name__}: {exc})") from None
    else:
        grid = read_csv(path, header=None)
    header_rows = [i for i in range(min(len(grid), 10)) if "ID" in {str(v).strip() for v in grid.iloc[i]}]
    if not header_rows:
        raise InputError(f"{path}: no header row with an 'ID' column in the first 10 rows")
    header = header_rows[0]
    table = grid.iloc[header + 1 :].copy()
    table.columns = [str(c).strip() for c in grid.iloc[header]]
    table = table[table["ID"].notna() & (table["ID"].astype(str).str.strip() != "")]
    return table.reset_index(drop=True)


@register_dataset("papila")
class PAPILA(DatasetSource):
    option_values: ClassVar[dict[str, tuple[str, ...] | None]] = {"keep_suspects": BOOLEAN}
    card = DatasetCard(
        name="papila",
        title="PAPILA glaucoma fundus images",
        modality="fundus photograph",
        dims=2,
        task_type="classification",
        tasks=("glaucoma",),
        attributes=("sex", "age"),
        access="public (figshare, CC BY 4.0)",
        reference="Kovalyk et al., Sci Data 2022",
        notes=(
            "label glaucoma: Diagnosis 1 vs 0; suspects (2) are dropped unless keep_suspects=True (then label NaN)",
            "age binned from the numeric Age column (FairMedFM's PAPILA age was always 0, §7.3)",
            "patient_id is the release ID; both eyes of a patient share it",
        ),
    )

    def _sheets(self, root: Path) -> list[tuple[str, Path]]:
        sheets = []
        for eye in EYES:
            for suffix in (".xlsx", ".csv"):
                path = root / "ClinicalData" / f"patient_data_{eye}{suffix}"
                if path.exists():
                    sheets.append((eye, path))
                    break
            else:
                raise InputError(
                    f"{self.card.name}: expected release file not found: "
                    f"{root / 'ClinicalData' / f'patient_data_{eye}.xlsx'} (or .csv)"
                )
        return sheets

    def source_files(self, root: Path) -> list[Path]:
        return [path for _, path in self._sheets(Path(root))]

    def load(self, root: Path) -> pd.DataFrame:
        root = Path(root)
        parts = []
        for eye, path in self._sheets(root):
            raw = _read_sheet(path)
            for column in ("ID", "Age", "Gender", "Diagnosis"):
                if column not in raw.columns:
                    raise InputError(f"{path}: missing column {column!r}; found: {', '.join(raw.columns)}")
            ids = raw["ID"].astype(str).str.strip().str.lstrip("#").str.removesuffix(".0")
            # A spreadsheet may store the id as a number (2 for #002); image names use three digits.
            ids = ids.where(~ids.str.fullmatch(r"\d+"), ids.str.zfill(3))
            side = eye.upper()
            part = pd.DataFrame(
                {
                    "sample_id": ("RET" + ids + side).to_numpy(),
                    "patient_id": ids.to_numpy(),
                    "path": ("FundusImages/RET" + ids + side + ".jpg").to_numpy(),
                    "eye": side,
                }
            )
            diagnosis = binary_label(
                raw["Diagnosis"], [1], [0], source=path, column="Diagnosis", unknown=[DIAGNOSIS_SUSPECT]
            )
            part["label_glaucoma"] = diagnosis.to_numpy()
            part["attr_diagnosis"] = raw["Diagnosis"].to_numpy()
            add_group(part, "sex", raw["Gender"], GENDER, source=path, column="Gender")
            add_age(part, raw["Age"], source=path, column="Age", edges=age_edges(self.options))
            suspect = pd.to_numeric(raw["Diagnosis"], errors="coerce").to_numpy() == DIAGNOSIS_SUSPECT
            if not self.options.get("keep_suspects", False):
                part = part[~suspect]
            parts.append(part)
        return finish(pd.concat(parts, ignore_index=True), dataset=self.card.name)
