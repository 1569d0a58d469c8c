"""The second built-in domain (textures): the class is the paint's pattern, the layouts are the shapes set's."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from franca.data.toy import BUILTIN_TOY, builtin_options, ensure_toy, generate_toy, toy_key
from franca.data.toy_domains import DOMAINS, SILHOUETTES, get_domain
from franca.data.toy_scenes import ToyStyle, render_classification, render_depth, render_pair, render_segmentation
from franca.data.toy_shapes import SHAPES
from franca.data.toy_textures import MIN_LUMA_GAP, TEXTURES, luma, texture_colours, texture_fill

TINY = dict(size=32, n_train=20, n_val=10, n_seg=(3, 2), n_depth=(3, 2), n_pairs=(3, 2, 3), progress=False)
CLASS = {name: i for i, (name, _) in enumerate(TEXTURES)}


def _digest(root):
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.*"))}


def test_shapes_sets_keep_their_cache_names_and_bytes():
    """The default domain is left out of the cache key: the built-in set is the folder it was (hash computed
    before domains existed), and its images are the same bytes (digest of 3 images rendered before)."""
    assert toy_key(**BUILTIN_TOY) == "77503b20d5f9"
    assert toy_key(**BUILTIN_TOY, domain="shapes") == toy_key(**BUILTIN_TOY)
    assert toy_key(**builtin_options("textures")) != toy_key(**BUILTIN_TOY)
    style = ToyStyle(size=32, texture=0.5, distractors=2)  # patterned paint and distractors: every draw
    d = hashlib.sha1()
    for i in range(3):
        d.update(render_classification(np.random.default_rng([0, 1, i]), i, style).tobytes())
        img, label, _ = render_segmentation(np.random.default_rng(i), style)
        d.update(img.tobytes() + label.tobytes())
        d.update(render_depth(np.random.default_rng(i), style)[0].tobytes())
        pair = render_pair(np.random.default_rng(i), i, i % 3, style)
        d.update(pair["src"].tobytes() + pair["trg"].tobytes())
    assert d.hexdigest()[:16] == "9771b83ecfdc7267"


def test_textures_set_layout_labels_and_determinism(tmp_path):
    """Same layouts and sizes as the shapes set, texture class names, the same bytes for the same seed,
    other images than the shapes set."""
    a = generate_toy(tmp_path / "a", domain="textures", **TINY)
    b = generate_toy(tmp_path / "b", domain="textures", **TINY)
    s = generate_toy(tmp_path / "s", **TINY)
    da, db, ds = _digest(a), _digest(b), _digest(s)
    assert da == db
    # every file of the shapes set and no other (SPair-71k names its folders by category)
    assert {k for k in da if "SPair" not in k} == {k for k in ds if "SPair" not in k} and len(da) == len(ds)
    jpgs = [k for k in da if k.endswith((".JPEG", ".jpg")) and "SPair" not in k]
    assert sum(da[k] != ds[k] for k in jpgs) == len(jpgs)
    assert (a / "imagenet" / "labels.txt").read_text().splitlines()[:2] == [
        "n00000000,stripes_h",
        "n00000001,stripes_v",
    ]
    meta = json.loads((a / "toy.json").read_text())
    assert meta["domain"] == "textures" and meta["classes"][:3] == ["stripes_h", "stripes_v", "stripes_diagonal"]
    assert (a / "VOCdevkit" / "VOC2012" / "classes.txt").read_text().splitlines()[:2] == ["background", "stripes_h"]
    assert (a / "SPair-71k" / "JPEGImages" / "checker").is_dir()


def test_ensure_toy_caches_each_domain_apart(tmp_path):
    kw = dict(size=32, n_train=10, n_val=10, n_seg=(2, 2), n_depth=(2, 2), n_pairs=(2, 2, 2), progress=False)
    shapes = ensure_toy(tmp_path, **kw)
    textures = ensure_toy(tmp_path, domain="textures", **kw)
    assert shapes != textures and ensure_toy(tmp_path, domain="textures", **kw) == textures
    assert json.loads((textures / "toy.json").read_text())["domain"] == "textures"


def test_bad_domain_and_class_count_are_named():
    with pytest.raises(ValueError, match="unknown toy domain 'photos'; known: shapes, textures"):
        toy_key(domain="photos")
    with pytest.raises(ValueError, match="dense_version 1 renders the shapes domain only"):
        toy_key(domain="textures", dense_version=1, dense_scale=1)
    assert len(get_domain("textures").classes) == len(SHAPES) == 12


def test_patterns_have_their_class_geometry():
    """Horizontal stripes are constant along rows and change down the columns; vertical ones the other way;
    speckle changes almost everywhere; every pattern uses both colours."""

    def changes(a, axis):
        return float((np.diff(a, axis=axis) != 0).mean())

    for seed in range(5):
        fill = {n: texture_fill(np.random.default_rng(seed), CLASS[n], 32, 32)[..., 0] for n in CLASS}
        assert changes(fill["stripes_h"], 1) == 0 and changes(fill["stripes_h"], 0) > 0.1
        assert changes(fill["stripes_v"], 0) == 0 and changes(fill["stripes_v"], 1) > 0.1
        assert changes(fill["checker"], 0) > 0.1 and changes(fill["checker"], 1) > 0.1
        assert changes(fill["speckle"], 0) > 0.3 and changes(fill["speckle"], 1) > 0.3
        for n, f in fill.items():
            assert len(np.unique(f)) >= 2, n


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_pattern_colours_survive_grayscale(seed):
    """The two colours of a pattern differ in luma by MIN_LUMA_GAP or more (the tiny preset's crops are gray)."""
    c0, c1 = texture_colours(np.random.default_rng(seed))
    assert abs(luma(c0) - luma(c1)) >= MIN_LUMA_GAP
    assert all(0 <= v <= 255 for v in (*c0, *c1))


def test_textures_segmentation_labels_the_painted_pattern():
    """In a textures scene each object is a random compact silhouette, labelled with its texture class + 1."""
    style = ToyStyle(**BUILTIN_TOY)
    seen = set()
    for i in range(10):
        img, label, objects = render_segmentation(np.random.default_rng(i), style, "textures")
        for k, obj in enumerate(objects):
            visible = obj.mask.copy()
            for later in objects[k + 1 :]:
                visible &= ~later.mask
            assert np.isin(label[visible], [obj.cls + 1, 255]).all()
            seen.add(obj.cls)
    assert len(seen) >= 5
    p = render_pair(np.random.default_rng(3), CLASS["dots"], 1, style, "textures")
    assert p["src_kps"].shape == p["trg_kps"].shape and p["src_mask"].any() and p["trg_mask"].any()
    names = {SHAPES[i].name for i in SILHOUETTES}
    assert names == {"disk", "square", "triangle", "half_disk"}


def test_cli_writes_the_textures_domain(tmp_path):
    out = tmp_path / "tex"
    cmd = [sys.executable, "-m", "franca", "data", "toy", "--domain", "textures", "--out", str(out)]
    cmd += ["--size", "32", "--n-train", "20", "--n-val", "10", "--quiet"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert "(textures)" in res.stdout
    assert json.loads((out / "toy.json").read_text())["domain"] == "textures"
    assert set(DOMAINS) == {"shapes", "textures"}
