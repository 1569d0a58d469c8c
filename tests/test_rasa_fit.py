"""The iterative RASA fit on synthetic features, folding into a backbone, and `franca rasa` end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers.progress import bar_states
from PIL import Image

from franca.models.rasa_fold import load_rasa_projection, removal_projection
from franca.rasa.fit import CachedFeatures, RasaConfig, fit_rasa
from franca.rasa.removal import position_r2, position_targets, principal_angles_deg, remove_sequential


def _subspaces(D: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random orthonormal split of R^D: semantic basis Qs (D, D-2) and position basis Qp (D, 2)."""
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))[0].float()
    return Q[:, : D - 2], Q[:, D - 2 :]


def _features(M: int, Qs: torch.Tensor, Qp: torch.Tensor, seed: int, h: int = 8, w: int = 8):
    """Features = semantic part (random, position-free, in span(Qs)) + a known linear position code.

    The code is A·(row - ½, col - ½) placed in span(Qp), orthogonal to span(Qs); so the ideal RASA
    stage removes exactly span(Qp). Returns (features, semantic part), both (M, h·w, D).
    """
    g = torch.Generator().manual_seed(seed)
    A = torch.tensor([[3.0, 1.0], [0.5, 2.5]])
    sem = torch.randn(M, h * w, Qs.shape[1], generator=g) @ Qs.T
    code = ((position_targets(h, w) - 0.5) @ A.T) @ Qp.T
    return sem + code[None], sem


def _synthetic(M: int, D: int = 24, seed: int = 0) -> torch.Tensor:
    Qs, Qp = _subspaces(D, seed)
    return _features(M, Qs, Qp, seed + 1)[0]


def test_golden_rasa_recovers_position_subspace():
    Qs, Qp = _subspaces(24, seed=0)
    x, _ = _features(256, Qs, Qp, seed=1)
    x_val, sem_val = _features(64, Qs, Qp, seed=2)  # held-out images for the R² probe
    # A larger lr than the paper's keeps the test short: the fit converges in 160 steps (about 0.1 s).
    cfg = RasaConfig(iterations=1, epochs=20, lr=5e-2, batch_size=32, progress=False)
    res = fit_rasa(CachedFeatures(x, (8, 8), 32, seed=0), cfg, heldout=x_val)
    angles = principal_angles_deg(res.directions[0], Qp)
    assert angles.max() < 1.0, angles
    h = res.history[0]
    # The sigmoid predictor cannot reach R² 1 on targets linear in the features (sigmoid saturates at 0 and 1).
    assert h["before"]["ridge"]["r2"] > 0.99 and h["before"]["sigmoid"]["r2"] > 0.95, h
    assert h["after"]["ridge"]["r2"] < 0.01 and h["after"]["sigmoid"]["r2"] < 0.01, h
    print(h["before"]["sigmoid"], h["after"]["sigmoid"])
    # Semantic part unchanged: it lies in the complement of span(Qp); the relative change is ≤ sin(max angle).
    cleaned_sem = sem_val @ res.projection.T
    rel = (cleaned_sem - sem_val).norm() / sem_val.norm()
    assert rel < math.sin(math.radians(1.0)), rel
    # And independently of the fit's own probe: a probe on other cleaned held-out tokens finds no position.
    x_more, _ = _features(32, Qs, Qp, seed=3)
    y = position_targets(8, 8).repeat(16, 1)
    xc = (x_more @ res.projection.T).reshape(2, -1, 24)
    assert position_r2(xc[0], y, xc[1], y) < 0.01


