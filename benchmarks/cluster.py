"""The multi-node figures: runs ``tests/cluster`` (a head and 1-CPU worker nodes on loopback, a worker node
killed under scoring, preprocessing, training and the endpoint; the endpoint scaled out and back) and
writes what the tests measured as dated result files:
``benchmarks/results/<date>-cluster.json`` (node loss), ``-cluster_spread.json`` (chunks by node) and
``-cluster_autoscaling.json`` (replicas over time, latency during the scale-up).

    .venv/bin/python benchmarks/cluster.py                  # about 5 minutes on a quiet 2-core machine
    .venv/bin/python benchmarks/cluster.py --from FIGURES   # from an earlier run's BONEAGE_FIGURES_DIR
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _machine() -> dict:
    import ray

    load = os.getloadavg()
    return {"cpu": f"{os.cpu_count()}-core {platform.machine()}, load average {load[0]:.1f} when written",
            "gpu": "none", "nodes": "a head (0 CPUs) and 1-CPU worker nodes, each a `ray start` process on 127.0.0.1",
            "ray": ray.__version__}


def _node_loss_row(job: str, d: dict) -> dict:
    return {"job": job, "inputs": d["reference_rows"], "chunks": d["chunks"],
            "chunks committed at kill": d["chunks_committed_at_kill"], "exit status": d["exit_status"],
            "re-run needed": d["rerun_needed"], "rows lost": d["lost"], "rows duplicated": d["duplicated"],
            "rows changed": d["changed"], "chunk tasks retried": d["chunk_task_retries"],
            "seconds kill to end": d["seconds_from_kill_to_end"]}


def results(figures: Path) -> dict[str, dict]:
    """The three result files' contents, from one run's figures."""
    f = {p.stem: json.loads(p.read_text()) for p in figures.glob("*.json")}
    machine, script = _machine(), "tests/cluster (benchmarks/cluster.py)"
    train, endpoint, scaling = f["cluster-node-loss-train"], f["cluster-node-loss-endpoint"], f["cluster-autoscaling"]
    node_loss = [_node_loss_row("score", f["cluster-node-loss-score"]),
                 _node_loss_row("preprocess", f["cluster-node-loss-preprocess"]),
                 {"job": "train", "epochs redone": train["epochs_redone"],
                  "resumed at epoch": ",".join(map(str, train["resumed_at_epoch"])), "exit status": 0,
                  "seconds kill to end": train["seconds_from_kill_to_end"],
                  "replacement joined s": train["replacement_joined_s_after_kill"]},
                 {"job": "endpoint", "requests": endpoint["requests"], "failed requests": endpoint["failed"],
                  "seconds until every request succeeds": endpoint["seconds_until_every_request_succeeds"],
                  "replacement joined s": endpoint["replacement_joined_s_after_kill"],
                  "replicas back s": endpoint["replicas_back_s_after_kill"],
                  "longest request s": endpoint["longest_request_s"],
                  "request_timeout_s": endpoint["request_timeout_s"]}]
    spread = []
    for job in ("score", "preprocess"):
        d = f[f"cluster-node-loss-{job}"]
        before = d["chunk_tasks_by_node_before_kill"]
        spread.append({"job": job, "chunks done before the kill on the node killed": before.get(d["victim"], 0),
                       "on the other worker node": sum(c for n, c in before.items() if n != d["victim"]),
                       "on the head": before.get("head", 0) + d["chunk_tasks_by_node"].get("head", 0),
                       "chunk tasks by node, whole run": json.dumps(d["chunk_tasks_by_node"]),
                       "rows": d["rows"], "lost": d["lost"], "duplicated": d["duplicated"], "changed": d["changed"]})
    return {
        "cluster": {"title": "Multi-node Ray on loopback: a worker node killed (SIGKILL of its raylet) under each job",
                    "script": script, "machine": machine,
                    "unit": "rows and requests counted; seconds of wall-clock (outcomes hold anywhere, times do not)",
                    "notes": "endpoint failures by outcome: " + json.dumps(endpoint["failed_by_outcome"]),
                    "rows": node_loss, "raw": {k: v for k, v in f.items() if k != "cluster-autoscaling"}},
        "cluster_spread": {"title": "Multi-node Ray on loopback: the chunks of a job by worker node (Ray's state API)",
                           "script": script, "machine": machine, "unit": "chunks (one Ray Data task each), rows",
                           "rows": spread},
        "cluster_autoscaling": {
            "title": "Multi-node Ray on loopback: the endpoint's autoscaling out and back", "script": script,
            "machine": machine, "unit": "replicas RUNNING (Serve's REST API), seconds, latency in seconds",
            "notes": (f"serve_config.yaml's autoscaling_config keys, delays {scaling['upscale_delay_s']} s up / "
                      f"{scaling['downscale_delay_s']} s down, {scaling['clients']} clients; a worker node killed "
                      "under the load; timeline: the samples where a count or the phase changed"),
            "rows": [{"clients": scaling["clients"], "target_ongoing_requests": scaling["target_ongoing_requests"],
                      "seconds to scale out": scaling["seconds_to_scale_out"],
                      "seconds to scale back": scaling["seconds_to_scale_back"],
                      "most ingress replicas": scaling["most_replicas"], "requests": scaling["requests"],
                      "failed": scaling["failed"], "p50 s during scale-up": scaling["p50_s_during_scale_up"],
                      "p99 s during scale-up": scaling["p99_s_during_scale_up"]}],
            "timeline": scaling["timeline"]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="figures", type=Path, help="an earlier run's BONEAGE_FIGURES_DIR")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    figures = args.figures
    if figures is None:
        figures = Path(tempfile.mkdtemp(prefix="cluster-figures-"))
        run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "tests/cluster"], cwd=ROOT,
                             env={**os.environ, "BONEAGE_FIGURES_DIR": str(figures)}, check=False)
        if run.returncode:
            print(f"tests/cluster failed (exit {run.returncode}): no result written", file=sys.stderr)
            return run.returncode
    date = datetime.date.today().isoformat()
    for name, content in results(figures).items():
        path = args.out_dir / f"{date}-{name}.json"
        path.write_text(json.dumps(content, indent=2) + "\n")
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
