"""Alert kinds and their default urgency: what may wake a carer at night, and what never does.

=============  ===========================================================================
urgency        what the pager does
=============  ===========================================================================
``urgent``     page the on-call carer now, repeat every ``resend_every_s`` (≤ 60 s, R1)
               until someone acknowledges, escalate: next on call → team lead → fallback
``high``       as urgent, but the escalation stops at the team lead (no outside fallback)
``normal``     tell the on-call carer once; held during the team's quiet hours
``technical``  tell the team's technicians once; held during quiet hours
``planning``   never sent: it goes on the day's planning list (``/planning``)
=============  ===========================================================================

A fall alert is a ``fall`` when the hub is sure, a ``suspected_fall`` when its
confidence is below ``paging.suspected_below`` or it came from the no-recovery path,
and a ``long_lie`` when the wearer has been down for minutes. Every default can be
overridden per kind in ``[gateway.paging.urgency]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

URGENCY: dict[str, str] = {
    "fall": "urgent",
    "suspected_fall": "urgent",
    "long_lie": "urgent",
    "inactivity": "urgent",
    "fall_unreadable": "urgent",  # a hub sent a fall alert nobody could read: treat it as a fall
    "bed_exit_night": "high",
    "device_offline": "high",  # nothing in that home can raise an alarm now
    "not_worn": "normal",
    "low_battery": "normal",
    "test_overdue": "normal",
    "fall_risk": "planning",
    "msg_id_conflict": "technical",
    "channel_failing": "technical",
    "cert_expiring": "technical",
}

#: how far an escalation goes, by urgency (levels: 0 primary, 1 next on call, 2 lead, 3 fallback)
MAX_LEVEL = {"urgent": 3, "high": 2, "normal": 0, "technical": 0, "planning": -1}
#: urgencies that are repeated until acknowledged
REPEATED = frozenset({"urgent", "high"})
#: kinds whose re-raise soon after the last one closed is held (a flapping device)
DAMPED = frozenset({"device_offline", "not_worn", "low_battery", "test_overdue", "channel_failing",
                    "msg_id_conflict", "cert_expiring"})
#: urgencies held back during quiet hours
QUIET = frozenset({"normal", "technical"})
#: kinds never held: paging itself is failing
QUIET_EXEMPT = frozenset({"channel_failing"})

#: reason codes from the edge that mean "found lying for a long time"
_LONG_LIE = frozenset({"long_lie", "inactivity"})
_SUSPECTED = frozenset({"no_recovery"})


def page_kind(kind: str, reasons: Sequence[str] = (), confidence: float | None = None,
              lying_s: float | None = None, suspected_below: float = 0.8, long_lie_s: float = 600.0) -> str:
    """The kind the pager routes by: a stored ``fall`` becomes ``fall``, ``suspected_fall`` or
    ``long_lie`` from what the hub said about it; other kinds are what they are."""
    if kind != "fall":
        return kind
    rs = set(reasons)
    if rs & _LONG_LIE or (lying_s is not None and lying_s >= long_lie_s):
        return "long_lie"
    if rs & _SUSPECTED or (confidence is not None and confidence < suspected_below):
        return "suspected_fall"
    return "fall"


def urgency(kind: str, overrides: Mapping[str, str] | None = None) -> str:
    """The urgency of a kind: the configured override, the default, or ``normal`` for a kind
    this table does not know yet (never silently dropped, never waking anyone by surprise)."""
    if overrides and kind in overrides:
        return overrides[kind]
    return URGENCY.get(kind, "normal")
