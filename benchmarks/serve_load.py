"""Requests per second and latency of the online endpoint under load, with dynamic batching on and
off, in one run, on loopback only.

Run by hand:  .venv/bin/python benchmarks/serve_load.py [--data ../shared/data/rsna] [--requests 200]
              [--duration 60] [--concurrency 1 4 16 64] [--model URI] [--replicas 1 | --autoscale]
              [--num-cpus N] [--out FILE.json]

It starts Serve from ``serve_config.yaml`` in this process (what ``serve run serve_config.yaml`` and
``boneage serve`` do) on a free port of 127.0.0.1, then for each setting (batching on: the config's
``max_batch_size``; off: ``max_batch_size: 1``, set through ``user_config`` only) and each concurrency
sends real radiographs (``POST /v1/predict``) from that many client threads, each cell bounded by
``--requests`` and ``--duration``. It prints requests/s, p50/p95/p99 latency, the mean batch size
the model replicas formed, each replica's CPU milliseconds per request (from /proc: what bounds the
cell), the mean number of films per call from the ingress to the model (both from Ray's metrics,
``boneage_model_batch_size`` and ``boneage_films_per_model_call``, read from the nodes' metrics ports), the
throughput ratio batching on / off, and the targets: p50 at concurrency 1 within 10% of batching off,
and at concurrency 16 0.8 x (CPUs / the single-core per-film time). That time is measured in this
process through the endpoint's own path, right before and right after a concurrency-16 cell, in
``--rounds`` rounds with batching on: this shared machine's speed drifts by 10-25% within minutes, so
each cell is compared with the reference measured beside it, and the median ratio is the verdict.
``--replicas`` (1) fixes the replica count so the two settings compare like with like;
``--autoscale`` keeps the config's autoscaling. ``--url http://127.0.0.1:8000`` measures a server
already running (``serve run serve_config.yaml``) as it is configured, without the on/off switch (its
batch sizes from ``--metrics`` URLs, else from the metrics ports of the Ray cluster on this machine).
``--requests 4 --concurrency 1 2`` is a quick check that the script works.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd
import requests

from boneage.devices import usable_cpus

ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_images(data: Path, limit: int | None) -> list[tuple[str, bytes, str]]:
    """(name, bytes, sex) of real radiographs: the RSNA images with their labelled sex, else the fixtures."""
    images = []
    for split in ("train", "val"):
        labels = data / f"{split}.csv"
        if labels.exists():
            for row in pd.read_csv(labels).itertuples():
                path = data / split / f"{row.id}.png"
                if path.exists():
                    images.append((path.name, path.read_bytes(), "M" if bool(row.male) else "F"))
    if not images:
        images = [(p.name, p.read_bytes(), "F") for p in sorted((ROOT / "tests" / "fixtures").glob("rsna_[0-9]*.png"))]
    return images[:limit] if limit else images


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def run_cell(url: str, headers: dict, images: list, concurrency: int, max_requests: int, duration: float) -> dict:
    """``concurrency`` closed-loop clients until ``max_requests`` are sent or ``duration`` passes."""
    latencies: list[float] = []
    codes: dict[int, int] = {}
    lock = threading.Lock()
    sent = [0]
    deadline = time.monotonic() + duration

    def client(worker: int) -> None:
        session = requests.Session()
        i = worker
        while True:
            with lock:
                if sent[0] >= max_requests or time.monotonic() >= deadline:
                    return
                sent[0] += 1
            name, data, sex = images[i % len(images)]
            i += concurrency
            start = time.perf_counter()
            try:
                code = session.post(url + "/v1/predict", files={"file": (name, data, "image/png")}, data={"sex": sex},
                                    headers=headers, timeout=max(30.0, duration)).status_code
            except requests.RequestException:
                code = 0
            elapsed = time.perf_counter() - start
            with lock:
                codes[code] = codes.get(code, 0) + 1
                if code == 200:
                    latencies.append(elapsed)

    threads = [threading.Thread(target=client, args=(w,)) for w in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ms = [1000 * x for x in latencies]
    return {"concurrency": concurrency, "requests": sum(codes.values()), "ok": len(latencies),
            "status_codes": {str(k): v for k, v in sorted(codes.items())}, "seconds": round(wall, 2),
            "requests_per_s": round(len(latencies) / wall, 3) if wall else None,
            "p50_ms": round(statistics.median(ms), 1) if ms else None,
            "p95_ms": round(percentile(ms, 95), 1) if ms else None,
            "p99_ms": round(percentile(ms, 99), 1) if ms else None}


def single_core_reference(service, images: list, n: int = 40) -> float:
    """Median ms per film on one core through the endpoint's own path (decode, prepare, one-film model
    call) of ``service`` (a ``BoneAgeService``), in this process: the "single-core per-film time" the
    throughput target is stated in."""
    import cv2
    import torch

    threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    times = []
    for name, data, sex in (images * 2)[: n + 3]:
        start = time.perf_counter()
        service.response(service.predict([service.prepare(data, sex, None, name)])[0])
        times.append(1000 * (time.perf_counter() - start))
    torch.set_num_threads(threads[0])
    cv2.setNumThreads(threads[1])
    return statistics.median(times[3:])


def target_rounds(url: str, headers: dict, images: list, args) -> list[dict]:
    """Concurrency 16 against 0.8 x CPUs / the single-core time measured right before and after it."""
    from boneage.predict.predictor import Predictor
    from boneage.serving.handler import BoneAgeService

    service = BoneAgeService(Predictor.load(args.model, device="cpu"))
    rounds = []
    for _ in range(args.rounds):
        before = single_core_reference(service, images)
        cell = run_cell(url, headers, images, 16, args.requests, args.duration)
        after = single_core_reference(service, images)
        per_film = (before + after) / 2
        target = 0.8 * usable_cpus() / (per_film / 1000)
        rounds.append({"requests_per_s": cell["requests_per_s"], "p99_ms": cell["p99_ms"], "status_codes": cell["status_codes"],
                       "single_core_ms": round(per_film, 2), "before_ms": round(before, 2), "after_ms": round(after, 2),
                       "target_requests_per_s": round(target, 2),
                       "ratio": round(cell["requests_per_s"] / target, 3) if cell["requests_per_s"] else None})
        print(json.dumps({"round": len(rounds), **rounds[-1]}), flush=True)
    return rounds


def replica_cpu_seconds() -> dict[str, float]:
    """CPU seconds so far of each Serve replica process on this machine, by deployment (from /proc, Linux):
    the difference over a cell says where a request's CPU goes (ingress: upload and preparation; model)."""
    out: dict[str, float] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "ServeReplica:" not in command:
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # "ray::ServeReplica:APP:DEPLOYMENT", with ".METHOD" appended while a request runs
        deployment = command.split("ServeReplica:", 1)[1].split()[0].rsplit(":", 1)[-1].split(".")[0]
        out[deployment] = out.get(deployment, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def batching(urls: list[str] | None) -> dict | None:
    """Batches and films so far, over every model and ingress replica (Ray's metrics); None without metrics."""
    from boneage.serving import metrics

    if urls is None:
        return None
    samples = metrics.scrape(urls)  # (a histogram's _sum is from its buckets' midpoints: the films are a counter)
    return {"batches": metrics.total(samples, f"{metrics.MODEL_BATCH_SIZE}_count"),
            "films": metrics.total(samples, f"{metrics.MODEL_FILMS}_total"),
            "calls": metrics.total(samples, f"{metrics.FILMS_PER_MODEL_CALL}_count")}


def batching_settled(urls: list[str] | None, timeout_s: float = 60.0) -> dict | None:
    """:func:`batching` once it stops changing: every replica has reported what it did so far (each reports
    every RAY_metrics_report_interval_ms, on its own clock), or after ``timeout_s``."""
    interval = float(os.environ.get("RAY_metrics_report_interval_ms", 10_000)) / 1000
    deadline = time.monotonic() + timeout_s
    last = batching(urls)
    while last is not None:
        time.sleep(2 * interval)
        now = batching(urls)
        if now == last or time.monotonic() > deadline:
            return now
        last = now
    return None


def mean_batch(before: dict | None, after: dict | None) -> float | None:
    """Films per forward pass of the model replicas over a cell."""
    batches = after["batches"] - before["batches"] if before and after else 0
    return round((after["films"] - before["films"]) / batches, 2) if batches > 0 else None


def films_per_call(before: dict | None, after: dict | None) -> float | None:
    """Films per call from the ingress replicas to the model over a cell (every film the model scores came in
    one): one hop serves that many."""
    calls = after["calls"] - before["calls"] if before and after else 0
    return round((after["films"] - before["films"]) / calls, 2) if calls > 0 else None


def measure(url: str, headers: dict, images: list, args, label: str, max_batch_size: int | None) -> list[dict]:
    for name, data, sex in images[: min(4, len(images))]:  # warm-up: first calls load lazily
        requests.post(url + "/v1/predict", files={"file": (name, data, "image/png")}, data={"sex": sex},
                      headers=headers, timeout=120)
    rows = []
    for concurrency in args.concurrency:
        before, cpu_before = batching_settled(args.metrics), replica_cpu_seconds()
        cell = run_cell(url, headers, images, concurrency, args.requests, args.duration)
        cpu_after = replica_cpu_seconds()
        after = batching_settled(args.metrics)
        cell.update(batching=label, max_batch_size=max_batch_size, mean_batch_size=mean_batch(before, after),
                    films_per_model_call=films_per_call(before, after))
        if cell["ok"]:
            cell["cpu_ms_per_request"] = {name: round(1000 * (cpu_after[name] - cpu_before.get(name, 0.0)) / cell["ok"], 1)
                                          for name in sorted(cpu_after)}
        print(json.dumps(cell), flush=True)
        rows.append(cell)
    return rows


def local_metrics_urls() -> list[str] | None:
    """The metrics ports of the Ray cluster on this machine (``--url`` without ``--metrics``), if there is one."""
    import ray

    from boneage.serving.metrics import metrics_urls

    try:
        ray.init(address="auto", log_to_driver=False)
    except ConnectionError:
        print("no Ray cluster on this machine: no batch sizes (give --metrics)", flush=True)
        return None
    return metrics_urls()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "rsna"))
    parser.add_argument("--config", default=str(ROOT / "serve_config.yaml"))
    parser.add_argument("--model", help="checkpoint (default: the config's, else the shipped default)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--requests", type=int, default=200, help="at most this many requests per cell")
    parser.add_argument("--duration", type=float, default=60.0, help="at most this many seconds per cell")
    parser.add_argument("--limit", type=int, help="only this many distinct images")
    parser.add_argument("--replicas", type=int, default=1, help="fixed replica count (ignored with --autoscale)")
    parser.add_argument("--autoscale", action="store_true", help="keep the config's autoscaling_config")
    parser.add_argument("--num-cpus", type=float, help="CPUs (and preprocessing threads) per replica, over the config's")
    parser.add_argument("--url", help="an already running server on loopback (measures it as configured)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="concurrency-16 cells beside their single-core reference, for the target (0: none)")
    parser.add_argument("--metrics", nargs="+", help="with --url: the Prometheus URLs of the Ray nodes' metrics "
                        "(default: those of the Ray cluster on this machine, if any)")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()
    images = load_images(Path(args.data), args.limit)
    key = os.environ.get("BONEAGE_API_KEY")
    headers = {"X-API-Key": key} if key else {}
    print(f"{len(images)} images; {platform.machine()}, {usable_cpus()} CPUs; concurrency {args.concurrency}, "
          f"at most {args.requests} requests or {args.duration:.0f} s per cell", flush=True)

    rows: list[dict] = []
    rounds: list[dict] = []
    if args.url:
        url = args.url.rstrip("/")
        if urlparse(url).hostname not in LOOPBACK:
            raise SystemExit("load is only ever sent to loopback (127.0.0.1)")
        args.metrics = args.metrics or local_metrics_urls()
        rows += measure(url, headers, images, args, "as configured", None)
        rounds = target_rounds(url, headers, images, args)
    else:
        from boneage.serving.metrics import metrics_urls
        from boneage.serving.runner import deploy, load_config, stop_serve
        from boneage.serving.settings import MODEL_DEPLOYMENT_NAME

        os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")  # for the Ray this starts: figures in 1 s

        config = load_config(args.config)
        if not args.autoscale:
            for deployment in config["applications"][0]["deployments"]:
                deployment.pop("autoscaling_config", None)
                deployment["num_replicas"] = args.replicas
        if args.num_cpus:
            config["applications"][0].setdefault("args", {})["num_cpus"] = args.num_cpus
        model = next(d for d in config["applications"][0]["deployments"] if d["name"] == MODEL_DEPLOYMENT_NAME)
        user_config = model.setdefault("user_config", {})
        batch_size = int(user_config.get("max_batch_size") or 8)
        port = free_port()
        try:
            for label, size in (("on", batch_size), ("off", 1)):
                user_config["max_batch_size"] = size  # user_config only: no code change
                t0 = time.perf_counter()
                url = deploy(config, model=args.model, host="127.0.0.1", port=port).rstrip("/")
                print(f"batching {label} (max_batch_size {size}): deployed in {time.perf_counter() - t0:.1f} s",
                      flush=True)
                args.metrics = metrics_urls()
                rows += measure(url, headers, images, args, label, size)
                if label == "on":
                    rounds = target_rounds(url, headers, images, args)
        finally:
            stop_serve()  # serve.shutdown(), without Ray's "graceful_shutdown failed" line

    print(f"\n{'batching':>9} {'conc':>5} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'batch':>6} "
          f"{'call':>5} {'CPU ms/request':<32} {'codes'}")
    for r in rows:
        cpu = ", ".join(f"{k} {v}" for k, v in (r.get("cpu_ms_per_request") or {}).items())
        print(f"{r['batching']:>9} {r['concurrency']:>5} {r['requests_per_s'] or 0:>8.2f} {r['p50_ms'] or 0:>8.0f} "
              f"{r['p95_ms'] or 0:>8.0f} {r['p99_ms'] or 0:>8.0f} {r['mean_batch_size'] or 0:>6.2f} "
              f"{r.get('films_per_model_call') or 0:>5.2f} {cpu:<32} {r['status_codes']}")
    ratios = {}
    on1 = next((r for r in rows if r["batching"] == "on" and r["concurrency"] == 1), None)
    off1 = next((r for r in rows if r["batching"] == "off" and r["concurrency"] == 1), None)
    if on1 and off1 and off1["p50_ms"]:
        print(f"concurrency 1: p50 with batching / without = {on1['p50_ms'] / off1['p50_ms']:.2f} (target <= 1.10)")
    ratios16 = [r["ratio"] for r in rounds if r["ratio"] is not None]
    for i, r in enumerate(rounds, 1):
        print(f"concurrency 16, round {i}: {r['requests_per_s']:.2f} req/s (p99 {r['p99_ms']:.0f} ms) against 0.8 x "
              f"{usable_cpus()} CPUs / {r['single_core_ms']:.1f} ms per film on one core (before {r['before_ms']:.1f}, "
              f"after {r['after_ms']:.1f}) = {r['target_requests_per_s']:.1f} req/s: {r['ratio']:.2f}x")
    if ratios16:
        print(f"concurrency 16 against its target: median {statistics.median(ratios16):.2f}x over {len(ratios16)} "
              f"round(s) (target >= 1.00x)")
    for c in args.concurrency:
        on = next((r for r in rows if r["batching"] == "on" and r["concurrency"] == c), None)
        off = next((r for r in rows if r["batching"] == "off" and r["concurrency"] == c), None)
        if on and off and off["requests_per_s"]:
            ratios[c] = round(on["requests_per_s"] / off["requests_per_s"], 2)
            print(f"concurrency {c}: throughput with batching / without = {ratios[c]:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"cells": rows, "throughput_ratio_on_off": ratios, "target_rounds": rounds,
                                              "target_ratio_median": statistics.median(ratios16) if ratios16 else None,
                                              "cpus": usable_cpus()}, indent=2))


if __name__ == "__main__":
    main()
