"""The seed's U-Net hand segmenter: a compact PyTorch U-Net run on overlapping 128x128 patches.

The network runs at ``work_size`` (long side, 256 px by default): a hand outline needs no more, and
a 128 px patch then sees half the hand, enough context to tell a forearm from a bright film edge.
Patch probabilities are averaged back into one map (seed: stride 96), thresholded, and the largest
component kept; contour fill and the 11x11 dilation follow in ``boneage.prepare.stages.hand_mask``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from boneage.configs import from_known_dict
from boneage.devices import bf16_fast, select_device
from boneage.files.payload import read_payload, write_payload
from boneage.prepare.segmentation.classical import largest_component, stretch
from boneage.prepare.segmentation.weights import weights_uri

log = logging.getLogger(__name__)

FORMAT = "boneage-unet"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class UNetConfig:
    """Architecture and how it is applied; saved with the weights so they are always used as trained."""

    base_channels: int = 8
    depth: int = 4
    patch_size: int = 128
    stride: int = 96
    work_size: int = 256
    threshold: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> UNetConfig:
        return from_known_dict(cls, data, "U-Net config")


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """Ronneberger et al. (2015) with padded convolutions and batch norm; one logit per pixel."""

    def __init__(self, base_channels: int = 16, depth: int = 4):
        super().__init__()
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([_double_conv(1, widths[0])])
        self.down.extend(_double_conv(widths[i], widths[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth)))
        self.merge = nn.ModuleList(_double_conv(2 * widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for up, merge in zip(self.up, self.merge, strict=True):
            x = merge(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)


def fold_batch_norms(model: UNet) -> UNet:
    """An inference copy with each batch norm folded into the convolution before it (same outputs, fewer
    passes over memory). Done module by module, not with torch.fx: tracing patches ``nn.Module.__call__``
    for the whole process, which breaks other threads running their networks meanwhile (``boneage listen``)."""
    fused = copy.deepcopy(model).eval()
    for block in fused.modules():
        if isinstance(block, nn.Sequential):
            for i in range(len(block) - 1):
                if isinstance(block[i], nn.Conv2d) and isinstance(block[i + 1], nn.BatchNorm2d):
                    block[i] = fuse_conv_bn_eval(block[i], block[i + 1])
                    block[i + 1] = nn.Identity()
    return fused


def patch_starts(length: int, patch: int, stride: int) -> list[int]:
    """Patch offsets along one axis: every ``stride``, plus one flush with the end so all is covered."""
    if length <= patch:
        return [0]
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


def predict_patches(image: np.ndarray, predict: Callable[[np.ndarray], np.ndarray], patch: int, stride: int,
                    batch_size: int = 64) -> np.ndarray:
    """Apply ``predict`` (N x P x P -> N x P x P) on overlapping patches and average the overlaps.

    Images smaller than a patch are zero-padded (the background of a radiograph) and cropped back.
    """
    h, w = image.shape
    padded = np.pad(image, ((0, max(0, patch - h)), (0, max(0, patch - w))))
    ph, pw = padded.shape
    corners = [(y, x) for y in patch_starts(ph, patch, stride) for x in patch_starts(pw, patch, stride)]
    total = np.zeros((ph, pw), np.float64)
    count = np.zeros((ph, pw), np.float64)
    for start in range(0, len(corners), batch_size):
        group = corners[start : start + batch_size]
        out = predict(np.stack([padded[y : y + patch, x : x + patch] for y, x in group]))
        for (y, x), values in zip(group, out, strict=True):
            total[y : y + patch, x : x + patch] += values
            count[y : y + patch, x : x + patch] += 1
    return (total / count)[:h, :w].astype(np.float32)


def predict_whole(image: np.ndarray, predict: Callable[[np.ndarray], np.ndarray], multiple: int) -> np.ndarray:
    """Apply ``predict`` (N x H x W -> N x H x W) to the whole image at once, zero-padded to a multiple of
    ``multiple`` (the U-Net halves it ``depth`` times) and cropped back."""
    h, w = image.shape
    padded = np.pad(image, ((0, -h % multiple), (0, -w % multiple)))
    return predict(padded[None])[0][:h, :w].astype(np.float32)


def network_input(image: np.ndarray, work_size: int) -> np.ndarray:
    """uint8 image -> float32 in [0, 1] at ``work_size`` long side, contrast-stretched like the classical path,
    so training and inference see the same input."""
    h, w = image.shape
    scale = work_size / max(h, w)
    if scale != 1:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    return stretch(image).astype(np.float32) / 255.0


def shipped_weights_uri() -> str:
    return weights_uri("unet")


def save_unet(uri: str, model: UNet, config: UNetConfig, metadata: dict) -> None:
    """Weights (fp16: the default file is about 1 MB), config and how they were trained, in one file."""
    state = {k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu())
             for k, v in model.state_dict().items()}
    write_payload(uri, {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_dict(),
                        "metadata": metadata, "state_dict": state})


class UNetSegmenter:
    """``Segmenter`` interface over a trained U-Net; build once per process (it holds the model)."""

    def __init__(self, model: UNet, config: UNetConfig, metadata: dict | None = None, device: str | None = None):
        self.config = config
        self.metadata = metadata or {}
        self.device = select_device(device)
        self.model = model.to(self.device).eval()  # as trained: what is saved and fine-tuned
        # Inference runs a copy with each batch norm folded into its convolution, in channels_last
        # (oneDNN's layout) and, where bf16 is fast, under bf16 autocast: 10 -> 5.5 ms for a 128 px film on
        # one core of the development machine, with the held-out MAE unchanged (README "Benchmark").
        self._inference = fold_batch_norms(self.model).to(memory_format=torch.channels_last)
        self.amp = bf16_fast(self.device)

    @classmethod
    def load(cls, uri: str | None = None, device: str | None = None) -> UNetSegmenter:
        """From ``uri``, else the weights shipped in the package."""
        uri = uri or shipped_weights_uri()
        payload, _ = read_payload(uri, FORMAT, FORMAT_VERSION)
        config = UNetConfig.from_dict(payload["config"])
        model = UNet(config.base_channels, config.depth)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()})
        log.debug("U-Net segmenter loaded from %s", uri)
        return cls(model, config, payload.get("metadata", {}), device)

    @torch.inference_mode()
    def _predict(self, patches: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(patches[:, None])).to(self.device)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self._inference(x)
        return torch.sigmoid(logits.float())[:, 0].cpu().numpy()

    def probabilities(self, image: np.ndarray, work_size: int | None = None, patches: bool = True) -> np.ndarray:
        """Hand probability per pixel of ``image`` (uint8, any size); ``work_size`` overrides the trained one
        (a 100 px film segments as well at 128 as at 256, in one patch instead of nine); ``patches=False``
        runs the whole image in one pass instead of overlapping patches (fewer pixels computed)."""
        c = self.config
        small = network_input(image, work_size or c.work_size)
        if patches:
            prob = predict_patches(small, self._predict, c.patch_size, c.stride)
        else:
            prob = predict_whole(small, self._predict, 2**c.depth)
        if prob.shape != image.shape:
            prob = cv2.resize(prob, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
        return prob

    def __call__(self, image: np.ndarray, work_size: int | None = None, patches: bool = True) -> np.ndarray:
        binary = np.where(self.probabilities(image, work_size, patches) > self.config.threshold, 255, 0).astype(np.uint8)
        return largest_component(binary)
