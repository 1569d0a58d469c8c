"""MatryoshkaHead: level widths, prototype counts, slicing vs projection, weight norm, gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from franca.models.heads import (
    MatryoshkaHead,
    WeightNormLinear,
    build_franca_heads,
    matryoshka_dims,
    prototypes_per_level,
)


def test_vitb14_widths_and_prototypes() -> None:
    # ViT-B: D = 768, widths D/16..D = 48, 96, 192, 384, 768; K_l = 131072 · d_l / 768.
    assert matryoshka_dims(768, 5) == [48, 96, 192, 384, 768]
    assert prototypes_per_level(131072, [48, 96, 192, 384, 768], 768) == [8192, 16384, 32768, 65536, 131072]
    with torch.device("meta"):  # the real module at full size, without allocating 100M parameters
        head = MatryoshkaHead(768, 131072)
    assert head.level_dims == [48, 96, 192, 384, 768]
    assert head.n_prototypes_per_level == [8192, 16384, 32768, 65536, 131072]
    for level, (d, k) in enumerate(zip(head.level_dims, head.n_prototypes_per_level)):
        assert head.mlps[level][0].in_features == d
        assert head.mlps[level][-2].out_features == 384  # last Linear -> bottleneck, then GELU
        assert head.last_layers[level].weight_v.shape == (k, 384)
    out = head(torch.empty(3, 768, device="meta"))
    assert [tuple(o.shape) for o in out] == [(3, k) for k in head.n_prototypes_per_level]


def _tiny(mode: str, **kw) -> MatryoshkaHead:
    return MatryoshkaHead(32, 64, nesting_levels=3, mode=mode, hidden_dim=16, bottleneck_dim=8, **kw)


def test_slice_mode_uses_only_first_coordinates() -> None:
    head = _tiny("slice")
    x = torch.randn(5, 32)
    y = x.clone()
    y[:, 8:] = torch.randn(5, 24)  # level 0 sees x[:, :8] only
    a, b = head(x), head(y)
    torch.testing.assert_close(a[0], b[0])
    assert not torch.allclose(a[1], b[1]) and not torch.allclose(a[2], b[2])
    assert not hasattr(head, "matryoshka_projections")


def test_projection_mode_sees_whole_token() -> None:
    head = _tiny("projection")
    assert [p.weight.shape for p in head.matryoshka_projections] == [(8, 32), (16, 32), (32, 32)]
    x = torch.randn(5, 32)
    y = x.clone()
    y[:, 8:] += 1.0
    assert not torch.allclose(head(x)[0], head(y)[0])


@pytest.mark.parametrize("mode", ["slice", "projection"])
def test_every_parameter_gets_a_gradient(mode: str) -> None:
    head = _tiny(mode)
    sum(o.square().mean() for o in head(torch.randn(6, 32))).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_prototype_names_and_weight_norm() -> None:
    head = _tiny("slice")
    proto = [n for n, _ in head.named_parameters() if "last_layer" in n]
    assert sorted(proto) == sorted(f"last_layers.{i}.weight_{s}" for i in range(3) for s in "gv")
    layer = head.last_layers[1]
    with torch.no_grad():
        layer.weight_v.mul_(7.0)
        layer.weight_g.fill_(2.5)
    # W = g V/|V| row-wise: every prototype vector has norm g, whatever the scale of V.
    torch.testing.assert_close(layer.weight.norm(dim=1), torch.full((32,), 2.5))
    z = torch.randn(4, 8)
    torch.testing.assert_close(layer(z), z @ layer.weight.T)


def test_head_defaults_follow_release() -> None:
    head = _tiny("slice")
    assert isinstance(head.mlps[0][-1], torch.nn.GELU)  # MLP ends in GELU
    assert all(bool((layer.weight_g == 1.0).all()) for layer in head.last_layers)
    frozen = WeightNormLinear(4, 3, freeze_gain=True)
    assert not frozen.weight_g.requires_grad


def test_l2_norm_option_bounds_logits() -> None:
    head = _tiny("slice", l2_norm=True)
    for out in head(100 * torch.randn(4, 32)):
        # unit bottleneck · unit prototypes (g = 1): |logit| <= 1
        assert out.abs().max() <= 1.0 + 1e-5


def test_deepcopy_teacher_matches_student() -> None:
    head = _tiny("projection")
    teacher = copy.deepcopy(head)
    x = torch.randn(3, 32)
    for a, b in zip(head(x), teacher(x)):
        torch.testing.assert_close(a, b)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="mode"):
        MatryoshkaHead(32, 64, mode="nest")
    with pytest.raises(ValueError, match="divisible"):
        MatryoshkaHead(24, 64, nesting_levels=5)
    with pytest.raises(ValueError, match="level_dims"):
        MatryoshkaHead(32, 64, level_dims=[16, 8])
    with pytest.raises(ValueError, match="last dim"):
        _tiny("slice")(torch.randn(2, 16))


def test_separate_or_shared_heads() -> None:
    sep = build_franca_heads(32, 64, nesting_levels=2, hidden_dim=8, bottleneck_dim=4)
    assert sep["dino_head"] is not sep["ibot_head"]
    shared = build_franca_heads(32, 64, separate_ibot_head=False, nesting_levels=2, hidden_dim=8, bottleneck_dim=4)
    assert shared["dino_head"] is shared["ibot_head"]
    assert len(list(shared.parameters())) == len(list(shared["dino_head"].parameters()))


def test_use_bn_standardises_over_the_batch() -> None:
    """use_bn: BatchNorm after each hidden Linear and a non-affine one on the bottleneck, so the bottleneck
    has zero batch mean and unit variance even for nearly identical inputs (the collapse it prevents)."""
    torch.manual_seed(0)
    head = MatryoshkaHead(64, 64, nesting_levels=2, hidden_dim=32, bottleneck_dim=16, use_bn=True).train()
    norms = [m for m in head.mlps[1] if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(norms) == 3 and norms[-1].affine is False and all(m.affine for m in norms[:-1])
    x = torch.randn(1, 64) + 1e-3 * torch.randn(256, 64)  # one token plus tiny per-image differences
    z = head.mlps[1](head.level_input(x, 1))
    torch.testing.assert_close(z.mean(0), torch.zeros(16), atol=1e-4, rtol=0)
    assert ((z.var(0, unbiased=False) - 1).abs() < 0.1).all()  # up to BatchNorm's eps
    assert [t.shape for t in head(x)] == [(256, 32), (256, 64)]
    # a single row (one masked patch) uses the running statistics instead of failing
    assert [t.shape for t in head(x[:1])] == [(1, 32), (1, 64)]
    # without use_bn the head is the released one: Linear/GELU only
    plain = MatryoshkaHead(64, 64, nesting_levels=2, hidden_dim=32, bottleneck_dim=16)
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in plain.modules())


def _reference_level(x: torch.Tensor, sd: dict, level: int, nlayers: int) -> torch.Tensor:
    """The released MRL head for one level, written out by hand from the state dict: nlayers=1 is one
    Linear; otherwise Linear+GELU per layer, the last one included; then the weight-normed prototypes."""
    if nlayers == 1:
        h = x @ sd[f"mlps.{level}.weight"].T + sd[f"mlps.{level}.bias"]
    else:
        h = x
        for j in range(nlayers):
            w, b = sd[f"mlps.{level}.{2 * j}.weight"], sd[f"mlps.{level}.{2 * j}.bias"]
            h = torch.nn.functional.gelu(h @ w.T + b)
    v, g = sd[f"last_layers.{level}.weight_v"], sd[f"last_layers.{level}.weight_g"]
    return h @ (g * v / v.norm(dim=1, keepdim=True)).T


@pytest.mark.parametrize("nlayers", [1, 2, 3])
def test_mlp_matches_hand_built_released_head(nlayers: int) -> None:
    """nlayers=1 is a bare Linear (released `_build_mlp`: no GELU); nlayers>=2 ends in GELU."""
    torch.manual_seed(0)
    head = MatryoshkaHead(32, 64, nesting_levels=3, hidden_dim=16, bottleneck_dim=8, nlayers=nlayers)
    sd = {k: v.detach() for k, v in head.state_dict().items()}
    if nlayers == 1:
        assert all(isinstance(m, torch.nn.Linear) for m in head.mlps)
        assert sorted(k for k in sd if k.startswith("mlps.0.")) == ["mlps.0.bias", "mlps.0.weight"]
        assert not any(isinstance(m, torch.nn.GELU) for m in head.modules())
    with torch.no_grad():
        for p in head.parameters():  # non-zero biases so that a misplaced GELU cannot hide
            p.add_(0.3 * torch.randn_like(p))
    sd = {k: v.detach() for k, v in head.state_dict().items()}
    x = torch.randn(5, 32)
    out = head(x)
    for level, d in enumerate(head.level_dims):
        torch.testing.assert_close(out[level], _reference_level(x[:, :d], sd, level, nlayers))
