"""How far timm's own position resampling (dynamic_img_size=True) is from the reference at other sizes.

    python benchmarks/timm_resample.py

Synthetic ViT weights (width 64, 2 blocks, 37×37 position table as in the 518 px releases) are
exported and loaded in timm with the printed recipe plus `dynamic_img_size=True`. Two tables: the
random one of the tests (a worst case) and a smooth 2-D sine/cosine table (closer to learned ones).
Prints the largest |franca − timm| over CLS and patch tokens per input size. Files with registers
use the DINOv2 *_reg rule, which is timm's own, so they print 0.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def smooth_table(grid: int, dim: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(float(grid)), torch.arange(float(grid)), indexing="ij")
    freqs = torch.logspace(0, -2, dim // 4)
    y, x = ys.flatten()[:, None] * freqs, xs.flatten()[:, None] * freqs
    return 0.5 * torch.cat([y.sin(), y.cos(), x.sin(), x.cos()], 1)


def main() -> None:
    import timm
    from test_backbone import HEADS, make_flat_state_dict

    import franca
    from franca.models.weights import timm_create_kwargs

    tmp = Path(tempfile.mkdtemp())
    print("table   ffn     registers  size      max|Δ| CLS  max|Δ| patch")
    for table in ("random", "smooth"):
        for ffn in ("mlp", "swiglu"):
            for n_reg in (0, 4):
                sd = make_flat_state_dict(grid=37, ffn=ffn, n_reg=n_reg, depth=2, seed=1)
                if table == "smooth":
                    sd["pos_embed"][0, 1:] = smooth_table(37, sd["pos_embed"].shape[-1])
                torch.save(sd, tmp / "f.pth")
                m = franca.load_backbone(weights=tmp / "f.pth", num_heads=HEADS)
                path = franca.export_backbone(m, tmp / "f.safetensors")
                t = timm.create_model(
                    "vit_small_patch14_dinov2",
                    pretrained=True,
                    dynamic_img_size=True,
                    pretrained_cfg_overlay=dict(file=str(path)),
                    **timm_create_kwargs(m),
                ).eval()
                for hw in ((518, 518), (224, 224), (168, 252), (448, 448)):
                    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(0))
                    with torch.no_grad():
                        a, b = m.forward_features(x), t.forward_features(x)
                    dc = (a["x_norm_clstoken"] - b[:, 0]).abs().max().item()
                    dp = (a["x_norm_patchtokens"] - b[:, 1 + n_reg :]).abs().max().item()
                    print(f"{table:7} {ffn:7} {n_reg:9}  {hw[0]}x{hw[1]:<5} {dc:11.2e} {dp:12.2e}")


if __name__ == "__main__":
    main()
