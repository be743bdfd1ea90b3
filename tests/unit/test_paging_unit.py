"""The pager's rules without a network: who is on call (shifts, iCalendar, gaps), kinds and
urgency, quiet hours, damping of a flapping device, the planning list, link tokens."""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fallwatch.config import PagingConfig
from fallwatch.gateway.channels import Action, AlertEvent
from fallwatch.gateway.paging import Pager, kinds
from fallwatch.gateway.paging.acklinks import AckLinkError, AckSigner
from fallwatch.gateway.paging.roster import Roster, quiet_window, shift_people
from fallwatch.gateway.state import StateStore

TZ = ZoneInfo("Europe/Stockholm")


def ms(y: int, mo: int, d: int, h: int, mi: int = 0) -> int:
    return int(datetime(y, mo, d, h, mi, tzinfo=TZ).timestamp() * 1000)


class Addressed:
    """An addressable channel that records what it was asked to send."""

    def __init__(self, name: str = "app") -> None:
        self.name = name
        self.sent: list[tuple[str, AlertEvent]] = []
        self.lock = threading.Lock()

    def send_to(self, event: AlertEvent, address: str) -> str:
        with self.lock:
            self.sent.append((address, event))
        return "ok"


def cfg(**kw: Any) -> PagingConfig:
    people = [{"id": p, "name": p.title(), "contacts": [{"channel": "app", "to": p}]}
              for p in ("anna", "bertil", "cecilia", "karin", "tom")]
    team = {"id": "t1", "sites": ["site-a"], "lead": "karin", "technicians": ["tom"],
            "shifts": [{"people": ["anna", "bertil"], "start": "22:00", "end": "07:00"},
                       {"people": ["cecilia"], "start": "07:00", "end": "22:00"}]}
    team.update(kw.pop("team", {}))
    return PagingConfig.model_validate({"people": people, "teams": [team], **kw})


def test_shifts_overnight_belong_to_the_day_they_started() -> None:
    c = cfg(team={"shifts": [{"people": ["anna"], "days": ["fri"], "start": "22:00", "end": "07:00"}]})
    shifts = list(c.teams[0].shifts)
    fri_late = datetime(2026, 12, 4, 23, 0, tzinfo=TZ)  # a Friday
    sat_early = datetime(2026, 12, 5, 6, 59, tzinfo=TZ)
    sat_late = datetime(2026, 12, 5, 23, 0, tzinfo=TZ)
    assert shift_people(shifts, fri_late) == ["anna"] and shift_people(shifts, sat_early) == ["anna"]
    assert shift_people(shifts, sat_late) == []


def test_route_levels_and_a_gap_goes_straight_to_the_lead() -> None:
    r = Roster(cfg())
    night = r.route("site-a", ms(2026, 12, 1, 23))
    assert night is not None and [x.id for lv in night.levels for x in lv] == ["anna", "bertil", "karin"]
    day = r.route("site-a", ms(2026, 12, 1, 12))
    assert day is not None and [x.id for x in day.at(0)] == ["cecilia"] and day.at(1) == ()
    gap = Roster(cfg(team={"shifts": [{"people": ["anna"], "start": "08:00", "end": "09:00"}]}))
    g = gap.route("site-a", ms(2026, 12, 1, 12))
    assert g is not None and g.at(0) == () and [x.id for x in g.at(2)] == ["karin"] and "nobody on call" in g.notes
    assert r.route("site-z", ms(2026, 12, 1, 12)) is None


def test_icalendar_schedule_with_recurrence_overrides_the_shifts(tmp_path: Path) -> None:
    ics = tmp_path / "oncall.ics"
    ics.write_text("\r\n".join([
        "BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//test//EN",
        "BEGIN:VEVENT", "UID:1@test", "DTSTAMP:20261101T000000Z",
        "DTSTART;TZID=Europe/Stockholm:20261102T220000", "DTEND;TZID=Europe/Stockholm:20261103T070000",
        "RRULE:FREQ=WEEKLY;BYDAY=MO,TU", "SUMMARY:bertil, anna", "END:VEVENT", "END:VCALENDAR", ""]))
    r = Roster(cfg(team={"ical": str(ics)}))
    tue_night = r.route("site-a", ms(2026, 12, 1, 23, 30))  # Tuesday: from the calendar
    assert tue_night is not None and [x.id for x in tue_night.at(0) + tue_night.at(1)] == ["bertil", "anna"]
    wed_night = r.route("site-a", ms(2026, 12, 2, 23, 30))  # no event: the shifts
    assert wed_night is not None and [x.id for x in wed_night.at(0)] == ["anna"]


def test_config_refuses_unknown_people_and_an_unpageable_team() -> None:
    with pytest.raises(ValueError, match="unknown people"):
        cfg(team={"lead": "nobody"})
    with pytest.raises(ValueError, match="nobody could be paged"):
        PagingConfig.model_validate({"teams": [{"id": "t", "sites": ["s"]}]})


