"""Sinkhorn-Knopp targets that are never written out, and the soft cross-entropy that reads them.

The iBOT targets are (M, K) with M in the thousands and K up to 131072 per Matryoshka level. Sinkhorn-Knopp
only ever rescales rows and columns of exp(logits/τ), so its result is

    T = exp(logits·(1/τ) + col[None, :] + row[:, None])

for two vectors col (K,) and row (M,) (each kept as a large first-step shift plus small corrections). `SinkhornTargets` keeps the teacher logits (already in memory,
bf16 under autocast) and those two vectors, and every pass of the algorithm and of the loss is one
reduction that re-reads the logits: column maxima and sums for the prototype steps, row sums for the
sample steps, and for the loss the row terms Σ_k T_ik, Σ_k T_ik s_ik and logsumexp(s_i/τ_s). Under
`torch.compile` each pass is one fused kernel, where the materialised algorithm writes and re-reads
several (M, K) fp32 arrays (issue 10: these passes took more time than the backbone's matmuls on an
H100). Compiled passes are asked for per call, `sinkhorn_targets(..., compiled=True)` (a Trainer with
`train.compile` does), and the flag travels with the targets to the loss: no process-wide switch. Eager, the passes run row chunk by row chunk so
temporaries stay bounded. Values equal `sinkhorn_knopp` + the plain cross-entropy (tested to 1e-5).

Same algorithm as `franca.losses.sinkhorn`: exact first prototype step in log space, a row shift (which
the sample step cancels), then n_iterations sample and prototype steps, prototype sums global across
processes. Here every scaling is added in log space to `col` / `row`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from franca.losses.sinkhorn import check_arguments
from franca.utils.distributed import all_gather_cat, all_reduce_sum

__all__ = ["SinkhornTargets", "sinkhorn_targets", "implicit_soft_cross_entropy"]

CHUNK_ELEMENTS = 1 << 27
"""Eager passes work on row chunks of about this many elements (512 MiB of fp32 temporaries)."""


# ----------------------------------------------------------------------------------------- the passes
# Each takes the (n, K) logits of any float dtype and returns a vector; all arithmetic in fp32. The
# exponent of T is kept as ((L·scale + col_shift) + row_shift) + col + row: the two shifts of the first
# step are large (|L/τ| can be in the thousands) and are applied first, where they cancel; the small
# Sinkhorn corrections col, row are added after, so their updates are not rounded at that magnitude.


def _exponent(
    logits: torch.Tensor,
    scale: float,
    col_shift: torch.Tensor,
    col: torch.Tensor,
    row_shift: torch.Tensor,
    row: torch.Tensor,
) -> torch.Tensor:
    return (logits.float() * scale + col_shift + row_shift[:, None]) + (col + row[:, None])


def _col_max(logits: torch.Tensor, scale: float) -> torch.Tensor:
    return (logits.float() * scale).amax(dim=0)


def _col_sumexp(logits: torch.Tensor, scale: float, shift: torch.Tensor) -> torch.Tensor:
    return torch.exp(logits.float() * scale - shift).sum(dim=0)


def _row_max(logits: torch.Tensor, scale: float, col_shift: torch.Tensor) -> torch.Tensor:
    return (logits.float() * scale + col_shift).amax(dim=1)


def _row_sum(
    logits: torch.Tensor,
    scale: float,
    col_shift: torch.Tensor,
    col: torch.Tensor,
    row_shift: torch.Tensor,
    row: torch.Tensor,
) -> torch.Tensor:
    return torch.exp(_exponent(logits, scale, col_shift, col, row_shift, row)).sum(dim=1)


def _col_sum(
    logits: torch.Tensor,
    scale: float,
    col_shift: torch.Tensor,
    col: torch.Tensor,
    row_shift: torch.Tensor,
    row: torch.Tensor,
) -> torch.Tensor:
    return torch.exp(_exponent(logits, scale, col_shift, col, row_shift, row)).sum(dim=0)


def _ce_forward(
    student: torch.Tensor,
    inv_temp: float,
    logits: torch.Tensor,
    scale: float,
    col_shift: torch.Tensor,
    col: torch.Tensor,
    row_shift: torch.Tensor,
    row: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: CE = Σt·lse − Σ t·s/τ_s, with lse = logsumexp(s/τ_s) and Σt (saved for backward)."""
    s = student.float() * inv_temp
    t = torch.exp(_exponent(logits, scale, col_shift, col, row_shift, row))
    lse = torch.logsumexp(s, dim=1)
    t_sum = t.sum(dim=1)
    return t_sum * lse - (t * s).sum(dim=1), lse, t_sum


