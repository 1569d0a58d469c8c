"""Webdataset shards and the fine-grained classification sets on tiny fixtures in their official layouts."""

from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.images import write_shard
from helpers.shards import red_png_bytes, red_value, write_tar
from PIL import Image

from franca.data.datasets import (
    CUB200,
    SkipNoneCollate,
    WebDatasetShards,
    finegrained_dataset,
)
from franca.data.datasets.shards import list_shards
from franca.data.datasets.wds import split_key
from franca.utils.distributed import rank_and_world


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


def test_webdataset_reader_survives_a_truncated_shard(tmp_path, caplog):
    from franca.data.datasets import WebDatasetShards

    good = write_shard(tmp_path / "a.tar", 3)
    bad = write_shard(tmp_path / "b.tar", 6, start=100)
    bad.write_bytes(bad.read_bytes()[: 3 * 1024 + 512 + 30])  # cut in the data of the 4th member
    with caplog.at_level("WARNING"):
        out = [x for x in WebDatasetShards([str(good), str(bad)], transform=lambda im: np.asarray(im)[0, 0, 0])]
    got = {int(x) for x in out if x is not None}
    assert got == {0, 1, 2, 100, 101, 102}
    assert any(str(bad) in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "member, expected",
    [
        ("00000001.jpg", ("00000001", "jpg")),
        ("a.b/0001.jpg", ("a.b/0001", "jpg")),  # a dot in a folder name is not the key's end
        ("img.v2.jpg", ("img", "v2.jpg")),  # the key ends at the FIRST dot of the file name
        ("d/x.seg.PNG", ("d/x", "seg.png")),  # extensions are compared in lower case
        ("README", None),  # no extension: webdataset ignores the member
        ("._0001.jpg", None),  # macOS resource fork: no key before the dot
        ("__meta__", None),
    ],
)
def test_split_key_is_webdatasets_rule(member, expected):
    assert split_key(member) == expected


def test_a_sample_without_an_image_is_a_counted_none_not_dropped(tmp_path, caplog):
    """img2dataset writes 0001.jpg + .json + .txt per sample; a json-only sample and an `img.v2.jpg` sample
    (key `img`, extension `v2.jpg`) hold no image under image_keys: each gives None with a warning naming
    shard:key and what it holds, and is counted, as with the webdataset package (#20 dropped them silently)."""
    shard = write_tar(
        tmp_path / "s" / "00000.tar",
        [
            ("0001.jpg", red_png_bytes(1)),
            ("0001.json", b"{}"),
            ("0001.txt", b"a cat"),
            ("0002.json", b'{"status": "failed"}'),
            ("a.b/0003.jpg", red_png_bytes(3)),
            ("a.b/0003.txt", b"dotted folder"),
            ("img.v2.jpg", red_png_bytes(4)),
            ("img.v2.txt", b"two dots"),
            ("._0005.jpg", red_png_bytes(99)),
            ("0005.png", red_png_bytes(5)),
            ("__meta__", b"x"),
            ("0005.txt", b"one sample"),
        ],
    )
    ds = WebDatasetShards(tmp_path / "s", transform=red_value, with_key=True)
    with caplog.at_level(logging.WARNING):
        items = list(ds)
    assert items == [("0001", 1), None, ("a.b/0003", 3), None, ("0005", 5)]
    assert ds.skipped == 2
    assert f"{shard}:0002 has no image member" in caplog.text and "it holds json" in caplog.text
    assert f"{shard}:img has no image member" in caplog.text and "it holds v2.jpg, v2.txt" in caplog.text


def test_image_keys_v2_jpg_reads_the_multi_dot_member(tmp_path):
    write_tar(
        tmp_path / "s" / "0.tar", [("img.v2.jpg", red_png_bytes(4)), ("img.v2.txt", b"x"), ("b.jpg", red_png_bytes(2))]
    )
    ds = WebDatasetShards(tmp_path / "s", transform=red_value, image_keys=("v2.jpg", "jpg"))
    assert list(ds) == [4, 2] and ds.skipped == 0


def test_a_torchrun_launch_splits_shards_by_rank_before_the_process_group(tmp_path, monkeypatch):
    """torchrun sets RANK and WORLD_SIZE; webdataset split shards by them even before init_process_group.
    Without that, every rank of such a launch would read every shard (each image world times)."""
    for s in range(4):
        write_tar(tmp_path / "s" / f"{s}.tar", [(f"{s}.png", red_png_bytes(s))])
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert rank_and_world() == (rank, 2)
        seen.append(list(WebDatasetShards(tmp_path / "s", transform=red_value)))
    assert seen == [[0, 2], [1, 3]]
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2, WORLD_SIZE=2"):
        rank_and_world()
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert rank_and_world() == (0, 1)


def test_image_keys_need_not_be_an_image_extension(tmp_path):
    """Some exports store the picture as `0001.image` or `0001.img`; `image_keys=("image",)` reads it, as
    with the webdataset package (the refactor refused any key without an image extension)."""
    write_tar(tmp_path / "s" / "0.tar", [("0001.image", red_png_bytes(7)), ("0001.json", b"{}")])
    assert list(WebDatasetShards(tmp_path / "s", transform=red_value, image_keys=("image",))) == [7]
    with pytest.raises(ValueError, match="image_keys"):
        WebDatasetShards(tmp_path / "s", image_keys=())


def test_an_existing_shard_whose_path_looks_like_a_glob_is_read(tmp_path):
    """`run[1]/00000.tar` exists: it is that file, not the glob `run1/00000.tar` (the webdataset package
    opened it as a file; the refactor globbed it and said 'not found')."""
    shard = write_tar(tmp_path / "run[1]" / "00000.tar", [("0001.png", red_png_bytes(9))])
    assert list(WebDatasetShards(str(shard), transform=red_value)) == [9]
    assert list(WebDatasetShards(shard.parent, transform=red_value)) == [9]


