"""Caches you can trust (#17): the feature cache key covers every file's size/mtime/inode, the
weights, the transform (so the size) and the code version; each change recomputes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from franca.data.datasets import ImageFolder
from franca.eval import features as F
from franca.eval.classification_data import eval_transform


class _Mean(torch.nn.Module):
    """Stub backbone: CLS = linear map of the mean colour; counts forward passes."""

    embed_dim, patch_size, n_blocks = 4, 2, 1

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.proj = torch.nn.Linear(3, 4)
        self.calls = 0

    def forward_features(self, x, masks=None):
        self.calls += 1
        return {"x_norm_clstoken": self.proj(x.mean(dim=(2, 3)))}


@pytest.fixture(autouse=True)
def _fresh_memo():
    F.clear_memory_cache()
    yield
    F.clear_memory_cache()


def _folder(root, seed):
    rng = np.random.default_rng(seed)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def _run(model, ds, cache):
    return F.extract_features(model, ds, batch_size=8, cache_dir=cache, show_progress=False)["cls"]


def test_replaced_files_under_the_same_names_are_recomputed(tmp_path):
    """The reported bug: every val image replaced under the same name, yet "cache hit" and stale numbers."""
    root, cache, model = _folder(tmp_path / "d", 0), tmp_path / "cache", _Mean()
    first = _run(model, ImageFolder(root, transform=eval_transform(8)), cache)
    F.clear_memory_cache()
    assert torch.equal(_run(model, ImageFolder(root, transform=eval_transform(8)), cache), first)
    assert model.calls == 1  # a true hit
    _folder(root, 1)  # same names, other pixels
    F.clear_memory_cache()
    again = _run(model, ImageFolder(root, transform=eval_transform(8)), cache)
    assert model.calls == 2 and not torch.equal(again, first)


def test_inode_size_and_mtime_each_change_the_fingerprint(tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(b"1234")
    fp = F.files_fingerprint([str(p)])
    assert F.files_fingerprint([str(p)]) == fp  # reading does not change it
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert F.files_fingerprint([str(p)]) != fp
    fp2 = F.files_fingerprint([str(p)])
    p.write_bytes(b"12345")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert F.files_fingerprint([str(p)]) != fp2  # size
    fp3 = F.files_fingerprint([str(p)])
    (tmp_path / "y").write_bytes(b"12345")
    os.replace(tmp_path / "y", p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert F.files_fingerprint([str(p)]) != fp3  # same size and mtime, another inode (a replaced file)
    p.unlink()
    assert F.files_fingerprint([str(p)]) != fp3  # a deleted file


def test_other_weights_another_size_and_code_version_are_recomputed(tmp_path, monkeypatch):
    root, cache = _folder(tmp_path / "d", 0), tmp_path / "cache"
    model = _Mean(0)
    base = _run(model, ImageFolder(root, transform=eval_transform(8)), cache)
    other = _Mean(1)  # other weights
    assert not torch.equal(_run(other, ImageFolder(root, transform=eval_transform(8)), cache), base)
    assert other.calls == 1
    F.clear_memory_cache()
    _run(model, ImageFolder(root, transform=eval_transform(10)), cache)  # another size
    assert model.calls == 2
    F.clear_memory_cache()
    _run(model, ImageFolder(root, transform=eval_transform(8)), cache)  # back: a hit
    assert model.calls == 2
    F.clear_memory_cache()
    monkeypatch.setattr(F, "CACHE_FORMAT", F.CACHE_FORMAT + 1)  # new code
    _run(model, ImageFolder(root, transform=eval_transform(8)), cache)
    assert model.calls == 3
    assert len(list(cache.glob("*.pt"))) == 4


def test_readers_without_a_sample_list_fingerprint_their_root(tmp_path):
    """A reader with only a `root` (e.g. a torchvision fine-grained set): every file below it counts."""

    class RootOnly(torch.utils.data.Dataset):
        def __init__(self, root):
            self.root = root

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return torch.zeros(3, 4, 4), 0

    root = _folder(tmp_path / "d", 0)
    k = F.cache_key(_Mean(), RootOnly(root), "cls")
    _folder(root, 1)
    assert F.cache_key(_Mean(), RootOnly(root), "cls") != k


def test_a_failed_cache_write_leaves_no_entry(tmp_path, monkeypatch):
    """A full disk while saving: no entry under the key (a later run recomputes), no temporary file left."""
    import errno

    root, cache, model = _folder(tmp_path / "d", 0), tmp_path / "cache", _Mean()

    def full_disk(obj, f, *a, **k):
        open(f, "wb").write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space"):
        _run(model, ImageFolder(root, transform=eval_transform(8)), cache)
    assert list(cache.iterdir()) == []
    monkeypatch.undo()
    F.clear_memory_cache()
    _run(model, ImageFolder(root, transform=eval_transform(8)), cache)
    assert model.calls == 2 and len(list(cache.glob("*.pt"))) == 1


def test_an_edit_to_the_feature_code_misses_the_cache(tmp_path, monkeypatch):
    """A development checkout between releases: editing a module that decides the numbers (here a stand-in
    module on sys.path) changes `code_version()`, so features computed by the old code are not reused."""
    import sys

    pkg = tmp_path / "src"
    pkg.mkdir()
    (pkg / "feature_code_stand_in.py").write_text("SCALE = 1\n")
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.setattr(F, "FEATURE_SOURCES", F.FEATURE_SOURCES + ("feature_code_stand_in",))
    F.source_digest.cache_clear()
    before = F.code_version()
    assert before == F.code_version()  # stable while nothing changes
    (pkg / "feature_code_stand_in.py").write_text("SCALE = 2\n")
    F.source_digest.cache_clear()  # a new process
    assert F.code_version() != before

    root, cache = _folder(tmp_path / "d", 0), tmp_path / "cache"
    model = _Mean(0)
    _run(model, ImageFolder(root, transform=eval_transform(8)), cache)
    F.clear_memory_cache()
    (pkg / "feature_code_stand_in.py").write_text("SCALE = 3\n")
    F.source_digest.cache_clear()
    _run(model, ImageFolder(root, transform=eval_transform(8)), cache)
    assert model.calls == 2  # recomputed, not read from the cache of the other code
    sys.modules.pop("feature_code_stand_in", None)
    F.source_digest.cache_clear()


def test_the_feature_sources_exist():
    """Every module named as deciding the numbers is a real module with readable source."""
    import importlib.util

    for name in F.FEATURE_SOURCES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin and Path(spec.origin).is_file(), name
