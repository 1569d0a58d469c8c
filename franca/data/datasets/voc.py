"""Pascal VOC 2012 semantic segmentation: the one reader of the devkit and Leopart/HB layouts.

Layouts (VOC2012 devkit + SBD as mmseg reads it; Leopart `data/VOCdevkit/vocdata.py`),
looked for in this order under `root`:
- devkit: `VOCdevkit/VOC2012/`, `VOC2012/` or `root` itself holding `JPEGImages/<id>.jpg` and
  `ImageSets/Segmentation/<split>.txt`; masks `SegmentationClass/<id>.png` (palette PNGs, 0-20,
  255 = boundary/void) and, for trainaug, `SegmentationClassAug/<id>.png` (SBD-converted index PNGs).
- Leopart / HB / RASA: `VOCSegmentation/` or `root` itself holding `images/<id>.jpg` and
  `sets/<split>.txt`; val masks from `SegmentationClass`, train and trainaug masks from
  `SegmentationClassAug` (Leopart's VOCDataset).

Splits: any `<split>.txt` in the split folder. trainaug (10,582 images) follows the layout's own tool:
- mmseg (`aug.txt` in the devkit, written by mmseg's `voc_aug.py` next to a `trainaug.txt`): the ids of
  `train.txt` with their VOC masks from `SegmentationClass`, plus the ids of `aug.txt` not in train with
  their SBD masks from `SegmentationClassAug` (mmseg's `voc12aug` config concatenates exactly these two;
  mmseg's `SegmentationClassAug` holds only SBD's images, so reading all of `trainaug.txt` from it fails);
- otherwise `trainaug.txt` with every mask from `SegmentationClassAug` (the Leopart/HB list and DeepLab's
  mask folder, which holds train and SBD alike).
mmseg's ids are sorted; trainaug.txt keeps its order. Asking for trainaug where neither list or `SegmentationClassAug/` exists is an error
naming the files expected: the train split is never substituted silently (the built-in toy set writes
both lists and the Aug folder, so it needs no fallback). `split` and `name` ("voc-<split>") record the
split read, `list_files` the lists.

Class names: `classes.txt` or `labels.txt` beside the data if present (one name per line; an
`id,name` line keeps its last field; the toy set writes classes.txt), else the 21 VOC names.
Masks follow `pairs.load_label_png`. Items are `transforms(image, mask)` (default `JointToTensor()`:
float image (3, H, W) in [0, 1], int64 mask (H, W) with the raw indices, 255 = ignore;
`pairs.raw_pair` keeps the PIL image and gives an int64 numpy mask).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from franca.data.datasets.folder import require_file
from franca.data.datasets.pairs import IGNORE_INDEX, ImageMaskPairs, load_label_png  # noqa: F401 (re-exported)
from franca.data.datasets.transforms import JointToTensor

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


def read_id_list(path: Path) -> list[str]:
    """One id per line (blank lines ignored; a line 'id extra' keeps the first field)."""
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def read_class_names(path: Path) -> tuple[str, ...]:
    """Class names in index order: one per non-blank line; an `id,name` line keeps its last field."""
    names = tuple(line.strip().split(",")[-1].strip() for line in path.read_text().splitlines() if line.strip())
    if not names:
        raise ValueError(f"class list {path} is empty")
    return names


def voc_class_names(base: Path) -> tuple[str, ...]:
    """`classes.txt` or `labels.txt` in `base` (the first present), else the 21 VOC names."""
    for f in ("classes.txt", "labels.txt"):
        if (base / f).is_file():
            return read_class_names(base / f)
    return VOC_CLASSES


def find_voc_layout(root: Path) -> tuple[str, Path]:
    """("devkit" | "leopart", the folder holding the data) under `root`; FileNotFoundError naming both."""
    for cand in (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root):
        if (cand / "JPEGImages").is_dir() and (cand / "ImageSets").is_dir():
            return "devkit", cand
    for cand in (root / "VOCSegmentation", root):
        if (cand / "images").is_dir() and (cand / "sets").is_dir():
            return "leopart", cand
    raise FileNotFoundError(
        f"Pascal VOC not found under {root}: expected either the devkit layout "
        f"({root}/VOCdevkit/VOC2012/{{JPEGImages,ImageSets/Segmentation,SegmentationClass}}, or VOC2012/ or the "
        f"folder itself) or the Leopart/HB layout ({root}/VOCSegmentation/{{images,sets,SegmentationClass,"
        f"SegmentationClassAug}}, or the folder itself)"
    )


def voc_image_dir(root: Path) -> Path:
    """The folder of all VOC images under `root` (devkit JPEGImages/ or Leopart/HB images/)."""
    layout, base = find_voc_layout(root)
    return base / ("JPEGImages" if layout == "devkit" else "images")


def _trainaug(sets: Path, base: Path) -> tuple[list[str], list[Path], str]:
    """(trainaug ids, each id's mask folder, the list files read); see the module doc for the two rules."""
    trainaug, aug, train = sets / "trainaug.txt", sets / "aug.txt", sets / "train.txt"
    voc_masks, sbd_masks = base / "SegmentationClass", base / "SegmentationClassAug"
    has_list = trainaug.is_file() or aug.is_file()
    missing = ([] if has_list else ["the list"]) + ([] if sbd_masks.is_dir() else ["the masks"])
    if missing:
        raise FileNotFoundError(
            f"VOC trainaug: {' and '.join(missing)} not found; expected the list {trainaug} (or mmseg's aug.txt "
            f"with train.txt beside it) and the SBD masks folder {sbd_masks}. Add them, or "
            "ask for the train split"
        )
    if aug.is_file():  # mmseg: train.txt with VOC masks + aug.txt with SBD masks
        train_ids = set(read_id_list(require_file(train, "VOC train list (mmseg's trainaug = train + aug)")))
        ids = sorted(train_ids | set(read_id_list(aug)))
        return ids, [voc_masks if i in train_ids else sbd_masks for i in ids], "train.txt + aug.txt"
    ids = list(dict.fromkeys(read_id_list(trainaug)))  # its own order, a repeated id once
    return ids, [sbd_masks] * len(ids), trainaug.name


class VOCSegmentation(ImageMaskPairs):
    """Pascal VOC 2012 segmentation, any split with a list file (train, val, trainval, trainaug, …);
    see the module doc.

    Attributes: `ids`, `classes` / `class_names`, `num_classes`, `ignore_index` (255), `layout`
    ("devkit" or "leopart"), `split` and `name` (the split read), `list_files` (the lists it came from).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", transforms: Callable | None = None):
        self.layout, base = find_voc_layout(Path(root))
        self.split, self.base = split, base
        devkit = self.layout == "devkit"
        sets = base / ("ImageSets/Segmentation" if devkit else "sets")
        self.image_dir = base / ("JPEGImages" if devkit else "images")
        aug_masks = split == "trainaug" or (not devkit and split != "val")
        self.mask_dir = base / ("SegmentationClassAug" if aug_masks else "SegmentationClass")
        if split == "trainaug":
            ids, mask_dirs, self.list_files = _trainaug(sets, base)
        else:
            list_file = require_file(sets / f"{split}.txt", f"VOC {split} split list")
            ids, self.list_files = read_id_list(list_file), list_file.name
            mask_dirs = [self.mask_dir] * len(ids)
        if not ids:
            raise ValueError(f"VOC {split} split list ({self.list_files} in {sets}) is empty")
        for d in dict.fromkeys(mask_dirs):
            if not d.is_dir():
                raise FileNotFoundError(f"VOC {split} masks: expected the folder {d}, which does not exist")
        self.set_pairs(ids, self.image_dir, mask_dirs, f"VOC {split} ({self.list_files})")
        self.classes = voc_class_names(base)
        self.num_classes = len(self.classes)
        self.ignore_index = IGNORE_INDEX
        self.name = f"voc-{split}"
        self.transforms = transforms if transforms is not None else JointToTensor()
