"""Regressions found by the audit of the shared `evaluate()` arguments and the segmentation readers (#20),
each checked on a tiny layout or a stub backbone: what a first-day user of the Python API and the eval
commands runs into."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from franca.eval import incontext, linseg, overcluster
from franca.eval.common import EvalArgs

COLOURS = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30]], np.uint8)


class ColourBackbone(nn.Module):
    """Patch token = mean RGB of its 4×4 patch: colour decides the class, so the protocols score well."""

    patch_size, embed_dim = 4, 3

    def forward_features(self, x, use_rasa_head=False):
        return {"x_norm_patchtokens": F.avg_pool2d(x, 4).flatten(2).transpose(1, 2)}


def _quadrants(rng) -> tuple[np.ndarray, np.ndarray]:
    """A 32×32 image of four coloured quadrants (classes 0-3 in a shuffled order) and its mask, 255 on row 0."""
    mask = np.zeros((32, 32), np.uint8)
    for q, c in enumerate(rng.permutation(4)):
        mask[(q // 2) * 16 : (q // 2 + 1) * 16, (q % 2) * 16 : (q % 2 + 1) * 16] = c
    img = COLOURS[mask]
    mask[0] = 255
    return img, mask


def _voc_devkit(root, n_train=4, n_val=3):
    """A VOC devkit with trainaug.txt and SegmentationClassAug (L masks), val masks as palette PNGs, and a
    classes.txt of the 4 colours (as the built-in toy set writes one)."""
    voc = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (voc / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    ids = [f"2007_{i:06d}" for i in range(n_train + n_val)]
    for i in ids:
        img, mask = _quadrants(rng)
        Image.fromarray(img).save(voc / "JPEGImages" / f"{i}.jpg", quality=95)
        palette = Image.fromarray(mask, "P")
        palette.putpalette([v for k in range(256) for v in ((k * 37) % 256, (k * 91) % 256, (k * 53) % 256)])
        palette.save(voc / "SegmentationClass" / f"{i}.png")
        Image.fromarray(mask, "L").save(voc / "SegmentationClassAug" / f"{i}.png")
    (voc / "classes.txt").write_text("red\ngreen\nblue\nyellow\n")
    sets = voc / "ImageSets" / "Segmentation"
    (sets / "train.txt").write_text("\n".join(ids[:n_train]) + "\n")
    (sets / "trainaug.txt").write_text("\n".join(ids[:n_train]) + "\n")
    (sets / "val.txt").write_text("\n".join(ids[n_train:]) + "\n")
    return root


# ---------------------------------------------------------------- EvalArgs / protocol_entry
def test_eval_args_default_seeds_leave_each_protocol_its_own():
    """EvalArgs() used to hand seeds=(0,) to every protocol, so overclustering ran one seed instead of its
    five (Leopart's); left at None it is omitted, as its docstring says of every default."""
    assert EvalArgs().seeds is None
    for fn in (overcluster.evaluate, incontext.evaluate):
        assert "seeds" not in EvalArgs(data="root", size=64).kwargs_for(fn)
    assert EvalArgs(seeds=[3]).kwargs_for(overcluster.evaluate)["seeds"] == (3,)
    with pytest.raises(ValueError, match="seeds is empty"):
        EvalArgs(seeds=[])


# ---------------------------------------------------------------- the dense protocols' data
def test_overclustering_refuses_a_train_val_pair_clearly():
    """EvalArgs(data=(train, val)) handed to every protocol reached overclustering as a pair and failed with
    'too many values to unpack'; now one line says to pass the one set it clusters."""
    with pytest.raises(ValueError, match=r"clusters one set.*not a \(train, val\) pair"):
        overcluster.evaluate(ColourBackbone(), ([], []), device="cpu")


def test_dense_protocols_read_a_reader_built_with_its_default_transform(tmp_path):
    """VOCSegmentation(root, split) (default JointToTensor) is the one VOC reader, so users pass it; the dense
    protocols failed inside PIL/torch ('Tensor' object has no attribute 'crop'). They now read its raw items:
    the same numbers as from the root."""
    from franca.data.datasets import VOCSegmentation

    root = _voc_devkit(tmp_path)
    kw = dict(size=32, device="cpu", ks=(4,), seeds=(0,), pca_dim=3, niter=10, nredo=1, mask_size=16, progress=False)
    from_root = overcluster.evaluate(ColourBackbone(), root, **kw)
    val = VOCSegmentation(root, "val")
    from_reader = overcluster.evaluate(ColourBackbone(), val, **kw)
    assert from_reader["metric"] == from_root["metric"] > 0.3  # colour decides the class: well above chance
    assert isinstance(val[0][0], torch.Tensor)  # the caller's reader keeps its transform

    kw = dict(size=32, device="cpu", seeds=(0,), progress=False)
    pair = (VOCSegmentation(root, "trainaug"), VOCSegmentation(root, "val"))
    assert (
        incontext.evaluate(ColourBackbone(), pair, **kw)["metric"]
        == incontext.evaluate(ColourBackbone(), root, **kw)["metric"]
    )


def test_dense_protocols_name_what_to_pass_for_transformed_items(tmp_path):
    from franca.data.datasets import VOCSegmentation
    from franca.data.datasets.transforms import JointCompose, JointToTensor

    root = _voc_devkit(tmp_path, n_train=1, n_val=1)
    custom = VOCSegmentation(root, "val", transforms=JointCompose([JointToTensor()]))
    with pytest.raises(ValueError, match=r"joint transform .*transforms=franca\.data\.datasets\.pairs\.raw_pair"):
        overcluster.evaluate(ColourBackbone(), custom, device="cpu")

    class Tensors:
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return torch.zeros(3, 32, 32), np.zeros((32, 32), np.int64)

    with pytest.raises(ValueError, match=r"Tensors\[0\] holds a Tensor image.*raw \(PIL RGB image, mask\)"):
        overcluster.evaluate(ColourBackbone(), Tensors(), device="cpu")


def test_linseg_refuses_a_dataset_name_that_contradicts_the_data():
    """ADE20K sets passed without dataset_name="ade20k" silently trained with VOC's recipe (SGD, one test
    scale); the set's name now has to agree with dataset_name when no config is given."""

    class Ade:
        num_classes, ignore_index, name, split = 3, 255, "ade20k-val", "val"

        def __len__(self):
            return 1

        def __getitem__(self, i):
            return Image.new("RGB", (32, 32)), np.zeros((32, 32), np.int64)

    with pytest.raises(ValueError, match=r"val set is ade20k \(ade20k-val\) but dataset_name='voc'.*'ade20k'"):
        linseg.evaluate(ColourBackbone(), (Ade(), Ade()), device="cpu")


# ---------------------------------------------------------------- masks
def test_a_mask_saved_with_an_alpha_channel_reads_its_indices(tmp_path):
    """An index mask saved as LA (grey + alpha) was read by the old dense reader from its first channel and
    refused by the consolidated one; it is read again (the alpha dropped)."""
    from franca.data.datasets.pairs import load_label_png

    labels = np.array([[0, 1, 15], [20, 255, 3]], np.uint8)
    Image.fromarray(labels, "L").convert("LA").save(tmp_path / "m.png")
    np.testing.assert_array_equal(np.asarray(load_label_png(tmp_path / "m.png")), labels)


# ---------------------------------------------------------------- help texts
def _help(command: str) -> dict[str, str]:
    from franca import cli

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["eval"]
    p = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {a.dest: a.help or "" for a in p._actions if a.help != argparse.SUPPRESS}  # not the hidden aliases


def test_dense_help_names_only_the_layouts_each_command_reads():
    """overcluster's --data help named ADEChallengeData2016 (it offers voc and coco-things only) and linseg's
    named COCO; linseg's --batch-size claimed 'images per forward pass' but is not read."""
    oc, ic, ls = _help("overcluster"), _help("incontext"), _help("linseg")
    assert "ADEChallengeData2016" not in oc["data"] and "coco/images" in oc["data"] and "VOCdevkit" in oc["data"]
    assert all(x in ic["data"] for x in ("VOCdevkit", "ADEChallengeData2016", "coco/images"))
    assert "coco" not in ls["data"] and "ADEChallengeData2016" in ls["data"]
    assert ls["batch_size"].startswith("not used by linseg") and "--train-batch-size" in ls["batch_size"]


def test_a_data_set_name_given_as_the_root_says_where_it_goes(tmp_path, monkeypatch):
    """overcluster.evaluate(model, "coco-things") (the old `dataset=` keyword read as a name) said only 'data
    root not found: coco-things'; the error now says the name belongs in dataset_name= / --dataset."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"'coco-things' names a data set: give it as dataset_name= / --data"):
        overcluster.evaluate(ColourBackbone(), "coco-things", device="cpu")


def test_a_root_of_another_layout_names_the_data_set_to_ask_for(tmp_path):
    """incontext.evaluate(model, ADE_ROOT) without dataset_name="ade20k" said only that no Pascal VOC was
    found; the error now names the data set the folder holds."""
    from franca.data.datasets.segmentation import build_segmentation

    for sub in ("images/validation", "annotations/validation"):
        (tmp_path / "ade" / "ADEChallengeData2016" / sub).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"Pascal VOC not found.*holds ade20k: pass dataset_name='ade20k'"):
        incontext.evaluate(ColourBackbone(), tmp_path / "ade", device="cpu")
    root = _voc_devkit(tmp_path / "voc", n_train=1, n_val=1)
    with pytest.raises(FileNotFoundError, match=r"holds voc: pass dataset_name='voc' / --dataset voc"):
        build_segmentation("coco-things", root, "val")
    with pytest.raises(FileNotFoundError, match=r"holds ade20k: pass dataset_name='ade20k'"):
        build_segmentation("coco-things", tmp_path / "ade", "val")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"COCO val2017 images") as info:
        build_segmentation("coco-things", tmp_path / "empty", "val")  # nothing recognisable: no hint
    assert "pass dataset_name" not in str(info.value)


@pytest.mark.parametrize("command", ["incontext", "linseg"])
def test_a_command_on_another_layout_names_dataset_not_train_split(tmp_path, capsys, command):
    """`franca eval incontext --data ADE_ROOT` (no --dataset) blamed the default --train-split; the val split
    is read first, so the error names --dataset ade20k and not --train-split."""
    from franca.cli import main

    for sub in ("images/validation", "annotations/validation"):
        (tmp_path / "ADEChallengeData2016" / sub).mkdir(parents=True)
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
            str(tmp_path),
            "--size",
            "32",
            "--out",
            str(tmp_path / "r.json"),
        ]
    )
    err = capsys.readouterr().err
    assert rc != 0 and "--dataset ade20k" in err and "--train-split" not in err
