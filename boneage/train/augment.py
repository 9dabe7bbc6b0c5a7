"""On-the-fly training augmentation (the seed's rotation, translation, zoom and contrast changes).

torchvision transforms v2 on tensors, so it runs wherever the batch is (the GPU when there is one)
and the cache holds each image once. v2 draws one set of random parameters per call, so each sample
gets its own call: a repeated image (see ``boneage.train.weighting``) is augmented differently every time.

``low_res`` is resolution augmentation: a share of the samples is sampled down to a hand of 100 px film
size and back up, so a model trained on high-resolution crops and on rsna-100px ones (``boneage train
--mix``) learns both looks as one age, not the blur as "younger".
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
    low_res: float = 0.0  # chance that a sample is sampled down to a side in ``low_res_sizes`` and back up
    # the hand's box in a 100 x 100 px squashed film is about 55-90 px on a side
    low_res_sizes: tuple[int, int] = (56, 96)

    def __post_init__(self) -> None:
        if min(self.rotation_degrees, self.translate, self.zoom, self.contrast, self.brightness) < 0:
            raise ValueError("augmentation amounts must be >= 0")
        if self.translate >= 1 or self.zoom >= 1:
            raise ValueError("translate and zoom are fractions of the image, below 1")
        if not 0 <= self.low_res <= 1:
            raise ValueError(f"low_res is a chance between 0 and 1, not {self.low_res}")
        object.__setattr__(self, "low_res_sizes", tuple(int(n) for n in self.low_res_sizes))  # from JSON: a list
        if len(self.low_res_sizes) != 2 or not 0 < self.low_res_sizes[0] <= self.low_res_sizes[1]:
            raise ValueError(f"low_res_sizes is (smallest, largest) side in px, not {self.low_res_sizes}")

    def to_dict(self) -> dict:
        return asdict(self)


class LowResolution(torch.nn.Module):
    """C x H x W -> the same size, sampled down (area average, as a squash to 100 px is) to a random side
    in ``sizes`` and back up bilinearly: the detail of a 100 px film, the framing unchanged."""

    def __init__(self, sizes: tuple[int, int]) -> None:
        super().__init__()
        self.sizes = sizes

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        side = int(torch.randint(self.sizes[0], self.sizes[1] + 1, (1,)))
        small = torch.nn.functional.interpolate(image[None], size=(side, side), mode="area")
        return torch.nn.functional.interpolate(small, size=image.shape[-2:], mode="bilinear",
                                               align_corners=False)[0]


def build_augmentation(config: AugmentConfig) -> v2.Transform:
    steps: list[v2.Transform] = [
        v2.RandomAffine(degrees=config.rotation_degrees, translate=(config.translate, config.translate),
                        scale=(1 - config.zoom, 1 + config.zoom), fill=0.0),
        v2.ColorJitter(brightness=config.brightness, contrast=config.contrast),
    ]
    if config.flip:
        steps.insert(0, v2.RandomHorizontalFlip())
    if config.low_res:
        steps.insert(0, v2.RandomApply([LowResolution(config.low_res_sizes)], p=config.low_res))
    return v2.Compose(steps)


def augment_batch(images: torch.Tensor, transform: v2.Transform) -> torch.Tensor:
    """N x 1 x H x W in [0, 1] -> the same shape, each sample with its own random draw."""
    return torch.stack([transform(image) for image in images]).clamp_(0.0, 1.0)
