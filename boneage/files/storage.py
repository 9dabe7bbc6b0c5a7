"""fsspec access, so every input and output is a URI: a local path, ``file://``, ``s3://`` or ``memory://``.

S3 credentials and endpoint come from the standard AWS environment (``AWS_ACCESS_KEY_ID``,
``AWS_ENDPOINT_URL`` ...), so a local S3 stand-in and real S3 need no code change.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from boneage.files import dicomweb
from boneage.files.formats import HEAD_BYTES, IMAGE_SUFFIXES, sniff

log = logging.getLogger("boneage.files")
T = TypeVar("T")
# Longest wait for one file (or one listing sniff): a FIFO or a hung NFS/SMB mount blocks a read forever.
# Generous: a 256 MB DICOM over a slow share still arrives.
READ_TIMEOUT_S = 120.0
# write_bytes writes PATH + TMP_MARK + a random hex, then renames it to PATH. A process killed in between
# leaves that file; remove_stale_tmp deletes the ones untouched for STALE_TMP_S (no write takes that long).
TMP_MARK = ".tmp-"
STALE_TMP_S = 600.0


def read_bytes(uri: str) -> bytes:
    """Whole file as bytes; raises FileNotFoundError (or IsADirectoryError) like ``open``. A
    ``dicomweb+`` instance URI is fetched from the PACS (:mod:`boneage.files.dicomweb`)."""
    if dicomweb.is_dicomweb(uri):
        return dicomweb.read_instance(uri)
    with fsspec.open(uri, "rb") as f:
        return f.read()


def with_deadline(fn: Callable[..., T], timeout: float | None, *args) -> T:
    """``fn(*args)``, given up after ``timeout`` seconds with TimeoutError (None: no limit).

    A read blocked in the kernel (a FIFO with no writer, a hung network mount) cannot be interrupted,
    so it runs in a daemon thread that is left behind when the time is up: the caller gets an error to
    report for that file and goes on, and the thread never holds up the process's exit.
    """
    if timeout is None:
        return fn(*args)
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = fn(*args)
        except Exception as exc:  # noqa: BLE001 - handed to the caller below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="boneage-read", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no answer in {timeout:g} s (a FIFO, or a hung network mount?)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file so that a reader never sees half of it.

    Local files are written to a temporary name and renamed; object stores publish an object only
    when its upload completes, which gives the same guarantee.
    """
    fs, path = fsspec.core.url_to_fs(uri)
    parent = os.path.dirname(path.rstrip("/"))
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if fs.protocol in ("file", "local") or "file" in (fs.protocol or ()):
        tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex}"
        try:
            with fs.open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:  # a full disk, a kill: never leave the half-written file behind
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    else:
        with fs.open(path, "wb") as f:
            f.write(data)


def remove_stale_tmp(uri: str, older_than_s: float = STALE_TMP_S) -> list[str]:
    """Delete the temporary files of :func:`write_bytes` under the local folder ``uri`` (recursively) that
    were last written more than ``older_than_s`` ago: left by a killed run (a crash, SIGKILL, a full disk
    before this cleanup existed). A younger one may be another process's write in progress and is kept.
    Object stores have no temporary files: nothing to do."""
    fs, root = fsspec.core.url_to_fs(uri)
    if not isinstance(fs, LocalFileSystem) or not os.path.isdir(root):
        return []
    now, removed = time.time(), []
    for folder, _, names in os.walk(root):
        for name in names:
            if TMP_MARK not in name:
                continue
            path = os.path.join(folder, name)
            try:
                if now - os.lstat(path).st_mtime > older_than_s:
                    os.unlink(path)
                    removed.append(path)
            except FileNotFoundError:  # removed meanwhile, or renamed into place
                continue
    if removed:
        log.warning("removed %d temporary file(s) of an interrupted write in %s, e.g. %s", len(removed), uri,
                    removed[0])
    return removed


def file_size(uri: str) -> int | None:
    """Size in bytes, or None when the filesystem cannot tell cheaply."""
    if dicomweb.is_dicomweb(uri):
        return None
    fs, path = fsspec.core.url_to_fs(uri)
    try:
        return int(fs.size(path))
    except (FileNotFoundError, IsADirectoryError):
        raise
    except Exception:  # noqa: BLE001 - some filesystems do not implement size
        return None


def file_id(path: str) -> str:
    """File stem, matching RSNA ids: "s3://bucket/train/1377.png" -> "1377"; a DICOMweb instance's
    SOP Instance UID (dots and all)."""
    if dicomweb.is_dicomweb(path) and dicomweb.is_instance(path):
        return dicomweb.instance_uids(path)[2]
    return PurePosixPath(path.rstrip("/")).stem


@dataclass
class Listing:
    """What a listing found: the files to read, and every other entry with why it was left out, so that
    a summary accounts for each entry of a folder (none is dropped without a word)."""

    paths: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # path -> reason (one of SKIP_REASONS)

    def by_reason(self) -> dict[str, int]:
        return dict(sorted(collections.Counter(self.skipped.values()).items()))


SKIP_REASONS = {
    "hidden": "name starts with a dot",
    "not_an_image": "content is not PNG, JPEG or DICOM",
    "not_a_regular_file": "a FIFO, socket or device: reading it could block forever",
    "broken_link": "symbolic link to nothing",
    "folder_already_listed": "a symbolic link back to a folder already listed (a loop, or a second link)",
    "unreadable": "could not be opened or read in time",
}


