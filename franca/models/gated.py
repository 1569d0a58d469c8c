"""Released files that are granted on request (DINOv3): where they belong, and how access is asked for.

A gated file is never downloaded: the official download URLs are personal (sent by e-mail once access is
granted). It is looked for, in this order, in franca's cache (`$FRANCA_HOME`, else `<torch hub dir>/franca`)
and in torch.hub's checkpoints folder (`<torch hub dir>/checkpoints`, where the official
`torch.hub.load("facebookresearch/dinov3", ..., weights=URL)` keeps it). With neither, the error says where
access is requested, which file to download and where to put it, and that `weights=FILE` works too.
"""

from __future__ import annotations

from pathlib import Path

from franca.models.hub import WeightsUnavailable, cache_dir
from franca.models.releases import Release


def torch_hub_checkpoints() -> Path:
    """torch.hub's download folder (`<torch.hub.get_dir()>/checkpoints`)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def gated_locations(rel: Release) -> list[Path]:
    """The places a gated file is looked for, in order."""
    fname = rel.file_names[0]
    return [cache_dir() / fname, torch_hub_checkpoints() / fname]


def find_gated_file(rel: Release) -> Path:
    """The local copy of a gated release; an error saying how to get it when there is none."""
    places = gated_locations(rel)
    for p in places:
        if p.is_file():
            return p
    fname = rel.file_names[0]
    raise WeightsUnavailable(
        f"{rel.name} is gated: its file {fname} is granted on request under the {rel.license or 'its own license'}, "
        f"and it is not on this machine. Request access at {rel.access}; the e-mail that grants it lists the "
        f"download URLs. Download {fname} with "
        f"wget and put it at {places[0]} (or {places[1]}, where torch.hub keeps it), or pass the file itself: "
        f"weights=FILE (CLI: --weights FILE)."
    )
