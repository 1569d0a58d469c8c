"""Continued pretraining (`franca pretrain --init NAME|FILE`, `train.init_from`): the released heads loaded
exactly (parity with an independent re-implementation of the official MRL head), our checkpoints' teacher
backbone and heads, fresh heads with a head warm-up for files without heads, the file defining the model,
DINOv3 files, and an exact --resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.franca_mrl_reference import make_released_head, mrl_head_logits, released_file
from helpers.training import make_image_folder, tiny_overrides

# A run that reads whatever model the init file defines: data, length and device only.
RUN = [
    "data.num_workers=0",
    "train.batch_size_per_gpu=4",
    "train.device=cpu",
    "train.knn_eval=false",
    "train.log_period=1",
    "crops.global_crops_size=16",
    "crops.local_crops_size=8",
    "crops.local_crops_number=2",
    "optim.warmup_iterations=1",
]
D, K, HIDDEN, BOTTLENECK = 64, 256, 32, 16


def _release_file(tmp: Path, nlayers: int = 3, parametrized: bool = False) -> tuple[Path, dict]:
    """A file in the official release layout: a Franca backbone (width 64, patch 4) and two separate MRL heads."""
    from franca.models.api import build_backbone

    torch.manual_seed(3)
    backbone = build_backbone("vitt4", embed_dim=D, depth=2, num_heads=1, img_size=16).state_dict()
    heads = {
        "dino_head": make_released_head(D, K, HIDDEN, BOTTLENECK, nlayers, seed=1),
        "ibot_head": make_released_head(D, K // 2, HIDDEN, BOTTLENECK, nlayers, seed=2),
    }
    obj = released_file(backbone, heads, block_chunks=2)
    if parametrized:  # torch's parametrized weight norm names g and v original0 / original1
        obj["teacher"] = {
            k.replace("weight_g", "parametrizations.weight.original0").replace(
                "weight_v", "parametrizations.weight.original1"
            ): v
            for k, v in obj["teacher"].items()
        }
    path = tmp / ("franca_release.pth" if not parametrized else "franca_release_param.pth")
    torch.save(obj, path)
    return path, heads


@pytest.mark.parametrize("nlayers, parametrized", [(3, False), (1, False), (2, True)])
def test_released_heads_equal_the_official_head_math(tmp_path: Path, nlayers: int, parametrized: bool) -> None:
    """Student and teacher heads built by `--init` from a release-layout file give, per level, the logits of an
    independent re-implementation of the official MRLDINOHead fed the same state dict (<= 1e-5); the model and
    head keys of the config follow the file."""
    from franca.train.build import build_models
    from franca.train.init import init_config

    path, heads = _release_file(tmp_path, nlayers, parametrized)
    cfg = init_config("adapt-tiny", [f"train.init_from={path}", *RUN])
    assert (cfg.model.embed_dim, cfg.model.depth, cfg.model.num_heads, cfg.model.patch_size) == (D, 2, 1, 4)
    assert cfg.train.init_heads is True
    assert (cfg.dino.n_prototypes, cfg.ibot.head.n_prototypes, cfg.dino.nesting_levels) == (K, K // 2, 5)
    assert (cfg.dino.mode, cfg.dino.nlayers, cfg.dino.bottleneck_dim, cfg.dino.l2_norm) == (
        "projection",
        nlayers,
        16,
        False,
    )
    student, teacher = build_models(cfg, torch.device("cpu"))
    x = torch.randn(7, D)
    for name in ("dino_head", "ibot_head"):
        want = mrl_head_logits(heads[name], x)
        assert [w.shape[1] for w in want] == [
            k * (K if name == "dino_head" else K // 2) // K for k in (16, 32, 64, 128, 256)
        ]
        for model in (student, teacher):
            got = model[name].eval()(x)
            assert len(got) == 5
            for g, w in zip(got, want):
                torch.testing.assert_close(g.double(), w, atol=1e-5, rtol=1e-5)
    # the backbone is the file's, as franca.load_backbone reads it
    from franca.models.api import load_backbone

    ref = load_backbone(weights=path)
    img = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(teacher["backbone"].eval()(img), ref(img))


def test_a_demo_style_checkpoint_starts_student_and_teacher_from_its_teacher(tmp_path: Path, capsys) -> None:
    """Our own checkpoint: its teacher's backbone and heads start both; the banner says so; nothing is frozen."""
    from franca.cli import main
    from franca.train.config import load_config
    from franca.train.loop import train

    data = make_image_folder(tmp_path / "img", n=8, size=16)
    s = train(load_config("tiny", tiny_overrides(tmp_path / "low", data, iterations=3)), quiet=True)
    ckpt = torch.load(s["checkpoint"], weights_only=True)
    assert any(not torch.equal(ckpt["teacher"][k], ckpt["student"][k]) for k in ckpt["teacher"])

    from franca.train.build import build_models
    from franca.train.init import init_config

    cfg = init_config("adapt-tiny", [f"train.init_from={s['checkpoint']}", f"data.dataset={data}", *RUN])
    student, teacher = build_models(cfg, torch.device("cpu"))
    for mods in (student, teacher):
        for prefix, module in mods.items():
            for k, v in module.state_dict().items():
                torch.testing.assert_close(v, ckpt["teacher"][f"{prefix}.{k}"], rtol=0, atol=0)
    rc = main(
        ["pretrain", "--config", "adapt-tiny", "--init", s["checkpoint"], "--data", str(data)]
        + ["--out", str(tmp_path / "ad"), "train.iterations=2", *RUN]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "backbone and heads (dino_head, ibot_head) of the file" in out
    assert "head warm-up" not in out and "backbone frozen" not in out


def test_a_file_without_heads_warms_the_heads_up_with_the_backbone_frozen(tmp_path: Path, capsys) -> None:
    """An export (backbone only): fresh heads, the banner states the head warm-up; during it the backbone
    stays the file's while the heads train; after it the backbone moves too."""
    from franca.cli import main
    from franca.models.api import build_backbone, export_backbone

    torch.manual_seed(5)
    exported = export_backbone(
        build_backbone("vitt4", embed_dim=32, depth=2, num_heads=2, img_size=16), tmp_path / "b.safetensors"
    )
    data = make_image_folder(tmp_path / "img", n=8, size=16)
    from franca.models.api import load_backbone

    file_state = load_backbone(weights=exported).state_dict()
    base = ["pretrain", "--config", "adapt-tiny", "--init", str(exported), "--data", str(data), *RUN]
    # the whole run is the warm-up: only the heads train
    assert (
        main([*base, "--out", str(tmp_path / "frozen"), "train.iterations=2", "train.freeze_backbone_iterations=2"])
        == 0
    )
    out = capsys.readouterr().out
    assert "heads start fresh" in out and "backbone frozen for the first 2 of 2 iterations" in out
    ck = torch.load(tmp_path / "frozen" / "checkpoint.pth", weights_only=True)
    for which in ("student", "teacher"):
        for k, v in file_state.items():
            torch.testing.assert_close(ck[which][f"backbone.{k}"], v, rtol=0, atol=1e-7)
    assert any(not torch.equal(ck["student"][k], ck["teacher"][k]) for k in ck["student"] if "head" in k)
    # automatic: as long as the lr warm-up, then the usual schedule
    assert main([*base, "--out", str(tmp_path / "auto"), "train.iterations=4", "optim.warmup_iterations=2"]) == 0
    out = capsys.readouterr().out
    assert "backbone frozen for the first 2 of 4 iterations" in out
    ck = torch.load(tmp_path / "auto" / "checkpoint.pth", weights_only=True)
    assert any(not torch.allclose(ck["student"][f"backbone.{k}"], v) for k, v in file_state.items())
    assert ck["config"]["train"]["init_heads"] is False


def test_backbone_lr_is_zero_then_the_whole_schedule() -> None:
    from franca.train.config import load_config
    from franca.train.schedules import Schedules, cosine_value, derive_lengths

    cfg = load_config(
        "adapt-tiny", ["train.iterations=20", "optim.warmup_iterations=4", "train.freeze_backbone_iterations=5"]
    )
    n = derive_lengths(cfg, 100)
    s = Schedules(cfg, n)
    assert n.freeze_backbone == 5 and "backbone frozen for 5" in n.describe()
    assert [s.at(i).backbone_lr for i in range(5)] == [0.0] * 5
    peak = s.peak_lr
    assert s.at(5).backbone_lr == 0.0 and s.at(7).backbone_lr == pytest.approx(peak / 2)  # warm-up restarts
    assert s.at(9).backbone_lr == pytest.approx(peak)
    assert s.at(14).backbone_lr == pytest.approx(cosine_value(5, peak, cfg.optim.min_lr, 11))
    assert s.at(3).lr == pytest.approx(peak * 3 / 4)  # the heads: the usual schedule from iteration 0
    assert load_config("adapt-tiny", ["train.iterations=20"]).train.freeze_backbone_iterations == -1
    assert derive_lengths(load_config("tiny", ["train.iterations=20"]), 100).freeze_backbone == 0
    with pytest.raises(ValueError, match="freeze_backbone_iterations=21"):
        derive_lengths(load_config("tiny", ["train.iterations=20", "train.freeze_backbone_iterations=21"]), 100)


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.embed_dim=128", "model.embed_dim"),
        ("model.depth=4", "model.depth"),
        ("dino.n_prototypes=32", "dino.n_prototypes"),
    ],
)
def test_an_override_that_contradicts_the_file_is_one_error(tmp_path: Path, capsys, override: str, key: str) -> None:
    from franca.cli import main

    path, _ = _release_file(tmp_path)
    rc = main(["pretrain", "--config", "adapt-tiny", "--init", str(path), "--out", str(tmp_path / "x"), override, *RUN])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    line = [ln for ln in err.splitlines() if ln.startswith("franca pretrain")]
    assert len(line) == 1 and key in line[0] and "franca_release.pth" in line[0], err
    assert not (tmp_path / "x").exists()


