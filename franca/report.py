"""`franca report RUN_DIR`: gather the runs and results under a folder into one markdown page and its HTML twin.

What the page shows, first to last:
- **Summary**: one row per pretraining run (a folder holding `summary.json`, `metrics.jsonl` or a checkpoint
  with its `config.yaml`) and one per other backbone that results were measured on: run (its folder, never
  `checkpoint.pth`), model, weights, iterations, k-NN top-1 at init → trained, the precision its numbers ran
  in (bf16 or fp32; "—" for files written before it was recorded), and each protocol's metric (± std only over
  two or more seeds);
- **one section per run**: how it stopped, its own loss curve (`report_files/<run>-loss.png`, titled), the
  results measured on its checkpoint, and the figures in its folder;
- results measured on other backbones, then the other figures;
- **Details**, folded (HTML `<details>`, a closing section in markdown): every file's fields, without
  std rows for one seed, empty values or per-file software versions, and with dates shown as dates.

A result belongs to a run when the weights it names are the run's checkpoint: the same file, or a file of
the same name, size and modification time (the run moved), or a file of the same name when the result lies
in the run folder (marked "†" when the checkpoint was rewritten after the measurement).
PNGs are linked by relative path in the markdown page and embedded (base64) in the HTML page, so the HTML
file alone shows everything when it is mailed or moved.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from franca.utils.names import distinct_path_names
from franca.utils.plotting import pyplot

log = logging.getLogger(__name__)

LOSS_KEYS = ("total", "dino_global", "dino_local", "ibot", "koleo")  # the curves of a run's loss plot
STALE = "†"  # a result measured on an earlier state of the run's checkpoint


@dataclass
class Section:
    """A heading and its blocks ("table": rows with a header row, "image": a path, "text": a line).
    Folded sections go under "Details": HTML `<details>`, the closing section in markdown."""

    heading: str
    blocks: list[tuple[str, Any]]
    folded: bool = False


@dataclass
class Run:
    """One pretraining run folder and what it holds."""

    folder: Path
    name: str = ""
    summary: dict[str, Any] | None = None
    summary_file: Path | None = None
    config: dict[str, Any] | None = None
    metrics: list[tuple[Path, list[dict[str, Any]]]] = field(default_factory=list)  # (file, its rows)
    checkpoint: Path | None = None
    results: list[tuple[Path, dict[str, Any], bool]] = field(default_factory=list)  # (file, doc, stale)


# ------------------------------------------------------------------------------------------- reading
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


def _read_yaml(path: Path) -> dict[str, Any] | None:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        log.warning("report: skipping %s (%s)", path, exc)
        return None
    return data if isinstance(data, dict) else None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_result(d: dict[str, Any]) -> bool:
    return "protocol" in d and "metric" in d


def _is_run_summary(d: dict[str, Any]) -> bool:
    return "planned_iterations" in d and "stop_reason" in d


def find_runs(root: Path, docs: dict[Path, dict[str, Any]], jsonls: dict[Path, list[dict[str, Any]]]) -> list[Run]:
    """The pretraining runs under root: folders with a run summary, training metrics or a config + checkpoint."""
    runs: dict[Path, Run] = {}
    for f, d in docs.items():
        if f.name == "summary.json" and _is_run_summary(d):
            runs.setdefault(f.parent, Run(f.parent)).summary, runs[f.parent].summary_file = d, f
    for f, rows in jsonls.items():
        if rows and "iteration" in rows[0]:
            runs.setdefault(f.parent, Run(f.parent)).metrics.append((f, rows))
    for cfg in root.rglob("config.yaml"):
        if (cfg.parent / "checkpoint.pth").is_file():
            runs.setdefault(cfg.parent, Run(cfg.parent))
    out = sorted(runs.values(), key=lambda r: str(r.folder))
    for r in out:
        r.name = r.folder.relative_to(root).as_posix() if r.folder != root else root.resolve().name
        if (r.folder / "config.yaml").is_file():
            r.config = _read_yaml(r.folder / "config.yaml")
        named = Path(str((r.summary or {}).get("checkpoint", "checkpoint.pth"))).name
        if (r.folder / named).is_file():
            r.checkpoint = r.folder / named
    return out


def _weights_of(d: dict[str, Any]) -> dict[str, Any]:
    """The backbone block of a result: "model" (evaluations) or "backbone" (RASA)."""
    for key in ("model", "backbone"):
        if isinstance(d.get(key), dict):
            return d[key]
    return {}


def owner(f: Path, d: dict[str, Any], runs: list[Run]) -> tuple[Run | None, bool]:
    """The run whose checkpoint a result was measured on, and whether the checkpoint changed since (stale).

    In order: the recorded path is the checkpoint; the result lies in the run folder and names a file of the
    checkpoint's name; one checkpoint alone has the recorded name, size and modification time (the run or
    the result moved). Two checkpoints that fit equally leave the result to no run."""
    m = _weights_of(d)
    if not m.get("weights"):
        return None, False
    w = Path(str(m["weights"]))
    named = [r for r in runs if r.checkpoint is not None and r.checkpoint.name == w.name]

    def same_stat(r: Run) -> bool:
        st = r.checkpoint.stat()  # type: ignore[union-attr]
        return m.get("weights_bytes") == st.st_size and m.get("weights_mtime") == int(st.st_mtime)

    def stale(r: Run) -> bool:
        return "weights_mtime" in m and not same_stat(r)

    try:
        here = w.resolve() if w.exists() else None
    except OSError:
        here = None
    for r in named:
        if here is not None and here == r.checkpoint.resolve():  # type: ignore[union-attr]
            return r, stale(r)
    inside = [r for r in named if r.folder in f.parents]
    if inside:
        r = max(inside, key=lambda r: len(r.folder.parts))
        return r, stale(r)
    fits = [r for r in named if same_stat(r)]
    return (fits[0], False) if len(fits) == 1 else (None, False)


# ------------------------------------------------------------------------------------------- formatting
def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}" if abs(v) < 1e4 else f"{v:.4e}"
    if isinstance(v, dict) and "mean" in v:
        return f"{_fmt(v['mean'])} ± {_fmt(v.get('std', 0.0))}"
    return str(v)


def _date(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _duration(s: float) -> str:
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"


def n_seeds(d: dict[str, Any]) -> int | None:
    """How many seeds a result averages (None when it does not say)."""
    settings = d.get("settings") if isinstance(d.get("settings"), dict) else {}
    for v in (settings.get("seeds"), d.get("seeds"), d.get("per_seed")):
        if isinstance(v, list):
            return len(v)
    return None


def metric_text(d: dict[str, Any]) -> str:
    """'71.25 ± 0.5' (std only over ≥ 2 seeds), or why there is no value (e.g. 'probe failure')."""
    value = d.get("metric")
    if not _is_number(value):
        return str(d.get("status") or "no value").replace("_", " ")
    std = d.get("metric_std")
    seeds = n_seeds(d)
    show_std = _is_number(std) and (seeds >= 2 if seeds is not None else std > 0)
    return _fmt(value) + (f" ± {_fmt(std)}" if show_std else "")


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


def detail_rows(d: dict[str, Any]) -> list[list[str]]:
    """A file's fields for the folded detail: dotted keys; no std rows for one seed, no empty values, no
    per-file software versions; modification times and clock times as dates."""
    one_seed = n_seeds(d) is not None and (n_seeds(d) or 0) < 2
    rows = [["field", "value"]]
    for k, v in _scalars({x: y for x, y in d.items() if x != "versions"}).items():
        leaf = k.rsplit(".", 1)[-1]
        if v is None or k in ("protocol", "metric", "metric_name"):
            continue
        if one_seed and (leaf.endswith("_std") or k.startswith("results_std.") or leaf == "std"):
            continue
        if isinstance(v, dict) and one_seed:
            v = v["mean"]
        if leaf.endswith("mtime") and _is_number(v):
            v = _date(float(v))
        elif leaf == "time" and isinstance(v, str):
            v = v.replace("T", " ")
        rows.append([k, _fmt(v)])
    return rows


def _model_text(r: Run) -> str:
    m = (r.config or {}).get("model") or {}
    arch = m.get("arch")
    if not arch:
        return "not recorded"
    shape = [f"{m['embed_dim']}-d" if m.get("embed_dim") else "", f"{m['depth']} blocks" if m.get("depth") else ""]
    shape = [s for s in shape if s]
    return f"{arch} ({', '.join(shape)})" if shape else str(arch)


def _iterations_text(r: Run, last_logged: int | None) -> str:
    s = r.summary
    if s is None:
        return f"{last_logged} logged, no summary.json (running or stopped)" if last_logged else "—"
    done, planned = s.get("iterations"), s.get("planned_iterations")
    if done == planned:
        return str(done)
    why = "time limit" if "time limit" in str(s.get("stop_reason", "")) else "stopped early"
    return f"{done} of {planned} ({why})"


def _knn_text(s: dict[str, Any] | None) -> str:
    if not s or not _is_number(s.get("knn_top1_init")):
        return "—"
    if not _is_number(s.get("knn_top1_trained")):
        return f"{_fmt(s['knn_top1_init'])} → —"
    gain = s["knn_top1_trained"] - s["knn_top1_init"]
    return f"{_fmt(s['knn_top1_init'])} → {_fmt(s['knn_top1_trained'])} ({gain:+.1f})"


# ------------------------------------------------------------------------------------------- sections
def _column(d: dict[str, Any]) -> str:
    return f"{d['protocol']} {d.get('metric_name', '')}".strip()


def _latest(items: list[tuple[Path, dict[str, Any], bool]]) -> tuple[Path, dict[str, Any], bool]:
    return max(items, key=lambda x: (str(x[1].get("time", "")), x[0].stat().st_mtime))


def _precision_text(d: dict[str, Any]) -> str:
    """The precision a result (or a run's k-NN check) ran in; "—" for files written before it was recorded."""
    return str(d.get("precision") or "—")


def _row_precision(docs: list[dict[str, Any]]) -> str:
    """The precisions a summary row's numbers ran in, each named once ("bf16", "fp32, bf16"); "—" when none."""
    return ", ".join(dict.fromkeys(_precision_text(d) for d in docs)) or "—"


def _cell(items: list[tuple[Path, dict[str, Any], bool]]) -> str:
    if not items:
        return "—"
    _, d, stale = _latest(items)
    more = f" (latest of {len(items)})" if len(items) > 1 else ""
    return metric_text(d) + (STALE if stale else "") + more


def summary_section(
    runs: list[Run],
    others: dict[str, list[tuple[Path, dict[str, Any]]]],
    other_weights: dict[str, tuple[str, str]],
    root: Path,
    last_logged: dict[str, int | None],
) -> Section:
    """One row per run, then one per other backbone: run, model, weights, iterations, k-NN, the precision of
    the row's numbers (the run's k-NN check and the latest result of each protocol), each protocol."""
    results = [d for r in runs for _, d, _ in r.results] + [d for items in others.values() for _, d in items]
    columns = list(dict.fromkeys(_column(d) for d in results))
    rows = [["run", "model", "weights", "iterations", "k-NN top-1 init → trained", "precision", *columns]]
    for r in runs:
        ck = r.checkpoint.relative_to(root).as_posix() if r.checkpoint else "no checkpoint"
        shown = [[x for x in r.results if _column(x[1]) == c] for c in columns]
        cells = [_cell(items) for items in shown]
        knn = _knn_text(r.summary)
        docs = ([r.summary] if r.summary is not None and knn != "—" else []) + [_latest(i)[1] for i in shown if i]
        rows.append(
            [
                r.name,
                _model_text(r),
                ck,
                _iterations_text(r, last_logged[r.name]),
                knn,
                _row_precision(docs),
                *cells,
            ]
        )
    for name, items in others.items():
        model, weights = other_weights[name]
        shown = [[(f, d, False) for f, d in items if _column(d) == c] for c in columns]
        cells = [_cell(i) for i in shown]
        rows.append([name, model, weights, "—", "—", _row_precision([_latest(i)[1] for i in shown if i]), *cells])
    blocks: list[tuple[str, Any]] = [("table", rows)]
    if any(stale for r in runs for _, _, stale in r.results):
        blocks.append(("text", f"{STALE} measured on an earlier state of the run's checkpoint (rewritten since)"))
    return Section("Summary", blocks)


def _results_table(items: list[tuple[Path, dict[str, Any], bool]], root: Path) -> list[list[str]]:
    rows = [["protocol", "metric", "value", "seeds", "size", "precision", "measured", "file"]]
    for f, d, stale in items:
        settings = d.get("settings") if isinstance(d.get("settings"), dict) else {}
        size = settings.get("size", d.get("size", ""))
        when = str(d.get("time", "")).replace("T", " ")[:16] or _date(f.stat().st_mtime)
        rows.append(
            [
                str(d["protocol"]),
                str(d.get("metric_name", "")),
                metric_text(d) + (STALE if stale else ""),
                str(n_seeds(d) or ""),
                str(size),
                _precision_text(d),
                when,
                f.relative_to(root).as_posix(),
            ]
        )
    return rows


def run_section(r: Run, root: Path, fig_dir: Path, curve_name: str, pngs: list[Path]) -> tuple[Section, list[Section]]:
    """A run's section (how it stopped, its loss curve, its results, its figures) and its folded details."""
    blocks: list[tuple[str, Any]] = []
    folded: list[Section] = []
    s = r.summary
    facts = [["field", "value"]]
    if s is not None:
        wall = s.get("wall_time_s")
        facts += [
            ["stopped", str(s.get("stop_reason", ""))],
            ["iterations", f"{s.get('iterations')} of {s.get('planned_iterations')}"],
            ["epochs", _fmt(s["epochs"]) if _is_number(s.get("epochs")) else ""],
            ["images seen", str(s.get("images_seen", ""))],
            ["wall time", _duration(float(wall)) if _is_number(wall) else ""],
            ["device", f"{s['device']} × {s.get('world_size', 1)}" if s.get("device") else ""],
            ["precision", str(s.get("precision") or "")],
            ["k-NN top-1 init → trained", _knn_text(s)],
            ["unreadable files skipped", str(s["skipped_files"]) if s.get("skipped_files") else ""],
            ["finished", _date(r.summary_file.stat().st_mtime) if r.summary_file is not None else ""],
        ]
        facts = [row for row in facts if row[1] not in ("", "—")]
    else:
        facts.append(["stopped", "no summary.json: the run is still going, or was stopped before its end"])
    if r.checkpoint is not None:
        st = r.checkpoint.stat()
        facts.append(
            [
                "checkpoint",
                f"{r.checkpoint.relative_to(root).as_posix()} ({st.st_size / 1e6:.1f} MB, {_date(st.st_mtime)})",
            ]
        )
    facts.append(["model", _model_text(r)])
    blocks.append(("table", facts))
    for i, (mf, rows) in enumerate(r.metrics):
        png = _plot_losses(
            rows, fig_dir / (curve_name if i == 0 else curve_name.replace("-loss", f"-loss{i + 1}")), r.name
        )
        if png is not None:
            blocks.append(("image", png))
        folded.append(
            Section(
                f"{r.name}: training metrics ({mf.relative_to(root).as_posix()})",
                [("table", _metrics_table(rows))],
                True,
            )
        )
    if r.results:
        blocks.append(("table", _results_table(r.results, root)))
    blocks += [("image", p) for p in pngs]
    for f, d, _ in r.results:
        folded.append(
            Section(f"{r.name}: {d['protocol']} ({f.relative_to(root).as_posix()})", [("table", detail_rows(d))], True)
        )
    if s is not None and r.summary_file is not None:
        folded.append(
            Section(
                f"{r.name}: run summary ({r.summary_file.relative_to(root).as_posix()})",
                [("table", detail_rows(s))],
                True,
            )
        )
    return Section(f"Run {r.name}", blocks), folded


def _metrics_table(rows: list[dict[str, Any]]) -> list[list[str]]:
    keys = sorted({k for r in rows for k, v in r.items() if _is_number(v)})
    table = [["field", "first", "last", "min", "n"]]
    for k in keys:
        vals = [float(r[k]) for r in rows if _is_number(r.get(k))]
        table.append([k, _fmt(vals[0]), _fmt(vals[-1]), _fmt(min(vals)), str(len(vals))])
    return table


def _plot_losses(rows: list[dict[str, Any]], out: Path, run_name: str) -> Path | None:
    """The run's loss terms against the iteration, titled with the run's name; None when it logged none."""
    keys = [k for k in LOSS_KEYS if any(_is_number(r.get(k)) for r in rows)]
    keys = keys or sorted({k for r in rows for k, v in r.items() if "loss" in k and _is_number(v)})[:8]
    if not keys:
        return None
    plt = pyplot()

    step_key = next((k for k in ("iteration", "step", "iter") if k in rows[0]), None)
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for k in keys:
        pts = [(r.get(step_key, i) if step_key else i, r[k]) for i, r in enumerate(rows) if _is_number(r.get(k))]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k, linewidth=1.2 if k == "total" else 0.9)
    ax.set_title(f"{run_name}: pretraining loss", fontsize=10)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(step_key or "logged record")
    ax.set_ylabel("loss (mean over each log period)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def _curve_names(runs: list[Run]) -> list[str]:
    """A distinct PNG name per run: its folder path with '/' as '_', numbered when two still coincide."""
    names: list[str] = []
    for r in runs:
        base = "".join(c if c.isalnum() or c in "-_." else "_" for c in r.name.replace("/", "_")) or "run"
        name, n = f"{base}-loss.png", 1
        while name in names:
            n += 1
            name = f"{base}-{n}-loss.png"
        names.append(name)
    return names


def _deepest_run(path: Path, runs: list[Run]) -> Run | None:
    """The innermost run folder that holds `path` (None when no run does)."""
    holders = [r for r in runs if r.folder in path.parents]
    return max(holders, key=lambda r: len(r.folder.parts)) if holders else None


def _backbone_rows(
    results: list[tuple[Path, dict[str, Any]]],
) -> tuple[dict[str, list[tuple[Path, dict[str, Any]]]], dict[str, tuple[str, str]]]:
    """Results on backbones that are no run of this folder, grouped by backbone: its row name (the weights
    label; files of one name told apart by their folders), model and weights."""
    keys, ident = [], {}
    for _, d in results:
        m = _weights_of(d)
        key = (
            str(m.get("weights") or ""),
            str(m.get("weights_label") or d.get("model") or "not recorded"),
            str(m.get("model") or ""),
        )
        keys.append(key)
        ident[key] = m
    files = sorted({k[0] for k in keys if k[0]})
    file_names = dict(zip(files, distinct_path_names(files, min_parts=2)))  # gone/checkpoint.pth
    groups: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    what: dict[str, tuple[str, str]] = {}
    for (f, d), key in zip(results, keys):
        weights, label, model = key
        name = file_names.get(weights, label) if weights else label
        if model and not weights:
            name = f"{model}, {label}" if model.lower() != label else label
        groups.setdefault(name, []).append((f, d))
        what[name] = (model or ("from the file" if weights else "—"), weights or label)
    return groups, what


# ------------------------------------------------------------------------------------------- rendering
def _md_table(body: list[list[str]]) -> list[str]:
    esc = [[c.replace("|", "\\|").replace("\n", " ") for c in row] for row in body]
    return ["| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(esc[0])] + [
        "| " + " | ".join(r) + " |" for r in esc[1:]
    ]


def to_markdown(title: str, sections: list[Section], base: Path) -> str:
    lines = [f"# {title}", ""]
    shown = [s for s in sections if not s.folded]
    folded = [s for s in sections if s.folded]
    if folded:
        shown.append(Section("Details", [("text", "Every file's fields, run by run (the HTML page folds them).")]))
    for s in shown + folded:
        lines += [f"{'###' if s.folded else '##'} {s.heading}", ""]
        for kind, body in s.blocks:
            if kind == "table":
                lines += _md_table(body)
            elif kind == "image":
                rel = Path(os.path.relpath(body, base)).as_posix()
                lines.append(f"![{Path(body).stem}]({rel})")
            else:
                lines.append(str(body))
            lines.append("")
    return "\n".join(lines)


def _html_blocks(blocks: list[tuple[str, Any]], base: Path) -> list[str]:
    e = html.escape
    parts = []
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
    return parts


def to_html(title: str, sections: list[Section], base: Path) -> str:
    e = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}img{max-width:100%}"
        "summary{cursor:pointer;margin:4px 0}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    for s in (s for s in sections if not s.folded):
        parts.append(f"<h2>{e(s.heading)}</h2>")
        parts += _html_blocks(s.blocks, base)
    folded = [s for s in sections if s.folded]
    if folded:
        parts.append("<h2>Details</h2>")
    for s in folded:
        parts.append(f"<details><summary>{e(s.heading)}</summary>")
        parts += _html_blocks(s.blocks, base)
        parts.append("</details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def data_uri(path: Path) -> str:
    """The file as a data: URI (so the page needs no other file)."""
    kind = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}.get(
        path.suffix.lower(), "application/octet-stream"
    )
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


