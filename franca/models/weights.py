"""Read backbone weights in every supported layout, check them against a model, export safetensors.

Layouts (released Franca `franca/hub/backbones.py`, `hubconf.py`; README "Getting the weights"):
- official Franca release: `{"teacher": {"backbone.…", "dino_head.…", "ibot_head.…"}}`, blocks chunked as
  `blocks.{chunk}.{i}` with the global block index i; the heads beside the backbone are read by `read_weights`
  (continued pretraining, franca.train.init) and ignored by `read_backbone_state_dict`;
- the ViT-g release split into `*.tar.gz.part_aa/ab/ac` (joined as a stream, the .pth inside is read);
- DINOv2 hub files (flat keys);
- this project's training checkpoints (`{"teacher": …}`, `{"model": …}`, prefixes such as
  `teacher.backbone.`, `module.`, `_orig_mod.`);
- exported `.safetensors` (the RASA projection travels in the metadata, see `export_safetensors`);
- a Hugging Face transformers folder (`config.json` + weights) of `Dinov2Model`, `Dinov2WithRegistersModel` or
  `DINOv3ViTModel` (franca.models.hf).

Pickles are read with `torch.load(weights_only=True)` only; a file that would run code is refused.
"""

from __future__ import annotations

import base64
import glob
import io
import json
import logging
import math
import pickle
import re
import shutil
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from franca.models.dinov3 import describe_dinov3, dinov3_arch_from_state, is_dinov3_state
from franca.models.hf import is_hf_folder, read_hf_backbone
from franca.models.sizes import SIZES
from franca.utils.files import set_normal_mode

log = logging.getLogger(__name__)

_CONTAINER_KEYS = ("teacher", "model", "state_dict", "backbone")
_WRAPPER_PARTS = re.compile(r"(^|\.)(module|_orig_mod|_fsdp_wrapped_module|_checkpoint_wrapped_module)\.")
_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")
_PART = re.compile(r"\.part_[a-z]+$")
RASA_META_KEY = "franca.rasa_proj"
ARCH_META_KEY = "franca.arch"


# ---------------------------------------------------------------------------------------------- files
HEAD_NAMES = ("dino_head", "ibot_head")


@dataclass
class WeightsFile:
    """Everything a weights file holds that this project reads."""

    backbone: dict[str, Tensor]
    """flat DINOv2-named (or DINOv3-named) backbone state dict"""
    extra: dict[str, Any]
    """rasa_proj, arch (what our own files record)"""
    heads: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    """the heads stored beside the backbone (the released teacher's, our checkpoints' teacher's):
    {"dino_head": {key: tensor}, "ibot_head": …}, keys without the head's prefix; {} when there are none"""
    config: dict[str, Any] | None = None
    """the training config our checkpoints carry"""


