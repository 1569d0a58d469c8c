"""Errors a user can cause (a bad file, key, value or folder), and their one-line form for the CLI.

`UserError` is raised where the project knows the input is at fault; `one_line` turns it, and the
standard exceptions bad input produces (missing files, full disks, bad values), into the single
line `franca` prints instead of a traceback (`franca -v …` shows the traceback).
"""

from __future__ import annotations

import errno
import re
import shutil
from pathlib import Path

DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class UserError(Exception):
    """The input (a file, config key, value or folder) is at fault; the message says which and what to do."""


def free_space(path: str | Path) -> str:
    """Free space on the disk holding `path` (or its nearest existing parent), e.g. '1.2 GB free'."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        free = shutil.disk_usage(p).free
    except OSError:
        return "free space unknown"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if free >= size:
            return f"{free / size:.1f} {unit} free"
    return f"{free} bytes free"


def write_failed(path: str | Path, exc: BaseException) -> UserError:
    """A failed write of `path` as one actionable message (disk space named)."""
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UserError(
        f"could not write {path} ({reason}); is the disk full? {free_space(path)} on that disk: "
        "free some space or choose another output folder"
    )


def one_line(exc: BaseException) -> str:
    """The message of `exc` as one line naming what it names (file, key, value)."""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        where = f" writing {exc.filename} ({free_space(exc.filename)})" if exc.filename else ""
        msg = f"no space left on the device{where}: free some disk space or choose another output folder"
    elif isinstance(exc, OSError) and exc.filename and exc.strerror:
        msg = f"{exc.strerror}: {exc.filename}"
    elif isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        msg = exc.args[0]  # str(KeyError) would quote the message
    else:
        msg = str(exc) or type(exc).__name__
    msg = _unwrap_worker_error(msg)
    return " ".join(part.strip() for part in msg.strip().splitlines() if part.strip())


_WORKER_ERROR = re.compile(r"^Caught (\w+) (in DataLoader worker process \d+)\.\s*\nOriginal Traceback", re.S)


def _unwrap_worker_error(msg: str) -> str:
    """A DataLoader worker's error re-raised by torch carries the worker's whole traceback in its message;
    keep the original message (what it names) and say which worker raised it."""
    m = _WORKER_ERROR.match(msg)
    if m is None:
        return msg
    head, sep, original = msg.rpartition(f"{m.group(1)}: ")
    return f"{original.strip()} ({m.group(2)})" if sep and original.strip() else msg
