"""Distillation from a frozen teacher as a part of the training objective (`franca distill`, `distill.*` keys).

The student is the run's student (any `model.arch`, width and patch size); its EMA, the run's "teacher" in the
checkpoint, is the result that `load_backbone`, `franca export` and every command read. The frozen teacher is
held by the part only: never trained, never averaged, not saved in the checkpoint (reloaded from
`distill.teacher` on --resume, its weights checked against the fingerprint the checkpoint keeps).

Two modes (`distill.mode`, `auto` picks `heads` when the teacher has them):

- **heads** (`HeadDistillation`): the Franca objective, DINO + iBOT per Matryoshka level + KoLeo, with the
  frozen teacher's own heads giving the Sinkhorn-Knopp targets in place of the EMA teacher's, as DINOv2 and
  DINOv3 distil their smaller models (DINOv3's `ssl_meta_arch._setup_distillation` and
  `multidist_meta_arch`: the teacher's backbone and DINO/iBOT heads loaded frozen, Sinkhorn-Knopp on its head
  outputs for the global crops, the student with its own heads of the same prototype counts). The student's
  heads must have the teacher's prototypes per level (`franca distill` copies the teacher's head config).
  DINOv3 requires the teacher's patch size to equal the student's; here the teacher sees each global crop
  resized (bicubic, antialiased) to the student's patch grid times its own patch size, so it has one token
  per student token and the iBOT targets of the masked student tokens are the teacher's tokens at the same
  places.
- **features** (`FeatureDistillation`): the student's CLS and patch tokens (global crops, after the final
  norm) projected to the teacher's width by learned projections (`distill.projection`: linear or a 2-layer
  MLP; trained with the student, dropped at export) and pulled toward the teacher's by cosine distance +
  smooth-L1 (franca.losses.feature_distill). The teacher sees the crop at `distill.teacher_size` (0: the crop
  size rounded to a multiple of its patch size); the student's projected patch tokens are resampled
  (bilinear) to the teacher's grid. Terms `distill_cls` and `distill_patch`.

The teacher gets the crops in its own normalisation (a DINOv3 satellite model's mean and std, say): the crops
are un-normalised with the pipeline's mean/std and normalised with the teacher's `pretrained_cfg`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from franca.losses.feature_distill import feature_distill_loss, resample_grid
from franca.models.api import TIMM_PREFIX, load_backbone
from franca.models.heads import head_state_keys
from franca.models.releases import is_release
from franca.models.sizes import SIZES
from franca.train.config import DistillConfig, FrancaTrainConfig, HeadConfig, from_dict, load_config
from franca.train.init import HEAD_SECTIONS, read_init
from franca.train.objective import StepInputs, StudentOutput, Term
from franca.train.step import FrancaObjective
from franca.utils.errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "DistillTeacher",
    "FeatureDistillation",
    "HeadDistillation",
    "TeacherView",
    "distill_config",
    "load_teacher",
    "resolve_mode",
    "teacher_head_config",
]

HEAD_NAMES = ("dino_head", "ibot_head")


@dataclass
class DistillTeacher:
    """A frozen teacher as loaded: its backbone, its heads when the file has them, and what to call it."""

    backbone: nn.Module
    heads: Optional[dict[str, nn.Module]]
    """{"dino_head", "ibot_head"} (MatryoshkaHead) for a teacher with heads, else None"""
    label: str
    fingerprint: list[float]
    """per-tensor sums and sums of squares of every weight (float64, on the CPU): a changed file is caught on
    --resume"""


def _training_checkpoint(path: Path) -> Optional[Mapping[str, Any]]:
    """The checkpoint dict when `path` is a training checkpoint of this project (teacher, student, config)."""
    if not path.is_file() or path.suffix not in (".pth", ".pt", ".ckpt"):
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not a plain torch file: load_backbone gives the one error for it
        return None
    if isinstance(obj, Mapping) and isinstance(obj.get("teacher"), Mapping) and "config" in obj:
        return obj
    return None


def teacher_head_config(spec: str) -> Optional[dict[str, Any]]:
    """{"dino": {...}, "ibot": {"head": {...}}} of a teacher with heads (the config sections its heads were built
    from), None for a teacher without heads (`franca distill` gives the student heads of the same shape)."""
    ckpt = _training_checkpoint(Path(spec))
    if ckpt is not None and _has_heads(ckpt["teacher"]):
        cfg = from_dict(dict(ckpt["config"]))
        return {"dino": _head_dict(cfg.dino), "ibot": {"head": _head_dict(cfg.ibot.head)}}
    released = _released_heads(spec)
    if released is None:
        return None
    return {"dino": _head_dict(released["dino_head"]), "ibot": {"head": _head_dict(released["ibot_head"])}}


def _released_heads(spec: str) -> Optional[dict[str, HeadConfig]]:
    """The head configs of a file that holds DINO/iBOT heads in another layout this project loads (the official
    Franca release's Matryoshka heads, read as `franca pretrain --init` reads them); None otherwise."""
    if not Path(spec).exists() and not is_release(spec):
        return None
    try:
        src = read_init(spec)
    except (UserError, KeyError, ValueError, OSError):  # not a weights file init reads: backbone only
        return None
    if not src.head_layouts:
        return None
    keys = src.head_keys
    out = {}
    for name, sec in HEAD_SECTIONS.items():
        prefix = sec + "."
        out[name] = HeadConfig(**{k[len(prefix) :]: v for k, v in keys.items() if k.startswith(prefix)})
    return out


def _head_dict(h: HeadConfig) -> dict[str, Any]:
    return {k: v for k, v in asdict(h).items() if k != "loss_weight"}


def _has_heads(state: Mapping[str, Any]) -> bool:
    return all(any(k.startswith(f"{h}.") for k in state) for h in HEAD_NAMES)


def load_teacher(
    spec: str, *, head_builder: Callable[[HeadConfig, int], nn.Module], with_heads: bool = True
) -> DistillTeacher:
    """The frozen teacher `distill.teacher` names, on the CPU, in eval mode, without gradients.

    `spec`: a training checkpoint of this project or an official Franca file or name (backbone and, with
    `with_heads`, the teacher's DINO/iBOT heads, built by `head_builder(head config, width)` from the checkpoint's
    config or the file's head layout), or any other weights file, transformers folder or released name
    `franca.load_backbone` reads (backbone only)."""
    path = Path(spec)
    if not path.exists() and not is_release(spec):
        raise UserError(
            f"distill.teacher={spec!r}: no such file or folder, and not a released name (franca --list-models)"
        )
    try:
        backbone = load_backbone(spec, progress=False) if not path.exists() else load_backbone(weights=path)
    except (KeyError, ValueError) as exc:
        raise UserError(f"distill.teacher={spec!r}: {exc}") from exc
    heads = None
    ckpt = _training_checkpoint(path) if path.exists() else None
    if with_heads and ckpt is not None and _has_heads(ckpt["teacher"]):
        cfg = from_dict(dict(ckpt["config"]))
        heads = {}
        for name, hcfg in (("dino_head", cfg.dino), ("ibot_head", cfg.ibot.head)):
            head = head_builder(hcfg, backbone.embed_dim)
            state = {k[len(name) + 1 :]: v for k, v in ckpt["teacher"].items() if k.startswith(f"{name}.")}
            try:
                head.load_state_dict(state)
            except RuntimeError as exc:
                raise UserError(f"distill.teacher={spec!r}: its {name} does not fit its own config ({exc})") from None
            heads[name] = head
    elif with_heads and ckpt is None and (released := _released_heads(spec)) is not None:
        src = read_init(spec)
        heads = {}
        for name, hcfg in released.items():
            head = head_builder(hcfg, backbone.embed_dim)
            head.load_state_dict(head_state_keys(src.weights.heads[name]), strict=True)
            heads[name] = head
    modules = [backbone, *(heads or {}).values()]
    for m in modules:
        m.eval().requires_grad_(False)
    label = str(spec) if path.exists() else getattr(backbone, "weights_label", None) or str(spec)
    return DistillTeacher(backbone, heads, label, _fingerprint(modules))


def _fingerprint(modules: list[nn.Module]) -> list[float]:
    sums = [0.0, 0.0]
    for m in modules:
        for t in m.state_dict().values():
            if t is None or not torch.is_floating_point(t):
                continue
            x = t.detach().to("cpu", torch.float64)
            sums[0] += float(x.sum())
            sums[1] += float((x * x).sum())
    return sums


def resolve_mode(cfg: DistillConfig, teacher: DistillTeacher) -> str:
    """'heads' or 'features' for `distill.mode` and this teacher; 'heads' for a teacher without heads is an error."""
    if cfg.mode == "heads" and teacher.heads is None:
        raise UserError(
            f"distill.mode=heads: the teacher {cfg.teacher!r} has no DINO/iBOT heads (this project's "
            "training checkpoints and the official Franca files carry them); use distill.mode=features (or auto)"
        )
    if cfg.mode == "auto":
        return "heads" if teacher.heads is not None else "features"
    return cfg.mode


class TeacherView(nn.Module):
    """The frozen teacher backbone as the distillation sees it: each batch resized to the side `side(h, w)`
    gives (bicubic, antialiased; unchanged when equal) and moved from the pipeline's normalisation to the
    teacher's. `forward_features(x)` -> the backbone's dict; `grid(h, w)` -> the teacher's patch grid."""

    def __init__(
        self,
        backbone: nn.Module,
        side: Callable[[int, int], tuple[int, int]],
        pipeline_mean_std: tuple[tuple[float, ...], tuple[float, ...]],
    ) -> None:
        super().__init__()
        self.backbone, self.side = backbone, side
        self.embed_dim, self.patch_size = int(backbone.embed_dim), int(backbone.patch_size)
        cfg = getattr(backbone, "pretrained_cfg", None) or {}
        mean, std = pipeline_mean_std
        t_mean, t_std = tuple(cfg.get("mean", mean)), tuple(cfg.get("std", std))
        self.renormalise = not (_close(mean, t_mean) and _close(std, t_std))
        scale = torch.tensor(std) / torch.tensor(t_std)
        shift = (torch.tensor(mean) - torch.tensor(t_mean)) / torch.tensor(t_std)
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)

    def grid(self, h: int, w: int) -> tuple[int, int]:
        H, W = self.side(h, w)
        return H // self.patch_size, W // self.patch_size

    @torch.no_grad()
    def forward_features(self, x: torch.Tensor) -> dict[str, Any]:
        h, w = x.shape[-2:]
        size = self.side(h, w)
        if self.renormalise:  # x·std + mean = x_t·std_t + mean_t
            x = x * self.scale + self.shift
        if tuple(size) != (h, w):
            x = F.interpolate(x.float(), size=size, mode="bicubic", align_corners=False, antialias=True)
        return self.backbone.forward_features(x)


