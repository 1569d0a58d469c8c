"""Webdataset shards and the fine-grained classification sets on tiny fixtures in their official layouts."""

from __future__ import annotations

import io
import logging
import tarfile

import numpy as np
import pytest
from PIL import Image

from franca.data.datasets import CUB200, SkipNoneCollate, WebDatasetShards, finegrained_dataset


def _jpeg_bytes(value, size=(4, 3)):
    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _tar(path, members):
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_webdataset_shards_and_corrupt_sample(tmp_path, caplog):
    """Images stream in shard order; a corrupt image yields None, is logged with its key and counted."""
    _tar(tmp_path / "00000.tar", [("a.jpg", _jpeg_bytes(10)), ("a.txt", b"caption"), ("b.png", _jpeg_bytes(20))])
    _tar(tmp_path / "00001.tar", [("c.jpg", b"broken"), ("d.webp", _jpeg_bytes(40))])
    ds = WebDatasetShards(tmp_path, transform=lambda im: int(np.asarray(im)[0, 0, 0]), with_key=True)
    with caplog.at_level(logging.WARNING):
        items = list(ds)
    assert items[:2] == [("a", 10), ("b", 20)] and items[2] is None and items[3] == ("d", 40)
    assert ds.skipped == 1 and "c" in caplog.text
    assert SkipNoneCollate(lambda s: list(s))(items)[1] == 1
    with pytest.raises(FileNotFoundError, match="empty_dir"):
        WebDatasetShards(tmp_path / "empty_dir")


def _cub(root):
    base = root / "CUB_200_2011"
    for k, cls in enumerate(("001.Black_footed_Albatross", "002.Laysan_Albatross", "002.Laysan_Albatross")):
        p = base / "images" / cls / f"img{k}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((3, 3, 3), k, np.uint8)).save(p)
    (base / "images.txt").write_text(
        "1 001.Black_footed_Albatross/img0.jpg\n2 002.Laysan_Albatross/img1.jpg\n3 002.Laysan_Albatross/img2.jpg\n"
    )
    (base / "image_class_labels.txt").write_text("1 1\n2 2\n3 2\n")
    (base / "train_test_split.txt").write_text("1 1\n2 0\n3 1\n")


def test_cub_split_and_labels(tmp_path):
    """is_train=1 → train; labels 1-based in the file, 0-based out."""
    _cub(tmp_path)
    train = finegrained_dataset("cub200", tmp_path, "train")
    assert [t for _, t in train.samples] == [0, 1] and len(finegrained_dataset("cub200", tmp_path, "test")) == 1
    assert CUB200(tmp_path / "CUB_200_2011", "test")[0][1] == 1


def test_torchvision_backed_sets(tmp_path):
    """DTD (train+val of partition 1), Pets (trainval), Caltech101 (30/class) and SUN397 (Partitions)."""

    def img(p, v=0):
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((3, 3), v, np.uint8)).save(p)  # grayscale on purpose: readers give RGB

    dtd = tmp_path / "dtd" / "dtd"
    for c in ("banded", "zigzagged"):
        for k in range(3):
            img(dtd / "images" / c / f"{c}_{k}.jpg")
    (dtd / "labels").mkdir()
    (dtd / "labels" / "train1.txt").write_text("banded/banded_0.jpg\nzigzagged/zigzagged_0.jpg\n")
    (dtd / "labels" / "val1.txt").write_text("banded/banded_1.jpg\n")
    (dtd / "labels" / "test1.txt").write_text("zigzagged/zigzagged_2.jpg\n")
    tr = finegrained_dataset("dtd", tmp_path, "train")
    assert len(tr) == 3 and [tr[i][1] for i in range(3)] == [0, 1, 0] and tr[0][0].mode == "RGB"
    assert finegrained_dataset("dtd", tmp_path, "test")[0][1] == 1

    pets = tmp_path / "oxford-iiit-pet"
    img(pets / "images" / "Abyssinian_1.jpg")
    img(pets / "images" / "yorkshire_terrier_2.jpg")
    (pets / "annotations").mkdir(parents=True)
    (pets / "annotations" / "trainval.txt").write_text("Abyssinian_1 1 1 1\nyorkshire_terrier_2 37 2 25\n")
    (pets / "annotations" / "test.txt").write_text("Abyssinian_1 1 1 1\n")
    assert [y for _, y in finegrained_dataset("pets", tmp_path, "train")] == [0, 36]  # CLASS-ID 37 → 36

    cal = tmp_path / "caltech101" / "101_ObjectCategories"
    for k in range(33):
        img(cal / "accordion" / f"image_{k + 1:04d}.jpg")
    img(cal / "BACKGROUND_Google" / "image_0001.jpg")
    assert len(finegrained_dataset("caltech101", tmp_path, "train")) == 30
    assert len(finegrained_dataset("caltech101", tmp_path, "test")) == 3

    sun = tmp_path / "SUN397"
    for rel in ("a/abbey/sun_aaa.jpg", "a/abbey/sun_aab.jpg", "b/bar/sun_bbb.jpg"):
        img(sun / rel)
    (sun / "ClassName.txt").write_text("/a/abbey\n/b/bar\n")
    (sun / "Partitions").mkdir()
    (sun / "Partitions" / "Training_01.txt").write_text("/a/abbey/sun_aaa.jpg\n/b/bar/sun_bbb.jpg\n")
    (sun / "Partitions" / "Testing_01.txt").write_text("/a/abbey/sun_aab.jpg\n")
    assert sorted(y for _, y in finegrained_dataset("sun397", tmp_path, "train")) == [0, 1]
    assert len(finegrained_dataset("sun397", tmp_path, "test")) == 1


def test_missing_sets_name_the_expected_folder(tmp_path):
    """Absent data: FileNotFoundError naming the folder torchvision expects; nothing is downloaded."""
    for name, expected in (
        ("cifar10", "cifar-10-batches-py"),
        ("flowers102", "flowers-102"),
        ("food101", "food-101"),
        ("aircraft", "fgvc-aircraft-2013b"),
    ):
        with pytest.raises(FileNotFoundError, match=expected):
            finegrained_dataset(name, tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="images.txt"):
        finegrained_dataset("cub200", tmp_path, "train")
    with pytest.raises(KeyError, match="imagenet"):
        finegrained_dataset("imagenet", tmp_path)
