"""The online endpoint: Ray Serve + FastAPI over :mod:`boneage.serving.handler`.

Two deployments (Ray Serve model composition). ``BoneAge``, the HTTP ingress, reads, decodes and
preprocesses each upload in a thread pool sized to its node's CPUs (a bad file is answered 4xx there,
before it reaches a batch), and sends the films it has ready to ``BoneAgeModel`` in one deployment-handle
call. ``BoneAgeModel`` runs the network on batches that ``@serve.batch`` forms from every ingress
replica's films. Each scales on its own.
Batch size, batch wait, model and limits are in each deployment's ``user_config``
(``serve_config.yaml``), applied by ``reconfigure`` without a restart.
``import_path: boneage.serving.app:app`` for ``serve run`` / ``serve deploy``; ``boneage serve`` runs
the same config in-process (:func:`run_config`).
"""
# No ``from __future__ import annotations`` here: FastAPI reads the route annotations at runtime.

import asyncio
import functools
import logging
import os
import stat
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from ray.serve.deployment import Application
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from boneage import __version__
from boneage.clinical import RESEARCH_USE_ONLY
from boneage.configs import from_known_dict
from boneage.devices import usable_cpus, use_cpu_threads
from boneage.files.images import DEFAULT_MAX_PIXELS
from boneage.predict.predictor import Prediction
from boneage.prepare.stages import PreprocessConfig
from boneage.serving.api_key import API_KEY_ENV, authorised
from boneage.serving.handler import (
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_UPLOAD_BYTES,
    BoneAgeService,
    Limits,
    RequestError,
    prepare_upload,
    response_body,
)
from boneage.serving.http_guard import SERVE_ERROR_CODES, ShapedResponses, remember_health
from boneage.serving.schemas import BatchItem, BatchResponse, BoneAgeResult, ErrorBody, Quality  # noqa: F401
from boneage.serving.upload_gate import UploadRules
from boneage.serving.webpage import INDEX_HTML, PAGE_CSP

log = logging.getLogger(__name__)
DEPLOYMENT_NAME = "BoneAge"  # the HTTP ingress
MODEL_DEPLOYMENT_NAME = "BoneAgeModel"  # the batched network behind it
OPEN_PATHS = frozenset({"/healthz"})
_FORM_SLACK_BYTES = 1024 * 1024  # multipart headers and the text fields around the file(s)


@dataclass
class ServeSettings:
    """``user_config`` of the deployment: everything that can change without restarting a replica."""

    model: str | None = None  # checkpoint URI; None: $BONEAGE_MODEL, else the shipped default
    device: str = "auto"
    max_batch_size: int = 8
    # 0: a batch is whatever waits when the model is free (no request waits for company)
    batch_wait_timeout_s: float = 0.0
    # While an ingress has more films in preparation, its call to the model waits up to this long for them
    # (and leaves once they have all joined it). Concurrency 16 on 2 CPUs: 3.85 films per call and per
    # batch, the model's CPU per request 7.3 ms (16.5 with batching off). A lone request never waits.
    busy_batch_wait_s: float = 0.06
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_files: int = DEFAULT_MAX_FILES
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES  # every file of one /v1/predict/batch request together

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.batch_wait_timeout_s < 0 or self.busy_batch_wait_s < 0:
            raise ValueError("max_batch_size must be >= 1, batch_wait_timeout_s and busy_batch_wait_s >= 0")
        if min(self.max_upload_bytes, self.max_pixels, self.max_files, self.max_batch_bytes) < 1:
            raise ValueError("max_upload_bytes, max_pixels, max_files and max_batch_bytes must be positive")

    @classmethod
    def from_dict(cls, config: dict | None) -> "ServeSettings":
        # a typo in serve_config.yaml must not be silently ignored
        return from_known_dict(cls, dict(config or {}), "user_config")

    @property
    def limits(self) -> Limits:
        return Limits(self.max_upload_bytes, self.max_pixels, self.max_files, self.max_batch_bytes)


