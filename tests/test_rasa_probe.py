"""The held-out position probes: ridge with cross-validated strength, the sigmoid predictor's convergence,
the split by image, the dihedral held-out views and the probe-failure flag."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from franca.rasa.probe import (
    PositionProbe,
    ProbeSettings,
    check_initial,
    dihedral_views,
    has_converged,
    heldout_images_needed,
    n_fit_images,
    probe_shortfall,
    r2_score,
    ridge_r2,
    sigmoid_r2,
    split_by_image,
    train_sigmoid_predictor,
)
from franca.rasa.removal import position_r2, position_targets

GRID = (4, 4)


def _tokens(M: int, D: int, strength: float, seed: int, grid=GRID) -> torch.Tensor:
    """Noise (M, N, D) plus strength × a fixed linear code of (row, col) along two fixed directions."""
    g = torch.Generator().manual_seed(seed)
    B = torch.randn(D, 2, generator=torch.Generator().manual_seed(1234)) / D**0.5
    code = (position_targets(*grid) - 0.5) @ B.T
    return torch.randn(M, grid[0] * grid[1], D, generator=g) + strength * code[None] * D**0.5


def test_r2_score_golden():
    y = torch.tensor([[0.0, 0.0], [1.0, 2.0], [2.0, 4.0]])
    assert r2_score(y, y) == (1.0, 1.0, 1.0)
    mean = y.mean(0).expand_as(y)
    assert r2_score(mean, y) == pytest.approx((0.0, 0.0, 0.0), abs=1e-12)
    # row: residuals (1, 0, 1) over Σ(y-ȳ)² = 2 → R² 0; col: prediction 0 everywhere, SS_tot 8, SS_res 20 → -1.5
    pred = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    assert r2_score(pred, y)[1:] == pytest.approx((1 - 2 / 2, 1 - 20 / 8))


def test_split_by_image_keeps_images_whole():
    x = torch.arange(5 * 3 * 2, dtype=torch.float32).reshape(5, 3, 2)
    fit, score = split_by_image(x, 0.6)
    assert fit.shape == (3, 3, 2) and score.shape == (2, 3, 2)
    assert torch.equal(torch.cat([fit, score]), x)
    with pytest.raises(ValueError, match="M ≥ 2"):
        split_by_image(x[:1])
    with pytest.raises(ValueError, match="fraction"):
        split_by_image(x, 1.0)


def test_cross_validated_ridge_survives_few_tokens_per_dimension():
    """The failure the old report showed: with fewer fit tokens than dimensions a near-unregularised
    least-squares probe scores below the mean (R² < 0) on features that do encode position; the
    cross-validated ridge finds it (R² > 0.3)."""
    D = 96
    fit, score = _tokens(4, D, 0.35, seed=0), _tokens(60, D, 0.35, seed=1)
    y_fit, y_score = position_targets(*GRID).repeat(4, 1), position_targets(*GRID).repeat(60, 1)
    naive = position_r2(fit.reshape(-1, D), y_fit, score.reshape(-1, D), y_score, ridge=1e-4)
    cv = ridge_r2(fit, score, GRID)
    assert naive < 0, naive
    assert cv.r2 > 0.3, cv
    assert (cv.fit_images, cv.fit_tokens, cv.score_images, cv.score_tokens) == (4, 64, 60, 960)
    assert cv.detail["cv_folds"] == 4 and cv.detail["ridge"] > 1e-4


def test_ridge_probe_golden_exact_linear_code():
    """Noise-free tokens that are an affine function of (row, col): R² 1; tokens without position: R² ≤ 0."""
    B = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    code = position_targets(*GRID) @ B.T + 0.3
    x = code[None].repeat(6, 1, 1)
    assert ridge_r2(x[:3], x[3:], GRID).r2 > 0.999
    noise = torch.randn(40, 16, 8, generator=torch.Generator().manual_seed(1))
    assert ridge_r2(noise[:20], noise[20:], GRID).r2 < 0.02


def test_has_converged_golden():
    falling = [1.0 / (1 + s) for s in range(40)]
    assert not has_converged(falling, window=10, tol=1e-3)
    flat = [1.0] * 20
    assert has_converged(flat, window=10, tol=1e-3)
    assert not has_converged(flat, window=10, tol=1e-3, min_steps=30)  # too early
    assert not has_converged(flat[:19], window=10, tol=1e-3)  # two windows needed
    # windows 1.0 and 0.9995: improvement 5e-4 relative < 1e-3 → converged; with tol 1e-4 not
    almost = [1.0] * 10 + [0.9995] * 10
    assert has_converged(almost, window=10, tol=1e-3) and not has_converged(almost, window=10, tol=1e-4)


def test_sigmoid_predictor_trains_by_steps_to_convergence():
    x = _tokens(64, 16, 1.0, seed=2)
    s = ProbeSettings()
    W, rec = train_sigmoid_predictor(x, GRID, s)
    assert rec["converged"] and rec["steps"] < s.max_steps and rec["loss_last"] < rec["loss_first"]
    # From W = 0 the first loss is the targets' variance: Var(i/3) over i = 0..3 is 5/36.
    assert rec["loss_first"] == pytest.approx(5 / 36)
    # Converged means near the optimum: a run forced to 1500 steps gives the same held-out R² to 0.01.
    score = _tokens(32, 16, 1.0, seed=3)
    long = ProbeSettings(max_steps=1500, min_steps=1500)
    r_conv, r_long = sigmoid_r2(x, score, GRID, s), sigmoid_r2(x, score, GRID, long)
    assert r_long.detail["steps"] == 1500
    assert r_conv.r2 > 0.5 and abs(r_long.r2 - r_conv.r2) < 0.01, (r_conv.r2, r_long.r2)
    capped = train_sigmoid_predictor(x, GRID, ProbeSettings(max_steps=30))[1]
    assert capped["steps"] == 30 and not capped["converged"]


def test_dihedral_views_are_reproducible_group_elements():
    imgs = torch.arange(6 * 1 * 3 * 3, dtype=torch.float32).reshape(6, 1, 3, 3)
    v = dihedral_views(imgs, seed=5)
    assert torch.equal(v, dihedral_views(imgs, seed=5))
    assert torch.equal(v[2:], dihedral_views(imgs[2:], seed=5, offset=2))  # batching does not change the views
    for a, b in zip(imgs, v):
        elements = [torch.rot90(a, k, (-2, -1)) for k in range(4)]
        elements += [torch.flip(e, (-1,)) for e in elements]
        assert any(torch.equal(b, e) for e in elements)
    many = dihedral_views(torch.arange(9.0).reshape(1, 1, 3, 3).repeat(64, 1, 1, 1), seed=0)
    assert len({tuple(t.flatten().tolist()) for t in many}) == 8  # all eight elements occur
    with pytest.raises(ValueError, match="square"):
        dihedral_views(torch.zeros(1, 3, 4, 5), seed=0)


def test_position_probe_measures_and_flags_failure():
    probe = PositionProbe(_tokens(40, 16, 3.0, seed=4), GRID, ProbeSettings())
    m = probe.measure(None)
    assert m["ridge"]["r2"] > 0.8 and m["sigmoid"]["r2"] > 0.8 and check_initial(m) == []
    assert probe.sizes() == {"fit_images": 20, "fit_tokens": 320, "score_images": 20, "score_tokens": 320, "dim": 16}
    flagged = check_initial({"ridge": {"r2": 0.4}, "sigmoid": {"r2": -0.26}})
    assert len(flagged) == 1 and flagged[0].startswith("sigmoid") and "failed" in flagged[0]
    assert len(check_initial({"ridge": {"r2": float("nan")}, "sigmoid": {"r2": 0.1}})) == 1


def test_heldout_images_needed_golden():
    # vits14 at 224 px: 256 tokens, D=384: 6 fit images (6·256 = 1536 = 4·384); of 11 held-out images
    # round(5.5) = 6 fit and 5 score.
    assert heldout_images_needed(256, 384) == 11 and n_fit_images(11, 0.5) == 6
    # The tiny checkpoint at 64 px (64 tokens, D=128): 8 fit images, 7 score.
    assert heldout_images_needed(64, 128) == 15
    # Many tokens per image: two fit images (the ridge strength is cross-validated by image) and one scores.
    assert heldout_images_needed(64, 32) == 3 and n_fit_images(3, 0.5) == 2
    assert heldout_images_needed(64, 32, fit_fraction=0.8) == 3
    assert heldout_images_needed(16, 32, fit_fraction=0.8) == 10  # 8 fit (round(0.8·10)), 2 score
    assert probe_shortfall(11, 256, 384) == ""
    msg = probe_shortfall(2, 256, 384)
    assert "need at least 11 held-out images (6 to fit them" in msg and "5 to score them); there are 2" in msg


def _images(folder, n):
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()).save(folder / f"{i}.png")
    return folder


def test_rasa_refuses_too_few_heldout_images_before_any_work(tmp_path, monkeypatch, capsys):
    """22 images at the default --heldout-fraction 0.1: 2 held out, one to fit the probes; once this ran
    six minutes and then reported PROBE FAILURE. Now: one line, before any token is computed."""
    import franca
    import franca.rasa.fit as fit
    from franca.cli import main

    def no_work(*a, **k):
        raise AssertionError("tokens were computed before the refusal")

    monkeypatch.setattr(fit, "extract_patch_tokens", no_work)
    torch.manual_seed(0)
    weights = franca.export_backbone(
        franca.build_backbone("vitt8", depth=1, embed_dim=32, num_heads=2), tmp_path / "small.safetensors"
    )
    data = _images(tmp_path / "img", 22)
    argv = ["rasa", "--weights", str(weights), "--data", str(data), "--size", "64", "--num-workers", "0"]
    out = tmp_path / "r.safetensors"
    assert main([*argv, "--quiet", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "the position probes need at least 3 held-out images (2 to fit them, 2 × 64 tokens ≥ 4 × D=32" in err
    assert "there are 2 (--heldout-fraction 0.1 of 22 images)" in err and "nothing was trained" in err
    assert "--heldout-fraction 0.12 (19 of the 22 images left to train on)" in err
    assert not out.exists()
    # The advice is right: with it the split holds enough images (the refusal passes, the work starts).
    with pytest.raises(AssertionError, match="tokens were computed"):
        main([*argv, "--heldout-fraction", "0.12", "--quiet", "--out", str(out)])
