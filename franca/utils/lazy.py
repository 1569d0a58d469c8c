"""Lazy public names for a package `__init__` (PEP 562), so `import franca` stays cheap: nothing heavy
(torch, timm) is imported until a name is first used."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` for `package`: `exports` maps each public name to "module:attribute",
    imported on first access; any other name is an AttributeError naming the package."""
    table = dict(exports)

    def __getattr__(name: str) -> Any:
        target = table.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attribute = target.partition(":")
        return getattr(importlib.import_module(module), attribute)

    return __getattr__
