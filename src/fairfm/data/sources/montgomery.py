"""Montgomery County chest X-ray set with manual lung masks (DATASETS.md §3.5).

Release: ``MontgomerySet/CXR_png/MCUCXR_XXXX_{0|1}.png`` (suffix 1 = tuberculosis), masks of the same name in
``ManualMask/leftMask/`` and ``ManualMask/rightMask/``, and ``ClinicalReadings/MCUCXR_XXXX_{0|1}.txt`` whose first
lines read ``Patient's Sex: M`` and ``Patient's Age: 044Y``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from fairfm.data.attributes import SEX
from fairfm.data.registry import DatasetCard, DatasetSource, register_dataset
from fairfm.data.sources._common import add_age, add_group, age_edges, finish
from fairfm.errors import InputError

_SEX = re.compile(r"Patient'?s[ \t]+Sex[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
_AGE = re.compile(r"Patient'?s[ \t]+Age[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
_NAME = re.compile(r"^MCUCXR_(\d+)_([01])$")


@register_dataset("montgomery")
class Montgomery(DatasetSource):
    card = DatasetCard(
        name="montgomery",
        title="Montgomery County chest X-ray set, lung segmentation",
        modality="chest X-ray",
        dims=2,
        task_type="segmentation",
        tasks=("lungs",),
        attributes=("sex", "age"),
        access="public (U.S. National Library of Medicine)",
        reference="Jaeger et al., Quant Imaging Med Surg 2014",
        notes=(
            "path_mask_left / path_mask_right are the two lung masks (the lungs task is their union)",
            "label_tb from the file-name suffix (_1 = tuberculosis); sex and age from ClinicalReadings/*.txt",
            "sex M/F mapped explicitly (FairMedFM's segmentation code reversed the sex code, §7.16)",
            "one image per patient: patient_id is the image number",
        ),
    )

    def _base(self, root: Path) -> Path:
        for base in (root / "MontgomerySet", root):
            if (base / "CXR_png").is_dir():
                return base
        raise InputError(
            f"{self.card.name}: expected release folder not found: {root / 'MontgomerySet' / 'CXR_png'}"
        )

    def source_files(self, root: Path) -> list[Path]:
        return sorted((self._base(Path(root)) / "ClinicalReadings").glob("*.txt"))

    def load(self, root: Path) -> pd.DataFrame:
        root = Path(root)
        base = self._base(root)
        prefix = base.relative_to(root).as_posix()
        prefix = "" if prefix == "." else prefix + "/"
        records = []
        for image in sorted(base.glob("CXR_png/*.png")):
            match = _NAME.match(image.stem)
            if not match:
                continue  # the release also ships Thumbs.db and similar
            reading = base / "ClinicalReadings" / f"{image.stem}.txt"
            masks = [base / "ManualMask" / side / image.name for side in ("leftMask", "rightMask")]
            for required in [reading, *masks]:
                if not required.exists():
                    raise InputError(f"{self.card.name}: expected release file not found: {required}")
            text = reading.read_text(encoding="utf-8", errors="replace")
            sex, age = _SEX.search(text), _AGE.search(text)
            records.append(
                {
                    "sample_id": image.stem,
                    "patient_id": match.group(1),
                    "path": f"{prefix}CXR_png/{image.name}",
                    "path_mask_left": f"{prefix}ManualMask/leftMask/{image.name}",
                    "path_mask_right": f"{prefix}ManualMask/rightMask/{image.name}",
                    "label_tb": float(match.group(2)),
                    "sex": sex.group(1).strip() if sex else None,
                    "age": age.group(1).strip() if age else None,
                    "reading": reading.name,
                }
            )
        if not records:
            raise InputError(f"{self.card.name}: no MCUCXR_*.png images in {base / 'CXR_png'}")
        frame = pd.DataFrame.from_records(records)
        source = base / "ClinicalReadings"
        try:
            add_group(frame, "sex", frame.pop("sex"), SEX, source=source, column="Patient's Sex")
            add_age(
                frame,
                frame.pop("age"),
                source=source,
                column="Patient's Age",
                edges=age_edges(self.options),
                strip_suffix="Y",
            )
        except InputError as exc:
            row = int(re.search(r"row (\d+)", str(exc)).group(1))
            raise InputError(f"{source / frame['reading'].iloc[row]}: {exc}") from None
        return finish(frame.drop(columns=["reading"]), dataset=self.card.name)
