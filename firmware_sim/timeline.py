"""A resident's day as a timeline of motion segments, with injected falls and ground truth.

The builder is a small posture state machine (standing / sitting / lying, in a room,
on a bed, chair or the floor) driven by the time of day and the resident's profile.
Injected events (falls, near-falls) are anchors: shortly before one, the builder steers
the resident into the posture it needs (walking for a trip, seated for a fall from a
chair, in bed for a fall from bed), then renders the event and what follows it
(lying on the floor, getting up alone or being helped up).

Every random draw happens here, once, from the resident's own generator, so rendering
the samples later is a pure function of the segments.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fallwatch.sim.motion import POSTURES, Segment
from fallwatch.sim.scenario import FALL_KINDS, Event, Profile, Resident

PRELUDE_S = 20.0  # start steering into an event's posture this long before it


#: A fall from bed begins with a roll to the bed's edge lasting this long (s).
PRE_ROLL_S = 1.0


@dataclass
class Truth:
    type: str
    t_start_s: float
    t_impact_s: float | None
    t_end_s: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Timeline:
    segments: list[Segment]
    truth: list[Truth]
    button_presses: list[float]  # sim times the wearer pressed the cancel button

    _hint: int = 0

    def segment_at(self, t: float) -> Segment:
        """The segment covering ``t``; O(1) for the near-monotonic queries of room sensors."""
        segs = self.segments
        i = self._hint
        if i < len(segs) and segs[i].t0 <= t and (i + 1 == len(segs) or t < segs[i + 1].t0):
            return segs[i]
        if i + 1 < len(segs) and segs[i + 1].t0 <= t and (i + 2 == len(segs) or t < segs[i + 2].t0):
            self._hint = i + 1
            return segs[i + 1]
        self._hint = self.index_at(t)
        return segs[self._hint]

    def index_at(self, t: float) -> int:
        """Index of the last segment starting at or before ``t`` (0 before the first)."""
        return max(0, bisect.bisect_right(self.segments, t, key=lambda s: s.t0) - 1)


def profile_at(resident: Resident, t_s: float) -> Profile:
    """The resident's profile on the day containing ``t_s`` (risk drift applied per day)."""
    d = resident.drift
    if d is None:
        return resident.profile
    days = max(0.0, np.floor(t_s / 86400.0) - d.start_day)
    if days <= 0:
        return resident.profile
    p = resident.profile

    def c(v: float, lo: float, hi: float) -> float:
        return float(min(hi, max(lo, v)))

    return p.model_copy(update={
        "gait_speed_mps": c(p.gait_speed_mps + d.gait_speed_mps * days, 0.15, 2.0),
        "cadence_spm": c(p.cadence_spm + d.cadence_spm * days, 50, 140),
        "stride_cv": c(p.stride_cv + d.stride_cv * days, 0.0, 0.3),
        "sit_to_stand_s": c(p.sit_to_stand_s + d.sit_to_stand_s * days, 0.8, 10.0),
        "night_bathroom_visits": c(p.night_bathroom_visits + d.night_bathroom_visits * days, 0, 8),
        "frailty": c(p.frailty + d.frailty * days, 0, 1),
    })


#: Median impact peak (g, at ~50 Hz) and lognormal spread per fall kind. Chosen so the
#: simulated peaks sit inside the range of the SisFall waist recordings (see tests).
IMPACT = {"forward": (5.2, 0.30), "backward": (5.6, 0.30), "sideways": (4.8, 0.30),
          "from_bed": (3.3, 0.25), "from_chair": (3.8, 0.25), "collapse": (2.9, 0.25)}


#: Depth of the free-fall dip before the impact (1 g minus the minimum, g), uniform in the range
#: per kind. SisFall's falls from sitting (F13-F15) and while sitting down or getting up
#: (F08-F12) dip to a median of 0.43-0.57 g (young adults), falls from walking deeper; a slow
#: collapse or a roll out of bed is partly supported all the way down.
FREE = {"forward": (0.55, 0.9), "backward": (0.55, 0.9), "sideways": (0.55, 0.9), "from_bed": (0.3, 0.6),
        "from_chair": (0.35, 0.65), "collapse": (0.3, 0.5)}


