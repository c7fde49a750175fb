"""HAM10000 dermoscopy (DATASETS.md §2.3) and its ISIC 2018 Task 1 / Tschandl lesion masks (§3.2).

Release layout: ``HAM10000_metadata.csv`` (``lesion_id, image_id, dx, dx_type, age, sex, localization``) and
images ``HAM10000_images_part_1/ISIC_XXXXXXX.jpg`` / ``HAM10000_images_part_2/…`` (or one merged
``HAM10000_images/`` folder). Masks ``{image_id}_segmentation.png`` (0/255) sit in the Dataverse
``HAM10000_segmentations_lesion_tschandl/`` folder or ISIC 2018's ``ISIC2018_Task1_Training_GroundTruth/``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
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
)
from fairfm.errors import InputError

METADATA = "HAM10000_metadata.csv"
IMAGE_FOLDERS = ("HAM10000_images_part_1", "HAM10000_images_part_2", "HAM10000_images")
#: Mask folder → the folder of the images those masks were drawn on. Tschandl's HAM10000 masks match the 600×450
#: HAM10000 images; ISIC 2018 masks are at the original resolution of the ISIC 2018 input images.
MASK_FOLDERS: dict[str, str | None] = {
    "HAM10000_segmentations_lesion_tschandl": None,
    "ISIC2018_Task1_Training_GroundTruth": "ISIC2018_Task1-2_Training_Input",
    "ISIC2018_Task1_Validation_GroundTruth": "ISIC2018_Task1-2_Validation_Input",
    "ISIC2018_Task1_Test_GroundTruth": "ISIC2018_Task1-2_Test_Input",
}
DIAGNOSES_MALIGNANT = ("akiec", "mel")
DIAGNOSES_BENIGN = ("bcc", "bkl", "df", "nv", "vasc")
_REFERENCE = "Tschandl et al., Sci Data 2018 (HAM10000); Codella et al., arXiv:1902.03368 (ISIC 2018)"
_ACCESS = "public, CC BY-NC 4.0 (Harvard Dataverse doi:10.7910/DVN/DBW86T; ISIC archive)"


def _index_files(root: Path, folders: Iterable[str], suffix: str) -> dict[str, str]:
    """File name → path relative to root, over the release's image folders (a name may be in either part)."""
    index: dict[str, str] = {}
    for folder in folders:
        directory = root / folder
        if not directory.is_dir():
            continue
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.endswith(suffix):
                    index.setdefault(entry.name, f"{folder}/{entry.name}")
    return index


def _load_metadata(source: MetadataTableSource, root: Path) -> pd.DataFrame:
    csv, raw = source.read_metadata(root, ("lesion_id", "image_id", "dx", "age", "sex"))
    images = _index_files(root, IMAGE_FOLDERS, ".jpg")
    if not images:
        tried = ", ".join(str(root / f) for f in IMAGE_FOLDERS)
        raise InputError(f"{source.card.name}: no ISIC_*.jpg images found; looked in: {tried}")
    paths = raw["image_id"].map(lambda image_id: images.get(f"{image_id}.jpg"))
    missing = paths.isna().to_numpy()
    if missing.any():
        row = int(missing.argmax())
        raise InputError(
            f"{csv}: column 'image_id', row {row}: image {raw['image_id'].iloc[row]}.jpg not found in "
            f"{', '.join(IMAGE_FOLDERS)} ({int(missing.sum())} image(s) missing)"
        )
    frame = pd.DataFrame(
        {
            "sample_id": raw["image_id"].to_numpy(),
            # HAM10000 has no patient id; the lesion is the unit several images share (MEDFAIR splits by it).
            "patient_id": raw["lesion_id"].to_numpy(),
            "path": paths.to_numpy(),
        }
    )
    frame["label_malignant"] = binary_label(
        raw["dx"], DIAGNOSES_MALIGNANT, DIAGNOSES_BENIGN, source=csv, column="dx"
    ).to_numpy()
    frame["attr_dx"] = raw["dx"].to_numpy()
    add_group(frame, "sex", raw["sex"], SEX, source=csv, column="sex")
    add_age(frame, raw["age"], source=csv, column="age", edges=age_edges(source.options))
    if "localization" in raw.columns:
        frame["attr_localization"] = raw["localization"].to_numpy()
    return frame


@register_dataset("ham10000")
class HAM10000(MetadataTableSource):
    metadata = METADATA

    card = DatasetCard(
        name="ham10000",
        title="HAM10000 dermoscopic images",
        modality="dermoscopy",
        dims=2,
        task_type="classification",
        tasks=("malignant",),
        attributes=("sex", "age"),
        access=_ACCESS,
        reference=_REFERENCE,
        notes=(
            "label malignant = dx in {akiec, mel}",
            "no patient id in the release: patient_id is lesion_id (images of one lesion stay together)",
            "sex 'unknown' is unknown, never female (DATASETS.md §7.10)",
        ),
    )

    def load(self, root: Path) -> pd.DataFrame:
        return finish(_load_metadata(self, Path(root)), dataset=self.card.name)


@register_dataset("ham10000_seg")
class HAM10000Segmentation(MetadataTableSource):
    metadata = METADATA

    card = DatasetCard(
        name="ham10000_seg",
        title="HAM10000 / ISIC 2018 Task 1 lesion segmentation",
        modality="dermoscopy",
        dims=2,
        task_type="segmentation",
        tasks=("lesion",),
        attributes=("sex", "age"),
        access=_ACCESS,
        reference=_REFERENCE,
        notes=(
            "rows: HAM10000 images that have a {image_id}_segmentation.png mask (0 background, 255 lesion)",
            "masks searched in " + ", ".join(MASK_FOLDERS) + "; an ISIC 2018 mask pairs with its "
            "ISIC2018_Task1-2_*_Input image (original resolution), a Tschandl mask with the HAM10000 image",
            "patient_id is lesion_id; sex 'unknown' stays unknown (FairMedFM made it 'M', §3.2)",
        ),
    )

    def load(self, root: Path) -> pd.DataFrame:
        root = Path(root)
        frame = _load_metadata(self, root)
        masks = _index_files(root, MASK_FOLDERS, "_segmentation.png")
        if not masks:
            tried = ", ".join(str(root / f) for f in MASK_FOLDERS)
            raise InputError(f"{self.card.name}: no *_segmentation.png masks found; looked in: {tried}")
        frame["path_mask"] = frame["sample_id"].map(
            lambda image_id: masks.get(f"{image_id}_segmentation.png")
        )
        frame = frame[frame["path_mask"].notna()].drop(columns=["label_malignant"])
        # An ISIC 2018 mask pairs with the ISIC 2018 input image (same id, original resolution), not the
        # resized HAM10000 copy, or image and mask would differ in size.
        for row, (image_id, mask) in enumerate(zip(frame["sample_id"], frame["path_mask"])):
            image_folder = MASK_FOLDERS[mask.split("/")[0]]
            if image_folder is None:
                continue
            image = f"{image_folder}/{image_id}.jpg"
            if not (root / image).is_file():
                raise InputError(
                    f"{self.card.name}: mask {root / mask} has no ISIC 2018 input image: {root / image} not found"
                )
            frame.iloc[row, frame.columns.get_loc("path")] = image
        frame["mask_foreground"] = 255
        return finish(frame, dataset=self.card.name)
