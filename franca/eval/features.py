"""The one frozen-backbone feature extractor: the global protocols (k-NN, linear, logreg, PCA), the
training k-NN probe and `franca features` call `extract`/`extract_features` (whole data sets); the
dense protocols, depth, keypoints and RASA fitting call `patch_tokens`/`block_tokens` per batch.

One pass over a labelled dataset gives, per image:
- ``cls`` (N, D): the final-normed CLS token (``x_norm_clstoken``), for k-NN, logreg and PCA;
- with ``kind="blocks"`` also ``cls_blocks`` (N, L, D): the normed CLS of the last L ≤ 4 blocks
  (``get_intermediate_layers(n=4, return_class_token=True, norm=True)``), and ``patch_mean`` (N, D):
  the mean of the last block's normed patch tokens — the inputs of the DINOv2 linear probe.
  ``cls`` is then ``cls_blocks[:, -1]`` (the same tensor the final norm gives).

Results are cached on disk under a key hashed from the model (a fingerprint of its weights, plus an
optional caller-supplied identity such as the weights file's name, size and mtime), the dataset
(class, length, sample list, each file's size, mtime and inode), its transform (hence the image
size), the precision the forward ran in ("fp32" or "bf16", `franca.utils.device.resolve_precision`) and the code version (`code_version()`: version, format and a digest of the source that
decides the numbers), so
running several protocols on the same backbone and data extracts once (recent results are also
kept in memory, bounded, for protocols run in one process without a disk cache). Under torchrun every rank
extracts a strided shard and the shards are gathered, so all ranks return the full tensors.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from franca import __version__
from franca.data.images import list_images
from franca.utils import distributed as dist_utils
from franca.utils.device import autocast_context, resolve_device, resolve_precision
from franca.utils.progress import progress as progress_bar

log = logging.getLogger(__name__)

KINDS = ("cls", "blocks")  # the cached kinds (extract_features)
EXTRACT_KINDS = ("cls", "blocks", "patch", "rasa")
_MEMO: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
N_LAST_BLOCKS = 4


def default_cache_dir() -> Path:
    """``$FRANCA_CACHE_DIR/features`` or ``~/.cache/franca/features``."""
    root = os.environ.get("FRANCA_CACHE_DIR") or Path.home() / ".cache" / "franca"
    return Path(root) / "features"


CACHE_FORMAT = 2  # bump when extraction changes its numbers (forward pass, dtype, gathering)


# The modules whose code decides a cached feature's numbers: the backbone's forward and position
# resampling, the weights loader, the preprocessing, the image decoding and this extractor.
FEATURE_SOURCES = (
    "franca.models.backbone",
    "franca.models.pos_resample",
    "franca.models.weights",
    "franca.models.hf",
    "franca.models.hf_dinov2",
    "franca.models.hf_dinov3",
    "franca.models.preprocess",
    "franca.models.rasa_fold",
    "franca.data.images",
    "franca.data.datasets.transforms",
    "franca.eval.classification_data",
    "franca.eval.features",
    "franca.utils.device",
)


@functools.lru_cache(maxsize=8)
def source_digest(modules: tuple[str, ...]) -> str:
    """A short hash of those modules' source text, so an edit to any of them (a development checkout
    between releases) misses the cache instead of reusing features computed by other code."""
    import importlib.util

    h = hashlib.sha1()
    for name in modules:
        spec = importlib.util.find_spec(name)
        origin = getattr(spec, "origin", None)
        try:
            h.update(Path(origin).read_bytes() if origin else name.encode())
        except OSError:  # no readable source (a frozen or zipped install): the version and format decide
            h.update(name.encode())
    return h.hexdigest()[:12]


def code_version() -> str:
    """The code that computed a cached result: the package version, this module's cache format and a
    digest of the source of the modules that decide the numbers (`FEATURE_SOURCES`)."""

    return f"franca {__version__}, features format {CACHE_FORMAT}, source {source_digest(FEATURE_SOURCES)}"


def model_fingerprint(model: torch.nn.Module, n_samples: int = 1024) -> str:
    """Cheap content hash of a model's weights: names, shapes, sums and a strided sample of values.

    Hashing every byte of a ViT-g would take seconds; a sample of each tensor plus its sum tells
    two different checkpoints apart in practice.
    """
    h = hashlib.sha1()
    h.update(type(model).__name__.encode())
    for name, t in model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        if t.numel() == 0:
            continue
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // n_samples)
        sample = flat[::step][:n_samples].float().cpu()
        h.update(sample.numpy().tobytes())
        h.update(f"{float(flat.double().sum()):.10e}".encode())
    return h.hexdigest()


def dataset_identity(dataset: Any) -> dict[str, Any]:
    """What makes a dataset's features different: class, length, root, sample list, the size, mtime
    and inode of every file it reads (so a file replaced under the same name changes it), transform."""
    base = dataset
    indices = None
    if isinstance(base, Subset):
        indices = list(base.indices)
        base = base.dataset
    samples = getattr(base, "samples", None) or getattr(base, "imgs", None)
    if samples is not None:
        sample_hash = hashlib.sha1("\n".join(map(str, samples)).encode()).hexdigest()
        files = _sample_files(samples)
    else:  # no file list (e.g. a TensorDataset): hash the content of a few items
        sample_hash = _item_hash(dataset)
        files = _tree_files(getattr(base, "root", None))
    ident = {
        "class": type(base).__name__,
        "len": len(dataset),
        "root": str(getattr(base, "root", "")),
        "samples": sample_hash,
        "files": files_fingerprint(files) if files else None,
        "transform": repr(getattr(base, "transform", None)),
        "indices": hashlib.sha1(str(indices).encode()).hexdigest() if indices is not None else None,
    }
    extra = getattr(base, "identity", None)
    if callable(extra):
        ident["extra"] = extra()
    return ident


def _sample_files(samples: Any) -> list[str]:
    """The file paths named in a sample list (entries are paths or tuples holding paths)."""
    out = []
    for entry in samples:
        parts = entry if isinstance(entry, (tuple, list)) else (entry,)
        out += [os.fspath(p) for p in parts if isinstance(p, (str, os.PathLike))]
    return out


def _tree_files(root: Any) -> list[str]:
    """Every file below a dataset's root folder (for readers without a sample list); [] if none."""
    if not isinstance(root, (str, os.PathLike)) or not Path(root).is_dir():
        return []

    return [str(p) for p in list_images(root, extensions=None)]


