"""Public entry points: `build_backbone`, `load_backbone`, `export_backbone`, `weights_label`.

- `build_backbone(size)`: a randomly initialised backbone, the only way to get random weights.
- `load_backbone("franca_vitb14_in21k")`: a released model by name (franca.models.releases), downloaded
  once into the cache (franca.models.hub), offline afterwards.
- `load_backbone(weights=FILE)`: any supported file (franca.models.weights). The file defines the
  model: width, patch size, depth, registers, FFN type and position grid are read from it, and the
  head count and interpolation rule from the file's own record when it has one (our exports and
  checkpoints), else from the DINOv2 conventions (64-dimensional heads; files with registers use the
  DINOv2 `*_reg` interpolation: antialiased bicubic, offset 0). A size name is optional; one that
  contradicts the file is an error naming both.
- `load_backbone("vitb14")` with no weights raises: nothing ever falls back to random weights silently.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from franca.models.backbone import DinoVisionTransformer
from franca.models.dinov3 import (
    DINOV3_SIZES,
    SAT_MEAN,
    SAT_STD,
    Dinov3VisionTransformer,
    describe_dinov3,
    dinov3_arch_from_state,
    dinov3_size_config,
    dinov3_sizes_like,
    is_dinov3_state,
)
from franca.models.gated import find_gated_file
from franca.models.hf import export_hf_folder
from franca.models.hub import fetch_rasa, fetch_release
from franca.models.releases import get_release, is_release
from franca.models.sizes import SIZES, size_config
from franca.models.timm_wrap import build_timm_backbone
from franca.models.weights import (
    describe_shape,
    export_safetensors,
    file_shape,
    infer_arch,
    load_weights_into,
    read_backbone_state_dict,
)

log = logging.getLogger(__name__)

TIMM_PREFIX = "timm:"
RANDOM_LABEL = "random init"
HEAD_DIM = 64  # every released Franca/DINOv2 size (and the tiny sizes) uses 64-dimensional heads


def build_backbone(name: str, **overrides: Any) -> nn.Module:
    """A randomly initialised backbone of the named size (`vitt8`, `vits14`, …, a DINOv3 layout such as
    `dinov3_vits16`, or `timm:NAME`)."""
    if name.startswith(TIMM_PREFIX):
        model = build_timm_backbone(name[len(TIMM_PREFIX) :], **overrides)
    elif name in DINOV3_SIZES:
        model = _build_dinov3(name, overrides)
    else:
        model = DinoVisionTransformer(**size_config(name, **overrides))
        model.size_name = name  # recorded in exports: a file says which size it is a variant of
    model.weights_label = RANDOM_LABEL
    return model


def is_layout_name(name: str | None) -> bool:
    """A name `build_backbone` builds (a named size or DINOv3 layout, or timm:NAME)."""
    return bool(name) and (name in SIZES or name in DINOV3_SIZES or str(name).startswith(TIMM_PREFIX))


def _build_dinov3(name: str, overrides: dict[str, Any]) -> Dinov3VisionTransformer:
    """A DINOv3 layout with `overrides` (constructor arguments of Dinov3VisionTransformer only)."""
    allowed = set(inspect.signature(Dinov3VisionTransformer.__init__).parameters) - {"self"}
    bad = sorted(set(overrides) - allowed)
    if bad:
        raise ValueError(
            f"{name} is a DINOv3 layout; it takes no {', '.join(bad)} (it takes: {', '.join(sorted(allowed))})"
        )
    model = Dinov3VisionTransformer(**dinov3_size_config(name, **overrides))
    model.size_name = name
    return model


def no_weights_message(name: str | None) -> str:
    """How to get weights, in one short line, for a call that named none."""
    what = f"{name!r} is not a released model and no weights file was given" if name else "no weights given"
    return (
        f"{what}: pass weights=FILE or a released name (franca.releases() lists them); "
        f"random weights only on request: franca.build_backbone({name or 'vits14'!r})"
    )


def load_backbone(
    name: str | None = None,
    weights: str | Path | None = None,
    rasa: str | Path | bool | None = None,
    *,
    progress: bool = True,
    **overrides: Any,
) -> nn.Module:
    """A backbone with weights, in eval mode: a released name, or a weights file (size name optional).

    `rasa=FILE` attaches a RASA projection (official head file or ours); with a released name,
    `rasa=True` fetches the head released with it. Overrides (e.g. `num_heads`) are for files that do
    not record them.
    """
    label = None

    release = None
    if name is not None and is_release(name):
        rel = get_release(name)
        if weights is not None:
            # a file of that release (e.g. the user's own copy): its architecture must be the release's
            # (a DINOv3 name is also a layout, checked against the file as a layout name is)
            release = None if rel.gated else rel
        else:  # a gated file (DINOv3) is only looked for where it belongs, never downloaded
            weights = find_gated_file(rel) if rel.gated else fetch_release(rel, progress=progress)
            label = rel.name
            if rasa is True:
                rasa = fetch_rasa(rel, progress=progress)
        name = rel.size
    if rasa is True:
        raise ValueError("rasa=True fetches the RASA head of a released model; with a file, pass rasa=FILE")
    if weights is None:
        raise ValueError(no_weights_message(name))
    if name is not None and name.startswith(TIMM_PREFIX):
        model = build_timm_backbone(name[len(TIMM_PREFIX) :], weights=weights, **overrides)
    else:
        model = _load_file(name, weights, overrides, release)
    if rasa is not None:
        model.set_rasa_projection(load_rasa_projection(rasa, model.embed_dim))
    model.weights_label = label or Path(weights).name
    return model.eval()


def _load_file(name: str | None, weights: str | Path, overrides: dict[str, Any], release: Any = None) -> nn.Module:
    state, extra = read_backbone_state_dict(weights)
    saved = dict(extra.get("arch") or {})  # what our own files record (export metadata, checkpoint config)
    if saved.get("family") == "dinov3" or is_dinov3_state(state):
        model = _load_dinov3_file(name, weights, state, saved, overrides)
    else:
        model = _load_dinov2_file(name, weights, state, saved, overrides, release)
    if extra.get("rasa_proj") is not None and getattr(model, "rasa_proj", None) is None:
        model.set_rasa_projection(extra["rasa_proj"])
    return model


def file_arch(
    state: dict, saved: dict[str, Any], weights: str | Path, name: str | None = None
) -> tuple[str | None, dict[str, Any], str]:
    """(template size name, constructor arguments, family) of the backbone a state dict defines, by the rules
    `load_backbone` applies to a file (family "dinov3" or "dinov2"); nothing is built. `saved` is what our own
    files record (`read_backbone_state_dict`'s extra["arch"])."""
    if saved.get("family") == "dinov3" or is_dinov3_state(state):
        base, kwargs = _dinov3_file_arch(name, weights, state, saved, {})
        return base, kwargs, "dinov3"
    base, kwargs = _dinov2_file_arch(name, weights, state, saved, {})
    return base, kwargs, "dinov2"


def _load_dinov3_file(
    name: str | None, weights: str | Path, state: dict, saved: dict[str, Any], overrides: dict[str, Any]
) -> nn.Module:
    """A DINOv3 file: the keys and shapes fix the layout (the head count from the RoPE periods); what the
    file cannot say (RoPE base and coordinate rule, LayerNorm eps) is the official hub's, or our export's."""
    base, kwargs = _dinov3_file_arch(name, weights, state, saved, overrides)
    model = Dinov3VisionTransformer(**kwargs)
    load_weights_into(model, state, source=str(weights))
    model.size_name = base
    return model


def _dinov3_file_arch(
    name: str | None, weights: str | Path, state: dict, saved: dict[str, Any], overrides: dict[str, Any]
) -> tuple[str | None, dict[str, Any]]:
    arch = dinov3_arch_from_state(state)
    like = dinov3_sizes_like(arch)
    if name is not None and name not in DINOV3_SIZES:
        hint = f"use model={like[0]!r} (--model {like[0]}) or no size name" if like else "leave the size name out"
        what = f" ({describe_shape({**size_config(name), 'pos_grid': None})})" if name in SIZES else ""
        raise ValueError(
            f"{weights} holds a {describe_dinov3(arch)}; {name} is not a DINOv3 layout{what}. {hint}: the file "
            f"defines the model"
        )
    if name is not None and name != saved.get("name"):
        cfg = DINOV3_SIZES[name]
        bad = [k for k in ("embed_dim", "depth", "ffn", "patch_size") if k not in overrides and arch.get(k) != cfg[k]]
        if bad:
            named = describe_dinov3(cfg)
            hint = f"use --model {like[0]}, or leave the size name out" if like else "leave the size name out"
            raise ValueError(
                f"{weights} does not hold a {name}: the file has a {describe_dinov3(arch)}; {name} is a {named} "
                f"({' and '.join(bad)} differ). {hint}: the file defines the model"
            )
    base = name or saved.get("name") or (like[0] if like else None)
    kwargs: dict[str, Any] = dict(DINOV3_SIZES[base]) if base in DINOV3_SIZES else {}
    known = set(inspect.signature(Dinov3VisionTransformer.__init__).parameters)
    kwargs.update({k: v for k, v in saved.items() if k in known})
    kwargs.update(arch)
    if "num_heads" not in arch and "num_heads" not in saved and base not in DINOV3_SIZES:
        kwargs["num_heads"] = arch["embed_dim"] // HEAD_DIM  # no periods in the file: 64-dimensional heads
    if "mean" not in saved and "sat493m" in Path(weights).name.lower():
        kwargs.update(mean=SAT_MEAN, std=SAT_STD)  # the SAT-493M weights' own normalisation (official README)
    kwargs.update(overrides)
    return base, kwargs


def _load_dinov2_file(
    name: str | None,
    weights: str | Path,
    state: dict,
    saved: dict[str, Any],
    overrides: dict[str, Any],
    release: Any = None,
) -> nn.Module:
    """A Franca / DINOv2 file (absolute position table)."""
    base, kwargs = _dinov2_file_arch(name, weights, state, saved, overrides, release)
    model = build_backbone(base, **kwargs)
    load_weights_into(model, state, source=str(weights))
    model.size_name = saved.get("name") or (base if base in _sizes_like(file_shape(state)) else None)
    return model


def _dinov2_file_arch(
    name: str | None,
    weights: str | Path,
    state: dict,
    saved: dict[str, Any],
    overrides: dict[str, Any],
    release: Any = None,
) -> tuple[str, dict[str, Any]]:
    shape = file_shape(state)
    if name in DINOV3_SIZES:
        raise ValueError(
            f"{weights} holds a Franca/DINOv2 ViT ({describe_shape(shape)}), not the DINOv3 layout {name}: "
            f"leave the size name out, the file defines the model"
        )
    if release is not None:
        _check_release_shape(release, weights, shape)
    if name is not None:
        _check_named_size(name, weights, shape, saved, overrides)
    base = name or _template_size(shape, saved)
    arch = infer_arch(state)
    grid = arch.pop("pos_grid", None)
    patch = overrides.get("patch_size") or shape["patch_size"] or size_config(base)["patch_size"]
    arch["patch_size"] = patch
    if grid:  # the file's position grid fixes img_size; the user never passes it
        arch["img_size"] = grid * patch
    if shape["embed_dim"] is not None:
        arch["embed_dim"] = shape["embed_dim"]
    named_depth = size_config(base).get("depth")
    if "depth" in arch and "depth" not in overrides and arch["depth"] != named_depth:
        log.info(
            "%s has %d blocks; %s has %d by default: using the file's depth", weights, arch["depth"], base, named_depth
        )
    arch["num_heads"] = _num_heads(base, arch.get("embed_dim"), saved)
    for key in ("interpolate_offset", "interpolate_antialias"):
        if saved.get(key) is not None:
            arch[key] = saved[key]
    if arch.get("num_register_tokens") and "interpolate_offset" not in saved:
        # DINOv2's *_reg hub models: antialiased bicubic to the exact grid (offset 0)
        arch.update(interpolate_offset=0.0, interpolate_antialias=True)
    return base, {**arch, **overrides}


def _sizes_like(shape: dict[str, Any]) -> list[str]:
    """Size names whose width and patch size equal the file's (closest depth first)."""
    same = [
        n
        for n, c in SIZES.items()
        if c["embed_dim"] == shape.get("embed_dim") and c["patch_size"] == shape.get("patch_size")
    ]
    return sorted(same, key=lambda n: (abs(SIZES[n]["depth"] - (shape.get("depth") or 0)), n))


def _template_size(shape: dict[str, Any], saved: dict[str, Any]) -> str:
    """The size whose defaults fill what the file does not say, when no name was given."""
    if saved.get("name") in SIZES:
        return saved["name"]
    like = _sizes_like(shape)
    return like[0] if like else "vits14"


def _check_release_shape(release: Any, weights: str | Path, shape: dict[str, Any]) -> None:
    """A released name given with a file must describe it: width, patch size, depth and registers of the
    release (DINOv2 `*_reg`: 4 registers; the others none), else an error naming both."""

    want = {k: size_config(release.size)[k] for k in ("embed_dim", "patch_size", "depth")}
    want["num_register_tokens"] = 4 if release.name.endswith("_reg") else 0
    bad = [k for k, v in want.items() if shape.get(k) is not None and shape[k] != v]
    if bad:
        raise ValueError(
            f"{weights} does not hold {release.name}: the file has {describe_shape(shape)}; {release.name} has "
            f"{describe_shape(want)} ({', '.join(bad)} differ). Leave the model name out: the file defines the model"
        )


def _check_named_size(
    name: str, weights: str | Path, shape: dict[str, Any], saved: dict[str, Any], overrides: dict[str, Any]
) -> None:
    """A size name that contradicts the file (width or patch size) is an error naming both."""
    if saved.get("name") == name:  # our own file, a variant of this very size (e.g. a narrower vitt8)
        return
    cfg = size_config(name)
    bad = [
        k for k in ("embed_dim", "patch_size") if k not in overrides and shape.get(k) is not None and shape[k] != cfg[k]
    ]
    if not bad:
        return
    like = _sizes_like(shape)
    hint = f"use --model {like[0]} (model={like[0]!r})" if like else "this is not one of the named sizes"
    named = describe_shape({**cfg, "pos_grid": None})
    raise ValueError(
        f"{weights} does not hold a {name}: the file has {describe_shape({**shape, **saved})}; "
        f"{name} has {named} ({' and '.join(bad)} differ). {hint}, or leave the size name out: "
        f"the file defines the model"
    )


def _num_heads(base: str, embed_dim: int | None, saved: dict[str, Any]) -> int:
    """Recorded heads, else the size's when the width matches, else 64-dimensional heads."""
    if saved.get("num_heads"):
        return int(saved["num_heads"])
    cfg = size_config(base)
    if embed_dim is None or cfg["embed_dim"] == embed_dim:
        return int(cfg["num_heads"])
    if embed_dim % HEAD_DIM:
        raise ValueError(f"cannot tell the head count of a {embed_dim}-wide file; pass num_heads=")
    return embed_dim // HEAD_DIM


def weights_label(name: str | None = None, weights: str | Path | None = None, random_init: bool = False) -> str:
    """What names the weights in results and figures: the release name, the file name, or "random init"."""

    if weights is not None:
        return Path(weights).name
    if random_init and is_layout_name(name):  # a DINOv3 name is also a layout: --random-init builds it
        return RANDOM_LABEL
    if name is not None and is_release(name):
        return str(name).lower()
    if random_init:
        return RANDOM_LABEL
    raise ValueError(no_weights_message(name))


def load_rasa_projection(path: str | Path, embed_dim: int) -> torch.Tensor:
    """The position-removal projection of a RASA file (official or this project's) for an `embed_dim` backbone."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"RASA file not found: {path}")
    try:
        rasa_fold = importlib.import_module("franca.models.rasa_fold")
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            "loading a RASA file needs franca.models.rasa_fold, which is not installed in this build"
        ) from exc
    return rasa_fold.load_rasa_projection(path, embed_dim)


def export_hf(model: nn.Module, out_dir: str | Path) -> Path:
    """Write `model` as a Hugging Face transformers folder (`config.json` + `model.safetensors`) that
    `transformers.AutoModel.from_pretrained(out_dir)` loads with equal features; DINOv2/Franca and DINOv3 backbones.

    What transformers cannot express raises a UserError naming the part; what holds only at the export grid
    (a position interpolation rule transformers does not have) or travels beside the weights (RASA) is a
    UserWarning."""

    path, notes = export_hf_folder(model, out_dir)
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    return path


def export_backbone(model: nn.Module, path: str | Path) -> Path:
    """Write `model` as safetensors with DINOv2 flat keys (loads in timm's `vit_*_patch14_dinov2`)."""
    return export_safetensors(model, path)
