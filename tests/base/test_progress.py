"""Progress and log lines (issue 28, item 3): a tqdm bar on a terminal (a real pseudo-terminal here),
plain lines in a log; the project's info lines at INFO, other libraries' only from WARNING."""

from __future__ import annotations

import io
import logging
import os
import pty
import struct

import pytest

from boneage.logs import VERBOSE_ENV, setup_logging
from boneage.progress import Progress


def test_progress_in_a_log_is_plain_lines_with_the_count_and_rate():
    log = io.StringIO()  # not a terminal, as a file, a pipe or `ray job logs`
    with Progress(5, "scoring", file=log, log_every=0) as bar:
        for _ in range(5):
            bar.update(1)
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert all(line.startswith("scoring: ") for line in lines)
    assert lines[0].startswith("scoring: 0/5 (0%)") and lines[-1].startswith("scoring: 5/5 (100%)")
    assert "images/s" in lines[-1] and len(lines) == 6  # the start, then each update (log_every=0)


def test_progress_in_a_log_writes_at_most_every_log_every_seconds_and_once_at_the_end():
    log = io.StringIO()
    with Progress(1000, "preprocessing", file=log, log_every=3600) as bar:
        for _ in range(1000):
            bar.update(1)
    lines = log.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == ["preprocessing: 0/1000", "preprocessing: 1000/1000"]


def test_progress_shows_nothing_when_off_or_empty():
    log = io.StringIO()
    for bar in (Progress(5, "off", file=log, enabled=False), Progress(0, "empty", file=log)):
        bar.update(0)
        bar.close()
    assert log.getvalue() == ""


def _drain(fd: int) -> bytes:
    """Everything written to the terminal so far: a pty gives it back in pieces."""
    import select

    data = b""
    while select.select([fd], [], [], 0.5)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data


def test_progress_on_a_terminal_is_a_bar_redrawn_in_place_and_a_result_line_goes_above_it():
    import fcntl
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))  # 100 columns
    terminal = os.fdopen(follower, "w")
    try:
        with Progress(4, "predicting", file=terminal) as bar:
            for i in range(4):
                bar.print(f"result {i}", file=terminal)
                bar.update(1)
        terminal.flush()
        shown = _drain(leader).decode()
    finally:
        terminal.close()
        os.close(leader)
    assert "\r" in shown and "predicting: 100%|" in shown and "4/4" in shown  # tqdm's bar, redrawn in place
    assert all(f"result {i}" in shown for i in range(4))


def test_progress_print_is_a_plain_flushed_line_in_a_log():
    out = io.StringIO()
    with Progress(1, "predicting", file=io.StringIO()) as bar:
        bar.print("film.png: 120.0 months", file=out)
    assert out.getvalue() == "film.png: 120.0 months\n"


@pytest.fixture
def restored_logging(monkeypatch):
    """setup_logging changes the process's root logger: put it back as it was after each test."""
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    root, project = logging.getLogger(), logging.getLogger("boneage")
    handlers, level, project_level = list(root.handlers), root.level, project.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    project.setLevel(project_level)


def test_the_projects_info_is_plain_a_warning_says_so_and_other_libraries_stay_quiet(restored_logging, capsys):
    setup_logging()
    logging.getLogger("boneage.score").info("150 inputs: 0 already done")
    logging.getLogger("boneage.score").debug("detail")
    logging.getLogger("boneage.score").warning("the calibration was measured with 8 variants")
    logging.getLogger("somelibrary").info("chatter")
    logging.getLogger("somelibrary").warning("deprecated")
    assert capsys.readouterr().err.splitlines() == [
        "150 inputs: 0 already done", "WARNING: the calibration was measured with 8 variants", "WARNING: deprecated"]


def test_verbose_shows_everything_named_and_reaches_later_setups(restored_logging, capsys):
    setup_logging(True)
    setup_logging()  # a job's own setup after the CLI's keeps --verbose
    logging.getLogger("boneage.score").debug("detail")
    logging.getLogger("somelibrary").info("chatter")
    assert capsys.readouterr().err.splitlines() == ["DEBUG boneage.score: detail", "INFO somelibrary: chatter"]
    assert os.environ[VERBOSE_ENV] == "1"  # what ensure_ray reads
    assert sum(type(h).__module__ == "boneage.logs" for h in logging.getLogger().handlers) == 1


def test_the_command_sets_logging_up_once_from_the_flag_the_environment_or_its_table_entry(restored_logging,
                                                                                           monkeypatch, capsys):
    """``cli.main`` is the one place logging is set up: ``-v`` or ``$BONEAGE_VERBOSE`` (what a job submitted
    to a cluster can carry), and a service (``listen``) has the time on each line."""
    from boneage import cli

    def shown(*argv: str) -> str:  # in a fresh process: no handler of ours yet
        root = logging.getLogger()
        root.handlers[:] = [h for h in root.handlers if type(h).__module__ != "boneage.logs"]
        assert cli.main([*argv, "serve", "--print-config"]) == 0
        capsys.readouterr()
        logging.getLogger("boneage.x").info("line")
        return capsys.readouterr().err

    assert shown() == "line\n"
    monkeypatch.setenv(VERBOSE_ENV, "1")
    assert shown() == "INFO boneage.x: line\n"
    monkeypatch.delenv(VERBOSE_ENV)
    assert shown("-v") == "INFO boneage.x: line\n"
    assert [c.name for c in cli.COMMANDS if c.service] == ["listen"]
    setup_logging(False, timestamps=True)  # what main does for listen
    logging.getLogger("boneage.x").info("line")
    assert capsys.readouterr().err.split(" ", 2)[2] == "INFO boneage.x: line\n"


def test_ensure_ray_is_quiet_unless_verbose_or_asked_for_the_workers_output(monkeypatch):
    """The settings ray.init gets (Ray is not started: its init is recorded)."""
    import ray
    import ray.data

    from boneage.raycluster import ensure_ray

    context = ray.data.DataContext.get_current()
    for name in ("print_on_execution_start", "enable_progress_bars"):  # restored after the test
        monkeypatch.setattr(context, name, getattr(context, name))
    calls = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 1})
    ensure_ray()
    ensure_ray(worker_logs=True)
    monkeypatch.setenv(VERBOSE_ENV, "1")
    ensure_ray()
    settings = [(c["log_to_driver"], c["logging_level"]) for c in calls]
    assert settings == [(False, logging.ERROR), (True, logging.ERROR), (True, logging.INFO)]
    assert context.print_on_execution_start and context.enable_progress_bars  # verbose: Ray Data's lines back
    monkeypatch.delenv(VERBOSE_ENV)
    ensure_ray()
    assert not context.print_on_execution_start and not context.enable_progress_bars

