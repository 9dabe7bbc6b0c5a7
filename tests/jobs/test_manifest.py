"""``boneage score`` on a folder as a hospital exports it, and a manifest with bad rows (issue 31, items 5,
6, 9, 14 and 15), without Ray: the probe's run, in a child process with a deadline (a FIFO hung it)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from boneage.jobs.manifest import read_manifest
from boneage.predict.scoring import manifest_key
from tests.helpers import FIXTURES, ROOT, load_grey, make_dicom

pytestmark = pytest.mark.integration  # the command in child processes

UID_NAME = "1.2.826.0.1.3680043.8.498.1234567890"


def write_manifest(path: Path, rows: list[tuple[str, str, str]]) -> str:
    pd.DataFrame(rows, columns=["path", "sex", "chronological_age_months"]).to_csv(path, index=False)
    return str(path)


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> dict:
    """The security review's folder: UID-named and numbered DICOMs, a PNG, a text file, a FIFO, a symlinked
    folder with a loop back; a manifest with a bad sex and a contradictory duplicate. Scored once."""
    root = tmp_path_factory.mktemp("probe")
    folder, outside = root / "in", root / "elsewhere"
    folder.mkdir()
    outside.mkdir()
    hand = load_grey(FIXTURES / "rsna_1377.png")
    for name in (UID_NAME, "I.001", "IM0001"):
        (folder / name).write_bytes(make_dicom(hand, sex="M"))
    shutil.copy(FIXTURES / "rsna_1377.png", folder / "1377.png")
    (folder / "README.txt").write_text("export notes\n")
    os.mkfifo(folder / "pipe")
    shutil.copy(FIXTURES / "rsna_7047.png", outside / "7047.png")
    os.symlink(outside, folder / "linked")
    os.symlink(folder, outside / "loop")
    manifest = write_manifest(root / "manifest.csv", [
        (str(folder / "1377.png"), "F", ""),
        (str(folder / "IM0001"), "X", ""),  # line 3: not a sex
        (str(folder / "linked" / "7047.png"), "M", ""),
        (str(folder / "I.001"), "F", "120"),
        (str(folder / "linked" / "7047.png"), "F", ""),  # line 6: contradicts line 4
    ])
    out = root / "out"
    code = ("import json\nfrom boneage.jobs.resumable import Output, Resources\n"
            "from boneage.jobs.score import ScoreOptions, print_summary, run\n"
            f"s = run([{str(folder)!r}], Output({str(out)!r}, progress=False), ScoreOptions('untrained', {manifest!r}), "
            "Resources(use_ray=False))\n"
            "print_summary(s)\nprint(json.dumps(s))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pd.read_parquet(out / "results.parquet")
    return {"folder": folder, "manifest": manifest, "printed": done.stdout,
            "summary": json.loads(done.stdout.strip().splitlines()[-1]),
            "rows": rows.assign(name=[Path(p).name for p in rows["path"]]).set_index("name")}


def test_every_entry_of_the_folder_is_scored_failed_or_skipped_and_the_sum_is_the_folder(probe):
    """Items 5, 6, 15: before, `inputs 4` with the UID-named DICOM and I.001 missing, the symlinked folder
    and the FIFO as inputs, and the run hung on the FIFO; now it ends, and the sum accounts for each entry."""
    summary, rows = probe["summary"], probe["rows"]
    assert sorted(rows.index) == sorted(["1377.png", UID_NAME, "I.001", "IM0001", "7047.png"])
    assert summary["skipped_by_reason"] == {"folder_already_listed": 1, "not_a_regular_file": 1, "not_an_image": 1}
    assert summary["inputs"] == 8 == summary["scored"] + summary["refused"] + summary["failed"] + summary["skipped"]
    assert {Path(f["path"]).name: f["reason"] for f in summary["skipped_files"]} == {
        "README.txt": "not_an_image", "pipe": "not_a_regular_file", "loop": "folder_already_listed"}
    assert "skipped 3 (sum 8)" in probe["printed"]
    assert rows.loc[UID_NAME, "sex"] == "M" and pd.isna(rows.loc[UID_NAME, "error"])  # the header's sex
    assert rows.loc["I.001", "sex"] == "F" and rows.loc["I.001", "chronological_age_months"] == 120.0


def test_a_bad_manifest_row_is_a_bad_input_row_naming_its_line_and_path(probe):
    """Item 14: `sex=X` aborted the run with `sex must be M or F, got 'X'`, naming neither row nor path."""
    row = probe["rows"].loc["IM0001"]
    assert row["error_code"] == "bad_input" and pd.isna(row["bone_age_months"])
    assert f"line 3 (path {probe['folder'] / 'IM0001'})" in row["error"] and "got 'X'" in row["error"]


def test_contradictory_duplicate_manifest_rows_refuse_the_file_naming_the_conflict(probe):
    """Item 9 (manifest half): the last of two rows with different sexes won, silently."""
    row = probe["rows"].loc["7047.png"]
    assert row["error_code"] == "bad_input" and pd.isna(row["bone_age_months"])
    assert "lines 4, 6" in row["error"] and "contradictory sex (M, F)" in row["error"]
    assert probe["summary"]["errors_by_code"] == {"bad_input": 2}
    assert probe["rows"].loc["1377.png", "sex"] == "F"  # the other rows are used as given


def test_manifest_rows_that_agree_or_leave_cells_empty_are_merged(tmp_path):
    manifest = read_manifest(write_manifest(tmp_path / "m.csv", [
        ("a.png", "M", ""), ("a.png", "male", "100"), ("b.png", "", "NA"), ("c.png", "F", "ten"), ("", "M", "")]))
    assert manifest.entries[manifest_key("a.png")].sex == "M"
    assert manifest.entries[manifest_key("a.png")].chronological_age_months == 100.0
    assert manifest.entries[manifest_key("b.png")].sex is None
    assert "line 5 (path c.png): chronological_age_months must be a number" in manifest.problems[manifest_key("c.png")]
    assert set(manifest.problems) == {manifest_key("c.png")}
    (tmp_path / "bad.csv").write_text("file,gender\na.png,M\n")
    with pytest.raises(ValueError, match="bad.csv: a manifest needs columns"):
        read_manifest(str(tmp_path / "bad.csv"))
