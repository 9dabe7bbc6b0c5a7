"""The U-Net hand segmenter: patch reassembly, mask format, training, and the shipped weights."""

from __future__ import annotations

import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest
import torch

from boneage.prepare import segmentation
from boneage.prepare.segmentation import classical_segmenter, get_segmenter
from boneage.prepare.segmentation.unet import (
    UNet,
    UNetConfig,
    UNetSegmenter,
    fold_batch_norms,
    network_input,
    patch_starts,
    predict_patches,
    shipped_weights_uri,
)
from boneage.prepare.stages import PreprocessConfig, fill_contours, preprocess, resize_long_side
from boneage.train.segmenter import Pair, UNetRecipe, load_pairs, sample_patches, train_step, train_unet
from tests.helpers import FIXTURES, ROOT, dice, load_grey


@pytest.fixture(scope="module")
def shipped() -> UNetSegmenter:
    return UNetSegmenter.load()


@pytest.mark.parametrize("length", [50, 128, 129, 256, 300, 517])
def test_patch_starts_cover_every_pixel_and_end_flush(length):
    starts = patch_starts(length, 128, 96)
    covered = np.zeros(max(length, 128), bool)
    for s in starts:
        covered[s : s + 128] = True
    assert covered.all()
    assert starts[-1] == max(0, length - 128)
    assert all(b - a <= 96 for a, b in zip(starts, starts[1:], strict=False))


@pytest.mark.parametrize("shape", [(256, 200), (128, 128), (100, 60), (517, 301)])
def test_overlapping_patch_reassembly_is_exact(shape):
    constant = np.full(shape, 0.7, np.float32)
    calls = []

    def identity(patches: np.ndarray) -> np.ndarray:
        calls.append(len(patches))
        assert patches.shape[1:] == (128, 128)
        return patches

    assert np.array_equal(predict_patches(constant, identity, 128, 96), constant)
    assert sum(calls) == len(patch_starts(max(shape[0], 128), 128, 96)) * len(patch_starts(max(shape[1], 128), 128, 96))
    noise = np.random.default_rng(0).random(shape).astype(np.float32)
    np.testing.assert_allclose(predict_patches(noise, identity, 128, 96, batch_size=3), noise, rtol=0, atol=1e-6)


def test_unet_keeps_the_patch_size():
    net = UNet(base_channels=4, depth=4).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 1, 128, 128)).shape == (2, 1, 128, 128)


def test_masks_have_the_input_shape_and_are_binary(shipped):
    image = resize_long_side(load_grey(FIXTURES / "rsna_7047.png"), 384)[:, 7:]  # odd width on purpose
    prob = shipped.probabilities(image)
    assert prob.shape == image.shape and prob.dtype == np.float32
    assert 0.0 <= prob.min() and prob.max() <= 1.0
    mask = shipped(image)
    assert mask.shape == image.shape and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 255}
    assert 0.15 < (mask > 0).mean() < 0.85


def test_shipped_weights_match_the_real_mask_fixture(shipped):
    image = load_grey(FIXTURES / "rsna_1377.png")
    reference = load_grey(FIXTURES / "rsna_1377_mask.png")
    assert dice(fill_contours(shipped(image)), reference) >= 0.9


def test_inference_copy_segments_as_the_trained_float32_model(shipped, shared_data):
    """Inference folds each batch norm into its convolution and runs bf16 where that is fast: on real films at
    the shipped model's 128 px its masks must be the trained float32 network's, to within a few edge pixels."""
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in shipped._inference.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fold_batch_norms(shipped.model).modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in shipped.model.modules())  # the saved one is untouched
    films = sorted((shared_data / "rsna" / "val").glob("*.png"))[:12]
    for path in films:
        small = network_input(cv2.resize(load_grey(path), (100, 100), interpolation=cv2.INTER_NEAREST_EXACT), 128)
        with torch.inference_mode():
            reference = torch.sigmoid(shipped.model.float()(torch.from_numpy(small)[None, None]))[0, 0].numpy()
        fast = shipped._predict(small[None])[0]
        assert np.abs(fast - reference).mean() < 0.01, path.name
        assert dice(np.where(fast > 0.5, 255, 0), np.where(reference > 0.5, 255, 0)) > 0.97, path.name


