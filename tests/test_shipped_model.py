"""The demonstration model shipped in the package: used by default, self-describing, and it learned
something (checked on images it trained on; its held-out figures come from scripts/train_shipped_model.sh)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import torch

from boneage.checkpoint import load_checkpoint
from boneage.predictor import SHIPPED_MODEL, Predictor, default_model_uri
from boneage.splits import in_validation
from tests.conftest import FIXTURES, ROOT


def test_the_shipped_model_is_the_default_and_describes_itself(monkeypatch):
    monkeypatch.delenv("BONEAGE_MODEL", raising=False)
    assert SHIPPED_MODEL.exists() and default_model_uri() == str(SHIPPED_MODEL)
    assert SHIPPED_MODEL.stat().st_size < 100 * 2**20
    raw = torch.load(SHIPPED_MODEL, map_location="cpu", weights_only=True)
    assert {v.dtype for v in raw["state_dict"].values() if v.is_floating_point()} == {torch.float16}
    checkpoint = load_checkpoint(str(SHIPPED_MODEL))
    meta = checkpoint.metadata
    assert checkpoint.trained and meta["weights_dtype"] == "float16" and "Demonstration model" in meta["note"]
    held_out = meta["heldout_run"]["val"]["overall"]
    assert held_out["n"] > 20 and held_out["mae"] > 0  # measured on images that run never trained on
    assert meta["data"]["train_images"] > held_out["n"]
    assert meta["calibration"]["level"] == 0.9 and meta["calibration"]["coverage"]["coverage"] >= 0.85
    assert next(checkpoint.model.parameters()).dtype == torch.float32  # fp16 on disk, fp32 to compute


def test_predict_uses_the_shipped_model_without_an_untrained_warning():
    env = {k: v for k, v in os.environ.items() if k != "BONEAGE_MODEL"}
    proc = subprocess.run([sys.executable, "-m", "boneage", "predict", str(FIXTURES / "rsna_1377.png"), "--sex", "F",
                           "--json"], capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "UNTRAINED" not in proc.stderr
    row = json.loads(proc.stdout)
    assert row["model_trained"] and row["model_version"] == Predictor.load().version
    assert 0 < row["bone_age_months"] < 240
    assert row["interval_level"] == 0.9 and row["bone_age_interval_low"] < row["bone_age_months"]


def test_the_shipped_model_fits_its_training_images_better_than_the_mean(shared_data):
    """A check that the weights are the trained ones, not a claim of accuracy: the images of rsna/train it
    trained on (those outside the held-out split). A random network neither beats the mean nor orders
    children by age; this weak demonstration model does both, if not by much."""
    labels = pd.read_csv(shared_data / "rsna" / "train.csv")
    labels = labels[[not in_validation(str(i), 0.2) for i in labels["id"]]]
    assert len(labels) > 30
    predictor = Predictor.load()
    rows = [predictor.predict_files([str(shared_data / "rsna" / "train" / f"{i}.png")], sex="M" if male else "F")[0]
            for i, male in zip(labels["id"], labels["male"], strict=True)]
    pred = np.array([r.bone_age_months for r in rows], dtype=float)
    true = labels["boneage"].to_numpy(float)
    assert np.abs(pred - true).mean() < np.abs(true - true.mean()).mean()
    assert np.corrcoef(pred, true)[0, 1] > 0.3
