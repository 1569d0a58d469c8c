"""RASA where it must work: a backbone whose patch tokens are content plus a low-rank linear position code.

``SyntheticBackbone.forward_features`` maps each patch's pixels linearly to D dimensions (the
content) and adds A·(row − ½, col − ½) along two fixed random directions (the position code,
rank 2, orthogonal to the directions the classes differ in but not to the content's noise). Images are patches of one of C class colours plus noise,
drawn independently of position, so position is only in the code. RASA (trained to convergence,
``--iterations auto``) must drive both held-out probes to R² ≤ 0.05 and leave a linear content
probe's accuracy within 1 point.
"""

from __future__ import annotations

import pytest
import torch

from franca.rasa.fit import CachedFeatures, RasaConfig, extract_all, fit_rasa
from franca.rasa.probe import ProbeSettings
from franca.rasa.removal import apply_projection, position_targets

P, GRID, D, C = 4, 8, 48, 6


class SyntheticBackbone(torch.nn.Module):
    """Tokens = W_c · pixels(patch) + A · (row − ½, col − ½) along a rank-2 code; the backbone interface RASA uses."""

    def __init__(self, dim: int = D, patch: int = P, seed: int = 0, orthogonal_to_class: bool = True) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.patch_size, self.embed_dim = patch, dim
        q = torch.linalg.qr(torch.randn(3 * patch * patch, dim, generator=g))[0]  # orthonormal columns
        self.content = torch.nn.Parameter(q, requires_grad=False)
        code = torch.randn(2, dim, generator=g) * 1.5
        if orthogonal_to_class:  # the premise of RASA: position does not share directions with the classes
            colour = torch.linalg.qr(self.colour_directions().T)[0]  # (dim, 3)
            code = code - (code @ colour) @ colour.T
        self.code = torch.nn.Parameter(code, requires_grad=False)

    def colour_directions(self) -> torch.Tensor:
        """(3, dim): the tokens of a solid red, green and blue patch, the only directions the classes differ in."""
        p = self.patch_size
        solid = torch.zeros(3, 3 * p * p)
        for c in range(3):
            solid[c, c * p * p : (c + 1) * p * p] = 1.0
        return solid @ self.content

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        B, _, H, W = x.shape
        p = self.patch_size
        patches = x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 1, 4, 5).reshape(B, -1, 3 * p * p)
        pos = (position_targets(H // p, W // p) - 0.5) @ self.code
        return {"x_norm_patchtokens": patches @ self.content + pos[None]}


def _images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n images of GRID×GRID patches, each patch one of C colours (independent of position) plus pixel noise."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.randn(C, 3, generator=torch.Generator().manual_seed(99))
    labels = torch.randint(C, (n, GRID, GRID), generator=g)
    img = colours[labels].permute(0, 3, 1, 2)  # (n, 3, GRID, GRID)
    img = img.repeat_interleave(P, 2).repeat_interleave(P, 3)
    return img + 1.2 * torch.randn(img.shape, generator=g), labels.reshape(n, -1)


def _content_accuracy(fit_x, fit_y, score_x, score_y) -> float:
    """Linear probe on content labels: closed-form ridge to one-hot targets, argmax, accuracy in %."""
    x, xs = fit_x.reshape(-1, fit_x.shape[-1]).double(), score_x.reshape(-1, score_x.shape[-1]).double()
    y = torch.nn.functional.one_hot(fit_y.reshape(-1), C).double()
    mx, my = x.mean(0), y.mean(0)
    A = torch.linalg.solve((x - mx).T @ (x - mx) + 1e-3 * torch.eye(x.shape[1], dtype=x.dtype), (x - mx).T @ (y - my))
    pred = ((xs - mx) @ A + my).argmax(1)
    return 100.0 * float((pred == score_y.reshape(-1)).double().mean())


@pytest.fixture(scope="module")
def fitted():
    model = SyntheticBackbone().eval()
    dev = torch.device("cpu")
    train, _ = _images(192, seed=1)
    held, _ = _images(64, seed=2)
    tokens = extract_all(model, train.split(64), dev)
    heldout = extract_all(model, held.split(64), dev)
    cfg = RasaConfig(
        iterations=6, auto=True, batch_size=32, lr=1e-2, max_steps=1500, progress=False, probe=ProbeSettings()
    )
    return model, fit_rasa(CachedFeatures(tokens, (GRID, GRID), 32), cfg, device=dev, heldout=heldout)


def test_synthetic_backbone_rasa_removes_position(fitted):
    _, res = fitted
    assert res.probe_failures == []
    assert res.r2("ridge", "initial") > 0.5 and res.r2("sigmoid", "initial") > 0.5, res.initial
    assert res.r2("ridge", "final") <= 0.05 and res.r2("sigmoid", "final") <= 0.05, res.history[-1]["after"]
    assert "below the threshold" in res.stop_reason and len(res.history) <= 4, res.stop_reason
    for h in res.history:
        assert h["converged"] and h["steps"] < 1500  # each stage trained to convergence, not a fixed budget
    sizes = res.probe_sizes
    assert sizes == {"fit_images": 32, "fit_tokens": 2048, "score_images": 32, "score_tokens": 2048, "dim": D}
    print({k: (res.r2(k, "initial"), res.r2(k, "final")) for k in ("ridge", "sigmoid")})


def test_synthetic_backbone_rasa_keeps_content(fitted):
    model, res = fitted
    dev = torch.device("cpu")
    fit_img, fit_lab = _images(48, seed=3)
    score_img, score_lab = _images(48, seed=4)
    fx, sx = extract_all(model, [fit_img], dev), extract_all(model, [score_img], dev)
    before = _content_accuracy(fx, fit_lab, sx, score_lab)
    after = _content_accuracy(
        apply_projection(fx, res.projection), fit_lab, apply_projection(sx, res.projection), score_lab
    )
    assert 40.0 < before < 99.0, before  # a probe that is neither trivial nor saturated
    assert abs(after - before) <= 1.0, (before, after)
    print(f"content accuracy before {before:.2f} after {after:.2f}")
