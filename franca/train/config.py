"""Typed pretraining configuration: dataclass schema, yaml presets, `key=value` overrides.

The schema follows the reference recipe (arXiv 2507.14137 and the released Franca
`configs/ssl_default_config.yaml` + `configs/train/*`), but every key lives in one typed
schema, so a preset or override can only set keys that exist (a typo fails before training,
naming the key). Derived values (the scaled lr, iteration counts) are computed by functions
and logged, never written back into the config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from franca.data.source import SOURCE_KINDS

PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_PRESET = "tiny"


@dataclass
class ModelConfig:
    arch: str = "vitt8"
    """backbone name for franca.build_backbone (vitt8, vitt4, vits14, vitb14, vitl14, vitg14)"""
    embed_dim: Optional[int] = None
    """override of the named size's width (None: keep)"""
    depth: Optional[int] = None
    num_heads: Optional[int] = None
    drop_path_rate: float = 0.0
    """stochastic depth, the same in every block (drop_path_uniform)"""
    layerscale_init: Optional[float] = 1e-5
    num_register_tokens: int = 0
    """register tokens (paper D.1 compares with and without)"""
    img_size: Optional[int] = None
    """position-table size; None: the global crop size"""
    patch_size: Optional[int] = None
    """None: the named size's (train.init_from sets this and the keys below from the file)"""
    ffn: Optional[str] = None
    """'swiglu' (Franca) or 'mlp' (DINOv2's ViT-S/B/L, most DINOv3 files); None: the named size's"""
    ffn_hidden_dim: Optional[int] = None
    """FFN hidden width; None: the named size's rule"""
    interpolate_offset: Optional[float] = None
    """position-table interpolation offset (DINOv2 0.1, its *_reg files 0); None: the named size's"""
    interpolate_antialias: Optional[bool] = None
    activation_checkpointing: bool = False
    """recompute each student block's activations in the backward (torch.utils.checkpoint per block): less
    memory for the big models, about a third more backbone compute; same losses and gradients"""

    def __post_init__(self) -> None:
        for name in ("embed_dim", "depth", "num_heads", "img_size", "patch_size", "ffn_hidden_dim"):
            v = getattr(self, name)
            _check(v is None or v >= 1, f"model.{name}", v, ">= 1 (or null: the named size's value)")
        _check(self.ffn in (None, "swiglu", "mlp"), "model.ffn", self.ffn, "'swiglu', 'mlp' or null")
        _check(0.0 <= self.drop_path_rate < 1.0, "model.drop_path_rate", self.drop_path_rate, "in [0, 1)")
        _check(self.num_register_tokens >= 0, "model.num_register_tokens", self.num_register_tokens, ">= 0")


@dataclass
class HeadConfig:
    n_prototypes: int = 131072
    """prototypes of the finest level; level i has n_prototypes * d_i / D"""
    nesting_levels: int = 5
    mode: str = "slice"
    """'slice' (the paper: level i sees the first d_i coordinates) or 'projection' (the released code:
    its own Linear(D -> d_i) per level; README "Where the paper and the released code differ")"""
    hidden_dim: int = 2048
    bottleneck_dim: int = 384
    nlayers: int = 3
    l2_norm: bool = False
    """L2-normalise the bottleneck before the prototypes (off in the released MRL head)"""
    use_bn: bool = False
    """BatchNorm1d after each hidden Linear of the head and a non-affine one on the bottleneck (DINO's
    use_bn; off in the released head). Statistics span the global batch on CUDA (SyncBatchNorm), the
    local batch on CPU."""
    loss_weight: float = 1.0

    def validate(self, prefix: str) -> None:
        """Checked by FrancaTrainConfig, which knows the section (dino or ibot.head) to name."""
        for name in ("n_prototypes", "nesting_levels", "nlayers", "hidden_dim", "bottleneck_dim"):
            _check(getattr(self, name) >= 1, f"{prefix}.{name}", getattr(self, name), ">= 1")
        _check(self.mode in ("projection", "slice"), f"{prefix}.mode", self.mode, "'projection' or 'slice'")
        _check(self.loss_weight >= 0, f"{prefix}.loss_weight", self.loss_weight, ">= 0")


