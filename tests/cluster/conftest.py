"""A real multi-node Ray on this one machine, on loopback: one head (0 CPUs for work, as ``cluster.yaml``
sets it) and worker nodes of 1 CPU each, every one a ``ray start --block`` process with its own raylet,
object store, ports and temp dir. Killing a node is what Ray's own chaos tests do: SIGKILL its raylet.

Nothing here calls ``ray.init``: the jobs run as the user runs them (``python -m boneage ...`` with
``RAY_ADDRESS``), and the tests read the cluster through Ray's state API and the dashboard's REST API
over HTTP. Every process a test starts names the cluster's private temp dir on its command line, and is
killed at the end by that mark (never ``ray stop``, which would stop every Ray on this machine).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.helpers import ROOT, free_port

VENV_BIN = ROOT / ".venv" / "bin"
START_TIMEOUT_S = 180
MIB = 1024**2
GIB = 1024**3


def figures(name: str, data: dict) -> None:
    """Write a test's measured figures to ``$BONEAGE_FIGURES_DIR/<name>.json`` when that is set (the lead
    copies them into benchmarks/results/ and the docs)."""
    folder = os.environ.get("BONEAGE_FIGURES_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")


def _pids_naming(mark: str) -> list[int]:
    """Processes whose command line contains ``mark`` (this cluster's temp dir): ours, and only ours."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if mark.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return [p for p in pids if p != os.getpid()]


def _kill(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class Node:
    name: str
    temp_dir: Path
    proc: subprocess.Popen
    node_id: str = ""
    restart: object = None  # starts the same node again (a node that timed out registering)

    def raylet_pid(self) -> int | None:
        for pid in _pids_naming(str(self.temp_dir)):
            try:
                argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if argv0.endswith(b"/raylet"):
                return pid
        return None


@dataclass
class LoopbackCluster:
    root: Path  # every node's temp dir is under it
    env: dict[str, str]  # the nodes' environment (and the drivers')
    gcs: str = ""  # host:port: RAY_ADDRESS of a driver
    dashboard: str = ""  # http://127.0.0.1:port: the state API, the Jobs API, serve deploy
    head: Node | None = None
    workers: dict[str, Node] = field(default_factory=dict)
    killed: list[str] = field(default_factory=list)
    ever: dict[str, Node] = field(default_factory=dict)  # every worker node started, by name
    _count: int = 0
    started_s: float = 0.0

    # ------------------------------------------------------------------------------ nodes

    def _ports(self) -> list[str]:
        return ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
                "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
                "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]

    def _start(self, name: str, args: list[str]) -> Node:
        temp_dir = self.root / name
        shutil.rmtree(temp_dir, ignore_errors=True)
        temp_dir.mkdir()
        log = open(temp_dir / "start.log", "w")  # noqa: SIM115 - the node's life; closed with the file object
        command = [str(VENV_BIN / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1", "--num-gpus", "0",
                   "--temp-dir", str(temp_dir), "--object-store-memory", str(100 * MIB), "--disable-usage-stats",
                   *self._ports(), *args]
        proc = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        return Node(name, temp_dir, proc, restart=lambda: self._start(name, args))

    def start_head(self) -> None:
        port, dashboard = free_port(), free_port()
        self.gcs, self.dashboard = f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}"
        self.head = self._start("head", ["--head", "--port", str(port), "--num-cpus", "0",
                                         "--include-dashboard=true", "--dashboard-host", "127.0.0.1",
                                         "--dashboard-port", str(dashboard),
                                         "--ray-client-server-port", str(free_port())])

    def add_worker(self, cpus: float = 1, wait: bool = True) -> Node:
        self._count += 1
        name = f"w{self._count}"
        node = self._start(name, ["--address", self.gcs, "--num-cpus", str(cpus), "--memory", str(6 * GIB),
                                  "--resources", json.dumps({name: 1})])
        self.workers[name] = self.ever[name] = node
        if wait:
            self.wait_for(node)
        return node

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"}

    def state(self, resource: str, filters: list[tuple] | None = None) -> list[dict]:
        """Ray's state API (``ray list nodes|tasks|actors``), through the dashboard with this cluster's token."""
        from ray.util.state.api import StateApiClient as Client
        from ray.util.state.common import ListApiOptions, StateResource

        client = Client(address=self.dashboard, headers=self.headers())
        options = ListApiOptions(limit=10000, timeout=30, detail=True, filters=filters or [])
        return [dataclasses.asdict(item) for item in
                client.list(StateResource(resource), options=options, raise_on_missing_output=False)]

    def nodes(self) -> list[dict]:
        """Every node the GCS knows, alive or dead."""
        return self.state("nodes")

    def wait_for(self, node: Node, timeout: float = START_TIMEOUT_S) -> None:
        """Until the node is ALIVE in the GCS; records its node id. ``ray start`` gives a raylet 30 s to
        register (hard-coded in ray._private.node); on this loaded machine that can pass, so a node that
        gave up is started again, twice at most."""
        deadline, restarts = time.monotonic() + timeout, 0
        while time.monotonic() < deadline:
            if node.proc.poll() is not None:
                log = (node.temp_dir / "start.log").read_text()
                assert restarts < 2 and "timed out during startup" in log, log[-3000:]
                restarts += 1
                _kill(_pids_naming(str(node.temp_dir)))
                started = node.restart()
                node.proc, node.temp_dir = started.proc, started.temp_dir
            try:
                for info in self.nodes():
                    if info.get("state") == "ALIVE" and info.get("resources_total", {}).get(node.name):
                        node.node_id = info["node_id"]
                        return
            except Exception:  # the dashboard is still starting  # noqa: BLE001
                pass
            time.sleep(1)
        raise TimeoutError(f"node {node.name} did not join within {timeout:.0f} s")

    def wait_head(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self.head.proc.poll() is None, (self.head.temp_dir / "start.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the head's dashboard never answered"
            try:
                if requests.get(f"{self.dashboard}/api/version", headers=self.headers(), timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            time.sleep(1)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.head.node_id:
            assert time.monotonic() < deadline, "the head never showed in the state API"
            try:
                self.head.node_id = next((n["node_id"] for n in self.nodes() if n.get("is_head_node")), "")
            except Exception:  # noqa: BLE001
                pass
            time.sleep(1)

    def kill(self, node: Node) -> float:
        """SIGKILL the node's raylet (how Ray's own tests lose a node); returns the time.monotonic() of the
        kill. The node's other processes die with it or are killed at the end of the session."""
        pid = node.raylet_pid()
        assert pid, f"no raylet for {node.name}"
        at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        self.killed.append(node.name)
        self.workers.pop(node.name, None)
        return at

    def wait_dead(self, node: Node, timeout: float = 90) -> float:
        """Until the GCS marks the node DEAD; returns when (time.monotonic())."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if any(n["node_id"] == node.node_id and n.get("state") == "DEAD" for n in self.nodes()):
                    return time.monotonic()
            except Exception:  # noqa: BLE001
                pass
            time.sleep(0.5)
        raise TimeoutError(f"node {node.name} still alive {timeout:.0f} s after its raylet was killed")

    def names_by_id(self) -> dict[str, str]:
        """node id -> head, w1, w2 ... for every node this cluster ever had (killed ones too), a node still
        joining included (named by its own custom resource in the state API)."""
        names = {node.node_id: node.name for node in [self.head, *self.ever.values()] if node and node.node_id}
        if any(not node.node_id for node in self.ever.values()):
            try:
                for info in self.nodes():
                    names.setdefault(info["node_id"], next(
                        (n for n in info.get("resources_total", {}) if n in self.ever), info["node_id"]))
            except Exception:  # noqa: BLE001 - the state API is busy: the ids stay unnamed this round
                pass
        return names

    def ensure_workers(self, count: int) -> None:
        """Replace killed nodes: at least ``count`` live worker nodes."""
        new = [self.add_worker(wait=False) for _ in range(count - len(self.workers))]
        for node in new:
            self.wait_for(node)

    def driver_env(self, **extra: str) -> dict[str, str]:
        """The environment of a ``python -m boneage`` driver on this cluster."""
        return {**self.env, "RAY_ADDRESS": self.gcs, **extra}

    def cpu_seconds(self) -> float:
        """CPU time of the cluster's live processes (user + system): what the nodes and their workers cost."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in _pids_naming(str(self.root)):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
            except (OSError, IndexError, ValueError):
                continue
        return total / ticks

    def stop(self) -> None:
        """Every process of the cluster, at once: the whole cluster goes, so nothing needs to drain."""
        for _ in range(3):  # a worker being started meanwhile is caught by the next round
            _kill(_pids_naming(str(self.root)))
            time.sleep(0.5)
        for node in [*self.workers.values(), *([self.head] if self.head else [])]:
            try:
                node.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


# The GCS declares a node dead after ``failure_threshold`` failed health checks, one every ``period``
# (Ray 2.60's defaults: 5 x 3 s after a 5 s initial delay, each check allowed 10 s). A SIGKILLed raylet
# refuses the check at once, so on these loopback nodes it is marked DEAD in about 5 s instead of 15-30 s;
# the 3 s allowed per check keeps a live but busy raylet (this machine runs at a load of 10-30) alive.
FAST_DEATH = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "1000",
              "RAY_health_check_timeout_ms": "3000", "RAY_health_check_failure_threshold": "5",
              # task events reach the state API every 0.2 s instead of 1 s: a chunk finished just before its
              # node dies is still seen where it ran
              "RAY_task_events_report_interval_ms": "200"}


def node_env(root: Path) -> dict[str, str]:
    """What every node (and so every Ray worker) runs with: this worktree's code first, one thread per
    pool, Ray's usage stats off, the endpoint's Serve settings as cluster.yaml sets them, HAProxy's files
    in this cluster's own folder."""
    from boneage.serving.environment import ENDPOINT_ENV, HAPROXY_FILES, SERVE_FAST_PATH

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "RAY_", "BONEAGE_")) and k not in ("VIRTUAL_ENV",)}
    haproxy = root / "haproxy"
    haproxy.mkdir(mode=0o700)
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0",
               RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
               **SERVE_FAST_PATH, **ENDPOINT_ENV, **FAST_DEATH,
               **{name: str(haproxy / file) if file else str(haproxy) for name, file in HAPROXY_FILES.items()})
    return env


