"""Shapes, textures and rasterisation for the built-in synthetic data set (`franca.data.toy`).

Every object class is a planar shape defined once in unit coordinates (centre 0, bounding
radius about 1) as a list of polygons, each either added to or cut out of the silhouette.
Class identity is carried by the silhouette alone: colours and textures are drawn at random,
so colour statistics say nothing about the class and a network must learn shape.

A shape is placed in an image by a 2x3 affine matrix (pixel coordinates); the same matrix
maps its keypoints, so keypoint annotations are exact by construction. Rasterisation uses
PIL's polygon fill (no anti-aliasing), so the binary mask is exactly the set of painted pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw


def _ngon(n: int, r: float = 1.0, phase: float = 0.0, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _star(points: int, r_out: float, r_in: float) -> np.ndarray:
    t = -np.pi / 2 + np.pi * np.arange(2 * points) / points
    r = np.where(np.arange(2 * points) % 2 == 0, r_out, r_in)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _poly(*xy: float) -> np.ndarray:
    return np.asarray(xy, dtype=np.float64).reshape(-1, 2)


@dataclass(frozen=True)
class Shape:
    """One object class: polygons (vertices in unit coordinates, True = add, False = cut) and keypoints."""

    name: str
    polygons: tuple[tuple[np.ndarray, bool], ...]
    keypoints: np.ndarray  # (K, 2) unit coordinates, a fixed order that defines keypoint ids


def _build_shapes() -> tuple[Shape, ...]:
    disk = _ngon(48, 0.95)
    cross_arm = 0.32
    plus = _poly(
        -cross_arm,
        -0.95,
        cross_arm,
        -0.95,
        cross_arm,
        -cross_arm,
        0.95,
        -cross_arm,
        0.95,
        cross_arm,
        cross_arm,
        cross_arm,
        cross_arm,
        0.95,
        -cross_arm,
        0.95,
        -cross_arm,
        cross_arm,
        -0.95,
        cross_arm,
        -0.95,
        -cross_arm,
        -cross_arm,
        -cross_arm,
    )
    ell = _poly(-0.75, -0.95, -0.2, -0.95, -0.2, 0.4, 0.75, 0.4, 0.75, 0.95, -0.75, 0.95)
    arrow = _poly(-0.95, -0.22, 0.15, -0.22, 0.15, -0.7, 0.95, 0.0, 0.15, 0.7, 0.15, 0.22, -0.95, 0.22)
    bowtie = _poly(-0.8, -0.9, 0.8, -0.9, 0.12, 0.0, 0.8, 0.9, -0.8, 0.9, -0.12, 0.0)
    letter_h = _poly(
        -0.85,
        -0.95,
        -0.4,
        -0.95,
        -0.4,
        -0.2,
        0.4,
        -0.2,
        0.4,
        -0.95,
        0.85,
        -0.95,
        0.85,
        0.95,
        0.4,
        0.95,
        0.4,
        0.2,
        -0.4,
        0.2,
        -0.4,
        0.95,
        -0.85,
        0.95,
    )
    half = np.concatenate([_ngon(48, 0.95)[:25], _poly(-0.95, 0.0)], axis=0)  # the lower half-disk
    square = _poly(-0.7, -0.7, 0.7, -0.7, 0.7, 0.7, -0.7, 0.7)
    triangle = _ngon(3, 0.98, -np.pi / 2)
    star = _star(5, 1.0, 0.42)
    eight = _ngon(8, 0.95)
    return (
        Shape("disk", ((disk, True),), eight),
        Shape("square", ((square, True),), square),
        Shape("triangle", ((triangle, True),), triangle),
        Shape("plus", ((plus, True),), plus),
        Shape("star", ((star, True),), star),
        Shape("ring", ((disk, True), (_ngon(48, 0.55), False)), eight),
        Shape(
            "crescent",
            ((disk, True), (_ngon(48, 0.8, cx=0.42), False)),
            _poly(0.13, -0.94, 0.13, 0.94, -0.95, 0.0, -0.67, -0.67, -0.67, 0.67),
        ),
        Shape("ell", ((ell, True),), ell),
        Shape("arrow", ((arrow, True),), arrow),
        Shape("bowtie", ((bowtie, True),), bowtie),
        Shape("letter_h", ((letter_h, True),), letter_h),
        Shape("half_disk", ((half, True),), _poly(0.95, 0.0, -0.95, 0.0, 0.0, 0.95, 0.67, 0.67, -0.67, 0.67)),
    )


SHAPES: tuple[Shape, ...] = _build_shapes()
MAX_CLASSES = len(SHAPES)


def affine(center: tuple[float, float], radius: float, angle: float, aspect: float = 1.0) -> np.ndarray:
    """2x3 matrix mapping unit shape coordinates to pixels: scale (radius·aspect, radius/aspect), rotate, translate."""
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    scale = np.diag([radius * aspect, radius / aspect])
    return np.concatenate([rot @ scale, np.asarray(center, dtype=np.float64).reshape(2, 1)], axis=1)


def compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The 2x3 affine a∘b (apply b first)."""
    a3 = np.vstack([a, [0, 0, 1]])
    b3 = np.vstack([b, [0, 0, 1]])
    return (a3 @ b3)[:2]


