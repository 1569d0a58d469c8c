"""Does the toy classification set measure representation quality? Two numbers on the same split.

(a) Logistic regression (and 20-NN) on raw pixels at 32 px: what a linear read-out of colour
    and position statistics gets without any representation learning.
(b) The tiny preset's own backbone (franca vitt8 at 32 px: patch 8, width 128, depth 4, 4 heads,
    no LayerScale) or, with --arch cnn, a 4-block CNN, trained with labels for --seconds / --iters
    on CPU at 32 px: its val accuracy and the 20-NN accuracy of its CLS (pooled) features, i.e.
    what a learned shape representation reaches in minutes.

The data set is the one `franca pretrain` (tiny preset) trains on, unless --root is given.
Run:  OMP_NUM_THREADS=2 python benchmarks/toy_separability.py [--arch vit] [--seconds 120] [--iters N]
Chance is 1 / n_classes (10 % by default).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F


def load_split(root, split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from franca.data.datasets import ImageNet

    ds = ImageNet(root / "imagenet", split)
    xs, ys = [], []
    for path, y in ds.samples:
        from PIL import Image

        with Image.open(path) as im:
            xs.append(np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC)))
        ys.append(y)
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.5) / 0.25, torch.tensor(ys)


def knn_accuracy(
    train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor, k: int = 20
) -> float:
    """Cosine k-NN with similarity-weighted votes (DINO-style, T = 0.07)."""
    a, b = F.normalize(train_f, dim=1), F.normalize(test_f, dim=1)
    sim, idx = (b @ a.T).topk(k, dim=1)
    votes = torch.zeros(len(b), int(train_y.max()) + 1)
    votes.scatter_add_(1, train_y[idx], (sim / 0.07).exp())
    return (votes.argmax(1) == test_y).float().mean().item()


def raw_pixel_baselines(xtr, ytr, xva, yva) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=100, C=0.01)
    clf.fit(xtr.flatten(1).numpy(), ytr.numpy())
    lin = float((clf.predict(xva.flatten(1).numpy()) == yva.numpy()).mean())
    return lin, knn_accuracy(xtr.flatten(1), ytr, xva.flatten(1), yva)


class TinyViT(torch.nn.Module):
    """The tiny preset's backbone (franca.build_backbone with the preset's overrides) + a linear head."""

    def __init__(self, n_classes: int):
        super().__init__()
        import franca
        from franca.train.build import backbone_overrides
        from franca.train.config import load_config

        cfg = load_config("tiny")
        self.backbone = franca.build_backbone(cfg.model.arch, **backbone_overrides(cfg))
        self.head = torch.nn.Linear(self.backbone.embed_dim, n_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)["x_norm_clstoken"]

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return f if pre_logits else self.head(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


class TinyCNN(torch.nn.Module):
    """Four 3x3 conv blocks (32-64-128-128 channels, stride-2 pooling) and a linear head."""

    def __init__(self, n_classes: int):
        super().__init__()
        layers, c_in = [], 3
        for c in (32, 64, 128, 128):
            layers += [
                torch.nn.Conv2d(c_in, c, 3, padding=1),
                torch.nn.BatchNorm2d(c),
                torch.nn.ReLU(),
                torch.nn.MaxPool2d(2),
            ]
            c_in = c
        self.features = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(c_in, n_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return f if pre_logits else self.head(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shift by up to 4 px (reflect padding) and horizontal flip."""
    b = x.shape[0]
    pad = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dx, dy = torch.randint(0, 9, (2,), generator=gen).tolist()
    out = pad[:, :, dy : dy + 32, dx : dx + 32]
    flip = torch.rand(b, generator=gen) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def supervised(
    xtr, ytr, xva, yva, seconds: float, iters: int, n_classes: int, arch: str = "vit", lr: float = 2e-3
) -> tuple[float, float, int]:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = TinyViT(n_classes) if arch == "vit" else TinyCNN(n_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    t0, it = time.time(), 0
    while it < iters and time.time() - t0 < seconds:
        idx = torch.randint(0, len(xtr), (128,), generator=gen)
        loss = F.cross_entropy(model(augment(xtr[idx], gen)), ytr[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        it += 1
    model.eval()
    with torch.no_grad():

        def feats(x):
            return torch.cat([model.forward_head(model.forward_features(c), pre_logits=True) for c in x.split(256)])

        ftr, fva = feats(xtr), feats(xva)
        acc = (torch.cat([model(c) for c in xva.split(256)]).argmax(1) == yva).float().mean().item()
    return acc, knn_accuracy(ftr, ytr, fva, yva), it


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=120.0, help="supervised training time limit")
    p.add_argument(
        "--iters",
        type=int,
        default=10**9,
        help="supervised iterations limit (use it on a loaded machine: wall time is then meaningless)",
    )
    p.add_argument("--root", default=None, help="toy set root (default: the tiny preset's toy set)")
    p.add_argument("--arch", choices=("vit", "cnn"), default="vit", help="supervised model (default: %(default)s)")
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate (default: %(default)s)")
    p.add_argument("--skip-pixels", action="store_true", help="skip (a), the raw-pixel baselines")
    args = p.parse_args()
    from pathlib import Path

    from franca.train.config import load_config
    from franca.train.data import toy_root

    root = Path(args.root) if args.root else toy_root(load_config("tiny"))
    xtr, ytr = load_split(root, "train", 32)
    xva, yva = load_split(root, "val", 32)
    n_classes = int(ytr.max()) + 1
    print(f"toy set {root}: {len(xtr)} train / {len(xva)} val images, {n_classes} classes, chance {1 / n_classes:.1%}")
    if not args.skip_pixels:
        t = time.time()
        lin, knn_raw = raw_pixel_baselines(xtr, ytr, xva, yva)
        print(f"(a) raw pixels 32px: logistic regression {lin:.1%}, 20-NN {knn_raw:.1%}  ({time.time() - t:.0f} s)")
    t = time.time()
    acc, knn, it = supervised(xtr, ytr, xva, yva, args.seconds, args.iters, n_classes, args.arch, args.lr)
    print(
        f"(b) supervised {'tiny-preset ViT' if args.arch == 'vit' else 'tiny CNN'}, {time.time() - t:.0f} s ({it} iterations, batch 128): "
        f"val accuracy {acc:.1%}, 20-NN on CLS features {knn:.1%}  (threads {torch.get_num_threads()})"
    )


if __name__ == "__main__":
    main()
