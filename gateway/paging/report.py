"""Answer times per team and shift, from the audit-backed alert lifecycle (R7: the UK TSA
aims at 97.5 % of alarms answered within 60 s and 99 % within 180 s).

"Answered" is the first human step: the acknowledgement, or the resolution when nobody
acknowledged first. The shift is the configured shift that covered the moment the alert
was raised (``22:00-07:00``), or ``calendar`` / ``no shift``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from fallwatch.config import PagingConfig
from fallwatch.gateway.paging.roster import shift_people
from fallwatch.gateway.state import StateStore


def shift_label(cfg: PagingConfig, team_id: str | None, at_ms: int) -> str:
    team = next((t for t in cfg.teams if t.id == team_id), None)
    if team is None:
        return "no team"
    local = datetime.fromtimestamp(at_ms / 1000, ZoneInfo(team.timezone))
    if team.ical:
        from fallwatch.gateway.paging.roster import IcalSchedule

        if IcalSchedule(team.ical).people(local, wait=True) is not None:
            return "calendar"
    for s in team.shifts:
        if shift_people([s], local):
            return f"{s.start}-{s.end}"
    return "calendar" if team.ical else "no shift"


def answer_times(state: StateStore, cfg: PagingConfig, since_ms: int) -> list[dict[str, Any]]:
    rows = state._select(
        "SELECT p.team, p.kind, p.urgency, a.raised_ms, a.acked_ms, a.cleared_ms, a.cleared_by, a.status FROM pages p "
        "JOIN alerts a ON a.alert_id = p.alert_id WHERE p.urgency IN ('urgent', 'high') AND p.status <> 'grouped' "
        "AND a.raised_ms >= ?", (since_ms,))
    groups: dict[tuple[str, str], list[float | None]] = {}
    for r in rows:
        # the first human step: a clear by the gateway itself (a device came back) is no answer
        human_clear = r["cleared_ms"] if r.get("cleared_by") not in (None, "gateway") else None
        first = r["acked_ms"] if r["acked_ms"] is not None else human_clear
        secs = None if first is None else (int(first) - int(r["raised_ms"])) / 1000
        key = (str(r["team"] or "-"), shift_label(cfg, r["team"], int(r["raised_ms"])))
        groups.setdefault(key, []).append(secs)
    out = []
    for (team, shift), vals in sorted(groups.items()):
        answered = [v for v in vals if v is not None]
        out.append({
            "team": team, "shift": shift, "alerts": len(vals), "answered": len(answered),
            "unanswered": len(vals) - len(answered),
            "p50_s": round(float(np.percentile(answered, 50)), 1) if answered else None,
            "p90_s": round(float(np.percentile(answered, 90)), 1) if answered else None,
            "within_60s_pct": round(100 * sum(v <= 60 for v in answered) / len(vals), 1),
            "within_180s_pct": round(100 * sum(v <= 180 for v in answered) / len(vals), 1),
        })
    return out
