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
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterable, Iterator

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
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise InputError(f"{path}: cannot be read as safetensors ({exc})") from None
    return _torch_load(path, trust_checkpoint)


def load_failure(exc: BaseException) -> str:
    """What torch.load (or a library calling it) found wrong with a file, in one line — without torch's advice to
    retry with ``weights_only=False``: that runs the file's pickle code, the unsafe path; ``--trust-checkpoint``
    is fairfm's explicit opt-in for a trusted file."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if "weights_only" not in line]
    if not lines:
        return type(exc).__name__ + (" (the file is empty or cut short)" if isinstance(exc, EOFError) else "")
    reason = lines[0]
    if "PytorchStreamReader failed" in reason:
        reason = reason.split(". This is an internal", 1)[0] + " (the file is damaged or cut short)"
    return f"{type(exc).__name__}: {reason}" if type(exc).__name__ not in reason else reason


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


def check_state_dict(
    module: Any,
    state: dict[str, Any],
    *,
    card: "ModelCard",
    path: Path,
    allowed_missing: tuple[str, ...] = (),
    ignored_unexpected: tuple[str, ...] = (),
) -> None:
    """Load ``state`` into ``module`` strictly: every weight of the model must be in the checkpoint with the model's
    shape, and the checkpoint must hold nothing the model lacks. Otherwise one InputError line names the card, the
    file and the first mismatched (else missing, else unexpected) key with its shapes.

    The comparison is done here rather than by parsing ``load_state_dict(strict=True)``'s multi-line RuntimeError:
    it is the same rule, with three tolerances torch's loader also applies or that library versions need —
    ``num_batches_tracked`` counters absent from old checkpoints (BatchNorm fills them in), keys the model holds as
    non-persistent buffers (``position_ids`` saved by older transformers), and the card's own ``allowed_missing`` /
    ``ignored_unexpected`` prefixes.
    """
    problem = state_dict_problem(module, state, allowed_missing=allowed_missing,
                                 ignored_unexpected=ignored_unexpected)  # fmt: skip
    if problem:
        raise InputError(f"model {card.name!r} ({card.architecture}): checkpoint {path} {problem}")
    expected = module.state_dict()
    try:
        module.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    except RuntimeError as exc:  # e.g. a dtype that cannot be copied; the shapes were checked above
        raise InputError(f"model {card.name!r}: checkpoint {path} cannot be loaded ({load_failure(exc)})") from None


def state_dict_problem(module: Any, state: dict[str, Any], *, allowed_missing: tuple[str, ...] = (),
                       ignored_unexpected: tuple[str, ...] = ()) -> str | None:  # fmt: skip
    """What keeps ``state`` from loading strictly into ``module`` (rules of :func:`check_state_dict`), or None.
    Compares shapes only, so ``module`` may live on the meta device and ``state`` hold meta tensors."""
    expected = module.state_dict()
    buffers = {name for name, _ in module.named_buffers()}
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")
               and not k.startswith(allowed_missing)]  # fmt: skip
    unexpected = [k for k in state if k not in expected and k not in buffers and not k.startswith(ignored_unexpected)]
    mismatched = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or mismatched):
        return None
    if mismatched:
        key = mismatched[0]
        first = f"{key!r} is {_shape(state[key])} in the checkpoint but {_shape(expected[key])} in the model"
    elif missing:
        first = f"{missing[0]!r} {_shape(expected[missing[0]])} is missing from the checkpoint"
    else:
        first = f"{unexpected[0]!r} {_shape(state[unexpected[0]])} is in the checkpoint but not in the model"
    return (f"does not fit this architecture: {first} ({len(mismatched)} key(s) of another shape, {len(missing)} "
            f"missing, {len(unexpected)} unexpected); is it the checkpoint of another model? ('fairfm models list' "
            "shows each card's architecture)")


def weights_shapes(path: Path, *, trust_checkpoint: bool = False) -> Any:
    """What a weights file holds, with tensors that cost no read of their data: meta tensors from a safetensors
    header, memory-mapped ones from a zip-format PyTorch file (torch.load(mmap=True), still weights-only). For the
    up-front checks of a sweep: a checkpoint is compared with its card without loading gigabytes per cell."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        dtypes = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                  "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                  "BOOL": torch.bool}  # fmt: skip
        try:
            with safe_open(str(path), framework="pt") as handle:
                return {key: torch.empty(handle.get_slice(key).get_shape(),
                                         dtype=dtypes.get(handle.get_slice(key).get_dtype(), torch.float32),
                                         device="meta") for key in handle.keys()}  # fmt: skip
        except (SafetensorError, OSError) as exc:
            raise InputError(f"{path}: cannot be read as safetensors ({exc})") from None
    import zipfile

    if not zipfile.is_zipfile(path):  # legacy torch.save format: no memory map; read it (small, old files)
        return load_weights_file(path, trust_checkpoint=trust_checkpoint)
    return _torch_load(path, trust_checkpoint, mmap=True)