_ERRORS: dict[int | str, dict[str, Any]] = {
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


def _error(status: int, code: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error_code": code, "error": detail}, status_code=status, headers=headers)


@api.exception_handler(RequestError)
async def _request_error(_request: Request, exc: RequestError) -> JSONResponse:
    return _error(exc.status, exc.code, exc.detail)


@api.exception_handler(RequestValidationError)
async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    # Only field names and messages: never the submitted values (they may be patient data).
    parts = [f"{'.'.join(str(p) for p in err.get('loc', ()) if p != 'body')}: {err.get('msg')}" for err in exc.errors()]
    return _error(400, "bad_request", "; ".join(parts) or "invalid request")


def _http_error_text(exc: StarletteHTTPException) -> str:
    detail = str(exc.detail)
    if detail.startswith("Part exceeded maximum size"):  # Starlette's words for a form field over 1 MB
        return ("a form field is over 1 MB: a file must be sent as a file part, with a filename "
                "(Content-Disposition: form-data; name=\"file\"; filename=\"film.png\")")
    cause = exc.__cause__
    if detail == "There was an error parsing the body" and cause is not None:  # FastAPI hides why
        return f"malformed multipart body: {cause}"
    return detail


@api.exception_handler(StarletteHTTPException)
async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's and FastAPI's own refusals (malformed multipart, too many fields, 404, 405) in the
    endpoint's error shape, not ``{"detail"}``."""
    code = "bad_multipart" if exc.status_code == 400 else SERVE_ERROR_CODES.get(exc.status_code, "bad_request")
    return _error(exc.status_code, code, _http_error_text(exc), headers=exc.headers)


@api.exception_handler(Exception)
async def _unexpected_error(_request: Request, exc: Exception) -> JSONResponse:
    log.error("unexpected %s in a request", type(exc).__name__)  # the type only: messages may hold inputs
    return _error(500, "internal_error", "internal error: the request was not scored")


# The current replica's limits, for the size check that runs before the multipart body is parsed.
_current_limits = Limits()


def _set_current_limits(limits: Limits) -> None:
    """A module function (pickled by reference), so the replica's middleware sees what reconfigure set."""
    global _current_limits
    _current_limits = limits


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


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


def _refusal(request: Request) -> JSONResponse | None:
    """A foreign ``Origin`` on a POST, the API key on every route but /healthz, then the upload size from
    Content-Length, before parsing."""
    path = _request_path(request.scope)
    if request.method not in _SAFE_METHODS and _foreign_origin(request):
        return _error(403, "cross_origin", "a browser sent this request from another site's page (Origin is not "
                                           "this endpoint's): refused")
    key = os.environ.get(API_KEY_ENV)
    if key and path not in OPEN_PATHS and not authorised(request.headers, key):
        return _error(401, "unauthorised", f"missing or wrong API key (the server sets {API_KEY_ENV})",
                      headers={"WWW-Authenticate": 'Basic realm="boneage"'})
    if request.method == "POST" and path.startswith("/v1/predict"):
        length = request.headers.get("content-length")
        if length is None:
            return _error(411, "length_required", "send Content-Length (chunked uploads are not accepted)")
        limit, why = _body_limit(path)
        if not length.isdigit() or int(length) > limit:
            return _too_large(length, limit, why)
    return None


def _body_limit(path: str) -> tuple[int, str]:
    """The most bytes a POST to ``path`` may send, and how that limit is made up (for the 413's text)."""
    limits = _current_limits
    if path.endswith("/batch"):
        files = limits.max_files * limits.max_upload_bytes
        if limits.max_batch_bytes < files:
            return limits.max_batch_bytes + _FORM_SLACK_BYTES, f"all files of a batch together at most " \
                                                               f"{limits.max_batch_bytes} bytes"
        return files + _FORM_SLACK_BYTES, f"{limits.max_files} files of at most {limits.max_upload_bytes} bytes"
    return limits.max_upload_bytes + _FORM_SLACK_BYTES, f"a file of at most {limits.max_upload_bytes} bytes"


def _too_large(length: int | str, limit: int, why: str) -> JSONResponse:
    return _error(413, "too_large", f"request body is {length} bytes, over the limit of {limit} bytes ({why})")


def _request_path(scope) -> str:
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return (path[len(root):] or "/") if root and path.startswith(root) else path


class _Guard:
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
                await self._counted(scope, receive, send, *_body_limit(path))
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


api.add_middleware(_Guard)
api.add_middleware(ShapedResponses)  # outermost: the security headers on every answer, _Guard's refusals too


class BatchStats:
    """Sizes of the batches the model actually ran: proof that batching works, and how well."""

    def __init__(self) -> None:
        self.histogram: Counter[int] = Counter()
        self.started = time.time()

    def record(self, size: int) -> None:
        self.histogram[size] += 1

    def to_dict(self) -> dict:
        batches = sum(self.histogram.values())
        requests = sum(size * n for size, n in self.histogram.items())
        return {"batches": batches, "requests": requests,
                "mean_batch_size": round(requests / batches, 3) if batches else None,
                "largest_batch": max(self.histogram, default=0),
                "batch_size_histogram": {str(k): v for k, v in sorted(self.histogram.items())},
                "replica_started_at": self.started}


_ANYWAY = "true: a bone age even for a refused film (not a hand, no hand found), beside the refusal"


def _upload_name(filename: str | None) -> str:
    """Only the extension reaches the decoder (it sniffs DICOM by it): file names may name patients."""
    suffix = Path(filename or "").suffix.lower()
    return "upload" + (suffix if suffix.isascii() and len(suffix) <= 8 else "")


async def _done(item: dict) -> dict:
    return item


async def _read_upload(file: UploadFile, limit: int) -> bytes:
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise RequestError(413, "too_large", f"file is over the limit of {limit} bytes")
    return data


def _parse_age(text: str | None) -> float | None:
    if text is None or not str(text).strip():
        return None
    try:
        return float(text)
    except ValueError:
        raise RequestError(400, "bad_age", "chronological_age_months must be a number of months") from None


def _parse_flag(text: str | None) -> bool:
    """A form checkbox or flag: true/1/yes/on, else false."""
    return str(text or "").strip().lower() in ("1", "true", "yes", "on")


async def _one_value(request: Request, name: str, value: str | None) -> str | None:
    """A field of ``/v1/predict`` sent more than once (FastAPI keeps the last): refused when the values
    differ (another sex moves the bone age by about ten months); identical repeats and blanks are harmless.
    The form is the one FastAPI already parsed (Starlette keeps it on the request)."""
    form = await request.form()
    values = list(dict.fromkeys(v.strip() for v in form.getlist(name) if isinstance(v, str) and v.strip()))
    if len(values) > 1:
        shown = " and ".join(repr(v[:12]) for v in values[:4])
        raise RequestError(400, "bad_input", f"the form field '{name}' was sent {len(values)} times with different "
                                             f"values ({shown}): send it once")
    return values[0] if values else value


def _per_file(values: list[str] | None, n: int, name: str) -> list[str | None]:
    values = list(values or [])
    if not values:
        return [None] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise RequestError(400, f"bad_{name}", f"give '{name}' once for all files or once per file ({n}), "
                                               f"not {len(values)} times")
    return values


MODEL_CHANGED = "model_changed"


# Defined before the deployments: Serve ships the ingress class by value, and a module function defined after
# it was missing from its methods' globals in the replica (NameError), measured.
def _health_answer(info: dict) -> dict:
    """What /healthz says (also answered before the ingress's slots: ``http_guard.OpenHealth``)."""
    return {"status": "ok", "model_version": str(info["model_version"]), "model_trained": bool(info["model_trained"])}


@serve.deployment(name=MODEL_DEPLOYMENT_NAME, max_ongoing_requests=64, user_config={}, health_check_period_s=10)
class BoneAgeModel:
    """The network alone, on batches that ``@serve.batch`` forms from every ingress replica's films.

    With ``batch_wait_timeout_s`` 0 (the default) a lone film runs at once, and the films that arrive
    while a batch runs form the next one: batching never makes a request wait for company. An ingress
    sends the films it has ready in one call (:meth:`score`) and holds that call open up to
    ``busy_batch_wait_s`` while it has more in preparation: under load one hop and one forward pass
    serve several films.
    """

    def __init__(self) -> None:
        use_cpu_threads(_assigned_cpus())  # torch's default, every core of the node, would fight the ingress
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="boneage-model")
        self._service: BoneAgeService | None = None
        self._settings: ServeSettings | None = None
        self._stats = BatchStats()

    def reconfigure(self, user_config: dict) -> None:
        """Apply ``user_config``: reload the model only when it changed; batch knobs take effect at once."""
        settings = ServeSettings.from_dict(user_config)
        old = self._settings
        if self._service is None or old is None or (settings.model, settings.device) != (old.model, old.device):
            self._service = BoneAgeService.load(settings.model, device=settings.device,
                                                batch_size=settings.max_batch_size)
        self._service.predictor.batch_size = max(settings.max_batch_size, 1)  # one Serve batch = one forward pass
        self.predict.set_max_batch_size(settings.max_batch_size)
        self.predict.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self._settings = settings
        log.info("boneage model %s on %s, max_batch_size %d, batch_wait_timeout_s %.3f, busy_batch_wait_s %.3f",
                 self._service.model_version, self._service.predictor.device, settings.max_batch_size,
                 settings.batch_wait_timeout_s, settings.busy_batch_wait_s)

    def info(self) -> dict:
        """What an ingress needs to prepare films for this model (its preprocessing and version) and to
        gather them (:meth:`gathering`)."""
        service = self._service
        config = service.predictor.preprocess_config
        return {"model_version": service.model_version, "model_trained": service.model_trained,
                "preprocess": config.to_dict(), "config_hash": config.config_hash(), **self.gathering()}

    def gathering(self) -> dict:
        """How an ingress groups its films into one call: at most a batch, waiting while more are coming."""
        settings = self._settings or ServeSettings()
        return {"max_batch_size": settings.max_batch_size, "busy_batch_wait_s": settings.busy_batch_wait_s}

    async def score(self, items: list[tuple[str, Prediction]]) -> tuple[list[Prediction], dict]:
        """The films one ingress had ready, in one call: each joins the batch queue (beside other
        ingresses' films). Returns the scored rows and :meth:`gathering`, so that an ingress follows a
        ``reconfigure`` of the batch size from its next call on."""
        rows = await asyncio.gather(*(self.predict(item) for item in items))
        return list(rows), self.gathering()

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0)
    async def predict(self, items: list[tuple[str, Prediction]]) -> list[Prediction]:
        """(preprocessing hash, prepared row) -> the scored row; a row prepared for another model (a swap
        in between) comes back with ``error_code`` ``model_changed``, and the ingress prepares it again."""
        self._stats.record(len(items))
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._predict, items)

    def _predict(self, items: list[tuple[str, Prediction]]) -> list[Prediction]:
        service = self._service
        current = service.predictor.preprocess_config.config_hash()
        scored = iter(service.predict([film for config_hash, film in items if config_hash == current]))
        return [next(scored) if config_hash == current else film.result(error_code=MODEL_CHANGED)
                for config_hash, film in items]

    async def respond(self, row: Prediction, heatmap: bool, score_anyway: bool) -> dict:
        """The response body with the heatmap: a second pass through the network, with gradients."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._service.response, row, heatmap,
                                                                score_anyway)

    def stats(self) -> dict:
        settings = self._settings or ServeSettings()
        return {**self._stats.to_dict(), "max_batch_size": settings.max_batch_size,
                "batch_wait_timeout_s": settings.batch_wait_timeout_s,
                "busy_batch_wait_s": settings.busy_batch_wait_s,
                "model_replica": serve.get_replica_context().replica_id.unique_id}


@serve.deployment(
    name=DEPLOYMENT_NAME,
    max_ongoing_requests=32,
    max_queued_requests=64,
    user_config={},
    health_check_period_s=10,
)
@serve.ingress(api)
class BoneAgeServer:
    """FastAPI ingress: reads, decodes and preprocesses each upload in a thread pool sized to the CPUs,
    then hands the prepared film to the batched :class:`BoneAgeModel` through a deployment handle
    (Ray Serve model composition). A bad file is answered 4xx here, before it reaches a batch."""

    def __init__(self, model: DeploymentHandle, prepare_threads: int = 1):
        self._model = model
        use_cpu_threads(1)  # the films run in parallel in the pool's threads, each on one core
        self._prepare_pool = ThreadPoolExecutor(max(1, prepare_threads), thread_name_prefix="boneage-prepare")
        self._limits = Limits()
        self._info: dict | None = None
        self._config: PreprocessConfig | None = None
        self._preparing = 0  # films in (or waiting for) the preparation pool: a call to the model waits for them
        self._most, self._busy_wait = 1, 0.0  # the model's max_batch_size and busy_batch_wait_s (info, replies)
        self._calls = BatchStats()  # films per call to the model (/v1/stats)

    def reconfigure(self, user_config: dict) -> None:
        """Apply ``user_config``: the upload limits (the model's own settings are the model deployment's)."""
        self._limits = ServeSettings.from_dict(user_config).limits
        _set_current_limits(self._limits)

    async def _model_info(self, refresh: bool = False) -> dict:
        if self._info is None or refresh:
            self._info = await self._model.info.remote()
            self._config = PreprocessConfig.from_dict(self._info["preprocess"])
            self._follow(self._info)
            remember_health(_health_answer(self._info))
        return self._info

    def _follow(self, gathering: dict) -> None:
        """Gather as the model batches: at most its batch size, waiting its busy wait."""
        self._most = max(1, int(gathering["max_batch_size"]))
        self._busy_wait = float(gathering["busy_batch_wait_s"])

    # two calls in flight: the next group leaves while the model runs one (and a second model replica is used)
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0, max_concurrent_batches=2)
    async def _to_model(self, items: list[tuple[str, Prediction]]) -> list[Prediction]:
        """Films ready at about the same time go to the model in one handle call: one hop, not one per film
        (each hop costs both replicas CPU, a few ms at this size)."""
        self._calls.record(len(items))
        rows, gathering = await self._model.score.remote(items)
        self._follow(gathering)
        return rows

    async def _prepare(self, data: bytes, sex: str | None, age: float | None, filename: str | None,
                       refresh: bool = False) -> tuple[str, Prediction]:
        """Decode and preprocess one upload in the pool, as the model's config says: (config hash, film)."""
        info = await self._model_info(refresh=refresh)
        self._preparing += 1
        try:
            row = await asyncio.get_running_loop().run_in_executor(
                self._prepare_pool, functools.partial(prepare_upload, data, sex, age, _upload_name(filename),
                                                      config=self._config, limits=self._limits))
        finally:
            self._preparing -= 1
        return info["config_hash"], row

    async def _to_model_now(self, prepared: tuple[str, Prediction]) -> Prediction:
        # Read when this film opens a call: it waits up to the busy wait for the films still in
        # preparation, and goes as soon as they have all joined it; alone, it goes at once.
        self._to_model.set_max_batch_size(min(self._most, 1 + self._preparing))
        self._to_model.set_batch_wait_timeout_s(self._busy_wait if self._preparing else 0.0)
        return await self._to_model(prepared)

    async def _score(self, data: bytes, sex: str | None, age: float | None, filename: str | None,
                     refresh: bool = False) -> Prediction:
        """Prepare here, predict there; once more if the model changed in between (a rolling update)."""
        for attempt in range(2):
            row = await self._to_model_now(await self._prepare(data, sex, age, filename, refresh or attempt > 0))
            if row.error_code != MODEL_CHANGED:
                return row
        raise RequestError(503, MODEL_CHANGED, "the model is being replaced; try again")

    async def _respond(self, row: Prediction, heatmap: bool, anyway: bool) -> dict:
        if heatmap:
            return await self._model.respond.remote(row, True, anyway)
        return response_body(row, anyway)

    @api.get("/healthz", summary="liveness: always open, no API key")
    async def healthz(self) -> dict:
        return _health_answer(await self._model_info())

    @api.get("/v1/stats", summary="batch sizes formed by the model replica that answers, and the batching settings")
    async def stats(self) -> dict:
        films = self._calls.to_dict()
        return {**await self._model.stats.remote(), "replica": serve.get_replica_context().replica_id.unique_id,
                "model_calls": films["batches"], "mean_films_per_model_call": films["mean_batch_size"]}

    @api.post("/v1/predict", response_model=BoneAgeResult, responses=_ERRORS,
              summary="bone age of one radiograph (multipart: file, sex, optional chronological_age_months)")
    async def predict(self, request: Request,
                      file: Annotated[UploadFile | None, File(description="PNG, JPEG or DICOM")] = None,
                      sex: Annotated[str | None, Form(description="M or F (optional for a DICOM whose header has it)")] = None,
                      chronological_age_months: Annotated[str | None, Form()] = None,
                      heatmap: Annotated[str | None, Form(description="true: add heatmap_png_base64, a Grad-CAM "
                                                                      "overlay PNG")] = None,
                      score_anyway: Annotated[str | None, Form(description=_ANYWAY)] = None) -> dict:
        sex = await _one_value(request, "sex", sex)
        chronological_age_months = await _one_value(request, "chronological_age_months", chronological_age_months)
        if file is None or not isinstance(file, StarletteUploadFile):
            raise RequestError(400, "missing_file", "the multipart field 'file' (the radiograph) is required")
        data = await _read_upload(file, self._limits.max_upload_bytes)
        row = await self._score(data, sex, _parse_age(chronological_age_months), file.filename)
        return await self._respond(row, _parse_flag(heatmap), _parse_flag(score_anyway))

    @api.post("/v1/predict/batch", response_model=BatchResponse, responses=_ERRORS,
              summary="bone ages of several radiographs; a bad file is an item with an error, not a failed request")
    async def predict_batch(
        self, files: Annotated[list[UploadFile] | None, File(description="repeat the field once per file")] = None,
        sex: Annotated[list[str] | None, Form(description="one value for all files, or one per file")] = None,
        chronological_age_months: Annotated[list[str] | None, Form()] = None,
        heatmap: Annotated[str | None, Form(description="true: a heatmap for every file")] = None,
        score_anyway: Annotated[str | None, Form(description=_ANYWAY)] = None,
    ) -> dict:
        limits = self._limits
        files = [f for f in files or [] if isinstance(f, StarletteUploadFile)]
        if not files:
            raise RequestError(400, "missing_file", "the multipart field 'files' (one or more radiographs) is required")
        if len(files) > limits.max_files:
            raise RequestError(413, "too_many_files", f"{len(files)} files, over the limit of {limits.max_files}")
        sexes = _per_file(sex, len(files), "sex")
        ages = [_parse_age(a) for a in _per_file(chronological_age_months, len(files), "chronological_age_months")]

        # One file at a time is read and prepared (its raw bytes and decoded pixels are dropped before the
        # next is read): a batch holds one upload in memory, not all of them. The prepared films go on to
        # the model as they are ready, and the answers are gathered at the end.
        async def finish(i: int, file: UploadFile, item: dict, scoring: asyncio.Future) -> dict:
            try:
                row = await scoring
                if row.error_code == MODEL_CHANGED:  # a rolling update in between: once more, the new way
                    await file.seek(0)
                    row = await self._score(await _read_upload(file, limits.max_upload_bytes), sexes[i], ages[i],
                                            file.filename, refresh=True)
                item["result"] = await self._respond(row, _parse_flag(heatmap), _parse_flag(score_anyway))
            except RequestError as exc:
                item.update(status=exc.status, **exc.to_dict())
            return item

        pending, total = [], 0
        for i, file in enumerate(files):
            item: dict = {"index": i, "filename": file.filename, "status": 200}
            try:
                total += file.size or 0
                if total > limits.max_batch_bytes:
                    raise RequestError(413, "too_large", f"the batch's files are over {limits.max_batch_bytes} "
                                                         "bytes together: send fewer per request")
                data = await _read_upload(file, limits.max_upload_bytes)
                prepared = await self._prepare(data, sexes[i], ages[i], file.filename)
                del data
                scoring = asyncio.ensure_future(self._to_model_now(prepared))
            except RequestError as exc:
                item.update(status=exc.status, **exc.to_dict())
                scoring = None
            pending.append((i, file, item, scoring))
        results = await asyncio.gather(*(finish(i, f, item, s) if s is not None else _done(item)
                                         for i, f, item, s in pending))
        return {"results": results, "model_version": (await self._model_info())["model_version"]}

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(INDEX_HTML, headers={"Content-Security-Policy": PAGE_CSP})


