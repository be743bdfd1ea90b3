"""The fleet: every hub, sensor and resident of a scenario, stepped through sim time.

``Fleet.run`` is a generator of :class:`Chunk` s, each holding the frames the hubs
received in one step, in reception order, with faults applied. It runs as fast as it
can (accelerated) or paced to the wall clock (``speed=1`` is real time). Everything
injected is logged in :attr:`Fleet.ground_truth` (see docs/simulator.md for the JSONL).
"""

from __future__ import annotations

import heapq
import json
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fallwatch.pacing import Pacer
from fallwatch.protocol.frames import SensorFrame
from fallwatch.sim.devices import FaultLog, RoomSensorDevice, WearableDevice, faults_for, key_of
from fallwatch.sim.scenario import Resident, Scenario, Site
from fallwatch.sim.timeline import Timeline, TimelineBuilder, Truth, profile_at


@dataclass(frozen=True, slots=True)
class HubInfo:
    site_id: str
    hub_id: str
    resident_ids: list[str]


@dataclass(frozen=True, slots=True)
class SensorInfo:
    sensor_id: str
    hub_id: str
    site_id: str
    resident_id: str | None
    kind: str  # "wearable" | "pir" | "bed" | "chair" | "door" | "bathroom"
    room: str | None
    rate_hz: float | None


@dataclass(frozen=True, slots=True)
class GroundTruthEvent:
    """One injected event. ``t_*`` are sim seconds; ``t_impact_s`` is None unless it has one."""

    type: str  # "fall" | "near_fall" | "fault" | "risk_drift" | "adl"
    resident_id: str | None
    sensor_id: str | None
    hub_id: str
    t_start_s: float
    t_impact_s: float | None
    t_end_s: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Chunk:
    t_s: float  # sim time at the end of the chunk
    frames: list[SensorFrame]


#: The configuration fields that matter for each fault type (copied into its ground truth).
FAULT_FIELDS: dict[str, tuple[str, ...]] = {
    "loss": ("rate", "burst_len"), "duplicate": ("rate",), "garbage": ("rate",),
    "reorder": ("rate", "max_delay_frames"), "clock_skew": ("ppm",), "clock_jump": ("jump_ms",),
    "brownout": ("reboot_s",), "battery": ("start_pct", "drain_pct_per_h", "brownout_below_pct"),
    "stuck": (), "saturated": ("axis",), "silent": (),
}


def _roles(site: Site, idx: int) -> dict[str, str]:
    """Which room plays which role for the ``idx``-th resident of a site."""
    rooms = site.rooms

    def pick(*names: str) -> str:
        for n in names:
            if n in rooms:
                return n
        return rooms[0]

    own = f"room-{idx + 1}"
    if own in rooms:  # a care-home unit
        return {"bedroom": own, "living": own, "kitchen": pick("dining", "kitchen", own),
                "bathroom": pick("bathroom", own), "hall": pick("hall", own)}
    return {"bedroom": pick("bedroom"), "living": pick("living", "kitchen"), "kitchen": pick("kitchen", "living"),
            "bathroom": pick("bathroom"), "hall": pick("hall", "living")}


