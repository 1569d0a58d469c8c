"""`franca features`: folder of images → .pt/.npz with CLS, patch tokens and file names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.images import BAD_IMAGE_BYTES, mixed_folder, write_png
from helpers.shards import numbered_folder
from PIL import Image

import franca
from franca.cli import main
from franca.data.images import list_images


@pytest.fixture()
def images(tmp_path):

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


def test_features_extraction_skips_a_bomb(tmp_path):
    import franca
    from franca.features import extract_features

    root = mixed_folder(tmp_path / "mix")
    model = franca.build_backbone("vitt8", depth=1)
    res = extract_features(model, list_images(root), 16, torch.device("cpu"), batch_size=4, progress=False)
    assert len(res["files"]) == 4 and {Path(p).name for p in res["skipped"]} == set(BAD_IMAGE_BYTES)


# ----------------------------------------------------------------------------------- features output
def test_features_output_path_is_checked_before_any_work(tmp_path, monkeypatch):
    """A bad --out used to fail only after the extraction: now before the model is even loaded."""
    import franca.commands._common as common
    import franca.features as F
    from franca.cli import main

    write_png(tmp_path / "imgs" / "a.png")
    called = []
    monkeypatch.setattr(F, "extract_features", lambda *a, **k: called.append(1))
    monkeypatch.setattr(common, "load_model_from_args", lambda *a, **k: called.append(2))
    (tmp_path / "file").write_text("x")
    flag = "--data"
    for out in (tmp_path / "x.txt", tmp_path / "file" / "f.pt", tmp_path):
        assert (
            main(["features", "--model", "vitt8", "--out", str(out), "--device", "cpu", flag, str(tmp_path / "imgs")])
            == 1
        )
    assert not called
    with pytest.raises(ValueError, match="x.txt"):
        F.save_features({}, tmp_path / "x.txt")


def test_features_output_is_written_atomically(tmp_path, monkeypatch):
    """A failed write (e.g. a full disk) leaves the previous file intact and no temporary file."""
    import errno

    import franca.features as F

    out = tmp_path / "f.pt"
    res = {"cls": torch.ones(2, 3), "patch": torch.ones(2, 4, 3), "files": ["a", "b"], "grid": [2, 2]}
    F.save_features(res, out)
    before = out.read_bytes()

    def full_disk(obj, fh, *a, **k):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        F.save_features({**res, "cls": torch.zeros(2, 3)}, out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.pt"]
    monkeypatch.undo()
    F.save_features(res, tmp_path / "g.npz")
    assert np.load(tmp_path / "g.npz")["cls"].shape == (2, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.pt", "g.npz"]


def test_features_on_a_folder_of_unreadable_files_names_them(tmp_path, capsys):
    from franca.cli import main

    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_text("not a jpeg")
    rc = main(
        [
            "features",
            "--model",
            "vitt8",
            "--random-init",
            "--size",
            "16",
            "--data",
            str(tmp_path / "imgs"),
            "--out",
            str(tmp_path / "f.pt"),
            "--device",
            "cpu",
            "--num-workers",
            "0",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 1 and f"all 1 files are unreadable (e.g. {tmp_path / 'imgs' / 'a.jpg'})" in err
    assert not (tmp_path / "f.pt").exists()


def test_features_lists_the_unreadable_files(tmp_path):
    """`franca features` reads through ImageFiles("mark"): readable files in order, the others as skipped."""
    import franca
    from franca.features import extract_features

    files = numbered_folder(tmp_path / "imgs", n=5, bad=(0, 3))
    model = franca.build_backbone("vitt8", depth=1)
    res = extract_features(model, files, 16, torch.device("cpu"), batch_size=2, progress=False)
    assert res["files"] == [str(files[i]) for i in (1, 2, 4)] and res["skipped"] == [str(files[0]), str(files[3])]
    assert res["cls"].shape == (3, 192) and res["patch"].shape == (3, 4, 192)
