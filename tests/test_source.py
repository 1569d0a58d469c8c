"""franca.data.source: one entry (`open_images`) and one table of kinds for every command's images; a kind
added by a test reaches pretraining through the table alone."""

from __future__ import annotations

import gzip
import io
import logging
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.images import write_png
from helpers.shards import red_png_bytes, red_value, write_tar
from PIL import Image

from franca.data.datasets import (
    ImageFiles,
    ImageFolder,
    ShardSamples,
    WebDatasetShards,
)
from franca.data.images import (
    IMAGE_EXTENSIONS,
    TooManyUnreadableError,
    list_images,
)
from franca.data.source import (
    SOURCE_KINDS,
    Samples,
    SourceKind,
    detect_kind,
    file_source,
    open_images,
    register_source_kind,
)

PACKAGE = Path(__file__).resolve().parents[1] / "franca"


def _png(path: Path, value: int = 0, size: tuple[int, int] = (12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 0, 0)).save(path)
    return path


def _value(im: Image.Image) -> int:
    return int(np.asarray(im)[0, 0, 0])


def _tar(path: Path, n: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            buf = io.BytesIO()
            Image.new("RGB", (8, 8), (i, 0, 0)).save(buf, "PNG")
            info = tarfile.TarInfo(f"{i:04d}.png")
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))
    return path


# ------------------------------------------------------------------------------------------- the table
def test_the_table_holds_the_four_kinds_in_detection_order():
    assert list(SOURCE_KINDS)[:4] == ["webdataset", "folder", "files", "classes"]
    assert SOURCE_KINDS["webdataset"].policies == ("skip",) and SOURCE_KINDS["classes"].policies == ("raise",)
    assert SOURCE_KINDS["folder"].policies == SOURCE_KINDS["files"].policies == ("replace", "skip", "mark")


def test_detect_kind(tmp_path):
    _png(tmp_path / "imgs" / "a.png")
    _tar(tmp_path / "shards" / "s-000.tar", 2)
    (tmp_path / "notes.txt").write_text("not images")
    assert detect_kind(str(tmp_path / "imgs")) == "folder"
    assert detect_kind(tmp_path / "shards") == "webdataset"  # a folder holding *.tar
    assert detect_kind(str(tmp_path / "shards" / "s-000.tar")) == "webdataset"
    assert detect_kind(str(tmp_path / "shards" / "s-{000..001}.tar")) == "webdataset"  # a pattern, not checked here
    assert detect_kind("https://example.org/s-{0..9}.tar") == "webdataset"  # refused on opening, with the way out
    assert detect_kind([tmp_path / "imgs" / "a.png"]) == "files"
    with pytest.raises(FileNotFoundError, match=re.escape(f"not found: {tmp_path / 'nope'}")):
        detect_kind(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'notes.txt'} is not a source of images")):
        detect_kind(str(tmp_path / "notes.txt"))
    with pytest.raises(ValueError, match="download the shards first"):
        open_images("https://example.org/s-{0..9}.tar")


def test_each_kind_opens_its_reader_with_its_policies(tmp_path):
    for c, v in (("cat", 10), ("dog", 20)):
        _png(tmp_path / "tree" / c / "1.png", v)
    _tar(tmp_path / "shards" / "s-000.tar", 3)
    folder = open_images(tmp_path / "tree", transform=_value, on_unreadable="skip")
    assert folder.kind == "folder" and isinstance(folder.dataset, ImageFiles) and folder.dataset.on_unreadable == "skip"
    assert [folder.dataset[i] for i in range(2)] == [10, 20] and folder.size == 2
    assert folder.description == f"image folder {tmp_path / 'tree'} (2 files)"
    tree = open_images(tmp_path / "tree", kind="classes", transform=_value)
    assert isinstance(tree.dataset, ImageFolder) and tree.dataset[1] == (20, 1) and tree.files == folder.files
    shards = open_images(tmp_path / "shards", transform=_value)
    assert isinstance(shards.dataset, WebDatasetShards) and shards.files is None and list(shards.dataset) == [0, 1, 2]
    assert shards.description == f"webdataset {tmp_path / 'shards'} (1 shards, 3 images)"
    stream = open_images(tmp_path / "shards", samples=Samples(seed=0), size=7)
    assert isinstance(stream.dataset, ShardSamples) and stream.size == 7  # a size given is not counted
    with pytest.raises(ValueError, match=r"webdataset sources: on_unreadable must be one of \('skip',\)"):
        open_images(tmp_path / "shards", on_unreadable="mark", transform=_value)
    with pytest.raises(ValueError, match=r"classes sources: on_unreadable must be one of \('raise',\)"):
        open_images(tmp_path / "tree", kind="classes", on_unreadable="skip")
    with pytest.raises(ValueError, match="omit on_unreadable"):
        open_images(tmp_path / "tree", samples=Samples(seed=0), on_unreadable="skip")
    with pytest.raises(ValueError, match="unknown image source kind 'video'"):
        open_images(tmp_path / "tree", kind="video")


