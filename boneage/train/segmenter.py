"""Training the U-Net hand segmenter on (image, binary mask) pairs, and bootstrapping such masks.

The seed trained on 100 hand-drawn masks: 128x128 patches, binary cross-entropy, Adam, 50 epochs.
Without drawn masks, ``bootstrap_masks`` makes them with the classical segmenter and keeps only the
ones a quality check accepts; a person looks at the montage it writes and excludes what is wrong.
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn

from boneage import __version__
from boneage.devices import select_device
from boneage.errors import ImageReadError
from boneage.files import storage
from boneage.files.images import read_image
from boneage.files.montage import montage
from boneage.prepare.segmentation.classical import classical_segmenter
from boneage.prepare.segmentation.unet import UNet, UNetConfig, UNetSegmenter, network_input, save_unet
from boneage.prepare.stages import PreprocessConfig, contrast_score, fill_contours, resize_long_side

log = logging.getLogger(__name__)


@dataclass
class Pair:
    """One training example at the network's working size: image in [0, 1], mask in {0, 1}."""

    id: str
    image: np.ndarray
    mask: np.ndarray


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Overlap of two binary masks (any non-zero is foreground); 1.0 when both are empty."""
    a, b = a > 0, b > 0
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def mask_quality(mask: np.ndarray, contrast: float) -> tuple[dict, str | None]:
    """Measures of a filled 0/255 mask, and why it is not a plausible hand (None when it is).

    A hand mask covers a sane share of the film and is one solid-ish shape (fingers lower the
    solidity, a film edge or a box glued on raises it). The forearm leaves the film at the bottom
    and a thumb may touch a side, but a mask running along most of an edge has swallowed a film
    border or an unexposed strip. Very flat films (contrast below 0.05) give no trustworthy outline.
    """
    fg = mask > 0
    fraction = float(fg.mean())
    edges = {"top": fg[0].mean(), "bottom": fg[-1].mean(), "left": fg[:, 0].mean(), "right": fg[:, -1].mean()}
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull_area = cv2.contourArea(cv2.convexHull(np.vstack(contours))) if contours else 0.0
    solidity = float(fg.sum()) / hull_area if hull_area else 0.0
    stats = {"contrast": round(contrast, 4), "hand_fraction": round(fraction, 4), "solidity": round(solidity, 4),
             **{f"edge_{k}": round(float(v), 3) for k, v in edges.items()}}
    if contrast < 0.05:
        return stats, f"contrast {contrast:.3f} too low to trust an outline"
    if not 0.15 <= fraction <= 0.75:
        return stats, f"hand fraction {fraction:.2f} outside 0.15-0.75"
    along = [k for k, v in edges.items() if v > (0.85 if k in ("top", "bottom") else 0.40)]
    if along:
        return stats, f"mask runs along the {', '.join(along)} edge"
    if not 0.45 <= solidity <= 0.90:
        return stats, f"solidity {solidity:.2f} outside 0.45-0.90"
    return stats, None


def _outline(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with the mask's outline drawn in white, for montages a person can judge at a glance."""
    out = image.copy()
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, 255, max(1, image.shape[0] // 200))
    return out


def write_montage(uri: str, rows: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> None:
    """(caption, left image, right image) rows as one PNG."""
    ok, png = cv2.imencode(".png", montage(list(rows)))
    storage.write_bytes(uri, png.tobytes())


def bootstrap_masks(inputs: Sequence[str], out_dir: str, montage_uri: str | None = None,
                    exclude: dict[str, str] | None = None, config: PreprocessConfig | None = None) -> dict:
    """Classical masks for every image, quality-checked; accepted ones written as ``OUT/<id>.png``.

    ``exclude`` maps ids a person rejected after looking at the montage to the reason. Every image
    gets a row in ``OUT/quality.csv`` (measures and verdict), so nothing is dropped silently.
    """
    config = config or PreprocessConfig()
    exclude = exclude or {}
    out_dir = out_dir.rstrip("/")
    rows, accepted_views, rejected_views = [], [], []
    for uri in storage.list_inputs(inputs):
        fid = storage.file_id(uri)
        try:
            small = resize_long_side(read_image(uri).pixels, config.segment_size)
        except ImageReadError as exc:
            rows.append({"id": fid, "path": uri, "verdict": "failed", "reason": str(exc)})
            continue
        mask = fill_contours(classical_segmenter(small))
        stats, reason = mask_quality(mask, contrast_score(small))
        if reason is None and fid in exclude:
            reason = f"excluded on review: {exclude[fid]}"
        verdict = "accepted" if reason is None else "rejected"
        rows.append({"id": fid, "path": uri, "verdict": verdict, "reason": reason or "", **stats})
        view = (f"{fid} {reason or ''}", small, _outline(small, mask))
        if reason is None:
            _, png = cv2.imencode(".png", mask)
            storage.write_bytes(f"{out_dir}/{fid}.png", png.tobytes())
            accepted_views.append(view)
        else:
            rejected_views.append(view)
    columns = ["id", "path", "verdict", "reason", "contrast", "hand_fraction", "solidity",
               "edge_top", "edge_bottom", "edge_left", "edge_right"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns)
    writer.writeheader()
    writer.writerows(rows)
    storage.write_bytes(f"{out_dir}/quality.csv", buf.getvalue().encode())
    if montage_uri:
        if accepted_views:
            write_montage(montage_uri, accepted_views)
        if rejected_views:
            write_montage(montage_uri.replace(".png", "-rejected.png"), rejected_views)
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("accepted", "rejected", "failed")}
    return {"total": len(rows), **counts}


def read_exclusions(uri: str) -> dict[str, str]:
    """``id,reason`` rows (a header line ``id,reason``) of masks a person rejected on review."""
    rows = csv.DictReader(io.StringIO(storage.read_bytes(uri).decode()))
    return {row["id"].strip(): row.get("reason", "").strip() for row in rows}


def load_pairs(images: Sequence[str], masks_dir: str, work_size: int) -> tuple[list[Pair], list[str]]:
    """Images that have a mask ``MASKS/<same stem>.png``, both at ``work_size``; also the ids without one."""
    masks = {storage.file_id(uri): uri for uri in storage.list_inputs([masks_dir]) if uri.endswith(".png")}
    pairs, missing = [], []
    for uri in storage.list_inputs(images):
        fid = storage.file_id(uri)
        if fid not in masks:
            missing.append(fid)
            continue
        image = network_input(read_image(uri).pixels, work_size)
        mask = read_image(masks[fid]).pixels
        mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_AREA)
        pairs.append(Pair(fid, image, (mask > 127).astype(np.float32)))
    return pairs, missing


