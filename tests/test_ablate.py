"""franca ablate: variant expansion, fairness checks, statistics on hand-made numbers, resume of a
half-done sweep, and an end-to-end 2-variant × 2-seed sweep of a few iterations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.training import make_image_folder, tiny_overrides
from PIL import Image

from franca.ablate import stats
from franca.ablate.evaluate import EvalSettings, metric_info
from franca.ablate.variants import BUILTIN_VARIANTS, Variant, expand, parse_variants

# ---- variants ------------------------------------------------------------------------------------------


def test_builtin_variants_expand_seed_major_with_init_first() -> None:
    variants = parse_variants(["franca", "single-level"])
    specs = expand(variants, [0, 1], common=["train.iterations=5"])
    assert [s.key for s in specs] == [
        "init-seed0",
        "franca-seed0",
        "single-level-seed0",
        "init-seed1",
        "franca-seed1",
        "single-level-seed1",
    ]
    assert [s.kind for s in specs[:3]] == ["init", "train", "train"]
    # sweep-wide overrides first, the variant's after them (the variant wins a shared key)
    assert specs[2].overrides == ("train.iterations=5", "dino.nesting_levels=1", "ibot.head.nesting_levels=1")
    assert specs[0].overrides == ("train.iterations=5",)


def test_every_builtin_variant_is_a_valid_config() -> None:
    from franca.train.config import load_config

    cfgs = {n: load_config("tiny", list(ov)) for n, ov in BUILTIN_VARIANTS.items()}
    base = cfgs["franca"]
    assert cfgs["single-level"].dino.nesting_levels == 1 == cfgs["single-level"].ibot.head.nesting_levels
    assert cfgs["single-level"].dino.n_prototypes == base.dino.n_prototypes  # same finest prototype count
    assert cfgs["block-mask"].ibot.mask_type == "block" and base.ibot.mask_type == "cyclic"
    assert cfgs["projection-heads"].dino.mode == "projection" == cfgs["projection-heads"].ibot.head.mode
    assert base.dino.mode == "slice"
    assert cfgs["no-koleo"].loss.koleo_weight == 0.0 < base.loss.koleo_weight
    for cfg in cfgs.values():  # equal compute
        assert (cfg.train.batch_size_per_gpu, cfg.crops, cfg.train.epochs) == (
            base.train.batch_size_per_gpu,
            base.crops,
            base.train.epochs,
        )


def test_custom_variants_and_errors() -> None:
    v = parse_variants([], [["warm", "teacher.momentum_teacher=0.99"], ["no-koleo"]])
    assert v == [Variant("warm", ("teacher.momentum_teacher=0.99",)), Variant("no-koleo", ("loss.koleo_weight=0.0",))]
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        parse_variants(["nope"])
    with pytest.raises(ValueError, match="listed twice"):
        parse_variants(["franca"], [["franca"]])
    with pytest.raises(ValueError, match="is built-in"):
        parse_variants([], [["franca", "loss.koleo_weight=0.5"]])
    with pytest.raises(ValueError, match="not of the form key=value"):
        parse_variants([], [["x", "loss.koleo_weight"]])
    # fair by construction: compute keys may not differ between variants
    for key in ("train.iterations=10", "train.batch_size_per_gpu=8", "crops.local_crops_number=2", "data.toy_size=64"):
        with pytest.raises(ValueError, match="must be equal across variants"):
            parse_variants([], [["unfair", key]])
    assert parse_variants([], [["unfair", "train.iterations=10"]], allow_unequal=True)[0].overrides == (
        "train.iterations=10",
    )
    with pytest.raises(ValueError, match="set by the sweep"):
        expand(parse_variants(["franca"]), [0], common=["train.seed=3"])
    with pytest.raises(ValueError, match="seeds repeat"):
        expand(parse_variants(["franca"]), [0, 0])


def test_block_mask_config_reaches_the_collate() -> None:
    from franca.data.masking import BlockMask, CyclicMask
    from franca.train.config import load_config
    from franca.train.data import MultiCropCollate

    assert isinstance(MultiCropCollate(load_config("tiny"), 8).mask_generator, CyclicMask)
    gen = MultiCropCollate(load_config("tiny", ["ibot.mask_type=block"]), 8).mask_generator
    assert isinstance(gen, BlockMask) and gen.max_block == 8  # DINOv2: half of the 4×4 grid
    with pytest.raises(ValueError, match="ibot.mask_type"):
        load_config("tiny", ["ibot.mask_type=random"])


def test_block_mask_follows_dinov2_semantics() -> None:
    from franca.data.masking import BlockMask

    g = torch.Generator().manual_seed(0)
    m = BlockMask(4, max_block=8)
    for n in range(0, 9):
        for _ in range(30):
            mask = m(n, g)
            assert int(mask.sum()) <= n
            # blocks are strictly smaller than the grid, so no row or column is ever fully masked by one
            # block; with at most 8 of 16 cells masked a full row needs several blocks and stays rare
    # requests below min_block still get masked (dinov2 draws the area from U(budget, min_block))
    assert np.mean([int(m(2, g).sum()) for _ in range(100)]) > 1.5
    # a 2×2 grid admits no block strictly smaller than the grid... except 1×1 ones
    tiny = BlockMask(2)
    assert all(int(tiny(3, g).sum()) <= 3 for _ in range(20))
    with pytest.raises(ValueError, match="max_block"):
        BlockMask(4, max_block=0)


# ---- statistics on hand-made numbers -------------------------------------------------------------------


def test_summarize_mean_and_sample_std() -> None:
    s = stats.summarize([1.0, 2.0, 3.0])
    assert s["n"] == 3 and s["mean"] == 2.0 and s["std"] == pytest.approx(1.0)
    assert stats.summarize([5.0])["std"] == 0.0
    assert stats.summarize([float("nan"), 4.0])["n"] == 1
    assert stats.summarize([])["n"] == 0


def test_paired_difference_matches_the_t_formulas() -> None:
    base = {0: 1.0, 1: 2.0, 2: 3.0}
    var = {0: 2.0, 1: 4.0, 2: 6.0}  # differences 1, 2, 3: mean 2, sd 1, se 1/√3
    d = stats.paired_difference(var, base)
    t = 2.0 * math.sqrt(3.0)
    # Student t with 2 degrees of freedom has the closed form F(t) = 1/2 + t / (2 √(2 + t²))
    assert d["p_value"] == pytest.approx(1.0 - t / math.sqrt(2.0 + t * t), rel=1e-9)  # 0.0742
    tcrit = math.sqrt(2 * 0.95**2 / (1 - 0.95**2))  # F(tcrit) = 0.975 -> 4.3027
    assert d["mean"] == pytest.approx(2.0)
    assert d["ci_low"] == pytest.approx(2.0 - tcrit / math.sqrt(3)) and d["ci_high"] == pytest.approx(
        2.0 + tcrit / math.sqrt(3)
    )
    assert d["ci_low"] < 0 < d["ci_high"] and stats.verdict(d) == "undecided"
    assert d["boot_low"] >= 1.0 and d["boot_high"] <= 3.0  # inside the range of the differences


def test_paired_difference_pairs_by_seed_and_gives_verdicts() -> None:
    base = {0: 10.0, 1: 20.0, 2: 30.0, 3: 99.0}
    var = {0: 11.0, 1: 21.1, 2: 30.9, 5: -1.0}  # seeds 3 and 5 have no partner
    d = stats.paired_difference(var, base)
    assert d["n"] == 3 and d["seeds"] == [0, 1, 2] and d["mean"] == pytest.approx(1.0)
    assert d["ci_low"] > 0 and d["p_value"] < 0.01
    assert stats.verdict(d) == "better" and stats.verdict(d, higher_is_better=False) == "worse"
    const = stats.paired_difference({0: 2.0, 1: 3.0}, {0: 1.0, 1: 2.0})  # zero spread
    assert const["p_value"] == 0.0 and (const["ci_low"], const["ci_high"]) == (1.0, 1.0)
    one = stats.paired_difference({0: 2.0}, {0: 1.0})
    assert one["mean"] == 1.0 and one["ci_low"] is None and stats.verdict(one) == "undecided"
    assert stats.bootstrap_interval([1.0, 1.0, 1.0]) == (1.0, 1.0)


# ---- the sweep: resume and an end-to-end run -------------------------------------------------------------


def _labelled_folder(root: Path, n: int = 4, size: int = 16) -> Path:
    """train/ and val/ with two classes of flat-coloured images (k-NN separates them)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, colour in enumerate(((200, 30, 30), (30, 30, 200))):
            d = root / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img = np.clip(np.array(colour) + rng.integers(-20, 20, size=(size, size, 3)), 0, 255)
                Image.fromarray(img.astype(np.uint8)).save(d / f"{i}.png")
    return root


