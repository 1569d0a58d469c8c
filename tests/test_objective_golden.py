"""Golden values of the training objective, recorded on commit 73fc156 (before the objective became a set of
declared terms): the losses of one step on a fixed batch and every tensor of the checkpoint after 3 iterations.

On the machine and torch build that recorded them (same torch version, CPU architecture and SIMD level) the
comparison is bit for bit (float32 values as hex, SHA-256 of every checkpoint tensor); elsewhere kernels may
round differently, so values are compared to 1e-5 and tensors by their float64 sums. Regenerate (only for a
deliberate change of the numbers) with `python tests/test_objective_golden.py --write`.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers.training import fixed_batch, make_image_folder, tiny_overrides  # noqa: E402

GOLDEN = Path(__file__).with_name("golden") / "objective_73fc156.json"
CASES = {
    "tiny": [],
    # non-unit term weights, softmax centering instead of Sinkhorn-Knopp, KoLeo over the gathered batch
    "weights-centering": [
        "dino.loss_weight=0.5",
        "ibot.head.loss_weight=2.0",
        "loss.koleo_weight=0.3",
        "loss.centering=centering",
        "loss.koleo_scope=global",
    ],
    "no-koleo": ["loss.koleo_weight=0.0"],
}


def _fingerprint() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_capability": str(getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")()),
    }


def _digest(t: torch.Tensor) -> list[Any]:
    t = t.detach().cpu().contiguous()
    raw = hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()
    f = t.double()
    return [str(t.dtype), list(t.shape), raw, float(f.sum()), float(f.abs().sum())]


def _flatten(prefix: str, obj: Any, out: dict[str, torch.Tensor]) -> None:
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}/{k}", v, out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _flatten(f"{prefix}/{i}", v, out)


def compute(tmp: Path) -> dict[str, Any]:
    """Losses of one step on a fixed batch per case, and the checkpoint of a 3-iteration run (tiny case)."""
    from franca.train.config import load_config
    from franca.train.loop import Trainer, train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = make_image_folder(tmp / "img", n=12)
        out: dict[str, Any] = {"fingerprint": _fingerprint(), "losses": {}, "checkpoint": {}}
        for name, extra in CASES.items():
            torch.manual_seed(0)
            tr = Trainer(load_config("tiny", tiny_overrides(tmp / f"step-{name}", data) + extra), quiet=True)
            losses = tr.step(fixed_batch(4, 16, 8, 2, 4), 0)
            out["losses"][name] = {k: float(v.detach().float()).hex() for k, v in sorted(losses.items())}
        torch.manual_seed(0)
        summary = train(load_config("tiny", tiny_overrides(tmp / "run", data, iterations=3)), quiet=True)
        ckpt = torch.load(summary["checkpoint"], weights_only=True)
        ckpt.pop("config")
        ckpt.get("extra", {}).pop("elapsed", None)  # wall time
        tensors: dict[str, torch.Tensor] = {}
        _flatten("", ckpt, tensors)
        out["checkpoint"] = {k: _digest(v) for k, v in sorted(tensors.items())}
        out["checkpoint_keys"] = sorted(ckpt)
        out["iteration"] = ckpt["iteration"]
        return out
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_losses_and_checkpoint_equal_the_recorded_golden(tmp_path: Path) -> None:
    want = json.loads(GOLDEN.read_text())
    got = compute(tmp_path)
    exact = got["fingerprint"] == want["fingerprint"]
    for case, values in want["losses"].items():
        have = got["losses"][case]
        missing = sorted(set(values) - set(have))
        assert not missing, f"{case}: the step no longer reports {missing}"
        for k, v in values.items():
            a, b = float.fromhex(have[k]), float.fromhex(v)
            if exact:
                assert have[k] == v, f"{case} {k}: {a!r} != golden {b!r}"
            else:
                assert a == pytest.approx(b, rel=1e-5, abs=1e-6), f"{case} {k}"
    assert got["checkpoint_keys"] == want["checkpoint_keys"] and got["iteration"] == want["iteration"]
    assert sorted(got["checkpoint"]) == sorted(want["checkpoint"])
    for k, (dtype, shape, raw, s, sa) in want["checkpoint"].items():
        g_dtype, g_shape, g_raw, g_s, g_sa = got["checkpoint"][k]
        assert (g_dtype, g_shape) == (dtype, shape), k
        if exact:
            assert g_raw == raw, f"checkpoint tensor {k} differs from the golden"
        else:
            assert g_s == pytest.approx(s, rel=1e-4, abs=1e-4) and g_sa == pytest.approx(sa, rel=1e-4, abs=1e-4), k


if __name__ == "__main__":  # python tests/test_objective_golden.py --write
    import tempfile

    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_objective_golden.py --write")
    with tempfile.TemporaryDirectory() as d:
        result = compute(Path(d))
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}: {len(result['checkpoint'])} checkpoint tensors")
