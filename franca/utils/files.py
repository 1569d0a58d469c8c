"""File modes: a file this project writes gets the mode a plain `open(path, "w")` would give it.

`tempfile.mkstemp` and safetensors' `save_file` create files readable by their owner only (0600), so a
features file, an exported backbone or a RASA file could not be read by the group a user shares results
with; `set_normal_mode` gives them 0666 less the process's umask, like every other file written.
"""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def set_normal_mode(path: str | os.PathLike, directory: bool = False) -> None:
    """chmod `path` to 0666 (0777 for a folder) less the umask: the mode of a file made by open()."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())
