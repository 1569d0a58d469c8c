"""Distillation from a frozen teacher (franca.train.distill, `franca distill`): the feature loss and the grid
resampling against hand-computed values; the teacher's input (size, normalisation); with a headed teacher the
targets are the frozen teacher's own Sinkhorn-Knopp assignments and the teacher never moves while the student's
EMA (the result) does; feature distillation trains its projections, which stay out of the exported backbone;
the config `franca distill` builds; one clear error for each wrong setting."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers.training import make_image_folder, tiny_overrides
from torch import nn

import franca
from franca.losses.feature_distill import feature_distill_loss, resample_grid
from franca.losses.sinkhorn import sinkhorn_knopp
from franca.models.heads import MatryoshkaHead
from franca.train.config import load_config
from franca.train.distill import (
    TeacherView,
    distill_config,
    student_grid_side,
    teacher_head_config,
    teacher_patch_side,
)
from franca.train.loop import Trainer, train
from franca.train.objective import Objective, StepInputs, Term
from franca.utils.errors import UserError

HEAD = dict(n_prototypes=64, nesting_levels=2, hidden_dim=32, bottleneck_dim=16)  # tiny_overrides' heads


# ---------------------------------------------------------------------------------------------- the loss
def test_feature_loss_matches_hand_computed_values() -> None:
    s, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    r = feature_distill_loss(s, t, smooth_l1_weight=1.0)
    # orthogonal: cosine distance 1; differences (1, -1): smooth-L1 |x| - 1/2 = 0.5 each, mean 0.5
    assert r["cosine"].item() == pytest.approx(1.0) and r["smooth_l1"].item() == pytest.approx(0.5)
    assert r["loss"].item() == pytest.approx(1.5)
    # the same direction, half the length: cosine 0; differences (0.3, 0.4) < 1: x²/2 -> (0.045 + 0.08) / 2
    s, t = torch.tensor([[0.3, 0.4]]), torch.tensor([[0.6, 0.8]])
    r = feature_distill_loss(s, t, smooth_l1_weight=2.0)
    assert r["cosine"].item() == pytest.approx(0.0, abs=1e-7)
    assert r["smooth_l1"].item() == pytest.approx(0.0625) and r["loss"].item() == pytest.approx(0.125)
    # averaged over every token: (B, N, D) with one exact and one opposite token
    s = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    t = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]])
    r = feature_distill_loss(s, t, smooth_l1_weight=0.0)
    assert r["cosine"].item() == pytest.approx(1.0) and r["loss"].item() == pytest.approx(1.0)  # (0 + 2) / 2
    with pytest.raises(ValueError, match="differ"):
        feature_distill_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_the_teacher_side_of_the_loss_carries_no_gradient() -> None:
    s = torch.randn(4, 8, requires_grad=True)
    t = torch.randn(4, 8, requires_grad=True)
    feature_distill_loss(s, t)["loss"].backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


def test_resample_grid_is_bilinear_with_half_pixel_centres() -> None:
    # a 1x2 grid [0, 1] -> 1x4: sources (i + 0.5)/2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped -> 0, .25, .75, 1
    tokens = torch.tensor([[[0.0], [1.0]]])
    out = resample_grid(tokens, (1, 2), (1, 4))
    torch.testing.assert_close(out, torch.tensor([[[0.0], [0.25], [0.75], [1.0]]]))
    x = torch.randn(2, 12, 5)
    assert resample_grid(x, (3, 4), (3, 4)) is x  # equal grids: untouched
    const = torch.full((1, 16, 3), 2.5)
    torch.testing.assert_close(resample_grid(const, (4, 4), (2, 2)), torch.full((1, 4, 3), 2.5))  # shrink
    torch.testing.assert_close(resample_grid(const, (4, 4), (7, 5)), torch.full((1, 35, 3), 2.5))
    # row-major: the token at row r, column c of the output reads the map at (r, c)
    ramp = torch.arange(4.0).repeat(4).reshape(1, 16, 1)  # value = column index
    up = resample_grid(ramp, (4, 4), (8, 8)).reshape(8, 8)
    assert torch.all(up[:, 1:] >= up[:, :-1]) and torch.allclose(up[0], up[7])
    with pytest.raises(ValueError, match="do not fill"):
        resample_grid(torch.zeros(1, 10, 2), (3, 3), (2, 2))


# ---------------------------------------------------------------------------------------------- the teacher's view
class _Recorder(nn.Module):
    """A stand-in backbone that records what it is given."""

    embed_dim, patch_size = 8, 4

    def __init__(self, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)) -> None:
        super().__init__()
        self.pretrained_cfg = {"mean": mean, "std": std}
        self.seen: list[torch.Tensor] = []

    def forward_features(self, x: torch.Tensor) -> dict:
        self.seen.append(x)
        return {"x": x}


def test_teacher_sides_follow_the_documented_rules() -> None:
    heads = student_grid_side(student_patch=8, teacher_patch=14)  # one teacher token per student token
    assert heads(32, 32) == (56, 56) and heads(64, 48) == (112, 84)
    feats = teacher_patch_side(14)  # the crop rounded to the nearest multiple of the patch, at least one patch
    assert feats(32, 32) == (28, 28) and feats(224, 224) == (224, 224) and feats(36, 36) == (42, 42)
    assert feats(5, 5) == (14, 14)
    assert teacher_patch_side(14, teacher_size=40)(32, 32) == (28, 28)


def test_teacher_view_resizes_and_renormalises() -> None:
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    same = _Recorder()
    view = TeacherView(same, teacher_patch_side(4), (mean, std))
    x = torch.randn(2, 3, 16, 16)
    view.forward_features(x)
    assert same.seen[-1] is x and not view.renormalise  # same normalisation, same size: the crops as they are
    other_mean, other_std = (0.43, 0.42, 0.35), (0.17, 0.15, 0.14)  # e.g. DINOv3's satellite models
    rec = _Recorder(other_mean, other_std)
    view = TeacherView(rec, student_grid_side(2, 4), (mean, std))
    view.forward_features(x)
    seen = rec.seen[-1]
    assert seen.shape == (2, 3, 32, 32)
    pixels = x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    expected = (pixels - torch.tensor(other_mean).view(1, 3, 1, 1)) / torch.tensor(other_std).view(1, 3, 1, 1)
    expected = F.interpolate(expected, size=(32, 32), mode="bicubic", align_corners=False, antialias=True)
    torch.testing.assert_close(seen, expected, rtol=1e-5, atol=1e-5)
    assert view.grid(16, 16) == (8, 8)


# ---------------------------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> tuple[Path, Path]:
    """(a 3-iteration tiny training checkpoint with heads, its image folder)."""
    root = tmp_path_factory.mktemp("teacher")
    data = make_image_folder(root / "images", n=12)
    train(load_config("tiny", tiny_overrides(root / "run", data, iterations=3)), quiet=True)
    return root / "run" / "checkpoint.pth", data


def _student(out: Path, data: Path, teacher: Path | str, *extra: str, iterations: int = 3) -> list[str]:
    """A width-16 student (tiny_overrides' heads, those of the teacher) distilled from `teacher`."""
    ov = tiny_overrides(out, data, iterations=iterations)
    return ov + ["model.embed_dim=16", "model.num_heads=1", f"distill.teacher={teacher}", *extra]


def _teacher_modules(ckpt_path: Path) -> tuple[nn.Module, dict[str, nn.Module]]:
    """The teacher, read independently of franca.train.distill: backbone by load_backbone, heads by hand."""
    backbone = franca.load_backbone(weights=ckpt_path)
    ckpt = torch.load(ckpt_path, weights_only=True)
    heads = {}
    for name in ("dino_head", "ibot_head"):
        h = MatryoshkaHead(backbone.embed_dim, 64, nesting_levels=2, hidden_dim=32, bottleneck_dim=16, l2_norm=True)
        h.load_state_dict({k.split(".", 1)[1]: v for k, v in ckpt["teacher"].items() if k.startswith(name + ".")})
        heads[name] = h.eval()
    return backbone, heads


@pytest.mark.parametrize("arch,size", [("vitt4", 16), ("vitt8", 16)])
def test_headed_targets_are_the_frozen_teachers_sinkhorn_assignments(tmp_path, teacher_run, arch, size) -> None:
    """Same patch (4) and another patch (8: the teacher sees the crop at the student's 2x2 grid x 4 = 8 px)."""
    ckpt, data = teacher_run
    extra = [f"model.arch={arch}", f"crops.global_crops_size={size}", "crops.local_crops_size=8"]
    trainer = Trainer(load_config("tiny", _student(tmp_path / "run", data, ckpt, *extra)), quiet=True)
    part = trainer.objective.part("distill")
    assert [t.name for t in part.terms] == ["dino", "ibot", "koleo"] and "franca" not in [
        p.name for p in trainer.objective.parts
    ]
    batch = next(iter(trainer.data.loader))
    step = StepInputs(batch=batch, iteration=0, schedule=trainer.schedules.at(0))
    got = part.targets(step)

    backbone, heads = _teacher_modules(ckpt)
    x = batch["global_crops"]
    grid = size // trainer.student["backbone"].patch_size
    if grid * backbone.patch_size != size:
        x = F.interpolate(x, size=(grid * 4, grid * 4), mode="bicubic", align_corners=False, antialias=True)
    with torch.no_grad():
        f = backbone.forward_features(x)
        temp = step.schedule.teacher_temp
        cls = [sinkhorn_knopp(t, temp) for t in heads["dino_head"](f["x_norm_clstoken"])]
        idx = batch["mask_indices"]
        patches = f["x_norm_patchtokens"].flatten(0, 1).index_select(0, idx)
        pt = [sinkhorn_knopp(t, temp) for t in heads["ibot_head"](patches)]
    assert f["x_norm_patchtokens"].shape[1] == grid * grid  # one teacher token per student token
    for a, b in zip(got.cls_targets, cls, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(got.patch_targets, pt, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_the_teacher_stays_frozen_and_the_students_ema_is_the_result(tmp_path, teacher_run) -> None:
    ckpt, data = teacher_run
    trainer = Trainer(load_config("tiny", _student(tmp_path / "run", data, ckpt)), quiet=True)
    frozen = trainer.objective.part("distill").teacher
    before = {k: v.detach().clone() for k, m in frozen.items() for k, v in m.state_dict().items()}
    summary = trainer.run()
    assert summary["iterations"] == 3
    after = {k: v for k, m in frozen.items() for k, v in m.state_dict().items()}
    assert all(torch.equal(before[k], after[k]) for k in before)
    saved = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    # the checkpoint's teacher is the student's EMA: the student's width (16), not the frozen teacher's (32)
    assert saved["teacher"]["backbone.cls_token"].shape[-1] == 16
    assert saved["objective"]["distill"]["teacher"] == str(ckpt)
    model = franca.load_backbone(weights=tmp_path / "run" / "checkpoint.pth")
    assert model.embed_dim == 16 and model.n_blocks == 2
    ema = {k[len("backbone.") :]: v for k, v in saved["teacher"].items() if k.startswith("backbone.")}
    torch.testing.assert_close(model.state_dict()["blocks.0.attn.qkv.weight"], ema["blocks.0.attn.qkv.weight"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["dino"]) and math.isfinite(r["ibot"]) for r in rows)


def test_feature_distillation_trains_projections_that_stay_out_of_the_export(tmp_path, teacher_run) -> None:
    ckpt, data = teacher_run
    teacher_file = franca.export_backbone(franca.load_backbone(weights=ckpt), tmp_path / "teacher.safetensors")
    assert teacher_head_config(str(teacher_file)) is None  # an export has no heads: auto is features
    extra = ["model.arch=vitt8", "crops.global_crops_size=16", "crops.local_crops_size=8",
             "ibot.mask_sample_probability=0", "distill.projection=mlp"]  # fmt: skip
    cfg = load_config("tiny", _student(tmp_path / "run", data, teacher_file, *extra))
    trainer = Trainer(cfg, quiet=True)
    part = trainer.objective.part("distill")
    assert [t.name for t in part.terms] == ["distill_cls", "distill_patch"]
    assert not trainer.student_forward.run_local and not trainer.student_forward.run_dino_head
    proj0 = trainer.student["distill_patch_proj"][0].weight.detach().clone()
    trainer.run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for r in rows:  # the total is the declared terms' sum (weights 1, 1); smooth-L1 weight 1
        assert r["total"] == pytest.approx(r["distill_cls"] + r["distill_patch"], rel=1e-6)
        assert r["distill_patch"] == pytest.approx(r["distill_patch_cosine"] + r["distill_patch_smooth_l1"], rel=1e-5)
        assert "dino" not in r and "grad_norm_dino_head" not in r
    assert not torch.equal(trainer.student["distill_patch_proj"][0].weight.detach(), proj0)  # trained
    saved = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    assert "distill_patch_proj.0.weight" in saved["student"] and "distill_patch_proj.0.weight" in saved["teacher"]
    out = franca.export_backbone(franca.load_backbone(weights=tmp_path / "run" / "checkpoint.pth"), tmp_path / "s.st")
    from safetensors.torch import load_file

    keys = load_file(out).keys()
    assert keys and not any("distill" in k or "head" in k for k in keys)


def test_wrong_settings_are_one_clear_error(tmp_path, teacher_run) -> None:
    ckpt, data = teacher_run
    bad = _student(tmp_path / "a", data, ckpt, "dino.n_prototypes=32")
    with pytest.raises(UserError, match=r"dino_head has \[32, 64\] prototypes per level, the student's \[16, 32\]"):
        Trainer(load_config("tiny", bad), quiet=True)
    export = franca.export_backbone(franca.load_backbone(weights=ckpt), tmp_path / "t.safetensors")
    with pytest.raises(UserError, match="has no DINO/iBOT heads"):
        Trainer(load_config("tiny", _student(tmp_path / "b", data, export, "distill.mode=heads")), quiet=True)
    with pytest.raises(UserError, match="no such file or folder, and not a released name"):
        Trainer(load_config("tiny", _student(tmp_path / "c", data, tmp_path / "missing.pth")), quiet=True)
    with pytest.raises(ValueError, match="distill.mode"):
        load_config("tiny", ["distill.mode=logits"])


def test_resume_refuses_a_teacher_file_whose_weights_changed(tmp_path, teacher_run) -> None:
    ckpt, data = teacher_run
    teacher = tmp_path / "teacher.pth"
    teacher.write_bytes(ckpt.read_bytes())
    train(load_config("tiny", _student(tmp_path / "run", data, teacher, iterations=2)), quiet=True)
    state = torch.load(teacher, weights_only=True)
    state["teacher"]["backbone.cls_token"] += 0.01
    torch.save(state, teacher)
    cfg = load_config("tiny", _student(tmp_path / "run", data, teacher, iterations=3))
    with pytest.raises(UserError, match="now holds other weights than the run was distilled from"):
        train(cfg, resume=True, quiet=True, allow_config_change=["train.iterations"])


# ---------------------------------------------------------------------------------------------- the config
def test_distill_config_takes_the_teachers_heads_and_the_students_own_size(teacher_run) -> None:
    ckpt, _ = teacher_run
    cfg = distill_config("distill-tiny", [], teacher=str(ckpt))
    assert cfg.distill.teacher == str(ckpt) and cfg.model.embed_dim == 64 and cfg.model.depth == 3
    assert cfg.dino.n_prototypes == 64 and cfg.dino.nesting_levels == 2 and cfg.ibot.head.hidden_dim == 32
    assert cfg.dino.loss_weight == 1.0 and cfg.ibot.mask_sample_probability == 0.5
    assert cfg.crops.local_crops_number == 4  # the preset's: heads mode keeps the multi-crop
    cfg = distill_config("distill-tiny", ["dino.n_prototypes=128"], teacher=str(ckpt), student="vits14")
    assert cfg.model.arch == "vits14" and cfg.model.embed_dim is None and cfg.model.num_heads is None
    assert cfg.dino.n_prototypes == 128  # an explicit override wins
    assert (cfg.crops.global_crops_size, cfg.crops.local_crops_size) == (28, 14)  # patch 14
    cfg = distill_config("distill-tiny", ["distill.mode=features"], teacher=str(ckpt))
    assert cfg.ibot.mask_sample_probability == 0.0 and cfg.crops.local_crops_number == 0
    assert cfg.dino.n_prototypes == 128  # the preset's: no heads are read in features mode
    with pytest.raises(UserError, match="--teacher and distill.teacher="):
        distill_config("distill-tiny", [f"distill.teacher={ckpt}"], teacher=str(ckpt))


# ---------------------------------------------------------------------------------------------- the interface
class _Proj:
    name = "p"

    def __init__(self, inputs: dict[str, str]) -> None:
        self.terms = (Term("p", 1.0, ()),)
        self.modules = {"proj": nn.Linear(2, 2)}
        self.module_inputs = inputs

    def targets(self, step):  # pragma: no cover - not called
        return None

    def __call__(self, *, student, targets, step):  # pragma: no cover - not called
        return {}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_module_inputs_are_checked_and_join_the_needs() -> None:
    obj = Objective([_Proj({"proj": "global_patch_tokens"})])
    assert obj.module_inputs == {"proj": "global_patch_tokens"} and "global_patch_tokens" in obj.needs
    with pytest.raises(ValueError, match="not one of its modules"):
        Objective([_Proj({"other": "global_patch_tokens"})])
    with pytest.raises(ValueError, match="reads 'extra', which the student pass does not make"):
        Objective([_Proj({"proj": "extra"})])


def test_an_official_franca_file_is_a_teacher_with_its_released_heads(tmp_path, capsys):
    """A file in the official release layout (a Franca ViT and its two Matryoshka heads, as `--init` reads them):
    `auto` distils from its heads; the frozen heads give, per level, the logits of an independent
    re-implementation of the official head; the student's heads get the released shapes; a short run trains."""
    from helpers.franca_mrl_reference import make_released_head, mrl_head_logits, released_file
    from helpers.training import make_image_folder

    from franca.cli import main
    from franca.models.api import build_backbone
    from franca.train.build import build_head
    from franca.train.distill import load_teacher, teacher_head_config

    torch.manual_seed(3)
    d, k = 64, 256
    backbone = build_backbone("vitt4", embed_dim=d, depth=2, num_heads=1, img_size=16).state_dict()
    heads = {
        "dino_head": make_released_head(d, k, 32, 16, 2, seed=1),
        "ibot_head": make_released_head(d, k // 2, 32, 16, 2, seed=2),
    }
    path = tmp_path / "franca_release.pth"
    torch.save(released_file(backbone, heads, block_chunks=2), path)
    shapes = teacher_head_config(str(path))
    assert (
        shapes is not None and shapes["dino"]["n_prototypes"] == k and shapes["ibot"]["head"]["n_prototypes"] == k // 2
    )
    assert shapes["dino"]["mode"] == "projection" and shapes["dino"]["nlayers"] == 2
    teacher = load_teacher(str(path), head_builder=build_head)
    assert teacher.heads is not None
    x = torch.randn(5, d)
    for name in ("dino_head", "ibot_head"):
        for got, want in zip(teacher.heads[name](x), mrl_head_logits(heads[name], x)):
            torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    data = make_image_folder(tmp_path / "img", n=8, size=16)
    args = ["distill", "--teacher", str(path), "--student", "vitt4", "model.embed_dim=32", "model.depth=1"]
    args += ["model.num_heads=2", "--data", str(data), "--out", str(tmp_path / "run"), "train.iterations=2"]
    args += ["crops.global_crops_size=16", "crops.local_crops_size=8", "crops.local_crops_number=2"]
    args += ["train.knn_eval=false", "data.num_workers=0", "train.batch_size_per_gpu=4"]
    assert main(args) == 0
    said = capsys.readouterr()
    assert "(frozen, with its heads)" in said.out + said.err
    saved = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    assert saved["config"]["dino"]["n_prototypes"] == k and saved["config"]["dino"]["mode"] == "projection"
