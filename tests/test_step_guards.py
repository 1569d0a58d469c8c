"""A process whose batch drew no iBOT mask still enters the iBOT Sinkhorn under torchrun (it all-reduces):
it must run on 0 rows rather than skip, or the other processes would wait forever."""

from __future__ import annotations

import pytest
import torch


def test_teacher_targets_run_sinkhorn_on_zero_masked_rows_when_distributed(monkeypatch: pytest.MonkeyPatch) -> None:
    import franca
    import franca.train.step as step
    from franca.models.heads import MatryoshkaHead

    calls: list[int] = []

    def counting(real):
        def run(logits: torch.Tensor, *a, **k):
            calls.append(logits.shape[0])
            return real(logits, *a, **k)

        return run

    monkeypatch.setattr(step, "sinkhorn_knopp", counting(step.sinkhorn_knopp))
    monkeypatch.setattr(step, "sinkhorn_targets", counting(step.sinkhorn_targets))
    backbone = franca.build_backbone("vitt4", embed_dim=32, depth=1, num_heads=2, img_size=16).eval()
    teacher = {
        "backbone": backbone,
        "dino_head": MatryoshkaHead(32, 16, nesting_levels=2, hidden_dim=8, bottleneck_dim=4),
        "ibot_head": MatryoshkaHead(32, 16, nesting_levels=2, hidden_dim=8, bottleneck_dim=4),
    }
    batch = {"global_crops": torch.randn(4, 3, 16, 16), "mask_indices": torch.zeros(0, dtype=torch.long)}
    targets = step.TeacherTargets(centering="sinkhorn_knopp")

    out = targets(teacher, batch, 0.07)  # single process: the empty iBOT part is skipped
    assert out.patch_targets is None and calls == [4, 4]

    calls.clear()
    monkeypatch.setattr(step, "is_dist", lambda: True)
    out = targets(teacher, batch, 0.07)
    assert calls == [4, 4, 0, 0]  # two CLS levels, then two iBOT levels on 0 rows
    assert [t.shape for t in out.patch_targets] == [torch.Size([0, 8]), torch.Size([0, 16])]
