"""FairFedMed-Oph: federated glaucoma detection across three sites, 2D SLO fundus or 3D OCT (DATASETS.md §4.1).

Release (``DATA/fairfedmed/``): ``all/*.npz`` (``fairclip_data_XXXXX.npz``, ``harvard30kglaucoma_data_XXXXX.npz``,
``fairdomain_cls_data_XXXXX.npz``), ``meta_all.csv`` and, per site k ∈ {1, 2, 3} and partition attribute X ∈
{language, race, ethnicity}, ``meta_site{k}_{X}_train.csv`` / ``meta_site{k}_{X}_test.csv`` (unnamed index,
``filename, age, gender, race, ethnicity, language, maritalstatus, glaucoma``, all strings).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pandas as pd

from fairfm.data.attributes import ETHNICITY, LANGUAGE, MARITAL, RACE, SEX
from fairfm.data.registry import DatasetCard, DatasetSource, register_dataset
from fairfm.data.sources._common import (
    add_age,
    add_array_keys,
    add_group,
    age_edges,
    binary_label,
    finish,
    read_csv,
    require_columns,
)
from fairfm.errors import InputError

PARTITIONS = ("race", "language", "ethnicity")
SITES = (1, 2, 3)
SPLITS = ("train", "test")
COLUMNS = ("filename", "age", "gender", "race", "ethnicity", "language", "maritalstatus", "glaucoma")
_NOTES = (
    (
        "rows: the union of meta_site{1,2,3}_{partition}_{train,test}.csv; partition option race (default), "
        "language or ethnicity"
    ),
    "site = site1/site2/site3; split_official = the site's train/test file",
    (
        "unknown values are 'unknown' for every attribute, including the partition one (FairFedMed dropped -1 only "
        "for the partition attribute and counted it as a group for the others, §7.23)"
    ),
    (
        "one subject per file: patient_id is the file stem; attr_source_release is fairclip / harvard30kglaucoma / "
        "fairdomain_cls"
    ),
)


class _FairFedMedOph(DatasetSource):
    npz_keys: ClassVar[dict[str, str]]

    option_values: ClassVar[dict[str, tuple[str, ...] | None]] = {"partition": PARTITIONS}
    def _base(self, root: Path) -> Path:
        for base in (root, root / "DATA" / "fairfedmed", root / "fairfedmed"):
            if (base / "all").is_dir():
                return base
        raise InputError(
            f"{self.card.name}: expected release folder not found: {root / 'all'} "
            f"(also tried {root / 'DATA' / 'fairfedmed' / 'all'})"
        )

    def _partition(self) -> str:
        partition = self.options.get("partition", "race")
        if partition not in PARTITIONS:
            raise InputError(
                f"{self.card.name}: partition must be one of {', '.join(PARTITIONS)}, got {partition!r}"
            )
        return partition

    def _site_files(self, root: Path) -> list[tuple[int, str, Path]]:
        base = self._base(root)
        partition = self._partition()
        files = []
        for site in SITES:
            for split in SPLITS:
                name = f"meta_site{site}_{partition}_{split}.csv"
                files.append((site, split, self.require(base, name)))
        return files

    def source_files(self, root: Path) -> list[Path]:
        return [path for _, _, path in self._site_files(Path(root))]

    def load(self, root: Path) -> pd.DataFrame:
        root = Path(root)
        base = self._base(root)
        prefix = base.relative_to(root).as_posix()
        prefix = "" if prefix == "." else prefix + "/"
        parts = []
        for site, split, csv in self._site_files(root):
            raw = read_csv(csv)
            require_columns(raw, COLUMNS, csv)
            names = raw["filename"].map(lambda f: Path(str(f).strip()).name)
            stems = names.str.removesuffix(".npz")
            part = pd.DataFrame(
                {
                    "sample_id": stems.to_numpy(),
                    "patient_id": stems.to_numpy(),
                    "path": (prefix + "all/" + names).to_numpy(),
                }
            )
            part["label_glaucoma"] = binary_label(
                raw["glaucoma"], ["yes", 1], ["no", 0], source=csv, column="glaucoma"
            ).to_numpy()
            add_age(part, raw["age"], source=csv, column="age", edges=age_edges(self.options))
            add_group(part, "sex", raw["gender"], SEX, source=csv, column="gender")
            add_group(part, "race", raw["race"], RACE, source=csv, column="race")
            add_group(part, "ethnicity", raw["ethnicity"], ETHNICITY, source=csv, column="ethnicity")
            add_group(part, "language", raw["language"], LANGUAGE, source=csv, column="language")
            add_group(part, "marital", raw["maritalstatus"], MARITAL, source=csv, column="maritalstatus")
            part["attr_source_release"] = stems.str.extract(r"^(.*)_data_\d+$")[0].to_numpy()
            part["site"] = f"site{site}"
            part["split_official"] = split
            part["source_file"] = csv.name
            parts.append(part)
        frame = pd.concat(parts, ignore_index=True)
        duplicated = frame["sample_id"].duplicated(keep=False)
        if duplicated.any():
            dup = frame[duplicated].sort_values("sample_id").head(2)
            raise InputError(
                f"{self.card.name}: {dup['sample_id'].iloc[0]} is listed in both {dup['source_file'].iloc[0]} and "
                f"{dup['source_file'].iloc[1]} (a sample must belong to one site and one split)"
            )
        missing = [p for p in frame["path"].head(1) if not (root / p).is_file()]
        if missing:
            raise InputError(
                f"{self.card.name}: {root / missing[0]} not found (npz files belong in {base / 'all'})"
            )
        frame = frame.drop(columns=["source_file"])
        add_array_keys(frame, self.npz_keys)
        return finish(frame, dataset=self.card.name)


@register_dataset("fairfedmed_oph_slo")
class FairFedMedOphSLO(_FairFedMedOph):
    npz_keys: ClassVar[dict[str, str]] = {"path": "slo_fundus"}
    card = DatasetCard(
        name="fairfedmed_oph_slo",
        title="FairFedMed-Oph glaucoma, 2D SLO fundus, three sites",
        modality="SLO fundus",
        dims=2,
        task_type="classification",
        tasks=("glaucoma",),
        attributes=("sex", "age", "race", "ethnicity", "language", "marital"),
        access="Harvard Ophthalmology AI Lab (Google Drive, ≈56 GB), CC BY-NC-ND 4.0",
        reference="Li et al., IEEE TMI 2025 (FairFedMed)",
        has_sites=True,
        official_split=True,
        notes=("image key slo_fundus",) + _NOTES,
    )


@register_dataset("fairfedmed_oph_oct")
class FairFedMedOphOCT(_FairFedMedOph):
    npz_keys: ClassVar[dict[str, str]] = {"path": "oct_bscans"}
    card = DatasetCard(
        name="fairfedmed_oph_oct",
        title="FairFedMed-Oph glaucoma, 3D OCT B-scans, three sites",
        modality="OCT B-scans",
        dims=3,
        task_type="classification",
        tasks=("glaucoma",),
        attributes=("sex", "age", "race", "ethnicity", "language", "marital"),
        access="Harvard Ophthalmology AI Lab (Google Drive, ≈56 GB), CC BY-NC-ND 4.0",
        reference="Li et al., IEEE TMI 2025 (FairFedMed)",
        has_sites=True,
        official_split=True,
        notes=("volume key oct_bscans (128 B-scans of 200×200; FairFedMed uses every 4th)",) + _NOTES,
    )
