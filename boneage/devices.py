"""Where torch work runs (the GPU when there is one, unless the caller says otherwise), and how many CPU
threads it may use. Imports nothing heavy at module level: the command line reads it before torch loads."""

from __future__ import annotations

import os
import re
import sys
from typing import TYPE_CHECKING

from boneage.errors import BoneAgeError

if TYPE_CHECKING:
    import torch

THREADS_ENV = "BONEAGE_THREADS"
DEFAULT_THREADS = 1  # see pin_threads: measured by benchmarks/busy_machine.py
# Read once, when OpenMP (torch), OpenBLAS/MKL (numpy, torch) and OpenCV load: set before those imports.
POOL_ENVS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "OPENCV_FOR_THREADS_NUM")
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


class DeviceError(BoneAgeError):
    """The device asked for is not on this machine (``--device cuda`` without a GPU)."""


def select_device(device: str | None = None) -> torch.device:
    """``auto`` (or None): the GPU when there is one, else the CPU; else the device named, which must exist."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"--device {device}: no CUDA GPU is usable on this machine (use --device cpu or auto)")
        if (chosen.index or 0) >= count:
            raise DeviceError(f"--device {device}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"--device {device}: Apple's MPS is not available on this machine")
    return chosen


def bf16_fast(device: torch.device) -> bool:
    """Whether bf16 autocast speeds this device up: any CUDA GPU, or a CPU with native bf16 dot products
    (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower than float32."""
    import torch

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
    import torch

    torch.set_num_threads(max(1, int(n)))
    cv2.setNumThreads(max(1, int(n)))


def pin_threads(threads: int | None = None) -> int:
    """The CPU threads of a one-process command (``predict``, ``evaluate``...): ``threads``, else
    ``$BONEAGE_THREADS``, else :data:`DEFAULT_THREADS`; returns the number used.

    Every pool gets it: the BLAS and OpenMP pools through their environment variables (so call this
    before numpy, torch or OpenCV load), torch and OpenCV through their own calls. With their defaults
    (a thread per core, spinning while they wait) one other busy process made ``boneage predict`` ten
    times slower; one thread each was as fast on an idle machine (benchmarks/busy_machine.py).
    """
    n = threads or threads_from_env() or DEFAULT_THREADS
    for name in POOL_ENVS:
        os.environ[name] = str(n)
    if "torch" in sys.modules or "cv2" in sys.modules:  # already loaded: their pools exist; resize them
        use_cpu_threads(n)
    return n


def threads_from_env() -> int | None:
    """``$BONEAGE_THREADS`` as a positive number, None when unset."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"${THREADS_ENV} must be a number of threads >= 1, not {value!r}")
    return int(value)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's or ``taskset``'s limit), not the host's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
