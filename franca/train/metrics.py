"""Run metrics: JSONL lines (always) and TensorBoard scalars (when installed), rank 0 only.

On resume the JSONL file is cut back to the checkpoint's iteration, so the file of a resumed
run reads like the file of an uninterrupted one.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class MetricsLogger:
    def __init__(self, out_dir: Path, enabled: bool = True, resume_iteration: int | None = None) -> None:
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self.tb = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if resume_iteration is not None and self.path.exists():
            keep = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and json.loads(ln).get("iteration", -1) < resume_iteration]
            self.path.write_text("".join(k + "\n" for k in keep))
        elif resume_iteration is None and self.path.exists():
            self.path.unlink()
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(out_dir / "tensorboard"))
        except Exception:  # tensorboard is optional  # noqa: BLE001
            self.tb = None
        log.info("metrics: %s; %s", self.path, f"TensorBoard: tensorboard --logdir {out_dir / 'tensorboard'}"
                 if self.tb is not None else "TensorBoard off (pip install tensorboard to turn it on)")

    def log(self, iteration: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"iteration": iteration, **{k: _plain(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "iteration" and math.isfinite(v):
                    self.tb.add_scalar(k, v, iteration)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
