"""``boneage predict`` on a busy machine: the 150 films of rsna/val alone, then beside CPU-bound hog
processes, with the wall times, the CPU time the command used and the ratio. A one-process command
whose thread pools spin against another process's work was ten times slower there (issue 28); the
target is at most 2x slower beside one hog than alone.

Run by hand:  .venv/bin/python benchmarks/busy_machine.py [--data ../shared/data/rsna/val] [--hogs 1]
              [--threads N] [--model hires] [--repeat 1]

``--threads`` is passed to ``boneage predict`` (default: none, so the command's own default is
measured); BONEAGE_THREADS and the thread variables of the caller's environment are removed for the
same reason. The result goes to ``benchmarks/results/<date>-busy_machine[-threadsN].json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from boneage.devices import POOL_ENVS, THREADS_ENV, usable_cpus

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "rsna" / "val"
HOG = "while True: pass"


def predict_command(films: list[Path], model: str, threads: int | None) -> list[str]:
    """The command a user types, in JSON so that the two runs' bone ages can be compared."""
    command = [sys.executable, "-m", "boneage", "predict", *map(str, films), "--sex", "M", "--json",
               "--model", model]
    return command + (["--threads", str(threads)] if threads else [])


def clean_env() -> dict[str, str]:
    """The caller's environment without any thread setting, so the command's own choice is measured."""
    return {k: v for k, v in os.environ.items() if k not in (*POOL_ENVS, THREADS_ENV)}


def timed_run(command: list[str]) -> dict:
    """Wall and CPU seconds of one run (the child's own rusage), and its bone ages by film."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=err, env=clean_env(), cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode not in (0, 1):  # 1: some film could not be scored, the others are printed
            raise RuntimeError(f"boneage predict failed ({proc.returncode}): {err.read().decode()[-2000:]}")
        rows = [json.loads(line) for line in out.read().decode().splitlines() if line.startswith("{")]
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "bone_ages": {row["path"]: row["bone_age_months"] for row in rows}}


def beside_hogs(command: list[str], hogs: int) -> dict:
    """One run while ``hogs`` processes each keep a core busy; the hogs are stopped after it."""
    started = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(hogs)]
    try:
        time.sleep(0.5)  # the hogs are spinning before the command starts
        return timed_run(command)
    finally:
        for hog in started:
            hog.kill()
            hog.wait()


def summarize(runs: list[dict]) -> dict:
    return {"wall_s": [round(r["wall_s"], 2) for r in runs], "median_wall_s": round(statistics.median(
            r["wall_s"] for r in runs), 2), "median_cpu_s": round(statistics.median(r["cpu_s"] for r in runs), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="folder of films (default: rsna/val, 150 films)")
    parser.add_argument("--model", default="hires", help="model to predict with")
    parser.add_argument("--threads", type=int, help="passed to boneage predict (default: its own default)")
    parser.add_argument("--hogs", type=int, default=1, help="CPU-bound processes running beside it")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each kind (the median is compared)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    films = sorted(args.data.glob("*.png"))
    if not films:
        parser.error(f"no PNG films in {args.data}")
    command = predict_command(films, args.model, args.threads)
    load_before = os.getloadavg()
    alone = [timed_run(command) for _ in range(args.repeat)]
    busy = [beside_hogs(command, args.hogs) for _ in range(args.repeat)]
    ratio = statistics.median(r["wall_s"] for r in busy) / statistics.median(r["wall_s"] for r in alone)
    result = {
        "benchmark": "busy_machine",
        "date": datetime.date.today().isoformat(),
        "command": f"boneage predict <{len(films)} films of {args.data.name}> --sex M --json --model {args.model}"
                   + (f" --threads {args.threads}" if args.threads else ""),
        "threads": args.threads or "default",
        "hogs": args.hogs,
        "films": len(films),
        "machine": {"usable_cpus": usable_cpus(), "platform": platform.platform(),
                    "python": platform.python_version(), "load_average_before": [round(x, 2) for x in load_before]},
        "alone": summarize(alone),
        "beside_hogs": summarize(busy),
        "ratio": round(ratio, 2),
        "target_ratio": 2.0,
        "target_met": ratio <= 2.0,
        "same_bone_ages": all(r["bone_ages"] == alone[0]["bone_ages"] for r in alone + busy),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    suffix = f"-threads{args.threads}" if args.threads else ""
    path = args.out_dir / f"{result['date']}-busy_machine{suffix}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"alone {result['alone']['median_wall_s']} s ({result['alone']['median_cpu_s']} s CPU), beside "
          f"{args.hogs} hog(s) {result['beside_hogs']['median_wall_s']} s ({result['beside_hogs']['median_cpu_s']} s "
          f"CPU): {result['ratio']}x (target <= 2x: {'met' if result['target_met'] else 'NOT met'}); "
          f"same bone ages: {result['same_bone_ages']}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
