"""The form fields of an upload, read as the request logic wants them: each refusal a
:class:`~boneage.serving.handler.RequestError` with its status and code."""

from __future__ import annotations

from pathlib import Path

from fastapi import Request, UploadFile

from boneage.serving.handler import RequestError


def upload_name(filename: str | None) -> str:
    """Only the extension reaches the decoder (it sniffs DICOM by it): file names may name patients."""
    suffix = Path(filename or "").suffix.lower()
    return "upload" + (suffix if suffix.isascii() and len(suffix) <= 8 else "")


async def read_upload(file: UploadFile, limit: int) -> bytes:
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise RequestError(413, "too_large", f"file is over the limit of {limit} bytes")
    return data


def parse_age(text: str | None) -> float | None:
    if text is None or not str(text).strip():
        return None
    try:
        return float(text)
    except ValueError:
        raise RequestError(400, "bad_age", "chronological_age_months must be a number of months") from None


def parse_flag(text: str | None) -> bool:
    """A form checkbox or flag: true/1/yes/on, else false."""
    return str(text or "").strip().lower() in ("1", "true", "yes", "on")


async def one_value(request: Request, name: str, value: str | None) -> str | None:
    """A field of ``/v1/predict`` sent more than once (FastAPI keeps the last): refused when the values
    differ (another sex moves the bone age by about ten months); identical repeats and blanks are harmless.
    The form is the one FastAPI already parsed (Starlette keeps it on the request)."""
    form = await request.form()
    values = list(dict.fromkeys(v.strip() for v in form.getlist(name) if isinstance(v, str) and v.strip()))
    if len(values) > 1:
        shown = " and ".join(repr(v[:12]) for v in values[:4])
        raise RequestError(400, "bad_input", f"the form field '{name}' was sent {len(values)} times with different "
                                             f"values ({shown}): send it once")
    return values[0] if values else value


def per_file(values: list[str] | None, n: int, name: str) -> list[str | None]:
    """A field given once for all ``n`` files, or once per file."""
    values = list(values or [])
    if not values:
        return [None] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise RequestError(400, f"bad_{name}", f"give '{name}' once for all files or once per file ({n}), "
                                               f"not {len(values)} times")
    return values
