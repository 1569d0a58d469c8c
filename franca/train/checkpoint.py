"""One consolidated training checkpoint, written atomically; exact resume.

Layout (a dict saved with torch.save, read with weights_only=True):
    {"teacher": {"backbone.<key>": …, "dino_head.<key>": …, "ibot_head.<key>": …},
     "student": {same keys}, "optimizer": optimizer state dict, "iteration": next iteration to run,
     "config": plain-dict config, "rng": {torch, cuda, numpy, python states}, "extra": {…}}
The "teacher" entry has the layout of the official Franca releases, so
`franca.load_backbone(name, weights=<this file>)` reads the teacher backbone. The file is written to
a temporary name in the same folder, flushed and renamed, so a crash never leaves a torn file.
Under FSDP the state dicts are gathered to full tensors first (one file, not one per rank).
"""

from __future__ import annotations

import logging
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from franca.utils.errors import UserError, write_failed

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pth"


def prefixed_state_dict(modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """{"backbone.<k>": tensor, "dino_head.<k>": …} on CPU; full tensors even when sharded (FSDP2)."""
    out: dict[str, torch.Tensor] = {}
    for prefix, module in modules.items():
        for k, v in module.state_dict().items():
            if v is None:
                continue
            if hasattr(v, "full_tensor"):  # DTensor (FSDP2): gather the shards
                v = v.full_tensor()
            out[f"{prefix}.{k}"] = v.detach().to("cpu").clone()
    return out


def load_prefixed_state_dict(modules: dict[str, nn.Module], state: dict[str, torch.Tensor], source: str) -> None:
    """Inverse of `prefixed_state_dict`; raises KeyError naming missing/unexpected keys."""
    for prefix, module in modules.items():
        sub = {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}
        check_shapes(module, sub, f"{source} ({prefix})")
        missing, unexpected = module.load_state_dict(sub, strict=False)
        if missing or unexpected:
            raise KeyError(
                f"{source}: {prefix} keys do not match the model: missing {list(missing)[:5]}, "
                f"unexpected {list(unexpected)[:5]}"
            )


def check_shapes(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """UserError naming the first tensors whose shapes differ (instead of torch's one line per tensor)."""
    own = module.state_dict()
    bad = [
        f"{k} {tuple(v.shape)} vs the model's {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k] is not None and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)
    ]
    if bad:
        raise UserError(
            f"{source}: {len(bad)} tensors do not fit this model ({'; '.join(bad[:3])}): the "
            "checkpoint holds another architecture"
        )


def rng_state() -> dict[str, Any]:
    """Every RNG the step touches (torch CPU/CUDA, numpy, python), as weights_only-safe values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "python": _py_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    random.setstate(_plain_to_py_state(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _py_state_to_plain(s: tuple) -> list:
    return [s[0], list(s[1]), s[2]]


def _plain_to_py_state(s: list) -> tuple:
    return (s[0], tuple(s[1]), s[2])


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Atomically write `payload` to `path` (temp file in the same folder + fsync + rename).

    A failed write (full disk, I/O error, interrupt) removes the temporary file and leaves the previous
    checkpoint at `path` as it was; the error names the file and the free space."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{tmp_prefix(path)}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, (OSError, RuntimeError)):  # torch's zip writer reports a full disk as RuntimeError
            raise write_failed(path, exc) from exc
        raise
    return path


def tmp_prefix(path: Path) -> str:
    """Name prefix of the temporary files `save_checkpoint` writes next to `path`."""
    return f".{path.name}.tmp"


def remove_leftover_temporaries(path: str | Path) -> list[Path]:
    """Delete temporary checkpoint files a killed run left next to `path` (call only while holding
    the output folder's lock, so that no live run is writing one); returns what was removed."""
    path = Path(path)
    removed = []
    for p in path.parent.glob(f"{tmp_prefix(path)}*"):
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a small text file through a temporary file + rename (never a half-written file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_failed(path, exc) from exc


def load_checkpoint(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Read a training checkpoint (weights_only=True; `mmap`: map the tensors instead of reading them);
    one clear error naming a missing, unreadable, truncated, foreign or code-carrying file."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes): not a franca training checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        raise UserError(
            f"refusing to read {path}: not a plain tensor file (weights_only loading rejected it: {_first_line(exc)})"
        ) from exc
    except Exception as exc:  # torch raises many types for a truncated or foreign file  # noqa: BLE001
        raise UserError(
            f"cannot read {path} as a franca training checkpoint (truncated or another format?): {_first_line(exc)}"
        ) from exc
    for key in ("teacher", "student", "iteration"):
        if not isinstance(ckpt, dict) or key not in ckpt:
            raise UserError(f"{path} is not a franca training checkpoint (no {key!r} entry)")
    return ckpt


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def teacher_backbone_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The teacher backbone's own keys (prefix `backbone.` removed)."""
    return {k[len("backbone.") :]: v for k, v in ckpt["teacher"].items() if k.startswith("backbone.")}
