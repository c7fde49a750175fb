"""Prepare a dataset from its raw release: SampleTable + split → ``samples.parquet`` + ``dataset.json``.

``dataset.json`` records what is needed to reproduce and share the split: the fairfm and dataset versions, the
raw root, the SHA-256 of every source file read, the split recipe (policy, seed, fractions, …), the age bins and
the counts per split × group × label. Both files are written atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from fairfm.data.attributes import DEFAULT_AGE_EDGES, UNKNOWN, age_groups
from fairfm.data.checksums import sha256_file
from fairfm.data.registry import get_dataset
from fairfm.data.sampletable import SPLITS, group_columns, label_columns, validate_sample_table
from fairfm.data.splits import make_split
from fairfm.errors import InputError
from fairfm.tableio import atomic_path, write_text_atomic

SAMPLES_FILE = "samples.parquet"
MANIFEST_FILE = "dataset.json"
FORMAT_VERSION = 1
#: Below these sizes a group's metrics are too noisy to report (describe warns).
MIN_GROUP_SAMPLES = 30
MIN_GROUP_POSITIVES = 10
#: How many referenced image paths prepare looks for on disk (a sampled stat: a full check is 'datasets check').
IMAGE_PRESENCE_SAMPLE = 200


def _arrow_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Raw ``attr_*`` columns may mix numbers and text (e.g. codes and "unknown"); Parquet needs one type."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object:
            kinds = {type(v) for v in out[column].tolist() if v is not None and not (isinstance(v, float) and np.isnan(v))}
            if len(kinds) > 1:
                out[column] = out[column].map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    return out


def count_table(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Counts per split × attribute group × task: samples, patients, positives, negatives, unknown labels."""
    records: list[dict[str, Any]] = []
    labels = label_columns(frame)
    split = frame["split"].astype(str) if "split" in frame.columns else pd.Series("all", index=frame.index)
    for group_column in group_columns(frame):
        attribute = group_column.removeprefix("group_")
        work = pd.DataFrame({"split": split.to_numpy(), "group": frame[group_column].astype(str).to_numpy(),
                             "patient_id": frame["patient_id"].to_numpy()})
        for label in labels:
            values = pd.to_numeric(frame[label], errors="coerce").to_numpy(dtype=float)
            work[f"{label}:pos"] = values == 1
            work[f"{label}:neg"] = values == 0
            work[f"{label}:nan"] = np.isnan(values)
        grouped = work.groupby(["split", "group"], sort=True)
        sums = grouped[[c for c in work.columns if ":" in c]].sum() if labels else None
        sizes = grouped.size()
        patients = grouped["patient_id"].nunique()
        for key, n in sizes.items():
            base = {"split": key[0], "attribute": attribute, "group": key[1], "n": int(n),
                    "patients": int(patients.loc[key])}
            if not labels:
                records.append({**base, "task": None, "positives": None, "negatives": None, "unknown_label": None})
            for label in labels:
                row = sums.loc[key]
                records.append({**base, "task": label.removeprefix("label_"), "positives": int(row[f"{label}:pos"]),
                                "negatives": int(row[f"{label}:neg"]), "unknown_label": int(row[f"{label}:nan"])})
    return records


def _parse_edges(value: Any) -> list[float]:
    parts = value.split(",") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
    try:
        return [float(part) for part in parts]
    except (TypeError, ValueError):
        raise InputError(f"option age_edges={value!r}: expected numbers, e.g. 60 or 40,60,80") from None


