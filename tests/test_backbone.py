"""Backbone forward vs an independent plain-torch re-computation of the reference DINOv2/Franca ViT.

The oracle below is written from the architecture description (PROTOCOLS §1.2), not from the
model code: patch conv, mask token, CLS, position embedding resized with a hand-built bicubic
(cubic convolution, a = -0.75, source index (i + 0.5)/s - 0.5 for scale factor s = (n + 0.1)/M,
borders clamped), registers after CLS, pre-norm blocks (qkv attention, LayerScale, SwiGLU or GELU
MLP), final LayerNorm. Weights come in the official release layout (teacher dict, `backbone.`
prefix, chunked blocks) and are loaded through `franca.load_backbone`.
"""

from __future__ import annotations

import math

import pytest
import torch

import franca

D, DEPTH, HEADS, PATCH = 64, 4, 4, 14
# SwiGLU width for D = 64: ⌊4·64·2/3⌋ = 170, rounded up to a multiple of 8 → 176 (PROTOCOLS §1.2).
SWIGLU_H = 176
EPS = 1e-6  # LayerNorm eps of the reference


# ------------------------------------------------------------------------------------ reference weights
def make_flat_state_dict(
    grid: int = 16,
    ffn: str = "swiglu",
    n_reg: int = 0,
    dim: int = D,
    depth: int = DEPTH,
    patch: int = PATCH,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random weights with DINOv2 flat names; LayerScale and norms far from their init so every term matters."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, s: float = 0.1) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * s

    sd = {
        "cls_token": r(1, 1, dim, s=0.5),
        "pos_embed": r(1, 1 + grid * grid, dim, s=0.5),
        "mask_token": r(1, dim, s=0.5),
        "patch_embed.proj.weight": r(dim, 3, patch, patch, s=0.05),
        "patch_embed.proj.bias": r(dim),
        "norm.weight": 1 + r(dim),
        "norm.bias": r(dim),
    }
    if n_reg:
        sd["register_tokens"] = r(1, n_reg, dim, s=0.5)
    hidden = SWIGLU_H if ffn == "swiglu" else 4 * dim
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update(
            {
                b + "norm1.weight": 1 + r(dim),
                b + "norm1.bias": r(dim),
                b + "attn.qkv.weight": r(3 * dim, dim, s=0.15),
                b + "attn.qkv.bias": r(3 * dim),
                b + "attn.proj.weight": r(dim, dim, s=0.15),
                b + "attn.proj.bias": r(dim),
                b + "ls1.gamma": 0.5 + r(dim),
                b + "norm2.weight": 1 + r(dim),
                b + "norm2.bias": r(dim),
                b + "ls2.gamma": 0.5 + r(dim),
            }
        )
        if ffn == "swiglu":
            sd.update(
                {
                    b + "mlp.w12.weight": r(2 * hidden, dim, s=0.15),
                    b + "mlp.w12.bias": r(2 * hidden),
                    b + "mlp.w3.weight": r(dim, hidden, s=0.15),
                    b + "mlp.w3.bias": r(dim),
                }
            )
        else:
            sd.update(
                {
                    b + "mlp.fc1.weight": r(hidden, dim, s=0.15),
                    b + "mlp.fc1.bias": r(hidden),
                    b + "mlp.fc2.weight": r(dim, hidden, s=0.15),
                    b + "mlp.fc2.bias": r(dim),
                }
            )
    return sd


def to_official_layout(flat: dict[str, torch.Tensor], depth: int = DEPTH, chunks: int = 4) -> dict:
    """{"teacher": {"backbone.…"}} with blocks as `blocks.{chunk}.{global i}` plus head keys (ignored)."""
    per = depth // chunks
    teacher = {}
    for k, v in flat.items():
        if k.startswith("blocks."):
            i = int(k.split(".")[1])
            k = f"blocks.{i // per}.{i}." + k.split(".", 2)[2]
        teacher["backbone." + k] = v
    teacher["dino_head.mlp.0.weight"] = torch.zeros(8, D)
    teacher["ibot_head.last_layers.0.weight_g"] = torch.ones(4, 1)
    return {"teacher": teacher}


# ------------------------------------------------------------------------------------ oracle
def keys_kernel(d: float, a: float = -0.75) -> float:
    """Keys cubic-convolution kernel at distance d."""
    d = abs(d)
    if d <= 1:
        return (a + 2) * d**3 - (a + 3) * d**2 + 1
    if d < 2:
        return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
    return 0.0


def cubic_weights(t: float, a: float = -0.75) -> list[float]:
    """Weights of the 4 taps at offsets -1, 0, 1, 2 for fractional position t."""
    return [keys_kernel(t + 1, a), keys_kernel(t, a), keys_kernel(1 - t, a), keys_kernel(2 - t, a)]


def resize_matrix(n_in: int, n_out: int, scale: float) -> torch.Tensor:
    """(n_out, n_in) matrix of 1-D bicubic resampling with scale factor `scale` (half-pixel centres)."""
    R = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        src = (i + 0.5) / scale - 0.5
        f = math.floor(src)
        for off, w in zip(range(-1, 3), cubic_weights(src - f)):
            R[i, min(max(f + off, 0), n_in - 1)] += w
    return R


def oracle_pos_embed(pos: torch.Tensor, h0: int, w0: int, registers: bool = False) -> torch.Tensor:
    """Franca/DINOv2: bicubic with scale (n + 0.1)/M; DINOv2 *_reg models (registers): antialiased
    bicubic straight to (h0, w0), offset 0 (their hub sets interpolate_antialias, interpolate_offset=0)."""
    M = math.isqrt(pos.shape[1] - 1)
    if (h0, w0) == (M, M):
        return pos
    grid = pos[0, 1:].double().reshape(M, M, -1)
    if registers:
        Rh, Rw = aa_resize_matrix(M, h0), aa_resize_matrix(M, w0)
    else:
        Rh = resize_matrix(M, h0, (h0 + 0.1) / M)
        Rw = resize_matrix(M, w0, (w0 + 0.1) / M)
    out = torch.einsum("ha,abd,wb->hwd", Rh, grid, Rw).reshape(1, h0 * w0, -1)
    return torch.cat([pos[:, :1], out.float()], dim=1)


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + EPS) * w + b