def test_a_single_string_image_key_is_one_key(tmp_path):
    """`image_keys="png"` is the key png (tuple("png") would be the keys p, n, g: every sample image-less)."""
    write_tar(tmp_path / "s" / "0.tar", [("0001.png", red_png_bytes(3)), ("0001.jpg", red_png_bytes(4))])
    ds = WebDatasetShards(tmp_path / "s", transform=red_value, image_keys="png")
    assert ds.image_keys == ("png",) and list(ds) == [3]


# ------------------------------------------------------------------------------------------------ shards
def _shards(root: Path, n_shards: int = 4, per: int = 3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        write_tar(
            root / f"train-{s:03d}.tar",
            [
                m
                for k in range(per)
                for m in ((f"{s}{k}.png", red_png_bytes(10 * s + k)), (f"{s}{k}.txt", b"a caption"))
            ],
        )
    return root


def test_shards_from_a_brace_pattern_with_hostile_members(tmp_path, caplog):
    """A corrupt member yields None with a warning naming shard:member and is counted; a link member is not
    an image; a `../` member is read from the archive, never written to disk."""
    root = _shards(tmp_path / "shards", n_shards=2)
    odd = write_tar(
        root / "train-002.tar",
        [
            ("ok.png", red_png_bytes(77)),
            ("broken.jpg", b"\xff\xd8 not a jpeg"),
            ("../../escape.png", red_png_bytes(78)),
        ],
        links=("link.png",),
    )
    ds = WebDatasetShards(str(root / "train-{000..002}.tar"), transform=red_value, with_key=True)
    assert ds.urls == [str(root / f"train-{s:03d}.tar") for s in range(3)]
    with caplog.at_level("WARNING"):
        items = list(ds)
    assert items == [
        ("00", 0),
        ("01", 1),
        ("02", 2),
        ("10", 10),
        ("11", 11),
        ("12", 12),
        ("ok", 77),
        None,
        ("../../escape", 78),
    ]
    assert ds.skipped == 1 and f"{odd}:broken.jpg" in caplog.text
    assert not (tmp_path / "escape.png").exists() and not (root.parent.parent / "escape.png").exists()


def test_a_sample_gives_one_image_by_image_keys_order(tmp_path):
    write_tar(
        tmp_path / "a.tar",
        [
            ("x.png", red_png_bytes(1)),
            ("x.jpg", red_png_bytes(2)),
            ("x.json", b"{}"),
            ("y.seg.png", red_png_bytes(3)),
            ("y.webp", red_png_bytes(4)),
        ],
    )
    assert list(WebDatasetShards(tmp_path, transform=red_value, with_key=True)) == [("x", 2), ("y", 4)]
    only_seg = WebDatasetShards(tmp_path, transform=red_value, image_keys=("seg.png",))
    assert list(only_seg) == [None, 3] and only_seg.skipped == 1  # x has no seg.png: None, counted


def test_shards_split_over_ranks_and_workers(tmp_path):
    ds = WebDatasetShards(_shards(tmp_path / "s", n_shards=7), shuffle_shards=True, seed=3)
    parts = [ds.shards_of(r, 2, w, 2) for r in range(2) for w in range(2)]
    assert sorted(s for p in parts for s in p) == ds.urls and all(p for p in parts)  # a partition
    assert ds.shards_of(0, 1, 0, 1) != ds.urls and ds.shards_of(0, 1, 0, 1) == ds.shards_of(0, 1, 0, 1)
    ds.set_epoch(1)
    assert sorted(ds.shards_of(0, 1, 0, 1)) == ds.urls


def _worker_value(im):
    return torch.utils.data.get_worker_info().id, red_value(im)


def test_two_workers_read_distinct_shards(tmp_path):
    ds = WebDatasetShards(_shards(tmp_path / "s", n_shards=4), transform=_worker_value)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    got = [(int(w), int(v)) for w, v in loader]
    assert sorted(v for _, v in got) == [10 * s + k for s in range(4) for k in range(3)]  # each image once
    worker_of = {v // 10: w for w, v in got}
    assert all(worker_of[v // 10] == w for w, v in got) and worker_of == {0: 0, 1: 1, 2: 0, 3: 1}


def test_shuffle_buffer_is_a_seeded_permutation(tmp_path):
    root = _shards(tmp_path / "s", n_shards=3)
    plain = list(WebDatasetShards(root, transform=red_value))
    a = list(WebDatasetShards(root, transform=red_value, shuffle_buffer=4, seed=1))
    assert sorted(a) == sorted(plain) and a != plain
    assert a == list(WebDatasetShards(root, transform=red_value, shuffle_buffer=4, seed=1))


@pytest.mark.parametrize(
    "url", ["https://example.org/shards/{000..009}.tar", "pipe:curl -s http://x/a.tar", "s3://bucket/a.tar"]
)
def test_remote_shards_are_refused_with_the_way_out(url):
    with pytest.raises(ValueError, match="download the shards first"):
        WebDatasetShards(url)
    with pytest.raises(ValueError, match="remote URL"):
        list_shards(url)


def test_missing_shards_are_named(tmp_path):
    _shards(tmp_path / "s", n_shards=2)
    with pytest.raises(FileNotFoundError, match="train-002.tar"):
        WebDatasetShards(str(tmp_path / "s" / "train-{000..002}.tar"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no \\*.tar shards in the folder"):
        WebDatasetShards(tmp_path / "empty")
