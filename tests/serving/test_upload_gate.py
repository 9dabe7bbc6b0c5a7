"""The upload gate in a real HTTP server (uvicorn on 127.0.0.1), with clients that stall on purpose: a body
is received whole before the application sees the request (issue 31, item 2)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from contextlib import contextmanager

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from boneage.serving.api_key import API_KEY_ENV
from boneage.serving.upload_gate import UploadGate, UploadRules


class Seen:
    """What reached the application, and when."""

    def __init__(self) -> None:
        self.entered: list[str] = []  # paths, as each request reached the app (before its body is read)
        self.requests: list[tuple[str, int]] = []  # (path, body bytes) once read


def _app(seen: Seen) -> Starlette:
    async def echo(request: Request) -> JSONResponse:
        seen.entered.append(request.url.path)
        body = await request.body()
        seen.requests.append((request.url.path, len(body)))
        return JSONResponse({"bytes": len(body)})

    async def healthz(request: Request) -> JSONResponse:
        seen.requests.append((request.url.path, 0))
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/upload", echo, methods=["POST"]), Route("/healthz", healthz)])


@contextmanager
def serving(rules: UploadRules, forwarded_allow_ips: str = ""):
    """The gate in front of a small app, in uvicorn on a free loopback port: (port, seen, gate). uvicorn takes
    the client's address from X-Forwarded-For only when the peer is in ``forwarded_allow_ips``."""
    seen = Seen()
    gate = UploadGate(_app(seen), rules)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(gate, log_level="error", lifespan="off",
                                           forwarded_allow_ips=forwarded_allow_ips))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1], seen, gate
    finally:
        server.should_exit = True
        thread.join(10)


def _start_upload(port: int, length: int, sent: bytes = b"x" * 200, headers: dict | None = None) -> socket.socket:
    """A POST that declares ``length`` bytes and sends only ``sent`` of them, then stalls."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    conn = socket.create_connection(("127.0.0.1", port), timeout=30)
    conn.sendall(f"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n{extra}\r\n".encode() + sent)
    return conn


def _answer(conn: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body[:_length(data)] or b"{}")


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def _settle(condition, within: float = 5.0) -> None:
    """Wait for ``condition``: the gate lets go of a body just after its answer is sent."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.02)


def _request(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, dict]:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
                     + body)
        return _answer(conn)


def test_stalled_uploads_never_reach_the_app_and_are_closed_after_the_grace():
    rules = UploadRules(grace_s=1.0, min_bytes_per_s=20_000)
    with serving(rules) as (port, seen, gate):
        stalled = [_start_upload(port, 428_000) for _ in range(10)]
        time.sleep(0.3)
        start = time.monotonic()
        assert _request(port, "GET", "/healthz")[0] == 200
        assert _request(port, "POST", "/upload", b"y" * 100_000) == (200, {"bytes": 100_000})
        assert time.monotonic() - start < 0.5  # not queued behind the stalled ones
        _settle(lambda: gate.held_bytes == 10 * 428_000)  # the answered upload's bytes are let go
        assert sum(gate.arriving.values()) == 10
        answers = [_answer(conn) for conn in stalled]
        waited = time.monotonic() - start
        for conn in stalled:
            assert conn.recv(10) == b""  # closed: the rest of the body is never read
            conn.close()
    assert {status for status, _ in answers} == {408}
    assert answers[0][1]["error_code"] == "upload_too_slow" and "20000 bytes/s" in answers[0][1]["error"]
    assert 0.5 < waited < 3.0  # the grace (1 s), less the 0.3 s already spent, plus 200 bytes' worth
    assert seen.requests == [("/healthz", 0), ("/upload", 100_000)]  # the stalled ones never reached the app
    _settle(lambda: gate.held_bytes == 0)
    assert not gate.arriving


