"""Leopart overclustering: preprocessing, cluster maps → confusion, and the whole protocol on a
constructed set where colour decides the class."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers.dense import MeanColourBackbone, _voc_devkit
from PIL import Image

from franca.eval import incontext, overcluster
from franca.eval.overcluster import cluster_confusion, standardize_pca


class ColourBackbone(nn.Module):
    """Patch token = mean RGB of the patch, or noise (an "untrained" model)."""

    def __init__(self, noise: bool = False) -> None:
        super().__init__()
        self.patch_size, self.embed_dim, self.noise = 4, 3, noise

    def forward_features(self, x, use_rasa_head=False):
        t = F.avg_pool2d(x, 4).flatten(2).transpose(1, 2)
        return {"x_norm_patchtokens": torch.randn(t.shape) if self.noise else t}


class Blocks:
    """32×32 images split into 4 quadrant blocks of classes 0-3 (shuffled), each a fixed colour,
    with a 255 stripe on row 0."""

    num_classes, ignore_index, name = 4, 255, "blocks"
    colours = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30]], np.uint8)

    def __init__(self, n: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.items = []
        for _ in range(n):
            perm = rng.permutation(4)
            mask = np.zeros((32, 32), np.int64)
            for q, c in enumerate(perm):
                mask[(q // 2) * 16 : (q // 2 + 1) * 16, (q % 2) * 16 : (q % 2 + 1) * 16] = c
            img = self.colours[mask] + rng.integers(0, 10, (32, 32, 3)).astype(np.uint8)
            mask[0] = 255
            self.items.append((Image.fromarray(img), mask))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_standardize_pca_whitens_and_reduces():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(500, 8)) * np.arange(1, 9) + 5).astype(np.float32)
    z = standardize_pca(x, 3)
    assert z.shape == (500, 3)
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)  # centred data stay centred after a rotation
    var = z.var(0)
    assert np.all(np.diff(var) <= 1e-4)  # components sorted by variance


def test_cluster_confusion_resizes_maps_nearest():
    """One image, 2×2 cluster grid [[0, 1], [1, 2]] upsampled (nearest) to a 4×4 mask: each cluster
    cell covers a 2×2 block. Mask: top half class 0, bottom half class 1, one pixel 255.
    GT 0 (7 valid pixels): cluster 0 ×4 minus the ignored one = 3, cluster 1 ×4 → row [3, 4, 0];
    GT 1: cluster 1 ×4, cluster 2 ×4 → row [0, 4, 4]."""
    assign = np.array([0, 1, 1, 2])
    masks = torch.tensor([[[255, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]])
    conf = cluster_confusion(assign, (2, 2), masks, k=3, num_classes=2)
    np.testing.assert_array_equal(conf.numpy(), [[3, 4, 0], [0, 4, 4]])


def test_overcluster_finds_colour_classes_and_beats_noise():
    data = Blocks(8)
    res = overcluster.evaluate(
        ColourBackbone(),
        data,
        device="cpu",
        size=32,
        ks=(None, 8),
        seeds=(0, 1),
        pca_dim=3,
        niter=20,
        nredo=5,
        mask_size=16,
    )
    assert res["protocol"] == "overcluster" and res["settings"]["ks"] == [4, 8]
    # colour alone decides the class; patches never straddle two blocks (4 px patches, 16 px blocks)
    assert res["results"]["4"]["miou"]["mean"] == pytest.approx(1.0)
    assert res["results"]["8"]["miou"]["mean"] == pytest.approx(1.0)
    assert res["results"]["8"]["matching"] == "greedy"
    noise = overcluster.evaluate(
        ColourBackbone(noise=True),
        data,
        device="cpu",
        size=32,
        ks=(None,),
        seeds=(0,),
        pca_dim=3,
        niter=10,
        nredo=1,
        mask_size=16,
    )
    assert noise["metric"] < 0.5


def test_too_many_clusters_is_a_clear_error():
    with pytest.raises(ValueError, match="K-means with K=50"):
        overcluster.kmeans_assign(np.zeros((10, 3), np.float32), 50, 0)


# ---------------------------------------------------------------- readers (franca.eval.dense) and commands
def _write_voc(root, n=4, size=32):
    """A tiny Pascal VOC devkit: palette-free index PNGs, 255 boundaries, split files."""
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    data = Blocks(n)
    names = [f"2007_{i:06d}" for i in range(n)]
    for name, (img, mask) in zip(names, data.items):
        img.resize((size, size)).save(voc / "JPEGImages" / f"{name}.jpg")
        Image.fromarray(np.where(mask == 255, 255, mask * 5).astype(np.uint8)).resize((size, size), Image.NEAREST).save(
            voc / "SegmentationClass" / f"{name}.png"
        )
    for split in ("train", "val"):
        (voc / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def test_voc_reader_reads_devkit_layout_and_refuses_a_missing_trainaug(tmp_path):
    from franca.eval.dense import build_segmentation

    root = _write_voc(tmp_path)
    # no trainaug list and no SegmentationClassAug: an error naming them, never the train split instead
    with pytest.raises(FileNotFoundError, match=r"list and the masks not found.*trainaug\.txt.*SegmentationClassAug"):
        build_segmentation("voc", root, "trainaug")
    ds = build_segmentation("voc", root, "train")
    assert (len(ds), ds.num_classes, ds.ignore_index, ds.name) == (4, 21, 255, "voc-train")
    img, mask = ds[0]
    assert img.size == (32, 32) and mask.dtype == np.int64 and set(np.unique(mask)) <= {0, 5, 10, 15, 255}
    with pytest.raises(FileNotFoundError, match="VOCdevkit"):
        build_segmentation("voc", tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages", "val")


def test_ade20k_and_coco_things_label_maps(tmp_path):
    import json

    from franca.eval.dense import build_segmentation

    ade = tmp_path / "ADEChallengeData2016"
    for sub in ("images/validation", "annotations/validation"):
        (ade / sub).mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(ade / "images/validation/ADE_val_00000001.jpg")  # the mask's size
    Image.fromarray(np.array([[0, 1, 150, 7]] * 4, np.uint8)).save(ade / "annotations/validation/ADE_val_00000001.png")
    hb = build_segmentation("ade20k", tmp_path, "val")
    assert (hb.num_classes, hb.ignore_index) == (151, 0)  # HB: 0 = "other", ignored
    np.testing.assert_array_equal(hb[0][1][0], [0, 1, 150, 7])
    mm = build_segmentation("ade20k", tmp_path, "val", reduce_zero_label=True)
    assert (mm.num_classes, mm.ignore_index) == (150, 255)  # mmseg: 0 → 255, k → k-1
    np.testing.assert_array_equal(mm[0][1][0], [255, 0, 149, 6])

    coco = tmp_path / "coco_root"
    (coco / "coco/images/val2017").mkdir(parents=True)
    (coco / "annotations/semantic_segmentation_val2017").mkdir(parents=True)
    (coco / "annotations/panoptic_annotations").mkdir(parents=True)
    cats = [
        {"id": 1, "isthing": 1, "supercategory": "person"},
        {"id": 18, "isthing": 1, "supercategory": "animal"},
        {"id": 92, "isthing": 0, "supercategory": "textile"},
    ]
    (coco / "annotations/panoptic_annotations/panoptic_val2017.json").write_text(json.dumps({"categories": cats}))
    Image.new("RGB", (4, 1)).save(coco / "coco/images/val2017/000000000139.jpg")
    Image.fromarray(np.array([[1, 18, 92, 0]], np.uint8)).save(
        coco / "annotations/semantic_segmentation_val2017/000000000139.png"
    )
    things = build_segmentation("coco-things", coco, "val")
    # person → 9, animal → 1 (alphabetical supercategories); stuff and unlabelled → 255
    np.testing.assert_array_equal(things[0][1], [[9, 1, 255, 255]])


@pytest.mark.parametrize(
    "command,extra",
    [
        ("overcluster", ["--ks", "0", "8", "--niter", "5", "--nredo", "1", "--matching", "hungarian-below"]),
        ("incontext", ["--k", "5", "--train-split", "train"]),  # this devkit has no trainaug (SBD) part
        ("linseg", ["--epochs", "1", "--cache-views", "1", "--train-split", "train"]),
    ],
)
def test_commands_write_a_result_json(tmp_path, command, extra):
    import json

    from franca.cli import main

    root = _write_voc(tmp_path / "data")
    out = tmp_path / f"{command}.json"
    rc = main(
        [
            "eval",
            command,
            "--model",
            "vitt8",
            "--random-init",
            "--device",
            "cpu",
            "--data",
            str(root),
            "--size",
            "32",
            "--num-workers",
            "0",
            "--batch-size",
            "4",
            "--seeds",
            "0",
            "--out",
            str(out),
            *extra,
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["protocol"] == command and 0.0 <= res["metric"] <= 1.0 and len(res["per_class_iou"]) == 21
    if command == "overcluster":  # K = 21 = C: Hungarian under either rule; K = 8 < C: Hungarian when asked
        assert res["settings"]["matching"] == "hungarian-below"
        assert [res["results"][k]["matching"] for k in ("21", "8")] == ["hungarian", "hungarian"]


# ---------------------------------------------------------------- matching rule (Leopart's sup_overcluster.py)
def _score(conf, k, c, matching="leopart"):
    from franca.eval.metrics import matched_miou

    return matched_miou(np.array(conf), overcluster.matching_mode(k, c, matching))


def test_matching_k_below_c_is_greedy_by_precision():
    """K=2 clusters, C=3 classes, conf (GT rows × clusters) = [[5, 5], [4, 0], [0, 4]].
    Leopart (greedy by precision): cluster 0 (9 px) → class 0 (5/9 > 4/9), cluster 1 (9 px) → class 0
    (5/9 > 4/9): class 0 TP 10, FP 8, FN 0 → 10/18; classes 1, 2 → 0; mIoU 5/27.
    Hungarian on IoU: IoU(c0,g0) = 5/14, (c0,g1) = 4/9, (c1,g0) = 5/14, (c1,g2) = 4/9 → c0 → 1, c1 → 2
    (8/9 > 5/14 + 4/9): class 0 → 0, classes 1, 2 → 4/(9+4-4) = 4/9; mIoU 8/27."""
    conf = [[5, 5], [4, 0], [0, 4]]
    assert overcluster.matching_mode(2, 3) == "greedy"
    r = _score(conf, 2, 3)
    assert r["mapping"] == [0, 0] and r["miou"] == pytest.approx(5 / 27)
    assert overcluster.matching_mode(2, 3, "hungarian-below") == "hungarian"
    h = _score(conf, 2, 3, "hungarian-below")
    assert h["mapping"] == [1, 2] and h["miou"] == pytest.approx(8 / 27)


def test_matching_k_equal_c_is_hungarian():
    """K=C=3, conf = [[5, 4, 0], [1, 3, 0], [0, 0, 6]]. Greedy would send clusters 0 and 1 to class 0
    (5/6, 4/7); Hungarian on IoU keeps them apart: IoU(c0,g0) + IoU(c1,g1) = 5/10 + 3/8 beats
    1/9 + 4/12. IoUs 1/2, 3/8, 1 → mIoU 0.625, under either rule."""
    conf = [[5, 4, 0], [1, 3, 0], [0, 0, 6]]
    for rule in overcluster.MATCHING_RULES:
        assert overcluster.matching_mode(3, 3, rule) == "hungarian"
        r = _score(conf, 3, 3, rule)
        assert r["mapping"] == [0, 1, 2] and r["miou"] == pytest.approx(0.625)


def test_matching_k_above_c_is_greedy_with_first_class_on_ties():
    """K=4, C=2, conf = [[3, 0, 2, 1], [1, 4, 2, 0]]. Precision: cluster 0 → 0 (3/4), 1 → 1 (4/4),
    2 → a tie 2/4 : 2/4, Leopart keeps the first class (strict >) → 0, 3 → 0 (1/1). Merged:
    class 0 ← [6, 3], class 1 ← [0, 4]: IoU 6/(9+6-6) = 2/3, 4/(4+7-4) = 4/7."""
    conf = [[3, 0, 2, 1], [1, 4, 2, 0]]
    for rule in overcluster.MATCHING_RULES:
        assert overcluster.matching_mode(4, 2, rule) == "greedy"
        r = _score(conf, 4, 2, rule)
        assert r["mapping"] == [0, 1, 0, 0] and r["miou"] == pytest.approx((2 / 3 + 4 / 7) / 2)
    assert overcluster.matching_mode(4, 2, refine_hungarian=True) == "greedy+hungarian"
    with pytest.raises(ValueError, match="matching 'nearest'"):
        overcluster.matching_mode(4, 2, "nearest")


def test_overcluster_scores_report_the_rule_per_k():
    """The pure core records the matching used at K < C, K = C and K > C."""
    data = Blocks(4)
    tokens = np.concatenate(
        [np.asarray(img, np.float32).reshape(8, 4, 8, 4, 3).mean((1, 3)).reshape(-1, 3) for img, _ in data.items]
    )
    masks = torch.stack([torch.from_numpy(m) for _, m in data.items])
    res = overcluster.overcluster_scores(tokens, (8, 8), masks, 4, [2, 4, 8], [0], pca_dim=3, niter=20, nredo=5)
    assert [res[k]["matching"] for k in ("2", "4", "8")] == ["greedy", "hungarian", "greedy"]
    assert res["4"]["miou"]["mean"] == pytest.approx(1.0)


@pytest.mark.parametrize("command", ["incontext", "linseg"])
def test_a_missing_default_trainaug_names_the_flag(tmp_path, capsys, command):
    from franca.cli import main

    root = _write_voc(tmp_path / "data")
    rc = main(
        [
            "eval",
            command,
            "--model",
            "vitt8",
            "--random-init",
            "--device",
            "cpu",
            "--data",
            str(root),
            "--size",
            "32",
            "--out",
            str(tmp_path / "r.json"),
        ]
    )
    err = capsys.readouterr().err
    assert rc != 0 and "SegmentationClassAug" in err and "--train-split train" in err
    assert not (tmp_path / "r.json").exists()


def test_a_k_above_the_token_count_fails_before_any_clustering(monkeypatch):
    """3 images at 32 px with patch 4 give 3 * 64 = 192 tokens: K = 193 is refused before the feature pass,
    so no K's result is computed and then lost."""
    called = []
    monkeypatch.setattr(overcluster, "extract_tokens", lambda *a, **k: called.append(1))
    with pytest.raises(ValueError, match=r"K=193 needs at least K patch tokens.*3 images at size 32 give 192"):
        overcluster.evaluate(ColourBackbone(), Blocks(3), ks=(4, 193), size=32, device="cpu", seeds=(0,))
    assert not called


