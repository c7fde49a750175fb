"""Promptable segmentation (SAM and its medical variants) with prompts drawn from the ground-truth mask
(:mod:`fairfm.adapt.sam_prompting`): each row is scored with its own Dice/IoU, nothing is trained or thresholded."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Optional

from pydantic import Field, field_validator

from fairfm.errors import InputError
from fairfm.usages.base import _NAME, HParams, UsageOutput, register_usage

if TYPE_CHECKING:
    import pandas as pd

    from fairfm.spec import RunSpec


class SamPromptHParams(HParams):
    """Prompts from the ground-truth mask (METHODS.md §2.7; see fairfm.adapt.sam_prompting)."""

    def dataset_tasks(self, dataset: Path, manifest: Mapping[str, Any], labels: list[str],
                      requested: list[str] | None) -> list[str]:  # fmt: skip
        from fairfm.adapt.sam_prompting import segmentation_tasks  # numpy/pandas only

        return segmentation_tasks(dataset, manifest, self.model_dump(mode="json"), requested)

    prompt: Literal["center", "centroid", "rand", "rands", "bbox"] = Field(
        "center", description="center: bounding-box centre (FairMedFM); centroid: centroid snapped to the mask; "
                              "rand / rands: 1 / n_points uniform foreground pixels; bbox: tight box")
    n_points: int = Field(5, ge=1, description="points drawn (with replacement) for 'rands'")
    jitter: float = Field(0.0, ge=0, description="σ of independent Gaussian noise per coordinate, as a fraction of "
                                                 "the mean side of the mask's box (0: off, as in FairMedFM)")
    jitter_cap: int = Field(20, ge=0, description="noise clipped to ± this many pixels of the model's input frame")
    multimask: bool = Field(True, description="3 candidate masks, the highest predicted IoU kept (FairMedFM)")
    level: Literal["volume", "slice"] = Field(
        "volume", description="3D data: one row per volume (Dice over all slices), or per slice with foreground "
                              "(FairMedFM's compatibility view)")
    structures: Optional[dict[str, list[float]]] = Field(
        None, description="label values of each structure, e.g. {cup: [-2], disc: [-1, -2]} (null: the dataset's "
                          "defaults; binary masks: every non-zero value)")
    save_masks: bool = Field(False, description="write the kept masks to STORE/masks/<run_id>.npz, named by the "
                                                "pred_mask_file / pred_mask_key columns")

    @field_validator("structures")
    @classmethod
    def _structures(cls, value: dict[str, list[float]] | None) -> dict[str, list[float]] | None:
        for name, values in (value or {}).items():
            if not _NAME.match(name):
                raise ValueError(f"structure name {name!r} is not a valid name (letters, digits, '_', '-', '.')")
            if not values:
                raise ValueError(f"structure {name!r}: empty list of label values")
            if 0 in values:
                raise ValueError(f"structure {name!r}: 0 is the background, not a structure's label value")
        if value is not None and not value:
            raise ValueError("empty mapping (leave structures out to use the dataset's defaults)")
        return value


@register_usage("sam_prompt", hparams=SamPromptHParams, trains=False, loop=None, model_family="segmentation",
                segmentation=True)  # fmt: skip
def _sam_prompt(spec: "RunSpec", table: pd.DataFrame, tasks: list[str], *, root: Path, features_dir: Path,
                device: str, progress: bool, heads_path: Path | None, timings: dict[str, float]) -> UsageOutput:
    """Promptable segmentation with prompts from the ground-truth mask (:mod:`fairfm.adapt.sam_prompting`)."""
    from fairfm.adapt.sam_prompting import dataset_structures, mask_columns, run_sam_prompting
    from fairfm.models import create_model, get_model
    from fairfm.models.base import PromptableSegmenter
    from fairfm.runner import MASKS_DIR

    try:
        mask_columns(table)
    except InputError as exc:
        raise InputError(f"{Path(spec.dataset) / 'samples.parquet'}: {exc}") from None
    card = get_model(spec.model)  # of the segmentation family: the runner checked (Usage.family_refusal)
    hp = spec.typed_hparams()
    manifest = spec.manifest()
    structures = dataset_structures(manifest.get("dataset"), hp.structures, tasks, where=str(spec.dataset))
    dims = (manifest.get("card") or {}).get("dims")
    volumes = None if dims is None else int(dims) == 3  # no card (a hand-made dataset): the masks decide
    started = time.perf_counter()
    model = create_model(spec.model, spec.checkpoint, trust_checkpoint=spec.trust_checkpoint, **spec.model_options)
    if not isinstance(model, PromptableSegmenter):
        raise InputError(f"model {card.name!r} did not build a promptable segmenter")
    model.module.to(device)  # segment() follows the module's device and encodes each image once
    timings["model_s"] = time.perf_counter() - started
    # The run's kept masks go beside its other per-run files (STORE/heads/<run_id>… → STORE/masks/<run_id>.npz).
    masks_out = heads_path.parent.parent / MASKS_DIR / f"{heads_path.stem}.npz" if hp.save_masks and heads_path else None
    started = time.perf_counter()
    result = run_sam_prompting(model, table, structures, root=root, prompt=hp.prompt, n_points=hp.n_points,
                               jitter=hp.jitter, jitter_cap=hp.jitter_cap, multimask=hp.multimask, seed=spec.seed,
                               volumes=volumes, level=hp.level, masks_out=masks_out, column=spec.image_column(),
                               progress=progress)  # fmt: skip
    timings["segment_s"] = time.perf_counter() - started
    predictions = result.predictions
    if masks_out is not None:  # named relative to the store folder, so a moved store still finds its masks
        predictions["pred_mask_file"] = f"{MASKS_DIR}/{masks_out.name}"
    meta = {"sam_prompt": result.meta, "model_preprocess": model.preprocess.describe(), "segment_device": device,
            "masks": None if masks_out is None else f"{MASKS_DIR}/{masks_out.name}"}  # fmt: skip
    return UsageOutput({}, meta, predictions=predictions)
