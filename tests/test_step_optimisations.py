"""Every speed optimisation of the step equals the plain computation (fp32, CPU, 1e-5): issue 10.

- Sinkhorn-Knopp "scaling" (vector updates over one exponentiated matrix) vs the all-log-space loop.
- Chunked fused soft cross-entropy (custom backward) vs the plain log_softmax graph: values and gradients.
- The whole Franca loss with the fused CE on vs off: loss and gradients of the student logits.
"""

from __future__ import annotations

import pytest
import torch

import franca.losses.fused_ce as fused
import franca.losses.sinkhorn as sk
from franca.losses.franca_loss import FrancaLoss


def _sinkhorn(method: str, *args, **kwargs) -> torch.Tensor:
    return sk.sinkhorn_knopp(*args, **kwargs, method=method)


def test_sinkhorn_method_is_an_argument_and_a_bad_one_is_named() -> None:
    assert not hasattr(sk, "METHOD")  # no process-wide switch
    with pytest.raises(ValueError, match="method must be one of .*'fast'"):
        sk.sinkhorn_knopp(torch.randn(4, 3), 0.1, method="fast")


@pytest.mark.parametrize(
    "n,K,temp,scale",
    [(40, 300, 0.07, 1.0), (7, 13, 0.04, 5.0), (300, 64, 0.05, 3.0), (1, 5, 0.1, 1.0), (8, 6, 0.01, 50.0)],
)
@pytest.mark.parametrize("iters", [1, 3])
def test_scaling_sinkhorn_equals_log_space(n: int, K: int, temp: float, scale: float, iters: int) -> None:
    g = torch.Generator().manual_seed(n * K)
    logits = torch.randn(n, K, generator=g) * scale
    ref = _sinkhorn("log", logits, temp, n_iterations=iters)
    fast = _sinkhorn("scaling", logits, temp, n_iterations=iters)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(fast).all()


def test_scaling_sinkhorn_padding_and_empty() -> None:
    logits = torch.randn(10, 32)
    torch.testing.assert_close(
        _sinkhorn("scaling", logits, 0.1, n_samples=6), _sinkhorn("log", logits, 0.1, n_samples=6), rtol=1e-5, atol=1e-6
    )
    assert _sinkhorn("scaling", logits, 0.1, n_samples=0).abs().sum() == 0


def test_scaling_sinkhorn_finite_where_rows_would_underflow() -> None:
    # Spread so wide that exp(L/τ − column max) underflows to 0 for whole rows: the row shift keeps them.
    logits = torch.randn(16, 12, generator=torch.Generator().manual_seed(3)) * 200
    q = _sinkhorn("scaling", logits, 0.01)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(dim=1), torch.ones(16))
    torch.testing.assert_close(q, _sinkhorn("log", logits, 0.01), rtol=1e-5, atol=1e-6)


def _plain_ce(t: torch.Tensor, s: torch.Tensor, temp: float) -> torch.Tensor:
    return -(t * torch.log_softmax(s / temp, dim=-1)).sum(-1)


