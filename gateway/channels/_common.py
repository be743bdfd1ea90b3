"""What the network channels share: secrets from the environment or owner-only files, the
event as JSON, and the event in plain words (subject and body)."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

from fallwatch.config import ConfigError
from fallwatch.gateway.channels import Action, AlertEvent
from fallwatch.gateway.i18n import N_, gettext_for, local_time


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


_KIND = {"fall": N_("Fall"), "suspected_fall": N_("Suspected fall"), "long_lie": N_("Long lie"),
         "inactivity": N_("No movement"), "device_offline": N_("Device offline"),
         "test_overdue": N_("Test alarm overdue"), "fall_unreadable": N_("Unreadable fall alert"),
         "bed_exit_night": N_("Out of bed at night"), "not_worn": N_("Wearable not worn"),
         "low_battery": N_("Low battery"), "channel_failing": N_("Notification channel failing"),
         "fall_risk": N_("Raised fall risk"), "msg_id_conflict": N_("Hub message conflict")}
_ACTION = {Action.RAISED: "", Action.ESCALATED: N_("NOT ACKNOWLEDGED – "), Action.CANCELLED: N_("cancelled – "),
           Action.ACKNOWLEDGED: N_("acknowledged – "), Action.RESOLVED: N_("resolved – "),
           Action.RECOVERED: N_("recovered – ")}
_ACTION_WORD = {Action.RAISED: N_("raised"), Action.ESCALATED: N_("not acknowledged"),
                Action.CANCELLED: N_("cancelled"), Action.ACKNOWLEDGED: N_("acknowledged"),
                Action.RESOLVED: N_("resolved"), Action.RECOVERED: N_("recovered")}
#: a fall alert's evidence codes in plain words
REASONS = {"impact": N_("a hard impact"), "lying": N_("lying afterwards"), "model_score": N_("fall-like movement"),
           "posture_change": N_("body turned towards lying"), "stillness": N_("still after the impact"),
           "free_fall": N_("a drop before the impact"), "no_room_motion": N_("no movement in the room since"),
           "room_motion_after": N_("movement in the room afterwards"), "bathroom": N_("in the bathroom"),
           "room_confirmed": N_("nobody moving in the flat, not in bed or chair"),
           "no_recovery": N_("has not got up"), "lying_s": N_("lying for a long time"),
           "cancelled_by_wearer": N_("cancelled by the wearer"), "fall_from_bed": N_("fell out of bed"),
           "posture_drop": N_("went down without an impact"), "not_in_bed": N_("not in bed or chair"),
           "recovered": N_("got up and walked"), "in_occupied_bed": N_("in an occupied bed"),
           "lying_before": N_("was lying before and since (turning over)"),
           "upright_before": N_("was upright before")}
_OUTCOME = {"injury": N_("fall with injury"), "no_injury": N_("fall without injury"),
            "ambulance": N_("ambulance called"), "false_alarm": N_("false alarm"),
            "resident_cancelled": N_("cancelled by the resident"), "other": N_("other")}


def when(ms: int, tz: str | None = None) -> str:
    return local_time(ms, tz, None)


def _lang(e: AlertEvent, lang: str | None) -> str:
    return e.locale or lang or "en"


def kind_name(e: AlertEvent, lang: str | None = None) -> str:
    _ = gettext_for(_lang(e, lang))
    k = e.page_kind or e.kind
    return _(_KIND[k]) if k in _KIND else k.replace("_", " ").capitalize()


def reasons_text(e: AlertEvent, lang: str | None = None) -> str:
    _ = gettext_for(_lang(e, lang))
    return ", ".join(_(REASONS[r]) if r in REASONS else r.replace("_", " ") for r in e.reasons)


def _who(e: AlertEvent, names: bool) -> str | None:
    """The resident as the reader should see them: name (if allowed) and flat, else the id."""
    if not e.resident_id:
        return None
    parts = [e.resident_name] if names and e.resident_name else []
    if e.flat:
        parts.append(e.flat)
    return ", ".join(parts) + f" ({e.resident_id})" if parts else e.resident_id


def subject(e: AlertEvent, lang: str | None = None, names: bool = False) -> str:
    _ = gettext_for(_lang(e, lang))
    kind = kind_name(e, lang)
    resident = _who(e, names)
    who = _("resident {id}").format(id=resident) if resident else _("device {id}").format(id=e.device_id)
    room = _(", room {room}").format(room=e.room) if e.room else ""
    action = _(_ACTION[e.action]) if _ACTION.get(e.action) else ""
    return _("{action}{kind}: {who}{room} (site {site})").format(action=action, kind=kind, who=who, room=room,
                                                               site=e.site_id)


def body(e: AlertEvent, lang: str | None = None, tz: str | None = None, names: bool = False) -> str:
    """The event in plain words, one fact per line, in the reader's language and time zone."""
    _ = gettext_for(_lang(e, lang))
    tz = e.tz or tz
    lines = [_("{kind} alert, {action}.").format(kind=kind_name(e, lang), action=_(_ACTION_WORD[e.action]))]
    if e.level >= 1 and e.action in (Action.RAISED, Action.ESCALATED):
        lines.append(_("Escalated to you: the carer on call has not acknowledged it.") if e.level == 1
                     else _("Escalated to you: nobody on call has acknowledged it."))
    if e.action is Action.ESCALATED:
        lines.append(_("Nobody has acknowledged it yet (reminder {n}).").format(n=e.escalations))
    unknown = _("unknown")
    lines += [
        _("Resident: {v}").format(v=_who(e, names) or unknown),
        _("Room: {v}").format(v=e.room or unknown),
        _("Site: {site}, hub {hub}").format(site=e.site_id, hub=e.device_id)
        + (_(", sensor {v}").format(v=e.sensor) if e.sensor else ""),
        _("When: {v}").format(v=when(e.raised_ms if e.raised_ms is not None else e.at_ms, tz)),
    ]
    why = reasons_text(e, lang) or e.detail
    if why:
        lines.append(_("Why: {v}").format(v=why))
    if e.confidence is not None:
        lines.append(_("Confidence: {v}").format(v=f"{e.confidence:.0%}"))
    if e.lying_s is not None:
        lines.append(_("Lying for: {v} s").format(v=f"{e.lying_s:.0f}"))
    if e.action in (Action.ACKNOWLEDGED, Action.RESOLVED):
        lines.append(_("By: {v}").format(v=e.actor))
    if e.outcome:
        outcome = _(_OUTCOME[e.outcome]) if e.outcome in _OUTCOME else e.outcome
        lines.append(_("Outcome: {v}").format(v=outcome) + (f" ({e.note})" if e.note else ""))
    if e.ack_url:
        lines.append(_("Take it (acknowledge, single use): {v}").format(v=e.ack_url))
    lines.append(_("Alert id: {v}").format(v=e.alert_id))
    return "\n".join(lines) + "\n"
