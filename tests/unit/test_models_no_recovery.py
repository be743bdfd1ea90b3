"""The no-recovery path on synthetic postures: who stays down is a fall, who gets up is not."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fallwatch.models import features as F
from fallwatch.models.no_recovery import NoRecoverySettings, NoRecoveryWatch, NoRooms

RATE = F.RATE_HZ


@dataclass
class Rooms:
    """A RoomView for tests: a bed sensor, occupied since ``since`` (None: empty)."""

    since: float | None = None
    sensed: bool = True

    def occupied_since(self) -> float | None:
        return self.since


def posture(tilt_deg: float, seconds: float, walking: bool = False, seed: int = 0) -> np.ndarray:
    """Acceleration (g) of a wearer ``tilt_deg`` from upright (pitch), still or walking."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    th = np.radians(tilt_deg)
    g = np.array([-np.sin(th), 0.0, np.cos(th)])
    acc = np.tile(g, (n, 1)) + rng.normal(0, 0.004, (n, 3))
    if walking:
        t = np.arange(n) / RATE
        acc += np.outer(0.2 * np.sin(2 * np.pi * 1.8 * t), g)
    return acc.astype(np.float32)


class Stream:
    """Feeds a watch in 0.5 s chunks on a running clock and collects its decisions."""

    def __init__(self, watch: NoRecoveryWatch, rooms: Rooms | NoRooms | None = None) -> None:
        self.w = watch
        self.rooms = rooms or NoRooms()
        self.t = 0.0
        self.decisions: list = []

    def feed(self, acc: np.ndarray) -> None:
        step = int(0.5 * RATE)
        for a in range(0, len(acc), step):
            chunk = acc[a:a + step]
            t = self.t + np.arange(1, len(chunk) + 1) / RATE
            self.t = float(t[-1])
            self.w.feed(t, chunk)
            self.decisions += self.w.poll(self.t, self.rooms)


def test_impact_from_upright_then_lying_still_is_one_alert_after_no_recovery_s() -> None:
    s = Stream(NoRecoveryWatch(NoRecoverySettings(no_recovery_s=45.0)))
    s.feed(posture(3, 10, walking=True))
    impact = s.t
    s.w.on_trigger(impact, 2.2, 0.1)  # the model was unsure (p=0.1): the fast path said nothing
    s.feed(posture(85, 44))
    assert s.decisions == []  # not before its time
    s.feed(posture(85, 20))
    assert len(s.decisions) == 1
    d = s.decisions[0]
    assert d.path == "no_recovery" and d.impact_t_s == impact
    assert 45.0 <= d.decided_t_s - impact <= 46.0 and d.lying_s >= 45.0
    codes = [r[0] for r in d.reasons]
    assert {"impact", "no_recovery", "lying_s"} <= set(codes)
    assert 0.5 < d.confidence < 1.0


def test_getting_up_and_walking_is_recovery_and_stands_a_fast_alert_down() -> None:
    s = Stream(NoRecoveryWatch())
    s.feed(posture(3, 10, walking=True))
    impact = s.t
    s.w.on_trigger(impact, 4.0, 0.99)
    s.feed(posture(85, 8))
    assert s.w.stand_down(impact, s.t, NoRooms()) is None  # still down: the alert stands
    s.feed(posture(3, 8, walking=True))
    why = s.w.stand_down(impact, s.t, NoRooms())
    assert why is not None and why[0] == "recovered"
    s.feed(posture(3, 60, walking=True))
    assert s.decisions == [] and s.w.counts["recovered"] == 1


def test_sitting_up_on_the_floor_is_no_recovery_for_the_fast_path() -> None:
    s = Stream(NoRecoveryWatch())
    s.feed(posture(3, 10, walking=True))
    impact = s.t
    s.w.on_trigger(impact, 4.0, 0.99)
    s.feed(posture(85, 5))
    s.feed(posture(20, 20))  # sat up, not walking
    assert s.w.stand_down(impact, s.t, NoRooms()) is None


def test_turning_over_while_lying_opens_no_watch_without_rooms() -> None:
    s = Stream(NoRecoveryWatch())
    s.feed(posture(85, 10))
    s.w.on_trigger(s.t, 1.8, 0.95)
    s.feed(posture(88, 80))
    assert s.decisions == [] and s.w.counts["events"] == 0


