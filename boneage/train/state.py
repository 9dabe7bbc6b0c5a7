"""The whole training state beside a checkpoint's model file, so a run resumes where it stopped: weights,
optimizer, scheduler, epoch, best validation MAE, patience used and the history. Plain types and tensors
only (loaded with ``weights_only=True``)."""

from __future__ import annotations

from pathlib import Path

import torch

STATE_FILE = "state.pt"


def save_training_state(folder: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                        epoch: int, best: float, since_best: int, history: list[dict]) -> None:
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": epoch, "best": float(best), "since_best": int(since_best), "history": history},
               Path(folder) / STATE_FILE)


def load_training_state(folder: str | Path) -> dict:
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