# --- building and running the application --------------------------------------------------

_ARGS = {"num_cpus", "num_gpus", "prepare_threads", "model_num_cpus", "memory_gib", "model_memory_gib"}
# Memory reserved per replica (Ray's `memory` resource: a node runs only the replicas whose reservations fit).
# The ingress idles at about 1.0 GB, and each preparing thread may hold one film at the decoded-size limit
# (160 MB) while it is converted: measured, a 7000 x 7000 16-bit PNG (98 MB decoded) peaked 570 MB above idle,
# so 0.9 GB per thread at the limit. The upload gate holds at most its buffer_bytes of request bodies (256 MiB).
# The model replica holds the network and a batch.
INGRESS_MEMORY_GIB, MODEL_MEMORY_GIB = 3.5, 1.5
INGRESS_IDLE_GIB, PREPARE_PEAK_GIB = 1.0, 0.9


def prepare_threads_for(requested: int, cpus: int, memory_gib: float) -> int:
    """Preparing threads: ``requested`` (0: one per CPU), no more than the ingress's memory holds at the worst
    (a 64-core node would otherwise decode 64 films at the size limit at once)."""
    bodies_gib = UploadRules.from_env().buffer_bytes / 1024**3
    by_memory = max(1, int((memory_gib - INGRESS_IDLE_GIB - bodies_gib) / PREPARE_PEAK_GIB))
    threads = min(requested or cpus, by_memory)
    if threads < (requested or cpus):
        log.info("%d preparing threads, not %d: memory_gib %.1f holds %d films at the size limit",
                 threads, requested or cpus, memory_gib, by_memory)
    return threads


