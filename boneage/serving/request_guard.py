"""What the ingress refuses before a route runs: a browser's cross-site POST, a missing API key, and an
upload over the replica's limits (from ``Content-Length``, then counted as the body arrives), before the
multipart body is parsed."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from fastapi import Request
from fastapi.responses import JSONResponse
from ray import serve

from boneage.serving.api_key import API_KEY_ENV, authorised
from boneage.serving.handler import Limits
from boneage.serving.http_errors import error_response

OPEN_PATHS = frozenset({"/healthz"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_FORM_SLACK_BYTES = 1024 * 1024  # multipart headers and the text fields around the file(s)


def _origin(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) with the scheme's default port made explicit; None for ``null`` or garbage."""
    try:
        parts = urlsplit(url.strip().lower())
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    except ValueError:
        return None
    return (parts.scheme, parts.hostname, port) if parts.scheme and parts.hostname else None


def _foreign_origin(request: Request) -> bool:
    """A browser names the page that sends a request in ``Origin``: a POST from another site's page (riding
    on the browser's cached Basic login) names that site. Own origin: the request's ``Host`` (or the reverse
    proxy's ``X-Forwarded-Host``) with its scheme (or ``X-Forwarded-Proto``). No ``Origin`` (curl, PACS
    gateways, scripts): not a browser's cross-site request, allowed."""
    origin = request.headers.get("origin")
    if origin is None:
        return False
    hosts = {h.split(",")[0].strip() for h in (request.headers.get("host"), request.headers.get("x-forwarded-host"))
             if h}
    schemes = {request.url.scheme, (request.headers.get("x-forwarded-proto") or "").split(",")[0].strip()} - {""}
    own = {_origin(f"{scheme}://{host}") for scheme in schemes for host in hosts} - {None}
    return _origin(origin) not in own


def _replica_limits() -> Limits:
    """The limits of the ingress replica this runs in, as its last ``reconfigure`` set them (Serve hands the
    routes the same object: ``servable_object``)."""
    return serve.get_replica_context().servable_object.settings


def _refusal(request: Request) -> JSONResponse | None:
    """A foreign ``Origin`` on a POST, the API key on every route but /healthz, then the upload size from
    Content-Length, before parsing."""
    path = _request_path(request.scope)
    if request.method not in _SAFE_METHODS and _foreign_origin(request):
        return error_response(403, "cross_origin", "a browser sent this request from another site's page (Origin "
                                                   "is not this endpoint's): refused")
    key = os.environ.get(API_KEY_ENV)
    if key and path not in OPEN_PATHS and not authorised(request.headers, key):
        return error_response(401, "unauthorised", f"missing or wrong API key (the server sets {API_KEY_ENV})",
                              headers={"WWW-Authenticate": 'Basic realm="boneage"'})
    if request.method == "POST" and path.startswith("/v1/predict"):
        length = request.headers.get("content-length")
        if length is None:
            return error_response(411, "length_required", "send Content-Length (chunked uploads are not accepted)")
        limit, why = _body_limit(path, _replica_limits())
        if not length.isdigit() or int(length) > limit:
            return _too_large(length, limit, why)
    return None


def _body_limit(path: str, limits: Limits) -> tuple[int, str]:
    """The most bytes a POST to ``path`` may send, and how that limit is made up (for the 413's text)."""
    if path.endswith("/batch"):
        files = limits.max_files * limits.max_upload_bytes
        if limits.max_batch_bytes < files:
            return limits.max_batch_bytes + _FORM_SLACK_BYTES, f"all files of a batch together at most " \
                                                               f"{limits.max_batch_bytes} bytes"
        return files + _FORM_SLACK_BYTES, f"{limits.max_files} files of at most {limits.max_upload_bytes} bytes"
    return limits.max_upload_bytes + _FORM_SLACK_BYTES, f"a file of at most {limits.max_upload_bytes} bytes"


def _too_large(length: int | str, limit: int, why: str) -> JSONResponse:
    return error_response(413, "too_large", f"request body is {length} bytes, over the limit of {limit} bytes ({why})")


def _request_path(scope) -> str:
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return (path[len(root):] or "/") if root and path.startswith(root) else path


class RequestGuard:
    """:func:`_refusal` as a plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` (``@app.middleware``)
    relays every body chunk through a task group, a measurable share of a request's CPU here."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            refused = _refusal(Request(scope))
            if refused is not None:
                await refused(scope, receive, send)
                return
            path = _request_path(scope)
            if scope.get("method") == "POST" and path.startswith("/v1/predict"):
                await self._counted(scope, receive, send, *_body_limit(path, _replica_limits()))
                return
        await self.app(scope, receive, send)

    async def _counted(self, scope, receive, send, limit: int, why: str) -> None:
        """The body's bytes counted as they arrive, whatever Content-Length said: past ``limit`` the client
        gets 413 at once, and the route sees a disconnect (it stops reading; nothing more is buffered)."""
        received, answered = 0, False

        async def counting_receive():
            nonlocal received, answered
            if answered:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    answered = True
                    await _too_large(f"over {received}", limit, why)(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message) -> None:
            if not answered:  # after the 413, whatever the route still says is dropped
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not answered:
                raise
