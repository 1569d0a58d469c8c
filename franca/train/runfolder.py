"""The run folder's rules: one run per folder, what --resume continues, what the banner promises.

A folder that holds a run (checkpoint, metrics or summary) is refused unless the run is resumed or
overwritten; --resume compares the checkpoint's saved config with the requested one and refuses a
changed recipe unless --allow-config-change names the keys (config.RESUME_FREE_KEYS may always
change); `stopping_rules` states every rule that ends a run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from franca.train import checkpoint as ckpt_io
from franca.train.config import FrancaTrainConfig, config_changes, key_allowed
from franca.train.metrics import read_metrics
from franca.train.schedules import Lengths
from franca.utils.errors import UserError

log = logging.getLogger(__name__)


def checkpoint_to_resume(
    cfg: FrancaTrainConfig,
    resume: bool | str,
    overwrite: bool,
    allow: Sequence[str],
    world: int,
    check_folder: bool = True,
) -> tuple[Optional[Path], Optional[dict[str, Any]]]:
    """(path, checkpoint) to continue from, (None, None) for a fresh run. Refuses to replace a run without
    `overwrite` (checked where `check_folder`, i.e. on rank 0) and a changed recipe without `allow`."""
    out_dir = Path(cfg.train.output_dir)
    if resume and overwrite:
        raise UserError(
            f"--resume and --overwrite exclude each other: --resume continues the run in {out_dir}, "
            "--overwrite replaces it"
        )
    if not resume:
        existing = describe_existing_run(out_dir) if check_folder else ""
        if existing and not overwrite:
            raise UserError(
                f"output folder {out_dir} already holds a run ({existing}): add --resume to continue "
                "it, --overwrite to replace it (its files stay until the new run's first checkpoint), "
                "or choose another --out (train.output_dir)"
            )
        return None, None
    path = Path(resume) if isinstance(resume, str) else out_dir / ckpt_io.CHECKPOINT_NAME
    if not isinstance(resume, str) and not path.exists():
        log.warning("--resume: no checkpoint at %s yet; starting from scratch", path)
        return None, None
    loaded = ckpt_io.load_checkpoint(path)
    changes = config_changes(loaded.get("config"), cfg)
    saved_world = loaded.get("extra", {}).get("world_size")
    if saved_world is not None and int(saved_world) != world:
        changes.append(("world_size", int(saved_world), world))
    refused = [c for c in changes if not key_allowed(c[0], allow)]
    if refused:
        shown = ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in refused[:4])
        if len(refused) <= 4:
            hint = f"add --allow-config-change {','.join(k for k, _, _ in refused)} to change them"
        else:
            hint = (
                f"{len(refused)} keys differ: give the preset and overrides the run started with (its config "
                f"is saved in {path.parent / 'config.yaml'}), or name the keys to change in "
                "--allow-config-change"
            )
        raise UserError(
            f"--resume: {path} was trained with another config ({shown}); continue with the same settings, or {hint}"
        )
    if changes:
        log.warning(
            "--resume with config changes (allowed): %s", ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in changes)
        )
    return path, loaded


def stopping_rules(cfg: FrancaTrainConfig, n: Lengths, start: int = 0) -> str:
    """Every rule that ends the run, in words (the start banner prints it)."""
    if cfg.train.iterations > 0:
        rule = (
            f"stops after {n.total} iterations (train.iterations={cfg.train.iterations}; "
            f"{n.epochs:.3g} epochs of {n.dataset_size} images)"
        )
    else:
        rule = (
            f"stops after {n.total} iterations ({cfg.train.epochs:g} epochs: train.epochs={cfg.train.epochs:g} "
            f"x {n.iterations_per_epoch} iterations per epoch)"
        )
    if cfg.train.max_minutes > 0:
        rule += (
            f" or after {cfg.train.max_minutes:g} minutes of training in this invocation "
            f"(train.max_minutes={cfg.train.max_minutes:g}; 0 lifts it), whichever comes first"
        )
    else:
        rule += "; no time limit (train.max_minutes=0)"
    if start:
        rule += f"; resuming at iteration {start} of {n.total}"
    return rule


def describe_existing_run(out_dir: Path) -> str:
    """A few words on the run already in `out_dir` ('' when there is none): its checkpoint, metrics or summary."""
    ckpt, metrics, summary = (out_dir / ckpt_io.CHECKPOINT_NAME, out_dir / "metrics.jsonl", out_dir / "summary.json")
    if not (ckpt.exists() or metrics.exists() or summary.exists()):
        return ""
    try:
        s = json.loads(summary.read_text())
        state = "a finished run" if s["iterations"] >= s["planned_iterations"] else "a run stopped early"
        return f"{state}, checkpoint at iteration {s['iterations']} of {s['planned_iterations']}"
    except (OSError, ValueError, KeyError, TypeError):
        pass

    try:
        rows = read_metrics(metrics, skip_broken=True) if metrics.exists() else []
    except OSError:
        rows = []
    logged = f", logged up to iteration {rows[-1].get('iteration', '?')}" if rows else ""
    return f"a started run{' with a checkpoint' if ckpt.exists() else ''}{logged}"