def test_turning_over_in_an_occupied_bed_stands_the_fast_alert_down() -> None:
    rooms = Rooms(since=0.0)
    s = Stream(NoRecoveryWatch(), rooms)
    s.feed(posture(85, 30))
    impact = s.t
    s.w.on_trigger(impact, 1.9, 0.97)
    s.feed(posture(88, 15))
    why = s.w.stand_down(impact, s.t, rooms)
    assert why is not None and why[0] == "in_occupied_bed"


def test_fall_from_bed_is_a_bed_exit_followed_by_lying_on_the_floor() -> None:
    rooms = Rooms(since=0.0)
    s = Stream(NoRecoveryWatch(NoRecoverySettings(no_recovery_s=40.0)), rooms)
    s.w.rooms_sensed = True
    s.feed(posture(85, 30))
    rooms.since = None  # the bed went empty...
    s.w.on_bed_exit(s.t, rooms)
    s.feed(posture(85, 0.5))
    s.w.on_trigger(s.t, 2.4, 0.0)  # ...and the body hit the floor (the model saw no posture change)
    impact = s.t
    s.feed(posture(80, 45))
    assert len(s.decisions) == 1
    d = s.decisions[0]
    assert d.impact_t_s == impact and "fall_from_bed" in [r[0] for r in d.reasons]


def test_getting_out_of_bed_and_walking_away_is_not_a_fall() -> None:
    rooms = Rooms(since=0.0)
    s = Stream(NoRecoveryWatch(), rooms)
    s.w.rooms_sensed = True
    s.feed(posture(85, 20))
    s.feed(posture(15, 5))  # sat up on the edge
    rooms.since = None
    s.w.on_bed_exit(s.t, rooms)
    s.feed(posture(3, 60, walking=True))
    assert s.decisions == []


def test_back_into_bed_after_a_bed_exit_is_not_a_fall() -> None:
    rooms = Rooms(since=0.0)
    s = Stream(NoRecoveryWatch(), rooms)
    s.w.rooms_sensed = True
    s.feed(posture(85, 20))
    rooms.since = None
    s.w.on_bed_exit(s.t, rooms)
    s.feed(posture(85, 4))
    rooms.since = s.t  # the sensor saw the wearer back in bed
    s.feed(posture(85, 80))
    assert s.decisions == [] and s.w.counts["in_bed"] == 1


def test_untriggered_drop_needs_rooms_that_tell_a_bed_from_the_floor() -> None:
    for sensed, want in ((True, 1), (False, 0)):
        rooms = Rooms(since=None, sensed=sensed)
        s = Stream(NoRecoveryWatch(), rooms)
        s.w.rooms_sensed = sensed
        s.feed(posture(3, 10, walking=True))
        s.feed(np.concatenate([posture(t, 0.5) for t in (20, 45, 70)]))  # a slide down, no impact
        s.feed(posture(80, 60))
        assert len(s.decisions) == want, sensed
        if want:
            assert "posture_drop" in [r[0] for r in s.decisions[0].reasons]


def test_no_decision_on_missing_data_then_one_when_the_samples_come() -> None:
    s = Stream(NoRecoveryWatch(NoRecoverySettings(no_recovery_s=45.0)))
    s.feed(posture(3, 10, walking=True))
    impact = s.t
    s.w.on_trigger(impact, 3.0, 0.2)
    s.feed(posture(85, 10))
    assert s.w.poll(impact + 60.0, NoRooms()) == []  # the wearable went quiet: nothing decided yet
    s.t = impact + 60.0
    s.feed(posture(85, 40))
    assert len(s.decisions) == 1


def test_moving_a_lot_on_the_floor_is_not_staying_down_still() -> None:
    s = Stream(NoRecoveryWatch())
    s.feed(posture(3, 10, walking=True))
    s.w.on_trigger(s.t, 3.0, 0.2)
    rng = np.random.default_rng(3)
    s.feed(np.concatenate([posture(float(rng.uniform(50, 110)), 0.5, walking=True, seed=k) for k in range(120)]))
    assert s.decisions == [] and s.w.counts["moving"] + s.w.counts["not_down"] == 1


