"""One run per output folder: an exclusive lock file `<output_dir>/.lock` naming its holder.

The lock is an advisory `flock` on the file, which the kernel drops when the holder exits in any
way (SIGKILL included), so a lock left by a dead run is stale by construction: the next run takes it
over and says whose it was. The file holds the holder's pid, host and start time, so a second run
on the same folder fails with one line naming the holder. Where `flock` is unavailable the pid is
checked instead (same host only). The holder deletes the file when it releases the lock.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Optional

from franca.utils.errors import UserError, write_failed

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class RunLock:
    """`with RunLock(folder):` holds the folder's lock for the block (creating the folder)."""

    def __init__(self, folder: str | Path, enabled: bool = True) -> None:
        self.folder, self.enabled = Path(folder), enabled
        self.path = self.folder / LOCK_NAME
        self._fd: Optional[int] = None

    def __enter__(self) -> RunLock:
        if self.enabled:
            self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(f"train.output_dir={self.folder} is a file, not a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # retried only if the holder released (and deleted) the file meanwhile
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not _try_flock(fd, self.path):
                    raise UserError(
                        f"output folder {self.folder} is in use by another run ({_describe(_read(fd))}; "
                        f"lock file {self.path}): wait for it to end or choose another --out (train.output_dir)"
                    )
                if not _same_file(fd, self.path):
                    os.close(fd)
                    continue
                previous = _read(fd)
                if previous:
                    log.warning("took over the stale lock %s of %s: that run has ended", self.path, _describe(previous))
                info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
                try:
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, json.dumps(info).encode(), 0)
                    os.fsync(fd)
                except OSError as exc:  # a full disk: say so, leave no empty lock file behind
                    self.path.unlink(missing_ok=True)
                    raise write_failed(self.path, exc) from exc
                self._fd = fd
                return
            except BaseException:
                if self._fd is None:
                    os.close(fd)
                raise
        raise UserError(f"could not lock output folder {self.folder}: its lock file {self.path} keeps changing")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding it: no one can take a deleted file's lock
        finally:
            os.close(self._fd)
            self._fd = None


def _try_flock(fd: int, path: Path) -> bool:
    """True when this process now holds the lock; False when a live process does."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): judge by the recorded pid
        return not _held_by_live_process(_read(fd))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        log.warning("cannot flock %s (%s); judging the lock by its recorded pid", path, exc)
        return not _held_by_live_process(_read(fd))


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)


def _read(fd: int) -> dict[str, Any]:
    try:
        raw = os.pread(fd, 4096, 0)
        info = json.loads(raw.decode()) if raw.strip() else {}
        return info if isinstance(info, dict) else {"raw": str(info)}
    except (OSError, ValueError):
        return {"raw": "unreadable"}


def _describe(info: dict[str, Any]) -> str:
    if "pid" not in info:
        return "an unknown process"
    return f"pid {info['pid']} on host {info.get('host', '?')}, started {info.get('started', '?')}"


def _held_by_live_process(info: dict[str, Any]) -> bool:
    if "pid" not in info:
        return False
    if info.get("host") != socket.gethostname():
        return True  # cannot tell from here: assume it lives
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True
