"""torch.hub entry points with the official Franca hub's names and keyword arguments, plus DINOv2's and DINOv3's.

    model = torch.hub.load(CLONE_DIR, "franca_vitb14", source="local", weights="IN21K")
    model = torch.hub.load(CLONE_DIR, "franca_vitl14", source="local", weights="LAION", use_rasa_head=True)
    model = torch.hub.load(CLONE_DIR, "dinov2_vits14_reg", source="local")

`weights` takes the official tags (IN21K, IN21K_224, LAION, LAION_224, LAION_518, DINOV2_IN21K,
DINOV2_IN21K_518; case-insensitive). Files are downloaded once into franca's cache
(franca.models.hub) and loaded by `franca.load_backbone`, so the model is this project's backbone:
`forward_features(x, use_rasa_head=...)` returns the official dict keys. `use_rasa_head=True` also
fetches the RASA head released with the weights. `pretrained=False` gives random weights of that
architecture. `img_size`, if given, must equal the file's own (the position grid comes from the file;
inputs of any size work).

DINOv3 (`dinov3_vits16`, `dinov3_vits16plus`, `dinov3_vitb16`, `dinov3_vitl16`, `dinov3_vitl16plus`,
`dinov3_vith16plus`) take the official hub's `weights`: a tag (LVD1689M; SAT493M for the ViT-L), which finds
the gated file in franca's cache or torch.hub's checkpoints folder, or a local file.
"""

from __future__ import annotations

from typing import Any

dependencies = ["torch", "timm", "safetensors"]


def _load(
    entry: str,
    *,
    pretrained: bool,
    weights: str,
    use_rasa_head: bool = False,
    img_size: int | None = None,
    **kwargs: Any,
):
    import franca
    from franca.models.releases import hub_release

    rel = hub_release(entry, weights)
    if not pretrained:
        arch: dict[str, Any] = {"img_size": img_size or 224}
        if rel.name.startswith("dinov2_"):
            arch.update(ffn="swiglu" if rel.size == "vitg14" else "mlp", layerscale=1.0, img_size=img_size or 518)
            if rel.name.endswith("_reg"):
                arch.update(num_register_tokens=4, interpolate_offset=0.0, interpolate_antialias=True)
        return franca.build_backbone(rel.size, **{**arch, **kwargs})
    model = franca.load_backbone(rel.name, rasa=True if use_rasa_head else None, **kwargs)
    if img_size is not None and int(img_size) != model.img_size:
        raise ValueError(
            f"{rel.name} has a {model.pos_grid}x{model.pos_grid} position grid (img_size "
            f"{model.img_size}), not img_size={img_size}; leave img_size out, any input size works"
        )
    return model


def franca_vitb14(*, pretrained: bool = True, weights: str = "IN21K", **kwargs: Any):
    """Franca ViT-B/14 (IN21K, IN21K_224) or the DINOv2 baseline (DINOV2_IN21K, DINOV2_IN21K_518)."""
    return _load("franca_vitb14", pretrained=pretrained, weights=weights, **kwargs)


def franca_vitl14(*, pretrained: bool = True, weights: str = "IN21K", **kwargs: Any):
    """Franca ViT-L/14 (IN21K, LAION, LAION_224, LAION_518) or the DINOv2 baseline (DINOV2_IN21K[_518])."""
    return _load("franca_vitl14", pretrained=pretrained, weights=weights, **kwargs)


def franca_vitg14(*, pretrained: bool = True, weights: str = "LAION", **kwargs: Any):
    """Franca ViT-g/14 (LAION: the release in three tar.gz parts)."""
    return _load("franca_vitg14", pretrained=pretrained, weights=weights, **kwargs)


def _dinov2(entry: str):
    def load(*, pretrained: bool = True, weights: str = "LVD142M", **kwargs: Any):
        return _load(entry, pretrained=pretrained, weights=weights, **kwargs)

    load.__name__ = entry
    load.__doc__ = f"DINOv2 {entry[7:]} (LVD-142M), the official file."
    return load


dinov2_vits14 = _dinov2("dinov2_vits14")
dinov2_vitb14 = _dinov2("dinov2_vitb14")
dinov2_vitl14 = _dinov2("dinov2_vitl14")
dinov2_vitg14 = _dinov2("dinov2_vitg14")
dinov2_vits14_reg = _dinov2("dinov2_vits14_reg")
dinov2_vitb14_reg = _dinov2("dinov2_vitb14_reg")
dinov2_vitl14_reg = _dinov2("dinov2_vitl14_reg")
dinov2_vitg14_reg = _dinov2("dinov2_vitg14_reg")


def _dinov3(entry: str):
    def load(*, pretrained: bool = True, weights: Any = "LVD1689M", **kwargs: Any):
        import franca
        from franca.models.releases import hub_release

        if not pretrained:
            return franca.build_backbone(entry, **kwargs)
        tag = str(getattr(weights, "value", weights))  # the official hub's Weights enum, a tag or a local path
        if "://" in tag:
            raise ValueError(
                f"{entry}: weights={tag!r} is a URL; DINOv3 files are never downloaded here. Download it "
                f"(wget) and pass the local file: weights='/path/to/{tag.rsplit('/', 1)[-1].split('?')[0]}'"
            )
        if tag.endswith((".pth", ".pt", ".safetensors")) or "/" in tag:
            return franca.load_backbone(entry, weights=tag, **kwargs)
        return franca.load_backbone(hub_release(entry, tag).name, **kwargs)

    load.__name__ = entry
    load.__doc__ = (
        f"DINOv3 {entry[7:]}: weights='LVD1689M' (or SAT493M for the ViT-L) finds the gated file where franca "
        f"and torch.hub keep it; weights=FILE loads a local file; pretrained=False gives random weights."
    )
    return load


dinov3_vits16 = _dinov3("dinov3_vits16")
dinov3_vits16plus = _dinov3("dinov3_vits16plus")
dinov3_vitb16 = _dinov3("dinov3_vitb16")
dinov3_vitl16 = _dinov3("dinov3_vitl16")
dinov3_vitl16plus = _dinov3("dinov3_vitl16plus")
dinov3_vith16plus = _dinov3("dinov3_vith16plus")
