"""The ingress's FastAPI app: its description, its error mapping, and the middlewares every request passes
(the browser-safety headers outermost, then the :mod:`~boneage.serving.request_guard`). The routes are the
ingress deployment's methods (:mod:`boneage.serving.ingress`)."""
# No ``from __future__ import annotations`` here: FastAPI reads annotations at runtime.

from typing import Any

from fastapi import FastAPI

from boneage import __version__
from boneage.clinical import RESEARCH_USE_ONLY
from boneage.serving.http_errors import add_error_handlers
from boneage.serving.http_guard import ShapedResponses
from boneage.serving.request_guard import RequestGuard
from boneage.serving.schemas import ErrorBody

# The error answers the routes document in the OpenAPI schema.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (400, 401, 403, 411, 413, 415, 422, 503)
}

api = FastAPI(
    title="boneage",
    version=__version__,
    description=f"{RESEARCH_USE_ONLY} Bone age from a hand radiograph (PNG, JPEG or DICOM). When BONEAGE_API_KEY "
    "is set on the server, send it as `X-API-Key`, `Authorization: Bearer KEY` or HTTP Basic (any user, the key "
    "as password).",
    # Swagger UI and ReDoc load their scripts from a CDN (no SRI; nothing on an air-gapped network): the schema
    # stays at /openapi.json, for any local OpenAPI viewer.
    docs_url=None,
    redoc_url=None,
)
add_error_handlers(api)
api.add_middleware(RequestGuard)
api.add_middleware(ShapedResponses)  # outermost: the security headers on every answer, the guard's refusals too
