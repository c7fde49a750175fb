"""Planted-bias synthetic data: chest-radiograph-like images whose biases are known exactly (``truth.json``).

Each image is a small greyscale "radiograph": a body silhouette, two dark lung fields, a bright spine and, for a
positive sample, a round opacity (the "lesion") in one lung. The sensitive attribute is ``sex`` (target group F,
reference group M, configurable) and every patient has an age. Mechanisms, combinable:

- ``prevalence_shift``: the disease is more common in the target group (P(y=1) differs by group).
- ``under_representation``: the target group is a minority of patients.
- ``label_noise``: a fraction of the target group's true positives are labelled negative — under-diagnosis, as
  Seyyed-Kalantari et al. (Nat Med 2021) found for under-served groups. ``true_disease`` keeps the clean label.
- ``acquisition_shift``: the target group's images have lower contrast, more noise and a bright corner marker — a
  shortcut a model can use to recognise the group.
- ``appearance_shift``: the target group's lesions are smaller and fainter (group-dependent disease appearance).

The output folder is a prepared dataset (``samples.parquet`` with a patient-level split and ``dataset.json``) plus
``images/*.png`` and ``truth.json``; its ``root`` is the folder itself. Generation is vectorised: 2,000 64-px images
take about a second.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from fairfm.data.attributes import age_groups
from fairfm.errors import InputError

MECHANISMS = ("prevalence_shift", "under_representation", "label_noise", "acquisition_shift", "appearance_shift")

#: Default strengths of each mechanism (recorded in truth.json).
DEFAULTS: dict[str, dict[str, float]] = {
    "base": {"prevalence": 0.3, "target_fraction": 0.5, "contrast": 1.0, "noise": 0.03, "lesion_radius": 0.09,
             "lesion_amplitude": 0.35},
    "prevalence_shift": {"target_prevalence": 0.5},
    "under_representation": {"target_fraction": 0.2},
    "label_noise": {"flip_rate": 0.35},
    "acquisition_shift": {"contrast": 0.6, "noise": 0.08, "marker": 1.0},
    "appearance_shift": {"lesion_radius": 0.06, "lesion_amplitude": 0.18},
}


def _mechanisms(names: Iterable[str] | None) -> list[str]:
    if names is None:
        return list(MECHANISMS)
    chosen: list[str] = []
    for name in names:
        for part in str(name).split(","):
            part = part.strip()
            if not part or part == "none":
                continue
            if part not in MECHANISMS:
                raise InputError(f"--mechanism {part!r}: expected one of {', '.join(MECHANISMS)} (or none)")
            if part not in chosen:
                chosen.append(part)
    return chosen


def _render(
    rng: np.random.Generator,
    size: int,
    disease: np.ndarray,
    contrast: np.ndarray,
    noise: np.ndarray,
    marker: np.ndarray,
    radius: np.ndarray,
    amplitude: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Render a batch of images (N, size, size) in [0, 1] and return them with each lesion's centre (N, 2)."""
    n = len(disease)
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(grid, grid, indexing="ij")
    # Per-image anatomy jitter (position and scale) so images are not identical apart from the lesion.
    dx = rng.normal(0, 0.02, n).astype(np.float32)[:, None, None]
    dy = rng.normal(0, 0.02, n).astype(np.float32)[:, None, None]
    scale = rng.normal(1, 0.04, n).astype(np.float32)[:, None, None]
    body = (((x - 0.5 - dx) / (0.42 * scale)) ** 2 + ((y - 0.55 - dy) / (0.47 * scale)) ** 2) < 1
    lung_l = (((x - 0.33 - dx) / (0.13 * scale)) ** 2 + ((y - 0.5 - dy) / (0.28 * scale)) ** 2) < 1
    lung_r = (((x - 0.67 - dx) / (0.13 * scale)) ** 2 + ((y - 0.5 - dy) / (0.28 * scale)) ** 2) < 1
    spine = np.abs(x - 0.5 - dx) < 0.035 * scale
    image = 0.08 + 0.5 * body + 0.2 * (spine & body) - 0.33 * (lung_l | lung_r)
    # Lesion: a Gaussian opacity in a random lung, for positives only.
    side = rng.integers(0, 2, n)
    cx = np.where(side == 0, 0.33, 0.67) + rng.normal(0, 0.04, n)
    cy = 0.5 + rng.normal(0, 0.1, n)
    centres = np.stack([cy, cx], axis=1).astype(np.float32)
    r = radius.astype(np.float32)[:, None, None]
    blob = np.exp(-(((x - cx[:, None, None]) ** 2 + (y - cy[:, None, None]) ** 2) / (2 * r**2)))
    image = image + (disease * amplitude).astype(np.float32)[:, None, None] * blob
    # Acquisition: contrast around mid-grey, additive noise, and a corner marker (a shortcut).
    image = 0.5 + (image - 0.5) * contrast.astype(np.float32)[:, None, None]
    image = image + rng.normal(0, 1, image.shape).astype(np.float32) * noise.astype(np.float32)[:, None, None]
    corner = (x > 0.85) & (y < 0.15)
    image = np.where(corner[None] & (marker[:, None, None] > 0), 1.0, image)
    return np.clip(image, 0, 1), centres