def apply_affine(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Map (K, 2) points by the 2x3 matrix m."""
    return pts @ m[:, :2].T + m[:, 2]


def rasterize(shape: Shape, m: np.ndarray, size: int) -> np.ndarray:
    """Binary (size, size) mask of `shape` placed by the pixel affine `m`.

    Pixel (i, j) covers [j, j+1) x [i, i+1); PIL fills polygons on pixel centres at integer
    coordinates, so vertices are shifted by -0.5 to make a pixel's centre (j+0.5, i+0.5).
    """
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for poly, add in shape.polygons:
        pts = apply_affine(m, poly) - 0.5
        draw.polygon([tuple(p) for p in pts.tolist()], fill=1 if add else 0)
    return np.asarray(canvas, dtype=bool)


# --------------------------------------------------------------------------------------- colours


def random_colour(rng: np.random.Generator, avoid: np.ndarray | None = None, min_dist: float = 150.0) -> np.ndarray:
    """A random RGB colour (float, 0..255), at L1 distance >= min_dist from `avoid` when given."""
    for _ in range(64):
        col = rng.uniform(0, 255, size=3)
        if avoid is None or np.abs(col - avoid).sum() >= min_dist:
            return col
    return 255.0 - np.asarray(avoid, dtype=np.float64)  # the complement is always far enough


def smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 3) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a cells x cells grid upsampled bilinearly to size x size."""
    grid = rng.uniform(0, 255, size=(cells, cells, channels)).astype(np.uint8)
    up = Image.fromarray(grid if channels == 3 else grid[..., 0]).resize((size, size), Image.BILINEAR)
    arr = np.asarray(up, dtype=np.float32) / 127.5 - 1.0
    return arr if channels == 3 else arr[..., None]


def background(rng: np.random.Generator, size: int, clutter: float) -> np.ndarray:
    """A textured background (size, size, 3) float: a two-colour gradient plus smooth noise blobs.

    `clutter` in [0, 1] scales the noise amplitude (0 = plain gradient). No lines or edges that
    cross the image: they compete with the objects' edges and make the set much harder to learn.
    """
    c0, c1 = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = np.cos(angle) * xx + np.sin(angle) * yy
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    if clutter > 0:
        img = img + clutter * 60.0 * smooth_noise(rng, size, int(rng.integers(3, 7)))
    return img


def object_fill(rng: np.random.Generator, size: int, base: np.ndarray, texture: float) -> np.ndarray:
    """The paint of an object (size, size, 3): its colour, with probability `texture` a pattern on top.

    Patterns (stripes or a checkerboard, random period and angle, or noise) use a second colour
    close to the base, so the silhouette stays the dominant cue.
    """
    fill = np.broadcast_to(base, (size, size, 3)).astype(np.float64)
    if rng.uniform() >= texture:
        return fill
    second = np.clip(base + rng.uniform(-70, 70, size=3), 0, 255)
    kind = int(rng.integers(3))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    period = rng.uniform(3.0, 7.0) * size / 64.0
    a = rng.uniform(0, np.pi)
    u = (np.cos(a) * xx + np.sin(a) * yy) / period
    if kind == 0:
        w = (np.floor(u) % 2)[..., None]
    elif kind == 1:
        v = (-np.sin(a) * xx + np.cos(a) * yy) / period
        w = ((np.floor(u) + np.floor(v)) % 2)[..., None]
    else:
        w = (smooth_noise(rng, size, 8, channels=1) + 1) / 2
    return fill * (1 - w) + second * w


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
