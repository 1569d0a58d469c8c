"""Precision: which CPUs `auto` runs in bf16 (a monkeypatched detector, golden flag sets), the autocast
region, every command's --precision, results and caches that record it, bf16 features close to fp32,
and bf16 pretraining on the CPU with finite losses."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from helpers.training import make_image_folder, tiny_overrides
from torch.utils.data import TensorDataset

import franca
from franca.eval import features as F
from franca.utils import device as D


@pytest.fixture(autouse=True)
def _bars_restored(monkeypatch):
    """`franca ... --quiet` turns the process's bars off; the tests after these get them back."""
    from franca.utils import progress

    monkeypatch.setattr(progress, "_QUIET", progress.is_quiet())


@pytest.fixture
def native_bf16(monkeypatch):
    """Set what the CPU detector says: `native_bf16(True)` makes this machine a bf16 CPU."""

    def set_(value: bool) -> None:
        monkeypatch.setattr(D, "cpu_has_native_bf16", lambda: value)

    return set_


# ---------------------------------------------------------------- detection and resolution
@pytest.mark.parametrize(
    "machine, flags, capability, expected",
    [
        ("x86_64", {"avx512f", "avx512_bf16"}, "AVX512", True),  # Zen 4, Cooper Lake
        ("x86_64", {"avx512f", "amx_bf16", "amx_tile"}, "AVX512", True),  # Sapphire Rapids
        ("AMD64", {"avx512_bf16"}, None, True),  # no torch capability: the flag decides
        ("x86_64", {"avx512f", "avx512bw", "avx512_vnni"}, "AVX512", False),  # Skylake/Cascade Lake: emulated
        ("x86_64", {"avx2", "fma"}, "AVX2", False),
        ("x86_64", {"avx512_bf16"}, "AVX2", False),  # torch runs AVX2 kernels (e.g. ATEN_CPU_CAPABILITY=avx2)
        ("x86_64", None, "AVX512", False),  # no /proc/cpuinfo: conservative
        ("aarch64", {"fp", "asimd", "bf16", "sve"}, "SVE256", True),  # Graviton 3
        ("aarch64", {"fp", "asimd"}, "DEFAULT", False),  # Graviton 2
        ("arm64", None, None, False),  # macOS: no flags to read
        ("ppc64le", {"vsx"}, "VSX", False),
    ],
)
def test_native_bf16_detection_golden(machine, flags, capability, expected):
    assert D.detect_native_bf16(machine, None if flags is None else frozenset(flags), capability) is expected


def test_cpu_flags_reads_x86_and_arm_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512f avx512_bf16\n\nflags : other\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\nCPU implementer\t: 0x41\n")
    assert D.cpu_flags(str(x86)) == frozenset({"fpu", "avx512f", "avx512_bf16"})  # the first processor's
    assert "bf16" in D.cpu_flags(str(arm))
    assert D.cpu_flags(str(tmp_path / "missing")) is None


def test_auto_is_fp32_on_a_cpu_without_bf16_and_bf16_with_it(native_bf16):
    native_bf16(False)
    assert D.resolve_precision("auto", "cpu") == "fp32"
    assert D.resolve_precision(None, "cpu") == "fp32"
    native_bf16(True)
    assert D.resolve_precision("auto", "cpu") == "bf16"
    assert D.resolve_precision("auto", "cpu", training=True) == "fp32"  # pretraining: measured no gain on CPU
    for value in ("fp32", "FP32"):
        assert D.resolve_precision(value, "cpu") == "fp32"
    native_bf16(False)
    assert D.resolve_precision("bf16", "cpu") == "bf16"  # asked for: runs (emulated) anywhere autocast has bf16
    assert D.resolve_precision("auto", torch.device("meta")) == "fp32"  # conservative elsewhere
    with pytest.raises(ValueError, match="not on meta"):
        D.resolve_precision("bf16", torch.device("meta"))
    with pytest.raises(ValueError, match="'fp16'"):
        D.resolve_precision("fp16", "cpu")


def test_autocast_context_bf16_and_fp32_inside_a_bf16_region(native_bf16):
    native_bf16(True)
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with D.autocast_context("cpu", "auto"):
        assert (a @ b).dtype == torch.bfloat16
        with D.autocast_context("cpu", "fp32"):
            assert (a @ b).dtype == torch.float32  # fp32 means fp32, whatever encloses it
    with D.autocast_context("cpu", "bf16", enabled=False):
        assert (a @ b).dtype == torch.float32
    native_bf16(False)
    with D.autocast_context("cpu", "auto"):
        assert (a @ b).dtype == torch.float32


