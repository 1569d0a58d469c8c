"""franca.data.images: decoding (bad files, bombs, 16-bit, float, modes, EXIF), one skip rule for every reader,
and the one file listing (links followed once, loops terminate). Issue #21's hostile-input cases: a decoded image
with the right pixels, a skip that names the file, or one clear error naming it."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.images import BAD_IMAGE_BYTES, mixed_folder, write_png
from PIL import Image

from franca.data import images as fimages
from franca.data.images import CorruptImageError, ImageBombError, list_images, open_image


# ------------------------------------------------------------------------------------- images: decoding
@pytest.mark.parametrize("name", sorted(BAD_IMAGE_BYTES))
def test_bad_image_gives_one_error_naming_the_file(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(BAD_IMAGE_BYTES[name])
    with pytest.raises(CorruptImageError, match=re.escape(str(p))):
        open_image(p)
    with pytest.raises(CorruptImageError, match="shard.tar:key"):  # the same rule for bytes from a shard
        open_image(BAD_IMAGE_BYTES[name], "shard.tar:key")


@pytest.mark.parametrize("name", ["bomb_header.png", "bomb_mid.png"])
def test_bombs_are_one_error_type(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(BAD_IMAGE_BYTES[name])
    with pytest.raises(ImageBombError, match="decompression bomb|pixels"):
        open_image(p)


def test_bomb_limit_is_one_number(tmp_path, monkeypatch):
    p = write_png(tmp_path / "a.png", (20, 10))
    assert open_image(p).size == (20, 10)
    monkeypatch.setattr(fimages, "MAX_IMAGE_PIXELS", 199)
    with pytest.raises(ImageBombError, match="20×10 = 200 pixels"):
        open_image(p)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    """A 16-bit gradient used to decode all-white (values clipped at 255); now v → round(v / 257)."""
    ramp = np.linspace(0, 65535, 64 * 16).round().astype(np.uint16).reshape(16, 64)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    out = np.asarray(open_image(tmp_path / "g16.png"))
    assert out.shape == (16, 64, 3) and (out[..., 0] == out[..., 2]).all()
    np.testing.assert_array_equal(out[..., 0], np.rint(ramp / 257.0).astype(np.uint8))
    assert out.min() == 0 and out.max() == 255


def test_float_tiff_is_scaled_not_truncated(tmp_path):
    """A float TIFF in [0, 1] used to decode all-black; now ×255. Other ranges: kept ≤ 255, else min-max."""
    unit = np.linspace(0, 1, 32 * 8, dtype=np.float32).reshape(8, 32)
    Image.fromarray(unit, mode="F").save(tmp_path / "f.tif")
    got = np.asarray(open_image(tmp_path / "f.tif"))[..., 1]
    np.testing.assert_array_equal(got, np.rint(unit * 255).astype(np.uint8))
    wide = (unit * 1000 - 500).astype(np.float32)
    Image.fromarray(wide, mode="F").save(tmp_path / "w.tif")
    got = np.asarray(open_image(tmp_path / "w.tif"))[..., 0]
    np.testing.assert_array_equal(got, np.rint((wide - wide.min()) * 255 / (wide.max() - wide.min())).astype(np.uint8))
    byte_range = (unit * 200).astype(np.float32)
    Image.fromarray(byte_range, mode="F").save(tmp_path / "b.tif")
    got = np.asarray(open_image(tmp_path / "b.tif"))[..., 0]
    np.testing.assert_array_equal(got, np.rint(byte_range).astype(np.uint8))


def test_32bit_integer_image(tmp_path):
    arr = np.arange(64, dtype=np.int32).reshape(8, 8) * 1000
    Image.fromarray(arr, mode="I").save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    got = np.asarray(open_image(tmp_path / "i.tif"))[..., 0]
    expect = arr / 257.0
    np.testing.assert_array_equal(got, np.rint(expect).astype(np.uint8))


def test_modes_become_rgb(tmp_path):
    """Grayscale, 1-bit, LA, RGBA (composited onto white), palette with transparency, CMYK."""
    Image.new("L", (4, 4), 77).save(tmp_path / "l.png")
    Image.new("1", (4, 4), 1).save(tmp_path / "one.png")
    Image.new("LA", (4, 4), (10, 0)).save(tmp_path / "la.png")
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    rgba.save(tmp_path / "rgba.png")
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    pal.save(tmp_path / "p.png", transparency=0)
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    got = {p.name: open_image(p) for p in sorted(tmp_path.iterdir())}
    assert all(im.mode == "RGB" and im.size == (4, 4) for im in got.values())
    assert got["l.png"].getpixel((0, 0)) == (77, 77, 77)
    assert got["one.png"].getpixel((0, 0)) == (255, 255, 255)
    assert got["la.png"].getpixel((0, 0)) == (255, 255, 255)  # fully transparent → white
    assert got["rgba.png"].getpixel((0, 0)) == (0, 0, 255) and got["rgba.png"].getpixel((1, 1)) == (255, 255, 255)
    assert got["p.png"].getpixel((0, 0)) == (200, 10, 10)
    r, g, b = got["cmyk.jpg"].getpixel((1, 1))
    assert r > 200 and g < 60 and b < 60  # red, within JPEG error


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (20, 10), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 10, 10))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    im.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    out = open_image(tmp_path / "rot.jpg")
    assert out.size == (10, 20)
    assert np.asarray(out)[:8, :, 0].mean() > 200 and np.asarray(out)[12:, :, 0].mean() < 50  # white now on top
    # readers with pixel annotations (masks, depth, keypoints) keep the stored pixels, aligned with them
    from franca.data.datasets import ImageFolder

    assert open_image(tmp_path / "rot.jpg", exif=False).size == (20, 10)
    (tmp_path / "cls" / "a").mkdir(parents=True)
    os.replace(tmp_path / "rot.jpg", tmp_path / "cls" / "a" / "rot.jpg")
    assert ImageFolder(tmp_path / "cls")[0][0].size == (10, 20)  # photos for classification: upright


def test_every_reader_skips_bombs_and_corrupt_files(tmp_path):
    """Pretraining, features, RASA and the unlabelled folder reader skip the same files by the same rule."""
    from franca.data.datasets import ImageFiles, UnlabelledImageFolder
    from franca.data.source import Samples, open_images

    root = mixed_folder(tmp_path / "mix")
    files = list_images(root)
    good = {f for f in files if f.name.startswith("good")}
    assert len(files) == 4 + len(BAD_IMAGE_BYTES)

    un = UnlabelledImageFolder(root)
    assert {p for i, p in enumerate(un.paths) if un[i] is not None} == good and un.skipped == len(BAD_IMAGE_BYTES)

    feats = ImageFiles(files, lambda im: torch.ones(3, 2, 2), on_unreadable="mark")  # what `franca features` reads
    assert {files[i] for i in range(len(files)) if feats[i][1] >= 0} == good

    ras = ImageFiles(files, lambda im: torch.as_tensor(np.array(im)))
    [ras[i] for i in range(len(files))]
    assert ras.n_skipped >= 1

    pre = open_images(root, samples=Samples(seed=0)).dataset  # what pretraining reads
    for i in range(len(files)):
        item = pre[(i, 1000 + i)]
        assert item["image"].shape == (3, 8, 8)
        assert all(Path(p).name in BAD_IMAGE_BYTES for p in item["skipped"])


# ---------------------------------------------------------------------------------------------- links
def _linked_tree(root: Path) -> Path:
    """root/a/{1,2}.png, root/a/loop → root/a (self-link), root/up → root (ancestor), mutual links
    x ↔ y, a broken link, a file link to a/1.png, and root/ext → a folder outside root."""
    write_png(root / "a" / "1.png")
    write_png(root / "a" / "2.png")
    outside = tmp_outside = root.parent / "outside"
    write_png(tmp_outside / "o.png")
    os.symlink(root / "a", root / "a" / "loop")
    os.symlink(root, root / "up")
    os.symlink(root / "y", root / "x")
    os.symlink(root / "x", root / "y")
    os.symlink(root / "gone", root / "broken.png")
    os.symlink(root / "a" / "1.png", root / "alias.png")
    os.symlink(outside, root / "ext")
    os.symlink(root / "x.png", root / "selflink.png")
    os.symlink(root / "selflink.png", root / "x.png")
    return root


def test_links_are_followed_once(tmp_path):
    root = _linked_tree(tmp_path / "tree")
    files = list_images(root)
    assert sorted(p.relative_to(root).as_posix() for p in files) == ["a/1.png", "a/2.png", "ext/o.png"]
    assert len({p.resolve() for p in files}) == len(files)


def test_every_command_lists_the_same_files(tmp_path):
    """Pretraining, features, RASA, the figures, the unlabelled and class-folder readers: one listing,
    symlinked sub-folders included (pretraining used to train on 1 image of 257 here)."""
    from franca.data.datasets import UnlabelledImageFolder
    from franca.data.source import Samples, open_images
    from franca.viz.common import figure_images

    root = _linked_tree(tmp_path / "tree")
    expect = list_images(root)
    pretraining = open_images(root, samples=Samples(seed=0)).files
    features_and_rasa = open_images(root, kind="folder").files
    assert pretraining == features_and_rasa == figure_images([root]) == UnlabelledImageFolder(root).paths == expect
    # class folders reached through links: ImageFolder counts them as classes
    classes = tmp_path / "classes"
    write_png(classes / "cat" / "1.png")
    os.symlink(tmp_path / "outside", classes / "dog")
    ds = open_images(classes, kind="classes").dataset
    assert ds.classes == ["cat", "dog"] and len(ds) == 2


def test_listing_a_deep_link_loop_terminates(tmp_path):
    root = tmp_path / "r"
    (root / "a" / "b").mkdir(parents=True)
    write_png(root / "a" / "b" / "x.png")
    os.symlink(root / "a", root / "a" / "b" / "back")
    os.symlink(root, root / "a" / "b" / "top")
    assert [p.name for p in list_images(root)] == ["x.png"]
