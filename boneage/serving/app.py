"""The endpoint's application builder: ``import_path: boneage.serving.app:app`` (serve_config.yaml, ``serve run``,
``serve deploy``, KubeRay, ``boneage serve``).

Two deployments (Ray Serve model composition): ``BoneAge``, the HTTP ingress
(:mod:`boneage.serving.ingress`), reads, decodes and preprocesses each upload, and sends the films it has
ready to ``BoneAgeModel`` (:mod:`boneage.serving.model_deployment`), which runs the network on batches formed
from every ingress replica's films. Each scales on its own, and each has its own ``user_config``
(:mod:`boneage.serving.settings`), applied by ``reconfigure`` without a restart. The config's application
``args`` are :class:`~boneage.serving.settings.AppArgs`: Serve validates them against it before calling
:func:`app`.
"""
# No ``from __future__ import annotations``: Serve reads the builder's annotation (AppArgs) at runtime.

import logging

from ray.serve.deployment import Application

from boneage.devices import usable_cpus
from boneage.serving.ingress import BoneAgeServer
from boneage.serving.model_deployment import BoneAgeModel
from boneage.serving.settings import AppArgs
from boneage.serving.upload_gate import UploadRules

log = logging.getLogger(__name__)
INGRESS_IDLE_GIB, PREPARE_PEAK_GIB = 1.0, 0.9  # measured: see settings.INGRESS_MEMORY_GIB


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


def _gib(value: float) -> int:
    return int(value * 1024**3)


def build_app(args: AppArgs | dict | None = None) -> Application:
    """The application: the ``BoneAge`` ingress bound to the ``BoneAgeModel`` deployment, with the Ray
    resources of ``args`` (a config's ``deployments:`` entries, applied by Serve, win over them)."""
    args = args if isinstance(args, AppArgs) else AppArgs.model_validate(args or {})
    model = BoneAgeModel.options(ray_actor_options={"num_cpus": args.model_num_cpus, "num_gpus": args.model_gpus(),
                                                    "memory": _gib(args.model_memory_gib)}).bind()
    threads = prepare_threads_for(args.prepare_threads, usable_cpus(), args.memory_gib)
    ingress = BoneAgeServer.options(ray_actor_options={"num_cpus": args.num_cpus, "memory": _gib(args.memory_gib)})
    return ingress.bind(model, prepare_threads=threads)


def app(args: AppArgs) -> Application:
    """``import_path: boneage.serving.app:app``: Serve turns the config's ``args`` into :class:`AppArgs`."""
    return build_app(args)
