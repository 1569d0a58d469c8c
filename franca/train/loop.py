"""train(cfg): build -> parallelise -> resume -> iterate -> log -> checkpoint -> k-NN -> summary.

One iteration: schedules at i -> the objective's targets (teacher side) -> student forward -> the
objective's values -> total = Σ weight · value over its declared terms -> backward -> per-submodule
clipping -> AdamW step -> EMA teacher. The loop never names a loss term: it sums, checks and logs
whatever the objective (franca.train.objective) returns. Values stay on the device between log
points (no host sync in the step); a non-finite value is caught at the next log or checkpoint point
and stops the run with the last good checkpoint left in place (checkpoints are written only after
that check). Follows DINOv2/Franca `train/train.py` in order of operations.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from franca.train import checkpoint as ckpt_io
from franca.train import runfolder
from franca.train.build import build_models, build_objective
from franca.train.config import FrancaTrainConfig, dump_yaml, to_dict
from franca.train.data import build_pretrain_data
from franca.train.distributed import compile_modules, fsdp_shard, sync_batchnorm, wrap_student
from franca.train.ema import teacher_student_pairs, update_ema
from franca.train.init import describe_init, read_init
from franca.train.knn_probe import build_probe
from franca.train.metrics import MetricsLogger
from franca.train.objective import ObjectivePart, PartContext, StepInputs
from franca.train.optim import apply_schedule, build_optimizer, build_param_groups, clip_gradients
from franca.train.runlock import RunLock
from franca.train.schedules import Lengths, Schedules, derive_lengths
from franca.train.step import StudentForward
from franca.utils import distributed as dist_utils
from franca.utils.device import autocast_context, resolve_device, resolve_precision
from franca.utils.errors import UserError, write_failed
from franca.utils.results import write_json
from franca.utils.seed import seed_all

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss, a gradient norm or the weights became NaN or inf; the message names the iteration and
    the last good checkpoint."""


