"""PCA slicing (Table 9): how much class information sits in the top principal directions.

Table 9 of arXiv 2507.14137 (no released code), with these assumptions: fit a PCA on the *train* CLS features
(``x_norm_clstoken``), centred, components sorted by explained variance; project train and val
onto the first k components for k ∈ {200, 100, 50, 25, 10} (clipped to the feature width); train
the linear probe of §3 on that single input (13-lr grid, SGD momentum 0.9, cosine) and report the
best val top-1 per k. The full-width probe on the raw CLS is reported as a reference point.

The PCA uses the D×D covariance in float64 and its eigendecomposition, so fitting on 1.28M × 1024
features needs only D² memory; components equal the right singular vectors of the centred data.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from franca.eval.classification_data import classification_inputs
from franca.eval.common import protocol_entry
from franca.eval.linear import LR_GRID, feature_batches, train_linear_grid
from franca.eval.stats import mean_std

log = logging.getLogger(__name__)

DEFAULT_KS = (200, 100, 50, 25, 10)


def fit_pca(x: torch.Tensor, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PCA of (N, D) features.

    Returns:
        mean (D,), components (D, D) whose *rows* are unit directions sorted by decreasing
        variance (sign fixed so each row's largest-magnitude entry is positive), and the
        variances (D,) (eigenvalues of the covariance, divided by N - 1).
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"PCA needs (N ≥ 2, D) features, got shape {tuple(x.shape)}")
    n, D = x.shape
    mean = x.double().mean(dim=0)
    cov = torch.zeros(D, D, dtype=torch.float64, device=x.device)
    for s in range(0, n, chunk):  # accumulate Xc^T Xc in slices: D² memory only
        xc = x[s : s + chunk].double() - mean
        cov += xc.T @ xc
    cov /= n - 1
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    order = torch.argsort(evals, descending=True)
    comps = evecs[:, order].T.contiguous()
    idx = comps.abs().argmax(dim=1)
    signs = torch.sign(comps.gather(1, idx[:, None]))
    comps = comps * signs
    return mean, comps, evals[order].clamp_min(0)


def project(x: torch.Tensor, mean: torch.Tensor, components: torch.Tensor, k: int) -> torch.Tensor:
    """(N, D) → (N, k) coordinates on the first k principal components, float32."""
    return ((x.double() - mean) @ components[:k].T).float()


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
    ks: Sequence[int] = DEFAULT_KS,
    epochs: int = 10,
    probe_batch_size: int = 256,
    lrs: Sequence[float] | None = None,
    cache_dir: str | None = None,
    model_key: str | None = None,
) -> dict[str, Any]:
    """PCA-slicing protocol; ``metric`` is the top-1 at the largest k, ``per_k`` has every k.

    `data`: an ImageFolder root (train/, val/), a (train, val) pair of data sets, or None (the built-in
    toy set). `batch_size` is the images per backbone pass (`EvalArgs`), `probe_batch_size` the linear
    probe's batch.
    """

    lrs = tuple(lrs) if lrs is not None else LR_GRID
    inputs = classification_inputs(
        model,
        data,
        protocol="pca_slice",
        size=size,
        batch_size=batch_size,
        device=device,
        precision=precision,
        num_workers=num_workers,
        cache_dir=cache_dir,
        model_key=model_key,
    )
    dev, train, val = inputs.device, inputs.train, inputs.val
    D = train["cls"].shape[1]
    C = int(max(train["labels"].max(), val["labels"].max())) + 1
    mean, comps, variances = fit_pca(train["cls"].to(dev))
    kept = sorted({min(int(k), D) for k in ks}, reverse=True)
    if any(int(k) > D for k in ks):
        log.warning("pca-slice: k clipped to the feature width %d", D)
    n_train = train["labels"].numel()
    iters = -(-n_train // probe_batch_size)
    slices = {
        f"k{k}": (
            project(train["cls"].to(dev), mean, comps, k).cpu(),
            project(val["cls"].to(dev), mean, comps, k).cpu(),
        )
        for k in kept
    }
    slices["full"] = (train["cls"], val["cls"])
    per_k: dict[str, dict[str, float]] = {}
    per_seed = []
    for name, (xtr, xv) in slices.items():
        accs = []
        for seed in seeds:
            out = train_linear_grid(
                feature_batches({"x": xtr}, train["labels"], probe_batch_size, seed),
                {"x": xv},
                val["labels"],
                inputs={name: lambda f: f["x"]},
                num_classes=C,
                epochs=epochs,
                iters_per_epoch=iters,
                batch_size=probe_batch_size,
                lrs=lrs,
                seed=seed,
                device=dev,
            )
            accs.append(out["best"]["top1"])
            per_seed.append({"slice": name, "seed": seed, "best": out["best"]})
        per_k[name] = mean_std(accs)
    total_var = float(variances.sum())
    explained = {f"k{k}": float(variances[:k].sum()) / total_var if total_var > 0 else 0.0 for k in kept}
    head = f"k{kept[0]}"
    return {
        "protocol": "pca_slice",
        "metric_name": f"top1_{head}",
        "metric": per_k[head]["mean"],
        "metric_std": per_k[head]["std"],
        "per_k": {k: v["mean"] for k, v in per_k.items()},
        "per_k_std": {k: v["std"] for k, v in per_k.items()},
        "explained_variance": explained,
        "per_seed": per_seed,
        "settings": {
            "ks": kept,
            "requested_ks": [int(k) for k in ks],
            "feature_dim": D,
            "epochs": epochs,
            "probe_batch_size": probe_batch_size,
            "batch_size": batch_size,
            "lrs": list(lrs),
            "seeds": list(seeds),
            "size": size,
            "pca": "train CLS, centred, sorted by variance",
        },
        "data": {"n_train": int(n_train), "n_val": int(val["labels"].numel()), "num_classes": C},
    }
