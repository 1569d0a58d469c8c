"""Arguments and helpers shared by the sub-commands: which backbone, which data, where results go.

Every evaluation takes the same model arguments, so any backbone (a named Franca/DINOv2 size
with a weights file, this project's checkpoint, or `timm:NAME`) runs every protocol. The eval
commands share two more families, defined once here: the classification protocols' (k-NN, linear,
logreg, PCA slicing: ImageFolder data, feature cache, a text table) and the dense protocols'
(overclustering, in-context, linear segmentation: a data set name and its official layout).

The library packages (models, data, eval, train, viz, and through them timm, transformers, onnx) are imported
inside the functions that run a command, as in every command module, so that building the parser (`franca
--help`) does not load every protocol and model; torch itself is loaded (`franca.utils.device`, the precision
flag's rule).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import franca
from franca.commands._flags import (
    add_data_argument,
    add_quiet_argument,
    add_size_argument,
    check_out_path,
    natural_int,
    positive_int,
)
from franca.utils.device import PRECISIONS, resolve_device, resolve_precision
from franca.utils.errors import UserError
from franca.utils.grid import round_to_patch
from franca.utils.results import write_json

log = logging.getLogger(__name__)


def add_model_arguments(p: argparse.ArgumentParser, rasa: bool = True) -> None:
    g = p.add_argument_group("backbone")
    g.add_argument(
        "--model",
        default=None,
        help="a released model (franca_vitb14_in21k, dinov2_vits14_reg, …: downloaded once, then "
        "cached; gated DINOv3 names such as dinov3_vitb16 are found where they were put, never downloaded), "
        "a named size (vits14, vitb14, vitt8, dinov3_vits16, …) or timm:NAME; with --weights it is "
        "optional: the file defines the model",
    )
    g.add_argument(
        "--weights",
        default=None,
        help="weights file: official Franca/DINOv2/DINOv3 release, this project's checkpoint or exported .safetensors",
    )
    g.add_argument(
        "--random-init",
        action="store_true",
        help="run on randomly initialised weights of --model (default size vits14; seed 0, the same "
        "in every run); without this, a command with no weights stops",
    )
    if rasa:
        g.add_argument(
            "--rasa",
            default=None,
            const=True,
            nargs="?",
            help="use RASA-cleaned patch tokens: with a FILE, load that RASA head "
            "(official or ours); bare --rasa uses the map folded into --weights, or the head "
            "released with a released --model",
        )
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default: %(default)s)")
    add_precision_argument(g)
    g.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass (default: %(default)s)")
    g.add_argument(
        "--num-workers",
        type=natural_int,
        default=min(4, os.cpu_count() or 1),
        help="data-loading processes (default: %(default)s)",
    )


PRECISION_HELP = (
    "backbone precision: auto (bf16 autocast on CUDA and on CPUs with native bf16, e.g. AVX-512 BF16 or "
    "AMX; fp32 elsewhere), bf16, or fp32 (the reference numbers); results record the one used "
    "(default: %(default)s)"
)


TRAIN_PRECISION_HELP = (
    "sets train.precision: auto (bf16 autocast on CUDA; fp32 on CPU, where the tiny recipe's step gains "
    "nothing from bf16), bf16 (losses, Sinkhorn-Knopp and KoLeo stay fp32) or fp32 (default: the preset's, auto)"
)


def add_precision_argument(
    p: argparse.ArgumentParser | argparse._ArgumentGroup, help: str = PRECISION_HELP, default: str | None = "auto"
) -> None:
    """`--precision auto|bf16|fp32` (`franca.utils.device.resolve_precision`), the same flag in every command
    that runs a backbone (pretraining's sets `train.precision`, default None: the preset's)."""
    p.add_argument("--precision", choices=PRECISIONS, default=default, help=help)


def resolved_precision(args: argparse.Namespace) -> str | None:
    """The precision ("bf16" or "fp32") that --precision means on --device; None for a command without them."""
    if getattr(args, "precision", None) is None:
        return None
    return resolve_precision(args.precision, getattr(args, "device", "auto"))


NO_WEIGHTS = "pass --weights FILE, a released --model (franca --list-models) or --random-init"
"""The how-to of every command given no weights (one line: `franca eval knn: error: no weights: pass …`)."""


def weights_label(args: argparse.Namespace) -> str:
    """What names the weights in JSON, report rows and figure titles: the weights file name, the release
    name, or "random init". Raises (saying how to get weights, in one line) when the arguments name none."""
    from franca.models.api import weights_label as label
    from franca.models.releases import is_release

    model, weights = getattr(args, "model", None), getattr(args, "weights", None)
    if weights is None and not is_release(model) and not getattr(args, "random_init", False):
        raise UserError(
            f"--model {model} is not a released model; {NO_WEIGHTS}" if model else f"no weights: {NO_WEIGHTS}"
        )
    return label(
        getattr(args, "model", None),
        getattr(args, "weights", None),
        random_init=bool(getattr(args, "random_init", False)),
    )


def load_model_from_args(args: argparse.Namespace):
    """Build the backbone the model arguments describe, in eval mode, on args.device.

    No weights and no released name is an error unless --random-init is given (never silent)."""
    import torch

    from franca.models.api import is_layout_name, load_rasa_projection
    from franca.models.releases import is_release

    device = resolve_device(args.device)
    rasa = getattr(args, "rasa", None)
    weights_label(args)  # fails early, with the how-to, when nothing names weights
    # a DINOv3 name is both a (gated) release and a layout: with --random-init it builds the layout
    layout = bool(args.random_init) and is_layout_name(args.model)
    if args.weights is None and (layout or not is_release(args.model)):
        with torch.random.fork_rng(devices=[]):  # seed 0: the same random weights in every run
            torch.manual_seed(0)
            model = franca.build_backbone(args.model or "vits14")
        if isinstance(rasa, str):
            model.set_rasa_projection(load_rasa_projection(rasa, model.embed_dim))
        log.warning("random init: %s with randomly initialised weights (--random-init)", args.model or "vits14")
        return model.to(device).eval(), device
    if args.random_init:
        raise ValueError("--random-init contradicts --weights / a released --model: give one or the other")
    rasa_arg = rasa if isinstance(rasa, str) else (True if rasa is True and args.weights is None else None)
    model = franca.load_backbone(args.model, weights=args.weights, rasa=rasa_arg)
    return model.to(device).eval(), device


def eval_args(args: argparse.Namespace, device: Any, **overrides: Any):
    """The shared evaluation arguments (franca.eval.common.EvalArgs) from the parsed command line:
    --data, --size, --seeds, --batch-size, --precision, --num-workers and the resolved device; `overrides`
    replace any of them (e.g. a command whose size flag has another name)."""
    from franca.eval.common import EvalArgs

    values = {
        "data": getattr(args, "data", None),
        "size": getattr(args, "size", None),
        "seeds": getattr(args, "seeds", (0,)),
        "batch_size": getattr(args, "batch_size", None),
        "device": device,
        "precision": getattr(args, "precision", "auto"),
        "num_workers": getattr(args, "num_workers", 0),
        "progress": not getattr(args, "quiet", False),
    }
    values.update(overrides)
    return EvalArgs(**values)


def model_identity(args: argparse.Namespace) -> dict[str, Any]:
    """What identifies the backbone in a result JSON: model, weights (file, release name or "random init"),
    the weights label, and the file's size and mtime."""
    ident: dict[str, Any] = {
        "model": args.model,
        "weights": args.weights,
        "rasa": getattr(args, "rasa", None),
        "weights_label": weights_label(args),
    }
    if args.weights and Path(args.weights).exists():
        st = Path(args.weights).stat()
        ident.update(weights_bytes=st.st_size, weights_mtime=int(st.st_mtime))
    return ident


