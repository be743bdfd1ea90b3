"""Room-only concerns: a night-time bed exit with no return, and prolonged daytime inactivity."""

from __future__ import annotations

import time

from fallwatch.edge.fusion import FusionSettings, RoomState
from fallwatch.protocol.frames import RoomEvent


def epoch_at_local_hour(hour: float) -> int:
    """An epoch (ms) whose local time of day is ``hour`` (so night/day do not depend on when tests run)."""
    now = time.time()
    lt = time.localtime(now)
    midnight = now - (lt.tm_hour * 3600 + lt.tm_min * 60 + lt.tm_sec)
    return int((midnight + hour * 3600) * 1000)


def ev(sensor: str, kind: str, room: str, **state: bool | int) -> RoomEvent:
    return RoomEvent(sensor_id=sensor, kind=kind, room=room, t_ms=0, state=dict(state))


def test_bed_exit_at_night_without_return_raises_one_concern() -> None:
    rs = RoomState(FusionSettings(bed_return_s=1800.0), start_epoch_ms=epoch_at_local_hour(23.0))
    rs.update(ev("bed-1", "bed", "bedroom", pressure=True), 0.0)
    rs.update(ev("bed-1", "bed", "bedroom", pressure=False), 60.0)  # 23:01: gets up
    rs.update(ev("pir-1", "pir", "hall", occupancy=True), 90.0)
    assert rs.concerns(60.0 + 1700) == []  # not yet
    got = rs.concerns(60.0 + 1800)
    assert [(c.code, c.sensor_id, c.room) for c in got] == [("bed_exit_no_return", "bed-1", "bedroom")]
    assert rs.concerns(60.0 + 2400) == []  # raised once


def test_bed_exit_with_return_or_in_daytime_is_fine() -> None:
    night = RoomState(FusionSettings(bed_return_s=1800.0), start_epoch_ms=epoch_at_local_hour(2.0))
    night.update(ev("bed-1", "bed", "bedroom", pressure=True), 0.0)
    night.update(ev("bed-1", "bed", "bedroom", pressure=False), 10.0)
    night.update(ev("bed-1", "bed", "bedroom", pressure=True), 600.0)  # back after a bathroom visit
    assert night.concerns(4000.0) == []
    day = RoomState(FusionSettings(bed_return_s=1800.0), start_epoch_ms=epoch_at_local_hour(10.0))
    day.update(ev("bed-1", "bed", "bedroom", pressure=True), 0.0)
    day.update(ev("bed-1", "bed", "bedroom", pressure=False), 10.0)  # morning: up for the day
    assert day.concerns(4000.0) == []


def test_prolonged_daytime_inactivity() -> None:
    rs = RoomState(FusionSettings(inactivity_s=3 * 3600.0), start_epoch_ms=epoch_at_local_hour(9.0))
    rs.update(ev("pir-1", "pir", "kitchen", occupancy=True), 0.0)
    rs.update(ev("pir-1", "pir", "kitchen", occupancy=True, heartbeat=True), 3600.0)  # heartbeats are not life
    assert rs.concerns(2 * 3600.0) == []
    got = rs.concerns(3 * 3600.0 + 1)
    assert [c.code for c in got] == ["prolonged_inactivity"]
    assert rs.concerns(3 * 3600.0 + 600) == []


def test_room_attribution_and_motion_after() -> None:
    rs = RoomState(start_epoch_ms=epoch_at_local_hour(12.0))
    rs.update(ev("pir-k", "pir", "kitchen", occupancy=True), 10.0)
    rs.update(ev("bath", "bathroom", "bathroom", occupancy=True), 50.0)
    assert rs.room_at(40.0) == "kitchen" and rs.room_at(60.0) == "bathroom"
    assert rs.motion_between(45.0, 100.0) == ["bathroom"] and rs.motion_between(60.0, 100.0) == []
