"""Receive a request's whole body before the endpoint spends a slot on it.

Serve counts a request against the ingress's ``max_ongoing_requests`` from the moment its headers arrive. A
client whose upload stalls (a slow VPN, or on purpose) then holds a slot for up to ``request_timeout_s``:
32 of them stopped the endpoint, ``/healthz`` included, for 60 s (issue 31, item 2). :class:`UploadGate`
runs in front of Serve's request handling (a middleware of Serve's HTTP servers, through
:func:`boneage.serving.http_guard.proxy_middlewares`), so a body is read here first, and only a complete
one goes on to take a slot. While it arrives:

- it must keep a minimum average rate after a grace period (408 ``upload_too_slow`` otherwise, and the
  connection is closed);
- each source has at most ``per_source`` uploads arriving at once (429 ``too_many_uploads``);
- the bodies held by this process stay under ``buffer_bytes`` (503 ``busy``, retry later).

Header timeouts are the front proxy's: on Serve's fast path HAProxy's ``timeout client``
(``RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S``, set by ``boneage.serving.environment.ENDPOINT_ENV``). The rules come
from environment variables because this runs in Serve's processes, which read no application config.
Standard Starlette only: Serve's proxy process imports it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from starlette.datastructures import Headers

from boneage.serving.api_key import API_KEY_ENV, authorised

_MIB = 1024 * 1024


@dataclass(frozen=True)
class UploadRules:
    """What an arriving body must respect; ``BONEAGE_UPLOAD_*`` variables override the defaults."""

    grace_s: float = 10.0  # the first seconds of an upload are not rate-checked (TCP slow start, a slow link)
    min_bytes_per_s: float = 20_000.0  # 160 kbit/s on average after the grace: a 50 MB DICOM may take 45 min
    buffer_bytes: int = 256 * _MIB  # bodies held by this process at once (arriving, or waiting for their answer)
    max_body_bytes: int = 80 * _MIB  # one body (413 beyond); at least the ingress's max_batch_bytes plus 1 MB
    per_source: int = 64  # uploads arriving at once from one client address (as uvicorn gives it); 0: no limit

    ENV = {"grace_s": "BONEAGE_UPLOAD_GRACE_S", "min_bytes_per_s": "BONEAGE_UPLOAD_MIN_BYTES_PER_S",
           "buffer_bytes": "BONEAGE_UPLOAD_BUFFER_BYTES",
           "max_body_bytes": "BONEAGE_UPLOAD_MAX_BYTES", "per_source": "BONEAGE_UPLOADS_PER_SOURCE"}

    def __post_init__(self) -> None:
        if self.grace_s < 0 or self.min_bytes_per_s <= 0 or min(self.buffer_bytes, self.max_body_bytes) < 1 \
                or self.per_source < 0:
            raise ValueError("upload rules: grace_s >= 0, min_bytes_per_s > 0, buffer_bytes and max_body_bytes >= 1, "
                             "per_source >= 0")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> UploadRules:
        """The defaults, with each ``BONEAGE_UPLOAD*`` variable that is set (a bad value is an error at start)."""
        values: dict = {}
        for name, variable in cls.ENV.items():
            text = env.get(variable, "").strip()
            if not text:
                continue
            try:
                values[name] = (float if name.endswith("_s") else int)(text)
            except ValueError:
                raise ValueError(f"{variable}={text!r} is not a number") from None
        return cls(**values)


def _answer(status: int, code: str, text: str, retry_after: int | None = None) -> tuple[dict, dict]:
    body = json.dumps({"error_code": code, "error": text}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    return ({"type": "http.response.start", "status": status, "headers": headers},
            {"type": "http.response.body", "body": body})


class UploadGate:
    """Pure ASGI middleware: a request with a body reaches ``app`` only once the body is complete."""

    def __init__(self, app, rules: UploadRules | None = None) -> None:
        self.app = app
        self.rules = rules or UploadRules.from_env()
        self.held_bytes = 0  # bodies this process holds now
        self.arriving: Counter[str] = Counter()  # uploads still arriving, per source

    @staticmethod
    def source(scope) -> str:
        """The client's address as the HTTP server gives it: uvicorn (Serve's server) takes it from
        X-Forwarded-For when the peer is in ``FORWARDED_ALLOW_IPS`` (default loopback), else the peer."""
        return str((scope.get("client") or ("unknown", 0))[0])

    async def __call__(self, scope, receive, send) -> None:
        declared = _declared_length(scope)
        if declared is None or self._refused_unread(scope, declared):
            await self.app(scope, receive, send)
            return
        source = self.source(scope)
        if self.rules.per_source and self.arriving[source] >= self.rules.per_source:
            await _refuse(scope, send, _answer(429, "too_many_uploads", f"{self.rules.per_source} uploads from this address "
                                                               "are still arriving: wait for one to finish",
                                      retry_after=5))
            return
        self.arriving[source] += 1
        held = [0]  # what this request has reserved of buffer_bytes
        try:
            try:
                body, refused = await self._receive_body(receive, declared, held)
            finally:
                self.arriving[source] -= 1
                if not self.arriving[source]:
                    del self.arriving[source]
            if refused is not None:
                await _refuse(scope, send, refused)
            elif body is not None:  # None: the client went away
                await self.app(scope, _replay(body, receive), send)
        finally:
            self.held_bytes -= held[0]

    def _refused_unread(self, scope, declared: int) -> bool:
        """Requests the endpoint refuses from their headers alone (no or a wrong API key, a body over
        ``max_body_bytes``) go straight on: the application answers them without reading the body."""
        key = os.environ.get(API_KEY_ENV)
        return declared > self.rules.max_body_bytes or bool(key) and not authorised(Headers(scope=scope), key)

    def _reserve(self, held: list[int], total: int) -> bool:
        """Grow this request's reservation to ``total`` bytes, if the process's budget allows."""
        extra = total - held[0]
        if extra <= 0:
            return True
        if self.held_bytes + extra > self.rules.buffer_bytes:
            return False
        self.held_bytes += extra
        held[0] = total
        return True

    async def _receive_body(self, receive, declared: int, held: list[int]) -> tuple[bytes | None, tuple | None]:
        """(body, or None if the client left or was refused; the refusal). The body must keep
        ``min_bytes_per_s`` on average once ``grace_s`` have passed."""
        rules, start = self.rules, time.monotonic()
        busy = _answer(503, "busy", "the server holds as many uploads as it may: try again shortly", retry_after=2)
        if not self._reserve(held, declared):
            return None, busy
        chunks, received = [], 0
        while True:
            deadline = start + rules.grace_s + received / rules.min_bytes_per_s
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return None, _answer(
                    408, "upload_too_slow", f"the upload arrived at under {rules.min_bytes_per_s:.0f} bytes/s "
                    f"after its first {rules.grace_s:g} s ({received} bytes in {time.monotonic() - start:.0f} s): "
                    "closed; check the connection and send it again")
            if message["type"] == "http.disconnect":
                return None, None
            chunk = message.get("body", b"")
            received += len(chunk)
            if not self._reserve(held, received):  # more than declared, or chunked: reserved as it arrives
                return None, busy
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), None


def _declared_length(scope) -> int | None:
    """The Content-Length of an HTTP request with a body; None for no body, or one without a length (chunked:
    the application refuses it from its headers, 411)."""
    if scope["type"] != "http":
        return None
    for name, value in scope.get("headers") or []:
        if bytes(name).lower() == b"content-length":
            text = bytes(value).decode("latin-1").strip()
            return int(text) if text.isdigit() and int(text) > 0 else None
    return None


# Serve's logger: in a replica it writes to the replica's log beside Serve's access log, so a request the gate
# answers (it never reaches Serve's own logging) still leaves a line in the audit trail.
_audit = logging.getLogger("ray.serve")


async def _refuse(scope, send, messages: tuple[dict, dict]) -> None:
    """Send the gate's answer and log it: method, path, status and client, never a header or the body."""
    status, code = messages[0]["status"], json.loads(messages[1]["body"])["error_code"]
    _audit.warning("upload gate: %s %s %d %s from %s", scope.get("method"), scope.get("path"), status, code,
                   UploadGate.source(scope))
    for message in messages:
        await send(message)


def _replay(body: bytes, receive):
    """A ``receive`` that gives the whole body at once, then waits on the connection (for its disconnect)."""
    sent = False

    async def replayed() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed
