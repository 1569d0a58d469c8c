"""`franca report`: eval JSONs become tables, JSONL metrics a summary + curve, PNGs are embedded."""

from __future__ import annotations

import base64
import json

from PIL import Image

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
    assert "| knn | top1_k20 | 71.25 ± 0.5 | vitt8 (ckpt.pth) | bf16 | eval/knn.json |" in text
    assert "| depth | si_rmse | 0.3125 |  | — | eval/depth.json |" in text  # written before precision was recorded
    assert "| d1 | 0.8 ± 0.01 |" in text and "| top1.20 | 71.25 |" in text
    assert "backbones.a.n_images" in text  # other protocol JSONs as key/value tables
    assert "| total | 5 | 2 | 2 | 4 |" in text  # first, last, min, count of the JSONL field
    assert "![attention](figs/attention.png)" in text
    assert "![metrics_curves](report_files/metrics_curves.png)" in text
    with Image.open(run / "report_files" / "metrics_curves.png") as im:
        assert im.format == "PNG"
    page = html.read_text()
    assert "<td>71.25 ± 0.5</td>" in page
    # Images are embedded, so the page shows them when mailed: the PNG's bytes are in the page.
    png = base64.b64encode((run / "figs" / "attention.png").read_bytes()).decode()
    assert f"<img src='data:image/png;base64,{png}'" in page and "src='figs/" not in page
    assert "config.json" not in text and "broken" not in text
    assert sum("broken.json" in r.getMessage() for r in caplog.records) == 1  # warned about once
    # A second run does not embed its own curve twice.
    build_report(run)
    assert md.read_text().count("metrics_curves.png") == 1


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
