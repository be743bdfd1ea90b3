"""A signed web hook: the event as JSON, POSTed to a URL (an alarm receiving centre, a
municipality's own system).

Every request carries ``X-Fallwatch-Timestamp`` (Unix seconds) and
``X-Fallwatch-Signature: sha256=<hex>``, the HMAC-SHA256 with the shared secret over
``f"{timestamp}.{body}"``; the receiver recomputes it and should refuse an old timestamp
(replay). Any 2xx answer is a delivery; anything else is retried.

::

    [[gateway.channels]]
    type = "webhook"
    url = "https://arc.example.org/fallwatch"
    secret_env = "FALLWATCH_WEBHOOK_SECRET"   # or secret_file = "/etc/fallwatch/webhook.key" (chmod 600)
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import threading
import time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import Field, field_validator, model_validator

from fallwatch.gateway.channels import CHANNELS, AlertEvent, Channel, ChannelContext
from fallwatch.gateway.channels._common import event_json, read_secret
from fallwatch.gateway.channels._queue import QueuedChannel, QueuedChannelConfig
from fallwatch.gateway.httppost import Poster

TIMESTAMP_HEADER = "X-Fallwatch-Timestamp"
SIGNATURE_HEADER = "X-Fallwatch-Signature"


def sign(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """The signature header's value: ``sha256=`` + hex HMAC-SHA256 over ``timestamp.body``."""
    key = secret.encode() if isinstance(secret, str) else secret
    mac = hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def verify(secret: str | bytes, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver does (constant-time comparison)."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


class WebhookChannelConfig(QueuedChannelConfig):
    type: Literal["webhook"] = "webhook"
    url: str
    secret_env: str | None = None
    secret_file: Path | None = None
    timeout_s: float = Field(default=10.0, gt=0, le=300)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        u = urlparse(v)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError("must be an http:// or https:// URL")
        return v

    @model_validator(mode="after")
    def _secret(self) -> WebhookChannelConfig:
        if (self.secret_env is None) == (self.secret_file is None):
            raise ValueError("give exactly one of secret_env or secret_file (the webhook is always signed)")
        return self


class WebhookChannel(QueuedChannel):
    def __init__(self, cfg: WebhookChannelConfig, ctx: ChannelContext) -> None:
        self.cfg = cfg
        secret = read_secret("webhook channel secret", cfg.secret_env, cfg.secret_file)
        assert secret is not None  # the config requires one of the two
        self.secret = secret
        #: a ``requests`` session, made only for a host the environment routes through a proxy
        self._session: Any = None
        #: one kept-alive connection per receiving host (issue 16: ~1.3 ms of CPU per POST saved);
        #: None for a host the environment routes through a proxy (requests then)
        self._posters: dict[tuple[str, str], tuple[Poster | None, threading.Lock]] = {}
        self._posters_lock = threading.Lock()
        self.user_agent = f"fallwatch-gateway/{ctx.gateway_id}"
        super().__init__(cfg, urlparse(cfg.url).hostname or cfg.url)

    def send_to(self, event: AlertEvent, address: str) -> str:
        url = address or self.cfg.url
        if address:
            u = urlparse(address)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise ValueError("a webhook contact address must be an http(s) URL")
        payload = event_json(event)
        ts = str(int(time.time()))
        headers = {"Content-Type": "application/json", "User-Agent": self.user_agent, TIMESTAMP_HEADER: ts,
                   SIGNATURE_HEADER: sign(self.secret, ts, payload)}
        u = urlparse(url)
        with self._posters_lock:
            got = self._posters.get((u.scheme, u.netloc))
            if got is None:
                got = self._posters[(u.scheme, u.netloc)] = (Poster.for_url(url, self.cfg.timeout_s), threading.Lock())
        poster, lock = got
        if poster is not None:
            path = (u.path or "/") + (f"?{u.query}" if u.query else "")
            try:
                with lock:  # the pager may send on its own thread beside the delivery queue
                    status, _ = poster.post(payload, headers, path)
            except (OSError, http.client.HTTPException) as exc:
                raise RuntimeError(f"{type(exc).__name__}: {exc}") from None
        else:
            if self._session is None:
                import requests  # only behind a proxy: ~7 MB and 200 modules the gateway otherwise never loads

                self._session = requests.Session()
            r = self._session.post(url, data=payload, headers=headers, timeout=self.cfg.timeout_s,
                                  allow_redirects=False)
            status = r.status_code
        if not 200 <= status < 300:
            raise RuntimeError(f"HTTP {status}")
        return f"HTTP {status}"

    def close(self) -> None:
        super().close()
        if self._session is not None:
            self._session.close()
        with self._posters_lock:
            for poster, lock in self._posters.values():
                if poster is not None:
                    with lock:
                        poster.close()


@CHANNELS.register(WebhookChannelConfig)
def _make(cfg: WebhookChannelConfig, ctx: ChannelContext) -> Channel:
    return WebhookChannel(cfg, ctx)
