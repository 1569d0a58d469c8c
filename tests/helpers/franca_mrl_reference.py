"""Test-only reference of the official Franca MRL (Matryoshka) head math, on a state dict in the released layout.

Written from the facts of the official code (valeoai/Franca: franca/layers/mrl_dino_head.py,
franca/train/ssl_meta_arch.py, franca/hub/backbones.py), not from franca's `MatryoshkaHead`: plain functions
over the tensors of the state dict, in float64. Facts used:

- a release file is `{"teacher": {"backbone.…", "dino_head.…", "ibot_head.…"}}`; the hub strips `module.` and
  `backbone.` and ignores the `dino_head.` / `ibot_head.` keys; every Franca config sets `ibot.separate_head:
  true`, so the two heads are separate modules of the same design (`MRLDINOHead`, built with
  `nesting_list=[D/16, D/8, D/4, D/2, D]`, `dino.head_n_prototypes` / `ibot.head_n_prototypes` prototypes,
  `head_hidden_dim`, `head_bottleneck_dim`, `head_nlayers`);
- level i of a head (width d_i, coarse to fine): `matryoshka_projections.{i}` = Linear(D → d_i, bias) of the
  whole token; `mlps.{i}` = `_build_mlp`: with nlayers = 1 a bare Linear(d_i → bottleneck) (keys
  `mlps.{i}.weight` / `.bias`), else Linear(d_i → hidden), GELU, (nlayers − 2) × [Linear(hidden → hidden),
  GELU], Linear(hidden → bottleneck), GELU (Sequential indices 0, 2, 4, … are the Linears; no BatchNorm:
  `use_bn` defaults to False and is never set);
- `last_layers.{i}` = `weight_norm(Linear(bottleneck → int(K · d_i / d_L), bias=False))` (torch's `weight_norm`,
  dim 0: parameters `weight_g` (K_i, 1) and `weight_v` (K_i, bottleneck); W = g · v / ‖v‖ per row), g filled
  with 1 at init;
- no L2 normalisation of the bottleneck before the prototypes (the plain DINOv2 head has one, the MRL head
  none); `forward` returns the tuple of the levels' logits, coarse to fine.
"""

from __future__ import annotations

import math

import torch


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU, x · Φ(x) (nn.GELU's default), written out."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def nesting_list(embed_dim: int) -> list[int]:
    """[D/16, D/8, D/4, D/2, D], as `ssl_meta_arch.py` builds both heads."""
    return [embed_dim // 16, embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim]


def make_released_head(
    embed_dim: int, n_prototypes: int, hidden: int, bottleneck: int, nlayers: int = 3, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random tensors in the released key layout of one MRL head (names without the `dino_head.` prefix);
    gains away from 1 and biases away from 0, so that a misread tensor cannot hide."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    dims = nesting_list(embed_dim)
    for i, d in enumerate(dims):
        out[f"matryoshka_projections.{i}.weight"] = torch.randn(d, embed_dim, generator=g) * 0.2
        out[f"matryoshka_projections.{i}.bias"] = torch.randn(d, generator=g) * 0.1
        if nlayers == 1:
            out[f"mlps.{i}.weight"] = torch.randn(bottleneck, d, generator=g) * 0.2
            out[f"mlps.{i}.bias"] = torch.randn(bottleneck, generator=g) * 0.1
        else:
            widths = [d] + [hidden] * (nlayers - 1) + [bottleneck]
            for j in range(nlayers):
                out[f"mlps.{i}.{2 * j}.weight"] = torch.randn(widths[j + 1], widths[j], generator=g) * 0.2
                out[f"mlps.{i}.{2 * j}.bias"] = torch.randn(widths[j + 1], generator=g) * 0.1
        k = int(n_prototypes * (d / dims[-1]))
        out[f"last_layers.{i}.weight_g"] = 0.5 + torch.rand(k, 1, generator=g)
        out[f"last_layers.{i}.weight_v"] = torch.randn(k, bottleneck, generator=g)
    return out


def mrl_head_logits(state: dict[str, torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """The released `MRLDINOHead.forward` on tokens x (n, D): one logit tensor per level, coarse to fine."""
    x = x.double()
    levels = sorted(int(k.split(".")[1]) for k in state if k.startswith("last_layers.") and k.endswith("weight_v"))
    out = []
    for i in levels:
        h = (
            x @ state[f"matryoshka_projections.{i}.weight"].double().T
            + state[f"matryoshka_projections.{i}.bias"].double()
        )
        if f"mlps.{i}.weight" in state:  # nlayers = 1: a bare Linear, no GELU
            h = h @ state[f"mlps.{i}.weight"].double().T + state[f"mlps.{i}.bias"].double()
        else:
            j = 0
            while f"mlps.{i}.{j}.weight" in state:  # every Linear of the Sequential is followed by a GELU
                h = gelu(h @ state[f"mlps.{i}.{j}.weight"].double().T + state[f"mlps.{i}.{j}.bias"].double())
                j += 2
        v, g = state[f"last_layers.{i}.weight_v"].double(), state[f"last_layers.{i}.weight_g"].double()
        w = g * v / torch.sqrt((v * v).sum(dim=1, keepdim=True))
        out.append(h @ w.T)
    return out


def released_file(
    backbone: dict[str, torch.Tensor], heads: dict[str, dict[str, torch.Tensor]], block_chunks: int = 1
) -> dict:
    """A release file's object: the teacher's backbone (blocks chunked as `blocks.{chunk}.{i}` with the global
    index i, as the FSDP BlockChunk layout of the official training saves them) and heads."""
    teacher: dict[str, torch.Tensor] = {}
    depth = 1 + max(int(k.split(".")[1]) for k in backbone if k.startswith("blocks."))
    per_chunk = math.ceil(depth / block_chunks)
    for k, v in backbone.items():
        if k.startswith("blocks."):
            _, idx, rest = k.split(".", 2)
            k = f"blocks.{int(idx) // per_chunk}.{idx}.{rest}"
        teacher[f"backbone.{k}"] = v
    for name, sd in heads.items():
        teacher.update({f"{name}.{k}": v for k, v in sd.items()})
    return {"teacher": teacher}
