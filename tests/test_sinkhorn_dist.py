"""Distributed Sinkhorn-Knopp (and centering, global KoLeo) under torchrun with 2 gloo CPU ranks
equals the single-process result on the concatenated batch. One launch for all checks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from franca.losses.sinkhorn import sinkhorn_knopp

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.dist


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def dist_results(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    out = tmp_path_factory.mktemp("dist") / "results.pt"
    pythonpath = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc-per-node=2",
        "--master-addr=127.0.0.1",
        f"--master-port={_free_port()}",
        str(ROOT / "tests" / "dist_sinkhorn_worker.py"),
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return torch.load(out, weights_only=True)


def test_dino_sinkhorn_matches_concatenated_batch(dist_results: dict) -> None:
    torch.testing.assert_close(dist_results["dino"], sinkhorn_knopp(dist_results["full"], 0.07))


def test_ibot_sinkhorn_matches_concatenated_real_rows(dist_results: dict) -> None:
    patches, real = dist_results["patches"], dist_results["real_rows"]
    rows = torch.cat([patches[r, : real[r]] for r in range(2)])
    expected = sinkhorn_knopp(rows, 0.07)
    per_rank = dist_results["ibot"].reshape(2, patches.shape[1], -1)
    got = torch.cat([per_rank[r, : real[r]] for r in range(2)])
    torch.testing.assert_close(got, expected)
    assert all((per_rank[r, real[r] :] == 0).all() for r in range(2))


def test_centering_uses_global_mean(dist_results: dict) -> None:
    full = dist_results["full"]
    want = 0.5 * full.mean(dim=0, keepdim=True)  # centre 0, momentum 0.5
    torch.testing.assert_close(dist_results["center"], torch.cat([want, want]))


def test_koleo_global_batch(dist_results: dict) -> None:
    x = F.normalize(dist_results["feats"], dim=-1)
    n = dist_results["n"]
    dots = x @ x.T
    dots.fill_diagonal_(-2)
    d = (x - x[dots.argmax(dim=1)] + 1e-8).norm(dim=1)
    per_row = -torch.log(d + 1e-8)
    want = torch.stack([per_row[:n].mean(), per_row[n:].mean()])
    torch.testing.assert_close(dist_results["koleo"], want)
