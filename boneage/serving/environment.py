"""What the endpoint needs of Ray's own processes, read from the environment when they start: Serve's fast
path, HAProxy's files in a private folder, the access log unbuffered, Serve's own answers in the endpoint's
shape. ``boneage serve`` sets them before it starts a local Ray (:func:`use_serve_fast_path`); a cluster sets
them on its nodes (cluster.yaml, deploy/kuberay/rayservice.yaml)."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

# Ray Serve's high-throughput mode (Ray 2.56 and later): HAProxy takes the HTTP traffic in place of Serve's
# Python proxy actor, and the ingress reaches the model deployment over gRPC. Ray's processes read these when
# they start, so they are set before a local Ray starts; a cluster sets them on its nodes (cluster.yaml).
# Concurrency 16 on the 2-core development machine: 24.0 req/s without, 38.5 with (README "Benchmark").
SERVE_FAST_PATH = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}


# Where HAProxy keeps its files. Ray's template opens the admin socket with "mode 666 level admin" (any local
# user could re-route the traffic, keys and films included) under /tmp/haproxy-serve; in a folder only this
# user can enter, the socket's own mode no longer matters (docs/security.md).
HAPROXY_FILES = {"RAY_SERVE_HAPROXY_SOCKET_PATH": "admin.sock", "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": "metrics.sock",
                 "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": "haproxy.cfg", "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": "",
                 "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": "server-state"}


def private_folder(name: str) -> Path:
    """``<tmp>/<name>-<uid>``, created 0700 and refused unless it is this user's own private folder (a
    folder or link another user made there first would let them in)."""
    folder = Path(tempfile.gettempdir()) / f"{name}-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise PermissionError(f"{folder} is not a folder of this user's: refusing to put HAProxy's admin socket there")
    if stat.S_IMODE(info.st_mode) != 0o700:
        folder.chmod(0o700)
    return folder


def use_serve_fast_path() -> None:
    """Ask the Ray this process is about to start for Serve's fast path, with HAProxy's sockets and files in a
    private folder, and for what the endpoint needs of Serve (``ENDPOINT_ENV``); a variable the user set wins
    (``RAY_SERVE_ENABLE_HA_PROXY=0``: Serve's own proxy)."""
    for name, value in {**SERVE_FAST_PATH, **ENDPOINT_ENV, **LOCAL_ENDPOINT_ENV}.items():
        os.environ.setdefault(name, value)
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
        folder = private_folder("boneage-haproxy")
        for name, file in HAPROXY_FILES.items():
            os.environ.setdefault(name, str(folder / file) if file else str(folder))


# What the endpoint needs of Serve, read by Ray's processes when they start (so set, like the fast path, before
# a local Ray starts; a cluster sets them on its nodes). A variable the user set wins.
ENDPOINT_ENV = {
    # The fast path buffers Serve's request log (the access log) 1,000 lines at a time: a SIGTERM or a crash
    # lost up to 999 requests of the audit trail. One line, one write.
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1",
    # Serve's own answers (503 over max_queued_requests, 408, 500) in the endpoint's JSON error shape and
    # with its security headers (boneage.serving.http_guard).
    # ... and each request's body received whole before it takes one of the ingress's max_ongoing_requests
    # (boneage.serving.upload_gate: a minimum upload rate, uploads per source, bytes held).
    "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "boneage.serving.http_guard:proxy_middlewares",
    # HAProxy closes a connection whose client has sent nothing for 10 s (Ray's default is an hour): a half-sent
    # header is the time-out of seconds the gate cannot give, as the request has not reached it yet. A response
    # that takes longer is not cut (HAProxy waits for the server then, not for the client).
    "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": "10",
}

# For the local Ray of ``boneage serve`` only (a cluster keeps Ray's defaults). An ingress replica that stops
# stays reachable for Ray's 30 s "so load balancers can deregister it" before it drains: Ctrl-C took 34.7 s
# ("Controller failed to shut down within 30.0s"). Here the only balancer is this node's HAProxy, which the
# controller updates at once and which retries a refused connection on another replica.
LOCAL_ENDPOINT_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}