def test_kinds_and_urgency() -> None:
    assert kinds.page_kind("fall", ("impact", "lying"), 0.95) == "fall"
    assert kinds.page_kind("fall", ("impact",), 0.6) == "suspected_fall"
    assert kinds.page_kind("fall", ("no_recovery", "lying_s"), 0.9) == "suspected_fall"
    assert kinds.page_kind("fall", ("impact",), 0.95, lying_s=900) == "long_lie"
    assert kinds.urgency("fall") == "urgent" and kinds.urgency("fall_risk") == "planning"
    assert kinds.urgency("something_new") == "normal"
    assert kinds.urgency("device_offline", {"device_offline": "technical"}) == "technical"


def test_quiet_window() -> None:
    inside, ends = quiet_window("22:00-07:00", datetime(2026, 12, 1, 23, 0, tzinfo=TZ))
    assert inside and ends == datetime(2026, 12, 2, 7, 0, tzinfo=TZ)
    assert quiet_window("22:00-07:00", datetime(2026, 12, 1, 12, 0, tzinfo=TZ)) == (False, None)


def test_ack_tokens_are_signed() -> None:
    s = AckSigner("k1")
    claim = s.issue("fall:s:d:e", "anna", "email", 10)
    assert s.read(s.token(claim)) == claim
    with pytest.raises(AckLinkError):
        AckSigner("k2").read(s.token(claim))
    with pytest.raises(AckLinkError):
        s.read(s.token(claim)[:-2])


class Rig:
    def __init__(self, tmp: Path, **kw: Any) -> None:
        self.now = ms(2026, 12, 1, 12)
        self.state = StateStore(str(tmp / "state.sqlite"))
        self.state.setup()
        self.ch = Addressed()
        self.pager = Pager(cfg(**kw), self.state, {"app": self.ch}, gateway_id="gw-1", stop=threading.Event(),
                           public_url="http://gw", clock=lambda: self.now)
        self.pager.setup()

    def device_alert(self, kind: str, action: Action = Action.RAISED) -> str:
        if action is Action.RAISED:
            aid = self.state.raise_alert(kind, "site-a", "hub-1", self.now, "why")
            assert aid
        else:
            aid = self.state.resolve_alerts(kind, "site-a", "hub-1", self.now, "back")[0]
        self.pager.notify(AlertEvent(kind=kind, action=action, alert_id=aid, site_id="site-a", device_id="hub-1",
                                     at_ms=self.now))
        self.pager.wait_idle(5)
        return aid

    def sent_to(self) -> list[tuple[str, str, str]]:
        return [(a, e.kind, str(e.action)) for a, e in self.ch.sent]


def test_normal_alert_in_quiet_hours_is_held_until_morning(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.now = ms(2026, 12, 1, 23)
    aid = rig.device_alert("test_overdue")
    assert rig.sent_to() == [] and rig.pager.store.page(aid)["status"] == "held"  # type: ignore[index]
    rig.pager.tick(ms(2026, 12, 2, 6, 59))
    rig.pager.wait_idle(5)
    assert rig.sent_to() == []
    rig.now = ms(2026, 12, 2, 7, 0)
    rig.pager.tick(rig.now)
    rig.pager.wait_idle(5)
    assert rig.sent_to() == [("cecilia", "test_overdue", "raised")]  # whoever is on call when the hold ends


def test_flapping_device_is_damped(tmp_path: Path) -> None:
    rig = Rig(tmp_path, damp_s=900)
    rig.device_alert("device_offline")
    assert rig.sent_to() == [("cecilia", "device_offline", "raised")]
    rig.now += 60_000
    rig.device_alert("device_offline", Action.RECOVERED)
    rig.now += 60_000
    again = rig.device_alert("device_offline")  # offline again two minutes later: held, not sent
    assert len(rig.ch.sent) == 2 and rig.pager.store.page(again)["status"] == "held"  # type: ignore[index]
    rig.now += 60_000
    rig.device_alert("device_offline", Action.RECOVERED)  # back before the hold ran out: never sent
    rig.now += 900_000
    rig.pager.tick(rig.now)
    rig.pager.wait_idle(5)
    assert len(rig.ch.sent) == 2
    assert rig.pager.store.page(again)["status"] == "closed"  # type: ignore[index]
    rig.now += 3_600_000
    rig.device_alert("device_offline")  # much later: a new outage, told at once
    assert rig.sent_to()[-1] == ("cecilia", "device_offline", "raised")


def test_raised_fall_risk_is_never_sent_but_listed_for_planning(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    aid = rig.device_alert("fall_risk")
    assert rig.ch.sent == []
    assert [a["alert_id"] for a in rig.pager.planning(0)] == [aid]


def test_technical_alert_goes_to_the_technician(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.device_alert("msg_id_conflict")
    assert rig.sent_to() == [("tom", "msg_id_conflict", "raised")]
