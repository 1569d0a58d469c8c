"""Hugging Face transformers model folders, both ways.

Read: a folder with `config.json` and `model.safetensors` (or sharded `model-0000x-of-0000y.safetensors` listed in
`model.safetensors.index.json`; `pytorch_model.bin` pickles only through `torch.load(weights_only=True)`) of a
`Dinov2Model`, `Dinov2WithRegistersModel` or `DINOv3ViTModel` becomes a state dict in our layouts (DINOv2 flat
names; the official DINOv3 names) plus what the weights do not say (head count, position interpolation rule), so
`load_backbone(weights=DIR)` computes what transformers computes for that folder, at every input size.

Write: `export_hf_folder(model, DIR)` writes `config.json` + `model.safetensors` that
`transformers.AutoModel.from_pretrained(DIR)` loads with equal features (transformers is not needed to write).
What transformers cannot express is a UserError naming the part; what holds only at the export grid (a position
interpolation rule transformers does not have) is a note. A RASA projection travels beside the weights in
`franca_rasa.safetensors`, which transformers ignores and `load_backbone(weights=DIR)` restores.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from franca.models import hf_dinov2, hf_dinov3
from franca.utils.errors import UserError
from franca.utils.files import set_normal_mode

log = logging.getLogger(__name__)

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
RASA_FILE = "franca_rasa.safetensors"
PREPROCESSOR = "preprocessor_config.json"
READ_TYPES = (hf_dinov2.DINOV2, hf_dinov2.DINOV2_REG, hf_dinov3.DINOV3)


def is_hf_folder(path: str | Path) -> bool:
    """A folder with a config.json: read as a transformers model folder."""
    path = Path(path)
    return path.is_dir() and (path / CONFIG).is_file()


def read_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {folder / CONFIG} as JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise UserError(f"{folder / CONFIG} is not a JSON object")
    return config


def read_folder_state(folder: Path) -> dict[str, Tensor]:
    """Every tensor of the folder's weights: one safetensors file, safetensors shards, or plain-tensor pickles."""
    if (folder / SAFETENSORS).is_file():
        return _read_safetensors(folder / SAFETENSORS)
    for index, reader in ((SAFETENSORS_INDEX, _read_safetensors), (PICKLE_INDEX, _read_plain_tensors)):
        if (folder / index).is_file():
            return _read_sharded(folder, folder / index, reader)
    if (folder / PICKLE).is_file():
        return _read_plain_tensors(folder / PICKLE)
    raise UserError(
        f"{folder}: a transformers folder needs {SAFETENSORS}, {SAFETENSORS_INDEX} (shards) or {PICKLE}; "
        f"found {sorted(p.name for p in folder.iterdir())[:10]}"
    )


def _read_sharded(folder: Path, index: Path, reader: Any) -> dict[str, Tensor]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read the shard index {index}: {type(exc).__name__}: {exc}") from exc
    state: dict[str, Tensor] = {}
    for name in sorted(set(weight_map.values())):
        shard = folder / name
        if Path(name).name != name or not shard.is_file():
            raise UserError(f"{index} lists the shard {name!r}, which is not a file in {folder}")
        state.update(reader(shard))
    missing = sorted(k for k in weight_map if k not in state)
    if missing:
        raise UserError(f"{index}: tensors listed but not in their shards: {', '.join(missing[:8])}")
    return state


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # SafetensorError is not an OSError: truncated or not safetensors  # noqa: BLE001
        raise UserError(f"cannot read {path} as safetensors (truncated or another format?): {exc}") from exc