def test_the_whole_image_in_one_pass_segments_as_the_overlapping_patches(shipped):
    """``patches=False`` (PreprocessConfig.segment_patches): one pass over the whole 256 px image, padded to a
    multiple of 16, gives the mask of the trained patch-wise inference to within edge pixels, at any shape,
    and reaches the film's own pipeline (the hand's crop) through the config."""
    for name in ("rsna_1377.png", "rsna_7047.png", "rsna_3107_low_contrast.png"):
        image = resize_long_side(load_grey(FIXTURES / name), 384)[:, 3:]  # odd width on purpose
        whole, patches = shipped(image, patches=False), shipped(image)
        assert whole.shape == image.shape and set(np.unique(whole)) == {0, 255}
        assert dice(whole, patches) > 0.97, name
    from boneage.prepare.stages import hand_mask

    film = load_grey(FIXTURES / "rsna_1377.png")
    one_pass = hand_mask(film, PreprocessConfig(segment_patches=False, dilation_kernel=1)).mask
    default = hand_mask(film, PreprocessConfig(dilation_kernel=1)).mask
    assert one_pass.shape == default.shape == film.shape and 0.97 < dice(one_pass, default) < 1.0  # not the same path


def test_shipped_weights_match_the_real_mask_at_full_resolution(shared_data):
    image = load_grey(shared_data / "rsna" / "train" / "1377.png")
    reference = load_grey(shared_data / "rsna" / "masks" / "1377.png")
    config = PreprocessConfig(segmenter="unet", dilation_kernel=1)
    from boneage.prepare.stages import hand_mask

    assert dice(hand_mask(image, config).mask, reference) >= 0.9


def test_shipped_weights_say_how_they_were_trained(shipped):
    meta = shipped.metadata
    assert meta["recipe"]["loss"] == "binary cross-entropy" and meta["recipe"]["optimizer"] == "Adam"
    assert meta["trained_on"]["images"] == len(meta["trained_on"]["ids"]) > 100
    assert "1377" not in meta["trained_on"]["ids"]  # held out: the only hand-drawn mask
    assert meta["dice_on_held_out_reference_masks"]["1377"] >= 0.9
    assert len(meta["loss_per_epoch"]) == meta["recipe"]["epochs"]
    assert (ROOT / "boneage" / "prepare" / "segmentation" / "unet_hand.pt").stat().st_size < 5_000_000


def _fixture_pairs() -> list[Pair]:
    pairs = []
    for name in ("rsna_1377.png", "rsna_7047.png"):
        image = load_grey(FIXTURES / name)
        mask = fill_contours(classical_segmenter(resize_long_side(image, 256)))
        pairs.append(Pair(name, network_input(image, 256), (mask > 0).astype(np.float32)))
    return pairs


def test_a_few_training_steps_on_a_handful_of_patches_lower_the_loss():
    torch.manual_seed(0)
    images, masks = sample_patches(_fixture_pairs(), 4, 128, np.random.default_rng(0), augment=False)
    x, y = torch.from_numpy(images[:, None]), torch.from_numpy(masks[:, None])
    model = UNet(base_channels=4, depth=3).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = [train_step(model, optimizer, x, y) for _ in range(15)]
    assert losses[-1] < 0.85 * losses[0], losses


def test_training_epochs_report_their_loss():
    _, history = train_unet(_fixture_pairs(), UNetConfig(base_channels=4, depth=3),
                            UNetRecipe(epochs=2, per_image=2, batch_size=4, seed=0), device="cpu")
    assert len(history) == 2 and all(0 < h < 2 for h in history)


def test_patches_follow_their_masks():
    image = np.zeros((256, 200), np.float32)
    image[60:200, 50:150] = 1.0
    pair = Pair("box", image, image.copy())
    images, masks = sample_patches([pair], 20, 128, np.random.default_rng(0), augment=False)
    assert images.shape == masks.shape == (20, 128, 128)
    assert np.array_equal(images, masks)


def test_learned_segmenter_is_loaded_once_per_process():
    assert get_segmenter("unet") is get_segmenter("unet")


def test_the_loaders_keep_one_copy_until_their_cache_is_cleared():
    from boneage.prepare import filmcheck

    for get, clear in ((lambda: get_segmenter("unet"), segmentation.clear_cache),
                       (filmcheck.get_filmcheck, filmcheck.clear_cache)):
        first = get()
        assert get() is first
        clear()
        assert get() is not first


