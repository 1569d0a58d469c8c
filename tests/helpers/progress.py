"""Reading tqdm's progress bars back from captured stderr."""

from __future__ import annotations

import re


def bar_states(err: str) -> list[tuple[int, int | None]]:
    """(n, total) of every state a tqdm bar printed (total None when it has none)."""
    return [(int(n), int(t) if t else None) for n, t in re.findall(r"(?:\| |: )(\d+)(?:/(\d+))?(?:it)? \[", err)]
