"""Simulated evaluation of the fall detector: elderly-style falls and whole days and nights.

SisFall's falls are lab falls by young adults onto mats, and it has no falls from bed. The
simulator's falls are slower and softer (slow collapses, falls from sitting and from bed,
``tests/integration/test_sim_physics.py`` compares them with SisFall), so this is where the
elderly-style figures come from — and they are **simulation**, said so wherever they appear.

Each fall is one simulated elderly resident (varied profile) who falls once and does not get
up; each ADL stretch is a resident living a day or a night (turning over in bed included). The
waist wearable's samples are rendered straight from the timeline (the device's noise and bias
added, no radio: transport is tested elsewhere) and streamed through
:func:`fallwatch.models.fall_eval.stream_paths`, the code ``eval-fall`` runs, with the rooms
read off the timeline: a bed or chair sensor is occupied while the wearer is on it, and a bed
going empty is a bed exit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fallwatch.models import features as F
from fallwatch.models.detector import DetectorSettings, WindowScorer
from fallwatch.models.fall_eval import stream_paths
from fallwatch.models.no_recovery import NoRecoveryWatch, NoRooms, RoomView
from fallwatch.sim.motion import render_block
from fallwatch.sim.scenario import FALL_KINDS, Event, Profile, Resident
from fallwatch.sim.timeline import Timeline, TimelineBuilder

ROLES = {"bedroom": "bedroom", "living": "living", "kitchen": "kitchen", "bathroom": "bathroom", "hall": "hall"}
FALL_AT_S = 90.0
AFTER_S = 90.0  # simulated after each fall (the wearer stays down)


class TimelineRooms:
    """Bed and chair pressure sensors read off a timeline; ``now_s`` set by the stream's tick."""

    sensed = True

    def __init__(self, tl: Timeline) -> None:
        self.tl = tl
        self.now_s = 0.0
        self.since: float | None = None
        self._place = "none"  # the bed or chair last occupied

    def occupied_since(self) -> float | None:
        return self.since

    def update(self, now: float) -> bool:
        """Advance to ``now``; True if a bed just went empty (a bed exit)."""
        place = self.tl.segment_at(now).place
        was = self.since is not None
        occupied = place in ("bed", "chair")
        exit_ = was and not occupied and self._place == "bed"
        if occupied and not was:
            self.since = now
        elif not occupied:
            self.since = None
        self._place = place if occupied else self._place
        self.now_s = now
        return exit_


def _profile(rng: np.random.Generator, **kw: Any) -> Profile:
    return Profile(age=int(rng.integers(75, 96)), gait_speed_mps=float(rng.uniform(0.45, 0.95)),
                   cadence_spm=float(rng.uniform(80, 110)), stride_cv=float(rng.uniform(0.03, 0.09)),
                   sit_to_stand_s=float(rng.uniform(2.0, 4.5)), frailty=float(rng.uniform(0.3, 0.8)),
                   cancel_prob=0.0, **kw)


@dataclass
class _Run:
    kind: str
    truth_t: list[float]  # impact times of the falls (empty for ADL)
    hours: float
    in_bed_s: float
    turns: int
    triggers: int
    alerts: dict[str, list[Any]]  # path -> decisions
    in_bed_alerts: dict[str, int]


def _simulate(resident: Resident, duration_s: float, start_hour: float, events: list[Event], seed: int,
              model: WindowScorer, settings: DetectorSettings | None) -> _Run:
    tl = TimelineBuilder(resident, ROLES, seed=seed, duration_s=duration_s, start_hour=start_hour,
                         events=events).build()
    rate = F.RATE_HZ
    t = np.arange(int(duration_s * rate)) / rate
    acc = np.empty((len(t), 3), dtype=np.float32)
    gyro = np.empty((len(t), 3), dtype=np.float32)
    rng = np.random.default_rng(seed + 17)
    bias = rng.normal(0, 0.02, 3)
    for a in range(0, len(t), 30_000):
        b = min(len(t), a + 30_000)
        ab, gb = render_block(tl.segments, t[a:b])
        acc[a:b] = ab + bias + rng.normal(0, 0.004, (b - a, 3))
        gyro[a:b] = gb + rng.normal(0, 0.07, (b - a, 3))
    rooms_view = TimelineRooms(tl)
    rooms: dict[str, RoomView] = {"none": NoRooms(), "rooms": rooms_view}
    in_bed = [0.0]

    def tick(now: float, watches: dict[str, NoRecoveryWatch]) -> None:
        if rooms_view.update(now):
            watches["rooms"].on_bed_exit(now, rooms_view)
        if tl.segment_at(now).place == "bed":
            in_bed[0] += 0.5

    st = stream_paths(model, t, acc, gyro, acc, rooms, settings=settings, tick=tick)
    dedup = (settings or DetectorSettings()).dedup_s
    alerts = {"fast": st.alerts, "no_recovery": st.no_recovery["none"], "no_recovery_rooms": st.no_recovery["rooms"],
              "combined": st.combined("none", dedup), "combined_rooms": st.combined("rooms", dedup)}
    in_bed_alerts = {k: sum(tl.segment_at(d.impact_t_s).place == "bed" for d in v) for k, v in alerts.items()}
    falls = [tr.t_impact_s for tr in tl.truth if tr.type == "fall" and tr.t_impact_s is not None]
    turns = sum(1 for tr in tl.truth if tr.type == "adl" and tr.details.get("activity") == "roll")
    kind = (events[0].kind or "fall") if events else "adl"
    return _Run(kind, falls, duration_s / 3600, in_bed[0], turns, st.triggers, alerts, in_bed_alerts)


