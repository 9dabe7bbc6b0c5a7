"""Results as they are ready (issue 28, item 3): ``Predictor.predict_iter`` reads a film only when its
batch is due and yields each batch once scored; ``boneage predict`` prints the first result before it
has read the last film; the long commands show plain progress lines in a log."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from boneage.predict.predictor import Predictor, untrained_checkpoint
from tests.helpers import FIXTURES, ROOT, run_cli

HANDS = ("rsna_1377.png", "rsna_7047.png")


@pytest.fixture
def films(tmp_path):
    """Six real films (the two fixture hands, three times each), in the order they are given."""
    folder = tmp_path / "films"
    folder.mkdir()
    paths = []
    for i in range(3):
        for name in HANDS:
            paths.append(folder / f"f{i}_{name}")
            shutil.copyfile(FIXTURES / name, paths[-1])
    return [str(p) for p in paths]


def test_predict_iter_reads_each_film_only_when_its_batch_is_due(films):
    predictor = Predictor(untrained_checkpoint(), device="cpu", batch_size=2)
    pulled: list[str] = []

    def given():
        for path in films:
            pulled.append(path)
            yield path

    rows = predictor.predict_iter(given(), sex="F")
    first = next(rows)
    assert pulled == films[:2] and first.path == films[0] and first.bone_age_months is not None
    rest = list(rows)
    assert pulled == films and [r.path for r in [first, *rest]] == films
    expected = predictor.predict_files(films, sex="F")  # the list API is the same path, whole
    assert [r.bone_age_months for r in [first, *rest]] == [r.bone_age_months for r in expected]


# `boneage predict` itself, its reads marked on the same stdout as its results (one pipe: the order is exact)
MARKED_READS = """
import sys
import boneage.predict.predictor as predictor
from boneage.cli import main

read = predictor.prepare_file

def marked(uri, *args, **kwargs):
    print(f"READING {uri}", flush=True)
    return read(uri, *args, **kwargs)

predictor.prepare_file = marked
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.integration
def test_predict_prints_the_first_result_before_it_reads_the_last_film(films):
    proc = subprocess.run([sys.executable, "-c", MARKED_READS, "predict", *films, "--sex", "M", "--model",
                           "untrained", "--batch-size", "2"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    results = [i for i, line in enumerate(lines) if not line.startswith("READING ")]
    assert [lines[i].split(":")[0] for i in results] == films
    assert results[0] < lines.index(f"READING {films[-1]}")  # streamed: printed before the last read
    assert results[0] < lines.index(f"READING {films[2]}")  # ... and before the second batch's
    assert "predicting:" not in proc.stderr  # no bar off a terminal: stdout is the output


@pytest.mark.integration
def test_score_without_ray_and_evaluate_show_plain_progress_lines_in_a_log(films, tmp_path):
    proc = run_cli("score", str(tmp_path / "films"), "--no-ray", "--sex", "M", "--model", "untrained",
                   "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\r" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert any(line.startswith("scoring: 6/6 (100%)") for line in lines), proc.stderr
    # the project's info line, as info: no level written before it
    assert any(line.startswith("6 inputs: 0 already done, 6 to score") for line in lines), proc.stderr

    labels = tmp_path / "labels.csv"
    labels.write_text("id,boneage,male\n" + "".join(f"f{i}_{n[:-4]},120,True\n" for i in range(3) for n in HANDS))
    proc = run_cli("evaluate", "--model", "untrained", "--data", str(tmp_path / "films"), "--labels", str(labels),
                   "--out", str(tmp_path / "eval"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "\r" not in proc.stderr
    assert any(line.startswith("evaluating: 6/6 (100%)") for line in proc.stderr.splitlines()), proc.stderr