# ------------------------------------------------------------------------------------------- the page
def build_sections(run_dir: Path, fig_dir: Path) -> list[Section]:
    """Every section of the page for the folder `run_dir` (loss curves drawn into `fig_dir`)."""
    jsons = sorted(p for p in run_dir.rglob("*.json") if p.is_file())
    jsonls = {p: _read_jsonl(p) for p in sorted(run_dir.rglob("*.jsonl")) if p.is_file()}
    docs = {f: d for f in jsons if (d := _read_json(f)) is not None}  # each file read (and warned about) once
    runs = find_runs(run_dir, docs, jsonls)
    unowned: list[tuple[Path, dict[str, Any]]] = []
    for f, d in docs.items():
        if _is_result(d):
            r, stale = owner(f, d, runs)
            if r is None:
                unowned.append((f, d))
            else:
                r.results.append((f, d, stale))
    others, other_weights = _backbone_rows(unowned)
    fig_res = fig_dir.resolve()
    pngs = sorted(p for p in run_dir.rglob("*.png") if p.is_file() and fig_res not in p.resolve().parents)
    last_logged = {}
    for r in runs:
        rows = r.metrics[0][1] if r.metrics else []
        last_logged[r.name] = rows[-1].get("iteration") if rows else None
    sections: list[Section] = []
    if runs or unowned:
        sections.append(summary_section(runs, others, other_weights, run_dir, last_logged))
    folded: list[Section] = []
    home = {p: _deepest_run(p, runs) for p in pngs}  # a figure shows in the section of the run folder it lies in
    for r, curve in zip(runs, _curve_names(runs)):
        sec, det = run_section(r, run_dir, fig_dir, curve, [p for p in pngs if home[p] is r])
        sections.append(sec)
        folded += det
    if unowned:
        backbone = {f: name for name, items in others.items() for f, _ in items}
        table = _results_table([(f, d, False) for f, d in unowned], run_dir)
        table = [table[0][:2] + ["backbone"] + table[0][2:]] + [
            row[:2] + [backbone[f]] + row[2:] for row, (f, _) in zip(table[1:], unowned)
        ]
        sections.append(Section("Results on other backbones", [("table", table)]))
        folded += [
            Section(f"{d['protocol']} ({f.relative_to(run_dir).as_posix()})", [("table", detail_rows(d))], True)
            for f, d in unowned
        ]
    run_summaries = {r.summary_file for r in runs}
    for f, d in docs.items():
        if _is_result(d) or f in run_summaries:
            continue
        if "protocol" in d or f.name.startswith("summary"):
            rows = detail_rows(d)
            if len(rows) > 1:
                folded.append(
                    Section(
                        f"{d.get('protocol', f.stem)} ({f.relative_to(run_dir).as_posix()})", [("table", rows)], True
                    )
                )
    rest = [p.resolve() for p in pngs if home[p] is None]
    if rest:
        sections.append(Section("Figures", [("image", p) for p in rest]))
    if not sections and not folded:
        sections.append(
            Section("Nothing found", [("text", f"no run, result JSON, metrics JSONL or PNG under {run_dir}")])
        )
    return sections + folded


def build_report(run_dir: str | Path, out: str | Path | None = None, title: str | None = None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` (default: in RUN_DIR; the HTML is self-contained);
    returns both paths."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory not found: {run_dir}")
    md_path = Path(out) if out else run_dir / "report.md"
    base = md_path.parent
    sections = build_sections(run_dir, base / "report_files")
    base_r = base.resolve()
    sections = [
        Section(s.heading, [(k, Path(b).resolve() if k == "image" else b) for k, b in s.blocks], s.folded)
        for s in sections
    ]
    title = title or f"Run report: {run_dir.resolve().name}"
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(to_markdown(title, sections, base_r))
    html_path = md_path.with_suffix(".html")
    html_path.write_text(to_html(title, sections, base_r))
    return md_path, html_path
