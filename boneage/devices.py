"""Where torch work runs: the GPU when there is one, unless the caller says otherwise."""

from __future__ import annotations

import torch


def select_device(device: str | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
