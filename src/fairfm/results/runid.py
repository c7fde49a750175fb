"""Run ids: sha256 of the resolved spec + the code version + the data version (+ the checkpoint's content).

Repeating a run with the same spec, code and data gives the same id, so the store finds it instead of computing it
again; changing any of them gives a new id. A checkpoint named in the spec is identified by the hash of its content,
not only its path, so weights re-saved under the same name are never mistaken for the old ones.
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
    """sha256 of the dataset's ``dataset.json`` (which itself records the checksums of the source files and the
    split recipe)."""
    manifest = Path(dataset) / "dataset.json"
    if not manifest.is_file():
        raise InputError(f"dataset: {manifest} not found — is {dataset} a folder written by 'fairfm datasets prepare'?")
    digest = hashlib.sha256()
    with manifest.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_version(checkpoint: str | os.PathLike | None) -> str | None:
    """Content hash of a checkpoint file or folder (the same id the feature cache uses); None without one."""
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    if not path.exists():
        raise InputError(f"checkpoint: {path} not found")
    from fairfm.models.checkpoints import weights_id  # torch-free; memoised per (path, size, mtime)

    return weights_id(path)


def compute_run_id(resolved_spec: Mapping[str, Any], code: Mapping[str, Any], data: str,
                   weights: str | None = None) -> str:  # fmt: skip
    """The run id of an already resolved spec (see :meth:`fairfm.spec.RunSpec.resolve`)."""
    from fairfm.spec import canonical_json

    document = {"spec": dict(resolved_spec), "code": dict(code), "data": data}
    if weights is not None:
        document["weights"] = weights
    return hashlib.sha256(canonical_json(document).encode("utf-8")).hexdigest()[:RUN_ID_LENGTH]


def config_id(resolved_spec: Mapping[str, Any], code: Mapping[str, Any], data: str, weights: str | None = None) -> str:
    """Like the run id but without the seed: runs that differ only by seed share it (seed aggregation)."""
    without_seed = {k: v for k, v in resolved_spec.items() if k != "seed"}
    return compute_run_id(without_seed, code, data, weights)