def _ce_backward(
    student: torch.Tensor,
    inv_temp: float,
    logits: torch.Tensor,
    scale: float,
    col_shift: torch.Tensor,
    col: torch.Tensor,
    row_shift: torch.Tensor,
    row: torch.Tensor,
    lse: torch.Tensor,
    t_sum: torch.Tensor,
    grad_out: torch.Tensor,
) -> torch.Tensor:
    """∂CE/∂s = (softmax(s/τ_s)·Σt − t)/τ_s, times the incoming row gradient, in the student's dtype."""
    p = torch.exp(student.float() * inv_temp - lse[:, None])
    t = torch.exp(_exponent(logits, scale, col_shift, col, row_shift, row))
    g = (p * t_sum[:, None] - t) * (grad_out * inv_temp)[:, None]
    return g.to(student.dtype)


_EAGER: dict[str, Callable] = {
    f.__name__: f for f in (_col_max, _col_sumexp, _row_max, _row_sum, _col_sum, _ce_forward, _ce_backward)
}
_COMPILED: dict[str, Callable] = {}
"""A cache of the compiled passes (compiled once per process when first asked for); which of the two
sets a computation uses is the `compiled` flag of its targets, never a process-wide switch."""


def _fn(name: str, compiled: bool) -> Callable:
    """Pass `name` eager, or as one `torch.compile`d kernel (dynamic shapes: the masked-token count varies)."""
    if not compiled:
        return _EAGER[name]
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(_EAGER[name], dynamic=True)
    return _COMPILED[name]