def oracle_tokens(sd: dict, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
    p = sd["patch_embed.proj.weight"].shape[-1]
    B, _, H, W = x.shape
    h0, w0 = H // p, W // p
    # conv with stride = kernel = patch: each patch's pixels dotted with each filter
    patches = x.reshape(B, 3, h0, p, w0, p).permute(0, 2, 4, 1, 3, 5).reshape(B, h0 * w0, -1)
    t = patches @ sd["patch_embed.proj.weight"].reshape(sd["patch_embed.proj.weight"].shape[0], -1).T
    t = t + sd["patch_embed.proj.bias"]
    if masks is not None:
        t = torch.where(masks[..., None], sd["mask_token"][None], t)
    pos = oracle_pos_embed(sd["pos_embed"], h0, w0, registers="register_tokens" in sd)
    t = torch.cat([sd["cls_token"].expand(B, -1, -1), t], 1) + pos
    if "register_tokens" in sd:
        t = torch.cat([t[:, :1], sd["register_tokens"].expand(B, -1, -1), t[:, 1:]], 1)
    return t


def oracle_attention_probs(sd: dict, i: int, t: torch.Tensor, heads: int = HEADS) -> tuple[torch.Tensor, torch.Tensor]:
    b = f"blocks.{i}."
    B, T, C = t.shape
    y = layer_norm(t, sd[b + "norm1.weight"], sd[b + "norm1.bias"])
    qkv = (y @ sd[b + "attn.qkv.weight"].T + sd[b + "attn.qkv.bias"]).reshape(B, T, 3, heads, C // heads)
    q, k, v = (qkv[:, :, j].transpose(1, 2) for j in range(3))  # (B, heads, T, hd)
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(C // heads), dim=-1)
    return a, v


def oracle_block(sd: dict, i: int, t: torch.Tensor, heads: int = HEADS) -> torch.Tensor:
    b = f"blocks.{i}."
    B, T, C = t.shape
    a, v = oracle_attention_probs(sd, i, t, heads)
    o = (a @ v).transpose(1, 2).reshape(B, T, C) @ sd[b + "attn.proj.weight"].T + sd[b + "attn.proj.bias"]
    t = t + sd[b + "ls1.gamma"] * o
    y = layer_norm(t, sd[b + "norm2.weight"], sd[b + "norm2.bias"])
    if b + "mlp.w12.weight" in sd:
        h = y @ sd[b + "mlp.w12.weight"].T + sd[b + "mlp.w12.bias"]
        x1, x2 = h[..., : h.shape[-1] // 2], h[..., h.shape[-1] // 2 :]
        o = (x1 * torch.sigmoid(x1) * x2) @ sd[b + "mlp.w3.weight"].T + sd[b + "mlp.w3.bias"]
    else:
        h = y @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"]
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU
        o = h @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"]
    return t + sd[b + "ls2.gamma"] * o


def oracle_all_blocks(sd: dict, x: torch.Tensor, masks=None) -> list[torch.Tensor]:
    t = oracle_tokens(sd, x, masks)
    outs = []
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        t = oracle_block(sd, i, t)
        outs.append(t)
    return outs


# ------------------------------------------------------------------------------------ tests
@pytest.fixture(scope="module")
def ref_file(tmp_path_factory):
    flat = make_flat_state_dict(grid=16)
    path = tmp_path_factory.mktemp("w") / "franca_tiny.pth"
    torch.save(to_official_layout(flat), path)
    return flat, path


@pytest.fixture(scope="module")
def model(ref_file):
    _, path = ref_file
    return franca.load_backbone("vits14", weights=path, embed_dim=D, depth=DEPTH, num_heads=HEADS)


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.numel() == 0:
        return
    err = (a - b).abs().max().item()
    assert err < tol, err


@pytest.mark.parametrize("hw", [(224, 224), (168, 252), (98, 98), (308, 126)])
def test_forward_features_matches_oracle(model, ref_file, hw):
    flat, _ = ref_file
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        out = model.forward_features(x)
    pre = oracle_all_blocks(flat, x)[-1]
    xn = layer_norm(pre, flat["norm.weight"], flat["norm.bias"])
    n = (hw[0] // PATCH) * (hw[1] // PATCH)
    assert out["x_norm_patchtokens"].shape == (2, n, D)
    _close(out["x_prenorm"], pre)
    _close(out["x_norm_clstoken"], xn[:, 0])
    _close(out["x_norm_patchtokens"], xn[:, 1:])
    assert out["x_norm_regtokens"].shape == (2, 0, D)
    _close(model(x), xn[:, 0])


def test_masks_replace_patch_embeddings(model, ref_file):
    flat, _ = ref_file
    x = torch.randn(2, 3, 224, 224)
    masks = torch.rand(2, 256) < 0.4
    with torch.no_grad():
        out = model.forward_features(x, masks=masks)
        plain = model.forward_features(x)
    _close(out["x_prenorm"], oracle_all_blocks(flat, x, masks)[-1])
    assert out["masks"] is masks
    # a fully masked image no longer depends on its pixels
    allm = torch.ones(2, 256, dtype=torch.bool)
    with torch.no_grad():
        a = model.forward_features(x, masks=allm)["x_norm_clstoken"]
        b = model.forward_features(torch.randn_like(x), masks=allm)["x_norm_clstoken"]
    _close(a, b, 1e-5)
    assert (out["x_norm_clstoken"] - plain["x_norm_clstoken"]).abs().max() > 1e-3


def test_list_form_runs_each_crop_size(model, ref_file):
    flat, _ = ref_file
    xs = [torch.randn(2, 3, 224, 224), torch.randn(3, 3, 98, 98)]
    masks = [torch.rand(2, 256) < 0.3, None]
    with torch.no_grad():
        outs = model.forward_features(xs, masks=masks)
    assert isinstance(outs, list) and len(outs) == 2
    for o, x, m in zip(outs, xs, masks):
        _close(o["x_prenorm"], oracle_all_blocks(flat, x, m)[-1])


@pytest.mark.parametrize("hw,n,norm", [((224, 224), 2, True), ((168, 252), [0, 2], False), ((98, 126), 4, True)])
def test_get_intermediate_layers_matches_oracle(model, ref_file, hw, n, norm):
    flat, _ = ref_file
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        got = model.get_intermediate_layers(x, n=n, reshape=True, return_class_token=True, norm=norm)
    blocks = oracle_all_blocks(flat, x)
    idx = list(range(DEPTH - n, DEPTH)) if isinstance(n, int) else n
    assert len(got) == len(idx)
    h0, w0 = hw[0] // PATCH, hw[1] // PATCH
    for (patches, cls), i in zip(got, idx):
        ref = layer_norm(blocks[i], flat["norm.weight"], flat["norm.bias"]) if norm else blocks[i]
        assert patches.shape == (2, D, h0, w0)
        _close(cls, ref[:, 0])
        # reshape: token r·w0 + c sits at row r, column c
        _close(patches.flatten(2).transpose(1, 2), ref[:, 1:])
    flat_out = model.get_intermediate_layers(x, n=1)
    assert len(flat_out) == 1 and flat_out[0].shape == (2, h0 * w0, D)


def test_last_selfattention_matches_oracle(model, ref_file):
    flat, _ = ref_file
    x = torch.randn(1, 3, 126, 98)
    t = oracle_tokens(flat, x)
    for i in range(DEPTH - 1):
        t = oracle_block(flat, i, t)
    ref, _ = oracle_attention_probs(flat, DEPTH - 1, t)
    got = model.get_last_selfattention(x)
    assert got.shape == (1, HEADS, 1 + 9 * 7, 1 + 9 * 7)
    _close(got, ref, 1e-5)


@pytest.mark.parametrize("hw", [(224, 224), (168, 252)])
@pytest.mark.parametrize("ffn,n_reg", [("mlp", 0), ("mlp", 4), ("swiglu", 0), ("swiglu", 4)])
def test_dinov2_flat_layouts_gelu_swiglu_registers_518_grid(tmp_path, ffn, n_reg, hw):
    """DINOv2 hub files (flat keys, pos_embed for 518 = 1+37² read from the file), GELU or SwiGLU, 0 or 4
    registers, at 224 and non-square: equal to the oracle, whose files with registers resize positions
    as DINOv2's *_reg models do (antialiased, offset 0)."""
    flat = make_flat_state_dict(grid=37, ffn=ffn, n_reg=n_reg, depth=2, seed=1)
    path = tmp_path / "hub.pth"
    torch.save(flat, path)
    m = franca.load_backbone(weights=path, num_heads=HEADS)
    assert m.ffn == ffn and m.num_register_tokens == n_reg and m.img_size == 37 * PATCH
    assert (m.interpolate_offset, m.interpolate_antialias) == ((0.0, True) if n_reg else (0.1, False))
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        out = m.forward_features(x)
    pre = oracle_all_blocks(flat, x)[-1]
    xn = layer_norm(pre, flat["norm.weight"], flat["norm.bias"])
    _close(out["x_prenorm"], pre)
    _close(out["x_norm_regtokens"], xn[:, 1 : 1 + n_reg])
    _close(out["x_norm_patchtokens"], xn[:, 1 + n_reg :])


def test_bicubic_oracle_golden_values():
    """Checks of the hand-built resize itself. Halfway between taps (t = 0.5) with a = -0.75:
    k(1.5) = a(1.5³ - 5·1.5² + 8·1.5 - 4) = a/8 = -0.09375, k(0.5) = 1.25/8 - 2.25/4 + 1 = 0.59375.
    Rows sum to 1 (a constant grid stays constant); scale 1 is the identity."""
    assert cubic_weights(0.5) == pytest.approx([-0.09375, 0.59375, 0.59375, -0.09375])
    assert torch.allclose(resize_matrix(16, 9, (9 + 0.1) / 16).sum(1), torch.ones(9, dtype=torch.float64))
    assert torch.equal(resize_matrix(5, 5, 1.0), torch.eye(5, dtype=torch.float64))


def test_named_sizes_and_overrides():
    from franca.models.sizes import SIZES, size_config

    assert {"vits14", "vitb14", "vitl14", "vitg14", "vits16", "vitt8", "vitt4"} <= set(SIZES)
    g = size_config("vitg14")
    assert (g["embed_dim"], g["depth"], g["num_heads"], g["ffn"]) == (1536, 40, 24, "swiglu")
    from franca.models.backbone import swiglu_hidden_dim

    # PROTOCOLS §1.2: B 2048, L 2736, g 4096
    assert [swiglu_hidden_dim(d) for d in (768, 1024, 1536)] == [2048, 2736, 4096]
    m = franca.build_backbone("vitt4", depth=2, num_register_tokens=1, ffn="mlp", drop_path_rate=0.2)
    assert m.patch_size == 4 and m.n_blocks == 2 and m.num_register_tokens == 1
    assert m.blocks[0].drop_path1.drop_prob == pytest.approx(0.2)  # uniform rate (drop_path_uniform)
    m.train()
    out = m.forward_features(torch.randn(2, 3, 32, 32))
    out["x_norm_clstoken"].sum().backward()
    assert m.blocks[0].mlp.fc1.weight.grad is not None
    with pytest.raises(KeyError, match="unknown backbone size"):
        franca.build_backbone("vitx99")
    with pytest.raises(ValueError, match="multiple of the patch size"):
        m.forward_features(torch.randn(1, 3, 30, 32))


def test_rasa_projection_buffer_roundtrip():
    m = franca.build_backbone("vitt8", depth=1).eval()
    x = torch.randn(2, 3, 32, 40)
    with pytest.raises(ValueError, match="RASA"):
        m.forward_features(x, use_rasa_head=True)
    u = torch.nn.functional.normalize(torch.randn(192, 1), dim=0)
    P = torch.eye(192) - u @ u.T
    m.set_rasa_projection(P)
    out = m.forward_features(x, use_rasa_head=True)
    _close(out["patch_token_rasa"], out["x_norm_patchtokens"] @ P.T, 1e-5)
    assert (out["patch_token_rasa"] @ u).abs().max() < 1e-4  # the removed direction is gone
    m2 = franca.build_backbone("vitt8", depth=1)
    m2.load_state_dict(m.state_dict())  # the buffer is created on load
    assert torch.equal(m2.rasa_proj, P)
    with pytest.raises(ValueError, match=r"\(192, 192\)"):
        m.set_rasa_projection(torch.eye(3))


def test_batch_subset_drop_path():
    """drop_path_mode="subset": with the attention branch off (ls1 = 0), a training block changes exactly
    ⌊B·(1−p)⌋ = ⌊4·0.5⌋ = 2 samples, each by (B/2)·ls2(mlp(norm2(x))); in eval mode it is the plain block."""
    m = franca.build_backbone("vitt8", depth=1, drop_path_rate=0.5, drop_path_mode="subset")
    blk = m.blocks[0]
    with torch.no_grad():
        blk.ls1.gamma.zero_()
        blk.ls2.gamma.fill_(1.0)
    x = torch.randn(4, 5, 192)
    with torch.no_grad():
        full = blk.ls2(blk.mlp(blk.norm2(x)))
        blk.train()
        out = blk(x)
        blk.eval()
        plain = blk(x)
    changed = (out - x).abs().flatten(1).amax(1) > 0
    assert int(changed.sum()) == 2
    _close(out[changed] - x[changed], 2.0 * full[changed], 1e-5)
    _close(plain, x + full, 1e-5)
    with pytest.raises(ValueError, match="drop_path_mode"):
        franca.build_backbone("vitt8", drop_path_mode="nope")


def aa_resize_matrix(n_in: int, n_out: int, a: float = -0.5) -> torch.Tensor:
    """Antialiased bicubic (PIL-style, a = -0.5): taps inside the image only, weights renormalised,
    kernel stretched by the downscale factor; centre of output i at (i + 0.5)·n_in/n_out."""
    scale = n_in / n_out
    support = 2.0 * max(scale, 1.0)
    R = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        centre = scale * (i + 0.5)
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        w = torch.tensor(
            [keys_kernel((j - centre + 0.5) / max(scale, 1.0), a) for j in range(lo, hi)], dtype=torch.float64
        )
        R[i, lo:hi] = w / w.sum()
    return R


@pytest.mark.parametrize("grid", [37, 8])
def test_set_pos_grid_antialias_resize(grid):
    """High-res adaptation (PROTOCOLS §1.10): the table is resized once to grid×grid, antialiased bicubic."""
    m = franca.build_backbone("vits14", embed_dim=32, depth=1, num_heads=2)
    old = m.pos_embed.detach().clone()
    m.set_pos_grid(grid)
    assert m.pos_embed.shape == (1, 1 + grid * grid, 32) and m.img_size == grid * 14
    R = aa_resize_matrix(16, grid)
    ref = torch.einsum("ha,abd,wb->hwd", R, old[0, 1:].double().reshape(16, 16, -1), R).reshape(1, -1, 32)
    _close(m.pos_embed[:, 1:].detach(), ref.float(), 1e-5)
    assert torch.equal(m.pos_embed[:, :1], old[:, :1])
    assert m.pos_embed.requires_grad


def test_resize_pos_embed_is_the_one_resize_with_the_former_train_numbers():
    """train/build.py had its own copy (a token count instead of a side); the one left in models gives the
    same numbers in fp32 and bf16, and refuses a table that is not a square grid."""
    import math

    import torch.nn.functional as F

    from franca.models.backbone import resize_pos_embed

    def former(pos, n_new):  # the removed train/build.py formula, kept here as the reference
        M, S = math.isqrt(pos.shape[1] - 1), math.isqrt(n_new)
        grid = pos[:, 1:].float().reshape(1, M, M, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(S, S), mode="bicubic", antialias=True, align_corners=False)
        return torch.cat([pos[:, :1].float(), grid.permute(0, 2, 3, 1).reshape(1, S * S, -1)], dim=1).to(pos.dtype)

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for m, s in ((4, 6), (6, 4), (5, 5)):
            pos = torch.randn(1, 1 + m * m, 7, generator=g).to(dtype)
            out = resize_pos_embed(pos, s)
            assert out.dtype == dtype and out.shape == (1, 1 + s * s, 7)
            assert torch.equal(out, former(pos, s * s)), (dtype, m, s)
    with pytest.raises(ValueError, match="square grids"):
        resize_pos_embed(torch.zeros(1, 1 + 15, 2), 4)
