"""The Franca objective: per-level DINO + iBOT, summed over Matryoshka levels, plus KoLeo (released Franca
`franca/train/ssl_meta_arch.py`).

With B images per process, 2 global crops, n_L local crops, L levels with weights λ_l (default all 1):

    dino_global = Σ_l λ_l Σ_{v≠u ∈ globals} mean_b CE(T_l[u,b], S_l[v,b]) / n_terms
    dino_local  = Σ_l λ_l Σ_{v ∈ locals} Σ_{u ∈ globals} mean_b CE(T_l[u,b], S_l[v,b]) / n_terms
    n_terms     = 2·(2−1) + n_L·2                   (18 with 8 local crops)
    dino        = dino_global + dino_local
    ibot        = Σ_l λ_l (1/2B) Σ_m w_m CE(T^p_l[m], S^p_l[m])
    koleo       = KoLeo(student global-crop-1 CLS) + KoLeo(student global-crop-2 CLS)   (backbone tokens)
    total       = w_dino·dino + w_ibot·ibot + w_koleo·koleo     (1, 1, 0.1)

CE(t, s) = −Σ_k t_k log softmax(s/τ_s)_k with τ_s = 0.1. This matches the released normalisation, so
loss magnitudes are comparable to the reference logs. Training optimises this `total`: its objective
part (`franca.train.step.FrancaObjective`) declares the terms dino, ibot and koleo with these weights,
and the loop's sum of weight · value over them is the same expression in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from franca.losses.dino import dino_loss
from franca.losses.ibot import ibot_loss
from franca.losses.koleo import koleo_loss

__all__ = ["FrancaLoss"]


class FrancaLoss(nn.Module):
    """Combines every level's DINO and iBOT losses with KoLeo; holds no state, only weights.

    Args:
        n_levels: Matryoshka levels L.
        level_weights: λ_l per level (default all 1, the released unweighted sum).
        student_temp: τ_s.
        dino_weight, ibot_weight, koleo_weight: weights in ``total`` (1, 1, 0.1).
        n_global_crops: global views per image (2).
        koleo_scope: "local" (the reference): KoLeo neighbours within this process's batch; "global":
            among every process's rows (the gathered copies carry no gradient).
        koleo_group: with "local" scope and 0 < group < B, each crop's rows are split into groups of this
            size and their KoLeo values averaged: one process with group B/W computes what W processes of
            B/W images each compute (the distributed test's oracle).
        fused_ce: the chunked fused soft CE for wide iBOT levels (same values, far less memory); False:
            the plain graph.
    """

    def __init__(
        self,
        n_levels: int = 5,
        level_weights: Sequence[float] | None = None,
        student_temp: float = 0.1,
        dino_weight: float = 1.0,
        ibot_weight: float = 1.0,
        koleo_weight: float = 0.1,
        n_global_crops: int = 2,
        koleo_scope: str = "local",
        koleo_group: int = 0,
        fused_ce: bool = True,
    ) -> None:
        super().__init__()
        weights = [1.0] * n_levels if level_weights is None else [float(w) for w in level_weights]
        if len(weights) != n_levels:
            raise ValueError(f"level_weights has {len(weights)} entries for {n_levels} levels")
        if n_global_crops < 2:
            raise ValueError(f"n_global_crops must be >= 2, got {n_global_crops}")
        if koleo_scope not in ("local", "global"):
            raise ValueError(f"koleo_scope must be 'local' or 'global', got {koleo_scope!r}")
        self.n_levels, self.level_weights = int(n_levels), weights
        self.student_temp = float(student_temp)
        self.dino_weight, self.ibot_weight = float(dino_weight), float(ibot_weight)
        self.koleo_weight = float(koleo_weight)
        self.n_global_crops = int(n_global_crops)
        self.koleo_scope, self.koleo_group = koleo_scope, int(koleo_group)
        self.fused_ce = bool(fused_ce)

    def _levels(self, name: str, xs: Sequence[torch.Tensor] | None) -> Sequence[torch.Tensor] | None:
        if xs is not None and len(xs) != self.n_levels:
            raise ValueError(f"{name}: expected {self.n_levels} levels, got {len(xs)}")
        return xs

    def forward(
        self,
        student_global_cls: Sequence[torch.Tensor],
        teacher_global_targets: Sequence[torch.Tensor],
        student_local_cls: Sequence[torch.Tensor] | None = None,
        student_masked_patches: Sequence[torch.Tensor] | None = None,
        teacher_masked_targets: Sequence[torch.Tensor] | None = None,
        masks_weight: torch.Tensor | None = None,
        student_global_backbone_cls: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Compute every term; returns a dict of scalar tensors.

        Args (per level lists are coarse → fine, as ``MatryoshkaHead`` returns them):
            student_global_cls: L × (G·B, K_l) student dino-head logits of the global crops, stacked
                [crop 1 of all images; crop 2 of all images] (G = ``n_global_crops``).
            teacher_global_targets: L × (G·B, K_l) teacher targets (Sinkhorn or centred softmax) of the
                global crops in the **same** order, *not* swapped: the loss pairs each student view
                with the other teacher views itself.
            student_local_cls: L × (n_L·B, K_l) student logits of the local crops, stacked
                [local 0 of all images; local 1 of all; …]; None or 0 rows for no local crops.
            student_masked_patches: L × (M, K_l) student ibot-head logits of the masked tokens in
                ``collate`` order (``mask_indices``); None to skip iBOT.
            teacher_masked_targets: L × (≥M, K_l) teacher targets of the same tokens (an ``upperbound``
                buffer is fine; its first M rows are used).
            masks_weight: (M,) per-token weights from the collate.
            student_global_backbone_cls: (G·B, D) student backbone ``x_norm_clstoken`` of the global
                crops, for KoLeo (None or ``koleo_weight == 0`` skips it).

        Returns:
            ``total``, ``dino``, ``dino_global``, ``dino_local``, ``ibot``, ``koleo`` and per level ``dino_l{i}``
            (its global + local terms over n_terms) and ``ibot_l{i}``. Level sums include λ_l; ``dino``,
            ``ibot`` and ``koleo`` are unweighted (``total`` applies the weights); per-level values are unweighted.
        """
        s_glob = self._levels("student_global_cls", student_global_cls)
        t_glob = self._levels("teacher_global_targets", teacher_global_targets)
        s_loc = self._levels("student_local_cls", student_local_cls)
        s_pat = self._levels("student_masked_patches", student_masked_patches)
        t_pat = self._levels("teacher_masked_targets", teacher_masked_targets)
        assert s_glob is not None and t_glob is not None
        G = self.n_global_crops
        n_global_rows = s_glob[0].shape[0]
        if n_global_rows % G:
            raise ValueError(f"student_global_cls has {n_global_rows} rows, not a multiple of {G} global crops")
        B = n_global_rows // G
        n_local = 0 if s_loc is None else s_loc[0].shape[0] // max(B, 1)
        if s_loc is not None and s_loc[0].shape[0] != n_local * B:
            raise ValueError(f"student_local_cls has {s_loc[0].shape[0]} rows, not a multiple of B={B}")
        n_terms = G * (G - 1) + n_local * G
        do_ibot = s_pat is not None
        if do_ibot and (t_pat is None or masks_weight is None):
            raise ValueError("iBOT needs teacher_masked_targets and masks_weight with student_masked_patches")

        zero = s_glob[0].new_zeros((), dtype=torch.float32)
        out: dict[str, torch.Tensor] = {}
        dino_global, dino_local, ibot = zero, zero, zero
        for i in range(self.n_levels):
            K = s_glob[i].shape[-1]
            teacher = t_glob[i].reshape(G, B, K)
            g = dino_loss(s_glob[i].reshape(G, B, K), teacher, self.student_temp, skip_same_view=True) / n_terms
            loc = zero
            if n_local:
                assert s_loc is not None
                loc = dino_loss(s_loc[i].reshape(n_local, B, K), teacher, self.student_temp) / n_terms
            out[f"dino_l{i}"] = g + loc
            dino_global = dino_global + self.level_weights[i] * g
            dino_local = dino_local + self.level_weights[i] * loc
            if do_ibot:
                assert s_pat is not None and t_pat is not None and masks_weight is not None
                ib = ibot_loss(
                    s_pat[i], t_pat[i], masks_weight, n_global_rows, self.student_temp, fused_ce=self.fused_ce
                )
                out[f"ibot_l{i}"] = ib
                ibot = ibot + self.level_weights[i] * ib
            else:
                out[f"ibot_l{i}"] = zero
        koleo = zero
        if student_global_backbone_cls is not None and self.koleo_weight != 0.0:
            koleo = self.koleo(student_global_backbone_cls, G)
        dino = dino_global + dino_local
        out.update(dino=dino, dino_global=dino_global, dino_local=dino_local, ibot=ibot, koleo=koleo)
        out["total"] = self.dino_weight * dino + self.ibot_weight * ibot + self.koleo_weight * koleo
        return out

    def koleo(self, backbone_cls: torch.Tensor, n_crops: int) -> torch.Tensor:
        """Σ over the global crops of KoLeo on that crop's (B, D) rows, per `koleo_scope` / `koleo_group`."""
        B = backbone_cls.shape[0] // n_crops
        total = backbone_cls.new_zeros((), dtype=torch.float32)
        for c in range(n_crops):
            x = backbone_cls[c * B : (c + 1) * B]
            if self.koleo_scope == "global":
                total = total + koleo_loss(x, global_batch=True)
                continue
            size = self.koleo_group if 0 < self.koleo_group < B else B
            parts = [koleo_loss(x[i : i + size]) for i in range(0, B, size)]
            total = total + torch.stack(parts).mean()
        return total
