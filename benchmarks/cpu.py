"""CPU speed at equal results: ours vs the official DINOv2 model code, fp32 and bf16, in one process.

    python benchmarks/cpu.py                          # features, tiny training step, k-NN and CLS cosine
    python benchmarks/cpu.py --demo                   # and `make demo` (franca pretrain) in fp32 and in bf16
    python benchmarks/cpu.py --weights FILE.pth       # a real ViT-B/14 file instead of random weights

Features: ViT-B/14 (DINOv2's layout, GELU MLP) `forward_features`, batch 8 at 224 px, the same weights in every implementation: the
official DINOv2 model code rebuilt as modules (benchmarks/dinov2_reference.py), timm's
vit_base_patch14_dinov2 loaded from `franca.export_backbone`'s file, and ours, each in fp32 and under bf16
autocast. The variants take turns (round-robin, `--rounds` rounds), so a machine whose load changes
affects them alike; the median of the rounds is reported, as images/s of wall time and of this process's
CPU time (on a shared machine the CPU-time figure is the steadier one), and as a ratio to the official
code in fp32. CLS cosine: ours in each precision against the official code in fp32, over the batch.

Training step: the tiny preset's step (`Trainer.step` on a synthetic batch of its crops), fp32 and bf16
taking turns. k-NN: `franca.eval.knn.evaluate` on the built-in toy set (5,000 train / 1,000 val images,
k = 20) in fp32 and in bf16 for the trained tiny model of `make demo` (`--knn-weights`, default
runs/pretrain-tiny/checkpoint.pth when it exists) and, given `--weights`, for that ViT-B/14 at `--knn-size`
px, with the smallest CLS cosine over the val set. CLS cosine of random ViT-B/14 weights at three LayerScale
values, with how alike the images' CLS tokens are (at DINOv2's initial 1e-5 they are all the same). `--demo` runs `franca pretrain
--overwrite` (the tiny preset, `train.max_minutes=0` unless `--demo-limit`) once per precision and prints
wall time, iterations and the k-NN gain of each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def machine_line() -> str:
    from franca.utils.device import cpu_flags, cpu_has_native_bf16, resolve_precision

    name = "unknown CPU"
    try:
        name = next(
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.lower().startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    flags = cpu_flags() or frozenset()
    native = sorted(f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile", "bf16"))
    return (
        f"{name}; {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}; bf16 flags: "
        f"{', '.join(native) or 'none'}; native bf16: {cpu_has_native_bf16()}; precision auto → "
        f"{resolve_precision('auto', 'cpu')} (features), {resolve_precision('auto', 'cpu', training=True)} "
        f"(pretraining); torch {torch.__version__}; load average {os.getloadavg()[0]:.1f}"
    )


def alternate(variants: dict[str, Callable[[], None]], rounds: int, calls: int) -> dict[str, dict[str, float]]:
    """Run every variant `calls` times per round, round-robin over `rounds` rounds (after one warm-up call
    each); the median seconds per call of wall and of process CPU time."""
    for fn in variants.values():
        fn()
    wall: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(variants)[::-1]  # neither variant always goes first
        for name in order:
            w0, c0 = time.perf_counter(), time.process_time()
            for _ in range(calls):
                variants[name]()
            wall[name].append((time.perf_counter() - w0) / calls)
            cpu[name].append((time.process_time() - c0) / calls)
    return {k: {"wall": statistics.median(wall[k]), "cpu": statistics.median(cpu[k])} for k in variants}


def ratio_table(times: dict[str, dict[str, float]], base: str, per_call: float, unit: str) -> None:
    """One row per variant: `unit` per second (per_call units per call) of wall and CPU time, and the
    ratio of each to `base` (higher is faster)."""
    print(f"  {'variant':<28} {unit + '/s wall':>14} {unit + '/s CPU':>14} {'× ' + base + ' (wall)':>26} {'(CPU)':>7}")
    for k, t in times.items():
        rw, rc = times[base]["wall"] / t["wall"], times[base]["cpu"] / t["cpu"]
        print(f"  {k:<28} {per_call / t['wall']:14.2f} {per_call / t['cpu']:14.2f} {rw:26.2f} {rc:7.2f}")


def cosine_min(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).min())


def speed_model(args: argparse.Namespace) -> torch.nn.Module:
    import franca

    if args.weights:
        return franca.load_backbone("vitb14", weights=args.weights).eval()
    torch.manual_seed(0)  # random weights, seed 0; DINOv2's ViT-B/14 layout (GELU MLP; Franca's default is SwiGLU)
    return franca.build_backbone("vitb14", ffn="mlp").eval()


def features(args: argparse.Namespace, model: torch.nn.Module) -> None:
    from dinov2_reference import ReferenceViT
    from safetensors.torch import load_file

    import franca
    from franca.utils.device import autocast_context

    tmp = Path(tempfile.mkdtemp(prefix="franca-cpu-bench-"))
    path = franca.export_backbone(model, tmp / "vitb14.safetensors")
    official = ReferenceViT(load_file(str(path)), model.num_heads).eval()
    impls: dict[str, torch.nn.Module] = {"official": official}
    if not args.no_timm:
        import timm

        from franca.models.weights import timm_create_kwargs

        kw = timm_create_kwargs(model)
        impls["timm"] = timm.create_model(
            "vit_base_patch14_dinov2", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kw
        ).eval()
    impls["ours"] = model
    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))

    def cls(m: torch.nn.Module, precision: str) -> torch.Tensor:
        with torch.inference_mode(), autocast_context("cpu", precision):
            out = m.forward_features(x)
        return (out["x_norm_clstoken"] if isinstance(out, dict) else out[:, 0]).float()  # timm: normed tokens

    variants = {f"{name} {p}": (lambda m=m, p=p: cls(m, p)) for name, m in impls.items() for p in ("fp32", "bf16")}
    print(
        f"\nfeatures: ViT-B/14 (DINOv2 layout) forward_features, batch {args.batch} at {args.size} px, {args.rounds} rounds"
    )
    times = alternate(variants, args.rounds, args.calls)
    ratio_table(times, "official fp32", args.batch, "img")
    ref = cls(official, "fp32")
    cos = "  ".join(
        f"{name} {p} {cosine_min(cls(m, p), ref):.6f}" for name, m in impls.items() for p in ("fp32", "bf16")
    )
    print(f"  CLS cosine to official fp32 (min over the batch): {cos}")
    best = times["official fp32"]["cpu"] / times["ours bf16"]["cpu"]
    print(
        f"  ours bf16 vs official fp32: {best:.2f}× (CPU time), {times['official fp32']['wall'] / times['ours bf16']['wall']:.2f}× (wall)"
    )


def cls_cosine(args: argparse.Namespace) -> None:
    """bf16 against fp32 CLS tokens of ViT-B/14 with random weights at three LayerScale values, next to how
    alike the images' CLS tokens are: at DINOv2's initial 1e-5 every image gets the same CLS token, so a
    cosine of 1 there says nothing; without LayerScale each block's random output enters at full size."""
    import franca
    from franca.utils.device import autocast_context

    x = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    print(f"\nCLS cosine, ours bf16 vs fp32, random ViT-B/14, batch {args.batch} at {args.size} px")
    for ls in (1e-5, 0.1, None):
        torch.manual_seed(0)
        m = franca.build_backbone("vitb14", ffn="mlp", layerscale=ls).eval()
        out = {}
        for p in ("fp32", "bf16"):
            with torch.inference_mode(), autocast_context("cpu", p):
                out[p] = m.forward_features(x)["x_norm_clstoken"].float()
        n = torch.nn.functional.normalize(out["fp32"], dim=-1)
        spread = float((n @ n.T)[~torch.eye(len(n), dtype=torch.bool)].mean())
        print(
            f"  LayerScale {ls if ls else 'none (1)'}: min cosine {cosine_min(out['bf16'], out['fp32']):.6f} "
            f"(mean cosine between the images' CLS tokens {spread:.3f})"
        )


