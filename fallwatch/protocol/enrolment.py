"""The enrolment bundle's wire format, shared by the registry (gateway) and ``edge enrol``.

A bundle is one JSON document (``fallwatch_bundle: 1``) with a one-time code in it; the
code alone, as ``fwenrol1:CODE@ENROL_URL``, is the QR-printable token. The registry stores
only a hash of the code (:func:`code_id`) and the bundle encrypted under a key derived from
it (:func:`seal`), so a fetch by code can hand the bundle over while the database never
holds a readable credential. Both sides derive the same way from here, so they cannot drift.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

BUNDLE_VERSION = 1
TOKEN_PREFIX = "fwenrol1:"


class BundleError(ValueError):
    pass


def make_token(code: str, enrol_url: str) -> str:
    return f"{TOKEN_PREFIX}{code}@{enrol_url}"


def parse_token(token: str) -> tuple[str, str]:
    """(code, enrol URL) of a token."""
    if not token.startswith(TOKEN_PREFIX) or "@" not in token:
        raise BundleError(f"not an enrolment token (expected {TOKEN_PREFIX}CODE@URL)")
    code, url = token[len(TOKEN_PREFIX):].split("@", 1)
    return code, url  # the URL may end in "#<sha256 of the server certificate>" (a pin)


def code_id(code: str) -> str:
    """What the registry stores to find a code again (never the code)."""
    return hashlib.sha256(b"fallwatch-enrol-id:" + code.encode()).hexdigest()


def _key(code: str) -> bytes:
    return base64.urlsafe_b64encode(hashlib.sha256(b"fallwatch-enrol-key:" + code.encode()).digest())


def seal(code: str, bundle: dict[str, Any]) -> str:
    """The bundle encrypted (Fernet: AES-128-CBC + HMAC-SHA256) under its code."""
    from cryptography.fernet import Fernet

    return Fernet(_key(code)).encrypt(json.dumps(bundle).encode()).decode()


def unseal(code: str, sealed: str) -> dict[str, Any]:
    from cryptography.fernet import Fernet, InvalidToken

    try:
        out: dict[str, Any] = json.loads(Fernet(_key(code)).decrypt(sealed.encode()))
    except InvalidToken as exc:
        raise BundleError("the enrolment payload does not decrypt with this code") from exc
    return out
