"""`franca report RUN_DIR`: gather a run's results and figures into one markdown page and its HTML twin.

What is gathered (recursively under RUN_DIR):
- evaluation JSONs — any ``*.json`` holding ``protocol`` and ``metric`` keys — one summary table
  (protocol, metric, value ± std, model, file) and a detail table per protocol of the other scalar
  fields;
- other JSONs with a ``protocol`` key (e.g. token norms) and ``summary*.json`` files as key/value tables;
- pretraining metrics (``*.jsonl``, one JSON object per line): first/last/min of every numeric
  field and a curve of the loss fields, drawn into ``report_files/``;
- every ``*.png``: linked by relative path in the markdown page, embedded (base64 data URI) in the
  HTML page, so the HTML file alone shows everything when it is mailed or moved.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

Section = tuple[str, list[tuple[str, Any]]]  # (heading, blocks); block kinds: "table", "image", "text"


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}" if abs(v) < 1e4 else f"{v:.4e}"
    if isinstance(v, dict) and "mean" in v:
        return f"{_fmt(v['mean'])} ± {_fmt(v.get('std', 0.0))}"
    return str(v)


def _scalars(d: dict[str, Any], prefix: str = "", depth: int = 0) -> dict[str, Any]:
    """Flatten scalar leaves (and mean/std dicts) of nested dicts up to depth 2, dotted keys."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and "mean" in v and not isinstance(v["mean"], dict):
            out[key] = v
        elif isinstance(v, dict) and depth < 2:
            out.update(_scalars(v, key + ".", depth + 1))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[key] = v
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


MAX_JSON_DEPTH = 64
"""Deeper than any result JSON: a file nested deeper is skipped (it aborted the report with a RecursionError)."""


