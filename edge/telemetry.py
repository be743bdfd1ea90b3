"""The telemetry stage: what the hub reports about itself and its sensors, on the hub clock.

* every ``telemetry_window_s``: one summary per sensor (and room-only concerns);
* at start and every 24 h: the silent end-to-end test alarm (R3: a dead path is found
  before a fall is);
* when the risk day rolls over: the daily fall-risk scores (:class:`~fallwatch.edge.risk.DailyRisk`);
* every ``heartbeat_s``: the health heartbeat (per-sensor status, warnings noted by the
  other stages since the last one, CPU/memory/temperature).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from fallwatch.config import EdgeConfig
from fallwatch.edge.counters import Counters
from fallwatch.edge.daily_risk import DailyRisk
from fallwatch.edge.fusion import RoomFusion
from fallwatch.edge.messages import Messages
from fallwatch.edge.outbox import Pending
from fallwatch.edge.sensors import Sensors
from fallwatch.edge.uplink import Uplink
from fallwatch.protocol import contract as C

#: The silent end-to-end test alarm (``evt/test``) goes out at start and then this often.
TEST_ALARM_EVERY_S = 24 * 3600.0

#: Contract limits of one health message.
MAX_HEALTH_SENSORS = 64
MAX_WARNINGS = 32


class Telemetry:
    """Summaries, test alarm, daily risk and heartbeat of one hub; :meth:`tick` after each feed."""

    def __init__(
        self,
        cfg: EdgeConfig,
        sensors: Sensors,
        fusion: RoomFusion,
        risk: DailyRisk,
        messages: Messages,
        uplink: Uplink,
        counters: Counters,
        *,
        model_version: Callable[[], str],
    ) -> None:
        self.cfg = cfg
        self.sensors = sensors
        self.fusion = fusion
        self.risk = risk
        self.messages = messages
        self.uplink = uplink
        self.count = counters.count
        self.model_version = model_version
        self.heartbeat_s = cfg.heartbeat_s
        self.telemetry_window_s = cfg.telemetry_window_s
        self.next_tele = self.telemetry_window_s
        self.next_health = 0.0
        self.next_test = 0.0
        self.notes: list[str] = []  # warnings for the next heartbeat (device drops, suppressed falls)
        self.last_health: C.HealthData | None = None
        self._t0_wall = time.monotonic()

    def warn(self, note: str) -> None:
        """A warning for the next health heartbeat (faults are warnings, never falls)."""
        self.notes.append(note)

    def tick(self, now_s: float) -> None:
        """Send whatever became due at hub time ``now_s``."""
        if now_s >= self.next_tele:
            self.summaries(now_s)
        if now_s >= self.next_test:
            self.next_test = now_s + TEST_ALARM_EVERY_S
            self.uplink.send([self.messages.test_alarm(now_s)])
        self.risk.tick(now_s)
        if now_s >= self.next_health:
            self.health(now_s)
            self.next_health = now_s + self.heartbeat_s

    # ------------------------------------------------------------------ summaries

    def summaries(self, now_s: float) -> None:
        """One telemetry summary per sensor seen, plus room-only concerns; accumulators reset."""
        win = self.telemetry_window_s
        self.next_tele = now_s + win
        out: list[Pending] = []
        msg = self.messages
        for w in self.sensors.wearables.values():
            if w.n == 0 and w.stream.last_seen_s is None:
                continue
            c = w.stream.counters
            fields: dict[str, float | int | bool | str] = {
                "samples": w.n,
                "activity_g": round(w.act_sum / w.n, 4) if w.n else 0.0,
                "max_g": round(w.max_g, 3),
                "gaps": c.gaps,
                "duplicates": c.duplicates,
                "lost_samples": c.lost_samples,
                "status": w.stream.status,
            }
            if w.stream.battery_pct is not None:
                fields["battery_pct"] = w.stream.battery_pct
            if w.stream.rssi_dbm is not None:
                fields["rssi_dbm"] = w.stream.rssi_dbm
            out.append(msg.tele(C.TeleData(sensor=w.sensor_id, window_s=win, fields=fields, room=None), now_s,
                                resident_id=w.resident_id))
            w.n, w.act_sum, w.max_g = 0, 0.0, 0.0
        for rs in self.sensors.room_sensors.values():
            if rs.last_seen_s is None:
                continue
            fields = {"events": rs.events}
            if rs.value is not None:
                fields["value"] = rs.value
            if rs.battery is not None:
                fields["battery_pct"] = rs.battery
            if rs.linkquality is not None:
                fields["linkquality"] = rs.linkquality
            out.append(msg.tele(C.TeleData(sensor=rs.sensor_id, window_s=win, fields=fields, room=rs.room), now_s,
                                resident_id=rs.resident_id))
            rs.events = 0
        for con in self.fusion.concerns(now_s):
            self.count(f"concerns_{con.code}")
            fields = {"concern": con.code, "concern_minutes": round(con.duration_s / 60.0, 1)}
            out.append(msg.tele(C.TeleData(sensor=con.sensor_id, window_s=win, room=con.room, fields=fields), now_s))
        if self.uplink.is_open and self.cfg.max_outbox_rows:
            self.count("telemetry_thinned", self.uplink.thin(self.cfg.max_outbox_rows))
        self.uplink.send(out)

    # ------------------------------------------------------------------ health

    def sensor_health(self, now_s: float) -> tuple[dict[str, C.SensorHealth], list[str]]:
        """Per-sensor status and human-readable warnings (faults are warnings, never falls).

        A wearable's ``rebooted`` status is reported once: it reads ``ok`` afterwards.
        """
        sensors: dict[str, C.SensorHealth] = {}
        warnings: list[str] = []
        stale_w = self.cfg.wearable_stale_s
        ts = self.messages.ts
        for w in self.sensors.wearables.values():
            st = w.stream
            status = st.status
            if st.last_seen_s is None:
                status = "silent" if now_s > stale_w else "ok"  # not yet expected at start-up
            elif now_s - st.last_seen_s > stale_w:
                status = "stale"
            if status != "ok":
                since = "never seen" if st.last_seen_s is None else f"last seen {now_s - st.last_seen_s:.0f} s ago"
                warnings.append(f"wearable {w.sensor_id} {status} ({since})")
            if st.battery_pct is not None and st.battery_pct < 15:
                warnings.append(f"wearable {w.sensor_id} battery {st.battery_pct:.0f} %")
            sensors[w.sensor_id] = C.SensorHealth(
                last_seen_ms=ts(st.last_seen_s or 0.0),
                battery_pct=st.battery_pct,
                rssi_dbm=None if st.rssi_dbm is None else float(np.clip(st.rssi_dbm, -150, 20)),
                status=status,  # type: ignore[arg-type]  # WearableStream.status is a plain str of the same values
            )
            if st.status == "rebooted":
                st.status = "ok"  # reported once
        room_stale = self.cfg.room_stale_s
        for rs in self.sensors.room_sensors.values():
            rstatus: Literal["ok", "stale", "silent"] = "ok"
            if rs.last_seen_s is None:
                rstatus = "silent" if now_s > room_stale else "ok"
            elif now_s - rs.last_seen_s > room_stale:
                rstatus = "stale"
            if rstatus != "ok":
                warnings.append(f"room sensor {rs.sensor_id} {rstatus}")
            sensors[rs.sensor_id] = C.SensorHealth(last_seen_ms=ts(rs.last_seen_s or 0.0), battery_pct=rs.battery,
                                                   status=rstatus)
        return sensors, warnings

    def health(self, now_s: float) -> C.HealthData:
        """Send a health heartbeat now (with the warnings noted since the last one)."""
        sensors, warnings = self.sensor_health(now_s)
        warnings += self.uplink.warnings()  # refused rows first: they are alarms held back
        warnings += self.notes
        self.notes = []
        if len(sensors) > MAX_HEALTH_SENSORS:  # contract limit: report the non-ok ones first
            order = sorted(sensors, key=lambda k: (sensors[k].status == "ok", k))
            warnings.append(f"{len(sensors) - MAX_HEALTH_SENSORS} more sensors not listed")
            sensors = {k: sensors[k] for k in order[:MAX_HEALTH_SENSORS]}
        if len(warnings) > MAX_WARNINGS:
            warnings = [*warnings[: MAX_WARNINGS - 1], f"{len(warnings) - MAX_WARNINGS + 1} more warnings"]
        self.count("health_warnings", len(warnings))
        data = C.HealthData(
            uptime_s=max(0.0, time.monotonic() - self._t0_wall),
            outbox_depth=self.uplink.depth(),
            model_version=self.model_version()[:40],
            fw=self.cfg.fw_version[:40],
            sensors=sensors,
            warnings=[w[:200] for w in warnings],
            **system_info(),
        )
        self.last_health = data
        self.uplink.send([self.messages.health(data, now_s)])
        return data


def system_info() -> dict[str, float | None]:
    """CPU, memory and SoC temperature of the hub (what a Pi reports; None where unknown)."""
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is a dependency
        return {}
    info: dict[str, float | None] = {
        "cpu_pct": float(psutil.cpu_percent(interval=None)),
        "mem_mb": round(psutil.Process(os.getpid()).memory_info().rss / 2**20, 1),
        "temp_c": None,
    }
    temps: dict[str, list[Any]] = getattr(psutil, "sensors_temperatures", lambda: {})()
    for entries in (temps or {}).values():
        if entries:
            info["temp_c"] = float(np.clip(entries[0].current, -60, 150))
            break
    return info
