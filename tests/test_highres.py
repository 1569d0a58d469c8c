"""`franca highres --checkpoint CKPT` (issue 23 item 2): the checkpoint's own config defines the model
and heads, its patch size rounds the stages' crop sizes, a contradicting model override is one error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.pretrain import cli_error, write_checkpoint_cases
from helpers.training import make_image_folder, tiny_overrides


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny pretraining checkpoint (vitt4, width 32, depth 2, 2 register tokens) made in the test."""
    from franca.train.config import load_config
    from franca.train.loop import train

    root = tmp_path_factory.mktemp("highres")
    data = make_image_folder(root / "img", n=8)
    s = train(
        load_config("tiny", tiny_overrides(root / "low", data, iterations=2) + ["model.num_register_tokens=2"]),
        quiet=True,
    )
    return {"root": root, "data": data, "ckpt": Path(s["checkpoint"])}


def _stage(tmp: Path, global_size: int, local_size: int) -> Path:
    """A small stage preset on top of the real highres-364 preset (which builds a ViT-B by itself)."""
    p = tmp / f"stage{global_size}.yaml"
    p.write_text(
        f"_base_: highres-364\ncrops:\n  global_crops_size: {global_size}\n  local_crops_size: {local_size}\n"
        "  local_crops_number: 2\n"
    )
    return p


def _data_overrides(data: Path) -> list[str]:
    """Only data, length and device: no model.*, dino.* or ibot.* keys."""
    return [
        f"data.dataset={data}",
        "data.num_workers=0",
        "train.iterations=2",
        "train.batch_size_per_gpu=4",
        "train.device=cpu",
        "train.knn_eval=false",
        "train.log_period=1",
        "optim.warmup_iterations=0",
        "teacher.warmup_teacher_temp_iterations=1",
        "optim.freeze_last_layer_iterations=1",
    ]


