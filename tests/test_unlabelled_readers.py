"""One unlabelled reader (`ImageFiles` with one `on_unreadable` policy), one replacement loop shared with
pretraining, and one shard reader (`WebDatasetShards` on the plain tar reader, `expand_braces`) (#20)."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from franca.data.datasets import ImageFiles, SkipNoneCollate, UnlabelledImageFolder, WebDatasetShards
from franca.data.datasets.shards import expand_braces, list_shards
from franca.data.images import TooManyUnreadableError, list_images


def _png_bytes(value: int, size: tuple[int, int] = (4, 4)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (value, 0, 0)).save(buf, "PNG")
    return buf.getvalue()


def _folder(root: Path, n: int = 10, bad: tuple[int, ...] = (0, 2, 8)) -> list[Path]:
    """f0 … f{n-1}.png, pixel value = the file's number; the files in `bad` hold no image."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"f{i}.png").write_bytes(b"not an image" if i in bad else _png_bytes(i))
    return list_images(root)


def _value(im: Image.Image) -> int:
    return int(np.asarray(im)[0, 0, 0])


# ------------------------------------------------------------------------------------------ expand_braces
@pytest.mark.parametrize(
    "pattern, expected",
    [
        ("a{0..3}.tar", ["a0.tar", "a1.tar", "a2.tar", "a3.tar"]),
        ("s-{000..002}.tar", ["s-000.tar", "s-001.tar", "s-002.tar"]),
        ("{8..011}", ["008", "009", "010", "011"]),  # one padded endpoint pads all to its width
        ("{0..10..5}", ["0", "5", "10"]),  # a step
        ("{2..0}", ["2", "1", "0"]),  # descending
        ("{a,b}.tar", ["a.tar", "b.tar"]),
        ("{a..c}", ["a", "b", "c"]),
        ("x{a,b}-{0..1}", ["xa-0", "xa-1", "xb-0", "xb-1"]),  # two groups: the last varies fastest
        ("{a,b{1,2}}c", ["ac", "b1c", "b2c"]),  # nested
        ("plain.tar", ["plain.tar"]),
        ("x{y}z", ["x{y}z"]),  # not a list or a range: literal
    ],
)
def test_expand_braces_golden(pattern, expected):
    assert expand_braces(pattern) == expected


@pytest.mark.parametrize("pattern", ["a{0..3.tar", "a}0{", "a{b}}"])
def test_expand_braces_unbalanced_is_an_error_naming_the_pattern(pattern):
    with pytest.raises(ValueError, match="unbalanced"):
        expand_braces(pattern)


# ------------------------------------------------------------------------------- ImageFiles policies
def test_replace_draws_the_same_files_as_before(tmp_path):
    """ "replace": item i reads file i, else files[random.Random(i·1_000_003 + k).randrange(n)], k = 1, 2, …
    (the draw sequence of the earlier reader, so RASA's results do not change). Golden, by hand from those
    draws: item 0 tries f0 (bad), f2 (bad), f0 (bad), f3; item 2 tries f2, f8 (both bad), f5; item 8 f8, f1."""
    files = _folder(tmp_path / "imgs")
    ds = ImageFiles(files, _value)  # "replace" is the default
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
    files = _folder(tmp_path / "imgs")
    pre, ds = ImageFiles(files, None, as_samples=True), ImageFiles(files, _value)
    for i in range(10):
        item = pre[(i, i)]
        assert int(item["image"][0, 0, 0]) == ds[i] and Path(item["name"]).name == f"f{ds[i]}.png"
    assert [Path(p).name for p in pre[(0, 0)]["skipped"]] == ["f0.png", "f2.png", "f0.png"]


def test_replace_fails_when_most_files_are_unreadable(tmp_path):
    files = _folder(tmp_path / "imgs", n=4, bad=(0, 1, 2, 3))
    with pytest.raises(TooManyUnreadableError, match="unreadable"):
        ImageFiles(files, _value)[0]


