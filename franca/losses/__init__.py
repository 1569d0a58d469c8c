"""Franca losses: Sinkhorn-Knopp / centering teacher targets, DINO, iBOT, KoLeo and their combination.
May import franca.utils only."""

from __future__ import annotations

from franca.losses.centering import SoftmaxCentering
from franca.losses.dino import dino_loss, soft_cross_entropy
from franca.losses.franca_loss import FrancaLoss
from franca.losses.ibot import ibot_loss
from franca.losses.koleo import koleo_loss
from franca.losses.sinkhorn import sinkhorn_knopp

__all__ = [
    "FrancaLoss",
    "SoftmaxCentering",
    "dino_loss",
    "ibot_loss",
    "koleo_loss",
    "sinkhorn_knopp",
    "soft_cross_entropy",
]
