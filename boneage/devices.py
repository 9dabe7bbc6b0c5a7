"""Where torch work runs: the GPU when there is one, unless the caller says otherwise."""

from __future__ import annotations

import torch


def select_device(device: str | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def bf16_fast(device: torch.device) -> bool:
    """Whether bf16 autocast speeds this device up: any CUDA GPU, or a CPU with AVX-512 or AMX
    (native bf16 dot products); elsewhere bf16 is emulated and slower than float32."""
    if device.type == "cuda":
        return True
    return device.type == "cpu" and torch.backends.cpu.get_cpu_capability() in ("AVX512", "AMX", "AVX512_BF16")
