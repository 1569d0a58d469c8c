"""RASA images: the reference augmentations' output, the held-out split and the image-folder reader."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from franca.data.source import open_images
from franca.rasa import data as rdata


def _write_images(folder, n, size=(20, 24)):
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        arr = (torch.rand(size[0], size[1], 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(folder / f"{i:02d}.png")


def test_transforms_shape_and_std_quirk():
    img = Image.new("RGB", (30, 40), color=(0, 0, 255))
    x = rdata.rasa_eval_transform(16)(img)
    assert x.shape == (3, 16, 16)
    # Blue = 1.0 -> (1 - 0.406) / 0.225; the training transform's quirk divides by 0.255 instead.
    assert torch.allclose(x[2], torch.full((16, 16), (1 - 0.406) / 0.225), atol=1e-5)
    torch.manual_seed(0)
    y = rdata.rasa_train_transform(16)(img)
    assert y.shape == (3, 16, 16)
    assert rdata.RASA_REFERENCE_STD[2] == 0.255


def test_split_and_reader_skip_corrupt(tmp_path):
    _write_images(tmp_path / "a" / "b", 9)
    (tmp_path / "a" / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "a" / "notes.txt").write_text("ignored")
    files = open_images(tmp_path / "a", kind="folder").files
    assert len(files) == 10
    train, held = rdata.split_files(files, 0.2, max_heldout=64, seed=1)
    assert len(held) == 2 and not set(train) & set(held) and len(train) + len(held) == 10
    assert rdata.split_files(files, 0.2, 64, seed=1) == (train, held)  # deterministic
    ds = open_images(files, kind="files", transform=rdata.rasa_eval_transform(8)).dataset  # RASA's reading
    items = [ds[i] for i in range(len(ds))]
    assert all(t.shape == (3, 8, 8) for t in items) and ds.n_skipped == 1
    with pytest.raises(FileNotFoundError, match="missing"):
        open_images(tmp_path / "missing", kind="folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        open_images(tmp_path / "empty", kind="folder")