@dataclass
class IbotConfig:
    head: HeadConfig = field(default_factory=HeadConfig)
    mask_sample_probability: float = 0.5
    mask_ratio_min_max: list[float] = field(default_factory=lambda: [0.1, 0.65])
    mask_variant: str = "code"
    """CyclicMask variant: 'code' (released) or 'paper' (Algorithm 1)"""
    mask_type: str = "cyclic"
    """'cyclic' (Franca's CyclicMask) or 'block' (DINOv2/iBOT multi-block masking, franca.data.masking.BlockMask)"""

    def __post_init__(self) -> None:
        _check(
            0.0 <= self.mask_sample_probability <= 1.0,
            "ibot.mask_sample_probability",
            self.mask_sample_probability,
            "in [0, 1]",
        )
        _check(self.mask_type in ("cyclic", "block"), "ibot.mask_type", self.mask_type, "'cyclic' or 'block'")
        lo_hi = list(self.mask_ratio_min_max)
        _check(
            len(lo_hi) == 2 and 0.0 <= lo_hi[0] <= lo_hi[1] < 1.0,
            "ibot.mask_ratio_min_max",
            lo_hi,
            "[min, max] with 0 <= min <= max < 1",
        )


@dataclass
class LossConfig:
    student_temp: float = 0.1
    koleo_weight: float = 0.1
    koleo_scope: str = "local"
    """'local': per process on its own batch (the reference), 'global': over the gathered global batch"""
    centering: str = "sinkhorn_knopp"
    """teacher targets: 'sinkhorn_knopp' (Franca) or 'centering' (EMA centre, momentum 0.9)"""
    sinkhorn_iterations: int = 3
    implicit_patch_targets: Optional[bool] = None
    """keep the iBOT Sinkhorn-Knopp targets as logits + scaling vectors, read by the loss in fused
    passes (same values, nothing (M, K)-sized written); null: on with train.compile, which fuses the
    passes (eager, they re-read the logits without the fusion and are slower)"""
    gram_weight: float = 0.0
    """Gram anchoring (DINOv3 §4, franca.train.gram): weight of the term that pulls the Gram matrix of the
    student's global-crop patch tokens toward that of a Gram teacher (an earlier EMA teacher); 0: off"""
    gram_start: int = 0
    """iteration at which the Gram teacher is first taken from the EMA teacher and the term starts"""
    gram_refresh: int = 0
    """retake the Gram teacher from the EMA teacher every this many iterations after gram_start; 0: never"""

    def __post_init__(self) -> None:
        _check(self.student_temp > 0, "loss.student_temp", self.student_temp, "> 0")
        _check(self.gram_weight >= 0, "loss.gram_weight", self.gram_weight, ">= 0")
        _check(self.gram_start >= 0, "loss.gram_start", self.gram_start, ">= 0")
        _check(self.gram_refresh >= 0, "loss.gram_refresh", self.gram_refresh, ">= 0")
        _check(self.koleo_weight >= 0, "loss.koleo_weight", self.koleo_weight, ">= 0")
        _check(self.sinkhorn_iterations >= 1, "loss.sinkhorn_iterations", self.sinkhorn_iterations, ">= 1")
        _check(self.koleo_scope in ("local", "global"), "loss.koleo_scope", self.koleo_scope, "'local' or 'global'")
        _check(
            self.centering in ("sinkhorn_knopp", "centering"),
            "loss.centering",
            self.centering,
            "'sinkhorn_knopp' or 'centering'",
        )


