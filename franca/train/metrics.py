"""Run metrics: JSONL lines (always) and TensorBoard scalars (when installed), rank 0 only.

On resume the JSONL file is cut back to the checkpoint's iteration, so the file of a resumed
run reads like the file of an uninterrupted one; a line torn by a crash is dropped with a warning.
With `pending=True` (`--overwrite`) the new rows go to a hidden file until `commit()` (called at
the new run's first checkpoint) replaces the old run's metrics.jsonl and TensorBoard events, so a
new run that dies early has destroyed nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from franca.utils.errors import write_failed

log = logging.getLogger(__name__)

METRICS_NAME = "metrics.jsonl"


class MetricsLogger:
    def __init__(
        self, out_dir: Path, enabled: bool = True, resume_iteration: int | None = None, pending: bool = False
    ) -> None:
        self.enabled = enabled
        self.final_path = out_dir / METRICS_NAME
        self.path = out_dir / f".{METRICS_NAME}.new" if pending else self.final_path
        self.pending = pending
        self.tb = None
        self._old_tb: list[Path] = []
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if pending:
            self.path.write_text("")
            self._old_tb = sorted(p for p in (out_dir / "tensorboard").glob("*") if p.is_file())
        elif resume_iteration is not None and self.path.exists():
            keep = [r for r in read_metrics(self.path, skip_broken=True) if r.get("iteration", -1) < resume_iteration]
            tmp = self.path.with_name(f".{METRICS_NAME}.tmp{os.getpid()}")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in keep))
            os.replace(tmp, self.path)
        elif resume_iteration is None and self.path.exists():
            self.path.unlink()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"))
        except Exception:  # tensorboard is optional  # noqa: BLE001
            self.tb = None
        where = (
            f"{self.path} (hidden while --overwrite keeps the old run's {METRICS_NAME}; it becomes "
            f"{self.final_path} at this run's first checkpoint)"
            if pending
            else str(self.path)
        )
        log.info(
            "metrics: %s; %s",
            where,
            f"TensorBoard: tensorboard --logdir {out_dir / 'tensorboard'}"
            if self.tb is not None
            else "TensorBoard off (pip install tensorboard to turn it on)",
        )

    def log(self, iteration: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"iteration": iteration, **{k: _plain(v) for k, v in values.items()}}
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as exc:  # a full disk: name the file and the free space
            raise write_failed(self.path, exc) from exc
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "iteration" and math.isfinite(v):
                    self.tb.add_scalar(k, v, iteration)

    def commit(self) -> None:
        """The new run has its first checkpoint: its rows replace the old run's (pending mode only)."""
        if not (self.enabled and self.pending):
            return
        os.replace(self.path, self.final_path)
        self.path, self.pending = self.final_path, False
        for p in self._old_tb:
            p.unlink(missing_ok=True)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.enabled and self.pending:  # the new run never saved: the old run's files stay as they were
            self.path.unlink(missing_ok=True)


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def read_metrics(path: str | Path, skip_broken: bool = False) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl. A line that is not a JSON object (torn by a crash) raises a
    ValueError naming the file and line, or with `skip_broken` is dropped with a warning."""
    path = Path(path)
    rows = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            if not skip_broken:
                raise ValueError(f"{path} line {n} is not a metrics row ({exc}): {line[:80]!r}") from None
            log.warning("%s: dropping line %d, torn or not a metrics row: %r", path, n, line[:80])
            continue
        rows.append(row)
    return rows