def read_backbone_state_dict(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Flat DINOv2-named backbone state dict from any supported file, plus extras (rasa_proj, arch)."""
    w = read_weights(path)
    return w.backbone, w.extra


def read_weights(path: str | Path) -> WeightsFile:
    """The backbone of any supported file, and the heads and training config the file holds beside it."""
    path = Path(path)
    parts = _split_parts(path)
    if parts:
        return _weights_file(_load_from_tar(parts), path, {})
    if not path.exists():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.is_dir():
        if is_hf_folder(path):
            return WeightsFile(*read_hf_backbone(path))
        raise ValueError(
            f"weights path is a directory without a config.json: {path} (expected a weights file or a "
            f"transformers model folder)"
        )
    if path.suffix == ".safetensors":
        return WeightsFile(*_read_safetensors(path))
    if tarfile.is_tarfile(path):
        return _weights_file(_load_from_tar([path]), path, {})
    obj = _load_weights_only(path)
    return _weights_file(obj, path, _training_config_arch(obj))


def _is_training_checkpoint(obj: Any) -> bool:
    """This project's training checkpoint: besides backbone and heads, its student and teacher may hold the
    training objective's own modules (a distillation projection), which are not part of the backbone."""
    return isinstance(obj, Mapping) and all(k in obj for k in ("teacher", "student", "iteration", "config"))


def _weights_file(obj: Any, path: Path, extra: dict[str, Any]) -> WeightsFile:
    backbone, heads = _extract(obj, path, extra_modules=_is_training_checkpoint(obj))
    cfg = obj.get("config") if isinstance(obj, Mapping) else None
    return WeightsFile(backbone, extra, heads, dict(cfg) if isinstance(cfg, Mapping) else None)


def _training_config_arch(obj: Any) -> dict[str, Any]:
    """This project's training checkpoints carry their config: read the backbone shape from it, so
    `load_backbone("vitt4", weights=ckpt)` also works for widths and head counts that were overridden."""
    cfg = obj.get("config") if isinstance(obj, Mapping) else None
    model = cfg.get("model") if isinstance(cfg, Mapping) else None
    if not isinstance(model, Mapping):
        return {}
    arch = {k: model[k] for k in ("embed_dim", "num_heads") if model.get(k) is not None}
    name = model.get("arch")
    if isinstance(name, str) and not name.startswith("timm:"):
        if name in SIZES:  # training builds the named size: its interpolation rule holds, registers or not
            arch["name"] = name
            arch.setdefault("num_heads", SIZES[name]["num_heads"])
            arch["interpolate_offset"] = SIZES[name]["interpolate_offset"]
            arch["interpolate_antialias"] = SIZES[name]["interpolate_antialias"]
    return {"arch": arch} if arch else {}


def _split_parts(path: Path) -> list[Path]:
    """The ordered `.part_xx` files of a split archive, given one part or the joined name; else []."""
    if _PART.search(path.name):
        base = str(path)[: -len(_PART.search(path.name).group(0))]
    elif not path.exists():
        base = str(path)
    else:
        return []
    # only `.part_xx` itself: the cache keeps a `.part_xx.sha256` record beside each part
    return [Path(p) for p in sorted(glob.glob(glob.escape(base) + ".part_*")) if _PART.search(p)]


def _load_weights_only(path: Path | io.BytesIO, name: str | None = None) -> Any:
    name = name or str(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        head = _head(path)
        if not head.startswith((b"PK", b"\x80")):  # neither a zip archive nor a pickle: not a torch file at all
            raise ValueError(
                f"cannot read {name}: it is not a torch checkpoint (it starts with {head!r}, an HTML page or "
                "text?): download it again"
            ) from exc
        raise ValueError(
            f"refusing to load {name}: it is not a plain tensor file (weights_only=True "
            f"rejected it, it may run code). Details: {str(exc).splitlines()[0]}"
        ) from exc
    except Exception as exc:  # torch raises RuntimeError, EOFError, KeyError(101), … on a foreign file  # noqa: BLE001
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise ValueError(
            f"cannot read {name} as a torch checkpoint (truncated or another format?): {type(exc).__name__}: {detail}"
        ) from exc


def _head(path: Path | io.BytesIO, n: int = 16) -> bytes:
    if isinstance(path, io.BytesIO):
        return path.getvalue()[:n]
    with open(path, "rb") as f:
        return f.read(n)


class _ChainedReader(io.RawIOBase):
    """Read several files one after another as one stream (the split release parts)."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths = list(paths)
        self._fh: Any = None

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        while True:
            if self._fh is None:
                if not self._paths:
                    return 0
                self._fh = open(self._paths.pop(0), "rb")
            n = self._fh.readinto(buf)
            if n:
                return n
            self._fh.close()
            self._fh = None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        super().close()


MAX_UNPACK_RATIO = 8
"""A weights member may unpack to at most this many times its archive's size: float weights barely compress
(about 1.1x), so more is a damaged or hostile archive (a 1 MB archive wrote 1 GB to the temporary folder)."""


def _check_unpack_size(member: tarfile.TarInfo, parts: list[Path], tmp: str, label: str) -> None:
    """Refuse, before writing a byte, a member larger than MAX_UNPACK_RATIO × the archive or than the free
    space of the temporary folder (both named)."""
    packed = sum(p.stat().st_size for p in parts)
    if member.size > MAX_UNPACK_RATIO * max(packed, 1 << 20):
        raise ValueError(
            f"{member.name} in {label} would unpack to {member.size:,} bytes, {member.size / max(packed, 1):,.0f}× "
            f"the archive's {packed:,}: weights barely compress, so the archive is damaged or not a weights release; "
            f"not unpacked"
        )
    free = shutil.disk_usage(tmp).free
    if member.size > free:
        raise ValueError(
            f"{member.name} in {label} unpacks to {member.size:,} bytes, more than the {free:,} free in the "
            f"temporary folder {Path(tmp).parent} (set TMPDIR to a folder with room)"
        )


def _load_from_tar(parts: list[Path]) -> Any:
    """Stream a (possibly split) tar(.gz), copy the first checkpoint inside to a temp file, load it."""
    label = ", ".join(str(p) for p in parts)
    with (
        _ChainedReader(parts) as raw,
        tarfile.open(fileobj=io.BufferedReader(raw), mode="r|*") as tar,
        tempfile.TemporaryDirectory(prefix="franca-weights-") as tmp,
    ):
        for member in tar:
            if member.isfile() and member.name.endswith((".pth", ".pt", ".bin", ".safetensors")):
                _check_unpack_size(member, parts, tmp, label)
                dst = Path(tmp) / ("w.safetensors" if member.name.endswith(".safetensors") else "w.pth")
                src = tar.extractfile(member)
                with open(dst, "wb") as fh:
                    shutil.copyfileobj(src, fh, length=16 << 20)
                log.info("read %s from %s", member.name, label)
                if dst.suffix == ".safetensors":
                    return _read_safetensors(dst)[0]
                return _load_weights_only(dst, name=f"{member.name} in {label}")
    raise ValueError(f"no .pth/.pt/.safetensors checkpoint inside the archive {label}")


def _read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # SafetensorError (not an OSError/ValueError): truncated or not safetensors  # noqa: BLE001
        raise ValueError(
            f"cannot read {path} as safetensors (truncated or another format?): "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
        ) from exc
    extra: dict[str, Any] = {}
    if RASA_META_KEY in meta:
        extra["rasa_proj"] = decode_tensor(meta[RASA_META_KEY])
    if ARCH_META_KEY in meta:
        extra["arch"] = json.loads(meta[ARCH_META_KEY])
    return _extract_backbone(state, path), extra


# ---------------------------------------------------------------------------------------------- layouts
def _extract_backbone(obj: Any, path: Path | str, extra_modules: bool = False) -> dict[str, Tensor]:
    """Find the backbone inside a checkpoint object and return it with flat DINOv2 keys."""
    return _extract(obj, path, extra_modules)[0]


def _extract(
    obj: Any, path: Path | str, extra_modules: bool = False
) -> tuple[dict[str, Tensor], dict[str, dict[str, Tensor]]]:
    """(backbone with flat DINOv2 keys, the heads stored beside it) of a checkpoint object. `extra_modules`: other
    modules next to the backbone are expected (this project's training checkpoints) and left out."""
    while isinstance(obj, Mapping) and not _has_tensors(obj):
        key = next((k for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if key is None:
            raise ValueError(f"{path}: no backbone state dict found (top-level keys: {sorted(obj)[:10]})")
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
    state = {_unwrap_key(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    prefixes = sorted({k[: -len("cls_token")] for k in state if k.endswith("cls_token")})
    if not prefixes:
        raise ValueError(f"{path}: no 'cls_token' key, this is not a ViT backbone state dict")
    prefix = next((p for p in prefixes if p.startswith("teacher")), prefixes[0]) if len(prefixes) > 1 else prefixes[0]
    parent = prefix[: -len("backbone.")] if prefix.endswith("backbone.") else None
    heads: dict[str, dict[str, Tensor]] = {}
    if parent is not None:
        for name in HEAD_NAMES:
            sub = {k[len(parent) + len(name) + 1 :]: v for k, v in state.items() if k.startswith(f"{parent}{name}.")}
            if sub:
                heads[name] = sub
    if prefix:
        if parent is not None and not extra_modules:
            stray = [
                k
                for k in state
                if k.startswith(parent) and not k.startswith(prefix) and "head" not in k[len(parent) :].split(".")[0]
            ]
            if stray:
                raise ValueError(
                    f"{path}: unexpected keys next to the backbone (not dino_head/ibot_head): {_short(stray)}"
                )
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        m = _CHUNKED.match(k)
        out[f"blocks.{m.group(2)}.{m.group(3)}" if m else k] = v
    if prefix.endswith("backbone.vit.") and "mask_token" not in out and "cls_token" in out:
        # a `timm:NAME` backbone of this project's training checkpoints (a distilled student): timm's ViT keys are
        # DINOv2's but for the mask token, which only replaces masked tokens in training; zeros, its initial value
        out["mask_token"] = torch.zeros(1, out["cls_token"].shape[-1], dtype=out["cls_token"].dtype)
    return out, heads


def _unwrap_key(k: str) -> str:
    """Drop DDP/FSDP/compile wrapper names (`module.`, `_orig_mod.`, …) wherever they appear."""
    while True:
        new = _WRAPPER_PARTS.sub(r"\1", k)
        if new == k:
            return k
        k = new


def _has_tensors(d: Mapping) -> bool:
    return any(isinstance(v, Tensor) for v in d.values())


def infer_arch(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """What a state dict says about the architecture: depth, position grid side, registers, FFN type/width,
    LayerScale. The width is not inferred: it fixes the head count, so a wrong name must fail loudly."""
    arch: dict[str, Any] = {}
    if "pos_embed" in state:
        n = state["pos_embed"].shape[1] - 1
        M = math.isqrt(n)
        if M * M != n:
            raise ValueError(f"pos_embed has {n} patch positions, not a square grid")
        arch["pos_grid"] = M
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    if blocks:
        arch["depth"] = max(blocks) + 1
    arch["num_register_tokens"] = int(state["register_tokens"].shape[1]) if "register_tokens" in state else 0
    if "blocks.0.mlp.w12.weight" in state:
        arch["ffn"] = "swiglu"
        arch["ffn_hidden_dim"] = int(state["blocks.0.mlp.w12.weight"].shape[0] // 2)
    elif "blocks.0.mlp.fc1.weight" in state:
        arch["ffn"] = "mlp"
        arch["ffn_hidden_dim"] = int(state["blocks.0.mlp.fc1.weight"].shape[0])
    if "blocks.0.norm1.weight" in state and "blocks.0.ls1.gamma" not in state:
        arch["layerscale"] = None
    return arch


def file_shape(state: Mapping[str, Tensor]) -> dict[str, Any]:
    """Width, patch size, depth, registers, FFN and grid of a flat state dict (for messages and checks)."""
    shape: dict[str, Any] = {"embed_dim": int(state["cls_token"].shape[-1]) if "cls_token" in state else None}
    w = state.get("patch_embed.proj.weight")
    shape["patch_size"] = int(w.shape[-1]) if w is not None else None
    arch = infer_arch(state)
    shape.update(
        depth=arch.get("depth"),
        num_register_tokens=arch.get("num_register_tokens", 0),
        ffn=arch.get("ffn"),
        pos_grid=arch.get("pos_grid"),
    )
    return shape


def describe_shape(shape: Mapping[str, Any]) -> str:
    """`embed_dim=384, depth=12, patch 14, 4 registers, mlp FFN, grid 37` (the fields that are known)."""
    parts = [f"embed_dim={shape.get('embed_dim')}", f"depth={shape.get('depth')}", f"patch {shape.get('patch_size')}"]
    if shape.get("num_heads"):
        parts.append(f"{shape['num_heads']} heads")
    parts.append(f"{shape.get('num_register_tokens') or 0} registers")
    if shape.get("ffn"):
        parts.append(f"{shape['ffn']} FFN")
    if shape.get("pos_grid"):
        parts.append(f"position grid {shape['pos_grid']}")
    return ", ".join(parts)


def _short(keys: list[str], n: int = 8) -> str:
    keys = sorted(keys)
    more = f" … (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _describe(state: Mapping[str, Tensor], what: str = "file") -> str:
    if is_dinov3_state(state):
        try:
            return f"{what}: {describe_dinov3(dinov3_arch_from_state(state))}"
        except ValueError:  # too broken to describe: the key list that follows says what is wrong
            return f"{what}: an incomplete DINOv3 state dict"
    return f"{what}: {describe_shape(file_shape(state))}"


def load_weights_into(model: nn.Module, state: Mapping[str, Tensor], source: str = "weights") -> None:
    """Strictly load `state` into `model`; missing/unexpected keys and shape mismatches are named."""
    own = model.state_dict()
    optional = {"rasa_proj"}  # created on load when present (see DinoVisionTransformer)
    missing = [k for k in own if k not in state and k not in optional]
    unexpected = [k for k in state if k not in own and k not in optional]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_short(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {_short(shapes)}")
    if problems:
        raise ValueError(
            f"{source} does not fit the model ({_describe(state)}; {_describe(own, 'model')}): " + "; ".join(problems)
        )
    warn_non_finite(state, source)
    model.load_state_dict(dict(state), strict=True)


def warn_non_finite(state: Mapping[str, Tensor], source: str = "weights") -> list[str]:
    """Warn (naming them) about tensors holding NaN or inf: they load, but every feature they touch is NaN
    (a diverged run's checkpoint, a damaged file). Returns the names."""
    bad = [k for k, v in state.items() if torch.is_floating_point(v) and not bool(torch.isfinite(v).all())]
    if bad:
        log.warning(
            "%s holds NaN or inf in %d tensor(s): %s; features computed with these weights will be NaN",
            source,
            len(bad),
            _short(bad),
        )
    return bad


# ---------------------------------------------------------------------------------------------- export
def encode_tensor(t: Tensor) -> str:
    """A float32 tensor as JSON text (shape + base64 bytes) for safetensors metadata."""
    a = t.detach().to("cpu", torch.float32).contiguous().numpy()
    return json.dumps({"shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode("ascii")})


def decode_tensor(text: str) -> Tensor:
    d = json.loads(text)
    a = np.frombuffer(base64.b64decode(d["data"]), dtype=np.float32).reshape(d["shape"])
    return torch.from_numpy(a.copy())


def export_safetensors(model: nn.Module, path: str | Path) -> Path:
    """Save the backbone as safetensors with DINOv2 flat keys.

    timm's `checkpoint_filter_fn` recognises the DINOv2 layout by `mask_token` and renames w12/w3, so
    the file loads into `vit_*_patch14_dinov2` (SwiGLU models: pass `mlp_layer=SwiGLUPacked`; see
    `timm_create_kwargs`). timm loads strictly, so the RASA projection is not a tensor entry: it is
    stored in the metadata (`franca.rasa_proj`) where timm ignores it and `load_backbone` restores it.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rasa = getattr(model, "rasa_proj", None)
    inner = getattr(model, "vit", model)  # a timm:NAME wrapper exports the timm model's own keys
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in inner.state_dict().items() if k != "rasa_proj"}
    meta = {"format": "pt"}
    if rasa is not None:
        meta[RASA_META_KEY] = encode_tensor(rasa)
    if getattr(model, "family", None) == "dinov3":  # every constructor argument (franca.models.dinov3)
        arch = dict(model.arch)
    else:
        arch = _dinov2_arch(model)
    if getattr(model, "size_name", None):
        arch["name"] = model.size_name
    meta[ARCH_META_KEY] = json.dumps(arch)
    save_file(state, str(path), metadata=meta)
    set_normal_mode(path)  # safetensors writes 0600; an exported backbone is meant to be shared
    log.info("exported %d tensors to %s", len(state), path)
    return path


def _dinov2_arch(model: nn.Module) -> dict[str, Any]:
    """What a Franca/DINOv2 export records about its model (read back by `load_backbone`)."""
    return {
        k: getattr(model, k, None)
        for k in (
            "embed_dim",
            "n_blocks",
            "num_heads",
            "patch_size",
            "img_size",
            "ffn",
            "num_register_tokens",
            "interpolate_offset",
            "interpolate_antialias",
        )
    }


def timm_create_kwargs(model: nn.Module) -> dict[str, Any]:
    """Keyword arguments for `timm.create_model(<vit_*_patch14_dinov2>, ...)` that match an exported model."""
    kw: dict[str, Any] = {
        "img_size": int(model.pos_grid * model.patch_size),
        "patch_size": int(model.patch_size),
        "embed_dim": int(model.embed_dim),
        "depth": int(model.n_blocks),
        "num_heads": int(model.num_heads),
        "num_classes": 0,
    }
    if model.num_register_tokens:
        kw.update(reg_tokens=int(model.num_register_tokens), no_embed_class=True)
    blk = model.blocks[0]
    if model.ffn == "swiglu":
        from timm.layers import SwiGLUPacked

        kw.update(
            mlp_layer=SwiGLUPacked, act_layer=nn.SiLU, mlp_ratio=(blk.mlp.w12.out_features + 0.5) / model.embed_dim
        )
    else:
        kw["mlp_ratio"] = (blk.mlp.fc1.out_features + 0.5) / model.embed_dim  # timm takes int(D·ratio)
    return kw


def dinov3_timm_create_kwargs(model: nn.Module) -> tuple[str, dict[str, Any]]:
    """(timm model name, keyword arguments) that build timm's DINOv3 ViT (`timm.models.eva`) for an exported
    DINOv3 model; timm's `checkpoint_filter_fn` reads the official key layout. A ValueError names what timm
    cannot express (an untied `cls_norm`, no storage tokens, a k bias that is not masked)."""
    a = model.arch
    problems = []
    if a["untie_cls_and_patch_norms"]:
        problems.append("an untied cls_norm")
    if not a["n_storage_tokens"]:
        problems.append("no storage tokens (timm recognises the DINOv3 layout by them)")
    if a["qkv_bias"] and not a["mask_k_bias"]:
        problems.append("a k bias without bias_mask (timm drops the k bias)")
    if a["rope_normalize_coords"] != "separate" or a["rope_base"] is None:
        problems.append("RoPE coordinates or periods other than the official rule")
    if problems:
        raise ValueError(f"timm's DINOv3 model cannot express this file's {', '.join(problems)}")
    kw: dict[str, Any] = {
        "img_size": int(a["img_size"]),
        "patch_size": int(a["patch_size"]),
        "embed_dim": int(a["embed_dim"]),
        "depth": int(a["depth"]),
        "num_heads": int(a["num_heads"]),
        "num_reg_tokens": int(a["n_storage_tokens"]),
        "num_classes": 0,
        "global_pool": "token",
    }
    if a["ffn"] == "swiglu":  # timm: int(D·ratio) then aligned to 8, the file's width itself
        kw.update(mlp_ratio=(a["ffn_hidden_dim"] + 0.5) / a["embed_dim"], swiglu_mlp=True, swiglu_align_to=8)
    else:
        kw["mlp_ratio"] = (a["ffn_hidden_dim"] + 0.5) / a["embed_dim"]
    if not a["layerscale"]:
        kw["init_values"] = None
    name = "vit_small_patch16_dinov3" + ("_qkvb" if a["qkv_bias"] else "")
    return name, kw


def dinov3_timm_recipe(model: nn.Module, path: str | Path) -> str:
    """Python code that loads an exported DINOv3 file in timm alone (no franca) and gives the same tokens at
    any size: timm's DINOv3 ViT, plus the file's own RoPE periods (timm recomputes them in float32)."""
    try:
        name, kw = dinov3_timm_create_kwargs(model)
    except ValueError as exc:
        return f"# no timm recipe: {exc}; use franca, or the ONNX export"
    args = ", ".join(f"{k}={v!r}" for k, v in kw.items())
    k = 1 + int(model.n_storage_tokens)
    return "\n".join(
        [
            "import timm",
            "from safetensors.torch import load_file",
            f"model = timm.create_model({name!r}, pretrained=True,",
            f"                          pretrained_cfg_overlay=dict(file={str(path)!r}),",
            f"                          {args}).eval()",
            "# the file's RoPE periods: timm computes its own in float32, released files hold bfloat16-rounded ones",
            f'model.rope.periods.copy_(load_file({str(path)!r})["rope_embed.periods"])',
            f"# images: (B, 3, H, W), H and W multiples of {model.patch_size}, normalised with mean "
            f"{tuple(model.mean)} and std {tuple(model.std)}",
            "# tokens = model.forward_features(images)",
            f"# CLS = tokens[:, 0]; storage tokens = tokens[:, 1:{k}]; patch tokens = tokens[:, {k}:]",
        ]
    )


def timm_recipe(model: nn.Module, path: str | Path) -> str:
    """Python code that loads the exported file in timm alone (no franca) and gives the same tokens.

    It holds at the file's own grid (`img_size`); see the README for timm's own resampling at other sizes.
    DINOv3 files: `dinov3_timm_recipe` (any size).
    """
    if getattr(model, "family", None) == "dinov3":
        return dinov3_timm_recipe(model, path)
    kw = timm_create_kwargs(model)
    swiglu = kw.pop("mlp_layer", None) is not None
    kw.pop("act_layer", None)
    args = ", ".join(f"{k}={v!r}" for k, v in kw.items())
    extra = ", mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU" if swiglu else ""
    r = int(model.num_register_tokens)
    lines = ["import timm", "import torch"]
    if swiglu:
        lines.append("from timm.layers import SwiGLUPacked  # Franca's SwiGLU (w12 = [x1 | x2]); not GluMlp")
    side, p = kw["img_size"], kw["patch_size"]
    layout = (
        f"CLS = tokens[:, 0]; registers = tokens[:, 1:{1 + r}]; patch tokens = tokens[:, {1 + r}:]"
        if r
        else "CLS = tokens[:, 0]; patch tokens = tokens[:, 1:] (no registers)"
    )
    lines += [
        'model = timm.create_model("vit_small_patch14_dinov2", pretrained=True,',
        f"                          pretrained_cfg_overlay=dict(file={str(path)!r}),",
        f"                          {args}{extra},",
        "                          dynamic_img_size=True).eval()",
        f"# images: (B, 3, H, W), H and W multiples of {p}, normalised with the ImageNet mean/std. At {side}x{side}",
        "# (the file's grid) the tokens equal franca's; at other sizes timm resamples the positions its own way",
        "# (equal for files with registers, close otherwise: see the README).",
        "# tokens = model.forward_features(images)",
        f"# {layout}",
    ]
    return "\n".join(lines)