# ---------------------------------------------------------------- the dense protocols' data
def test_overclustering_refuses_a_train_val_pair_clearly():
    """EvalArgs(data=(train, val)) handed to every protocol reached overclustering as a pair and failed with
    'too many values to unpack'; now one line says to pass the one set it clusters."""
    with pytest.raises(ValueError, match=r"clusters one set.*not a \(train, val\) pair"):
        overcluster.evaluate(MeanColourBackbone(), ([], []), device="cpu")


def test_dense_protocols_read_a_reader_built_with_its_default_transform(tmp_path):
    """VOCSegmentation(root, split) (default JointToTensor) is the one VOC reader, so users pass it; the dense
    protocols failed inside PIL/torch ('Tensor' object has no attribute 'crop'). They now read its raw items:
    the same numbers as from the root."""
    from franca.data.datasets import VOCSegmentation

    root = _voc_devkit(tmp_path)
    kw = dict(size=32, device="cpu", ks=(4,), seeds=(0,), pca_dim=3, niter=10, nredo=1, mask_size=16, progress=False)
    from_root = overcluster.evaluate(MeanColourBackbone(), root, **kw)
    val = VOCSegmentation(root, "val")
    from_reader = overcluster.evaluate(MeanColourBackbone(), val, **kw)
    assert from_reader["metric"] == from_root["metric"] > 0.3  # colour decides the class: well above chance
    assert isinstance(val[0][0], torch.Tensor)  # the caller's reader keeps its transform

    kw = dict(size=32, device="cpu", seeds=(0,), progress=False)
    pair = (VOCSegmentation(root, "trainaug"), VOCSegmentation(root, "val"))
    assert (
        incontext.evaluate(MeanColourBackbone(), pair, **kw)["metric"]
        == incontext.evaluate(MeanColourBackbone(), root, **kw)["metric"]
    )


