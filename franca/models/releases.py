"""The released Franca and DINOv2 backbones, by name: where each file lives and what it holds.

Names are lower case (`franca_vitb14_in21k`, `dinov2_vits14_reg`); the file names and URLs are the
official ones (valeoai/Franca GitHub releases v1.0.0 and v1.1.0, whose hub builds the file name from
the weights tag, e.g. `franca_vitb14_In21K.pth`; DINOv2's `dl.fbaipublicfiles.com`). The ViT-g/14
release is a tar.gz split in three parts. DINOv3 files are gated (granted on request under the DINOv3
License, with download URLs sent by e-mail): they are never downloaded, only looked for in the cache and in
torch.hub's checkpoints folder (franca.models.gated). `hub` is the official torch.hub entry point and `weights`
keyword that give the same file (`hubconf.py` at the repository root offers them).

`FRANCA_BASE_URL` (or `base_url=` in `franca.models.hub`) replaces the host part of every URL: a
mirror, or the local HTTP server of the tests. Sizes and SHA-256 sums are checked when listed; the
official hubs publish none for these files, so `franca.models.hub` checks what the server announces,
what each file must start with and its archive structure, and records a SHA-256 of its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

FRANCA_BASE = "https://github.com/valeoai/Franca/releases/download"
DINOV2_BASE = "https://dl.fbaipublicfiles.com/dinov2"
DINOV3_BASE = "https://dl.fbaipublicfiles.com/dinov3"
DINOV3_ACCESS = "https://ai.meta.com/resources/models-and-libraries/dinov3-downloads/"
DINOV3_LICENSE = "DINOv3 License (https://ai.meta.com/resources/models-and-libraries/dinov3-license/)"
BASE_URL_ENV = "FRANCA_BASE_URL"


@dataclass(frozen=True)
class Release:
    """One released backbone: its files relative to a base URL, and the size name it loads as."""

    name: str
    size: str
    base: str
    files: tuple[str, ...]
    """paths under `base`: one .pth, or the ordered parts of a split archive"""
    hub: tuple[str, str]
    """(official hub entry point, weights keyword)"""
    description: str
    rasa: str | None = None
    """path under `base` of the released RASA head, if any"""
    sha256: dict[str, str] = field(default_factory=dict)
    """file name → SHA-256 hex digest, where known"""
    nbytes: dict[str, int] = field(default_factory=dict)
    """file name → size in bytes, where known"""
    gated: bool = False
    """granted on request only (DINOv3): never downloaded, looked for where it belongs (franca.models.gated)"""
    access: str | None = None
    """where access to a gated file is requested"""
    license: str | None = None

    def urls(self, base_url: str | None = None) -> list[str]:
        return [f"{resolve_base(self.base, base_url)}/{f}" for f in self.files]

    def rasa_url(self, base_url: str | None = None) -> str | None:
        return f"{resolve_base(self.base, base_url)}/{self.rasa}" if self.rasa else None

    @property
    def file_names(self) -> list[str]:
        return [f.rsplit("/", 1)[-1] for f in self.files]

    @property
    def torch_hub_copies(self) -> list[tuple[str, ...]]:
        """Where the official torch.hub entry points keep this release, relative to
        `<torch.hub.get_dir()>/checkpoints`: each tuple is one complete copy, best first. One `.pth` is kept
        under its own name (`load_state_dict_from_url`); the split ViT-g archive is kept as the `.pth`
        extracted from it, and as its parts under `parts/`."""
        names = self.file_names
        if len(names) == 1:
            return [(names[0],)]
        joined = names[0].split("_chunked.tar.gz")[0] + ".pth"
        return [(joined,), tuple(f"parts/{n}" for n in names)]


def resolve_base(base: str, override: str | None = None) -> str:
    """The base URL to use: `override`, else $FRANCA_BASE_URL, else the official one."""
    chosen = override or os.environ.get(BASE_URL_ENV) or base
    return chosen.rstrip("/")


def _franca(
    name: str,
    size: str,
    tag: str,
    release: str,
    hub: tuple[str, str],
    description: str,
    rasa: bool = False,
    parts: bool = False,
) -> Release:
    stem = f"franca_{size}_{tag}"
    files = (
        tuple(f"{release}/{stem}_chunked.tar.gz.part_{p}" for p in ("aa", "ab", "ac"))
        if parts
        else (f"{release}/{stem}.pth",)
    )
    return Release(
        name, size, FRANCA_BASE, files, hub, description, rasa=f"{release}/{stem}_rasa.pth" if rasa else None
    )


def _dinov2(size: str, reg: bool) -> Release:
    stem = f"dinov2_{size}" + ("_reg4" if reg else "")
    name = f"dinov2_{size}" + ("_reg" if reg else "")
    what = "with 4 registers " if reg else ""
    return Release(
        name,
        size,
        DINOV2_BASE,
        (f"dinov2_{size}/{stem}_pretrain.pth",),
        (name, "LVD142M"),
        f"DINOv2 {size} {what}(LVD-142M, 518 px)",
    )


def _dinov3(entry: str, file_hash: str, what: str, weights: str = "LVD1689M") -> Release:
    """A DINOv3 ViT as the official hub names its file: `<entry>/<entry>_pretrain_<weights>-<hash>.pth`."""
    name = entry if weights == "LVD1689M" else f"{entry}_{weights.lower()}"
    return Release(
        name,
        entry,
        DINOV3_BASE,
        (f"{entry}/{entry}_pretrain_{weights.lower()}-{file_hash}.pth",),
        (entry, weights),
        f"DINOv3 {what} ({'LVD-1689M' if weights == 'LVD1689M' else 'SAT-493M satellite images'}, distilled)",
        gated=True,
        access=DINOV3_ACCESS,
        license=DINOV3_LICENSE,
    )


_ALL = [
    _franca(
        "franca_vitb14_in21k",
        "vitb14",
        "In21K",
        "v1.0.0",
        ("franca_vitb14", "IN21K"),
        "Franca ViT-B/14, ImageNet-21K, high-res 518 px",
        rasa=True,
    ),
    _franca(
        "franca_vitb14_in21k_224",
        "vitb14",
        "In21K_224",
        "v1.1.0",
        ("franca_vitb14", "IN21K_224"),
        "Franca ViT-B/14, ImageNet-21K, 224 px",
    ),
    _franca(
        "franca_vitb14_dinov2_in21k",
        "vitb14",
        "Dinov2_In21K",
        "v1.1.0",
        ("franca_vitb14", "DINOV2_IN21K"),
        "DINOv2 baseline ViT-B/14 trained by the Franca authors on ImageNet-21K, 224 px",
    ),
    _franca(
        "franca_vitb14_dinov2_in21k_518",
        "vitb14",
        "Dinov2_In21K_518",
        "v1.1.0",
        ("franca_vitb14", "DINOV2_IN21K_518"),
        "DINOv2 baseline ViT-B/14, ImageNet-21K, 518 px",
        rasa=True,
    ),
    _franca(
        "franca_vitl14_in21k",
        "vitl14",
        "In21K",
        "v1.0.0",
        ("franca_vitl14", "IN21K"),
        "Franca ViT-L/14, ImageNet-21K",
        rasa=True,
    ),
    _franca(
        "franca_vitl14_laion600m",
        "vitl14",
        "Laion600M",
        "v1.0.0",
        ("franca_vitl14", "LAION"),
        "Franca ViT-L/14, LAION-600M",
        rasa=True,
    ),
    _franca(
        "franca_vitl14_laion600m_224",
        "vitl14",
        "Laion600M_224",
        "v1.1.0",
        ("franca_vitl14", "LAION_224"),
        "Franca ViT-L/14, LAION-600M, 224 px",
    ),
    _franca(
        "franca_vitl14_laion_518",
        "vitl14",
        "Laion_518",
        "v1.1.0",
        ("franca_vitl14", "LAION_518"),
        "Franca ViT-L/14, LAION-600M, 518 px",
        rasa=True,
    ),
    _franca(
        "franca_vitl14_dinov2_in21k",
        "vitl14",
        "Dinov2_In21K",
        "v1.1.0",
        ("franca_vitl14", "DINOV2_IN21K"),
        "DINOv2 baseline ViT-L/14 trained by the Franca authors on ImageNet-21K, 224 px",
    ),
    _franca(
        "franca_vitl14_dinov2_in21k_518",
        "vitl14",
        "Dinov2_In21K_518",
        "v1.1.0",
        ("franca_vitl14", "DINOV2_IN21K_518"),
        "DINOv2 baseline ViT-L/14, ImageNet-21K, 518 px",
        rasa=True,
    ),
    _franca(
        "franca_vitg14_laion600m",
        "vitg14",
        "Laion600M",
        "v1.0.0",
        ("franca_vitg14", "LAION"),
        "Franca ViT-g/14, LAION-600M (three tar.gz parts)",
        rasa=True,
        parts=True,
    ),
] + [_dinov2(s, reg) for reg in (False, True) for s in ("vits14", "vitb14", "vitl14", "vitg14")]
# DINOv3 (hashes and file names from the official hub/backbones.py; gated: files granted on request)
_ALL += [
    _dinov3("dinov3_vits16", "08c60483", "ViT-S/16"),
    _dinov3("dinov3_vits16plus", "4057cbaa", "ViT-S+/16 (SwiGLU)"),
    _dinov3("dinov3_vitb16", "73cec8be", "ViT-B/16"),
    _dinov3("dinov3_vitl16", "8aa4cbdd", "ViT-L/16"),
    _dinov3("dinov3_vitl16", "eadcf0ff", "ViT-L/16", weights="SAT493M"),
    _dinov3("dinov3_vitl16plus", "46503df0", "ViT-L+/16 (SwiGLU)"),
    _dinov3("dinov3_vith16plus", "7c1da9a5", "ViT-H+/16 (SwiGLU)"),
]

RELEASES: dict[str, Release] = {r.name: r for r in _ALL}


def release_names() -> list[str]:
    return sorted(RELEASES)


def is_release(name: str | None) -> bool:
    return bool(name) and str(name).lower() in RELEASES


def get_release(name: str) -> Release:
    """The release of that name (case-insensitive); unknown names list the known ones."""
    key = str(name).lower()
    if key not in RELEASES:
        raise KeyError(f"unknown released model {name!r}; known: {', '.join(release_names())}")
    return RELEASES[key]


def hub_release(entry: str, weights: str) -> Release:
    """The release behind an official hub call `entry(weights=...)` (weights matched case-insensitively)."""
    w = str(weights).upper()
    for r in RELEASES.values():
        if r.hub[0] == entry and r.hub[1].upper() == w:
            return r
    known = sorted(r.hub[1] for r in RELEASES.values() if r.hub[0] == entry)
    raise ValueError(f"{entry}: weights={weights!r} are not released; available: {', '.join(known)}")
