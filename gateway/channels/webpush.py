"""Web Push to a carer's phone browser (VAPID, RFC 8291 encryption, through pywebpush).

The console's service worker subscribes the phone and hands the subscription to the
gateway (kept per person in the state DB); a person's contact ``{channel = "push", to =
"anna"}`` then sends to every subscription of ``anna``. The payload is JSON the service
worker shows as a notification with an "Acknowledge" action button that POSTs the
message's single-use acknowledge link::

    {"title": …, "body": …, "alert_id": …, "kind": …, "urgency": …, "ack_url": …, "tag": …}

A subscription the push service reports gone (HTTP 404 or 410) is forgotten.

::

    [[gateway.channels]]
    type = "webpush"
    name = "push"
    vapid_private_key_file = "/etc/fallwatch/vapid.pem"   # or vapid_private_key_env (chmod 600)
    vapid_subject = "mailto:it@kommun.example.se"
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from fallwatch.gateway.channels import CHANNELS, AlertEvent, Channel, ChannelContext
from fallwatch.gateway.channels._common import body, read_secret, subject
from fallwatch.gateway.channels._queue import QueuedChannel, QueuedChannelConfig

if TYPE_CHECKING:  # imported where used: ~25 MB a gateway without a push channel need not hold (issue 16)
    from py_vapid import Vapid


class WebPushChannelConfig(QueuedChannelConfig):
    type: Literal["webpush"] = "webpush"
    broadcast: bool = False  # a push goes to a person's own phone, never to everyone
    resident_names: bool = True  # end-to-end encrypted to a carer's own phone
    vapid_private_key_env: str | None = None
    vapid_private_key_file: Path | None = None
    vapid_subject: str = Field(min_length=8)
    ttl_s: int = Field(default=3600, ge=0, le=86400)
    timeout_s: float = Field(default=10.0, gt=0, le=120)

    @field_validator("vapid_subject")
    @classmethod
    def _subject(cls, v: str) -> str:
        if not v.startswith(("mailto:", "https://")):
            raise ValueError("must be a mailto: or https: URL (the push service's contact for this sender)")
        return v

    @model_validator(mode="after")
    def _key(self) -> WebPushChannelConfig:
        if (self.vapid_private_key_env is None) == (self.vapid_private_key_file is None):
            raise ValueError("give exactly one of vapid_private_key_env or vapid_private_key_file")
        if self.broadcast:
            raise ValueError("a webpush channel cannot broadcast: it reaches the people whose contacts name it")
        return self


def load_vapid(secret: str) -> Vapid:
    """A VAPID key from PEM text or from the base64url raw/DER form ``vapid --gen`` prints."""
    from py_vapid import Vapid

    if "-----BEGIN" in secret:
        return Vapid.from_pem(secret.encode())
    return Vapid.from_string(secret)


class WebPushChannel(QueuedChannel):
    def __init__(self, cfg: WebPushChannelConfig, ctx: ChannelContext) -> None:
        self.locale, self.tz = ctx.locale, ctx.timezone
        self.cfg = cfg
        secret = read_secret("webpush channel VAPID key", cfg.vapid_private_key_env, cfg.vapid_private_key_file)
        assert secret is not None  # the config requires one of the two
        self.vapid = load_vapid(secret)
        self.subscriptions = ctx.push_subscriptions
        self.drop = ctx.drop_subscription
        super().__init__(cfg, "(push subscribers)")

    def payload(self, e: AlertEvent) -> str:
        return json.dumps({"title": subject(e, self.locale, names=self.names),
                           "body": body(e, self.locale, self.tz, names=self.names),
                           "alert_id": e.alert_id, "kind": e.page_kind or e.kind, "urgency": e.urgency,
                           "action": str(e.action), "ack_url": e.ack_url, "tag": e.alert_id}, separators=(",", ":"))

    def send_to(self, event: AlertEvent, address: str) -> str:
        if not address:
            raise ValueError("a push contact needs `to` = the person whose phones subscribed")
        subs = self.subscriptions(address)
        if not subs:
            raise LookupError(f"no push subscription for {address} (open the console on the phone and allow "
                              f"notifications)")
        from pywebpush import WebPushException, webpush

        data, sent, errors = self.payload(event), 0, []
        for sub in subs:
            try:
                webpush(subscription_info=sub, data=data, vapid_private_key=self.vapid,
                        vapid_claims={"sub": self.cfg.vapid_subject}, ttl=self.cfg.ttl_s, timeout=self.cfg.timeout_s,
                        headers={"Urgency": "high" if event.urgency in ("urgent", "high") else "normal",
                                 "Topic": event.alert_id.replace(":", "-")[-32:]})
                sent += 1
            except WebPushException as exc:
                status = exc.response.status_code if exc.response is not None else None
                if status in (404, 410):
                    self.drop(str(sub.get("endpoint")))
                errors.append(f"HTTP {status}" if status else str(exc)[:100])
            except Exception as exc:  # one unreachable push service must not cost the person's other phones
                errors.append(f"{type(exc).__name__}")
        if not sent:
            raise RuntimeError(f"push to {address} failed: {'; '.join(errors)}")
        return f"pushed to {sent} of {len(subs)} subscription(s)"


@CHANNELS.register(WebPushChannelConfig)
def _make(cfg: WebPushChannelConfig, ctx: ChannelContext) -> Channel:
    return WebPushChannel(cfg, ctx)