def files_fingerprint(paths: list[str]) -> str:
    """Hash of each file's path, size, modification time (ns) and inode; a path that is not a file counts
    as missing. Replacing, editing or touching a file changes it; reading it does not."""
    h = hashlib.sha1()
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\t{st.st_ino}\n".encode())
        except OSError:
            h.update(f"{p}\tmissing\n".encode())
    return h.hexdigest()


def _item_hash(dataset: Any) -> str | None:
    h = hashlib.sha1()
    n = len(dataset)
    for i in sorted({0, n // 2, n - 1}) if n else []:
        for part in dataset[i]:
            try:
                t = torch.as_tensor(part).detach().cpu().contiguous()
                h.update(f"{tuple(t.shape)}".encode() + t.numpy().tobytes())
            except (TypeError, ValueError, RuntimeError):  # e.g. a PIL image without a transform
                h.update(repr(part).encode())
    return h.hexdigest()


def cache_keys(
    model: torch.nn.Module,
    dataset: Any,
    kinds: tuple[str, ...],
    model_key: str | None = None,
    precision: str = "fp32",
) -> dict[str, str]:
    """One cache key per feature kind; the model and data are fingerprinted once. `precision` is the
    resolved one ("fp32" or "bf16"): features of one precision never answer a request for the other."""
    base = {
        "model": model_fingerprint(model),
        "model_key": model_key,
        "data": dataset_identity(dataset),
        "code": code_version(),
        "precision": precision,
    }
    return {k: hashlib.sha1(json.dumps({**base, "kind": k}, sort_keys=True).encode()).hexdigest()[:20] for k in kinds}


def cache_key(
    model: torch.nn.Module, dataset: Any, kind: str, model_key: str | None = None, precision: str = "fp32"
) -> str:
    return cache_keys(model, dataset, (kind,), model_key, precision)[kind]


# ------------------------------------------------------------------ batch-level forwards
# The protocols that augment every epoch (linseg, depth, keypoints, in-context, overclustering, RASA
# fitting) cannot cache per data set; they call these on each batch, so every feature the project
# computes from a frozen backbone comes from this module.


@torch.no_grad()
def patch_tokens(
    model: torch.nn.Module,
    x: torch.Tensor,
    use_rasa: bool = False,
    precision: str = "auto",
    grid: bool = True,
) -> torch.Tensor:
    """Last-layer normed patch tokens, returned as fp32: a grid (B, h, w, D), or (B, N, D) with ``grid=False``.

    `use_rasa` takes `patch_token_rasa` (position-cleaned tokens) instead of `x_norm_patchtokens`;
    the forward runs in `precision` ("auto", "bf16" or "fp32": `franca.utils.device.autocast_context`).
    """
    b, _, hh, ww = x.shape
    p = int(model.patch_size)
    if hh % p or ww % p:
        raise ValueError(f"input {hh}x{ww} is not a multiple of the patch size {p}")
    with autocast_context(x.device, precision):
        out = model.forward_features(x, use_rasa_head=use_rasa) if use_rasa else model.forward_features(x)
    key = "patch_token_rasa" if use_rasa else "x_norm_patchtokens"
    if key not in out:
        raise KeyError(f"backbone output has no {key!r} (keys: {sorted(out)})")
    t = out[key].float()
    return t.reshape(b, hh // p, ww // p, -1) if grid else t


@torch.no_grad()
def block_tokens(
    model: torch.nn.Module,
    x: torch.Tensor,
    blocks: int | list[int],
    *,
    norm: bool = False,
    return_class_token: bool = False,
    precision: str = "auto",
) -> tuple[Any, ...]:
    """Intermediate-block outputs as patch maps (B, D, h, w) (with their CLS tokens when asked):
    `get_intermediate_layers(x, n=blocks, reshape=True, norm=norm)`, in `precision`. The tensors are
    the forward's own (bf16 under bf16): callers cast what they keep."""
    with autocast_context(x.device, precision):
        return tuple(
            model.get_intermediate_layers(x, n=blocks, reshape=True, return_class_token=return_class_token, norm=norm)
        )


@torch.no_grad()
def batch_features(
    model: torch.nn.Module, images: torch.Tensor, kind: str = "cls", precision: str = "auto"
) -> dict[str, torch.Tensor]:
    """The outputs of one `kind` (see `extract`) for one batch of images already on the model's device,
    without gradients, in `precision`: what `extract` computes per batch, for callers that make their
    own batches (the linear probe's augmented epochs). Floating outputs are fp32."""
    if kind not in EXTRACT_KINDS:
        raise ValueError(f"kind must be one of {EXTRACT_KINDS}, got {kind!r}")
    with autocast_context(images.device, precision):
        out = _forward(model, images, kind)
    return {k: v.float() for k, v in out.items()}


def _forward(model: torch.nn.Module, x: torch.Tensor, kind: str) -> dict[str, torch.Tensor]:
    """The outputs of one kind for a batch: see `extract`."""
    if kind == "cls":
        return {"cls": model.forward_features(x)["x_norm_clstoken"]}
    if kind in ("patch", "rasa"):
        rasa = kind == "rasa"
        out = model.forward_features(x, use_rasa_head=True) if rasa else model.forward_features(x)
        return {"cls": out["x_norm_clstoken"], "patch": out["patch_token_rasa" if rasa else "x_norm_patchtokens"]}
    n = min(N_LAST_BLOCKS, int(getattr(model, "n_blocks", N_LAST_BLOCKS)))
    layers = model.get_intermediate_layers(x, n=n, return_class_token=True, norm=True)
    cls_blocks = torch.stack([cls for _, cls in layers], dim=1)  # (B, L, D)
    patch_mean = layers[-1][0].mean(dim=1)  # (B, D): last block's patch tokens, averaged
    return {"cls_blocks": cls_blocks, "patch_mean": patch_mean}


def extract(
    model: torch.nn.Module,
    dataset: Any,
    *,
    kind: str = "cls",
    device: str | torch.device | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    show_progress: bool = False,
    distributed: bool = True,
    collate_fn: Any = None,
    precision: str = "auto",
) -> dict[str, torch.Tensor]:
    """The one feature extractor (no cache): run a frozen model over a dataset of ``(image, label, …)``.

    Kinds: "cls" (``cls``), "blocks" (``cls_blocks``, ``patch_mean``; see the module doc), "patch"
    (``cls`` and the normed patch tokens ``patch`` (N, n, D)), "rasa" (``cls`` and the RASA-cleaned
    ``patch_token_rasa`` as ``patch``). ``labels`` (N,) holds the second item of each sample. With
    ``distributed`` (default) each rank of a torchrun job extracts a strided shard and all ranks
    get the full tensors; ``distributed=False`` extracts everything in this process (e.g. rank 0 alone).
    The forward runs in `precision` ("auto": bf16 where the device computes it natively, see
    `franca.utils.device.resolve_precision`; "bf16"; "fp32").
    The model is left in eval mode. Returns float32 (or integer) CPU tensors in dataset order.
    """
    if kind not in EXTRACT_KINDS:
        raise ValueError(f"kind must be one of {EXTRACT_KINDS}, got {kind!r}")
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    return _extract(model, dataset, kind, dev, batch_size, num_workers, show_progress, distributed, collate_fn, prec)


@torch.no_grad()
def _extract(
    model: torch.nn.Module,
    dataset: Any,
    kind: str,
    device: torch.device,
    batch_size: int,
    num_workers: int,
    show_progress: bool,
    distributed: bool = True,
    collate_fn: Any = None,
    precision: str = "fp32",
) -> dict[str, torch.Tensor]:
    """Run the model over (this rank's shard of) the dataset in `precision`; gather shards in dataset order."""
    n = len(dataset)
    world, rank = (dist_utils.world_size(), dist_utils.rank()) if distributed else (1, 0)
    per_rank = -(-n // world)
    padded = [i % n for i in range(per_rank * world)]  # wrap-around padding: equal shard sizes
    shard = padded[rank::world]
    loader = DataLoader(
        Subset(dataset, shard) if world > 1 else dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        collate_fn=collate_fn,
    )
    chunks: dict[str, list[torch.Tensor]] = {}
    it: Any = loader
    if show_progress and (dist_utils.is_main() or not distributed):
        it = progress_bar(loader, desc=f"features ({kind})", unit="batch")
    model.eval()
    for batch in it:
        images, labels = batch[0], batch[1]
        out = batch_features(model, images.to(device, non_blocking=True), kind, precision)
        out["labels"] = torch.as_tensor(labels).long()
        for key, t in out.items():
            chunks.setdefault(key, []).append(t.float().cpu() if t.is_floating_point() else t.cpu())
    if not chunks:
        raise ValueError(f"dataset {type(dataset).__name__} is empty: no features to extract")
    local = {k: torch.cat(v) for k, v in chunks.items()}
    if world == 1:
        return local
    order = torch.tensor([padded[r::world] for r in range(world)]).reshape(-1)
    full = {}
    for key, t in local.items():
        gathered = dist_utils.all_gather_cat(t.to(device)).cpu()
        out_t = torch.empty((n, *t.shape[1:]), dtype=t.dtype)
        out_t[order] = gathered  # duplicates from padding write identical rows
        full[key] = out_t
    return full


def _load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _save(path: Path, feats: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write the cache entry and its metadata each to a temporary file of this process, then rename:
    a crash or a full disk never leaves a half-written entry under the key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, write in (
        (path, lambda f: torch.save(feats, f)),
        (path.with_suffix(".json"), lambda f: f.write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))),
    ):
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            write(tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def extract_features(
    model: torch.nn.Module,
    dataset: Any,
    *,
    kind: str = "cls",
    device: str | torch.device | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    cache_dir: str | Path | None = None,
    model_key: str | None = None,
    show_progress: bool = True,
    precision: str = "auto",
) -> dict[str, torch.Tensor]:
    """Frozen features of a labelled dataset (items ``(image, label, …)``), cached on disk.

    Args:
        kind: "cls" (``cls``, ``labels``) or "blocks" (adds ``cls_blocks`` and ``patch_mean``).
        cache_dir: folder for the cache; None disables caching.
        model_key: extra identity of the model (e.g. name + weights path) mixed into the key.
        precision: "auto", "bf16" or "fp32" (`franca.utils.device.resolve_precision`); the resolved
            precision is part of the cache key.

    Returns:
        float32 CPU tensors: ``cls`` (N, D), ``labels`` (N,) and for "blocks" ``cls_blocks`` (N, L, D),
        ``patch_mean`` (N, D).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    # A "blocks" result also serves "cls" requests (cls = last block's normed CLS).
    keys = cache_keys(model, dataset, ("cls", "blocks") if kind == "cls" else ("blocks",), model_key, prec)
    for key in keys.values():
        if key in _MEMO:
            log.info("features: in-memory hit %s", key)
            _MEMO.move_to_end(key)
            return _finish(_MEMO[key])
    path = None
    if cache_dir is not None:
        for key in keys.values():
            candidate = Path(cache_dir) / f"{key}.pt"
            if candidate.exists():
                log.info("features: cache hit %s", candidate)
                return _finish(_remember(key, _load(candidate)))
        path = Path(cache_dir) / f"{keys[kind]}.pt"
    feats = _remember(
        keys[kind], _extract(model, dataset, kind, dev, batch_size, num_workers, show_progress, precision=prec)
    )
    if path is not None and dist_utils.is_main():
        meta = {
            "kind": kind,
            "precision": prec,
            "model_key": model_key,
            "data": dataset_identity(dataset),
            "shapes": {k: list(v.shape) for k, v in feats.items()},
        }
        _save(path, feats, meta)
        log.info("features: cached %s", path)
    dist_utils.barrier()
    return _finish(feats)


def _memo_limit_bytes() -> int:
    return int(float(os.environ.get("FRANCA_FEATURE_MEMO_MB", "1024")) * 2**20)


def _remember(key: str, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep recent results in memory (bounded by $FRANCA_FEATURE_MEMO_MB, default 1 GiB) so that
    several protocols run in one process share one extraction even without a disk cache."""
    size = sum(t.numel() * t.element_size() for t in feats.values())
    limit = _memo_limit_bytes()
    if size <= limit:
        _MEMO[key] = feats
        while sum(t.numel() * t.element_size() for f in _MEMO.values() for t in f.values()) > limit:
            _MEMO.popitem(last=False)
    return feats


def clear_memory_cache() -> None:
    _MEMO.clear()


def _finish(feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if "cls" not in feats:
        feats = dict(feats, cls=feats["cls_blocks"][:, -1])
    return feats
