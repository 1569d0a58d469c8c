"""RASA figure and tables for docs/rasa.md.

python docs/figures/rasa_plot.py synthetic OUT.json
    RASA (--iterations auto) on the synthetic backbone of tests/test_rasa_synthetic.py, with the
    position code orthogonal to the class directions and overlapping them: per-stage R² of both
    probes and the content (class) probe accuracy before/after.
python docs/figures/rasa_plot.py plot REPORT.json INCONTEXT_RAW.json INCONTEXT_RASA.json SYNTHETIC.json OUT.png
    The figure, and the Markdown tables printed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _curve(initial: dict, history: list[dict], probe: str) -> list[float]:
    return [initial[probe]["r2"]] + [h["after"][probe]["r2"] for h in history]


def synthetic(out: str) -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
    import test_rasa_synthetic as syn

    from franca.rasa.fit import CachedFeatures, RasaConfig, extract_all, fit_rasa
    from franca.rasa.probe import ProbeSettings
    from franca.rasa.removal import apply_projection

    dev = torch.device("cpu")
    result = {}
    for name, orth in (("orthogonal", True), ("overlapping", False)):
        model = syn.SyntheticBackbone(orthogonal_to_class=orth).eval()
        train, _ = syn._images(192, seed=1)
        held, _ = syn._images(64, seed=2)
        tokens, heldout = extract_all(model, train.split(64), dev), extract_all(model, held.split(64), dev)
        cfg = RasaConfig(
            iterations=6, auto=True, batch_size=32, lr=1e-2, max_steps=1500, progress=False, probe=ProbeSettings()
        )
        res = fit_rasa(CachedFeatures(tokens, (syn.GRID, syn.GRID), 32), cfg, device=dev, heldout=heldout)
        fit_img, fit_lab = syn._images(48, seed=3)
        score_img, score_lab = syn._images(48, seed=4)
        fx, sx = extract_all(model, [fit_img], dev), extract_all(model, [score_img], dev)
        acc = (
            syn._content_accuracy(fx, fit_lab, sx, score_lab),
            syn._content_accuracy(
                apply_projection(fx, res.projection), fit_lab, apply_projection(sx, res.projection), score_lab
            ),
        )
        result[name] = {**res.report(), "content_accuracy_before": acc[0], "content_accuracy_after": acc[1]}
    Path(out).write_text(json.dumps(result, indent=1, sort_keys=True))


def table(initial: dict, history: list[dict]) -> str:
    rows = [
        "| after stage | stage steps (converged) | ridge R² | sigmoid R² | sigmoid probe steps |",
        "|---|---|---|---|---|",
        f"| 0 (raw) | – | {initial['ridge']['r2']:.4f} | {initial['sigmoid']['r2']:.4f} | "
        f"{initial['sigmoid']['detail']['steps']} |",
    ]
    for h in history:
        a = h["after"]
        rows.append(
            f"| {h['iteration']} | {h['steps']} ({h['converged']}) | {a['ridge']['r2']:.4f} | "
            f"{a['sigmoid']['r2']:.4f} | {a['sigmoid']['detail']['steps']} |"
        )
    return "\n".join(rows)


def plot(report_path: str, raw_path: str, rasa_path: str, synthetic_path: str, out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report = json.loads(Path(report_path).read_text())
    syn = json.loads(Path(synthetic_path).read_text())
    miou = {k: json.loads(Path(p).read_text())["miou"] for k, p in (("raw", raw_path), ("RASA", rasa_path))}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
    thr = report["config"]["auto_threshold"]
    ax = axes[0]
    stages = list(range(len(report["history"]) + 1))
    for probe, style in (("ridge", "o-"), ("sigmoid", "s--")):
        ax.plot(stages, _curve(report["initial"], report["history"], probe), style, label=f"{probe} probe")
    s = report["probe_sizes"]
    ax.set_title(
        f"tiny vitt8, 64 px (8×8): probes fit {s['fit_images']} / scored {s['score_images']} images\n"
        f"in-context mIoU {100 * miou['raw']['mean']:.2f} ± {100 * miou['raw']['std']:.2f} raw, "
        f"{100 * miou['RASA']['mean']:.2f} ± {100 * miou['RASA']['std']:.2f} RASA",
        fontsize=9,
    )
    ax = axes[1]
    for name, colour in (("orthogonal", "C2"), ("overlapping", "C3")):
        r = syn[name]
        st = list(range(len(r["history"]) + 1))
        for probe, style in (("ridge", "o-"), ("sigmoid", "s--")):
            ax.plot(st, _curve(r["initial"], r["history"], probe), style, color=colour, label=f"{name} code, {probe}")
    ax.set_title(
        "synthetic backbone (content + rank-2 position code)\ncontent accuracy "
        + ", ".join(
            f"{n}: {syn[n]['content_accuracy_before']:.1f} → {syn[n]['content_accuracy_after']:.1f}"
            for n in ("orthogonal", "overlapping")
        ),
        fontsize=9,
    )
    for ax in axes:
        ax.axhline(thr, color="grey", lw=0.8, ls=":", label=f"auto threshold {thr}")
        ax.set_xlabel("RASA stages removed")
        ax.set_ylabel("held-out position R²")
        ax.legend(fontsize=7)
        ax.set_xticks(range(max(len(report["history"]), *(len(r["history"]) for r in syn.values())) + 1))
    fig.tight_layout()
    fig.savefig(out)
    print("tiny vitt8:\n" + table(report["initial"], report["history"]) + f"\nstop: {report['stop_reason']}")
    print("in-context mIoU (%):", {k: (round(100 * v["mean"], 2), round(100 * v["std"], 2)) for k, v in miou.items()})
    for name, r in syn.items():
        print(
            f"synthetic, {name} code:\n" + table(r["initial"], r["history"]) + f"\nstop: {r['stop_reason']}\n"
            f"content accuracy {r['content_accuracy_before']:.2f} -> {r['content_accuracy_after']:.2f}"
        )


if __name__ == "__main__":
    {"synthetic": synthetic, "plot": plot}[sys.argv[1]](*sys.argv[2:])
