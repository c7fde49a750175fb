"""Dataset registry: one module per dataset family in ``fairfm.data.sources``, registered by decorator.

A source reads a public release exactly as downloaded and returns a SampleTable (see :mod:`fairfm.data.sampletable`).
Adding a dataset is one new file in ``sources/``; it is discovered on first use, with no edit elsewhere.
"""

from __future__ import annotations

import abc
import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, TypeVar

import pandas as pd

from fairfm.errors import InputError


#: ``DatasetSource.option_values`` of a true/false option (also 1/0, yes/no; any case).
BOOLEAN: tuple[str, ...] = ("true", "false")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


@dataclass(frozen=True)
class DatasetCard:
    """What ``fairfm datasets list`` shows about a dataset."""

    name: str
    title: str
    modality: str
    dims: int  # 2 or 3
    task_type: str  # "classification" | "segmentation"
    tasks: tuple[str, ...]
    attributes: tuple[str, ...]  # harmonised attribute names; each is a ``group_<name>`` column
    access: str  # licence / access note
    reference: str = ""
    has_sites: bool = False
    official_split: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "modality": self.modality,
            "dims": self.dims,
            "task_type": self.task_type,
            "tasks": list(self.tasks),
            "attributes": list(self.attributes),
            "access": self.access,
            "reference": self.reference,
            "has_sites": self.has_sites,
            "official_split": self.official_split,
            "notes": list(self.notes),
        }


class DatasetSource(abc.ABC):
    """Reads one public release. Subclasses set ``card`` and implement ``source_files`` and ``load``."""

    card: ClassVar[DatasetCard]
    #: The loader options the source reads: name -> its valid values (``None``: any value, e.g. a path;
    #: :data:`BOOLEAN`: true/false, read as a bool). Every source also takes ``age_edges``; any other option is
    #: refused, so a misspelt option or one meant for another dataset is never silently ignored.
    option_values: ClassVar[dict[str, tuple[str, ...] | None]] = {}

    def __init__(self, **options: Any) -> None:
        self.options = self._checked_options(options)

    def _checked_options(self, options: dict[str, Any]) -> dict[str, Any]:
        accepted = {"age_edges": None, **self.option_values}
        name = self.card.name
        checked: dict[str, Any] = {}
        for key, value in options.items():
            if key not in accepted:
                raise InputError(f"{name}: unknown option {key!r} (options of {name}: "
                                 f"{', '.join(sorted(accepted))})")  # fmt: skip
            valid = accepted[key]
            if valid is BOOLEAN:
                text = str(value).strip().lower()
                if text not in _TRUE + _FALSE:
                    raise InputError(f"{name}: option {key}={value!r}; expected true or false")
                value = text in _TRUE
            elif valid is not None:
                text = str(value).strip().lower()
                if text not in valid:
                    raise InputError(f"{name}: option {key}={value!r}; expected one of {', '.join(valid)}")
                value = text
            checked[key] = value
        return checked

    @abc.abstractmethod
    def source_files(self, root: Path) -> list[Path]:
        """The metadata files ``load`` reads (checksummed into ``dataset.json``)."""

    @abc.abstractmethod
    def load(self, root: Path) -> pd.DataFrame:
        """Return the SampleTable rows (no ``split`` column; ``split_official`` where the release has one)."""

    def require(self, root: Path, relative: str) -> Path:
        """Path of a required release file, or an InputError naming where it was looked for."""
        path = Path(root) / relative
        if not path.exists():
            raise InputError(f"{self.card.name}: expected release file not found: {path}")
        return path


_S = TypeVar("_S", bound=type[DatasetSource])
_REGISTRY: dict[str, type[DatasetSource]] = {}
_DISCOVERED = False


def register_dataset(name: str) -> Callable[[_S], _S]:
    def decorate(cls: _S) -> _S:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"dataset {name!r} registered twice ({_REGISTRY[name].__module__}, {cls.__module__})")
        if cls.card.name != name:
            raise ValueError(f"dataset {name!r}: its card is named {cls.card.name!r}")
        _REGISTRY[name] = cls
        return cls

    return decorate


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    from fairfm.data import sources

    for module in pkgutil.iter_modules(sources.__path__):
        importlib.import_module(f"{sources.__name__}.{module.name}")
    _DISCOVERED = True


def get_dataset(name: str, **options: Any) -> DatasetSource:
    _discover()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise InputError(f"unknown dataset {name!r}; known datasets: {known}")
    return _REGISTRY[name](**options)


def list_datasets() -> list[DatasetCard]:
    _discover()
    return [_REGISTRY[name].card for name in sorted(_REGISTRY)]
