"""Which optional modules are importable, without importing them (a backend's
``check_available`` reports the missing ones as ``unsupported`` with an install hint)."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence


def missing_modules(names: Sequence[str]) -> list[str]:
    """The ``names`` that cannot be found on the import path (none is imported)."""
    missing = []
    for name in names:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            missing.append(name)
    return missing
