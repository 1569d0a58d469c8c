"""Plot a `franca rasa` report: held-out position R² of both probes before stage 1 and after every stage.

Usage: python docs/figures/rasa_plot.py REPORT.json INCONTEXT_RAW.json INCONTEXT_RASA.json OUT.png
Also prints the per-stage table in Markdown (for docs/rasa.md).
"""
from __future__ import annotations

import json
import sys


def table(report: dict) -> str:
    rows = ["| after stage | stage steps (converged) | ridge R² | sigmoid R² | sigmoid probe steps |",
            "|---|---|---|---|---|"]
    init = report["initial"]
    rows.append(f"| 0 (raw) | – | {init['ridge']['r2']:.4f} | {init['sigmoid']['r2']:.4f} | "
                f"{init['sigmoid']['detail']['steps']} |")
    for h in report["history"]:
        a = h["after"]
        rows.append(f"| {h['iteration']} | {h['steps']} ({h['converged']}) | {a['ridge']['r2']:.4f} | "
                    f"{a['sigmoid']['r2']:.4f} | {a['sigmoid']['detail']['steps']} |")
    return "\n".join(rows)


def main(report_path: str, raw_path: str, rasa_path: str, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = json.load(open(report_path))
    miou = {k: json.load(open(p)) for k, p in (("raw", raw_path), ("RASA", rasa_path))}
    stages = [0] + [h["iteration"] for h in report["history"]]
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=120)
    for probe, style in (("ridge", "o-"), ("sigmoid", "s--")):
        ys = [report["initial"][probe]["r2"]] + [h["after"][probe]["r2"] for h in report["history"]]
        ax.plot(stages, ys, style, label=f"{probe} probe")
    ax.axhline(report["config"]["auto_threshold"], color="grey", lw=0.8, ls=":", label="auto threshold")
    ax.set_xlabel("RASA stages removed")
    ax.set_ylabel("held-out position R²")
    s = report["probe_sizes"]
    m = {k: v["metric"] for k, v in miou.items()}
    ax.set_title(f"vitt8 tiny, 64 px (8×8), probes fit {s['fit_images']} / scored {s['score_images']} images\n"
                 f"in-context mIoU raw {m['raw']:.2f} → RASA {m['RASA']:.2f}", fontsize=9)
    ax.set_xticks(stages)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    print(table(report))
    print(f"stop: {report['stop_reason']}")
    print("in-context mIoU:", {k: (v["metric"], v.get("std")) for k, v in miou.items()})


if __name__ == "__main__":
    main(*sys.argv[1:5])
