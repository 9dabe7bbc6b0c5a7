"""Images per second of the Ray Data preprocessing job against a plain single-process loop over the
same files and the same functions, and against the cost of decoding the PNGs alone.

Run by hand:  .venv/bin/python benchmarks/preprocess_throughput.py [--data ../shared/data/rsna] [--copies 5]

The real images are replicated (symlinks under a temporary folder) to at least 1,000 files.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from boneage.files import storage
from boneage.files.images import decode_image
from boneage.jobs.preprocess import run
from boneage.jobs.resumable import Resources


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=str(root.parent / "shared" / "data" / "rsna"))
    parser.add_argument("--copies", type=int, default=5, help="replicas of each image (202 x 5 = 1,010 files)")
    parser.add_argument("--chunk-size", type=int, default=16)
    args = parser.parse_args()
    sources = sorted(p for p in Path(args.data).rglob("*.png") if p.parent.name != "masks")
    if not sources:
        raise SystemExit(f"no PNG images under {args.data}")
    cpus = os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp, "archive")
        archive.mkdir()
        for k in range(args.copies):
            for src in sources:
                (archive / f"r{k}_{src.parent.name}_{src.name}").symlink_to(src)
        n = len(sources) * args.copies

        start = time.perf_counter()
        for path in sorted(archive.iterdir()):
            decode_image(storage.read_bytes(str(path)), str(path))
        decode_s = time.perf_counter() - start

        start = time.perf_counter()
        loop = run([str(archive)], str(Path(tmp, "loop")), resources=Resources(chunk_size=args.chunk_size, use_ray=False))
        loop_s = time.perf_counter() - start

        from boneage.raycluster import ensure_ray

        start = time.perf_counter()
        ensure_ray()
        ray_start_s = time.perf_counter() - start
        start = time.perf_counter()
        job = run([str(archive)], str(Path(tmp, "ray")), resources=Resources(chunk_size=args.chunk_size))
        ray_s = time.perf_counter() - start

    assert loop["kept"] == job["kept"] and loop["refused"] == job["refused"] and loop["failed"] == job["failed"]
    print(f"{n} files ({len(sources)} real RSNA images x {args.copies}); machine: {platform.machine()}, {cpus} CPUs")
    print(f"outcomes (both runs): kept {job['kept']}, refused {job['refused']}, failed {job['failed']}")
    print(f"{'run':<38} {'seconds':>8} {'images/s':>9}")
    print(f"{'PNG decode only, one process':<38} {decode_s:>8.1f} {n / decode_s:>9.2f}")
    print(f"{'plain loop, one process':<38} {loop_s:>8.1f} {n / loop_s:>9.2f}")
    print(f"{'Ray Data job (Ray already started)':<38} {ray_s:>8.1f} {n / ray_s:>9.2f}")
    print(f"{'Ray Data job incl. Ray start':<38} {ray_s + ray_start_s:>8.1f} {n / (ray_s + ray_start_s):>9.2f}")
    print(f"ratio Ray / loop: {loop_s / ray_s:.2f}x ({loop_s / (ray_s + ray_start_s):.2f}x with Ray start-up)")
    print(f"per-image cost: loop {1000 * loop_s / n:.0f} ms vs decode alone {1000 * decode_s / n:.0f} ms "
          f"({loop_s / decode_s:.1f}x the decoding lower limit)")


if __name__ == "__main__":
    main()
