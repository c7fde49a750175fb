"""Run ids: sha256 of the resolved spec + the data version + the checkpoint's content + the results versions.

Repeating a run with the same spec, data and weights gives the same id, so the store finds it instead of computing
it again; changing any of them gives a new id. The data version covers the *content* of ``samples.parquet`` (labels,
groups, splits), not only ``dataset.json``, so a SampleTable edited in place is a new run, never "found". A checkpoint
named in the spec is identified by the hash of its content, not only its path, so weights re-saved under the same
name are never mistaken for the old ones. The code enters through the results versions of the components a run uses
(:mod:`fairfm.results.versions`), not through the git commit: upgrading fairfm for a typo fix keeps every stored run,
and a change that alters numbers bumps a version, which makes the older runs *stale* (same :func:`spec_key`, older
results versions). The exact code version is recorded in ``meta.json`` (:func:`code_version`).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

from fairfm.errors import InputError

RUN_ID_LENGTH = 16  # hex characters (64 bits): collisions are negligible for any realistic store


@lru_cache(maxsize=1)
def _git_commit() -> str | None:
    """The commit of the installed source tree when it is a git checkout (editable install), else None."""
    import fairfm

    source = Path(fairfm.__file__).resolve().parent
    top = next((p for p in (source, *source.parents) if (p / ".git").exists()), None)
    if top is None:
        return None
    try:
        out = subprocess.run(["git", "-C", str(top), "rev-parse", "--verify", "--quiet", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def code_version() -> dict[str, Any]:
    """``{"fairfm": __version__, "git": commit or None}`` of the running code."""
    import fairfm

    return {"fairfm": fairfm.__version__, "git": _git_commit()}


def data_version(dataset: str | os.PathLike) -> str:
    """sha256 of the dataset's ``dataset.json`` (source-file checksums, split recipe) and of its ``samples.parquet``
    content (the SampleTable itself: labels edited in place give another version)."""
    folder = Path(dataset)
    manifest = folder / "dataset.json"
    if not manifest.is_file():
        raise InputError(f"dataset: {manifest} not found — is {dataset} a folder written by 'fairfm datasets prepare'?")
    digest = hashlib.sha256(_file_sha256(manifest).encode())
    samples = samples_checksum(folder)
    if samples is not None:
        digest.update(b"samples.parquet:" + samples.encode())
    return digest.hexdigest()


def samples_checksum(dataset: str | os.PathLike) -> str | None:
    """sha256 of ``samples.parquet`` (memoised per size and mtime); None when the folder has none."""
    samples = Path(dataset) / "samples.parquet"
    return _file_sha256(samples) if samples.is_file() else None


_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    # Memoised per (path, size, mtime) like the checkpoint hashes: a sweep asks for the same dataset's version once
    # per cell. An edit in place changes the mtime (and usually the size), so it is hashed again.
    stat = path.stat()
    memo_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo_key not in _HASH_MEMO:
        from fairfm.data.checksums import sha256_file

        _HASH_MEMO[memo_key] = sha256_file(path)
    return _HASH_MEMO[memo_key]


def weights_version(checkpoint: str | os.PathLike | None) -> str | None:
    """Content hash of a checkpoint file or folder (the same id the feature cache uses); None without one."""
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    if not path.exists():
        raise InputError(f"checkpoint: {path} not found")
    from fairfm.models.checkpoints import weights_id  # torch-free; memoised per (path, size, mtime)

    return weights_id(path)


def results_version(resolved_spec: Mapping[str, Any]) -> dict[str, int]:
    """The results versions of the components the run uses (see :mod:`fairfm.results.versions`)."""
    from fairfm.results.versions import run_components

    method = resolved_spec.get("method")
    return run_components(str(resolved_spec.get("usage")), None if method is None else str(method))


def _identity(resolved_spec: Mapping[str, Any], data: str, weights: str | None,
              results: Mapping[str, int] | None) -> str:  # fmt: skip
    from fairfm.spec import canonical_json

    document: dict[str, Any] = {"spec": dict(resolved_spec), "data": data}
    if weights is not None:
        document["weights"] = weights
    if results is not None:
        document["results"] = dict(results)
    return hashlib.sha256(canonical_json(document).encode("utf-8")).hexdigest()[:RUN_ID_LENGTH]


def compute_run_id(resolved_spec: Mapping[str, Any], data: str, weights: str | None = None,
                   results: Mapping[str, int] | None = None) -> str:  # fmt: skip
    """The run id of an already resolved spec (see :meth:`fairfm.spec.RunSpec.resolve`): spec + data + weights +
    results versions (default: those of the running code)."""
    return _identity(resolved_spec, data, weights, results_version(resolved_spec) if results is None else results)


def spec_key(resolved_spec: Mapping[str, Any], data: str, weights: str | None = None) -> str:
    """The run id without the results versions: a stored run with this key and another run id is the same run made
    by code whose numbers differ (stale)."""
    return _identity(resolved_spec, data, weights, None)


def config_id(resolved_spec: Mapping[str, Any], data: str, weights: str | None = None,
              results: Mapping[str, int] | None = None) -> str:
    """Like the run id but without the (training) seed: runs that differ only by seed share it (seed aggregation,
    within one split seed)."""
    without_seed = {k: v for k, v in resolved_spec.items() if k != "seed"}
    return _identity(without_seed, data, weights, results_version(resolved_spec) if results is None else results)


def split_config_id(resolved_spec: Mapping[str, Any], manifest: Mapping[str, Any], weights: str | None = None,
                    results: Mapping[str, int] | None = None) -> str:
    """Like :func:`config_id` but also without the split seed and the prepared folder: runs of one release (its
    source files, as recorded in ``dataset.json``) split with different split seeds share it (aggregation over
    split seeds, ``fairfm runs aggregate --over split_seed``)."""
    without = {k: v for k, v in resolved_spec.items() if k not in ("seed", "split_seed", "dataset")}
    release = {name: manifest.get(name) for name in ("dataset", "dataset_version", "source_options", "source_files",
                                                     "root")}  # fmt: skip
    from fairfm.spec import canonical_json

    data = hashlib.sha256(canonical_json(release).encode("utf-8")).hexdigest()
    return _identity(without, data, weights, results_version(resolved_spec) if results is None else results)