def add_output_arguments(p: argparse.ArgumentParser, default_name: str) -> None:
    """`--out` (result JSON), `--seeds` (`--seed N` is accepted as one seed) and `--quiet`."""
    p.add_argument(
        "--out", default=None, metavar="JSON", help=f"result JSON path (default: runs/eval/{default_name}-<time>.json)"
    )
    p.add_argument(
        "--seeds",
        type=natural_int,
        nargs="+",
        default=[0],
        help="seeds to average over; the JSON reports mean and std (default: %(default)s)",
    )
    p.add_argument("--seed", dest="seeds", type=natural_int, nargs=1, help=argparse.SUPPRESS)
    add_quiet_argument(p)


def result_path(args: argparse.Namespace, name: str) -> Path:
    """--out, or runs/eval/<name>-<time>.json; checked (suffix, writable folder) before any work."""
    out = getattr(args, "out", None)
    if out:
        return check_out_path(out, (".json",))
    return Path("runs/eval") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"


def write_result(args: argparse.Namespace, name: str, result: dict[str, Any]) -> Path:
    """Write one JSON per run (atomically; floats to 6 significant digits; library versions added)
    and return its path; a result without `precision` gets the one --precision resolved to. The caller
    prints the path once."""
    precision = resolved_precision(args)
    if precision is not None:
        result.setdefault("precision", precision)
    out = write_json(result_path(args, name), result)
    log.debug("wrote %s", out)
    return out