def generate(
    out: str | os.PathLike,
    *,
    n: int = 2000,
    size: int = 64,
    mechanisms: Sequence[str] | None = None,
    seed: int = 0,
    target_group: str = "F",
    reference_group: str = "M",
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    progress: bool = False,
) -> dict[str, Any]:
    """Write a planted-bias dataset to ``out``; return the truth (also written to ``out/truth.json``)."""
    from PIL import Image

    from fairfm.data.prepare import count_table, write_prepared
    from fairfm.data.sampletable import validate_sample_table
    from fairfm.data.splits import make_split
    from fairfm.tableio import write_text_atomic

    if n < 20:
        raise InputError(f"--n {n}: generate at least 20 images")
    if not 16 <= size <= 1024:
        raise InputError(f"--size {size}: expected 16 to 1024 pixels")
    chosen = _mechanisms(mechanisms)
    rng = np.random.default_rng(seed)
    base = DEFAULTS["base"]
    params: dict[str, dict[str, float]] = {name: dict(DEFAULTS[name]) for name in chosen}

    # Patients (1–2 images each) with sex and age; the target group's share of patients.
    target_fraction = params.get("under_representation", {}).get("target_fraction", base["target_fraction"])
    images_per_patient = rng.integers(1, 3, n)  # more than enough patients; cut to n images below
    patient_of_image = np.repeat(np.arange(n), images_per_patient)[:n]
    n_patients = int(patient_of_image.max()) + 1
    patient_sex = np.where(rng.random(n_patients) < target_fraction, target_group, reference_group)
    patient_age = np.clip(rng.normal(58, 15, n_patients), 18, 95).round()
    sex = patient_sex[patient_of_image]
    in_target = sex == target_group

    prevalence = {target_group: base["prevalence"], reference_group: base["prevalence"]}
    if "prevalence_shift" in params:
        prevalence[target_group] = params["prevalence_shift"]["target_prevalence"]
    disease = (rng.random(n) < np.where(in_target, prevalence[target_group], prevalence[reference_group])).astype(int)

    label = disease.copy()
    flipped = np.zeros(n, dtype=bool)
    if "label_noise" in params:
        candidates = in_target & (disease == 1)
        flipped = candidates & (rng.random(n) < params["label_noise"]["flip_rate"])
        label[flipped] = 0

    def per_group(name: str, key: str, default: float) -> np.ndarray:
        value = params.get(name, {}).get(key, default)
        return np.where(in_target, value, default).astype(np.float32)

    contrast = per_group("acquisition_shift", "contrast", base["contrast"])
    noise = per_group("acquisition_shift", "noise", base["noise"])
    marker = per_group("acquisition_shift", "marker", 0.0)
    radius = per_group("appearance_shift", "lesion_radius", base["lesion_radius"])
    amplitude = per_group("appearance_shift", "lesion_amplitude", base["lesion_amplitude"])

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    sample_ids = [f"synth_{i:06d}" for i in range(n)]
    paths = [f"images/{sid}.png" for sid in sample_ids]
    centres = np.zeros((n, 2), np.float32)
    batch = 512

    def write_batches(advance) -> None:
        for start in range(0, n, batch):
            stop = min(n, start + batch)
            sl = slice(start, stop)
            images, centres[sl] = _render(rng, size, disease[sl], contrast[sl], noise[sl], marker[sl], radius[sl],
                                          amplitude[sl])
            pixels = (images * 255).round().astype(np.uint8)
            # Images are written directly: samples.parquet, written atomically last, is what makes the folder a
            # dataset, so an interrupted run leaves no table pointing at half-written images.
            for i in range(stop - start):
                Image.fromarray(pixels[i]).save(out / paths[start + i], format="PNG", compress_level=1)
            advance(stop - start)

    if progress:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task("synthesising images", total=n)
            write_batches(lambda k: bar.advance(task, k))
    else:
        write_batches(lambda k: None)

    frame = pd.DataFrame({
        "sample_id": sample_ids,
        "patient_id": [f"patient_{p:06d}" for p in patient_of_image],
        "path": paths,
        "label_disease": label.astype(float),
        "attr_sex": sex,
        "group_sex": sex,
        "attr_age": patient_age[patient_of_image],
    })
    frame["group_age"] = age_groups(frame["attr_age"])
    frame["true_disease"] = disease
    frame["noise_flipped"] = flipped
    frame["lesion_y"], frame["lesion_x"] = centres[:, 0].astype(float), centres[:, 1].astype(float)
    # float64 from the parameters themselves, so the columns equal the values in truth.json exactly
    frame["lesion_radius"] = [params.get("appearance_shift", base)["lesion_radius"] if t else base["lesion_radius"]
                              for t in in_target]
    frame["lesion_amplitude"] = [
        (params.get("appearance_shift", base)["lesion_amplitude"] if t else base["lesion_amplitude"]) * d
        for t, d in zip(in_target, disease)]
    split = make_split(frame, "patient", seed=seed, fractions=list(fractions), label="disease", groups=["sex"])
    table = validate_sample_table(split.frame, source="synthetic SampleTable")

    def rate(mask: np.ndarray, values: np.ndarray) -> float | None:
        return float(values[mask].mean()) if mask.any() else None

    groups = (target_group, reference_group)
    truth = {
        "seed": seed,
        "n_samples": n,
        "n_patients": int(len(np.unique(patient_of_image))),
        "size": size,
        "attribute": "sex",
        "target_group": target_group,
        "reference_group": reference_group,
        "task": "disease",
        "mechanisms": chosen,
        "parameters": {"base": dict(base), **params},
        "planted": {
            "prevalence": prevalence,
            "target_patient_fraction": target_fraction,
            "label_noise": {"group": target_group, "flip_rate": params["label_noise"]["flip_rate"],
                            "only_positives": True} if "label_noise" in params else None,
        },
        "observed": {
            "samples": {g: int((sex == g).sum()) for g in groups},
            "true_prevalence": {g: rate(sex == g, disease) for g in groups},
            "label_prevalence": {g: rate(sex == g, label) for g in groups},
            "flipped_labels": {g: int((flipped & (sex == g)).sum()) for g in groups},
        },
        "columns": {
            "label_disease": "the label a model is trained and evaluated on (after label noise)",
            "true_disease": "the clean label (what was drawn in the image)",
            "noise_flipped": "true where label noise turned a positive into a negative",
        },
    }
    manifest = {
        "format_version": 1,
        "dataset": "synthetic",
        "dataset_version": "fairfm planted-bias v1",
        "root": str(out.resolve()),
        "source_files": {},
        "split": split.recipe,
        "age_edges": [60.0],
        "n_samples": n,
        "n_patients": truth["n_patients"],
        "split_sizes": {s: int((table["split"] == s).sum()) for s in ("train", "val", "test")},
        "counts": count_table(table),
        "truth": "truth.json",
    }
    write_prepared(table, out, manifest)
    write_text_atomic(out / "truth.json", json.dumps(truth, indent=2) + "\n")
    return truth