def test_files_lists_folders_takes_files_as_named_and_refuses_missing_ones(tmp_path):
    a = _png(tmp_path / "a.png", 1)
    odd = tmp_path / "b.image"
    odd.write_bytes(a.read_bytes())  # named by the caller: read whatever its suffix
    _png(tmp_path / "dir" / "c.png", 3)
    src = open_images([odd, tmp_path / "dir", a], kind="files", transform=_value)
    assert src.files == [odd, tmp_path / "dir" / "c.png", a] and [src.dataset[i] for i in range(3)] == [1, 3, 1]
    with pytest.raises(FileNotFoundError, match=re.escape(f"image or folder not found: {tmp_path / 'gone.png'}")):
        open_images([a, tmp_path / "gone.png"], kind="files")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image files"):
        open_images([tmp_path / "empty"], kind="files")
    with pytest.raises(ValueError, match="expected a folder of images, got the file"):
        open_images(a, kind="folder")


def test_the_figures_read_every_suffix_of_the_one_list(tmp_path):
    """#27 item 12: `franca viz` listed 5 suffixes where every other command read 10, so a folder's .gif and
    .tif files were skipped without a word."""
    from franca.viz.common import figure_images

    for name in ("a.png", "b.gif", "c.tif", "d.tiff", "e.bmp", "f.webp", "g.ppm", "h.jpeg"):
        _png(tmp_path / "imgs" / name, 40)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    files = figure_images([tmp_path / "imgs"])
    assert [p.name for p in files] == ["a.png", "b.gif", "c.tif", "d.tiff", "e.bmp", "f.webp", "g.ppm", "h.jpeg"]
    assert figure_images([tmp_path / "imgs"], limit=3) == files[:3]


def test_the_suffix_list_has_one_home():
    """No module but franca/data/images.py spells out a list of file suffixes (webdataset's member keys, e.g.
    "webp" without a dot, are another thing: which member of a sample is its image)."""
    suffix = re.compile(r"""["']\.(webp|bmp|tiff?|gif|ppm)["']""")
    found = [
        f"{p.relative_to(PACKAGE)}:{m.group(0)}"
        for p in PACKAGE.rglob("*.py")
        if p.name != "images.py"
        for m in suffix.finditer(p.read_text(encoding="utf-8"))
    ]
    assert not found, found
    assert {".gif", ".tif", ".webp"} <= set(IMAGE_EXTENSIONS)


def test_pretraining_reads_a_folder_through_the_source(tmp_path):
    """The same file order and replacements as the reader used directly: pretraining's samples of a folder are
    ImageFiles samples, keyed by the sampler's (index, seed)."""
    for i in range(6):
        _png(tmp_path / "imgs" / f"{i}.png", 10 * i)
    (tmp_path / "imgs" / "9.png").write_bytes(b"broken")
    src = open_images(tmp_path / "imgs", samples=Samples(seed=3))
    direct = ImageFiles(src.files, None, as_samples=True)
    for key in [(6, 11), (0, 5), (6, 12)]:
        a, b = src.dataset[key], direct[key]
        assert torch.equal(a["image"], b["image"]) and a["name"] == b["name"] and a["skipped"] == b["skipped"]
    assert src.dataset[(6, 11)]["skipped"] == [str(tmp_path / "imgs" / "9.png")]


# --------------------------------------------------------------------- a kind added in one place
def _list_file_kind() -> SourceKind:
    """A dummy kind: a text file naming one image per line (relative to the file's folder)."""

    def claims(spec) -> bool:
        return isinstance(spec, (str, Path)) and str(spec).endswith(".list") and Path(spec).is_file()

    def open_list(spec, o):
        lines = Path(spec).read_text().split()
        files = [Path(spec).parent / line for line in lines]
        return file_source("list", str(spec), files, o, where=f"the list {spec}", noun="image list")

    return SourceKind("list", "a .list file naming one image per line", open_list, claims)


@pytest.fixture
def list_kind():
    kind = register_source_kind(_list_file_kind())
    yield kind
    del SOURCE_KINDS[kind.name]


