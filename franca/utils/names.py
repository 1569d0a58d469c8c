"""Names that tell files apart: every run folder holds a `checkpoint.pth`, so a file name alone can name
two different files in one legend or table."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def distinct_path_names(paths: Sequence[str | os.PathLike[str]], min_parts: int = 1) -> list[str]:
    """For each path, its shortest tail (the file name, then as many parent folders as needed, at least
    ``min_parts`` parts) that no other, different path of the list shares: ``runA/checkpoint.pth`` and
    ``runB/checkpoint.pth``, while a file name that is unique stays the bare name. The same file given
    twice gets the same name."""
    full = [Path(os.path.abspath(p)).parts for p in paths]
    names = []
    for parts in full:
        others = [q for q in full if q != parts]
        k = min(min_parts, len(parts))
        while k < len(parts) and any(q[-k:] == parts[-k:] for q in others):
            k += 1
        names.append("/".join(parts[-k:]) if k < len(parts) else Path(*parts).as_posix())
    return names
