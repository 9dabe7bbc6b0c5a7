"""Every registered backbone, as timm's tests run over ``list_models()``: it builds, gives one age per
image from features of the width its spec declares, survives a checkpoint round trip, and Grad-CAM
finds its layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from boneage.clinical.heatmap import grad_cam
from boneage.network import backbones
from boneage.network.backbones import BackboneSpec, get_backbone, list_backbones, register_backbone
from boneage.network.checkpoint import load_checkpoint, save_checkpoint
from boneage.network.model import ModelConfig, build_model
from boneage.prepare.stages import PRESETS

SIZE = 96  # inception_v3 needs 75 px at least


@pytest.mark.parametrize("name", list_backbones())
def test_every_registered_backbone_builds_runs_round_trips_and_explains(name):
    torch.manual_seed(0)
    spec = get_backbone(name)
    model = build_model(ModelConfig(backbone=name, hidden_units=16, output_offset=120.0, output_scale=40.0)).eval()
    x, male = torch.rand(2, 1, SIZE, SIZE), torch.tensor([0.0, 1.0])
    with torch.no_grad():
        features = model.backbone((x - spec.grey[0]) / spec.grey[1])
        out = model(x, male)
    assert features.shape == (2, spec.features)
    assert out.shape == (2,) and torch.isfinite(out).all()
    uri = f"memory://backbones/{name}.pt"
    save_checkpoint(uri, model, PRESETS["rsna100"], {"trained": True})
    loaded = load_checkpoint(uri)
    assert loaded.model.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded.model(x, male), out)
    image = (np.random.default_rng(0).random((SIZE, SIZE)) * 255).astype(np.uint8)
    cam = grad_cam(loaded.model, image, 1.0)
    assert cam.shape == (SIZE, SIZE) and 0 <= cam.min() and cam.max() == pytest.approx(1.0)
    assert all(p.grad is None for p in loaded.model.parameters())


def test_a_backbone_registered_from_outside_is_selectable(monkeypatch):
    """The how-to's example (docs/howto/add-backbone.md): a tiny network, no edit of the package."""
    monkeypatch.setattr(backbones, "_REGISTRY", dict(backbones._REGISTRY))  # registered for this test only

    def build() -> nn.Module:
        return nn.Sequential(nn.Conv2d(1, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    register_backbone(BackboneSpec("tiny_test_net", build, features=8, grey=(0.5, 0.25), cam_layer="1"))
    model = build_model(ModelConfig(backbone="tiny_test_net", hidden_units=4)).eval()
    assert model(torch.rand(1, 1, 32, 32), torch.tensor([1.0])).shape == (1,)
    assert grad_cam(model, np.full((32, 32), 128, np.uint8), 0.0).shape == (32, 32)
    with pytest.raises(ValueError, match="already registered"):
        register_backbone(BackboneSpec("tiny_test_net", build, 8, (0.5, 0.25), "1"))
    with pytest.raises(ValueError, match="registered are .*resnet34"):
        get_backbone("vgg16")
    assert get_backbone("timm/tf_efficientnet_lite0") is get_backbone("tf_efficientnet_lite0")