def _torch_load(path: Path, trust_checkpoint: bool, mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True``; pickle only when trusted, and never torch's advice to drop
    ``weights_only`` (that is the unsafe path)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises UnpicklingError / RuntimeError / EOFError for non-weights content
        if not is_pickle_refusal(str(exc)):
            raise InputError(
                f"{path}: cannot be read as a weights file (safetensors or PyTorch checkpoint): {load_failure(exc)}"
            ) from None
        if not trust_checkpoint:
            raise InputError(f"{path}: refused to load this checkpoint: {TRUST_HINT}") from None
    return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)


def _shape(tensor: Any) -> str:
    return "(" + ", ".join(str(int(n)) for n in getattr(tensor, "shape", tensor)) + ")"


def check_hf_config(folder: Path, cls: Any, card: "ModelCard") -> None:
    """A Hugging Face folder's ``config.json`` must describe the card's kind of model: transformers would
    otherwise build the card's class from another model's config and initialise most weights at random."""
    import json

    expected = getattr(getattr(cls, "config_class", None), "model_type", None)
    try:
        found = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise InputError(f"{folder / 'config.json'}: not a valid JSON config ({exc})") from None
    if expected and found != expected:
        raise InputError(
            f"model {card.name!r} ({card.architecture}): checkpoint {folder} is a {found!r} model (its "
            f"config.json model_type), not {expected!r}; is it the checkpoint of another model? ('fairfm models "
            "list' shows each card's architecture)"
        )


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers prints a multi-line load report for every missing or surplus key; fairfm checks the loading
    info itself (:func:`check_loading_info`) and reports one line."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def check_loading_info(info: dict[str, Any], *, card: "ModelCard", path: Path) -> None:
    """After a library's own loader (transformers ``from_pretrained(output_loading_info=True)``): refuse weights it
    left uninitialised, found surplus or could not fit — transformers only logs them and initialises the rest at
    random, which would silently score a random model."""
    missing = sorted(info.get("missing_keys") or [])  # sets in transformers 5: sorted, for a stable message
    unexpected = sorted(info.get("unexpected_keys") or [])
    mismatched = sorted(info.get("mismatched_keys") or [], key=str)
    if not (missing or unexpected or mismatched):
        return
    if mismatched:
        key, *shapes = mismatched[0] if isinstance(mismatched[0], (tuple, list)) else (mismatched[0],)
        shown = (f" is {_shape(shapes[0])} in the checkpoint but {_shape(shapes[1])} in the model"
                 if len(shapes) == 2 else " has another shape in the checkpoint")  # fmt: skip
        first = f"{key!r}{shown}"
    elif missing:
        first = f"{missing[0]!r} is missing from the checkpoint"
    else:
        first = f"{unexpected[0]!r} is in the checkpoint but not in the model"
    raise InputError(
        f"model {card.name!r} ({card.architecture}): checkpoint {path} does not fit this architecture: {first} "
        f"({len(mismatched)} key(s) of another shape, {len(missing)} missing, {len(unexpected)} unexpected); "
        "is it the checkpoint of another model? ('fairfm models list' shows each card's architecture)"
    )