class Fleet:
    """All devices of a scenario. The same scenario and seed give bit-identical frames."""

    def __init__(self, scenario: Scenario, seed: int | None = None, progress: bool = False) -> None:
        self.scenario = scenario.expanded()
        self.seed = self.scenario.seed if seed is None else seed
        self.start_epoch_ms = (self.scenario.start_epoch_ms if self.scenario.start_epoch_ms is not None
                               else int(time.time() * 1000))
        self.duration_s = self.scenario.duration_s
        self.hubs: list[HubInfo] = []
        self.sensors: list[SensorInfo] = []
        self.devices: list[WearableDevice | RoomSensorDevice] = []
        self.timelines: dict[str, Timeline] = {}
        self._truth: list[GroundTruthEvent] = []
        self._device_truth: list[tuple[str | None, str | None, str, list[Truth]]] = []
        self._fault_logs: list[tuple[str | None, str, str, FaultLog]] = []
        self.t_s = 0.0
        sites = self.scenario.sites
        for site in tqdm(sites, desc="building fleet", unit="site", disable=not progress or len(sites) < 50):
            self._build_site(site)

    # ------------------------------------------------------------------ building

    def _fault_logs_for(self, sensor_id: str, resident_id: str | None, hub_id: str) -> list[FaultLog]:
        logs = []
        for f in faults_for(sensor_id, self.scenario.faults):
            t0 = f.at_s or 0.0
            t1 = t0 + f.duration_s if f.duration_s is not None else self.duration_s
            keep = FAULT_FIELDS[f.type] + ("at_s", "duration_s")
            details = {"fault": f.type, **{k: v for k, v in f.model_dump().items() if k in keep and v is not None}}
            fl = FaultLog(f, Truth("fault", t0, None, t1, details))
            logs.append(fl)
            self._fault_logs.append((resident_id, sensor_id, hub_id, fl))
        return logs

    def _build_site(self, site: Site) -> None:
        sc = self.scenario
        self.hubs.append(HubInfo(site.site_id, site.hub_id, [r.id for r in site.residents]))
        timelines = []
        for i, res in enumerate(site.residents):
            events = [e for e in sc.events if e.resident == res.id]
            tl = TimelineBuilder(res, _roles(site, i), seed=self.seed, duration_s=self.duration_s,
                                 start_hour=sc.start_hour, events=events, stairs=site.stairs,
                                 key=key_of(res.id)).build()
            self.timelines[res.id] = tl
            timelines.append(tl)
            wid = res.wearable.id or f"wear-{res.id}"
            self.sensors.append(SensorInfo(wid, site.hub_id, site.site_id, res.id, "wearable", None,
                                           res.wearable.rate_hz))
            rp = res.wearable.replay
            if rp is None:
                self._device_truth.append((res.id, wid, site.hub_id, tl.truth))
            else:  # the motion is the recording's, so the model's timeline is not the truth
                trial = Path(str(rp.path).split("#")[-1]).stem
                details: dict[str, Any] = {"path": str(rp.path), "format": rp.format, "loop": rp.loop,
                                           "trial": trial}
                if rp.format == "sisfall":
                    details["activity"] = trial[:3]
                    details["is_fall"] = trial.startswith("F")
                self._device_truth.append((res.id, wid, site.hub_id,
                                           [Truth("replay", 0.0, None, self.duration_s, details)]))
            if res.drift is not None:
                self._drift_truth(res, wid, site.hub_id)
            source = None
            if res.wearable.replay is not None:
                from fallwatch.sim.replay import ImuRecording

                source = ImuRecording.from_spec(res.wearable.replay, res.wearable.rate_hz)
            logs = self._fault_logs_for(wid, res.id, site.hub_id)
            sink: list[Truth] = []
            self._device_truth.append((res.id, wid, site.hub_id, sink))
            self.devices.append(WearableDevice(wid, site.hub_id, res.wearable, tl, seed=self.seed, faults=logs,
                                               start_epoch_ms=self.start_epoch_ms, truth_sink=sink, source=source))
        for rs in site.sensors:
            resident = None
            if rs.room.startswith("room-") and site.residents:
                idx = int(rs.room.split("-")[1]) - 1
                resident = site.residents[idx].id if idx < len(site.residents) else None
            elif len(site.residents) == 1:
                resident = site.residents[0].id
            self.sensors.append(SensorInfo(rs.id, site.hub_id, site.site_id, resident, rs.kind, rs.room, None))
            logs = self._fault_logs_for(rs.id, resident, site.hub_id)
            dev = RoomSensorDevice(rs, site.hub_id, timelines, seed=self.seed, faults=logs,
                                   start_epoch_ms=self.start_epoch_ms, duration_s=self.duration_s)
            self._device_truth.append((resident, rs.id, site.hub_id, dev.truth))
            self.devices.append(dev)

    def _drift_truth(self, res: Resident, sensor_id: str, hub_id: str) -> None:
        days = max(1, math.ceil(self.duration_s / 86400.0))
        sink = []
        for d in range(days):
            p = profile_at(res, d * 86400.0)
            sink.append(Truth("risk_drift", d * 86400.0, None, min(self.duration_s, (d + 1) * 86400.0), {
                "day": d, "gait_speed_mps": round(p.gait_speed_mps, 4), "cadence_spm": round(p.cadence_spm, 3),
                "stride_cv": round(p.stride_cv, 4), "sit_to_stand_s": round(p.sit_to_stand_s, 3),
                "night_bathroom_visits": round(p.night_bathroom_visits, 3), "frailty": round(p.frailty, 3)}))
        self._device_truth.append((res.id, sensor_id, hub_id, sink))

    # ------------------------------------------------------------------ running

    def run(self, duration_s: float | None = None, step_s: float = 1.0, speed: float | None = None,
            progress: bool = False) -> Iterator[Chunk]:
        """Step the fleet; yield the frames hubs received in each step.

        ``speed``: None or 0 = as fast as possible; otherwise sim seconds per wall
        second (1.0 = real time). Continues from where a previous ``run`` stopped.
        """
        end = self.t_s + (self.duration_s if duration_s is None else duration_s)
        pacer = Pacer(speed, self.t_s)
        with tqdm(total=round(end - self.t_s, 3), unit="sim-s", desc="simulating", disable=not progress,
                  leave=False) as bar:
            while self.t_s < end - 1e-9:
                t = min(end, self.t_s + step_s)
                lists = [d.poll(t) for d in self.devices]
                merged = heapq.merge(*[x for x in lists if x], key=lambda e: e[0])
                frames = [e[2] for e in merged]
                bar.update(round(t - self.t_s, 3))
                self.t_s = t
                pacer.wait(t)
                yield Chunk(t, frames)

    # ------------------------------------------------------------------ ground truth

    @property
    def ground_truth(self) -> list[GroundTruthEvent]:
        """Every injected event that has started by the current sim time.

        Before the first ``run`` it is the whole plan (up to the scenario's duration), so a
        scenario can be inspected without simulating it; after a run shorter than the
        scenario it holds only what actually happened in the simulated span.
        """
        return self.truth_until(self.t_s if self.t_s > 0 else self.duration_s)

    def truth_until(self, t_s: float) -> list[GroundTruthEvent]:
        """Injected events that start at or before sim time ``t_s``, sorted by start."""
        out = []
        for resident, sensor, hub, truths in self._device_truth:
            for tr in truths:
                if tr.t_start_s > t_s:
                    continue
                sid = tr.details.get("sensor", sensor)
                out.append(GroundTruthEvent(tr.type, resident, sid, hub, round(tr.t_start_s, 3),
                                            None if tr.t_impact_s is None else round(tr.t_impact_s, 3),
                                            round(tr.t_end_s, 3), dict(tr.details)))
        for resident, sensor, hub, fl in self._fault_logs:
            tr = fl.truth
            if tr.t_start_s > t_s:
                continue
            out.append(GroundTruthEvent("fault", resident, sensor, hub, round(tr.t_start_s, 3), None,
                                        round(min(tr.t_end_s, max(t_s, tr.t_start_s)), 3), dict(tr.details)))
        out.sort(key=lambda e: (e.t_start_s, e.hub_id, e.sensor_id or "", e.type))
        return out

    def write_ground_truth(self, path: str | Path) -> int:
        """Write the ground truth as JSONL (one event per line, sorted by start time)."""
        events = self.ground_truth
        with open(path, "w") as fh:
            fh.write(json.dumps({"type": "header", "scenario": self.scenario.name, "seed": self.seed,
                                 "start_epoch_ms": self.start_epoch_ms, "duration_s": self.duration_s,
                                 "simulated_s": round(self.t_s, 3),
                                 "format": "fallwatch-ground-truth/1"}) + "\n")
            for ev in events:
                fh.write(json.dumps(asdict(ev), sort_keys=True, default=float) + "\n")
        return len(events)

    def stats(self) -> dict[str, int]:
        out = {"devices": len(self.devices), "frames_sent": 0, "frames_delivered": 0, "reboots": 0}
        for d in self.devices:
            for k, v in d.stats.items():
                out[k] = out.get(k, 0) + v
        return out