def train_step(args: argparse.Namespace) -> None:
    from train_step import make_batch

    from franca.train.config import load_config
    from franca.train.loop import Trainer

    cfg = load_config(
        "tiny",
        [
            "train.knn_eval=false",
            f"train.output_dir={tempfile.mkdtemp(prefix='franca-cpu-step-')}",
            "optim.warmup_iterations=0",
            "train.iterations=1000000",
        ],
    )
    trainers = {}
    for p in ("fp32", "bf16"):
        cfg.train.precision = p
        trainers[p] = Trainer(cfg, quiet=True, synthetic_dataset_size=10**9)
    batch = make_batch(
        cfg, trainers["fp32"].student["backbone"].patch_size, cfg.train.batch_size_per_gpu, torch.device("cpu")
    )
    it = {"n": 100}

    def step(p: str) -> None:
        it["n"] += 1
        trainers[p].step(batch, it["n"])

    print(
        f"\ntraining step: tiny preset, batch {cfg.train.batch_size_per_gpu}, {args.rounds} rounds of {args.step_calls}"
    )
    times = alternate({f"ours {p}": (lambda p=p: step(p)) for p in ("fp32", "bf16")}, args.rounds, args.step_calls)
    ratio_table(times, "ours fp32", 1.0, "step")


def knn(args: argparse.Namespace, vitb: torch.nn.Module) -> None:
    import franca
    from franca.eval import knn as knn_eval
    from franca.eval.classification_data import classification_splits
    from franca.eval.features import extract

    runs = []
    ckpt = Path(args.knn_weights) if args.knn_weights else ROOT / "runs/pretrain-tiny/checkpoint.pth"
    if ckpt.is_file():
        runs.append((f"tiny ({ckpt}, trained)", franca.load_backbone(weights=str(ckpt)).eval(), 32))
    else:
        print(f"\nk-NN: no trained tiny model at {ckpt} (run `make demo` or pass --knn-weights): skipped")
    knn_size = args.knn_size if args.knn_size is not None else (112 if args.weights else 0)
    if knn_size:
        runs.append((f"ViT-B/14 ({args.weights or 'random init'})", vitb, knn_size))
    for label, model, size in runs:
        print(f"\nk-NN on the built-in toy set, {label}, {size} px, k = 20")
        top1, cls = {}, {}
        for p in ("fp32", "bf16"):
            t0 = time.perf_counter()
            res = knn_eval.evaluate(model, None, size=size, precision=p, device="cpu", progress=False)
            top1[p] = res["metric"]
            print(f"  {p}: top-1 {res['metric']:.2f}  ({time.perf_counter() - t0:.0f} s, precision {res['precision']})")
        _, val = classification_splits(None, size=size, protocol="knn")
        for p in ("fp32", "bf16"):
            cls[p] = extract(model, val, kind="cls", device="cpu", precision=p, distributed=False)["cls"]
        print(
            f"  bf16 − fp32: {top1['bf16'] - top1['fp32']:+.2f} points; CLS cosine bf16 vs fp32, min over the "
            f"{len(val)} val images: {cosine_min(cls['bf16'], cls['fp32']):.6f}"
        )


