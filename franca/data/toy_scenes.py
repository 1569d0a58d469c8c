"""Scene renderers of the synthetic data set: one function per task, pure (rng in, arrays out).

- `render_classification`: one large object of the given class (plus tiny distractors).
- `render_segmentation`: several objects, per-pixel labels (class + 1, 0 background, 255 on
  label boundaries as in Pascal VOC).
- `render_depth`: objects standing on a ground plane seen in perspective; depth in metres of
  a known geometry, nearer objects painted last, so occlusion order equals depth order.
- `render_pair`: the same object in two images related by a known similarity/affine map whose
  strength sets the viewpoint-variation level 0/1/2; keypoints are the shape's corners mapped
  by each image's placement matrix.

The dense scenes (segmentation, depth, pairs) are `ToyStyle.dense_size` = `dense_scale` x `size` a
side, so a backbone evaluated at that size has several patch tokens per object. In the current
layout (`dense_version` 2) segmentation objects are `dense_object_size` of the side and do not
overlap, the ignore band on label edges is one pixel (on the background side), and a keypoint pair
shows two instances of its class (same shape, each painted afresh) as SPair's pairs do.
`dense_version=1, dense_scale=1` renders TOY_VERSION 1's dense scenes byte for byte (objects of
0.22-0.45 of the side that may overlap, a 2-px ignore band on both sides of every edge, one colour
for both objects of a pair).

Every renderer takes a `domain` (`franca.data.toy_domains`: `shapes`, the default, or `textures`), which
says per object which silhouette to draw and how to paint it; the layout of the scenes is the same.

`franca.data.toy` writes these to disk in the real data sets' layouts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from franca.data.toy_domains import DEFAULT_DOMAIN, ToyDomain, get_domain, paint_random_colour
from franca.data.toy_shapes import (
    SHAPES,
    affine,
    apply_affine,
    background,
    compose,
    random_colour,
    rasterize,
    to_uint8,
)


@dataclass(frozen=True)
class ToyStyle:
    """Difficulty knobs. The defaults are the harder set of `franca data toy` (rotated objects, clutter,
    distractors); `franca.data.toy.BUILTIN_TOY` (upright, calm, 32 px) is the one a tiny ViT learns in
    minutes on 2 cores (benchmarks/toy_separability.py)."""

    size: int = 64
    """Image side in pixels."""
    n_classes: int = 10
    """Number of shape classes (at most len(SHAPES) = 12)."""
    object_size: tuple[float, float] = (18 / 64, 26 / 64)
    """Range of the main object's diameter as a fraction of the image side (classification)."""
    clutter: float = 0.5
    """Background noise amplitude in [0, 1]."""
    texture: float = 0.5
    """Probability that an object is painted with a pattern instead of a flat colour."""
    distractors: int = 2
    """At most this many tiny blobs (diameter <= 0.1 of the side) per classification image."""
    rotate: bool = True
    """Random in-plane rotation of objects."""
    seg_objects: tuple[int, int] = (2, 4)
    """Range of the number of objects in segmentation and depth scenes."""
    dense_scale: int = 2
    """Side of the dense scenes (segmentation, depth, keypoint pairs) as a multiple of `size`."""
    dense_object_size: tuple[float, float] = (0.35, 0.6)
    """Range of the diameter of segmentation objects as a fraction of `dense_size` (dense_version 2)."""
    dense_version: int = 2
    """Layout of the dense scenes: 2 (the current one, see the module docstring) or 1 (TOY_VERSION 1's)."""

    @property
    def dense_size(self) -> int:
        """Side in pixels of the segmentation, depth and keypoint-pair images."""
        return self.size * self.dense_scale

    def __post_init__(self) -> None:
        if not 2 <= self.n_classes <= len(SHAPES):
            raise ValueError(f"n_classes must be in [2, {len(SHAPES)}], got {self.n_classes}")
        lo, hi = self.object_size
        if not 0 < lo <= hi <= 0.95:
            raise ValueError(f"object_size must satisfy 0 < min <= max <= 0.95, got {self.object_size}")
        if not 0 <= self.clutter <= 1 or not 0 <= self.texture <= 1:
            raise ValueError(f"clutter and texture must be in [0, 1], got {self.clutter}, {self.texture}")
        if self.size < 16:
            raise ValueError(f"size must be >= 16 pixels, got {self.size}")
        if not 1 <= self.dense_scale <= 8 or self.dense_version not in (1, 2):
            raise ValueError(
                f"dense_scale must be in [1, 8] and dense_version 1 or 2, got {self.dense_scale}, {self.dense_version}"
            )


def _place(rng: np.random.Generator, style: ToyStyle, diameter: float, side: int | None = None) -> np.ndarray:
    r = diameter / 2
    lo, hi = r, (side or style.size) - r
    cx, cy = rng.uniform(lo, max(lo, hi), size=2)
    angle = rng.uniform(0, 2 * np.pi) if style.rotate else 0.0
    return affine((cx, cy), r, angle, aspect=rng.uniform(0.87, 1.15))


