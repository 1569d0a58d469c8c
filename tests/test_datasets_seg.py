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
    supers = [
        "person",
        "vehicle",
        "outdoor",
        "animal",
        "accessory",
        "sports",
        "kitchen",
        "food",
        "furniture",
        "electronic",
        "appliance",
        "indoor",
    ]
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
    t = JointCompose(
        [
            JointRandomResizedCrop(12, scale=(0.3, 1.0), interpolation=Image.NEAREST),
            JointRandomHorizontalFlip(1.0),
            JointResize((12, 12), interpolation=Image.NEAREST),
            JointCenterCrop(10),
            JointToTensor(),
        ]
    )
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

    root = generate_toy(
        tmp_path / "toy", size=32, n_train=10, n_val=10, n_seg=(3, 2), n_depth=(2, 2), n_pairs=(2, 2, 2), progress=False
    )
    ds = VOCSegmentation(root, "train")
    assert len(ds) == 3 and ds.classes[:2] == ("background", "disk") and ds.num_classes == 11
    _, m = ds[0]
    vals = set(m.unique().tolist())
    assert 0 in vals and 255 in vals and vals <= set(range(11)) | {255}
    assert len(VOCSegmentation(root, "trainaug")) == 3 and len(VOCSegmentation(root, "val")) == 2


# ---------------------------------------------------------------- the one rule set of the segmentation readers (#20)
def _voc_tree(base, layout, splits, aug=None):
    """A VOC tree at `base` ("devkit" or "leopart"): splits {name: ids}; `aug` {id: label seed} for
    SegmentationClassAug; every id gets an image and a SegmentationClass mask (label seed = its index)."""
    devkit = layout == "devkit"
    img_dir = base / ("JPEGImages" if devkit else "images")
    sets = base / ("ImageSets/Segmentation" if devkit else "sets")
    sets.mkdir(parents=True, exist_ok=True)
    ids = sorted({i for lst in splits.values() for i in lst} | set(aug or {}))
    for k, i in enumerate(ids):
        _rgb(img_dir / f"{i}.jpg", value=k)
        _palette_png(base / "SegmentationClass" / f"{i}.png", _label(k))
    for i, seed in (aug or {}).items():
        (base / "SegmentationClassAug").mkdir(parents=True, exist_ok=True)
        Image.fromarray(_label(seed)).save(base / "SegmentationClassAug" / f"{i}.png")
    for name, lst in splits.items():
        (sets / f"{name}.txt").write_text("".join(f"{i}\n" for i in lst))
    return base


