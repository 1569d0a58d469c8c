"""ImageFolder / ImageNet / unlabelled-folder readers on tiny fixtures written by the tests."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from franca.data.datasets import CorruptImageError, ImageFolder, ImageNet, SkipNoneCollate, UnlabelledImageFolder


def _img(path, value, size=(6, 4), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path, format=fmt)


def _to_tensor(img):
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def test_imagenet_layout(tmp_path):
    """train/<wnid>/*.JPEG → (image, sorted-wnid index); labels.txt gives names; PNG pixels round-trip."""
    for wnid, v in (("n02", 20), ("n01", 10)):
        for k in range(2):
            _img(tmp_path / "train" / wnid / f"{wnid}_{k}.JPEG", v + k, fmt="PNG")  # lossless payload
    (tmp_path / "labels.txt").write_text("n01,tench\nn02,goldfish, Carassius auratus\n")
    ds = ImageNet(tmp_path, "train", transform=_to_tensor)
    assert ds.classes == ["n01", "n02"] and ds.class_names == ["tench", "goldfish, Carassius auratus"]
    assert len(ds) == 4 and ds.targets == [0, 0, 1, 1]
    x, y = ds[3]
    assert y == 1 and x.shape == (3, 4, 6) and int(x[0, 0, 0]) == 21
    with pytest.raises(FileNotFoundError, match="val"):
        ImageNet(tmp_path, "val")


def test_imagefolder_errors(tmp_path):
    """A missing root, an empty root and a corrupt file each give a message with the path."""
    with pytest.raises(FileNotFoundError, match="nope"):
        ImageFolder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="sub-folder per class"):
        ImageFolder(tmp_path / "empty")
    bad = tmp_path / "set" / "a" / "bad.jpg"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not an image")
    with pytest.raises(CorruptImageError, match="bad.jpg"):
        ImageFolder(tmp_path / "set")[0]


def test_unlabelled_recursive_and_skips_corrupt(tmp_path, caplog):
    """Recursive listing with any image extension; a corrupt file gives None, a warning naming it,
    `skipped` += 1, and SkipNoneCollate reports it per batch."""
    _img(tmp_path / "a.png", 1)
    _img(tmp_path / "sub" / "deeper" / "b.JPG", 2, fmt="JPEG")
    _img(tmp_path / "sub" / "c.webp", 3, fmt="WEBP")
    (tmp_path / "sub" / "broken.jpeg").write_bytes(b"\xff\xd8garbage")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = UnlabelledImageFolder(tmp_path, transform=_to_tensor)
    assert [p.name for p in ds.paths] == ["a.png", "broken.jpeg", "c.webp", "b.JPG"]  # sorted paths
    with caplog.at_level(logging.WARNING):
        items = [ds[i] for i in range(len(ds))]
    assert items[1] is None and ds.skipped == 1 and "broken.jpeg" in caplog.text
    batch, n = SkipNoneCollate()(items)
    assert n == 1 and batch.shape == (3, 3, 4, 6)
    out = SkipNoneCollate(lambda s: {"x": torch.stack(s)})(items)
    assert out["n_skipped"] == 1 and out["x"].shape[0] == 3
    assert SkipNoneCollate()([None, None]) is None
    assert len(UnlabelledImageFolder(tmp_path, extensions=None).paths) == 5  # every file
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=SkipNoneCollate())
    assert [n for _, n in loader] == [1]


def test_reads_toy_imagenet(tmp_path):
    """The toy generator's classification set is an ImageNet folder the reader accepts."""
    from franca.data.toy import generate_toy

    root = generate_toy(
        tmp_path / "toy", size=32, n_train=10, n_val=10, n_seg=(2, 2), n_depth=(2, 2), n_pairs=(2, 2, 2), progress=False
    )
    ds = ImageNet(root / "imagenet", "val")
    assert len(ds) == 10 and ds.class_names[:2] == ["disk", "square"] and ds.targets == list(range(10))
    assert ds[0][0].size == (32, 32)
