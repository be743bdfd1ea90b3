"""What the network channels share: secrets from the environment or owner-only files, the
event as JSON, and the event in plain words (subject and body)."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

from fallwatch.config import ConfigError
from fallwatch.gateway.channels import Action, AlertEvent


def read_secret(what: str, env: str | None, file: Path | None) -> str | None:
    """The secret named by ``env`` (an environment variable) or ``file``; None if neither is set.

    A file readable or writable by its group or others is refused: a secret is owner-only
    (``chmod 600``). A named variable that is unset or empty is refused too.
    """
    if env is not None and file is not None:
        raise ConfigError(f"{what}: give either the _env or the _file setting, not both")
    if env is not None:
        value = os.environ.get(env)
        if not value:
            raise ConfigError(f"{what}: environment variable {env} is not set")
        return value
    if file is not None:
        try:
            st = file.stat()
        except OSError as exc:
            raise ConfigError(f"{what}: cannot read secret file {file}: {exc.strerror}") from None
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{what}: secret file {file} is accessible by group or others "
                              f"(mode {stat.S_IMODE(st.st_mode):o}); make it owner-only: chmod 600 {file}")
        value = file.read_text(encoding="utf-8").strip()
        if not value:
            raise ConfigError(f"{what}: secret file {file} is empty")
        return value
    return None


def event_dict(e: AlertEvent) -> dict[str, object]:
    d = dataclasses.asdict(e)
    d["action"] = str(e.action)
    d["reasons"] = list(e.reasons)
    return d


def event_json(e: AlertEvent) -> bytes:
    """The event as compact JSON (sorted keys): the webhook body and the MQTT payload."""
    return json.dumps(event_dict(e), sort_keys=True, separators=(",", ":")).encode()


_KIND = {"fall": "Fall", "suspected_fall": "Suspected fall", "long_lie": "Long lie", "inactivity": "No movement",
         "device_offline": "Device offline", "test_overdue": "Test alarm overdue", "fall_unreadable":
         "Unreadable fall alert", "bed_exit_night": "Out of bed at night", "not_worn": "Wearable not worn",
         "low_battery": "Low battery", "channel_failing": "Notification channel failing"}
_ACTION = {Action.RAISED: "", Action.ESCALATED: "NOT ACKNOWLEDGED – ", Action.CANCELLED: "cancelled – ",
           Action.ACKNOWLEDGED: "acknowledged – ", Action.RESOLVED: "resolved – ", Action.RECOVERED: "recovered – "}


def when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _kind(e: AlertEvent) -> str:
    k = e.page_kind or e.kind
    return _KIND.get(k, k.replace("_", " ").capitalize())


def subject(e: AlertEvent) -> str:
    kind = _kind(e)
    who = f"resident {e.resident_id}" if e.resident_id else f"device {e.device_id}"
    room = f", room {e.room}" if e.room else ""
    return f"{_ACTION.get(e.action, '')}{kind}: {who}{room} (site {e.site_id})"


def body(e: AlertEvent) -> str:
    """The event in plain words, one fact per line."""
    kind = _kind(e)
    lines = [f"{kind} alert, {e.action}."]
    if e.level >= 1 and e.action in (Action.RAISED, Action.ESCALATED):
        lines.append("Escalated to you: " + ("the carer on call has not acknowledged it."
                                             if e.level == 1 else "nobody on call has acknowledged it."))
    if e.action is Action.ESCALATED:
        lines.append(f"Nobody has acknowledged it yet (reminder {e.escalations}).")
    lines += [
        f"Resident: {e.resident_id or 'unknown'}",
        f"Room: {e.room or 'unknown'}",
        f"Site: {e.site_id}, hub {e.device_id}" + (f", sensor {e.sensor}" if e.sensor else ""),
        f"When: {when(e.raised_ms if e.raised_ms is not None else e.at_ms)}",
    ]
    why = ", ".join(e.reasons) or e.detail
    if why:
        lines.append(f"Why: {why}")
    if e.confidence is not None:
        lines.append(f"Confidence: {e.confidence:.0%}")
    if e.lying_s is not None:
        lines.append(f"Lying for: {e.lying_s:.0f} s")
    if e.action in (Action.ACKNOWLEDGED, Action.RESOLVED):
        lines.append(f"By: {e.actor}")
    if e.outcome:
        lines.append(f"Outcome: {e.outcome.replace('_', ' ')}" + (f" ({e.note})" if e.note else ""))
    if e.ack_url:
        lines.append(f"Take it (acknowledge, single use): {e.ack_url}")
    lines.append(f"Alert id: {e.alert_id}")
    return "\n".join(lines) + "\n"
