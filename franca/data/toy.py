"""The built-in synthetic data set, written in the real data sets' on-disk layouts.

No data set can be downloaded where this project is built, so `generate_toy` renders a small
deterministic world of shapes (`franca.data.toy_shapes`, `franca.data.toy_scenes`) and writes it
so that the real readers (`franca.data.datasets`) read it unchanged:

    <root>/imagenet/{train,val}/<wnid>/*.JPEG, imagenet/labels.txt      (ImageNet folder layout)
    <root>/VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, SegmentationClassAug,
                             ImageSets/Segmentation/{train,val,trainval,trainaug,aug}.txt}
                             + classes.txt (one class name per label index; not in real VOC)
    <root>/nyuv2/{sync/<scene>/rgb_*.jpg + sync_depth_*.png, official_splits/test/<scene>/…,
                  nyudepthv2_{train,test}_files_with_gt.txt}          (BTS layout, uint16 mm)
    <root>/SPair-71k/{JPEGImages,Segmentation,ImageAnnotation}/<category>/…,
                      PairAnnotation/{trn,val,test}/*.json, Layout/large/{trn,val,test}.txt
    <root>/toy.json                                                 (the parameters; written last)

In the default domain (`shapes`) the classes are shapes (disk, square, triangle, …) with random colours
and textures; in the `textures` domain (`domain="textures"`) they are the patterns objects are painted
with, on random silhouettes (`franca.data.toy_domains`). wnids are synthetic (`n00000000`, …). Every item
draws from its own generator seeded by (seed, part, index), so the output is the same bytes for the same
arguments.

`ensure_toy()` generates the set once into a cache folder ($FRANCA_DATA, else
~/.cache/franca) named by a hash of the parameters, writing to a temporary sibling and
renaming it into place, so an aborted or concurrent run never leaves half a set behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from franca.data.toy_domains import DEFAULT_DOMAIN, DOMAINS, ToyDomain, get_domain
from franca.data.toy_scenes import ToyStyle, render_classification, render_depth, render_pair, render_segmentation
from franca.utils.files import set_normal_mode
from franca.utils.progress import progress as progress_bar

log = logging.getLogger(__name__)

TOY_VERSION = 2  # bump when the rendering changes, so cached sets are regenerated
# 2: dense scenes (VOC, NYUv2, SPair parts) 2 x size a side with larger, non-overlapping segmentation objects,
#    a 1-px ignore band and pairs of two differently painted instances (franca.data.toy_scenes); the
#    classification images are unchanged. generate_toy(..., dense_scale=1, dense_version=1) writes
#    version 1's bytes.
_PARTS = {
    "cls_train": 1,
    "cls_val": 2,
    "seg_train": 3,
    "seg_val": 4,
    "depth_train": 5,
    "depth_test": 6,
    "spair_trn": 7,
    "spair_val": 8,
    "spair_test": 9,
}
NYU_FOCAL = 518.8579  # the focal length BTS writes in its file lists (pixels at 640x480)


def wnid(cls: int) -> str:
    """Synthetic WordNet-style id of a toy class."""
    return f"n{cls:08d}"


def class_names(n_classes: int, domain: str = DEFAULT_DOMAIN) -> list[str]:
    """The names of the first `n_classes` classes of a domain."""
    return list(get_domain(domain).classes[:n_classes])


def voc_palette() -> list[int]:
    """The Pascal VOC colour map (256 RGB triples, flattened): bit-interleaved label index."""
    pal = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal += [r, g, b]
    return pal


def _rng(seed: int, part: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _PARTS[part], index])


def _save_jpeg(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr).save(path, format="JPEG", quality=92)


def _save_palette_png(label: np.ndarray, path: Path) -> None:
    im = Image.frombytes("P", (label.shape[1], label.shape[0]), np.ascontiguousarray(label, dtype=np.uint8).tobytes())
    im.putpalette(voc_palette())
    im.save(path, format="PNG")


def _write_classification(
    root: Path, style: ToyStyle, dom: ToyDomain, n_train: int, n_val: int, seed: int, bar: tqdm
) -> None:
    base = root / "imagenet"
    names = class_names(style.n_classes, dom.name)
    for split, n, part in (("train", n_train, "cls_train"), ("val", n_val, "cls_val")):
        for c in range(style.n_classes):
            (base / split / wnid(c)).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cls = i % style.n_classes  # balanced classes
            img = render_classification(_rng(seed, part, i), cls, style, dom)
            name = f"{wnid(cls)}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{i + 1:08d}.JPEG"
            _save_jpeg(img, base / split / wnid(cls) / name)
            bar.update()
    (base / "labels.txt").write_text("".join(f"{wnid(c)},{names[c]}\n" for c in range(style.n_classes)))


def _write_voc(root: Path, style: ToyStyle, dom: ToyDomain, n_train: int, n_val: int, seed: int, bar: tqdm) -> None:
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    ids: dict[str, list[str]] = {"train": [], "val": []}
    for split, n, part in (("train", n_train, "seg_train"), ("val", n_val, "seg_val")):
        for i in range(n):
            img, label, _ = render_segmentation(_rng(seed, part, i), style, dom)
            name = f"toy_{split}_{i:06d}"
            _save_jpeg(img, voc / "JPEGImages" / f"{name}.jpg")
            _save_palette_png(label, voc / "SegmentationClass" / f"{name}.png")
            # SBD-converted masks are plain single-channel index PNGs.
            Image.fromarray(label.astype(np.uint8)).save(voc / "SegmentationClassAug" / f"{name}.png")
            ids[split].append(name)
            bar.update()
    sets = voc / "ImageSets" / "Segmentation"
    lists = {
        "train": ids["train"],
        "val": ids["val"],
        "trainval": ids["train"] + ids["val"],
        "trainaug": ids["train"],
        "aug": ids["train"],
    }
    for name, lst in lists.items():
        (sets / f"{name}.txt").write_text("".join(f"{x}\n" for x in lst))
    (voc / "classes.txt").write_text("background\n" + "".join(f"{n}\n" for n in class_names(style.n_classes, dom.name)))


def _write_nyu(root: Path, style: ToyStyle, dom: ToyDomain, n_train: int, n_test: int, seed: int, bar: tqdm) -> None:
    nyu = root / "nyuv2"
    for split, n, part in (("train", n_train, "depth_train"), ("test", n_test, "depth_test")):
        base = nyu / "sync" if split == "train" else nyu / "official_splits" / "test"
        lines = []
        for i in range(n):
            img, depth, _ = render_depth(_rng(seed, part, i), style, dom)
            scene = f"toyroom_{i // 50:04d}"
            (base / scene).mkdir(parents=True, exist_ok=True)
            _save_jpeg(img, base / scene / f"rgb_{i:05d}.jpg")
            mm = np.rint(depth * 1000.0).astype(np.uint16)  # BTS stores millimetres as uint16
            Image.fromarray(mm).save(base / scene / f"sync_depth_{i:05d}.png")
            # BTS lists: train paths start with "/" under sync/, test paths are relative.
            prefix = "/" if split == "train" else ""
            lines.append(f"{prefix}{scene}/rgb_{i:05d}.jpg {prefix}{scene}/sync_depth_{i:05d}.png {NYU_FOCAL}\n")
            bar.update()
        (nyu / f"nyudepthv2_{split}_files_with_gt.txt").write_text("".join(lines))


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def _write_spair(root: Path, style: ToyStyle, dom: ToyDomain, n_pairs: dict[str, int], seed: int, bar: tqdm) -> None:
    sp = root / "SPair-71k"
    names = class_names(style.n_classes, dom.name)
    for sub in ("JPEGImages", "Segmentation", "ImageAnnotation"):
        for n in names:
            (sp / sub / n).mkdir(parents=True, exist_ok=True)
    (sp / "Layout" / "large").mkdir(parents=True, exist_ok=True)
    for split, n in n_pairs.items():
        (sp / "PairAnnotation" / split).mkdir(parents=True, exist_ok=True)
        layout = []
        for i in range(n):
            rng = _rng(seed, f"spair_{split}", i)
            cls, level = i % style.n_classes, int(rng.integers(3))
            pair = render_pair(rng, cls, level, style, dom)
            cat = names[cls]
            meta = {}
            for key in ("src", "trg"):
                imname = f"{split}{i:05d}{key}"
                _save_jpeg(pair[key], sp / "JPEGImages" / cat / f"{imname}.jpg")
                Image.fromarray(pair[f"{key}_mask"].astype(np.uint8) * np.uint8(cls + 1)).save(
                    sp / "Segmentation" / cat / f"{imname}.png"
                )
                kps = np.round(pair[f"{key}_kps"], 2)
                meta[key] = (imname, kps, _bbox(pair[f"{key}_mask"]))
                ann = {
                    "filename": f"{imname}.jpg",
                    "src_database": "franca-toy",
                    "annotator": "generator",
                    "image_width": style.dense_size,
                    "image_height": style.dense_size,
                    "image_depth": 3,
                    "category": cat,
                    "kps": {str(k): [float(x), float(y)] for k, (x, y) in enumerate(kps.tolist())},
                    "bndbox": meta[key][2],
                    "pose": "unspecified",
                    "truncated": 0,
                    "occluded": 0,
                }
                (sp / "ImageAnnotation" / cat / f"{imname}.json").write_text(json.dumps(ann))
            (sn, skps, sbox), (tn, tkps, tbox) = meta["src"], meta["trg"]
            pair_id = f"{i:06d}-{sn}-{tn}:{cat}"
            ann = {
                "pair_id": i,
                "filename": pair_id,
                "src_imname": f"{sn}.jpg",
                "trg_imname": f"{tn}.jpg",
                "src_imsize": [style.dense_size, style.dense_size, 3],
                "trg_imsize": [style.dense_size, style.dense_size, 3],
                "src_bndbox": sbox,
                "trg_bndbox": tbox,
                "category": cat,
                "category_id": cls + 1,
                "src_kps": skps.tolist(),
                "trg_kps": tkps.tolist(),
                "kps_ids": list(range(len(skps))),
                "viewpoint_variation": level,
                "scale_variation": 0,
                "truncation": 0,
                "occlusion": 0,
                "mirror": 0,
                "toy_transform": np.round(pair["transform"], 6).tolist(),
            }
            (sp / "PairAnnotation" / split / f"{pair_id}.json").write_text(json.dumps(ann))
            layout.append(pair_id + "\n")
            bar.update()
        (sp / "Layout" / "large" / f"{split}.txt").write_text("".join(layout))


def _counts(
    n_train: int,
    n_val: int,
    n_seg: tuple[int, int] | None,
    n_depth: tuple[int, int] | None,
    n_pairs: tuple[int, int, int] | None,
) -> dict:
    """Sizes of the dense sets; by default derived from the classification sizes."""
    n_seg = n_seg or (max(2, n_train // 10), max(2, n_val // 5))
    n_depth = n_depth or (max(2, n_train // 10), max(2, n_val // 5))
    n_pairs = n_pairs or (max(2, n_train // 20), max(2, n_val // 20), max(2, n_val // 5))
    return {"seg": list(n_seg), "depth": list(n_depth), "pairs": list(n_pairs)}


def generate_toy(
    out_dir: str | os.PathLike,
    size: int = 64,
    n_train: int = 5000,
    n_val: int = 1000,
    seed: int = 0,
    *,
    n_seg: tuple[int, int] | None = None,
    n_depth: tuple[int, int] | None = None,
    n_pairs: tuple[int, int, int] | None = None,
    progress: bool = True,
    domain: str = DEFAULT_DOMAIN,
    **style_kwargs,
) -> Path:
    """Render the synthetic data set into `out_dir` (created; must be empty or absent).

    Args:
        size: side in pixels of the classification images; the dense parts (segmentation, depth,
            keypoint pairs) are `dense_scale` (default 2) times larger.
        n_train, n_val: classification images (balanced over classes).
        seed: everything is a deterministic function of the arguments.
        n_seg: (train, val) segmentation scenes; n_depth: (train, test) depth scenes;
            n_pairs: (trn, val, test) keypoint pairs. Defaults scale with n_train/n_val.
        domain: what a class is: "shapes" (the silhouette) or "textures" (the pattern;
            `franca.data.toy_domains`). The layouts are the same.
        style_kwargs: `ToyStyle` knobs (n_classes, object_size, clutter, texture, distractors, …);
            `texture` (patterned paint) applies to the shapes domain only.
    Returns:
        The root folder.
    """
    style = ToyStyle(size=size, **style_kwargs)
    dom = _check_domain(domain, style)
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train and n_val must be >= 1, got {n_train}, {n_val}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"toy data output folder {out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    counts = _counts(n_train, n_val, n_seg, n_depth, n_pairs)
    total = n_train + n_val + sum(counts["seg"]) + sum(counts["depth"]) + sum(counts["pairs"])
    with progress_bar(total=total, desc="franca toy data", unit="img", disable=not progress) as bar:
        _write_classification(out, style, dom, n_train, n_val, seed, bar)
        _write_voc(out, style, dom, *counts["seg"], seed, bar)
        _write_nyu(out, style, dom, *counts["depth"], seed, bar)
        _write_spair(out, style, dom, dict(zip(("trn", "val", "test"), counts["pairs"])), seed, bar)
    params = {
        "version": TOY_VERSION,
        "domain": dom.name,
        "seed": seed,
        "n_train": n_train,
        "n_val": n_val,
        **counts,
        "style": asdict(style),
        "classes": class_names(style.n_classes, dom.name),
    }
    (out / "toy.json").write_text(json.dumps(params, indent=1) + "\n")
    return out


def toy_key(
    size: int = 64,
    n_train: int = 5000,
    n_val: int = 1000,
    seed: int = 0,
    *,
    n_seg: tuple[int, int] | None = None,
    n_depth: tuple[int, int] | None = None,
    n_pairs: tuple[int, int, int] | None = None,
    progress: bool = True,
    domain: str = DEFAULT_DOMAIN,
    **style_kwargs,
) -> str:
    """Short hash naming the cached set of these parameters (resolved: defaults count too). The default
    domain is left out of the hash, so the shapes sets keep the names they had before domains existed."""
    style = ToyStyle(size=size, **style_kwargs)
    _check_domain(domain, style)
    desc: dict = {
        "v": TOY_VERSION,
        "seed": seed,
        "n_train": n_train,
        "n_val": n_val,
        **_counts(n_train, n_val, n_seg, n_depth, n_pairs),
        "style": asdict(style),
    }
    if domain != DEFAULT_DOMAIN:
        desc["domain"] = domain
    return hashlib.sha1(json.dumps(desc, sort_keys=True, default=list).encode()).hexdigest()[:12]


def _check_domain(domain: str, style: ToyStyle) -> ToyDomain:
    """The domain, checked against the style (a ValueError names what does not fit)."""
    dom = get_domain(domain)
    if style.n_classes > len(dom.classes):
        raise ValueError(f"the {dom.name} domain has {len(dom.classes)} classes, not {style.n_classes}")
    if dom.name != DEFAULT_DOMAIN and style.dense_version == 1:
        raise ValueError(f"dense_version 1 renders the shapes domain only, not {dom.name!r}")
    return dom


def default_cache_root() -> Path:
    env = os.environ.get("FRANCA_DATA")
    return Path(env) if env else Path.home() / ".cache" / "franca"


BUILTIN_TOY: dict = {
    "size": 32,
    "object_size": (0.45, 0.7),
    "distractors": 0,
    "rotate": False,
    "clutter": 0.2,
    "texture": 0.0,
}
"""The built-in set: what `franca pretrain` (tiny preset: data.toy_size and data.toy_options) trains on,
and what every evaluation, RASA and figure command reads when given no data. Upright, flat-coloured objects
(patterns gave the tiny preset's teacher a cluster cue other than the shape), a calm background and no
distractors keep it learnable by a tiny ViT in minutes (docs/training.md). Its dense
parts (VOC, NYUv2, SPair-71k layouts) are 64 px a side (ToyStyle.dense_scale = 2)."""


def builtin_toy(root: str | os.PathLike | None = None, domain: str = DEFAULT_DOMAIN) -> Path:
    """Path of the built-in toy set of a domain (BUILTIN_TOY's style), generated on first use."""
    return ensure_toy(root, **builtin_options(domain))


def builtin_options(domain: str = DEFAULT_DOMAIN) -> dict:
    """The `ensure_toy` arguments of a domain's built-in set: BUILTIN_TOY's style (32 px, large upright
    objects, a calm background), plus `domain` for any domain but the default."""
    get_domain(domain)
    return dict(BUILTIN_TOY) if domain == DEFAULT_DOMAIN else {**BUILTIN_TOY, "domain": domain}


TOY_DOMAINS = tuple(DOMAINS)
"""The domain names `generate_toy`, `ensure_toy` and `franca data toy --domain` take."""


def ensure_toy(root: str | os.PathLike | None = None, **kwargs) -> Path:
    """Path of the toy set with these `generate_toy` arguments, generated once and cached.

    The set lives in `<root>/toy-<hash>` (root: $FRANCA_DATA, else ~/.cache/franca). It is
    rendered into a temporary sibling folder and renamed into place only when complete; if
    another process finishes first, its copy is kept and ours is discarded.
    """
    base = Path(root) if root is not None else default_cache_root()
    final = base / f"toy-{toy_key(**kwargs)}"
    if (final / "toy.json").is_file():
        return final
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=base))
    set_normal_mode(tmp, directory=True)  # mkdtemp made it 0700: a shared data cache is readable like any folder
    try:
        log.info("generating the toy data set into %s", final)
        generate_toy(tmp, **kwargs)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "toy.json").is_file():
                raise
            log.info("another process generated %s first; keeping it", final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
