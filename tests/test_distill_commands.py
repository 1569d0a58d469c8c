"""A distilled student in every command: `franca distill` (patch-8 student of a patch-4 teacher with heads), then
`franca export`, and the export (and the run's checkpoint) read by the nine evaluation protocols, features, the
figures and RASA on the toy data (proof that they run and load the student, not scores). The run folder rules of
`franca pretrain` hold for `franca distill`: a second run into the folder is refused, --resume continues."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers.protocols import TOY_PROTOCOLS, common_args
from helpers.training import make_image_folder, tiny_overrides

import franca
from franca.cli import main
from franca.data.toy import generate_toy
from franca.train.config import load_config
from franca.train.loop import train

pytestmark = pytest.mark.slow

STUDENT = ["--student", "vitt8", "model.embed_dim=24", "model.depth=1", "model.num_heads=2"]
SMALL = ["crops.global_crops_size=16", "crops.local_crops_size=8", "crops.local_crops_number=2"]
SMALL += ["train.knn_eval=false", "data.num_workers=0", "train.device=cpu", "train.batch_size_per_gpu=4"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return generate_toy(tmp_path_factory.mktemp("toy") / "toy", size=64, n_train=10, n_val=10, progress=False)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """(the distilled run's checkpoint, its export)."""
    root = tmp_path_factory.mktemp("distill")
    data = make_image_folder(root / "images", n=8)
    train(load_config("tiny", tiny_overrides(root / "teacher", data, iterations=2)), quiet=True)
    run = root / "student"
    args = ["distill", "--teacher", str(root / "teacher" / "checkpoint.pth"), *STUDENT, "--data", str(data)]
    assert main([*args, "--out", str(run), "--quiet", "train.iterations=2", *SMALL]) == 0
    assert main([*args, "--out", str(run), "--quiet", "train.iterations=2", *SMALL]) == 1  # a run is there
    allow = ["--allow-config-change", "train.iterations"]
    assert main([*args, "--out", str(run), "--quiet", "--resume", *allow, "train.iterations=3", *SMALL]) == 0
    assert torch.load(run / "checkpoint.pth", weights_only=True)["iteration"] == 3
    out = root / "student.safetensors"
    assert main(["export", "--weights", str(run / "checkpoint.pth"), "--out", str(out), "--quiet"]) == 0
    return run / "checkpoint.pth", out


def test_the_export_is_the_students_ema_backbone(student):
    ckpt, exported = student
    m = franca.load_backbone(weights=exported)
    assert (m.embed_dim, m.patch_size, m.n_blocks, m.num_heads) == (24, 8, 1, 2)
    saved = torch.load(ckpt, weights_only=True)["teacher"]  # the student's EMA
    torch.testing.assert_close(m.state_dict()["blocks.0.mlp.w12.weight"], saved["backbone.blocks.0.mlp.w12.weight"])


@pytest.mark.parametrize("protocol", list(TOY_PROTOCOLS))
def test_every_protocol_runs_on_the_distilled_student(tmp_path, toy, student, protocol):
    extra, sub = TOY_PROTOCOLS[protocol]
    out = tmp_path / f"{protocol}.json"
    data = toy / sub if sub else toy
    weights = student[0] if protocol == "knn" else student[1]  # the run's checkpoint, and its export
    assert main(["eval", protocol, *common_args(weights), "--data", str(data), *extra, "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["protocol"] == protocol.replace("-", "_") and math.isfinite(r["metric"]), r


def test_features_figures_and_rasa_run_on_the_distilled_student(tmp_path, toy, student):
    weights = student[1]
    assert main(["features", *common_args(weights), "--data", str(toy / "imagenet/val"), "--size", "64",
                 "--out", str(tmp_path / "f.pt")]) == 0  # fmt: skip
    feats = torch.load(tmp_path / "f.pt", weights_only=True)
    assert feats["patch"].shape[1:] == (64, 24) and feats["cls"].shape[1:] == (24,)  # 64 px: 8×8 patches of 8
    for fig in ("attention", "pca"):
        png = tmp_path / f"{fig}.png"
        assert main(["viz", fig, *common_args(weights), "--data", str(toy / "imagenet/val"), "--n-images", "2",
                     "--size", "64", "--out", str(png)]) == 0  # fmt: skip
        assert png.stat().st_size > 1000
    out = tmp_path / "rasa.safetensors"
    assert main(["rasa", *common_args(weights), "--data", str(toy / "imagenet/train"), "--size", "64",
                 "--heldout-fraction", "0.7", "--iterations", "1", "--max-steps", "10", "--window", "5",
                 "--probe-max-steps", "10", "--out", str(out)]) == 0  # fmt: skip
    assert franca.load_backbone(weights=out).rasa_proj is not None


def test_a_timm_student_distils_features_and_its_checkpoint_is_read(student, tmp_path, capsys):
    """`--student timm:NAME`: a timm ViT has no mask token, so `auto` takes feature distillation (said once) and
    `distill.mode=heads` is refused; the run's checkpoint (no mask token in it) is read by the evaluations
    and export like any other."""
    ckpt, _ = student
    teacher = ckpt.parents[1] / "teacher" / "checkpoint.pth"
    data = ckpt.parents[1] / "images"
    args = ["distill", "--teacher", str(teacher), "--student", "timm:vit_tiny_patch16_224", "model.depth=1"]
    args += ["--data", str(data), *SMALL, "crops.global_crops_size=32", "crops.local_crops_size=16"]
    assert main([*args, "--out", str(tmp_path / "h"), "distill.mode=heads", "train.iterations=1"]) != 0
    assert "has none: use features" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "t"), "--quiet", "train.iterations=1"]) == 0
    assert "no mask token: feature distillation" in capsys.readouterr().err
    saved = torch.load(tmp_path / "t" / "checkpoint.pth", weights_only=True)
    assert saved["config"]["distill"]["mode"] == "features" and not any("mask_token" in k for k in saved["teacher"])
    model = franca.load_backbone(weights=tmp_path / "t" / "checkpoint.pth")
    assert (model.embed_dim, model.patch_size, model.n_blocks) == (192, 16, 1)
    out = tmp_path / "r.json"
    assert main(["eval", "knn", "--weights", str(tmp_path / "t" / "checkpoint.pth"), "--size", "32", "--quiet"]
                + ["--out", str(out)]) == 0  # fmt: skip
    assert math.isfinite(json.loads(out.read_text())["metric"])
    assert main(["export", "--weights", str(tmp_path / "t" / "checkpoint.pth"), "--out", str(tmp_path / "s.safetensors"),
                 "--quiet"]) == 0  # fmt: skip
