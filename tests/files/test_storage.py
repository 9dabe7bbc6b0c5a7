"""Listing a folder of inputs as a hospital export makes one (issue 31, items 5, 6 and 15): DICOMs named by
UID or numbered, files that are no image, a FIFO, a symlinked folder and a link loop. Every probe that
could hang runs in a child process with a deadline, so a regression fails in seconds instead of hanging."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from boneage.errors import ImageReadError
from boneage.files.images import read_image
from boneage.files.storage import scan_inputs
from tests.helpers import FIXTURES, ROOT, load_grey, make_dicom

HAND = FIXTURES / "rsna_1377.png"
EXPORT_NAMES = ("1.2.826.0.1.3680043.8.498.1234567890", "I.001", "IM0001")


def in_child(code: str, timeout: float = 30) -> dict:
    """Run ``code`` (which prints one JSON line last) in a fresh interpreter, given up after ``timeout``."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def scan_in_child(folder: Path, timeout: float = 30) -> dict:
    return in_child("import json; from boneage.files.storage import scan_inputs\n"
                    f"l = scan_inputs([{str(folder)!r}])\n"
                    "print(json.dumps({'paths': l.paths, 'skipped': l.skipped}))", timeout)


@pytest.fixture
def export(tmp_path) -> Path:
    """A PACS export: DICOMs named by UID or numbered, one PNG, and files that are no image."""
    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copy(HAND, folder / "1377.png")
    dicom = make_dicom(load_grey(HAND), sex="M")
    for name in EXPORT_NAMES:
        (folder / name).write_bytes(dicom)
    (folder / "README.txt").write_text("export notes\n")
    (folder / "NOTES").write_text("no suffix, no image\n")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return folder


def test_dicoms_named_by_uid_or_number_are_listed_and_every_other_file_is_reported(export):
    """Item 6: the UID-named and I.001 DICOMs were left out silently; the sum is now the folder's files."""
    listing = scan_inputs([str(export)])
    assert sorted(Path(p).name for p in listing.paths) == sorted(("1377.png", *EXPORT_NAMES))
    assert {Path(p).name: r for p, r in listing.skipped.items()} == {
        "README.txt": "not_an_image", "NOTES": "not_an_image", ".DS_Store": "hidden"}
    assert len(listing.paths) + len(listing.skipped) == len(os.listdir(export))
    for path in listing.paths:  # and each one is a film the decoder reads
        assert read_image(path).pixels.shape == load_grey(HAND).shape


def test_a_fifo_in_a_folder_is_skipped_without_being_opened(export):
    """Item 5: a FIFO hung the listing's consumers forever; it is now skipped, never opened."""
    os.mkfifo(export / "pipe")
    started = time.perf_counter()
    listing = scan_in_child(export, timeout=30)
    assert time.perf_counter() - started < 30
    assert listing["skipped"][str(export / "pipe")] == "not_a_regular_file"
    assert str(export / "pipe") not in listing["paths"] and len(listing["paths"]) == 4
    fifo_alone = scan_in_child(export / "pipe")  # named on its own, too
    assert fifo_alone == {"paths": [], "skipped": {str(export / "pipe"): "not_a_regular_file"}}


def test_a_read_that_blocks_becomes_an_error_after_its_deadline(tmp_path):
    """Item 5: each file's read has a deadline, so a blocking read (a FIFO, a hung mount) is an error
    (``read_timeout``, a failed row in score and predict), not a hang."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    result = in_child("import json, time\nfrom boneage.files.images import read_image\n"
                      "from boneage.errors import ImageReadError\nt = time.perf_counter()\n"
                      f"try:\n    read_image({str(fifo)!r}, timeout=1.0)\n"
                      "except ImageReadError as exc:\n"
                      "    print(json.dumps({'code': exc.code, 'error': str(exc), 's': time.perf_counter() - t}))",
                      timeout=20)
    assert result["code"] == "read_timeout" and "pipe.png" in result["error"] and 1.0 <= result["s"] < 5
    with pytest.raises(ImageReadError) as info:  # in this process too; then a writer frees the reading thread
        read_image(str(fifo), timeout=0.5)
    assert info.value.code == "read_timeout"
    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_symlinked_folders_are_followed_and_a_link_loop_ends(tmp_path, export):
    """Item 15: a symlinked folder was one failed row; its films are now listed, and a loop (a link back
    up the tree) is listed once and reported, not followed forever."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    shutil.copy(FIXTURES / "rsna_7047.png", outside / "7047.png")
    os.symlink(outside, export / "linked")
    os.symlink(export, outside / "back_up")  # export -> linked -> back_up -> export ...
    os.symlink(tmp_path / "nothing", export / "dangling")
    listing = scan_in_child(export, timeout=30)
    assert str(export / "linked" / "7047.png") in listing["paths"] and len(listing["paths"]) == 5
    assert listing["skipped"][str(export / "linked" / "back_up")] == "folder_already_listed"
    assert listing["skipped"][str(export / "dangling")] == "broken_link"
