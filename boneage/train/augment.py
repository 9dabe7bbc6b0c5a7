"""On-the-fly training augmentation (the seed's rotation, translation, zoom and contrast changes).

torchvision transforms v2 on tensors, so it runs wherever the batch is (the GPU when there is one)
and the cache holds each image once. v2 draws one set of random parameters per call, so each sample
gets its own call: a repeated image (see ``boneage.train.weighting``) is augmented differently every time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torchvision.transforms import v2


@dataclass(frozen=True)
class AugmentConfig:
    rotation_degrees: float = 20.0
    translate: float = 0.10
    zoom: float = 0.15
    contrast: float = 0.25
    brightness: float = 0.15
    flip: bool = False  # the RSNA films are left hands; flipping would teach the model right hands

    def __post_init__(self) -> None:
        if min(self.rotation_degrees, self.translate, self.zoom, self.contrast, self.brightness) < 0:
            raise ValueError("augmentation amounts must be >= 0")
        if self.translate >= 1 or self.zoom >= 1:
            raise ValueError("translate and zoom are fractions of the image, below 1")

    def to_dict(self) -> dict:
        return asdict(self)


def build_augmentation(config: AugmentConfig) -> v2.Transform:
    steps: list[v2.Transform] = [
        v2.RandomAffine(degrees=config.rotation_degrees, translate=(config.translate, config.translate),
                        scale=(1 - config.zoom, 1 + config.zoom), fill=0.0),
        v2.ColorJitter(brightness=config.brightness, contrast=config.contrast),
    ]
    if config.flip:
        steps.insert(0, v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def augment_batch(images: torch.Tensor, transform: v2.Transform) -> torch.Tensor:
    """N x 1 x H x W in [0, 1] -> the same shape, each sample with its own random draw."""
    return torch.stack([transform(image) for image in images]).clamp_(0.0, 1.0)
