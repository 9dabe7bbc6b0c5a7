"""The Ray Train job on a real local Ray with two CPU workers (gloo) and real radiographs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from boneage.jobs.preprocess import PreprocessOptions
from boneage.jobs.preprocess import run as preprocess_run
from boneage.jobs.resumable import Resources
from boneage.jobs.train import RunOptions, TrainData, TrainScaling
from boneage.jobs.train import run as train_run
from boneage.network.checkpoint import load_checkpoint
from boneage.network.model import ModelConfig
from boneage.prepare.config import PreprocessConfig
from boneage.train.augment import AugmentConfig
from boneage.train.loop import TrainConfig
from boneage.train.metrics import age_group
from tests.helpers import ROOT, SHARED_DATA

pytestmark = pytest.mark.integration  # Ray Train on a real local Ray

# weight_power 0 and no epoch_size: every epoch is each training image exactly once, and no dropout,
# so the epochs' losses are over the same images and comparable (with category weighting, each
# epoch's draw of rare ages moves the loss more than a few steps of learning do).
# A cosine schedule with one warm-up epoch: each epoch's learning rate is known in advance, so a run
# restored after a failure shows whether it went on from the right step.
SMALL = TrainConfig(epochs=3, batch_size=4, checkpoint_every=1, keep_checkpoints=3, weight_power=0.0,
                    schedule="cosine", warmup_epochs=1,
                    model=ModelConfig(backbone="resnet18", hidden_units=32, dropout=0.0),
                    augment=AugmentConfig(rotation_degrees=0, translate=0, zoom=0, contrast=0, brightness=0))


@pytest.fixture(scope="module")
def cache(tmp_path_factory, request) -> Path:
    shared = ROOT.parent / "shared" / "data"
    if not (shared / "rsna" / "train.csv").exists():
        pytest.skip(f"real data folder {shared} is absent (it is present in CI)")
    folder = tmp_path_factory.mktemp("train-images")
    labels = pd.read_csv(shared / "rsna" / "train.csv").sort_values("id").head(20)
    for ident in labels["id"]:
        shutil.copy(shared / "rsna" / "train" / f"{ident}.png", folder / f"{ident}.png")
    labels.to_csv(folder / "labels.csv", index=False)
    out = tmp_path_factory.mktemp("cache") / "cache"
    summary = preprocess_run([str(folder)], str(out), PreprocessOptions(labels=str(folder / "labels.csv")),
                             Resources(use_ray=False))
    assert summary["kept"] + summary["refused"] == 20
    return out


def _train_worker_pids() -> list[int]:
    """The processes of Ray Train's workers, found by the title Ray gives an actor's process (/proc)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"RayTrainWorker" in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:  # the process ended meanwhile
            continue
    return pids


@pytest.fixture(scope="module")
def first_run(cache, local_ray, tmp_path_factory):
    """Three epochs; a worker process is killed (SIGKILL, from outside) once the first checkpoint is
    registered, so the trainer must restore it and finish."""
    import os
    import signal
    import threading
    import time

    work = tmp_path_factory.mktemp("run")
    outcome: dict = {}

    def train() -> None:
        try:
            outcome["summary"] = train_run(TrainData(str(cache), val_fraction=0.3), RunOptions(
                str(work / "model.pt"), storage_path=str(work / "runs"), name="first", max_failures=1), SMALL,
                TrainScaling(workers=2))
        except BaseException as error:  # noqa: BLE001 - re-raised in the test's thread
            outcome["error"] = error

    thread = threading.Thread(target=train)
    thread.start()
    killed = None
    deadline = time.monotonic() + 600
    while thread.is_alive() and time.monotonic() < deadline and killed is None:
        # the controller's snapshot appears once a checkpoint is registered (not while it is uploaded)
        if (work / "runs" / "first" / "checkpoint_manager_snapshot.json").exists():
            pids = _train_worker_pids()
            if pids:
                killed = pids[0]
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    assert killed is not None, "training finished before a worker could be killed"
    return work, outcome["summary"]


def _latest_history(summary: dict) -> list[dict]:
    return load_checkpoint(str(Path(summary["latest_checkpoint"]) / "model.pt")).metadata["history"]


