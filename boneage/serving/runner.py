"""``boneage serve``: a Serve config (serve_config.yaml) deployed from this process, as ``serve run CONFIG``
does (Serve's controller builds the application from its import path and applies each deployment's
options), then held until Ctrl-C."""

from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path

from boneage.serving.api_key import API_KEY_ENV
from boneage.serving.environment import use_serve_fast_path
from boneage.serving.settings import IMPORT_PATH, IMPORT_PATHS, MODEL_DEPLOYMENT_NAME, check_serve_config

# The default config, shipped in the package (the repository's top-level serve_config.yaml links here), so
# that ``boneage serve`` runs from any folder.
DEFAULT_CONFIG = Path(__file__).with_name("serve_config.yaml")


def load_config(path: str | Path | None = None) -> dict:
    """A Serve config file (None: the packaged default), validated as ``serve run`` / ``serve deploy`` do, and
    each deployment's ``user_config`` as its settings (:func:`~boneage.serving.settings.check_serve_config`)."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load(Path(path or DEFAULT_CONFIG).read_text())
    ServeDeploySchema.model_validate(config)
    check_serve_config(config)
    return config


def with_overrides(config: dict, model: str | None = None, host: str | None = None, port: int | None = None) -> dict:
    """A copy of ``config`` with ``boneage serve``'s options: the model (``user_config.model`` of the model
    deployment), the host and the port; 127.0.0.1:8000 and the head's proxy unless it says otherwise."""
    config = copy.deepcopy(config)
    http = config.setdefault("http_options", {})
    if host:
        http["host"] = host
    if port:
        http["port"] = int(port)
    http.setdefault("host", "127.0.0.1")
    http.setdefault("port", 8000)
    config.setdefault("proxy_location", "HeadOnly")
    for app in config["applications"]:
        if app.get("import_path") not in IMPORT_PATHS:
            raise ValueError(f"boneage serve runs {IMPORT_PATH} only, not {app.get('import_path')!r}")
        app["import_path"] = IMPORT_PATH  # boneage 0.1's path, as today's
        if model:
            deployments = app.setdefault("deployments", [])
            entry = next((d for d in deployments if d.get("name") == MODEL_DEPLOYMENT_NAME), None)
            if entry is None:
                entry = {"name": MODEL_DEPLOYMENT_NAME}
                deployments.append(entry)
            entry["user_config"] = {**(entry.get("user_config") or {}), "model": model}
    check_serve_config(config)
    return config


def deploy(config: dict, model: str | None = None, host: str | None = None, port: int | None = None,
           timeout_s: float = 900.0) -> str:
    """Start Serve (local Ray, or ``RAY_ADDRESS``) and deploy the config's applications (with
    :func:`with_overrides`) as ``serve run CONFIG`` does; waits until they run, and returns the URL."""
    import ray
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    from boneage.raycluster import ensure_ray

    schema = ServeDeploySchema.model_validate(with_overrides(config, model, host, port))
    if not ray.is_initialized() and not os.environ.get("RAY_ADDRESS"):
        use_serve_fast_path()
    ensure_ray()
    client = serve_start(http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location)
    names = {app.name for app in schema.applications}
    before = _deployed_times(names)
    client.deploy_apps(schema)
    _wait_running(before, timeout_s)
    http = schema.http_options
    shown = "127.0.0.1" if http.host in ("0.0.0.0", "::") else http.host
    return f"http://{shown}:{http.port}{schema.applications[0].route_prefix or '/'}"


def _deployed_times(names: set[str]) -> dict[str, float | None]:
    """When each application was last deployed (None: it is not)."""
    from ray import serve

    apps = serve.status().applications
    return {name: apps[name].last_deployed_time_s if name in apps else None for name in names}


def _wait_running(before: dict[str, float | None], timeout_s: float) -> None:
    """Until each application, deployed again since ``before``, runs; a failed one raises with Serve's reason."""
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    deadline = time.monotonic() + timeout_s
    while True:
        apps = serve.status().applications
        new = {name: apps[name] for name, then in before.items()
               if name in apps and apps[name].last_deployed_time_s != then}
        for name, app in new.items():
            if app.status == ApplicationStatus.DEPLOY_FAILED:
                raise RuntimeError(f"the application {name!r} failed to deploy: {app.message}")
        if len(new) == len(before) and all(app.status == ApplicationStatus.RUNNING for app in new.values()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the applications {sorted(before)} did not run within {timeout_s:.0f} s")
        time.sleep(0.2)


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
    (``ensure_ray`` copies no worker output here unless verbose). Serve sets its logger up when it is first
    imported, so it is imported first."""
    import ray.serve  # noqa: F401

    logging.getLogger("ray.serve").setLevel(logging.INFO if loud else logging.WARNING)
