"""Grad-CAM: which regions of the film drove the bone age, as a heatmap over the model's input.

Grad-CAM (Selvaraju et al., ICCV 2017) weights the feature maps of the backbone's last
convolutional stage by the mean gradient of the output (months) with respect to them. The
classic map keeps the positive part of the weighted sum (what raised a class score); a bone age is a
regression, and a network can move its estimate mostly downward from its starting point (the
shipped model does so on every region of every film, and the positive part is then empty), so the
map here is the magnitude of the weighted sum: where the features moved the estimate most, in
either direction. It needs gradients, so it runs under a local ``torch.enable_grad()`` outside any
inference-mode context and leaves no gradient on the model's parameters.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import torch
from torch import nn

from boneage.clinical import HEATMAP_CAPTION
from boneage.network.model import BoneAgeNet
from boneage.prepare.stages import to_unit_float


def target_layer(model: BoneAgeNet) -> nn.Module:
    """The layer its backbone's spec names (:attr:`BackboneSpec.cam_layer`): the last convolutional stage."""
    return model.cam_layer


def grad_cam(model: BoneAgeNet, image: np.ndarray, male: float, device: torch.device | str = "cpu") -> np.ndarray:
    """H x W map in [0, 1] for one preprocessed uint8 image (all zeros only if no region moved the estimate)."""
    device = torch.device(device)
    layer = target_layer(model)
    captured: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["act"] = output

    handle = layer.register_forward_hook(keep)
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode(False), torch.enable_grad():
            x = torch.from_numpy(to_unit_float(image[None])[:, None]).to(device)
            s = torch.tensor([float(male)], device=device)
            y = model(x, s)
            model.zero_grad(set_to_none=True)
            y.sum().backward()
            act, grad = captured["act"].detach(), captured["act"].grad.detach()
        model.zero_grad(set_to_none=True)
    finally:
        handle.remove()
        model.train(was_training)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = (weights * act).sum(dim=1).abs()[0].float().cpu().numpy()
    cam = cv2.resize(cam, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    top = float(cam.max())
    return (cam / top).astype(np.float32) if top > 0 else np.zeros_like(cam, dtype=np.float32)


DISPLAY_SIZE = 384  # a model input of 112 px is too small to read on a page or in a report: shown at least this big
CAPTION = HEATMAP_CAPTION
COLOUR_MAP = "jet"


def display_size(shape: tuple[int, ...], aspect: float | None = None) -> tuple[int, int]:
    """(width, height) for showing a model input: its long side at least ``DISPLAY_SIZE``, and at ``aspect``
    (width / height: the hand's proportions on the film, :attr:`PreprocessResult.hand_aspect`) when known."""
    height, width = shape[:2]
    aspect = aspect or width / height
    long_side = max(height, width, DISPLAY_SIZE)
    return (long_side, max(1, round(long_side / aspect))) if aspect >= 1 else (max(1, round(long_side * aspect)), long_side)


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45, aspect: float | None = None) -> np.ndarray:
    """RGB uint8: the heatmap (``COLOUR_MAP``) blended over the grey radiograph, only where it is warm; at least
    ``DISPLAY_SIZE`` big, and at the hand's proportions on the film when ``aspect`` is given."""
    from matplotlib import colormaps

    size = display_size(image.shape, aspect)
    if size != (image.shape[1], image.shape[0]):
        image = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
        cam = cv2.resize(cam, size, interpolation=cv2.INTER_LINEAR)
    grey = np.repeat(image[..., None].astype(np.float32) / 255.0, 3, axis=2)
    colour = colormaps[COLOUR_MAP](cam)[..., :3].astype(np.float32)
    weight = alpha * np.clip(cam, 0.0, 1.0)[..., None]
    return np.clip(255.0 * ((1 - weight) * grey + weight * colour), 0, 255).astype(np.uint8)


def overlay_png(image: np.ndarray, cam: np.ndarray, aspect: float | None = None) -> bytes:
    """The bare overlay as PNG bytes (the endpoint sends it as base64; its page adds the caption)."""
    rgb = overlay(image, cam, aspect=aspect)
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("could not encode the heatmap as PNG")
    return data.tobytes()


def colour_bar(fig, ax) -> None:
    """The heatmap's scale beside ``ax``: 0 (no effect) to 1 (the strongest effect on this film)."""
    from matplotlib import cm, colors

    bar = fig.colorbar(cm.ScalarMappable(colors.Normalize(0, 1), COLOUR_MAP), ax=ax, fraction=0.05, pad=0.03,
                       ticks=[0, 0.5, 1])
    bar.set_label("effect (1: strongest)", fontsize=8)
    bar.ax.tick_params(labelsize=7)


def figure_png(image: np.ndarray, cam: np.ndarray, aspect: float | None = None, title: str | None = None) -> bytes:
    """A self-explaining heatmap file (``boneage predict --heatmap``): the overlay at the hand's proportions,
    its colour bar and :data:`CAPTION`."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rgb = overlay(image, cam, aspect=aspect)
    height, width = rgb.shape[:2]
    fig, ax = plt.subplots(figsize=(5.0, 4.2 * height / width + 1.0), dpi=110, layout="constrained")
    ax.imshow(rgb)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    colour_bar(fig, ax)
    fig.supxlabel("\n".join(textwrap.wrap(CAPTION, 85)), fontsize=7, color="#333")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