@dataclass
class TeacherConfig:
    momentum_teacher: float = 0.994
    final_momentum_teacher: float = 1.0
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 30.0
    warmup_teacher_temp_iterations: int = -1
    """-1: from warmup_teacher_temp_epochs"""

    def __post_init__(self) -> None:
        _check(0.0 <= self.momentum_teacher <= 1.0, "teacher.momentum_teacher", self.momentum_teacher, "in [0, 1]")
        _check(
            0.0 <= self.final_momentum_teacher <= 1.0,
            "teacher.final_momentum_teacher",
            self.final_momentum_teacher,
            "in [0, 1]",
        )
        _check(
            self.teacher_temp > 0 and self.warmup_teacher_temp > 0,
            "teacher.teacher_temp",
            (self.warmup_teacher_temp, self.teacher_temp),
            "> 0",
        )
        _check(
            self.warmup_teacher_temp_epochs >= 0,
            "teacher.warmup_teacher_temp_epochs",
            self.warmup_teacher_temp_epochs,
            ">= 0",
        )


@dataclass
class OptimConfig:
    base_lr: float = 5e-4
    """lr for a global batch of 1024; the lr used is base_lr * sqrt(global_batch / 1024)"""
    lr_scaling: str = "sqrt"
    """'sqrt' (the reference rule), 'linear' or 'none'"""
    min_lr: float = 1e-6
    warmup_epochs: float = 10.0
    warmup_iterations: int = -1
    weight_decay: float = 0.04
    weight_decay_end: float = 0.2
    layerwise_decay: float = 1.0
    patch_embed_lr_mult: float = 0.2
    clip_grad: float = 3.0
    """global-norm clipping, applied to each student submodule separately; 0 disables"""
    freeze_last_layer_epochs: float = 1.0
    freeze_last_layer_iterations: int = -1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    """AdamW epsilon"""
    fused: bool = True
    """fused AdamW where the device supports it"""

    def __post_init__(self) -> None:
        _check(self.base_lr > 0, "optim.base_lr", self.base_lr, "> 0")
        _check(
            self.lr_scaling in ("sqrt", "linear", "none"),
            "optim.lr_scaling",
            self.lr_scaling,
            "'sqrt', 'linear' or 'none'",
        )
        _check(0.0 < self.layerwise_decay <= 1.0, "optim.layerwise_decay", self.layerwise_decay, "in (0, 1]")
        _check(self.clip_grad >= 0, "optim.clip_grad", self.clip_grad, ">= 0")
        for name in ("min_lr", "weight_decay", "weight_decay_end", "warmup_epochs", "freeze_last_layer_epochs"):
            _check(getattr(self, name) >= 0, f"optim.{name}", getattr(self, name), ">= 0")
        _check(self.eps > 0, "optim.eps", self.eps, "> 0")
        _check(len(self.betas) == 2, "optim.betas", self.betas, "two values")


@dataclass
class CropsConfig:
    global_crops_size: int = 224
    local_crops_size: int = 98
    local_crops_number: int = 8
    global_crops_scale: list[float] = field(default_factory=lambda: [0.32, 1.0])
    local_crops_scale: list[float] = field(default_factory=lambda: [0.05, 0.32])
    augment_options: dict[str, Any] = field(default_factory=dict)
    """extra MultiCropAugmentation arguments (blur/solarize/jitter probabilities, …)"""

    def __post_init__(self) -> None:
        _check(self.global_crops_size > 0, "crops.global_crops_size", self.global_crops_size, "> 0")
        _check(
            self.local_crops_size > 0 or self.local_crops_number == 0,
            "crops.local_crops_size",
            self.local_crops_size,
            "> 0",
        )
        _check(self.local_crops_number >= 0, "crops.local_crops_number", self.local_crops_number, ">= 0")
        for name in ("global_crops_scale", "local_crops_scale"):
            v = list(getattr(self, name))
            _check(len(v) == 2 and 0 < v[0] <= v[1] <= 1, f"crops.{name}", v, "[min, max] in (0, 1]")


KIND_ALIASES = {"imagefolder": "folder"}  # data.kind values read as a source kind (pretraining ignores labels)


