"""Optional readers: import a library that only some formats need, or fail with one clear line naming it."""

from __future__ import annotations

import importlib
from types import ModuleType

from fairfm.errors import InputError

#: Import name → the PyPI package that provides it.
PACKAGES = {"h5py": "h5py", "openpyxl": "openpyxl", "nibabel": "nibabel", "pydicom": "pydicom", "PIL": "pillow"}


def import_optional(module: str, purpose: str) -> ModuleType:
    """``importlib.import_module(module)``, or an InputError saying what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = PACKAGES.get(module, module)
        raise InputError(f"{purpose} needs the '{package}' package, which is not installed (pip install {package})") from None
