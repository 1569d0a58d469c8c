"""Regressions of the #20 reader refactor found by comparing with the webdataset-based reader (audit).

Each test pins a behaviour the old reader (webdataset's sample grouping and node splitting) had and the
refactored one lost: samples are grouped by webdataset's key rule, a sample without an image is a counted
None (never dropped silently), and a torchrun launch splits shards by RANK/WORLD_SIZE.
"""

from __future__ import annotations

import io
import logging
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from franca.data.datasets import WebDatasetShards
from franca.data.datasets.shards import tar_images, tar_members
from franca.data.datasets.wds import split_key
from franca.utils.distributed import rank_and_world


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (value, 0, 0)).save(buf, "PNG")
    return buf.getvalue()


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _value(im: Image.Image) -> int:
    return int(np.asarray(im)[0, 0, 0])


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
    shard = _tar(
        tmp_path / "s" / "00000.tar",
        [
            ("0001.jpg", _png(1)),
            ("0001.json", b"{}"),
            ("0001.txt", b"a cat"),
            ("0002.json", b'{"status": "failed"}'),
            ("a.b/0003.jpg", _png(3)),
            ("a.b/0003.txt", b"dotted folder"),
            ("img.v2.jpg", _png(4)),
            ("img.v2.txt", b"two dots"),
            ("._0005.jpg", _png(99)),
            ("0005.png", _png(5)),
            ("__meta__", b"x"),
            ("0005.txt", b"one sample"),
        ],
    )
    ds = WebDatasetShards(tmp_path / "s", transform=_value, with_key=True)
    with caplog.at_level(logging.WARNING):
        items = list(ds)
    assert items == [("0001", 1), None, ("a.b/0003", 3), None, ("0005", 5)]
    assert ds.skipped == 2
    assert f"{shard}:0002 has no image member" in caplog.text and "it holds json" in caplog.text
    assert f"{shard}:img has no image member" in caplog.text and "it holds v2.jpg, v2.txt" in caplog.text


def test_image_keys_v2_jpg_reads_the_multi_dot_member(tmp_path):
    _tar(tmp_path / "s" / "0.tar", [("img.v2.jpg", _png(4)), ("img.v2.txt", b"x"), ("b.jpg", _png(2))])
    ds = WebDatasetShards(tmp_path / "s", transform=_value, image_keys=("v2.jpg", "jpg"))
    assert list(ds) == [4, 2] and ds.skipped == 0


def test_tar_members_reads_only_what_is_asked_and_tar_images_is_unchanged(tmp_path):
    shard = str(_tar(tmp_path / "0.tar", [("a.jpg", _png(1)), ("a.txt", b"cap"), ("b.png", _png(2))]))
    assert [(n, d is not None) for n, d in tar_members(shard)] == [
        (f"{shard}:a.jpg", True),
        (f"{shard}:a.txt", False),
        (f"{shard}:b.png", True),
    ]
    assert [n for n, _ in tar_images(shard)] == [f"{shard}:a.jpg", f"{shard}:b.png"]


def test_a_torchrun_launch_splits_shards_by_rank_before_the_process_group(tmp_path, monkeypatch):
    """torchrun sets RANK and WORLD_SIZE; webdataset split shards by them even before init_process_group.
    Without that, every rank of such a launch would read every shard (each image world times)."""
    for s in range(4):
        _tar(tmp_path / "s" / f"{s}.tar", [(f"{s}.png", _png(s))])
    seen = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert rank_and_world() == (rank, 2)
        seen.append(list(WebDatasetShards(tmp_path / "s", transform=_value)))
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
    _tar(tmp_path / "s" / "0.tar", [("0001.image", _png(7)), ("0001.json", b"{}")])
    assert list(WebDatasetShards(tmp_path / "s", transform=_value, image_keys=("image",))) == [7]
    with pytest.raises(ValueError, match="image_keys"):
        WebDatasetShards(tmp_path / "s", image_keys=())


