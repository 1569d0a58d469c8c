"""Run under ``torchrun --nproc-per-node=2``: sharded Sinkhorn / centering / KoLeo, gathered to rank 0.

Every rank builds the same full batch from a fixed seed, keeps its shard, runs the distributed code and
gathers the results; rank 0 saves them with the full batch to ``argv[1]`` for the test to compare with a
single-process run on the concatenated batch.
"""

from __future__ import annotations

import sys

import torch

from franca.losses.centering import SoftmaxCentering
from franca.losses.koleo import koleo_loss
from franca.losses.sinkhorn import sinkhorn_knopp
from franca.utils import distributed as fd

N_PER_RANK, K, PAD = 6, 5, 3
REAL_ROWS = (4, 0)  # iBOT: rank 1 has no masked patch at all, only padding


def main(out_path: str) -> int:
    assert fd.init_distributed(torch.device("cpu")), "not launched by torchrun"
    r, w = fd.rank(), fd.world_size()
    g = torch.Generator().manual_seed(0)
    full = torch.randn(w * N_PER_RANK, K, generator=g) * 3
    patches = torch.randn(w, REAL_ROWS[0] + PAD, K, generator=g) * 3
    feats = torch.randn(w * N_PER_RANK, 8, generator=g)
    shard = full[r * N_PER_RANK : (r + 1) * N_PER_RANK]

    dino = sinkhorn_knopp(shard, 0.07)
    n_real = REAL_ROWS[r]
    ibot = sinkhorn_knopp(patches[r], 0.07, n_samples=n_real)
    centering = SoftmaxCentering([K], momentum=0.5)
    centering.update([shard])
    koleo = koleo_loss(feats[r * N_PER_RANK : (r + 1) * N_PER_RANK], global_batch=True).reshape(1)

    gathered = {
        "dino": fd.all_gather_cat(dino),
        "ibot": fd.all_gather_cat(ibot),
        "center": fd.all_gather_cat(centering.center(0)),
        "koleo": fd.all_gather_cat(koleo.detach()),
    }
    if fd.is_main():
        torch.save(
            {**gathered, "full": full, "patches": patches, "feats": feats, "real_rows": REAL_ROWS, "n": N_PER_RANK},
            out_path,
        )
    fd.barrier()
    fd.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