def _chunks(n: int, K: int, compiled: bool) -> list[slice]:
    if compiled:  # fused kernels keep nothing (n, K)-sized: no need to split
        return [slice(0, n)]
    step = max(1, CHUNK_ELEMENTS // max(K, 1))
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


# ------------------------------------------------------------------------------------ the targets


@dataclass
class SinkhornTargets:
    """T = exp(((logits·scale + col_shift) + row_shift) + col + row), rows summing to 1; detached."""

    logits: torch.Tensor
    """(n, K) teacher logits (any float dtype)"""
    scale: float
    """1 / teacher temperature"""
    col_shift: torch.Tensor
    """(K,) fp32: minus the first prototype step's log-sum over samples"""
    row_shift: torch.Tensor
    """(n,) fp32: minus each row's maximum after that step"""
    col: torch.Tensor
    """(K,) fp32 log prototype scalings of the later rounds"""
    row: torch.Tensor
    """(n,) fp32 log sample scalings"""
    compiled: bool = False
    """run the loss passes on these targets as compiled kernels (as the targets were computed)"""

    @property
    def shape(self) -> torch.Size:
        return self.logits.shape

    def vectors(self, rows: slice = slice(None)) -> tuple[torch.Tensor, ...]:
        """(col_shift, col, row_shift[rows], row[rows]), the argument order of the passes."""
        return self.col_shift, self.col, self.row_shift[rows], self.row[rows]

    def __getitem__(self, rows: slice) -> SinkhornTargets:
        """The targets of a slice of rows (e.g. ``targets[:M]``)."""
        if not isinstance(rows, slice):
            raise TypeError(f"SinkhornTargets can only be sliced by rows, got {rows!r}")
        return SinkhornTargets(
            self.logits[rows], self.scale, self.col_shift, self.row_shift[rows], self.col, self.row[rows], self.compiled
        )

    def detach(self) -> SinkhornTargets:
        return self

    def materialize(self) -> torch.Tensor:
        """The (n, K) fp32 targets."""
        return torch.exp(_exponent(self.logits, self.scale, *self.vectors()))


def _col_pass(
    name: str,
    compiled: bool,
    logits: torch.Tensor,
    *args: torch.Tensor | float,
    reduce: str = "sum",
    rows: tuple[torch.Tensor, ...] = (),
) -> torch.Tensor:
    """A column-wise pass, accumulated over row chunks (sum or max); `rows` are sliced with the chunk."""
    f = _fn(name, compiled)
    out: torch.Tensor | None = None
    for sl in _chunks(*logits.shape, compiled):
        part = f(logits[sl], *args, *(r[sl] for r in rows))
        out = part if out is None else (out + part if reduce == "sum" else torch.maximum(out, part))
    assert out is not None
    return out


def _row_pass(
    name: str, compiled: bool, logits: torch.Tensor, *args: torch.Tensor | float, rows: tuple[torch.Tensor, ...] = ()
) -> torch.Tensor:
    """A row-wise pass over row chunks; `rows` are sliced with the chunk."""
    f = _fn(name, compiled)
    parts = [f(logits[sl], *args, *(r[sl] for r in rows)) for sl in _chunks(*logits.shape, compiled)]
    return torch.cat(parts) if len(parts) > 1 else parts[0]


@torch.no_grad()
def sinkhorn_targets(
    logits: torch.Tensor, temperature: float, n_iterations: int = 3, compiled: bool = False
) -> SinkhornTargets:
    """Sinkhorn-Knopp of (n, K) teacher logits as implicit targets (same values as `sinkhorn_knopp`).

    Prototype sums are global across processes: every process must call this, also with n = 0 rows.
    `compiled`: run this computation's passes, and the loss's on the returned targets, as compiled kernels.
    """
    c = bool(compiled)
    check_arguments("sinkhorn_targets", logits, temperature, n_iterations)
    logits = logits.detach()
    n, K = logits.shape
    scale = 1.0 / float(temperature)
    dev = logits.device
    if n == 0:  # keep the collectives in step with the other processes
        all_gather_cat(torch.full((1, K), float("-inf"), device=dev))
        for _ in range(n_iterations):
            all_reduce_sum(torch.zeros(K, device=dev))
        zk, zn = torch.zeros(K, device=dev), torch.zeros(0, device=dev)
        return SinkhornTargets(logits, scale, zk, zn, zk, zn, c)
    # First prototype step, exact: col_shift = −logsumexp over all samples of all processes.
    m = all_gather_cat(_col_pass("_col_max", c, logits, scale, reduce="max").unsqueeze(0)).amax(dim=0)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    col_shift = -(m + torch.log(all_reduce_sum(_col_pass("_col_sumexp", c, logits, scale, m))))
    # Row shift: every row's largest entry becomes 1 (cancelled by the sample step; nothing underflows).
    row_shift = -_row_pass("_row_max", c, logits, scale, col_shift)
    col = torch.zeros(K, device=dev)
    row = torch.zeros(n, device=dev)
    row = row - torch.log(_row_pass("_row_sum", c, logits, scale, col_shift, col, rows=(row_shift, row)))
    for _ in range(n_iterations - 1):
        col = col - torch.log(
            all_reduce_sum(_col_pass("_col_sum", c, logits, scale, col_shift, col, rows=(row_shift, row)))
        )
        row = row - torch.log(_row_pass("_row_sum", c, logits, scale, col_shift, col, rows=(row_shift, row)))
    return SinkhornTargets(logits, scale, col_shift, row_shift, col, row, c)


# ---------------------------------------------------------------------------------- the loss


class _ImplicitSoftCE(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx,
        student: torch.Tensor,
        logits: torch.Tensor,
        scale: float,
        col_shift: torch.Tensor,
        col: torch.Tensor,
        row_shift: torch.Tensor,
        row: torch.Tensor,
        inv_temp: float,
        compiled: bool,
    ) -> torch.Tensor:  # type: ignore[override]
        f = _fn("_ce_forward", compiled)
        parts = [
            f(student[sl], inv_temp, logits[sl], scale, col_shift, col, row_shift[sl], row[sl])
            for sl in _chunks(*student.shape, compiled)
        ]
        ce, lse, t_sum = (torch.cat(x) if len(parts) > 1 else x[0] for x in zip(*parts))
        ctx.save_for_backward(student, logits, col_shift, col, row_shift, row, lse, t_sum)
        ctx.scale, ctx.inv_temp, ctx.compiled = scale, inv_temp, compiled
        return ce

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        student, logits, col_shift, col, row_shift, row, lse, t_sum = ctx.saved_tensors
        f = _fn("_ce_backward", ctx.compiled)
        g = grad_out.float()
        parts = [
            f(
                student[sl],
                ctx.inv_temp,
                logits[sl],
                ctx.scale,
                col_shift,
                col,
                row_shift[sl],
                row[sl],
                lse[sl],
                t_sum[sl],
                g[sl],
            )
            for sl in _chunks(*student.shape, ctx.compiled)
        ]
        grad = torch.cat(parts) if len(parts) > 1 else parts[0]
        return grad, None, None, None, None, None, None, None, None


def implicit_soft_cross_entropy(
    targets: SinkhornTargets, student_logits: torch.Tensor, student_temp: float
) -> torch.Tensor:
    """Per-row CE −Σ_k T_ik log softmax(s_i/τ_s)_k -> (n,) fp32, with T never materialised; the passes
    are compiled when the targets were (`targets.compiled`)."""
    if targets.shape != student_logits.shape or student_logits.ndim != 2:
        raise ValueError(
            f"implicit_soft_cross_entropy expects equal (n, K) shapes, got "
            f"{tuple(targets.shape)} and {tuple(student_logits.shape)}"
        )
    return _ImplicitSoftCE.apply(
        student_logits, targets.logits, targets.scale, *targets.vectors(), 1.0 / float(student_temp), targets.compiled
    )
