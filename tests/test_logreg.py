"""Logistic regression: the torch L-BFGS fit matches scikit-learn; C selection and metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from franca.eval.logreg import c_grid, fit_logreg, logreg_protocol, predict, score


def _data(n=120, D=10, K=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, K, (n,), generator=g)
    x = 2 * torch.randn(n, D, generator=g, dtype=torch.float64)
    x[:, :K] += 4 * torch.nn.functional.one_hot(y, K)
    return x, y


@pytest.mark.parametrize("C", [1e-3, 0.1, 10.0])
def test_matches_sklearn_multinomial(C):
    from sklearn.linear_model import LogisticRegression

    x, y = _data()
    W, b = fit_logreg(x, y, C, 4)
    sk = LogisticRegression(C=C, max_iter=10000, tol=1e-12).fit(x.numpy(), y.numpy())  # multinomial, lbfgs, L2
    np.testing.assert_allclose(W.numpy(), sk.coef_, atol=1e-5)
    probs = torch.softmax(x @ W.T + b, dim=1).numpy()
    np.testing.assert_allclose(probs, sk.predict_proba(x.numpy()), atol=1e-5)


def test_c_grid_is_the_reference_grid():
    cs = c_grid()
    assert len(cs) == 45
    assert cs[0] == pytest.approx(1e-6) and cs[-1] == pytest.approx(1e5)
    # log-spaced: step 11/44 = 0.25 decades
    assert cs[1] / cs[0] == pytest.approx(10**0.25)


def test_mean_per_class_golden():
    # class 0: 3 of 4 right (75 %), class 1: 0 of 1 (0 %) → mean 37.5 %, top-1 3/5 = 60 %.
    y = torch.tensor([0, 0, 0, 0, 1])
    pred = torch.tensor([0, 0, 0, 1, 0])
    assert score(pred, y, "mean_per_class") == pytest.approx(37.5)
    assert score(pred, y, "accuracy") == pytest.approx(60.0)


def test_protocol_selects_c_on_holdout_and_refits():
    xtr, ytr = _data(200, seed=1)
    xte, yte = _data(100, seed=2)
    out = logreg_protocol(xtr, ytr, xte, yte, Cs=c_grid(5))
    assert out["n_holdout"] == 20 and out["n_fit"] == 180
    assert len(out["holdout_scores"]) == 5
    best = max(out["holdout_scores"].values())
    assert out["holdout_scores"][f"{out['best_C']:.6g}"] == best
    # Refit on all train with the chosen C gives exactly the model the protocol scored.
    W, b = fit_logreg(xtr, ytr, out["best_C"], 4)
    assert out["test"] == pytest.approx(score(predict(W, b, xte), yte), abs=1.0)
    assert out["test"] > 60.0  # separable: chance is 25 %
    json.dumps(out)


def test_bad_inputs():
    x, y = _data(20)
    with pytest.raises(ValueError, match="C must be positive"):
        fit_logreg(x, y, 0.0, 4)
    with pytest.raises(ValueError, match="metric"):
        logreg_protocol(x, y, x, y, metric="f1")


class _ColourCls(torch.nn.Module):
    embed_dim, patch_size, n_blocks = 3, 4, 1

    def forward_features(self, x, masks=None):
        return {"x_norm_clstoken": x.mean(dim=(2, 3))}


def test_evaluate_separates_colour_classes():
    """evaluate() on a (train, test) pair separates colour classes; a Table 7 data set needs a root."""
    from torch.utils.data import TensorDataset

    from franca.eval import logreg

    g = torch.Generator().manual_seed(2)
    y = torch.randint(0, 3, (60,), generator=g)
    x = (torch.eye(3) * 2 - 1)[y][:, :, None, None] + 0.2 * torch.randn(60, 3, 4, 4, generator=g)
    train, test = TensorDataset(x[:40], y[:40]), TensorDataset(x[40:], y[40:])
    kw = dict(device="cpu", Cs=[0.1, 10.0], max_iter=50, progress=False)
    new = logreg.evaluate(_ColourCls(), (train, test), **kw)
    assert new["protocol"] == "logreg" and new["dataset"] == "imagefolder" and new["metric"] > 90.0
    with pytest.raises(ValueError, match="needs data=ROOT"):
        logreg.evaluate(_ColourCls(), dataset_name="cub200", **kw)
    json.dumps(new)
