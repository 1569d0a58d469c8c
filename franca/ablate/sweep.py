"""Run a sweep: every (variant, seed) trained at equal compute and evaluated, one result JSON per run.

Layout under the sweep's output folder::

    runs/<variant>-seed<s>/      the pretraining run (checkpoint.pth, metrics, summary.json)
    results/<variant>-seed<s>.json   its scores, parameter counts, step times (written atomically)
    results/init-seed<s>.json    the untrained backbone of seed s (the reference row)
    results/<name>-seed<s>.json  a fixed backbone (--reference NAME=WEIGHTS), evaluated with the first seed s

Resume: a run whose result JSON exists is skipped (after checking it was made with the same
settings); a run with a checkpoint continues from it (`Trainer(resume=True)`); a run folder without a
checkpoint (a crash before the first one) starts over. Runs go in seed-major order, so a stopped
sweep has whole seeds. With `jobs > 1` runs go to that many spawned processes with `threads` torch
threads each. Progress and an ETA for the whole sweep are printed after every run.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from franca.ablate.evaluate import EvalSettings, evaluate_backbone
from franca.ablate.variants import RunSpec, Variant, expand
from franca.models.api import load_backbone
from franca.train.build import build_models
from franca.train.checkpoint import CHECKPOINT_NAME
from franca.train.config import load_config
from franca.train.loop import Trainer
from franca.utils import distributed as dist_utils
from franca.utils.device import resolve_device
from franca.utils.results import write_text_atomic
from franca.utils.seed import seed_all


@dataclass
class Sweep:
    """Everything that defines a sweep (the CLI fills it; tests build it directly)."""

    out: Path
    variants: list[Variant]
    seeds: list[int]
    preset: str = "tiny"
    common: list[str] = field(default_factory=list)
    protocols: list[str] = field(default_factory=lambda: ["knn"])
    baseline: str | None = None
    settings: EvalSettings = field(default_factory=EvalSettings)
    jobs: int = 1
    threads: int = 1
    device: str = "cpu"
    checkpoint_period: int = 100
    with_init: bool = True
    references: list[tuple[str, str]] = field(default_factory=list)
    """(name, weights) of fixed backbones evaluated as rows of the table (a distillation teacher, a release)"""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        names = [v.name for v in self.variants]
        self.baseline = self.baseline or names[0]
        if self.baseline not in names:
            raise ValueError(f"baseline {self.baseline!r} is not one of the variants {names}")
        if self.jobs < 1 or self.threads < 1:
            raise ValueError(f"jobs and threads must be >= 1, got {self.jobs} and {self.threads}")

    def specs(self) -> list[RunSpec]:
        return expand(self.variants, self.seeds, self.common, self.with_init, self.references)

    def run_dir(self, spec: RunSpec) -> Path:
        return self.out / "runs" / spec.key

    def result_path(self, spec: RunSpec) -> Path:
        return self.out / "results" / f"{spec.key}.json"

    def run_overrides(self, spec: RunSpec) -> list[str]:
        """The run's config overrides: its own, then the keys the sweep sets for every run."""
        return [
            *spec.overrides,
            f"train.seed={spec.seed}",
            f"train.output_dir={self.run_dir(spec)}",
            "train.knn_eval=false",
            "train.max_minutes=0",
            f"train.device={self.device}",
            f"train.checkpoint_period={self.checkpoint_period}",
        ]

    def fingerprint(self, spec: RunSpec) -> dict[str, Any]:
        """What must match for a stored result to be reused (the run folder's path may move)."""
        ovs = [o for o in self.run_overrides(spec) if not o.startswith("train.output_dir=")]
        out = {
            "preset": self.preset,
            "kind": spec.kind,
            "overrides": ovs,
            "protocols": list(self.protocols),
            "settings": self.settings.to_dict(),
        }
        if spec.kind == "reference":
            out["weights"] = spec.weights
        return out