def write_prepared(
    frame: pd.DataFrame, out: str | os.PathLike, manifest: Mapping[str, Any]
) -> tuple[Path, Path]:
    """Write ``samples.parquet`` and ``dataset.json`` atomically (each file appears whole or not at all).

    ``dataset.json`` records the SHA-256 of the written ``samples.parquet`` (``samples_sha256``): a SampleTable
    edited afterwards is a new data version for the results store, and its runs record that it was edited."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samples = out / SAMPLES_FILE
    with atomic_path(samples) as tmp:
        _arrow_safe(frame).to_parquet(tmp, index=False)
        manifest = {**manifest, "samples_sha256": sha256_file(tmp)}
    manifest_path = out / MANIFEST_FILE
    write_text_atomic(manifest_path, json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n")
    return samples, manifest_path


def prepare(
    name: str,
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    split: str = "patient",
    seed: int = 0,
    split_params: Mapping[str, Any] | None = None,
    source_options: Mapping[str, Any] | None = None,
    age_edges: Sequence[float] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Load dataset ``name`` from its raw release at ``root``, split it, write ``out/samples.parquet`` and
    ``out/dataset.json``; return the manifest, with ``images_found`` (:func:`image_presence`, not written to
    dataset.json) saying how many of a sample of the referenced images exist under ``root``."""
    from fairfm import __version__

    from fairfm.data.splits import get_split_policy

    get_split_policy(split)  # an unknown policy fails before the (possibly long) read of the release
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: dataset root not found (expected the release folder as downloaded)")
    options = dict(source_options or {})
    # One set of age edges for the loader and for the final group_age: --age-bins, else the loader option
    # age_edges (a number, a list, or "40,60" from the command line), else <60 / ≥60.
    if age_edges is None and options.get("age_edges") is not None:
        age_edges = _parse_edges(options["age_edges"])
    if age_edges is not None:
        options["age_edges"] = tuple(float(e) for e in age_edges)
    source_options = options
    source = get_dataset(name, **options)
    steps = ["reading release", "splitting", "checksums", "writing"]

    def run(advance) -> dict[str, Any]:
        files = source.source_files(root)
        frame = source.load(root)
        validate_sample_table(frame, source=f"{name} loader")
        edges = list(age_edges) if age_edges is not None else list(DEFAULT_AGE_EDGES)
        if "attr_age" in frame.columns:
            frame["group_age"] = age_groups(pd.to_numeric(frame["attr_age"], errors="coerce"), edges)
        advance()
        result = make_split(frame, split, seed=seed, **dict(split_params or {}))
        table = validate_sample_table(result.frame, source=f"{name} after split {split!r}")
        advance()
        checksums = {}
        for path in files:
            path = Path(path)
            if not path.is_file():
                raise InputError(f"{name}: source file not found: {path}")
            try:
                key = str(path.relative_to(root))
            except ValueError:
                key = str(path)
            checksums[key] = sha256_file(path)
        split_file = result.recipe.get("split_file")
        advance()
        manifest = {
            "format_version": FORMAT_VERSION,
            "fairfm_version": __version__,
            "dataset": name,
            "dataset_version": getattr(source, "version", None) or source.card.title,
            "card": source.card.to_dict(),
            "source_options": dict(source_options or {}),
            "root": str(root.resolve()),
            "source_files": checksums,
            "split": {**result.recipe, **({"split_file": str(split_file)} if split_file else {})},
            "age_edges": edges if "attr_age" in frame.columns else None,
            "n_samples": int(len(table)),
            "n_patients": int(table["patient_id"].nunique()),
            "split_sizes": {s: int((table["split"] == s).sum()) for s in SPLITS},
            "counts": count_table(table),
        }
        write_prepared(table, out, manifest)
        advance()
        # Not written to dataset.json: it describes the disk (images may be copied later), not the data.
        return {**manifest, "images_found": image_presence(table, root)}

    if not progress:
        return run(lambda: None)
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(f"preparing {name}", total=len(steps))
        return run(lambda: bar.advance(task))


def image_presence(table: pd.DataFrame, root: str | os.PathLike, *, limit: int = IMAGE_PRESENCE_SAMPLE,
                   seed: int = 0) -> dict[str, int]:
    """How many of up to ``limit`` referenced files (``path`` / ``path_*`` values, drawn at random) exist under
    ``root``: ``{"checked": n, "found": k}``. Cheap (no file is read) — 'fairfm datasets check' reads them all."""
    root = Path(root)
    references = [str(value) for column in table.columns if column == "path" or str(column).startswith("path_")
                  for value in table[column].tolist()
                  if value is not None and not (isinstance(value, float) and np.isnan(value)) and str(value)]
    if len(references) > limit:
        picked = np.random.default_rng(seed).choice(len(references), size=limit, replace=False)
        references = [references[i] for i in sorted(picked)]
    found = sum((root / reference).exists() for reference in references)
    return {"checked": len(references), "found": int(found)}


def image_presence_warning(presence: Mapping[str, int], root: str | os.PathLike) -> str | None:
    """A one-line warning when some of the checked images are missing (None when all exist)."""
    checked, found = int(presence.get("checked", 0)), int(presence.get("found", 0))
    if found == checked:
        return None
    share = "none" if found == 0 else f"only {found}"
    return (f"{share} of {checked} referenced images checked at random exist under {root}: is --root the folder "
            "the images were downloaded to? ('fairfm datasets check' lists every missing file)")


