"""Training-step invariants: EMA, parameter groups, the batched student forward against a plain
per-crop oracle, skipped files, non-finite losses, and loading the teacher from a checkpoint."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from helpers.pretrain import cli_error, run_pretrain
from helpers.training import fixed_batch, make_image_folder, tiny_overrides
from torch import nn


def test_ema_momentum_one_keeps_teacher_bitwise_and_zero_copies_student() -> None:
    from franca.train.ema import teacher_student_pairs, update_ema

    student = nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4))
    teacher = copy.deepcopy(student)
    for p in student.parameters():
        p.data.add_(torch.randn_like(p))
    before = [p.clone() for p in teacher.parameters()]
    t, s = teacher_student_pairs(teacher, student)
    update_ema(t, s, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))
    update_ema(t, s, 0.25)  # 0.25 t + 0.75 s
    for a, b, c in zip(before, teacher.parameters(), student.parameters()):
        torch.testing.assert_close(b, 0.25 * a + 0.75 * c)
    update_ema(t, s, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), student.parameters()))


def test_param_groups_follow_the_reference_rules() -> None:
    import franca
    from franca.train.optim import build_param_groups, layer_id

    backbone = franca.build_backbone("vitt4", embed_dim=32, depth=3, num_heads=2, img_size=16)
    head = nn.ModuleDict({"last_layers": nn.ModuleList([nn.Linear(4, 4, bias=False)]), "mlp": nn.Linear(4, 4)})
    groups = build_param_groups(
        {"backbone": backbone, "dino_head": head}, depth=3, layerwise_decay=0.5, patch_embed_lr_mult=0.2
    )
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["backbone.blocks.0.norm1.weight"]["wd_multiplier"] == 0.0
    assert by_name["backbone.blocks.0.attn.qkv.bias"]["wd_multiplier"] == 0.0
    assert by_name["backbone.blocks.0.ls1.gamma"]["wd_multiplier"] == 0.0
    assert by_name["backbone.blocks.0.attn.qkv.weight"]["wd_multiplier"] == 1.0
    # layer-wise decay 0.5 ** (depth + 1 - layer id): block 0 has id 1 -> 0.5**3, patch embed id 0 -> 0.5**4 * 0.2
    assert by_name["backbone.blocks.0.attn.qkv.weight"]["lr_multiplier"] == pytest.approx(0.125)
    assert by_name["backbone.patch_embed.proj.weight"]["lr_multiplier"] == pytest.approx(0.0625 * 0.2)
    assert by_name["backbone.norm.weight"]["lr_multiplier"] == 1.0
    assert by_name["dino_head.last_layers.0.weight"]["is_last_layer"]
    assert not by_name["dino_head.mlp.weight"]["is_last_layer"]
    assert layer_id("blocks.1.4.attn.qkv.weight", 12) == 5  # chunked blocks: global index 4


def _tiny_modules():
    import franca
    from franca.models.heads import MatryoshkaHead

    torch.manual_seed(0)
    bb = franca.build_backbone("vitt4", embed_dim=32, depth=2, num_heads=2, img_size=16)
    return {
        "backbone": bb,
        "dino_head": MatryoshkaHead(32, 64, nesting_levels=2, hidden_dim=32, bottleneck_dim=16),
        "ibot_head": MatryoshkaHead(32, 64, nesting_levels=2, hidden_dim=32, bottleneck_dim=16),
    }


def test_batched_student_forward_equals_plain_per_crop_loop() -> None:
    """The optimised student pass (one backbone call per crop size, one head call for all CLS tokens)
    gives the same outputs and gradients as calling backbone and heads crop by crop."""
    from franca.train.step import StudentForward

    mods = _tiny_modules()
    batch = fixed_batch(4, 16, 8, 2, 4)
    out = StudentForward(**mods)(batch)
    loss_fast = sum(t.square().mean() for t in out.global_cls + out.local_cls + out.masked_patches)
    grads_fast = torch.autograd.grad(loss_fast, list(mods["backbone"].parameters()))

    B, bb = 4, mods["backbone"]
    g_feats = [
        bb.forward_features(batch["global_crops"][c * B : (c + 1) * B], batch["masks"][c * B : (c + 1) * B])
        for c in range(2)
    ]
    l_cls = [bb.forward_features(batch["local_crops"][v * B : (v + 1) * B])["x_norm_clstoken"] for v in range(2)]
    g_cls = [mods["dino_head"](torch.cat([f["x_norm_clstoken"] for f in g_feats]))]
    loc = [mods["dino_head"](x) for x in l_cls]
    patches = torch.cat([f["x_norm_patchtokens"] for f in g_feats]).flatten(0, 1)[batch["mask_indices"]]
    masked = mods["ibot_head"](patches)
    plain_levels = (
        [g_cls[0][lv] for lv in range(2)]
        + [torch.cat([loc[0][lv], loc[1][lv]]) for lv in range(2)]
        + [masked[lv] for lv in range(2)]
    )
    loss_plain = sum(t.square().mean() for t in plain_levels)
    grads_plain = torch.autograd.grad(loss_plain, list(bb.parameters()))
    torch.testing.assert_close(loss_fast, loss_plain, rtol=0, atol=1e-5)
    for a, b in zip(grads_fast, grads_plain):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_teacher_gets_no_gradient_and_step_changes_student(tmp_path: Path) -> None:
    from franca.train.config import load_config
    from franca.train.loop import Trainer

    data = make_image_folder(tmp_path / "img", n=8)
    tr = Trainer(
        load_config("tiny", tiny_overrides(tmp_path / "run", data, iterations=2) + ["optim.warmup_iterations=0"]),
        quiet=True,
    )
    assert all(not p.requires_grad for m in tr.teacher.values() for p in m.parameters())
    before = copy.deepcopy(tr.student["backbone"].state_dict())
    losses = tr.step(fixed_batch(4, 16, 8, 2, 4), 0)
    assert torch.isfinite(losses["total"])
    assert {"dino_l0", "dino_l1", "ibot_l0", "ibot_l1", "koleo"} <= set(losses)
    assert all(p.grad is None for m in tr.teacher.values() for p in m.parameters())
    after = tr.student["backbone"].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def _write_bad_files(folder: Path) -> None:
    good = sorted(folder.rglob("*.png"))[0]
    from PIL import Image

    jpg = folder / "part0" / "truncated.jpg"
    Image.open(good).convert("RGB").resize((64, 64)).save(jpg, quality=95)
    data = jpg.read_bytes()
    jpg.write_bytes(data[: len(data) // 2])  # a JPEG cut in half
    (folder / "part1" / "notes.png").write_text("this is not an image\n")
    (folder / "README.txt").write_text("ignored: not an image extension\n")


def test_folder_with_truncated_jpeg_and_non_image_trains_on_and_reports_two(tmp_path: Path) -> None:
    from franca.train.config import load_config
    from franca.train.loop import train

    data = make_image_folder(tmp_path / "img", n=10)
    _write_bad_files(data)
    # 12 image-like files, batch 4: 3 iterations = one pass visits every file
    summary = train(load_config("tiny", tiny_overrides(tmp_path / "run", data, iterations=3)), quiet=True)
    assert summary["iterations"] == 3
    assert summary["skipped_files"] == 2
    assert {Path(p).name for p in summary["skipped_file_list"]} == {"truncated.jpg", "notes.png"}


class _NaNFrom:
    """An objective part whose one term turns NaN from iteration `start` on."""

    name = "poison"
    modules: dict = {}

    def __init__(self, start: int) -> None:
        from franca.train.objective import Term

        self.start, self.terms = start, (Term("poison", 1.0),)

    def targets(self, step):
        return None

    def __call__(self, *, student, targets, step):
        zero = student.global_backbone_cls.new_zeros((), dtype=torch.float32)
        return {"poison": zero * float("nan") if step.iteration >= self.start else zero}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    from franca.train.config import load_config
    from franca.train.loop import NonFiniteLossError, Trainer

    data = make_image_folder(tmp_path / "img", n=8)
    cfg = load_config("tiny", tiny_overrides(tmp_path / "run", data, iterations=6) + ["train.checkpoint_period=2"])
    tr = Trainer(cfg, quiet=True, extra_parts=[_NaNFrom(3)])
    with pytest.raises(
        NonFiniteLossError,
        match=r"loss became non-finite \(total=nan, poison=nan\).*iteration 3.*checkpoint.*iteration 2",
    ):
        tr.run()
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    assert ckpt["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["student"].values() if v.is_floating_point())


def test_load_backbone_reads_the_teacher_of_a_checkpoint(tmp_path: Path) -> None:
    import franca
    from franca.train.config import load_config
    from franca.train.loop import train

    data = make_image_folder(tmp_path / "img", n=8)
    summary = train(
        load_config("tiny", tiny_overrides(tmp_path / "run", data, iterations=2) + ["model.num_register_tokens=2"]),
        quiet=True,
    )
    ckpt = torch.load(summary["checkpoint"], weights_only=True)
    assert {"teacher", "student", "optimizer", "iteration", "config"} <= set(ckpt)
    # the width is not inferred from weights (it fixes the head count): a custom width is passed
    model = franca.load_backbone("vitt4", weights=summary["checkpoint"], embed_dim=32, num_heads=2)
    assert model.num_register_tokens == 2
    for k, v in model.state_dict().items():
        if v is not None and f"backbone.{k}" in ckpt["teacher"]:
            assert torch.equal(v, ckpt["teacher"][f"backbone.{k}"]), k
    assert any(k.startswith("dino_head.") for k in ckpt["teacher"])


def test_highres_stage_starts_from_a_checkpoint_with_resized_positions(tmp_path: Path) -> None:
    from franca.models.backbone import resize_pos_embed
    from franca.train.config import load_config
    from franca.train.loop import Trainer, train

    data = make_image_folder(tmp_path / "img", n=8)
    first = train(load_config("tiny", tiny_overrides(tmp_path / "low", data, iterations=1)), quiet=True)
    ckpt = torch.load(first["checkpoint"], weights_only=True)
    cfg = load_config(
        "tiny",
        tiny_overrides(tmp_path / "high", data, iterations=1)
        + ["crops.global_crops_size=24", "crops.local_crops_size=12", f"train.init_from={first['checkpoint']}"],
    )
    tr = Trainer(cfg, quiet=True)
    pos = tr.student["backbone"].pos_embed
    assert pos.shape[1] == 1 + 6 * 6  # 24 px / patch 4
    torch.testing.assert_close(pos.detach(), resize_pos_embed(ckpt["teacher"]["backbone.pos_embed"], 6))
    torch.testing.assert_close(
        tr.teacher["backbone"].blocks[0].attn.qkv.weight, ckpt["teacher"]["backbone.blocks.0.attn.qkv.weight"]
    )
    # golden: resizing a constant grid keeps it constant (bicubic weights sum to 1); CLS kept
    const = torch.cat([torch.full((1, 1, 3), 7.0), torch.ones(1, 16, 3)], dim=1)
    torch.testing.assert_close(
        resize_pos_embed(const, 6), torch.cat([torch.full((1, 1, 3), 7.0), torch.ones(1, 36, 3)], dim=1)
    )


def test_webdataset_shards_train_and_skip_bad_members(tmp_path: Path) -> None:
    import tarfile

    from franca.train.config import load_config
    from franca.train.loop import train

    imgs = make_image_folder(tmp_path / "img", n=10)
    shards = tmp_path / "shards"
    shards.mkdir()
    files = sorted(imgs.rglob("*.png"))
    for s in range(2):
        with tarfile.open(shards / f"train-{s:03d}.tar", "w") as tar:
            for i, f in enumerate(files[s::2]):
                tar.add(f, arcname=f"{s:03d}{i:04d}.png")
            bad = tmp_path / f"bad{s}.jpg"
            bad.write_bytes(b"not a jpeg")
            tar.add(bad, arcname=f"{s:03d}9999.jpg")
    summary = train(
        load_config("tiny", tiny_overrides(tmp_path / "run", str(shards / "train-{000..001}.tar"), iterations=3)),
        quiet=True,
    )
    assert summary["iterations"] == 3
    assert summary["skipped_files"] == 2  # one bad member per shard, both reached within 12 samples


def test_centering_alternative_runs_and_updates_its_centres(tmp_path: Path) -> None:
    from franca.train.config import load_config
    from franca.train.loop import Trainer

    data = make_image_folder(tmp_path / "img", n=8)
    tr = Trainer(
        load_config("tiny", tiny_overrides(tmp_path / "run", data, iterations=2) + ["loss.centering=centering"]),
        quiet=True,
    )
    centers = tr.objective.part("franca").teacher_targets.centers
    assert centers is not None
    c0 = centers[0].center(0).clone()
    losses = tr.step(fixed_batch(4, 16, 8, 2, 4), 0)
    assert torch.isfinite(losses["total"])
    assert not torch.equal(c0, centers[0].center(0))


def test_highres_command_runs_its_stages_in_order(tmp_path: Path) -> None:
    from franca.cli import main
    from franca.train.config import load_config
    from franca.train.loop import train

    data = make_image_folder(tmp_path / "img", n=8)
    base = tiny_overrides(tmp_path / "low", data, iterations=1)
    first = train(load_config("tiny", base), quiet=True)
    for name, size in (("s1", 20), ("s2", 24)):
        (tmp_path / f"{name}.yaml").write_text(
            f"_base_: tiny\ncrops:\n  global_crops_size: {size}\n  local_crops_size: 8\n"
        )
    overrides = [o for o in base if not o.startswith(("train.output_dir", "crops."))]
    rc = main(
        [
            "highres",
            "--checkpoint",
            first["checkpoint"],
            "--quiet",
            "--out",
            str(tmp_path / "hr"),
            "--stages",
            f"{tmp_path / 's1.yaml'},{tmp_path / 's2.yaml'}",
            *overrides,
        ]
    )
    assert rc == 0
    last = torch.load(tmp_path / "hr" / "s2" / "checkpoint.pth", weights_only=True)
    assert last["teacher"]["backbone.pos_embed"].shape[1] == 1 + 6 * 6
    assert last["config"]["train"]["init_from"] == str(tmp_path / "hr" / "s1" / "checkpoint.pth")


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


# ----------------------------------------------------------------------------- non-finite training
def test_overflowing_lr_is_one_line_naming_the_key(tiny_run, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    line = cli_error(
        capsys,
        run_pretrain(
            tiny_run, out, "optim.base_lr=1e38", "optim.warmup_iterations=0", "train.checkpoint_period=1", iterations=3
        ),
    )
    assert "optim.base_lr" in line and "iteration 0" in line
    assert not (out / "checkpoint.pth").exists()


def test_exploding_lr_stops_and_saves_only_finite_weights(tiny_run, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    line = cli_error(
        capsys,
        run_pretrain(
            tiny_run, out, "optim.base_lr=1e30", "optim.warmup_iterations=0", "train.checkpoint_period=1", iterations=4
        ),
    )
    assert "non-finite" in line and "optim.base_lr" in line
    if (out / "checkpoint.pth").exists():
        ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
        assert all(
            torch.isfinite(v).all()
            for part in ("teacher", "student")
            for v in ckpt[part].values()
            if v.is_floating_point()
        )


def test_inf_lr_weights_are_caught_before_the_first_save(tiny_run, tmp_path: Path, monkeypatch) -> None:
    """The issue's case (lr = inf past validation): the loss of iteration 0 is finite, the weights after
    its step are not; the check before the save stops the run and writes no checkpoint."""
    import dataclasses

    from franca.train.config import load_config
    from franca.train.loop import NonFiniteLossError, Trainer
    from franca.train.schedules import Schedules

    at = Schedules.at
    monkeypatch.setattr(
        Schedules, "at", lambda self, i: dataclasses.replace(at(self, i), lr=float("inf"), last_layer_lr=float("inf"))
    )
    cfg = load_config(
        "tiny",
        tiny_overrides(tmp_path / "out", tiny_run["data"], iterations=3)
        + ["train.checkpoint_period=1", "train.log_period=1"],
    )
    tr = Trainer(cfg, quiet=True)
    with pytest.raises(NonFiniteLossError, match=r"weights became non-finite .* iteration 0.*no checkpoint"):
        tr.run()
    assert not (tmp_path / "out" / "checkpoint.pth").exists()


def test_non_finite_weights_keep_the_last_good_checkpoint(tiny_run, tmp_path: Path) -> None:
    """Weights poisoned after a good save: the next save is refused and the good file stays."""
    from franca.train.config import load_config
    from franca.train.loop import NonFiniteLossError, Trainer

    cfg = load_config(
        "tiny",
        tiny_overrides(tmp_path / "out", tiny_run["data"], iterations=4)
        + ["train.checkpoint_period=2", "train.log_period=100"],
    )
    original = Trainer.step

    def step(self, batch, i):
        out = original(self, batch, i)
        if i == 3:  # after the last step (its loss is finite): poison one teacher tensor
            with torch.no_grad():
                self.teacher["backbone"].cls_token.view(-1)[0] = float("nan")
        return out

    Trainer.step = step
    try:
        tr = Trainer(cfg, quiet=True)
        with pytest.raises(NonFiniteLossError, match=r"weights.*teacher.*iteration 3.*checkpoint.*iteration 2"):
            tr.run()
    finally:
        Trainer.step = original
    ckpt = torch.load(tmp_path / "out" / "checkpoint.pth", weights_only=True)
    assert ckpt["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["teacher"].values() if v.is_floating_point())
