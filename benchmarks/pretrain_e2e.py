"""End-to-end pretraining throughput: the real data path and step, against the step alone on the same batches.

    python benchmarks/pretrain_e2e.py --preset tiny --device cpu --images 256 --batch-size 32       # CPU, minutes
    python benchmarks/pretrain_e2e.py --preset vitb14-in21k --device cuda --batch-size 64 --compile \
        --workers 4 --augment-device cpu cuda --source folder shards                                # one GPU, < 5 min

Writes (or reuses, under --data-dir) a folder of JPEGs of ImageNet-like sizes (400-520 x 300-400 px, 10 class
folders) and a webdataset shard set of the same images. For each (source, augment device) it builds the loader
with `franca.train.data.build_pretrain_data` (what `franca pretrain` uses: workers, decoding, multi-crop,
CyclicMask, collate; with --augment-device cuda the workers read bytes and the GPU decodes and augments), runs
`Trainer.step` for --warmup then --iters iterations, and prints end-to-end images/s; then the step alone on
the same --iters batches already on the device, their ratio, the CPU workers and the peak memory.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _make_image(args: tuple[int, str]) -> None:
    """One JPEG of an ImageNet-like size: smooth colour field plus a few ellipses (compresses like a photo)."""
    import numpy as np
    from PIL import Image, ImageDraw

    i, root = args
    r = np.random.default_rng(i)
    w, h = int(r.integers(400, 520)), int(r.integers(300, 400))
    low = r.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    im = Image.fromarray(low).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        x, y, s = int(r.integers(0, w)), int(r.integers(0, h)), int(r.integers(20, 120))
        draw.ellipse([x, y, x + s, y + s], fill=tuple(int(c) for c in r.integers(0, 255, 3)))
    out = Path(root) / f"c{i % 10}"
    out.mkdir(parents=True, exist_ok=True)
    im.save(out / f"{i:06d}.jpg", quality=90)


def ensure_data(root: Path, n: int, per_shard: int = 100) -> tuple[Path, Path]:
    """(folder, shard folder) of `n` JPEGs under `root`, written once (a marker file records the count)."""
    folder, shards = root / "images", root / "shards"
    marker = root / f"done-{n}"
    if marker.is_file():
        return folder, shards
    with Pool(max(1, min(os.cpu_count() or 1, 16))) as pool:
        pool.map(_make_image, [(i, str(folder)) for i in range(n)], chunksize=16)
    files = sorted(folder.rglob("*.jpg"))
    shards.mkdir(parents=True, exist_ok=True)
    for s in range(0, len(files), per_shard):
        with tarfile.open(shards / f"train-{s // per_shard:06d}.tar", "w") as tar:
            for f in files[s : s + per_shard]:
                data = f.read_bytes()
                info = tarfile.TarInfo(f"{f.parent.name}_{f.stem}.jpg")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    marker.write_text(str(n))
    return folder, shards


def _peak_memory(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB (device)"
    import resource

    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process RSS)"


def run_one(tr: Any, cfg: Any, source: str, aug: str, warmup: int, iters: int, it0: int) -> dict[str, Any]:
    """End-to-end then step-only images/s of one (source, augment device)."""
    from franca.train.data import build_pretrain_data
    from franca.train.loop import _to_device

    dev = tr.device
    on = dev if aug == "cuda" else None
    if aug == "cuda" and dev.type != "cuda":
        on = torch.device("cpu")  # the device path run on the CPU (tests and CPU runs of this benchmark)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    data = build_pretrain_data(cfg, tr.student["backbone"].patch_size, 0, 1, 0, dev, augment_on=on)
    it = iter(data.loader)
    B = cfg.train.batch_size_per_gpu
    kept: list[dict[str, Any]] = []
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for i in range(warmup + iters):
        if i == warmup:
            sync()
            t0 = time.perf_counter()
        batch = next(it)
        batch.pop("skipped", None)
        batch = _to_device(batch, dev)
        tr.step(batch, it0 + i)
        if i >= warmup:
            kept.append(batch)
    sync()
    e2e = iters * B / (time.perf_counter() - t0)
    del it  # stops the workers
    t0 = time.perf_counter()
    for i, batch in enumerate(kept):
        tr.step(batch, it0 + warmup + iters + i)
    sync()
    step = iters * B / (time.perf_counter() - t0)
    return {"e2e": e2e, "step": step, "peak": _peak_memory(dev), "description": data.description}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=None, help="images per step (default: the preset's)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the preset's)")
    ap.add_argument("--images", type=int, default=2000, help="JPEGs to write (once per --data-dir)")
    ap.add_argument("--data-dir", default=None, help="where the images and shards live (default: a temp folder)")
    ap.add_argument("--source", nargs="+", default=["folder", "shards"], choices=["folder", "shards"])
    ap.add_argument(
        "--augment-device",
        nargs="+",
        default=["cpu", "cuda"],
        choices=["cpu", "cuda"],
        help="cpu: decode + multi-crop in the workers; cuda: on the training device (on a CPU run: the "
        "device path on the CPU)",
    )
    ap.add_argument("--compile", action="store_true", help="train.compile=true")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("overrides", nargs="*", help="extra config key=value")
    args = ap.parse_args()

    from franca.train.config import load_config
    from franca.train.loop import Trainer

    root = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="franca-e2e-"))
    t = time.perf_counter()
    folder, shards = ensure_data(root, args.images)
    print(
        f"data: {args.images} JPEGs (400-520 x 300-400 px) in {folder} and {shards} ({time.perf_counter() - t:.0f} s)"
    )
    base = [
        f"train.device={args.device}",
        f"train.compile={str(args.compile).lower()}",
        "train.knn_eval=false",
        f"train.output_dir={root / 'run'}",
        "train.iterations=1000000",
        "optim.warmup_iterations=0",
        f"data.dataset={folder}",
    ]
    if args.batch_size:
        base.append(f"train.batch_size_per_gpu={args.batch_size}")
    if args.workers is not None:
        base.append(f"data.num_workers={args.workers}")
    cfg0 = load_config(args.preset, base + list(args.overrides))
    tr = Trainer(cfg0, quiet=True, synthetic_dataset_size=10**9)
    dev = tr.device
    name = f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""
    print(
        f"preset {args.preset}  batch {cfg0.train.batch_size_per_gpu}  device {dev}{name}  compile {args.compile}  "
        f"CPU workers {cfg0.data.num_workers} (of {os.cpu_count()} cores)  torch {torch.__version__}"
    )
    print(f"{'source':<8} {'augment':<8} {'e2e img/s':>10} {'step img/s':>11} {'ratio':>6}  peak memory")
    it0 = 0
    for source in args.source:
        where = folder if source == "folder" else shards
        cfg = load_config(args.preset, base + list(args.overrides) + [f"data.dataset={where}"])
        for aug in args.augment_device:
            r = run_one(tr, cfg, source, aug, args.warmup, args.iters, it0)
            it0 += 2 * (args.warmup + args.iters)
            print(
                f"{source:<8} {aug:<8} {r['e2e']:10.1f} {r['step']:11.1f} {r['e2e'] / r['step']:6.2f}  {r['peak']}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
