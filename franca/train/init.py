"""Start a run from a released model or a weights file: `train.init_from` (`franca pretrain --init NAME|FILE`).

The file defines the model. `init_config` reads what the file says about its backbone (width, depth, heads,
patch, FFN, registers, position grid: the rules `franca.load_backbone` applies to any file) and about its
heads (`franca.models.heads.head_layout`), and puts them in the config's `model.*`, `dino.*` and `ibot.head.*`
keys over the preset's; an explicit `key=value` that contradicts the file is an error naming both.

`load_init` copies the weights into the student before the teacher is copied from it, so both start equal:
the file's (teacher) backbone, and its heads where it has them and `train.init_heads` allows: the official
Franca releases hold the teacher's Matryoshka heads (`dino_head`, `ibot_head`, per-level projections, their
MLPs and weight-normalised prototypes, loaded exactly), this project's checkpoints the teacher's heads. Files
without heads (DINOv2, DINOv3, exports, Hugging Face folders) start with fresh heads, and the backbone waits
for them: it is not updated for `train.freeze_backbone_iterations` (by default the lr warm-up), then follows
the usual schedule (the head warm-up; the start banner states it). A position table of another grid than the
config's `model.img_size` is resized once (bicubic, antialias), as the high-resolution stages need.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from franca.models.api import file_arch
from franca.models.backbone import resize_pos_embed
from franca.models.dinov3 import DINOV3_SIZES, Dinov3VisionTransformer, ffn_hidden_width
from franca.models.heads import HeadLayout, head_layout, head_state_keys
from franca.models.hub import fetch_release
from franca.models.releases import get_release, is_release
from franca.models.sizes import SIZES, size_config
from franca.models.weights import HEAD_NAMES, WeightsFile, load_weights_into, read_weights
from franca.train.config import FrancaTrainConfig, flatten, load_config, to_dict
from franca.utils.errors import UserError

log = logging.getLogger(__name__)

HEAD_SECTIONS = {"dino_head": "dino", "ibot_head": "ibot.head"}
"""The config section of each head."""
_DINOV3_CONFIG_ARGS = ("embed_dim", "depth", "num_heads", "patch_size", "ffn", "ffn_hidden_dim", "layerscale")
_DINOV3_FREE_ARGS = ("img_size", "drop_path_rate", "mean", "std", "ffn_ratio", "n_storage_tokens")


@dataclass
class InitSource:
    """A weights file read for `train.init_from`: its tensors and the config keys it fixes."""

    spec: str
    """what train.init_from says (a released name or a path)"""
    path: Path
    label: str
    """the release name or the file name"""
    weights: WeightsFile
    family: str
    """"dinov2" (Franca, DINOv2, our checkpoints and exports) or "dinov3\""""
    model_keys: dict[str, Any]
    """flat config keys (model.*) the backbone fixes"""
    head_layouts: dict[str, HeadLayout] = field(default_factory=dict)
    """the heads this project can load ({} when none)"""
    heads_note: str = ""
    """why the file's heads cannot start the run ("" when they can)"""

    @property
    def head_keys(self) -> dict[str, Any]:
        """Flat config keys (dino.*, ibot.head.*) of the file's heads."""
        out: dict[str, Any] = {}
        saved = flatten(self.weights.config) if self.weights.config else {}
        for name, lay in self.head_layouts.items():
            sec = HEAD_SECTIONS[name]
            keys = {
                "n_prototypes": lay.n_prototypes,
                "nesting_levels": lay.nesting_levels,
                "mode": lay.mode,
                "bottleneck_dim": lay.bottleneck_dim,
                "nlayers": lay.nlayers,
                "use_bn": lay.use_bn,
                # not in the tensors: our checkpoints record it; the released MRL head has none
                "l2_norm": bool(saved.get(f"{sec}.l2_norm", False)),
            }
            if lay.hidden_dim is not None:
                keys["hidden_dim"] = lay.hidden_dim
            out.update({f"{sec}.{k}": v for k, v in keys.items()})
        return out


_MEMO: dict[tuple, InitSource] = {}


def resolve_spec(spec: str) -> tuple[Path, str]:
    """(local file, label) of a released name (fetched into the cache once; a gated one only looked for) or a
    path."""

    if is_release(spec):
        rel = get_release(spec)
        return Path(fetch_release(rel)), rel.name
    path = Path(spec).expanduser()
    if not path.exists() and not list(path.parent.glob(path.name + ".part_*")):
        raise FileNotFoundError(
            f"train.init_from={spec}: neither a released name (franca pretrain --init takes one of "
            f"franca.releases()) nor an existing file or folder"
        )
    return path, path.name


