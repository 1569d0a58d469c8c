"""Hummingbird in-context retrieval: patch labels, hand-computed voting, bounded sampling, and the
whole pipeline against an independent re-computation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers.dense import MeanColourBackbone, _voc_devkit
from PIL import Image

from franca.eval import incontext
from franca.eval.incontext import (
    aggregate_labels,
    bounded_patch_indices,
    build_index,
    build_memory,
    knn_soft_labels,
    patch_label_fractions,
)


class ColourBackbone(nn.Module):
    """Stand-in backbone: patch token = mean normalised RGB of the patch (+ optional noise, which
    plays an untrained model). Honours the backbone interface the protocols use."""

    def __init__(self, patch: int = 4, noise: bool = False) -> None:
        super().__init__()
        self.patch_size, self.embed_dim, self.noise = patch, 3, noise
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward_features(self, x, use_rasa_head=False):
        t = F.avg_pool2d(x, self.patch_size).flatten(2).transpose(1, 2)
        if self.noise:
            t = torch.randn(t.shape, generator=torch.Generator().manual_seed(int(x.sum() * 1e3) % 2**31))
        out = {"x_norm_patchtokens": t}
        if use_rasa_head:
            out["patch_token_rasa"] = t
        return out


class ToySeg:
    """n images 32×32: grey background (class 0), a red square (1) and a green bar (2), random
    positions; a 2-pixel boundary of 255 around the square."""

    num_classes, ignore_index, name = 3, 255, "toyseg"

    def __init__(self, n: int, seed: int) -> None:
        self.items = []
        rng = np.random.default_rng(seed)
        for _ in range(n):
            img = np.full((32, 32, 3), 128, np.uint8)
            mask = np.zeros((32, 32), np.int64)
            y, x = rng.integers(2, 16, 2)
            mask[y - 2 : y + 14, x - 2 : x + 14] = 255
            mask[y : y + 12, x : x + 12] = 1
            img[y : y + 12, x : x + 12] = (220, 20, 20)
            c = rng.integers(0, 24)
            img[26:32, c : c + 8] = (20, 200, 20)
            mask[26:32, c : c + 8] = 2
            self.items.append((Image.fromarray(img), mask))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_patch_label_fractions_golden():
    """4×4 mask, patch 2. Top-left patch [[0,0],[1,1]] → (1/2, 1/2, 0); top-right [[2,2],[2,255]]:
    255 is outside the 3 classes, so (0, 0, 3/4); bottom patches all class 1 / all class 0."""
    m = torch.tensor([[[0, 0, 2, 2], [1, 1, 2, 255], [1, 1, 0, 0], [1, 1, 0, 0]]])
    frac = patch_label_fractions(m, 2, 3)
    expected = torch.tensor([[0.5, 0.5, 0], [0, 0, 0.75], [0, 1, 0], [1, 0, 0]])
    torch.testing.assert_close(frac[0], expected)


def test_nearest_neighbour_voting_by_hand():
    """Memory keys (L2-normalised): m0 = (1, 0) label A, m1 = (0.8, 0.6) label B, m2 = (0, 1) B,
    m3 = (-1, 0) A. Query (2, 0) → normalised (1, 0); k = 2 neighbours m0 (cos 1), m1 (cos 0.8).
    With T = 0.1: weights softmax(10, 8) = (1/(1+e^-2), e^-2/(1+e^-2)) = (0.8808, 0.1192)."""
    mem = np.array([[1, 0], [0.8, 0.6], [0, 1], [-1, 0]], np.float32)
    labels = torch.tensor([[1.0, 0], [0, 1], [0, 1], [1, 0]])
    a = 1 / (1 + math.exp(-2))
    out = knn_soft_labels(build_index(mem, "flat"), labels, torch.tensor([[2.0, 0.0]]), k=2, temperature=0.1)
    torch.testing.assert_close(out, torch.tensor([[a, 1 - a]]))
    # the pure aggregation: equal scores → plain average of the neighbour labels
    torch.testing.assert_close(
        aggregate_labels(torch.tensor([[0.5, 0.5]]), labels[None, :2]), torch.tensor([[0.5, 0.5]])
    )


def test_torch_exact_search_matches_faiss():
    """The torch fallback (GPU without faiss-gpu) returns faiss IndexFlatIP's neighbours; small
    memory chunks exercise the running top-k merge."""
    rng = np.random.default_rng(0)
    mem = rng.standard_normal((300, 16)).astype(np.float32)
    q = rng.standard_normal((20, 16)).astype(np.float32)
    s_f, i_f = build_index(mem, "flat").search(q, 7)
    s_t, i_t = incontext.TorchFlatIP(mem, torch.device("cpu"), chunk=64).search(q, 7, query_chunk=8)
    np.testing.assert_array_equal(i_t, i_f)
    np.testing.assert_allclose(s_t, s_f, rtol=1e-5, atol=1e-5)


def test_bounded_sampling_prefers_rare_classes_and_skips_empty():
    """Patches: p0, p1 class 0; p2 classes 0+1; p3 class 2 (rare); p4 empty. Class counts
    (0: 3, 1: 1, 2: 1) give scores 3, 3, 4, 1 before noise; p4 scores 1e6."""
    labels = torch.tensor([[1.0, 0, 0], [1, 0, 0], [0.5, 0.5, 0], [0, 0, 1], [0, 0, 0]])
    g = torch.Generator().manual_seed(0)
    picks = [int(bounded_patch_indices(labels, 1, g)[0]) for _ in range(300)]
    assert 4 not in picks
    assert max(range(4), key=picks.count) == 3
    assert sorted(bounded_patch_indices(labels, 4, g).tolist()) == [0, 1, 2, 3]


def test_rrc_params_stay_inside_the_image():
    g = torch.Generator().manual_seed(1)
    for h, w in [(32, 32), (20, 90), (90, 20)]:
        for _ in range(50):
            t, left, ch, cw = incontext._rrc_params(h, w, g)
            assert 0 <= t and 0 <= left and t + ch <= h and left + cw <= w and ch > 0 and cw > 0


def _oracle_pipeline(model, train, val, size, k, temperature, seed):
    """Independent re-computation from the same memory: numpy brute-force kNN, explicit softmax,
    bilinear upsampling, and a brute-force best-permutation mIoU over plain pixel counts."""
    feats, labels = build_memory(model, train, size, 3, torch.device("cpu"), seed)
    mem, lab = feats / np.linalg.norm(feats, axis=1, keepdims=True), labels.numpy()
    preds, gts = [], []
    for img, mask in val:
        x = torch.from_numpy(np.asarray(img.resize((size, size), Image.BILINEAR), np.float32) / 255).permute(2, 0, 1)
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.255])  # HB's 0.255
        x = (x - mean[:, None, None]) / std[:, None, None]
        q = model.forward_features(x[None])["x_norm_patchtokens"][0].numpy().astype(np.float64)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        sims = q @ mem.T.astype(np.float64)
        soft = np.zeros((q.shape[0], 3))
        for i in range(q.shape[0]):
            nn_idx = np.argsort(-sims[i], kind="stable")[:k]
            w = np.exp((sims[i, nn_idx] - sims[i, nn_idx].max()) / temperature)
            soft[i] = (w[:, None] * lab[nn_idx]).sum(0) / w.sum()
        g = size // model.patch_size
        up = F.interpolate(
            torch.from_numpy(soft.T.reshape(1, 3, g, g)).float(),
            size=(size, size),
            mode="bilinear",
            align_corners=False,
        )
        preds.append(up.argmax(1)[0].numpy())
        gts.append(np.asarray(Image.fromarray(mask.astype(np.int32)).resize((size, size), Image.NEAREST)))
    p, t = np.concatenate([a.ravel() for a in preds]), np.concatenate([a.ravel() for a in gts])
    best = 0.0
    for perm in itertools.permutations(range(3)):
        pp = np.array(perm)[p]
        ious = []
        for c in range(3):
            valid = t != 255
            inter = np.sum((pp == c) & (t == c) & valid)
            union = np.sum(((pp == c) | (t == c)) & valid)
            ious.append(inter / union if union else 0.0)
        best = max(best, float(np.mean(ious)))
    return best


def test_pipeline_matches_independent_recomputation_and_beats_noise():
    train, val = ToySeg(6, 0), ToySeg(3, 1)
    model = ColourBackbone()
    r = incontext.evaluate(model, (train, val), device="cpu", size=32, k=5, temperature=0.02, seeds=(0,), batch_size=4)
    assert r["protocol"] == "incontext" and len(r["per_class_iou"]) == 3
    assert r["metric"] == pytest.approx(_oracle_pipeline(model, train, val, 32, 5, 0.02, 0), abs=1e-6)
    assert r["metric"] > 0.8
    noise = incontext.evaluate(ColourBackbone(noise=True), (train, val), device="cpu", size=32, k=5, seeds=(0,))
    assert noise["metric"] < r["metric"] - 0.3


def test_bounded_memory_and_approximate_index_run():
    train, val = ToySeg(4, 0), ToySeg(2, 1)
    r = incontext.evaluate(
        ColourBackbone(),
        (train, val),
        device="cpu",
        size=32,
        k=5,
        memory_size=80,
        index="ivf",
        nlist=4,
        nprobe=4,
        seeds=(0, 1),
    )
    assert r["settings"]["memory_entries"] == 80  # 80 // (4 images · 1 pass) = 20 patches each
    assert len(r["miou"]["values"]) == 2 and r["metric"] > 0.5


def test_a_root_of_another_layout_names_the_data_set_to_ask_for(tmp_path):
    """incontext.evaluate(model, ADE_ROOT) without dataset_name="ade20k" said only that no Pascal VOC was
    found; the error now names the data set the folder holds."""
    from franca.data.datasets.segmentation import build_segmentation

    for sub in ("images/validation", "annotations/validation"):
        (tmp_path / "ade" / "ADEChallengeData2016" / sub).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"Pascal VOC not found.*holds ade20k: pass dataset_name='ade20k'"):
        incontext.evaluate(MeanColourBackbone(), tmp_path / "ade", device="cpu")
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