# ---------------------------------------------------------------- classification commands
def add_classification_arguments(p: argparse.ArgumentParser, name: str, group: str) -> argparse._ArgumentGroup:
    """The flags of the classification commands (knn, linear, logreg, pca-slice): the backbone (no RASA),
    the data group (--data, --size, --cache-dir, --no-cache) and the output flags (--out, --seeds,
    --quiet; results go to runs/eval/`name`-<time>.json). Returns the protocol's own group, titled `group`."""
    add_model_arguments(p, rasa=False)
    g = p.add_argument_group("data")
    add_data_argument(g, "ImageFolder/ImageNet-layout root with train/ and val/ (default: the built-in toy set)")
    add_size_argument(
        g,
        "input side after the centre crop, rounded down to a multiple of the patch size (default: %(default)s)",
        default=224,
    )
    g.add_argument(
        "--cache-dir",
        default=None,
        help="feature cache folder (default: $FRANCA_CACHE_DIR/features or ~/.cache/franca/features)",
    )
    g.add_argument("--no-cache", action="store_true", help="do not read or write cached features")
    own = p.add_argument_group(group)
    add_output_arguments(p, name)
    return own


def start_classification(args: argparse.Namespace, name: str, evaluate: Any) -> tuple[Any, dict[str, Any], float]:
    """Begin a classification command: note the start time, check --out, load the backbone and apply
    the size rule to --size. Returns (model, the keyword arguments of `evaluate` the shared flags set
    (`eval_args(...).kwargs_for(evaluate)` plus the feature cache folder and key), start time)."""

    started = time.time()
    result_path(args, name)
    model, device = load_model_from_args(args)
    args.size = round_to_patch(args.size, model.patch_size, what="--size", announce=True)
    kwargs = eval_args(args, device).kwargs_for(evaluate)
    kwargs.update(cache_dir=_cache_dir(args), model_key=json.dumps(model_identity(args), sort_keys=True, default=str))
    return model, kwargs, started


def _cache_dir(args: argparse.Namespace) -> str | None:
    if args.no_cache:
        return None
    from franca.eval.features import default_cache_dir

    return str(args.cache_dir or default_cache_dir())