# ---------------------------------------------------------------- the flag on every command
NO_BACKBONE = {"report", "data toy", "export"}  # nothing there runs a backbone in a precision


def _leaves() -> dict[str, argparse.ArgumentParser]:
    from franca.cli import build_parser

    out = {}

    def walk(parser: argparse.ArgumentParser, prefix: str) -> None:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out[prefix] = parser
        for sub in subs:
            for name, child in sub.choices.items():
                walk(child, f"{prefix} {name}".strip())

    walk(build_parser(), "")
    return out


def test_every_command_that_runs_a_backbone_takes_precision():
    leaves = _leaves()
    assert {"eval knn", "eval depth", "features", "viz attention", "viz norms", "rasa", "pretrain", "highres"} <= set(
        leaves
    )
    for name, parser in leaves.items():
        actions = {s: a for a in parser._actions for s in a.option_strings}
        if name in NO_BACKBONE:
            continue
        assert "--precision" in actions, name
        assert tuple(actions["--precision"].choices) == D.PRECISIONS, name
        assert "fp32" in actions["--precision"].help and "bf16" in actions["--precision"].help, name


def test_pretrain_precision_sets_the_config_key_and_refuses_it_twice(tmp_path, capsys):
    from franca.cli import main

    assert main(["pretrain", "--precision", "bf16", "--print-config"]) == 0
    assert "precision: bf16" in capsys.readouterr().out
    assert main(["pretrain", "--print-config"]) == 0
    assert "precision: auto" in capsys.readouterr().out
    assert main(["pretrain", "--precision", "bf16", "train.precision=fp32", "--print-config"]) != 0
    assert "--precision and train.precision= both set train.precision" in capsys.readouterr().err


# ---------------------------------------------------------------- results and caches record it
class _SpyBackbone(torch.nn.Module):
    """CLS = a linear map of the mean colour; notes whether each forward ran under CPU bf16 autocast."""

    embed_dim, patch_size, n_blocks = 4, 2, 1

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 4)
        self.autocast: list[bool] = []

    def forward_features(self, x, masks=None):
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return {"x_norm_clstoken": self.proj(x.mean(dim=(2, 3)))}


def _data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = (torch.eye(3) * 2 - 1)[y][:, :, None, None] + 0.3 * torch.randn(n, 3, 4, 4, generator=g)
    return TensorDataset(x, y)


@pytest.mark.parametrize("detected", [False, True])
def test_evaluate_runs_and_records_the_precision_it_resolved(native_bf16, detected):
    from franca.eval import knn

    native_bf16(detected)
    data = (_data(30), _data(12, seed=1))
    for asked, ran in (("auto", "bf16" if detected else "fp32"), ("fp32", "fp32"), ("bf16", "bf16")):
        F.clear_memory_cache()
        model = _SpyBackbone()
        res = knn.evaluate(model, data, device="cpu", precision=asked, ks=(5,), progress=False)
        assert res["precision"] == ran
        assert model.autocast and set(model.autocast) == {ran == "bf16"}, (asked, model.autocast)
    with pytest.raises(ValueError, match="precision must be one of"):
        knn.evaluate(_SpyBackbone(), data, device="cpu", precision="half", progress=False)


def test_feature_cache_keys_on_the_precision(tmp_path):
    F.clear_memory_cache()
    model, ds = _SpyBackbone(), _data()
    keys = {p: F.cache_keys(model, ds, ("cls",), None, p)["cls"] for p in ("fp32", "bf16")}
    assert keys["fp32"] != keys["bf16"]
    F.extract_features(model, ds, cache_dir=tmp_path, show_progress=False, precision="fp32")
    F.clear_memory_cache()
    F.extract_features(model, ds, cache_dir=tmp_path, show_progress=False, precision="bf16")  # a miss
    assert model.autocast == [False, True]
    metas = sorted(json.loads(p.read_text())["precision"] for p in tmp_path.glob("*.json"))
    assert metas == ["bf16", "fp32"]
    F.clear_memory_cache()
    F.extract_features(model, ds, cache_dir=tmp_path, show_progress=False, precision="bf16")  # a hit
    assert model.autocast == [False, True]


