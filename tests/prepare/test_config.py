"""The preprocessing config's saved form: schema version, migration of older forms, the named steps, and a
hash that ties caches to checkpoints, covers the model files and stays put when a step is added."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

from boneage.prepare import config as preprocess_config
from boneage.prepare import filmcheck
from boneage.prepare.config import PIPELINE, SCHEMA_VERSION, PreprocessConfig, migrate
from boneage.prepare.stages import PRESETS, STEPS, preprocess
from tests.helpers import FIXTURES, ROOT, load_grey

RSNA100_SCHEMA_1 = {  # as saved in boneage/models/boneage_rsna100.pt, before film_check & co existed
    "domain_size": 100, "segment": True, "segmenter": "unet", "segment_work_size": 128, "segment_size": 512,
    "min_contrast": 0.1, "min_hand_fraction": 0.1, "max_hand_fraction": 0.9, "dilation_kernel": 3, "clahe": False,
    "clahe_clip_limit": 3.0, "clahe_tile_grid": 8, "sharpen": False, "crop_margin": 0.02, "enhance_size": None,
    "output_size": 112, "fit": "stretch"}


def test_a_schema_1_config_migrates_and_keeps_its_hash():
    config = PreprocessConfig.from_dict(RSNA100_SCHEMA_1)
    assert config == PRESETS["rsna100"] and config.schema_version == SCHEMA_VERSION
    assert config.config_hash() == "58982980cf81"  # caches and checkpoints made before schema 2 still match
    saved = config.to_dict()
    assert saved["schema_version"] == SCHEMA_VERSION
    assert saved["steps"] == ["film_check", "domain", "contrast", "segment", "fill", "dilate", "overlay", "crop",
                              "remask", "resize"]
    assert PreprocessConfig.from_dict(saved) == config
    shipped = torch.load(ROOT / "boneage" / "models" / "boneage_rsna100.pt", weights_only=True)["preprocess_config"]
    assert PreprocessConfig.from_dict(shipped) == config
    with pytest.raises(ValueError, match="newer"):
        migrate({**saved, "schema_version": SCHEMA_VERSION + 1})


@dataclasses.dataclass(frozen=True)
class WithGamma(PreprocessConfig):
    """A field added after schema 1 (the how-to's example step)."""

    gamma: float = 1.0


def test_a_field_added_later_enters_the_hash_only_away_from_its_default():
    assert WithGamma().config_hash() == PreprocessConfig().config_hash() == "67bf3c2c4bbf"
    assert WithGamma(gamma=0.8).config_hash() not in (WithGamma().config_hash(), WithGamma(gamma=0.9).config_hash())


def test_the_whole_image_u_net_is_its_own_pipeline_and_the_u_nets_alone():
    """segment_patches=False changes the masks (slightly): a cache made with it is not a patch-made one."""
    assert PreprocessConfig(segment_patches=True).config_hash() == "67bf3c2c4bbf"  # the default: hashes kept
    assert PreprocessConfig(segment_patches=False).config_hash() != PreprocessConfig().config_hash()
    whole = PreprocessConfig.from_dict(PreprocessConfig(segment_patches=False).to_dict())  # saved and read back
    assert not whole.segment_patches and whole.config_hash() == PreprocessConfig(segment_patches=False).config_hash()
    with pytest.raises(ValueError, match="U-Net only"):
        PreprocessConfig(segmenter="classical", segment_patches=False)


def test_the_model_files_content_enters_the_hash(tmp_path, monkeypatch):
    files = PreprocessConfig().model_files()
    assert set(files) == {"film_check", "segmenter"} and set(PreprocessConfig(segment=False, film_check=False)
                                                             .model_files()) == set()
    before = PreprocessConfig().config_hash()
    changed = tmp_path / "filmcheck.pt"
    shutil.copy(filmcheck.SHIPPED_FILMCHECK, changed)
    with changed.open("ab") as out:
        out.write(b"another training run")
    monkeypatch.setattr(filmcheck, "SHIPPED_FILMCHECK", changed)
    preprocess_config.clear_cache()
    try:
        assert PreprocessConfig().config_hash() != before  # a cache made with another film check is not this one
        assert PreprocessConfig(film_check=False).config_hash() == PreprocessConfig(film_check=False).config_hash()
    finally:
        monkeypatch.undo()
        preprocess_config.clear_cache()
    assert PreprocessConfig().config_hash() == before


def test_timing_wraps_the_steps_from_outside():
    """What benchmarks/preprocess_stages.py does: the pipeline itself carries no timers."""
    from benchmarks.preprocess_stages import timed

    timings: dict[str, float] = {}
    config = PRESETS["hires"]
    film = load_grey(FIXTURES / "rsna_1377.png")
    result = preprocess(film, config, timed(STEPS, timings))
    assert list(timings) == config.steps and all(ms >= 0 for ms in timings.values())
    assert (result.image == preprocess(film, config).image).all()


def test_every_step_of_the_pipeline_has_its_function_in_order():
    assert [step.name for step in STEPS] == [name for name, _ in PIPELINE]