@dataclass
class DataConfig:
    dataset: str = "toy"
    """'toy' (built-in set), an image folder (flat/nested/ImageFolder) or webdataset shards (*.tar, brace list)"""
    kind: str = "auto"
    """'auto' (detected from data.dataset), 'toy' or an image source kind of franca.data.source: 'folder',
    'webdataset', 'files', 'classes' or one registered there ('imagefolder' reads as 'folder')"""
    dataset_size: int = 0
    """images in a webdataset (needed for epochs; 0 = count the shards once)"""
    val: str = ""
    """labelled ImageFolder for the end-of-run k-NN (''/'auto': the toy val split for the toy set)"""
    knn_train: str = ""
    """labelled ImageFolder used as k-NN memory (''/'auto': the toy train split)"""
    num_workers: int = 0
    batch_augment: bool = False
    """augment whole batches with tensor ops (franca.data.batch_augment; images of mixed sizes too); same
    transforms as the per-image pipeline, much faster for small images"""
    augment_device: str = "auto"
    """where images are decoded and augmented: 'cpu' (the loader workers), 'cuda' (workers read bytes; JPEG
    decoding and the batched multi-crop run on the training GPU; not yet measured on a GPU), 'auto' (cpu on
    every device until the cuda path's GPU figures are measured)"""
    toy_size: int = 64
    toy_n_train: int = 0
    """toy images per split and class (0 = the generator's default)"""
    toy_n_val: int = 0
    toy_seed: int = 0
    toy_options: dict[str, Any] = field(default_factory=dict)
    """extra keyword arguments for franca.data.toy.ensure_toy (difficulty knobs)"""

    def __post_init__(self) -> None:
        kinds = ("auto", "toy", *KIND_ALIASES, *SOURCE_KINDS)
        _check(self.kind in kinds, "data.kind", self.kind, f"one of {', '.join(map(repr, kinds))}")
        _check(self.num_workers >= 0, "data.num_workers", self.num_workers, ">= 0")
        _check(self.dataset_size >= 0, "data.dataset_size", self.dataset_size, ">= 0 (0: count the shards)")
        _check(self.toy_size >= 8, "data.toy_size", self.toy_size, ">= 8")
        _check(
            self.augment_device in ("auto", "cpu", "cuda"),
            "data.augment_device",
            self.augment_device,
            "'auto', 'cpu' or 'cuda'",
        )


