"""Model cards and the model registry (timm-style: ``@register_model``, ``create_model``, ``list_models``).

A card is pure data (no torch): what the model is, where its weights come from, its own preprocessing and
embedding size. One module per loader family (``*_family.py`` in this package) declares its cards and registers
one builder function for them; adding a model is one card in one file, discovered on first use.
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from fairfm.errors import InputError
from fairfm.models.preprocess import Preprocess

FAMILIES = ("vision", "vision-language", "segmentation")


@dataclass(frozen=True)
class ModelCard:
    """What ``fairfm models list`` shows, and what a loader needs, for one model."""

    name: str
    family: str  # vision | vision-language | segmentation
    architecture: str
    library: str  # open_clip | timm | transformers | segment_anything
    identifiers: tuple[str, ...]  # the ids under which the weights are published
    checkpoint_files: tuple[str, ...]  # file names a user downloads (also searched in local caches)
    download: str  # where the weights come from, shown when they are missing
    preprocess: Preprocess
    embed_dim: int
    zero_shot: bool
    licence: str
    paper: str
    pretraining: str = ""
    hf_repos: tuple[str, ...] = ()  # Hugging Face repos searched in the local hub cache
    needs_weights: bool = True  # False only for the from-scratch baseline
    spec: dict[str, Any] = field(default_factory=dict)  # loader-specific settings (architecture, key mapping)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"model card {self.name!r}: family {self.family!r} is not one of {FAMILIES}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "architecture": self.architecture,
            "library": self.library,
            "identifiers": list(self.identifiers),
            "checkpoint_files": list(self.checkpoint_files),
            "download": self.download,
            "input_size": self.preprocess.size,
            "preprocess": self.preprocess.to_dict(),
            "embed_dim": self.embed_dim,
            "zero_shot": self.zero_shot,
            "licence": self.licence,
            "paper": self.paper,
            "pretraining": self.pretraining,
            "notes": list(self.notes),
        }


Builder = Callable[..., Any]
_B = TypeVar("_B", bound=Builder)
_CARDS: dict[str, ModelCard] = {}
_BUILDERS: dict[str, Builder] = {}
_CHECKERS: dict[str, Builder] = {}
_DISCOVERED = False


def register_model(*cards: ModelCard) -> Callable[[_B], _B]:
    """Register ``cards`` with the decorated builder ``fn(card, weights, *, trust_checkpoint, **overrides)``."""

    def decorate(fn: _B) -> _B:
        for card in cards:
            if card.name in _CARDS and _BUILDERS[card.name] is not fn:
                raise ValueError(
                    f"model {card.name!r} registered twice ({_BUILDERS[card.name].__module__}, "
                    f"{fn.__module__})"
                )
            _CARDS[card.name] = card
            _BUILDERS[card.name] = fn
        return fn

    return decorate


def register_checker(*cards: ModelCard) -> Callable[[_B], _B]:
    """Register a cheap ``fn(card, weights, *, trust_checkpoint, **overrides)`` that refuses a checkpoint which does
    not fit ``cards`` (InputError) without loading its weights: a config file's model type, or the shapes in the
    file against the architecture built on torch's meta device. :func:`check_model` calls it."""

    def decorate(fn: _B) -> _B:
        for card in cards:
            _CHECKERS[card.name] = fn
        return fn

    return decorate


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    import fairfm.models as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name.endswith("_family"):
            importlib.import_module(f"{package.__name__}.{module.name}")
    _DISCOVERED = True


def get_model(name: str) -> ModelCard:
    """The card of ``name`` (case-insensitive); InputError listing the known names otherwise."""
    _discover()
    key = name.lower()
    if key not in _CARDS:
        raise InputError(f"unknown model {name!r}; known models: {', '.join(sorted(_CARDS))}")
    return _CARDS[key]


def list_models(pattern: str = "*", *, family: str | None = None) -> list[ModelCard]:
    _discover()
    if family is not None and family not in FAMILIES:
        raise InputError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
    return [
        _CARDS[name]
        for name in sorted(_CARDS)
        if fnmatch.fnmatch(name, pattern.lower()) and (family is None or _CARDS[name].family == family)
    ]


def create_model(
    name: str,
    checkpoint: str | os.PathLike | None = None,
    *,
    trust_checkpoint: bool = False,
    **overrides: Any,
):
    """Build model ``name`` with its weights, fully offline.

    ``checkpoint`` is a weights file or a local folder (Hugging Face / open_clip layout); without it the local
    caches are searched. ``overrides`` go to the library's constructor (e.g. smaller sizes in tests).
    Returns an :class:`~fairfm.models.base.Encoder`, :class:`~fairfm.models.base.VisionLanguageEncoder` or
    :class:`~fairfm.models.base.PromptableSegmenter`.
    """
    from fairfm.models.checkpoints import ensure_offline, resolve_checkpoint

    card = get_model(name)
    ensure_offline()
    weights = resolve_checkpoint(card, checkpoint)  # fails fast, before any heavy import
    return _BUILDERS[card.name](card, weights, trust_checkpoint=trust_checkpoint, **overrides)


def check_model(
    name: str,
    checkpoint: str | os.PathLike | None = None,
    *,
    trust_checkpoint: bool = False,
    **overrides: Any,
) -> None:
    """Refuse, cheaply and before any work, what :func:`create_model` would refuse: an unknown model, a missing
    checkpoint and — where the card's family registered a checker — a checkpoint that does not fit the card.
    Builds nothing and reads no weights (a sweep checks every cell with it up front)."""
    from fairfm.models.checkpoints import ensure_offline, resolve_checkpoint

    card = get_model(name)
    ensure_offline()
    weights = resolve_checkpoint(card, checkpoint)
    checker = _CHECKERS.get(card.name)
    if weights is not None and checker is not None:
        checker(card, weights, trust_checkpoint=trust_checkpoint, **overrides)
