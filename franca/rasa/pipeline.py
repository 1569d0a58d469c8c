"""RASA on image files, assembled once: the held-out images' tokens for the position probes, the training
features (cached tokens of resized images, or the backbone run on the reference augmentations every pass, or
cached augmented passes) and the fit. `franca rasa` and the `rasa` protocol of `franca ablate` both call
`fit_rasa_on_images`; they differ only in the arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from franca.data.source import open_images
from franca.rasa.data import rasa_eval_transform, rasa_train_transform
from franca.rasa.fit import (
    BackboneFeatures,
    CachedFeatures,
    FeatureSource,
    RasaConfig,
    RasaResult,
    extract_all,
    extract_patch_tokens,
    fit_rasa,
)
from franca.rasa.probe import dihedral_views
from franca.utils.device import resolve_device


def fit_rasa_on_images(
    model: torch.nn.Module,
    train_files: Sequence[str | Path],
    heldout_files: Sequence[str | Path],
    cfg: RasaConfig,
    *,
    size: int,
    device: str | torch.device,
    precision: str = "auto",
    augment: bool = False,
    std_quirk: bool = True,
    cache_views: int = 0,
    heldout_dihedral: bool = False,
    num_workers: int = 0,
) -> RasaResult:
    """Fit RASA (`fit_rasa` with `cfg`) on the frozen `model`'s final patch tokens of `train_files`, probing
    position on `heldout_files`; the images are square `size`-px views, read `cfg.batch_size` at a time (the
    loaders' order seeded with `cfg.seed`), and the backbone runs in `precision`.

    Training features: with `augment=False` the tokens of the resized images, extracted once; with `augment`
    the reference augmentations (`rasa_train_transform`, `std_quirk` as there), either a fresh backbone pass
    every epoch or, with `cache_views` > 0, that many augmented passes extracted once. `heldout_dihedral` turns
    each held-out image by its fixed random flip/rotation (`heldout_tokens`)."""
    device = resolve_device(device)
    patch = int(model.patch_size)
    grid = (size // patch, size // patch)

    def loader(
        files: Sequence[str | Path], transform: Callable[..., Any], shuffle: bool
    ) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            open_images(list(files), kind="files", transform=transform).dataset,  # unreadable: a random file instead
            batch_size=cfg.batch_size,
            shuffle=shuffle,
            drop_last=shuffle,
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(cfg.seed),
            pin_memory=device.type == "cuda",
            persistent_workers=False,
        )

    eval_tf = rasa_eval_transform(size)
    heldout = heldout_tokens(
        model, loader(heldout_files, eval_tf, False), device, cfg.seed, dihedral=heldout_dihedral, precision=precision
    )
    source: FeatureSource
    if not augment:
        tokens = extract_all(model, loader(train_files, eval_tf, False), device, precision)
        source = CachedFeatures(tokens, grid, cfg.batch_size, seed=cfg.seed)
    else:
        train_loader = loader(train_files, rasa_train_transform(size, std_quirk=std_quirk), True)
        if cache_views:
            tokens = torch.cat([extract_all(model, train_loader, device, precision) for _ in range(cache_views)])
            source = CachedFeatures(tokens, grid, cfg.batch_size, seed=cfg.seed)
        else:
            source = BackboneFeatures(model, train_loader, device, size, precision)
    return fit_rasa(source, cfg, device=device, heldout=heldout)


def heldout_tokens(
    model: torch.nn.Module,
    loader: Any,
    device: torch.device,
    seed: int,
    dihedral: bool,
    precision: str = "auto",
) -> torch.Tensor:
    """Tokens of the held-out images (on the CPU), each turned by its fixed random flip/rotation
    (`dihedral_views`, drawn from `seed` and the image's index) unless `dihedral` is False."""
    out, seen = [], 0
    for images in loader:
        images = images[0] if isinstance(images, (list, tuple)) else images
        if dihedral:
            images = dihedral_views(images, seed, offset=seen)
        seen += images.shape[0]
        out.append(extract_patch_tokens(model, images, device, precision).cpu())
    return torch.cat(out)