def _sweep(tmp_path: Path, **kw):
    from franca.ablate.sweep import Sweep

    data = make_image_folder(tmp_path / "images", n=8)
    common = [
        o
        for o in tiny_overrides(tmp_path / "unused", data, iterations=4)
        if not o.startswith(("train.output_dir", "train.log_period"))
    ]
    settings = EvalSettings(size=16, data=str(_labelled_folder(tmp_path / "labelled")))
    return Sweep(
        out=tmp_path / "sweep",
        variants=parse_variants(["franca", "no-koleo"]),
        seeds=[0, 1],
        common=common,
        protocols=["knn"],
        settings=settings,
        checkpoint_period=2,
        **kw,
    )


def test_two_variant_two_seed_sweep_resumes_where_it_stopped(tmp_path: Path, monkeypatch) -> None:
    from franca.ablate import sweep as sweep_mod
    from franca.ablate.report import write_report
    from franca.train import loop

    sw = _sweep(tmp_path)
    original_step = loop.Trainer.step

    def crashing_step(self, batch, i):  # no-koleo seed 1 dies after its checkpoint at iteration 2
        if i == 3 and "no-koleo-seed1" in str(self.out_dir):
            raise RuntimeError("simulated crash")
        return original_step(self, batch, i)

    monkeypatch.setattr(loop.Trainer, "step", crashing_step)
    lines: list[str] = []
    first = sweep_mod.run_sweep(sw, echo=lines.append)
    assert set(first["failed"]) == {"no-koleo-seed1"} and "simulated crash" in first["failed"]["no-koleo-seed1"]
    assert any("ETA" in ln for ln in lines) and lines[-1].startswith("[6/6]")
    assert (sw.out / "runs" / "no-koleo-seed1" / "checkpoint.pth").is_file()

    monkeypatch.setattr(loop.Trainer, "step", original_step)
    ran: list[str] = []
    real_run_one = sweep_mod.run_one
    monkeypatch.setattr(sweep_mod, "run_one", lambda s, spec: (ran.append(spec.key), real_run_one(s, spec))[1])
    second = sweep_mod.run_sweep(sw, echo=lines.append)
    assert ran == ["no-koleo-seed1"] and not second["failed"]  # finished runs skipped
    resumed = json.loads((sw.out / "results" / "no-koleo-seed1.json").read_text())
    assert resumed["train"]["resumed_at"] == 2 and resumed["train"]["iterations"] == 4

    paths = write_report(sw, command="franca ablate (test)")
    agg = json.loads(paths["json"].read_text())
    assert list(agg["rows"]) == ["init", "franca", "no-koleo"]
    for name in ("franca", "no-koleo"):
        row = agg["rows"][name]
        assert row["seeds"] == [0, 1] and row["iterations"] == [4] and row["global_batch"] == [4]
        assert row["metrics"]["knn"]["n"] == 2 and 0.0 <= row["metrics"]["knn"]["mean"] <= 100.0
        assert row["params"]["backbone"] == agg["rows"]["init"]["params"]["backbone"] > 0
    knn = agg["rows"]["no-koleo"]["metrics"]["knn"]
    diff = [knn["per_seed"][s] - agg["rows"]["franca"]["metrics"]["knn"]["per_seed"][s] for s in ("0", "1")]
    assert knn["vs_baseline"]["mean"] == pytest.approx(np.mean(diff)) and knn["vs_baseline"]["n"] == 2
    md = paths["md"].read_text()
    assert "| franca (baseline) | 2 |" in md and "| no-koleo | `loss.koleo_weight=0.0` |" in md
    assert paths["png"].stat().st_size > 10_000

    # a sweep with other settings refuses to reuse these results
    from franca.ablate.sweep import Sweep

    other = Sweep(**{**sw.__dict__, "common": [*sw.common, "loss.koleo_weight=0.5"]})
    with pytest.raises(ValueError, match="other settings"):
        sweep_mod.run_sweep(other, echo=lines.append)


