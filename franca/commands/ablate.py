"""Ablation sweep: named variants of one preset × several seeds at equal compute, evaluated and compared.

Example: the tiny preset's baseline against no KoLeo, one seed, a short schedule, scored by k-NN:

    franca ablate --variants franca no-koleo --seeds 0 --protocols knn --out runs/ablate train.iterations=10

Built-in variants: see --variants (the first variant is the baseline unless --baseline says otherwise).
Your own: `--variant NAME key=value [key=value ...]` (repeatable; any key the config accepts). Variants
may not change the compute (iterations, epochs, batch, crops, data, seed): those are set once, by the
sweep-wide `key=value` overrides, for every run. The untrained backbone of each seed is the reference row.

Writes OUT/results/<variant>-seed<s>.json per run (a re-run skips finished runs and resumes
half-trained ones from OUT/runs/<variant>-seed<s>/checkpoint.pth), then OUT/ablation.json,
OUT/ablation.md (mean ± std over seeds, paired difference to the baseline with a 95 % t interval,
parameter counts, step times) and OUT/ablation.png.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from franca.commands._common import add_precision_argument
from franca.commands._flags import add_quiet_argument, natural_int, positive_int

HELP = "ablation sweep: config variants × seeds at equal compute, evaluated, with a table and plot"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from franca.ablate.evaluate import PROTOCOLS
    from franca.ablate.variants import BUILTIN_HELP, BUILTIN_VARIANTS, DEFAULT_VARIANTS

    p.add_argument("--config", default="tiny", help="preset name or yaml file (default: %(default)s)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="sweep-wide config overrides, applied to every variant (e.g. train.epochs=4)",
    )
    p.add_argument(
        "--variants",
        nargs="*",
        default=None,
        metavar="NAME",
        help=f"built-in variants to run (default: {' '.join(DEFAULT_VARIANTS)}; give none with only --variant "
        "entries). Built-in: "
        + "; ".join(f"{n} ({' '.join(BUILTIN_VARIANTS[n]) or 'the preset'}): {h}" for n, h in BUILTIN_HELP.items()),
    )
    p.add_argument(
        "--variant",
        nargs="+",
        action="append",
        default=[],
        metavar="NAME_OR_KEY=VALUE",
        help="a variant of your own: NAME key=value [key=value ...] (repeatable; default: none)",
    )
    p.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="NAME=WEIGHTS",
        help="a fixed backbone (a weights file, e.g. a distillation teacher) evaluated once with the same "
        "protocols, as a row of the table (repeatable; default: none)",
    )
    p.add_argument("--baseline", default=None, help="variant the others are compared with (default: the first)")
    p.add_argument("--seeds", nargs="+", type=natural_int, default=[0, 1, 2], help="default: %(default)s")
    p.add_argument(
        "--protocols",
        nargs="+",
        default=["knn", "linear", "pca-slice"],
        choices=PROTOCOLS,
        help="evaluations of every run (default: %(default)s)",
    )
    p.add_argument("--out", default="runs/ablate", help="sweep folder (default: %(default)s)")
    p.add_argument("--jobs", type=positive_int, default=1, help="runs at a time, each in its own process (default: 1)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads per run (default: 1)")
    p.add_argument("--device", default="cpu", help="training and evaluation device (default: %(default)s)")
    add_precision_argument(
        p,
        help="the backbones' precision in the evaluations: auto (bf16 on CUDA and on CPUs with native bf16, "
        "fp32 elsewhere), bf16 or fp32 (training follows train.precision) (default: %(default)s)",
    )
    p.add_argument(
        "--checkpoint-period",
        type=positive_int,
        default=100,
        help="iterations between checkpoints of each run, the resume granularity (default: %(default)s)",
    )
    p.add_argument("--no-init", action="store_true", help="skip the untrained reference row")
    p.add_argument(
        "--allow-unequal",
        action="store_true",
        help="let variants override compute keys (iterations, batch, crops, data): the comparison is "
        "then not at equal compute",
    )
    p.add_argument("--report-only", action="store_true", help="rebuild the table and plot from finished runs")
    add_quiet_argument(p, help="no progress: neither bars nor the line per finished run (the table is printed)")
    g = p.add_argument_group("evaluation settings")
    g.add_argument(
        "--size",
        type=positive_int,
        default=None,
        help="classification input size (default: the preset's global crop size)",
    )
    g.add_argument(
        "--seg-size", type=positive_int, default=128, help="overcluster / in-context input size (default: %(default)s)"
    )
    g.add_argument(
        "--eval-domain",
        default=None,
        metavar="DOMAIN",
        help="evaluate on this built-in toy domain's set (franca data toy --domain: shapes, textures) instead of "
        "the default built-in set; train on it with the sweep-wide override data.toy_options.domain=DOMAIN "
        "(default: the default set)",
    )
    g.add_argument(
        "--linear-epochs",
        type=positive_int,
        default=10,
        help="linear and PCA-slicing probe epochs (default: %(default)s)",
    )


def build_sweep(args: argparse.Namespace):
    from franca.ablate.evaluate import EvalSettings
    from franca.ablate.sweep import Sweep
    from franca.ablate.variants import DEFAULT_VARIANTS, parse_references, parse_variants
    from franca.train.config import load_config

    names = DEFAULT_VARIANTS if args.variants is None else args.variants
    variants = parse_variants(names, args.variant, allow_unequal=args.allow_unequal)
    base_cfg = load_config(args.config, args.overrides)  # fails early on a bad sweep-wide override
    for v in variants:  # …or a bad variant override
        load_config(args.config, [*args.overrides, *v.overrides])
    if args.eval_domain is not None:
        from franca.data.toy_domains import get_domain

        get_domain(args.eval_domain)  # an unknown name fails before any run, naming the domains
    settings = EvalSettings(
        size=args.size or base_cfg.crops.global_crops_size,
        seg_size=args.seg_size,
        linear_epochs=args.linear_epochs,
        precision=None if args.precision == "auto" else args.precision,
        domain=args.eval_domain,
    )
    return Sweep(
        out=args.out,
        variants=variants,
        seeds=list(args.seeds),
        preset=args.config,
        common=list(args.overrides),
        protocols=list(args.protocols),
        baseline=args.baseline,
        settings=settings,
        jobs=args.jobs,
        threads=args.threads,
        device=args.device,
        checkpoint_period=args.checkpoint_period,
        with_init=not args.no_init,
        references=parse_references(args.reference, variants),
    )


def run(args: argparse.Namespace) -> int:
    import os

    if not getattr(args, "verbose", False):
        os.environ.setdefault("TQDM_DISABLE", "1")  # the per-protocol bars; the sweep prints its own progress
    from franca.ablate.report import write_report
    from franca.ablate.sweep import run_sweep

    sweep = build_sweep(args)
    info = None
    if not args.report_only:
        info = run_sweep(sweep, echo=(lambda line: None) if args.quiet else print)
    command = "franca " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["ablate"] else None
    paths = write_report(sweep, command=command, sweep_info=info)
    print(paths["md"].read_text())
    if info is not None:
        print(f"this invocation: {info['wall_s']:.0f} s wall, {info['cpu_s']:.0f} s CPU (all processes)")
    print(f"wrote {paths['json']}, {paths['md']}, {paths['png']}")
    if info and info["failed"]:
        for k, e in info["failed"].items():
            print(f"run {k} failed: {e}", file=sys.stderr)
        return 1
    return 0
