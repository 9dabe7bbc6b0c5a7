"""The ``boneage`` command as a user runs it: a real subprocess, real files, exit statuses."""

from __future__ import annotations

import json

import cv2
import pytest

from boneage.clinical import RESEARCH_USE_ONLY
from boneage.predict.predictor import Predictor
from tests.helpers import FIXTURES, load_grey, make_dicom, run_cli

pytestmark = pytest.mark.integration  # the command in child processes

GOOD = [str(FIXTURES / "rsna_1377.png"), str(FIXTURES / "rsna_7047.png")]


def test_predict_json_scores_good_files_and_reports_the_bad_one(tmp_path):
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"not an image")
    dicom = tmp_path / "hand.dcm"
    dicom.write_bytes(make_dicom(load_grey(FIXTURES / "rsna_1377.png"), "MONOCHROME2", sex="M"))
    proc = run_cli("predict", GOOD[0], str(bad), GOOD[1], "--json", "--sex", "M", "--model", "untrained")
    assert proc.returncode == 1, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["path"] for r in rows] == [GOOD[0], str(bad), GOOD[1]]
    assert rows[1]["error"] and "corrupt.png" in rows[1]["error"] and rows[1]["bone_age_months"] is None
    for row in (rows[0], rows[2]):
        assert row["error"] is None and row["sex"] == "M" and 0 < row["bone_age_months"] < 1000
    assert "UNTRAINED MODEL" in proc.stderr and "1 of 3" in proc.stderr
    assert proc.stderr.startswith(RESEARCH_USE_ONLY) and all(r["notice"] == RESEARCH_USE_ONLY for r in rows)

    proc = run_cli("predict", GOOD[0], "--json")  # no --sex, and a PNG header cannot say
    assert proc.returncode == 1 and "sex unknown" in json.loads(proc.stdout)["error"]

    proc = run_cli("predict", *GOOD, str(dicom), "--sex", "F", "--json", "--save-preprocessed", str(tmp_path / "pre"))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert all(r["error"] is None and isinstance(r["bone_age_months"], float) for r in rows)
    assert [r["id"] for r in rows] == ["rsna_1377", "rsna_7047", "hand"]
    size = Predictor.load().preprocess_config.output_size  # the default (shipped) model's input size
    assert cv2.imread(str(tmp_path / "pre" / "rsna_1377.png"), 0).shape == (size, size)


def test_dicom_header_sex_is_used_when_not_given(tmp_path):
    dicom = tmp_path / "hand.dcm"
    dicom.write_bytes(make_dicom(load_grey(FIXTURES / "rsna_1377.png"), "MONOCHROME1", sex="M"))
    proc = run_cli("predict", str(dicom), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["sex"] == "M"


def test_text_output_and_saved_checkpoint(tmp_path):
    model = tmp_path / "untrained.pt"
    proc = run_cli("init-checkpoint", "--out", str(model), "--seed", "5")
    assert proc.returncode == 0 and model.exists(), proc.stderr
    proc = run_cli("predict", GOOD[0], "--sex", "F", "--model", str(model))
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    assert line.startswith(GOOD[0]) and " months (" in line and " y " in line
    proc = run_cli("predict", GOOD[0], "--sex", "F", "--model", str(model), "--chronological-age", "120")
    assert proc.returncode == 0 and "months vs chronological age; SDS " in proc.stdout, proc.stderr
    assert "(no interval), indeterminate" in proc.stdout and RESEARCH_USE_ONLY not in proc.stdout
    proc = run_cli("predict", GOOD[0], "--sex", "F", "--model", str(tmp_path / "absent.pt"))
    assert proc.returncode == 2 and "checkpoint not found" in proc.stderr


def test_an_unwritable_output_is_one_line_and_the_results_are_printed(tmp_path):
    """Issue 31, item 13: a folder under a regular file (ENOTDIR, for root too, as a read-only mount is for
    others). Before: a traceback, no result printed; `score` a traceback too."""
    blocker = tmp_path / "afile"
    blocker.write_bytes(b"x")
    proc = run_cli("predict", *GOOD, "--sex", "M", "--model", "untrained", "--heatmap", str(blocker / "heat"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert [line.split(":")[0] for line in proc.stdout.splitlines()] == GOOD and "months" in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if "heatmap not written" in line]
    assert len(errors) == 2 and all(f"{blocker / 'heat'}: Not a directory (errno 20)" in e for e in errors)
    assert "2 output file(s) could not be written" in proc.stderr

    proc = run_cli("score", GOOD[0], "--model", "untrained", "--no-ray", "--no-progress", "--out",
                   str(blocker / "out"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"error: {blocker / 'out'}: Not a directory (errno 20)"
