"""The staff log channel: one line per event on ``fallwatch.gateway.alerts`` (the default).

The lines are exactly the ones the gateway wrote before channels existed, so operators
and log-based alerting see no change: ``FALL ALERT …`` and ``DEVICE OFFLINE: …`` at
WARNING, ``ESCALATION n: …`` at ERROR, staff actions as ``alert … acknowledged by …``.
A cancelled pre-alarm is logged at INFO; a test alarm arriving after all is not logged.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Literal

from fallwatch.gateway.channels import CHANNELS, Action, AlertEvent, Channel, ChannelContext, Delivery
from fallwatch.plugins import PluginConfig

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(value: Any) -> Any:
    """A string with every control character escaped (``\\n``, ``\\x1b``), so free text (who
    acknowledged, a detail) can never start a forged line in the staff log or move a terminal
    cursor; other values unchanged (issue 11 item 13)."""
    if not isinstance(value, str):
        return value
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), value)


class _OneLineLogger:
    """The logger calls _write uses, with every argument passed through :func:`one_line`."""

    def __init__(self, log: logging.Logger) -> None:
        self._log = log

    def _emit(self, level: int, fmt: str, *args: Any) -> None:
        self._log.log(level, fmt, *(one_line(a) for a in args))

    def info(self, fmt: str, *args: Any) -> None:
        self._emit(logging.INFO, fmt, *args)

    def warning(self, fmt: str, *args: Any) -> None:
        self._emit(logging.WARNING, fmt, *args)

    def error(self, fmt: str, *args: Any) -> None:
        self._emit(logging.ERROR, fmt, *args)


class LogChannelConfig(PluginConfig):
    type: Literal["log"] = "log"
    logger: str = "fallwatch.gateway.alerts"


class LogChannel:
    name = "log"

    def __init__(self, logger: str = "fallwatch.gateway.alerts") -> None:
        self.log = logging.getLogger(logger)

    def notify(self, e: AlertEvent) -> list[Delivery]:
        if not self._write(e):
            return []
        return [Delivery(self.name, self.log.name, True)]

    def _write(self, e: AlertEvent) -> bool:
        log = _OneLineLogger(self.log)
        if e.action in (Action.ACKNOWLEDGED, Action.RESOLVED):
            verb = "acknowledge" if e.action is Action.ACKNOWLEDGED else "clear"
            log.warning("alert %s %sd by %s", e.alert_id, verb, e.actor)
        elif e.kind == "fall" and e.action is Action.RAISED:
            log.warning(
                "FALL ALERT %s: site %s hub %s resident %s sensor %s room %s, confidence %.2f, "
                "peak %.1f g, lying %.0f s (reasons: %s)",
                e.alert_id, e.site_id, e.device_id, e.resident_id or "?", e.sensor or "?", e.room or "?",
                e.confidence or 0.0, e.peak_g or 0.0, e.lying_s or 0.0, ",".join(e.reasons) or "-",
            )
        elif e.kind == "fall" and e.action is Action.CANCELLED:
            log.info("pre-alarm cancelled by the wearer %s: site %s hub %s resident %s",
                     e.alert_id, e.site_id, e.device_id, e.resident_id or "?")
        elif e.kind == "fall" and e.action is Action.ESCALATED:
            log.error(
                "ESCALATION %d: fall alert %s (site %s hub %s resident %s) not acknowledged for %.0f s",
                e.escalations, e.alert_id, e.site_id, e.device_id, e.resident_id or "?",
                (e.at_ms - (e.raised_ms if e.raised_ms is not None else e.at_ms)) / 1000,
            )
        elif e.kind == "device_offline" and e.action is Action.RAISED:
            log.warning("DEVICE OFFLINE: %s", e.detail)
        elif e.kind == "device_offline" and e.action is Action.RECOVERED:
            log.warning("device back online: %s at %s", e.device_id, e.site_id)
        elif e.kind == "test_overdue" and e.action is Action.RAISED:
            log.warning("TEST ALARM OVERDUE: %s", e.detail)
        elif e.action is Action.RAISED:  # fall_unreadable, msg_id_conflict, and any later device alert
            log.error("%s: %s", e.kind.upper().replace("_", " "), e.detail)
        else:
            return False
        return True

    def send_to(self, e: AlertEvent, address: str) -> str:
        """A paged message in the staff log (a contact for testing a roster without a phone)."""
        # never the acknowledge link: it is the recipient's key, and logs are read by others
        _OneLineLogger(self.log).warning("PAGE to %s (%s, level %d): %s %s %s", e.recipient or address or "?",
                                         address or "-", e.level, e.page_kind or e.kind, e.action, e.alert_id)
        return "logged"

    def close(self) -> None:
        """Nothing to close: logging owns its handlers."""


@CHANNELS.register(LogChannelConfig)
def _make(cfg: LogChannelConfig, ctx: ChannelContext) -> Channel:
    return LogChannel(cfg.logger)
