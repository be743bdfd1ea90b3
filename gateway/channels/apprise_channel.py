"""A generic adapter over Apprise (ntfy, Pushover, Matrix, Telegram, many SMS gateways …):
an operator adds a service by URL, without code.

::

    [[gateway.channels]]
    type = "apprise"
    urls = ["ntfy://ntfy.example.org/night-team"]
    urls_env = "FALLWATCH_APPRISE_URLS"   # URLs that hold a token: whitespace- or comma-separated

The title and body are the same plain words as the e-mail's.
"""

from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import Field, model_validator

from fallwatch.config import ConfigError
from fallwatch.gateway.channels import CHANNELS, AlertEvent, Channel, ChannelContext
from fallwatch.gateway.channels._common import body, subject
from fallwatch.gateway.channels._queue import QueuedChannel, QueuedChannelConfig


class AppriseChannelConfig(QueuedChannelConfig):
    type: Literal["apprise"] = "apprise"
    urls: list[str] = Field(default_factory=list)
    urls_env: str | None = None

    @model_validator(mode="after")
    def _some(self) -> AppriseChannelConfig:
        if self.broadcast and not self.urls and self.urls_env is None:
            raise ValueError("give urls or urls_env (or broadcast = false: people's contacts give the URLs)")
        return self


class AppriseChannel(QueuedChannel):
    def __init__(self, cfg: AppriseChannelConfig, ctx: ChannelContext) -> None:
        self.locale, self.tz = ctx.locale, ctx.timezone
        urls = list(cfg.urls)
        if cfg.urls_env is not None:
            raw = os.environ.get(cfg.urls_env, "")
            if not raw.strip():
                raise ConfigError(f"apprise channel: environment variable {cfg.urls_env} is not set")
            urls += [u for u in re.split(r"[\s,]+", raw) if u]
        import apprise  # here, not at import: it loads requests and ~55 modules (3 MB) into every gateway

        self._apprise = apprise
        self.apprise = apprise.Apprise()
        for u in urls:
            if not self.apprise.add(u):
                # never echo the URL: it may hold a token
                raise ConfigError(f"apprise channel: a URL with scheme {u.split(':', 1)[0]!r} is not understood")
        super().__init__(cfg, f"{len(urls)} apprise url(s)")

    def send_to(self, event: AlertEvent, address: str) -> str:
        target = self.apprise
        if address:
            target = self._apprise.Apprise()
            if not target.add(address):
                raise ValueError(f"an apprise contact with scheme {address.split(':', 1)[0]!r} is not understood")
        elif not len(self.apprise):
            raise ValueError("no apprise URL for this message")
        text, title = body(event, self.locale, self.tz, names=self.names), subject(event, self.locale, names=self.names)
        if not target.notify(body=text, title=title):
            raise RuntimeError("apprise reported a failed notification")
        return "sent"


@CHANNELS.register(AppriseChannelConfig)
def _make(cfg: AppriseChannelConfig, ctx: ChannelContext) -> Channel:
    return AppriseChannel(cfg, ctx)