@pytest.mark.parametrize("project_previous", [True, False])
def test_fit_stages_fold_and_orthonormality(project_previous):
    x = _synthetic(64, D=16, seed=3)
    cfg = RasaConfig(iterations=3, epochs=2, lr=2e-3, batch_size=16, progress=False, project_previous=project_previous)
    res = fit_rasa(CachedFeatures(x, (8, 8), 16), cfg)
    assert len(res.directions) == 3 and len(res.history) == 3
    for U in res.directions:
        assert torch.allclose(U.T @ U, torch.eye(2), atol=1e-5)
    assert torch.allclose(x @ res.projection.T, remove_sequential(x, res.directions), atol=1e-5)
    U_all = torch.cat(res.directions, dim=1)
    if project_previous:  # all 2T directions orthonormal: the folded map is the orthogonal projection I - U Uᵀ
        assert torch.allclose(U_all.T @ U_all, torch.eye(6), atol=1e-5)
        assert torch.allclose(res.projection, torch.eye(16) - U_all @ U_all.T, atol=1e-5)
    else:  # reference removal: stage t uses Gram-Schmidt of the raw weight, exactly
        from franca.models.rasa_fold import gram_schmidt_2d

        assert torch.allclose(res.projection, removal_projection([gram_schmidt_2d(W) for W in res.weights]), atol=1e-6)


# ------------------------------------------------------------------------------------------ backbone
@pytest.fixture(scope="module")
def tiny():
    import franca

    torch.manual_seed(0)
    return franca.build_backbone("vitt8", depth=1, embed_dim=32, num_heads=2, img_size=32).eval()


def test_folded_backbone_matches_sequential_and_survives_export(tiny, tmp_path):
    import franca
    from franca.rasa.backbone import apply_to_intermediate, fold_into_backbone
    from franca.rasa.fit import extract_all

    imgs = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tokens = extract_all(tiny, [imgs[:6], imgs[6:]], torch.device("cpu"))
    cfg = RasaConfig(iterations=3, epochs=2, batch_size=6, progress=False)
    res = fit_rasa(CachedFeatures(tokens, (4, 4), 6), cfg, heldout=tokens[:4])
    fold_into_backbone(tiny, res.projection)
    with torch.no_grad():
        out = tiny.forward_features(imgs[:3], use_rasa_head=True)
    expected = remove_sequential(out["x_norm_patchtokens"], res.directions)
    assert torch.allclose(out["patch_token_rasa"], expected, atol=1e-5)
    inter = apply_to_intermediate(tiny, imgs[:3], n=1)
    assert torch.allclose(inter[0], expected, atol=1e-5)

    path = franca.export_backbone(tiny, tmp_path / "tiny-rasa.safetensors")
    loaded = franca.load_backbone("vitt8", weights=path, depth=1, embed_dim=32, num_heads=2, img_size=32)
    assert loaded.rasa_proj is not None and torch.allclose(loaded.rasa_proj, res.projection)
    with torch.no_grad():
        again = loaded.forward_features(imgs[:3], use_rasa_head=True)["patch_token_rasa"]
    assert torch.allclose(again, expected, atol=1e-5)
    assert torch.allclose(load_rasa_projection(path, 32), res.projection)  # the map also reads from the export
    fold_into_backbone(tiny, None)


def _small_backbone(folder):
    """A vitt8 with D=32 and one block: at 64 px two held-out images (128 tokens ≥ 4·D) can fit the probes."""
    import franca

    torch.manual_seed(0)
    return franca.export_backbone(
        franca.build_backbone("vitt8", depth=1, embed_dim=32, num_heads=2), folder / "small.safetensors"
    )


