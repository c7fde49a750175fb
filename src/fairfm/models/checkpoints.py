"""Offline checkpoint resolution and safe loading.

Nothing here touches the network. A model's weights come from ``checkpoint`` (a file or a local directory) or
from a cache already on disk (the Hugging Face hub cache, the torch hub cache, ``$FAIRFM_HOME/checkpoints``);
when none exists, :func:`resolve_checkpoint` fails at once — before torch is even imported — naming every path it
looked at and where to download the weights. Weights are read with safetensors or
``torch.load(weights_only=True)``; a checkpoint that needs pickle is refused unless the caller trusts it.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from fairfm.errors import InputError

if TYPE_CHECKING:
    from fairfm.models.registry import ModelCard

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".tar", ".ckpt")
TRUST_HINT = (
    "it needs Python pickle, which can run arbitrary code when loaded; re-save it as safetensors, or pass "
    "--trust-checkpoint (trust_checkpoint=True) if you trust its source"
)


def ensure_offline() -> None:
    """Make every Hugging Face client run offline, whatever was imported before.

    huggingface_hub reads ``HF_HUB_OFFLINE`` once at import (MODELS.md §6): setting the variable afterwards has no
    effect and a cache miss then retries the network for ~47 s. So set the variables *and*, if huggingface_hub is
    already imported, flip its module-level constant as well. Loaders additionally pass ``local_files_only=True``.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True


def hf_hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def torch_hub_checkpoints() -> Path:
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return Path(home).expanduser() / "hub" / "checkpoints"


def fairfm_checkpoints() -> Path:
    home = os.environ.get("FAIRFM_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "fairfm"
    )
    return Path(home).expanduser() / "checkpoints"


def hf_snapshot(repo_id: str) -> Path | None:
    """The newest complete snapshot folder of ``repo_id`` in the local hub cache, or None (no network)."""
    repo_dir = hf_hub_cache() / ("models--" + repo_id.replace("/", "--"))
    ref = repo_dir / "refs" / "main"
    if ref.is_file():
        snapshot = repo_dir / "snapshots" / ref.read_text().strip()
        if snapshot.is_dir():
            return snapshot
    snapshots = (
        sorted((repo_dir / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime)
        if repo_dir.is_dir()
        else []
    )
    return snapshots[-1] if snapshots else None


def resolve_checkpoint(card: "ModelCard", checkpoint: str | os.PathLike | None) -> Path | None:
    """The local file or folder holding ``card``'s weights; InputError listing what was searched otherwise.

    Returns None only for cards that need no weights (the from-scratch baseline).
    """
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.exists():
            raise InputError(f"model {card.name!r}: checkpoint {path} not found")
        if path.is_dir() and not any(path.iterdir()):
            raise InputError(f"model {card.name!r}: checkpoint folder {path} is empty")
        return path
    if not card.needs_weights:
        return None
    looked: list[str] = []
    for repo_id in card.hf_repos:
        snapshot = hf_snapshot(repo_id)
        looked.append(
            f"{hf_hub_cache() / ('models--' + repo_id.replace('/', '--'))} (hub cache of {repo_id})"
        )
        if snapshot is not None and _has_weights(snapshot, card.checkpoint_files):
            return snapshot
    for folder in (fairfm_checkpoints() / card.name, torch_hub_checkpoints()):
        for name in card.checkpoint_files:
            candidate = folder / name
            looked.append(str(candidate))
            if candidate.exists():
                return candidate
    raise InputError(
        f"model {card.name!r}: no weights found offline; pass --checkpoint PATH (a file or a local folder). "
        f"Looked at: {'; '.join(looked) or 'nothing (no known cache location)'}. Download: {card.download}"
    )


def _has_weights(folder: Path, names: Iterable[str]) -> bool:
    names = list(names)
    if names and any((folder / name).exists() for name in names):
        return True
    return any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir())


def weights_id(path: Path | None, *, extra: str = "") -> str:
    """Content hash of the weights (file, or every weight file in a folder) — the feature-cache key part.

    Hashes are memoised per (path, size, mtime) so a repeated extraction does not re-read gigabytes.
    """
    if path is None:
        return "random-init:" + extra
    files = (
        [path]
        if path.is_file()
        else sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name.endswith(".json"))
        )
    )
    digest = hashlib.sha256(extra.encode())
    for file in files:
        digest.update(file.name.encode())
        digest.update(_file_sha256(file).encode())
    return digest.hexdigest()[:32]


_HASH_MEMO: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    memo_key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo_key not in _HASH_MEMO:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        _HASH_MEMO[memo_key] = digest.hexdigest()
    return _HASH_MEMO[memo_key]


def load_weights_file(path: Path, *, trust_checkpoint: bool = False) -> Any:
    """Read a weights file without executing pickle code unless trusted. Returns what the file holds."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise InputError(f"{path}: cannot be read as safetensors ({exc})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError / RuntimeError for non-weights content
        if not is_pickle_refusal(str(exc)):
            raise InputError(
                f"{path}: cannot be read as a PyTorch checkpoint ({str(exc).splitlines()[0]})"
            ) from None
        if not trust_checkpoint:
            raise InputError(f"{path}: refused to load this checkpoint: {TRUST_HINT}") from None
    return torch.load(path, map_location="cpu", weights_only=False)


def is_pickle_refusal(message: str) -> bool:
    """Whether torch's weights-only unpickler refused a *readable* checkpoint (rather than a corrupt file)."""
    return "Unsupported global" in message or "can still be loaded" in message


def extract_state_dict(
    obj: Any,
    *,
    path: Path,
    keys: tuple[str, ...] = ("state_dict", "model", "module"),
    strip_prefixes: tuple[str, ...] = (),
    drop_prefixes: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Unwrap the tensor dict from a training checkpoint and rename its keys.

    ``keys``: nested dict keys tried in order (``{"model": …}``, ``{"state_dict": …}``); ``strip_prefixes`` are
    removed from key starts (``module.base_encoder.``); keys starting with ``drop_prefixes`` (after stripping) are
    removed (projection heads, decoders).
    """
    import torch

    state = obj
    for _ in range(3):
        if isinstance(state, dict) and not _is_tensor_dict(state):
            inner = next((state[k] for k in keys if isinstance(state.get(k), dict)), None)
            if inner is None:
                break
            state = inner
    if not isinstance(state, dict) or not _is_tensor_dict(state):
        raise InputError(f"{path}: no state dict of tensors found (tried keys {', '.join(keys)})")
    result: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for prefix in strip_prefixes:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        if any(key.startswith(prefix) for prefix in drop_prefixes):
            continue
        result[key] = value
    return result


def _is_tensor_dict(obj: dict) -> bool:
    import torch

    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def check_load(result: Any, *, path: Path, model_name: str, allowed_missing: tuple[str, ...] = ()) -> None:
    """After ``load_state_dict(strict=False)``: refuse checkpoints that leave real weights uninitialised."""
    missing = [k for k in result.missing_keys if not any(k.startswith(p) for p in allowed_missing)]
    if missing:
        shown = ", ".join(missing[:5])
        raise InputError(
            f"{path}: does not fit model {model_name!r}: {len(missing)} weight(s) missing from the checkpoint "
            f"(e.g. {shown})"
        )