def test_training_survives_a_worker_failure_and_writes_a_usable_model(first_run):
    work, summary = first_run
    model = load_checkpoint(str(work / "model.pt"))  # the best epoch's model
    assert model.trained and model.preprocess.segmenter == "unet"
    assert Path(work / "runs" / "first").exists()
    # a worker died after the first checkpoint; the trainer restored the latest checkpoint and finished
    history = _latest_history(summary)
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[0]["restores"] == 0 and history[-1]["restores"] == 1
    # and the schedule went on from where the checkpoint left it: warm-up, peak, cosine half-way
    assert [h["lr"] for h in history] == pytest.approx([0.5e-3, 1e-3, 0.5e-3])
    assert summary["epochs_checkpointed"] == [0, 1, 2]
    # the network starts at the training mean, in units of the training spread
    assert model.model.config.output_offset == pytest.approx(summary["train_age_mean"], abs=0.01)


def test_checkpoints_carry_their_metrics_and_the_best_is_kept(first_run):
    work, summary = first_run
    metrics = summary["best_metrics"]
    for key in ("val_mae", "val_rmse", "val_r2", "val_within_12m", "val_within_6m", "train_loss", "epoch"):
        assert key in metrics
    assert summary["best_val_mae"] == min(h["val_mae"] for h in _latest_history(summary))
    assert load_checkpoint(str(work / "model.pt")).metadata["epoch"] == summary["best_epoch"] - 1
    report = load_checkpoint(str(work / "model.pt")).metadata["val"]
    assert report["overall"]["n"] == summary["val_images"]
    assert set(report["by_age_group"]) == {"0-5y", "5-10y", "10-15y", "15-19y"}
    assert set(report["by_sex"]) == {"male", "female"}


def test_training_loss_decreases(first_run):
    _, summary = first_run
    losses = [h["train_loss"] for h in _latest_history(summary)]
    assert losses[-1] < losses[0], losses


def test_resume_continues_from_the_next_epoch(first_run, cache, tmp_path):
    work, summary = first_run
    config = TrainConfig(**{**SMALL.__dict__, "epochs": 4})
    resumed = train_run(TrainData(str(cache), val_fraction=0.3), RunOptions(
        str(tmp_path / "model.pt"), storage_path=str(work / "runs"), name="resumed",
        resume=summary["latest_checkpoint"]), config, TrainScaling(workers=2))
    assert resumed["epochs_checkpointed"] == [3]
    history = load_checkpoint(str(tmp_path / "model.pt")).metadata["history"]
    assert [h["epoch"] for h in history][-1] == 3


def test_evaluate_writes_metrics_plots_and_report(first_run, cache, tmp_path):
    work, _ = first_run
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, "-m", "boneage", "evaluate", "--model", str(work / "model.pt"), "--data",
                           str(cache), "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = pd.read_csv(out / "predictions.csv")
    assert metrics["overall"]["n"] == len(predictions) > 10
    assert metrics["overall"]["mae"] == pytest.approx(np.abs(predictions["pred"] - predictions["true"]).mean())
    # each group's baseline: every child given the set's mean age
    for name, figures in metrics["by_age_group"].items():
        if figures["n"]:
            chosen = predictions["true"].map(age_group) == name
            expected = np.abs(predictions["true"] - predictions["true"].mean())[chosen].mean()
            assert figures["mean_predictor_mae"] == pytest.approx(expected)
    import cv2

    for name in ("scatter.png", "bland_altman.png", "tolerance_by_age_group.png", "abs_error_by_age_group.png"):
        image = cv2.imread(str(out / name))
        assert image is not None and image.shape[0] > 300 and image.std() > 10, name
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "MAE" in html


