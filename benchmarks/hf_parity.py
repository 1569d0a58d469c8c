"""Hugging Face transformers folders: the largest difference per family and direction, and how far
transformers' position interpolation is from the reference at sizes other than the folder's grid.

    python benchmarks/hf_parity.py

Part 1 (parity): random perturbed weights (width 64, 2 blocks, patch 8, 8×8 grid) of every family; "read" is a
folder written by transformers' `save_pretrained` loaded with `franca.load_backbone(weights=DIR)`, "write" is
`franca.export_hf` loaded with `transformers.AutoModel.from_pretrained`. Max |franca − transformers| over all
tokens, per-block outputs and masked inputs at 64×64, 48×80 and 96×96 (DINOv2 files without registers: at the
export grid only, see part 2).

Part 2 (interpolation): Franca/DINOv2 files without registers use the reference rule (bicubic, offset 0.1, no
antialias); transformers' `Dinov2Model` resizes straight to the new grid. Synthetic ViT weights (width 64,
2 blocks, patch 14, 37×37 table as in the 518 px releases), random and smooth tables as in
benchmarks/timm_resample.py. Files with registers use the DINOv2 *_reg rule, which is
`Dinov2WithRegistersModel`'s own, so they print 0.
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def parity(tmp: Path) -> None:
    import test_hf as T
    import test_hf_dinov3 as T3

    import franca

    print("family                         direction  max|Δ|")
    for registers in (0, 4):
        for swiglu in (False, True):
            name = f"{'Dinov2WithRegisters' if registers else 'Dinov2'} {'SwiGLU' if swiglu else 'GELU'}"
            hf = T._hf_dinov2(registers, swiglu, seed=11)
            hf.save_pretrained(tmp / f"r{name}")
            read = T._compare_to_hf(franca.load_backbone(weights=tmp / f"r{name}"), hf, registers)
            rule = (0.0, True) if registers else (0.0, False)  # transformers' own rule: every size compares
            m = T._ours("swiglu" if swiglu else "mlp", registers, *rule, seed=12)
            folder = franca.export_hf(m, tmp / f"w{name}")
            write = T._compare_to_hf(m, _auto(folder), registers)
            print(f"{name:30} read       {read:.1e}\n{name:30} write      {write:.1e}")
    for gated in (False, True):
        name = f"DINOv3ViT {'SwiGLU' if gated else 'GELU'}"
        hf = T3._hf_dinov3(gated, seed=13)
        hf.save_pretrained(tmp / f"r{name}")
        read = T._compare_to_hf(franca.load_backbone(weights=tmp / f"r{name}"), hf, T3.REGS)
        torch.save(T3.official_state(gated, seed=14), tmp / f"{name}.pth")
        m = franca.load_backbone(weights=tmp / f"{name}.pth")
        write = T._compare_to_hf(m, _auto(franca.export_hf(m, tmp / f"w{name}")), T3.REGS)
        torch.save(
            {**T3.official_state(gated, seed=14), "rope_embed.periods": m.rope_embed.periods.bfloat16().float()},
            tmp / f"{name}-bf16.pth",
        )
        m16 = franca.load_backbone(weights=tmp / f"{name}-bf16.pth")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bf16 = T._compare_to_hf(m16, _auto(franca.export_hf(m16, tmp / f"w16{name}")), T3.REGS)
        print(f"{name:30} read       {read:.1e}\n{name:30} write      {write:.1e}")
        print(f"{name + ', bf16 periods':30} write      {bf16:.1e}")


def _auto(folder: Path) -> torch.nn.Module:
    import transformers

    return transformers.AutoModel.from_pretrained(folder).eval()


def interpolation(tmp: Path) -> None:
    from test_backbone import HEADS, make_flat_state_dict
    from timm_resample import smooth_table

    import franca

    print("\ntable   ffn     registers  size      max|Δ| CLS  max|Δ| patch")
    for table in ("random", "smooth"):
        for ffn in ("mlp", "swiglu"):
            for n_reg in (0, 4):
                sd = make_flat_state_dict(grid=37, ffn=ffn, n_reg=n_reg, depth=2, seed=1)
                if table == "smooth":
                    sd["pos_embed"][0, 1:] = smooth_table(37, sd["pos_embed"].shape[-1])
                torch.save(sd, tmp / "f.pth")
                m = franca.load_backbone(weights=tmp / "f.pth", num_heads=HEADS)
                out = tmp / f"hf-{table}-{ffn}-{n_reg}"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t = _auto(franca.export_hf(m, out))
                for hw in ((518, 518), (224, 224), (168, 252), (448, 448)):
                    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(0))
                    with torch.no_grad():
                        a, b = m.forward_features(x), t(pixel_values=x).last_hidden_state
                    dc = (a["x_norm_clstoken"] - b[:, 0]).abs().max().item()
                    dp = (a["x_norm_patchtokens"] - b[:, 1 + n_reg :]).abs().max().item()
                    print(f"{table:7} {ffn:7} {n_reg:9}  {hw[0]}x{hw[1]:<5} {dc:11.2e} {dp:12.2e}")


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    tmp = Path(tempfile.mkdtemp())
    parity(tmp)
    interpolation(tmp)


if __name__ == "__main__":
    main()
