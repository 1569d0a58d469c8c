"""RASA directions -> one fixed linear map on the final normalised patch tokens.

RASA (arXiv 2507.14137; released Franca `rasa/src/rasa_head.py`) removes, stage after stage, the
2-D subspace a linear position predictor uses: for a trained weight W = [w_r; w_c] (2, D), Gram-Schmidt
gives U (D, 2) with orthonormal columns and x <- x - U Uᵀ x. Every stage is linear, so the T stages fold
into one (D, D) matrix

    P = (I - U_T U_Tᵀ) ··· (I - U_2 U_2ᵀ)(I - U_1 U_1ᵀ),      cleaned = x @ P.T

which the backbone keeps as the persistent buffer ``rasa_proj`` (saved and exported with its
weights). This module is pure tensor code (no project imports): directions -> P, the official
RASA head state dict -> P, and a file reader that accepts the official head files and ours.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "gram_schmidt_2d",
    "removal_projection",
    "official_head_weights",
    "projection_from_official_state_dict",
    "load_rasa_projection",
    "save_rasa_file",
]

_EPS = 1e-12


def gram_schmidt_2d(W: torch.Tensor) -> torch.Tensor:
    """Orthonormalise a predictor weight (k, D), k ∈ {1, 2}, row by row; return U (D, k).

    Same order as the reference head: u_r = w_r/‖w_r‖, then w_c made orthogonal to u_r and
    normalised. A (1, D) weight gives the 1-D variant (remove w/‖w‖). Computed in float64.
    """
    if W.ndim != 2 or W.shape[0] not in (1, 2):
        raise ValueError(f"position predictor weight must have shape (2, D) or (1, D), got {tuple(W.shape)}")
    Wd = W.detach().to(torch.float64)
    cols = []
    for i in range(Wd.shape[0]):
        v = Wd[i]
        n = v.norm()
        if not torch.isfinite(n) or n < _EPS:
            raise ValueError(f"position predictor row {i} has zero or non-finite norm ({float(n)})")
        v = v / n
        for u in cols:
            v = v - (v @ u) * u
        n = v.norm()
        if n < 1e-8:
            raise ValueError(f"position predictor rows are parallel; row {i} has no component left after Gram-Schmidt")
        cols.append(v / n)
    return torch.stack(cols, dim=1).to(W.dtype if W.dtype.is_floating_point else torch.float32)


def removal_projection(U_list: Sequence[torch.Tensor], dim: int | None = None) -> torch.Tensor:
    """Fold removals U_1, …, U_T (each (D, k), orthonormal columns), applied in that order, into P (D, D).

    P = (I - U_T U_Tᵀ) ··· (I - U_1 U_1ᵀ), so that ``x @ P.T`` equals the one-by-one removals.
    An empty list needs ``dim`` and gives the identity. Returned in float32.
    """
    if len(U_list) == 0:
        if dim is None:
            raise ValueError("removal_projection of no directions needs dim")
        return torch.eye(dim)
    D = U_list[0].shape[0]
    if dim is not None and dim != D:
        raise ValueError(f"directions have dimension {D}, expected {dim}")
    P = torch.eye(D, dtype=torch.float64)
    for t, U in enumerate(U_list):
        if U.ndim != 2 or U.shape[0] != D:
            raise ValueError(f"direction set {t} has shape {tuple(U.shape)}, expected ({D}, k)")
        Ud = U.detach().to(torch.float64)
        P = P - Ud @ (Ud.T @ P)  # (I - U Uᵀ) P
    return P.to(torch.float32)


# ---------------------------------------------------------------------------------------------
# Official RASA head files
# ---------------------------------------------------------------------------------------------
_PRE = re.compile(r"^(?P<prefix>.*?)pre_pos_layers\.(?P<idx>\d+)\.weight$")
_CONTAINERS = ("state_dict", "model", "teacher", "module")
_META_KEY = "franca.rasa_proj"  # where franca.export_backbone keeps the map in safetensors metadata


def official_head_weights(sd: Mapping[str, Any], embed_dim: int | None = None) -> list[torch.Tensor]:
    """The official head's weights in application order: pre_pos_layers.0, 1, …, then pos_pred.

    Keys may carry any prefix (``rasa_head.``, ``module.``, Lightning's ``head.``); the number of
    pre-position layers is inferred from the keys and must be contiguous from 0.
    """
    pred_keys = [k for k in sd if isinstance(k, str) and k.endswith("pos_pred.weight")]
    if not pred_keys:
        raise KeyError(f"RASA head state dict has no 'pos_pred.weight' key (keys: {sorted(map(str, sd))[:8]}…)")
    if len(pred_keys) > 1:
        raise ValueError(f"RASA head state dict has several pos_pred weights: {pred_keys}")
    prefix = pred_keys[0][: -len("pos_pred.weight")]
    layers: dict[int, torch.Tensor] = {}
    for k, v in sd.items():
        m = _PRE.match(k) if isinstance(k, str) else None
        if m and m.group("prefix") == prefix:
            layers[int(m.group("idx"))] = v
    idx = sorted(layers)
    if idx != list(range(len(idx))):
        raise ValueError(f"RASA pre_pos_layers must be numbered 0..n-1 without gaps; found {idx}")
    weights = [layers[i] for i in idx] + [sd[pred_keys[0]]]
    for name, w in zip([f"{prefix}pre_pos_layers.{i}.weight" for i in idx] + [pred_keys[0]], weights):
        if not isinstance(w, torch.Tensor) or w.ndim != 2 or w.shape[0] not in (1, 2):
            raise ValueError(
                f"RASA head weight {name!r} must be a (2, D) tensor, got "
                f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}"
            )
        if embed_dim is not None and w.shape[1] != embed_dim:
            raise ValueError(
                f"RASA head weight {name!r} has width {w.shape[1]}, but the backbone's embed_dim is {embed_dim}"
            )
    return weights


def projection_from_official_state_dict(sd: Mapping[str, Any], embed_dim: int | None = None) -> torch.Tensor:
    """Fold an official RASA head (pre_pos_layers.* then pos_pred, each (2, D), no bias) into P (D, D).

    Equals the official ``RASAHead.forward(x, use_pos_pred=True)``: Gram-Schmidt removal with each
    layer's raw weight, in order.
    """
    weights = official_head_weights(sd, embed_dim)
    return removal_projection([gram_schmidt_2d(w) for w in weights])


def _unwrap(obj: Any, path: Path) -> Mapping[str, Any]:
    """Descend through {"state_dict": …} / {"model": …} / {"teacher": …} containers to a flat state dict."""
    for _ in range(4):
        if not isinstance(obj, Mapping):
            raise ValueError(f"{path}: expected a state dict, found {type(obj).__name__}")
        if any(isinstance(k, str) and (k.endswith("rasa_proj") or k.endswith("pos_pred.weight")) for k in obj):
            return obj
        nxt = next((obj[k] for k in _CONTAINERS if isinstance(obj.get(k), Mapping)), None)
        if nxt is None:
            break
        obj = nxt
    return obj


def _from_state_dict(sd: Mapping[str, Any], embed_dim: int | None, path: Path) -> torch.Tensor:
    proj_keys = [k for k in sd if isinstance(k, str) and (k == "rasa_proj" or k.endswith(".rasa_proj"))]
    if proj_keys:
        P = sd[sorted(proj_keys, key=len)[0]]
        if not isinstance(P, torch.Tensor) or P.ndim != 2 or P.shape[0] != P.shape[1]:
            raise ValueError(
                f"{path}: 'rasa_proj' must be a square matrix, got "
                f"{tuple(P.shape) if isinstance(P, torch.Tensor) else type(P).__name__}"
            )
        if embed_dim is not None and P.shape[0] != embed_dim:
            raise ValueError(
                f"{path}: 'rasa_proj' is {P.shape[0]}x{P.shape[0]}, but the backbone's embed_dim is {embed_dim}"
            )
        return P.detach().to(torch.float32).clone()
    dir_keys = sorted(
        (k for k in sd if isinstance(k, str) and re.fullmatch(r"rasa_directions\.\d+", k)),
        key=lambda k: int(k.split(".")[1]),
    )
    if dir_keys:
        return removal_projection([sd[k] for k in dir_keys], dim=embed_dim)
    try:
        return projection_from_official_state_dict(sd, embed_dim)
    except KeyError:
        raise KeyError(
            f"{path}: no RASA data found (looked for 'rasa_proj', 'rasa_directions.<i>' or an official "
            f"head's 'pre_pos_layers.<i>.weight' + 'pos_pred.weight')"
        ) from None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _decode_meta_tensor(text: str, path: Path) -> torch.Tensor:
    """The exported backbone's metadata tensor: JSON {"shape": [...], "data": base64 float32 bytes}."""
    import base64
    import json

    import numpy as np

    try:
        d = json.loads(text)
        a = np.frombuffer(base64.b64decode(d["data"]), dtype=np.float32).reshape(d["shape"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: metadata {_META_KEY!r} is not a valid encoded tensor ({exc})") from exc
    return torch.from_numpy(a.copy())


def load_rasa_projection(path: str | Path, embed_dim: int | None = None) -> torch.Tensor:
    """Read a RASA file and return the folded map P (D, D), float32.

    Accepts the official head ``.pth`` files (``pre_pos_layers.<i>.weight`` + ``pos_pred.weight``,
    possibly under ``state_dict``/``model`` and ``rasa_head.``/``module.`` prefixes), this project's
    RASA files (``rasa_proj`` and/or ``rasa_directions.<i>``, .safetensors or .pt) and any backbone
    file carrying a ``rasa_proj`` buffer.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"RASA file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            sd: Any = {k: f.get_tensor(k) for k in f.keys()}
        if _META_KEY in meta and "rasa_proj" not in sd:  # a backbone exported by franca.export_backbone
            sd["rasa_proj"] = _decode_meta_tensor(meta[_META_KEY], path)
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling errors come in many types
            raise ValueError(f"{path}: cannot be read as a torch state dict ({exc})") from exc
    return _from_state_dict(_unwrap(sd, path), embed_dim, path)


def save_rasa_file(path: str | Path, U_list: Sequence[torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """Write this project's RASA file: ``rasa_proj`` (D, D) plus each stage's ``rasa_directions.<i>`` (D, 2).

    ``.safetensors`` by suffix, otherwise a torch state dict; ``load_rasa_projection`` reads both.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"rasa_proj": removal_projection(U_list).contiguous()}
    tensors.update({f"rasa_directions.{i}": U.detach().to(torch.float32).contiguous() for i, U in enumerate(U_list)})
    if path.suffix == ".safetensors":  # bytes written by open(): the umask's mode (save_file's file is 0600)
        from safetensors.torch import save

        path.write_bytes(save(tensors, metadata=dict(metadata or {})))
    else:
        torch.save(tensors, path)
    return path
