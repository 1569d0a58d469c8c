"""collate_multicrop: crop order, masks and their derived tensors."""

from __future__ import annotations

import pytest
import torch

from franca.data.collate import collate_multicrop
from franca.data.masking import CyclicMask


def _sample(i: int, n_local: int) -> dict:
    # Every pixel of crop (image i, view v) holds 10·i + v, so the stacked order can be read back.
    return {
        "global_crops": [torch.full((3, 8, 8), 10.0 * i + v) for v in range(2)],
        "local_crops": [torch.full((3, 4, 4), 10.0 * i + 2 + v) for v in range(n_local)],
    }


@pytest.mark.parametrize("B,n_local", [(3, 2), (4, 0), (1, 3)])
def test_crop_order(B: int, n_local: int) -> None:
    batch = collate_multicrop(
        [_sample(i, n_local) for i in range(B)], CyclicMask(4), generator=torch.Generator().manual_seed(0)
    )
    g = batch["global_crops"][:, 0, 0, 0].tolist()
    assert g == [10.0 * i + v for v in range(2) for i in range(B)]  # [crop1 of all; crop2 of all]
    assert batch["n_local_crops"] == n_local
    if n_local:
        loc = batch["local_crops"][:, 0, 0, 0].tolist()
        assert loc == [10.0 * i + 2 + v for v in range(n_local) for i in range(B)]
        assert batch["local_crops"].shape == (n_local * B, 3, 4, 4)
    else:
        assert batch["local_crops"].shape[0] == 0


def test_masks_and_derived_tensors() -> None:
    B, N = 8, 36
    batch = collate_multicrop(
        [(_sample(i, 1), i % 3) for i in range(B)],
        CyclicMask(6),
        mask_ratio_min_max=(0.1, 0.65),
        mask_probability=0.5,
        generator=torch.Generator().manual_seed(5),
    )
    masks = batch["masks"]
    assert masks.shape == (2 * B, N) and masks.dtype == torch.bool
    assert int((masks.sum(dim=1) > 0).sum()) == B  # ⌊2B · 0.5⌋ masked crops (N·0.1 ≥ 3.6 > 0)
    idx = batch["mask_indices"]
    assert torch.equal(idx, masks.flatten().nonzero().flatten())
    M = idx.numel()
    assert int(batch["n_masked_patches"]) == M and M <= batch["upperbound"]
    # every masked token weighs 1 / (masked tokens of its crop): each masked crop sums to 1
    crop_of = idx // N
    per_crop = torch.zeros(2 * B).index_add_(0, crop_of, batch["masks_weight"])
    torch.testing.assert_close(per_crop, (masks.sum(dim=1) > 0).float())
    assert batch["labels"].tolist() == [i % 3 for i in range(B)]


def test_deterministic_with_generator() -> None:
    samples = [_sample(i, 0) for i in range(4)]
    a = collate_multicrop(samples, CyclicMask(4), generator=torch.Generator().manual_seed(9))
    b = collate_multicrop(samples, CyclicMask(4), generator=torch.Generator().manual_seed(9))
    assert torch.equal(a["masks"], b["masks"])


def test_bad_samples() -> None:
    gen = torch.Generator()
    with pytest.raises(ValueError, match="global_crops"):
        collate_multicrop([{"global_crops": [torch.zeros(3, 4, 4)], "local_crops": []}], CyclicMask(2), generator=gen)
    with pytest.raises(ValueError, match="local_crops"):
        collate_multicrop([_sample(0, 1), _sample(1, 2)], CyclicMask(2), generator=gen)
    with pytest.raises(ValueError, match="n_tokens"):
        collate_multicrop([_sample(0, 0)], CyclicMask(2), n_tokens=9, generator=gen)
    with pytest.raises(TypeError, match="sample 0"):
        collate_multicrop([torch.zeros(3)], CyclicMask(2), generator=gen)
