"""The endpoint's typed configuration: each deployment's ``user_config`` as a settings class of its own, and
the application's ``args`` (:class:`AppArgs`, the builder's type).

What can change on running replicas (``reconfigure``, no restart) is split by the deployment that reads it,
so a key put under the wrong deployment in ``serve_config.yaml`` is refused with where it belongs, instead of
being accepted by a replica that never reads it. A new setting is one field in one of these classes (and
its line in serve_config.yaml).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat

from boneage.serving.handler import Limits

DEPLOYMENT_NAME = "BoneAge"  # the HTTP ingress
MODEL_DEPLOYMENT_NAME = "BoneAgeModel"  # the batched network behind it
# The application's import path (serve_config.yaml), and boneage 0.1's for it.
IMPORT_PATH = "boneage.serving.app:app"
IMPORT_PATHS = (IMPORT_PATH, "boneage.serve:app")

S = TypeVar("S", bound="_Settings")


class _Settings:
    """A deployment's ``user_config``: a frozen dataclass whose fields are the keys it accepts."""

    DEPLOYMENT: ClassVar[str]

    @classmethod
    def from_user_config(cls: type[S], config: Mapping | None) -> S:
        """The settings of ``config``; a key this deployment does not read is refused (a typo, or a key of
        the other deployment's ``user_config``: the error says which)."""
        config = dict(config or {})
        known = _keys(cls)
        unknown = sorted(set(config) - known)
        if unknown:
            elsewhere = {key: other.DEPLOYMENT for other in SETTINGS.values() if other is not cls
                         for key in _keys(other)}
            moved = [f"{key} belongs to {elsewhere[key]}'s user_config" for key in unknown if key in elsewhere]
            if len(moved) < len(unknown):
                moved.append(f"known: {sorted(known)}")
            hint = "; ".join(moved)
            raise ValueError(f"unknown {cls.DEPLOYMENT} user_config keys: {unknown} ({hint})")
        return cls(**config)


def _keys(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


@dataclass(frozen=True)
class ModelSettings(_Settings):
    """``BoneAgeModel``'s ``user_config``: the network and how it batches."""

    DEPLOYMENT: ClassVar[str] = MODEL_DEPLOYMENT_NAME

    model: str | None = None  # checkpoint URI; None: $BONEAGE_MODEL, else the shipped default
    device: str = "auto"
    max_batch_size: int = 8
    # 0: a batch is whatever waits when the model is free (no request waits for company)
    batch_wait_timeout_s: float = 0.0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.batch_wait_timeout_s < 0:
            raise ValueError("max_batch_size must be >= 1 and batch_wait_timeout_s >= 0")


@dataclass(frozen=True)
class IngressSettings(Limits, _Settings):
    """``BoneAge``'s ``user_config``: the upload limits (:class:`Limits`, which it is), and how its calls to
    the model gather films."""

    DEPLOYMENT: ClassVar[str] = DEPLOYMENT_NAME

    # While an ingress has more films in preparation, its call to the model waits up to this long for them
    # (and leaves once they have all joined it). Concurrency 16 on 2 CPUs: 3.85 films per call and per
    # batch, the model's CPU per request 7.3 ms (16.5 with batching off). A lone request never waits.
    busy_batch_wait_s: float = 0.06

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.busy_batch_wait_s < 0:
            raise ValueError("busy_batch_wait_s must be >= 0")


SETTINGS: dict[str, type[_Settings]] = {DEPLOYMENT_NAME: IngressSettings, MODEL_DEPLOYMENT_NAME: ModelSettings}


# Memory reserved per replica (Ray's `memory` resource: a node runs only the replicas whose reservations fit).
# The ingress idles at about 1.0 GB, and each preparing thread may hold one film at the decoded-size limit
# (160 MB) while it is converted: measured, a 7000 x 7000 16-bit PNG (98 MB decoded) peaked 570 MB above idle,
# so 0.9 GB per thread at the limit. The upload gate holds at most its buffer_bytes of request bodies (256 MiB).
# The model replica holds the network and a batch.
INGRESS_MEMORY_GIB, MODEL_MEMORY_GIB = 3.5, 1.5


class AppArgs(BaseModel):
    """The application's ``args`` (serve_config.yaml): the Ray resources of each deployment's replicas. An
    unknown key is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    num_cpus: PositiveFloat = Field(1.0, description="CPUs reserved per ingress replica")
    prepare_threads: NonNegativeInt = Field(0, description="the ingress's preprocessing threads; 0: one per CPU "
                                            "of its node, as memory_gib allows (prepare_threads_for)")
    model_num_cpus: NonNegativeFloat = Field(1.0, description="CPUs per model replica")
    num_gpus: NonNegativeFloat | Literal["auto"] = Field("auto", description="GPUs per model replica; auto: one "
                                                         "when the cluster has GPUs when the app is built")
    memory_gib: PositiveFloat = Field(INGRESS_MEMORY_GIB, description="Ray `memory` per ingress replica")
    model_memory_gib: PositiveFloat = Field(MODEL_MEMORY_GIB, description="Ray `memory` per model replica")

    def model_gpus(self) -> float:
        if self.num_gpus != "auto":
            return float(self.num_gpus)
        import ray

        return 1.0 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def check_serve_config(config: Mapping) -> None:
    """A Serve config's boneage applications read as typed settings (their ``args`` as :class:`AppArgs`, each
    ``user_config`` as its deployment's), so a misplaced or mistyped key stops a deploy before any replica
    starts (Serve and the replicas refuse it as well)."""
    for app in config.get("applications") or []:
        if app.get("import_path") not in IMPORT_PATHS:
            continue
        AppArgs.model_validate(app.get("args") or {})
        for entry in app.get("deployments") or []:
            name = entry.get("name")
            if name not in SETTINGS:
                raise ValueError(f"unknown deployment {name!r} (known: {sorted(SETTINGS)})")
            SETTINGS[name].from_user_config(entry.get("user_config"))