def format_table(rows: list[list[Any]], header: list[str]) -> str:
    """A plain aligned text table (numbers with 2 decimals)."""
    cells = [[f"{c:.2f}" if isinstance(c, float) else str(c) for c in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def finish_classification(args: argparse.Namespace, name: str, result: dict[str, Any], started: float) -> None:
    """Add model/data identity and time to a classification result, write the JSON, print one line."""
    result["model"] = model_identity(args)
    result["data"] = {**result.get("data", {}), "root": args.data or "toy", "size": args.size}
    path = _stamp_and_write(args, name, result, started)
    std = result.get("metric_std", 0.0)
    print(f"{name}: {result['metric_name']} = {result['metric']:.2f} ± {std:.2f}  → {path}")


# ---------------------------------------------------------------- dense (segmentation) commands
TOY_SIZE = 128
"""Input side on the built-in toy set: its 64-px scenes upsampled 2x, 16 patches a side for the tiny
patch-8 model (the keypoint protocol's rule). At 64 px (8 patches) a 3-5-patch object leaves too few
object tokens for overclustering at K=100 to separate a pretrained tiny model from its initialisation."""


_LAYOUTS = {
    "voc": "VOCdevkit/… or VOCSegmentation/…",
    "ade20k": "ADEChallengeData2016/…",
    "coco-things": "coco/images + annotations/…",
}


def add_segmentation_arguments(
    p: argparse.ArgumentParser,
    name: str,
    group: str,
    *,
    datasets: list[str],
    default_size: int,
    size_help: str,
    seeds: list[int],
) -> argparse._ArgumentGroup:
    """The flags of the dense commands (overcluster, incontext, linseg): the backbone (with --rasa), the
    data group (--dataset among `datasets`, --data, --size) and the output flags, --seeds defaulting to
    `seeds` (the protocol's count). Returns the protocol's own group, titled `group`."""
    add_model_arguments(p)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=datasets, default=datasets[0], help="data set (default: %(default)s)")
    layouts = ", ".join(_LAYOUTS[d] for d in datasets)  # only the layouts this command reads
    add_data_argument(
        g, f"data set root in its official layout ({layouts}) (default: the built-in toy set, VOC layout)"
    )
    add_size_argument(
        g,
        f"{size_help}; rounded down to a multiple of the patch size (default: {default_size}, "
        f"or {TOY_SIZE} on the built-in toy set; use less for tiny models)",
    )
    own = p.add_argument_group(group)
    add_output_arguments(p, name)
    p.set_defaults(seeds=list(seeds))
    return own


def segmentation_splits(args: argparse.Namespace, default_train: str, reduce_zero_label: bool) -> tuple[Any, Any]:
    """The (train, val) readers of a dense command: `--train-split` (default `default_train`) and
    `--val-split` of `--dataset` under `--data`. A missing default split names the flag that picks another."""
    from franca.eval.dense import build_segmentation

    split = args.train_split or default_train
    # val first: an error of the whole layout (wrong --data or --dataset) is not blamed on the train split
    val = build_segmentation(args.dataset, args.data, args.val_split, reduce_zero_label=reduce_zero_label)
    try:
        train = build_segmentation(args.dataset, args.data, split, reduce_zero_label=reduce_zero_label)
    except FileNotFoundError as exc:
        if args.train_split is not None:
            raise
        raise FileNotFoundError(f"{exc} (--train-split defaults to {split}; e.g. --train-split train)") from exc
    return train, val


def resolve_size(args: argparse.Namespace, default_size: int, patch: int | None = None) -> int:
    """--size (or the protocol's default; TOY_SIZE on the toy set), rounded down to a multiple of `patch`."""
    size = int(args.size) if args.size is not None else (TOY_SIZE if args.data is None else default_size)
    if patch is None:
        return size

    return round_to_patch(size, patch, what="--size", announce=True)


def finish_segmentation(args: argparse.Namespace, name: str, result: dict[str, Any], started: float) -> None:
    """Add model/data identity and time to a dense protocol's result, write the JSON, print one line."""
    result["model"] = model_identity(args)
    result["data"] = {"dataset": args.dataset, "root": args.data or "toy"}
    path = _stamp_and_write(args, name, result, started)
    std = result.get("miou", {}).get("std", 0.0) if isinstance(result.get("miou"), dict) else 0.0
    print(f"{name}: {result['metric_name']} = {100 * result['metric']:.2f} ± {100 * std:.2f}  → {path}")


def _stamp_and_write(args: argparse.Namespace, name: str, result: dict[str, Any], started: float) -> Path:
    """Add the run time and the clock time to `result`, write it (`write_result`) and return the path."""
    result["seconds"] = round(time.time() - started, 3)
    result["time"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return write_result(args, name, result)


# ---------------------------------------------------------------- figure commands
def add_image_arguments(
    p: argparse.ArgumentParser, name: str, n_default: int, default_size: str, panels: bool = True
) -> None:
    """--data/--n-images/--size/[--panel-size]/--out/--quiet, shared by the viz commands."""
    add_data_argument(
        p, "image files or folders, searched recursively (default: the built-in toy validation images)", nargs="+"
    )
    p.add_argument(
        "--n-images", type=positive_int, default=n_default, help="use the first N images (default: %(default)s)"
    )
    add_size_argument(p, f"square input side, rounded down to a multiple of the patch size (default: {default_size})")
    if panels:
        p.add_argument(
            "--panel-size",
            type=positive_int,
            default=None,
            metavar="PX",
            help="side of each drawn panel (default: the input size, shrunk so that the figure stays within 2000 px)",
        )
    p.add_argument("--out", default=f"runs/viz/{name}.png", help="PNG path (default: %(default)s)")
    add_quiet_argument(p)


def prepare_images(args: argparse.Namespace, patch: int) -> tuple[list, int | None]:
    """The image paths and --size after the size rule (None: the figure's default)."""
    from franca.viz.common import figure_images

    images = figure_images(args.data, args.n_images)
    return images, (round_to_patch(args.size, patch, what="--size", announce=True) if args.size is not None else None)