def test_metric_info_and_unknown_protocol() -> None:
    keys = list(metric_info(["knn", "pca-slice", "rasa"]))
    assert keys == [
        "knn",
        "pca_all",
        "pca_1/2",
        "pca_1/4",
        "pca_1/8",
        "pca_1/16",
        "pca_retention",
        "rasa_r2_before",
        "rasa_r2_after",
    ]
    with pytest.raises(ValueError, match="unknown protocol"):
        metric_info(["depth"])


def test_cli_rejects_an_unfair_variant(capsys) -> None:
    from franca.cli import main

    assert main(["ablate", "--variant", "x", "train.iterations=3", "--out", "unused"]) == 1
    assert "must be equal across variants" in capsys.readouterr().err


def test_cli_builds_the_documented_sweep() -> None:
    from franca.cli import build_parser
    from franca.commands.ablate import build_sweep

    args = build_parser().parse_args(
        [
            "ablate",
            "--variant",
            "warm-teacher",
            "teacher.momentum_teacher=0.99",
            "--variant",
            "k256",
            "dino.n_prototypes=256",
            "ibot.head.n_prototypes=256",
            "--variants",
            "franca",
            "--out",
            "runs/my-sweep",
            "train.epochs=4",
        ]
    )
    sw = build_sweep(args)
    assert [v.name for v in sw.variants] == ["franca", "warm-teacher", "k256"] and sw.baseline == "franca"
    assert sw.common == ["train.epochs=4"] and sw.seeds == [0, 1, 2] and sw.settings.size == 32
    assert sw.variants[2].overrides == ("dino.n_prototypes=256", "ibot.head.n_prototypes=256")
    default = build_sweep(build_parser().parse_args(["ablate"]))
    assert [v.name for v in default.variants] == [
        "franca",
        "single-level",
        "block-mask",
        "projection-heads",
        "no-koleo",
    ]


