"""Feature extraction: cache hits and keys, blocks ⇒ cls, sharded extraction equals one process."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

import franca
from franca.eval import features as F


class _Counting(torch.nn.Module):
    """Stub backbone: CLS = linear map of the mean colour; counts forward passes."""

    embed_dim, patch_size, n_blocks = 4, 2, 3

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 4)
        self.calls = 0

    def forward_features(self, x, masks=None):
        self.calls += 1
        return {"x_norm_clstoken": self.proj(x.mean(dim=(2, 3)))}

    def get_intermediate_layers(self, x, n=1, return_class_token=False, norm=True, reshape=False):
        self.calls += 1
        cls = self.proj(x.mean(dim=(2, 3)))
        patches = self.proj(x.flatten(2).transpose(1, 2))  # (B, HW, 4)
        # Block i's CLS is cls·(i+1)/n so the last one equals forward_features' CLS.
        return tuple((patches * (i + 1), cls * (i + 1) / n) for i in range(n))


@pytest.fixture(autouse=True)
def _fresh_memo():
    F.clear_memory_cache()
    yield
    F.clear_memory_cache()


def _data(n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g))


def test_cache_hit_skips_the_model(tmp_path):
    model, ds = _Counting(), _data()
    a = F.extract_features(model, ds, batch_size=4, cache_dir=tmp_path, show_progress=False)
    calls = model.calls
    F.clear_memory_cache()  # force the disk cache
    b = F.extract_features(model, ds, batch_size=4, cache_dir=tmp_path, show_progress=False)
    assert model.calls == calls == 3  # ceil(10 / 4) batches, then none
    assert len(list(tmp_path.glob("*.pt"))) == 1 and len(list(tmp_path.glob("*.json"))) == 1
    assert torch.equal(a["cls"], b["cls"]) and torch.equal(a["labels"], ds.tensors[1])
    assert a["cls"].shape == (10, 4) and a["cls"].dtype == torch.float32


def test_in_memory_reuse_without_disk_cache(monkeypatch):
    model, ds = _Counting(), _data()
    F.extract_features(model, ds, batch_size=4, show_progress=False)
    F.extract_features(model, ds, batch_size=4, show_progress=False)
    assert model.calls == 3
    monkeypatch.setenv("FRANCA_FEATURE_MEMO_MB", "0")  # nothing fits: always recompute
    F.clear_memory_cache()
    F.extract_features(model, ds, batch_size=4, show_progress=False)
    F.extract_features(model, ds, batch_size=4, show_progress=False)
    assert model.calls == 9


def test_cache_key_changes_with_weights_data_and_kind():
    model, ds = _Counting(), _data()
    k = F.cache_key(model, ds, "cls")
    assert F.cache_key(model, _data(seed=1), "cls") != k  # same size, other content
    assert F.cache_key(model, ds, "blocks") != k
    assert F.cache_key(model, ds, "cls", model_key="other") != k
    with torch.no_grad():
        model.proj.weight[0, 0] += 1e-3
    assert F.cache_key(model, ds, "cls") != k


def test_blocks_kind_and_reuse_for_cls(tmp_path):
    model, ds = _Counting(), _data()
    blocks = F.extract_features(model, ds, kind="blocks", batch_size=5, cache_dir=tmp_path, show_progress=False)
    assert blocks["cls_blocks"].shape == (10, 3, 4)  # n = min(4, n_blocks = 3)
    assert blocks["patch_mean"].shape == (10, 4)
    calls = model.calls
    cls = F.extract_features(model, ds, kind="cls", cache_dir=tmp_path, show_progress=False)
    assert model.calls == calls  # served from the blocks cache
    direct = F.extract_features(model, ds, kind="cls", show_progress=False)
    torch.testing.assert_close(cls["cls"], direct["cls"])


def test_sharded_extraction_gathers_in_dataset_order(monkeypatch):
    # Simulate 3 ranks: run each rank's shard, then feed the real concatenation to the gather.
    model, ds = _Counting(), _data(n=10)
    ref = F._extract(model, ds, "cls", torch.device("cpu"), 4, 0, False)
    world = 3
    local: dict[int, dict[str, torch.Tensor]] = {}
    monkeypatch.setattr(F.dist_utils, "world_size", lambda: world)
    for r in range(world):
        monkeypatch.setattr(F.dist_utils, "rank", lambda r=r: r)
        seen: dict[str, torch.Tensor] = {}
        keys = iter(["cls", "labels"])

        def record(t, seen=seen, keys=keys):
            seen[next(keys)] = t
            return torch.cat([t] * world)

        monkeypatch.setattr(F.dist_utils, "all_gather_cat", record)
        F._extract(model, ds, "cls", torch.device("cpu"), 4, 0, False)
        local[r] = seen
    assert all(local[r]["cls"].shape[0] == 4 for r in range(world))  # ceil(10 / 3), padded by wrap-around
    monkeypatch.setattr(F.dist_utils, "rank", lambda: 0)
    gather_keys = iter(["cls", "labels"])

    def gather(t):
        k = next(gather_keys)
        return torch.cat([local[r][k] for r in range(world)])

    monkeypatch.setattr(F.dist_utils, "all_gather_cat", gather)
    out = F._extract(model, ds, "cls", torch.device("cpu"), 4, 0, False)
    torch.testing.assert_close(out["cls"], ref["cls"])
    assert torch.equal(out["labels"], ref["labels"])


def test_empty_dataset_raises():
    with pytest.raises(ValueError, match="empty"):
        F.extract_features(_Counting(), TensorDataset(torch.zeros(0, 3, 4, 4), torch.zeros(0)), show_progress=False)


def test_real_backbone_blocks_cls_equals_norm_cls():
    franca = pytest.importorskip("franca")
    try:
        model = franca.build_backbone("vitt8").eval()
    except Exception as exc:  # backbone module not built yet
        pytest.skip(f"vitt8 unavailable: {exc}")
    ds = TensorDataset(torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2]))
    blocks = F.extract_features(model, ds, kind="blocks", show_progress=False)
    cls = F.extract_features(model, ds, kind="cls", show_progress=False)
    torch.testing.assert_close(blocks["cls"], cls["cls"], atol=1e-5, rtol=1e-5)


def _dist_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from franca.eval.knn import knn_classify

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = _Counting()  # same weights on every rank (seeded)
        feats = F.extract_features(model, _data(n=11), batch_size=2, show_progress=False)
        g = torch.Generator().manual_seed(5)
        xb, yb = torch.randn(40, 4, generator=g), torch.randint(0, 3, (40,), generator=g)
        xq, yq = torch.randn(13, 4, generator=g), torch.randint(0, 3, (13,), generator=g)
        res = knn_classify(xb, yb, xq, yq, ks=(1, 5), shard_queries=True)
        torch.save(
            {"cls": feats["cls"], "labels": feats["labels"], "knn": res["top1_k5"], "calls": model.calls},
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
def test_two_gloo_ranks_match_one_process(tmp_path):
    import torch.multiprocessing as mp

    from franca.eval.knn import knn_classify

    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    torch.manual_seed(0)
    model = _Counting()
    ref = F.extract_features(model, _data(n=11), batch_size=2, show_progress=False)
    g = torch.Generator().manual_seed(5)
    xb, yb = torch.randn(40, 4, generator=g), torch.randint(0, 3, (40,), generator=g)
    xq, yq = torch.randn(13, 4, generator=g), torch.randint(0, 3, (13,), generator=g)
    ref_knn = knn_classify(xb, yb, xq, yq, ks=(1, 5))["top1_k5"]
    for r in range(2):
        out = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        torch.testing.assert_close(out["cls"], ref["cls"])
        assert torch.equal(out["labels"], ref["labels"])
        assert out["knn"] == pytest.approx(ref_knn)
        assert out["calls"] == 3  # each rank ran ceil(ceil(11 / 2) / 2) = 3 batches: half the data


def _class_folder(root, n=3, size=20):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_knn_probe_reads_image_folders_and_uses_the_shared_extractor(tmp_path, monkeypatch):
    import franca.eval.features as F
    from franca.train.knn_probe import KnnProbe, extract_cls

    train, val = _class_folder(tmp_path / "train"), _class_folder(tmp_path / "val", n=2)
    probe = KnnProbe(train, val, size=16, k=3)
    assert (len(probe.train), len(probe.val)) == (6, 4) and probe.train.classes == ["a", "b"]
    model = franca.build_backbone("vitt8", depth=1).train()
    calls = []
    real = F._extract
    monkeypatch.setattr(F, "_extract", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    feats, labels = extract_cls(model, probe.val, torch.device("cpu"), batch_size=3)
    assert calls == ["cls"] and model.training  # the shared extractor; train mode restored
    x = torch.stack([probe.val[i][0] for i in range(4)])
    with torch.no_grad():
        ref = model.eval().forward_features(x)["x_norm_clstoken"]
    torch.testing.assert_close(feats, ref, rtol=1e-5, atol=1e-5)
    assert labels.tolist() == [0, 0, 1, 1]
    res = probe(model, torch.device("cpu"))
    assert res["n_train"] == 6 and res["n_val"] == 4 and 0.0 <= res["top1"] <= 100.0


def test_features_command_uses_the_shared_extractor(tmp_path, monkeypatch):
    import franca.eval.features as F
    from franca.data.images import list_images
    from franca.features import extract_features

    root = _class_folder(tmp_path / "imgs")
    (root / "a" / "bad.png").write_bytes(b"")
    kinds = []
    real = F._extract
    monkeypatch.setattr(F, "_extract", lambda *a, **k: kinds.append(a[2]) or real(*a, **k))
    model = franca.build_backbone("vitt8", depth=1)
    res = extract_features(model, list_images(root), 16, torch.device("cpu"), batch_size=4, progress=False)
    assert kinds == ["patch"] and len(res["files"]) == 6 and res["skipped"] == [str(root / "a" / "bad.png")]
    assert res["patch"].shape == (6, 4, 192) and res["grid"] == [2, 2]


def test_batch_forwards_equal_the_backbone_outputs():
    """patch_tokens / block_tokens (used by the dense protocols, depth, keypoints, RASA) are the
    backbone's own outputs, reshaped (in fp32: parity)."""
    from franca.eval.dense import patch_features
    from franca.eval.features import block_tokens, patch_tokens
    from franca.rasa.fit import extract_patch_tokens

    model = franca.build_backbone("vitt8", depth=2).eval()
    x = torch.randn(2, 3, 16, 24)
    with torch.no_grad():
        ref = model.forward_features(x)["x_norm_patchtokens"]
        blocks = model.get_intermediate_layers(x, n=[0, 1], reshape=True, return_class_token=True, norm=False)
    assert torch.equal(patch_tokens(model, x, precision="fp32"), ref.reshape(2, 2, 3, -1))
    assert torch.equal(patch_features(model, x, precision="fp32"), ref.reshape(2, 2, 3, -1))
    assert torch.equal(extract_patch_tokens(model, x, torch.device("cpu"), "fp32"), ref)
    got = block_tokens(model, x, [0, 1], return_class_token=True, precision="fp32")
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, blocks))