def _depth(obj: Any) -> int:
    """Nesting depth of decoded JSON, without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        deepest = max(deepest, d)
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)
    return deepest


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except RecursionError:
        log.warning("report: skipping %s (nested too deeply to be a result)", path)
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        log.warning("report: skipping %s (%s)", path, exc)
        return None
    if _depth(data) > MAX_JSON_DEPTH:
        log.warning("report: skipping %s (nested more than %d levels deep: not a result)", path, MAX_JSON_DEPTH)
        return None
    return data if isinstance(data, dict) else None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for i, line in enumerate(path.read_text().splitlines()):
        if line.strip():
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, RecursionError):
                log.warning("report: %s line %d is not JSON; skipped", path, i + 1)
                continue
            if isinstance(obj, dict) and _depth(obj) <= MAX_JSON_DEPTH:
                rows.append(obj)
    return rows


def _model_name(d: dict[str, Any]) -> str:
    m = d.get("model")
    if isinstance(m, dict):
        label = m.get("weights_label") or (Path(str(m["weights"])).name if m.get("weights") else None)
        name = str(m.get("model") or "")
        return f"{name} ({label})" if name and label else (name or label or "")
    return "" if m is None else str(m)


def eval_sections(run_dir: Path, docs: list[tuple[Path, dict[str, Any]]]) -> list[Section]:
    results = [(f, d) for f, d in docs if "protocol" in d and "metric" in d]
    if not results:
        return []
    rows = [["protocol", "metric", "value", "model", "file"]]
    for f, d in results:
        std = d.get("metric_std")
        val = _fmt(d["metric"]) + (f" ± {_fmt(std)}" if isinstance(std, (int, float)) else "")
        rows.append(
            [str(d["protocol"]), str(d.get("metric_name", "")), val, _model_name(d), str(f.relative_to(run_dir))]
        )
    sections: list[Section] = [("Evaluation results", [("table", rows)])]
    for f, d in results:
        flat = {k: v for k, v in _scalars(d).items() if k not in ("protocol", "metric", "metric_name")}
        if flat:
            sections.append(
                (
                    f"{d['protocol']} — {f.relative_to(run_dir)}",
                    [("table", [["field", "value"]] + [[k, _fmt(v)] for k, v in flat.items()])],
                )
            )
    return sections


def other_json_sections(run_dir: Path, docs: list[tuple[Path, dict[str, Any]]]) -> list[Section]:
    out: list[Section] = []
    for f, d in docs:
        if not d or ("metric" in d and "protocol" in d):
            continue
        if "protocol" in d or f.name.startswith("summary"):
            flat = _scalars(d)
            if flat:
                out.append(
                    (
                        f"{d.get('protocol', f.stem)} — {f.relative_to(run_dir)}",
                        [("table", [["field", "value"]] + [[k, _fmt(v)] for k, v in flat.items()])],
                    )
                )
    return out


def metrics_sections(run_dir: Path, files: list[Path], fig_dir: Path) -> list[Section]:
    out: list[Section] = []
    for f in files:
        rows = _read_jsonl(f)
        if not rows:
            continue
        keys = sorted({k for r in rows for k, v in r.items() if _is_number(v)})
        table = [["field", "first", "last", "min", "n"]]
        for k in keys:
            vals = [float(r[k]) for r in rows if _is_number(r.get(k))]
            table.append([k, _fmt(vals[0]), _fmt(vals[-1]), _fmt(min(vals)), str(len(vals))])
        blocks: list[tuple[str, Any]] = [("table", table)]
        loss_keys = [k for k in keys if "loss" in k or k in ("total", "dino_global", "dino_local", "ibot", "koleo")]
        if loss_keys:
            png = _plot_curves(rows, loss_keys, fig_dir / f"{f.stem}_curves.png")
            blocks.append(("image", png))
        out.append((f"Training metrics — {f.relative_to(run_dir)}", blocks))
    return out


def _plot_curves(rows: list[dict[str, Any]], keys: list[str], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step_key = next((k for k in ("iteration", "step", "iter", "epoch") if k in rows[0]), None)
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for k in keys[:8]:
        pts = [(r.get(step_key, i) if step_key else i, r[k]) for i, r in enumerate(rows) if _is_number(r.get(k))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k, linewidth=1)
    ax.set_xlabel(step_key or "record")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def to_markdown(title: str, sections: list[Section], base: Path) -> str:
    lines = [f"# {title}", ""]
    for heading, blocks in sections:
        lines += [f"## {heading}", ""]
        for kind, body in blocks:
            if kind == "table":
                esc = [[c.replace("|", "\\|") for c in row] for row in body]
                lines.append("| " + " | ".join(esc[0]) + " |")
                lines.append("|" + "---|" * len(esc[0]))
                lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
            elif kind == "image":
                rel = Path(os.path.relpath(body, base)).as_posix()
                lines.append(f"![{Path(body).stem}]({rel})")
            else:
                lines.append(str(body))
            lines.append("")
    return "\n".join(lines)


def to_html(title: str, sections: list[Section], base: Path) -> str:
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}img{max-width:100%}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    for heading, blocks in sections:
        parts.append(f"<h2>{e(heading)}</h2>")
        for kind, body in blocks:
            if kind == "table":
                head = "".join(f"<th>{e(c)}</th>" for c in body[0])
                rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in body[1:])
                parts.append(f"<table><tr>{head}</tr>{rows}</table>")
            elif kind == "image":
                rel = Path(os.path.relpath(body, base)).as_posix()
                parts.append(
                    f"<figure><img src='{data_uri(Path(body))}' alt='{e(Path(body).stem)}'>"
                    f"<figcaption>{e(rel)}</figcaption></figure>"
                )
            else:
                parts.append(f"<p>{e(str(body))}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def data_uri(path: Path) -> str:
    """The file as a data: URI (so the page needs no other file)."""
    kind = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}.get(
        path.suffix.lower(), "application/octet-stream"
    )
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def build_report(run_dir: str | Path, out: str | Path | None = None, title: str | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` (default: in RUN_DIR; the HTML is self-contained);
    returns both paths."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    md_path = Path(out) if out else run_dir / "report.md"
    base = md_path.parent
    fig_dir = base / "report_files"
    jsons = sorted(p for p in run_dir.rglob("*.json") if p.is_file())
    jsonls = sorted(p for p in run_dir.rglob("*.jsonl") if p.is_file())
    docs = [(f, d) for f in jsons if (d := _read_json(f)) is not None]  # each file read (and warned about) once
    sections = eval_sections(run_dir, docs) + other_json_sections(run_dir, docs)
    sections += metrics_sections(run_dir, jsonls, fig_dir)
    pngs = sorted(p for p in run_dir.rglob("*.png") if p.is_file() and fig_dir.resolve() not in p.resolve().parents)
    if pngs:
        sections.append(("Figures", [("image", p.resolve()) for p in pngs]))
    if not sections:
        sections.append(("Nothing found", [("text", f"no result JSON, metrics JSONL or PNG under {run_dir}")]))
    base_r = base.resolve()
    sections = [(h, [(k, Path(b).resolve() if k == "image" else b) for k, b in blocks]) for h, blocks in sections]
    title = title or f"Run report: {run_dir.resolve().name}"
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(to_markdown(title, sections, base_r))
    html_path = md_path.with_suffix(".html")
    html_path.write_text(to_html(title, sections, base_r))
    return md_path, html_path