def _close(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, abs_tol=1e-6) for x, y in zip(a, b))


def student_grid_side(student_patch: int, teacher_patch: int) -> Callable[[int, int], tuple[int, int]]:
    """heads: the teacher sees the crop at the student's patch grid times its own patch size."""

    def side(h: int, w: int) -> tuple[int, int]:
        return h // student_patch * teacher_patch, w // student_patch * teacher_patch

    return side


def teacher_patch_side(teacher_patch: int, teacher_size: int = 0) -> Callable[[int, int], tuple[int, int]]:
    """features: `teacher_size` (rounded down to a multiple of the patch), or the crop size rounded to the nearest
    multiple of the patch (at least one patch)."""

    def side(h: int, w: int) -> tuple[int, int]:
        if teacher_size:
            s = max(teacher_patch, teacher_size // teacher_patch * teacher_patch)
            return s, s
        return (max(teacher_patch, round(h / teacher_patch) * teacher_patch),
                max(teacher_patch, round(w / teacher_patch) * teacher_patch))  # fmt: skip

    return side


class _FingerprintState:
    """The teacher's fingerprint in the checkpoint's objective state; a resume with other weights stops."""

    teacher_label: str
    fingerprint: list[float]

    def _teacher_state(self) -> dict[str, Any]:
        return {"teacher": self.teacher_label, "fingerprint": list(self.fingerprint)}

    def _check_teacher(self, state: Optional[Mapping[str, Any]]) -> None:
        saved = (state or {}).get("fingerprint")
        if saved is None:
            return
        if not all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) for a, b in zip(saved, self.fingerprint)):
            raise UserError(
                f"--resume: the teacher {self.teacher_label!r} now holds other weights than the run was distilled "
                f"from (it was {state.get('teacher')!r}): restore that file, or start a new run"
            )


