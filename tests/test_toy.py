"""The synthetic data set: deterministic bytes, labels consistent with the pixels, cached generation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from franca.data.toy import ensure_toy, generate_toy, toy_key
from franca.data.toy_scenes import ToyStyle, ground_depth, render_depth, render_pair, render_segmentation
from franca.data.toy_shapes import SHAPES

TINY = dict(size=32, n_train=20, n_val=10, n_seg=(3, 2), n_depth=(3, 2), n_pairs=(3, 2, 3), progress=False)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _dilate(m: np.ndarray) -> np.ndarray:
    """3x3 binary dilation."""
    p = np.pad(m, 1)
    return np.any(
        [p[1 + dy : 1 + dy + m.shape[0], 1 + dx : 1 + dx + m.shape[1]] for dy in (-1, 0, 1) for dx in (-1, 0, 1)],
        axis=0,
    )


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    """Two runs with one seed write identical files; another seed changes the images."""
    a = _digest(generate_toy(tmp_path / "a", seed=3, **TINY))
    b = _digest(generate_toy(tmp_path / "b", seed=3, **TINY))
    c = _digest(generate_toy(tmp_path / "c", seed=4, **TINY))
    assert a == b
    jpgs = [k for k in a if k.endswith(".JPEG")]
    assert len(jpgs) == 30 and all(k in c for k in jpgs)
    assert sum(a[k] != c[k] for k in jpgs) == len(jpgs)


def test_layout_and_labels_file(tmp_path):
    """ImageNet folders are balanced over classes and labels.txt lists 'wnid,name' per class."""
    root = generate_toy(tmp_path / "t", n_classes=10, **TINY)
    lines = (root / "imagenet" / "labels.txt").read_text().splitlines()
    assert lines[0] == "n00000000,disk" and len(lines) == 10
    counts = [len(list((root / "imagenet" / "train" / f"n{c:08d}").glob("*.JPEG"))) for c in range(10)]
    assert counts == [2] * 10  # 20 images, 10 classes, i % 10
    meta = json.loads((root / "toy.json").read_text())
    assert meta["classes"][:3] == ["disk", "square", "triangle"]
    with pytest.raises(ValueError, match="not empty"):
        generate_toy(root, **TINY)


@pytest.mark.parametrize("version", [1, 2])
def test_segmentation_masks_cover_objects(version):
    """Each object's visible pixels carry its class + 1 (or 255 on a boundary); the label map equals
    an independently painted top-object map except on boundaries, which lie on label changes:
    both sides of every edge in version 1, the background side in version 2."""
    style = ToyStyle(size=48, dense_version=version)
    for i in range(5):
        img, label, objects = render_segmentation(np.random.default_rng(i), style)
        top = np.zeros(label.shape, dtype=np.int64)
        for k, obj in enumerate(objects):
            visible = obj.mask.copy()
            for later in objects[k + 1 :]:
                visible &= ~later.mask
            assert visible.any() or not obj.mask.any()
            assert np.isin(label[visible], [obj.cls + 1, 255]).all()
            top[obj.mask] = obj.cls + 1  # painter's order: later objects cover earlier ones
        known = label != 255
        np.testing.assert_array_equal(label[known], top[known])
        # A boundary pixel has a 4-neighbour of another class in the oracle map.
        p = np.pad(top, 1, mode="edge")
        changes = (
            (p[1:-1, 1:-1] != p[:-2, 1:-1])
            | (p[1:-1, 1:-1] != p[2:, 1:-1])
            | (p[1:-1, 1:-1] != p[1:-1, :-2])
            | (p[1:-1, 1:-1] != p[1:-1, 2:])
        )
        if version == 1:
            np.testing.assert_array_equal(label == 255, changes)
        else:
            np.testing.assert_array_equal(label == 255, changes & (top == 0))
            shared = sum((a.mask & b.mask).sum() for k, a in enumerate(objects) for b in objects[k + 1 :])
            assert shared <= 0.02 * sum(o.mask.sum() for o in objects)  # placed clear of each other
        assert (label == 0).any() and (label == 255).any()


def test_dense_scenes_v2_layout():
    """Version 2 dense scenes are dense_scale x size a side; segmentation objects are dense_object_size of
    that side; a pair's two objects are painted independently (two instances of the class)."""
    style = ToyStyle(size=32, object_size=(0.45, 0.7), distractors=0, rotate=False, clutter=0.2)
    assert style.dense_size == 64
    diam, colour_gap = [], []
    for i in range(20):
        img, label, objects = render_segmentation(np.random.default_rng(i), style)
        assert img.shape == (64, 64, 3) and label.shape == (64, 64)
        for obj in objects:
            ys, xs = np.nonzero(obj.mask)
            diam.append(max(np.ptp(xs), np.ptp(ys)) + 1)
        img, depth, _ = render_depth(np.random.default_rng(i), style)
        assert img.shape == (64, 64, 3) and depth.shape == (64, 64)
        p = render_pair(np.random.default_rng(i), i % style.n_classes, i % 3, style)
        assert p["src"].shape == (64, 64, 3)
        colour_gap.append(np.abs(np.median(p["src"][p["src_mask"]], 0) - np.median(p["trg"][p["trg_mask"]], 0)).sum())
    assert 0.3 * 64 <= np.median(diam) <= 0.6 * 64
    assert np.median(colour_gap) > 30  # version 1 used one colour for both


