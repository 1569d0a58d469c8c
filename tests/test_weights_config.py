"""Our own files record the backbone shape: a checkpoint's config (or export metadata) sets width and heads."""

from __future__ import annotations

import torch

import franca


def test_training_checkpoint_config_sets_width_and_heads(tmp_path) -> None:
    src = franca.build_backbone("vitt8", embed_dim=48, num_heads=2, depth=2, img_size=32)
    state = {f"backbone.{k}": v for k, v in src.state_dict().items() if k != "rasa_proj"}
    ckpt = {
        "teacher": state,
        "iteration": 3,
        "config": {"model": {"arch": "vitt8", "embed_dim": 48, "num_heads": 2, "depth": 2}},
    }
    path = tmp_path / "checkpoint.pth"
    torch.save(ckpt, path)
    model = franca.load_backbone("vitt8", weights=path)
    assert (model.embed_dim, model.num_heads, model.n_blocks) == (48, 2, 2)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(
        model.forward_features(x)["x_norm_clstoken"], src.eval().forward_features(x)["x_norm_clstoken"]
    )


def test_export_metadata_sets_width_and_heads(tmp_path) -> None:
    src = franca.build_backbone("vitt8", embed_dim=64, num_heads=4, depth=2, img_size=32).eval()
    path = franca.export_backbone(src, tmp_path / "b.safetensors")
    model = franca.load_backbone("vitt8", weights=path)
    assert (model.embed_dim, model.num_heads) == (64, 4)
