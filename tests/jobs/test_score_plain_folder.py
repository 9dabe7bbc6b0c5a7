"""`boneage score` on a plain folder of films, as a new user first runs it: no manifest, then `--sex`, then
a re-run that retries what failed; the exit status says whether anything failed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from boneage.cli import main as cli_main
from tests.helpers import FIXTURES, load_grey, make_dicom

MODEL = "untrained"  # deterministic: these tests check the job, not the figures


@pytest.fixture
def folder(tmp_path) -> Path:
    """Two real PNG films (no sex anywhere) and a real film in a DICOM whose header says M."""
    folder = tmp_path / "films"
    folder.mkdir()
    shutil.copy(FIXTURES / "rsna_1377.png", folder / "a.png")
    shutil.copy(FIXTURES / "rsna_7047.png", folder / "b.png")
    (folder / "c.dcm").write_bytes(make_dicom(load_grey(FIXTURES / "rsna_1377.png"), sex="M"))
    return folder


def _score(folder: Path, out: Path, *extra: str) -> tuple[int, dict, pd.DataFrame]:
    code = cli_main(["score", str(folder), "--out", str(out), "--model", MODEL, "--no-ray", "--no-progress",
                     "--format", "csv", *extra])
    summary = json.loads((out / "summary.json").read_text())
    return code, summary, pd.read_csv(out / "results.csv").set_index("path")


def test_a_plain_folder_fails_loudly_then_sex_and_a_rerun_score_it(folder, tmp_path, capsys):
    out = tmp_path / "out"
    code, summary, rows = _score(folder, out)
    assert code == 1  # before: 0, with every film failed
    assert (summary["scored"], summary["failed"], summary["processed_this_run"]) == (1, 2, 3)  # the DICOM knows
    assert set(rows.loc[rows["error"].notna()].index) == {str(folder / "a.png"), str(folder / "b.png")}
    assert "sex unknown" in rows.loc[str(folder / "a.png"), "error"]
    assert "--sex M|F" in capsys.readouterr().out  # what to do next

    code, summary, rows = _score(folder, out, "--sex", "F")
    assert code == 0
    assert (summary["scored"], summary["failed"], summary["retried_failed"]) == (3, 0, 2)
    assert summary["skipped_already_done"] == 1 and summary["processed_this_run"] == 2
    assert len(rows) == 3 and rows["error"].isna().all()  # one row per film: the new rows replaced the failures
    # --sex fills only what nothing else gives: the DICOM header's M wins over it
    assert rows.loc[str(folder / "a.png"), "sex"] == "F" and rows.loc[str(folder / "c.dcm"), "sex"] == "M"


def test_no_retry_failed_keeps_the_failures_and_the_manifest_beats_sex(folder, tmp_path):
    out = tmp_path / "out"
    assert _score(folder, out)[0] == 1
    code, summary, rows = _score(folder, out, "--sex", "F", "--no-retry-failed")
    assert code == 1 and summary["failed"] == 2 and summary["retried_failed"] == 0
    assert summary["processed_this_run"] == 0

    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"path,sex\n{folder / 'b.png'},M\n")
    code, summary, rows = _score(folder, out, "--sex", "F", "--manifest", str(manifest))
    assert code == 0 and summary["scored"] == 3
    assert rows.loc[str(folder / "a.png"), "sex"] == "F" and rows.loc[str(folder / "b.png"), "sex"] == "M"
