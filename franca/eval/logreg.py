"""Logistic regression on frozen CLS features, the fine-grained protocol (arXiv 2507.14137,
Table 7; DINOv2 `dinov2/eval/log_regression.py`).

Multinomial logistic regression with an L2 penalty on the weights (not the bias), fitted by
L-BFGS in float64 — the objective of scikit-learn's ``LogisticRegression(C)`` and cuML's
quasi-Newton solver:

    minimise  C · Σ_i CE(W x_i + b, y_i) + ½ ‖W‖²,

written here divided by C·n (same minimiser, better-scaled gradients). Written in torch so it runs
on a GPU as well; features are the final-normed CLS, neither L2-normalised nor standardised.

Selection (the reference's default path): shuffle the train features with seed 0, hold out the
first 10 % to choose C from 10^linspace(-6, 5, 45) by top-1 (or mean per-class accuracy), then
refit on all of train with that C and score the test split. Fits along the C grid warm-start
from the previous solution; the problem is strictly convex, so this changes speed, not the answer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from franca.eval.classification_data import MEAN_PER_CLASS, classification_inputs
from franca.eval.common import protocol_entry
from franca.eval.stats import mean_std
from franca.utils.device import resolve_device
from franca.utils.progress import progress as progress_bar

log = logging.getLogger(__name__)

METRICS = ("accuracy", "mean_per_class")


def c_grid(n: int = 45, lo: float = -6.0, hi: float = 5.0) -> list[float]:
    """C = 10^x for x in linspace(lo, hi, n); the reference grid is n = 45 over [-6, 5]."""
    return [float(c) for c in np.logspace(lo, hi, n)]


def fit_logreg(
    x: torch.Tensor,
    y: torch.Tensor,
    C: float,
    num_classes: int,
    *,
    max_iter: int = 1000,
    tol: float = 1e-10,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-regularised multinomial logistic regression by L-BFGS (strong-Wolfe line search).

    Args:
        x: (n, D) float64 features on the compute device; y: (n,) labels.
        C: inverse regularisation strength (scikit-learn's meaning).
        init: optional (W, b) warm start.
    Returns:
        W (num_classes, D) and b (num_classes,), float64.
    """
    if C <= 0:
        raise ValueError(f"C must be positive, got {C}")
    x = x.double()
    n, D = x.shape
    if init is not None:
        W = init[0].detach().clone().double().requires_grad_(True)
        b = init[1].detach().clone().double().requires_grad_(True)
    else:
        W = torch.zeros(num_classes, D, dtype=torch.float64, device=x.device, requires_grad=True)
        b = torch.zeros(num_classes, dtype=torch.float64, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [W, b],
        lr=1.0,
        max_iter=max_iter,
        max_eval=int(max_iter * 1.25),
        tolerance_grad=tol,
        tolerance_change=1e-15,
        history_size=20,
        line_search_fn="strong_wolfe",
    )
    reg = 1.0 / (2.0 * C * n)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ W.T + b, y, reduction="mean") + reg * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return W.detach(), b.detach()


