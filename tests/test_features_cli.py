"""`franca features`: folder of images → .pt/.npz with CLS, patch tokens and file names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import franca
from franca.cli import main


@pytest.fixture()
def images(tmp_path):
    from PIL import Image

    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, (w, h) in {"a.png": (50, 40), "sub/b.jpg": (37, 61), "c.png": (40, 40)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / name)
    (root / "broken.png").write_bytes(b"not an image")
    return root


def test_features_command_pt(tmp_path, images):
    m = franca.build_backbone("vitt8", depth=2)
    w = tmp_path / "w.pth"
    torch.save({"teacher": {"backbone." + k: v for k, v in m.state_dict().items()}}, w)
    out = tmp_path / "f.pt"
    # --size 36 is not a multiple of 8: shorter side → 36, centre crop 32×32 → 4×4 patches
    rc = main(
        [
            "features",
            "--model",
            "vitt8",
            "--weights",
            str(w),
            "--data",
            str(images),
            "--out",
            str(out),
            "--size",
            "36",
            "--batch-size",
            "2",
            "--num-workers",
            "0",
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert rc == 0
    res = torch.load(out, weights_only=True)
    assert [p.split("imgs/")[1] for p in res["files"]] == ["a.png", "c.png", "sub/b.jpg"]
    assert res["skipped"][0].endswith("broken.png")
    assert res["cls"].shape == (3, 192) and res["patch"].shape == (3, 16, 192) and res["grid"] == [4, 4]
    # same numbers as running the model on the documented transform
    from PIL import Image

    from franca.features import make_transform

    x = make_transform(36, 8)(Image.open(images / "c.png").convert("RGB"))[None]
    assert x.shape[-2:] == (32, 32)
    with torch.no_grad():
        ref = m.eval().forward_features(x)["x_norm_clstoken"][0]
    assert (res["cls"][1] - ref).abs().max() < 1e-5


def test_features_npz_and_errors(tmp_path, images):
    out = tmp_path / "f.npz"
    assert (
        main(
            [
                "features",
                "--model",
                "vitt8",
                "--random-init",
                "--data",
                str(images),
                "--out",
                str(out),
                "--size",
                "16",
                "--num-workers",
                "0",
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    z = np.load(out)
    assert z["patch"].shape == (3, 4, 192) and len(z["files"]) == 3
    assert (
        main(["features", "--model", "vitt8", "--random-init", "--data", str(tmp_path / "none"), "--out", str(out)])
        == 1
    )
    assert (
        main(
            [
                "features",
                "--model",
                "vitt8",
                "--random-init",
                "--data",
                str(images),
                "--out",
                str(out),
                "--size",
                "4",
                "--num-workers",
                "0",
                "--device",
                "cpu",
            ]
        )
        == 1
    )  # smaller than the patch: clear error
