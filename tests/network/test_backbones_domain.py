"""Issue 15's building blocks: the rsna-100px domain transform, the packaged ImageNet EfficientNet-Lite
weights, checkpoints of both backbones, and a cosine schedule that resumes where it stopped."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch

from boneage.files.images import read_image
from boneage.network.checkpoint import load_checkpoint, save_checkpoint
from boneage.network.imagenet import efficientnet_lite as efficientnet_lite_imagenet
from boneage.network.model import ModelConfig, build_model
from boneage.prepare.stages import PRESETS, PreprocessConfig, preprocess, to_domain
from boneage.train.loop import TrainConfig, build_scheduler
from tests.helpers import FIXTURES, load_grey

MILITARY_UNIFORM = 652  # ImageNet class of matplotlib's sample photograph of Grace Hopper in uniform


@pytest.mark.parametrize("ident", ["1377", "14931"])
def test_the_domain_transform_reproduces_the_100px_files_exactly(shared_data, ident):
    film = read_image(str(shared_data / "rsna" / "train" / f"{ident}.png")).pixels
    small = load_grey(shared_data / "rsna-100px" / "images" / f"{ident}.png")
    assert film.shape[0] > 1000 and small.shape == (100, 100)
    assert np.array_equal(to_domain(film, 100), small)
    # so the shipped preset turns the full-size film and its 100 px file into the same model input
    config = PRESETS["rsna100"]
    assert np.array_equal(preprocess(film, config).image, preprocess(small, config).image)


def test_the_rsna100_preset_finds_and_fills_the_frame_with_the_hand():
    film = load_grey(FIXTURES / "rsna_1377.png")
    result = preprocess(film, PRESETS["rsna100"])
    assert result.image.shape == (112, 112) and result.rejection is None
    # stretched to the hand's box: the hand touches the frame's top and bottom, and all four sides
    # carry hand pixels rather than an empty band
    assert (result.image[:3] > 0).mean() > 0.02 and (result.image[-3:] > 0).mean() > 0.05
    assert 0.2 < result.hand_fraction < 0.8
    # without segmentation the whole (squashed) film is the input
    whole = preprocess(film, PreprocessConfig.from_dict({**PRESETS["rsna100"].to_dict(), "segment": False,
                                                         "clahe": False, "sharpen": False}))
    expected = cv2.resize(to_domain(film, 100), (112, 112), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(whole.image, expected)


def test_presets_by_name_and_json_file(tmp_path):
    assert PreprocessConfig.named("rsna100") == PRESETS["rsna100"]
    path = tmp_path / "config.json"
    path.write_text('{"output_size": 96, "clahe": false}')
    assert PreprocessConfig.named(str(path)) == PreprocessConfig(output_size=96, clahe=False)
    with pytest.raises(ValueError, match="fit"):
        PreprocessConfig(fit="crop")


def test_the_packaged_efficientnet_lite_weights_are_the_real_imagenet_ones():
    import matplotlib
    import timm
    from PIL import Image

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(efficientnet_lite_imagenet("tf_efficientnet_lite0"), strict=True)
    model.eval()
    photo = Image.open(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")).convert("RGB")
    x = torch.from_numpy(np.array(photo.resize((224, 224), Image.BICUBIC))).permute(2, 0, 1).float() / 255.0
    with torch.no_grad():
        probabilities = model(((x - 0.5) / 0.5)[None]).softmax(1)[0]
    assert int(probabilities.argmax()) == MILITARY_UNIFORM and probabilities.max() > 0.3
    # and the bone-age network's grey stem is the sum of the RGB filters (same response to grey input)
    net = build_model(ModelConfig(backbone="tf_efficientnet_lite0", pretrained="imagenet", hidden_units=32))
    assert torch.allclose(net.backbone.conv_stem.weight, model.conv_stem.weight.sum(dim=1, keepdim=True))
    assert torch.equal(net.backbone.blocks[6][0].conv_pwl.weight, model.blocks[6][0].conv_pwl.weight)


def test_unknown_packaged_weights_are_a_clear_error():
    with pytest.raises(ValueError, match="lite0, 1 or 2"):
        efficientnet_lite_imagenet("tf_efficientnet_lite4")


@pytest.mark.parametrize("backbone", ["resnet34", "tf_efficientnet_lite0"])
@pytest.mark.parametrize("half", [False, True])
def test_checkpoint_round_trip_with_each_backbone(tmp_path, backbone, half):
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone, hidden_units=64, output_offset=120.0, output_scale=40.0)).eval()
    path = str(tmp_path / "model.pt")
    save_checkpoint(path, model, PRESETS["rsna100"], {"trained": True}, half=half)
    loaded = load_checkpoint(path)
    assert loaded.model.config == model.config and loaded.preprocess == PRESETS["rsna100"]
    x, male = torch.rand(3, 1, 112, 112), torch.tensor([0.0, 1.0, 1.0])
    with torch.no_grad():
        expected, got = model(x, male), loaded.model(x, male)
    assert torch.allclose(expected, got, atol=0.5 if half else 1e-4), (expected, got)


def test_cosine_schedule_resumes_at_the_step_it_stopped():
    def lrs(scheduler, optimizer, epochs):
        out = []
        for _ in range(epochs):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step(0.0)
        return out

    config = TrainConfig(epochs=6, lr=1e-3, schedule="cosine", warmup_epochs=1)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    straight = lrs(build_scheduler(opt, config), opt, 6)
    assert straight[0] == pytest.approx(5e-4) and straight[1] == pytest.approx(1e-3) and straight[-1] < 1.5e-4
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    first = build_scheduler(opt, config)
    head = lrs(first, opt, 2)
    state_opt, state_sched = opt.state_dict(), first.state_dict()
    opt2 = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    second = build_scheduler(opt2, config)
    opt2.load_state_dict(state_opt)
    second.load_state_dict(state_sched)
    assert head + lrs(second, opt2, 4) == pytest.approx(straight)


@pytest.mark.integration
def test_preprocess_job_builds_a_cache_with_a_named_preset(tmp_path):
    import json
    import shutil
    import subprocess
    import sys

    from tests.helpers import ROOT

    films = tmp_path / "films"
    films.mkdir()
    for name in ("rsna_1377.png", "rsna_7047.png"):
        shutil.copy(FIXTURES / name, films / name)
    proc = subprocess.run([sys.executable, "-m", "boneage", "preprocess", str(films), "--out", str(tmp_path / "cache"),
                           "--config", "rsna100", "--no-ray"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((tmp_path / "cache" / "_config.json").read_text())
    assert PreprocessConfig.from_dict(saved["config"]) == PRESETS["rsna100"]
    from boneage.files.cache import read_cache

    frame = read_cache(str(tmp_path / "cache"))
    assert len(frame) == 2 and set(frame["image_size"]) == {112}


def test_configs_made_before_the_new_fields_keep_their_hash():
    """Caches and checkpoints made with the seed's config still match each other."""
    assert PreprocessConfig().config_hash() == "67bf3c2c4bbf"
    assert PreprocessConfig(clahe=False).config_hash() != PreprocessConfig().config_hash()
    assert PRESETS["rsna100"].config_hash() == "58982980cf81"


def test_a_u_net_setting_on_another_segmenter_is_refused():
    with pytest.raises(ValueError, match="U-Net only"):
        PreprocessConfig(segmenter="classical", segment_work_size=128)