def load_prepared(directory: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read a prepared dataset folder; errors name the missing or unreadable file."""
    directory = Path(directory)
    manifest_path, samples_path = directory / MANIFEST_FILE, directory / SAMPLES_FILE
    for path in (manifest_path, samples_path):
        if not path.is_file():
            raise InputError(f"{path}: not found — is {directory} a folder written by 'fairfm datasets prepare'?")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{manifest_path}: not valid JSON ({exc})") from None
    from fairfm.tableio import read_table

    frame = read_table(samples_path)
    validate_sample_table(frame, source=str(samples_path))
    return frame, manifest


def describe(directory: str | os.PathLike, *, min_samples: int = MIN_GROUP_SAMPLES,
             min_positives: int = MIN_GROUP_POSITIVES,
             intersections: Sequence[Sequence[str]] = ()) -> dict[str, Any]:
    """Counts per split × group × task and warnings for groups too small to evaluate (in val or test).

    ``intersections`` adds intersectional groups, e.g. ``[("sex", "race")]`` → attribute ``sex×race`` with groups
    like ``F|Black`` (unknown when any part is unknown).
    """
    from fairfm.groups import intersect, intersection_name

    for option, value in (("--min-samples", min_samples), ("--min-positives", min_positives)):
        if value < 0:
            raise InputError(f"{option} {value}: expected a count ≥ 0")
    frame, manifest = load_prepared(directory)
    for attributes in intersections:
        columns = [a if a.startswith("group_") else f"group_{a}" for a in attributes]
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            known = ", ".join(c.removeprefix("group_") for c in frame.columns if c.startswith("group_"))
            raise InputError(f"--intersect {','.join(attributes)}: no column {missing[0]!r}; attributes: {known}")
        name = intersection_name([c.removeprefix("group_") for c in columns])
        frame[f"group_{name}"] = intersect(frame, columns).to_numpy()
    counts = count_table(frame)
    warnings: list[str] = []
    recipe = manifest.get("split") or {}
    if "split" not in frame.columns:
        warnings.append("no 'split' column: no run can use this table (prepare it with a split policy)")
    else:
        present = set(frame["split"].astype(str))
        for name in SPLITS:
            if name not in present:
                needed = "the trained usages need it" if name == "train" else "every run needs val and test"
                warnings.append(f"the split has no '{name}' samples ({needed})")
    if "split" in frame.columns:
        from fairfm.data.splits import leaking_patients

        leaking = leaking_patients(frame)
        if leaking or recipe.get("leaks_patients"):
            warnings.append(
                f"split policy {recipe.get('policy')!r} splits by image, not by patient: {len(leaking)} "
                "patient(s) have samples in more than one split, so test metrics are optimistic; use it only to "
                "compare with the reference system it reproduces, never to report results"
            )
    for record in counts:
        if record["split"] not in ("val", "test") or record["group"] == UNKNOWN:
            continue
        where = f"{record['split']}: {record['attribute']}={record['group']}"
        if record["task"] is None or record["task"] == label_columns(frame)[0].removeprefix("label_"):
            if record["n"] < min_samples:
                warnings.append(f"{where} has {record['n']} samples (< {min_samples}); its metrics will be unreliable")
        if record["task"] is not None:
            smaller = min(record["positives"], record["negatives"])
            if smaller < min_positives:
                kind = "positives" if record["positives"] <= record["negatives"] else "negatives"
                warnings.append(f"{where}, task {record['task']}: {smaller} {kind} (< {min_positives}); "
                                "AUROC and rates for this group are not evaluable")
    return {"dataset": manifest.get("dataset"), "split": manifest.get("split"), "n_samples": len(frame),
            "counts": counts, "warnings": warnings}


def check(directory: str | os.PathLike, *, root: str | os.PathLike | None = None,
          progress: bool = False) -> list[dict[str, Any]]:
    """Read every file the prepared SampleTable references; return all problems (empty list when all read)."""
    from fairfm.data.images import verify_table_files

    frame, manifest = load_prepared(directory)
    base = Path(root) if root is not None else Path(manifest.get("root") or directory)
    if not base.is_dir():
        raise InputError(f"{base}: dataset root not found (pass --root where the images are)")
    return verify_table_files(frame, base, progress=progress)
