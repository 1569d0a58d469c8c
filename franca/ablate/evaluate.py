"""The protocols of a sweep on one backbone, as a flat {metric: value} dict (each protocol's `evaluate()`).

Classification protocols (k-NN, linear, PCA slicing) run on the toy classification set at the
pretraining crop size; dense ones (overclustering, in-context retrieval) on the toy scenes at
`seg_size`; RASA's position R² is that of franca.rasa's closed-form ridge probe on held-out patch tokens
before and after a RASA fit on cached tokens. mIoU is reported ×100 so that every column reads in percent points.
PCA slicing follows Table 9: the linear probe on the first k principal components for
k = D, D/2, D/4, D/8, D/16 (D the feature width).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from franca.data.datasets.voc import voc_image_dir
from franca.data.source import open_images
from franca.data.toy import builtin_toy
from franca.eval import incontext, knn, linear, overcluster, pca_slice
from franca.rasa import data as rdata
from franca.rasa.fit import RasaConfig
from franca.rasa.pipeline import fit_rasa_on_images

PROTOCOLS = ("knn", "linear", "overcluster", "incontext", "pca-slice", "rasa")
PCA_FRACTIONS = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class MetricInfo:
    label: str
    higher_is_better: bool | None  # None: a measurement with no better direction (e.g. position R² before)


def metric_info(protocols: Sequence[str]) -> dict[str, MetricInfo]:
    """The metrics the protocols produce, in table order."""
    out: dict[str, MetricInfo] = {}
    for p in protocols:
        if p == "knn":
            out["knn"] = MetricInfo("k-NN top-1", True)
        elif p == "linear":
            out["linear"] = MetricInfo("linear top-1", True)
        elif p == "overcluster":
            out["overcluster"] = MetricInfo("overcluster mIoU K=100", True)
        elif p == "incontext":
            out["incontext"] = MetricInfo("in-context mIoU", True)
        elif p == "pca-slice":
            for f in PCA_FRACTIONS:
                out[_pca_key(f)] = MetricInfo(f"PCA {_frac(f)} top-1", True)
            out["pca_retention"] = MetricInfo("PCA 1/16 ÷ all", True)
        elif p == "rasa":
            out["rasa_r2_before"] = MetricInfo("position R² before RASA", None)
            out["rasa_r2_after"] = MetricInfo("position R² after RASA", False)
        else:
            raise ValueError(f"unknown protocol {p!r}; choose from {', '.join(PROTOCOLS)}")
    return out


def _pca_key(f: int) -> str:
    return f"pca_{_frac(f)}"


def _frac(f: int) -> str:
    return "all" if f == 1 else f"1/{f}"


@dataclass(frozen=True)
class EvalSettings:
    """Toy-scale protocol settings (the `franca eval` CPU defaults, lighter where a sweep runs them many times)."""

    size: int = 32
    seg_size: int = 128
    linear_epochs: int = 10
    overcluster_k: int = 100
    overcluster_seeds: tuple[int, ...] = (0, 1)
    rasa_size: int = 64
    rasa_images: int = 512
    rasa_iterations: int = 4
    rasa_epochs: int = 20
    data: str | None = None
    """labelled ImageFolder root (train/, val/) for the classification protocols' `data`; None: the built-in toy set"""
    rasa_root: str | None = None
    """folder of images for the RASA fit and its probe; None: the built-in toy set's images"""
    precision: str | None = None
    """the backbone's precision in every protocol ("auto", "bf16", "fp32"; None: "auto")"""
    domain: str | None = None
    """a built-in toy domain (franca.data.toy_domains, e.g. "textures") whose built-in set every protocol reads
    (classification from its imagenet/ split unless `data` is given, overclustering, in-context and RASA from its
    scenes unless `rasa_root` is given); None: the default built-in set"""

    def classification_data(self) -> str | None:
        """The classification protocols' `data`: `data`, else the domain's built-in set, else None (the default)."""
        if self.data is not None or self.domain is None:
            return self.data
        return str(builtin_toy(domain=self.domain) / "imagenet")

    def dense_data(self) -> str | None:
        """The dense protocols' `data`: the domain's built-in set (VOC layout), or None (the default toy set)."""
        return None if self.domain is None else str(builtin_toy(domain=self.domain))

    def to_dict(self) -> dict[str, Any]:
        """Plain values; optional settings left at None are omitted (older sweeps' results stay comparable)."""
        d = asdict(self)
        d["overcluster_seeds"] = list(self.overcluster_seeds)
        return {k: v for k, v in d.items() if v is not None}


def evaluate_backbone(
    model: torch.nn.Module,
    protocols: Sequence[str],
    device: torch.device,
    settings: EvalSettings = EvalSettings(),
    log: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """{metric: value} for `protocols` on `model` (eval mode, frozen)."""

    metric_info(protocols)  # validates the names
    model = model.eval().to(device)
    s, out = settings, {}
    prec = s.precision or "auto"
    cls_data, dense_data = s.classification_data(), s.dense_data()
    for p in protocols:
        if p == "knn":
            out["knn"] = float(knn.evaluate(model, cls_data, device=device, precision=prec, size=s.size)["metric"])
        elif p == "linear":
            out["linear"] = float(
                linear.evaluate(model, cls_data, device=device, precision=prec, size=s.size, epochs=s.linear_epochs)[
                    "metric"
                ]
            )
        elif p == "overcluster":
            r = overcluster.evaluate(
                model,
                dense_data,
                device=device,
                precision=prec,
                size=s.seg_size,
                ks=(s.overcluster_k,),
                seeds=s.overcluster_seeds,
            )
            out["overcluster"] = 100.0 * float(r["metric"])
        elif p == "incontext":
            r = incontext.evaluate(model, dense_data, device=device, precision=prec, size=s.seg_size)
            out["incontext"] = 100.0 * float(r["metric"])
        elif p == "pca-slice":
            D = int(model.embed_dim)
            ks = [max(1, D // f) for f in PCA_FRACTIONS]
            r = pca_slice.evaluate(
                model, cls_data, device=device, precision=prec, size=s.size, ks=ks, epochs=s.linear_epochs
            )
            for f, k in zip(PCA_FRACTIONS, ks):
                out[_pca_key(f)] = float(r["per_k"][f"k{k}"])
            out["pca_retention"] = out[_pca_key(16)] / out[_pca_key(1)] if out[_pca_key(1)] else float("nan")
        elif p == "rasa":
            out.update(rasa_position_r2(model, device, s))
        if log is not None:
            log(f"{p} done")
    return out


def rasa_position_r2(model: torch.nn.Module, device: torch.device, s: EvalSettings) -> dict[str, float]:
    """Position R² of held-out patch tokens before and after a RASA fit (cached tokens of the toy images).

    One small call site on purpose: the fit and its probe are franca.rasa's public API.
    """

    root = s.rasa_root or (voc_image_dir(builtin_toy(domain=s.domain)) if s.domain else rdata.default_image_root())
    files = open_images(root, kind="folder").files
    files = files[:: max(1, len(files) // s.rasa_images)][: s.rasa_images]  # spread over the whole set
    train_files, held_files = rdata.split_files(files, 0.1, 64, seed=400)
    cfg = RasaConfig(
        iterations=s.rasa_iterations, epochs=s.rasa_epochs, lr=1e-2, batch_size=64, seed=400, progress=False
    )
    res = fit_rasa_on_images(
        model, train_files, held_files, cfg, size=s.rasa_size, device=device, precision=s.precision or "auto"
    )
    return {"rasa_r2_before": float(res.r2("ridge", "initial")), "rasa_r2_after": float(res.r2("ridge", "final"))}