def test_gate_min_fall_p_keeps_impacts_the_model_found_nothing_fall_like_in_from_opening_a_watch() -> None:
    """Issue 12's optional gate: an impact the fast model scored below ``min_fall_p`` opens no watch
    (sitting down heavily into a chair and staying slumped); one above it still does."""
    for p, alerts in ((0.0005, 0), (0.2, 1)):
        s = Stream(NoRecoveryWatch(NoRecoverySettings(no_recovery_s=45.0, min_fall_p=0.001)))
        s.feed(posture(3, 10, walking=True))
        s.w.on_trigger(s.t, 2.4, p)
        s.feed(posture(85, 60))
        assert len(s.decisions) == alerts, p


def _impact_while_lying(on: bool) -> tuple[Stream, float]:
    """30 s lying, an impact the fast path alerted on, then lying on at 100 deg for 15 s."""
    s = Stream(NoRecoveryWatch(NoRecoverySettings(stand_down_lying_before=on)))
    s.feed(posture(85, 30))
    impact = s.t
    s.w.on_trigger(impact, 1.9, 0.97)
    s.feed(posture(100, 15))
    return s, impact


def test_turning_over_while_lying_stands_the_fast_alert_down_without_rooms() -> None:
    """Without any room sensor: lying before the impact and down since is turning over (issue 12)."""
    s, impact = _impact_while_lying(on=True)
    why = s.w.stand_down(impact, s.t, NoRooms())
    assert why is not None and why[0] == "lying_before"
    off, impact = _impact_while_lying(on=False)
    assert off.w.stand_down(impact, off.t, NoRooms()) is None  # off (the default): the alert is sent


def test_a_fall_from_upright_or_sitting_is_never_stood_down_as_lying_before() -> None:
    for before in (3.0, 35.0):  # standing, sitting upright
        s = Stream(NoRecoveryWatch(NoRecoverySettings(stand_down_lying_before=True)))
        s.feed(posture(before, 20, walking=before < 10))
        impact = s.t
        s.w.on_trigger(impact, 3.0, 0.99)
        s.feed(posture(88, 15))
        assert s.w.stand_down(impact, s.t, NoRooms()) is None


def test_lying_before_then_sitting_up_is_not_stood_down_as_lying() -> None:
    """Down before, but up since: not "lying on"; left to the other rules (here: the alert stands)."""
    s = Stream(NoRecoveryWatch(NoRecoverySettings(stand_down_lying_before=True)))
    s.feed(posture(85, 30))
    impact = s.t
    s.w.on_trigger(impact, 1.9, 0.97)
    s.feed(posture(85, 3))
    s.feed(posture(20, 12))  # sat up on the edge of the bed, not walking
    assert s.w.stand_down(impact, s.t, NoRooms()) is None


def test_a_bed_exit_with_the_impact_keeps_the_fast_alert() -> None:
    """Lying in bed, the bed goes empty, an impact, lying on the floor: a fall from bed."""
    rooms = Rooms(since=0.0)
    s = Stream(NoRecoveryWatch(NoRecoverySettings(stand_down_lying_before=True)), rooms)
    s.w.rooms_sensed = True
    s.feed(posture(85, 30))
    rooms.since = None
    s.w.on_bed_exit(s.t, rooms)
    s.feed(posture(85, 1.0))
    impact = s.t
    s.w.on_trigger(impact, 2.5, 0.97)
    s.feed(posture(95, 15))
    assert s.w.stand_down(impact, s.t, rooms) is None


def test_a_bed_exit_keeps_the_fast_alert_even_without_a_watch_on_it() -> None:
    """The bed exit itself is remembered, not only its watch (which may have closed, or, as here,
    never opened with the no-recovery path switched off): the sim's one fall from bed with rooms
    that the fast path alone caught was stood down before this."""
    rooms = Rooms(since=0.0)
    s = Stream(NoRecoveryWatch(NoRecoverySettings(enabled=False, stand_down_lying_before=True)), rooms)
    s.feed(posture(85, 30))
    rooms.since = None
    s.w.on_bed_exit(s.t, rooms)
    s.feed(posture(85, 1.0))
    impact = s.t
    s.feed(posture(95, 15))
    assert s.w.watches == [] and s.w.stand_down(impact, s.t, rooms) is None