def test_rasa_protocol_reports_position_r2_before_and_after(tmp_path: Path) -> None:
    """The RASA call site on a backbone whose patch tokens carry their position: R² drops after the fit."""
    import franca
    from franca.ablate.evaluate import evaluate_backbone

    root = make_image_folder(tmp_path / "imgs", n=40, size=16)
    torch.manual_seed(0)
    model = franca.build_backbone("vitt4", img_size=16, embed_dim=32, depth=1, num_heads=2).eval()
    with torch.no_grad():  # position written along two directions: linearly readable, removable in one stage
        rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
        u, v = torch.randn(2, 32)
        model.pos_embed[0, 1:] = 0.5 * (rows.reshape(-1, 1) * u + cols.reshape(-1, 1) * v)
    s = EvalSettings(rasa_size=16, rasa_images=40, rasa_iterations=4, rasa_epochs=300, rasa_root=str(root))
    out = evaluate_backbone(model, ["rasa"], torch.device("cpu"), s)
    assert set(out) == {"rasa_r2_before", "rasa_r2_after"}
    assert out["rasa_r2_before"] > 0.5 and out["rasa_r2_after"] < out["rasa_r2_before"] - 0.1


def test_references_are_fixed_rows_evaluated_once_before_the_runs() -> None:
    from franca.ablate.variants import parse_references

    variants = parse_variants(["franca"])
    refs = parse_references(["teacher=runs/demo/checkpoint.pth"], variants)
    assert refs == [("teacher", "runs/demo/checkpoint.pth")]
    specs = expand(variants, [3, 4], references=refs)
    assert [(s.kind, s.key) for s in specs] == [
        ("reference", "teacher-seed3"),
        ("init", "init-seed3"),
        ("train", "franca-seed3"),
        ("init", "init-seed4"),
        ("train", "franca-seed4"),
    ]
    assert specs[0].weights == "runs/demo/checkpoint.pth"
    for bad, match in (("teacher", "NAME=WEIGHTS"), ("=x.pth", "NAME=WEIGHTS"), ("franca=x.pth", "already names")):
        with pytest.raises(ValueError, match=match):
            parse_references([bad], variants)
    with pytest.raises(ValueError, match="already names"):
        parse_references(["a=x.pth", "a=y.pth"], variants)


def test_an_eval_domain_sends_every_protocol_to_that_domains_set(monkeypatch) -> None:
    from franca.ablate import evaluate as ev
    from franca.eval import incontext, knn, linear, overcluster

    monkeypatch.setattr(ev, "builtin_toy", lambda domain="shapes": Path("/toys") / domain)
    seen: dict[str, object] = {}

    def fake(name):
        def evaluate(model, data=None, **kw):
            seen[name] = data
            return {"metric": 1.0}

        return evaluate

    for mod in (knn, linear, incontext, overcluster):
        monkeypatch.setattr(mod, "evaluate", fake(mod.__name__.rsplit(".", 1)[-1]))
    model = torch.nn.Linear(1, 1)
    protocols = ["knn", "linear", "incontext", "overcluster"]
    ev.evaluate_backbone(model, protocols, torch.device("cpu"), EvalSettings(domain="textures"))
    assert seen == {
        "knn": str(Path("/toys/textures/imagenet")),
        "linear": str(Path("/toys/textures/imagenet")),
        "incontext": str(Path("/toys/textures")),
        "overcluster": str(Path("/toys/textures")),
    }
    ev.evaluate_backbone(model, protocols, torch.device("cpu"), EvalSettings())
    assert set(seen.values()) == {None}  # no domain: the default built-in set, as before
    ev.evaluate_backbone(model, ["knn"], torch.device("cpu"), EvalSettings(domain="textures", data="mine"))
    assert seen["knn"] == "mine"  # an explicit classification set wins
    assert "domain" not in EvalSettings().to_dict()  # results of earlier sweeps keep their fingerprint


def test_cli_checks_the_eval_domain_and_reads_references() -> None:
    from franca.cli import build_parser
    from franca.commands.ablate import build_sweep

    args = build_parser().parse_args(
        ["ablate", "--variants", "--variant", "scratch", "--reference", "teacher=t.pth", "--eval-domain", "textures"]
    )
    sw = build_sweep(args)
    assert [v.name for v in sw.variants] == ["scratch"] and sw.references == [("teacher", "t.pth")]
    assert sw.settings.domain == "textures"
    with pytest.raises(ValueError, match="unknown toy domain 'stripes'"):
        build_sweep(build_parser().parse_args(["ablate", "--eval-domain", "stripes"]))