def test_highres_runs_from_a_tiny_checkpoint_without_model_overrides(tiny_ckpt, tmp_path: Path, capsys) -> None:
    from franca.cli import main

    stages = f"{_stage(tmp_path, 22, 10)},{_stage(tmp_path, 26, 13)}"  # not multiples of the patch (4)
    rc = main(
        [
            "highres",
            "--checkpoint",
            str(tiny_ckpt["ckpt"]),
            "--quiet",
            "--out",
            str(tmp_path / "hr"),
            "--stages",
            stages,
            *_data_overrides(tiny_ckpt["data"]),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0, err[-3000:]
    src = torch.load(tiny_ckpt["ckpt"], weights_only=True)
    for name, (g, loc) in (("stage22", (20, 8)), ("stage26", (24, 12))):  # rounded down to multiples of 4
        ck = torch.load(tmp_path / "hr" / name / "checkpoint.pth", weights_only=True)
        assert ck["iteration"] == 2
        model = ck["config"]["model"]
        assert (model["arch"], model["embed_dim"], model["depth"], model["num_heads"]) == ("vitt4", 32, 2, 2)
        assert model["num_register_tokens"] == 2
        assert ck["config"]["dino"]["n_prototypes"] == src["config"]["dino"]["n_prototypes"] == 64
        assert (ck["config"]["crops"]["global_crops_size"], ck["config"]["crops"]["local_crops_size"]) == (g, loc)
        assert ck["teacher"]["backbone.pos_embed"].shape[1] == 1 + (g // 4) ** 2
        assert ck["config"]["optim"]["base_lr"] == 1.25e-5  # the recipe is still the stage's


def test_highres_stage_config_takes_the_model_and_rounds_crops() -> None:
    """The `make demo` case: a tiny-preset checkpoint (vitt8, width 128, depth 4, patch 8) and the real
    highres-364 stage (a ViT-B preset with crops 364 / 112)."""
    from franca.train.config import load_config, to_dict
    from franca.train.highres import stage_config

    saved = to_dict(load_config("tiny"))
    cfg = stage_config("highres-364", [], saved, patch_size=8, source="ckpt")
    assert (cfg.model.arch, cfg.model.embed_dim, cfg.model.depth, cfg.model.num_heads) == ("vitt8", 128, 4, 4)
    assert cfg.model.layerscale_init is None and cfg.model.drop_path_rate == 0.0
    assert (cfg.crops.global_crops_size, cfg.crops.local_crops_size) == (360, 112)
    assert (cfg.dino.n_prototypes, cfg.ibot.head.n_prototypes, cfg.dino.nesting_levels) == (128, 128, 3)
    assert cfg.optim.base_lr == 1.25e-5 and cfg.train.iterations == 30000  # the recipe stays the stage's
    # an explicit override that agrees with the checkpoint is fine; an explicit head override is honoured
    cfg = stage_config("highres-364", ["model.depth=4", "dino.n_prototypes=32"], saved, patch_size=8, source="ckpt")
    assert cfg.model.depth == 4 and cfg.dino.n_prototypes == 32
    # a checkpoint without a saved config: the preset's model, as before
    assert stage_config("highres-364", [], None, patch_size=14, source="ckpt").model.arch == "vitb14"


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.arch=vitb14", "model.arch"),
        ("model.embed_dim=64", "model.embed_dim"),
        ("model.num_register_tokens=0", "model.num_register_tokens"),
    ],
)
def test_a_contradicting_model_override_is_one_clear_error(tiny_ckpt, tmp_path: Path, capsys, override, key) -> None:
    from franca.cli import main

    rc = main(
        [
            "highres",
            "--checkpoint",
            str(tiny_ckpt["ckpt"]),
            "--quiet",
            "--out",
            str(tmp_path / "hr"),
            "--stages",
            str(_stage(tmp_path, 20, 8)),
            override,
            *_data_overrides(tiny_ckpt["data"]),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    line = [ln for ln in err.splitlines() if ln.startswith("franca highres")]
    assert len(line) == 1 and key in line[0] and str(tiny_ckpt["ckpt"]) in line[0]
    assert not (tmp_path / "hr").exists()


def test_highres_rerun_is_refused_and_resume_finishes_the_stages(tiny_ckpt, tmp_path: Path, capsys) -> None:
    from franca.cli import main

    argv = [
        "highres",
        "--checkpoint",
        str(tiny_ckpt["ckpt"]),
        "--quiet",
        "--out",
        str(tmp_path / "hr"),
        "--stages",
        str(_stage(tmp_path, 20, 8)),
        *_data_overrides(tiny_ckpt["data"]),
    ]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(argv) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0
    assert main(argv + ["--overwrite"]) == 0


@pytest.mark.parametrize("case", ["empty", "text", "foreign", "truncated", "malicious"])
def test_highres_from_a_bad_checkpoint_is_one_line_naming_it(tiny_run, tmp_path: Path, capsys, case: str) -> None:
    bad = write_checkpoint_cases(tmp_path, tiny_run["ckpt"])[case]
    line = cli_error(capsys, ["highres", "--checkpoint", str(bad), "--quiet", "--out", str(tmp_path / "hr")])
    assert str(bad) in line
    assert not (tmp_path / "PWNED").exists()


def test_highres_from_a_config_less_checkpoint_of_another_shape_is_one_line(tiny_run, tmp_path: Path, capsys) -> None:
    ckpt = torch.load(tiny_run["ckpt"], weights_only=True)
    del ckpt["config"]
    bare = tmp_path / "bare.pth"
    torch.save(ckpt, bare)
    stage = tmp_path / "stage.yaml"
    stage.write_text(
        "_base_: tiny\nmodel:\n  arch: vitt4\n  embed_dim: 64\n  depth: 2\n  num_heads: 2\n"
        "crops:\n  global_crops_size: 16\n  local_crops_size: 8\n"
    )
    line = cli_error(
        capsys,
        [
            "highres",
            "--checkpoint",
            str(bare),
            "--quiet",
            "--out",
            str(tmp_path / "hr"),
            "--stages",
            str(stage),
            f"data.dataset={tiny_run['data']}",
            "train.iterations=1",
            "train.batch_size_per_gpu=4",
            "train.knn_eval=false",
            "data.num_workers=0",
        ],
    )
    assert str(bare) in line and "do not fit" in line and len(line) < 600