def _read_plain_tensors(path: Path) -> dict[str, Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(
            f"refusing to load {path}: not a plain tensor file (weights_only=True rejected it, it may run code)"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds on a foreign file
        raise UserError(f"cannot read {path} as a torch file: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise UserError(f"{path} is not a flat dict of tensors")
    return obj


def _backbone_keys(state: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """The backbone's tensors without a task model's prefix (e.g. `dinov2.` of an image classifier)."""
    ends = sorted((k for k in state if k.endswith("embeddings.cls_token")), key=len)
    if not ends:
        raise UserError(f"{source}: no embeddings.cls_token tensor: not a DINOv2/DINOv3 model folder")
    prefix = ends[0][: -len("embeddings.cls_token")]
    if not prefix:
        return dict(state)
    ignored = sorted(k for k in state if not k.startswith(prefix))
    if ignored:
        log.info("%s: ignoring %d tensors outside the backbone (%s, …)", source, len(ignored), ignored[0])
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def read_hf_backbone(folder: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Our state dict (DINOv2 flat names or the official DINOv3 names) and extras (`arch`, `rasa_proj`)."""
    folder = Path(folder)
    config = read_config(folder)
    kind = config.get("model_type")
    if kind not in READ_TYPES:
        raise UserError(
            f"{folder / CONFIG}: model_type {kind!r}; franca reads transformers folders of "
            f"{', '.join(READ_TYPES)} (Dinov2Model, Dinov2WithRegistersModel, DINOv3ViTModel)"
        )
    state = _backbone_keys(read_folder_state(folder), str(folder))
    if kind == hf_dinov3.DINOV3:
        out, arch = hf_dinov3.hf_to_official(config, state, str(folder))
        arch.update(_normalisation(folder))
    else:
        out, arch = hf_dinov2.from_hf(config, state, str(folder))
    extra: dict[str, Any] = {"arch": arch}
    if (folder / RASA_FILE).is_file():
        extra["rasa_proj"] = _read_safetensors(folder / RASA_FILE)["rasa_proj"].float()
    return out, extra


def _normalisation(folder: Path) -> dict[str, list[float]]:
    """The image mean/std of the folder's `preprocessor_config.json` (DINOv3's SAT-493M weights have their own)."""
    path = folder / PREPROCESSOR
    if not path.is_file():
        return {}
    try:
        pre = json.loads(path.read_text(encoding="utf-8"))
        mean, std = [float(v) for v in pre["image_mean"]], [float(v) for v in pre["image_std"]]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"cannot read image_mean/image_std from {path}: {type(exc).__name__}: {exc}") from exc
    if len(mean) != 3 or len(std) != 3:
        raise UserError(f"{path}: image_mean and image_std must have 3 values, got {mean} and {std}")
    return {"mean": mean, "std": std}


# ---------------------------------------------------------------------------------------------- write
def hf_layout(model: nn.Module) -> tuple[dict[str, Any], dict[str, Tensor], list[str]]:
    """config.json, state dict and notes of `model` as a transformers model."""
    inner = getattr(model, "vit", None)
    if inner is not None or not hasattr(model, "blocks"):
        raise UserError(
            "only DINOv2/Franca and DINOv3 backbones can be written as a transformers folder; "
            f"{type(inner or model).__name__} (a timm:NAME model?) has no transformers counterpart here"
        )
    if hf_dinov3.is_dinov3(model):
        return hf_dinov3.to_hf(model)
    return hf_dinov2.to_hf(model)


def check_out_folder(out_dir: str | Path) -> Path:
    """The folder a transformers model is written to must be new or empty (nothing is overwritten)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir} exists and is not an empty folder; give a new folder for the transformers model")
    return out_dir


def export_hf_folder(model: nn.Module, out_dir: str | Path) -> tuple[Path, list[str]]:
    """Write `model` as a transformers folder (atomically: a temporary sibling renamed into place).

    Returns the folder and the notes (what holds only at the export grid, what travels beside the weights)."""
    out_dir = check_out_folder(out_dir)
    config, state, notes = hf_layout(model)
    sidecars = {}
    rasa = getattr(model, "rasa_proj", None)
    if rasa is not None:
        sidecars[RASA_FILE] = {"rasa_proj": rasa.detach().to("cpu", torch.float32).contiguous()}
        notes.append(
            f"RASA: the projection is saved as {RASA_FILE} next to the weights; transformers does not apply it "
            f"(patch_token_rasa = last_hidden_state[:, 1 + registers:] @ P.T); load_backbone(weights=DIR) restores it"
        )
    extra_json = {}
    if hf_dinov3.is_dinov3(model):  # the weights' own normalisation (SAT-493M files have their own)
        extra_json[PREPROCESSOR] = hf_dinov3.preprocessor_config(model)
    return write_hf_folder(out_dir, config, state, sidecars, extra_json), notes


def write_hf_folder(
    out_dir: str | Path,
    config: dict[str, Any],
    state: dict[str, Tensor],
    sidecars: dict[str, dict[str, Tensor]] | None = None,
    extra_json: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """config.json + model.safetensors (+ side files) into a new or empty folder, atomically."""
    from safetensors.torch import save_file

    out_dir = check_out_folder(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        (tmp / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        save_file(state, str(tmp / SAFETENSORS), metadata={"format": "pt"})
        set_normal_mode(tmp / SAFETENSORS)  # safetensors writes 0600; a folder to share is readable as any file
        for name, tensors in (sidecars or {}).items():
            save_file(tensors, str(tmp / name))
            set_normal_mode(tmp / name)
        for name, obj in (extra_json or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s (%s, %d tensors)", out_dir, config["architectures"][0], len(state))
    return out_dir


def hf_recipe(folder: str | Path) -> str:
    """Python code that loads the folder in transformers alone and says where each token is."""
    config = read_config(Path(folder))
    r = int(config.get("num_register_tokens", 0))
    return "\n".join(
        [
            "from transformers import AutoModel",
            f"model = AutoModel.from_pretrained({str(folder)!r}).eval()",
            f"# images: (B, 3, H, W), normalised with the ImageNet mean/std, H and W multiples of {config['patch_size']}",
            "# tokens = model(pixel_values=images).last_hidden_state  # after the final LayerNorm",
            f"# CLS = tokens[:, 0]; registers = tokens[:, 1:{1 + r}]; patch tokens = tokens[:, {1 + r}:]",
        ]
    )
