"""``BoneAge``, the HTTP ingress: reads, decodes and preprocesses each upload in a thread pool, and hands the
prepared films to :class:`~boneage.serving.model_deployment.BoneAgeModel` through a deployment handle (Ray
Serve model composition). Its ``user_config`` is :class:`~boneage.serving.settings.IngressSettings`."""
# No ``from __future__ import annotations`` here: FastAPI reads the route annotations at runtime.

import asyncio
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

from fastapi import File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile as StarletteUploadFile

from boneage.devices import use_cpu_threads
from boneage.predict.result import Prediction, PreparedFilm
from boneage.prepare.stages import PreprocessConfig
from boneage.serving.api import ERROR_RESPONSES, api
from boneage.serving.handler import RequestError, prepare_upload, response_body
from boneage.serving.http_guard import remember_health
from boneage.serving.metrics import IngressMetrics
from boneage.serving.model_deployment import MODEL_CHANGED
from boneage.serving.schemas import BatchResponse, BoneAgeResult
from boneage.serving.settings import DEPLOYMENT_NAME, IngressSettings
from boneage.serving.uploads import one_value, parse_age, parse_flag, per_file, read_upload, upload_name
from boneage.serving.webpage import INDEX_HTML, PAGE_CSP

log = logging.getLogger("ray.serve")  # the replica's log file (Serve's logger)
_ANYWAY = "true: a bone age even for a refused film (not a hand, no hand found), beside the refusal"


# Module functions used by the deployment's methods are defined before its class: Serve ships the class by value,
# and a module function defined after it was missing from its methods' globals in the replica (NameError).
def health_answer(info: dict) -> dict:
    """What /healthz says (also answered before the ingress's slots: ``http_guard.OpenHealth``)."""
    return {"status": "ok", "model_version": str(info["model_version"]), "model_trained": bool(info["model_trained"])}


def outcome(body: dict) -> str:
    """A scored film's outcome for the metrics: its verdict."""
    quality = body.get("quality") or {}
    return str(quality.get("verdict", "scored") if isinstance(quality, dict) else getattr(quality, "verdict", "scored"))


