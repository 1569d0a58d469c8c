"""`franca report`: eval JSONs become tables, JSONL metrics a summary + curve, PNGs are embedded."""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from pathlib import Path

from PIL import Image

from franca.cli import main
from franca.report import build_report


def _run_dir(tmp_path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "figs").mkdir()
    (run / "eval" / "knn.json").write_text(
        json.dumps(
            {
                "protocol": "knn",
                "metric_name": "top1_k20",
                "metric": 71.25,
                "metric_std": 0.5,
                "model": {"model": "vitt8", "weights": "/x/ckpt.pth"},
                "precision": "bf16",
                "top1": {"10": 70.0, "20": 71.25},
            }
        )
    )
    (run / "eval" / "depth.json").write_text(
        json.dumps({"protocol": "depth", "metric_name": "si_rmse", "metric": 0.3125, "d1": {"mean": 0.8, "std": 0.01}})
    )
    norms = {"protocol": "token_norms", "backbones": {"a": {"n_images": 3}}}
    (run / "eval" / "norms.json").write_text(json.dumps(norms))
    (run / "eval" / "broken.json").write_text("{not json")
    (run / "eval" / "config.json").write_text(json.dumps({"lr": 1}))  # no protocol: ignored
    rows = [{"iteration": i, "total": 5.0 - i, "lr": 0.1} for i in range(4)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    Image.new("RGB", (10, 6), (255, 0, 0)).save(run / "figs" / "attention.png")
    return run


def test_report_tables_and_figures(tmp_path, caplog):
    run = _run_dir(tmp_path)
    md, html = build_report(run)
    text = md.read_text()
    assert md == run / "report.md" and html == run / "report.html"
    # The folder is a run (its metrics.jsonl); the k-NN result names another backbone (/x/ckpt.pth).
    assert "| run | not recorded | no checkpoint | 3 logged, no summary.json (running or stopped) | — | — |" in text
    # the precision column: bf16 as recorded; "—" for a result written before precision was recorded
    assert "| x/ckpt.pth | vitt8 | /x/ckpt.pth | — | — | bf16 | — | 71.25 ± 0.5 |" in text
    assert "| not recorded | — | not recorded | — | — | — | 0.3125 | — |" in text
    assert "| knn | top1_k20 | x/ckpt.pth | 71.25 ± 0.5 |  |  | bf16 |" in text
    assert "| depth | si_rmse | not recorded | 0.3125 |  |  | — |" in text
    assert "| d1 | 0.8 ± 0.01 |" in text and "| top1.20 | 71.25 |" in text
    assert "backbones.a.n_images" in text  # other protocol JSONs as key/value tables
    assert "| total | 5 | 2 | 2 | 4 |" in text  # first, last, min, count of the JSONL field
    assert "![attention](figs/attention.png)" in text
    assert "![run-loss](report_files/run-loss.png)" in text
    with Image.open(run / "report_files" / "run-loss.png") as im:
        assert im.format == "PNG"
    page = html.read_text()
    assert "<td>71.25 ± 0.5</td>" in page
    # Images are embedded, so the page shows them when mailed: the PNG's bytes are in the page.
    png = base64.b64encode((run / "figs" / "attention.png").read_bytes()).decode()
    assert f"<img src='data:image/png;base64,{png}'" in page and "src='figs/" not in page
    assert "config.json" not in text and "broken" not in text
    assert sum("broken.json" in r.getMessage() for r in caplog.records) == 1  # warned about once
    assert sum("line 5 is not JSON" in r.getMessage() for r in caplog.records) == 1
    # A second run does not embed its own curve twice.
    build_report(run)
    assert md.read_text().count("run-loss.png") == 1


def test_report_out_elsewhere_and_cli(tmp_path, capsys):
    from franca.cli import main

    run = _run_dir(tmp_path)
    out = tmp_path / "pages" / "r.md"
    assert main(["report", str(run), "--out", str(out), "--title", "My run"]) == 0
    text = out.read_text()
    assert text.startswith("# My run") and "![attention](../run/figs/attention.png)" in text
    assert (tmp_path / "pages" / "r.html").is_file()
    assert main(["report", str(tmp_path / "missing")]) == 1
    assert "run directory not found" in capsys.readouterr().err


def _fake_run(folder, iterations, losses, knn, precision=None):
    """A pretraining run folder as `franca pretrain` leaves it (a stand-in checkpoint file)."""
    folder.mkdir(parents=True)
    (folder / "checkpoint.pth").write_bytes(folder.name.encode() * iterations[0])  # sizes differ
    (folder / "config.yaml").write_text("model:\n  arch: vitt8\n  embed_dim: 128\n  depth: 4\ntrain:\n  seed: 0\n")
    rows = [{"iteration": 2 * i + 1, "total": v, "koleo": v / 10, "lr": 1e-3} for i, v in enumerate(losses)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {
        "iterations": iterations[0],
        "planned_iterations": iterations[1],
        "stop_reason": "done" if iterations[0] == iterations[1] else "time limit train.max_minutes=9 reached",
        "wall_time_s": 34.2,
        "device": "cpu",
        "world_size": 1,
        "checkpoint": str(folder / "checkpoint.pth"),
        "knn_top1_init": knn[0],
        "knn_top1_trained": knn[1],
        "knn_gain": knn[1] - knn[0],
    }
    if precision is not None:  # summaries written before precision was recorded have none
        summary["precision"] = precision
    (folder / "summary.json").write_text(json.dumps(summary))


def _result(path, protocol, metric, weights, seeds, **extra):
    st = Path(weights).stat() if Path(weights).exists() else None
    model = {"model": None, "weights": str(weights), "rasa": None, "weights_label": Path(weights).name}
    if st is not None:
        model.update(weights_bytes=st.st_size, weights_mtime=int(st.st_mtime))
    doc = {
        "protocol": protocol,
        "metric_name": "top1",
        "metric": metric,
        "metric_std": 0.0 if len(seeds) == 1 else 0.5,
        "results": {"top1": metric},
        "results_std": {"top1": 0.0 if len(seeds) == 1 else 0.5},
        "settings": {"seeds": seeds, "size": 64},
        "model": model,
        "time": "2026-01-02T03:04:05",
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return doc


def test_report_tells_two_runs_apart(tmp_path):
    """Two runs, both with a checkpoint.pth: each its own curve, a summary row named by its folder, its results."""
    root = tmp_path / "runs"
    _fake_run(root / "runA", (20, 20), [9.0, 8.0, 7.0], (10.5, 12.9), precision="fp32")
    _fake_run(root / "runB", (166, 2808), [3.0, 5.0, 4.0], (9.7, 11.9))
    ck_a, ck_b = root / "runA" / "checkpoint.pth", root / "runB" / "checkpoint.pth"
    _result(root / "runA" / "knn.json", "knn", 13.1, ck_a, [0], precision="fp32")
    _result(root / "runA" / "linear.json", "linear", 13.45, ck_a, [0, 1], precision="bf16")
    # Measured elsewhere, from another folder (the recorded path does not resolve here): the file's name,
    # size and modification time say it is runB's checkpoint.
    doc = _result(root / "eval" / "knnB.json", "knn", 10.7, ck_b, [0], precision="bf16")
    doc["model"]["weights"] = "elsewhere/runB/checkpoint.pth"
    (root / "eval" / "knnB.json").write_text(json.dumps(doc))
    md, html = build_report(root)
    text = md.read_text()

    # Each run has its own curve, drawn from its own metrics.
    a, b = root / "report_files" / "runA-loss.png", root / "report_files" / "runB-loss.png"
    assert "![runA-loss](report_files/runA-loss.png)" in text and "![runB-loss](report_files/runB-loss.png)" in text
    with Image.open(a) as ia, Image.open(b) as ib:
        assert ia.size == ib.size and ia.tobytes() != ib.tobytes()
    assert text.index("runA-loss.png") < text.index("## Run runB") < text.index("runB-loss.png")
    page = html.read_text()
    for png in (a, b):
        assert page.count(base64.b64encode(png.read_bytes()).decode()) == 1

    # The summary comes first: one row per run, named by its folder, with the pretraining k-NN and each metric.
    # The precision column names what the row's numbers ran in: the run's k-NN check (its summary.json; "—"
    # for one written before precision was recorded) and the latest result of each protocol.
    head = "| run | model | weights | iterations | k-NN top-1 init → trained | precision | knn top1 | linear top1 |"
    assert text.index(head) < text.index("## Run runA") < text.index("## Details")
    assert (
        "| runA | vitt8 (128-d, 4 blocks) | runA/checkpoint.pth | 20 | 10.5 → 12.9 (+2.4) | fp32, bf16 | 13.1 "
        "| 13.45 ± 0.5 |" in text
    )
    assert (
        "| runB | vitt8 (128-d, 4 blocks) | runB/checkpoint.pth | 166 of 2808 (time limit) | 9.7 → 11.9 (+2.2) "
        "| —, bf16 | 10.7 | — |" in text
    )
    assert "| knn | top1 | 10.7 | 1 | 64 | bf16 | 2026-01-02 03:04 | eval/knnB.json |" in text  # in runB's section
    assert "| precision | fp32 |" in text  # runA's facts: the precision it trained in
    assert text.index("eval/knnB.json") > text.index("## Run runB")
    assert "\n| checkpoint.pth |" not in text  # no run or backbone row is called checkpoint.pth

    # The detail is folded below: std rows only over ≥ 2 seeds, no None, dates as dates.
    details = text[text.index("## Details") :]
    knn_a = details[details.index("### runA: knn") : details.index("### runA: linear")]
    assert "std" not in knn_a and "| results.top1 | 13.1 |" in knn_a
    linear_a = details[details.index("### runA: linear") :]
    assert "| metric_std | 0.5 |" in linear_a and "| results_std.top1 | 0.5 |" in linear_a
    mtime = int(ck_a.stat().st_mtime)
    assert (
        str(mtime) not in text
        and f"| model.weights_mtime | {time.strftime('%Y-%m-%d %H:%M', time.localtime(mtime))} |" in text
    )
    assert "None" not in text and "| time | 2026-01-02 03:04:05 |" in text
    assert page.index("<h2>Details</h2>") < page.index("<details><summary>runA: knn (runA/knn.json)</summary>")


def test_report_attribution_edge_cases(tmp_path):
    root = tmp_path / "runs"
    _fake_run(root / "runA", (20, 20), [9.0, 8.0], (10.5, 12.9))
    _fake_run(root / "runB", (20, 20), [9.0, 8.0], (10.5, 12.9))  # as large as runA's, maybe the same second
    ck = root / "runA" / "checkpoint.pth"
    _result(root / "runA" / "knn.json", "knn", 13.1, ck, [0])
    doc = _result(root / "eval" / "moved.json", "knn", 11.0, ck, [0])
    doc["model"]["weights"] = "gone/checkpoint.pth"
    (root / "eval" / "moved.json").write_text(json.dumps(doc))
    os.utime(root / "runB" / "checkpoint.pth", (ck.stat().st_atime, ck.stat().st_mtime))
    text = build_report(root)[0].read_text()
    # Two checkpoints fit the moved result's name, size and time equally: it is left to no run.
    assert "| knn | top1 | gone/checkpoint.pth | 11 |" in text
    # The run went on after the measurement: its result is marked.
    os.utime(ck, (ck.stat().st_atime, ck.stat().st_mtime + 120))
    text = build_report(root)[0].read_text()
    assert "| 13.1† |" in text and "† measured on an earlier state of the run's checkpoint" in text


def test_report_over_two_real_pretraining_runs(tmp_path):
    """`franca pretrain` twice into two folders, `franca report` over their parent: two runs, two curves."""
    from helpers.training import make_image_folder, tiny_overrides

    from franca.cli import main

    data = make_image_folder(tmp_path / "img", n=8)
    for name, n in (("runA", 2), ("runB", 4)):
        assert main(["pretrain", "--quiet", *tiny_overrides(tmp_path / "runs" / name, data, iterations=n)]) == 0
    assert main(["report", str(tmp_path / "runs")]) == 0
    text = (tmp_path / "runs" / "report.md").read_text()
    assert "| runA | vitt4 (32-d, 2 blocks) | runA/checkpoint.pth | 2 |" in text
    assert "| runB | vitt4 (32-d, 2 blocks) | runB/checkpoint.pth | 4 |" in text
    runs_part = text[text.index("## Run runA") : text.index("## Details")]
    assert runs_part.count("| precision | fp32 |") == 2  # each run's facts: auto trains in fp32 on CPU
    curves = [tmp_path / "runs" / "report_files" / f"{r}-loss.png" for r in ("runA", "runB")]
    with Image.open(curves[0]) as ia, Image.open(curves[1]) as ib:
        assert ia.tobytes() != ib.tobytes()


def test_report_skips_a_deeply_nested_json_naming_it(tmp_path, caplog):
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)  # RecursionError in the decoder
    (tmp_path / "nested.json").write_text('{"a":' * 900 + "1" + "}" * 900)  # decodes, then too deep
    good = {"protocol": "knn", "metric_name": "top1_k20", "metric": 50.0}
    (tmp_path / "ok.json").write_text(json.dumps(good))
    with caplog.at_level(logging.WARNING, logger="franca"):
        assert main(["report", str(tmp_path), "--quiet"]) == 0
    text = caplog.text
    assert f"skipping {tmp_path / 'deep.json'} (nested too deeply" in text
    assert f"skipping {tmp_path / 'nested.json'} (nested more than 64 levels" in text
