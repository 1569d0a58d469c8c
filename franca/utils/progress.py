"""One switch for every progress bar: `franca COMMAND --quiet` turns them all off.

Library code draws its bars with `progress(...)` (a tqdm bar on stderr); the command line calls
`set_quiet(True)` for `--quiet`, so no module needs a flag of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

_QUIET = False


def set_quiet(quiet: bool) -> None:
    """Turn every later `progress` bar off (True) or on (False)."""
    global _QUIET
    _QUIET = bool(quiet)


def is_quiet() -> bool:
    return _QUIET


@contextmanager
def quiet(enabled: bool = True) -> Iterator[None]:
    """Within the block, bars are off when `enabled` (restores the previous setting after)."""
    before = _QUIET
    set_quiet(enabled or before)
    try:
        yield
    finally:
        set_quiet(before)


def progress(iterable: Iterable[Any] | None = None, **kwargs: Any) -> Any:
    """A tqdm bar (same arguments as `tqdm.tqdm`), disabled under `--quiet`."""
    from tqdm import tqdm

    kwargs["disable"] = bool(kwargs.get("disable", False)) or _QUIET
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