def _assigned_cpus() -> int:
    """The CPUs Ray reserved for this replica (at least one thread, however fractional)."""
    import ray

    return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))


def build_app(args: dict | None = None, deployment_options: dict[str, dict] | None = None) -> Application:
    """The application: the ``BoneAge`` ingress bound to the ``BoneAgeModel`` deployment.

    ``args``: ``num_cpus`` reserved per ingress replica (1); ``prepare_threads`` its preprocessing
    threads (default: every CPU of its node, as preprocessing releases the GIL in OpenCV and torch);
    ``model_num_cpus`` per model replica (1); ``num_gpus`` per model replica, ``auto`` (the default)
    one when the cluster has GPUs at build time; ``memory_gib`` and ``model_memory_gib``, Ray's ``memory``
    reserved per ingress and per model replica (3.5 and 1.5); the preparing threads are also bounded by
    ``memory_gib`` (:func:`prepare_threads_for`). ``deployment_options`` maps a deployment's name to a
    ``deployments:`` entry of a Serve config; those win over ``args``, as they do under ``serve run``.
    """
    args = dict(args or {})
    unknown = set(args) - _ARGS
    if unknown:
        raise ValueError(f"unknown application args: {sorted(unknown)} (known: {sorted(_ARGS)})")
    options = {name: {k: v for k, v in (entry or {}).items() if k != "name"}
               for name, entry in (deployment_options or {}).items()}
    unknown = set(options) - {DEPLOYMENT_NAME, MODEL_DEPLOYMENT_NAME}
    if unknown:
        raise ValueError(f"unknown deployments: {sorted(unknown)} (known: {DEPLOYMENT_NAME}, {MODEL_DEPLOYMENT_NAME})")
    num_gpus = args.get("num_gpus", "auto")
    if num_gpus == "auto":
        import ray

        num_gpus = 1 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1 else 0
    model = BoneAgeModel.options(**{"ray_actor_options": {"num_cpus": float(args.get("model_num_cpus", 1)),
                                                          "num_gpus": float(num_gpus),
                                                          "memory": _bytes(args.get("model_memory_gib",
                                                                                    MODEL_MEMORY_GIB))},
                                    **options.get(MODEL_DEPLOYMENT_NAME, {})}).bind()
    memory_gib = float(args.get("memory_gib", INGRESS_MEMORY_GIB))
    threads = prepare_threads_for(int(args.get("prepare_threads") or 0), usable_cpus(), memory_gib)
    ingress = BoneAgeServer.options(**{"ray_actor_options": {"num_cpus": float(args.get("num_cpus", 1)),
                                                             "memory": _bytes(memory_gib)},
                                       **options.get(DEPLOYMENT_NAME, {})})
    return ingress.bind(model, prepare_threads=threads)


