"""Staff notification channels: every alert event goes to each configured channel.

The gateway describes what happened as one typed :class:`AlertEvent` (which alert, where,
who, why, and the :class:`Action`: raised, cancelled, escalated, acknowledged, resolved,
recovered) and hands it to the :class:`Notifier`, which calls ``notify(event)`` on every
channel and collects one :class:`Delivery` per recipient reached (or not). Channels are
plug-ins keyed by ``type`` in ``[[gateway.channels]]``; with none configured the gateway
uses the ``log`` channel, the staff log on ``fallwatch.gateway.alerts`` it always wrote.

Adding a channel (e-mail, webhook, Web Push, …) is one new module in this package::

    class WebhookConfig(PluginConfig):
        type: Literal["webhook"] = "webhook"
        url: str

    @CHANNELS.register(WebhookConfig)
    def _make(cfg: WebhookConfig, ctx: ChannelContext) -> Channel:
        return WebhookChannel(cfg, ctx)

``notify`` runs on the thread that produced the event (the alert worker for a new fall
alert), so a channel that talks to the network must not block there: it queues the
event for its own worker and reports the delivery as ``queued`` (and logs, or counts,
what later fails). A channel that raises is reported as a failed delivery; it never
stops the others or the gateway.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from fallwatch.config import PluginSection
from fallwatch.plugins import PluginConfig, Registry

# not "log": importing the channels.log module sets that attribute on this package
_logger = logging.getLogger("fallwatch.gateway.channels")


class Action(StrEnum):
    """What happened to an alert."""

    RAISED = "raised"  # a new alert (a fall, a device gone silent, an overdue test alarm)
    CANCELLED = "cancelled"  # a pre-alarm the wearer stopped within the cancel window
    ESCALATED = "escalated"  # still not acknowledged: announced again
    ACKNOWLEDGED = "acknowledged"  # a member of staff took it
    RESOLVED = "resolved"  # a member of staff cleared it
    RECOVERED = "recovered"  # the gateway cleared it: the device is back, the test alarm came


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One thing a carer may need to know about, with everything a message would show."""

    kind: str  # the alert's kind: "fall", "device_offline", "test_overdue"
    action: Action
    alert_id: str  # "" only for a recovery whose alert had already been cleared by staff
    site_id: str
    device_id: str
    at_ms: int  # when it happened (gateway clock)
    actor: str = "gateway"  # "device", "gateway" or the member of staff who acted
    resident_id: str | None = None
    sensor: str | None = None
    room: str | None = None
    confidence: float | None = None
    peak_g: float | None = None
    lying_s: float | None = None
    reasons: tuple[str, ...] = ()  # evidence codes behind a fall alert ("impact", "lying", …)
    detail: str = ""  # human-readable why (device alerts)
    raised_ms: int | None = None
    escalations: int = 0
    # set by the pager on a message to one person (fallwatch.gateway.paging)
    page_kind: str | None = None  # "fall", "suspected_fall", "long_lie", … (what the message calls it)
    urgency: str | None = None
    recipient: str | None = None  # the person's display name
    level: int = 0  # 0 on call, 1 next on call, 2 team lead, 3 fallback
    ack_url: str | None = None  # single-use acknowledge link for this recipient
    outcome: str | None = None
    note: str | None = None
    resident_name: str | None = None  # from the registry; shown only by channels allowed personal data
    flat: str | None = None  # the resident's flat or address label (where to go)
    locale: str | None = None  # the reader's language ("sv", "en"); None: the channel's
    tz: str | None = None  # the reader's time zone; None: the channel's

    @classmethod
    def from_alert(cls, alert: Mapping[str, Any], action: Action, at_ms: int, actor: str = "gateway"
                   ) -> AlertEvent:
        """The event for a stored alert row (state DB ``alerts``)."""
        reasons = str(alert.get("detail") or "") if alert.get("kind") == "fall" else ""
        return cls(
            kind=str(alert["kind"]), action=action, alert_id=str(alert["alert_id"]),
            site_id=str(alert["site_id"]), device_id=str(alert["device_id"]), at_ms=at_ms, actor=actor,
            resident_id=alert.get("resident_id"), sensor=alert.get("sensor"), room=alert.get("room"),
            confidence=alert.get("confidence"), peak_g=alert.get("peak_g"), lying_s=alert.get("lying_s"),
            reasons=tuple(r for r in reasons.split(",") if r),
            detail="" if alert.get("kind") == "fall" else str(alert.get("detail") or ""),
            raised_ms=None if alert.get("raised_ms") is None else int(alert["raised_ms"]),
            escalations=int(alert.get("escalations") or 0),
            outcome=alert.get("outcome"), note=alert.get("outcome_note"),
        )


@dataclass(frozen=True, slots=True)
class Delivery:
    """The outcome of one event on one channel for one recipient."""

    channel: str
    recipient: str
    ok: bool
    detail: str = ""  # e.g. "queued", an error message


class Channel(Protocol):
    name: str

    def notify(self, event: AlertEvent) -> list[Delivery]:
        """Deliver (or queue) one event; one result per recipient, [] if not for this channel."""
        ...

    def close(self) -> None: ...


class Addressable(Protocol):
    """A channel the pager can send one message to one address on (e-mail, push, …)."""

    name: str

    def send_to(self, event: AlertEvent, address: str) -> str:
        """Deliver now (blocking, on the pager's delivery thread); raise on failure; return a detail.
        ``address`` "" means the channel's own configured target."""
        ...


def _no_subscriptions(person: str) -> list[dict[str, Any]]:
    return []


@dataclass(frozen=True, slots=True)
class ChannelContext:
    """What a channel factory may need from the gateway besides its own config."""

    gateway_id: str
    #: Web Push subscriptions of a person (the pager's store); none outside a gateway
    push_subscriptions: Callable[[str], list[dict[str, Any]]] = _no_subscriptions
    #: forget a subscription the push service says is gone (HTTP 404/410)
    drop_subscription: Callable[[str], None] = lambda endpoint: None
    #: the language and time zone of a broadcast message (gateway.locale / gateway.timezone)
    locale: str = "en"
    timezone: str = "UTC"


#: ``factory(cfg, ctx: ChannelContext) -> Channel``, keyed by ``[[gateway.channels]] type``
CHANNELS = Registry[Channel]("notification channel", discover="fallwatch.gateway.channels")


class Notifier:
    """Fans each event out to every channel; a failing channel never stops the others."""

    def __init__(self, channels: Sequence[Channel]) -> None:
        self.channels = list(channels)

    @classmethod
    def from_config(cls, sections: Sequence[PluginSection], ctx: ChannelContext,
                    extra: Sequence[Channel] = ()) -> Notifier:
        built = [CHANNELS.create(s, ctx) for s in sections]
        return cls([*built, *extra])

    def notify(self, event: AlertEvent) -> list[Delivery]:
        out: list[Delivery] = []
        for ch in self.channels:
            try:
                out.extend(ch.notify(event))
            except Exception as exc:
                _logger.exception("channel %s failed on %s %s", ch.name, event.action, event.alert_id)
                out.append(Delivery(ch.name, "*", False, f"{type(exc).__name__}: {exc}"))
        return out

    def close(self) -> None:
        for ch in self.channels:
            try:
                ch.close()
            except Exception:
                _logger.exception("closing channel %s failed", ch.name)


def parse_channels(sections: Sequence[PluginSection]) -> list[PluginConfig]:
    """Validate channel sections without building them (``--validate-config``)."""
    return [CHANNELS.parse(s, f"gateway.channels[{i}]") for i, s in enumerate(sections)]
