"""Who is on call for a site right now, and how to reach them.

A team answers for its sites. Who is on call comes from the team's iCalendar schedule
where it has an event at that moment (each event's SUMMARY lists person ids in order,
"anna, bertil"; recurring events are expanded with ``recurring-ical-events``), and from
the ``shifts`` in the config otherwise. The escalation levels are then fixed:

* level 0 — the first person on call,
* level 1 — the next person on call (if any),
* level 2 — the team lead,
* level 3 — the fallback contacts (e.g. an alarm receiving centre's web hook).

A level with nobody on it is skipped, never waited for: a gap in the schedule goes
straight to the lead, and to the fallback with no lead.

A schedule URL that cannot be fetched keeps the last copy that could (and says so);
with no copy ever, the shifts apply.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from fallwatch.config import Contact, PagingConfig, Person, Shift, Team

log = logging.getLogger("fallwatch.gateway.paging")

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
LEVELS = ("on call", "next on call", "team lead", "fallback")


@dataclass(frozen=True, slots=True)
class Recipient:
    """Someone (or something, for a fallback) a page goes to, with their contacts in order."""

    id: str
    name: str
    contacts: tuple[Contact, ...]
    all_contacts: bool = False
    locale: str | None = None  # the language of their messages (person, else team)
    tz: str | None = None  # their team's time zone


@dataclass(frozen=True, slots=True)
class Route:
    """The team answering for a site at one moment, and who is at each escalation level."""

    team: str
    levels: tuple[tuple[Recipient, ...], ...]  # index = level
    technicians: tuple[Recipient, ...] = ()
    quiet: bool = False  # inside the team's quiet hours now
    quiet_ends_ms: int | None = None
    notes: tuple[str, ...] = field(default=())

    def at(self, level: int) -> tuple[Recipient, ...]:
        return self.levels[level] if 0 <= level < len(self.levels) else ()


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def shift_people(shifts: list[Shift], local: datetime) -> list[str]:
    """The people of the first shift covering ``local`` (a shift past midnight belongs to the
    day it started on)."""
    now = local.hour * 60 + local.minute
    today = _DAYS[local.weekday()]
    yesterday = _DAYS[(local.weekday() - 1) % 7]
    for s in shifts:
        start, end = _minutes(s.start), _minutes(s.end)
        if start == end:  # the whole day
            if today in s.days:
                return list(s.people)
        elif start < end:
            if today in s.days and start <= now < end:
                return list(s.people)
        else:  # overnight
            if (today in s.days and now >= start) or (yesterday in s.days and now < end):
                return list(s.people)
    return []


def quiet_window(spec: str | None, local: datetime) -> tuple[bool, datetime | None]:
    """Whether ``local`` lies in the quiet hours ``"22:00-07:00"``, and when they end."""
    if not spec:
        return False, None
    a, b = (_minutes(x) for x in spec.split("-"))
    now = local.hour * 60 + local.minute
    inside = (a <= now < b) if a < b else (now >= a or now < b)
    if not inside or a == b:
        return False, None
    end = local.replace(hour=b // 60, minute=b % 60, second=0, microsecond=0)
    if end <= local:
        end += timedelta(days=1)
    return True, end


class IcalSchedule:
    """An iCalendar schedule from a file or URL, re-read at most every ``refresh_s``."""

    def __init__(self, source: str, refresh_s: float = 600.0) -> None:
        self.source = source
        self.refresh_s = refresh_s
        self._cal: object | None = None
        self._loaded = -1e18
        self._lock = threading.Lock()
        self.error: str | None = None

    def _load(self) -> None:
        import icalendar
        import requests

        if self.source.startswith(("http://", "https://")):
            r = requests.get(self.source, timeout=10)
            r.raise_for_status()
            raw = r.content
        else:
            raw = Path(self.source).read_bytes()
        self._cal = icalendar.Calendar.from_ical(raw)

    def _refresh(self) -> None:
        try:
            self._load()
            self.error = None
        except Exception as exc:  # keep the last good copy
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("on-call calendar %s unreadable (%s); %s", self.source, self.error,
                        "keeping the last copy" if self._cal is not None else "using the shifts")

    def people(self, at: datetime, wait: bool = False) -> list[str] | None:
        """Person ids on call at ``at`` (aware datetime) in order, or None where the calendar has
        no event then (or was never readable). A URL is re-read in the background (an alert never
        waits for a web server); a file, or the first read with ``wait``, in line."""
        import recurring_ical_events

        with self._lock:
            due = time.monotonic() - self._loaded > self.refresh_s
            if due:
                self._loaded = time.monotonic()
        if due:
            remote = self.source.startswith(("http://", "https://"))
            if remote and not wait:
                threading.Thread(target=self._refresh, name="oncall-ical", daemon=True).start()
            else:
                self._refresh()
        with self._lock:
            cal = self._cal
        if cal is None:
            return None
        events = recurring_ical_events.of(cal).at(at)
        out: list[str] = []
        for ev in sorted(events, key=lambda e: str(e.get("DTSTART").dt)):
            for pid in str(ev.get("SUMMARY", "")).replace(";", ",").split(","):
                pid = pid.strip()
                if pid and pid not in out:
                    out.append(pid)
        return out or None


class Roster:
    """The paging config as a lookup: :meth:`route` for a site at a time."""

    def __init__(self, cfg: PagingConfig) -> None:
        self.cfg = cfg
        self.people: dict[str, Person] = {p.id: p for p in cfg.people}
        self.calendars = {t.id: IcalSchedule(t.ical) for t in cfg.teams if t.ical}

    @property
    def enabled(self) -> bool:
        return bool(self.cfg.teams)

    def team_for(self, site_id: str) -> Team | None:
        for t in self.cfg.teams:
            if site_id in t.sites:
                return t
        for t in self.cfg.teams:
            if "*" in t.sites:
                return t
        return None

    def recipient(self, person_id: str, team: Team | None = None) -> Recipient | None:
        p = self.people.get(person_id)
        if p is None:
            return None
        if team is None:
            team = next((t for t in self.cfg.teams if person_id in (t.lead, *t.technicians,
                                                                    *(x for s in t.shifts for x in s.people))), None)
        return Recipient(p.id, p.name, tuple(p.contacts), p.all_contacts, p.locale or (team.locale if team else None),
                         team.timezone if team else None)

    def on_call(self, team: Team, at_ms: int) -> tuple[list[str], str]:
        """Person ids on call, and where that came from ("calendar", "shifts")."""
        local = datetime.fromtimestamp(at_ms / 1000, ZoneInfo(team.timezone))
        cal = self.calendars.get(team.id)
        if cal is not None:
            got = cal.people(local)
            if got is not None:
                return got, "calendar"
        return shift_people(list(team.shifts), local), "shifts"

    def route(self, site_id: str, at_ms: int, team_id: str | None = None) -> Route | None:
        """Who answers for ``site_id`` at ``at_ms`` (or the resident's own team ``team_id`` from
        the registry, when the paging config has it); None if no team covers the site."""
        team = next((t for t in self.cfg.teams if t.id == team_id), None) if team_id else None
        team = team or self.team_for(site_id)
        if team is None:
            return None
        notes: list[str] = []
        ids, source = self.on_call(team, at_ms)
        oncall: list[Recipient] = []
        for pid in ids:
            r = self.recipient(pid, team)
            if r is None:
                notes.append(f"{source} names unknown person {pid!r}")
            else:
                oncall.append(r)
        if not oncall:
            notes.append("nobody on call")
        lead = self.recipient(team.lead, team) if team.lead else None
        fallback = (Recipient("fallback", f"{team.name or team.id} fallback", tuple(team.fallback), False,
                              team.locale, team.timezone),) if team.fallback else ()
        levels = (tuple(oncall[:1]), tuple(oncall[1:2]), (lead,) if lead else (), fallback)
        techs = tuple(r for r in (self.recipient(t, team) for t in team.technicians) if r is not None)
        local = datetime.fromtimestamp(at_ms / 1000, ZoneInfo(team.timezone))
        quiet, ends = quiet_window(team.quiet_hours, local)
        return Route(team.id, levels, techs, quiet, int(ends.timestamp() * 1000) if ends else None, tuple(notes))
