"""Issue 30, item 3: the endpoint scales out and back. serve_config.yaml's application deployed with
``serve deploy`` (import path ``boneage.serving.app:app``) and its own autoscaling_config keys, only the
delays shorter (upscale 10 s -> 2 s, downscale 300 s -> 5 s) and half a CPU per replica so two 1-CPU worker
nodes hold four. A load above the ingress's ``target_ongoing_requests`` (16) takes its replicas from 1 to
2 or more; removing it brings them back to 1. The replicas-over-time timeline and the p99 latency during
the scale-up go to $BONEAGE_FIGURES_DIR."""

from __future__ import annotations

import time

import pytest

from tests.cluster.conftest import (
    FIXTURE_FILM,
    Load,
    figures,
    p99,
    replicas,
    serve_cli,
    serve_config,
    wait_serving,
)
from tests.helpers import free_port

pytestmark = pytest.mark.integration
SHORT = {"upscale_delay_s": 2, "downscale_delay_s": 5}
CLIENTS = 24  # concurrent requests: above the ingress's target_ongoing_requests (16)
REQUEST_TIMEOUT_S = 60


def _running(cluster) -> dict[str, int]:
    return {name: sum(1 for r in rs if r["state"] == "RUNNING") for name, rs in replicas(cluster).items()}


def test_the_endpoint_scales_out_under_load_and_back_when_it_passes(cluster):
    port = free_port()
    config = serve_config(cluster.root, port, {"BoneAge": {"autoscaling_config": SHORT}, "BoneAgeModel": {"autoscaling_config": SHORT}},
                          request_timeout_s=REQUEST_TIMEOUT_S, num_cpus=0.5, model_num_cpus=0.5)
    deployed = serve_cli(cluster, "deploy", str(config))
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    url = f"http://127.0.0.1:{port}"
    timeline: list[dict] = []

    def sample(phase: str, since: float) -> dict[str, int]:
        counts = _running(cluster)
        timeline.append({"t_s": round(time.monotonic() - since, 1), "phase": phase, **counts})
        return counts

    try:
        wait_serving(cluster, url)
        t0 = time.monotonic()
        assert sample("idle", t0).get("BoneAge") == 1, timeline
        load = Load(url, FIXTURE_FILM, clients=CLIENTS, timeout_s=REQUEST_TIMEOUT_S + 10).start()
        loaded_at, scaled_at = time.monotonic(), None
        try:
            deadline = loaded_at + 150
            while time.monotonic() < deadline:
                if sample("load", t0).get("BoneAge", 0) >= 2:
                    scaled_at = time.monotonic()
                    break
                time.sleep(1)
            for _ in range(5):  # a few seconds more on two replicas
                time.sleep(1)
                sample("load", t0)
        finally:
            load.stop()
        unloaded_at, back_at = time.monotonic(), None
        deadline = unloaded_at + 150
        while time.monotonic() < deadline:
            if sample("after", t0).get("BoneAge", 0) == 1:
                back_at = time.monotonic()
                break
            time.sleep(1)
    finally:
        serve_cli(cluster, "shutdown", "-y")
    during = [e - s for s, e, o in load.records if scaled_at and s <= scaled_at and o == "200"]
    data = {"clients": CLIENTS, "target_ongoing_requests": 16, **SHORT, "timeline": timeline,
            "seconds_to_scale_out": None if scaled_at is None else round(scaled_at - loaded_at, 1),
            "seconds_to_scale_back": None if back_at is None else round(back_at - unloaded_at, 1),
            "most_replicas": max(row.get("BoneAge", 0) for row in timeline),
            "requests": len(load.records), "failed": sum(1 for *_, o in load.records if o != "200"),
            "p99_s_during_scale_up": p99(during), "p50_s_during_scale_up": (
                round(sorted(during)[len(during) // 2], 3) if during else None)}
    figures("cluster-autoscaling", data)
    assert scaled_at is not None, data  # 1 -> 2 or more under the load
    assert back_at is not None, data  # and back to 1 once it passed