@dataclass
class TrainConfig:
    batch_size_per_gpu: int = 32
    epochs: float = 100.0
    """passes over the data set; iterations = epochs * (dataset size // global batch)"""
    iterations: int = 0
    """explicit iteration count (overrides epochs when > 0)"""
    seed: int = 0
    output_dir: str = "runs/pretrain"
    checkpoint_period: int = 1000
    """iterations between checkpoints (one consolidated file, written atomically); also at the end"""
    log_period: int = 10
    device: str = "auto"
    compile: bool = False
    """torch.compile the backbones and heads"""
    precision: str = "auto"
    """'auto', 'bf16' or 'fp32': bf16 autocast for the backbones and heads (the losses, Sinkhorn-Knopp and
    KoLeo stay fp32); auto = bf16 on CUDA, fp32 on CPU (the tiny CPU step gains nothing from bf16:
    docs/training.md "Precision"). The end-of-run k-NN check extracts in the same precision"""
    parallel: str = "ddp"
    """'ddp' or 'fsdp' (FSDP2 fully_shard) under torchrun"""
    knn_eval: bool = True
    """k-NN on the validation split at the end (and of the initial backbone)"""
    knn_k: int = 20
    max_minutes: float = 0.0
    """stop (with a checkpoint) after this wall time; 0 = no limit"""
    init_from: str = ""
    """a released name or a weights file (training checkpoint, release .pth, DINOv2/DINOv3 file, export,
    Hugging Face folder) that initialises student and teacher: its (teacher) backbone, and its heads where it
    has them and train.init_heads allows; the file defines the model (franca.train.init)"""
    init_heads: Optional[bool] = None
    """with init_from: load the file's dino/ibot heads (true), start them fresh (false); null: true when the
    file has heads this project can load (set when the run starts and saved resolved)"""
    freeze_backbone_iterations: int = -1
    """head warm-up: the student backbone is not updated for this many first iterations (its gradients are
    dropped), then follows the usual lr schedule (warm-up and cosine over the rest); -1: the lr warm-up length
    when init_from starts the heads fresh, else 0"""

    def __post_init__(self) -> None:
        _check(
            self.batch_size_per_gpu >= 2,
            "train.batch_size_per_gpu",
            self.batch_size_per_gpu,
            ">= 2 (KoLeo needs a neighbour)",
        )
        _check(self.iterations >= 0, "train.iterations", self.iterations, ">= 0 (0: from train.epochs)")
        _check(self.epochs > 0 or self.iterations > 0, "train.epochs", self.epochs, "> 0 (or set train.iterations)")
        _check(self.max_minutes >= 0, "train.max_minutes", self.max_minutes, ">= 0 (0: no time limit)")
        _check(self.checkpoint_period >= 1, "train.checkpoint_period", self.checkpoint_period, ">= 1")
        _check(self.log_period >= 1, "train.log_period", self.log_period, ">= 1")
        _check(self.parallel in ("ddp", "fsdp"), "train.parallel", self.parallel, "'ddp' or 'fsdp'")
        _check(
            self.precision in ("auto", "bf16", "fp32"), "train.precision", self.precision, "'auto', 'bf16' or 'fp32'"
        )
        _check(self.knn_k >= 1, "train.knn_k", self.knn_k, ">= 1")
        _check(
            self.freeze_backbone_iterations >= -1,
            "train.freeze_backbone_iterations",
            self.freeze_backbone_iterations,
            ">= 0 (or -1: automatic)",
        )
        _check(bool(str(self.output_dir).strip()), "train.output_dir", self.output_dir, "a folder path")


DISTILL_MODES = ("auto", "heads", "features")
DISTILL_PROJECTIONS = ("linear", "mlp")


@dataclass
class DistillConfig:
    """Distillation from a frozen teacher (`franca distill`, franca.train.distill); off while `teacher` is empty."""

    teacher: str = ""
    """the frozen teacher: a released name, a weights file (a training checkpoint of this project, an export,
    a DINOv2/DINOv3 file) or a transformers folder; '' = no distillation (self-distillation pretraining)"""
    mode: str = "auto"
    """'heads': the Franca objective (DINO + iBOT per level + KoLeo) against the teacher's own heads'
    Sinkhorn-Knopp targets (a teacher with heads); 'features': its CLS and patch tokens through a learned
    projection (any teacher); 'auto': heads when the teacher has them, else features"""
    teacher_size: int = 0
    """features: the side (pixels) the teacher sees each global crop at; 0 = the crop size rounded to a
    multiple of the teacher's patch size (at least one patch)"""
    cls_weight: float = 1.0
    """features: weight of the term distill_cls (CLS token) in the total"""
    patch_weight: float = 1.0
    """features: weight of the term distill_patch (patch tokens, on the teacher's grid) in the total"""
    smooth_l1_weight: float = 1.0
    """features: each token's loss is cosine distance + this × smooth-L1 (franca.losses.feature_distill)"""
    projection: str = "linear"
    """features: student width -> teacher width by 'linear' (one Linear) or 'mlp' (Linear, GELU, Linear)"""

    def __post_init__(self) -> None:
        _check(self.mode in DISTILL_MODES, "distill.mode", self.mode, "'auto', 'heads' or 'features'")
        _check(self.projection in DISTILL_PROJECTIONS, "distill.projection", self.projection, "'linear' or 'mlp'")
        _check(self.teacher_size >= 0, "distill.teacher_size", self.teacher_size, ">= 0 (0: the crop size)")
        for name in ("cls_weight", "patch_weight", "smooth_l1_weight"):
            _check(getattr(self, name) >= 0, f"distill.{name}", getattr(self, name), ">= 0")


