"""Where torch work runs: the GPU when there is one, unless the caller says otherwise."""

from __future__ import annotations

import os

import torch


def select_device(device: str | None = None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def bf16_fast(device: torch.device) -> bool:
    """Whether bf16 autocast speeds this device up: any CUDA GPU, or a CPU with native bf16 dot products
    (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower than float32."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def use_cpu_threads(n: int = 1) -> None:
    """Give torch and OpenCV ``n`` threads each in this process. Where parallelism comes from elsewhere (one
    Ray task or actor per CPU, a pool of preparing threads) their own pools only oversubscribe the cores and
    spin: the endpoint's ingress burnt 1.0 core for 23 films/s with the defaults."""
    import cv2

    torch.set_num_threads(max(1, int(n)))
    cv2.setNumThreads(max(1, int(n)))


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's or ``taskset``'s limit), not the host's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
