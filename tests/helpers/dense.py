"""Data for the dense protocols' tests: a backbone whose patch token is the patch's mean colour, images of
coloured quadrants with their masks, a small VOC devkit."""

from __future__ import annotations

import numpy as np
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

COLOURS = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30]], np.uint8)


class MeanColourBackbone(nn.Module):
    """Patch token = mean RGB of its 4×4 patch: colour decides the class, so the protocols score well."""

    patch_size, embed_dim = 4, 3

    def forward_features(self, x, use_rasa_head=False):
        return {"x_norm_patchtokens": F.avg_pool2d(x, 4).flatten(2).transpose(1, 2)}


def _quadrants(rng) -> tuple[np.ndarray, np.ndarray]:
    """A 32×32 image of four coloured quadrants (classes 0-3 in a shuffled order) and its mask, 255 on row 0."""
    mask = np.zeros((32, 32), np.uint8)
    for q, c in enumerate(rng.permutation(4)):
        mask[(q // 2) * 16 : (q // 2 + 1) * 16, (q % 2) * 16 : (q % 2 + 1) * 16] = c
    img = COLOURS[mask]
    mask[0] = 255
    return img, mask


def _voc_devkit(root, n_train=4, n_val=3):
    """A VOC devkit with trainaug.txt and SegmentationClassAug (L masks), val masks as palette PNGs, and a
    classes.txt of the 4 colours (as the built-in toy set writes one)."""
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = [f"2007_{i:06d}" for i in range(n_train + n_val)]
    for i in ids:
        img, mask = _quadrants(rng)
        Image.fromarray(img).save(voc / "JPEGImages" / f"{i}.jpg", quality=95)
        palette = Image.fromarray(mask, "P")
        palette.putpalette([v for k in range(256) for v in ((k * 37) % 256, (k * 91) % 256, (k * 53) % 256)])
        palette.save(voc / "SegmentationClass" / f"{i}.png")
        Image.fromarray(mask, "L").save(voc / "SegmentationClassAug" / f"{i}.png")
    (voc / "classes.txt").write_text("red\ngreen\nblue\nyellow\n")
    sets = voc / "ImageSets" / "Segmentation"
    (sets / "train.txt").write_text("\n".join(ids[:n_train]) + "\n")
    (sets / "trainaug.txt").write_text("\n".join(ids[:n_train]) + "\n")
    (sets / "val.txt").write_text("\n".join(ids[n_train:]) + "\n")
    return root