def load_result(sweep: Sweep, spec: RunSpec) -> dict[str, Any] | None:
    """The stored result of a finished run, or None; ValueError if it was made with other settings."""
    p = sweep.result_path(spec)
    if not p.is_file():
        return None
    try:
        res = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc}); delete it to rerun that run") from None
    if res.get("fingerprint") != sweep.fingerprint(spec):
        raise ValueError(
            f"{p} was made with other settings than this sweep (config overrides, protocols or "
            "evaluation settings differ); use another --out, or delete that file to rerun the run"
        )
    return res


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _param_counts(modules: dict[str, Any]) -> dict[str, int]:
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in modules.items()}
    counts["heads"] = counts.get("dino_head", 0) + counts.get("ibot_head", 0)
    counts["total"] = sum(v for k, v in counts.items() if k in ("backbone", "dino_head", "ibot_head"))
    return counts


def run_one(sweep: Sweep, spec: RunSpec) -> dict[str, Any]:
    """Train (or resume) one run, evaluate its teacher backbone, write and return its result."""
    import torch

    torch.set_num_threads(sweep.threads)
    t0, cpu0 = time.time(), _cpu_seconds()
    cfg = load_config(sweep.preset, sweep.run_overrides(spec))
    device = resolve_device(cfg.train.device)
    result: dict[str, Any] = {
        "variant": spec.variant,
        "seed": spec.seed,
        "kind": spec.kind,
        "fingerprint": sweep.fingerprint(spec),
    }
    if spec.kind == "reference":
        backbone = load_backbone(weights=spec.weights)
        result["params"] = {"backbone": sum(p.numel() for p in backbone.parameters())}
    elif spec.kind == "init":
        seed_all(cfg.train.seed, 0)  # exactly as the trainer builds its models
        student, teacher = build_models(cfg, device)
        backbone = teacher["backbone"]
        result["params"] = _param_counts(student)
    else:
        run_dir = Path(cfg.train.output_dir)
        resume = (run_dir / CHECKPOINT_NAME).is_file()
        if not resume and run_dir.exists():  # crashed before its first checkpoint: start over
            shutil.rmtree(run_dir)
        try:
            trainer = Trainer(cfg, resume=resume, quiet=True)
            start_it = trainer.state.iteration
            print(f"  start {spec.key}" + (f" (resuming at iteration {start_it})" if start_it else ""), flush=True)
            c0 = _cpu_seconds()
            summary = trainer.run()
            train_cpu = _cpu_seconds() - c0
        finally:
            dist_utils.cleanup()
        if summary["iterations"] != summary["planned_iterations"]:
            raise RuntimeError(
                f"{spec.key}: trained {summary['iterations']} of {summary['planned_iterations']} "
                f"iterations ({summary.get('stop_reason')}); the sweep needs equal iterations"
            )
        backbone = trainer.teacher["backbone"]
        done = summary["iterations"] - start_it
        result["params"] = _param_counts(trainer.student)
        result["train"] = {
            "iterations": summary["iterations"],
            "global_batch": summary["global_batch"],
            "resumed_at": start_it,
            "wall_s": summary["wall_time_s"],
            "step_wall_ms": 1000.0 * summary["wall_time_s"] / max(1, summary["iterations"]),
            "cpu_s_this_attempt": train_cpu,
            "step_cpu_ms": 1000.0 * train_cpu / done if done else None,
        }
    t_eval, c_eval = time.time(), _cpu_seconds()
    result["metrics"] = evaluate_backbone(backbone, sweep.protocols, device, sweep.settings)
    result["eval"] = {"wall_s": time.time() - t_eval, "cpu_s": _cpu_seconds() - c_eval}
    result["wall_s"], result["cpu_s"] = time.time() - t0, _cpu_seconds() - cpu0
    write_text_atomic(sweep.result_path(spec), json.dumps(result, indent=2) + "\n")
    return result