def read_init(spec: str, num_heads: int | None = None) -> InitSource:
    """The file `spec` names, read once per process (kept until `forget_init`). `num_heads`: the head count
    when the file does not record one (an explicit `model.num_heads=`); a file that records one keeps its own."""
    path, label = resolve_spec(spec)
    st = path.stat() if path.exists() else None
    key = (str(path.resolve()), st.st_mtime_ns if st else None, st.st_size if st else None)
    if key in _MEMO:
        return _MEMO[key]
    w = read_weights(path)
    saved = dict(w.extra.get("arch") or {})
    if num_heads and not saved.get("num_heads"):
        saved["num_heads"] = int(num_heads)
    try:
        base, kwargs, family = file_arch(w.backbone, saved, path)
    except ValueError as exc:
        if "head count" not in str(exc):
            raise
        raise UserError(
            f"{path}: the file records no head count and its width does not tell it ({exc.args[0].split(';')[0]}): "
            "give model.num_heads=N"
        ) from exc
    src = InitSource(spec, path, label, w, family, _model_keys(base, kwargs, family, label))
    width = src.model_keys["model.embed_dim"]
    if not w.heads:
        src.heads_note = "the file holds a backbone only"
    elif any(h not in w.heads for h in HEAD_NAMES):
        src.heads_note = f"the file holds {' and '.join(sorted(w.heads))} only (no {' or '.join(HEAD_NAMES)} pair)"
    else:
        try:
            src.head_layouts = {h: head_layout(w.heads[h], width) for h in HEAD_NAMES}
        except ValueError as exc:
            src.heads_note = f"its heads are not a layout this project trains ({exc})"
    _MEMO.clear()
    _MEMO[key] = src
    return src


def forget_init() -> None:
    """Drop the file `read_init` keeps (its tensors are in the models once loaded)."""
    _MEMO.clear()


def _model_keys(base: str | None, kwargs: dict[str, Any], family: str, label: str) -> dict[str, Any]:
    """The model.* config keys of the backbone a file defines (the config then builds the same model)."""
    if family == "dinov3":
        if base not in DINOV3_SIZES:
            raise UserError(
                f"{label} is a DINOv3 backbone of no named layout (width {kwargs.get('embed_dim')}, depth "
                f"{kwargs.get('depth')}, {kwargs.get('ffn')} FFN): training builds a named layout "
                f"({', '.join(sorted(DINOV3_SIZES))})"
            )
        layout = DINOV3_SIZES[base]
        defaults = _dinov3_defaults()
        other = [
            k
            for k in defaults
            if k not in _DINOV3_CONFIG_ARGS + _DINOV3_FREE_ARGS
            and kwargs.get(k, defaults[k]) != layout.get(k, defaults[k])
        ]
        if other:
            raise UserError(
                f"{label} differs from the DINOv3 layout {base} in {', '.join(other)}, which the training config "
                f"cannot express: continued pretraining builds {base} as it is"
            )
        full = {**layout, **kwargs}
        keys = {
            "model.arch": base,
            "model.num_register_tokens": int(full["n_storage_tokens"]),
            "model.img_size": None,
            "model.interpolate_offset": None,
            "model.interpolate_antialias": None,
        }
    else:
        full = size_config(base, **kwargs)
        keys = {
            "model.arch": base,
            "model.num_register_tokens": int(full["num_register_tokens"]),
            "model.img_size": int(full["img_size"]),
            "model.interpolate_offset": float(full["interpolate_offset"]),
            "model.interpolate_antialias": bool(full["interpolate_antialias"]),
        }
    keys.update(
        {
            "model.embed_dim": int(full["embed_dim"]),
            "model.depth": int(full["depth"]),
            "model.num_heads": int(full["num_heads"]),
            "model.patch_size": int(full["patch_size"]),
            "model.ffn": full["ffn"],
            "model.ffn_hidden_dim": int(full["ffn_hidden_dim"]) if full.get("ffn_hidden_dim") else None,
            "model.layerscale_init": full["layerscale"],
        }
    )
    if family == "dinov3" and keys["model.ffn_hidden_dim"] is None:
        keys["model.ffn_hidden_dim"] = ffn_hidden_width(full["embed_dim"], full["ffn"], full["ffn_ratio"])
    return keys


def _dinov3_defaults() -> dict[str, Any]:
    import inspect

    sig = inspect.signature(Dinov3VisionTransformer.__init__)
    return {k: p.default for k, p in sig.parameters.items() if k != "self"}


