"""Acknowledge links: one signed, single-use, expiring link per message sent.

A carer acknowledges an alert from the message itself (the e-mail's link, the push
notification's button) without signing in to anything: the link's token names the
alert, the recipient and the channel, carries its expiry, and is signed with the
gateway's ack key (``itsdangerous``, HMAC-SHA256). The token's id is recorded when it is
issued; using it marks it used in the same transaction that acknowledges the alert, so a
link works once — a second use, an expired link, a forged one, or a link for an alert
someone else already took does nothing and says so.

The key comes from ``paging.ack_secret_env`` / ``ack_secret_file`` (owner-only), or is a
random 256-bit key generated once and kept in the state DB, so every replica checks the
links the others issued.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer

SALT = "fallwatch.ack.v1"


@dataclass(frozen=True, slots=True)
class AckClaim:
    jti: str
    alert_id: str
    person: str
    channel: str
    expires_ms: int


class AckLinkError(ValueError):
    """A token that is not one of ours (forged, truncated, signed with another key)."""


class AckSigner:
    def __init__(self, key: str) -> None:
        self._s = URLSafeSerializer(key, salt=SALT)

    def issue(self, alert_id: str, person: str, channel: str, expires_ms: int) -> AckClaim:
        return AckClaim(secrets.token_urlsafe(12), alert_id, person, channel, expires_ms)

    def token(self, claim: AckClaim) -> str:
        return str(self._s.dumps([claim.jti, claim.alert_id, claim.person, claim.channel, claim.expires_ms]))

    def read(self, token: str) -> AckClaim:
        try:
            jti, alert_id, person, channel, exp = self._s.loads(token)
        except (BadSignature, ValueError, TypeError):
            raise AckLinkError("this link is not valid (it may be incomplete or not from this gateway)") from None
        return AckClaim(str(jti), str(alert_id), str(person), str(channel), int(exp))
