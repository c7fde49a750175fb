"""COVID-CT-MD chest CT (DATASETS.md §2.8).

Release: ``Clinical-data.csv`` (``Diagnosis`` ∈ {COVID-19, CAP, Normal}, ``Folder`` P001… / cap001… / normal001…,
``Patient Gender`` M/F, ``Patient Age`` like ``039Y``, …) and one DICOM series per patient in
``COVID-19 Cases/<Folder>/``, ``Cap Cases/<Folder>/`` or ``Normal Cases/<Folder>/`` (note "Cap", not "CAP").
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from fairfm.data.attributes import SEX
from fairfm.data.registry import DatasetCard, register_dataset
from fairfm.data.sources._common import (
    MetadataTableSource,
    add_age,
    add_group,
    age_edges,
    binary_label,
    finish,
    map_values,
)
from fairfm.errors import InputError

METADATA = "Clinical-data.csv"
#: Diagnosis → series folder (the CAP folder is spelled "Cap Cases", §7.24).
CASE_FOLDERS = {"covid-19": "COVID-19 Cases", "cap": "Cap Cases", "normal": "Normal Cases"}


@register_dataset("covid_ct_md")
class CovidCTMD(MetadataTableSource):
    metadata = METADATA

    card = DatasetCard(
        name="covid_ct_md",
        title="COVID-CT-MD chest CT (COVID-19, community-acquired pneumonia, normal)",
        modality="chest CT",
        dims=3,
        task_type="classification",
        tasks=("pneumonia",),
        attributes=("sex", "age"),
        access="public (figshare, CC BY 4.0)",
        reference="Afshar et al., Sci Data 2021",
        notes=(
            "label pneumonia = Diagnosis COVID-19 or CAP (vs Normal); the diagnosis is kept in attr_diagnosis",
            "path is the patient's DICOM series folder; n_slices counts its files",
            "age parsed from strings like '039Y' (FairMedFM took two characters of the string, §7.24)",
            "one series per patient: patient_id is Folder",
        ),
    )

    def load(self, root: Path) -> pd.DataFrame:
        root = Path(root)
        csv, raw = self.read_metadata(root, ("Diagnosis", "Folder", "Patient Gender", "Patient Age"))
        case_folder = map_values(raw["Diagnosis"], CASE_FOLDERS, source=csv, column="Diagnosis")
        if case_folder.isna().any():
            row = int(case_folder.isna().to_numpy().argmax())
            raise InputError(f"{csv}: column 'Diagnosis', row {row}: empty diagnosis")
        folders = raw["Folder"].str.strip()
        paths = case_folder + "/" + folders
        slices = []
        for row, path in enumerate(paths.tolist()):
            series = root / path
            if not series.is_dir():
                raise InputError(
                    f"{csv}: column 'Folder', row {row}: DICOM series folder not found: {series}"
                )
            with os.scandir(series) as entries:
                slices.append(sum(1 for e in entries if e.is_file() and not e.name.startswith(".")))
        frame = pd.DataFrame(
            {"sample_id": folders.to_numpy(), "patient_id": folders.to_numpy(), "path": paths.to_numpy()}
        )
        frame["label_pneumonia"] = binary_label(
            raw["Diagnosis"], ["COVID-19", "CAP"], ["Normal"], source=csv, column="Diagnosis"
        ).to_numpy()
        frame["attr_diagnosis"] = raw["Diagnosis"].to_numpy()
        add_group(frame, "sex", raw["Patient Gender"], SEX, source=csv, column="Patient Gender")
        add_age(
            frame,
            raw["Patient Age"],
            source=csv,
            column="Patient Age",
            edges=age_edges(self.options),
            strip_suffix="Y",
        )
        frame["n_slices"] = slices
        return finish(frame, dataset=self.card.name)
