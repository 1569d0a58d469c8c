"""KoLeo regulariser (Sablayrolles et al. 2019; DINOv2 `dinov2/loss/koleo_loss.py`; released Franca
`franca/train/ssl_meta_arch.py`).

    KoLeo(x) = −(1/n) Σ_i log(‖x̂_i − x̂_nn(i)‖₂ + ε),
    x̂ = x/‖x‖,  nn(i) = argmax_{j≠i} ⟨x̂_i, x̂_j⟩

computed in fp32. The reference computes it per process (no gather); ``global_batch=True`` instead
searches neighbours among the gathered rows of every process (the gathered copies carry no gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from franca.utils.distributed import all_gather_cat, is_dist, rank

__all__ = ["koleo_loss"]


def koleo_loss(x: torch.Tensor, eps: float = 1e-8, global_batch: bool = False) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimate (negated) of the rows of ``x`` (n, D) -> scalar.

    Fewer than 2 rows (in total) have no neighbour: the loss is then 0 (still attached to the graph).
    With ``global_batch`` every process must pass the same n.
    """
    if x.ndim != 2:
        raise ValueError(f"koleo_loss expects (n, D), got shape {tuple(x.shape)}")
    x = F.normalize(x.float(), p=2, dim=-1, eps=eps)
    n = x.shape[0]
    if global_batch and is_dist():
        candidates = all_gather_cat(x.detach())
        offset = rank() * n
    else:
        candidates, offset = x, 0
    if candidates.shape[0] < 2 or n == 0:
        return x.sum() * 0.0
    with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
        dots = x.detach() @ candidates.T.float()
        self_idx = torch.arange(n, device=x.device) + offset
        dots[torch.arange(n, device=x.device), self_idx] = -2.0  # below any cosine: never its own neighbour
        nn_idx = dots.argmax(dim=1)
    dist = F.pairwise_distance(x, candidates[nn_idx], p=2, eps=eps)
    return -torch.log(dist + eps).mean()