def test_skip_yields_none_counts_and_warns(tmp_path, caplog):
    files = _folder(tmp_path / "imgs", n=5, bad=(1, 3))
    ds = ImageFiles(files, _value, on_unreadable="skip")
    with caplog.at_level("WARNING"):
        items = [ds[i] for i in range(5)]
    assert items == [0, None, 2, None, 4] and ds.skipped == 2
    assert "f1.png" in caplog.text and "f3.png" in caplog.text and "2 so far" in caplog.text
    assert SkipNoneCollate(list)(items) == ([0, 2, 4], 2)
    # the folder reader is this policy over list_images(root)
    folder = UnlabelledImageFolder(tmp_path / "imgs", transform=_value)
    assert folder.paths == files and [folder[i] for i in range(5)] == items and folder.on_unreadable == "skip"


def _drawing_transform(im: Image.Image) -> torch.Tensor:
    """A transform that consumes random numbers of torch and of python's random, like an augmentation."""
    return torch.full((3, 2, 5), float(_value(im))) + 0 * torch.rand(1) + 0 * random.random()


def _after(ds: ImageFiles, items: list[int]) -> tuple[list, float, float]:
    torch.manual_seed(0)
    random.seed(0)
    out = [ds[i] for i in items]
    return out, torch.rand(1).item(), random.random()


def test_mark_gives_zeros_of_the_transform_shape_and_minus_one(tmp_path):
    """ "mark": (transform(image), i), or (zeros shaped like the transform's output, -1); making the zeros
    (the transform run once on a blank image) leaves the random state where the good items left it."""
    files = _folder(tmp_path / "imgs", n=3, bad=(1,))
    ds = ImageFiles(files, _drawing_transform, on_unreadable="mark")
    (x0, i0), (x1, i1), (x2, i2) = (out := _after(ds, [0, 1, 2]))[0]
    assert (i0, i1, i2) == (0, -1, 2) and float(x2[0, 0, 0]) == 2.0 and ds.skipped == 1
    assert x1.shape == (3, 2, 5) and x1.dtype == x0.dtype and not x1.any()
    assert out[1:] == _after(ImageFiles(files, _drawing_transform, on_unreadable="mark"), [0, 2])[1:]


def test_bad_policy_and_mark_without_transform_are_errors(tmp_path):
    files = _folder(tmp_path / "imgs", n=2, bad=())
    with pytest.raises(ValueError, match="on_unreadable must be one of"):
        ImageFiles(files, _value, on_unreadable="ignore")
    with pytest.raises(ValueError, match="needs a transform"):
        ImageFiles(files, None, on_unreadable="mark")


def test_features_lists_the_unreadable_files(tmp_path):
    """`franca features` reads through ImageFiles("mark"): readable files in order, the others as skipped."""
    import franca
    from franca.features import extract_features

    files = _folder(tmp_path / "imgs", n=5, bad=(0, 3))
    model = franca.build_backbone("vitt8", depth=1)
    res = extract_features(model, files, 16, torch.device("cpu"), batch_size=2, progress=False)
    assert res["files"] == [str(files[i]) for i in (1, 2, 4)] and res["skipped"] == [str(files[0]), str(files[3])]
    assert res["cls"].shape == (3, 192) and res["patch"].shape == (3, 4, 192)


# ------------------------------------------------------------------------------------------------ shards
def _tar(path: Path, members: list[tuple[str, bytes]], links: tuple[str, ...] = ()) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name in links:
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(link)
    return path


