"""franca.data.source: one entry (`open_images`) and one table of kinds for every command's images; a kind
added by a test reaches pretraining through the table alone."""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from franca.data.datasets import ImageFiles, ImageFolder, ShardSamples, WebDatasetShards
from franca.data.images import IMAGE_EXTENSIONS
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
