"""Pretraining data: a resumable batch order and the multi-crop + mask collate over the images of
`franca.data.source.open_images` (the built-in toy set, a folder, webdataset shards or any registered kind).

The images are read as pretraining samples (`franca.data.source.Samples`, `franca.data.samples`). Unreadable
files (truncated JPEGs, non-images with an image extension, decompression bombs) are skipped: in a file source
a file drawn at random from the slot's seed takes the slot, a stream moves on to the next image; the skipped
path travels with the batch so the loop counts it (this works with worker processes too), and the run stops
only when more than half of the files tried were unreadable.

Batch order is a pure function of (seed, iteration, rank): iteration i belongs to epoch
i // iterations_per_epoch, whose permutation comes from a generator seeded by (seed, epoch); each
sample carries its own seed, so its crops and masks do not depend on worker count or on where a
run was resumed. Resuming at iteration i therefore reproduces the uninterrupted batches exactly.

With ``data.batch_augment`` the sources yield decoded uint8 images and the collate augments the whole
batch at once (franca.data.batch_augment.BatchMultiCrop), seeded by all of the batch's sample seeds: the
batches are as reproducible, but a sample's crops then depend on the batch it is in. Images of mixed sizes
are augmented together (one crop per image in its own size).

With ``data.augment_device=cuda`` the workers only read bytes and draw the masks; the training process
decodes the JPEGs on the GPU and runs the same batch augmentation there (franca.data.gpu_pipeline), with the
same seeds. The default ``auto`` keeps the worker path on every device until that path's GPU figures
(``benchmarks/gpu_suite.sh``) are measured and in the README.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.data import DataLoader, IterableDataset, Sampler

from franca.data.augment import MultiCropAugmentation, MultiCropParams
from franca.data.batch_augment import BatchMultiCrop
from franca.data.collate import collate_multicrop, sample_masks
from franca.data.datasets.shards import reject_remote
from franca.data.gpu_pipeline import DeviceAugment, DeviceAugmentedLoader, read_encoded
from franca.data.images import open_image
from franca.data.masking import BlockMask, CyclicMask
from franca.data.samples import SEED_MIX, sample_seed
from franca.data.source import Samples, detect_kind, open_images
from franca.data.toy import ensure_toy
from franca.train.config import KIND_ALIASES, FrancaTrainConfig

log = logging.getLogger(__name__)


class ResumableBatchSampler(Sampler):
    """Endless batches of (index, seed) for this rank, starting at `start_iteration`.

    Global batch i of epoch e = slots [(i mod ipe)·G, +G) of permutation(seed, e); rank r takes
    its contiguous B-slice, so W processes see together exactly what one process of batch W·B sees.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, start_iteration: int = 0
    ) -> None:
        self.n, self.B, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.G = batch_size * world
        self.ipe = max(n // self.G, 1)
        self.start = start_iteration

    def permutation(self, epoch: int) -> torch.Tensor:
        """The data order of `epoch` (cached: one permutation per epoch)."""
        if getattr(self, "_epoch", None) != epoch:
            g = torch.Generator().manual_seed(int(self.seed) * 100_003 + epoch)
            self._perm, self._epoch = torch.randperm(self.n, generator=g), epoch
        return self._perm

    def batch(self, iteration: int) -> list[tuple[int, int]]:
        epoch, pos = divmod(iteration, self.ipe)
        perm = self.permutation(epoch)
        lo = pos * self.G + self.rank * self.B
        idx = [int(perm[(lo + j) % self.n]) for j in range(self.B)]
        return [(i, sample_seed(self.seed, iteration, self.rank * self.B + j)) for j, i in enumerate(idx)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        i = self.start
        while True:
            yield self.batch(i)
            i += 1

    def __len__(self) -> int:  # endless; DataLoader only needs a number
        return 2**62


@dataclass
class PretrainData:
    loader: DataLoader
    dataset_size: int
    description: str


class MultiCropCollate:
    """Collate samples into the batch dict of franca.data.collate; masks drawn from the batch's seed.

    With ``data.batch_augment`` the samples carry uint8 images, which are stacked and augmented here by
    BatchMultiCrop with a generator seeded by all sample seeds (:func:`_augment_seed`). With `on_device`
    (the device path) nothing is augmented here: the batch carries the samples' bytes or images as
    ``encoded`` and that seed as ``augment_seed``, and the masks are drawn as for the other paths.
    """

    def __init__(self, cfg: FrancaTrainConfig, patch_size: int, on_device: bool = False) -> None:
        grid = cfg.crops.global_crops_size // patch_size
        self.cfg, self.on_device = cfg, on_device
        if cfg.ibot.mask_type == "block":  # DINOv2: blocks of at most half the grid
            self.mask_generator = BlockMask(grid, max_block=int(0.5 * grid * grid))
        else:
            self.mask_generator = CyclicMask(grid, variant=cfg.ibot.mask_variant)
        self.batch_augment = build_batch_augmentation(cfg) if cfg.data.batch_augment and not on_device else None
        self.counter = 0

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        skipped = [p for s in samples for p in s["skipped"]]
        seed = _batch_seed(samples)
        g = torch.Generator().manual_seed(seed)
        if self.on_device:
            batch = sample_masks(
                2 * len(samples),
                self.mask_generator,
                tuple(self.cfg.ibot.mask_ratio_min_max),
                self.cfg.ibot.mask_sample_probability,
                generator=g,
            )
            batch["encoded"] = [{k: s[k] for k in ("jpeg", "image", "name") if k in s} for s in samples]
            batch["augment_seed"] = _augment_seed(samples)
            batch["n_local_crops"] = self.cfg.crops.local_crops_number
            batch["skipped"] = skipped
            return batch
        crops = self._augment(samples) if self.batch_augment is not None else [s["crops"] for s in samples]
        batch = collate_multicrop(
            crops,
            mask_generator=self.mask_generator,
            mask_ratio_min_max=tuple(self.cfg.ibot.mask_ratio_min_max),
            mask_probability=self.cfg.ibot.mask_sample_probability,
            generator=g,
        )
        batch.pop("global_crops_teacher", None)
        batch["skipped"] = skipped
        return batch

    def _augment(self, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Per-sample crop dicts (views into the batched crops) of the batch-augmented images; the collate
        re-stacks them and draws the masks exactly as for per-image crops."""
        images = _stack_images(samples)
        out = self.batch_augment(images, torch.Generator().manual_seed(_augment_seed(samples)))
        B, n_l = len(images), out["n_local_crops"]
        glob = out["global_crops"].unflatten(0, (2, B))
        loc = out["local_crops"].unflatten(0, (n_l, B))
        return [
            {"global_crops": [glob[0, i], glob[1, i]], "local_crops": [loc[v, i] for v in range(n_l)]} for i in range(B)
        ]


def _stack_images(samples: list[dict[str, Any]]) -> torch.Tensor | list[torch.Tensor]:
    """The samples' uint8 images as (B,3,H,W) when they have one size, else as a list (mixed sizes)."""
    if any("image" not in s for s in samples):
        raise ValueError(
            "data.batch_augment=true: samples must carry decoded images ('image'); build the data "
            "with build_pretrain_data"
        )
    images = [s["image"] for s in samples]
    if len({tuple(t.shape) for t in images}) == 1:
        return torch.stack(images)
    return images


def _batch_seed(samples: list[dict[str, Any]]) -> int:
    s = samples[0].get("seed", 0) if samples else 0
    return (int(s) * 31 + 17) & ((1 << 62) - 1)


def _augment_seed(samples: list[dict[str, Any]]) -> int:
    """Seed of the batch augmentation: a mix of every sample's seed, in order (independent of the mask seed)."""
    h = 0x2545F4914F6CDD1D
    for s in samples:
        h = ((h ^ int(s.get("seed", 0))) * SEED_MIX) & ((1 << 64) - 1)
        h ^= h >> 29
    return h & ((1 << 63) - 1)


def multicrop_params(cfg: FrancaTrainConfig) -> MultiCropParams:
    """The one MultiCropParams of cfg.crops (sizes, scales, local crop count, crops.augment_options); the
    per-image and the batched augmentation are both built from it."""
    c = cfg.crops
    try:
        return MultiCropParams(
            global_size=c.global_crops_size,
            local_size=c.local_crops_size,
            n_local=c.local_crops_number,
            global_scale=tuple(c.global_crops_scale),
            local_scale=tuple(c.local_crops_scale),
            **dict(c.augment_options),
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"config crops (crops.augment_options={dict(c.augment_options)!r}) is invalid: {exc}"
        ) from None


def build_augmentation(cfg: FrancaTrainConfig) -> Callable:
    """The per-image MultiCropAugmentation of cfg.crops."""
    return MultiCropAugmentation(multicrop_params(cfg))


def build_batch_augmentation(cfg: FrancaTrainConfig) -> BatchMultiCrop:
    """The BatchMultiCrop of cfg.crops (data.batch_augment, and the device path)."""
    return BatchMultiCrop(multicrop_params(cfg))


def augment_device(cfg: FrancaTrainConfig, device: torch.device) -> Optional[torch.device]:
    """Where batches are decoded and augmented: None for the loader workers (data.augment_device=cpu or auto),
    the training device for data.augment_device=cuda. `auto` is the worker path on CUDA too: the device path
    has not run on a GPU yet (benchmarks/gpu_suite.sh measures it), so it is chosen only by name."""
    want = cfg.data.augment_device
    if want in ("cpu", "auto"):
        return None
    if device.type != "cuda":
        raise ValueError(
            f"config key data.augment_device={want!r} needs a CUDA training device, got "
            f"train.device={cfg.train.device!r} ({device}); use data.augment_device=cpu or auto"
        )
    return device


def resolve_source(cfg: FrancaTrainConfig) -> tuple[str, str]:
    """(kind, location) of the pretraining images from data.dataset and data.kind (`franca.data.source`
    kinds; 'imagefolder' reads as 'folder'); the toy set is generated on first use."""
    d = cfg.data
    if not d.dataset:
        raise ValueError(
            "config key data.dataset is empty: give data.dataset=/path/to/images (a folder) or "
            "webdataset shards (data.dataset=/shards/train-{000000..000099}.tar)"
        )
    reject_remote(d.dataset)  # a shard URL: download first (before "not found")
    kind = KIND_ALIASES.get(d.kind, d.kind)
    if kind == "toy" or (kind == "auto" and d.dataset == "toy"):
        return "folder", str(toy_root(cfg) / "imagenet" / "train")
    if d.dataset != "toy" and not any(c in d.dataset for c in "*?[{") and not Path(d.dataset).exists():
        raise FileNotFoundError(
            f"not found: {d.dataset} (config key data.dataset: an image folder or webdataset shards)"
        )
    if kind == "auto":
        try:
            kind = detect_kind(d.dataset)
        except ValueError as exc:
            raise ValueError(f"config key data.dataset: {exc}") from None
    return kind, d.dataset


def toy_root(cfg: FrancaTrainConfig) -> Path:
    d = cfg.data
    kwargs: dict[str, Any] = {"size": d.toy_size, "seed": d.toy_seed, **dict(d.toy_options)}
    if d.toy_n_train:
        kwargs["n_train"] = d.toy_n_train
    if d.toy_n_val:
        kwargs["n_val"] = d.toy_n_val
    try:
        return ensure_toy(**kwargs)
    except TypeError as exc:
        raise ValueError(f"config key data.toy_options={dict(d.toy_options)!r} is invalid: {exc}") from None


def build_pretrain_data(
    cfg: FrancaTrainConfig,
    patch_size: int,
    rank: int,
    world: int,
    start_iteration: int,
    device: torch.device,
    augment_on: torch.device | str | None = "config",
) -> PretrainData:
    """The endless loader of this rank, positioned at `start_iteration`.

    `augment_on`: "config" follows data.augment_device (:func:`augment_device`); None forces the worker path;
    a device forces the device path there (benchmarks and tests run it on the CPU this way).
    """
    on = augment_device(cfg, device) if augment_on == "config" else augment_on
    kind, where = resolve_source(cfg)
    read: Callable[..., Any] = open_image
    if on is not None:
        read = functools.partial(read_encoded, decode=open_image)
        transform = None
        batched = f", decoded and augmented in batches on {torch.device(on)}"
    else:
        transform = None if cfg.data.batch_augment else build_augmentation(cfg)  # None: the collate augments
        batched = ", batch augmentation" if cfg.data.batch_augment else ""
    B = cfg.train.batch_size_per_gpu
    seed = cfg.train.seed
    source = open_images(
        where,
        kind=kind,
        transform=transform,
        read=read,
        samples=Samples(seed, rank, world, start_sample=start_iteration * B),
        size=cfg.data.dataset_size,
    )
    collate = MultiCropCollate(cfg, patch_size, on_device=on is not None)
    common: dict[str, Any] = dict(
        num_workers=cfg.data.num_workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),
    )
    if cfg.data.num_workers > 0:
        common.update(persistent_workers=False, prefetch_factor=2)
    if isinstance(source.dataset, IterableDataset):  # a stream: it orders and splits itself
        loader: Any = DataLoader(source.dataset, batch_size=B, drop_last=True, **common)
    else:
        sampler = ResumableBatchSampler(source.size, B, seed, rank, world, start_iteration)
        loader = DataLoader(source.dataset, batch_sampler=sampler, **common)
    if on is not None:
        loader = DeviceAugmentedLoader(loader, DeviceAugment(build_batch_augmentation(cfg), on))
    if source.size < B * world and rank == 0:
        log.warning(batch_larger_than_data(source.size, B, world))
    return PretrainData(loader, source.size, f"{source.description}{batched}")


def batch_larger_than_data(n: int, batch_size: int, world: int) -> str:
    """The warning for a global batch larger than the data set (its batches repeat images)."""
    per = f" ({batch_size} per process × {world})" if world > 1 else ""
    return (
        f"the batch of {batch_size * world} images{per} is larger than the data set ({n} images): every batch "
        f"repeats images and an epoch is one iteration; lower train.batch_size_per_gpu (--batch-size) to "
        f"{max(1, n // world)} or less"
    )
