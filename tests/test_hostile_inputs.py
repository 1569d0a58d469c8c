"""The data part of the hostile-input corpus (issue #21): bad images, malicious pickles, damaged or
malicious tar shards, link loops, bad output paths. Each case states what "handled well" means:
a decoded image with the right pixels, a skip that names the file, or one clear error naming it
(never code run from a data file, never a hang, never a destroyed output)."""

from __future__ import annotations

import io
import os
import re
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from franca.data import images as fimages
from franca.data.images import CorruptImageError, ImageBombError, TooManyUnreadableError, list_images, open_image

PACKAGE = Path(__file__).resolve().parents[1] / "franca"


# ----------------------------------------------------------------------------------------------- helpers
def _png(path: Path, size=(8, 8), value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value // 2, 255 - value)).save(path)
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header declares w×h RGB pixels, with almost no pixel data (a bomb's shape)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _chunk(b"IEND", b"")
    )


def _jpeg_bytes(size=(16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


BAD_IMAGE_BYTES = {
    "zero_bytes.jpg": b"",
    "text.png": b"this is not an image\n",
    "truncated.jpg": _jpeg_bytes((64, 64))[:300],
    "bomb_header.png": _png_header_only(40_000, 40_000),  # 1.6 G pixels: PIL's own error threshold
    "bomb_mid.png": _png_header_only(10_000, 10_000),  # 100 M pixels: above the warning threshold only
    "html.jpg": b"<html><body>404</body></html>",
    "garbage.gif": b"GIF89a" + b"\xff" * 40,
}


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
    p = _png(tmp_path / "a.png", (20, 10))
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


# ------------------------------------------------------------------------ every reader skips bad images
def _mixed_folder(root: Path) -> Path:
    for i in range(4):
        _png(root / f"good{i}.png", value=40 * i)
    for name, data in BAD_IMAGE_BYTES.items():
        (root / name).write_bytes(data)
    return root


def test_every_reader_skips_bombs_and_corrupt_files(tmp_path):
    """Pretraining, features, RASA and the unlabelled folder reader skip the same files by the same rule."""
    from franca.data.datasets import ImageFiles, UnlabelledImageFolder
    from franca.data.source import Samples, open_images

    root = _mixed_folder(tmp_path / "mix")
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


def test_features_extraction_skips_a_bomb(tmp_path):
    import franca
    from franca.features import extract_features

    root = _mixed_folder(tmp_path / "mix")
    model = franca.build_backbone("vitt8", depth=1)
    res = extract_features(model, list_images(root), 16, torch.device("cpu"), batch_size=4, progress=False)
    assert len(res["files"]) == 4 and {Path(p).name for p in res["skipped"]} == set(BAD_IMAGE_BYTES)


# ------------------------------------------------------------------------------- skip by fraction
def test_a_bad_stretch_does_not_kill_a_good_folder(tmp_path):
    """70 zero-byte files in one sub-folder among 200 good images (74 % good) used to abort pretraining
    ("64 consecutive unreadable images"); a whole epoch now reads, each bad file a random replacement."""
    from franca.data.source import Samples, open_images
    from franca.train.data import ResumableBatchSampler

    root = tmp_path / "data"
    for i in range(70):
        (root / "a_empty").mkdir(parents=True, exist_ok=True)
        (root / "a_empty" / f"{i:03d}.jpg").write_bytes(b"")
    for i in range(200):
        _png(root / "b_good" / f"{i:03d}.png", (4, 4), value=i)
    files = list_images(root)
    ds = open_images(root, samples=Samples(seed=0)).dataset
    sampler = ResumableBatchSampler(len(files), 27, seed=0)
    skipped = 0
    for _it, batch in zip(range(10), sampler):  # one epoch: 270 slots
        for key in batch:
            item = ds[key]
            assert item["image"].shape == (3, 4, 4)
            skipped += len(item["skipped"])
    assert 70 <= skipped <= 200 and ds.unreadable.bad == skipped
    # the replacement of a slot is a pure function of its seed (resume-safe)
    assert torch.equal(ds[(0, 123)]["image"], ds[(0, 123)]["image"])


def test_a_mostly_unreadable_folder_fails_naming_it(tmp_path):
    from franca.data.source import Samples, open_images

    root = tmp_path / "notimages"
    for i in range(100):
        (root / f"{i:03d}.jpg").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{i:03d}.jpg").write_bytes(b"x" * i)
    for i in range(10):
        _png(root / f"z{i}.png")
    ds = open_images(root, samples=Samples(seed=0)).dataset
    with pytest.raises(TooManyUnreadableError, match=re.escape(str(root))):
        for i in range(110):
            ds[(i, i)]


def test_a_small_all_bad_folder_fails_without_hanging(tmp_path):
    from franca.data.datasets import ImageFiles

    for i in range(3):
        (tmp_path / f"{i}.png").write_bytes(b"")
    files = list_images(tmp_path)
    with pytest.raises(TooManyUnreadableError, match="unreadable"):
        ImageFiles(files, None, as_samples=True)[(0, 0)]
    with pytest.raises(TooManyUnreadableError, match="unreadable"):
        ImageFiles(files, lambda im: im)[0]


# ------------------------------------------------------------------------------------------- shards
def _shard(path: Path, n: int, start: int = 0, extra: dict[str, bytes] | None = None) -> Path:
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            buf = io.BytesIO()
            Image.new("RGB", (8, 8), (start + i, 0, 0)).save(buf, "PNG")
            info = tarfile.TarInfo(f"{start + i:06d}.png")
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _stream(shards, n):
    from franca.data.datasets import ShardSamples

    it = iter(ShardSamples([str(s) for s in shards], None, seed=0, rank=0, world=1))
    return [next(it) for _ in range(n)]


def test_truncated_shard_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    from franca.data.datasets.shards import _WARNED_SHARDS, count_shard_images

    good = _shard(tmp_path / "a.tar", 6)
    bad = _shard(tmp_path / "b.tar", 6, start=100)
    bad.write_bytes(bad.read_bytes()[: 3 * 1024 + 512 + 30])  # cut in the data of the 4th member
    not_tar = tmp_path / "c.tar"
    not_tar.write_bytes(b"definitely not a tar archive" * 40)
    _WARNED_SHARDS.clear()
    with caplog.at_level("WARNING"):
        n = count_shard_images([str(good), str(bad), str(not_tar)])
        samples = _stream([good, bad, not_tar], 20)
    assert 6 <= n < 12
    reds = {int(s["image"][0, 0, 0]) for s in samples}
    assert set(range(6)) <= reds and reds - set(range(6)) <= set(range(100, 106))
    assert str(bad) in caplog.text and str(not_tar) in caplog.text and "damaged" in caplog.text


def test_all_shards_damaged_is_an_error_naming_them(tmp_path):
    from franca.data.datasets import ShardSamples

    bad = tmp_path / "x.tar"
    bad.write_bytes(b"\0" * 10 + b"junk")
    with pytest.raises(RuntimeError, match=re.escape(str(bad))):
        next(iter(ShardSamples([str(bad)], None, seed=0, rank=0, world=1)))


def test_shard_of_undecodable_members_is_an_error_not_a_hang(tmp_path):
    from franca.data.datasets import ShardSamples

    shard = _shard(tmp_path / "s.tar", 0, extra={"a.jpg": b"", "b.png": b"nope"})
    with pytest.raises((RuntimeError, TooManyUnreadableError), match=re.escape(str(shard))):
        next(iter(ShardSamples([str(shard)], None, seed=0, rank=0, world=1)))


def test_malicious_tar_members_are_never_written_or_followed(tmp_path, monkeypatch):
    """Path traversal names, a link member and an oversized member: read as bytes only, never
    extracted; the link is not an image; the oversized member is skipped unread."""
    import franca.data.datasets.shards as tdata

    monkeypatch.chdir(tmp_path)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (9, 0, 0)).save(buf, "PNG")
    shard = tmp_path / "evil.tar"
    with tarfile.open(shard, "w") as tar:
        for name in ("../../escape.png", "/abs/escape2.png"):
            info = tarfile.TarInfo(name)
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))
        link = tarfile.TarInfo("link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        big = tarfile.TarInfo("big.png")
        big.size = 5000
        tar.addfile(big, io.BytesIO(b"\0" * 5000))
    monkeypatch.setattr(tdata, "MAX_MEMBER_BYTES", 4096)
    members = list(tdata.tar_images(str(shard)))
    assert [m.split(":", 1)[1] for m, _ in members] == ["../../escape.png", "/abs/escape2.png", "big.png"]
    assert members[-1][1] is None
    samples = _stream([shard], 3)
    assert all(int(s["image"][0, 0, 0]) == 9 for s in samples)
    assert not (tmp_path.parent.parent / "escape.png").exists() and not Path("/abs/escape2.png").exists()


def test_webdataset_reader_survives_a_truncated_shard(tmp_path, caplog):
    from franca.data.datasets import WebDatasetShards

    good = _shard(tmp_path / "a.tar", 3)
    bad = _shard(tmp_path / "b.tar", 6, start=100)
    bad.write_bytes(bad.read_bytes()[: 3 * 1024 + 512 + 30])  # cut in the data of the 4th member
    with caplog.at_level("WARNING"):
        out = [x for x in WebDatasetShards([str(good), str(bad)], transform=lambda im: np.asarray(im)[0, 0, 0])]
    got = {int(x) for x in out if x is not None}
    assert got == {0, 1, 2, 100, 101, 102}
    assert any(str(bad) in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)


# -------------------------------------------------------------------------------------------- pickles
class _Payload:
    """Unpickling this calls open(marker, "w"): the file's existence proves code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _malicious_pickle(path: Path, marker: Path) -> Path:
    import pickle

    path.write_bytes(pickle.dumps({"images": _Payload(marker), "depths": _Payload(marker)}))
    return path


@pytest.mark.parametrize("name", ["nyu.pkl", "nyu.pickle", "nyu.npz", "nyu.mat", "nyuv2"])
def test_a_crafted_pickle_never_runs(tmp_path, name):
    """`franca eval depth --data X.pkl` used to unpickle X (code ran); a pickle under any name now
    gives one clear error and the payload never runs."""
    from franca.eval.depth import load_nyu

    marker = tmp_path / "pwned"
    target = tmp_path / name
    if name == "nyuv2":  # a folder whose split list is a pickle
        target.mkdir()
        _malicious_pickle(target / "nyudepthv2_test_files_with_gt.txt", marker)
        _malicious_pickle(target / "nyudepthv2_train_files_with_gt.txt", marker)
    else:
        _malicious_pickle(target, marker)
    with pytest.raises((ValueError, OSError, KeyError, FileNotFoundError)) as info:
        load_nyu(target)
    assert not marker.exists()
    if name.endswith((".pkl", ".pickle")):
        assert "pickle" in str(info.value) and "npz" in str(info.value) and str(target) in str(info.value)


def test_npz_with_object_arrays_is_refused(tmp_path):
    from franca.data.datasets import NYUv2Arrays

    marker = tmp_path / "pwned"
    obj = np.empty(1, dtype=object)
    obj[0] = _Payload(marker)
    np.savez(tmp_path / "o.npz", images=obj, depths=obj, test_indices=np.array([0]))
    with pytest.raises(ValueError, match="o.npz"):
        NYUv2Arrays(tmp_path / "o.npz", "test")
    assert not marker.exists()


def test_no_unsafe_deserialisation_in_the_package():
    """No pickle.load/loads/Unpickler, no torch.load without weights_only=True, no allow_pickle=True."""
    bad = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for pattern in (
            r"pickle\.loads?\(",
            r"Unpickler\(",
            r"allow_pickle\s*=\s*True",
            r"read_pickle\(",
            r"joblib\.load\(",
            r"dill\.loads?\(",
            r"cloudpickle\.loads?\(",
        ):
            bad += [f"{path.name}: {m.group(0)}" for m in re.finditer(pattern, text)]
        for m in re.finditer(r"torch\.load\(", text):
            call = text[m.start() : text.find("\n\n", m.start())]
            depth, end = 0, None
            for i, ch in enumerate(call):
                depth += ch == "("
                depth -= ch == ")"
                if depth == 0 and ch == ")":
                    end = i
                    break
            if "weights_only=True" not in call[:end]:
                bad.append(f"{path.name}: {call[:end]}")
    assert not bad, bad


# ---------------------------------------------------------------------------------------------- links
def _linked_tree(root: Path) -> Path:
    """root/a/{1,2}.png, root/a/loop → root/a (self-link), root/up → root (ancestor), mutual links
    x ↔ y, a broken link, a file link to a/1.png, and root/ext → a folder outside root."""
    _png(root / "a" / "1.png")
    _png(root / "a" / "2.png")
    outside = tmp_outside = root.parent / "outside"
    _png(tmp_outside / "o.png")
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
    _png(classes / "cat" / "1.png")
    os.symlink(tmp_path / "outside", classes / "dog")
    ds = open_images(classes, kind="classes").dataset
    assert ds.classes == ["cat", "dog"] and len(ds) == 2


def test_listing_a_deep_link_loop_terminates(tmp_path):
    root = tmp_path / "r"
    (root / "a" / "b").mkdir(parents=True)
    _png(root / "a" / "b" / "x.png")
    os.symlink(root / "a", root / "a" / "b" / "back")
    os.symlink(root, root / "a" / "b" / "top")
    assert [p.name for p in list_images(root)] == ["x.png"]


# ----------------------------------------------------------------------------------- features output
def test_features_output_path_is_checked_before_any_work(tmp_path, monkeypatch):
    """A bad --out used to fail only after the extraction: now before the model is even loaded."""
    import franca.commands._common as common
    import franca.features as F
    from franca.cli import main

    _png(tmp_path / "imgs" / "a.png")
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


def test_pretraining_data_on_a_folder_with_a_bad_stretch_and_a_symlinked_subfolder(tmp_path):
    """The pretraining loader: 70 zero-byte files in one sub-folder (the run used to abort before the
    first log row) and most good images behind a symlinked sub-folder (it used to train on 1 image of 257)."""
    from franca.train.config import load_config
    from franca.train.data import build_pretrain_data

    data = tmp_path / "data"
    (data / "a_empty").mkdir(parents=True)
    for i in range(70):
        (data / "a_empty" / f"{i:03d}.jpg").write_bytes(b"")
    _png(data / "one.png", (20, 20))
    for i in range(199):
        _png(tmp_path / "elsewhere" / f"{i:03d}.png", (20, 20), value=i)
    os.symlink(tmp_path / "elsewhere", data / "linked")
    cfg = load_config(
        "tiny",
        [
            f"data.dataset={data}",
            "data.num_workers=0",
            "train.batch_size_per_gpu=32",
            "data.batch_augment=false",
            "crops.global_crops_size=16",
            "crops.local_crops_size=8",
            "crops.local_crops_number=1",
        ],
    )
    pre = build_pretrain_data(cfg, patch_size=4, rank=0, world=1, start_iteration=0, device=torch.device("cpu"))
    assert pre.dataset_size == 270  # 74 % good, most of it behind the link
    batch = next(iter(pre.loader))  # (a whole epoch is read in test_a_bad_stretch_does_not_kill_a_good_folder)
    assert batch["global_crops"].shape[0] == 2 * 32
    assert all("a_empty" in p for p in batch["skipped"]) and len(batch["skipped"]) < 32
