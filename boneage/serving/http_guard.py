"""What every HTTP answer of the endpoint carries, whoever writes it: the browser-safety headers, and errors
as ``{"error_code", "error"}`` JSON.

Two writers answer HTTP: the FastAPI ingress (``boneage.serving.ingress``), and Serve itself, before the ingress
runs (503 when ``max_queued_requests`` are waiting, 408 after ``request_timeout_s``, 500 when a replica
fails), in plain text. :func:`proxy_middlewares` wraps Serve's own HTTP servers (the replicas' direct
ingress on the fast path, Serve's Python proxy otherwise) through ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``,
so those answers get the same shape and headers. This module imports only Starlette: Serve's proxy
process loads it.
"""

from __future__ import annotations

import json

from starlette.middleware import Middleware

from boneage.serving.upload_gate import UploadGate

# JSON and error answers: nothing to run, nothing to load, never framed (the page adds its own script and
# style hashes: boneage.serving.webpage.PAGE_CSP).
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",  # frame-ancestors for browsers that predate CSP 2
    "cache-control": "no-store",  # bone ages and films are patient data: no browser or proxy cache keeps them
    "referrer-policy": "no-referrer",
}
SERVE_ERROR_CODES = {404: "not_found", 405: "method_not_allowed", 408: "timeout", 429: "overloaded",
                     500: "internal_error", 503: "unavailable", 504: "timeout"}
_MAX_ERROR_TEXT = 500
def add_missing_headers(headers: list, csp: str = API_CSP) -> list:
    """``headers`` (ASGI pairs) with each security header it does not already have."""
    present = {bytes(name).lower() for name, _ in headers}
    extra = [(name.encode(), value.encode()) for name, value in {**SECURITY_HEADERS,
                                                                  "content-security-policy": csp}.items()
             if name.encode() not in present]
    return [*headers, *extra]


def error_body(status: int, text: str) -> bytes:
    code = SERVE_ERROR_CODES.get(status, "server_error" if status >= 500 else "bad_request")
    return json.dumps({"error_code": code, "error": text.strip()[:_MAX_ERROR_TEXT] or f"HTTP {status}"}).encode()


class ShapedResponses:
    """Pure ASGI middleware: adds the security headers an answer lacks, and turns an error answer that is
    not JSON (Serve's plain-text 408, 503, 500...) into ``{"error_code", "error"}``."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: dict = {}

        async def shaped(message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                ctype = next((bytes(v) for k, v in headers if bytes(k).lower() == b"content-type"), b"")
                if message["status"] >= 400 and not ctype.startswith(b"application/json"):
                    held.update(start=message, headers=headers, chunks=[])  # rewritten once the body is in
                    return
                message = {**message, "headers": add_missing_headers(headers)}
            elif message["type"] == "http.response.body" and held:
                held["chunks"].append(message.get("body", b""))
                if message.get("more_body"):
                    return
                status = held["start"]["status"]
                body = error_body(status, b"".join(held["chunks"]).decode("utf-8", "replace"))
                headers = [(k, v) for k, v in held["headers"]
                           if bytes(k).lower() not in (b"content-type", b"content-length")]
                headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                await send({**held["start"], "headers": add_missing_headers(headers)})
                message = {"type": "http.response.body", "body": body}
            await send(message)

        await self.app(scope, receive, shaped)


# The ingress's current /healthz answer, set by the ingress replica in its own process (boneage.serving.ingress).
# On Serve's fast path the replica's HTTP server runs in that process too: OpenHealth answers GET /healthz from
# it before the request takes one of the ingress's max_ongoing_requests, so a busy endpoint still says it is
# alive (issue 31, item 2). Elsewhere (Serve's own proxy process) it is empty, and /healthz goes to the ingress.
_health: dict[str, bytes] = {}


def remember_health(answer: dict) -> None:
    _health["body"] = json.dumps(answer).encode()


class OpenHealth:
    """Pure ASGI middleware: ``GET /healthz`` answered from :func:`remember_health`'s answer, when there is one."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        body = _health.get("body")
        if body is None or scope["type"] != "http" or scope.get("method") not in ("GET", "HEAD") \
                or scope.get("path", "").removeprefix(scope.get("root_path", "")) != "/healthz":
            await self.app(scope, receive, send)
            return
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body if scope["method"] == "GET" else b""})


def proxy_middlewares() -> list[Middleware]:
    """``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=boneage.serving.http_guard:proxy_middlewares``."""
    # the last wraps the others: their answers get the shape and headers too
    return [Middleware(UploadGate), Middleware(OpenHealth), Middleware(ShapedResponses)]
