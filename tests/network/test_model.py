"""The network, pretrained-weight loading, checkpoints and the Predictor on real images."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from boneage.errors import CheckpointError
from boneage.network.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from boneage.network.model import ModelConfig, build_model, load_pretrained_backbone
from boneage.predict.predictor import Predictor, parse_sex, untrained_checkpoint, years_months
from boneage.prepare.stages import PreprocessConfig
from tests.helpers import FIXTURES, load_grey

IMAGES = [str(FIXTURES / n) for n in ("rsna_1377.png", "rsna_7047.png", "rsna_3107_low_contrast.png")]


def test_resnet34_head_is_the_seeds():
    model = build_model()
    linears = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(513, 2048), (2048, 2048), (2048, 1)]
    assert sum(isinstance(m, torch.nn.Dropout) for m in model.head) == 2
    assert model.backbone.conv1.in_channels == 1


def test_sex_input_changes_the_prediction():
    torch.manual_seed(0)
    model = build_model().eval()
    image = torch.rand(1, 1, 128, 128).repeat(2, 1, 1, 1)
    with torch.no_grad():
        out = model(image, torch.tensor([0.0, 1.0]))
    assert out[0] != out[1]


def test_pretrained_weights_from_a_local_file(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet34()
    path = tmp_path / "resnet34-imagenet.pth"
    torch.save(reference.state_dict(), path)
    model = build_model(ModelConfig(pretrained=str(path)))
    assert torch.allclose(model.backbone.conv1.weight, reference.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(model.backbone.layer4[2].conv2.weight, reference.layer4[2].conv2.weight)


def test_pretrained_wrong_architecture_or_missing_file_is_a_clear_error(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(ValueError, match="resnet34"):
        build_model(ModelConfig(pretrained=str(path)))
    with pytest.raises(FileNotFoundError, match="not found"):
        build_model(ModelConfig(pretrained=str(tmp_path / "missing.pth")))


def test_imagenet_download_failure_is_one_warning_not_a_crash(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached weights: the download must be tried
    model = build_model()
    with caplog.at_level(logging.WARNING, logger="boneage.network.model"):
        loaded = load_pretrained_backbone(model, "imagenet")
    if not loaded:  # the normal case on a machine without internet
        warnings = [r for r in caplog.records if "random initialisation" in r.getMessage()]
        assert len(warnings) == 1


def test_checkpoint_round_trip_gives_identical_predictions(tmp_path):
    ckpt = untrained_checkpoint(seed=3)
    before = Predictor(ckpt, device="cpu").predict_files(IMAGES, sex="F")
    for uri in (str(tmp_path / "model.pt"), "memory://models/model.pt"):
        version = save_checkpoint(uri, ckpt.model, ckpt.preprocess, {"epochs": 0, "note": "test"})
        loaded = load_checkpoint(uri)
        assert loaded.version == version and loaded.metadata["note"] == "test" and not loaded.trained
        assert loaded.preprocess == ckpt.preprocess
        after = Predictor(loaded, device="cpu").predict_files(IMAGES, sex="F")
        assert [r.bone_age_months for r in after] == [r.bone_age_months for r in before]
        assert all(r.model_version == version for r in after)


def test_checkpoint_keeps_configs_and_rejects_other_formats(tmp_path):
    model = build_model(ModelConfig(dropout=0.3))
    uri = str(tmp_path / "m.pt")
    save_checkpoint(uri, model, PreprocessConfig(clahe_clip_limit=2.5), {"trained": True})
    loaded = load_checkpoint(uri)
    assert loaded.model.config.dropout == 0.3 and loaded.preprocess.clahe_clip_limit == 2.5 and loaded.trained
    payload = torch.load(uri, weights_only=True)
    payload["format_version"] = FORMAT_VERSION + 1
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="format version"):
        load_checkpoint(str(tmp_path / "future.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(str(tmp_path / "junk.pt"))
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "absent.pt"))


def test_predictor_batches_match_single_images_and_errors_are_rows(tmp_path):
    predictor = Predictor(untrained_checkpoint(), device="cpu", batch_size=2)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    rows = predictor.predict_files([IMAGES[0], str(bad), IMAGES[1], IMAGES[2]], sex="M")
    assert [r.error is None for r in rows] == [True, False, True, True]
    assert rows[1].error_code in ("truncated", "decode_failed") and "bad.png" in rows[1].error
    singles = [Predictor(predictor.checkpoint, device="cpu", batch_size=1).predict_files([p], sex="M")[0]
               for p in (IMAGES[0], IMAGES[1])]
    assert rows[0].bone_age_months == pytest.approx(singles[0].bone_age_months, abs=1e-2)
    assert rows[2].bone_age_months == pytest.approx(singles[1].bone_age_months, abs=1e-2)
    assert rows[3].quality["low_contrast"] is True


def test_missing_sex_is_an_error_row_and_parse_sex():
    rows = Predictor(untrained_checkpoint(), device="cpu").predict_files(IMAGES[:1])
    assert rows[0].bone_age_months is None and "sex" in rows[0].error
    assert [parse_sex(v) for v in ("M", "female", True, 0, None)] == ["M", "F", "M", "F", None]
    with pytest.raises(ValueError):
        parse_sex("x")
    assert years_months(124.4) == "10 y 4 m" and years_months(11.6) == "1 y 0 m"


def test_predict_arrays_on_preprocessed_images_is_deterministic():
    predictor = Predictor(untrained_checkpoint(), device="cpu")
    images = np.stack([predictor.preprocess(load_grey(Path(p))).image for p in IMAGES[:2]])
    a = predictor.predict_arrays(images, [1, 0])
    b = predictor.predict_arrays(images, [1, 0])
    assert a.shape == (2,) and np.array_equal(a, b)
    with pytest.raises(ValueError, match="sex values"):
        predictor.predict_arrays(images, [1])
