"""franca.data.datasets.shards: the project's tar reader (brace patterns, hostile members, damaged shards, member
caps)."""

from __future__ import annotations

import io
import os
import re
import tarfile
from pathlib import Path

import pytest
from helpers.images import write_shard
from helpers.shards import red_png_bytes, write_tar
from PIL import Image

from franca.data.datasets.shards import expand_braces, tar_images, tar_members
from franca.data.images import TooManyUnreadableError


def _stream(shards, n):
    from franca.data.datasets import ShardSamples

    it = iter(ShardSamples([str(s) for s in shards], None, seed=0, rank=0, world=1))
    return [next(it) for _ in range(n)]


def test_truncated_shard_is_skipped_with_a_warning_naming_it(tmp_path, caplog):
    from franca.data.datasets.shards import _WARNED_SHARDS, count_shard_images

    good = write_shard(tmp_path / "a.tar", 6)
    bad = write_shard(tmp_path / "b.tar", 6, start=100)
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

    shard = write_shard(tmp_path / "s.tar", 0, extra={"a.jpg": b"", "b.png": b"nope"})
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


def test_tar_members_reads_only_what_is_asked_and_tar_images_is_unchanged(tmp_path):
    shard = str(
        write_tar(tmp_path / "0.tar", [("a.jpg", red_png_bytes(1)), ("a.txt", b"cap"), ("b.png", red_png_bytes(2))])
    )
    assert [(n, d is not None) for n, d in tar_members(shard)] == [
        (f"{shard}:a.jpg", True),
        (f"{shard}:a.txt", False),
        (f"{shard}:b.png", True),
    ]
    assert [n for n, _ in tar_images(shard)] == [f"{shard}:a.jpg", f"{shard}:b.png"]


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


def test_a_shard_member_over_the_cap_is_not_read(tmp_path):
    """A 300 MB member was read into memory (the cap was 1 GiB). The member is sparse on disk."""
    from franca.data.datasets import shards

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (9, 0, 0)).save(buf, "PNG")
    shard = tmp_path / "s.tar"
    with open(shard, "wb") as f:
        small = tarfile.TarInfo("a.png")
        small.size = len(buf.getvalue())
        f.write(small.tobuf())
        f.write(buf.getvalue().ljust((small.size + 511) // 512 * 512, b"\0"))
        big = tarfile.TarInfo("b.png")
        big.size = 300 << 20
        f.write(big.tobuf())
        f.seek(big.size, os.SEEK_CUR)  # a hole: no disk space used
        f.write(b"\0" * 1024)  # end of archive
    assert shards.MAX_MEMBER_BYTES <= 256 << 20
    got = dict(shards.tar_images(str(shard)))
    assert got[f"{shard}:a.png"] == buf.getvalue() and got[f"{shard}:b.png"] is None
