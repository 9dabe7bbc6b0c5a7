"""The whole training state beside a checkpoint's model file, so a run resumes where it stopped: weights,
optimizer, scheduler, epoch, best validation MAE, patience used and the history. Plain types and tensors
only (loaded with ``weights_only=True``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

STATE_FILE = "state.pt"


@dataclass
class RunProgress:
    """Where a run stands after an epoch: its number, the best validation MAE, the epochs since it, and
    each epoch's record."""

    epoch: int = -1  # the last epoch done; -1: none yet
    best: float = float("inf")
    since_best: int = 0
    history: list[dict] = field(default_factory=list)


def save_training_state(folder: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                        progress: RunProgress) -> None:
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": progress.epoch, "best": float(progress.best), "since_best": int(progress.since_best),
                "history": progress.history},
               Path(folder) / STATE_FILE)


def load_training_state(folder: str | Path) -> dict:
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
