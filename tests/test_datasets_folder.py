"""ImageFolder / ImageNet / unlabelled-folder readers on tiny fixtures written by the tests."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.shards import numbered_folder, red_png_bytes, red_value
from PIL import Image

from franca.data.datasets import (
    CorruptImageError,
    ImageFiles,
    ImageFolder,
    ImageNet,
    SkipNoneCollate,
    UnlabelledImageFolder,
)
from franca.data.images import TooManyUnreadableError, list_images


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


def test_a_small_all_bad_folder_fails_without_hanging(tmp_path):
    from franca.data.datasets import ImageFiles

    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(b"")
    files = list_images(tmp_path)
    with pytest.raises(TooManyUnreadableError, match="unreadable"):
        ImageFiles(files, None, as_samples=True)[(0, 0)]
    with pytest.raises(TooManyUnreadableError, match="unreadable"):
        ImageFiles(files, lambda im: im)[0]


def test_paths_and_n_skipped_can_still_be_assigned(tmp_path):
    """`UnlabelledImageFolder.paths` and `ImageFiles.n_skipped` were plain attributes: a script that subsets a
    folder (`ds.paths = ds.paths[:2]`) or resets the count (`ds.n_skipped = 0`) must keep working."""
    from franca.data.datasets import ImageFiles, UnlabelledImageFolder

    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(red_png_bytes(i))
    (tmp_path / "9.png").write_bytes(b"broken")
    ds = UnlabelledImageFolder(tmp_path, transform=red_value)
    ds.paths = ds.paths[:2]
    assert len(ds) == 2 and [ds[i] for i in range(len(ds))] == [0, 1] and ds.files == ds.paths
    files = ImageFiles(sorted(tmp_path.glob("*.png")), red_value)
    assert files[4] in {0, 1, 2, 3} and files.n_skipped == 1  # 9.png replaced by a readable file
    files.n_skipped = 0
    assert files.n_skipped == files.skipped == 0


# ------------------------------------------------------------------------------- ImageFiles policies
def test_replace_draws_the_same_files_as_before(tmp_path):
    """ "replace": item i reads file i, else files[random.Random(i·1_000_003 + k).randrange(n)], k = 1, 2, …
    (the draw sequence of the earlier reader, so RASA's results do not change). Golden, by hand from those
    draws: item 0 tries f0 (bad), f2 (bad), f0 (bad), f3; item 2 tries f2, f8 (both bad), f5; item 8 f8, f1."""
    files = numbered_folder(tmp_path / "imgs")
    ds = ImageFiles(files, red_value)  # "replace" is the default
    assert [random.Random(k).randrange(10) for k in range(1, 4)] == [2, 0, 3]  # the draws of item 0
    assert [ds[i] for i in range(10)] == [3, 1, 5, 3, 4, 5, 6, 7, 1, 9]
    assert ds.skipped == ds.n_skipped == 6 and (ds.unreadable.tried, ds.unreadable.bad) == (16, 6)
    # the same sequence computed independently from the rule, for every item
    for i in range(10):
        k, j = 0, i
        while j in (0, 2, 8):
            k += 1
            j = random.Random(i * 1_000_003 + k).randrange(10)
        assert ds[i] == j


def test_pretraining_and_image_files_replace_by_the_same_routine(tmp_path):
    """Pretraining's samples (seeded per slot) and ImageFiles (seeded by the index) are one reader: with the
    slot seed equal to the index they pick the same file and skip the same ones."""
    files = numbered_folder(tmp_path / "imgs")
    pre, ds = ImageFiles(files, None, as_samples=True), ImageFiles(files, red_value)
    for i in range(10):
        item = pre[(i, i)]
        assert int(item["image"][0, 0, 0]) == ds[i] and Path(item["name"]).name == f"f{ds[i]}.png"
    assert [Path(p).name for p in pre[(0, 0)]["skipped"]] == ["f0.png", "f2.png", "f0.png"]


def test_replace_fails_when_most_files_are_unreadable(tmp_path):
    files = numbered_folder(tmp_path / "imgs", n=4, bad=(0, 1, 2, 3))
    with pytest.raises(TooManyUnreadableError, match="unreadable"):
        ImageFiles(files, red_value)[0]


def test_skip_yields_none_counts_and_warns(tmp_path, caplog):
    files = numbered_folder(tmp_path / "imgs", n=5, bad=(1, 3))
    ds = ImageFiles(files, red_value, on_unreadable="skip")
    with caplog.at_level("WARNING"):
        items = [ds[i] for i in range(5)]
    assert items == [0, None, 2, None, 4] and ds.skipped == 2
    assert "f1.png" in caplog.text and "f3.png" in caplog.text and "2 so far" in caplog.text
    assert SkipNoneCollate(list)(items) == ([0, 2, 4], 2)
    # the folder reader is this policy over list_images(root)
    folder = UnlabelledImageFolder(tmp_path / "imgs", transform=red_value)
    assert folder.paths == files and [folder[i] for i in range(5)] == items and folder.on_unreadable == "skip"


def _drawing_transform(im: Image.Image) -> torch.Tensor:
    """A transform that consumes random numbers of torch and of python's random, like an augmentation."""
    return torch.full((3, 2, 5), float(red_value(im))) + 0 * torch.rand(1) + 0 * random.random()


def _after(ds: ImageFiles, items: list[int]) -> tuple[list, float, float]:
    torch.manual_seed(0)
    random.seed(0)
    out = [ds[i] for i in items]
    return out, torch.rand(1).item(), random.random()


def test_mark_gives_zeros_of_the_transform_shape_and_minus_one(tmp_path):
    """ "mark": (transform(image), i), or (zeros shaped like the transform's output, -1); making the zeros
    (the transform run once on a blank image) leaves the random state where the good items left it."""
    files = numbered_folder(tmp_path / "imgs", n=3, bad=(1,))
    ds = ImageFiles(files, _drawing_transform, on_unreadable="mark")
    (x0, i0), (x1, i1), (x2, i2) = (out := _after(ds, [0, 1, 2]))[0]
    assert (i0, i1, i2) == (0, -1, 2) and float(x2[0, 0, 0]) == 2.0 and ds.skipped == 1
    assert x1.shape == (3, 2, 5) and x1.dtype == x0.dtype and not x1.any()
    assert out[1:] == _after(ImageFiles(files, _drawing_transform, on_unreadable="mark"), [0, 2])[1:]


def test_bad_policy_and_mark_without_transform_are_errors(tmp_path):
    files = numbered_folder(tmp_path / "imgs", n=2, bad=())
    with pytest.raises(ValueError, match="on_unreadable must be one of"):
        ImageFiles(files, red_value, on_unreadable="ignore")
    with pytest.raises(ValueError, match="needs a transform"):
        ImageFiles(files, None, on_unreadable="mark")