@dataclass
class FrancaTrainConfig:
    """The whole pretraining configuration (one preset = overrides of these defaults)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    dino: HeadConfig = field(default_factory=HeadConfig)
    ibot: IbotConfig = field(default_factory=IbotConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    crops: CropsConfig = field(default_factory=CropsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        _check_finite(self, "")
        self.dino.validate("dino")
        self.ibot.head.validate("ibot.head")


def _check_finite(obj: Any, prefix: str) -> None:
    """Every float of the config (also inside lists) is finite: an inf lr or epoch count fails here."""
    import math

    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_finite(value, key + ".")
            continue
        items = value if isinstance(value, (list, tuple)) else [value]
        for v in items:
            _check(not isinstance(v, float) or math.isfinite(v), key, value, "a finite number")


def _check(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ValueError(f"config key {key}={value!r} is invalid: expected {expected}")


def list_presets() -> list[str]:
    """Names of the yaml presets shipped with the package."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _preset_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} does not exist")
        return p
    cand = PRESET_DIR / f"{name_or_path}.yaml"
    if not cand.is_file():
        raise FileNotFoundError(
            f"unknown preset {name_or_path!r}; presets: {', '.join(list_presets())} (or give a .yaml path)"
        )
    return cand


def _load_layers(name_or_path: str, seen: tuple[str, ...] = ()) -> list[Any]:
    """A preset and its `_base_` chain as OmegaConf nodes, base first."""

    path = _preset_path(name_or_path)
    if str(path) in seen:
        raise ValueError(f"config {path}: _base_ cycle through {' -> '.join(seen)}")
    node = _read_yaml(path)
    base = node.pop("_base_", None) if "_base_" in node else None
    layers: list[Any] = []
    if base:
        base = str(base)
        rel = path.parent / base
        layers = _load_layers(
            str(rel) if base.endswith((".yaml", ".yml")) and rel.is_file() else base, seen + (str(path),)
        )
    return layers + [(str(path), node)]


def _read_yaml(path: Path) -> Any:
    """One yaml file as an OmegaConf mapping; syntax errors and non-mappings name the file and line."""
    import yaml
    from omegaconf import DictConfig, OmegaConf

    try:
        node = OmegaConf.load(path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or _short(exc)
        raise ValueError(f"config {path}: YAML syntax error{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ValueError(f"config {path} is not a YAML text file (not UTF-8)") from None
    if not isinstance(node, DictConfig):
        raise ValueError(
            f"config {path}: expected a mapping of config keys (e.g. `optim: {{base_lr: 1.0e-3}}`), "
            f"got a {type(node).__name__}"
        )
    if len(node) == 0:  # an empty file (or `{}`) silently meant the schema defaults, a ViT-S/14 on the toy set
        raise ValueError(
            f"config {path} is empty: give config keys (e.g. `_base_: tiny` and `optim: {{base_lr: 1.0e-3}}`), "
            f"or a preset name ({', '.join(list_presets())})"
        )
    return node


def load_config(
    preset: str | None = None,
    overrides: Sequence[str] = (),
    inherit: Optional[Mapping[str, Any]] = None,
    inherit_source: str = "inherited",
) -> FrancaTrainConfig:
    """Schema defaults <- preset (and its `_base_` chain) <- `inherit` <- `key=value` overrides, validated.

    `inherit` (a nested dict, e.g. the model section of a checkpoint's config) sits between the preset
    and the overrides. Raises KeyError naming an unknown key, ValueError naming a key with a bad value.
    """
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    cfg = OmegaConf.structured(FrancaTrainConfig)
    for source, node in _load_layers(preset or DEFAULT_PRESET):
        cfg = _merge(cfg, node, source)
    if inherit:
        cfg = _merge(cfg, OmegaConf.create(dict(inherit)), inherit_source)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"override {bad[0]!r} is not of the form key=value")
    for ov in overrides:
        try:
            dot = OmegaConf.from_dotlist([ov])
        except (OmegaConfBaseException, yaml.YAMLError) as exc:
            raise ValueError(f"override {ov!r} cannot be parsed: {exc}") from None
        cfg = _merge(cfg, dot, f"override {ov!r}")
    try:
        obj = OmegaConf.to_object(cfg)
    except ConfigKeyError as exc:  # pragma: no cover - merge catches these first
        raise KeyError(str(exc)) from None
    except OmegaConfBaseException as exc:
        raise ValueError(_short(exc)) from None
    assert isinstance(obj, FrancaTrainConfig)
    return obj


def _merge(cfg: Any, node: Any, source: str) -> Any:
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    try:
        return OmegaConf.merge(cfg, node)
    except (ConfigKeyError, ConfigAttributeError) as exc:
        key = getattr(exc, "full_key", None) or _short(exc)
        raise KeyError(f"{source}: unknown config key {key!r}") from None
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        raise ValueError(f"{source}: bad value for config key {key!r}: {_short(exc)}") from None


def _short(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0]


def to_dict(cfg: FrancaTrainConfig) -> dict[str, Any]:
    """The config as plain python containers (for checkpoints and the run's config.yaml)."""
    return dataclasses.asdict(cfg)


def from_dict(d: dict[str, Any]) -> FrancaTrainConfig:
    """Rebuild (and re-validate) a config saved by `to_dict`."""
    from omegaconf import OmegaConf

    cfg = _merge(OmegaConf.structured(FrancaTrainConfig), OmegaConf.create(d), "saved config")
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, FrancaTrainConfig)
    return obj


