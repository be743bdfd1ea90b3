"""Scenarios: who lives where, which devices they have, what happens, and what breaks.

A scenario is a TOML file (``firmware_sim/scenarios/*.toml``) validated into the typed
:class:`Scenario` below; unknown keys are rejected, so a typo fails loudly at load time
with a readable report rather than silently changing the experiment. Large fleets are
described with ``[[generate]]`` templates instead of listing thousands of devices.
The file format is documented in docs/simulator.md.
"""

from __future__ import annotations

import random
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fallwatch.config import validation_report
from fallwatch.protocol.ids import ID_PATTERN as ID

FallKind = Literal["forward", "backward", "sideways", "from_bed", "from_chair", "collapse"]
FALL_KINDS: tuple[str, ...] = ("forward", "backward", "sideways", "from_bed", "from_chair", "collapse")
RoomKind = Literal["pir", "bed", "chair", "door", "bathroom"]
FaultType = Literal["loss", "duplicate", "reorder", "garbage", "clock_skew", "clock_jump", "brownout",
                    "battery", "stuck", "saturated", "silent"]


class ScenarioError(ValueError):
    """A scenario that failed validation; ``str()`` is a readable multi-line report."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, regex_engine="python-re")  # ids: fallwatch.protocol.ids


class Profile(_Strict):
    """How a resident moves and lives; the fall-risk factors are the measurable ones."""

    age: int = Field(default=82, ge=18, le=110)
    gait_speed_mps: float = Field(default=0.9, gt=0.1, le=2.0)
    cadence_spm: float = Field(default=100.0, ge=50, le=140)  # steps per minute
    stride_cv: float = Field(default=0.03, ge=0.0, le=0.3)  # step-to-step time variability
    sit_to_stand_s: float = Field(default=2.5, ge=0.8, le=10.0)
    frailty: float = Field(default=0.3, ge=0.0, le=1.0)  # 0 fit .. 1 very frail: slower, more sway
    night_bathroom_visits: float = Field(default=1.0, ge=0.0, le=8.0)  # mean per night
    bedtime_h: float = Field(default=22.0, ge=0, lt=24)
    wake_h: float = Field(default=7.0, ge=0, lt=24)
    activity: float = Field(default=0.5, ge=0.0, le=1.0)  # share of waking time on the move
    falls_per_day: float = Field(default=0.0, ge=0.0, le=50.0)  # random falls on top of injected ones
    near_falls_per_day: float = Field(default=0.0, ge=0.0, le=200.0)
    device_drops_per_day: float = Field(default=0.0, ge=0.0, le=50.0)  # wearable dropped while taken off
    cancel_prob: float = Field(default=0.15, ge=0.0, le=1.0)  # falls the wearer cancels (button)
    recover_prob: float = Field(default=0.5, ge=0.0, le=1.0)  # gets up alone after a fall
    turns_per_hour: float = Field(default=2.0, ge=0.0, le=60.0)  # turning over in bed at night


class Drift(_Strict):
    """Per-day change of a profile: the slow decline a fall-risk model should find."""

    start_day: float = Field(default=0.0, ge=0)
    gait_speed_mps: float = 0.0
    cadence_spm: float = 0.0
    stride_cv: float = 0.0
    sit_to_stand_s: float = 0.0
    night_bathroom_visits: float = 0.0
    frailty: float = 0.0


class ReplaySpec(_Strict):
    """Drive a wearable from a recorded file instead of the motion model."""

    path: Path
    format: Literal["csv", "npz", "sisfall"] = "csv"
    loop: bool = True


class Wearable(_Strict):
    id: str | None = Field(default=None, pattern=ID)  # default: wear-<resident>
    mount: Literal["waist", "wrist"] = "waist"
    rate_hz: float = Field(default=50.0, ge=50.0, le=200.0)
    frame_s: float = Field(default=0.5, ge=0.1, le=2.0)  # one radio frame per frame_s
    acc_range_g: Literal[2, 4, 8, 16] = 16
    gyro_range_dps: Literal[250, 500, 1000, 2000] = 2000
    acc_noise_g: float = Field(default=0.004, ge=0.0, le=0.2)  # rms white noise
    acc_bias_g: float = Field(default=0.02, ge=0.0, le=0.5)  # per-axis zero-g offset (1 sd)
    gyro_noise_dps: float = Field(default=0.07, ge=0.0, le=5.0)
    gyro_bias_dps: float = Field(default=1.0, ge=0.0, le=20.0)
    battery_pct: float = Field(default=100.0, ge=0.0, le=100.0)
    drain_pct_per_h: float = Field(default=0.4, ge=0.0, le=100.0)
    rssi_dbm: float = Field(default=-65.0, ge=-110.0, le=0.0)
    replay: ReplaySpec | None = None


class Resident(_Strict):
    id: str = Field(pattern=ID)
    profile: Profile = Profile()
    drift: Drift | None = None
    wearable: Wearable = Wearable()
    start_room: str | None = None


class RoomSensor(_Strict):
    id: str = Field(pattern=ID)
    kind: RoomKind
    room: str = Field(pattern=ID)
    timeout_s: float = Field(default=60.0, ge=1.0, le=3600.0)  # PIR retrigger / occupancy timeout
    heartbeat_s: float = Field(default=600.0, ge=5.0, le=86400.0)


class Site(_Strict):
    """One home (or care-home unit) with one edge hub."""

    site_id: str = Field(pattern=ID)
    hub_id: str = Field(pattern=ID)
    rooms: list[str] = ["bedroom", "bathroom", "kitchen", "living", "hall"]
    stairs: bool = False
    residents: list[Resident] = []
    sensors: list[RoomSensor] = []

    @model_validator(mode="after")
    def _rooms(self) -> Site:
        for s in self.sensors:
            if s.room not in self.rooms:
                raise ValueError(f"sensor {s.id} is in unknown room {s.room!r}")
        for r in self.residents:
            if r.start_room is not None and r.start_room not in self.rooms:
                raise ValueError(f"resident {r.id} starts in unknown room {r.start_room!r}")
        return self


class Generate(_Strict):
    """A template that expands into ``sites`` similar sites (for care homes and load tests)."""

    sites: int = Field(ge=1, le=100_000)
    prefix: str = Field(default="home", pattern=ID)
    residents_per_site: int = Field(default=1, ge=0, le=100)
    room_sensors: list[RoomKind] = ["pir", "bed", "door", "bathroom"]
    profile: Profile = Profile()
    drift: Drift | None = None
    wearable: Wearable = Wearable()
    vary: float = Field(default=0.15, ge=0.0, le=0.5)  # relative spread of profile values
    stairs: bool = False


class Event(_Strict):
    """An injected event at a given time (seconds since scenario start)."""

    type: Literal["fall", "near_fall", "device_drop"]
    resident: str = Field(pattern=ID)
    at_s: float = Field(ge=0)
    kind: FallKind | None = None  # falls only; default drawn at random
    lying_s: float | None = Field(default=None, ge=0)
    recovered: bool | None = None
    cancelled: bool | None = None


class Fault(_Strict):
    """A device or link fault. ``sensor`` is an fnmatch pattern over sensor ids."""

    type: FaultType
    sensor: str = "*"
    rate: float = Field(default=0.0, ge=0.0, le=1.0)  # loss/duplicate/reorder/garbage probability
    burst_len: float = Field(default=1.0, ge=1.0)  # loss: mean burst length in frames (1 = independent)
    max_delay_frames: int = Field(default=3, ge=1, le=50)  # reorder
    ppm: float = Field(default=0.0, ge=-10_000, le=10_000)  # clock_skew
    jump_ms: int = 0  # clock_jump
    at_s: float | None = Field(default=None, ge=0)
    duration_s: float | None = Field(default=None, gt=0)  # stuck/saturated/silent; None = to the end
    reboot_s: float = Field(default=3.0, ge=0.1, le=600)  # brownout: time without frames
    start_pct: float | None = Field(default=None, ge=0, le=100)  # battery
    drain_pct_per_h: float | None = Field(default=None, ge=0)  # battery
    brownout_below_pct: float = Field(default=5.0, ge=0, le=50)  # battery: reboots below this
    axis: int = Field(default=2, ge=0, le=2)  # saturated


class Scenario(_Strict):
    name: str = "scenario"
    seed: int = 0
    duration_s: float = Field(default=600.0, gt=0)
    start_epoch_ms: int | None = None  # None: wall clock when the Fleet is created
    start_hour: float = Field(default=10.0, ge=0, lt=24)  # local time of day at sim time 0
    sites: list[Site] = []
    generate: list[Generate] = []
    events: list[Event] = []
    faults: list[Fault] = []

    @model_validator(mode="after")
    def _unique(self) -> Scenario:
        ids: set[str] = set()
        hubs: set[str] = set()
        for site in self.sites:
            if site.hub_id in hubs:
                raise ValueError(f"duplicate hub id {site.hub_id}")
            hubs.add(site.hub_id)
            wearables = [r.wearable.id or f"wear-{r.id}" for r in site.residents]
            for sid in [s.id for s in site.sensors] + [r.id for r in site.residents] + wearables:
                if sid in ids:
                    raise ValueError(f"duplicate id {sid}")
                ids.add(sid)
        residents = {r.id for s in self.sites for r in s.residents}
        for ev in self.events:
            if ev.resident not in residents and not self.generate:
                raise ValueError(f"event for unknown resident {ev.resident}")
        return self

    def expanded(self) -> Scenario:
        """The same scenario with every ``[[generate]]`` template turned into explicit sites."""
        if not self.generate:
            return self
        sites = list(self.sites)
        for gi, gen in enumerate(self.generate):
            rng = random.Random(f"{self.seed}:{gi}:{gen.prefix}")
            for i in range(gen.sites):
                sites.append(_generated_site(gen, i, rng))
        known = {r.id for s in sites for r in s.residents}
        unknown = sorted({ev.resident for ev in self.events} - known)
        if unknown:
            raise ScenarioError(f"events for unknown residents: {', '.join(unknown[:5])}")
        return self.model_copy(update={"sites": sites, "generate": []})


def _vary(p: Profile, spread: float, rng: random.Random) -> Profile:
    def f(v: float, lo: float, hi: float) -> float:
        return min(hi, max(lo, v * (1 + rng.uniform(-spread, spread))))

    return p.model_copy(update={
        "age": int(f(p.age, 60, 105)),
        "gait_speed_mps": f(p.gait_speed_mps, 0.3, 1.6),
        "cadence_spm": f(p.cadence_spm, 70, 130),
        "stride_cv": f(p.stride_cv, 0.01, 0.2),
        "sit_to_stand_s": f(p.sit_to_stand_s, 1.0, 8.0),
        "frailty": f(p.frailty, 0.0, 1.0),
        "night_bathroom_visits": f(p.night_bathroom_visits, 0.0, 6.0),
    })


def _generated_site(gen: Generate, i: int, rng: random.Random) -> Site:
    site = f"{gen.prefix}-{i + 1:05d}" if gen.sites > 999 else f"{gen.prefix}-{i + 1:03d}"
    hub = f"hub-{site}"
    residents = [Resident(id=f"r-{site}-{j + 1}" if gen.residents_per_site > 1 else f"r-{site}",
                          profile=_vary(gen.profile, gen.vary, rng), drift=gen.drift, wearable=gen.wearable)
                 for j in range(gen.residents_per_site)]
    rooms = ["bedroom", "bathroom", "kitchen", "living", "hall"]
    if gen.residents_per_site > 1:  # a care-home unit: one room per resident plus shared rooms
        rooms = [f"room-{j + 1}" for j in range(gen.residents_per_site)] + ["bathroom", "dining", "hall"]
    sensors = []
    for kind in gen.room_sensors:
        if kind in ("pir", "bed", "chair") and gen.residents_per_site > 1:
            sensors += [RoomSensor(id=f"{kind}-{site}-{j + 1}", kind=kind, room=f"room-{j + 1}")
                        for j in range(gen.residents_per_site)]
        else:
            room = {"pir": "living", "bed": "bedroom", "chair": "living", "door": "hall",
                    "bathroom": "bathroom"}[kind]
            sensors.append(RoomSensor(id=f"{kind}-{site}", kind=kind, room=room))
    return Site(site_id=site, hub_id=hub, rooms=rooms, stairs=gen.stairs, residents=residents, sensors=sensors)


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario TOML file; raises :class:`ScenarioError` with a report."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc}") from None
    raw.setdefault("name", path.stem)
    try:
        return Scenario.model_validate(raw)
    except ValidationError as exc:
        raise ScenarioError(validation_report(f"invalid scenario {path}", exc)) from None


def flat_site(n: int, resident: Resident | None = None) -> Site:
    """A one-resident flat with the usual room sensors (PIR per room, bed, chair, door, bathroom)."""
    site = f"flat-{n:02d}"
    rid = resident.id if resident else f"r{n:02d}"
    rooms = ["bedroom", "bathroom", "kitchen", "living", "hall"]
    sensors = [RoomSensor(id=f"pir-{rid}-{room}", kind="pir", room=room) for room in ("bedroom", "kitchen",
                                                                                      "living")]
    sensors += [RoomSensor(id=f"bed-{rid}", kind="bed", room="bedroom"),
                RoomSensor(id=f"chair-{rid}", kind="chair", room="living"),
                RoomSensor(id=f"door-{rid}", kind="door", room="hall"),
                RoomSensor(id=f"bath-{rid}", kind="bathroom", room="bathroom")]
    return Site(site_id=site, hub_id=f"hub-{site}", rooms=rooms, residents=[resident or Resident(id=rid)],
                sensors=sensors)


#: How long a demo resident who does not get up alone lies before being helped up (s): longer
#: than the edge's no-recovery time (45 s) plus the time for help to come.
UNRECOVERED_LYING_S = 75.0


def demo_scenario(residents: int = 3, duration_s: float = 120.0, falls: int = 1, seed: int = 7,
                  near_falls: int = 0) -> Scenario:
    """One flat (site) per resident, one hub each, a wearable plus room sensors.

    At least ``falls`` falls per resident are injected at random times in the middle
    part of the run (so detection has context before and lying time after), with
    varied kinds; the wearer cancels none of the first fall per resident so the demo
    always has something to detect.
    """
    rng = random.Random(seed)
    sites = []
    events = []
    for i in range(residents):
        rid = f"r{i + 1:02d}"
        prof = Profile(age=rng.randint(72, 92), gait_speed_mps=rng.uniform(0.6, 1.1),
                       cadence_spm=rng.uniform(88, 112), stride_cv=rng.uniform(0.02, 0.06),
                       sit_to_stand_s=rng.uniform(1.8, 3.5), frailty=rng.uniform(0.1, 0.6), cancel_prob=0.0)
        sites.append(flat_site(i + 1, Resident(id=rid, profile=prof, start_room="living")))
        lo, hi = 0.25 * duration_s, max(0.25 * duration_s + 1, 0.6 * duration_s)
        slots = _spread(rng, lo, hi, falls + near_falls, min_gap=min(60.0, (hi - lo) / max(falls, 1)))
        for k, at in enumerate(slots):
            if k < falls:
                kind = FALL_KINDS[(i + k) % len(FALL_KINDS)]
                recovered = k % 2 == 1
                # someone who cannot get up lies until help comes (after the alert), not 20 s
                lying = min(60.0, max(20.0, 0.2 * duration_s)) if recovered else UNRECOVERED_LYING_S
                events.append(Event(type="fall", resident=rid, at_s=round(at, 2), kind=kind,
                                    lying_s=lying, recovered=recovered, cancelled=False))
            else:
                events.append(Event(type="near_fall", resident=rid, at_s=round(at, 2)))
    return Scenario(name="demo", seed=seed, duration_s=duration_s, sites=sites, events=events)


def _spread(rng: random.Random, lo: float, hi: float, n: int, min_gap: float) -> list[float]:
    """``n`` sorted times in [lo, hi] at least ``min_gap`` apart when they fit."""
    if n <= 0:
        return []
    gap = min(min_gap, (hi - lo) / n)
    free = max(0.0, (hi - lo) - gap * (n - 1))
    offsets = sorted(rng.uniform(0, free) for _ in range(n))
    return [lo + o + k * gap for k, o in enumerate(offsets)]
