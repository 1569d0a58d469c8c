"""The domains of the built-in synthetic data set: what a class is and how an object is painted.

- `shapes` (the default, `franca data toy`): the class is the silhouette (`franca.data.toy_shapes`),
  the paint a random colour (with probability `ToyStyle.texture` a pattern in a close second colour).
- `textures` (`franca data toy --domain textures`): the class is the pattern of the paint
  (`franca.data.toy_textures`), the silhouette is drawn at random from compact shapes. Other classes
  and another appearance in the same on-disk layouts, so adapting a model trained on the shapes can be
  measured without a download (docs/adapt.md).

A domain only says, per object, which silhouette to rasterise and how to paint it; the scenes
(`franca.data.toy_scenes`) and the layouts (`franca.data.toy`) are the same for every domain. The shapes
domain draws nothing from the generator for the silhouette, so its images are the bytes they were before
domains existed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from franca.data.toy_shapes import SHAPES, Shape, object_fill, random_colour
from franca.data.toy_textures import TEXTURES, texture_fill

if TYPE_CHECKING:  # the style's type only; toy_scenes imports this module
    from franca.data.toy_scenes import ToyStyle

DEFAULT_DOMAIN = "shapes"


@dataclass(frozen=True)
class ToyDomain:
    """One domain: its class names, and per object its silhouette and its paint."""

    name: str
    classes: tuple[str, ...]
    silhouette: Callable[[np.random.Generator, int], Shape]
    """(rng, class) -> the shape to rasterise"""
    paint: Callable[[np.random.Generator, np.ndarray, np.ndarray, int, ToyStyle], np.ndarray]
    """(rng, image float HxWx3, mask HxW, class, style) -> the image with the object painted"""
    what: str
    """one line for --help and errors"""


def paint_random_colour(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, style: ToyStyle) -> np.ndarray:
    """A random colour far from what lies under the mask (a pattern with probability `style.texture`)."""
    colour = random_colour(rng, avoid=img[mask].mean(0) if mask.any() else None)
    fill = object_fill(rng, img.shape[0], colour, style.texture)
    return np.where(mask[..., None], fill, img)


def _shape_of_class(rng: np.random.Generator, cls: int) -> Shape:
    return SHAPES[cls]


def _paint_shape(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, cls: int, style: ToyStyle) -> np.ndarray:
    return paint_random_colour(rng, img, mask, style)


SILHOUETTES = tuple(i for i, s in enumerate(SHAPES) if s.name in ("disk", "square", "triangle", "half_disk"))
"""The silhouettes of the textures domain: compact shapes, with room inside for the pattern."""


def _random_silhouette(rng: np.random.Generator, cls: int) -> Shape:
    return SHAPES[SILHOUETTES[int(rng.integers(len(SILHOUETTES)))]]


def _paint_texture(
    rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, cls: int, style: ToyStyle
) -> np.ndarray:
    fill = texture_fill(rng, cls, img.shape[0], style.size)
    return np.where(mask[..., None], fill, img)


DOMAINS: dict[str, ToyDomain] = {
    "shapes": ToyDomain(
        "shapes",
        tuple(s.name for s in SHAPES),
        _shape_of_class,
        _paint_shape,
        "the class is the silhouette (disk, square, triangle, …), the colour is random",
    ),
    "textures": ToyDomain(
        "textures",
        tuple(name for name, _ in TEXTURES),
        _random_silhouette,
        _paint_texture,
        "the class is the pattern (stripes, checker, dots, mesh, …), the silhouette is random",
    ),
}


def get_domain(name: str) -> ToyDomain:
    """The domain called `name`; a ValueError naming the known ones otherwise."""
    if name not in DOMAINS:
        raise ValueError(f"unknown toy domain {name!r}; known: {', '.join(DOMAINS)}")
    return DOMAINS[name]