def test_dense_version_1_renders_toy_version_1():
    """dense_scale=1, dense_version=1 reproduces TOY_VERSION 1's dense renderers exactly (digest of the
    outputs of franca/data/toy_scenes.py at commit 7db9637 for these generators)."""
    style = ToyStyle(size=32, dense_scale=1, dense_version=1)
    d = hashlib.sha1()
    for i in range(4):
        img, lab, _ = render_segmentation(np.random.default_rng(i), style)
        img2, dep, _ = render_depth(np.random.default_rng(i), style)
        p = render_pair(np.random.default_rng(i), i, i % 3, style)
        for a in (img, lab, img2, dep, p["src"], p["trg"], p["src_kps"], p["trg_kps"]):
            d.update(np.ascontiguousarray(a).tobytes())
    assert d.hexdigest()[:16] == "fa5919c39c456fe9"


def test_dense_knobs_leave_classification_images_unchanged(tmp_path):
    """The classification part (what the tiny preset trains on) does not depend on the dense layout."""
    kw = dict(TINY, size=32, object_size=(0.45, 0.7), distractors=0, rotate=False, clutter=0.2)
    a = _digest(generate_toy(tmp_path / "a", **kw))
    b = _digest(generate_toy(tmp_path / "b", dense_scale=1, dense_version=1, **kw))
    cls = [k for k in a if k.startswith("imagenet")]
    assert len(cls) == 31 and all(a[k] == b[k] for k in cls)
    assert any(a[k] != b[k] for k in a if k.startswith("VOCdevkit") and k.endswith(".png"))
    img = Image.open(tmp_path / "a" / "VOCdevkit" / "VOC2012" / "JPEGImages" / "toy_train_000000.jpg")
    assert img.size == (64, 64)
    assert Image.open(next((tmp_path / "a" / "imagenet" / "train").rglob("*.JPEG"))).size == (32, 32)


def test_keypoints_follow_the_transform():
    """Target keypoints = T(source keypoints) within 1 px, T maps the source silhouette onto the
    target one, and each keypoint touches its object (shape corners lie on the outline)."""
    style = ToyStyle(size=32)  # dense scenes 64 px a side
    for i in range(6):
        cls, level = i % style.n_classes, i % 3
        p = render_pair(np.random.default_rng(i), cls, level, style)
        t = p["transform"]
        mapped = p["src_kps"] @ t[:, :2].T + t[:, 2]
        assert np.abs(mapped - p["trg_kps"]).max() < 1.0
        # Warp the source mask by T (inverse mapping, nearest pixel centres) and compare.
        inv = np.linalg.inv(np.vstack([t, [0, 0, 1]]))
        yy, xx = np.mgrid[0:64, 0:64] + 0.5
        sx = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2]
        sy = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2]
        ok = (sx >= 0) & (sx < 64) & (sy >= 0) & (sy < 64)
        warped = np.zeros((64, 64), dtype=bool)
        warped[ok] = p["src_mask"][sy[ok].astype(int), sx[ok].astype(int)]
        # Rasterisation may move the outline by up to a pixel: compare each with the other dilated.
        assert (warped & ~_dilate(p["trg_mask"])).sum() <= 0.02 * warped.sum()
        assert (p["trg_mask"] & ~_dilate(warped)).sum() <= 0.02 * p["trg_mask"].sum()
        assert (warped & p["trg_mask"]).sum() >= 0.7 * p["trg_mask"].sum()
        for key in ("src", "trg"):
            ys, xs = np.nonzero(p[f"{key}_mask"])
            d = np.hypot(xs[None] + 0.5 - p[f"{key}_kps"][:, :1], ys[None] + 0.5 - p[f"{key}_kps"][:, 1:])
            assert d.min(axis=1).max() <= 1.5