def list_inputs(inputs: Iterable[str]) -> list[str]:
    """The image URIs of :func:`scan_inputs`, sorted; what it skipped is logged."""
    listing = scan_inputs(inputs)
    if listing.skipped:
        log.warning("%d entries skipped (%s), e.g. %s", len(listing.skipped),
                    ", ".join(f"{r} {n}" for r, n in listing.by_reason().items()), next(iter(listing.skipped)))
    return listing.paths


def scan_inputs(inputs: Iterable[str], timeout: float | None = READ_TIMEOUT_S) -> Listing:
    """Expand files, folders and URL prefixes into a sorted list of image URIs, and what was skipped.

    In folders, files with an image suffix are taken; any other regular file is taken when its first
    bytes are PNG, JPEG or DICOM (:func:`boneage.files.formats.sniff`: hospital exports name files by
    UID), read with a ``timeout``. FIFOs, sockets and devices are skipped without being opened.
    Symbolic links to folders are followed, each folder once (a link loop ends). A file named on its
    own is taken as it is (the decoder checks it) unless it is not a regular file. A ``dicomweb+``
    query (:mod:`boneage.files.dicomweb`) gives the instances it matches on the PACS.
    """
    listing = Listing()
    found: set[str] = set()
    for uri in inputs:
        if dicomweb.is_dicomweb(uri):
            found.update([uri] if dicomweb.is_instance(uri) else dicomweb.find_instances(uri))
            continue
        fs, path = fsspec.core.url_to_fs(uri)
        if isinstance(fs, LocalFileSystem):
            _scan_local(uri, path, fs, found, listing.skipped, timeout)
        elif fs.isdir(path):
            _scan_remote(uri, path, fs, found, listing.skipped, timeout)
        elif fs.exists(path):
            found.add(uri)
        else:
            raise FileNotFoundError(f"input not found: {uri}")
    listing.paths = sorted(found)
    listing.skipped = dict(sorted(listing.skipped.items()))
    return listing


def _scan_local(uri: str, path: str, fs, found: set[str], skipped: dict[str, str], timeout: float | None) -> None:
    """One local input: a folder is walked, a regular file taken, anything else skipped."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"input not found: {uri}") from None
    if stat.S_ISDIR(mode):
        _walk_local(path, fs, found, skipped, timeout)
    elif stat.S_ISREG(mode):
        found.add(uri)
    else:
        skipped[uri] = "not_a_regular_file"


def _walk_local(root: str, fs, found: set[str], skipped: dict[str, str], timeout: float | None) -> None:
    """Every entry under ``root``, following symbolic links to folders; a folder reached twice (by a
    loop, or by two links) is listed once, keyed by its device and inode."""
    seen: set[tuple[int, int]] = set()
    folders = [root]
    while folders:
        folder = folders.pop()
        try:
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in seen:
                skipped[folder] = "folder_already_listed"
                continue
            seen.add((info.st_dev, info.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            skipped[folder] = "unreadable"
            continue
        for entry in entries:
            kind = _local_kind(entry)
            if kind == "folder":
                folders.append(entry.path)
            elif kind == "file":
                _take_if_image(entry.path, entry.path, fs, found, skipped, timeout)
            else:
                skipped[entry.path] = kind


def _local_kind(entry: os.DirEntry) -> str:
    """"folder", "file" or why the entry is skipped; links are followed (stat, not lstat)."""
    if entry.name.startswith("."):
        return "hidden"
    try:
        mode = os.stat(entry.path).st_mode
    except OSError:
        return "broken_link" if entry.is_symlink() else "unreadable"
    if stat.S_ISDIR(mode):
        return "folder"
    return "file" if stat.S_ISREG(mode) else "not_a_regular_file"


def _scan_remote(uri: str, path: str, fs, found: set[str], skipped: dict[str, str], timeout: float | None) -> None:
    """A folder or prefix on an object store (no links, FIFOs or devices there)."""
    for child, info in sorted(fs.find(path, detail=True).items()):
        child_uri = _as_uri(uri, fs, child)
        if PurePosixPath(child).name.startswith("."):
            skipped[child_uri] = "hidden"
        elif info.get("type") != "file":
            skipped[child_uri] = "not_a_regular_file"
        else:
            _take_if_image(child_uri, child, fs, found, skipped, timeout)


def _take_if_image(uri: str, path: str, fs, found: set[str], skipped: dict[str, str], timeout: float | None) -> None:
    """Take a file with an image suffix, or one whose first bytes say PNG, JPEG or DICOM."""
    if PurePosixPath(path).suffix.lower() in IMAGE_SUFFIXES:
        found.add(uri)
        return
    try:
        head = with_deadline(fs.cat_file, timeout, path, 0, HEAD_BYTES)
    except Exception:  # noqa: BLE001 - permission, I/O error or timeout: reported, never fatal
        skipped[uri] = "unreadable"
        return
    if sniff(head):
        found.add(uri)
    else:
        skipped[uri] = "not_an_image"


def _as_uri(original: str, fs, path: str) -> str:
    """Keep local inputs as plain paths and remote ones as full URLs."""
    if "://" not in original or original.startswith("file://"):
        return path
    return fs.unstrip_protocol(path)
