"""Films straight from a PACS over DICOMweb: QIDO-RS finds the instances, WADO-RS fetches each one.

An input such as ``dicomweb+http://pacs:8042/dicom-web?Modality=CR,DX&BodyPartExamined=HAND``
is a QIDO-RS query; :func:`find_instances` expands it into one URI per instance, the instance's
own WADO-RS address with the ``dicomweb+`` prefix (``.../studies/S/series/R/instances/I``).
:func:`boneage.files.storage.read_bytes` fetches such a URI into memory, so every job reads a PACS
as it reads a folder, through the same decoder, and nothing is written to disk. Results are keyed
by that URI, so a re-run scores only instances that have none (the SOP Instance UID is its last
part).

Credentials come from the environment only (never from a command line, where ``ps`` shows them):
``BONEAGE_DICOMWEB_TOKEN`` (HTTP bearer) or ``BONEAGE_DICOMWEB_USER`` and
``BONEAGE_DICOMWEB_PASSWORD`` (HTTP basic). Uses ``dicomweb-client`` (the ``pacs`` extra).
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from boneage.errors import BoneAgeError, ExitCode

PREFIX = "dicomweb+"
TOKEN_ENV = "BONEAGE_DICOMWEB_TOKEN"
USER_ENV, PASSWORD_ENV = "BONEAGE_DICOMWEB_USER", "BONEAGE_DICOMWEB_PASSWORD"
_INSTANCE_PARTS = ("studies", "series", "instances")
# QIDO attributes whose comma-separated values are several queries, one per value
_ONE_QUERY_PER_VALUE = {"Modality", "BodyPartExamined"}
_RETRIEVE = (("application/dicom", "*"),)  # the instance as stored: no transcoding asked of the server


class ArchiveError(BoneAgeError):
    """The archive as a whole cannot be used (down, or access refused): the run stops, with what is
    scored kept, instead of marking every film failed."""

    exit_code = ExitCode.ARCHIVE


class SourceUnavailable(ArchiveError):
    """The archive did not answer (down, refused, timed out): the whole run stops, with what is scored
    kept, instead of marking every film failed. Re-run to finish."""


def is_dicomweb(uri: str) -> bool:
    return uri.startswith(PREFIX)


def base_url(uri: str) -> str:
    """The DICOMweb service root of a query or instance URI, without the ``dicomweb+`` prefix."""
    parts = urlsplit(uri[len(PREFIX):])
    path = parts.path
    if "/studies/" in path:
        path = path[: path.index("/studies/")]
    return urlunsplit((parts.scheme, parts.netloc, path.rstrip("/"), "", ""))


def instance_uids(uri: str) -> tuple[str, str, str]:
    """(StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID) of an instance URI."""
    segments = urlsplit(uri[len(PREFIX):]).path.strip("/").split("/")
    try:
        at = len(segments) - 6
        if at < 0 or tuple(segments[at::2]) != _INSTANCE_PARTS:
            raise ValueError
        return segments[at + 1], segments[at + 3], segments[at + 5]
    except ValueError:
        raise ValueError(f"not a DICOMweb instance URI (.../studies/S/series/R/instances/I): {uri}") from None


def is_instance(uri: str) -> bool:
    try:
        instance_uids(uri)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=8)
def client(url: str):
    """One client (and HTTP connection pool) per service root and process, authenticated from the
    environment."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    if urlsplit(url).username or urlsplit(url).password:
        raise ValueError(f"put DICOMweb credentials in ${TOKEN_ENV} or ${USER_ENV}/${PASSWORD_ENV}, not in the URL")
    session = requests.Session()
    if os.environ.get(TOKEN_ENV):
        session.headers["Authorization"] = f"Bearer {os.environ[TOKEN_ENV]}"
    elif os.environ.get(USER_ENV):
        session.auth = (os.environ[USER_ENV], os.environ.get(PASSWORD_ENV, ""))
    return DICOMwebClient(url, session=session)


class AccessRefused(ArchiveError):
    """The archive answered 401 or 403: the credentials in the environment are missing or wrong."""


def _refused(url: str, status: int) -> AccessRefused:
    return AccessRefused(f"the DICOMweb server at {url} refused access (HTTP {status}): set ${TOKEN_ENV}, or "
                         f"${USER_ENV} and ${PASSWORD_ENV}, in the environment")


def _http_error(url: str, exc: Exception) -> Exception:
    """A failed request as the error a user can act on: refused access, or the archive being down."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        return _refused(url, status)
    if status is None or status >= 500:
        return _unavailable(url, exc)
    return exc


def _unavailable(url: str, exc: Exception) -> SourceUnavailable:
    return SourceUnavailable(f"the DICOMweb server at {url} did not answer ({type(exc).__name__}); what is scored is "
                             f"kept: run the same command again when it is back")


@contextlib.contextmanager
def _talking_to(url: str, missing: str | None = None):
    """Requests to the archive at ``url``, their failures turned into errors a user can act on (the archive
    down, or access refused); a 404 is ``FileNotFoundError(missing)`` when ``missing`` names the instance."""
    import requests

    try:
        yield
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _unavailable(url, exc) from exc
    except requests.HTTPError as exc:
        if missing is not None and getattr(exc.response, "status_code", None) == 404:
            raise FileNotFoundError(missing) from exc
        raise _http_error(url, exc) from exc


def _queries(query: str) -> list[dict[str, str]]:
    """``Modality=CR,DX&BodyPartExamined=HAND`` -> one QIDO filter set per combination of values."""
    queries: list[dict[str, str]] = [{}]
    for key, value in parse_qsl(query, keep_blank_values=False):
        values = value.split(",") if key in _ONE_QUERY_PER_VALUE else [value]
        queries = [{**q, key: v} for q in queries for v in values]
    return queries


def find_instances(uri: str) -> list[str]:
    """The instance URIs a QIDO-RS query URI matches (all pages), sorted, each once."""
    url = base_url(uri)
    found = set()
    for filters in _queries(urlsplit(uri[len(PREFIX):]).query):
        with _talking_to(url):
            matches = client(url).search_for_instances(search_filters=filters, get_remaining=True,
                                                       fields=["StudyInstanceUID", "SeriesInstanceUID"])
        for match in matches:
            uids = [match.get(tag, {}).get("Value", [None])[0] for tag in ("0020000D", "0020000E", "00080018")]
            if all(uids):
                found.add(f"{PREFIX}{url}/studies/{uids[0]}/series/{uids[1]}/instances/{uids[2]}")
    return sorted(found)


def read_instance(uri: str) -> bytes:
    """One instance as DICOM file bytes (WADO-RS), in memory."""
    url = base_url(uri)
    with _talking_to(url, missing=uri):
        dataset = client(url).retrieve_instance(*instance_uids(uri), media_types=_RETRIEVE)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def metadata(uri: str):
    """An instance's header (WADO-RS metadata: no pixel data) as a pydicom Dataset."""
    from pydicom.dataset import Dataset

    url = base_url(uri)
    with _talking_to(url, missing=uri):
        found = client(url).retrieve_instance_metadata(*instance_uids(uri))
    return Dataset.from_json(found)


def exists(url: str, study: str, sop_instance_uid: str) -> bool:
    """Whether the archive already holds this instance in this study (QIDO-RS)."""
    with _talking_to(url):
        return bool(client(url).search_for_instances(study_instance_uid=study,
                                                     search_filters={"SOPInstanceUID": sop_instance_uid}))


def store(url: str, datasets: list) -> None:
    """STOW-RS the datasets into the archive at ``url``."""
    with _talking_to(url):
        client(url).store_instances(datasets=datasets)