class TimelineBuilder:
    def __init__(self, resident: Resident, rooms: dict[str, str], *, seed: int, duration_s: float,
                 start_hour: float, events: list[Event], stairs: bool = False,
                 key: int = 0) -> None:
        self.r = resident
        self.rooms = rooms
        self.rng = np.random.default_rng([seed & 0xFFFFFFFF, key, 1])
        self.end = duration_s + 5.0
        self.start_hour = start_hour
        self.stairs = stairs
        self.wrist = resident.wearable.mount == "wrist"
        self.segments: list[Segment] = []
        self.visits: list[float] = []
        self.night_end = -1.0
        self.truth: list[Truth] = []
        self.buttons: list[float] = []
        self.t = 0.0
        self.posture = "stand"
        self.place = "none"
        start = resident.start_room
        self.room: str = start if start is not None and start in rooms.values() else rooms["living"]
        self.events = sorted(events, key=lambda e: e.at_s) + self._random_events(duration_s)
        self.events.sort(key=lambda e: e.at_s)

    # ------------------------------------------------------------------ helpers

    def _random_events(self, duration_s: float) -> list[Event]:
        p = self.r.profile
        out: list[Event] = []
        for typ, rate in (("fall", p.falls_per_day), ("near_fall", p.near_falls_per_day),
                          ("device_drop", p.device_drops_per_day)):
            n = int(self.rng.poisson(rate * duration_s / 86400.0)) if rate > 0 else 0
            for at in sorted(self.rng.uniform(min(60.0, duration_s / 4), duration_s * 0.95, n)):
                out.append(Event(type=typ, resident=self.r.id, at_s=float(at)))
        return out

    def hour(self, t: float) -> float:
        return (self.start_hour + t / 3600.0) % 24.0

    def is_night(self, t: float) -> bool:
        p = profile_at(self.r, t)
        h = self.hour(t)
        if p.bedtime_h > p.wake_h:
            return h >= p.bedtime_h or h < p.wake_h
        return p.bedtime_h <= h < p.wake_h

    def _sway(self, amp: float) -> list[tuple[float, float, float]]:
        f = self.rng.uniform([0.08, 0.25, 0.6], [0.2, 0.5, 1.1])
        a = amp * np.array([1.0, 0.5, 0.2]) * self.rng.uniform(0.7, 1.3, 3)
        ph = self.rng.uniform(0, 2 * np.pi, 3)
        return [(float(a[i]), float(f[i]), float(ph[i])) for i in range(3)]

    def _add(self, seg: Segment) -> Segment:
        self.segments.append(seg)
        self.t = seg.t1
        self.posture = seg.end
        return seg

    def _adl(self, seg: Segment, **details: Any) -> None:
        self.truth.append(Truth("adl", seg.t0, None, seg.t1, {"activity": seg.label, "room": seg.room,
                                                              **details}))

    # ------------------------------------------------------------------ segments

    def still(self, dur: float, label: str = "") -> Segment:
        p = profile_at(self.r, self.t)
        amp = {"stand": 0.6 + 1.2 * p.frailty, "sit": 0.3}.get(self.posture, 0.05)
        moving = self.posture == "stand" and self.rng.random() < 0.5
        return self._add(Segment("still", self.t, self.t + dur, self.posture, self.posture, self.room,
                                 self.place, moving, label=label or f"{self.posture}",
                                 params={"pose": POSTURES[self.posture], "sway_th": self._sway(amp),
                                         "sway_ph": self._sway(amp * 0.6)}))

    def walk_params(self, dur: float, p: Profile, stairs: int = 0) -> dict[str, Any]:
        cad = p.cadence_spm * (0.8 if stairs else 1.0) * self.rng.uniform(0.96, 1.04)
        step_t = 60.0 / cad
        n = int(dur / step_t) + 4
        times = np.clip(self.rng.normal(step_t, p.stride_cv * step_t, n), 0.4 * step_t, 2.0 * step_t)
        steps = np.concatenate(([0.0], np.cumsum(times))) + self.rng.uniform(0, step_t)  # phase offset
        steps = np.concatenate(([0.0], steps))
        amp = 1 + self.rng.normal(0, 0.4 * p.stride_cv + 0.03, len(steps))
        a_v = (0.05 + 0.18 * p.gait_speed_mps) * (1 - 0.3 * p.frailty) * (1.0, 1.3, 1.5)[stairs]
        turns = []
        if dur > 2.0:
            turns.append((0.6, float(self.rng.choice([-1, 1]) * self.rng.uniform(30, 180)), 0.6))
        if dur > 8.0 and self.rng.random() < 0.5:
            turns.append((float(self.rng.uniform(3, dur - 2)), float(self.rng.uniform(-90, 90)), 0.7))
        return {"steps": steps, "amp": amp, "dur": dur, "a_v": a_v, "a_ap": 0.55 * a_v,
                "a_ml": 0.25 * a_v + 0.04 * p.frailty, "a_heel": 2.0 * a_v * (1.0, 1.2, 1.6)[stairs],
                "lean": POSTURES["stand"][0] + 5 * p.frailty + (0, 8, -2)[stairs],
                "roll_deg": 2.5 + 2 * p.frailty, "yaw_amp": 2 * np.pi * cad / 120 * 5.0, "turns": turns,
                "wrist": self.wrist, "arm_deg": 15.0 * p.gait_speed_mps, "cadence": cad}

    def walk(self, to_room: str, distance_m: float | None = None, stairs: int = 0,
             max_dur: float | None = None) -> Segment:
        p = profile_at(self.r, self.t)
        dist = distance_m if distance_m is not None else float(self.rng.uniform(3.0, 12.0))
        speed = p.gait_speed_mps * self.rng.uniform(0.9, 1.1) * (0.6 if stairs else 1.0)
        dur = max(2.0, dist / speed)
        if max_dur is not None:
            dur = max(2.0, min(dur, max_dur))
        params = self.walk_params(dur, p, stairs)
        label = {0: "walk", 1: "stairs_up", 2: "stairs_down"}[stairs]
        seg = self._add(Segment("walk", self.t, self.t + dur, "stand", "stand", to_room, "none", True,
                                room_from=self.room, label=label, params=params))
        self._adl(seg, speed_mps=round(speed, 3), cadence_spm=round(params["cadence"], 2),
                  stride_cv=round(p.stride_cv, 4), distance_m=round(speed * dur, 2), room_from=self.room)
        self.room = to_room
        self.place = "none"
        return seg

    def transition(self, label: str, to: str, T: float, place: str, **params: Any) -> Segment:
        params = {"T": T, "from": POSTURES[self.posture], "to": POSTURES[to], **params}
        seg = self._add(Segment("transition", self.t, self.t + T, self.posture, to, self.room, place, True,
                                label=label, params=params))
        self.place = place
        return seg

    def sit_down(self, place: str) -> Segment:
        p = profile_at(self.r, self.t)
        T = p.sit_to_stand_s * self.rng.uniform(0.9, 1.15)
        seg = self.transition("sit_down", "sit", T, place, hump_th=float(self.rng.uniform(20, 35)), d_vert=-0.45,
                              bumps=[(0.78, float(self.rng.uniform(0.2, 0.45)) * (1 + p.frailty), 0.06)],
                              yaw_deg=float(self.rng.uniform(-180, 180)))
        self._adl(seg, duration_s=round(T, 3), place=place)
        return seg

    def stand_up(self) -> Segment:
        p = profile_at(self.r, self.t)
        T = p.sit_to_stand_s * self.rng.uniform(0.9, 1.1)
        push = float(np.clip(0.3 * 2.5 / T, 0.12, 0.45))  # seat-off push, stronger when quicker
        seg = self.transition("stand_up", "stand", T, "none", hump_th=float(self.rng.uniform(25, 40)),
                              d_vert=0.45, d_fwd=0.15, bumps=[(0.4, push, 0.15), (0.72, -0.5 * push, 0.15)])
        self._adl(seg, duration_s=round(T, 3))
        return seg

    def lie_down(self) -> Segment:
        side = str(self.rng.choice(["lie_back", "lie_left", "lie_right"], p=[0.5, 0.25, 0.25]))
        # the trunk lands on the mattress (SisFall D12/D13, lying down slowly/quickly: peaks of
        # about 1.16 / 1.47 g)
        land = float(np.clip(0.3 * np.exp(self.rng.normal(0, 0.4)), 0.05, 0.9))
        seg = self.transition("lie_down", side, float(self.rng.uniform(3, 5)), "bed", d_vert=-0.3,
                              bumps=[(0.85, land, 0.05)])
        self._adl(seg)
        return seg

    def get_up_from_bed(self) -> Segment:
        seg = self.transition("get_up", "sit", float(self.rng.uniform(3.5, 6)), "bed", d_vert=0.3,
                              hump_th=10.0)
        self._adl(seg)
        return seg

    def roll_in_bed(self) -> Segment:
        """Turning over: the hips lift a little, the trunk rolls and drops back onto the mattress.
        The landing bump is what makes SisFall's D14 (turning while lying) the detector's main
        false alarm: its peaks have a median of about 1.36 g and about a quarter reach the
        1.6 g trigger (tests/integration/test_sim_physics.py compares the two)."""
        to = str(self.rng.choice([s for s in ("lie_back", "lie_left", "lie_right") if s != self.posture]))
        T = float(self.rng.uniform(1.5, 3))
        land = float(np.clip(0.36 * np.exp(self.rng.normal(0, 0.6)), 0.08, 1.5))  # g above 1 g
        seg = self.transition("roll", to, T, "bed", hump_ph=float(self.rng.uniform(-15, 15)),
                              bumps=[(0.3, -0.6 * land, 0.12), (0.8, land, 0.05)])
        self._adl(seg, landing_g=round(1.0 + land, 3))
        return seg

    def pick_up(self) -> Segment:
        T = float(self.rng.uniform(2.5, 5.0))
        dip = float(self.rng.uniform(0.15, 0.4))  # how far the hips go down (m)
        seg = self.transition("pick_up", "stand", T, "none", hump_th=float(self.rng.uniform(55, 85)), dip=-dip,
                              bumps=[(0.2, -0.5 * dip, 0.12), (0.6, 0.1 + 0.6 * dip, 0.12)])
        self._adl(seg)
        return seg

    # ------------------------------------------------------------------ behaviour

    def to_standing(self) -> None:
        if self.posture.startswith("lie"):
            self.get_up_from_bed()
        if self.posture == "sit":
            self.stand_up()
        if self.posture.startswith("floor"):
            self.get_up_from_floor(assisted=False)

    def go_to(self, role: str, max_dur: float | None = None) -> None:
        room = self.rooms[role]
        self.to_standing()
        if self.room != room:
            self.walk(room, max_dur=max_dur)

    def go_to_bed(self) -> None:
        self.go_to("bedroom")
        self.sit_down("bed")
        self.still(float(self.rng.uniform(3, 20)))
        self.lie_down()

    def day_step(self, limit: float) -> None:
        """One daytime activity, ending by ``limit`` where possible."""
        room_left = max(2.0, limit - self.t)
        p = profile_at(self.r, self.t)
        if self.posture.startswith("lie"):
            self.get_up_from_bed()
            return
        if self.posture == "sit":
            self.stand_up()
            return
        choices = ["walk", "stand", "sit", "pick_up"] + (["stairs"] if self.stairs else [])
        w = np.array([0.45 * (0.5 + p.activity), 0.25, 0.2 * (1.5 - p.activity), 0.06] + ([0.04] if self.stairs
                                                                                           else []))
        what = str(self.rng.choice(choices, p=w / w.sum()))
        if what == "walk":
            others = [r for r in set(self.rooms.values()) if r != self.room]
            self.walk(str(self.rng.choice(sorted(others))), max_dur=room_left)
        elif what == "stand":
            self.still(min(room_left, float(self.rng.uniform(3, 20))))
        elif what == "sit" and room_left > 15:
            place = "bed" if self.room == self.rooms["bedroom"] else "chair"
            if self.rooms["bedroom"] == self.rooms["living"] == self.room:  # care-home room: bed or armchair
                place = str(self.rng.choice(["bed", "chair"]))
            if place == "chair" and self.room != self.rooms["living"]:
                place = "none"  # a kitchen chair or the toilet: no pressure sensor
            self.sit_down(place)
            sit_s = float(self.rng.uniform(15, 240)) * (1.5 - p.activity)  # active people sit less
            self.still(min(max(5.0, room_left - 10), sit_s), label="sit")
            self.stand_up()
        elif what == "pick_up" and room_left > 6:
            self.pick_up()
        elif what == "stairs" and room_left > 20:
            n_steps = int(self.rng.integers(8, 16))
            self.walk(self.room, distance_m=n_steps * 0.3, stairs=1)
            self.still(float(self.rng.uniform(2, 10)))
            self.walk(self.room, distance_m=n_steps * 0.3, stairs=2)
        else:
            self.still(min(room_left, float(self.rng.uniform(2, 8))))

    def _plan_night(self) -> None:
        """Draw tonight's bathroom visits: Poisson(mean of the day's profile), uniform over the night."""
        p = profile_at(self.r, self.t)
        wake = self.t + ((p.wake_h - self.hour(self.t)) % 24.0) * 3600.0
        n = int(self.rng.poisson(p.night_bathroom_visits))
        self.night_end = wake
        self.visits = sorted(float(x) for x in self.rng.uniform(self.t + 600.0, max(self.t + 601.0, wake - 900.0), n))

    def night_step(self, limit: float) -> None:
        if not self.posture.startswith("lie") or self.place != "bed":
            self.go_to_bed()
            self._plan_night()
            return
        if self.night_end <= self.t:
            self._plan_night()
        roll_at = self.t + float(self.rng.exponential(3600.0 / max(profile_at(self.r, self.t).turns_per_hour, 1e-3)))
        visit_at = self.visits[0] if self.visits else float("inf")
        nxt = min(roll_at, visit_at, self.night_end + float(self.rng.uniform(0, 900)))
        if nxt > limit:
            self.still(max(1.0, limit - self.t), label="lie")
            return
        self.still(max(5.0, nxt - self.t), label="lie")
        if nxt == visit_at:
            self.visits.pop(0)
            t0 = self.t
            self.get_up_from_bed()
            self.stand_up()
            self.walk(self.rooms["bathroom"])
            self.sit_down("none")
            self.still(float(self.rng.uniform(45, 200)), label="toilet")
            self.stand_up()
            self.walk(self.rooms["bedroom"])
            self.sit_down("bed")
            self.lie_down()
            self.truth.append(Truth("adl", t0, None, self.t, {"activity": "bathroom_visit", "night": True}))
        elif nxt == roll_at:
            self.roll_in_bed()

    def get_up_from_floor(self, assisted: bool) -> None:
        slow = 1.5 if assisted else 1.0
        self.transition("floor_to_sit", "floor_sit", float(self.rng.uniform(3, 6)) * slow, "floor",
                        d_vert=0.1, hump_ph=20.0)
        self.still(float(self.rng.uniform(2, 8)))
        self.transition("floor_to_stand", "stand", float(self.rng.uniform(3.5, 7)) * slow, "none",
                        d_vert=0.8, hump_th=45.0)

    # ------------------------------------------------------------------ events

    def prelude(self, ev: Event, kind: str | None) -> float:
        """Steer into the posture the event needs; return the earliest impact time."""
        if ev.type == "near_fall" or kind in ("forward", "backward", "sideways", "collapse"):
            self.to_standing()
            return self.t + 3.0  # at least a few steps first
        if kind == "from_chair":
            if not (self.posture == "sit" and self.place == "chair"):
                self.go_to("living")
                self.sit_down("chair")
            return self.t + 3.0
        if not (self.posture.startswith("lie") and self.place == "bed"):  # from_bed
            self.go_to_bed()
        return self.t + 3.0

    def fall(self, ev: Event) -> None:
        p = profile_at(self.r, self.t)
        kind = ev.kind or str(self.rng.choice(FALL_KINDS))
        earliest = self.prelude(ev, kind)
        impact = max(ev.at_s, earliest)
        T_fall = float(self.rng.uniform(2.5, 4.0) if kind == "collapse" else self.rng.uniform(0.6, 1.0))
        # the fall segment must hold the whole movement: a fall from bed starts with a roll to
        # the edge (PRE_ROLL_S), which would otherwise be cut off at the segment's start and
        # render as a jump in orientation (a gyro spike no body makes)
        lead = T_fall + 0.3 + (PRE_ROLL_S if kind == "from_bed" else 0.0)
        if kind in ("forward", "backward", "sideways", "collapse"):
            while (gap := impact - T_fall - 0.3 - self.t) >= 2.0:  # potter about, last bit walking
                if gap > 8.0 and self.rng.random() < 0.4:
                    self.still(min(gap - 4.0, float(self.rng.uniform(3, 8))))
                else:
                    self.walk(str(self.rng.choice(sorted(set(self.rooms.values())))), max_dur=gap)
            impact = max(impact, self.t + T_fall + 0.3)
        elif impact - lead - self.t > 0.5:
            self.still(impact - lead - self.t)
            impact = self.t + lead
        else:
            impact = self.t + lead
        side = str(self.rng.choice(["left", "right"]))
        if kind == "from_bed" and self.posture in ("lie_left", "lie_right"):
            side = self.posture.removeprefix("lie_")  # people roll out of bed on the side they lie on
        final = {"forward": "floor_front", "backward": "floor_back", "sideways": f"floor_{side}",
                 "from_bed": f"floor_{side}", "from_chair": str(self.rng.choice(["floor_front", f"floor_{side}"])),
                 "collapse": str(self.rng.choice(["floor_back", f"floor_{side}"]))}[kind]
        med, sd = IMPACT[kind]
        peak = float(np.clip(med * np.exp(self.rng.normal(0, sd)), 2.0, 15.0)) - 1.0
        spread = self.rng.normal(0, 0.25, 3)
        params: dict[str, Any] = {
            "T_fall": T_fall, "t_impact": impact - self.t, "from": POSTURES[self.posture], "to": POSTURES[final],
            "free": float(FREE[kind][0] + (FREE[kind][1] - FREE[kind][0]) * self.rng.random()),
            "peak": peak, "width": float(self.rng.uniform(0.025, 0.04)), "spread": spread.tolist(),
            "gyro_kick": self.rng.normal(0, 200, 3).tolist(), "yaw_deg": float(self.rng.uniform(-40, 40)),
        }
        if kind == "from_bed":
            params["pre_roll"] = PRE_ROLL_S
            params["roll_to"] = 60.0 if side == "left" else -60.0
            params["from"] = POSTURES[self.posture]
        t_start = self.t
        settle = 2.0
        self._add(Segment("fall", self.t, impact + settle, self.posture, final, self.room, "floor", True,
                          label="fall", params=params))
        self.place = "floor"
        cancelled = ev.cancelled if ev.cancelled is not None else bool(self.rng.random() < p.cancel_prob)
        recovered = ev.recovered if ev.recovered is not None else (
            cancelled or bool(self.rng.random() < p.recover_prob * (1 - 0.5 * p.frailty)))
        if ev.lying_s is not None:
            lying = ev.lying_s
        elif cancelled:
            lying = float(self.rng.uniform(8, 20))
        else:
            lying = float(self.rng.uniform(20, 120) if recovered else self.rng.uniform(120, 900))
        lying = max(lying, settle + 1.0)
        press = None
        if cancelled:
            press = impact + float(self.rng.uniform(3, min(10, max(3.5, lying - 1))))
            self.buttons.append(press)
        moves = self.lie_on_floor(impact + lying, attempts=not recovered)
        self.get_up_from_floor(assisted=not recovered)
        self.truth.append(Truth("fall", t_start, impact, self.t, {
            "kind": kind, "lying_s": round(lying, 3), "recovered": recovered, "cancelled_by_wearer": cancelled,
            "floor_movements": moves,
            "button_press_s": press, "peak_g": round(peak + 1.0, 3), "fall_duration_s": round(T_fall, 3),
            "final_posture": final, "room": self.room, "requested_at_s": ev.at_s}))

    def lie_on_floor(self, until: float, attempts: bool) -> int:
        """Lie after a fall until ``until``; someone who cannot get up shifts and tries now and then.

        The first attempt comes no sooner than 25 s after the impact (the body stays still
        while the person takes stock), then about one every 40 s: the trunk pitches and
        rolls by 5-15 degrees for 2-4 s and settles back. Returns how many there were.
        """
        n = int(max(0.0, until - self.t - 25.0) // 40.0) if attempts else 0
        times = sorted(float(x) for x in self.rng.uniform(self.t + 25.0, max(self.t + 25.0, until - 5.0), n))
        moves = 0
        for t_move in times:
            if t_move < self.t + 1.0:
                continue
            self.still(t_move - self.t, label="lying_on_floor")
            sign = self.rng.choice([-1.0, 1.0], 2)
            T = float(self.rng.uniform(2.0, 4.0))
            self.transition("floor_movement", self.posture, T, "floor",
                            hump_th=float(sign[0] * self.rng.uniform(5, 15)),
                            hump_ph=float(sign[1] * self.rng.uniform(5, 15)))
            moves += 1
        if until - self.t > 0:
            self.still(until - self.t, label="lying_on_floor")
        return moves

    def near_fall(self, ev: Event) -> None:
        earliest = self.prelude(ev, None)
        t_trip = max(ev.at_s, earliest)
        while (gap := t_trip - 0.8 - self.t) >= 2.0:
            if gap > 8.0 and self.rng.random() < 0.4:
                self.still(min(gap - 4.0, float(self.rng.uniform(3, 8))))
            else:
                self.walk(str(self.rng.choice(sorted(set(self.rooms.values())))), max_dur=gap)
        p = profile_at(self.r, self.t)
        dur = 3.5
        walk = self.walk_params(dur, p)
        walk["turns"] = []
        jolt = float(self.rng.uniform(0.5, 1.2))
        params = {"t_trip": 0.8, "lean": walk["lean"], "pitch_deg": float(self.rng.uniform(12, 30)),
                  "roll_deg": float(self.rng.normal(0, 8)), "jolt_g": jolt, "yaw_kick": float(self.rng.normal(0, 60)),
                  "steps": [(0.35, float(self.rng.uniform(0.6, 1.2))), (0.7, float(self.rng.uniform(0.4, 0.9)))],
                  "walk": walk}
        seg = self._add(Segment("stumble", self.t, self.t + dur, "stand", "stand", self.room, "none", True,
                                label="near_fall", params=params))
        self.truth.append(Truth("near_fall", seg.t0, seg.t0 + 0.8, seg.t1, {
            "pitch_deg": round(params["pitch_deg"], 2), "room": self.room}))

    def device_drop(self, ev: Event) -> None:
        """The wearer takes the wearable off and drops it: a hard negative for fall detection.

        The device free-falls ~1 m tumbling, hits the floor harder than a body does (no
        soft tissue), lies still in a random orientation, and is picked up and worn again.
        The resident stays upright and moving throughout.
        """
        self.to_standing()
        t0 = self.t
        if ev.at_s - 0.5 - self.t > 0.5:
            self.still(ev.at_s - 0.5 - self.t)
        rng = self.rng
        rest_pose = (float(rng.uniform(-80, 80)), float(rng.uniform(-170, 170)))
        peak = float(rng.uniform(5.0, 14.0))
        params: dict[str, Any] = {
            "T_fall": 0.45, "t_impact": 0.5, "from": POSTURES["stand"], "to": rest_pose, "free": 1.0,
            "free_exp": 0.0, "peak": peak - 1.0, "width": 0.012, "spread": rng.normal(0, 0.5, 3).tolist(),
            "gyro_kick": rng.normal(0, 400, 3).tolist(), "yaw_deg": float(rng.uniform(-300, 300))}
        start = self.t
        self.segments.append(Segment("fall", start, start + 1.3, "stand", "stand", self.room, "none", True,
                                     label="device_drop", params=params))
        rest = float(rng.uniform(3.0, 20.0))
        self.segments.append(Segment("still", start + 1.3, start + 1.3 + rest, "stand", "stand", self.room,
                                     "none", True, label="device_on_floor",
                                     params={"pose": rest_pose, "sway_th": [], "sway_ph": []}))
        T = float(rng.uniform(1.2, 2.0))
        self.segments.append(Segment("transition", start + 1.3 + rest, start + 1.3 + rest + T, "stand", "stand",
                                     self.room, "none", True, label="device_picked_up",
                                     params={"T": T, "from": rest_pose, "to": POSTURES["stand"], "d_vert": 0.8}))
        self.t = start + 1.3 + rest + T
        self.truth.append(Truth("device_drop", t0, start + 0.5, self.t, {
            "peak_g": round(peak, 3), "rest_s": round(rest, 3), "room": self.room, "requested_at_s": ev.at_s}))

    def build(self) -> Timeline:
        pending = list(self.events)
        while self.t < self.end:
            nxt = pending[0] if pending else None
            if nxt is not None and self.t >= nxt.at_s - PRELUDE_S:
                pending.pop(0)
                if nxt.type == "fall":
                    self.fall(nxt)
                elif nxt.type == "device_drop":
                    self.device_drop(nxt)
                else:
                    self.near_fall(nxt)
                continue
            limit = min(self.end, nxt.at_s - PRELUDE_S if nxt else self.end)
            if self.is_night(self.t):
                self.night_step(limit)
            else:
                self.day_step(limit)
        return Timeline(self.segments, self.truth, self.buttons)
