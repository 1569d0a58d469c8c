"""The ImageNet normalisation (per-channel mean and std of RGB in [0, 1]) that every preprocessing of the
project uses: pretraining's crops, the protocols, RASA, the figures and `franca.transforms`. One definition."""

from __future__ import annotations

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