def test_cli_json_and_features_file_record_the_precision(tmp_path, capsys):
    from franca.cli import main
    from franca.data.toy import generate_toy

    root = generate_toy(tmp_path / "toy", size=16, n_train=12, n_val=6, progress=False)
    common = ["--model", "vitt8", "--random-init", "--device", "cpu", "--size", "16", "--num-workers", "0", "--quiet"]
    for p in ("fp32", "bf16"):
        out = tmp_path / f"knn-{p}.json"
        argv = ["eval", "knn", *common, "--data", str(root / "imagenet"), "--no-cache", "--ks", "3", "--out", str(out)]
        assert main([*argv, "--precision", p]) == 0
        assert json.loads(out.read_text())["precision"] == p
        feats = tmp_path / f"f-{p}.pt"
        assert (
            main(["features", *common, "--data", str(root / "imagenet" / "val"), "--out", str(feats), "--precision", p])
            == 0
        )
        assert torch.load(feats, weights_only=True)["precision"] == p
    a, b = (torch.load(tmp_path / f"f-{p}.pt", weights_only=True)["cls"] for p in ("fp32", "bf16"))
    assert not torch.equal(a, b)  # bf16 did run
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.999


# ---------------------------------------------------------------- bf16 close to fp32
def test_bf16_features_of_a_tiny_model_are_close_to_fp32():
    torch.manual_seed(0)
    model = franca.build_backbone("vitt8", layerscale=None).eval()  # no LayerScale: every block counts
    ds = TensorDataset(torch.randn(16, 3, 32, 32), torch.zeros(16, dtype=torch.long))
    out = {p: F.extract(model, ds, kind="patch", device="cpu", precision=p, batch_size=8) for p in ("fp32", "bf16")}
    for key in ("cls", "patch"):
        a, b = out["fp32"][key], out["bf16"][key]
        assert a.dtype == b.dtype == torch.float32
        assert not torch.equal(a, b)
        cos = torch.nn.functional.cosine_similarity(a.flatten(0, -2), b.flatten(0, -2))
        assert cos.min() > 0.999, (key, float(cos.min()))
    # and the per-batch dense path (patch_tokens) under bf16 gives the same tokens as extract's
    x = torch.stack([ds[i][0] for i in range(8)])
    pt = F.patch_tokens(model, x, precision="bf16", grid=False)
    assert torch.allclose(pt, out["bf16"]["patch"][:8], atol=1e-6)


# ---------------------------------------------------------------- pretraining in bf16 on the CPU
def test_bf16_pretraining_on_cpu_has_finite_losses(tmp_path: Path):
    from franca.train.config import load_config
    from franca.train.loop import train

    data = make_image_folder(tmp_path / "img", n=8)
    cfg = load_config("tiny", tiny_overrides(tmp_path / "run", data, iterations=4) + ["train.precision=bf16"])
    summary = train(cfg, quiet=True)
    assert summary["precision"] == "bf16" and summary["iterations"] == 4
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:
        for k in ("total", "dino_global", "ibot", "koleo"):
            assert torch.isfinite(torch.tensor(row[k])), (k, row)
    auto = load_config("tiny", tiny_overrides(tmp_path / "run2", data, iterations=1))
    assert auto.train.precision == "auto"
    assert D.resolve_precision(auto.train.precision, "cpu", training=True) == "fp32"


@pytest.mark.parametrize("method", ["scaling", "log"])
def test_sinkhorn_is_an_fp32_island_under_bf16_autocast(method):
    from franca.losses.sinkhorn import METHODS, sinkhorn_knopp

    assert set(METHODS) == {"scaling", "log"}  # every method is tested here
    logits = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    ref = sinkhorn_knopp(logits, 0.04, method=method)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = sinkhorn_knopp(logits, 0.04, method=method)
    assert inside.dtype == torch.float32 and torch.equal(inside, ref)


def test_the_memory_estimate_counts_bf16_activations_at_two_bytes(monkeypatch):
    """vitt8 at 224 px: 785 tokens of width 192. Per image, by hand: the images 3·224²·4·2 + 3·256² = 1,400,832
    bytes plus the block activations 785·192·12 values: 4 bytes each in fp32 (7,234,560; 8,635,392 in all),
    2 under bf16 (3,617,280; 5,018,112). Eight images need 65.9 MiB in fp32 and 38.3 MiB in bf16: with
    40 MiB free, fp32 is refused and bf16 fits (the message rounds MiB and calls them MB)."""
    import franca.commands._flags as flags
    from franca.utils.errors import UserError

    model = franca.build_backbone("vitt8", depth=1)
    monkeypatch.setattr(flags, "available_bytes", lambda device: 40 << 20)
    flags.check_side_fits(model, 224, "cpu", batch_size=8, precision="bf16")
    with pytest.raises(UserError, match=r"8 images per pass need about 66 MB, .* lower --batch-size$"):
        flags.check_side_fits(model, 224, "cpu", batch_size=8, precision="fp32")
    with pytest.raises(UserError, match=r"8 images per pass need about 66 MB"):
        flags.check_side_fits(model, 224, "cpu", batch_size=8)  # fp32 unless told