def _augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Flip (left and right hands), small rotation and zoom, and exposure changes (gamma, gain)."""
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    h, w = image.shape
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(-15, 15)), float(rng.uniform(0.85, 1.15)))
    image = cv2.warpAffine(np.ascontiguousarray(image), matrix, (w, h), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(np.ascontiguousarray(mask), matrix, (w, h), flags=cv2.INTER_NEAREST)
    image = np.clip(image, 0, 1) ** float(rng.uniform(0.6, 1.6)) * float(rng.uniform(0.75, 1.1))
    return image.astype(np.float32), mask


def sample_patches(pairs: Sequence[Pair], per_image: int, patch: int, rng: np.random.Generator,
                   augment: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Random ``patch`` x ``patch`` crops (N x P x P images and masks), ``per_image`` from each pair."""
    images, masks = [], []
    for pair in pairs:
        image, mask = _augment(pair.image, pair.mask, rng) if augment else (pair.image, pair.mask)
        image = np.pad(image, ((0, max(0, patch - image.shape[0])), (0, max(0, patch - image.shape[1]))))
        mask = np.pad(mask, ((0, max(0, patch - mask.shape[0])), (0, max(0, patch - mask.shape[1]))))
        h, w = image.shape
        for _ in range(per_image):
            y, x = int(rng.integers(0, h - patch + 1)), int(rng.integers(0, w - patch + 1))
            images.append(image[y : y + patch, x : x + patch])
            masks.append(mask[y : y + patch, x : x + patch])
    return np.stack(images).astype(np.float32), np.stack(masks).astype(np.float32)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               masks: torch.Tensor) -> float:
    """One Adam step on binary cross-entropy; returns the batch loss before the step."""
    loss = nn.functional.binary_cross_entropy_with_logits(model(images), masks)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


@dataclass(frozen=True)
class UNetRecipe:
    """How the U-Net is trained (the seed's recipe: patches, BCE on logits, Adam); recorded in the weights."""

    epochs: int = 50
    per_image: int = 8  # random patches per image per epoch
    batch_size: int = 32  # patches per step
    lr: float = 1e-3
    seed: int = 0  # of the weights and the patches


