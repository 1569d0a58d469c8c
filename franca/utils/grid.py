"""The project's one size rule: an input side is rounded down to a multiple of the patch size, so that the
image covers a whole patch grid; a side below one patch is an error. The command line, `franca.transforms`,
`franca features` and the dense protocols all apply it through `round_to_patch`."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def round_to_patch(size: int, patch: int, *, what: str = "size", announce: bool = False) -> int:
    """`size` rounded down to a multiple of `patch`. A size below one patch is a ValueError naming it as `what`
    (e.g. "--size"); with `announce`, one info line says when the rounding changes the size."""
    size, patch = int(size), int(patch)
    if size < patch:
        raise ValueError(f"{what} {size} is smaller than the patch size {patch}")
    out = size - size % patch
    if announce and out != size:
        log.info("%s %d is not a multiple of the patch size %d: using %d", what, size, patch, out)
    return out