def dump_yaml(cfg: FrancaTrainConfig) -> str:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(OmegaConf.create(to_dict(cfg)))


# Keys that may differ between a run and its --resume without changing what is trained: where files
# go, how often to log or save, time limits, workers, devices, kernels, the final k-NN check.
RESUME_FREE_KEYS = (
    "train.output_dir",
    "train.log_period",
    "train.checkpoint_period",
    "train.max_minutes",
    "train.knn_eval",
    "train.knn_k",
    "train.device",
    "train.compile",
    "train.precision",
    "train.parallel",
    "train.init_from",
    "data.num_workers",
    "data.val",
    "data.knn_train",
    "data.augment_device",
    "optim.fused",
    "loss.implicit_patch_targets",
    "model.activation_checkpointing",
)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"base_lr": 1e-3}} -> {"optim.base_lr": 1e-3} (lists and plain dict values kept whole below
    the schema's own sections)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and not key.endswith(("augment_options", "toy_options")):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_changes(saved: Mapping[str, Any] | None, cfg: FrancaTrainConfig) -> list[tuple[str, Any, Any]]:
    """(key, saved value, requested value) for every key of the recipe that differs (RESUME_FREE_KEYS aside).

    `saved` is the plain-dict config stored in a checkpoint; keys this version added are compared with
    their defaults (an older checkpoint did run with them)."""
    if not isinstance(saved, Mapping):
        return [("config", "(none saved in the checkpoint)", "(this config)")]
    try:
        old = flatten(to_dict(from_dict(dict(saved))))
    except (KeyError, ValueError):  # a config this version cannot read: compare what there is
        old = flatten(saved)
    new = flatten(to_dict(cfg))
    missing = object()
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, missing), new.get(key, missing)
        if key in RESUME_FREE_KEYS or a == b:
            continue
        changes.append((key, "(absent)" if a is missing else a, "(absent)" if b is missing else b))
    return changes


def key_allowed(key: str, allowed: Sequence[str]) -> bool:
    """`key` is named by `allowed` itself or by a section prefix (`optim` allows every optim.* key)."""
    return any(key == a or key.startswith(a.rstrip(".") + ".") for a in allowed if a)