def test_a_slow_but_steady_upload_is_received_whole():
    rules = UploadRules(grace_s=0.5, min_bytes_per_s=20_000)
    with serving(rules) as (port, seen, _gate):
        conn = _start_upload(port, 60_000, sent=b"")
        for _ in range(6):  # 10 kB every 0.2 s: 50 kB/s, above the minimum rate, for longer than the grace
            conn.sendall(b"z" * 10_000)
            time.sleep(0.2)
        assert _answer(conn) == (200, {"bytes": 60_000})
        conn.close()
    assert seen.requests == [("/upload", 60_000)]


def test_uploads_per_source_and_bytes_held_are_bounded():
    rules = UploadRules(grace_s=5.0, per_source=2, buffer_bytes=1_000_000)
    with serving(rules, forwarded_allow_ips="127.0.0.1") as (port, seen, gate):  # as behind a local proxy
        held = [_start_upload(port, 400_000, headers={"X-Forwarded-For": "10.0.0.1"}) for _ in range(2)]
        time.sleep(0.3)
        status, body = _request(port, "POST", "/upload", b"a" * 10, headers={"X-Forwarded-For": "10.0.0.1"})
        assert status == 429 and body["error_code"] == "too_many_uploads"
        # another client behind the same trusted proxy is not held back by the first one's uploads...
        assert _request(port, "POST", "/upload", b"b" * 10, headers={"X-Forwarded-For": "10.0.0.2"})[0] == 200
        # ...but the bytes this process holds are shared: 800 kB held, 300 kB more would pass the 1 MB
        status, body = _request(port, "POST", "/upload", b"c" * 300_000, headers={"X-Forwarded-For": "10.0.0.3"})
        assert status == 503 and body["error_code"] == "busy"
        _settle(lambda: gate.held_bytes == 800_000)
        for conn in held:
            conn.close()
        _settle(lambda: gate.held_bytes == 0)  # a client that leaves frees what it held
        assert not gate.arriving
        assert _request(port, "POST", "/upload", b"d" * 300_000, headers={"X-Forwarded-For": "10.0.0.3"})[0] == 200
    assert seen.requests == [("/upload", 10), ("/upload", 300_000)]


def test_an_untrusted_peer_cannot_choose_its_source():
    rules = UploadRules(grace_s=5.0, per_source=1)  # no peer trusted: X-Forwarded-For is ignored
    with serving(rules) as (port, _seen, _gate):
        held = _start_upload(port, 400_000, headers={"X-Forwarded-For": "10.0.0.1"})
        time.sleep(0.3)
        assert _request(port, "POST", "/upload", b"a", headers={"X-Forwarded-For": "10.9.9.9"})[0] == 429
        held.close()


def test_requests_refused_from_their_headers_go_on_unread(monkeypatch):
    """No key (when one is set) or a body over max_body_bytes: the app refuses them without their body, so the
    gate does not spend time or memory receiving it."""
    monkeypatch.setenv(API_KEY_ENV, "k")
    rules = UploadRules(grace_s=5.0, max_body_bytes=1_000)
    with serving(rules) as (port, seen, gate):
        keyless = _start_upload(port, 500)
        oversized = _start_upload(port, 5_000, headers={"X-API-Key": "k"})
        keyed = _start_upload(port, 500, headers={"X-API-Key": "k"})
        deadline = time.monotonic() + 5
        while len(seen.entered) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen.entered == ["/upload", "/upload"] and not seen.requests  # reached the app, bodies unread
        _settle(lambda: gate.held_bytes == 500)  # only the keyed one, within the limit, is being received here
        for conn in (keyless, oversized, keyed):
            conn.close()


def test_rules_come_from_the_environment():
    rules = UploadRules.from_env({"BONEAGE_UPLOAD_GRACE_S": "2.5", "BONEAGE_UPLOADS_PER_SOURCE": "0",
                                  "BONEAGE_UPLOAD_MAX_BYTES": ""})
    assert rules == UploadRules(grace_s=2.5, per_source=0)
    with pytest.raises(ValueError, match="BONEAGE_UPLOAD_BUFFER_BYTES='lots' is not a number"):
        UploadRules.from_env({"BONEAGE_UPLOAD_BUFFER_BYTES": "lots"})
    with pytest.raises(ValueError, match="min_bytes_per_s > 0"):
        UploadRules(min_bytes_per_s=0)
