"""A normal `boneage score` run shows its own lines and its progress, not Ray's (issue 28, item 3): Ray's
start-up, token and Ray Data lines stay in Ray's log files unless --verbose."""

from __future__ import annotations

import shutil

import pytest

from tests.helpers import FIXTURES, run_cli

# Lines a local Ray and Ray Data write to a driver's console by default (seen before the fix)
RAY_NOISE = ("Started a local Ray instance", "Token authentication", "View the dashboard", "streaming_executor",
             "Execution plan of Dataset", "Starting execution of Dataset", "execution finished",
             "Progress bars disabled", "Running Dataset", " pid=")  # " pid=": a worker's line copied to the driver


@pytest.mark.integration
def test_score_on_a_few_films_prints_its_lines_and_progress_but_no_ray_internals(tmp_path):
    folder = tmp_path / "films"
    folder.mkdir()
    for i in range(2):
        for name in ("rsna_1377.png", "rsna_7047.png"):
            shutil.copyfile(FIXTURES / name, folder / f"c{i}_{name}")
    proc = run_cli("score", str(folder), "--sex", "F", "--model", "untrained", "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Ray's driver prints one C++ line of its own (an actor's constructor arguments in the object store),
    # which no Python setting reaches; the rest must be ours
    ours = [line for line in proc.stderr.splitlines() if "core_worker.cc" not in line]
    assert not [noise for noise in RAY_NOISE if noise in proc.stdout + "\n".join(ours)], proc.stderr
    assert "4 inputs: 0 already done, 4 to score in 1 chunks of up to 64 (model untrained-seed0)" in ours
    assert any(line.startswith("scoring: 4/4 (100%)") for line in ours), proc.stderr
    assert len(ours) <= 7, proc.stderr  # 6: the untrained warning, 3 info lines (one says Ray started), 2 progress
    assert proc.stdout.startswith("inputs 4: scored 4, refused 0, failed 0")
