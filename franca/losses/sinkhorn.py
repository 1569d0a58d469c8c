"""Sinkhorn-Knopp teacher targets (SwAV / DINOv2 / Franca; released Franca `franca/loss/mrl_dino_loss.py`,
`mrl_ibot_patch_loss.py`).

Released algorithm, with teacher logits L (n samples × K prototypes) and temperature τ:
Q = exp(L/τ); three times: divide every prototype (column of Q here) by its sum over *all* samples of
*all* processes (and by K), then every sample (row) by its own sum (and by the sample count); finally
multiply by the sample count so that each sample's target sums to 1. The iBOT variant first divides Q
by its global total and uses the all-reduced number of masked patches as the sample count.

Every constant factor in that recipe (K, the sample count, the initial global total) cancels, because
each prototype step divides by a per-prototype sum and each sample step by a per-sample sum. This
implementation therefore works in log space without them: it is the same function, but it stays finite
at any temperature and batch size (no exp overflow, no all-zero rows), and its only collectives are
a sum (``all_reduce_sum``) and a gather of K per-prototype maxima (``all_gather_cat``).
"""

from __future__ import annotations

import torch

from franca.utils.device import autocast_context
from franca.utils.distributed import all_gather_cat, all_reduce_sum

__all__ = ["METHODS", "sinkhorn_knopp"]

METHODS = ("scaling", "log")


def _global_logsumexp_over_samples(log_q: torch.Tensor) -> torch.Tensor:
    """log Σ_j exp(log_q[j, k]) over the samples of every process -> (K,)."""
    if log_q.shape[0] > 0:
        local_max = log_q.max(dim=0).values
    else:
        local_max = torch.full(log_q.shape[1:], float("-inf"), dtype=log_q.dtype, device=log_q.device)
    m = all_gather_cat(local_max.unsqueeze(0)).max(dim=0).values
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = all_reduce_sum(torch.exp(log_q - m).sum(dim=0))
    return m + torch.log(s)


def check_arguments(name: str, logits: torch.Tensor, temperature: float, n_iterations: int) -> None:
    """ValueError naming the bad argument of a Sinkhorn-Knopp call."""
    if logits.ndim != 2:
        raise ValueError(f"{name} expects (n, K) logits, got shape {tuple(logits.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if n_iterations < 1:
        raise ValueError(f"n_iterations must be >= 1, got {n_iterations}")


@torch.no_grad()
def sinkhorn_knopp(
    logits: torch.Tensor,
    temperature: float,
    n_iterations: int = 3,
    n_samples: int | torch.Tensor | None = None,
    include_padding: bool = False,
    method: str = "scaling",
) -> torch.Tensor:
    """Balanced soft assignments of samples to prototypes; rows of the result sum to 1.

    Args:
        logits: (n, K) teacher head outputs of this process (any float dtype; computed in fp32).
        temperature: teacher temperature τ_t (> 0).
        n_iterations: Sinkhorn rounds (3 in Franca).
        n_samples: iBOT variant: only the first ``n_samples`` rows *of this process* are real masked
            patches (its collate's ``n_masked_patches``; the global count is implied), the rest is
            the padding of a fixed ``upperbound`` buffer. By default padding rows are left out of the
            prototype sums and returned as zeros; ``include_padding=True`` keeps them in, as the
            released code does (`franca/loss/mrl_ibot_patch_loss.py`), for bit-level parity.
        include_padding: see ``n_samples``.
        method: "scaling" (default): the first prototype step in log space, then scaling vectors
            (matrix-vector products over one exponentiated matrix, about half the memory passes);
            "log": every step in log space. The same function (tested to 1e-5).

    Returns:
        (n, K) fp32 targets, detached. Prototype sums are global across processes; each real row sums to 1.

    An fp32 island: inside a bf16 autocast region (training with `train.precision=bf16`, or bf16 on
    CUDA) the matrix-vector products would otherwise run in bf16 and move the targets by ~5e-3.
    """
    check_arguments("sinkhorn_knopp", logits, temperature, n_iterations)
    if method not in METHODS:
        raise ValueError(f"sinkhorn_knopp: method must be one of {METHODS}, got {method!r}")
    with autocast_context(logits.device, "fp32"):
        return _sinkhorn_fp32(
            logits, temperature, n_iterations, n_real_rows(logits, n_samples, include_padding), method
        )


def n_real_rows(logits: torch.Tensor, n_samples: int | torch.Tensor | None, include_padding: bool) -> int:
    """The rows of `logits` that are real samples (`sinkhorn_knopp`'s `n_samples`), checked."""
    n = logits.shape[0]
    n_real = n if n_samples is None or include_padding else int(n_samples)
    if not 0 <= n_real <= n:
        raise ValueError(f"n_samples {n_real} is outside [0, {n}] rows")
    return n_real


def _sinkhorn_fp32(
    logits: torch.Tensor, temperature: float, n_iterations: int, n_real: int, method: str
) -> torch.Tensor:
    if method == "scaling":
        return _sinkhorn_scaling(logits, temperature, n_iterations, n_real)
    out = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
    log_q = logits[:n_real].detach().float() / temperature
    for _ in range(n_iterations):
        log_q = log_q - _global_logsumexp_over_samples(log_q)  # prototype step (global sums)
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True)  # sample step (local rows)
    out[:n_real] = torch.exp(log_q)
    return out


def _sinkhorn_scaling(logits: torch.Tensor, temperature: float, n_iterations: int, n_real: int) -> torch.Tensor:
    """The same function as the log-space loop, with O(1) full-size passes per round.

    After the exact first prototype step, each row is shifted by its maximum before exponentiating:
    the sample step that follows is invariant to row scaling, so the result is unchanged, and every
    row of P = exp(·) then holds a 1 (no underflowing rows) while every column still sums to >= 1
    (no underflowing prototypes). The remaining rounds only update the vectors r (K,) and c (n,) of
    diag(c)·P·diag(r); all sums stay within [1/n, K] and nothing overflows.
    """
    out = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
    if n_real == 0:
        _global_logsumexp_over_samples(logits[:0].float())  # keep the collectives in step across processes
        for _ in range(n_iterations - 1):
            all_reduce_sum(torch.zeros(logits.shape[1], dtype=torch.float32, device=logits.device))
        return out
    p = out[:n_real]
    p.copy_(logits[:n_real].detach())  # to fp32 first: dividing bf16 logits rounds logits/τ to bf16
    p.div_(temperature)
    p.sub_(_global_logsumexp_over_samples(p))  # first prototype step, exact
    p.sub_(p.amax(dim=1, keepdim=True)).exp_()  # row shift (cancelled by the sample step)
    r = torch.ones(p.shape[1], dtype=torch.float32, device=p.device)
    c = 1.0 / (p @ r)  # first sample step
    for _ in range(n_iterations - 1):
        r = 1.0 / all_reduce_sum(c @ p)  # prototype step (global sums)
        c = 1.0 / (p @ r)  # sample step
    p.mul_(r).mul_(c[:, None])
    return out
