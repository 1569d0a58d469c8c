"""Deployable exports with dynamic height and width: ONNX (dynamo exporter) and `torch.export` (.pt2).

Both trace `FeatureHead`, which maps images (B, 3, H, W) to `cls` (B, D), `registers` (B, R, D) and
`patch_tokens` (B, H/p · W/p, D), the normed tokens of `forward_features`. Height and width are
declared as multiples of the patch size, so the graph holds for any multiple; the position table is
resized by the export-traceable form of the reference interpolation (franca.models.pos_resample).

A side that is not a multiple of the patch size is refused by both, as PyTorch refuses it: the .pt2
program's input guard raises, and the ONNX graph's first node (named `CHECK_NODE`) reshapes the images
into whole patches, which fails in the runtime (onnxruntime: "cannot be reshaped") instead of letting
the strided patch embedding drop the border without a word.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

OUTPUT_NAMES = ["cls", "registers", "patch_tokens"]
CHECK_NODE = "check_height_and_width_are_multiples_of_the_patch_size"
"""Name of the ONNX node that fails on a side that is not a multiple of the patch size (runtimes print it)."""


class FeatureHead(nn.Module):
    """images → (cls, registers, patch_tokens): the exported interface, plain tensors only. With
    `patch_check`, the images are first reshaped into whole patches (a no-op on the values): the ONNX
    graph's check of H and W, since ONNX keeps no shape constraint on its inputs."""

    def __init__(self, backbone: nn.Module, patch_check: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.patch_check = patch_check

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.patch_check:
            b, c, h, w = images.shape
            p = int(self.backbone.patch_size)
            images = images.reshape(b, c, h // p, p, w // p, p).reshape(b, c, h, w)
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


def _name_check_node(model) -> None:
    """Name the Reshape of the input `images` (FeatureHead's patch check) `CHECK_NODE`, so that the
    runtime's error on a wrong side says what is wrong. Raises if the exporter dropped the check."""
    graph = model.graph
    images = graph.inputs[0]
    for node in graph:
        if node.op_type == "Reshape" and node.inputs and node.inputs[0] is images:
            node.name = CHECK_NODE
            return
    raise RuntimeError("ONNX export: the check that H and W are multiples of the patch size is not in the graph")


def export_onnx(
    model: nn.Module,
    path: str | Path,
    size: int | None = None,
    max_side: int = 4096,
    opset: int = 18,
    verbose: bool = True,
) -> Path:
    """ONNX file of `FeatureHead(model)` (input `images`; outputs cls, registers, patch_tokens), dynamic
    batch, height and width (multiples of the patch size). `verbose=False` silences the exporter's step lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head = FeatureHead(model.eval(), patch_check=True).eval()
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
            verbose=verbose,
        )
    _name_check_node(prog.model)
    prog.save(str(tmp))
    tmp.replace(path)
    log.info("wrote %s", path)
    return path