@pytest.mark.parametrize("chunk_elements", [7, 64, 1 << 20])  # many chunks, a few, one
def test_chunked_soft_ce_values_and_gradients(monkeypatch: pytest.MonkeyPatch, chunk_elements: int) -> None:
    monkeypatch.setattr(fused, "CHUNK_ELEMENTS", chunk_elements)
    g = torch.Generator().manual_seed(0)
    t = torch.softmax(torch.randn(9, 17, generator=g), -1)
    t[7:] = 0.0  # padding rows of the iBOT buffer carry no target
    s = torch.randn(9, 17, generator=g, requires_grad=True)
    w = torch.rand(9, generator=g)
    s_ref = s.detach().clone().requires_grad_(True)
    out = fused.chunked_soft_cross_entropy(t, s, 0.1)
    ref = _plain_ce(t, s_ref, 0.1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(s.grad, s_ref.grad, rtol=1e-5, atol=1e-5)


def test_franca_loss_fused_ce_on_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The full objective (DINO local + global, iBOT) with wide levels: same loss and student gradients.
    The fused CE is an argument of the FrancaLoss instance: on, each wide iBOT level goes through it; off, none."""
    import franca.losses.dino as dino_mod

    monkeypatch.setattr(fused, "CHUNK_ELEMENTS", 5000)  # several chunks per level
    calls: list[int] = []
    real = dino_mod.chunked_soft_cross_entropy
    monkeypatch.setattr(dino_mod, "chunked_soft_cross_entropy", lambda t, s, tau: calls.append(1) or real(t, s, tau))
    g = torch.Generator().manual_seed(1)
    B, n_local, M, Ks = 3, 2, 7, [4096, 8192]

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).requires_grad_(True)

    sg = [leaf(2 * B, K) for K in Ks]
    sl = [leaf(n_local * B, K) for K in Ks]
    sp = [leaf(M, K) for K in Ks]
    tg = [torch.softmax(torch.randn(2 * B, K, generator=g) / 0.1, -1) for K in Ks]
    tp = [torch.softmax(torch.randn(M + 2, K, generator=g) / 0.1, -1) for K in Ks]
    w = torch.rand(M, generator=g)
    results = {}
    for flag in (True, False):
        loss = FrancaLoss(n_levels=2, student_temp=0.1, koleo_weight=0.0, fused_ce=flag)
        for x in sg + sl + sp:
            x.grad = None
        calls.clear()
        out = loss(sg, tg, sl, sp, tp, w)
        out["total"].backward()
        assert len(calls) == (2 if flag else 0)  # one per iBOT level
        results[flag] = (out["total"].detach(), [x.grad.clone() for x in sg + sl + sp])
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(results[True][1], results[False][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- implicit iBOT targets (issue 10)
import franca.losses.implicit_targets as imp  # noqa: E402


@pytest.mark.parametrize(
    "n,K,temp,scale",
    [(40, 300, 0.07, 1.0), (7, 13, 0.04, 5.0), (300, 64, 0.05, 3.0), (1, 5, 0.1, 1.0), (16, 12, 0.01, 50.0)],
)
@pytest.mark.parametrize("iters", [1, 3])
def test_implicit_sinkhorn_equals_materialised(n: int, K: int, temp: float, scale: float, iters: int) -> None:
    g = torch.Generator().manual_seed(n + K)
    logits = torch.randn(n, K, generator=g) * scale
    t = imp.sinkhorn_targets(logits, temp, n_iterations=iters)
    q = t.materialize()
    # exponents reach |L/τ| in the hundreds, so fp32 rounding alone moves a target by ~1e-5 relative
    torch.testing.assert_close(q, _sinkhorn("log", logits, temp, n_iterations=iters), rtol=3e-5, atol=1e-6)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(n))
    torch.testing.assert_close(t[:3].materialize(), q[:3])


def test_implicit_sinkhorn_row_chunks_and_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    logits = torch.randn(23, 50, generator=torch.Generator().manual_seed(0)) * 3
    whole = imp.sinkhorn_targets(logits, 0.07).materialize()
    monkeypatch.setattr(imp, "CHUNK_ELEMENTS", 120)  # 2 rows per chunk
    torch.testing.assert_close(imp.sinkhorn_targets(logits, 0.07).materialize(), whole, rtol=1e-6, atol=1e-7)
    assert imp.sinkhorn_targets(logits[:0], 0.07).materialize().shape == (0, 50)


def test_bf16_teacher_logits_are_scaled_in_fp32() -> None:
    """Teacher logits are bf16 under autocast; logits/τ must not be rounded to bf16 (at τ = 0.04 a logit of
    20 becomes 500 ± 1, i.e. a target off by a factor e). Both implementations equal the fp32 computation."""
    logits = (torch.randn(64, 500, generator=torch.Generator().manual_seed(1)) * 3).bfloat16()
    want = _sinkhorn("log", logits.float(), 0.04)
    torch.testing.assert_close(_sinkhorn("scaling", logits, 0.04), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(imp.sinkhorn_targets(logits, 0.04).materialize(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk_elements", [30, 1 << 27])
def test_implicit_soft_ce_values_and_gradients(monkeypatch: pytest.MonkeyPatch, chunk_elements: int) -> None:
    monkeypatch.setattr(imp, "CHUNK_ELEMENTS", chunk_elements)
    g = torch.Generator().manual_seed(2)
    t = imp.sinkhorn_targets(torch.randn(9, 17, generator=g) * 4, 0.05)
    s = torch.randn(9, 17, generator=g, requires_grad=True)
    w = torch.rand(9, generator=g)
    s_ref = s.detach().clone().requires_grad_(True)
    out = imp.implicit_soft_cross_entropy(t, s, 0.1)
    ref = _plain_ce(t.materialize(), s_ref, 0.1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(s.grad, s_ref.grad, rtol=1e-5, atol=1e-5)


def test_training_step_with_implicit_targets_equals_plain(tmp_path) -> None:
    """A whole step of the tiny preset: every loss term and every student gradient with the iBOT targets
    implicit equal those with the targets written out (fp32, CPU)."""
    from helpers.training import fixed_batch, make_image_folder, tiny_overrides

    from franca.train.config import load_config
    from franca.train.loop import Trainer
    from franca.train.objective import StepInputs

    data = make_image_folder(tmp_path / "img", n=8)
    tr = Trainer(load_config("tiny", tiny_overrides(tmp_path / "run", data, iterations=2)), quiet=True)
    batch = fixed_batch(4, 16, 8, 2, 4)
    assert batch["mask_indices"].numel() > 0
    franca = tr.objective.part("franca")
    step = StepInputs(batch=batch, iteration=0, schedule=tr.schedules.at(0))
    results = {}
    for implicit in (True, False):
        franca.teacher_targets.implicit = implicit
        params = {f"{m}.{n}": p for m, mod in tr.student.items() for n, p in mod.named_parameters()}
        for p in params.values():
            p.grad = None
        targets = tr.objective.targets(step)
        assert isinstance(targets[0].patch_targets[0], imp.SinkhornTargets) == implicit
        losses = tr.objective(student=tr.student_forward(batch), targets=targets, step=step)
        losses["total"] = tr.objective.total(losses)
        losses["total"].backward()
        results[implicit] = (
            {k: v.detach() for k, v in losses.items()},
            {n: p.grad.clone() for n, p in params.items() if p.grad is not None},
        )
    (l1, g1), (l0, g0) = results[True], results[False]
    assert l1.keys() == l0.keys() and g1.keys() == g0.keys() and len(g1) > 10
    for k in l1:
        torch.testing.assert_close(l1[k], l0[k], rtol=1e-5, atol=1e-5, msg=k)
    for n in g1:  # gradients reach ~1e3 here: within 1e-5 of each tensor's largest entry
        torch.testing.assert_close(
            g1[n], g0[n], rtol=1e-5, atol=1e-5 * float(g0[n].abs().max()), msg=lambda m: f"{n}: {m}"
        )


@pytest.mark.skipif(__import__("shutil").which("g++") is None, reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_passes_equal_eager() -> None:
    """`compiled=True` (train.compile) runs each pass as a compiled kernel: same values and gradients,
    also when the row count changes between calls (dynamic shapes)."""
    g = torch.Generator().manual_seed(3)
    cases = [(torch.randn(n, 40, generator=g) * 3, torch.randn(n, 40, generator=g)) for n in (11, 6)]
    eager = []
    for logits, s in cases:
        t = imp.sinkhorn_targets(logits, 0.07)
        s = s.clone().requires_grad_(True)
        imp.implicit_soft_cross_entropy(t, s, 0.1).sum().backward()
        eager.append((t.materialize(), s.grad))
    for (logits, s), (q, grad) in zip(cases, eager):
        t = imp.sinkhorn_targets(logits, 0.07, compiled=True)
        assert t.compiled and t[:2].compiled
        s = s.clone().requires_grad_(True)
        imp.implicit_soft_cross_entropy(t, s, 0.1).sum().backward()
        torch.testing.assert_close(t.materialize(), q, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(s.grad, grad, rtol=1e-5, atol=1e-6)


def test_compiled_passes_belong_to_the_caller_not_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiled passes are a property of the targets (of the TeacherTargets/Trainer that asked), not a
    process-wide switch: after a compiled computation, a default one still runs every pass eagerly.
    The "compiled" kernels are spies here (eager functions that count calls), so no compiler is needed."""
    from franca.train.step import TeacherTargets

    calls: list[str] = []

    def spy(name):
        def f(*a):
            calls.append(name)
            return imp._EAGER[name](*a)

        return f

    monkeypatch.setattr(imp, "_COMPILED", {name: spy(name) for name in imp._EAGER})
    g = torch.Generator().manual_seed(4)
    logits, s = torch.randn(10, 30, generator=g) * 3, torch.randn(10, 30, generator=g)

    def run(targets_of):
        t = targets_of(logits)
        st = s.clone().requires_grad_(True)
        imp.implicit_soft_cross_entropy(t, st, 0.1).sum().backward()
        return t, st.grad

    compiled_t = TeacherTargets(centering="sinkhorn_knopp", implicit_patch_targets=True, compiled_passes=True)
    plain_t = TeacherTargets(centering="sinkhorn_knopp", implicit_patch_targets=True)
    t1, g1 = run(lambda x: compiled_t._targets([x], 0.07, 1)[0])
    assert t1.compiled and {"_col_max", "_row_sum", "_ce_forward", "_ce_backward"} <= set(calls)
    calls.clear()
    t0, g0 = run(lambda x: plain_t._targets([x], 0.07, 1)[0])
    assert not t0.compiled and calls == []  # the earlier compiled instance changed nothing for this one
    torch.testing.assert_close(t0.materialize(), t1.materialize())
    torch.testing.assert_close(g0, g1)