def _domain(domain: ToyDomain | str) -> ToyDomain:
    return get_domain(domain) if isinstance(domain, str) else domain


def render_classification(
    rng: np.random.Generator, cls: int, style: ToyStyle, domain: ToyDomain | str = DEFAULT_DOMAIN
) -> np.ndarray:
    """(size, size, 3) uint8 image of one object of class `cls` on a textured background (distractors:
    small shapes in a random colour, whatever the domain)."""
    dom = _domain(domain)
    s = style.size
    img = background(rng, s, style.clutter)
    for _ in range(int(rng.integers(0, style.distractors + 1))):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        m = _place(rng, style, rng.uniform(0.05, 0.1) * s)
        img = paint_random_colour(rng, img, rasterize(shape, m, s), style)
    m = _place(rng, style, rng.uniform(*style.object_size) * s)
    img = dom.paint(rng, img, rasterize(dom.silhouette(rng, cls), m, s), cls, style)
    return to_uint8(img)


def _neighbour_differs(label: np.ndarray, fg_only: bool = False) -> np.ndarray:
    """Pixels with a 4-neighbour of another label (with `fg_only`: of another non-zero label)."""
    edge = np.zeros(label.shape, dtype=bool)
    for a, b in (
        ((slice(1, None), slice(None)), (slice(None, -1), slice(None))),
        ((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
    ):
        diff = label[a] != label[b]
        edge[a] |= diff & (label[b] != 0) if fg_only else diff
        edge[b] |= diff & (label[a] != 0) if fg_only else diff
    return edge


def label_boundaries(label: np.ndarray, ignore: int = 255, width: int = 2) -> np.ndarray:
    """Set to `ignore` the pixels along label edges: `width` 2 marks both sides of every edge (each pixel
    with a 4-neighbour of another label); `width` 1 marks one side, the background pixels next to an
    object and the pixels of objects touching another object."""
    if width == 2:
        edge = _neighbour_differs(label)
    elif width == 1:
        edge = np.where(label == 0, _neighbour_differs(label), _neighbour_differs(label, fg_only=True))
    else:
        raise ValueError(f"boundary width must be 1 or 2, got {width}")
    out = label.copy()
    out[edge] = ignore
    return out


@dataclass
class SceneObject:
    """One placed object: its class, full silhouette (before occlusion), placement and depth."""

    cls: int
    mask: np.ndarray
    matrix: np.ndarray
    depth: float = 0.0


def render_segmentation(
    rng: np.random.Generator, style: ToyStyle, domain: ToyDomain | str = DEFAULT_DOMAIN
) -> tuple[np.ndarray, np.ndarray, list[SceneObject]]:
    """A scene of several objects: (image uint8 HxWx3, label uint8 HxW, objects in paint order).

    Label = class index + 1 where the object is visible, 0 background, 255 on boundaries.
    Version 2 scenes (`ToyStyle.dense_version`) draw objects of `dense_object_size` and place each with
    its nominal bounding circle clear of the ones before (20 tries; an object that finds no room is left
    out), so silhouettes are whole (the built-in set: 1-3 objects a scene, 2 % of scenes with objects
    touching by a few pixels, where the aspect jitter pushes a corner past the circle).
    """
    dom = _domain(domain)
    s = style.dense_size
    img = background(rng, s, style.clutter)
    label = np.zeros((s, s), dtype=np.uint8)
    objects = []
    placed: list[tuple[float, float, float]] = []  # (cx, cy, radius) of the objects so far
    for _ in range(int(rng.integers(style.seg_objects[0], style.seg_objects[1] + 1))):
        cls = int(rng.integers(style.n_classes))
        if style.dense_version == 1:
            m = _place(rng, style, rng.uniform(0.22, 0.45) * s, s)
        else:
            d = rng.uniform(*style.dense_object_size) * s
            for _ in range(20):
                m = _place(rng, style, d, s)
                if all(np.hypot(m[0, 2] - x, m[1, 2] - y) > d / 2 + r + 1 for x, y, r in placed):
                    break
            else:
                continue  # no room left: the scene keeps the objects it has
            placed.append((m[0, 2], m[1, 2], d / 2))
        mask = rasterize(dom.silhouette(rng, cls), m, s)
        img = dom.paint(rng, img, mask, cls, style)
        label[mask] = cls + 1
        objects.append(SceneObject(cls, mask, m))
    return to_uint8(img), label_boundaries(label, width=2 if style.dense_version == 1 else 1), objects


HORIZON = 0.35  # horizon row as a fraction of the image height
FAR_DEPTH = 8.0  # metres: the wall beyond the ground plane


def ground_depth(size: int) -> np.ndarray:
    """Per-row depth (metres) of the scene without objects: a wall at FAR_DEPTH above the horizon,
    a ground plane below it whose depth falls as 1/(row - horizon), reaching 1 m at the bottom row."""
    h = HORIZON * size
    rows = np.arange(size) + 0.5
    d = (size - h) / np.maximum(rows - h, 1e-6)
    return np.minimum(np.where(rows > h, d, FAR_DEPTH), FAR_DEPTH)


def render_depth(
    rng: np.random.Generator, style: ToyStyle, domain: ToyDomain | str = DEFAULT_DOMAIN
) -> tuple[np.ndarray, np.ndarray, list[SceneObject]]:
    """(image uint8, depth float32 metres, objects) of upright objects standing on the ground plane.

    An object at depth d stands on the row where the ground has depth d, its size is
    proportional to 1/d, and its surface is fronto-parallel (constant depth). Objects are
    painted far to near, so nearer ones occlude farther ones.
    """
    dom = _domain(domain)
    s = style.dense_size
    h = HORIZON * s
    img = background(rng, s, style.clutter)
    rows = np.arange(s)[:, None] + 0.5
    ground = (rows > h)[..., None]
    img = np.where(ground, 0.6 * img + 0.4 * background(rng, s, style.clutter), img)
    depth = np.repeat(ground_depth(s)[:, None], s, axis=1)
    n = int(rng.integers(style.seg_objects[0], style.seg_objects[1] + 1))
    ds = np.sort(rng.uniform(1.2, 4.5, size=n))[::-1]  # far first
    objects = []
    for d in ds:
        cls = int(rng.integers(style.n_classes))
        radius = 0.5 * s * 0.7 / d  # apparent size ~ 1/depth
        base_row = h + (s - h) / d  # the ground row whose depth is d
        cx = rng.uniform(radius, s - radius)
        m = affine((cx, base_row - radius), radius, rng.uniform(-0.3, 0.3), aspect=1.0)
        mask = rasterize(dom.silhouette(rng, cls), m, s)
        img = dom.paint(rng, img, mask, cls, style)
        depth[mask] = d
        objects.append(SceneObject(cls, mask, m, depth=float(d)))
    return to_uint8(img), depth.astype(np.float32), objects


# Viewpoint-variation levels: (max |rotation| in degrees, scale range, max aspect change).
VIEWPOINT_LEVELS = ((10.0, (0.9, 1.1), 0.0), (45.0, (0.75, 1.3), 0.1), (120.0, (0.6, 1.6), 0.25))


def pair_transform(rng: np.random.Generator, level: int) -> tuple[float, float, float]:
    """(rotation radians, scale, aspect) of a viewpoint change of the given level 0/1/2."""
    max_rot, (s_lo, s_hi), max_aspect = VIEWPOINT_LEVELS[level]
    lo_rot = 0.0 if level == 0 else VIEWPOINT_LEVELS[level - 1][0]
    rot = np.deg2rad(rng.uniform(lo_rot, max_rot)) * rng.choice([-1.0, 1.0])
    return float(rot), float(rng.uniform(s_lo, s_hi)), float(1.0 + rng.uniform(-max_aspect, max_aspect))


def render_pair(
    rng: np.random.Generator, cls: int, level: int, style: ToyStyle, domain: ToyDomain | str = DEFAULT_DOMAIN
) -> dict:
    """Two images of one object of class `cls` under a known map T (target = T ∘ source).

    Returns a dict with `src`/`trg` images, `src_mask`/`trg_mask`, `src_kps`/`trg_kps` (K, 2)
    pixel coordinates (x, y), and `transform` the 2x3 pixel map from source to target.
    Each image has its own background. In dense_version 2 each object is painted afresh (colour and
    texture), like SPair's two instances of a category; in version 1 the object keeps its colour. The
    keypoints are the corners of the silhouette the domain draws (in the textures domain a random one,
    the same in both images).
    """
    dom = _domain(domain)
    if style.dense_version == 1 and dom.name != DEFAULT_DOMAIN:
        raise ValueError(f"dense_version 1 renders the shapes domain only, not {dom.name!r}")
    s = style.dense_size
    shape = dom.silhouette(rng, cls)
    radius = rng.uniform(0.2, 0.3) * s
    src_m = _place(rng, style, 2 * radius, s)
    rot, scale, aspect = pair_transform(rng, level)
    radius_t = min(radius * scale * max(aspect, 1 / aspect), 0.47 * s)
    scale = radius_t / (radius * max(aspect, 1 / aspect))
    c_src = src_m[:, 2]
    c_trg = rng.uniform(radius_t, s - radius_t, size=2)
    lin = affine((0.0, 0.0), scale, rot, aspect)[:, :2]
    t = np.concatenate([lin, (c_trg - lin @ c_src)[:, None]], axis=1)
    trg_m = compose(t, src_m)
    colour = random_colour(rng) if style.dense_version == 1 else None
    out: dict = {"transform": t}
    for key, m in (("src", src_m), ("trg", trg_m)):
        img = background(rng, s, style.clutter)
        mask = rasterize(shape, m, s)
        if colour is not None:
            img = np.where(mask[..., None], colour, img)
        else:  # two instances of the class, as SPair pairs are: the same shape, each its own paint
            img = dom.paint(rng, img, mask, cls, style)
        out[key], out[f"{key}_mask"], out[f"{key}_kps"] = to_uint8(img), mask, apply_affine(m, shape.keypoints)
    return out