def init_config(
    preset: str | None, overrides: Sequence[str] = (), *, source_word: str = "init file"
) -> FrancaTrainConfig:
    """The config of a run started from `train.init_from`: preset <- the file's model (and heads) <- overrides.

    The file's `model.*` keys (and, when its heads start the run, its `dino.*` / `ibot.head.*` keys) replace
    the preset's; an explicit override of one of them that differs is a UserError naming the key, both values
    and the file. `train.init_heads` comes back resolved (true when the file has heads this project can load,
    unless set). Without `train.init_from` this is `load_config`."""
    cfg = load_config(preset, overrides)
    if not cfg.train.init_from:
        return cfg
    explicit = {o.split("=", 1)[0].strip() for o in overrides if "=" in o}
    src = read_init(cfg.train.init_from, cfg.model.num_heads if "model.num_heads" in explicit else None)
    requested = flatten(to_dict(cfg))
    heads = cfg.train.init_heads
    if heads is None:
        heads = bool(src.head_layouts)
        if not heads:
            log.info("%s: the heads start fresh: %s", src.label, src.heads_note)
    elif heads and not src.head_layouts:
        raise UserError(f"train.init_heads=true, but {src.label} has no heads to start from: {src.heads_note}")
    fixed = dict(src.model_keys)
    if heads:
        fixed.update(src.head_keys)
    for key, value in fixed.items():
        if key in explicit and requested.get(key) != value:
            raise UserError(
                f"{key}={requested.get(key)!r} contradicts the {source_word} {src.label}, whose "
                f"{'heads have' if key.startswith(('dino.', 'ibot.')) else 'model has'} {key}={value!r}: the file "
                "defines the model; drop the override"
            )
    inherit: dict[str, Any] = {}
    for key, value in {**fixed, "train.init_heads": heads}.items():
        if key not in explicit:
            _put(inherit, key, value)
    return load_config(preset, overrides, inherit=inherit, inherit_source=f"{source_word} {src.label}")


def check_fits(cfg: FrancaTrainConfig, src: InitSource) -> None:
    """The config's model (and head) keys are the file's (`init_config` makes them so); else a UserError."""
    have = flatten(to_dict(cfg))
    want = {k: v for k, v in src.model_keys.items() if k not in ("model.arch", "model.img_size")}
    # a key left null means the named size's value: compare what the config builds (the position grid may
    # differ: it is resized, as the high-resolution stages want)
    named = DINOV3_SIZES.get(cfg.model.arch) or size_config(cfg.model.arch) if cfg.model.arch in _all_sizes() else {}
    for key in list(want):
        field_name = key.split(".", 1)[1]
        if field_name == "layerscale_init":  # null is no LayerScale; a value is overwritten by the file's gammas
            have[key], want[key] = (("LayerScale" if v is not None else None) for v in (have.get(key), want[key]))
        elif have.get(key) is None:
            default = named.get(field_name)
            if default is None:
                want.pop(key)  # nothing the config fixes: the weights' shapes are checked when they load
            else:
                have[key] = default
    if (cfg.model.arch in DINOV3_SIZES) != (src.family == "dinov3"):
        want["model.arch"] = src.model_keys["model.arch"]
    if cfg.train.init_heads:
        if not src.head_layouts:
            raise UserError(f"train.init_heads=true, but {src.label} has no heads to start from: {src.heads_note}")
        want.update(src.head_keys)
    bad = [f"{k}={have.get(k)!r} (the file: {v!r})" for k, v in want.items() if have.get(k) != v]
    if bad:
        raise UserError(
            f"{src.path} and the config do not fit: {'; '.join(bad[:4])}. The file defines the model: leave these "
            "keys out of the config (in Python, franca.train.init.init_config builds the config from the file)"
        )


def load_init(student: Mapping[str, nn.Module], cfg: FrancaTrainConfig) -> InitSource:
    """Copy the file's backbone (and heads, with `train.init_heads`) into the student's modules."""
    src = read_init(cfg.train.init_from, cfg.model.num_heads)
    check_fits(cfg, src)
    backbone = student["backbone"]
    state = dict(src.weights.backbone)
    if state.pop("rasa_proj", None) is not None:
        log.info("%s: its RASA projection is not trained on; left out", src.label)
    pos = state.get("pos_embed")
    own = getattr(backbone, "pos_embed", None)
    if pos is not None and own is not None and pos.shape != own.shape:
        state["pos_embed"] = resize_pos_embed(pos, backbone.pos_grid)
        log.info("resized pos_embed %s -> %s", tuple(pos.shape), tuple(state["pos_embed"].shape))
    load_weights_into(backbone, state, source=f"{src.label} (backbone)")
    if cfg.train.init_heads:
        for name in HEAD_NAMES:
            sd = head_state_keys(src.weights.heads[name])
            own_keys = set(student[name].state_dict())
            if set(sd) != own_keys:
                raise UserError(
                    f"{src.label}: its {name} keys do not fit the head built from them: missing "
                    f"{sorted(own_keys - set(sd))[:4]}, unexpected {sorted(set(sd) - own_keys)[:4]}"
                )
            student[name].load_state_dict(sd, strict=True)
    return src


def describe_init(cfg: FrancaTrainConfig, freeze_backbone: int, total: int) -> str | None:
    """The start banner's line on the initialisation (None without train.init_from)."""
    if not cfg.train.init_from:
        return None
    if cfg.train.init_heads:
        what = f"init: {cfg.train.init_from}: backbone and heads (dino_head, ibot_head) of the file"
    else:
        what = f"init: {cfg.train.init_from}: backbone of the file; heads start fresh (train.init_heads=false)"
    if freeze_backbone > 0:
        what += (
            f"; head warm-up: backbone frozen for the first {freeze_backbone} of {total} iterations "
            "(train.freeze_backbone_iterations), then the usual schedule"
        )
    return what


def _put(d: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[leaf] = value


def _all_sizes() -> set[str]:

    return set(SIZES) | set(DINOV3_SIZES)
