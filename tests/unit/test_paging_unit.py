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


def test_an_acknowledgement_from_elsewhere_stops_paging_and_tells_those_paged(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.now = ms(2026, 12, 1, 23)
    aid = rig.device_alert("device_offline")  # high: paged, repeated
    rig.now += 130_000
    rig.pager.tick(rig.now)  # escalated to bertil
    rig.pager.wait_idle(5)
    assert {a for a, _, _ in rig.sent_to()} == {"anna", "bertil"}
    n = len(rig.ch.sent)
    rig.state.transition(aid, "acknowledge", "bertil", rig.now, via="cli")  # the CLI writes the state DB only
    rig.now += 1000
    rig.pager.tick(rig.now)
    rig.pager.wait_idle(5)
    assert rig.sent_to()[n:] == [("anna", "device_offline", "acknowledged")]
    rig.now += 600_000
    rig.pager.tick(rig.now)
    rig.pager.wait_idle(5)
    assert len(rig.ch.sent) == n + 1  # nothing more


def test_answer_times_per_team_and_shift(tmp_path: Path) -> None:
    from fallwatch.gateway.paging.report import answer_times

    rig = Rig(tmp_path)
    for i, (hour, answer_s) in enumerate([(23, 30), (23, 90), (12, 20), (13, None)]):
        rig.now = ms(2026, 12, 1, hour, i)
        aid = rig.device_alert("device_offline") if i == 0 else None
        if aid is None:
            aid = rig.state.raise_alert("device_offline", "site-a", f"hub-x{i}", rig.now, "x")
            assert aid
            rig.pager.notify(AlertEvent(kind="device_offline", action=Action.RAISED, alert_id=aid,
                                        site_id="site-a", device_id=f"hub-x{i}", at_ms=rig.now))
        if answer_s is not None:
            rig.state.transition(aid, "acknowledge", "anna", rig.now + answer_s * 1000)
    rows = {r["shift"]: r for r in answer_times(rig.state, rig.pager.cfg, 0)}
    assert rows["22:00-07:00"]["alerts"] == 2 and rows["22:00-07:00"]["within_60s_pct"] == 50.0
    assert rows["07:00-22:00"]["unanswered"] == 1 and rows["07:00-22:00"]["within_60s_pct"] == 50.0


def test_observer_derives_alerts_from_health_risk_and_room_concerns(tmp_path: Path) -> None:
    from fallwatch.gateway.observe import Observer
    from fallwatch.protocol import contract as c

    state = StateStore(str(tmp_path / "s.sqlite"))
    state.setup()
    raised: list[tuple[str, str]] = []
    cleared: list[str] = []
    obs = Observer(state, lambda k, s, d, why, **_: raised.append((k, why)), lambda k, s, d, why: cleared.append(k))
    env = {"schema": 1, "site_id": "site-a", "device_id": "hub-1", "boot_id": 1, "ts_ms": 1, "sent_ms": 1,
           "resident_id": "r01"}

    def health(status: str, battery: float, n: int) -> c.Health:
        warn = [f"wearable wear-r01 {status} (last seen 99 s ago)"] if status != "ok" else []
        return c.Health(**env, msg_id=f"hub-1:1:{n}", seq=n, data=c.HealthData(  # type: ignore[arg-type]
            uptime_s=1, outbox_depth=0, warnings=warn,
            sensors={"wear-r01": c.SensorHealth(last_seen_ms=1, battery_pct=battery, status=status)}))  # type: ignore[arg-type]

    obs.observe([health("stale", 10, 1)])
    assert [k for k, _ in raised] == ["not_worn", "low_battery"]
    obs.observe([health("stale", 10, 2)])  # still so: nothing new
    assert len(raised) == 2
    obs.observe([health("ok", 20, 3)])  # worn again; battery not yet back to 25 %
    assert cleared == ["not_worn"]
    obs.observe([health("ok", 80, 4)])
    assert cleared == ["not_worn", "low_battery"]
    risk = c.RiskScore(**env, msg_id="hub-1:1:5", seq=5, data=c.RiskData(  # type: ignore[arg-type]
        day="2026-12-01", score=0.81, level="high", factors=[c.Factor("gait_speed_drop", 0.3, 0.5)]))
    obs.observe([risk])
    assert raised[-1][0] == "fall_risk" and "gait_speed_drop" in raised[-1][1]
    tele = c.Telemetry(**env, msg_id="hub-1:1:6", seq=6, data=c.TeleData(  # type: ignore[arg-type]
        sensor="bed-1", window_s=10, room="bedroom", fields={"concern": "bed_exit_no_return", "concern_minutes": 35}))
    obs.observe([tele])
    assert raised[-1][0] == "bed_exit_night" and "35" in raised[-1][1]


def run_until(rig: Rig, end_ms: int, step_ms: int = 5000) -> None:
    while rig.now < end_ms:
        rig.now += step_ms
        rig.pager.tick(rig.now)
        rig.pager.wait_idle(5)


def test_after_the_last_level_reminders_keep_the_resend_interval(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.now = ms(2026, 12, 1, 23)
    t0 = rig.now
    rig.device_alert("device_offline")  # high: anna → bertil → karin (lead), no fallback
    run_until(rig, t0 + 15 * 60_000, 1000)  # a tick every second for 15 minutes
    per_person: dict[str, int] = {}
    for addr, _e in rig.ch.sent:
        per_person[addr] = per_person.get(addr, 0) + 1
    # one message at most every 60 s each: ≤ 16 in 15 minutes, however often the pager ticks
    assert set(per_person) == {"anna", "bertil", "karin"} and max(per_person.values()) <= 16, per_person
    assert per_person["anna"] >= 14  # and still re-sent every minute (R1)


def test_a_gap_in_the_schedule_pages_the_lead_and_the_carer_once_the_shift_starts(tmp_path: Path) -> None:
    rig = Rig(tmp_path, team={"shifts": [{"people": ["anna"], "start": "08:00", "end": "16:00"}], "lead": None})
    rig.now = ms(2026, 12, 1, 7, 58)
    aid = rig.device_alert("device_offline")  # nobody on call, no lead: unrouted, tried again every round
    assert rig.ch.sent == [] and rig.pager.stats()["unrouted"] == 1
    run_until(rig, ms(2026, 12, 1, 8, 1))
    assert [a for a, _ in rig.ch.sent][:1] == ["anna"] and rig.ch.sent[0][1].action is Action.RAISED
    page = rig.pager.store.page(aid)
    assert page is not None and page["status"] == "open"


def test_normal_kind_with_nobody_on_call_goes_to_the_lead(tmp_path: Path) -> None:
    rig = Rig(tmp_path, team={"shifts": [{"people": ["anna"], "start": "08:00", "end": "09:00"}]})
    rig.now = ms(2026, 12, 1, 12)
    rig.device_alert("low_battery")
    assert rig.sent_to() == [("karin", "low_battery", "raised")]


def test_grouped_alerts_follow_their_leader_acknowledged_from_the_cli(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    ids = []
    for n in (1, 2):
        aid = rig.state.raise_alert("fall", "site-a", f"hub-{n}", rig.now, "x")
        assert aid
        ids.append(aid)
        rig.pager.notify(AlertEvent(kind="fall", action=Action.RAISED, alert_id=aid, site_id="site-a",
                                    device_id=f"hub-{n}", resident_id="r01", at_ms=rig.now, confidence=0.95))
        rig.pager.wait_idle(5)
    assert rig.pager.store.page(ids[1])["status"] == "grouped"  # type: ignore[index]
    rig.state.transition(ids[0], "acknowledge", "anna", rig.now + 1000, via="cli")  # not through the pager
    rig.now += 2000
    rig.pager.tick(rig.now)  # closes the leader's page
    rig.pager.tick(rig.now)  # settles its group
    member = rig.state.alert(ids[1])
    assert member is not None and (member["status"], member["acked_by"]) == ("acknowledged", "anna")
    assert rig.pager.store.page(ids[1])["status"] == "closed"  # type: ignore[index]


def test_redact_keeps_only_scheme_and_host() -> None:
    from fallwatch.gateway.paging.pager import redact

    text = "ConnectionError: HTTPSConnectionPool: https://user:pw@sms.example/send?token=s3cret failed"
    assert redact(text) == "ConnectionError: HTTPSConnectionPool: https://sms.example/… failed"
    assert "s3cret" not in redact("json://127.0.0.1:8080/hook?key=s3cret")


def test_the_registry_gives_the_message_a_name_and_flat_and_routes_by_the_residents_team(tmp_path: Path) -> None:
    c = cfg()
    other = {"id": "t2", "sites": ["site-b"], "shifts": [{"people": ["tom"]}]}
    c = PagingConfig.model_validate({**c.model_dump(), "teams": [*(t.model_dump() for t in c.teams), other]})
    state = StateStore(str(tmp_path / "r.sqlite"))
    state.setup()
    ch = Addressed()
    now = ms(2026, 12, 1, 12)
    pager = Pager(c, state, {"app": ch}, gateway_id="gw-1", stop=threading.Event(), public_url="http://gw",
                  clock=lambda: now)
    pager.setup()
    pager.registry.add_resident("site-a", "r07", actor="test", name="Greta Johansson", flat="lgh 1102", team="t2")
    aid = state.raise_alert("fall", "site-a", "hub-1", now, "x")
    assert aid
    pager.notify(AlertEvent(kind="fall", action=Action.RAISED, alert_id=aid, site_id="site-a", device_id="hub-1",
                            resident_id="r07", at_ms=now, confidence=0.95))
    pager.wait_idle(5)
    [(to, e)] = ch.sent
    assert to == "tom"  # the resident's own team, not the site's
    assert (e.resident_name, e.flat) == ("Greta Johansson", "lgh 1102")
    from fallwatch.gateway.channels._common import body

    assert "Boende: lgh 1102 (r07)" in body(e, "sv")  # no name on a channel not trusted with it
    assert "Boende: Greta Johansson, lgh 1102 (r07)" in body(e, "sv", names=True)