class HeadDistillation(FrancaObjective, _FingerprintState):
    """Objective part "distill" (mode heads): FrancaObjective with the frozen teacher's heads as the targets.

    Terms dino, ibot, koleo (as pretraining logs them). `teacher`: {"backbone": TeacherView, "dino_head",
    "ibot_head"} (frozen); the student's heads must have the teacher's prototypes per level."""

    name = "distill"

    def __init__(
        self,
        *,
        teacher: dict[str, nn.Module],
        student_heads: Mapping[str, nn.Module],
        teacher_label: str,
        fingerprint: list[float],
        **franca: Any,
    ) -> None:
        for h in HEAD_NAMES:
            t, s = teacher[h].n_prototypes_per_level, student_heads[h].n_prototypes_per_level
            if list(t) != list(s):
                key = "dino" if h == "dino_head" else "ibot.head"
                raise UserError(
                    f"distill.teacher={teacher_label!r}: its {h} has {list(t)} prototypes per level, the student's "
                    f"{list(s)}: give the student the teacher's head shape ({key}.n_prototypes={t[-1]} "
                    f"{key}.nesting_levels={len(t)}; `franca distill` copies it from the teacher)"
                )
        super().__init__(teacher=teacher, **franca)
        self.teacher_label, self.fingerprint = teacher_label, fingerprint
        view = teacher["backbone"]
        self.description = (
            f"distillation from {teacher_label} (frozen, with its heads): DINO + iBOT + KoLeo against its "
            f"Sinkhorn-Knopp targets; it sees each global crop at the student's grid × its patch {view.patch_size}"
        )

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **self._teacher_state()}

    def load_state_dict(self, state: Optional[dict[str, Any]]) -> None:
        self._check_teacher(state)
        super().load_state_dict(state)