def _bytes(gib) -> int:
    value = float(gib)
    if value <= 0:
        raise ValueError(f"memory_gib and model_memory_gib must be positive, got {gib}")
    return int(value * 1024**3)


def app(args: dict) -> Application:
    """``import_path: boneage.serving.app:app`` (an application builder: ``args`` from the config)."""
    return build_app(args)


# The default config, shipped in the package (the repository's top-level serve_config.yaml links here), so
# that ``boneage serve`` runs from any folder.
DEFAULT_CONFIG = Path(__file__).with_name("serve_config.yaml")


def load_config(path: str | Path | None = None) -> dict:
    """A Serve config file (None: the packaged default), validated as ``serve run`` / ``serve deploy`` do."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load(Path(path or DEFAULT_CONFIG).read_text())
    ServeDeploySchema.model_validate(config)
    return config


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


def deploy(config: dict, model: str | None = None, host: str | None = None, port: int | None = None) -> str:
    """Start Serve (local Ray, or ``RAY_ADDRESS``) and run the config's applications; returns the URL.

    What ``serve run serve_config.yaml`` does, in this process: the config's ``http_options``,
    application ``args`` and per-deployment options (``user_config``, ``autoscaling_config``,
    ``max_ongoing_requests``, ``max_queued_requests``...). ``model`` overrides ``user_config.model``.
    Waits until the applications are running.
    """
    import ray

    from boneage.raycluster import ensure_ray

    if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        use_serve_fast_path()
    ensure_ray()
    http = dict(config.get("http_options") or {})
    if host:
        http["host"] = host
    if port:
        http["port"] = int(port)
    http.setdefault("host", "127.0.0.1")
    http.setdefault("port", 8000)
    serve.start(http_options=http, proxy_location=config.get("proxy_location", "HeadOnly"))
    for app_config in config["applications"]:
        if app_config.get("import_path") not in ("boneage.serving.app:app", "boneage.serve:app"):  # 0.1's path too
            raise ValueError(f"boneage serve runs boneage.serving.app:app only, not {app_config.get('import_path')!r}")
        deployments = {d["name"]: dict(d) for d in app_config.get("deployments") or []}
        if model:
            options = deployments.setdefault(MODEL_DEPLOYMENT_NAME, {})
            options["user_config"] = {**(options.get("user_config") or {}), "model": model}
        serve.run(build_app(app_config.get("args"), deployments), name=app_config.get("name", "default"),
                  route_prefix=app_config.get("route_prefix", "/"))
    shown = "127.0.0.1" if http["host"] in ("0.0.0.0", "::") else http["host"]
    return f"http://{shown}:{http['port']}{config['applications'][0].get('route_prefix', '/')}"


def run_config(path: str | Path | None = None, model: str | None = None, host: str | None = None,
               port: int | None = None) -> int:
    """``boneage serve``: deploy the config (None: the packaged one), say so in one line, block until Ctrl-C,
    then shut Serve down (a second Ctrl-C leaves without waiting for it). ``boneage serve`` has already said
    it is starting (before loading Ray and torch, which take seconds)."""
    from boneage.logs import verbose

    _quiet_serve(verbose())
    url = deploy(load_config(path), model=model, host=host, port=port)
    key = "API key required" if os.environ.get(API_KEY_ENV) else f"no API key required: set {API_KEY_ENV} for one"
    try:
        print(f"boneage is serving at {url} ({key}); Ctrl-C stops it", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping (Ctrl-C again to leave at once)...", flush=True)
    try:
        stop_serve()
    except KeyboardInterrupt:
        return 130
    return 0


def stop_serve(timeout_s: float = 30.0) -> None:
    """``serve.shutdown()``, less its noise: that call waits on a controller task that the controller's own
    exit kills, and Ray then prints "Task ServeController.graceful_shutdown failed ... will be retried" on
    every stop. Here the controller is asked to shut down (replicas drained, then it exits) and this waits
    until it is gone."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    def controller():
        try:
            return ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        except ValueError:  # none, or dead
            return None

    handle = controller()
    if handle is None:
        return
    ray.get(handle.graceful_shutdown.remote(wait=False), timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    while controller() is not None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"Serve did not stop within {timeout_s:.0f} s")
        time.sleep(0.1)


def _quiet_serve(loud: bool) -> None:
    """Serve's own lines in this process ("Started Serve", "Application ... is ready": it gives its logger a
    console handler of its own) only when ``loud``; the replicas' and the controller's stay in Ray's log files
    (``ensure_ray`` copies no worker output here unless verbose)."""
    logging.getLogger("ray.serve").setLevel(logging.INFO if loud else logging.WARNING)
