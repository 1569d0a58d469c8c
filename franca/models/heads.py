"""Nested Matryoshka clustering heads of Franca (arXiv 2507.14137, §3; released Franca
`franca/layers/mrl_dino_head.py`; README "Where the paper and the released code differ").

One head maps a backbone token (n, D) to L logit tensors, one per nesting level, coarse to fine.
Level l works on a d_l-wide view of the token (d_l = D/16, D/8, D/4, D/2, D by default) and owns

1. how the view is made (``mode``):
   - ``"slice"`` (default, the paper's wording and Matryoshka representation learning): the first
     d_l coordinates of the token;
   - ``"projection"`` (the released code, ``MRLDINOHead``): a learned ``Linear(D, d_l)`` of the whole token,
     stored as ``matryoshka_projections.{l}``;
2. its own MLP ``mlps.{l}``: Linear(d_l, hidden) + GELU, (nlayers-2) × [Linear(hidden, hidden) + GELU],
   Linear(hidden, bottleneck) + GELU (the final GELU is the released code's; there is no BatchNorm);
   with nlayers=1 a bare Linear(d_l, bottleneck), no GELU, as released;
3. optionally an L2 normalisation of the bottleneck (off by default: the released MRL head has none,
   the plain DINOv2 head has one);
4. its own weight-normalised prototype layer ``last_layers.{l}`` (no bias, gain initialised to 1) with
   K_l = int(n_prototypes · d_l / D) prototypes, e.g. ViT-B/14 with 131072:
   [8192, 16384, 32768, 65536, 131072].

Parameter names follow the released checkpoints (``mlps.{l}.{j}.weight``, ``last_layers.{l}.weight_g``,
``last_layers.{l}.weight_v``, ``matryoshka_projections.{l}.weight``), so "last_layer" appears in the name
of every prototype parameter (the freeze schedule of the released `franca/utils/param_groups.py` matches on it).
Weight normalisation is computed in ``forward`` from plain parameters, so it works unchanged under
``torch.compile``, FSDP and ``deepcopy`` (no hooks, no parametrization objects).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "HeadLayout",
    "MatryoshkaHead",
    "WeightNormLinear",
    "build_franca_heads",
    "head_layout",
    "head_state_keys",
    "matryoshka_dims",
    "prototypes_per_level",
]


def matryoshka_dims(in_dim: int, nesting_levels: int = 5) -> list[int]:
    """Default nesting widths [D/2^(L-1), …, D/2, D] (coarse → fine); D must divide evenly."""
    if nesting_levels < 1:
        raise ValueError(f"nesting_levels must be >= 1, got {nesting_levels}")
    div = 2 ** (nesting_levels - 1)
    if in_dim % div:
        raise ValueError(f"in_dim {in_dim} is not divisible by 2**(nesting_levels-1) = {div}")
    return [in_dim // 2 ** (nesting_levels - 1 - i) for i in range(nesting_levels)]


def prototypes_per_level(n_prototypes: int, level_dims: Sequence[int], in_dim: int) -> list[int]:
    """K_l = int(n_prototypes · d_l / D), as the released code scales prototypes with the level width."""
    return [int(n_prototypes * d / in_dim) for d in level_dims]


class WeightNormLinear(nn.Module):
    """Bias-free Linear with weight normalisation, W = g · V / ‖V‖ (row-wise, as ``weight_norm(dim=0)``).

    ``weight_v`` keeps nn.Linear's default init (the released code's trunc-normal init never reaches it);
    ``weight_g`` starts at 1. ``freeze_gain=True`` fixes g (DINOv2's ``norm_last_layer``).
    """

    def __init__(self, in_features: int, out_features: int, freeze_gain: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        v = torch.empty(out_features, in_features)
        nn.init.kaiming_uniform_(v, a=math.sqrt(5))  # nn.Linear's default
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(torch.ones(out_features, 1), requires_grad=not freeze_gain)

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class HeadBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d that uses its running statistics for a single row (training-mode BatchNorm
    cannot normalise one sample; a batch can hold one masked patch)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


def _mlp(
    in_dim: int, hidden_dim: int, bottleneck_dim: int, nlayers: int, final_gelu: bool, use_bn: bool = False
) -> nn.Module:
    """Linear+GELU blocks ending at the bottleneck (indices 0, 2, 4 … are Linears, as released).

    ``nlayers=1`` is a bare ``Linear(in_dim, bottleneck_dim)``, as the released ``_build_mlp`` returns
    (no GELU whatever ``final_gelu`` says, parameters ``mlps.{l}.weight``/``.bias``); from two layers on
    the last Linear is followed by GELU when ``final_gelu`` (the released head has it).

    ``use_bn`` puts a BatchNorm1d after each hidden Linear (DINO's ``use_bn`` head option) and a
    non-affine one on the bottleneck output. The hidden ones standardise every unit over the batch,
    so images whose backbone tokens are nearly identical (a small model at initialisation) still get
    distinct prototype scores; the last one removes the batch-constant part of the bottleneck (a head
    drifting to uniform predictions adds one direction to every output and turns its prototypes
    orthogonal to it). On the tiny preset this slowed that drift but did not improve k-NN
    (docs/training.md), so it is off in every preset."""
    if nlayers < 1:
        raise ValueError(f"nlayers must be >= 1, got {nlayers}")
    if nlayers == 1:
        linear = nn.Linear(in_dim, bottleneck_dim)
        return nn.Sequential(linear, HeadBatchNorm(bottleneck_dim, affine=False)) if use_bn else linear
    dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
    layers: list[nn.Module] = []
    for j in range(nlayers):
        layers.append(nn.Linear(dims[j], dims[j + 1]))
        if use_bn and j < nlayers - 1:
            layers.append(HeadBatchNorm(dims[j + 1]))
        if j < nlayers - 1 or final_gelu:
            layers.append(nn.GELU())
    if use_bn:
        layers.append(HeadBatchNorm(bottleneck_dim, affine=False))
    return nn.Sequential(*layers)


class MatryoshkaHead(nn.Module):
    """L nested projection heads with prototype layers; ``forward(x (n,D)) -> [ (n,K_1), …, (n,K_L) ]``.

    Args:
        in_dim: backbone width D.
        n_prototypes: prototypes of the finest (full-width) level, K_L.
        nesting_levels: L, used when ``level_dims`` is None (widths D/2^(L-1) … D).
        mode: ``"slice"`` (first d_l coordinates; default) or ``"projection"`` (Linear(D, d_l) per level).
        hidden_dim, bottleneck_dim, nlayers: per-level MLP sizes (paper: 2048, 384, 3).
        level_dims: explicit nesting widths, increasing, each ≤ D (overrides ``nesting_levels``).
        l2_norm: L2-normalise the bottleneck before the prototypes (off: released MRL head).
        final_gelu: GELU after the last MLP Linear when nlayers >= 2 (on: released MRL head; with
            nlayers=1 the released head is a bare Linear, and so is this one).
        freeze_gain: keep every weight-norm gain fixed at 1.
        use_bn: BatchNorm1d after each hidden Linear and on the bottleneck (off: released head; see ``_mlp``).
    """

    def __init__(
        self,
        in_dim: int,
        n_prototypes: int,
        nesting_levels: int = 5,
        mode: str = "slice",
        hidden_dim: int = 2048,
        bottleneck_dim: int = 384,
        nlayers: int = 3,
        level_dims: Sequence[int] | None = None,
        l2_norm: bool = False,
        final_gelu: bool = True,
        freeze_gain: bool = False,
        use_bn: bool = False,
    ) -> None:
        super().__init__()
        if mode not in ("slice", "projection"):
            raise ValueError(f"mode must be 'slice' or 'projection', got {mode!r}")
        dims = list(level_dims) if level_dims is not None else matryoshka_dims(in_dim, nesting_levels)
        if not dims or any(d < 1 or d > in_dim for d in dims) or sorted(dims) != dims:
            raise ValueError(f"level_dims must be increasing widths in [1, {in_dim}], got {dims}")
        protos = prototypes_per_level(n_prototypes, dims, in_dim)
        if min(protos) < 1:
            raise ValueError(f"n_prototypes {n_prototypes} gives an empty level for level_dims {dims}")
        self.in_dim, self.mode, self.l2_norm = int(in_dim), mode, bool(l2_norm)
        self.level_dims: list[int] = dims
        self.n_prototypes_per_level: list[int] = protos
        if mode == "projection":
            self.matryoshka_projections = nn.ModuleList(nn.Linear(in_dim, d) for d in dims)
        self.mlps = nn.ModuleList(_mlp(d, hidden_dim, bottleneck_dim, nlayers, final_gelu, use_bn) for d in dims)
        self.last_layers = nn.ModuleList(WeightNormLinear(bottleneck_dim, k, freeze_gain) for k in protos)
        self.apply(self._init_linear)

    @property
    def n_levels(self) -> int:
        return len(self.level_dims)

    @staticmethod
    def _init_linear(m: nn.Module) -> None:
        # Released init: trunc-normal(0.02) weights and zero biases on every nn.Linear (not the prototypes).
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def level_input(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """The d_l-wide view of ``x`` (n, D) that level ``level`` works on."""
        if self.mode == "projection":
            return self.matryoshka_projections[level](x)
        return x[..., : self.level_dims[level]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"MatryoshkaHead expects last dim {self.in_dim}, got shape {tuple(x.shape)}")
        out = []
        for level in range(self.n_levels):
            v = self.level_input(x, level)  # rows flattened so BatchNorm1d sees (rows, features)
            z = self.mlps[level](v.flatten(0, -2)).unflatten(0, v.shape[:-1])
            if self.l2_norm:
                z = F.normalize(z, dim=-1, p=2, eps=1e-6 if z.dtype == torch.float16 else 1e-12)
            out.append(self.last_layers[level](z))
        return out


def build_franca_heads(
    in_dim: int,
    n_prototypes: int,
    separate_ibot_head: bool = True,
    ibot_n_prototypes: int | None = None,
    **head_kwargs: object,
) -> nn.ModuleDict:
    """``{"dino_head", "ibot_head"}``: two MatryoshkaHeads (Franca), or one shared object when
    ``separate_ibot_head=False`` (the iBOT loss then reuses the DINO prototypes, as in iBOT/DINOv2)."""
    dino = MatryoshkaHead(in_dim, n_prototypes, **head_kwargs)  # type: ignore[arg-type]
    if not separate_ibot_head:
        if ibot_n_prototypes not in (None, n_prototypes):
            raise ValueError(f"a shared head cannot have {ibot_n_prototypes} iBOT prototypes (dino: {n_prototypes})")
        return nn.ModuleDict({"dino_head": dino, "ibot_head": dino})
    ibot = MatryoshkaHead(in_dim, ibot_n_prototypes or n_prototypes, **head_kwargs)  # type: ignore[arg-type]
    return nn.ModuleDict({"dino_head": dino, "ibot_head": ibot})


# ------------------------------------------------------------------------------------------------ files
_PARAMETRIZED = {"parametrizations.weight.original0": "weight_g", "parametrizations.weight.original1": "weight_v"}


def head_state_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A head's state dict with this module's key names. The released heads and this project's checkpoints
    already use them (`last_layers.{l}.weight_g` / `.weight_v` of torch's `weight_norm`); a head saved with
    torch's parametrized weight norm (`last_layers.{l}.parametrizations.weight.original0` / `original1`, g
    and v) is renamed."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        for old, new in _PARAMETRIZED.items():
            if k.endswith(old):
                k = k[: -len(old)] + new
        out[k] = v
    return out


@dataclass(frozen=True)
class HeadLayout:
    """What a head's state dict says about it: the `MatryoshkaHead` arguments its tensors fix."""

    in_dim: int
    n_prototypes: int
    nesting_levels: int
    mode: str
    hidden_dim: int | None
    """None when nlayers is 1 (no hidden layer to read it from)"""
    bottleneck_dim: int
    nlayers: int
    use_bn: bool

    def describe(self) -> str:
        hidden = f", hidden {self.hidden_dim}" if self.hidden_dim else ""
        return (
            f"{self.nesting_levels} levels ({self.mode}), {self.n_prototypes} prototypes at the finest, "
            f"{self.nlayers}-layer MLP{hidden}, bottleneck {self.bottleneck_dim}"
            + (", BatchNorm" if self.use_bn else "")
        )


def head_layout(state: Mapping[str, torch.Tensor], in_dim: int | None = None) -> HeadLayout:
    """The layout of one Matryoshka head from its state dict (this module's key names, `head_state_keys`).

    Reads: the levels (`last_layers.{l}`), their prototypes and bottleneck (`weight_v`), the level widths
    (`matryoshka_projections.{l}` in projection mode, else the first Linear of `mlps.{l}`), the MLP depth
    and hidden width, BatchNorm. A ValueError names what this module cannot hold: widths other than
    D/2^(L-1) … D, prototypes not scaled with the width as `prototypes_per_level` scales them, or keys of
    another head design (DINOv2's single `mlp`/`last_layer` head)."""
    state = head_state_keys(state)
    if any(k.startswith(("mlp.", "last_layer.")) for k in state):
        raise ValueError(
            "a single-level DINO head (mlp.*, last_layer.*: DINOv2's DINOHead), not a Matryoshka head (mlps.{l}.*, "
            "last_layers.{l}.*)"
        )
    levels = sorted(int(k.split(".")[1]) for k in state if k.startswith("last_layers.") and k.endswith(".weight_v"))
    if not levels or levels != list(range(len(levels))):
        raise ValueError(f"no last_layers.{{l}}.weight_v prototype layers (keys: {sorted(state)[:6]})")
    protos = [int(state[f"last_layers.{level}.weight_v"].shape[0]) for level in levels]
    bottleneck = int(state["last_layers.0.weight_v"].shape[1])
    projection = "matryoshka_projections.0.weight" in state
    linears = sorted(
        {int(k.split(".")[2]) for k in state if k.startswith("mlps.0.") and k.count(".") == 3 and k.endswith(".weight")}
    )
    linears = [j for j in linears if state[f"mlps.0.{j}.weight"].dim() == 2]
    if "mlps.0.weight" in state:
        nlayers, first = 1, "mlps.{l}.weight"
    elif linears:
        nlayers, first = len(linears), "mlps.{l}." + str(linears[0]) + ".weight"
    else:
        raise ValueError("no MLP weights (mlps.{l}.*)")
    if projection:
        dims = [int(state[f"matryoshka_projections.{level}.weight"].shape[0]) for level in levels]
        width = int(state["matryoshka_projections.0.weight"].shape[1])
    else:
        dims = [int(state[first.format(l=level)].shape[1]) for level in levels]
        width = dims[-1]
    if in_dim is not None and width != in_dim:
        raise ValueError(f"the head reads {width}-wide tokens, the backbone gives {in_dim}")
    expected = matryoshka_dims(width, len(levels)) if width % 2 ** (len(levels) - 1) == 0 else None
    if dims != expected:
        raise ValueError(f"level widths {dims} are not D/2^(L-1) … D = {expected} for D = {width}")
    if protos != prototypes_per_level(protos[-1], dims, width):
        raise ValueError(
            f"prototypes per level {protos} are not scaled with the level width "
            f"({prototypes_per_level(protos[-1], dims, width)})"
        )
    hidden = int(state[first.format(l=0)].shape[0]) if nlayers > 1 else None
    use_bn = any(k.endswith("running_mean") for k in state)
    return HeadLayout(
        width, protos[-1], len(levels), "projection" if projection else "slice", hidden, bottleneck, nlayers, use_bn
    )