def test_depth_matches_occlusion():
    """Where objects overlap, the visible one is the nearest (depth = min of the covering objects);
    elsewhere depth is the known ground/wall geometry."""
    style = ToyStyle(size=32)  # dense scenes 64 px a side
    overlaps = 0
    for i in range(12):
        img, depth, objects = render_depth(np.random.default_rng(i), style)
        nearest = np.full(depth.shape, np.inf)
        for obj in objects:
            nearest[obj.mask] = np.minimum(nearest[obj.mask], obj.depth)
        on_obj = np.isfinite(nearest)
        np.testing.assert_allclose(depth[on_obj], nearest[on_obj], rtol=1e-6)
        base = np.repeat(ground_depth(64)[:, None], 64, axis=1)
        np.testing.assert_allclose(depth[~on_obj], base[~on_obj], rtol=1e-6)
        overlaps += sum((a.mask & b.mask).any() for k, a in enumerate(objects) for b in objects[k + 1 :])
    assert overlaps > 0  # the check above was exercised on real occlusions
    # Ground geometry: 1 m at the bottom row, farther towards the horizon, the wall above it.
    g = ground_depth(64)
    # bottom row centre 63.5, horizon 0.35 * 64 = 22.4: depth = (64 - 22.4) / (63.5 - 22.4) = 41.6 / 41.1
    assert g[-1] == pytest.approx(41.6 / 41.1, rel=1e-9)
    assert np.all(np.diff(g[g < 8.0]) < 0) and g[0] == 8.0


def test_ensure_toy_caches_atomically(tmp_path, monkeypatch):
    """ensure_toy generates once into toy-<hash> under $FRANCA_DATA and leaves no temp folder."""
    monkeypatch.setenv("FRANCA_DATA", str(tmp_path))
    kw = dict(size=32, n_train=10, n_val=10, n_seg=(2, 2), n_depth=(2, 2), n_pairs=(2, 2, 2))
    root = ensure_toy(**kw)
    assert root == tmp_path / f"toy-{toy_key(**kw)}" and (root / "toy.json").is_file()
    stamp = (root / "toy.json").stat().st_mtime_ns
    assert ensure_toy(**kw) == root and (root / "toy.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [root.name]
    assert toy_key(**kw) != toy_key(**{**kw, "seed": 1})
    # The key is of the resolved parameters: spelling out a default names the same set.
    assert toy_key() == toy_key(size=64, n_classes=ToyStyle().n_classes, clutter=ToyStyle().clutter)


def test_shapes_are_distinct_silhouettes():
    """No two classes share a silhouette: rasterised at the same placement they differ in >= 8 % of pixels."""
    from franca.data.toy_shapes import affine, rasterize

    m = affine((32, 32), 28, 0.3)
    masks = [rasterize(s, m, 64) for s in SHAPES]
    for a in range(len(masks)):
        for b in range(a + 1, len(masks)):
            assert (masks[a] ^ masks[b]).mean() > 0.08, (SHAPES[a].name, SHAPES[b].name)


def test_tiny_preset_trains_on_the_builtin_set() -> None:
    """`franca pretrain` (tiny) and the evaluation commands given no data read the same toy set."""
    from franca.data.toy import BUILTIN_TOY, toy_key
    from franca.train.config import load_config

    cfg = load_config("tiny")
    assert not cfg.data.toy_n_train and not cfg.data.toy_n_val
    kw = {"size": cfg.data.toy_size, "seed": cfg.data.toy_seed, **dict(cfg.data.toy_options)}
    assert toy_key(**kw) == toy_key(**BUILTIN_TOY)
    assert toy_key(**BUILTIN_TOY) != toy_key()  # and it is not the generator's default style


def test_builtin_set_paints_objects_flat():
    """BUILTIN_TOY has texture 0: every object is one colour (patterned objects gave the tiny preset's teacher
    a cue to cluster on that is not the class; docs/training.md, fourth round)."""
    from franca.data.toy import BUILTIN_TOY
    from franca.data.toy_shapes import object_fill

    style = ToyStyle(**BUILTIN_TOY)
    assert style.texture == 0.0
    for i in range(50):
        fill = object_fill(np.random.default_rng(i), 32, np.array([10.0, 120.0, 250.0]), style.texture)
        assert np.ptp(fill.reshape(-1, 3), axis=0).max() == 0
    patterned = [
        np.ptp(
            object_fill(np.random.default_rng(i), 32, np.array([10.0, 120.0, 250.0]), 0.5).reshape(-1, 3), axis=0
        ).max()
        > 0
        for i in range(50)
    ]
    assert 10 < sum(patterned) < 40  # the generator's default style still patterns about half
