"""Training configs: presets load from the package, overrides are typed, bad input names the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.pretrain import cli_error

from franca.train.config import PRESET_DIR, dump_yaml, from_dict, list_presets, load_config, to_dict

PRESETS = [
    "tiny",
    "tiny-long",
    "vits14",
    "vits14-1gpu",
    "vitb14-in21k",
    "vitl14-laion",
    "vitg14-laion",
    "highres-364",
    "highres-518",
]


def test_every_preset_ships_with_the_package_and_validates() -> None:
    assert PRESET_DIR.parent.name == "franca"  # package data, found after `pip install -e .`
    assert set(PRESETS) <= set(list_presets())
    for name in PRESETS:
        cfg = load_config(name)
        assert cfg.crops.global_crops_size > 0


def test_default_is_tiny_on_the_toy_data() -> None:
    cfg = load_config(None)
    assert cfg.data.dataset == "toy" and cfg.train.device == "cpu"


def test_paper_values_of_the_vitb14_preset() -> None:
    c = load_config("vitb14-in21k")
    # PROTOCOLS.md §1.8-1.9: 625K iterations, 100K warmup, momentum 0.994 -> 1, wd 0.04 -> 0.2,
    # 131072 prototypes over 5 levels, patch-embed lr x0.2, clip 3, local crops 8 x 98.
    assert (c.train.iterations, c.optim.warmup_iterations) == (625000, 100000)
    assert (c.teacher.momentum_teacher, c.optim.weight_decay_end) == (0.994, 0.2)
    assert (c.dino.n_prototypes, c.dino.nesting_levels, c.dino.mode) == (131072, 5, "slice")  # issue 3: paper slicing
    assert (c.optim.patch_embed_lr_mult, c.optim.clip_grad) == (0.2, 3.0)
    assert (c.crops.local_crops_number, c.crops.local_crops_size) == (8, 98)


def test_base_chain_and_highres_values() -> None:
    h1, h2 = load_config("highres-364"), load_config("highres-518")
    assert (h1.crops.global_crops_size, h1.crops.local_crops_size, h1.train.iterations) == (364, 112, 30000)
    assert (h2.crops.global_crops_size, h2.crops.local_crops_size, h2.train.iterations) == (518, 168, 10000)
    assert h1.optim.base_lr == h2.optim.base_lr == 1.25e-5 and h1.optim.lr_scaling == "none"
    assert h1.teacher.warmup_teacher_temp_iterations == 10000
    assert load_config("vitl14-laion").crops.global_crops_scale == [0.48, 1.0]


def test_overrides_are_typed() -> None:
    cfg = load_config(
        "tiny",
        ["train.epochs=2.5", "optim.base_lr=3e-4", "crops.global_crops_scale=[0.5,1.0]", "model.num_register_tokens=4"],
    )
    assert cfg.train.epochs == 2.5 and cfg.optim.base_lr == 3e-4
    assert cfg.crops.global_crops_scale == [0.5, 1.0] and cfg.model.num_register_tokens == 4


@pytest.mark.parametrize(
    "override, exc, names",
    [
        ("train.epoch=3", KeyError, "train.epoch"),
        ("nonsense.key=1", KeyError, "nonsense"),
        ("train.epochs=many", ValueError, "train.epochs"),
        ("loss.koleo_scope=everywhere", ValueError, "loss.koleo_scope"),
        ("ibot.mask_ratio_min_max=[0.7,0.2]", ValueError, "ibot.mask_ratio_min_max"),
        ("train.batch_size_per_gpu=1", ValueError, "train.batch_size_per_gpu"),
        ("no_equals_sign", ValueError, "no_equals_sign"),
    ],
)
def test_bad_overrides_fail_naming_the_key(override: str, exc: type, names: str) -> None:
    with pytest.raises(exc, match=names.replace(".", r"\.").replace("[", r"\[")):
        load_config("tiny", [override])


def test_unknown_preset_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tiny"):
        load_config("no-such-preset")
    bad = tmp_path / "bad.yaml"
    bad.write_text("_base_: tiny\noptim:\n  base_lrr: 1.0\n")
    with pytest.raises(KeyError, match="base_lrr"):
        load_config(str(bad))
    good = tmp_path / "good.yaml"
    good.write_text("_base_: tiny\noptim:\n  base_lr: 0.5\n")
    assert load_config(str(good)).optim.base_lr == 0.5


def test_round_trip_through_a_plain_dict() -> None:
    cfg = load_config("vits14-1gpu", ["train.seed=7"])
    assert from_dict(to_dict(cfg)) == cfg
    assert "seed: 7" in dump_yaml(cfg)


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "{}\n"])
def test_an_empty_yaml_config_is_an_error_naming_it(tmp_path, text):
    from franca.train.config import load_config

    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"config {path} is empty: give config keys"):
        load_config(str(path))
    path.write_text("_base_: tiny\n")  # a preset's name alone is enough
    assert load_config(str(path)).model.arch == "vitt8"


# ----------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    "override, key",
    [
        ("optim.base_lr=inf", "optim.base_lr"),
        ("optim.base_lr=nan", "optim.base_lr"),
        ("train.epochs=inf", "train.epochs"),
        ("optim.weight_decay=-inf", "optim.weight_decay"),
        ("optim.min_lr=-1", "optim.min_lr"),
        ("optim.warmup_epochs=nan", "optim.warmup_epochs"),
        ("train.max_minutes=-5", "train.max_minutes"),
        ("teacher.teacher_temp=inf", "teacher.teacher_temp"),
        ("crops.global_crops_scale=[0.5,inf]", "crops.global_crops_scale"),
        ("optim.betas=[0.9,nan]", "optim.betas"),
        ("train.iterations=-3", "train.iterations"),
        ("train.iterations=1.5", "train.iterations"),
        ("model.embed_dim=0", "model.embed_dim"),
        ("dino.nesting_levels=0", "dino.nesting_levels"),
        ("ibot.head.hidden_dim=0", "ibot.head.hidden_dim"),
        ("loss.sinkhorn_iterations=0", "loss.sinkhorn_iterations"),
        ("data.dataset_size=-5", "data.dataset_size"),
        ("train.knn_k=0", "train.knn_k"),
        ("train.output_dir=", "train.output_dir"),
    ],
)
def test_non_finite_or_negative_config_values_are_one_line_errors(capsys, override: str, key: str) -> None:
    from franca.train.config import load_config

    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_config("tiny", [override])
    line = cli_error(capsys, ["pretrain", "--print-config", override])
    assert key in line


@pytest.mark.parametrize(
    "text, names",
    [
        ("optim:\n  base_lr: [1\n", "line"),  # YAML syntax error
        ("- just\n- a list\n", "mapping"),  # not a mapping
        ("optim: {base_lr: 1e-3\n", "line"),  # unclosed flow mapping
        ("\x00\x01\x02binary\xff", ""),  # not text at all
    ],
)
def test_broken_yaml_config_names_the_file(tmp_path: Path, capsys, text: str, names: str) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_bytes(text.encode("latin-1"))
    line = cli_error(capsys, ["pretrain", "--print-config", "--config", str(bad)])
    assert str(bad) in line and names in line


def test_yaml_override_value_that_does_not_parse(capsys) -> None:
    line = cli_error(capsys, ["pretrain", "--print-config", "crops.global_crops_scale=[0.5,"])
    assert "crops.global_crops_scale" in line