def test_a_folder_of_unreadable_files_stops_pretraining_with_one_line_naming_distinct_files(tmp_path, capsys):
    """With DataLoader workers torch re-raises the worker's error with its whole traceback in the message;
    the CLI line keeps the original message (the folder and distinct example files) and names the worker."""
    from franca.cli import main

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_text("not a jpeg")
    (bad / "b.png").write_bytes(b"")
    rc = main(
        [
            "pretrain",
            "--data",
            str(bad),
            "--out",
            str(tmp_path / "run"),
            "--device",
            "cpu",
            "--quiet",
            "train.iterations=1",
            "train.batch_size_per_gpu=4",
            "data.num_workers=1",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 1 and err.startswith("franca pretrain: error: 64 of the 64 images tried in the image folder")
    assert "Traceback" not in err and "(in DataLoader worker process 0)" in err
    assert f"e.g. {bad / 'a.jpg'}, {bad / 'b.png'};" in err or f"e.g. {bad / 'b.png'}, {bad / 'a.jpg'};" in err


def test_one_line_keeps_the_original_message_of_a_worker_error():
    from franca.utils.errors import one_line

    wrapped = RuntimeError(
        "Caught KeyError in DataLoader worker process 3.\nOriginal Traceback (most recent call "
        "last):\n  File \"x.py\", line 1, in f\n    g()\nKeyError: 'config key data.x: unknown'"
    )
    assert one_line(wrapped) == "'config key data.x: unknown' (in DataLoader worker process 3)"
    assert one_line(ValueError("plain\nmessage")) == "plain message"


def test_a_folder_of_gzip_shards_is_refused_with_the_glob_that_reads_it(tmp_path):
    """A folder listing takes *.tar only; a folder of LAION-style *.tar.gz used to say 'no image files' or
    'no *.tar shards' and nothing more. The error now names the glob that reads them, and that glob works."""
    import gzip

    from franca.data.source import open_images

    plain = _tar(tmp_path / "plain" / "00000.tar", [("0001.png", _png(5)), ("0001.txt", b"cap")])
    gz = tmp_path / "gz"
    gz.mkdir()
    (gz / "00000.tar.gz").write_bytes(gzip.compress(plain.read_bytes()))
    glob = re.escape(f"'{gz / '*.tar.gz'}'")
    with pytest.raises(FileNotFoundError, match=f"no \\*.tar shards in the folder .*give them as a glob, {glob}"):
        WebDatasetShards(gz)
    with pytest.raises(FileNotFoundError, match=f"no image files .* 1 gzip-compressed shards .*{glob}"):
        open_images(gz, kind="folder")
    assert list(WebDatasetShards(str(gz / "*.tar.gz"), transform=_value)) == [5]


@pytest.mark.parametrize(
    "pattern, expected",
    [
        (r"data\{v1\}/s-{0..1}.tar", ["data{v1}/s-0.tar", "data{v1}/s-1.tar"]),  # a literal brace in a folder name
        (r"a\{1,2\}.tar", ["a{1,2}.tar"]),
        (r"x{a\,b,c}", ["xa,b", "xc"]),  # an escaped comma inside a list
        (r"x\{{1,2}\}", ["x{1}", "x{2}"]),
    ],
)
def test_expand_braces_takes_escaped_characters_literally(pattern, expected):
    """braceexpand (which webdataset used) reads a backslash as 'the next character literally'; the refactor
    expanded `a\\{1,2\\}` into two garbled names."""
    from franca.data.datasets.shards import expand_braces

    assert expand_braces(pattern) == expected


def test_an_unbalanced_pattern_is_named_whole(tmp_path):
    from franca.data.datasets.shards import expand_braces

    with pytest.raises(ValueError, match=re.escape("'/shards/s-{0..3}.tar{'")):
        expand_braces("/shards/s-{0..3}.tar{")


def test_paths_and_n_skipped_can_still_be_assigned(tmp_path):
    """`UnlabelledImageFolder.paths` and `ImageFiles.n_skipped` were plain attributes: a script that subsets a
    folder (`ds.paths = ds.paths[:2]`) or resets the count (`ds.n_skipped = 0`) must keep working."""
    from franca.data.datasets import ImageFiles, UnlabelledImageFolder

    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(_png(i))
    (tmp_path / "9.png").write_bytes(b"broken")
    ds = UnlabelledImageFolder(tmp_path, transform=_value)
    ds.paths = ds.paths[:2]
    assert len(ds) == 2 and [ds[i] for i in range(len(ds))] == [0, 1] and ds.files == ds.paths
    files = ImageFiles(sorted(tmp_path.glob("*.png")), _value)
    assert files[4] in {0, 1, 2, 3} and files.n_skipped == 1  # 9.png replaced by a readable file
    files.n_skipped = 0
    assert files.n_skipped == files.skipped == 0


def test_an_existing_shard_whose_path_looks_like_a_glob_is_read(tmp_path):
    """`run[1]/00000.tar` exists: it is that file, not the glob `run1/00000.tar` (the webdataset package
    opened it as a file; the refactor globbed it and said 'not found')."""
    shard = _tar(tmp_path / "run[1]" / "00000.tar", [("0001.png", _png(9))])
    assert list(WebDatasetShards(str(shard), transform=_value)) == [9]
    assert list(WebDatasetShards(shard.parent, transform=_value)) == [9]


def test_features_on_a_folder_of_unreadable_files_names_them(tmp_path, capsys):
    from franca.cli import main

    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_text("not a jpeg")
    rc = main(
        [
            "features",
            "--model",
            "vitt8",
            "--random-init",
            "--size",
            "16",
            "--data",
            str(tmp_path / "imgs"),
            "--out",
            str(tmp_path / "f.pt"),
            "--device",
            "cpu",
            "--num-workers",
            "0",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 1 and f"all 1 files are unreadable (e.g. {tmp_path / 'imgs' / 'a.jpg'})" in err
    assert not (tmp_path / "f.pt").exists()


def test_a_single_string_image_key_is_one_key(tmp_path):
    """`image_keys="png"` is the key png (tuple("png") would be the keys p, n, g: every sample image-less)."""
    _tar(tmp_path / "s" / "0.tar", [("0001.png", _png(3)), ("0001.jpg", _png(4))])
    ds = WebDatasetShards(tmp_path / "s", transform=_value, image_keys="png")
    assert ds.image_keys == ("png",) and list(ds) == [3]