def evaluate(model: WindowScorer, *, falls_per_kind: int = 20, kinds: Iterable[str] = FALL_KINDS,
             adl_residents: int = 4, adl_hours: float = 4.0, seed: int = 12, settings: DetectorSettings | None = None,
             progress: bool = False) -> dict[str, Any]:
    """Sensitivity per fall kind and path; false alarms per hour over simulated days and nights."""
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    jobs: list[tuple[str, int]] = [(k, i) for k in kinds for i in range(falls_per_kind)]
    kinds_out: dict[str, Any] = {}
    paths = ("fast", "no_recovery", "combined", "no_recovery_rooms", "combined_rooms")
    by_kind: dict[str, list[_Run]] = {}
    for kind, i in tqdm(jobs, desc="sim falls", unit="fall", disable=not progress):
        res = Resident(id=f"f{i:03d}", profile=_profile(rng, night_bathroom_visits=0.0), start_room="living")
        night = kind == "from_bed"
        ev = Event(type="fall", resident=res.id, at_s=FALL_AT_S, kind=kind,
                   lying_s=AFTER_S + 60.0, recovered=False, cancelled=False)
        run = _simulate(res, FALL_AT_S + 30.0 + AFTER_S, 2.0 if night else 10.0, [ev],
                        int(rng.integers(1 << 30)), model, settings)
        by_kind.setdefault(kind, []).append(run)
    for kind, runs in by_kind.items():
        row: dict[str, Any] = {"falls": sum(len(r.truth_t) for r in runs)}
        lat: list[float] = []
        for p in paths:
            hit = 0
            for r in runs:
                for ti in r.truth_t:
                    got = [d for d in r.alerts[p] if -3.0 <= d.impact_t_s - ti <= 5.0]
                    hit += bool(got)
                    if p == "combined_rooms" and got:
                        lat.append(min(d.decided_t_s for d in got) - ti)
            row[p] = round(hit / max(1, row["falls"]), 4)
        row["median_latency_s"] = round(float(np.median(lat)), 2) if lat else None
        kinds_out[kind] = row
    adl: list[_Run] = []
    for i in tqdm(range(adl_residents), desc="sim days/nights", unit="resident", disable=not progress):
        res = Resident(id=f"a{i:03d}", profile=_profile(rng, turns_per_hour=4.0),
                       start_room="bedroom" if i % 2 else "living")
        adl.append(_simulate(res, adl_hours * 3600.0, 22.5 if i % 2 else 9.0, [], int(rng.integers(1 << 30)),
                             model, settings))
    hours = sum(r.hours for r in adl)
    return {
        "kinds": kinds_out,
        "adl": {
            "residents": adl_residents, "hours": round(hours, 2),
            "night_hours": round(sum(r.in_bed_s for r in adl) / 3600, 2),
            "turns": sum(r.turns for r in adl),
            "triggers": sum(r.triggers for r in adl),
            "fast_per_hour": round(sum(len(r.alerts["fast"]) for r in adl) / hours, 3),
            "combined_per_hour": round(sum(len(r.alerts["combined"]) for r in adl) / hours, 3),
            "combined_rooms_per_hour": round(sum(len(r.alerts["combined_rooms"]) for r in adl) / hours, 3),
            "in_bed_alerts": sum(r.in_bed_alerts["combined"] for r in adl),
            "in_bed_alerts_rooms": sum(r.in_bed_alerts["combined_rooms"] for r in adl),
        },
        "note": "simulation (firmware_sim), not recordings: elderly-style residents who do not get up",
    }
