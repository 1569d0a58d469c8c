"""Every evaluation protocol on the built-in toy data: a pretrained backbone vs the same backbone at init.

    python benchmarks/toy_protocols.py --model vitt8 --weights runs/pretrain-tiny/checkpoint.pth \
        [--init-weights runs/pretrain-tiny/init.pth | --init-seeds 0 1] [--size 32] [--seg-size 128] \
        [--out runs/toy_protocols.json]

"At init" is the same architecture with the random weights of seed 0 (the tiny preset builds its student
with seed 0), one model per --init-seeds entry, or the weights given by --init-weights. Prints one table
(metric per protocol, init → trained) and writes a JSON. Every protocol runs in-process through its
`evaluate()` with the toy-scale defaults of its `franca eval` command (linseg: 50 epochs on 2 cached
views; depth: 10 epochs; keypoints: 16 patches a side); RASA is fitted on the trained backbone and
in-context mIoU is reported with and without it. --dense-only skips the classification protocols.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _init_model(name: str, weights: str | None, ref: torch.nn.Module, seed: int = 0):
    import franca
    from franca.utils.seed import seed_all

    if weights:
        return franca.load_backbone(name, weights=weights)
    seed_all(seed)
    no_layerscale = isinstance(ref.blocks[0].ls1, torch.nn.Identity)  # e.g. the tiny presets
    extra = {"layerscale": None} if no_layerscale else {}
    return franca.build_backbone(
        name,
        embed_dim=ref.embed_dim,
        num_heads=ref.num_heads,
        depth=ref.n_blocks,
        img_size=ref.patch_size * int(round((ref.pos_embed.shape[1] - 1) ** 0.5)),
        **extra,
    ).eval()


def run_protocols(model, args, device) -> dict:
    from franca.eval import depth, incontext, keypoints, knn, linear, linseg, logreg, overcluster, pca_slice

    res = {}
    cls_kw = dict(device=device, size=args.size)
    timed = (
        []
        if args.dense_only
        else [
            ("knn top-1 (k=20)", lambda: knn.evaluate(model, **cls_kw)),
            ("linear top-1", lambda: linear.evaluate(model, epochs=args.linear_epochs, **cls_kw)),
            ("logreg top-1", lambda: logreg.evaluate(model, Cs=[1e-2, 1e-1, 1.0, 10.0], **cls_kw)),
            ("pca-slice top-1", lambda: pca_slice.evaluate(model, epochs=args.linear_epochs, **cls_kw)),
        ]
    )
    timed += [
        (
            "overcluster mIoU",
            lambda: overcluster.evaluate(model, device=device, size=args.seg_size, seeds=(0, 1), ks=args.overcluster_k),
        ),
        ("incontext mIoU", lambda: incontext.evaluate(model, device=device, size=args.seg_size)),
        ("linseg mIoU", lambda: linseg.evaluate(model, device=device, config=_linseg_cfg(args))),
        ("keypoints PCK@0.1", lambda: keypoints.evaluate(model, device=device, progress=False)),
        ("depth SI-RMSE (lower)", lambda: depth.evaluate(model, device=device, progress=False)),
    ]
    for label, fn in timed:
        t0 = time.time()
        try:
            r = fn()
            res[label] = {
                "metric": float(r["metric"]),
                "metric_name": r.get("metric_name"),
                "seconds": time.time() - t0,
            }
            if label.startswith("overcluster"):  # every K, not only the headline one
                for k, v in list(r["results"].items())[1:]:
                    res[f"overcluster mIoU K={k}"] = {"metric": float(v["miou"]["mean"]), "metric_name": f"miou_k{k}"}
        except Exception as exc:  # report and keep going: one failing protocol must not hide the others
            res[label] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"  {label:<24} {res[label].get('metric', res[label].get('error'))}", flush=True)
    return res


def _linseg_cfg(args):
    from franca.eval.linseg import LinsegConfig

    # toy-sized crops, and cached augmented views so the CPU run takes minutes (as the CLI does on CPU)
    return LinsegConfig.for_dataset("voc", crop=args.seg_size, epochs=args.linseg_epochs, cache_views=2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="vitt4")
    ap.add_argument("--weights", required=True, help="trained checkpoint (or exported backbone)")
    ap.add_argument("--init-weights", default=None)
    ap.add_argument(
        "--init-seeds",
        type=int,
        nargs="+",
        default=[0],
        help="one init model per seed (ignored with --init-weights; default: %(default)s)",
    )
    ap.add_argument("--size", type=int, default=32, help="input size of the classification protocols")
    ap.add_argument(
        "--seg-size",
        type=int,
        default=128,
        help="input size of overcluster / in-context / linseg (default: %(default)s, the CLI's toy size)",
    )
    ap.add_argument(
        "--overcluster-k",
        type=int,
        nargs="+",
        default=[100, 300],
        help="K values; the first is the headline (default: %(default)s, Franca's)",
    )
    ap.add_argument("--dense-only", action="store_true", help="only the dense protocols (and RASA)")
    ap.add_argument("--linear-epochs", type=int, default=10)
    ap.add_argument("--linseg-epochs", type=int, default=50, help="default: %(default)s, as franca eval linseg")
    ap.add_argument("--rasa-iterations", type=int, default=4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="runs/toy_protocols.json")
    args = ap.parse_args()

    import franca
    from franca.utils.device import resolve_device

    device = resolve_device(args.device)
    trained = franca.load_backbone(args.model, weights=args.weights).to(device)
    seeds = [None] if args.init_weights else args.init_seeds
    inits = {
        ("init" if s in (None, 0) else f"init{s}"): _init_model(args.model, args.init_weights, trained, s or 0)
        for s in seeds
    }
    results = {}
    for name, model in (*inits.items(), ("trained", trained)):
        print(f"== {name}", flush=True)
        results[name] = run_protocols(model.to(device), args, device)
    results["rasa"] = _rasa(trained, args, device)
    names = [*inits, "trained"]
    print(f"\n{'protocol':<24} " + " ".join(f"{n:>9}" for n in names))

    def fmt(v):
        return f"{v:9.3f}" if isinstance(v, float) else f"{'error':>9}"

    for label in results["trained"]:
        print(f"{label:<24} " + " ".join(fmt(results[n][label].get("metric")) for n in names))
    r = results["rasa"]
    if "error" not in r:
        print(
            f"RASA: held-out position R² ridge {r['ridge_r2_before']:.3f} -> {r['ridge_r2_after']:.3f}, "
            f"sigmoid {r['sigmoid_r2_before']:.3f} -> {r['sigmoid_r2_after']:.3f}; "
            f"in-context mIoU {r['incontext_before']:.3f} -> {r['incontext_after']:.3f}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    return 0


def _rasa(model, args, device) -> dict:
    """`franca rasa` on the trained backbone (cached features), then in-context mIoU without and with it."""
    import tempfile

    import franca
    from franca.cli import main as cli
    from franca.eval import incontext

    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "rasa.safetensors"
            rc = cli(
                [
                    "rasa",
                    "--model",
                    args.model,
                    "--weights",
                    args.weights,
                    "--no-augment",
                    "--device",
                    str(device),
                    "--iterations",
                    str(args.rasa_iterations),
                    "--epochs",
                    "20",
                    "--lr",
                    "1e-2",
                    "--batch-size",
                    "32",
                    "--size",
                    str(args.seg_size),
                    "--out",
                    str(out),
                ]
            )
            if rc:
                return {"error": f"franca rasa exited {rc}"}
            report = json.loads(next(Path(tmp).glob("*.json")).read_text())
            cleaned = franca.load_backbone(args.model, weights=out).to(device)
        before = incontext.evaluate(cleaned, device=device, size=args.seg_size)["metric"]
        after = incontext.evaluate(cleaned, device=device, size=args.seg_size, use_rasa=True)["metric"]
        return {
            **{
                f"{p}_r2_{w}": report[f"{p}_r2_{k}"]
                for p in ("ridge", "sigmoid")
                for w, k in (("before", "initial"), ("after", "final"))
            },
            "probe_failures": report["probe_failures"],
            "incontext_before": float(before),
            "incontext_after": float(after),
        }
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


if __name__ == "__main__":
    sys.exit(main())