def test_dense_protocols_name_what_to_pass_for_transformed_items(tmp_path):
    from franca.data.datasets import VOCSegmentation
    from franca.data.datasets.transforms import JointCompose, JointToTensor

    root = _voc_devkit(tmp_path, n_train=1, n_val=1)
    custom = VOCSegmentation(root, "val", transforms=JointCompose([JointToTensor()]))
    with pytest.raises(ValueError, match=r"joint transform .*transforms=franca\.data\.datasets\.pairs\.raw_pair"):
        overcluster.evaluate(MeanColourBackbone(), custom, device="cpu")

    class Tensors:
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return torch.zeros(3, 32, 32), np.zeros((32, 32), np.int64)

    with pytest.raises(ValueError, match=r"Tensors\[0\] holds a Tensor image.*raw \(PIL RGB image, mask\)"):
        overcluster.evaluate(MeanColourBackbone(), Tensors(), device="cpu")


def test_a_data_set_name_given_as_the_root_says_where_it_goes(tmp_path, monkeypatch):
    """overcluster.evaluate(model, "coco-things") (the old `dataset=` keyword read as a name) said only 'data
    root not found: coco-things'; the error now says the name belongs in dataset_name= / --dataset."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"'coco-things' names a data set: give it as dataset_name= / --data"):
        overcluster.evaluate(MeanColourBackbone(), "coco-things", device="cpu")