@pytest.fixture(scope="package")
def cluster() -> Iterator[LoopbackCluster]:
    """A head (0 CPUs) and two 1-CPU worker nodes, shared by every test of tests/cluster/; a test that
    kills a node calls ``ensure_workers`` at its end, so the next test finds two again."""
    root = Path(tempfile.mkdtemp(prefix="rayc", dir="/tmp"))  # short: Ray's socket paths have a limit
    cluster = LoopbackCluster(root=root, env=node_env(root))
    started = time.monotonic()
    try:
        cluster.start_head()
        cluster.wait_head()
        cluster.ensure_workers(2)
        cluster.started_s = round(time.monotonic() - started, 1)
        yield cluster
    finally:
        figures("cluster-cost", {"cluster_start_s": cluster.started_s, "cluster_cpu_s_at_end": cluster.cpu_seconds(),
                                 "wall_s": round(time.monotonic() - started, 1)})
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------- the inputs

FILMS = 24  # distinct films: the three fixture radiographs, each at 8 sizes; 12 chunks of 2


@pytest.fixture(scope="package")
def films(tmp_path_factory) -> Path:
    """24 distinct radiographs (the committed fixtures at 8 heights each) and an RSNA-format labels CSV:
    no ../shared needed. Sizes differ, so every film has its own bone age and a swapped row would show."""
    import cv2
    import pandas as pd

    from tests.helpers import FIXTURES

    folder = tmp_path_factory.mktemp("films")
    sources = ["rsna_1377.png", "rsna_3107_low_contrast.png", "rsna_7047.png"]
    for i in range(FILMS):
        image = cv2.imread(str(FIXTURES / sources[i % 3]), cv2.IMREAD_GRAYSCALE)
        height = 512 - 8 * (i // 3)
        image = cv2.resize(image, (round(image.shape[1] * height / 512), height), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(folder / f"f{i:02d}.png"), image)
    pd.DataFrame({"id": [f"f{i:02d}" for i in range(FILMS)], "boneage": [40.0 + 3 * i for i in range(FILMS)],
                  "male": [i % 2 == 0 for i in range(FILMS)]}).to_csv(folder.parent / "labels.csv", index=False)
    return folder


def boneage(*args: str, env: dict[str, str]) -> subprocess.Popen:
    """``python -m boneage ARGS`` as a user runs it (the venv's Python, this worktree's code)."""
    return subprocess.Popen([str(VENV_BIN / "python"), "-m", "boneage", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    """Wait for a command (killed past ``timeout``); returns its output."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{proc.args[3:5]} still running after {timeout:.0f} s:\n{out[-4000:]}")
    return out


def score_args(films: Path, out: Path) -> list[str]:
    """One command line for every scoring run (the one-process reference adds --no-ray): chunks of 2,
    committed every 2 results, so a kill lands between commits."""
    return ["score", str(films), "--model", "hires", "--sex", "F", "--out", str(out), "--chunk-size", "2",
            "--commit-every", "2", "--no-progress"]


def preprocess_args(films: Path, out: Path) -> list[str]:
    return ["preprocess", str(films), "--labels", str(films.parent / "labels.csv"), "--out", str(out),
            "--output-size", "64", "--chunk-size", "2"]


@pytest.fixture(scope="package")
def references(films, tmp_path_factory) -> dict[str, Path]:
    """The one-process runs (``--no-ray``) every cluster run is compared with, row for row."""
    root = tmp_path_factory.mktemp("reference")
    env = node_env_plain()
    runs = {"score": boneage(*score_args(films, root / "score"), "--no-ray", env=env),
            "preprocess": boneage(*preprocess_args(films, root / "preprocess"), "--no-ray", env=env)}
    for name, proc in runs.items():
        out = finish(proc)
        assert proc.returncode == 0, f"{name} --no-ray: {out[-3000:]}"
    return {name: root / name for name in runs}


def node_env_plain() -> dict[str, str]:
    """This worktree's code, one thread per pool, no Ray address: a one-process run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_", "BONEAGE_"))}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return env


# ------------------------------------------------------------------------------- comparing results


def score_rows(out: Path):
    import pandas as pd

    return pd.read_parquet(out / "results.parquet")


def cache_rows(out: Path):
    """The training cache's rows (every kept shard a commit marker names), image bytes as a digest."""
    import hashlib

    import pandas as pd

    markers = [json.loads(p.read_text()) for p in sorted((out / "_done").glob("*.json"))]
    shards = [m["shard"] for m in markers if m.get("shard")]
    frame = pd.concat([pd.read_parquet(s) for s in shards], ignore_index=True)
    frame["image"] = [hashlib.sha256(bytes(b)).hexdigest()[:16] for b in frame["image"]]
    return frame


def compare(rows, reference, key: str) -> dict:
    """Rows lost, duplicated and changed against the one-process run (numbers to 1e-6)."""
    import numpy as np

    counts = rows[key].value_counts()
    lost = sorted(set(reference[key]) - set(rows[key]))
    extra = sorted(set(rows[key]) - set(reference[key]))
    duplicated = int((counts - 1).clip(lower=0).sum())
    a = rows.drop_duplicates(key).set_index(key).sort_index()
    b = reference.set_index(key).sort_index()
    common = a.index.intersection(b.index)
    changed = []
    for ident in common:
        for column in b.columns:
            x, y = a.at[ident, column], b.at[ident, column]
            if isinstance(y, float | np.floating) and isinstance(x, float | np.floating):
                same = (np.isnan(x) and np.isnan(y)) or abs(x - y) <= 1e-6 * max(1.0, abs(y))
            else:
                same = (x == y) or (x is None and y is None) or (x != x and y != y)
            if not same:
                changed.append(f"{ident}.{column}: {x!r} != {y!r}")
    return {"rows": int(len(rows)), "reference_rows": int(len(reference)), "lost": len(lost),
            "duplicated": duplicated, "changed": len({c.split('.')[0] for c in changed}), "unexpected": len(extra),
            "examples": (lost + extra + changed)[:5]}


def committed_by_node(cluster: LoopbackCluster, out: Path) -> dict[str, int]:
    """Chunks committed so far by node name, from the commit markers (preprocessing's actors write their
    own, with the node they ran on: the actor's runtime context); empty for a job whose markers do not say."""
    import collections

    from boneage.files.parts import committed_markers

    names = cluster.names_by_id()
    nodes = [names.get(m["node"], m["node"]) for m in committed_markers(str(out)) if m.get("node")]
    return dict(sorted(collections.Counter(nodes).items()))


def committed(out: Path) -> int:
    """Commit markers in OUT/_done (the jobs' own commit protocol): chunks done so far."""
    return len(list((out / "_done").glob("*.json"))) if (out / "_done").exists() else 0


def chunk_nodes(cluster: LoopbackCluster, udf: str, jobs_before: set[str]) -> dict:
    """Where each chunk ran: Ray's state API, the Ray Data actor tasks (one per chunk: batch size 1) of
    the UDF ``udf``, in jobs started after ``jobs_before``; by node name (w1, w2 ...)."""
    import collections

    known = cluster.names_by_id()

    def name(node_id: str | None) -> str:  # a task or actor not placed yet has no node
        return known.get(node_id, node_id) if node_id else "not placed"

    tasks = [t for t in cluster.state("tasks") if t["name"] == f"MapWorker(MapBatches({udf})).submit"
             and t["job_id"] not in jobs_before]
    by_node = collections.Counter(name(t["node_id"]) for t in tasks if t["state"] == "FINISHED")
    actors = collections.Counter(name(a["node_id"]) for a in cluster.state("actors")
                                 if a["class_name"] == f"MapWorker(MapBatches({udf}))" and a["job_id"] not in jobs_before)
    return {"chunks_by_node": dict(sorted(by_node.items())), "actors_by_node": dict(sorted(actors.items())),
            "chunk_tasks": [{"node": name(t["node_id"]), "state": t["state"], "attempt": t["attempt_number"]}
                            for t in tasks]}


def job_ids(cluster: LoopbackCluster) -> set[str]:
    return {t["job_id"] for t in cluster.state("tasks")}


# ----------------------------------------------------------------------------------- the endpoint


def serve_config(folder: Path, port: int, deployments: dict[str, dict], request_timeout_s: float = 20, **args) -> Path:
    """The shipped serve_config.yaml with a free port, a shorter ``request_timeout_s``, application ``args``
    and per-deployment overrides (``num_replicas``, or ``autoscaling_config`` values): the same keys."""
    import copy

    import yaml

    config = copy.deepcopy(yaml.safe_load((ROOT / "serve_config.yaml").read_text()))
    config["http_options"].update(host="127.0.0.1", port=port, request_timeout_s=request_timeout_s)
    app = config["applications"][0]
    unknown = set(args) - set(app["args"])
    assert not unknown, f"not keys of serve_config.yaml's args: {unknown}"
    app["args"].update(args)
    for deployment in app["deployments"]:
        override = deployments.get(deployment["name"], {})
        if "num_replicas" in override:
            deployment.pop("autoscaling_config", None)
            deployment["num_replicas"] = override["num_replicas"]
        if "autoscaling_config" in override:
            unknown = set(override["autoscaling_config"]) - set(deployment["autoscaling_config"])
            assert not unknown, f"not keys of serve_config.yaml's autoscaling_config: {unknown}"
            deployment["autoscaling_config"].update(override["autoscaling_config"])
    path = folder / f"serve_config-{port}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def serve_cli(cluster: LoopbackCluster, *args: str) -> subprocess.CompletedProcess:
    """Ray Serve's own CLI (``serve deploy|shutdown``) against the head's dashboard, with its token."""
    env = {**cluster.env, "RAY_AUTH_MODE": "token"}
    return subprocess.run([str(VENV_BIN / "serve"), *args, "--address", cluster.dashboard], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def serve_state(cluster: LoopbackCluster) -> dict:
    """``serve status`` as the dashboard's REST API gives it: each deployment's status and replicas (node ids)."""
    answer = requests.get(f"{cluster.dashboard}/api/serve/applications/", headers=cluster.headers(), timeout=30)
    answer.raise_for_status()
    return answer.json()


def replicas(cluster: LoopbackCluster) -> dict[str, list[dict]]:
    """deployment -> its replicas: state and node name."""
    names = cluster.names_by_id()
    app = serve_state(cluster).get("applications", {}).get("boneage", {})
    return {name: [{"state": r.get("state"), "node": names.get(r.get("node_id"), r.get("node_id"))}
                   for r in d.get("replicas", [])] for name, d in app.get("deployments", {}).items()}


def wait_serving(cluster: LoopbackCluster, url: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/healthz", timeout=5).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise TimeoutError(f"the endpoint did not answer within {timeout:.0f} s: {serve_state(cluster)}")


@dataclass
class Load:
    """A steady, bounded load: ``clients`` threads, each posting one film after the other (each request
    bounded by ``timeout_s``), until ``stop()``; every request's start, end and outcome recorded."""

    url: str
    film: Path
    clients: int
    timeout_s: float
    records: list[tuple[float, float, str]] = field(default_factory=list)  # (start, end, "200" | error)

    def __post_init__(self) -> None:
        import threading

        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        self._data = self.film.read_bytes()

    def _client(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    answer = session.post(f"{self.url}/v1/predict", files={"file": ("hand.png", self._data, "image/png")},
                                          data={"sex": "F"}, timeout=self.timeout_s)
                    outcome = str(answer.status_code)
                    if not answer.ok:  # which error: the endpoint's error_code, or the start of a text
                        try:
                            outcome += f" {answer.json().get('error_code')}"
                        except ValueError:
                            outcome += f" {answer.text[:40]!r}"
                except requests.RequestException as exc:
                    outcome = type(exc).__name__
                self.records.append((start, time.monotonic(), outcome))

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 5)


def p99(values: list[float]) -> float | None:
    import numpy as np

    return round(float(np.percentile(values, 99)), 3) if values else None


FIXTURE_FILM = ROOT / "tests" / "fixtures" / "rsna_7047.png"