def _fmt_s(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """Counts finished runs and estimates the time left from the mean wall time of each kind of run."""

    def __init__(self, specs: Sequence[RunSpec], n_done: int, jobs: int, echo: Callable[[str], None] = print):
        self.total, self.done, self.jobs, self.echo = len(specs), n_done, jobs, echo
        self.remaining = {"init": 0, "train": 0, "reference": 0}
        for s in specs:
            self.remaining[s.kind] += 1
        self.times: dict[str, list[float]] = {"init": [], "train": [], "reference": []}
        self.t0 = time.time()

    def skip(self, spec: RunSpec) -> None:
        self.remaining[spec.kind] -= 1

    def eta(self) -> float | None:
        est = {k: (sum(v) / len(v)) for k, v in self.times.items() if v}
        if self.remaining["train"] and "train" not in est:
            return None
        est.setdefault("init", est.get("train", 0.0))
        est.setdefault("reference", est["init"])
        return sum(self.remaining[k] * est.get(k, 0.0) for k in self.remaining) / self.jobs

    def finished(self, spec: RunSpec, wall: float, msg: str) -> None:
        self.done += 1
        self.remaining[spec.kind] -= 1
        self.times[spec.kind].append(wall)
        eta = self.eta()
        self.echo(
            f"[{self.done}/{self.total}] {spec.key} {msg} ({_fmt_s(wall)}); sweep elapsed "
            f"{_fmt_s(time.time() - self.t0)}, ETA {_fmt_s(eta) if eta is not None else '?'}"
        )


def _summary_line(res: dict[str, Any]) -> str:
    m = res.get("metrics", {})
    return " ".join(f"{k} {v:.3g}" for k, v in list(m.items())[:4])


def run_sweep(sweep: Sweep, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every missing run of the sweep; returns {"done", "failed": {key: error}, "wall_s", "cpu_s"}."""
    specs = sweep.specs()
    done = [s for s in specs if load_result(sweep, s) is not None]
    todo = [s for s in specs if s not in done]
    n_train = sum(s.kind == "train" for s in specs)
    echo(
        f"sweep {sweep.out}: {len(sweep.variants)} variants × {len(sweep.seeds)} seeds = {n_train} training runs"
        f" (+{len(specs) - n_train} init/reference evaluations); {len(done)} done, {len(todo)} to run, "
        f"{sweep.jobs} at a time × {sweep.threads} thread(s)"
    )
    progress = Progress(specs, len(done), sweep.jobs, echo)
    for s in done:
        progress.skip(s)
    failed: dict[str, str] = {}
    t0, cpu0 = time.time(), _cpu_seconds()

    def _ok(spec: RunSpec, res: dict[str, Any]) -> None:
        progress.finished(spec, res["wall_s"], _summary_line(res))

    def _fail(spec: RunSpec, exc: BaseException, wall: float) -> None:
        failed[spec.key] = f"{type(exc).__name__}: {exc}"
        progress.finished(spec, wall, f"FAILED: {failed[spec.key]}")

    if sweep.jobs == 1:
        for spec in todo:
            ts = time.time()
            try:
                _ok(spec, run_one(sweep, spec))
            except Exception as exc:  # one failing run must not stop the others
                _fail(spec, exc, time.time() - ts)
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(
            sweep.jobs, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(sweep.threads,)
        ) as ex:
            pending = {}
            queue = list(todo)
            while queue or pending:
                while queue and len(pending) < sweep.jobs:
                    spec = queue.pop(0)
                    pending[ex.submit(run_one, sweep, spec)] = (spec, time.time())
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    spec, ts = pending.pop(f)
                    exc = f.exception()
                    if exc is None:
                        _ok(spec, f.result())
                    else:
                        _fail(spec, exc, time.time() - ts)
    return {"done": progress.done, "failed": failed, "wall_s": time.time() - t0, "cpu_s": _cpu_seconds() - cpu0}


def _init_worker(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
