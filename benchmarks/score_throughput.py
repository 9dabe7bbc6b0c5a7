"""Images per second of bulk scoring, end to end from files on disk to committed results: the Ray Data
job against a plain single-process loop over the same files and the same functions, in one run, and
against the cost of decoding the PNGs alone.

Run by hand:  .venv/bin/python benchmarks/score_throughput.py [--data ../shared/data/rsna] [--copies 5]
              [--model URI] [--gpu]

The real images are replicated (symlinks under a temporary folder) to at least 1,000 files, with a
manifest giving each file's sex from the RSNA labels. ``--gpu`` (on a GPU machine) runs the loop on
the GPU too and adds images/s per GPU and the GPU utilisation sampled by nvidia-smi during the Ray
run. ``--limit N`` takes only N source images (a quick check that the script works).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd

from boneage.files import storage
from boneage.files.images import decode_image
from boneage.jobs.resumable import Output, Resources
from boneage.jobs.score import ScoreOptions, run


def gpu_sampler(samples: list[float], stop: threading.Event) -> None:
    """Mean GPU utilisation (%) over all GPUs, every half second, until ``stop``."""
    while not stop.is_set():
        try:
            text = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                  capture_output=True, text=True, timeout=5).stdout
            values = [float(v) for v in text.split()]
            if values:
                samples.append(sum(values) / len(values))
        except (OSError, ValueError, subprocess.SubprocessError):
            return
        stop.wait(0.5)


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(root.parent / "shared" / "data" / "rsna"))
    parser.add_argument("--copies", type=int, default=5, help="replicas of each image (202 x 5 = 1,010 files)")
    parser.add_argument("--limit", type=int, help="only this many source images (quick check)")
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, help="images per model call (default: the job's)")
    parser.add_argument("--model", help="checkpoint (default: the job's default model)")
    parser.add_argument("--gpu", action="store_true", help="GPU machine: loop on the GPU, per-GPU figures")
    args = parser.parse_args()
    data = Path(args.data)
    sources = sorted(p for p in data.rglob("*.png") if p.parent.name != "masks")[: args.limit]
    if not sources:
        raise SystemExit(f"no PNG images under {args.data}")
    labels = pd.concat([pd.read_csv(c, dtype={"id": str}) for c in sorted(data.glob("*.csv"))])
    male = dict(zip(labels["id"], labels["male"], strict=True))
    cpus = os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp, "archive")
        archive.mkdir()
        rows = []
        for k in range(args.copies):
            for src in sources:
                link = archive / f"r{k}_{src.parent.name}_{src.name}"
                link.symlink_to(src)
                rows.append({"path": str(link), "sex": "M" if str(male.get(src.stem)) == "True" else "F"})
        manifest = str(Path(tmp, "manifest.csv"))
        pd.DataFrame(rows).to_csv(manifest, index=False)
        n = len(rows)
        options = ScoreOptions(model=args.model, manifest=manifest)
        sizing = {"chunk_size": args.chunk_size, "batch_size": args.batch_size}

        start = time.perf_counter()
        for path in sorted(archive.iterdir()):
            decode_image(storage.read_bytes(str(path)), str(path))
        decode_s = time.perf_counter() - start

        start = time.perf_counter()
        loop = run([str(archive)], Output(str(Path(tmp, "loop")), progress=False), options,
                   Resources(use_ray=False, device="cuda" if args.gpu else "cpu", **sizing))
        loop_s = time.perf_counter() - start

        from boneage.raycluster import ensure_ray

        start = time.perf_counter()
        ray = ensure_ray()
        ray_start_s = time.perf_counter() - start
        gpus = ray.cluster_resources().get("GPU", 0)
        samples: list[float] = []
        stop = threading.Event()
        sampler = threading.Thread(target=gpu_sampler, args=(samples, stop), daemon=True)
        if args.gpu and shutil.which("nvidia-smi"):
            sampler.start()
        start = time.perf_counter()
        job = run([str(archive)], Output(str(Path(tmp, "ray")), progress=False), options, Resources(**sizing))
        ray_s = time.perf_counter() - start
        stop.set()

    for key in ("scored", "refused", "failed"):
        assert loop[key] == job[key], (key, loop[key], job[key])
    assert job["scored"] + job["refused"] + job["failed"] == n
    print(f"{n} files ({len(sources)} real RSNA images x {args.copies}); machine: {platform.machine()}, {cpus} CPUs, "
          f"{gpus:g} GPUs; model {job['model_version']}")
    print(f"outcomes (both runs): scored {job['scored']}, refused by quality {job['refused']}, failed {job['failed']}")
    print(f"{'run':<40} {'seconds':>8} {'images/s':>9}")
    print(f"{'PNG decode only, one process':<40} {decode_s:>8.1f} {n / decode_s:>9.2f}")
    print(f"{'plain loop, one process':<40} {loop_s:>8.1f} {n / loop_s:>9.2f}")
    print(f"{'Ray Data job (Ray already started)':<40} {ray_s:>8.1f} {n / ray_s:>9.2f}")
    print(f"{'Ray Data job incl. Ray start':<40} {ray_s + ray_start_s:>8.1f} {n / (ray_s + ray_start_s):>9.2f}")
    print(f"ratio Ray / loop: {loop_s / ray_s:.2f}x ({loop_s / (ray_s + ray_start_s):.2f}x with Ray start-up)")
    print(f"per-image cost: loop {1000 * loop_s / n:.0f} ms vs decode alone {1000 * decode_s / n:.0f} ms "
          f"({loop_s / decode_s:.1f}x the decoding lower limit)")
    if args.gpu:
        print(f"images/s per GPU (Ray job): {n / ray_s / max(gpus, 1):.2f}; decoding lower limit on all {cpus} "
              f"CPUs: about {cpus * n / decode_s:.0f} images/s")
        if samples:
            print(f"GPU utilisation during the Ray job (nvidia-smi, {len(samples)} samples): mean "
                  f"{sum(samples) / len(samples):.0f}%, max {max(samples):.0f}%")
        else:
            print("GPU utilisation: nvidia-smi not available")


if __name__ == "__main__":
    main()
