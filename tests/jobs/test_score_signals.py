"""SIGTERM to `boneage score` (issue 31, item 7): a scheduler's stop commits what is scored and exits 130,
in the default Ray mode as with --no-ray; a re-run finishes with one row per input."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from tests.helpers import FIXTURES, ROOT

FILMS = ("rsna_1377.png", "rsna_7047.png", "rsna_3107_low_contrast.png")


def test_ensure_ray_keeps_a_sigterm_handler_the_command_set(monkeypatch):
    """Without a Ray: ray.init's own SIGTERM handler (a local Ray's stops every process and exits 1) is
    replaced by the one installed before; a command that set none keeps Ray's."""
    import ray

    from boneage.raycluster import ensure_ray

    def rays_handler(signum, frame):
        raise SystemExit(1)

    def fake_init(**_):
        signal.signal(signal.SIGTERM, rays_handler)

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 1})
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        ensure_ray()
        assert signal.getsignal(signal.SIGTERM) is signal.default_int_handler
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        ensure_ray()
        assert signal.getsignal(signal.SIGTERM) is rays_handler
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.mark.integration
def test_sigterm_under_a_local_ray_commits_exits_130_and_a_rerun_finishes(tmp_path):
    """Before: exit 134 (ray.init's handler), the rows since the last commit lost."""
    folder = tmp_path / "films"
    folder.mkdir()
    rows = []
    for i in range(12):
        for name in FILMS:
            target = folder / f"c{i:02d}_{name}"
            shutil.copyfile(FIXTURES / name, target)
            rows.append({"path": str(target), "sex": "FM"[i % 2]})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "boneage", "score", str(folder), "--out", str(out), "--model", "untrained",
               "--manifest", str(tmp_path / "manifest.csv"), "--chunk-size", "2", "--commit-every", "2",
               "--no-progress"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # the default: a local Ray of its own
    proc = subprocess.Popen([*command, "--actors", "1"], cwd=ROOT, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not list(out.glob("_done/*.json")):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "nothing committed in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, log[-3000:]
    assert "interrupted: re-run the same command" in log, log[-3000:]
    done = pd.concat([pd.read_parquet(p) for p in (out / "parts").iterdir()])
    assert 1 <= len(done) < len(rows), "the stop came too late to test a resumption"

    rerun = subprocess.run([*command, "--no-ray"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{len(done)} inputs already had a result" in rerun.stdout
    final = pd.read_parquet(out / "results.parquet")
    assert sorted(final["path"]) == sorted(r["path"] for r in rows)  # one row per input, none twice
    assert final["error"].isna().all()
