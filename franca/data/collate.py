"""Batch multi-crop samples and draw the iBOT masks for a batch (released Franca / DINOv2 ``data/collate.py``).

Global crops are stacked [crop 1 of all images; crop 2 of all images], local crops per local index.
A share ``mask_probability`` of the 2B global crops gets a mask with stratified ratios
(:func:`franca.data.masking.sample_mask_counts`); the flat indices of masked tokens, a per-token
weight 1/(masked tokens of its crop) and an upper bound for fixed-size buffers come with the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from franca.data.masking import Generator, sample_mask_counts

__all__ = ["collate_multicrop", "sample_masks"]

MaskGenerator = Callable[[int, Generator], torch.Tensor]


def _crops_of(sample: Any, index: int) -> tuple[Mapping[str, Any], Any]:
    """A sample is a crops dict, or a (crops dict, label) pair as image-folder datasets return it."""
    if isinstance(sample, Mapping):
        return sample, None
    if isinstance(sample, (tuple, list)) and len(sample) == 2 and isinstance(sample[0], Mapping):
        return sample[0], sample[1]
    raise TypeError(
        f"sample {index}: expected a dict with 'global_crops', or (dict, label); got {type(sample).__name__}"
    )


def collate_multicrop(
    samples: Sequence[Any],
    mask_generator: MaskGenerator,
    mask_ratio_min_max: tuple[float, float] = (0.1, 0.5),
    mask_probability: float = 0.5,
    n_tokens: int | None = None,
    generator: Generator | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Stack crops and sample masks.

    Args:
        samples: B dicts with ``"global_crops"`` (2 tensors (3,H,W)) and ``"local_crops"`` (n_L tensors
            (3,h,w), possibly none), or (dict, label) pairs.
        mask_generator: ``f(n_masked, generator) -> bool (Hp, Wp)``, e.g. ``CyclicMask``.
        mask_ratio_min_max: range of mask ratios (Franca: (0.1, 0.65); DINOv2 default (0.1, 0.5)).
        mask_probability: share of global crops that get a mask (0.5).
        n_tokens: patch tokens per global crop N = Hp·Wp (default: ``mask_generator.num_patches``).
        generator: explicit RNG for counts, shuffling and masks.
        dtype: optional dtype for the crop tensors.

    Returns:
        dict with ``global_crops (2B,3,H,W)``, ``local_crops (n_L·B,3,h,w)`` (``(0,3,0,0)`` without local
        crops), ``n_local_crops`` (int), ``masks (2B,N) bool``, ``mask_indices (M,)`` flat indices into the
        (2B·N) grid, ``masks_weight (M,)``, ``n_masked_patches`` (long tensor (1,)), ``upperbound`` (int),
        and ``labels`` (B,) when the samples carried labels.
    """
    if not samples:
        raise ValueError("collate_multicrop got an empty batch")
    if generator is None:
        raise ValueError("collate_multicrop needs an explicit generator")
    crops, labels = zip(*(_crops_of(s, i) for i, s in enumerate(samples)))
    n_global = {len(c["global_crops"]) for c in crops}
    n_local = {len(c.get("local_crops", ())) for c in crops}
    if n_global != {2}:
        raise ValueError(f"every sample needs exactly 2 'global_crops', got counts {sorted(n_global)}")
    if len(n_local) != 1:
        raise ValueError(f"samples disagree on the number of 'local_crops': {sorted(n_local)}")
    n_l = n_local.pop()
    global_crops = torch.stack([c["global_crops"][v] for v in range(2) for c in crops])
    if n_l:
        local_crops = torch.stack([c["local_crops"][v] for v in range(n_l) for c in crops])
    else:
        local_crops = global_crops.new_zeros((0, 3, 0, 0))
    if dtype is not None:
        global_crops, local_crops = global_crops.to(dtype), local_crops.to(dtype)

    out: dict[str, Any] = {"global_crops": global_crops, "local_crops": local_crops, "n_local_crops": n_l}
    out.update(
        sample_masks(global_crops.shape[0], mask_generator, mask_ratio_min_max, mask_probability, n_tokens, generator)
    )
    if all(lab is not None for lab in labels):
        out["labels"] = torch.as_tensor(labels)
    return out


def sample_masks(
    n_crops: int,
    mask_generator: MaskGenerator,
    mask_ratio_min_max: tuple[float, float] = (0.1, 0.5),
    mask_probability: float = 0.5,
    n_tokens: int | None = None,
    generator: Generator | None = None,
) -> dict[str, Any]:
    """The iBOT masks of `n_crops` global crops, as :func:`collate_multicrop` returns them (``masks``,
    ``mask_indices``, ``masks_weight``, ``n_masked_patches``, ``upperbound``). They need no pixels, so a data
    path that augments later (on the GPU) draws them in the loader workers from the same generator."""
    if generator is None:
        raise ValueError("sample_masks needs an explicit generator")
    if n_tokens is None:
        if not hasattr(mask_generator, "num_patches"):
            raise ValueError("collate_multicrop: pass n_tokens (the mask generator has no 'num_patches')")
        n_tokens = int(mask_generator.num_patches)
    counts, upperbound = sample_mask_counts(n_crops, n_tokens, mask_ratio_min_max, mask_probability, generator)
    masks = torch.stack([mask_generator(k, generator).flatten() for k in counts])
    if masks.shape != (n_crops, n_tokens):
        raise ValueError(f"mask_generator gave masks of {masks.shape[1]} tokens, expected n_tokens={n_tokens}")
    mask_indices = masks.flatten().nonzero().flatten()
    per_crop = masks.sum(dim=-1).clamp(min=1).float()
    masks_weight = (1.0 / per_crop).unsqueeze(-1).expand_as(masks)[masks]
    return {
        "masks": masks,
        "mask_indices": mask_indices,
        "masks_weight": masks_weight,
        "n_masked_patches": torch.full((1,), mask_indices.shape[0], dtype=torch.long),
        "upperbound": int(upperbound),
    }
