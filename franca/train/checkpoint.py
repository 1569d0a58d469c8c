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
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

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
        sub = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
        missing, unexpected = module.load_state_dict(sub, strict=False)
        if missing or unexpected:
            raise KeyError(f"{source}: {prefix} keys do not match the model: missing {list(missing)[:5]}, "
                           f"unexpected {list(unexpected)[:5]}")


def rng_state() -> dict[str, Any]:
    """Every RNG the step touches (torch CPU/CUDA, numpy, python), as weights_only-safe values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
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
    """Atomically write `payload` to `path` (temp file in the same folder + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(payload, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint (weights_only=True); clear errors for a missing or foreign file."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("teacher", "student", "iteration"):
        if not isinstance(ckpt, dict) or key not in ckpt:
            raise KeyError(f"{path} is not a franca training checkpoint (no {key!r} entry)")
    return ckpt


def teacher_backbone_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The teacher backbone's own keys (prefix `backbone.` removed)."""
    return {k[len("backbone."):]: v for k, v in ckpt["teacher"].items() if k.startswith("backbone.")}
