"""``BoneAgeModel``: the network alone, in a Ray Serve deployment of its own, on batches formed from every
ingress replica's films. Its ``user_config`` is :class:`~boneage.serving.settings.ModelSettings`."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from ray import serve

from boneage.devices import use_cpu_threads
from boneage.predict.result import Prediction, PreparedFilm
from boneage.serving.handler import BoneAgeService
from boneage.serving.metrics import ModelMetrics
from boneage.serving.settings import MODEL_DEPLOYMENT_NAME, ModelSettings

log = logging.getLogger("ray.serve")  # the replica's log file (Serve's logger)
MODEL_CHANGED = "model_changed"


# Module functions used by a deployment's methods are defined before its class: Serve ships the class by value,
# and a module function defined after it was missing from its methods' globals in the replica (NameError).
def assigned_cpus() -> int:
    """The CPUs Ray reserved for this replica (at least one thread, however fractional)."""
    import ray

    return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))


@serve.deployment(name=MODEL_DEPLOYMENT_NAME, max_ongoing_requests=64, user_config={}, health_check_period_s=10)
class BoneAgeModel:
    """The network alone, on batches that ``@serve.batch`` forms from every ingress replica's films.

    With ``batch_wait_timeout_s`` 0 (the default) a lone film runs at once, and the films that arrive
    while a batch runs form the next one: batching never makes a request wait for company. An ingress
    sends the films it has ready in one call (:meth:`score`), holding it open while it has more in
    preparation: under load one hop and one forward pass serve several films.
    """

    def __init__(self) -> None:
        use_cpu_threads(assigned_cpus())  # torch's default, every core of the node, would fight the ingress
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="boneage-model")
        self._service: BoneAgeService | None = None
        self._settings = ModelSettings()
        self._metrics = ModelMetrics()

    def reconfigure(self, user_config: dict) -> None:
        """Apply ``user_config``: reload the model only when it changed; batch knobs take effect at once."""
        settings = ModelSettings.from_user_config(user_config)
        old = self._settings
        if self._service is None or (settings.model, settings.device) != (old.model, old.device):
            self._service = BoneAgeService.load(settings.model, device=settings.device,
                                                batch_size=settings.max_batch_size)
        self._service.predictor.batch_size = settings.max_batch_size  # one Serve batch = one forward pass
        self.predict.set_max_batch_size(settings.max_batch_size)
        self.predict.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self._settings = settings
        log.info("boneage model %s on %s, max_batch_size %d, batch_wait_timeout_s %.3f",
                 self._service.model_version, self._service.predictor.device, settings.max_batch_size,
                 settings.batch_wait_timeout_s)

    def info(self) -> dict:
        """What an ingress needs to prepare films for this model (its preprocessing and version) and to
        gather them (:meth:`gathering`)."""
        service = self._service
        config = service.predictor.preprocess_config
        return {"model_version": service.model_version, "model_trained": service.model_trained,
                "preprocess": config.to_dict(), "config_hash": config.config_hash(), **self.gathering()}

    def gathering(self) -> dict:
        """How an ingress groups its films into one call: at most a batch."""
        return {"max_batch_size": self._settings.max_batch_size}

    async def score(self, items: list[tuple[str, PreparedFilm]]) -> tuple[list[Prediction], dict]:
        """The films one ingress had ready, in one call: each joins the batch queue (beside other
        ingresses' films). Returns the scored rows and :meth:`gathering`, so that an ingress follows a
        ``reconfigure`` of the batch size from its next call on."""
        rows = await asyncio.gather(*(self.predict(item) for item in items))
        return list(rows), self.gathering()

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0)
    async def predict(self, items: list[tuple[str, PreparedFilm]]) -> list[Prediction]:
        """(preprocessing hash, prepared row) -> the scored row; a row prepared for another model (a swap
        in between) comes back with ``error_code`` ``model_changed``, and the ingress prepares it again."""
        self._metrics.batch_size.observe(len(items))
        self._metrics.films.inc(len(items))
        started = time.perf_counter()
        rows = await asyncio.get_running_loop().run_in_executor(self._pool, self._predict, items)
        self._metrics.forward_ms.observe(1000 * (time.perf_counter() - started))
        return rows

    def _predict(self, items: list[tuple[str, PreparedFilm]]) -> list[Prediction]:
        service = self._service
        current = service.predictor.preprocess_config.config_hash()
        scored = iter(service.predict([film for config_hash, film in items if config_hash == current]))
        return [next(scored) if config_hash == current else film.result(error_code=MODEL_CHANGED)
                for config_hash, film in items]

    async def respond(self, row: Prediction, heatmap: bool, score_anyway: bool) -> dict:
        """The response body with the heatmap: a second pass through the network, with gradients."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._service.response, row, heatmap,
                                                                score_anyway)