def test_voc_trainaug_from_trainaug_txt_alone_or_aug_union_train(tmp_path):
    """trainaug.txt is read alone (in its order), every mask from SegmentationClassAug; mmseg's aug.txt is
    joined with train.txt, deduplicated and sorted, train ids with their SegmentationClass masks (mmseg's
    voc12aug config) and the other ids with SegmentationClassAug's."""
    from franca.data.datasets import build_segmentation

    aug = {"c": 30, "a": 31, "b": 32, "d": 33}
    hb = _voc_tree(
        tmp_path / "hb" / "VOCSegmentation", "leopart", {"train": ["a"], "trainaug": ["c", "a"], "val": ["b"]}, aug
    )
    ds = VOCSegmentation(hb, "trainaug")
    assert ds.ids == ["c", "a"] and ds.list_files == "trainaug.txt"
    assert (ds.split, ds.name) == ("trainaug", "voc-trainaug")
    assert torch.equal(ds[0][1], torch.from_numpy(_label(30).astype(np.int64)))  # from SegmentationClassAug
    mm = _voc_tree(
        tmp_path / "mm" / "VOCdevkit" / "VOC2012",
        "devkit",
        {"train": ["b", "a"], "aug": ["d", "a", "c"], "val": ["b"]},
        aug,
    )
    ds = build_segmentation("voc", tmp_path / "mm", "trainaug")
    assert ds.ids == ["a", "b", "c", "d"] and ds.list_files == "train.txt + aug.txt" and ds.name == "voc-trainaug"
    img, mask = ds[1]  # raw items: PIL image, int64 numpy mask; "b" is a train id: its VOC mask (seed = index 1)
    assert img.mode == "RGB" and mask.dtype == np.int64 and np.array_equal(mask, _label(1))
    assert np.array_equal(ds[0][1], _label(0)) and np.array_equal(ds[2][1], _label(30))  # a: VOC; c: SBD
    # the train split of the devkit reads SegmentationClass; Leopart/HB's reads SegmentationClassAug
    assert np.array_equal(build_segmentation("voc", tmp_path / "mm", "train")[0][1], _label(1))
    assert torch.equal(VOCSegmentation(hb, "train")[0][1], torch.from_numpy(_label(31).astype(np.int64)))
    (mm / "ImageSets/Segmentation/train.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"train\.txt"):
        VOCSegmentation(mm.parent.parent, "trainaug")


def test_voc_missing_trainaug_is_an_error_naming_the_files(tmp_path):
    """No trainaug list, or no SegmentationClassAug: an error naming both, never the train split instead."""
    root = _voc_tree(tmp_path / "VOC2012", "devkit", {"train": ["a"], "val": ["b"]}, {"a": 3})
    with pytest.raises(FileNotFoundError, match=r"the list not found.*trainaug\.txt.*aug\.txt.*SegmentationClassAug"):
        VOCSegmentation(tmp_path, "trainaug")
    (root / "ImageSets/Segmentation/trainaug.txt").write_text("a\n")
    assert len(VOCSegmentation(tmp_path, "trainaug")) == 1
    (root / "SegmentationClassAug/a.png").unlink()
    (root / "SegmentationClassAug").rmdir()
    with pytest.raises(FileNotFoundError, match=r"the masks not found.*SegmentationClassAug"):
        VOCSegmentation(tmp_path, "trainaug")
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Segmentation/test\.txt"):
        VOCSegmentation(tmp_path, "test")


def test_toy_trainaug_is_the_train_split_with_the_same_masks(tmp_path):
    """The built-in toy layout writes mmseg's lists (trainaug.txt = aug.txt = train) and SegmentationClassAug
    (the same labels as index PNGs), so the protocols' default trainaug reads exactly the train images and
    masks (mmseg's rule: train ids from SegmentationClass)."""
    from franca.data.datasets import build_segmentation
    from franca.data.toy import generate_toy

    root = generate_toy(
        tmp_path / "toy", size=16, n_train=4, n_val=2, n_seg=(3, 2), n_depth=(2, 2), n_pairs=(2, 2, 2), progress=False
    )
    aug, train = build_segmentation("voc", root, "trainaug"), build_segmentation("voc", root, "train")
    assert aug.ids == train.ids and aug.list_files == "train.txt + aug.txt" and aug.name == "voc-trainaug"
    assert aug.class_names == train.class_names and aug.class_names[0] == "background" and aug.num_classes == 11
    for i in range(len(aug)):
        assert np.array_equal(aug[i][1], train[i][1]) and aug.mask_paths[i].parent.name == "SegmentationClass"


def test_voc_class_names_from_classes_or_labels_txt(tmp_path):
    """classes.txt or labels.txt beside the data: one name per line, `id,name` keeps the name."""
    from franca.data.datasets import VOC_CLASSES

    base = _voc_tree(tmp_path / "VOC2012", "devkit", {"val": ["a"]})
    assert VOCSegmentation(tmp_path, "val").classes == VOC_CLASSES and len(VOC_CLASSES) == 21
    (base / "labels.txt").write_text("0,background\n1, red disk\n\n")
    assert VOCSegmentation(tmp_path, "val").class_names == ("background", "red disk")
    (base / "classes.txt").write_text("bg\nthing\nother\n")  # classes.txt first
    ds = VOCSegmentation(tmp_path, "val")
    assert ds.classes == ("bg", "thing", "other") and ds.num_classes == 3


@pytest.mark.parametrize(
    "where,layout",
    [
        ("VOCdevkit/VOC2012", "devkit"),
        ("VOC2012", "devkit"),
        ("", "devkit"),
        ("VOCSegmentation", "leopart"),
        ("", "leopart"),
    ],
)
def test_voc_every_layout_variant_is_detected(tmp_path, where, layout):
    base = _voc_tree(tmp_path / where if where else tmp_path, layout, {"val": ["a", "b"]})
    from franca.data.datasets.voc import voc_image_dir

    ds = VOCSegmentation(tmp_path, "val")
    assert (ds.layout, ds.base, len(ds)) == (layout, base, 2)
    assert voc_image_dir(tmp_path) == ds.image_dir == base / ("JPEGImages" if layout == "devkit" else "images")


def _ade_tree(base, raw):
    _rgb(base / "images" / "validation" / "ADE_val_00000001.jpg", h=raw.shape[0], w=raw.shape[1])
    (base / "annotations" / "validation").mkdir(parents=True)
    Image.fromarray(raw).save(base / "annotations" / "validation" / "ADE_val_00000001.png")


def test_ade20k_mmseg_150_ignore_255_vs_hb_151_ignore_0(tmp_path):
    """reduce_zero_label=True: 150 classes, ignore 255; False (HB): 151 classes, 0 = other ignored; the root
    may be ADEChallengeData2016 or its parent; build_segmentation passes the choice through."""
    from franca.data.datasets import build_segmentation

    raw = np.array([[0, 1, 150], [2, 0, 75]], dtype=np.uint8)
    base = tmp_path / "ADEChallengeData2016"
    _ade_tree(base, raw)
    for root in (tmp_path, base):
        mm, hb = ADE20K(root, "val", reduce_zero_label=True), ADE20K(root, "val", reduce_zero_label=False)
        assert (mm.num_classes, mm.ignore_index, hb.num_classes, hb.ignore_index) == (150, 255, 151, 0)
        assert mm[0][1].tolist() == [[255, 0, 149], [1, 255, 74]] and hb[0][1].tolist() == raw.tolist()
    raw_hb = build_segmentation("ade20k", tmp_path, "val", reduce_zero_label=False)
    assert (raw_hb.num_classes, raw_hb.ignore_index, raw_hb.name) == (151, 0, "ade20k-val")
    assert np.array_equal(raw_hb[0][1], raw.astype(np.int64))
    with pytest.raises(FileNotFoundError, match="ADEChallengeData2016"):
        ADE20K(tmp_path / "nothing", "val")


def test_mask_rule_rgb_equal_channels_read_colour_coded_refused(tmp_path):
    """One mask rule for every reader: an index mask saved as RGB reads from its first channel; a colour
    mask (channels differ) is refused naming the file; 16-bit index PNGs read when values fit in 8 bits."""
    from franca.data.datasets.folder import CorruptImageError
    from franca.data.datasets.pairs import load_label_png

    raw = np.array([[0, 1, 150], [2, 0, 75]], dtype=np.uint8)
    base = tmp_path / "ADEChallengeData2016"
    _ade_tree(base, raw)
    png = base / "annotations" / "validation" / "ADE_val_00000001.png"
    Image.fromarray(np.repeat(raw[..., None], 3, axis=2)).save(png)
    assert ADE20K(tmp_path, "val", reduce_zero_label=False)[0][1].tolist() == raw.tolist()
    Image.fromarray(raw.astype(np.uint16)).save(png)  # a 16-bit PNG
    assert Image.open(png).mode.startswith("I") and np.array_equal(np.asarray(load_label_png(png)), raw)
    Image.fromarray(np.full((2, 3), 300, np.uint16)).save(png)
    with pytest.raises(CorruptImageError, match="ADE_val_00000001.png.*outside 0..255"):
        load_label_png(png)
    colour = np.stack([raw, raw, np.zeros_like(raw)], axis=2)
    Image.fromarray(colour).save(png)
    with pytest.raises(ValueError, match=r"ADE_val_00000001\.png has mode RGB with differing channels"):
        ADE20K(tmp_path, "val")[0]
    _rgb(base / "images" / "validation" / "ADE_val_00000001.jpg", h=4, w=4)  # now 4x4 against a 3x2 mask
    Image.fromarray(raw).save(png)
    with pytest.raises(ValueError, match="ADE_val_00000001.jpg is 4x4 px but its mask .* is 3x2 px"):
        ADE20K(tmp_path, "val")[0]


def _coco_tree(root, img_parent, mask_parent, cat_dir, cats, split="val2017", mask_name="semantic_segmentation"):
    (root / mask_parent / f"{mask_name}_{split}").mkdir(parents=True)
    (root / cat_dir).mkdir(parents=True, exist_ok=True)
    (root / cat_dir / "panoptic_val2017.json").write_text(json.dumps({"categories": cats}))
    mask = np.array([[1, 18, 92, 0]], np.uint8)
    Image.fromarray(mask).save(root / mask_parent / f"{mask_name}_{split}" / "000139.png")
    _rgb(root / img_parent / split / "000139.jpg", h=1, w=4)


_CATS = [
    {"id": 1, "isthing": 1, "supercategory": "person"},
    {"id": 18, "isthing": 1, "supercategory": "animal"},
    {"id": 92, "isthing": 0, "supercategory": "textile"},
]


@pytest.mark.parametrize(
    "img_parent,mask_parent,cat_dir,mask_name",
    [
        ("images", "annotations/panoptic_annotations", "annotations/panoptic_annotations", "semantic_segmentation"),
        ("coco/images", "annotations", "annotations/panoptic_annotations", "semantic_segmentation"),
        ("", "annotations", "annotations", "semantic_segmenations"),
        ("images", "annotations/panoptic_annotations", "annotations", "semantic_segmenations"),
    ],
)
def test_coco_every_layout_variant_is_detected(tmp_path, img_parent, mask_parent, cat_dir, mask_name):
    from franca.data.datasets import build_segmentation

    _coco_tree(tmp_path, img_parent, mask_parent, cat_dir, _CATS, mask_name=mask_name)
    for split in ("val", "val2017"):
        ds = build_segmentation("coco-things", tmp_path, split)
        assert (ds.split, ds.name, ds.num_classes, ds.ignore_index) == ("val2017", "coco-things-val2017", 12, 255)
        assert np.array_equal(ds[0][1], [[9, 1, 255, 255]])  # person 9, animal 1; stuff, unlabelled 255
    assert COCOThings(tmp_path, "val")[0][1].tolist() == [[9, 1, 255, 255]]


def test_coco_things_lookup_refuses_out_of_range_ids_and_unknown_supercategories(tmp_path):
    from franca.data.datasets.coco import COCO_THING_SUPERCATEGORIES, things_lookup

    lut, names = things_lookup(_CATS + [{"id": 255, "isthing": 1, "supercategory": "vehicle"}])
    assert names == COCO_THING_SUPERCATEGORIES and (lut[1], lut[18], lut[92], lut[0], lut[255]) == (9, 1, 255, 255, 11)
    with pytest.raises(ValueError, match="COCO category id 256 out of range 1..255"):
        things_lookup([{"id": 256, "isthing": 1, "supercategory": "person"}])
    with pytest.raises(ValueError, match="COCO category id 0 out of range"):
        things_lookup([{"id": 0, "isthing": 1, "supercategory": "person"}])
    with pytest.raises(ValueError, match="supercategory 'textile'"):
        things_lookup([{"id": 5, "isthing": 1, "supercategory": "textile"}])
    _coco_tree(tmp_path, "images", "annotations", "annotations", [{"id": 300, "isthing": 1, "supercategory": "food"}])
    with pytest.raises(ValueError, match="300 out of range"):
        COCOThings(tmp_path, "val")


def test_build_segmentation_items_follow_the_segmentation_set_protocol(tmp_path):
    """The protocols read (PIL image, int64 numpy mask) items and num_classes/ignore_index/class_names/name."""
    from franca.data.datasets import SegmentationSet, build_segmentation

    _voc_tree(tmp_path / "VOCdevkit/VOC2012", "devkit", {"val": ["a"]})
    ds = build_segmentation("voc", tmp_path, "val")
    assert isinstance(ds, SegmentationSet) and isinstance(ds, VOCSegmentation) and ds.class_names[15] == "person"
    img, mask = ds[0]
    assert isinstance(img, Image.Image) and img.size == (7, 5) and mask.dtype == np.int64 and mask.shape == (5, 7)
    with pytest.raises(ValueError, match="unknown data set 'kitti'"):
        build_segmentation("kitti", tmp_path, "val")
    with pytest.raises(ValueError, match="--data is required for ade20k"):
        build_segmentation("ade20k", None, "val")


def test_voc_mmseg_trainaug_needs_no_sbd_mask_for_train_only_ids(tmp_path):
    """mmseg's voc_aug.py writes SBD masks only (SegmentationClassAug lacks VOC-train ids that SBD does not
    have) and both trainaug.txt and aug.txt: trainaug then reads train.txt + aug.txt, each from its own
    folder, instead of failing on the first train-only id in SegmentationClassAug."""
    mm = _voc_tree(
        tmp_path / "VOCdevkit" / "VOC2012",
        "devkit",
        {"train": ["t1", "t2"], "aug": ["s1", "s2"], "trainaug": ["s1", "s2", "t1", "t2"], "val": ["v"]},
        {"s1": 40, "s2": 41, "t1": 42},
    )  # t2 is in VOC train only: no SBD mask
    ds = VOCSegmentation(tmp_path, "trainaug")
    assert ds.ids == ["s1", "s2", "t1", "t2"] and len(ds) == 4
    assert [p.parent.name for p in ds.mask_paths] == ["SegmentationClassAug"] * 2 + ["SegmentationClass"] * 2
    assert torch.equal(ds[3][1], torch.from_numpy(_label(3).astype(np.int64)))  # t2: its VOC mask (index 3)
    (mm / "ImageSets/Segmentation/aug.txt").unlink()  # DeepLab-style: trainaug.txt, every mask from Aug
    with pytest.raises(FileNotFoundError, match=r"SegmentationClassAug/t2\.png"):
        VOCSegmentation(tmp_path, "trainaug")


# ---------------------------------------------------------------- masks
def test_a_mask_saved_with_an_alpha_channel_reads_its_indices(tmp_path):
    """An index mask saved as LA (grey + alpha) was read by the old dense reader from its first channel and
    refused by the consolidated one; it is read again (the alpha dropped)."""
    from franca.data.datasets.pairs import load_label_png

    labels = np.array([[0, 1, 15], [20, 255, 3]], np.uint8)
    Image.fromarray(labels, "L").convert("LA").save(tmp_path / "m.png")
    np.testing.assert_array_equal(np.asarray(load_label_png(tmp_path / "m.png")), labels)
