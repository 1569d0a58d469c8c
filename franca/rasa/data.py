"""Images for RASA: the reference training augmentations; the files are listed and read by
`franca.data.source.open_images` (a folder, then the training and held-out lists of files).

The targets are the fixed patch grid, so the augmentations (random crops, flips in both axes,
±90° rotations) break any tie between image content and position: a linear predictor of
position can then only use what the backbone adds to encode position (released Franca
`rasa/experiments/train_rasa.py`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image, ImageFilter

from franca.data.datasets.voc import voc_image_dir
from franca.data.toy import builtin_toy
from franca.utils.imagenet import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

# The reference RASA training transform normalises with std (0.229, 0.224, 0.255): the last value
# is a typo of 0.225 in the reference that we keep by default for its training images.
RASA_REFERENCE_STD = (0.229, 0.224, 0.255)


class RandomPILGaussianBlur:
    """PIL Gaussian blur with radius σ ~ U(radius_min, radius_max), applied with probability p."""

    def __init__(self, p: float = 0.5, radius_min: float = 0.1, radius_max: float = 2.0) -> None:
        self.p, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() >= self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))


def rasa_train_transform(size: int = 518, std_quirk: bool = True) -> Callable[[Image.Image], torch.Tensor]:
    """The reference training augmentations, in order (released Franca `rasa/experiments/train_rasa.py`).

    RandomResizedCrop(size, scale (0.25, 1)), ColorJitter(0.32, 0.32, 0.32, 0.08) with p 0.8,
    grayscale p 0.2, PIL blur σ ∈ [0.1, 2] p 0.5, horizontal and vertical flips p 0.5 each,
    RandomRotation(±90°, nearest, fill 0) p 0.5, ToTensor, Normalize (std 0.255 quirk unless
    ``std_quirk=False``).
    """
    from torchvision import transforms as T

    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.25, 1.0), interpolation=T.InterpolationMode.BILINEAR),
            T.RandomApply([T.ColorJitter(0.32, 0.32, 0.32, 0.08)], p=0.8),
            T.RandomGrayscale(p=0.2),
            RandomPILGaussianBlur(p=0.5, radius_min=0.1, radius_max=2.0),
            T.RandomHorizontalFlip(p=0.5),
            T.RandomVerticalFlip(p=0.5),
            T.RandomApply([T.RandomRotation(90, interpolation=T.InterpolationMode.NEAREST, fill=0)], p=0.5),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, RASA_REFERENCE_STD if std_quirk else IMAGENET_STD),
        ]
    )


def rasa_eval_transform(size: int = 518) -> Callable[[Image.Image], torch.Tensor]:
    """Held-out images for the R² probe and for ``--no-augment``: resize to size×size, ImageNet normalisation."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def default_image_root() -> Path:
    """The built-in toy set's RASA images: its VOC images folder (the reference trains on VOC)."""
    return voc_image_dir(Path(builtin_toy()))


def split_files(
    files: Sequence[Path], heldout_fraction: float, max_heldout: int, seed: int
) -> tuple[list[Path], list[Path]]:
    """Deterministic split into (train, held-out); held-out has ≥ 2 images (probe fit + probe test)."""
    if len(files) < 3:
        raise ValueError(f"RASA needs at least 3 images (training + held-out probe), found {len(files)}")
    order = list(range(len(files)))
    random.Random(seed).shuffle(order)
    n_held = min(max(2, round(heldout_fraction * len(files))), max_heldout, len(files) - 1)
    held = sorted(order[:n_held])
    train = sorted(order[n_held:])
    return [files[i] for i in train], [files[i] for i in held]
