"""Texture classes of the second built-in domain (`franca data toy --domain textures`).

In the shapes domain the class is the silhouette and the paint is random; here it is the other way
round: the class is the pattern an object is painted with (stripes one way or another, a checkerboard,
dots, a mesh, rings, waves, blobs, speckle, chevrons, bricks) and the silhouette is drawn at random. A
model that learned the toy shapes therefore meets other classes and another appearance, which is what
continued pretraining on a new domain is measured on (docs/adapt.md).

A pattern is a weight map w in [0, 1] over the image; the object is painted c0 · (1 - w) + c1 · w with
two random colours whose luminance differs by at least `MIN_LUMA_GAP` (the tiny preset sees its crops
in grayscale, so the pattern must survive that). Every pattern is invariant to a horizontal flip up to
its random phase (the diagonal class draws both diagonals), and no pattern is rotated: the orientation
of the stripe classes is what tells them apart. The period is drawn per object from
`PERIOD` × the classification side (4-6.4 px at 32 px), the same in pixels in the dense scenes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from franca.data.toy_shapes import smooth_noise

PERIOD = (0.13, 0.2)
"""Pattern period as a fraction of the classification image side."""
MIN_LUMA_GAP = 70.0
"""Least difference of Rec. 601 luma (0..255) between a pattern's two colours."""

Pattern = Callable[[np.random.Generator, np.ndarray, np.ndarray, float], np.ndarray]


def _bands(u: np.ndarray, period: float, duty: float = 0.5) -> np.ndarray:
    """1 on the first `duty` of every period of the coordinate u, else 0."""
    return ((u / period) % 1.0 < duty).astype(np.float64)


def _stripes_h(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, p: float) -> np.ndarray:
    return _bands(yy + rng.uniform(0, p), p)


def _stripes_v(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, p: float) -> np.ndarray:
    return _bands(xx + rng.uniform(0, p), p)


def _stripes_diagonal(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, p: float) -> np.ndarray:
    sign = rng.choice([-1.0, 1.0])
    return _bands((xx + sign * yy) / np.sqrt(2.0) + rng.uniform(0, p), p)


def _checker(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, p: float) -> np.ndarray:
    ox, oy = rng.uniform(0, 2 * p, size=2)
    return ((np.floor((xx + ox) / p) + np.floor((yy + oy) / p)) % 2).astype(np.float64)


def _dots(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, p: float) -> np.ndarray:
    s = 1.3 * p
    ox, oy = rng.uniform(0, s, size=2)
    fx, fy = ((xx + ox) / s) % 1.0 - 0.5, ((yy + oy) / s) % 1.0 - 0.5
    return (fx**2 + fy**2 < 0.3**2).astype(np.float64)


def _mesh(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, p: float) -> np.ndarray:
    s = 1.3 * p
    ox, oy = rng.uniform(0, s, size=2)
    return np.maximum(_bands(xx + ox, s, 0.3), _bands(yy + oy, s, 0.3))


def _rings(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, p: float) -> np.ndarray:
    side = xx.shape[0]
    cx, cy = rng.uniform(0.25 * side, 0.75 * side, size=2)
    return _bands(np.hypot(xx - cx, yy - cy), p)


def _waves(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, p: float) -> np.ndarray:
    wavelength = rng.uniform(2.5, 3.5) * p
    return _bands(yy + 0.5 * p * np.sin(2 * np.pi * xx / wavelength + rng.uniform(0, 2 * np.pi)), p)


def _blobs(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, p: float) -> np.ndarray:
    side = xx.shape[0]
    cells = max(3, int(round(1.6 * side / p)))
    return (smooth_noise(rng, side, cells, channels=1)[..., 0] > 0).astype(np.float64)


def _speckle(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, p: float) -> np.ndarray:
    return (rng.uniform(size=xx.shape) < 0.35).astype(np.float64)


def _chevrons(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, p: float) -> np.ndarray:
    w = 2.0 * p
    tri = np.abs(((xx + rng.uniform(0, w)) / w) % 1.0 - 0.5) * w  # a triangle wave of x between 0 and p
    return _bands(yy + tri + rng.uniform(0, p), p)


def _bricks(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, p: float) -> np.ndarray:
    h = 1.2 * p
    oy, ox = rng.uniform(0, h), rng.uniform(0, 2 * h)
    row = np.floor((yy + oy) / h)
    mortar_h = ((yy + oy) / h) % 1.0 < 0.25
    mortar_v = ((xx + ox + (row % 2) * h) / (2 * h)) % 1.0 < 0.125
    return (mortar_h | mortar_v).astype(np.float64)


TEXTURES: tuple[tuple[str, Pattern], ...] = (
    ("stripes_h", _stripes_h),
    ("stripes_v", _stripes_v),
    ("stripes_diagonal", _stripes_diagonal),
    ("checker", _checker),
    ("dots", _dots),
    ("mesh", _mesh),
    ("rings", _rings),
    ("waves", _waves),
    ("blobs", _blobs),
    ("speckle", _speckle),
    ("chevrons", _chevrons),
    ("bricks", _bricks),
)
"""The texture classes, in class-index order (name, pattern)."""


def luma(rgb: np.ndarray) -> float:
    """Rec. 601 luma of an RGB colour (0..255), what a grayscale conversion keeps."""
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def texture_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two random colours at least MIN_LUMA_GAP apart in luma (the pattern survives grayscale)."""
    for _ in range(64):
        c0, c1 = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
        if abs(luma(c0) - luma(c1)) >= MIN_LUMA_GAP:
            return c0, c1
    c0 = rng.uniform(0, 80, size=3)
    return c0, 255.0 - c0


def texture_fill(rng: np.random.Generator, cls: int, side: int, base_size: int) -> np.ndarray:
    """(side, side, 3) float paint of texture class `cls`; the period is PERIOD × `base_size` pixels."""
    _, pattern = TEXTURES[cls]
    period = rng.uniform(*PERIOD) * base_size
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64) + 0.5
    w = pattern(rng, xx, yy, period)[..., None]
    c0, c1 = texture_colours(rng)
    return c0 * (1.0 - w) + c1 * w