def predict(W: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (x.double() @ W.T + b).argmax(dim=1)


def score(pred: torch.Tensor, y: torch.Tensor, metric: str = "accuracy", num_classes: int | None = None) -> float:
    """Top-1 accuracy or mean per-class accuracy (classes absent from `y` are skipped), in %."""
    if metric == "accuracy":
        return 100.0 * float((pred == y).double().mean())
    if metric == "mean_per_class":
        C = num_classes or int(y.max()) + 1
        hits = torch.zeros(C, dtype=torch.float64, device=y.device).index_add_(0, y, (pred == y).double())
        counts = torch.bincount(y, minlength=C).double()
        present = counts > 0
        return 100.0 * float((hits[present] / counts[present]).mean())
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def logreg_protocol(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    Cs: Sequence[float] | None = None,
    metric: str = "accuracy",
    holdout_fraction: float = 0.1,
    seed: int = 0,
    max_iter: int = 1000,
    device: str | torch.device | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Choose C on a held-out share of train, refit on all of train, score test (§4 default path)."""

    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    dev = resolve_device(device) if device is not None else torch.device("cpu")
    Cs = sorted(Cs) if Cs is not None else c_grid()
    xtr, ytr = train_x.to(dev, torch.float64), train_y.to(dev).long()
    xte, yte = test_x.to(dev, torch.float64), test_y.to(dev).long()
    K = int(max(ytr.max(), yte.max())) + 1
    n = ytr.numel()
    n_hold = max(1, int(math.floor(holdout_fraction * n)))
    if n - n_hold < 1:
        raise ValueError(f"too few train samples ({n}) to hold out {holdout_fraction:.0%} for choosing C")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).to(dev)
    hold, fit = perm[:n_hold], perm[n_hold:]
    scores: dict[str, float] = {}
    init = None
    it: Any = Cs
    if show_progress:
        it = progress_bar(Cs, desc="logreg C grid", unit="C")
    for C in it:
        W, b = fit_logreg(xtr[fit], ytr[fit], C, K, max_iter=max_iter, init=init)
        init = (W, b)
        scores[f"{C:.6g}"] = score(predict(W, b, xtr[hold]), ytr[hold], metric, K)
    best_key = max(scores, key=lambda k: scores[k])  # first (smallest) C wins ties
    best_C = float(best_key)
    W, b = fit_logreg(xtr, ytr, best_C, K, max_iter=max_iter, init=init)
    pred = predict(W, b, xte)
    return {
        "best_C": best_C,
        "holdout_scores": scores,
        "test": score(pred, yte, metric, K),
        "test_accuracy": score(pred, yte, "accuracy", K),
        "test_mean_per_class": score(pred, yte, "mean_per_class", K),
        "metric_type": metric,
        "n_fit": int(fit.numel()),
        "n_holdout": int(n_hold),
    }


@protocol_entry()
def evaluate(
    model: torch.nn.Module,
    data: Any = None,
    *,
    size: int = 224,
    seeds: Sequence[int] = (0,),
    batch_size: int = 64,
    device: str | torch.device = "auto",
    precision: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
    dataset_name: str | None = None,
    Cs: Sequence[float] | None = None,
    metric: str | None = None,
    max_iter: int = 1000,
    cache_dir: str | None = None,
    model_key: str | None = None,
) -> dict[str, Any]:
    """Logistic-regression protocol on one data set; ``metric`` is the test score (%).

    `data`: a (train, test) pair of data sets; or a root: the folder holding the fine-grained data set
    `dataset_name` (one of the 11 of Table 7), or without `dataset_name` an ImageFolder (train/, val/ or
    test/); None: the built-in toy set. `metric` None picks mean per-class for Aircraft, Pets,
    Caltech-101 and Flowers and top-1 otherwise (SimCLR convention). Each seed reshuffles the held-out
    split (the reference uses seed 0).
    """

    inputs = classification_inputs(
        model,
        data,
        protocol="logreg",
        size=size,
        batch_size=batch_size,
        device=device,
        precision=precision,
        num_workers=num_workers,
        cache_dir=cache_dir,
        finegrained=dataset_name,
        model_key=f"{model_key}|{dataset_name}" if dataset_name else model_key,
    )
    dev, train, test = inputs.device, inputs.train, inputs.val
    if metric is None:
        metric = "mean_per_class" if dataset_name in MEAN_PER_CLASS else "accuracy"
    runs = [
        logreg_protocol(
            train["cls"].double(),
            train["labels"],
            test["cls"].double(),
            test["labels"],
            Cs=Cs,
            metric=metric,
            seed=s,
            max_iter=max_iter,
            device=dev,
            show_progress=True,
        )
        for s in seeds
    ]
    ms = mean_std([r["test"] for r in runs])
    return {
        "protocol": "logreg",
        "dataset": dataset_name or "imagefolder",
        "metric_name": metric,
        "metric": ms["mean"],
        "metric_std": ms["std"],
        "best_C": [r["best_C"] for r in runs],
        "per_seed": runs,
        "settings": {
            "Cs": list(Cs) if Cs is not None else "10^linspace(-6,5,45)",
            "metric": metric,
            "holdout_fraction": 0.1,
            "seeds": list(seeds),
            "size": size,
            "max_iter": max_iter,
        },
        "data": {"n_train": int(train["labels"].numel()), "n_test": int(test["labels"].numel())},
    }
