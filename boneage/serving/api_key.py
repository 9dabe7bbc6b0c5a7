"""The endpoint's API key: one check, shared by the ingress and by the upload gate in front of it.
Standard library only (Serve's proxy process imports it)."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping

API_KEY_ENV = "BONEAGE_API_KEY"


def authorised(headers: Mapping[str, str], key: str) -> bool:
    """X-API-Key, Bearer, or Basic with the key as password (so a browser can open the page); compared in
    constant time."""
    offered = headers.get("x-api-key")
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if not offered and scheme.lower() == "bearer":
        offered = value.strip()
    elif not offered and scheme.lower() == "basic":
        try:
            offered = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            offered = None
    return bool(offered) and hmac.compare_digest(offered.encode(), key.encode())
