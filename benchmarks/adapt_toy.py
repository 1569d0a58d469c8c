"""Toy-scale evidence of continued pretraining (docs/adapt.md, issue 30 item 3).

A `make demo` checkpoint (the tiny preset trained on the default toy domain, shapes) meets the second built-in
domain (textures: other classes, another appearance). Three arms, measured on the textures domain with k-NN
(top-1, k = 20, 32 px) and in-context segmentation (mIoU, scenes at 128 px):
- no adaptation: the demo checkpoint as it is;
- from scratch: the tiny preset trained on the textures set for N iterations (per seed);
- continued: the adapt-tiny preset started from the demo checkpoint (`--init`, its heads included), trained on
  the same images for the same N iterations (per seed).
Both trained arms read the same images (the textures set's train split, batch 32) for the same iterations;
`train.seed` sets their data order (and the scratch arm's initial weights). Reported: mean and 95 % t interval
over the seeds, the per-seed values, the paired difference continued − scratch (same seed, same data order),
and the wall time of every run.

    python benchmarks/adapt_toy.py --demo runs/demo/checkpoint.pth --out runs/adapt-toy --seeds 0 1 2

Every step is a `franca` command line, printed before it runs (in this process) and timed; a finished run or
evaluation (its summary.json or result JSON present) is not redone, so an interrupted sweep continues where it
stopped. Writes <out>/adapt_toy.md (the tables) and <out>/adapt_toy.json (every number).
`--iterations 2 --toy-n-train 40 --toy-n-val 20` is the short version the tests run.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

ARMS = ("none", "scratch", "continued")
TITLES = {
    "none": "no adaptation (the demo checkpoint)",
    "scratch": "from scratch on textures (tiny)",
    "continued": "continued from the demo checkpoint (adapt-tiny, --init)",
}
PROTOCOLS = {"knn": "k-NN top-1 (k=20), %", "incontext": "in-context mIoU"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", required=True, help="the `make demo` checkpoint (tiny preset, shapes domain)")
    p.add_argument("--out", default="runs/adapt-toy", help="folder of the runs and results")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--iterations", type=int, default=624, help="iterations of each trained arm (equal for both)")
    p.add_argument("--toy-n-train", type=int, default=0, help="textures set size (0: the built-in 5,000 / 1,000)")
    p.add_argument("--toy-n-val", type=int, default=0)
    p.add_argument("--incontext-seeds", type=int, nargs="+", default=[0], help="memory-augmentation seeds")
    return p.parse_args(argv)


def toy_overrides(args: argparse.Namespace) -> list[str]:
    """The config keys of the textures set (the built-in one, or a smaller one of the same style)."""
    ov = ["data.toy_options.domain=textures"]
    if args.toy_n_train:
        ov.append(f"data.toy_n_train={args.toy_n_train}")
    if args.toy_n_val:
        ov.append(f"data.toy_n_val={args.toy_n_val}")
    return ov


def textures_root(args: argparse.Namespace) -> Path:
    from franca.data.toy import builtin_options, ensure_toy

    kw = builtin_options("textures")
    if args.toy_n_train:
        kw["n_train"] = args.toy_n_train
    if args.toy_n_val:
        kw["n_val"] = args.toy_n_val
    return ensure_toy(**kw, progress=False)


def run_franca(argv: list[str], log: list[dict]) -> float:
    """Run one `franca` command in this process; its wall time in seconds (a failure stops the sweep)."""
    from franca.cli import main

    print("$ franca " + shlex.join(argv), flush=True)
    t0 = time.time()
    rc = main(argv)
    wall = time.time() - t0
    log.append({"command": "franca " + shlex.join(argv), "wall_s": round(wall, 1), "rc": rc})
    if rc != 0:
        raise SystemExit(f"franca {argv[0]} failed (exit {rc}): franca {shlex.join(argv)}")
    return wall


def train_commands(args: argparse.Namespace, out: Path, seed: int) -> dict[str, list[str]]:
    """The two trained arms of one seed: equal iterations, the same images."""
    common = ["--seed", str(seed), "--quiet", *toy_overrides(args), f"train.iterations={args.iterations}"]
    common.append("train.knn_eval=false")  # measured below by `franca eval knn`, the same way for every arm
    return {
        "scratch": ["pretrain", "--config", "tiny", "--out", str(out / f"scratch-s{seed}"), *common]
        + ["train.max_minutes=0"],
        "continued": ["pretrain", "--config", "adapt-tiny", "--init", str(args.demo)]
        + ["--out", str(out / f"continued-s{seed}"), *common],
    }


def eval_commands(weights: Path, root: Path, res: Path, args: argparse.Namespace) -> dict[str, list[str]]:
    w = ["--weights", str(weights), "--quiet"]
    return {
        "knn": ["eval", "knn", *w, "--data", str(root / "imagenet"), "--size", "32", "--out", str(res / "knn.json")],
        "incontext": [
            "eval",
            "incontext",
            *w,
            "--data",
            str(root),
            "--size",
            "128",
            "--out",
            str(res / "incontext.json"),
        ]
        + ["--seeds", *map(str, args.incontext_seeds)],
    }


def finished(run_dir: Path, iterations: int) -> bool:
    s = run_dir / "summary.json"
    return s.is_file() and json.loads(s.read_text()).get("iterations") == iterations


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of the t interval); half-width nan for one value."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)


def fmt(values: list[float], digits: int) -> str:
    mean, half = t_interval(values)
    each = ", ".join(f"{v:.{digits}f}" for v in values)
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f} ({each})"


def sweep(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log: list[dict] = []
    root = textures_root(args)
    print(f"textures set: {root}", flush=True)
    weights: dict[str, dict[int, Path]] = {"none": {-1: Path(args.demo)}, "scratch": {}, "continued": {}}
    walls: dict[str, dict[int, float]] = {"scratch": {}, "continued": {}}
    for seed in args.seeds:
        for arm, argv in train_commands(args, out, seed).items():
            run_dir = out / f"{arm}-s{seed}"
            if not finished(run_dir, args.iterations):
                run_franca(argv + (["--overwrite"] if run_dir.exists() else []), log)
            summary = json.loads((run_dir / "summary.json").read_text())
            walls[arm][seed] = float(summary["wall_time_s"])
            weights[arm][seed] = run_dir / "checkpoint.pth"
    results: dict[str, dict[str, dict[int, float]]] = {arm: {p: {} for p in PROTOCOLS} for arm in ARMS}
    eval_walls: dict[str, float] = {}
    for arm, by_seed in weights.items():
        for seed, w in by_seed.items():
            res = out / "eval" / (arm if seed < 0 else f"{arm}-s{seed}")
            for proto, argv in eval_commands(w, root, res, args).items():
                path = res / f"{proto}.json"
                if not path.is_file():
                    eval_walls[f"{res.name}/{proto}"] = round(run_franca(argv, log), 1)
                results[arm][proto][seed] = float(json.loads(path.read_text())["metric"])
    report = {
        "iterations": args.iterations,
        "seeds": args.seeds,
        "textures_set": str(root),
        "results": {a: {p: {str(s): v for s, v in r.items()} for p, r in pr.items()} for a, pr in results.items()},
        "train_wall_s": {a: {str(s): round(v, 1) for s, v in w.items()} for a, w in walls.items()},
        "eval_wall_s": eval_walls,
        "commands": log,
    }
    (out / "adapt_toy.json").write_text(json.dumps(report, indent=1) + "\n")
    table = markdown(results, walls, args)
    (out / "adapt_toy.md").write_text(table)
    print(table, flush=True)
    return report


def markdown(results: dict, walls: dict, args: argparse.Namespace) -> str:
    """The results table (mean ± 95 % t interval (per-seed values)) and the paired differences."""
    digits = {"knn": 1, "incontext": 3}
    lines = [
        f"| arm | {' | '.join(PROTOCOLS.values())} | training wall time per run (s) |",
        "| --- |" + " --- |" * (len(PROTOCOLS) + 1),
    ]
    for arm in ARMS:
        cells = [fmt([results[arm][p][s] for s in sorted(results[arm][p])], digits[p]) for p in PROTOCOLS]
        wall = "—" if arm == "none" else fmt([walls[arm][s] for s in sorted(walls[arm])], 0)
        lines.append(f"| {TITLES[arm]} | {' | '.join(cells)} | {wall} |")
    diff = []
    for p in PROTOCOLS:
        d = [results["continued"][p][s] - results["scratch"][p][s] for s in args.seeds]
        diff.append(fmt(d, digits[p]))
    lines.append(f"| continued − scratch (paired by seed) | {' | '.join(diff)} | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    sweep(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
