"""Which model file a segmenter reads: its content enters the preprocessing config's hash."""

from __future__ import annotations

from importlib import resources

SHIPPED_UNET = "unet_hand.pt"


def weights_uri(name: str) -> str | None:
    """The file of segmenter ``name``: the shipped U-Net's for ``unet``, ``URI`` for ``unet:URI``; None: none."""
    if name == "unet":
        return str(resources.files("boneage.prepare.segmentation") / SHIPPED_UNET)
    return name.removeprefix("unet:") if name.startswith("unet:") else None
