"""Does bulk scoring scale with cores, and stay flat in memory as the archive grows?

Run by hand:  .venv/bin/python benchmarks/score_scaling.py [--sizes 500 2000 8000] [--out docs/scaling.json]
              [--plot docs/score_scaling.png]

The archive mixes the full-size films of ``../shared/data/rsna`` and the 100 px images of
``rsna-100px`` (symlinks, half each). A plain loop on one core (OpenCV and torch at one thread)
gives the single-core rate, measured before and after the Ray runs (the shared machine's speed
drifts; the mean of both is used). Ray started beforehand, the Ray Data job scores each archive
size. For each it prints seconds, images/s, the ratio to cores x the single-core rate, the same from
the first results on (start-up excluded, the target: >= 0.85; a range, as the other actors' first
chunks were partly done by then), and the peak resident memory of each worker process (sampled
every 0.2 s) and of the driver.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import cv2
import pandas as pd
import torch

from boneage.devices import usable_cpus
from boneage.jobs.resumable import Output, Resources
from boneage.jobs.score import ScoreJob, ScoreOptions, run

ROOT = Path(__file__).resolve().parents[1]


def build_archive(folder: Path, shared: Path, n: int) -> str:
    """``n`` symlinks, alternately a full-size film and a 100 px image, and a manifest with their sex."""
    full = pd.concat([pd.read_csv(shared / "rsna" / f"{s}.csv", dtype={"id": str}).assign(split=s)
                      for s in ("train", "val")])
    small = pd.read_csv(shared / "rsna-100px" / "boneage-training-dataset.csv", dtype={"id": str})
    sources = [(shared / "rsna" / r.split / f"{r.id}.png", r.male) for r in full.itertuples()]
    smalls = [(shared / "rsna-100px" / "images" / f"{r.id}.png", r.male) for r in small.itertuples()]
    folder.mkdir(parents=True)
    rows = []
    for i in range(n):
        src, male = sources[(i // 2) % len(sources)] if i % 2 == 0 else smalls[(i // 2) % len(smalls)]
        link = folder / f"{i:06d}_{src.name}"
        link.symlink_to(src)
        rows.append({"path": str(link), "sex": "M" if str(male) == "True" else "F"})
    manifest = folder.parent / f"{folder.name}.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return str(manifest)


def scorer_pids() -> set[int]:
    """Processes of Ray workers that run the scorer."""
    pids = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"ChunkScorer" in cmdline.read_bytes():
                pids.add(int(cmdline.parent.name))
        except OSError:  # ended meanwhile
            continue
    return pids


def sample_memory(peaks: dict[int, float], stop: threading.Event, driver: int) -> None:
    """Peak RSS (MiB, from /proc) of the driver and of every Ray worker that runs the scorer, until ``stop``.
    Workers are looked for every 2 s, their memory read every 0.2 s: scanning every process's command
    line at 5 Hz cost 2% of a core, taken from the run it measures. Workers of the run before, still
    exiting when this one starts, are not this run's."""
    earlier = scorer_pids()
    watched: set[int] = {driver}
    looked = 0.0
    while not stop.is_set():
        if time.monotonic() - looked >= 2.0:
            looked = time.monotonic()
            watched |= scorer_pids() - earlier
        for pid in list(watched):
            try:
                rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                           if line.startswith("VmRSS:")) / 1024
            except (OSError, StopIteration, ValueError):  # ended
                watched.discard(pid)
                continue
            peaks[pid] = max(peaks.get(pid, 0.0), rss)
        stop.wait(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 8000])
    parser.add_argument("--loop-files", type=int, default=400, help="files of the single-core loop")
    parser.add_argument("--model", help="checkpoint (default: the shipped model)")
    parser.add_argument("--chunk-size", type=int, help="files per Ray Data block (default: the job's)")
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--plot", help="write a plot of time and memory against archive size here (PNG)")
    args = parser.parse_args()
    shared = Path(args.shared)
    cpus = usable_cpus()
    with tempfile.TemporaryDirectory() as tmp:
        loop_manifest = build_archive(Path(tmp, "loop"), shared, args.loop_files)
        threads = torch.get_num_threads(), cv2.getNumThreads()
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
        loop_options, one_core = ScoreOptions(model=args.model, manifest=loop_manifest), Resources(use_ray=False,
                                                                                                   device="cpu")
        run([str(Path(tmp, "loop"))], Output(str(Path(tmp, "warm")), progress=False), loop_options,
            one_core)  # warm-up: model and networks loaded, caches filled

        def single_core_rate(out: str) -> float:
            start = time.perf_counter()
            loop = run([str(Path(tmp, "loop"))], Output(str(Path(tmp, out)), progress=False), loop_options, one_core)
            return loop["processed_this_run"] / (time.perf_counter() - start)

        loop_before = single_core_rate("loop-out")
        torch.set_num_threads(threads[0])
        cv2.setNumThreads(threads[1])

        from boneage.raycluster import ensure_ray

        ensure_ray()
        results = []
        for run_index, n in enumerate(args.sizes):  # a size may repeat: each run has its own archive
            folder = Path(tmp, f"archive{run_index}-{n}")
            manifest = build_archive(folder, shared, n)
            peaks: dict[int, float] = {}
            stop = threading.Event()
            sampler = threading.Thread(target=sample_memory, args=(peaks, stop, os.getpid()), daemon=True)
            sampler.start()
            first: list[tuple[float, int]] = []  # the first rows to reach the driver: when, and how many

            def first_result(table, first=first) -> None:
                if not first:
                    first.append((time.perf_counter(), table.num_rows))

            start = time.perf_counter()
            output = Output(str(Path(tmp, f"out{run_index}-{n}")), progress=False, callbacks=[first_result])
            job = run([str(folder)], output, ScoreOptions(model=args.model, manifest=manifest),
                      Resources(chunk_size=args.chunk_size))
            seconds = time.perf_counter() - start
            stop.set()
            sampler.join()
            assert job["scored"] + job["refused"] + job["failed"] == n, job
            driver = peaks.pop(os.getpid(), 0.0)
            # Start-up excluded: from the first results on (the actors have loaded their networks). The
            # other actors' first chunks were partly done by then: counting none of their files gives a
            # lower bound, counting all but the first result's an upper one.
            after = round(first[0][0] - start, 1)
            steady = (n - cpus * (args.chunk_size or ScoreJob.chunk_size)) / (seconds - after)
            upper = (n - first[0][1]) / (seconds - after)
            row = {"files": n, "seconds": round(seconds, 1), "images_per_s": round(n / seconds, 2),
                   "seconds_to_first_result": after, "images_per_s_after_start": round(steady, 2),
                   "images_per_s_after_start_upper": round(upper, 2),
                   "worker_peak_rss_mib": round(max(peaks.values(), default=0.0)),
                   "workers_seen": len(peaks), "driver_peak_rss_mib": round(driver),
                   "scored": job["scored"], "refused": job["refused"], "failed": job["failed"]}
            print(json.dumps(row), flush=True)
            results.append(row)

        # The single-core loop again: the shared machine's speed drifts; the target uses the mean of both.
        torch.set_num_threads(1)
        cv2.setNumThreads(1)
        loop_after = single_core_rate("loop-out-again")
        loop_rate = (loop_before + loop_after) / 2
        for row in results:
            row["ratio_to_cores_x_single_core"] = round(row["images_per_s"] / (cpus * loop_rate), 3)
            row["ratio_after_start"] = round(row["images_per_s_after_start"] / (cpus * loop_rate), 3)
            row["ratio_after_start_upper"] = round(row["images_per_s_after_start_upper"] / (cpus * loop_rate), 3)

    print(f"\n{platform.machine()}, {cpus} CPUs; single-core loop: {loop_rate:.2f} images/s (before the Ray runs "
          f"{loop_before:.2f}, after {loop_after:.2f}) "
          f"({args.loop_files} files, half full-size, half 100 px); target: Ray >= 0.85 x {cpus} x that = "
          f"{0.85 * cpus * loop_rate:.1f} images/s")
    print(f"{'files':>6} {'seconds':>8} {'images/s':>9} {'ratio':>6} {'start s':>8} {'after start':>14} "
          f"{'ratio':>11} {'worker MiB':>11} {'driver MiB':>11}")
    for r in results:
        print(f"{r['files']:>6} {r['seconds']:>8.1f} {r['images_per_s']:>9.2f} {r['ratio_to_cores_x_single_core']:>6.2f} "
              f"{r['seconds_to_first_result']:>8.1f} {r['images_per_s_after_start']:>6.2f}-{r['images_per_s_after_start_upper']:<7.2f} "
              f"{r['ratio_after_start']:>5.2f}-{r['ratio_after_start_upper']:<5.2f} "
              f"{r['worker_peak_rss_mib']:>11} {r['driver_peak_rss_mib']:>11}")
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": f"{platform.machine()}, {cpus} CPUs",
                                              "single_core_images_per_s": round(loop_rate, 2),
                                              "single_core_before_after": [round(loop_before, 2), round(loop_after, 2)],
                                              "runs": results}, indent=2) + "\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
        files = [r["files"] for r in results]
        left.plot(files, [r["seconds"] for r in results], "o-")
        left.set(xlabel="files", ylabel="seconds", title="time (Ray started beforehand)")
        right.plot(files, [r["worker_peak_rss_mib"] for r in results], "o-", label="worst worker")
        right.plot(files, [r["driver_peak_rss_mib"] for r in results], "s-", label="driver")
        right.set(xlabel="files", ylabel="peak RSS, MiB", title="memory", ylim=(0, None))
        right.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)


if __name__ == "__main__":
    main()
