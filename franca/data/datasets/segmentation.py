"""The dense protocols' entry to the segmentation readers (linseg, in-context, overclustering):
`build_segmentation` builds VOCSegmentation, ADE20K or COCOThings (the one reader of each layout)
with the pass-through transform `raw_pair`, so `dataset[i] -> (PIL RGB image, int64 numpy mask
(H, W))` with `num_classes`, `ignore_index`, `class_names`, `name` and `split`. The protocols apply
their own exact resizing and augmentation, so no transform here.

`SegmentationSet` names what the protocols read (a Protocol, not a class to build).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from franca.data.datasets.ade20k import ADE20K
from franca.data.datasets.coco import COCO_THING_SUPERCATEGORIES, COCOThings
from franca.data.datasets.pairs import raw_pair
from franca.data.datasets.voc import VOC_CLASSES, VOCSegmentation, find_voc_layout
from franca.data.toy import builtin_toy

__all__ = ["COCO_THING_SUPERCATEGORIES", "DATASETS", "VOC_CLASSES", "SegmentationSet", "build_segmentation"]

DATASETS = ("voc", "ade20k", "coco-things")


@runtime_checkable
class SegmentationSet(Protocol):
    """What the dense protocols read: (PIL image, int64 mask) items and the label metadata."""

    num_classes: int
    ignore_index: int
    name: str
    split: str

    @property
    def class_names(self) -> Sequence[str]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> Any: ...


def build_segmentation(
    dataset: str, root: str | Path | None, split: str, reduce_zero_label: bool = False
) -> VOCSegmentation | ADE20K | COCOThings:
    """Raw segmentation set `dataset` ∈ {voc, ade20k, coco-things} of `split` under `root`.

    `reduce_zero_label` applies to ADE20K only (True: mmseg's 150 classes, ignore 255; False: HB's
    151 classes, ignore 0). root=None uses the built-in toy set (VOC layout), generated on first use.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown data set {dataset!r}; choose from {', '.join(DATASETS)}")
    if root is None:
        if dataset != "voc":
            raise ValueError(f"--data is required for {dataset}; only the VOC-layout toy set is built in")

        root = builtin_toy()
    root = Path(root)
    if not root.exists():
        hint = (
            f" ({str(root)!r} names a data set: give it as dataset_name= / --dataset and its folder as data= / --data)"
            if str(root) in DATASETS
            else ""
        )
        raise FileNotFoundError(f"data root not found: {root}{hint}")
    try:
        if dataset == "voc":
            return VOCSegmentation(root, split, transforms=raw_pair)
        if dataset == "ade20k":
            return ADE20K(root, split, reduce_zero_label=reduce_zero_label, transforms=raw_pair)
        return COCOThings(root, split, transforms=raw_pair)
    except FileNotFoundError as exc:
        other = _other_layout(root, dataset)
        if other is None:
            raise
        raise FileNotFoundError(
            f"{exc} (this folder holds {other}: pass dataset_name={other!r} / --dataset {other})"
        ) from exc


def _other_layout(root: Path, dataset: str) -> str | None:
    """The data set whose layout `root` holds when it is not `dataset`'s (for the error), else None."""

    looks = {
        "ade20k": (root / "ADEChallengeData2016").is_dir() or (root / "annotations" / "training").is_dir(),
        "coco-things": any(
            (root / "annotations" / d).is_dir()
            for d in ("panoptic_annotations", "semantic_segmentation_val2017", "semantic_segmentation_train2017")
        ),
    }
    try:
        find_voc_layout(root)
        looks["voc"] = True
    except FileNotFoundError:
        looks["voc"] = False
    return next((d for d in DATASETS if d != dataset and looks[d]), None)
