"""Readers (torch Datasets) for the real data sets in their official on-disk layouts.
May import franca.data and franca.utils only.

The same readers read the built-in synthetic set (`franca.data.toy`). A missing or wrongly laid
out data set raises FileNotFoundError naming the file or folder expected; a corrupt image raises
`CorruptImageError` (a ValueError) with its path. The unlabelled readers choose instead:
`ImageFiles(on_unreadable=…)` replaces ("replace"), yields None ("skip", dropped and counted by
`SkipNoneCollate`) or marks ("mark": zeros, index -1); `UnlabelledImageFolder` and webdataset
shards skip (see `folder`). Shards are local tar files read by `shards` (no `webdataset` package).
`franca.data.source.open_images` opens the unlabelled ones, class trees and shards by kind.

| reader                                  | module       | item                                  |
|-----------------------------------------|--------------|---------------------------------------|
| ImageFolder, ImageNet                   | folder       | (image, class index)                  |
| UnlabelledImageFolder, WebDatasetShards | folder, wds  | image or None (unreadable: skipped)   |
| ShardSamples (pretraining's stream)     | wds          | pretraining sample (franca.data.samples) |
| VOCSegmentation, ADE20K, COCOThings     | voc, ade20k, coco | (image, int64 mask): one reader per layout |
| build_segmentation (SegmentationSet)    | segmentation | those readers, raw: (PIL image, int64 np mask) |
| ImageMaskPairs, load_label_png, raw_pair | pairs       | their base, mask rule, pass-through transform |
| ImageFiles (a list of files)            | folder       | image; unreadable: on_unreadable policy |
| NYUv2Depth, NYUv2Labeled, NYUv2Arrays   | nyu          | (image, float32 depth in m, 0 = invalid) |
| SPair71k                                | spair        | dict of two images, keypoints, boxes  |
| finegrained_dataset(name, …)            | finegrained  | (image, class index)                  |
"""

from __future__ import annotations

from franca.data.datasets.ade20k import ADE20K
from franca.data.datasets.coco import COCOThings
from franca.data.datasets.finegrained import CUB200, FINEGRAINED_SETS, finegrained_dataset
from franca.data.datasets.folder import (
    IMAGE_EXTENSIONS,
    CorruptImageError,
    ImageFiles,
    ImageFolder,
    ImageNet,
    SkipNoneCollate,
    UnlabelledImageFolder,
)
from franca.data.datasets.nyu import NYUv2Arrays, NYUv2Depth, NYUv2Labeled
from franca.data.datasets.pairs import ImageMaskPairs
from franca.data.datasets.segmentation import SegmentationSet, build_segmentation
from franca.data.datasets.spair import SPair71k
from franca.data.datasets.voc import VOC_CLASSES, VOCSegmentation
from franca.data.datasets.wds import ShardSamples, WebDatasetShards

__all__ = [
    "ADE20K",
    "COCOThings",
    "CUB200",
    "CorruptImageError",
    "FINEGRAINED_SETS",
    "IMAGE_EXTENSIONS",
    "ImageFiles",
    "ImageFolder",
    "ImageMaskPairs",
    "ImageNet",
    "NYUv2Arrays",
    "NYUv2Depth",
    "NYUv2Labeled",
    "SPair71k",
    "SegmentationSet",
    "ShardSamples",
    "SkipNoneCollate",
    "UnlabelledImageFolder",
    "VOCSegmentation",
    "VOC_CLASSES",
    "WebDatasetShards",
    "build_segmentation",
    "finegrained_dataset",
]