def _shards(root: Path, n_shards: int = 4, per: int = 3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        _tar(
            root / f"train-{s:03d}.tar",
            [m for k in range(per) for m in ((f"{s}{k}.png", _png_bytes(10 * s + k)), (f"{s}{k}.txt", b"a caption"))],
        )
    return root


def test_shards_from_a_brace_pattern_with_hostile_members(tmp_path, caplog):
    """A corrupt member yields None with a warning naming shard:member and is counted; a link member is not
    an image; a `../` member is read from the archive, never written to disk."""
    root = _shards(tmp_path / "shards", n_shards=2)
    odd = _tar(
        root / "train-002.tar",
        [("ok.png", _png_bytes(77)), ("broken.jpg", b"\xff\xd8 not a jpeg"), ("../../escape.png", _png_bytes(78))],
        links=("link.png",),
    )
    ds = WebDatasetShards(str(root / "train-{000..002}.tar"), transform=_value, with_key=True)
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
    _tar(
        tmp_path / "a.tar",
        [
            ("x.png", _png_bytes(1)),
            ("x.jpg", _png_bytes(2)),
            ("x.json", b"{}"),
            ("y.seg.png", _png_bytes(3)),
            ("y.webp", _png_bytes(4)),
        ],
    )
    assert list(WebDatasetShards(tmp_path, transform=_value, with_key=True)) == [("x", 2), ("y", 4)]
    only_seg = WebDatasetShards(tmp_path, transform=_value, image_keys=("seg.png",))
    assert list(only_seg) == [None, 3] and only_seg.skipped == 1  # x has no seg.png: None, counted


def test_shards_split_over_ranks_and_workers(tmp_path):
    ds = WebDatasetShards(_shards(tmp_path / "s", n_shards=7), shuffle_shards=True, seed=3)
    parts = [ds.shards_of(r, 2, w, 2) for r in range(2) for w in range(2)]
    assert sorted(s for p in parts for s in p) == ds.urls and all(p for p in parts)  # a partition
    assert ds.shards_of(0, 1, 0, 1) != ds.urls and ds.shards_of(0, 1, 0, 1) == ds.shards_of(0, 1, 0, 1)
    ds.set_epoch(1)
    assert sorted(ds.shards_of(0, 1, 0, 1)) == ds.urls


def _worker_value(im):
    return torch.utils.data.get_worker_info().id, _value(im)


def test_two_workers_read_distinct_shards(tmp_path):
    ds = WebDatasetShards(_shards(tmp_path / "s", n_shards=4), transform=_worker_value)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    got = [(int(w), int(v)) for w, v in loader]
    assert sorted(v for _, v in got) == [10 * s + k for s in range(4) for k in range(3)]  # each image once
    worker_of = {v // 10: w for w, v in got}
    assert all(worker_of[v // 10] == w for w, v in got) and worker_of == {0: 0, 1: 1, 2: 0, 3: 1}


def test_shuffle_buffer_is_a_seeded_permutation(tmp_path):
    root = _shards(tmp_path / "s", n_shards=3)
    plain = list(WebDatasetShards(root, transform=_value))
    a = list(WebDatasetShards(root, transform=_value, shuffle_buffer=4, seed=1))
    assert sorted(a) == sorted(plain) and a != plain
    assert a == list(WebDatasetShards(root, transform=_value, shuffle_buffer=4, seed=1))


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


def test_pretraining_refuses_a_remote_shard_url():
    from franca.train.config import load_config
    from franca.train.data import resolve_source

    for url in ("https://example.org/in21k-{000..009}.tar", "https://example.org/in21k-000.tar"):
        with pytest.raises(ValueError, match="download the shards first"):
            resolve_source(load_config("tiny", [f"data.dataset={url}"]))


def test_no_module_imports_the_webdataset_packages():
    """The shards are read by franca.data.datasets.shards; `webdataset` and `braceexpand` are not dependencies."""
    import ast

    root = Path(__file__).resolve().parents[1]
    for path in (root / "franca").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not {n.split(".")[0] for n in names} & {"webdataset", "braceexpand"}, path
    assert (
        "webdataset" not in (root / "pyproject.toml").read_text()
        and "braceexpand" not in (root / "pyproject.toml").read_text()
    )
