"""One rule for every config: unknown keys are refused (a file from another version must not be
half-read), and values are checked where the config is made."""

from __future__ import annotations

import pytest

from boneage.clinical.intervals import Calibration
from boneage.network.model import ModelConfig
from boneage.prepare.segmentation.unet import UNetConfig
from boneage.prepare.stages import PreprocessConfig
from boneage.serving.settings import IngressSettings, ModelSettings
from boneage.train.loop import TrainConfig

CALIBRATION = {"method": "absolute", "level": 0.9, "q": 25.0, "eps": 1.0, "tta": 0, "n": 10, "data": "x"}


@pytest.mark.parametrize("build", [
    lambda extra: PreprocessConfig.from_dict({"output_size": 112, **extra}),
    lambda extra: ModelConfig.from_dict({**extra}),
    lambda extra: TrainConfig.from_dict({"epochs": 1, **extra}),
    lambda extra: TrainConfig.from_dict({"augment": {"zoom": 0.1, **extra}}),
    lambda extra: UNetConfig.from_dict({**UNetConfig().to_dict(), **extra}),
    lambda extra: Calibration.from_dict({**CALIBRATION, **extra}),
    lambda extra: ModelSettings.from_user_config({"max_batch_size": 4, **extra}),
    lambda extra: IngressSettings.from_user_config({"max_files": 4, **extra}),
], ids=["preprocess", "model", "train", "augment", "unet", "calibration", "serve-model", "serve-ingress"])
def test_every_config_refuses_unknown_keys(build):
    build({})  # the known keys alone are fine
    with pytest.raises(ValueError, match="unknown .*bogus"):
        build({"bogus": 1})


@pytest.mark.parametrize("bad", [
    lambda: PreprocessConfig(min_hand_fraction=0.9, max_hand_fraction=0.1),
    lambda: PreprocessConfig(dilation_kernel=4),
    lambda: PreprocessConfig(output_size=0),
    lambda: PreprocessConfig(fit="crop"),
    lambda: TrainConfig.from_dict({"augment": {"zoom": 1.5}}),
    lambda: ModelSettings(max_batch_size=0),
    lambda: IngressSettings(max_files=0),
    lambda: IngressSettings(busy_batch_wait_s=-1),
])
def test_bad_values_are_refused_where_the_config_is_made(bad):
    with pytest.raises(ValueError):
        bad()