def demo(args: argparse.Namespace) -> None:
    limit = [] if args.demo_limit else ["train.max_minutes=0"]
    print(f"\nmake demo (franca pretrain --overwrite, tiny preset{'' if args.demo_limit else ', train.max_minutes=0'})")
    for p in ("fp32", "bf16"):
        out = Path(tempfile.mkdtemp(prefix=f"franca-demo-{p}-"))
        cmd = [
            sys.executable,
            "-m",
            "franca",
            "pretrain",
            "--overwrite",
            "--quiet",
            "--out",
            str(out),
            "--precision",
            p,
            *limit,
        ]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        s = json.loads((out / "summary.json").read_text())
        print(
            f"  {p}: {wall:.0f} s wall (training {s['wall_time_s']:.0f} s), {s['iterations']} / {s['planned_iterations']}"
            f" iterations, k-NN {s.get('knn_top1_init', float('nan')):.1f} → {s.get('knn_top1_trained', float('nan')):.1f}"
            f" ({s.get('knn_gain', float('nan')):+.1f})"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=None, help="ViT-B/14 weights file (default: random weights, seed 0)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=5, help="round-robin rounds (the median is reported)")
    ap.add_argument("--calls", type=int, default=1, help="forward calls per variant and round")
    ap.add_argument("--step-calls", type=int, default=5, help="training steps per variant and round")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--no-timm", action="store_true", help="leave timm out of the features table")
    ap.add_argument("--knn-weights", default=None, help="trained tiny model for the k-NN check")
    ap.add_argument(
        "--knn-size",
        type=int,
        default=None,
        help="ViT-B/14 k-NN input side, 0 = skip (default: 112 with --weights; skipped for random weights, whose "
        "CLS tokens are alike for every image)",
    )
    ap.add_argument(
        "--skip", nargs="*", default=[], choices=["features", "cosine", "step", "knn"], help="sections to leave out"
    )
    ap.add_argument("--demo", action="store_true", help="also run the demo pretraining once per precision")
    ap.add_argument("--demo-limit", action="store_true", help="keep the preset's 9-minute limit in --demo")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line())
    vitb = speed_model(args)
    if "features" not in args.skip:
        features(args, vitb)
    if "cosine" not in args.skip:
        cls_cosine(args)
    if "step" not in args.skip:
        train_step(args)
    if "knn" not in args.skip:
        knn(args, vitb)
    if args.demo:
        demo(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