def test_evaluate_on_the_original_films_matches_the_cache(first_run, cache, tmp_path):
    """`boneage evaluate --labels` scores the films through the user's path (read, preprocess, predict):
    the same predictions as from the cache the preprocessing job made of them."""
    work, _ = first_run
    shared = ROOT.parent / "shared" / "data"
    labels = pd.read_csv(shared / "rsna" / "train.csv").sort_values("id").head(6)
    films = tmp_path / "films"
    films.mkdir()
    for ident in labels["id"]:
        shutil.copy(shared / "rsna" / "train" / f"{ident}.png", films / f"{ident}.png")
    labels.to_csv(tmp_path / "labels.csv", index=False)
    proc = subprocess.run([sys.executable, "-m", "boneage", "evaluate", "--model", str(work / "model.pt"), "--data",
                           str(films), "--labels", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "films-eval")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    from_films = pd.read_csv(tmp_path / "films-eval" / "predictions.csv", dtype={"id": str}).set_index("id")
    assert len(from_films) == 6
    subprocess.run([sys.executable, "-m", "boneage", "evaluate", "--model", str(work / "model.pt"), "--data",
                    str(cache), "--out", str(tmp_path / "cache-eval")], check=True, capture_output=True, cwd=ROOT)
    from_cache = pd.read_csv(tmp_path / "cache-eval" / "predictions.csv", dtype={"id": str}).set_index("id")
    common = from_films.index.intersection(from_cache.index)
    assert len(common) >= 4  # the films the cache kept (low-contrast ones are left out of a cache)
    np.testing.assert_allclose(from_films.loc[common, "pred"], from_cache.loc[common, "pred"], atol=0.05)


def test_select_last_writes_the_final_epoch_and_torch_threads_apply(cache, local_ray, tmp_path):
    """The retrain-on-everything run: validation on the training cache itself, the final epoch kept."""
    config = TrainConfig(**{**SMALL.__dict__, "epochs": 2, "epoch_size": 8})
    summary = train_run(TrainData(str(cache), val=str(cache)), RunOptions(
        str(tmp_path / "model.pt"), storage_path=str(tmp_path / "runs"), name="last", select="last"), config,
        TrainScaling(workers=1, torch_threads=2, cpus_per_worker=1))
    assert summary["selected"] == "last" and summary["val_images"] == summary["train_images"]
    written = load_checkpoint(str(tmp_path / "model.pt")).metadata
    assert written["epoch"] == 1
    assert [h["torch_threads"] for h in written["history"]] == [2, 2]
    with pytest.raises(ValueError, match="select"):
        RunOptions(str(tmp_path / "x.pt"), select="worst")


def test_a_mixed_cache_fills_its_share_and_never_holds_the_validation_films(cache, local_ray, tmp_path):
    """``--mix``: the same films at 100 px (as rsna-100px was made) mixed into each epoch; the ids held out
    of --data stay out of the mix, and a mix preprocessed another way is refused."""
    import cv2

    from boneage.jobs.train import build_datasets
    from boneage.train.data import cache_labels, in_validation

    films = SHARED_DATA / "rsna" / "train"
    small = tmp_path / "small"
    small.mkdir()
    ids = sorted(cache_labels(str(cache)))
    for ident in ids:
        film = cv2.imread(str(films / f"{ident}.png"), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(small / f"{ident}.png"), cv2.resize(film, (100, 100), interpolation=cv2.INTER_AREA))
    table = pd.read_csv(SHARED_DATA / "rsna" / "train.csv", dtype={"id": str})
    table[table["id"].isin(ids)].to_csv(small / "labels.csv", index=False)
    mix = tmp_path / "mix-cache"
    preprocess_run([str(small)], str(mix), PreprocessOptions(labels=str(small / "labels.csv")), Resources(use_ray=False))
    config = TrainConfig(**{**SMALL.__dict__, "epochs": 1, "epoch_size": 12, "mix_share": 0.25})
    mixed_ids = set(cache_labels(str(mix)))
    held_out = {i for i in mixed_ids if in_validation(i, 0.3)}
    assert held_out and mixed_ids - held_out  # the ids of this small set fall on both sides
    train, val, described = build_datasets(str(cache), None, 0.3, config, mix_uri=str(mix))
    assert described["mix_images"] == len(mixed_ids - held_out)
    # a quarter of the 12 samples from the mix (each category's figure is rounded to 0.1 in the table)
    assert sum(c["samples_per_epoch"] for c in described["mix_categories"]) == pytest.approx(3.0, abs=0.5)
    assert sum(c["samples_per_epoch"] for c in described["categories"]) == pytest.approx(9.0, abs=0.5)
    assert val.count() == described["val_images"]
    summary = train_run(TrainData(str(cache), val_fraction=0.3, mix=str(mix)), RunOptions(
        str(tmp_path / "model.pt"), storage_path=str(tmp_path / "runs"), name="mix"), config,
        TrainScaling(workers=1, torch_threads=2, cpus_per_worker=1))
    assert summary["mix_images"] == described["mix_images"]
    assert load_checkpoint(str(tmp_path / "model.pt")).metadata["data"]["mix"] == str(mix)
    other = tmp_path / "other-cache"
    preprocess_run([str(small)], str(other), PreprocessOptions(config=PreprocessConfig.named("rsna100"),
                                                                labels=str(small / "labels.csv")),
                   Resources(use_ray=False))
    with pytest.raises(ValueError, match="another config"):
        build_datasets(str(cache), None, 0.3, config, mix_uri=str(other))
