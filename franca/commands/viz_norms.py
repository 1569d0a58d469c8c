"""Layer-wise maximum token norm (paper Fig. 10) of one or several backbones, as a PNG plot + JSON.

For each block: the per-image maximum L2 norm over the CLS and patch tokens of the block output
(before the final norm; registers excluded), averaged over the images. Backbones are given as
`--model A [--weights WA] --model B …` (a --weights applies to the --model before it), as `--weights W`
alone (the file defines the model, as in every other command) or as repeated `--backbone NAME[:WEIGHTS]`.
Legend labels name the model and the weights; weights files of the same name (every run folder holds a
`checkpoint.pth`) are told apart by their parent folders, and two backbones never share a label.
Without --data, the built-in toy validation set is used.
"""

from __future__ import annotations

import argparse

import franca
from franca.commands._common import add_image_arguments, add_precision_argument
from franca.commands._flags import check_out_path, title_label
from franca.utils.device import resolve_device
from franca.utils.grid import round_to_patch
from franca.utils.names import distinct_path_names

HELP = "PNG + JSON of the layer-wise max token norm of one or several backbones"


class _ModelAction(argparse.Action):
    """--model appends a backbone; --weights sets the weights of the last one, or appends a backbone whose
    model the file defines when there is none without weights before it."""

    def __call__(self, parser, namespace, values, option_string=None):
        specs = getattr(namespace, "backbones", None) or []
        if self.dest == "model":
            specs.append({"model": values, "weights": None})
        elif specs and specs[-1]["weights"] is None:
            specs[-1]["weights"] = values
        else:
            specs.append({"model": None, "weights": values})
        namespace.backbones = specs


def parse_backbone(spec: str) -> dict[str, str | None]:
    """NAME[:WEIGHTS] → {"model", "weights"}; `timm:NAME[:WEIGHTS]` keeps its prefix."""
    prefix = ""
    if spec.startswith("timm:"):
        prefix, spec = "timm:", spec[5:]
    name, _, weights = spec.partition(":")
    if not name:
        raise ValueError(f"backbone spec {spec!r} has no model name")
    return {"model": prefix + name, "weights": weights or None}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        action=_ModelAction,
        dest="model",
        help="backbone name (repeatable; default: vitt8 if no --model or --backbone is given)",
    )
    p.add_argument(
        "--weights",
        action=_ModelAction,
        dest="weights",
        help="weights file of the preceding --model; without one (or after a --model that has its weights) "
        "it adds a backbone whose model the file defines (repeatable; a released --model name needs none)",
    )
    p.add_argument(
        "--backbone",
        action="append",
        default=[],
        help="NAME[:WEIGHTS], another way to add a backbone (repeatable; default: none)",
    )
    p.add_argument(
        "--label",
        action="append",
        default=[],
        help="legend label of one backbone: give it once per backbone, in the order the backbones are given "
        "(--label A --label B; all or none; default: the model and the weights, files of the same name told "
        "apart by their parent folders, e.g. 'vitt8, weights runA/checkpoint.pth')",
    )
    p.add_argument(
        "--random-init",
        action="store_true",
        help="allow backbones with no weights (random initialisation, seed 0); otherwise they are an error",
    )
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default: %(default)s)")
    add_precision_argument(p)
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: %(default)s)")
    add_image_arguments(p, "norms", 100, "224; 8 patches for the tiny vitt sizes", panels=False)
    p.set_defaults(backbones=None)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from franca.data.images import open_image
    from franca.models.api import weights_label
    from franca.viz.common import figure_images
    from franca.viz.norms import layerwise_max_norm, plot_norms, write_norms_json

    check_out_path(args.out, (".png",))
    specs = (args.backbones or []) + [parse_backbone(b) for b in args.backbone]
    if not specs:
        specs = [{"model": "vitt8", "weights": None}]
    if args.label and len(args.label) != len(specs):
        raise ValueError(
            f"{len(args.label)} --label given for {len(specs)} backbones: give one --label per backbone, in order"
        )
    repeated = sorted({x for x in args.label if args.label.count(x) > 1})
    if repeated:
        raise ValueError(f"--label {repeated[0]!r} is given twice: each backbone needs its own legend label")
    for s in specs:  # every backbone has weights (or --random-init) before any image is read
        s["weights_label"] = weights_label(s["model"], s["weights"], random_init=args.random_init)
    files = [s["weights"] for s in specs if s["weights"]]
    file_names = dict(zip(map(str, files), distinct_path_names(files)))  # runA/checkpoint.pth, runB/checkpoint.pth
    device = resolve_device(args.device)
    images = [open_image(p) for p in figure_images(args.data, args.n_images)]
    curves: dict[str, dict] = {}
    for i, s in enumerate(specs):
        if s["weights_label"] == "random init":
            import torch

            with torch.random.fork_rng(devices=[]):  # seed 0: the same random weights in every run
                torch.manual_seed(0)
                model = franca.build_backbone(s["model"]).eval()
        else:
            model = franca.load_backbone(s["model"], weights=s["weights"]).eval()
        wname = file_names.get(str(s["weights"]))
        label = (
            args.label[i]
            if args.label
            else title_label(s["model"], s["weights"], args.random_init, loaded=model, weights_name=wname)
        )
        label = _unique(label, curves)
        size = (
            round_to_patch(args.size, model.patch_size, what="--size", announce=True) if args.size is not None else None
        )
        curves[label] = {
            **layerwise_max_norm(
                model,
                images,
                image_size=size,
                batch_size=args.batch_size,
                device=device,
                progress=not getattr(args, "quiet", False),
                precision=args.precision,
            ),
            **s,
            "model": s["model"] or getattr(model, "size_name", None),
        }
        if wname:  # the JSON names the weights file (with the folders that tell it apart), not where it lay
            curves[label]["weights"] = wname
        del model
    png = plot_norms(curves, args.out)
    js = write_norms_json(curves, Path(args.out).with_suffix(".json"))
    for label, c in curves.items():
        print(f"{label}: " + " ".join(f"{v:.1f}" for v in c["mean_max_norm"]))
    print(f"wrote {png}\nwrote {js}")
    return 0


def _unique(label: str, taken: dict[str, dict]) -> str:
    """The label, numbered when a backbone given twice already holds it (a curve is never overwritten)."""
    n, out = 1, label
    while out in taken:
        n += 1
        out = f"{label} ({n})"
    return out