def test_threads_asking_for_the_segmenter_at_once_share_one_copy_and_others_run_on(shipped):
    """``boneage listen`` prepares films in several threads; the first films arrive together. The segmenter is
    built once, and building it (folding its batch norms) must not disturb a network running in another thread
    meanwhile (torch.fx tracing did: it patches every module's ``__call__`` for the whole process)."""
    name = f"unet:{shipped_weights_uri()}"  # a name of its own
    segmentation.clear_cache()  # loaded fresh here
    image = load_grey(FIXTURES / "rsna_1377.png")
    batch = torch.rand(2, 1, 128, 128)
    start, loaded = threading.Barrier(7), threading.Event()

    def load_and_segment(_):
        start.wait()
        segmenter = get_segmenter(name)
        return segmenter, segmenter(image)

    def run_another_network():
        start.wait()
        with torch.inference_mode():
            while not loaded.is_set():
                shipped.model(batch)
        return True

    with ThreadPoolExecutor(7) as pool:
        other = pool.submit(run_another_network)
        results = list(pool.map(load_and_segment, range(6)))
        loaded.set()
        assert other.result()
    assert len({id(segmenter) for segmenter, _ in results}) == 1
    assert all(np.array_equal(mask, results[0][1]) for _, mask in results)
    segmentation.clear_cache()


def test_unet_pipeline_removes_burned_in_markers():
    image = load_grey(FIXTURES / "rsna_7047.png")
    result = preprocess(image, PreprocessConfig(segmenter="unet"))
    assert result.rejection is None
    assert result.image.shape == (384, 384)


@pytest.mark.integration
def test_bootstrap_then_train_then_use_from_the_command_line(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("rsna_1377.png", "rsna_7047.png", "rsna_3107_low_contrast.png"):
        (images / name).write_bytes((FIXTURES / name).read_bytes())
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    masks = tmp_path / "masks"
    cli = [sys.executable, "-m", "boneage"]
    proc = subprocess.run([*cli, "bootstrap-masks", str(images), "--out", str(masks), "--montage",
                           str(tmp_path / "montage.png")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    quality = (masks / "quality.csv").read_text().splitlines()
    assert len(quality) == 1 + 4  # every input has a verdict, the broken file too
    assert any(line.startswith("broken,") and ",failed," in line for line in quality)
    accepted = sorted(p.stem for p in masks.glob("*.png"))
    assert "rsna_1377" in accepted and (tmp_path / "montage.png").stat().st_size > 1000

    weights = tmp_path / "unet.pt"
    proc = subprocess.run([*cli, "train-segmenter", "--images", str(images), "--masks", str(masks), "--out",
                           str(weights), "--epochs", "1", "--patches-per-image", "2", "--base-channels", "4",
                           "--device", "cpu", "--check", str(FIXTURES / "rsna_1377.png"),
                           str(FIXTURES / "rsna_1377_mask.png")], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "Dice against the reference mask of rsna_1377" in proc.stdout
    trained = UNetSegmenter.load(str(weights))
    assert trained.config.base_channels == 4
    assert "rsna_1377" not in trained.metadata["trained_on"]["ids"]  # --check images are never trained on
    config = PreprocessConfig(segmenter=f"unet:{weights}")
    assert preprocess(load_grey(FIXTURES / "rsna_7047.png"), config).image.shape == (384, 384)
    assert config.config_hash() != PreprocessConfig(segmenter="unet").config_hash()


def test_load_pairs_reports_images_without_masks(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("rsna_1377.png", "rsna_7047.png"):
        (images / name).write_bytes((FIXTURES / name).read_bytes())
    masks = tmp_path / "masks"
    masks.mkdir()
    mask = load_grey(FIXTURES / "rsna_1377_mask.png")
    cv2.imwrite(str(masks / "rsna_1377.png"), cv2.resize(mask, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST))
    pairs, missing = load_pairs([str(images)], str(masks), 256)
    assert [p.id for p in pairs] == ["rsna_1377"] and missing == ["rsna_7047"]
    assert pairs[0].image.shape == pairs[0].mask.shape and max(pairs[0].image.shape) == 256
    assert set(np.unique(pairs[0].mask)) == {0.0, 1.0}
