"""Arguments and helpers shared by the sub-commands: which backbone, where results go.

Every evaluation takes the same model arguments, so any backbone (a named Franca/DINOv2 size
with a weights file, this project's checkpoint, or `timm:NAME`) runs every protocol.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def add_model_arguments(p: argparse.ArgumentParser, rasa: bool = True) -> None:
    g = p.add_argument_group("backbone")
    g.add_argument("--model", default="vits14",
                   help="named size (vits14, vitb14, vitl14, vitg14, vitt8, …) or timm:NAME (default: %(default)s)")
    g.add_argument("--weights", default=None,
                   help="weights file: official Franca/DINOv2 release, this project's checkpoint or "
                        "exported .safetensors (default: random initialisation)")
    if rasa:
        g.add_argument("--rasa", default=None, const=True, nargs="?",
                       help="use RASA-cleaned patch tokens: with a FILE, load that RASA head "
                            "(official or ours); bare --rasa uses the map folded into --weights")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: %(default)s)")
    g.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="data-loading processes (default: %(default)s)")


def load_model_from_args(args: argparse.Namespace):
    """Build the backbone the model arguments describe, in eval mode, on args.device."""
    import franca
    from franca.utils.device import resolve_device

    device = resolve_device(args.device)
    rasa = getattr(args, "rasa", None)
    rasa_file = rasa if isinstance(rasa, str) else None
    model = franca.load_backbone(args.model, weights=args.weights, rasa=rasa_file)
    return model.to(device).eval(), device


def eval_args(args: argparse.Namespace, device: Any, **overrides: Any):
    """The shared evaluation arguments (franca.eval.common.EvalArgs) from the parsed command line:
    --data, --size, --seeds, --batch-size, --num-workers and the resolved device; `overrides` replace
    any of them (e.g. a command whose size flag has another name)."""
    from franca.eval.common import EvalArgs

    values = {"data": getattr(args, "data", None), "size": getattr(args, "size", None),
              "seeds": getattr(args, "seeds", (0,)), "batch_size": getattr(args, "batch_size", None),
              "device": device, "num_workers": getattr(args, "num_workers", 0),
              "progress": not getattr(args, "quiet", False)}
    values.update(overrides)
    return EvalArgs(**values)


def model_identity(args: argparse.Namespace) -> dict[str, Any]:
    """What identifies the backbone in a result JSON (name, weights file, size, mtime)."""
    ident: dict[str, Any] = {"model": args.model, "weights": args.weights, "rasa": getattr(args, "rasa", None)}
    if args.weights and Path(args.weights).exists():
        st = Path(args.weights).stat()
        ident.update(weights_bytes=st.st_size, weights_mtime=int(st.st_mtime))
    return ident


def add_output_arguments(p: argparse.ArgumentParser, default_name: str) -> None:
    p.add_argument("--out", default=None,
                   help=f"result JSON path (default: runs/eval/{default_name}-<time>.json)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="seeds to average over; the JSON reports mean and std (default: %(default)s)")


def write_result(args: argparse.Namespace, name: str, result: dict[str, Any]) -> Path:
    """Write one JSON per run (atomically) and return its path."""
    out = Path(args.out) if getattr(args, "out", None) else Path("runs/eval") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=True, default=_json_default))
    os.replace(tmp, out)
    log.info("wrote %s", out)
    return out


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")