async def _done(item: dict) -> dict:
    return item


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
    then hands the prepared film to the batched model through a deployment handle. A bad file is answered
    4xx here, before it reaches a batch."""

    def __init__(self, model: DeploymentHandle, prepare_threads: int = 1):
        self._model = model
        use_cpu_threads(1)  # the films run in parallel in the pool's threads, each on one core
        self._prepare_pool = ThreadPoolExecutor(max(1, prepare_threads), thread_name_prefix="boneage-prepare")
        self.settings = IngressSettings()  # the request guard reads its limits here (request_guard)
        self._info: dict | None = None
        self._config: PreprocessConfig | None = None
        self._preparing = 0  # films in (or waiting for) the preparation pool: a call to the model waits for them
        self._most = 1  # the model's max_batch_size (from its info and its replies)
        self._metrics = IngressMetrics()

    def reconfigure(self, user_config: dict) -> None:
        """Apply ``user_config``: the upload limits and the busy wait (the model's settings are its own)."""
        self.settings = IngressSettings.from_user_config(user_config)
        log.info("boneage ingress: %s", self.settings)

    async def _model_info(self, refresh: bool = False) -> dict:
        if self._info is None or refresh:
            self._info = await self._model.info.remote()
            self._config = PreprocessConfig.from_dict(self._info["preprocess"])
            self._follow(self._info)
            remember_health(health_answer(self._info))
        return self._info

    def _follow(self, gathering: dict) -> None:
        """Gather as the model batches: at most its batch size."""
        self._most = max(1, int(gathering["max_batch_size"]))

    # two calls in flight: the next group leaves while the model runs one (and a second model replica is used)
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0, max_concurrent_batches=2)
    async def _to_model(self, items: list[tuple[str, PreparedFilm]]) -> list[Prediction]:
        """Films ready at about the same time go to the model in one handle call: one hop, not one per film
        (each hop costs both replicas CPU, a few ms at this size)."""
        self._metrics.films_per_call.observe(len(items))
        rows, gathering = await self._model.score.remote(items)
        self._follow(gathering)
        return rows

    async def _prepare(self, data: bytes, sex: str | None, age: float | None, filename: str | None,
                       refresh: bool = False) -> tuple[str, PreparedFilm]:
        """Decode and preprocess one upload in the pool, as the model's config says: (config hash, film)."""
        info = await self._model_info(refresh=refresh)
        self._preparing += 1
        self._metrics.preparing.set(self._preparing)
        started = time.perf_counter()
        try:
            row = await asyncio.get_running_loop().run_in_executor(
                self._prepare_pool, functools.partial(prepare_upload, data, sex, age, upload_name(filename),
                                                      config=self._config, limits=self.settings))
        finally:
            self._preparing -= 1
            self._metrics.preparing.set(self._preparing)
        self._metrics.prepare_ms.observe(1000 * (time.perf_counter() - started))
        return info["config_hash"], row

    async def _to_model_now(self, prepared: tuple[str, PreparedFilm]) -> Prediction:
        # Read when this film opens a call: it waits up to the busy wait for the films still in
        # preparation, and goes as soon as they have all joined it; alone, it goes at once.
        self._to_model.set_max_batch_size(min(self._most, 1 + self._preparing))
        self._to_model.set_batch_wait_timeout_s(self.settings.busy_batch_wait_s if self._preparing else 0.0)
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
        return health_answer(await self._model_info())

    @api.post("/v1/predict", response_model=BoneAgeResult, responses=ERROR_RESPONSES,
              summary="bone age of one radiograph (multipart: file, sex, optional chronological_age_months)")
    async def predict(self, request: Request,
                      file: Annotated[UploadFile | None, File(description="PNG, JPEG or DICOM")] = None,
                      sex: Annotated[str | None, Form(description="M or F (optional for a DICOM whose header has it)")] = None,
                      chronological_age_months: Annotated[str | None, Form()] = None,
                      heatmap: Annotated[str | None, Form(description="true: add heatmap_png_base64, a Grad-CAM "
                                                                      "overlay PNG")] = None,
                      score_anyway: Annotated[str | None, Form(description=_ANYWAY)] = None) -> dict:
        try:
            sex = await one_value(request, "sex", sex)
            chronological_age_months = await one_value(request, "chronological_age_months", chronological_age_months)
            if file is None or not isinstance(file, StarletteUploadFile):
                raise RequestError(400, "missing_file", "the multipart field 'file' (the radiograph) is required")
            data = await read_upload(file, self.settings.max_upload_bytes)
            row = await self._score(data, sex, parse_age(chronological_age_months), file.filename)
            body = await self._respond(row, parse_flag(heatmap), parse_flag(score_anyway))
        except RequestError as exc:
            self._metrics.answered(exc.code)
            raise
        self._metrics.answered(outcome(body))
        return body

    @api.post("/v1/predict/batch", response_model=BatchResponse, responses=ERROR_RESPONSES,
              summary="bone ages of several radiographs; a bad file is an item with an error, not a failed request")
    async def predict_batch(
        self, files: Annotated[list[UploadFile] | None, File(description="repeat the field once per file")] = None,
        sex: Annotated[list[str] | None, Form(description="one value for all files, or one per file")] = None,
        chronological_age_months: Annotated[list[str] | None, Form()] = None,
        heatmap: Annotated[str | None, Form(description="true: a heatmap for every file")] = None,
        score_anyway: Annotated[str | None, Form(description=_ANYWAY)] = None,
    ) -> dict:
        limits = self.settings
        files = [f for f in files or [] if isinstance(f, StarletteUploadFile)]
        if not files:
            raise RequestError(400, "missing_file", "the multipart field 'files' (one or more radiographs) is required")
        if len(files) > limits.max_files:
            raise RequestError(413, "too_many_files", f"{len(files)} files, over the limit of {limits.max_files}")
        sexes = per_file(sex, len(files), "sex")
        ages = [parse_age(a) for a in per_file(chronological_age_months, len(files), "chronological_age_months")]

        # One file at a time is read and prepared (its raw bytes and decoded pixels are dropped before the
        # next is read): a batch holds one upload in memory, not all of them. The prepared films go on to
        # the model as they are ready, and the answers are gathered at the end.
        async def finish(i: int, file: UploadFile, item: dict, scoring: asyncio.Future) -> dict:
            try:
                row = await scoring
                if row.error_code == MODEL_CHANGED:  # a rolling update in between: once more, the new way
                    await file.seek(0)
                    row = await self._score(await read_upload(file, limits.max_upload_bytes), sexes[i], ages[i],
                                            file.filename, refresh=True)
                item["result"] = await self._respond(row, parse_flag(heatmap), parse_flag(score_anyway))
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
                data = await read_upload(file, limits.max_upload_bytes)
                prepared = await self._prepare(data, sexes[i], ages[i], file.filename)
                del data
                scoring = asyncio.ensure_future(self._to_model_now(prepared))
            except RequestError as exc:
                item.update(status=exc.status, **exc.to_dict())
                scoring = None
            pending.append((i, file, item, scoring))
        results = await asyncio.gather(*(finish(i, f, item, s) if s is not None else _done(item)
                                         for i, f, item, s in pending))
        for item in results:
            self._metrics.answered(outcome(item["result"]) if "result" in item else item["error_code"])
        return {"results": results, "model_version": (await self._model_info())["model_version"]}

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        return HTMLResponse(INDEX_HTML, headers={"Content-Security-Policy": PAGE_CSP})