def projection(kind: str, in_dim: int, out_dim: int) -> nn.Module:
    """Student width -> teacher width: one Linear, or Linear, GELU, Linear (hidden width = the teacher's)."""
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
    raise ValueError(f"distill.projection={kind!r}: expected 'linear' or 'mlp'")


@dataclass
class FeatureTargets:
    cls: torch.Tensor
    """(2B, D_t) teacher CLS tokens of the global crops"""
    patches: torch.Tensor
    """(2B, h_t·w_t, D_t) teacher patch tokens"""
    grid: tuple[int, int]
    """the teacher's patch grid (h_t, w_t)"""


class FeatureDistillation(_FingerprintState):
    """Objective part "distill" (mode features): terms distill_cls and distill_patch (see the module docstring).

    Owns the projections `distill_cls_proj` and `distill_patch_proj`, which the student pass applies to the
    global crops' CLS and patch tokens (`module_inputs`). Also logs each term's cosine and smooth-L1 parts."""

    name = "distill"

    def __init__(
        self,
        *,
        teacher: TeacherView,
        student_dim: int,
        student_patch: int,
        cfg: DistillConfig,
        teacher_label: str,
        fingerprint: list[float],
    ) -> None:
        self.teacher, self.student_patch = teacher, int(student_patch)
        self.smooth_l1_weight = float(cfg.smooth_l1_weight)
        d_t = teacher.embed_dim
        self.modules: dict[str, nn.Module] = {
            "distill_cls_proj": projection(cfg.projection, student_dim, d_t),
            "distill_patch_proj": projection(cfg.projection, student_dim, d_t),
        }
        self.module_inputs = {"distill_cls_proj": "global_backbone_cls", "distill_patch_proj": "global_patch_tokens"}
        self.terms = (
            Term("distill_cls", float(cfg.cls_weight), ("global_backbone_cls",)),
            Term("distill_patch", float(cfg.patch_weight), ("global_patch_tokens",)),
        )
        self.teacher_label, self.fingerprint = teacher_label, fingerprint
        self.description = (
            f"feature distillation from {teacher_label} (frozen, width {d_t}, patch {teacher.patch_size}): CLS and "
            f"patch tokens through a {cfg.projection} projection {student_dim} -> {d_t}, cosine + "
            f"{self.smooth_l1_weight:g} x smooth-L1"
        )

    def targets(self, step: StepInputs) -> FeatureTargets:
        x = step.batch["global_crops"]
        out = self.teacher.forward_features(x)
        return FeatureTargets(out["x_norm_clstoken"], out["x_norm_patchtokens"], self.teacher.grid(*x.shape[-2:]))

    def __call__(self, *, student: StudentOutput, targets: FeatureTargets, step: StepInputs) -> dict[str, torch.Tensor]:
        h, w = step.batch["global_crops"].shape[-2:]
        patches = resample_grid(
            student.extra["distill_patch_proj"], (h // self.student_patch, w // self.student_patch), targets.grid
        )
        c = feature_distill_loss(student.extra["distill_cls_proj"], targets.cls, self.smooth_l1_weight)
        p = feature_distill_loss(patches, targets.patches, self.smooth_l1_weight)
        return {
            "distill_cls": c["loss"],
            "distill_patch": p["loss"],
            "distill_cls_cosine": c["cosine"],
            "distill_patch_cosine": p["cosine"],
            "distill_patch_smooth_l1": p["smooth_l1"],
        }

    def state_dict(self) -> dict[str, Any]:
        return self._teacher_state()

    def load_state_dict(self, state: Optional[dict[str, Any]]) -> None:
        self._check_teacher(state)


def distill_config(
    preset: str, overrides: Sequence[str], *, teacher: str, student: Optional[str] = None
) -> FrancaTrainConfig:
    """The config of `franca distill`: preset <- what the teacher and student imply <- `overrides`.

    What they imply (each overridden by an explicit key=value): `distill.teacher`; with `student`,
    `model.arch` and the named size's own width, depth and head count (the preset's model.embed_dim, depth and
    num_heads dropped) and, for a named size, crop sizes rounded down to multiples of its patch; for a teacher
    with heads (and distill.mode not features) the student's head shape copied from the teacher's (`dino.*`,
    `ibot.head.*`: the same prototypes per level); for feature distillation the student sees unmasked global
    crops only (ibot.mask_sample_probability=0, crops.local_crops_number=0), which no term would read."""
    explicit = {o.split("=", 1)[0].strip() for o in overrides if "=" in o}
    if "distill.teacher" in explicit:
        raise UserError("--teacher and distill.teacher= both name the teacher: give --teacher only")
    implied: dict[str, Any] = {"distill": {"teacher": str(teacher)}}
    base = load_config(preset, [o for o in overrides if o.split("=", 1)[0].strip().startswith("distill.")])
    if student:
        implied["model"] = {"arch": student, "embed_dim": None, "depth": None, "num_heads": None}
        patch = _named_patch(student)
        if patch:
            for name in ("global_crops_size", "local_crops_size"):
                size = getattr(base.crops, name)
                rounded = max(patch, size // patch * patch)
                if rounded != size:
                    log.info(
                        "crops.%s %d -> %d (a multiple of the student's patch size %d)", name, size, rounded, patch
                    )
                    implied.setdefault("crops", {})[name] = rounded
    mode = base.distill.mode
    if student and student.startswith(TIMM_PREFIX):  # a timm ViT has no mask token: no iBOT, so no heads mode
        if mode == "heads":
            raise UserError(f"distill.mode=heads needs a student with a mask token; {student} has none: use features")
        if mode == "auto":
            log.info("%s has no mask token: feature distillation (distill.mode=features)", student)
            mode = "features"
            implied["distill"]["mode"] = "features"
    heads = None if mode == "features" else teacher_head_config(str(teacher))
    if heads is not None:
        implied["dino"], implied["ibot"] = heads["dino"], dict(heads["ibot"])
    elif mode == "heads":
        raise UserError(
            f"distill.mode=heads: the teacher {teacher!r} has no DINO/iBOT heads (this project's training "
            "checkpoints and the official Franca files carry them); use distill.mode=features (or auto)"
        )
    else:
        implied.setdefault("ibot", {})["mask_sample_probability"] = 0.0
        implied.setdefault("crops", {})["local_crops_number"] = 0
    return load_config(preset, overrides, inherit=implied, inherit_source=f"franca distill --teacher {teacher}")


def _named_patch(name: str) -> Optional[int]:
    """The patch size of a named size (None for timm:NAME, whose model is not built here)."""
    return int(SIZES[name]["patch_size"]) if name in SIZES else None
