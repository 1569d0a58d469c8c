"""Dense nearest-neighbour retrieval ("in-context" segmentation, the Hummingbird protocol,
open-hummingbird-eval `hbird/hbird_eval.py`) with Franca's changes (arXiv 2507.14137, appendix C).

Memory: L2-normalised patch tokens of augmented training images (paired RandomResizedCrop with
scale (0.5, 2.0), colour jitter, HB normalisation) with soft patch labels (class fractions per
patch, label 255 counted as 0). Unbounded (every patch, Franca) or bounded (HB's rare-class
favouring sample). Queries: validation images resized to S×S; k = 30 neighbours from faiss
(exact inner product by default), labels aggregated with softmax(cos / 0.02), bilinear upsampling
to S×S, argmax, mIoU after Hungarian matching. Seeds change the memory augmentations.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from franca.eval.common import protocol_entry, split_pair
from franca.eval.dense import (
    HB_STD,
    as_segmentation,
    dataset_info,
    pair_roots,
    patch_features,
    resized_loader,
    to_tensor,
)
from franca.eval.metrics import StreamingConfusion, matched_miou
from franca.eval.stats import mean_std
from franca.utils.device import resolve_device
from franca.utils.grid import round_to_patch
from franca.utils.imagenet import IMAGENET_MEAN
from franca.utils.progress import progress as tqdm

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- pure core
def patch_label_fractions(masks: torch.Tensor, patch: int, num_classes: int) -> torch.Tensor:
    """Soft patch labels: masks (B, H, W) int → (B, (H/p)·(W/p), C), the fraction of each patch's
    pixels in each class. Labels outside [0, C) count in no class (their fractions are dropped)."""
    b, h, w = masks.shape
    valid = (masks >= 0) & (masks < num_classes)
    onehot = F.one_hot(torch.where(valid, masks, num_classes).long(), num_classes + 1)[..., :num_classes]
    frac = F.avg_pool2d(onehot.permute(0, 3, 1, 2).float(), kernel_size=patch, stride=patch)
    return frac.flatten(2).transpose(1, 2).contiguous()


def bounded_patch_indices(labels: torch.Tensor, n_keep: int, generator: torch.Generator) -> torch.Tensor:
    """HB's bounded-memory sample for one image: labels (P, C) → the n_keep patch indices with the
    lowest score, score = Σ over classes present in the patch of (patches of this image holding that
    class), times U(0,1) noise; patches holding no class score 1e6. Favours rare classes."""
    present = labels > 0
    per_class = present.sum(0).float()  # patches in the image containing each class
    score = (present.float() * per_class).sum(1)
    score = score * torch.rand(score.shape, generator=generator)
    score[~present.any(1)] = 1e6
    return torch.argsort(score)[: max(0, n_keep)]


def aggregate_labels(scores: torch.Tensor, neighbour_labels: torch.Tensor, temperature: float = 0.02) -> torch.Tensor:
    """Soft label per query: Σ_j softmax(cos_j / T) · label_j; scores (Q, k), labels (Q, k, C)."""
    attn = torch.softmax(scores.float() / temperature, dim=1)
    return torch.einsum("qk,qkc->qc", attn, neighbour_labels.float())


class TorchFlatIP:
    """Exact inner-product k-NN in torch on any device, chunked over the memory with a running
    top-k merge: the GPU fallback when faiss has no GPU support (the same neighbours as IndexFlatIP
    up to ties). Mimics faiss' `search(q, k) -> (scores, indices)` on numpy arrays."""

    def __init__(self, memory: np.ndarray, device: torch.device, chunk: int = 1 << 20) -> None:
        dtype = torch.float32
        if device.type == "cuda" and memory.nbytes > 0.6 * torch.cuda.mem_get_info(device)[0]:
            dtype = torch.float16  # e.g. ViT-L on VOC at 518 px: 14.5M x 1024 fp32 = 59 GB
            log.warning("in-context memory (%.1f GB) stored in float16 on %s to fit", memory.nbytes / 1e9, device)
        self.memory = torch.from_numpy(np.ascontiguousarray(memory, dtype=np.float32)).to(device, dtype)
        self.device, self.chunk, self.ntotal = device, chunk, memory.shape[0]

    @torch.no_grad()
    def search(self, q: np.ndarray, k: int, query_chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        scores_out, idx_out = [], []
        for s in range(0, q.shape[0], query_chunk):
            qq = torch.from_numpy(q[s : s + query_chunk]).to(self.device, self.memory.dtype)
            best_s = torch.full((qq.shape[0], 0), -float("inf"), device=self.device)
            best_i = torch.zeros((qq.shape[0], 0), dtype=torch.long, device=self.device)
            for m in range(0, self.ntotal, self.chunk):
                sc = (qq @ self.memory[m : m + self.chunk].T).float()
                top_s, top_i = sc.topk(min(k, sc.shape[1]), dim=1)
                cat_s, cat_i = torch.cat([best_s, top_s], 1), torch.cat([best_i, top_i + m], 1)
                best_s, order = cat_s.topk(min(k, cat_s.shape[1]), dim=1)
                best_i = cat_i.gather(1, order)
            scores_out.append(best_s.cpu().numpy())
            idx_out.append(best_i.cpu().numpy())
        return np.concatenate(scores_out), np.concatenate(idx_out)


def build_index(
    memory: np.ndarray,
    kind: str = "flat",
    nlist: int | None = None,
    nprobe: int = 32,
    hnsw_m: int = 32,
    ef_search: int = 128,
    use_gpu: bool = False,
    train_size: int = 256,
    device: torch.device | str | None = None,
):
    """Inner-product index over `memory` (N, D) float32: "flat" exact (`IndexFlatIP`, the paper's
    choice), "ivf" (IVF-Flat, nlist lists ≈ 4√N by default, nprobe searched) or "hnsw".
    `use_gpu` puts it on all GPUs when faiss was built with GPU support; otherwise an exact search
    on a CUDA `device` runs in torch (`TorchFlatIP`)."""
    import faiss

    x = np.ascontiguousarray(memory, dtype=np.float32)
    n, d = x.shape
    faiss_gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if kind == "flat" and use_gpu and not faiss_gpu and device is not None and torch.device(device).type == "cuda":
        return TorchFlatIP(x, torch.device(device))
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = int(nlist or max(1, min(65536, round(4 * math.sqrt(n)))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = x if n <= train_size * nlist else x[np.random.default_rng(0).choice(n, train_size * nlist, False)]
        index.train(sample)
        index.nprobe = min(nprobe, nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = ef_search
    else:
        raise ValueError(f"unknown index kind {kind!r}; use flat, ivf or hnsw")
    if use_gpu and faiss_gpu and kind != "hnsw":
        co = faiss.GpuMultipleClonerOptions()
        co.shard = True
        index = faiss.index_cpu_to_all_gpus(index, co=co)
    index.add(x)
    return index


def knn_soft_labels(
    index, memory_labels: torch.Tensor, queries: torch.Tensor, k: int = 30, temperature: float = 0.02
) -> torch.Tensor:
    """Search the k nearest memory patches of each (L2-normalised) query and vote their labels."""
    q = np.ascontiguousarray(F.normalize(queries.float(), dim=-1).cpu().numpy())
    scores, idx = index.search(q, k)
    idx_t = torch.from_numpy(idx).long()
    missing = idx_t < 0  # an approximate index can return fewer than k hits
    idx_t[missing] = 0
    s = torch.from_numpy(scores).float()
    s[missing] = -float("inf")
    return aggregate_labels(s, memory_labels[idx_t], temperature)


# ---------------------------------------------------------------- memory augmentation
def _rrc_params(h: int, w: int, g: torch.Generator, scale=(0.5, 2.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, ...]:
    """torchvision RandomResizedCrop.get_params with an explicit generator (10 tries, then centre)."""
    area = h * w
    lr = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(1, generator=g).item())
        aspect = math.exp(lr[0] + (lr[1] - lr[0]) * torch.rand(1, generator=g).item())
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            i = int(torch.randint(0, h - ch + 1, (1,), generator=g))
            j = int(torch.randint(0, w - cw + 1, (1,), generator=g))
            return i, j, ch, cw
    in_ratio = w / h
    if in_ratio < ratio[0]:
        cw, ch = w, int(round(w / ratio[0]))
    elif in_ratio > ratio[1]:
        ch, cw = h, int(round(h * ratio[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _jitter(img, g: torch.Generator, strength: float = 0.1):
    """HB's four independent RandomApply(ColorJitter) ops, each with p = 0.5."""
    import torchvision.transforms.functional as TF

    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    for op in ops:
        if torch.rand(1, generator=g).item() < 0.5:
            img = op(img, 1.0 + strength * (2 * torch.rand(1, generator=g).item() - 1))
    if torch.rand(1, generator=g).item() < 0.5:
        img = TF.adjust_hue(img, strength * (2 * torch.rand(1, generator=g).item() - 1))
    return img


class MemoryAugmented(torch.utils.data.Dataset):
    """Item i of pass `epoch` under `seed`: (image (3,S,S), mask (S,S) with 255 → 0, image index).
    Each item draws from its own generator, so results do not depend on worker count."""

    def __init__(self, dataset, size: int, seed: int, epoch: int = 0) -> None:
        self.dataset, self.size, self.seed, self.epoch = dataset, size, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        from PIL import Image

        g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.epoch, i]).generate_state(1)[0]))
        img, mask = self.dataset[i]
        mask = np.asarray(mask)
        t, left, ch, cw = _rrc_params(mask.shape[0], mask.shape[1], g)
        img = img.crop((left, t, left + cw, t + ch)).resize((self.size, self.size), Image.BILINEAR)
        m = Image.fromarray(mask.astype(np.int32)).crop((left, t, left + cw, t + ch))
        m = np.asarray(m.resize((self.size, self.size), Image.NEAREST), dtype=np.int64)
        img = _jitter(img, g)
        m = np.where(m == 255, 0, m)
        return to_tensor(img, IMAGENET_MEAN, HB_STD), torch.from_numpy(m), i


@torch.no_grad()
def build_memory(
    model: torch.nn.Module,
    dataset,
    size: int,
    num_classes: int,
    device: torch.device,
    seed: int = 0,
    aug_epochs: int = 1,
    memory_size: int | None = None,
    use_rasa: bool = False,
    batch_size: int = 32,
    num_workers: int = 0,
    precision: str = "auto",
) -> tuple[np.ndarray, torch.Tensor]:
    """Memory features (N, D) float32 (L2-normalised) and soft labels (N, C) of the training set.

    memory_size=None keeps every patch (Franca); otherwise ⌊memory_size / (n_train · aug_epochs)⌋
    patches per image chosen by `bounded_patch_indices`.
    """

    patch = int(model.patch_size)
    grid = (size // patch) ** 2
    per_image = grid if memory_size is None else min(grid, memory_size // (len(dataset) * aug_epochs))
    if per_image < 1:
        raise ValueError(
            f"memory_size {memory_size} is below one patch per image ({len(dataset)} images x {aug_epochs} passes)"
        )
    # Preallocated: the unbounded VOC memory at 518 px holds ~14.5M x D features per pass.
    n_total = len(dataset) * aug_epochs * per_image
    feats = np.empty((n_total, int(model.embed_dim)), dtype=np.float32)
    labels = torch.empty((n_total, num_classes), dtype=torch.float16 if num_classes > 32 else torch.float32)
    g = torch.Generator().manual_seed(int(seed))
    pos = 0
    for ep in range(aug_epochs):
        loader = torch.utils.data.DataLoader(
            MemoryAugmented(dataset, size, seed, ep), batch_size=batch_size, num_workers=num_workers
        )
        for x, m, _ in tqdm(loader, desc=f"memory pass {ep + 1}/{aug_epochs}", leave=False):
            f = F.normalize(patch_features(model, x.to(device), use_rasa, precision).flatten(1, 2), dim=-1).cpu()
            lab = patch_label_fractions(m, patch, num_classes)
            if per_image < grid:
                keep = [bounded_patch_indices(lab[b], per_image, g) for b in range(lab.shape[0])]
                f = torch.stack([f[b, k] for b, k in enumerate(keep)])
                lab = torch.stack([lab[b, k] for b, k in enumerate(keep)])
            f, lab = f.reshape(-1, f.shape[-1]), lab.reshape(-1, num_classes)
            if f.shape[1] != feats.shape[1]:
                raise ValueError(f"backbone gave {f.shape[1]}-d patch tokens but embed_dim is {feats.shape[1]}")
            feats[pos : pos + len(f)] = f.numpy()
            labels[pos : pos + len(f)] = lab
            pos += len(f)
    if pos == 0:
        raise ValueError("the in-context memory data set is empty")
    return feats[:pos], labels[:pos]


@torch.no_grad()
def predict_queries(
    model: torch.nn.Module,
    dataset,
    index,
    memory_labels: torch.Tensor,
    size: int,
    num_classes: int,
    ignore_index: int,
    device: torch.device,
    k: int = 30,
    temperature: float = 0.02,
    use_rasa: bool = False,
    batch_size: int = 32,
    num_workers: int = 0,
    precision: str = "auto",
) -> torch.Tensor:
    """Segment the validation set by retrieval (backbone in `precision`); returns the (C × C) confusion
    matrix at S×S."""

    conf = StreamingConfusion(num_classes, num_classes, ignore_index)
    for x, m in tqdm(
        resized_loader(dataset, size, batch_size, num_workers, IMAGENET_MEAN, HB_STD),
        desc="in-context queries",
        leave=False,
    ):
        f = patch_features(model, x.to(device), use_rasa, precision)  # (B, h, w, D)
        b, h, w, d = f.shape
        soft = knn_soft_labels(index, memory_labels, f.reshape(-1, d), k, temperature)
        soft = soft.view(b, h, w, num_classes).permute(0, 3, 1, 2)
        pred = F.interpolate(soft, size=(size, size), mode="bilinear", align_corners=False).argmax(1)
        conf.update(pred, m)
    return conf.matrix


@protocol_entry()
def evaluate(
    model: torch.nn.Module,
    data=None,
    *,
    size: int = 518,
    seeds: Sequence[int] = (0,),
    batch_size: int = 32,
    device: torch.device | str = "auto",
    precision: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
    k: int = 30,
    temperature: float = 0.02,
    memory_size: int | None = None,
    aug_epochs: int = 1,
    index: str = "flat",
    nlist: int | None = None,
    nprobe: int = 32,
    use_rasa: bool = False,
    dataset_name: str = "voc",
) -> dict:
    """Hummingbird in-context mIoU of `model`: memory from the train set, queries from the val set.
    `data`: a (train, val) pair of raw segmentation sets (or roots), or one root of `dataset_name` read as
    trainaug/train and val; None: the toy set. Mean and std over `seeds`; per-class IoU averaged over seeds."""

    device = resolve_device(device)
    train_set, val_set = split_pair(data)
    # HB labels: ADE20K keeps 151 classes with 0 = "other" ignored (reduce_zero_label=False)
    val_set = as_segmentation(pair_roots(train_set, val_set), "val", dataset_name, reduce_zero_label=False)
    train_set = as_segmentation(
        train_set, "trainaug" if dataset_name == "voc" else "train", dataset_name, reduce_zero_label=False
    )
    num_classes, ignore = dataset_info(val_set)
    patch = int(model.patch_size)  # a side below one patch runs at one patch
    size = round_to_patch(max(size, patch), patch, what="input size", announce=True)
    model = model.eval().to(device)
    mious, ious, n_mem = [], [], 0
    for s in seeds:
        feats, labels = build_memory(
            model,
            train_set,
            size,
            num_classes,
            device,
            s,
            aug_epochs,
            memory_size,
            use_rasa,
            batch_size,
            num_workers,
            precision=precision,
        )
        n_mem = feats.shape[0]
        idx = build_index(feats, index, nlist, nprobe, use_gpu=device.type == "cuda", device=device)
        del feats
        conf = predict_queries(
            model,
            val_set,
            idx,
            labels,
            size,
            num_classes,
            ignore,
            device,
            k,
            temperature,
            use_rasa,
            batch_size,
            num_workers,
            precision=precision,
        )
        r = matched_miou(conf, "hungarian")
        mious.append(r["miou"])
        ious.append(r["per_class_iou"])
        log.info("in-context seed %d: mIoU %.4f (memory %d patches)", s, r["miou"], n_mem)
    ms = mean_std(mious)
    return {
        "protocol": "incontext",
        "metric_name": "miou",
        "metric": ms["mean"],
        "miou": ms,
        "per_class_iou": np.mean(ious, axis=0).tolist(),
        "class_names": list(getattr(val_set, "class_names", ()) or ()),
        "settings": {
            "size": size,
            "k": k,
            "temperature": temperature,
            "memory_size": memory_size,
            "memory_entries": n_mem,
            "aug_epochs": aug_epochs,
            "seeds": list(seeds),
            "index": index,
            "nprobe": nprobe if index == "ivf" else None,
            "use_rasa": use_rasa,
            "num_classes": num_classes,
            "ignore_index": ignore,
            "num_train": len(train_set),
            "num_val": len(val_set),
            "train": getattr(train_set, "name", None),
            "val": getattr(val_set, "name", None),
        },
    }
