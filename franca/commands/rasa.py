"""RASA post-training: remove absolute position from a frozen backbone's patch features.

For each of --iterations stages, a linear (row, column) position predictor with sigmoid outputs
is trained for --epochs on the already-cleaned final patch tokens (AdamW, weight decay 0, cosine
decay, the reference augmentations), and the 2-D subspace it uses is removed. The stages are
folded into one (D, D) map stored in the backbone (buffer `rasa_proj`), so

    model = franca.load_backbone(NAME, weights=OUT)
    model.forward_features(x, use_rasa_head=True)["patch_token_rasa"]

gives the cleaned tokens. Also written: OUT's RASA file (`<out>.rasa.safetensors`, usable as
`load_backbone(NAME, weights=ORIGINAL, rasa=FILE)`) and a JSON report with the position R² of a
fresh linear probe on held-out images before and after every stage.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from franca.commands._common import add_model_arguments

HELP = "RASA post-training: fit position removal and write a backbone with it folded in"

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, rasa=False)
    p.set_defaults(batch_size=128)
    from franca.commands._flags import add_data_argument, add_quiet_argument, add_size_argument

    g = p.add_argument_group("RASA")
    add_data_argument(g, "folder of training images, searched recursively (default: the built-in toy set's images)")
    g.add_argument("--iterations", type=int, default=8, help="removal stages T (default: %(default)s)")
    g.add_argument("--epochs", type=int, default=5, help="epochs per stage (default: %(default)s)")
    g.add_argument("--lr", type=float, default=2e-3, help="AdamW learning rate; the paper's best (default: %(default)s; "
                   "the reference configs use 2e-4)")
    g.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default: %(default)s)")
    add_size_argument(g, "square training/probe image side, rounded down to a multiple of the patch size "
                         "(default: the backbone's own image size; the reference uses 518)")
    g.add_argument("--no-augment", action="store_true",
                   help="fit on cached features of resized images without augmentation (fast on CPU, "
                        "but content and position are then correlated)")
    g.add_argument("--no-std-quirk", action="store_true",
                   help="normalise training images with std 0.225 for blue instead of the reference's 0.255")
    g.add_argument("--reference-removal", action="store_true",
                   help="remove each stage's raw predictor directions exactly as the official head does "
                        "(default: restrict them to the span that earlier stages left, which keeps the "
                        "folded map an orthogonal projection)")
    g.add_argument("--heldout-fraction", type=float, default=0.1,
                   help="share of images held out for the R² probe (default: %(default)s)")
    g.add_argument("--max-heldout", type=int, default=64, help="at most this many held-out images (default: %(default)s)")
    g.add_argument("--max-images", type=int, default=None, help="use at most this many images in total")
    g.add_argument("--seed", type=int, default=400, help="random seed (default: %(default)s, the reference's)")
    g.add_argument("--out", default=None,
                   help="backbone file to write: .safetensors (franca.export_backbone, timm-loadable) or "
                        ".pt/.pth (state dict); default: runs/rasa/<model>-rasa.safetensors")
    g.add_argument("--report", default=None, help="JSON report path (default: next to --out, .json)")
    add_quiet_argument(g)


def run(args: argparse.Namespace) -> int:
    import torch

    import franca
    from franca.commands._common import load_model_from_args, model_identity, write_result
    from franca.commands._flags import check_out_path, fit_size
    from franca.models.rasa_fold import save_rasa_file
    from franca.rasa import data as rdata
    from franca.rasa.fit import BackboneFeatures, CachedFeatures, RasaConfig, extract_all, fit_rasa
    from franca.utils.device import resolve_device
    from franca.utils.seed import seed_all

    if args.iterations < 1 or args.epochs < 1:
        raise ValueError(f"--iterations and --epochs must be ≥ 1, got {args.iterations} and {args.epochs}")
    check_out_path(args.out, (".safetensors", ".pt", ".pth"))
    check_out_path(args.report, (".json",), flag="--report")
    seed_all(args.seed)
    device = resolve_device(args.device)
    model = load_model_from_args(args)[0].to(device).eval()  # no weights: an error unless --random-init
    model.requires_grad_(False)
    size = fit_size(int(args.size or getattr(model, "img_size", 224)), int(model.patch_size))

    root = Path(args.data) if args.data else rdata.default_image_root()
    files = rdata.list_images(root)
    if args.max_images:
        files = files[: args.max_images]
    train_files, held_files = rdata.split_files(files, args.heldout_fraction, args.max_heldout, args.seed)
    batch = min(args.batch_size, len(train_files))
    if batch < args.batch_size:
        log.warning("only %d training images: batch size %d instead of %d", len(train_files), batch, args.batch_size)
    log.info("RASA on %s: %d training and %d held-out images at %d px, %d stages × %d epochs",
             root, len(train_files), len(held_files), size, args.iterations, args.epochs)

    def loader(files_, transform, shuffle: bool, drop_last: bool):
        g = torch.Generator().manual_seed(args.seed)
        return torch.utils.data.DataLoader(rdata.ImageFiles(files_, transform), batch_size=batch, shuffle=shuffle,
                                           drop_last=drop_last, num_workers=args.num_workers, generator=g,
                                           pin_memory=device.type == "cuda", persistent_workers=False)

    eval_tf = rdata.rasa_eval_transform(size)
    heldout = extract_all(model, loader(held_files, eval_tf, False, False), device)
    if args.no_augment:
        tokens = extract_all(model, loader(train_files, eval_tf, False, False), device)
        source = CachedFeatures(tokens, (size // model.patch_size,) * 2, batch, seed=args.seed)
    else:
        train_tf = rdata.rasa_train_transform(size, std_quirk=not args.no_std_quirk)
        source = BackboneFeatures(model, loader(train_files, train_tf, True, True), device, size)

    cfg = RasaConfig(iterations=args.iterations, epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay,
                     batch_size=batch, seed=args.seed, project_previous=not args.reference_removal,
                     progress=not args.quiet)
    result = fit_rasa(source, cfg, device=device, heldout=heldout)

    out = Path(args.out) if args.out else Path("runs/rasa") / f"{args.model.replace(':', '_')}-rasa.safetensors"
    model.set_rasa_projection(result.projection)
    if out.suffix == ".safetensors":
        franca.export_backbone(model.cpu(), out)
    else:  # .pt/.pth: the backbone's state dict, rasa_proj included
        out.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.cpu().state_dict(), out)
    rasa_file = save_rasa_file(out.with_name(out.stem + ".rasa.safetensors"), result.directions,
                               metadata={"model": args.model, "iterations": str(args.iterations)})
    report = {
        "protocol": "rasa", "metric_name": "position_r2_after", "metric": result.r2_final,
        "backbone": model_identity(args), "output": str(out), "rasa_file": str(rasa_file),
        "data": str(root), "n_train_images": len(train_files), "n_heldout_images": len(held_files),
        "size": size, "augment": not args.no_augment,
        "config": {k: getattr(cfg, k) for k in ("iterations", "epochs", "lr", "weight_decay", "batch_size", "seed",
                                                "project_previous")},
        **result.report(),
    }
    report_path = Path(args.report) if args.report else out.with_suffix(".json")
    write_result(argparse.Namespace(out=str(report_path)), "rasa", report)

    print(f"{'stage':>5} {'loss first':>10} {'loss last':>10} {'R² before':>10} {'R² after':>10}")
    for h in result.history:
        print(f"{h['iteration']:>5} {h['loss_first']:>10.4f} {h['loss_last']:>10.4f} "
              f"{h.get('r2_before', float('nan')):>10.4f} {h.get('r2_after', float('nan')):>10.4f}")
    print(f"backbone with RASA folded in: {out}\nRASA file: {rasa_file}\nreport: {report_path}")
    return 0
