"""Result files: numbers rounded for reading, the software that made them, atomic writes.

Every JSON the project writes for people (evaluation results, figure data, run summaries) goes
through `write_json`, so 7.899999999999999 reads 7.9 and each file names the library versions.
"""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path
from typing import Any

SIGNIFICANT_DIGITS = 6


def round_floats(obj: Any, digits: int = SIGNIFICANT_DIGITS) -> Any:
    """Copy of `obj` (dicts, lists, tuples, numpy/torch scalars and arrays) with every finite float
    rounded to `digits` significant digits; ints, strings and non-finite floats are kept."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}") if math.isfinite(obj) else obj
    if isinstance(obj, dict):
        return {k: round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [round_floats(v, digits) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return round_floats(obj.tolist(), digits)
    if hasattr(obj, "item"):
        return round_floats(obj.item(), digits)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def library_versions() -> dict[str, str]:
    """Versions of the project and the libraries that decide its numbers (missing ones omitted)."""
    import sys
    from importlib import metadata

    # The parent package is always loaded before this module; read it without importing upwards.
    out = {"franca": sys.modules["franca"].__version__, "python": platform.python_version()}
    for name in ("torch", "torchvision", "timm", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def write_json(path: str | Path, obj: Any, *, versions: bool = True, digits: int = SIGNIFICANT_DIGITS) -> Path:
    """Write `obj` as indented JSON atomically (temporary file + rename), floats rounded, and
    (for a dict, with `versions`) a "versions" entry naming the software; returns the path."""
    path = Path(path)
    if versions and isinstance(obj, dict):
        obj = {**obj, "versions": library_versions()}
    return write_text_atomic(path, json.dumps(round_floats(obj, digits), indent=2, sort_keys=False) + "\n")


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same folder and a rename, so a reader never
    sees half a file (folders created as needed); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path
