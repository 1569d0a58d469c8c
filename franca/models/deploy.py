"""Deployable exports with dynamic height and width: ONNX (dynamo exporter) and `torch.export` (.pt2).

Both trace `FeatureHead`, which maps images (B, 3, H, W) to `cls` (B, D), `registers` (B, R, D) and
`patch_tokens` (B, H/p · W/p, D), the normed tokens of `forward_features`. Height and width are
declared as multiples of the patch size, so the graph holds for any multiple; the position table is
resized by the export-traceable form of the reference interpolation (franca.models.pos_resample).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

OUTPUT_NAMES = ["cls", "registers", "patch_tokens"]


class FeatureHead(nn.Module):
    """images → (cls, registers, patch_tokens): the exported interface, plain tensors only."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.backbone.forward_features(images)
        return out["x_norm_clstoken"], out["x_norm_regtokens"], out["x_norm_patchtokens"]


def _dynamic_shapes(model: nn.Module, max_side: int) -> dict:
    from torch.export import Dim

    p = int(model.patch_size)
    cells = max(2, max_side // p)
    return {
        "images": {
            0: Dim("batch", min=1, max=4096),
            2: p * Dim("grid_h", min=1, max=cells),
            3: p * Dim("grid_w", min=1, max=cells),
        }
    }


def _example(model: nn.Module, size: int | None) -> Tensor:
    p = int(model.patch_size)
    side = (size or getattr(model, "img_size", 224)) // p * p
    return torch.randn(2, 3, side, side, device=next(model.parameters()).device)


def export_program(model: nn.Module, path: str | Path, size: int | None = None, max_side: int = 4096) -> Path:
    """`torch.export` of `FeatureHead(model)` with dynamic batch, height and width, saved as .pt2."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = FeatureHead(model.eval()).eval()
    ep = torch.export.export(head, (_example(model, size),), dynamic_shapes=_dynamic_shapes(model, max_side))
    tmp = path.with_name(f".{path.stem}.tmp.pt2")
    torch.export.save(ep, str(tmp))
    tmp.replace(path)
    return path


def export_onnx(
    model: nn.Module, path: str | Path, size: int | None = None, max_side: int = 4096, opset: int = 18
) -> Path:
    """ONNX file of `FeatureHead(model)` (input `images`; outputs cls, registers, patch_tokens), dynamic
    batch, height and width (multiples of the patch size)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = FeatureHead(model.eval()).eval()
    tmp = path.with_name(f".{path.name}.tmp.onnx")
    with torch.no_grad():
        prog = torch.onnx.export(
            head,
            (_example(model, size),),
            dynamo=True,
            input_names=["images"],
            output_names=OUTPUT_NAMES,
            dynamic_shapes=_dynamic_shapes(model, max_side),
            opset_version=opset,
            external_data=False,
        )
    prog.save(str(tmp))
    tmp.replace(path)
    log.info("wrote %s", path)
    return path