@dataclass(frozen=True)
class MaskedFilms:
    """What a segmenter is trained on: IMAGES with their masks in ``masks_dir`` (same stem, .png).
    ``check_masks`` are (image, reference mask) URIs never trained on: their Dice is recorded in the
    weights, so the file says how good it was when it was made."""

    images: Sequence[str]
    masks_dir: str
    mask_source: str = "user-supplied masks"  # recorded in the weights: where the masks came from
    check_masks: Sequence[tuple[str, str]] = ()


def train_unet(pairs: Sequence[Pair], config: UNetConfig | None = None, recipe: UNetRecipe | None = None, *,
               device: str | None = None, model: UNet | None = None) -> tuple[UNet, list[float]]:
    """The seed's recipe: patches, BCE on logits, Adam. Returns the model and the mean loss per epoch."""
    config = config or UNetConfig()
    recipe = recipe or UNetRecipe()
    epochs, batch_size = recipe.epochs, recipe.batch_size
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    dev = select_device(device)
    model = (model or UNet(config.base_channels, config.depth)).to(dev).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    history = []
    for epoch in range(epochs):
        start = time.perf_counter()
        images, masks = sample_patches(pairs, recipe.per_image, config.patch_size, rng)
        order = rng.permutation(len(images))
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            x = torch.from_numpy(images[idx][:, None]).to(dev)
            y = torch.from_numpy(masks[idx][:, None]).to(dev)
            total += train_step(model, optimizer, x, y) * len(idx)
        history.append(total / len(order))
        log.info("epoch %d/%d  loss %.4f  %.1fs", epoch + 1, epochs, history[-1], time.perf_counter() - start)
    return model.eval(), history


def train_segmenter(films: MaskedFilms, out: str, config: UNetConfig | None = None,
                    recipe: UNetRecipe | None = None, *, device: str | None = None, init: UNet | None = None) -> dict:
    """Train on ``films``, write the weights file to ``out``; returns its metadata."""
    config = config or UNetConfig()
    recipe = recipe or UNetRecipe()
    images, masks_dir, check_masks = films.images, films.masks_dir, films.check_masks
    held_out = {storage.file_id(image) for image, _ in check_masks}
    pairs, missing = load_pairs(images, masks_dir, config.work_size)
    pairs = [p for p in pairs if p.id not in held_out]
    if not pairs:
        raise ValueError(f"no image in {list(images)} has a mask in {masks_dir} (same file stem, .png)")
    if missing:
        log.warning("%d image(s) have no mask and are not used, e.g. %s", len(missing), missing[:5])
    log.info("training the U-Net on %d image/mask pairs", len(pairs))
    start = time.perf_counter()
    model, history = train_unet(pairs, config, recipe, device=device, model=init)
    segmenter = UNetSegmenter(model, config, device=device)
    checks = {}
    for image_uri, mask_uri in check_masks:
        pixels = read_image(image_uri).pixels
        reference = read_image(mask_uri).pixels
        small = resize_long_side(pixels, PreprocessConfig().segment_size)
        predicted = cv2.resize(fill_contours(segmenter(small)), (reference.shape[1], reference.shape[0]),
                               interpolation=cv2.INTER_NEAREST)
        checks[storage.file_id(image_uri)] = round(dice(predicted, reference), 4)
    metadata = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "boneage_version": __version__,
        "torch_version": str(torch.__version__),
        "recipe": {"epochs": recipe.epochs, "patches_per_image": recipe.per_image, "batch_size": recipe.batch_size,
                   "lr": recipe.lr, "loss": "binary cross-entropy", "optimizer": "Adam", "seed": recipe.seed,
                   "augmentation": "flip, rotation +-15 deg, zoom 0.85-1.15, gamma 0.6-1.6, gain 0.75-1.1"},
        "mask_source": films.mask_source,
        "init": "fine-tuned from given weights" if init is not None else "random",
        "trained_on": {"images": len(pairs), "ids": sorted(p.id for p in pairs)},
        "loss_per_epoch": [round(v, 5) for v in history],
        "train_seconds": round(time.perf_counter() - start, 1),
        "dice_on_held_out_reference_masks": checks,
    }
    save_unet(out, segmenter.model.cpu(), config, metadata)
    return metadata
