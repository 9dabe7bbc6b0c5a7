"""Connecting to Ray: a cluster when ``RAY_ADDRESS`` is set (as inside ``ray job submit``), else an
embedded local Ray started on demand. No code changes between laptop and cluster."""

from __future__ import annotations

import logging
import os
import signal
import threading

from boneage.logs import VERBOSE_ENV, verbose

log = logging.getLogger(__name__)

# Forwarded to local workers so s3:// inputs reach the same endpoint as the driver (a real cluster
# gets its credentials from its nodes' own environment or instance roles).
_FORWARDED_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
                  "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "BONEAGE_MODEL", VERBOSE_ENV)


def ensure_ray(num_cpus: int | None = None, *, worker_logs: bool = False):
    """Return the ``ray`` module, initialised; quiet unless ``--verbose`` / ``BONEAGE_VERBOSE``.

    Quiet: Ray's own log lines (start-up, token authentication, Ray Data's execution plan and its
    progress bars) stay in Ray's log files (``/tmp/ray/session_latest/logs``), and what the workers
    print is not copied here, so a command shows its own lines and its own progress only.
    ``worker_logs`` copies the workers' output here anyway (training: the epochs are logged there).
    """
    import ray

    if ray.is_initialized():
        return ray
    loud = verbose()
    quiet = {"log_to_driver": loud or worker_logs, "logging_level": logging.INFO if loud else logging.ERROR}
    # ray.init installs its own SIGTERM handler (for a local Ray: stop every Ray process, then sys.exit(1),
    # which ended `boneage score` with exit 134 and its last rows uncommitted). A handler the command set
    # before (score's: SIGTERM commits like Ctrl-C) is put back; Ray's processes still stop at exit (atexit).
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main_thread else None
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **quiet)
        log.info("connected to Ray cluster at %s", address)
    else:
        env = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
        # With the dashboard: Ray's State API lives there, and Ray Train polls it (without it, its
        # placement-group cleaner logs a warning every few seconds); it also shows the jobs' progress.
        ray.init(num_cpus=num_cpus, runtime_env={"env_vars": env} if env else None, **quiet)
        log.info("started a local Ray with %s CPUs", ray.cluster_resources().get("CPU"))
    if callable(previous) and signal.getsignal(signal.SIGTERM) is not previous:
        signal.signal(signal.SIGTERM, previous)
    quiet_ray_data(loud)
    return ray


def quiet_ray_data(loud: bool = False) -> None:
    """Ray Data's console lines (execution plan, "execution finished", its progress bars and the warning
    that they are off) only when ``loud``; its log file (``ray-data.log``) keeps everything. The
    commands show their own progress (:class:`boneage.progress.Progress`)."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.print_on_execution_start = loud
    context.enable_progress_bars = loud
    for handler in logging.getLogger("ray.data").handlers:
        if handler.get_name() == "console":  # the handler of Ray Data's default logging config
            handler.setLevel(logging.INFO if loud else logging.ERROR)


def actor_pool(most: int, blocks: int | None = None):
    """Ray Data's compute strategy for a pool of up to ``most`` actors, all started at once (never more
    than there are ``blocks``). Ray Data's autoscaling pool otherwise starts at ``min_size`` and adds
    actors only once its queue backs up: on 2 CPUs the second actor began its first chunk about 6 s after
    the first, a quarter of a 2,000-file run. ``min_size`` stays 1, so a cluster short of CPUs still runs."""
    import ray.data

    most = max(1, int(most))
    return ray.data.ActorPoolStrategy(min_size=1, max_size=most, initial_size=min(most, max(1, blocks or most)))
