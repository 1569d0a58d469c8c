"""RASA post-training: remove absolute position from a frozen backbone's patch features.

For each of --iterations stages (a number, or `auto`), a linear (row, column) position predictor
with sigmoid outputs is trained on the already-cleaned final patch tokens (AdamW, weight decay 0,
the reference augmentations) until its loss converges (or for --epochs with the reference's
cosine schedule), and the 2-D subspace it uses is removed. The stages are folded into one (D, D)
map stored in the backbone (buffer `rasa_proj`), so that `franca.load_backbone(weights=OUT)` gives a
model whose `forward_features(x, use_rasa_head=True)["patch_token_rasa"]` are the cleaned tokens.
Also written: OUT's RASA file (`<out>.rasa.safetensors`, usable as
`franca.load_backbone(weights=ORIGINAL, rasa=FILE)`) and a JSON report with, before and after every
stage, the position R² of two probes fitted on one half of the held-out images and scored on the
other: a closed-form ridge probe and the paper's sigmoid predictor trained to convergence.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import franca
from franca.commands._common import add_model_arguments, load_model_from_args, model_identity, write_result
from franca.commands._flags import (
    add_data_argument,
    add_quiet_argument,
    add_size_argument,
    check_out_path,
    fraction,
    natural_int,
    nonnegative_float,
    positive_float,
    positive_int,
)
from franca.utils.device import resolve_device, resolve_precision
from franca.utils.errors import UserError
from franca.utils.grid import round_to_patch
from franca.utils.seed import seed_all

HELP = "RASA post-training: fit position removal and write a backbone with it folded in"

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, rasa=False)
    p.set_defaults(batch_size=128)

    g = p.add_argument_group("RASA")
    add_data_argument(g, "folder of training images, searched recursively (default: the built-in toy set's images)")
    g.add_argument(
        "--iterations",
        type=_iterations,
        default=8,
        help="removal stages T, or `auto`: stop when the held-out R² of both probes (trained sigmoid "
        "predictor, ridge) is below --auto-threshold or stops falling, at most --max-iterations (default: %(default)s)",
    )
    g.add_argument(
        "--max-iterations",
        type=positive_int,
        default=16,
        help="most stages with --iterations auto (default: %(default)s)",
    )
    g.add_argument(
        "--auto-threshold",
        type=nonnegative_float,
        default=0.05,
        help="--iterations auto stops once the held-out R² is below this (default: %(default)s)",
    )
    g.add_argument(
        "--auto-min-drop",
        type=nonnegative_float,
        default=0.005,
        help="--iterations auto stops when a stage lowers the R² by less than this (default: %(default)s)",
    )
    g.add_argument(
        "--epochs",
        type=positive_int,
        default=None,
        help="train each stage for this many epochs with the reference's cosine schedule "
        "(default: train until the loss converges, see --max-steps)",
    )
    g.add_argument(
        "--max-steps",
        type=positive_int,
        default=2000,
        help="most optimiser steps per stage when training to convergence (default: %(default)s)",
    )
    g.add_argument(
        "--tol",
        type=nonnegative_float,
        default=1e-3,
        help="converged when the mean loss of the last --window steps is less than this (relative) "
        "below the window before (default: %(default)s)",
    )
    g.add_argument(
        "--window", type=positive_int, default=50, help="steps per convergence window (default: %(default)s)"
    )
    g.add_argument(
        "--cache-views",
        type=natural_int,
        default=0,
        help="run the backbone on this many augmented passes over the training images once and "
        "train every stage on those cached tokens (default: 0, a fresh pass each epoch)",
    )
    g.add_argument(
        "--lr",
        type=positive_float,
        default=2e-3,
        help="AdamW learning rate; the paper's best (default: %(default)s; the reference configs use 2e-4)",
    )
    g.add_argument(
        "--weight-decay", type=nonnegative_float, default=0.0, help="AdamW weight decay (default: %(default)s)"
    )
    add_size_argument(
        g,
        "square training/probe image side, rounded down to a multiple of the patch size "
        "(default: the backbone's own image size; the reference uses 518)",
    )
    g.add_argument(
        "--no-augment",
        action="store_true",
        help="fit on cached features of resized images without augmentation (fast on CPU, "
        "but content and position are then correlated)",
    )
    g.add_argument(
        "--no-std-quirk",
        action="store_true",
        help="normalise training images with std 0.225 for blue instead of the reference's 0.255",
    )
    g.add_argument(
        "--reference-removal",
        action="store_true",
        help="remove each stage's raw predictor directions exactly as the official head does "
        "(default: restrict them to the span that earlier stages left, which keeps the "
        "folded map an orthogonal projection)",
    )
    g.add_argument(
        "--heldout-fraction",
        type=fraction,
        default=0.1,
        help="share of images held out for the R² probes (default: %(default)s)",
    )
    g.add_argument(
        "--max-heldout", type=positive_int, default=256, help="at most this many held-out images (default: %(default)s)"
    )
    g.add_argument(
        "--probe-fit-fraction",
        type=fraction,
        default=0.5,
        help="share of the held-out images that fit the probes; the rest score them (default: %(default)s)",
    )
    g.add_argument(
        "--probe-max-steps",
        type=positive_int,
        default=2000,
        help="most full-batch steps of the sigmoid probe, trained to convergence (default: %(default)s)",
    )
    g.add_argument(
        "--no-probe-dihedral",
        action="store_true",
        help="probe the held-out images as they are (default: each turned by a fixed random flip/"
        "90° rotation, so that image content does not correlate with grid position)",
    )
    g.add_argument("--max-images", type=positive_int, default=None, help="use at most this many images in total")
    g.add_argument("--seed", type=natural_int, default=400, help="random seed (default: %(default)s, the reference's)")
    g.add_argument(
        "--out",
        default=None,
        help="backbone file to write: .safetensors (franca.export_backbone, timm-loadable) or "
        ".pt/.pth (state dict); default: runs/rasa/<model>-rasa.safetensors",
    )
    g.add_argument("--report", default=None, help="JSON report path (default: next to --out, .json)")
    add_quiet_argument(g)


def _iterations(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--iterations takes a number or 'auto', got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"--iterations must be ≥ 1, got {n}")
    return n


def run(args: argparse.Namespace) -> int:
    import torch

    from franca.data.source import open_images
    from franca.models.rasa_fold import save_rasa_file
    from franca.rasa import data as rdata
    from franca.rasa.fit import RasaConfig
    from franca.rasa.pipeline import fit_rasa_on_images
    from franca.rasa.probe import ProbeSettings

    auto = args.iterations == "auto"
    iterations = args.max_iterations if auto else args.iterations
    for flag, value in (
        ("--max-iterations", iterations),
        ("--epochs", args.epochs or 1),
        ("--max-steps", args.max_steps),
        ("--window", args.window),
        ("--probe-max-steps", args.probe_max_steps),
    ):
        if value < 1:
            raise ValueError(f"{flag} must be ≥ 1, got {value}")
    if args.cache_views < 0:
        raise ValueError(f"--cache-views must be ≥ 0, got {args.cache_views}")
    check_out_path(args.out, (".safetensors", ".pt", ".pth"))
    check_out_path(args.report, (".json",), flag="--report")
    seed_all(args.seed)
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    model = load_model_from_args(args)[0].to(device).eval()  # no weights: an error unless --random-init
    model.requires_grad_(False)
    size = round_to_patch(
        int(args.size or getattr(model, "img_size", 224)), int(model.patch_size), what="--size", announce=True
    )
    grid = (size // int(model.patch_size),) * 2

    root = Path(args.data) if args.data else rdata.default_image_root()
    files = open_images(root, kind="folder").files
    if args.max_images:
        files = files[: args.max_images]
    train_files, held_files = rdata.split_files(files, args.heldout_fraction, args.max_heldout, args.seed)
    _check_probe_size(args, len(files), len(held_files), grid[0] * grid[1], int(model.embed_dim))
    batch = min(args.batch_size, len(train_files))
    if batch < args.batch_size:
        log.warning("only %d training images: batch size %d instead of %d", len(train_files), batch, args.batch_size)
    log.info(
        "RASA on %s: %d training and %d held-out images at %d px, %s stages",
        root,
        len(train_files),
        len(held_files),
        size,
        f"auto (at most {iterations})" if auto else iterations,
    )

    probe = ProbeSettings(fit_fraction=args.probe_fit_fraction, max_steps=args.probe_max_steps, seed=args.seed)
    cfg = RasaConfig(
        iterations=iterations,
        epochs=args.epochs,
        max_steps=args.max_steps,
        tol=args.tol,
        window=args.window,
        lr=args.lr,
        weight_decay=args.weight_decay,
        batch_size=batch,
        seed=args.seed,
        project_previous=not args.reference_removal,
        auto=auto,
        auto_threshold=args.auto_threshold,
        auto_min_drop=args.auto_min_drop,
        probe=probe,
        progress=not args.quiet,
    )
    result = fit_rasa_on_images(
        model,
        train_files,
        held_files,
        cfg,
        size=size,
        device=device,
        precision=precision,
        augment=not args.no_augment,
        std_quirk=not args.no_std_quirk,
        cache_views=args.cache_views,
        heldout_dihedral=not args.no_probe_dihedral,
        num_workers=args.num_workers,
    )

    name = (args.model or Path(args.weights).stem).replace(":", "_")
    out = Path(args.out) if args.out else Path("runs/rasa") / f"{name}-rasa.safetensors"
    model.set_rasa_projection(result.projection)
    if out.suffix == ".safetensors":
        franca.export_backbone(model.cpu(), out)
    else:  # .pt/.pth: the backbone's state dict, rasa_proj included
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.cpu().state_dict(), out)
    rasa_file = save_rasa_file(
        out.with_name(out.stem + ".rasa.safetensors"),
        result.directions,
        metadata={"model": str(args.model), "iterations": str(len(result.directions))},
    )
    failed = bool(result.probe_failures)
    report = {
        "protocol": "rasa",
        "metric_name": "sigmoid_r2_final",
        "metric": None if failed else result.r2("sigmoid", "final"),
        "status": "probe_failure" if failed else "ok",
        "backbone": model_identity(args),
        "output": str(out),
        "rasa_file": str(rasa_file),
        "data": str(root),
        "n_train_images": len(train_files),
        "n_heldout_images": len(held_files),
        "size": size,
        "precision": precision,
        "grid": list(grid),
        "augment": not args.no_augment,
        "cache_views": args.cache_views,
        "heldout_dihedral": not args.no_probe_dihedral,
        "config": {
            "iterations": args.iterations,
            "max_iterations": iterations,
            **{
                k: getattr(cfg, k)
                for k in (
                    "epochs",
                    "max_steps",
                    "tol",
                    "window",
                    "lr",
                    "weight_decay",
                    "batch_size",
                    "seed",
                    "project_previous",
                    "auto_threshold",
                    "auto_min_drop",
                )
            },
            "probe": vars(probe),
        },
        **result.report(),
    }
    report_path = Path(args.report) if args.report else out.with_suffix(".json")
    write_result(argparse.Namespace(out=str(report_path)), "rasa", report)
    print(format_table(result))
    print(f"backbone with RASA folded in: {out}\nRASA file: {rasa_file}\nreport: {report_path}")
    return 0


def _check_probe_size(args: argparse.Namespace, n_images: int, n_heldout: int, tokens: int, dim: int) -> None:
    """Refuse before any stage when the held-out images are too few for the position probes (their R² would
    be a probe failure, known only at the end), saying which flag or how many images would do."""
    from franca.rasa.probe import heldout_images_needed, probe_shortfall

    short = probe_shortfall(n_heldout, tokens, dim, args.probe_fit_fraction)
    if not short:
        return
    need = heldout_images_needed(tokens, dim, args.probe_fit_fraction)
    how = []
    if need < n_images:
        fraction = math.ceil(100 * (need - 0.5) / n_images) / 100
        while round(fraction * n_images) < need:
            fraction += 0.01
        how.append(f"--heldout-fraction {fraction:.2f} ({n_images - need} of the {n_images} images left to train on)")
        if need > args.max_heldout:
            how[-1] += f" with --max-heldout {need}"
    how += ["a larger --size (more tokens per image)", f"more than {n_images} images"]
    raise UserError(
        f"{short} (--heldout-fraction {args.heldout_fraction:g} of {n_images} images"
        f"{f', at most --max-heldout {args.max_heldout}' if args.max_heldout < need else ''}); "
        f"nothing was trained. Use {', or '.join(how)}"
    )


def format_table(result) -> str:
    """The per-stage table: steps, then the held-out R² of both probes before/after each stage."""
    lines = []
    if result.probe_sizes:
        s = result.probe_sizes
        lines.append(
            f"probes fit on {s['fit_images']} held-out images ({s['fit_tokens']} tokens, D={s['dim']}), "
            f"scored on {s['score_images']} others ({s['score_tokens']} tokens)"
        )
    for msg in result.probe_failures:
        lines.append(f"PROBE FAILURE: {msg}")
    lines.append(
        f"{'stage':>5} {'steps':>6} {'conv':>5} {'ridge before':>12} {'ridge after':>11} "
        f"{'sigmoid before':>14} {'sigmoid after':>13}"
    )
    for h in result.history:
        b, a = h.get("before"), h.get("after")

        def cell(m, p, n):
            return f"{m[p]['r2']:>{n}.4f}" if m else f"{'-':>{n}}"

        lines.append(
            f"{h['iteration']:>5} {h['steps']:>6} {str(h['converged']):>5} {cell(b, 'ridge', 12)} "
            f"{cell(a, 'ridge', 11)} {cell(b, 'sigmoid', 14)} {cell(a, 'sigmoid', 13)}"
        )
    lines.append(f"stopped: {result.stop_reason}")
    return "\n".join(lines)
