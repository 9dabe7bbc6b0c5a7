"""Writes that fail (issue 31, item 13): a read-only or full output disk is an error naming the path, and
the commit protocol's temporary files never outlive a run."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time

import pytest

from boneage.files import parts, storage
from tests.helpers import ROOT


def test_a_write_under_a_file_fails_with_the_path_and_leaves_nothing(tmp_path):
    blocker = tmp_path / "afile"  # a regular file where a folder should be: ENOTDIR, for root too
    blocker.write_bytes(b"x")
    with pytest.raises(NotADirectoryError) as info:
        storage.write_bytes(str(blocker / "out" / "_done" / "a.json"), b"{}")
    assert info.value.errno == errno.ENOTDIR and str(blocker) in info.value.filename
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]


def test_a_full_disk_leaves_no_temporary_file(tmp_path):
    """RLIMIT_FSIZE=0 in a child: every write of a byte fails (EFBIG), as a full disk fails (ENOSPC), root
    or not. Before: the 0-byte ``a.json.tmp-<hex>`` stayed in ``_done/`` and no run removed it."""
    code = f"""
import errno, resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
from boneage.files import storage
try:
    storage.write_bytes({str(tmp_path / "_done" / "a.json")!r}, b"{{}}")
except OSError as exc:
    print(exc.errno)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == str(errno.EFBIG), proc.stderr
    assert list((tmp_path / "_done").iterdir()) == []


def test_the_next_run_removes_stale_temporary_files_only(tmp_path):
    out = tmp_path / "out"
    (out / "_done").mkdir(parents=True)
    stale = out / "_done" / "0123456789abcdef.json.tmp-5f0e"  # a killed run's, 20 minutes old
    stale.write_bytes(b"")
    old = time.time() - 1200
    os.utime(stale, (old, old))
    fresh = out / "summary.json.tmp-77aa"  # maybe another process's write in progress: kept
    fresh.write_bytes(b"")
    kept = out / "_done" / "notes.txt"
    kept.write_bytes(b"x")
    parts.claim_output(str(out), {"model_version": ("model", "v1")}, False, "results")
    assert not stale.exists() and fresh.exists() and kept.exists()
    assert json.loads((out / "_config.json").read_bytes())["model_version"] == "v1"
    assert storage.remove_stale_tmp(str(out), older_than_s=0) == [str(fresh)]
    assert storage.remove_stale_tmp(str(tmp_path / "absent")) == []
