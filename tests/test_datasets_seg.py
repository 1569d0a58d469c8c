"""Segmentation readers (VOC devkit + Leopart layouts, ADE20K, COCO-Things) and joint transforms."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from franca.data.datasets import ADE20K, COCOThings, VOCSegmentation
from franca.data.datasets.transforms import (
    JointCenterCrop,
    JointCompose,
    JointRandomHorizontalFlip,
    JointRandomResizedCrop,
    JointResize,
    JointToTensor,
)
from franca.data.toy import voc_palette


def _rgb(path, h=5, w=7, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (np.arange(h * w * 3).reshape(h, w, 3) + value).astype(np.uint8)
    Image.fromarray(arr).save(path, format="PNG")  # lossless, whatever the suffix says


def _palette_png(path, label):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.frombytes("P", (label.shape[1], label.shape[0]), label.astype(np.uint8).tobytes())
    im.putpalette(voc_palette())
    im.save(path)


def _label(seed, h=5, w=7, values=(0, 1, 15, 255)):
    return np.random.default_rng(seed).choice(values, size=(h, w)).astype(np.uint8)


def test_voc_devkit_palette_and_trainaug(tmp_path):
    """Palette PNG indices (not colours) come back as int64 masks; trainaug reads aug.txt + SegmentationClassAug."""
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for i, name in enumerate(("2007_000032", "2007_000033")):
        _rgb(voc / "JPEGImages" / f"{name}.jpg", value=i)
        _palette_png(voc / "SegmentationClass" / f"{name}.png", _label(i))
        path = voc / "SegmentationClassAug" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_label(10 + i)).save(path)
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2007_000032\n")
    (sets / "val.txt").write_text("2007_000033\n\n")
    (sets / "aug.txt").write_text("2007_000032\n2007_000033\n")
    ds = VOCSegmentation(tmp_path, "val")
    assert ds.layout == "devkit" and len(ds) == 1 and ds.num_classes == 21 and ds.classes[15] == "person"
    img, mask = ds[0]
    assert img.shape == (3, 5, 7) and img.dtype == torch.float32
    assert mask.dtype == torch.int64 and torch.equal(mask, torch.from_numpy(_label(1).astype(np.int64)))
    assert int(img[0, 0, 1] * 255 + 0.5) == 3 + 1  # pixel (0,1) red = 3 + value 1
    aug = VOCSegmentation(voc, "trainaug")
    assert len(aug) == 2 and torch.equal(aug[1][1], torch.from_numpy(_label(11).astype(np.int64)))
    (voc / "SegmentationClass" / "2007_000033.png").unlink()
    with pytest.raises(FileNotFoundError, match="2007_000033.png"):
        VOCSegmentation(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="VOCSegmentation"):
        VOCSegmentation(tmp_path / "nothing")


def test_voc_leopart_layout_and_rgb_mask_rejected(tmp_path):
    """Leopart/HB layout: images/, sets/, val masks from SegmentationClass, trainaug from SegmentationClassAug."""
    base = tmp_path / "VOCSegmentation"
    _rgb(base / "images" / "a.jpg")
    _rgb(base / "images" / "b.jpg")
    _palette_png(base / "SegmentationClass" / "a.png", _label(1))
    (base / "SegmentationClassAug").mkdir(parents=True)
    Image.fromarray(_label(2)).save(base / "SegmentationClassAug" / "b.png")
    (base / "sets").mkdir()
    (base / "sets" / "val.txt").write_text("a\n")
    (base / "sets" / "trainaug.txt").write_text("b\n")
    ds = VOCSegmentation(tmp_path, "val")
    assert ds.layout == "leopart" and torch.equal(ds[0][1], torch.from_numpy(_label(1).astype(np.int64)))
    assert torch.equal(VOCSegmentation(base, "trainaug")[0][1], torch.from_numpy(_label(2).astype(np.int64)))
    # an index mask saved as RGB (three equal channels) reads as indices; a colour-coded one is refused
    Image.fromarray(np.repeat(_label(3)[..., None], 3, axis=2)).save(base / "SegmentationClass" / "a.png")
    assert torch.equal(ds[0][1], torch.from_numpy(_label(3).astype(np.int64)))
    colours = np.zeros((5, 7, 3), np.uint8)
    colours[0, 0] = (128, 0, 0)  # VOC's aeroplane colour
    Image.fromarray(colours).save(base / "SegmentationClass" / "a.png")
    with pytest.raises(ValueError, match=r"a\.png has mode RGB with differing channels: a colour-coded mask"):
        ds[0]


def test_ade20k_reduce_zero_label(tmp_path):
    """0 → 255 and k → k-1 with reduce_zero_label (mmseg); raw labels without it."""
    base = tmp_path / "ADEChallengeData2016"
    raw = np.array([[0, 1, 150], [2, 0, 75]], dtype=np.uint8)
    _rgb(base / "images" / "validation" / "ADE_val_00000001.jpg", h=2, w=3)
    (base / "annotations" / "validation").mkdir(parents=True)
    Image.fromarray(raw).save(base / "annotations" / "validation" / "ADE_val_00000001.png")
    red = ADE20K(tmp_path, "val")
    assert red.num_classes == 150
    assert red[0][1].tolist() == [[255, 0, 149], [1, 255, 74]]
    assert ADE20K(base, "validation", reduce_zero_label=False)[0][1].tolist() == raw.tolist()
    with pytest.raises(FileNotFoundError, match="training"):
        ADE20K(tmp_path, "training")


def test_coco_things_mapping(tmp_path):
    """Thing categories map to their alphabetical supercategory index; stuff and 0 go to 255."""
    supers = ["person", "vehicle", "outdoor", "animal", "accessory", "sports", "kitchen", "food", "furniture",
              "electronic", "appliance", "indoor"]
    cats = [{"id": k + 1, "name": f"thing{k}", "supercategory": s, "isthing": 1} for k, s in enumerate(supers)]
    cats.append({"id": 92, "name": "banner", "supercategory": "textile", "isthing": 0})
    ann = tmp_path / "annotations" / "panoptic_annotations"
    (ann / "semantic_segmentation_val2017").mkdir(parents=True)
    (ann / "panoptic_val2017.json").write_text(json.dumps({"categories": cats}))
    sem = np.array([[1, 2, 92], [0, 4, 12]], dtype=np.uint8)
    Image.fromarray(sem).save(ann / "semantic_segmentation_val2017" / "000000000139.png")
    _rgb(tmp_path / "images" / "val2017" / "000000000139.jpg", h=2, w=3)
    ds = COCOThings(tmp_path, "val")
    # person → 9, vehicle → 11, stuff 92 → 255, unlabelled 0 → 255, animal → 1, indoor → 6
    assert ds[0][1].tolist() == [[9, 11, 255], [255, 1, 6]]
    assert ds.num_classes == 12
    with pytest.raises(FileNotFoundError, match="train2017"):
        COCOThings(tmp_path, "train")


def test_joint_transforms_keep_masks_aligned():
    """A mask that encodes pixel positions stays a (nearest-sampled) copy of the image geometry."""
    h, w = 20, 30
    ids = np.arange(h * w).reshape(h, w)
    img = Image.fromarray(np.stack([ids % 256, ids // 256, np.zeros_like(ids)], -1).astype(np.uint8))
    mask = Image.fromarray((ids % 251).astype(np.uint8))
    # Nearest for the image too, so its pixels are exact copies the mask must match.
    t = JointCompose([JointRandomResizedCrop(12, scale=(0.3, 1.0), interpolation=Image.NEAREST),
                      JointRandomHorizontalFlip(1.0),
                      JointResize((12, 12), interpolation=Image.NEAREST), JointCenterCrop(10), JointToTensor()])
    for seed in range(5):
        torch.manual_seed(seed)
        x, m = t(img, mask)
        assert x.shape == (3, 10, 10) and m.shape == (10, 10) and m.dtype == torch.int64
        rebuilt = (torch.round(x[0] * 255) + 256 * torch.round(x[1] * 255)).long() % 251
        assert torch.equal(rebuilt, m)
    # Labels are never blended: a bicubic image resize still gives only the original label values.
    two = Image.fromarray(np.kron(np.array([[3, 7], [7, 255]], np.uint8), np.ones((4, 4), np.uint8)))
    _, m = JointCompose([JointResize(11), JointToTensor()])(img.resize((8, 8)), two)
    assert set(m.unique().tolist()) <= {3, 7, 255} and m.shape == (11, 11)


def test_voc_reads_toy_output(tmp_path):
    """The toy generator's VOC set: palette masks with classes 1..10, 255 boundaries, classes.txt."""
    from franca.data.toy import generate_toy

    root = generate_toy(tmp_path / "toy", size=32, n_train=10, n_val=10, n_seg=(3, 2), n_depth=(2, 2),
                        n_pairs=(2, 2, 2), progress=False)
    ds = VOCSegmentation(root, "train")
    assert len(ds) == 3 and ds.classes[:2] == ("background", "disk") and ds.num_classes == 11
    _, m = ds[0]
    vals = set(m.unique().tolist())
    assert 0 in vals and 255 in vals and vals <= set(range(11)) | {255}
    assert len(VOCSegmentation(root, "trainaug")) == 3 and len(VOCSegmentation(root, "val")) == 2
