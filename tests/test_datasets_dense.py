"""Depth (NYUv2: BTS layout, labelled .mat, Probe3D arrays (.npz)) and SPair-71k readers; the toy set read by them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers.images import Payload
from PIL import Image

from franca.data.datasets import NYUv2Arrays, NYUv2Depth, NYUv2Labeled, SPair71k


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    from franca.data.toy import generate_toy

    return generate_toy(
        tmp_path_factory.mktemp("toy") / "t",
        size=32,
        n_train=10,
        n_val=10,
        n_seg=(2, 2),
        n_depth=(3, 2),
        n_pairs=(2, 2, 6),
        progress=False,
    )


def test_nyu_bts_fixture(tmp_path):
    """uint16 millimetre PNGs → metres; > 10 m → 0 (invalid); train paths with a leading '/'."""
    mm = np.array([[1000, 2500, 0], [12000, 500, 9999]], dtype=np.uint16)
    for split, sub, prefix in (("train", "sync", "/"), ("test", "official_splits/test", "")):
        d = tmp_path / sub / "bathroom"
        d.mkdir(parents=True)
        Image.fromarray(np.full((2, 3, 3), 7, np.uint8)).save(d / "rgb_00045.jpg")
        Image.fromarray(mm).save(d / "sync_depth_00045.png")
        (tmp_path / f"nyudepthv2_{split}_files_with_gt.txt").write_text(
            f"{prefix}bathroom/rgb_00045.jpg {prefix}bathroom/sync_depth_00045.png 518.8579\n"
            f"{prefix}bathroom/rgb_00046.jpg None 518.8579\n"
        )
    for split in ("train", "test"):
        ds = NYUv2Depth(tmp_path, split)
        assert len(ds) == 1
        img, depth = ds[0]
        assert img.shape == (3, 2, 3) and depth.dtype == torch.float32
        np.testing.assert_allclose(depth.numpy(), [[1.0, 2.5, 0.0], [0.0, 0.5, 9.999]], rtol=1e-6)
    with pytest.raises(FileNotFoundError, match="nyudepthv2_train_files_with_gt.txt"):
        NYUv2Depth(tmp_path / "sync", "train")


def test_nyu_labeled_mat_and_arrays(tmp_path):
    """HDF5 .mat stores (N, 3, W, H) / (N, W, H) (MATLAB column order); splits.mat is 1-based."""
    import h5py
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(3, 4, 5, 3), dtype=np.uint8)  # (N, H, W, 3)
    depth = rng.uniform(0.5, 12.0, size=(3, 4, 5)).astype(np.float32)
    with h5py.File(tmp_path / "nyu_depth_v2_labeled.mat", "w") as f:
        f["images"] = imgs.transpose(0, 3, 2, 1)
        f["rawDepths"] = depth.transpose(0, 2, 1)
    savemat(tmp_path / "splits.mat", {"trainNdxs": np.array([[1], [2]]), "testNdxs": np.array([[3]])})
    ds = NYUv2Labeled(tmp_path / "nyu_depth_v2_labeled.mat", "test")
    assert len(ds) == 1
    x, d = ds[0]
    assert torch.equal((x * 255).round().to(torch.uint8), torch.from_numpy(imgs[2]).permute(2, 0, 1))
    np.testing.assert_allclose(d.numpy(), np.where(depth[2] > 10, 0, depth[2]), rtol=1e-6)
    assert len(NYUv2Labeled(tmp_path / "nyu_depth_v2_labeled.mat", "train")) == 2
    np.savez(
        tmp_path / "nyu.npz",
        images=imgs.transpose(0, 3, 1, 2),
        depths=depth[:, None],
        train_indices=[0, 1],
        test_indices=[2],
    )
    x2, d2 = NYUv2Arrays(tmp_path / "nyu.npz", "test")[0]
    assert torch.equal(x2, x) and torch.equal(d2, d)
    with pytest.raises(FileNotFoundError, match="splits.mat"):
        NYUv2Labeled(tmp_path / "nyu_depth_v2_labeled.mat", "test", splits_file=tmp_path / "nope" / "splits.mat")


def test_nyu_reads_toy_output(toy_root):
    """Toy depth: the wall at 8 m on the top row, ground depth falling towards the bottom (JPEG/PNG round trip)."""
    ds = NYUv2Depth(toy_root / "nyuv2", "train")
    assert len(ds) == 3 and len(NYUv2Depth(toy_root / "nyuv2", "test")) == 2
    img, depth = ds[0]
    assert img.shape == (3, 64, 64) and depth.shape == (64, 64)  # dense scenes: 2 x size
    assert torch.all(depth[0] == 8.0) and depth.min() > 0.9 and depth.max() <= 8.0


def _spair_fixture(root):
    sp = root / "SPair-71k"
    for name, val in (("2008_000001", 10), ("2008_000002", 20)):
        (sp / "JPEGImages" / "cat").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((6, 8, 3), val, np.uint8)).save(sp / "JPEGImages" / "cat" / f"{name}.jpg")
    (sp / "PairAnnotation" / "test").mkdir(parents=True)
    for k, vp in enumerate((0, 2)):
        ann = {
            "src_imname": "2008_000001.jpg",
            "trg_imname": "2008_000002.jpg",
            "category": "cat",
            "src_kps": [[1, 2], [3, 4]],
            "trg_kps": [[5, 1], [2, 2]],
            "kps_ids": [0, 7],
            "src_bndbox": [0, 0, 5, 4],
            "trg_bndbox": [1, 1, 7, 5],
            "src_imsize": [8, 6, 3],
            "trg_imsize": [8, 6, 3],
            "viewpoint_variation": vp,
        }
        (sp / "PairAnnotation" / "test" / f"00000{k}-2008_000001-2008_000002:cat.json").write_text(json.dumps(ann))
    return sp


def test_spair_fixture(tmp_path):
    """Pair fields → tensors; viewpoint and category filters; missing fields name the file."""
    _spair_fixture(tmp_path)
    ds = SPair71k(tmp_path, "test")
    assert len(ds) == 2 and ds.categories == ["cat"]
    it = ds[1]
    assert it["src_img"].shape == (3, 6, 8) and it["trg_kps"].tolist() == [[5.0, 1.0], [2.0, 2.0]]
    assert it["kps_ids"].tolist() == [0, 7] and it["trg_bbox"].tolist() == [1, 1, 7, 5]
    assert it["viewpoint_variation"] == 2 and it["trg_imsize"] == (8, 6) and it["category"] == "cat"
    assert len(SPair71k(tmp_path / "SPair-71k", "test", viewpoint=0)) == 1
    with pytest.raises(FileNotFoundError, match="no pair annotations"):
        SPair71k(tmp_path, "test", category="dog")
    f = next((tmp_path / "SPair-71k" / "PairAnnotation" / "test").glob("*.json"))
    f.write_text(json.dumps({"category": "cat"}))
    with pytest.raises(KeyError, match="src_kps"):
        SPair71k(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="trn"):
        SPair71k(tmp_path, "trn")


def test_spair_reads_toy_output(toy_root):
    """Toy pairs: kps inside the images and bboxes, trg = T(src) via the stored toy_transform."""
    ds = SPair71k(toy_root, "test")
    assert len(ds) == 6 and set(ds.categories) >= {"disk", "square"}
    for i in range(len(ds)):
        it = ds[i]
        t = torch.tensor(ds.pairs[i]["toy_transform"])
        mapped = it["src_kps"] @ t[:, :2].T + t[:, 2]
        assert (mapped - it["trg_kps"]).abs().max() < 0.05  # rounding to 0.01 px on both sides
        for key in ("src", "trg"):
            x1, y1, x2, y2 = it[f"{key}_bbox"].tolist()
            k = it[f"{key}_kps"]
            assert ((k[:, 0] >= x1 - 1) & (k[:, 0] <= x2 + 2) & (k[:, 1] >= y1 - 1) & (k[:, 1] <= y2 + 2)).all()
        assert it["viewpoint_variation"] in (0, 1, 2)


def test_npz_with_object_arrays_is_refused(tmp_path):
    from franca.data.datasets import NYUv2Arrays

    marker = tmp_path / "pwned"
    obj = np.empty(1, dtype=object)
    obj[0] = Payload(marker)
    np.savez(tmp_path / "o.npz", images=obj, depths=obj, test_indices=np.array([0]))
    with pytest.raises(ValueError, match="o.npz"):
        NYUv2Arrays(tmp_path / "o.npz", "test")
    assert not marker.exists()
