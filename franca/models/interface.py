"""The forward surface every backbone class of this package shares (DINOv2/Franca, DINOv3, `timm:NAME`).

A class supplies `_features(x, masks, use_rasa_head) -> dict` for one batch, and `patch_size`; this mixin gives
the DINOv2 entry points on top of it, so that their argument rules and errors are written once:
`forward_features` (one batch, or a list of batches of different sizes with their masks), `forward` (CLS at
eval time, the whole dict with `is_training=True`; everything but the images keyword-only, so an exporter's
extra positional input can never be taken for masks), the patch grid of an input, and the argument checks of
`get_intermediate_layers` / `forward_intermediates`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor


class BackboneForward:
    """DINOv2's `forward_features` / `forward` over a class's one-batch `_features`."""

    patch_size: int

    def _features(self, x: Tensor, masks: Tensor | None, use_rasa_head: bool) -> dict[str, Tensor | None]:
        raise NotImplementedError

    def _grid(self, x: Tensor) -> tuple[int, int]:
        """The patch grid (h, w) of images (B, C, H, W); an error naming a side that is not a multiple."""
        if x.ndim != 4:
            raise ValueError(f"expected images (B, C, H, W), got shape {tuple(x.shape)}")
        H, W = x.shape[-2:]
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(
                f"input size {H}x{W} is not a multiple of the patch size {p}; "
                f"resize or crop to a multiple (e.g. {H // p * p}x{W // p * p})"
            )
        return H // p, W // p

    def forward_features(
        self,
        x: Tensor | Sequence[Tensor],
        masks: Tensor | Sequence[Tensor | None] | None = None,
        use_rasa_head: bool = False,
    ) -> dict | list[dict]:
        """Final features of one batch (dict) or of several batches of different sizes (list of dicts)."""
        if isinstance(x, (list, tuple)):
            masks_list = list(masks) if isinstance(masks, (list, tuple)) else [masks] * len(x)
            if len(masks_list) != len(x):
                raise ValueError(f"got {len(x)} inputs but {len(masks_list)} masks")
            return [self._features(xi, mi, use_rasa_head) for xi, mi in zip(x, masks_list)]
        return self._features(x, masks, use_rasa_head)

    def forward(
        self,
        x: Tensor | Sequence[Tensor],
        *,
        masks: Tensor | Sequence[Tensor | None] | None = None,
        is_training: bool = False,
        use_rasa_head: bool = False,
    ):
        """`x_norm_clstoken` (the reference `forward` at eval time); the full dict with is_training=True."""
        out = self.forward_features(x, masks=masks, use_rasa_head=use_rasa_head)
        if is_training:
            return out
        if isinstance(out, list):
            return [o["x_norm_clstoken"] for o in out]
        return out["x_norm_clstoken"]

    @staticmethod
    def _block_indices(n: int | Sequence[int], depth: int) -> set[int]:
        """`get_intermediate_layers`' `n`: the last n blocks (int) or the listed indices, each in range."""
        take = set(range(depth - n, depth)) if isinstance(n, int) else {int(i) for i in n}
        bad = [i for i in take if not 0 <= i < depth]
        if bad or not take:
            raise ValueError(f"block indices {sorted(bad) or n} out of range for {depth} blocks")
        return take

    @staticmethod
    def _check_intermediates_args(output_fmt: str, unused: Mapping[str, Any]) -> None:
        """`forward_intermediates`' options this package implements (timm's others must be left unset)."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        bad = {k: v for k, v in unused.items() if v not in (None, False)}
        if bad:
            raise ValueError(f"forward_intermediates does not support {sorted(bad)}")