def test_a_new_kind_is_one_registration(tmp_path, list_kind):
    for i in range(5):
        _png(tmp_path / "imgs" / f"{i}.png", 10 * i, size=(20, 20))
    (tmp_path / "imgs" / "bad.png").write_bytes(b"")
    spec = tmp_path / "train.list"
    spec.write_text("imgs/3.png\nimgs/bad.png\nimgs/1.png\nimgs/4.png\n")
    assert detect_kind(spec) == "list"
    with pytest.raises(ValueError, match="exists already"):
        register_source_kind(_list_file_kind())
    # every policy comes with file_source
    src = open_images(spec, transform=lambda im: torch.tensor(_value(im)), on_unreadable="mark")
    assert src.description == f"image list {spec} (4 files)"
    assert [(int(x), i) for x, i in (src.dataset[i] for i in range(4))] == [(30, 0), (0, -1), (10, 2), (40, 3)]
    assert [open_images(spec, transform=_value, on_unreadable="skip").dataset[i] for i in range(4)] == [
        30,
        None,
        10,
        40,
    ]
    # pretraining: the config takes the new kind, and the loader reads it (auto-detected, then by name)
    from franca.train.config import load_config
    from franca.train.data import build_pretrain_data

    overrides = ["data.num_workers=0", "train.batch_size_per_gpu=4", "crops.local_crops_number=1"]
    for kind in ("auto", "list"):
        cfg = load_config("tiny", [f"data.dataset={spec}", f"data.kind={kind}", *overrides])
        data = build_pretrain_data(cfg, 8, 0, 1, 0, torch.device("cpu"))
        batch = next(iter(data.loader))
        assert data.dataset_size == 4 and data.description.startswith(f"image list {spec} (4 files)")
        assert batch["global_crops"].shape == (8, 3, 32, 32)
        assert all(p == str(tmp_path / "imgs" / "bad.png") for p in batch["skipped"])
    with pytest.raises(ValueError, match="data.kind"):
        load_config("tiny", ["data.kind=video"])


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
        write_png(root / "b_good" / f"{i:03d}.png", (4, 4), value=i)
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
        write_png(root / f"z{i}.png")
    ds = open_images(root, samples=Samples(seed=0)).dataset
    with pytest.raises(TooManyUnreadableError, match=re.escape(str(root))):
        for i in range(110):
            ds[(i, i)]


def test_pretraining_data_on_a_folder_with_a_bad_stretch_and_a_symlinked_subfolder(tmp_path):
    """The pretraining loader: 70 zero-byte files in one sub-folder (the run used to abort before the
    first log row) and most good images behind a symlinked sub-folder (it used to train on 1 image of 257)."""
    from franca.train.config import load_config
    from franca.train.data import build_pretrain_data

    data = tmp_path / "data"
    (data / "a_empty").mkdir(parents=True)
    for i in range(70):
        (data / "a_empty" / f"{i:03d}.jpg").write_bytes(b"")
    write_png(data / "one.png", (20, 20))
    for i in range(199):
        write_png(tmp_path / "elsewhere" / f"{i:03d}.png", (20, 20), value=i)
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


def test_a_folder_of_gzip_shards_is_refused_with_the_glob_that_reads_it(tmp_path):
    """A folder listing takes *.tar only; a folder of LAION-style *.tar.gz used to say 'no image files' or
    'no *.tar shards' and nothing more. The error now names the glob that reads them, and that glob works."""

    from franca.data.source import open_images

    plain = write_tar(tmp_path / "plain" / "00000.tar", [("0001.png", red_png_bytes(5)), ("0001.txt", b"cap")])
    gz = tmp_path / "gz"
    gz.mkdir()
    (gz / "00000.tar.gz").write_bytes(gzip.compress(plain.read_bytes()))
    glob = re.escape(f"'{gz / '*.tar.gz'}'")
    with pytest.raises(FileNotFoundError, match=f"no \\*.tar shards in the folder .*give them as a glob, {glob}"):
        WebDatasetShards(gz)
    with pytest.raises(FileNotFoundError, match=f"no image files .* 1 gzip-compressed shards .*{glob}"):
        open_images(gz, kind="folder")
    assert list(WebDatasetShards(str(gz / "*.tar.gz"), transform=red_value)) == [5]


def test_pretraining_refuses_a_remote_shard_url():
    from franca.train.config import load_config
    from franca.train.data import resolve_source

    for url in ("https://example.org/in21k-{000..009}.tar", "https://example.org/in21k-000.tar"):
        with pytest.raises(ValueError, match="download the shards first"):
            resolve_source(load_config("tiny", [f"data.dataset={url}"]))


def test_a_batch_larger_than_the_data_set_is_named(tmp_path, caplog):
    from helpers.training import make_image_folder, tiny_overrides

    from franca.train.config import load_config
    from franca.train.data import build_pretrain_data

    data = make_image_folder(tmp_path / "img", n=3)
    cfg = load_config("tiny", tiny_overrides(tmp_path / "run", data, batch=8) + ["data.num_workers=0"])
    with caplog.at_level(logging.WARNING, logger="franca"):
        build_pretrain_data(cfg, 4, 0, 1, 0, torch.device("cpu"))
    msg = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("the batch of 8 images is larger than the data set (3 images)" in m and "3 or less" in m for m in msg)
    caplog.clear()
    cfg = load_config("tiny", tiny_overrides(tmp_path / "run", data, batch=2) + ["data.num_workers=0"])
    with caplog.at_level(logging.WARNING, logger="franca"):
        build_pretrain_data(cfg, 4, 0, 1, 0, torch.device("cpu"))
    assert not [r for r in caplog.records if "larger than the data set" in r.getMessage()]