def test_fresh_heads_may_take_any_shape(tmp_path: Path) -> None:
    """With train.init_heads=false the heads start fresh: their keys are the preset's or the overrides'."""
    from franca.train.init import init_config

    path, _ = _release_file(tmp_path)
    cfg = init_config("adapt-tiny", [f"train.init_from={path}", "train.init_heads=false", "dino.n_prototypes=32", *RUN])
    assert cfg.dino.n_prototypes == 32 and cfg.train.init_heads is False and cfg.model.embed_dim == D


def test_a_dinov3_file_can_start_a_run(tmp_path: Path, capsys) -> None:
    """A DINOv3 layout (RoPE, storage tokens, masks in forward_features) trains from its file; a DINOv3 file of
    no named layout is one clear error."""
    from helpers.dinov3_reference import make_dinov3_state

    from franca.cli import main
    from franca.models.api import build_backbone

    torch.manual_seed(0)
    path = tmp_path / "dinov3_vitt16.pth"
    torch.save(build_backbone("dinov3_vitt16").state_dict(), path)
    data = make_image_folder(tmp_path / "img", n=8, size=32)
    run = [r for r in RUN if not r.startswith("crops.")] + ["crops.global_crops_size=32", "crops.local_crops_size=16"]
    rc = main(
        [
            "pretrain",
            "--config",
            "adapt-tiny",
            "--init",
            str(path),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "d3"),
            "train.iterations=2",
            *run,
        ]
    )
    out = capsys.readouterr()
    assert rc == 0, out.err
    ck = torch.load(tmp_path / "d3" / "checkpoint.pth", weights_only=True)
    assert ck["config"]["model"]["arch"] == "dinov3_vitt16" and ck["config"]["model"]["num_register_tokens"] == 4
    assert "backbone.rope_embed.periods" in ck["teacher"] and "backbone.storage_tokens" in ck["teacher"]
    odd = tmp_path / "odd.pth"
    torch.save(make_dinov3_state(embed_dim=64, depth=2, num_heads=2), odd)
    rc = main(
        [
            "pretrain",
            "--config",
            "adapt-tiny",
            "--init",
            str(odd),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "d3b"),
            *run,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "no named layout" in err and "Traceback" not in err


def test_resume_of_an_initialised_run_is_exact(tmp_path: Path, monkeypatch) -> None:
    """A run from a file without heads (head warm-up across the interruption), stopped by an error after its
    checkpoint at iteration 2 and resumed, logs the losses of the uninterrupted run."""
    from franca.models.api import build_backbone, export_backbone
    from franca.train import loop
    from franca.train.init import init_config
    from franca.train.metrics import read_metrics

    torch.manual_seed(5)
    exported = export_backbone(
        build_backbone("vitt4", embed_dim=32, depth=2, num_heads=2, img_size=16), tmp_path / "b.safetensors"
    )
    data = make_image_folder(tmp_path / "img", n=8, size=16)

    def cfg(out: Path):
        return init_config(
            "adapt-tiny",
            [
                f"train.init_from={exported}",
                f"data.dataset={data}",
                f"train.output_dir={out}",
                "train.iterations=6",
                "train.checkpoint_period=2",
                "train.freeze_backbone_iterations=3",
                "model.drop_path_rate=0.1",
                *RUN,
            ],
        )

    loop.train(cfg(tmp_path / "ref"), quiet=True)
    original = loop.Trainer.step

    def failing(self, batch, i):
        if i == 3:
            raise RuntimeError("stop")
        return original(self, batch, i)

    monkeypatch.setattr(loop.Trainer, "step", failing)
    with pytest.raises(RuntimeError, match="stop"):
        loop.train(cfg(tmp_path / "run"), quiet=True)
    monkeypatch.setattr(loop.Trainer, "step", original)
    loop.train(cfg(tmp_path / "run"), resume=True, quiet=True)
    ref = {r["iteration"]: r["total"] for r in read_metrics(tmp_path / "ref" / "metrics.jsonl")}
    got = {r["iteration"]: r["total"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")}
    assert sorted(ref) == list(range(6)) and got == ref


def test_a_released_name_is_fetched_and_named_in_the_banner(tmp_path: Path, monkeypatch, capsys) -> None:
    """`--init franca_vitb14_in21k` reads the file the hub cache gives for that name (here a release-layout
    stand-in: the download itself is franca.models.hub's, tested there) and starts from its heads."""
    import franca.train.init as init_mod
    from franca.cli import main

    path, _ = _release_file(tmp_path)
    asked = []
    monkeypatch.setattr(init_mod, "fetch_release", lambda rel, **kw: asked.append(rel.name) or path)
    data = make_image_folder(tmp_path / "img", n=8, size=16)
    argv = ["pretrain", "--config", "adapt-tiny", "--init", "franca_vitb14_in21k", "--data", str(data)]
    assert main([*argv, "--out", str(tmp_path / "r"), "train.iterations=1", *RUN]) == 0
    assert asked[0] == "franca_vitb14_in21k"
    assert "init: franca_vitb14_in21k: backbone and heads (dino_head, ibot_head) of the file" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="neither a released name"):
        from franca.train.init import resolve_spec

        resolve_spec(str(tmp_path / "nope.pth"))


def test_a_file_that_cannot_tell_its_head_count_asks_for_it_and_takes_it(tmp_path: Path, capsys) -> None:
    """A bare state dict 32 wide (no saved config; 32 is no named width and not a multiple of 64-wide heads):
    one error that names the file and the key; with `model.num_heads=2` the run starts from it."""
    from franca.cli import main
    from franca.models.api import build_backbone

    torch.manual_seed(6)
    state = build_backbone("vitt4", embed_dim=32, depth=2, num_heads=2, img_size=16).state_dict()
    bare = tmp_path / "bare.pth"
    torch.save(state, bare)
    data = make_image_folder(tmp_path / "img", n=8, size=16)
    base = ["pretrain", "--config", "adapt-tiny", "--init", str(bare), "--data", str(data), *RUN, "train.iterations=1"]
    assert main([*base, "--out", str(tmp_path / "a")]) != 0
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(bare) in err and "model.num_heads=N" in err
    assert main([*base, "--out", str(tmp_path / "b"), "model.num_heads=2"]) == 0
    ck = torch.load(tmp_path / "b" / "checkpoint.pth", weights_only=True)
    assert ck["config"]["model"]["num_heads"] == 2 and ck["config"]["model"]["embed_dim"] == 32
