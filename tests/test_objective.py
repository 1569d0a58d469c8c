"""The training objective (franca.train.objective): parts declare their terms, the loop sums, checks and logs
whatever they return. A new term needs no loop or config edit; the total FrancaLoss documents is the one optimised."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
from helpers.training import fixed_batch, make_image_folder, tiny_overrides
from torch import nn

from franca.losses import dino as dino_mod
from franca.losses import sinkhorn as sinkhorn_mod
from franca.train.config import load_config
from franca.train.loop import Trainer, train
from franca.train.objective import Objective, StepInputs, StudentOutput, Term
from franca.utils.distributed import all_gather_objects


class Dummy:
    """A term through the interface alone: its own trainable module (a learnable scale), its own state (how
    many steps it has seen), a logged extra value. gram-free: value = (scale · mean of the CLS tokens)²."""

    name = "dummy"

    def __init__(self, weight: float = 0.5) -> None:
        self.terms = (Term("dummy", weight, ("global_backbone_cls",)),)
        self.scale = nn.Linear(1, 1, bias=False)
        self.modules = {"dummy_scale": self.scale}
        self.calls = 0

    def targets(self, step: StepInputs) -> int:
        return step.iteration

    def __call__(self, *, student: StudentOutput, targets: Any, step: StepInputs) -> dict[str, torch.Tensor]:
        assert targets == step.iteration
        self.calls += 1
        m = student.global_backbone_cls.float().mean().reshape(1, 1)
        value = self.scale(m).square().sum()
        return {"dummy": value, "dummy_calls": torch.tensor(float(self.calls))}

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls}

    def load_state_dict(self, state: Optional[dict[str, Any]]) -> None:
        self.calls = 0 if state is None else int(state["calls"])


def test_a_dummy_term_added_through_the_interface_trains_logs_and_checkpoints(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "img", n=8)
    cfg = load_config("tiny", tiny_overrides(tmp_path / "run", data, iterations=2))
    dummy = Dummy()
    w0 = dummy.scale.weight.detach().clone()
    summary = train(cfg, quiet=True, extra_parts=[dummy])
    assert summary["iterations"] == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [0, 1]
    for r in rows:  # logged, and part of the total the loop optimised (weights: tiny preset 1, 1, 1; dummy 0.5)
        assert r["dummy"] > 0 and r["dummy_calls"] == r["iteration"] + 1
        assert r["total"] == pytest.approx(r["dino"] + r["ibot"] + 1.0 * r["koleo"] + 0.5 * r["dummy"], rel=1e-6)
    assert not torch.equal(dummy.scale.weight.detach().cpu(), w0)  # optimised with the student
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    assert torch.equal(ckpt["student"]["dummy_scale.weight"], dummy.scale.weight.detach().cpu())
    assert "dummy_scale.weight" in ckpt["teacher"]  # its EMA twin
    assert ckpt["objective"] == {"dummy": {"calls": 2}}

    # --resume restores the part's state and its module
    cfg2 = load_config("tiny", tiny_overrides(tmp_path / "run", data, iterations=3))
    again = Dummy()
    train(cfg2, resume=True, quiet=True, extra_parts=[again], allow_config_change=["train.iterations"])
    assert again.calls == 3
    assert not torch.equal(again.scale.weight.detach().cpu(), ckpt["student"]["dummy_scale.weight"])


def test_the_optimised_total_is_franca_loss_documented_total(tmp_path: Path) -> None:
    """Bit for bit: the loop's Σ weight · value over the declared terms equals FrancaLoss's `total`, with
    non-unit weights on every term."""
    data = make_image_folder(tmp_path / "img", n=8)
    extra = ["dino.loss_weight=0.7", "ibot.head.loss_weight=1.3", "loss.koleo_weight=0.3"]
    tr = Trainer(load_config("tiny", tiny_overrides(tmp_path / "run", data) + extra), quiet=True)
    assert [(t.name, t.weight) for t in tr.objective.terms] == [("dino", 0.7), ("ibot", 1.3), ("koleo", 0.3)]
    franca = tr.objective.part("franca")
    batch = fixed_batch(4, 16, 8, 2, 4)
    step = StepInputs(batch=batch, iteration=0, schedule=tr.schedules.at(0))
    with torch.no_grad():
        targets = tr.objective.targets(step)
        student = tr.student_forward(batch)
        values = tr.objective(student=student, targets=targets, step=step)
        documented = franca.loss(
            student.global_cls,
            targets[0].cls_targets,
            student.local_cls,
            student.masked_patches,
            targets[0].patch_targets,
            batch["masks_weight"],
            student.global_backbone_cls,
        )
    assert values["koleo"] > 0 and values["ibot"] > 0
    assert torch.equal(tr.objective.total(values), documented["total"])


class _Part:
    def __init__(self, name: str, terms: tuple[Term, ...], returns: dict[str, float], modules=None) -> None:
        self.name, self.terms, self.returns, self.modules = name, terms, returns, modules or {}

    def targets(self, step):
        return None

    def __call__(self, *, student, targets, step):
        return {k: torch.tensor(v) for k, v in self.returns.items()}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_objective_checks_its_parts_declarations() -> None:
    a = _Part("a", (Term("x", 1.0),), {"x": 1.0})
    with pytest.raises(ValueError, match="two objective terms are named 'x'"):
        Objective([a, _Part("b", (Term("x", 2.0),), {"x": 1.0})])
    with pytest.raises(ValueError, match="two objective parts are named 'a'"):
        Objective([a, _Part("a", (Term("y", 2.0),), {"y": 1.0})])
    with pytest.raises(ValueError, match=r"term 'y' needs \['patch_tokens'\], which the student pass does not make"):
        Objective([_Part("b", (Term("y", 1.0, ("patch_tokens",)),), {"y": 1.0})])
    with pytest.raises(KeyError, match=r"part 'b' returned no value for its terms \['y'\]"):
        Objective([_Part("b", (Term("y", 1.0),), {"z": 1.0})])(student=None, targets=[None], step=None)
    with pytest.raises(KeyError, match=r"part 'b' returns \['x'\], already returned by another part"):
        Objective([a, _Part("b", (Term("y", 1.0),), {"y": 1.0, "x": 3.0})])(
            student=None, targets=[None, None], step=None
        )
    for name in ("lr", "total", "grad_norm_backbone"):
        with pytest.raises(KeyError, match=f"returns \\['{name}'\\], names the training loop logs itself"):
            Objective([_Part("b", (Term("y", 1.0),), {"y": 1.0, name: 2.0})])(student=None, targets=[None], step=None)
    obj = Objective([a, _Part("b", (Term("y", 0.25),), {"y": 8.0, "log_only": 100.0})])
    values = obj(student=None, targets=[None, None], step=None)
    assert float(obj.total(values)) == 1.0 * 1.0 + 0.25 * 8.0  # log_only is logged, not summed


def test_student_pass_runs_only_the_heads_a_term_needs(tmp_path: Path) -> None:
    """An objective whose terms read only patch tokens (a feature-distillation student, say): no head runs
    and the heads get no gradient; with every field needed, every output is there."""
    from franca.train.step import StudentForward

    data = make_image_folder(tmp_path / "img", n=8)
    tr = Trainer(load_config("tiny", tiny_overrides(tmp_path / "run", data)), quiet=True)
    assert tr.objective.needs == {"global_cls", "local_cls", "masked_patches", "global_backbone_cls"}
    heads = {k: tr.student[k] for k in ("backbone", "dino_head", "ibot_head")}
    batch = fixed_batch(4, 16, 8, 2, 4)
    full = StudentForward(**heads, outputs=tr.objective.needs)(batch)
    assert full.global_cls is not None and full.local_cls is not None and full.masked_patches is not None
    needs = Objective([_Part("p", (Term("spread", 1.0, ("global_patch_tokens",)),), {})]).needs
    forward = StudentForward(**heads, outputs=needs)
    assert not forward.run_dino_head and not forward.run_ibot_head
    out = forward(batch)
    assert out.global_cls is None and out.local_cls is None and out.masked_patches is None
    assert out.global_patch_tokens.shape == (8, 16, 32)  # 2 crops x 4 images, 4x4 patches, width 32
    out.global_patch_tokens.float().var(dim=1).mean().backward()
    assert all(p.grad is None for k in ("dino_head", "ibot_head") for p in tr.student[k].parameters())
    assert any(p.grad is not None for p in tr.student["backbone"].parameters())


def test_no_module_switches_and_the_loop_names_no_term() -> None:
    assert not hasattr(dino_mod, "FUSED_CE") and not hasattr(sinkhorn_mod, "METHOD")
    src = (Path(__file__).parents[1] / "franca" / "train" / "loop.py").read_text()
    strings = {n.value for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    named = {s for s in strings for term in ("dino", "ibot", "koleo", "gram") if term in s.split("_")}
    assert not named, f"train/loop.py names loss terms: {named}"
    assert "torch.distributed.all_" not in src  # collectives live in franca.utils.distributed


def test_all_gather_objects_without_a_process_group() -> None:
    assert all_gather_objects({"rank0": 1}) == [{"rank0": 1}]
