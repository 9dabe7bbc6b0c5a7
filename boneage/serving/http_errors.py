"""The ingress's errors as HTTP answers: every refusal, whoever raises it (the request logic, FastAPI's
validation, Starlette's parser and router, a bug), is ``{"error_code", "error"}`` JSON."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import RayActorError
from starlette.exceptions import HTTPException as StarletteHTTPException

from boneage.serving.handler import RequestError
from boneage.serving.http_guard import SERVE_ERROR_CODES

log = logging.getLogger(__name__)


def error_response(status: int, code: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error_code": code, "error": detail}, status_code=status, headers=headers)


async def _request_error(_request: Request, exc: RequestError) -> JSONResponse:
    return error_response(exc.status, exc.code, exc.detail)


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    # Only field names and messages: never the submitted values (they may be patient data).
    parts = [f"{'.'.join(str(p) for p in err.get('loc', ()) if p != 'body')}: {err.get('msg')}" for err in exc.errors()]
    return error_response(400, "bad_request", "; ".join(parts) or "invalid request")


def _http_error_text(exc: StarletteHTTPException) -> str:
    detail = str(exc.detail)
    if detail.startswith("Part exceeded maximum size"):  # Starlette's words for a form field over 1 MB
        return ("a form field is over 1 MB: a file must be sent as a file part, with a filename "
                "(Content-Disposition: form-data; name=\"file\"; filename=\"film.png\")")
    cause = exc.__cause__
    if detail == "There was an error parsing the body" and cause is not None:  # FastAPI hides why
        return f"malformed multipart body: {cause}"
    return detail


async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's and FastAPI's own refusals (malformed multipart, too many fields, 404, 405) in the
    endpoint's error shape, not ``{"detail"}``."""
    code = "bad_multipart" if exc.status_code == 400 else SERVE_ERROR_CODES.get(exc.status_code, "bad_request")
    return error_response(exc.status_code, code, _http_error_text(exc), headers=exc.headers)


async def _replica_lost(_request: Request, exc: RayActorError) -> JSONResponse:
    """A model replica died (its node was lost) or is unreachable while it held this request: Serve does
    not retry it, and nothing is wrong with the request, so the client is told to send it again (503),
    not that the server is broken (500). Serve starts a replacement on a live node meanwhile."""
    log.warning("a model replica was lost while it held a request (%s): answered 503", type(exc).__name__)
    return error_response(503, "unavailable", "the model replica holding this request was lost: send it again",
                          headers={"Retry-After": "1"})


async def _unexpected_error(_request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected %s in a request", type(exc).__name__)  # the type only: messages may hold inputs
    return error_response(500, "internal_error", "internal error: the request was not scored")


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RayActorError, _replica_lost)
    app.add_exception_handler(Exception, _unexpected_error)