def test_franca_rasa_command_end_to_end(tmp_path):

    import franca
    from franca.cli import main

    data = tmp_path / "images"
    data.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(10):
        arr = (torch.rand(40, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(data / f"img{i}.png")
    out = tmp_path / "vitt8-rasa.safetensors"
    rc = main(
        [
            "rasa",
            "--model",
            "vitt8",
            "--weights",
            str(_small_backbone(tmp_path)),
            "--data",
            str(data),
            "--iterations",
            "2",
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--size",
            "64",
            "--num-workers",
            "0",
            "--out",
            str(out),
            "--quiet",
            "--heldout-fraction",
            "0.3",
            "--probe-max-steps",
            "100",
        ]
    )
    assert rc == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert [h["iteration"] for h in report["history"]] == [1, 2]
    assert all(
        math.isfinite(h[w][p]["r2"])
        for h in report["history"]
        for w in ("before", "after")
        for p in ("ridge", "sigmoid")
    )
    model = franca.load_backbone("vitt8", weights=out)
    assert model.rasa_proj is not None
    P_file = load_rasa_projection(out.with_name(out.stem + ".rasa.safetensors"), model.embed_dim)
    assert torch.allclose(model.rasa_proj, P_file, atol=1e-6)
    # The folded map is an orthogonal projection of rank D - 2T (default: restricted directions).
    assert torch.allclose(P_file @ P_file, P_file, atol=1e-5)
    assert round(float(torch.trace(P_file))) == model.embed_dim - 4
    # Both probes' sizes are reported; 3 held-out images split by image into 2 fit + 1 score.
    assert report["probe_sizes"] == {
        "fit_images": 2,
        "fit_tokens": 128,
        "score_images": 1,
        "score_tokens": 64,
        "dim": model.embed_dim,
    }
    assert report["stop_reason"] == "fixed number of stages (2)"
    assert (report["status"] == "probe_failure") == bool(report["probe_failures"]) == (report["metric"] is None)


def test_franca_rasa_command_auto_iterations(tmp_path):

    from franca.cli import main

    data = tmp_path / "images"
    data.mkdir()
    g = torch.Generator().manual_seed(1)
    for i in range(12):
        Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()).save(data / f"{i}.png")
    out = tmp_path / "auto.safetensors"
    rc = main(
        [
            "rasa",
            "--weights",
            str(_small_backbone(tmp_path)),
            "--data",
            str(data),
            "--iterations",
            "auto",
            "--max-iterations",
            "2",
            "--max-steps",
            "60",
            "--probe-max-steps",
            "60",
            "--batch-size",
            "4",
            "--size",
            "64",
            "--num-workers",
            "0",
            "--out",
            str(out),
            "--quiet",
            "--heldout-fraction",
            "0.4",
        ]
    )
    assert rc == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["config"]["iterations"] == "auto" and 1 <= report["iterations"] <= 2
    assert report["stop_reason"] and all(h["steps"] <= 60 for h in report["history"])
    assert all(h["after"]["sigmoid"]["detail"]["steps"] <= 60 for h in report["history"])
    with pytest.raises(SystemExit):
        main(["rasa", "--iterations", "several"])


def test_load_backbone_with_official_rasa_head_file(tmp_path):
    """`load_backbone(..., rasa=FILE)` with an official-layout head gives the head's cleaned tokens."""
    import franca
    from franca.models.rasa_fold import gram_schmidt_2d

    D = 32
    g = torch.Generator().manual_seed(4)
    ws = [torch.randn(2, D, generator=g) for _ in range(4)]  # 3 pre-position layers + the last predictor
    sd = {f"rasa_head.pre_pos_layers.{i}.weight": w for i, w in enumerate(ws[:-1])}
    sd["rasa_head.pos_pred.weight"] = ws[-1]
    path = tmp_path / "franca_vitt8_rasa.pth"
    torch.save(sd, path)
    w = franca.export_backbone(
        franca.build_backbone("vitt8", depth=1, embed_dim=D, num_heads=2, img_size=32), tmp_path / "vitt8.safetensors"
    )
    model = franca.load_backbone("vitt8", weights=w, rasa=path)
    x = torch.randn(2, 3, 32, 32, generator=g)
    with torch.no_grad():
        out = model.forward_features(x, use_rasa_head=True)
    expected = remove_sequential(out["x_norm_patchtokens"], [gram_schmidt_2d(w) for w in ws])
    assert torch.allclose(out["patch_token_rasa"], expected, atol=1e-5)


# ------------------------------------------------------------------------------------------ auto stages
def _auto_fit(threshold: float, min_drop: float, iterations: int = 4):
    Qs, Qp = _subspaces(16, seed=5)
    x, _ = _features(96, Qs, Qp, seed=6)
    held, _ = _features(32, Qs, Qp, seed=7)
    cfg = RasaConfig(
        iterations=iterations,
        auto=True,
        auto_threshold=threshold,
        auto_min_drop=min_drop,
        lr=5e-2,
        batch_size=32,
        progress=False,
    )
    return fit_rasa(CachedFeatures(x, (8, 8), 32), cfg, heldout=held)


def test_auto_stops_below_threshold_after_one_stage():
    res = _auto_fit(threshold=0.05, min_drop=0.005)
    assert len(res.directions) == 1 and "below the threshold 0.05" in res.stop_reason, res.stop_reason
    h = res.history[0]
    assert h["before"]["sigmoid"]["r2"] > 0.9 and max(h["after"][p]["r2"] for p in ("ridge", "sigmoid")) < 0.05
    assert h["converged"] is True and h["schedule"] == "until converged"
    report = res.report()
    assert report["iterations"] == 1 and report["stop_reason"] == res.stop_reason
    assert report["sigmoid_r2_initial"] == h["before"]["sigmoid"]["r2"]
    assert report["ridge_r2_final"] == h["after"]["ridge"]["r2"]


def test_auto_stops_when_r2_stops_falling_and_at_the_maximum():
    # Never "below" a threshold of -1: after stage 1 removed the code, stage 2 cannot lower the R² by 0.005.
    res = _auto_fit(threshold=-1.0, min_drop=0.005)
    assert len(res.directions) == 2 and "stopped falling" in res.stop_reason, res.stop_reason
    # Neither rule can fire: it runs to the maximum and says so.
    res = _auto_fit(threshold=-1.0, min_drop=-1.0, iterations=3)
    assert len(res.directions) == 3 and res.stop_reason == "reached the maximum of 3 stages"


def test_auto_needs_heldout_and_flags_probe_failure():
    x = _synthetic(64, D=16, seed=3)
    with pytest.raises(ValueError, match="held-out"):
        fit_rasa(CachedFeatures(x, (8, 8), 16), RasaConfig(auto=True, progress=False))
    # Held-out tokens with no position at all: the probes score below the mean, which is a probe
    # failure (reported, not a result), and the automatic stage count refuses to use it.
    noise = torch.randn(16, 64, 16, generator=torch.Generator().manual_seed(8))
    res = fit_rasa(CachedFeatures(x, (8, 8), 16), RasaConfig(iterations=3, auto=True, progress=False), heldout=noise)
    assert res.probe_failures and all("before removal" in f for f in res.probe_failures)
    assert len(res.directions) == 1 and "probe failed" in res.stop_reason


def last_bar(err: str) -> tuple[int, int | None]:
    return bar_states(err)[-1]


def test_rasa_stage_bar_shows_no_false_total(capsys, monkeypatch):
    """Until converged a stage stops at its convergence (189-555 of 2000 steps once): the bar has no total."""
    import franca.utils.progress
    from franca.rasa.fit import CachedFeatures, RasaConfig, train_position_predictor

    monkeypatch.setattr(franca.utils.progress, "_QUIET", False)  # an earlier `main([..., "--quiet"])` set it

    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(32, 16, 8, generator=g)
    cfg = RasaConfig(max_steps=2000, min_steps=20, window=10, tol=0.5, batch_size=8, progress=True)
    _, record = train_position_predictor(CachedFeatures(tokens, (4, 4), 8), None, cfg, torch.device("cpu"), g)
    err = capsys.readouterr().err
    assert record["converged"] and record["steps"] < 2000
    assert "until converged (max 2000 steps)" in err and "/2000" not in err
    assert last_bar(err) == (record["steps"], None)
