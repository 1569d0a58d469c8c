"""The sweep's report: one JSON, a markdown table and a plot, built from the per-run result files.

Scores are mean ± sample std over seeds; the difference of each variant to the baseline is paired by
seed (franca.ablate.stats). The untrained backbone of each seed is the reference row. Cost columns:
parameter counts of the student (backbone, both heads) and the time per training step (wall, and CPU
of the process when the run was not resumed).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from franca.ablate.evaluate import metric_info
from franca.ablate.stats import paired_difference, summarize, verdict
from franca.ablate.sweep import Sweep, load_result
from franca.utils.plotting import pyplot
from franca.utils.results import write_text_atomic


def aggregate(sweep: Sweep) -> dict[str, Any]:
    """Per variant (and 'init'): per-metric seed values, mean ± std, paired difference to the baseline."""
    info = metric_info(sweep.protocols)
    specs = sweep.specs()
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for s in specs:
        r = load_result(sweep, s)
        if r is not None:
            results.setdefault(s.variant, {})[s.seed] = r
    fixed = [name for name, _ in sweep.references]  # not trained: no difference to the baseline
    names = (["init"] if sweep.with_init else []) + fixed + [v.name for v in sweep.variants]
    base = {seed: r["metrics"] for seed, r in results.get(sweep.baseline, {}).items()}
    rows: dict[str, Any] = {}
    for name in names:
        runs = results.get(name, {})
        row: dict[str, Any] = {"seeds": sorted(runs), "metrics": {}, "overrides": _overrides(sweep, name)}
        if name in fixed:
            row["weights"] = dict(sweep.references)[name]
        for key, mi in info.items():
            by_seed = {seed: r["metrics"].get(key) for seed, r in runs.items()}
            entry: dict[str, Any] = {
                "per_seed": {str(k): v for k, v in sorted(by_seed.items())},
                **summarize([v for _, v in sorted(by_seed.items())]),
            }
            if name not in ("init", sweep.baseline, *fixed):
                d = paired_difference(
                    {k: v for k, v in by_seed.items() if v is not None},
                    {k: m.get(key) for k, m in base.items() if m.get(key) is not None},
                )
                d["verdict"] = (
                    verdict(d, mi.higher_is_better)
                    if mi.higher_is_better is not None
                    else {"better": "higher", "worse": "lower"}.get(verdict(d, True), "undecided")
                )
                entry["vs_baseline"] = d
            row["metrics"][key] = entry
        if runs:
            any_run = next(iter(runs.values()))
            row["params"] = any_run.get("params")
            tr = [r["train"] for r in runs.values() if "train" in r]
            if tr:
                row["iterations"] = sorted({t["iterations"] for t in tr})
                row["global_batch"] = sorted({t["global_batch"] for t in tr})
                row["step_wall_ms"] = summarize([t["step_wall_ms"] for t in tr])
                cpu = [t["step_cpu_ms"] for t in tr if t.get("step_cpu_ms") is not None and not t["resumed_at"]]
                row["step_cpu_ms"] = summarize(cpu)
            row["run_wall_s"] = sum(r["wall_s"] for r in runs.values())
            row["run_cpu_s"] = sum(r["cpu_s"] for r in runs.values())
        rows[name] = row
    total_wall = sum(r.get("run_wall_s", 0.0) for r in rows.values())
    total_cpu = sum(r.get("run_cpu_s", 0.0) for r in rows.values())
    return {
        "preset": sweep.preset,
        "baseline": sweep.baseline,
        "seeds": list(sweep.seeds),
        "protocols": list(sweep.protocols),
        "common_overrides": list(sweep.common),
        "settings": sweep.settings.to_dict(),
        "metrics": {k: {"label": v.label, "higher_is_better": v.higher_is_better} for k, v in info.items()},
        "rows": rows,
        "runs_wall_s": total_wall,
        "runs_cpu_s": total_cpu,
    }


def _overrides(sweep: Sweep, name: str) -> list[str]:
    for v in sweep.variants:
        if v.name == name:
            return list(v.overrides)
    return []


def _num(x: float | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}f}"


def _digits(key: str) -> int:
    return 3 if key.startswith("rasa") or key == "pca_retention" else 1


def _groups(metrics: dict[str, Any]) -> list[tuple[str, list[str]]]:
    keys = list(metrics)
    pca = [k for k in keys if k.startswith("pca")]
    main = [k for k in keys if k not in pca]
    return [
        (t, g)
        for t, g in (("Scores", main), ("PCA slicing (Table 9): linear top-1 on the first k components", pca))
        if g
    ]


def markdown(agg: dict[str, Any]) -> str:
    """The report's tables: scores, differences to the baseline, cost."""
    rows, metrics, base = agg["rows"], agg["metrics"], agg["baseline"]
    lines: list[str] = []
    for title, keys in _groups(metrics):
        lines += [
            f"**{title}** (mean ± std over seeds; mIoU and top-1 in %)",
            "",
            "| variant | n | " + " | ".join(metrics[k]["label"] for k in keys) + " |",
            "|---|---|" + "---|" * len(keys),
        ]
        for name, row in rows.items():
            cells = []
            for k in keys:
                m = row["metrics"][k]
                d = _digits(k)
                cells.append(f"{_num(m['mean'], d)} ± {_num(m['std'], d)}" if m["n"] else "–")
            label = f"{name} (baseline)" if name == base else ("init (untrained)" if name == "init" else name)
            label += " (fixed)" if "weights" in row else ""
            lines.append(f"| {label} | {len(row['seeds'])} | " + " | ".join(cells) + " |")
        lines.append("")
    for title, keys in _groups(metrics):
        lines += [
            f"**Difference to {base}** ({title.split(':')[0].lower()}; paired by seed: mean Δ [95 % t interval], "
            "verdict: interval excludes 0)",
            "",
            "| variant | " + " | ".join(metrics[k]["label"] for k in keys) + " |",
            "|---|" + "---|" * len(keys),
        ]
        for name, row in rows.items():
            if name in ("init", base) or "weights" in row:
                continue
            cells = []
            for k in keys:
                d = row["metrics"][k].get("vs_baseline") or {}
                dg = _digits(k)
                if d.get("mean") is None:
                    cells.append("–")
                    continue
                ci = f" [{_num(d['ci_low'], dg)}, {_num(d['ci_high'], dg)}]" if d.get("ci_low") is not None else ""
                tag = {"better": " **better**", "worse": " **worse**", "higher": " higher", "lower": " lower"}.get(
                    d["verdict"], ""
                )
                cells.append(f"{d['mean']:+.{dg}f}{ci}{tag}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "**Cost** (student parameters; time per training step, mean over seeds)",
        "",
        "| variant | overrides | backbone params | head params | iterations × batch | step wall ms | step CPU ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        p = row.get("params") or {}
        it = row.get("iterations")
        ov = " ".join(f"`{o}`" for o in row["overrides"]) or ("(untrained)" if name == "init" else "(preset)")
        ov = f"weights `{row['weights']}`" if "weights" in row else ov
        sw, sc = row.get("step_wall_ms"), row.get("step_cpu_ms")
        lines.append(
            f"| {name} | {ov} | {p.get('backbone', 0):,} | {p.get('heads', 0):,} | "
            f"{'/'.join(map(str, it)) + ' × ' + '/'.join(map(str, row['global_batch'])) if it else '–'} | "
            f"{_num(sw['mean']) if sw and sw['n'] else '–'} | {_num(sc['mean']) if sc and sc['n'] else '–'} |"
        )
    lines.append("")
    return "\n".join(lines)


def plot(agg: dict[str, Any], path: Path) -> None:
    """One panel per metric (seed dots, mean ± std, init as a dashed line) plus the PCA-slicing curves."""
    plt = pyplot()

    rows, metrics = agg["rows"], agg["metrics"]
    names = [n for n in rows if n != "init"]
    scalar = [k for k in metrics if not k.startswith("pca_") or k == "pca_retention"]
    pca = [k for k in metrics if k.startswith("pca_") and k != "pca_retention"]
    n_panels = len(scalar) + (1 if pca else 0)
    cols = min(4, n_panels)
    nrows = math.ceil(n_panels / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 3.0 * nrows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, k in zip(axes.flat, scalar):
        for i, n in enumerate(names):
            m = rows[n]["metrics"][k]
            if not m["n"]:
                continue
            ax.scatter([i] * m["n"], m["values"], s=12, color=colors[i % len(colors)], alpha=0.6)
            ax.errorbar([i + 0.15], [m["mean"]], yerr=[m["std"]], fmt="o", color="k", ms=4, capsize=3)
        ref = rows.get("init", {}).get("metrics", {}).get(k)
        if ref and ref["n"]:
            ax.axhline(ref["mean"], color="grey", ls="--", lw=1, label="init")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
        ax.set_title(metrics[k]["label"], fontsize=9)
    if pca:
        ax = axes.flat[len(scalar)]
        fr = [1, 2, 4, 8, 16][: len(pca)]
        for n in list(rows):
            ms = [rows[n]["metrics"][k] for k in pca]
            if not all(m["n"] for m in ms):
                continue
            ax.errorbar(
                fr,
                [m["mean"] for m in ms],
                yerr=[m["std"] for m in ms],
                marker="o",
                ms=3,
                capsize=2,
                label=n,
                color="grey" if n == "init" else colors[names.index(n) % len(colors)],
                ls="--" if n == "init" else "-",
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(fr)
        ax.set_xticklabels(["all" if f == 1 else f"1/{f}" for f in fr])
        ax.set_title("PCA slicing: top-1 vs share of components", fontsize=9)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n_panels:]:
        ax.axis("off")
    fig.suptitle(f"ablations of the {agg['preset']} preset: {len(agg['seeds'])} seeds (dots), mean ± std", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write_report(sweep: Sweep, command: str | None = None, sweep_info: dict[str, Any] | None = None) -> dict[str, Path]:
    """ablation.json, ablation.md and ablation.png in the sweep folder; returns their paths."""
    agg = aggregate(sweep)
    if command:
        agg["command"] = command
    if sweep_info:
        agg["last_invocation"] = sweep_info
    out = {"json": sweep.out / "ablation.json", "md": sweep.out / "ablation.md", "png": sweep.out / "ablation.png"}
    write_text_atomic(out["json"], json.dumps(agg, indent=2) + "\n")
    header = f"Ablations of the `{sweep.preset}` preset, baseline `{sweep.baseline}`"
    if command:
        header += f", made by\n\n    {command}\n"
    write_text_atomic(out["md"], header + "\n" + markdown(agg))
    plot(agg, out["png"])
    return out