@dataclass
class RunState:
    """What the loop carries between iterations (and into the checkpoint)."""

    iteration: int = 0
    skipped_files: set = field(default_factory=set)
    knn_init: Optional[dict] = None
    elapsed_before: float = 0.0


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    nb = device.type == "cuda"
    return {k: (v.to(device, non_blocking=nb) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


class Trainer:
    """Owns the models, optimizer and schedules of one run; `run()` trains to the end."""

    def __init__(
        self,
        cfg: FrancaTrainConfig,
        resume: bool | str = False,
        quiet: bool = False,
        synthetic_dataset_size: int | None = None,
        overwrite: bool = False,
        allow_config_change: Sequence[str] = (),
        extra_parts: Sequence[ObjectivePart] = (),
    ) -> None:
        """`resume`: True (output_dir's checkpoint) or a checkpoint path; `overwrite`: replace the run in
        output_dir (its files stay until this run's first checkpoint); `allow_config_change`: config keys
        (or sections) --resume may change; `synthetic_dataset_size`: skip building the data loader
        (benchmarks feed their own batches); `extra_parts`: objective parts added to those the config
        builds (franca.train.objective)."""

        self.cfg, self.quiet = cfg, quiet
        self.device = resolve_device(cfg.train.device)
        # the step's precision (auto: bf16 on CUDA, fp32 on CPU); the k-NN check extracts in the same one
        self.precision = resolve_precision(cfg.train.precision, self.device, training=True)
        dist_utils.init_distributed(self.device)
        self.rank, self.world = dist_utils.rank(), dist_utils.world_size()
        self.is_main = self.rank == 0
        self.out_dir = Path(cfg.train.output_dir)
        self.ckpt_path = self.out_dir / ckpt_io.CHECKPOINT_NAME
        self.overwrite = overwrite
        self.resume_path: Optional[Path] = None
        self.resume_path, loaded = runfolder.checkpoint_to_resume(
            cfg, resume, overwrite, allow_config_change, self.world, check_folder=self.is_main
        )
        self.state = RunState()
        if loaded is not None:
            self.state.iteration = int(loaded["iteration"])
            extra = loaded.get("extra", {})
            self.state.skipped_files = set(extra.get("skipped_files", []))
            self.state.knn_init = extra.get("knn_init")
            self.state.elapsed_before = float(extra.get("elapsed", 0.0))

        if cfg.train.init_from and cfg.train.init_heads is None and loaded is None:
            cfg.train.init_heads = bool(
                read_init(cfg.train.init_from, cfg.model.num_heads).head_layouts
            )  # saved resolved
        seed_all(cfg.train.seed, 0)  # the same initial weights on every rank
        self.student, self.teacher = build_models(cfg, self.device, init=loaded is None)
        seed_all(cfg.train.seed, self.rank)  # per-rank randomness (drop path) from here on
        backbone = self.student["backbone"]
        depth = getattr(backbone, "n_blocks", len(getattr(backbone, "blocks", [])))
        if synthetic_dataset_size is None:
            cpus = os.cpu_count() or 1
            if cfg.data.num_workers > max(64, 8 * cpus):
                raise UserError(
                    f"data.num_workers={cfg.data.num_workers} is far more than the {cpus} CPU cores of "
                    "this machine can run: use a few per core"
                )
            self.data = build_pretrain_data(
                cfg, backbone.patch_size, self.rank, self.world, self.state.iteration, self.device
            )
            dataset_size = self.data.dataset_size
        else:
            self.data, dataset_size = None, synthetic_dataset_size

        self.lengths: Lengths = derive_lengths(cfg, dataset_size, self.world)
        self.schedules = Schedules(cfg, self.lengths)
        # the objective's own modules start the same on every rank; the run's RNG streams are left as they were
        cuda = self.device.type == "cuda"
        index = self.device.index if self.device.index is not None else (torch.cuda.current_device() if cuda else 0)
        with torch.random.fork_rng(devices=[index] if cuda else []):
            torch.manual_seed(cfg.train.seed)
            ctx = PartContext(self.student, self.teacher, self.device, self.lengths.total)
            self.objective = build_objective(cfg, ctx, extra_parts)
        for name, module in self.objective.modules.items():  # trained with the student, averaged into the teacher
            if name in self.student:
                raise ValueError(f"an objective part's module is named {name!r}, as a module of the student")
            self.student[name] = module.to(self.device)
            self.teacher[name] = copy.deepcopy(self.student[name]).requires_grad_(False)
        if self.world > 1:
            sync_batchnorm(self.student, self.device)
            sync_batchnorm(self.teacher, self.device)
        if cfg.train.compile:
            compile_modules(self.student)
            compile_modules(self.teacher)
        if self.world > 1 and cfg.train.parallel == "fsdp":
            fsdp_shard(self.student, self.device)
            fsdp_shard(self.teacher, self.device)
        # after sharding: FSDP2 replaces the parameters with sharded ones
        groups = build_param_groups(
            self.student,
            depth,
            cfg.optim.layerwise_decay,
            cfg.optim.patch_embed_lr_mult,
            backbone_apart=self.lengths.freeze_backbone > 0,
        )
        self.optimizer = build_optimizer(groups, cfg.optim.betas, cfg.optim.fused, self.device, cfg.optim.eps)
        forward = StudentForward.of(
            self.student, outputs=self.objective.needs, extra_inputs=self.objective.module_inputs
        )
        # a head that may go unused in a step: no masked token drawn, or no term reads its outputs
        may_skip = cfg.ibot.mask_sample_probability * 2 * cfg.train.batch_size_per_gpu < 1
        may_skip = may_skip or not (forward.run_dino_head and forward.run_ibot_head)
        self.student_forward = wrap_student(forward, cfg.train.parallel, self.device, self.world, may_skip)

        self.ema_pairs = [teacher_student_pairs(self.teacher[k], self.student[k]) for k in self.student]
        if loaded is not None:
            self._restore(loaded)

    # ------------------------------------------------------------------ setup helpers
    def _restore(self, ckpt: dict[str, Any]) -> None:
        if self.world > 1 and self.cfg.train.parallel == "fsdp":
            self._restore_sharded(ckpt)
        else:
            ckpt_io.load_prefixed_state_dict(self.student, ckpt["student"], f"{self.resume_path} student")
            ckpt_io.load_prefixed_state_dict(self.teacher, ckpt["teacher"], f"{self.resume_path} teacher")
            try:
                self.optimizer.load_state_dict(ckpt["optimizer"])
            except (ValueError, KeyError) as exc:
                raise UserError(
                    f"{self.resume_path}: its optimizer state does not fit this run's parameter groups ({exc})"
                ) from exc
        self.objective.load_state_dict(ckpt.get("objective"))
        rng = ckpt.get("rng", {}).get(f"rank{self.rank}")
        if rng is not None:
            ckpt_io.set_rng_state(rng)
        log.info("resumed from %s at iteration %d", self.resume_path, self.state.iteration)

    def _restore_sharded(self, ckpt: dict[str, Any]) -> None:
        """FSDP2: scatter the consolidated (full) state into the shards of every rank."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True)
        for which, mods in (("student", self.student), ("teacher", self.teacher)):
            set_model_state_dict(torch.nn.ModuleDict(mods), ckpt[which], options=opts)
        set_optimizer_state_dict(torch.nn.ModuleDict(self.student), self.optimizer, ckpt["optimizer"], options=opts)

    def save(self, elapsed: float) -> None:
        """Write the consolidated checkpoint (rank 0 writes; every rank contributes its RNG state)."""
        rng = {
            k: v for g in dist_utils.all_gather_objects({f"rank{self.rank}": ckpt_io.rng_state()}) for k, v in g.items()
        }
        student = ckpt_io.prefixed_state_dict(self.student)
        teacher = ckpt_io.prefixed_state_dict(self.teacher)
        optim_state = self._optimizer_state()
        if not self.is_main:
            return
        extra: dict[str, Any] = {
            "skipped_files": sorted(self.state.skipped_files),
            "knn_init": self.state.knn_init,
            "elapsed": elapsed,
            "world_size": self.world,
        }
        payload = {
            "teacher": teacher,
            "student": student,
            "optimizer": optim_state,
            "iteration": self.state.iteration,
            "config": to_dict(self.cfg),
            "rng": rng,
            "extra": extra,
        }
        objective_state = self.objective.state_dict()
        if objective_state:  # only parts that carry state (centering, a Gram teacher): none by default
            payload["objective"] = objective_state
        ckpt_io.save_checkpoint(self.ckpt_path, payload)

    def _optimizer_state(self) -> dict[str, Any]:
        if self.world > 1 and self.cfg.train.parallel == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            fwd = torch.nn.ModuleDict(self.student)
            return get_optimizer_state_dict(
                fwd, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        return self.optimizer.state_dict()

    # ------------------------------------------------------------------ one iteration
    def step(self, batch: dict[str, Any], i: int) -> dict[str, torch.Tensor]:
        """One optimisation step at iteration i; returns `total`, the objective's values and the gradient
        norms (device tensors)."""

        v = self.schedules.at(i)
        apply_schedule(self.optimizer, v)
        step = StepInputs(batch=batch, iteration=i, schedule=v)
        with autocast_context(self.device, self.precision):
            targets = self.objective.targets(step)
            student_out = self.student_forward(batch)
            values = self.objective(student=student_out, targets=targets, step=step)
        total = self.objective.total(values)
        total.backward()
        if i < self.lengths.freeze_backbone:  # head warm-up: the backbone is not updated, its optimizer state untouched
            for p in self.student["backbone"].parameters():
                p.grad = None
        norms = clip_gradients(self.student, self.cfg.optim.clip_grad)
        if i < self.lengths.freeze_backbone and "backbone" not in norms and norms:
            norms["backbone"] = torch.zeros((), device=self.device)
        try:
            self.optimizer.step()
        except RuntimeError as exc:  # torch: "value cannot be converted to type float without overflow"
            if "overflow" not in str(exc):
                raise
            raise NonFiniteLossError(
                f"the optimizer step of iteration {i} overflowed (lr {v.lr:g}): lower optim.base_lr"
            ) from exc
        self.optimizer.zero_grad(set_to_none=True)
        for t_params, s_params in self.ema_pairs:
            update_ema(t_params, s_params, v.momentum)
        out = {"total": total, **values}
        for k, n in norms.items():
            out[f"grad_norm_{k}"] = n
        return out

    # ------------------------------------------------------------------ the run
    def knn(self, which: str) -> Optional[dict]:

        if not self.cfg.train.knn_eval or not self.is_main:
            return None
        probe = build_probe(self.cfg)
        if probe is None:
            log.info("no labelled validation split (data.val): skipping the k-NN check")
            return None
        model = self.teacher["backbone"]
        res = probe(model, self.device, self.precision)
        log.info("k-NN top-1 (k=%d) of the %s backbone: %.2f%%", res["k"], which, res["top1"])
        return res

    def run(self) -> dict[str, Any]:

        cfg, st = self.cfg, self.state
        total = self.lengths.total
        resumed = st.iteration > 0
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if not self.overwrite:  # with --overwrite: at the first checkpoint, with the old run's other files
                ckpt_io.atomic_write_text(self.out_dir / "config.yaml", dump_yaml(cfg))
            self._announce()
        metrics = MetricsLogger(self.out_dir, self.is_main, st.iteration if resumed else None, pending=self.overwrite)
        replaced = not self.overwrite
        if st.knn_init is None and not resumed:
            st.knn_init = self.knn("initial")
        t0 = time.time()
        it = iter(self.data.loader)
        bar = self._progress(total)
        acc: dict[str, torch.Tensor] = {}
        n_acc = 0
        last_good = st.iteration if resumed else None
        stop_reason = "done"
        try:
            while st.iteration < total:
                i = st.iteration
                batch = next(it)
                st.skipped_files.update(batch.pop("skipped", []))
                losses = self.step(_to_device(batch, self.device), i)
                for k, val in losses.items():
                    acc[k] = acc.get(k, 0.0) + val.detach().float()
                n_acc += 1
                st.iteration = i + 1
                end = st.iteration == total
                limit = cfg.train.max_minutes > 0 and (time.time() - t0) / 60 > cfg.train.max_minutes
                if st.iteration % cfg.train.log_period == 0 or end or limit:
                    row = {k: float(v) / n_acc for k, v in acc.items()}
                    self._check_finite(row, i, last_good)
                    terms = {k: row[k] for k in ("total", *(t.name for t in self.objective.terms))}
                    v = self.schedules.at(i)
                    row.update(
                        lr=v.lr,
                        wd=v.weight_decay,
                        momentum=v.momentum,
                        teacher_temp=v.teacher_temp,
                        skipped_files=len(st.skipped_files),
                        epoch=st.iteration / self.lengths.iterations_per_epoch,
                    )
                    metrics.log(i, row)
                    self._update_bar(bar, {**terms, "lr": v.lr}, n_acc)
                    acc, n_acc = {}, 0
                if st.iteration % cfg.train.checkpoint_period == 0 or end or limit:
                    if acc:
                        self._check_finite({k: float(v) for k, v in acc.items()}, i, last_good)
                    self._check_weights_finite(i, last_good)
                    self.save(st.elapsed_before + time.time() - t0)
                    last_good = st.iteration
                    if not replaced and self.is_main:
                        self._replace_old_run(metrics)
                    replaced = True
                if limit and not end:
                    stop_reason = (
                        f"time limit train.max_minutes={cfg.train.max_minutes:g} reached after "
                        f"{st.iteration} of {total} iterations"
                    )
                    break
        finally:
            if bar is not None:
                bar.close()
            metrics.close()
        wall = st.elapsed_before + time.time() - t0
        knn_final = self.knn("trained")
        summary = self._summary(wall, knn_final, stop_reason)
        if self.is_main:
            try:
                write_json(self.out_dir / "summary.json", summary)  # numbers rounded, library versions named
            except OSError as exc:
                raise UserError(
                    f"{write_failed(self.out_dir / 'summary.json', exc)} (the checkpoint {self.ckpt_path} is complete)"
                ) from exc
        return summary

    def _replace_old_run(self, metrics: Any) -> None:
        """--overwrite: this run's first checkpoint is written; now its metrics and config replace the old run's."""
        metrics.commit()
        ckpt_io.atomic_write_text(self.out_dir / "config.yaml", dump_yaml(self.cfg))
        (self.out_dir / "summary.json").unlink(missing_ok=True)
        log.info("--overwrite: first checkpoint written; any earlier run in %s is now replaced", self.out_dir)

    def _check_finite(self, row: dict[str, float], i: int, last_good: Optional[int]) -> None:
        """NonFiniteLossError naming every non-finite value the step returned (the total, every value of the
        objective, the gradient norms)."""
        bad = [k for k in row if not math.isfinite(row[k])]
        if bad:
            what = "gradient norm" if all(k.startswith("grad_norm_") for k in bad) else "loss"
            raise NonFiniteLossError(
                f"{what} became non-finite ({', '.join(f'{k}={row[k]}' for k in bad)}) at or before iteration {i}; "
                f"stopping; {self._last_good(last_good)}. Lower optim.base_lr or check the data."
            )

    def _check_weights_finite(self, i: int, last_good: Optional[int]) -> None:
        """Before a checkpoint counts as good: every student and teacher weight is finite (on every rank)."""
        names, flags = [], []
        for which, mods in (("student", self.student), ("teacher", self.teacher)):
            for prefix, module in mods.items():
                for name, p in module.named_parameters():
                    t = p.to_local() if hasattr(p, "to_local") else p  # FSDP2: this rank's shard
                    names.append(f"{which}.{prefix}.{name}")
                    flags.append(torch.isfinite(t.detach()).all())
        bad_mask = ~torch.stack(flags).cpu()  # one host sync
        n_bad = dist_utils.all_reduce_sum(bad_mask.sum().float().to(self.device)) if self.world > 1 else bad_mask.sum()
        if float(n_bad) > 0:
            first = [n for n, b in zip(names, bad_mask.tolist()) if b][:3]
            raise NonFiniteLossError(
                f"weights became non-finite ({int(float(n_bad))} of {len(names)} tensors, e.g. {', '.join(first)}) "
                f"at or before iteration {i}; not saving them; stopping; {self._last_good(last_good)}. "
                "Lower optim.base_lr or check the data."
            )

    def _last_good(self, last_good: Optional[int]) -> str:
        return (
            f"the last good checkpoint {self.ckpt_path} (iteration {last_good}) is kept"
            if last_good is not None
            else "no checkpoint was written yet"
        )

    def _announce(self) -> None:

        n = self.lengths
        init = describe_init(self.cfg, n.freeze_backbone, n.total)
        msg = (
            (f"{init}\n" if init else "") + f"data: {self.data.description}\nlength: {n.describe()}\n"
            f"stopping: {runfolder.stopping_rules(self.cfg, n, self.state.iteration)}\n"
            f"lr: peak {self.schedules.peak_lr:.3g} (base_lr {self.cfg.optim.base_lr:g} scaled by "
            f"'{self.cfg.optim.lr_scaling}' for global batch {n.global_batch}); device {self.device}, "
            f"{self.world} process(es), precision {self.precision}"
        )
        for part in self.objective.parts:  # a part that says what it does (distillation: the teacher)
            if getattr(part, "description", None):
                msg += f"\nobjective: {part.description}"
        if self.quiet:  # one or the other: printed and logged, it showed twice in a terminal
            log.info(msg.replace("\n", "; "))
        else:
            print(msg, flush=True)

    def _progress(self, total: int) -> Any:
        if not self.is_main or self.quiet:
            return None
        from tqdm import tqdm

        limit = self.cfg.train.max_minutes
        what = "distill" if self.cfg.distill.teacher else "pretrain"
        desc = f"{what} (stops at {limit:g} min)" if limit > 0 else what
        bar = tqdm(total=total, initial=self.state.iteration, desc=desc, unit="it", dynamic_ncols=True)
        bar.planned_total, bar.time_limit_s = total, limit * 60.0  # what _update_bar fits the total to
        return bar

    @staticmethod
    def _update_bar(bar: Any, row: dict[str, float], n: int) -> None:
        """Postfix: the total, each declared term (as `row` gives them, in order), the lr."""
        if bar is None:
            return
        if getattr(bar, "time_limit_s", 0) > 0:  # the time limit ends the run first: total and ETA say so
            bar.total = time_limited_total(
                bar.n + n, bar.initial, bar.planned_total, time.time() - bar.start_t, bar.time_limit_s
            )
        lr = row.pop("lr")
        bar.set_postfix_str(" ".join(f"{k} {v:.3f}" for k, v in row.items()) + f" lr {lr:.2e}", refresh=False)
        bar.update(n)

    def _summary(self, wall: float, knn_final: Optional[dict], stop_reason: str) -> dict[str, Any]:
        s: dict[str, Any] = {
            "iterations": self.state.iteration,
            "planned_iterations": self.lengths.total,
            "epochs": self.state.iteration / self.lengths.iterations_per_epoch,
            "global_batch": self.lengths.global_batch,
            "images_seen": self.state.iteration * self.lengths.global_batch,
            "wall_time_s": wall,
            "device_hours": wall * self.world / 3600.0,
            "device": str(self.device),
            "precision": self.precision,
            "world_size": self.world,
            "skipped_files": len(self.state.skipped_files),
            "skipped_file_list": sorted(self.state.skipped_files)[:100],
            "checkpoint": str(self.ckpt_path),
            "stop_reason": stop_reason,
        }
        if self.state.knn_init is not None:
            s["knn_top1_init"] = self.state.knn_init["top1"]
        if knn_final is not None:
            s["knn_top1_trained"] = knn_final["top1"]
            if self.state.knn_init is not None:
                s["knn_gain"] = knn_final["top1"] - self.state.knn_init["top1"]
        return s


def time_limited_total(done: int, start: int, planned: int, elapsed_s: float, limit_s: float) -> int:
    """The iteration the run will stop at: `planned`, or fewer when the time limit comes first at the rate so
    far (iterations `start`…`done` took `elapsed_s`; the step that ends past the limit is the last one).
    The pretraining bar shows it as its total, so its ETA is the time-limited remainder."""
    if limit_s <= 0 or elapsed_s <= 0 or done <= start:
        return planned
    rate = (done - start) / elapsed_s
    return min(planned, done + math.ceil(rate * max(0.0, limit_s - elapsed_s)))


def train(
    cfg: FrancaTrainConfig,
    resume: bool | str = False,
    quiet: bool = False,
    overwrite: bool = False,
    allow_config_change: Sequence[str] = (),
    extra_parts: Sequence[ObjectivePart] = (),
) -> dict[str, Any]:
    """Run pretraining for `cfg`; returns the run summary (also written to <output_dir>/summary.json).

    The output folder is locked for the run (one run per folder); a folder that holds a run needs
    `resume` (continue it) or `overwrite` (replace it). `extra_parts`: objective parts added to those the
    config builds (franca.train.objective)."""

    out_dir = Path(cfg.train.output_dir)
    main_process = dist_utils.rank_and_world()[0] == 0  # before the process group exists
    with RunLock(out_dir, enabled=main_process):
        if main_process:
            for p in ckpt_io.remove_leftover_temporaries(out_dir / ckpt_io.CHECKPOINT_NAME):
                log.warning("removed %s, the partial checkpoint of a run killed while saving", p)
        try:
            trainer = Trainer(
                cfg,
                resume=resume,
                quiet=quiet,
                overwrite=overwrite,
                allow_config_change=allow_config_change,
                extra_parts=extra_parts,
            )
            return trainer.run()
        finally:
            dist_utils.cleanup()
