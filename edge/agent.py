"""The edge agent: one per hub (a home, or a care-home unit).

Wiring, top to bottom (each step is one module):

    SensorFrame --decode--> WearableStream (edge.stream) --50 Hz--> DeviceFallDetector
      (models.detector; one batched model call per feed across all wearables)
      --FallDecision--> cancel window (sim/hub time) --fusion with rooms (edge.fusion)-->
      FallAlert --> Outbox (edge.outbox, SQLite WAL, fsync) --> Publisher (edge.publisher,
      QoS 1, deletes on PUBACK) --> broker

plus 10 s telemetry summaries per sensor, a heartbeat, the retained birth/last-will
state, and downlinks (remote config, signed model updates).

Time: ``now_s`` is the hub clock in seconds (simulation time in tests, monotonic time
since start when running live). ``start_epoch_ms + now_s * 1000`` is the wall time
stamped on messages.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

from fallwatch.config import FallwatchConfig
from fallwatch.edge import ota
from fallwatch.edge.fusion import FusionSettings, RoomState
from fallwatch.edge.outbox import Outbox, Pending
from fallwatch.edge.publisher import Publisher
from fallwatch.edge.risk import GaitAccumulator, NightCounter, load_risk_model
from fallwatch.edge.stream import StreamSettings, WearableStream
from fallwatch.models import features as F
from fallwatch.models.detector import DetectorSettings, DeviceFallDetector, FallDecision
from fallwatch.models.scorers import load_scorer
from fallwatch.mqtt import Will
from fallwatch.protocol import contract as C
from fallwatch.protocol import topics
from fallwatch.protocol.frames import FrameError, SensorFrame, decode_imu, decode_room

log = logging.getLogger(__name__)

#: A chunk whose acceleration magnitude spans more than this is body movement (g); lying
#: still spans sensor noise only (~0.02 g).
MOVE_RANGE_G = 0.15

#: Device-drop signature: this long in free fall (|a| < FREE_FALL_G) right before an impact of
#: at least DROP_PEAK_G. A waist-worn sensor on a falling body stays well above 0.25 g but for a
#: few samples (the body pivots and is partly supported); a dropped wearable falls freely
#: (~0.45 s from 1 m). In the simulator: drops 0.42 s, falls at most 0.04 s.
FREE_FALL_G = 0.25
DROP_FREE_FALL_S = 0.2
DROP_PEAK_G = 3.0


def free_fall_s(window: np.ndarray) -> float:
    """Longest stretch of free fall (s) in the second before the impact of a detector window."""
    seg = F.magnitude(window[F.PRE - int(F.RATE_HZ):F.PRE, :3]) < FREE_FALL_G
    best = run = 0
    for v in seg:
        run = run + 1 if v else 0
        best = max(best, run)
    return best / F.RATE_HZ


#: The silent end-to-end test alarm (``evt/test``) goes out at start and then this often.
TEST_ALARM_EVERY_S = 24 * 3600.0

#: Keys of the remote config (retained on ``.../config``) the agent applies at run time.
REMOTE_CONFIG_KEYS = frozenset({"cancel_window_s", "heartbeat_s", "telemetry_window_s", "upload_raw_imu"})


@dataclass(slots=True)
class _Wearable:
    sensor_id: str
    resident_id: str | None
    room: str | None
    stream: WearableStream
    det: DeviceFallDetector
    # telemetry accumulators since the last summary
    n: int = 0
    act_sum: float = 0.0
    max_g: float = 0.0
    cancel_presses: list[float] = field(default_factory=list)
    last_move_t: float = -1e9  # hub time of the last chunk with body movement
    gait: GaitAccumulator = field(default_factory=GaitAccumulator)
    falls: int = 0  # alerts raised for this wearer since start (falls_past_12m)
    last_alert_t: float = -1e9  # impact time of the last alert (either path), for de-dup


@dataclass(slots=True)
class _SoftCandidate:
    """An impact the model scored below its threshold but that ended lying and still:
    held for ``confirm_s`` and raised only if the rooms confirm nobody got up."""

    wearable: _Wearable
    decision: FallDecision
    confirm_t_s: float


@dataclass(slots=True)
class _RoomSensor:
    sensor_id: str
    kind: str
    room: str
    resident_id: str | None
    last_seen_s: float | None = None
    events: int = 0
    value: bool | None = None
    battery: float | None = None
    linkquality: float | None = None


@dataclass(slots=True)
class _PendingAlert:
    event_id: str
    wearable: _Wearable
    decision: FallDecision
    due_t_s: float
    created_t_s: float
    feed_wall: float  # monotonic time of the feed() call that made it due (latency start)


class EdgeAgent:
    """One hub's agent; see the module docstring for the pipeline."""

    def __init__(
        self, cfg: FallwatchConfig, sensors: list[Any] | None = None, start_epoch_ms: int | None = None
    ) -> None:
        self.cfg = cfg
        e = cfg.edge
        self.site_id = e.site_id
        self.device_id = e.device_id
        self.start_epoch_ms = start_epoch_ms if start_epoch_ms is not None else C.now_ms()
        self._lock = threading.RLock()  # feed() vs downlink handlers (config, OTA)
        self.cancel_window_s = e.cancel_window_s
        self.heartbeat_s = e.heartbeat_s
        self.telemetry_window_s = e.telemetry_window_s
        self.upload_raw_imu = e.upload_raw_imu
        self.model = ota.load_installed(e) or load_scorer(e.model_path)
        self.models = ota.ModelStore(e, self.model)
        self.stream_settings = StreamSettings(rate_hz=F.RATE_HZ)
        self.detector_settings = DetectorSettings()
        self.rooms = RoomState(FusionSettings(), self.start_epoch_ms)
        #: per-resident room state from the sensors that belong to one resident (a care-home
        #: resident's own room: PIR, bed, chair); shared rooms only feed ``self.rooms``
        self._res_rooms: dict[str, RoomState] = {}
        self._shared_rooms = RoomState(self.rooms.settings, self.start_epoch_ms)  # bathroom, dining, hall
        #: builds each wearable's detector (the benchmark swaps in its naive baseline here)
        self.make_detector: Any = DeviceFallDetector
        self._wearables: dict[str, _Wearable] = {}
        self._room_sensors: dict[str, _RoomSensor] = {}
        self._residents: list[str] = []
        for s in sensors or []:
            if getattr(s, "hub_id", self.device_id) != self.device_id:
                continue
            self._register(s)
        self.risk_model = load_risk_model()
        self.nights = NightCounter(self.start_epoch_ms)
        self._risk_day = self._day_key(0.0)
        self._pending: list[_PendingAlert] = []
        self._soft: list[_SoftCandidate] = []
        self._risk_dirty = False
        self._fault_notes: list[str] = []  # suppressed fall-like signals, reported in the next heartbeat
        self._counts: dict[str, int] = {}
        self._t0_wall = time.monotonic()
        self._now_s = 0.0
        self._next_tele = self.telemetry_window_s
        self._next_health = 0.0
        self._next_test = 0.0
        self.outbox: Outbox | None = None
        self.publisher: Publisher | None = None
        self.started = False
        self.alert_events: list[dict[str, Any]] = []  # what was raised/cancelled (for tests/bench)

    # ------------------------------------------------------------------ sensors

    def _register(self, s: Any) -> None:
        kind = getattr(s, "kind", "wearable")
        rid = getattr(s, "resident_id", None)
        if rid and rid not in self._residents:
            self._residents.append(rid)
        if kind in ("wearable", "imu", "ble"):
            self._add_wearable(s.sensor_id, rid, getattr(s, "room", None))
        else:
            self._room_sensors[s.sensor_id] = _RoomSensor(
                s.sensor_id, kind, getattr(s, "room", None) or "room", rid
            )

    def _add_wearable(self, sensor_id: str, resident_id: str | None, room: str | None = None) -> _Wearable:
        w = _Wearable(
            sensor_id,
            resident_id,
            room,
            WearableStream(sensor_id, self.stream_settings),
            self.make_detector(self.model, self.detector_settings),
        )
        self._wearables[sensor_id] = w
        return w

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Open the outbox, connect (birth on every connect, last will 'lost'), start draining."""
        e = self.cfg.edge
        self.outbox = Outbox(e.outbox_path)
        self._load_risk_state()
        will_seq = self.outbox.reserve()
        will = Will(
            topics.state(self.site_id, self.device_id),
            self._envelope(
                C.State,
                C.StateData(
                    state="lost",
                    fw=e.fw_version,
                    model_version=self.model.version,
                    heartbeat_s=self.heartbeat_s,
                ),
                will_seq,
                self._now_s,
            ),
        )
        self.publisher = Publisher(
            self.cfg.mqtt,
            self.outbox,
            client_id=f"edge-{self.site_id}-{self.device_id}",
            will=will,
            on_connect=self._on_connect,
            on_message=self._on_downlink,
        )
        self.publisher.start()
        self.started = True

    def stop(self, timeout_s: float = 5.0) -> None:
        """Clean shutdown: 'offline' state through the outbox, drain, disconnect (no will)."""
        if not self.started or self.outbox is None or self.publisher is None:
            return
        self._enqueue([self._state_msg("offline")])
        self.flush(timeout_s)
        self.publisher.stop()
        self.outbox.close()
        self.started = False

    def flush(self, timeout_s: float) -> bool:
        """Wait until every outbox row is acknowledged by the broker."""
        assert self.outbox is not None and self.publisher is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.publisher.kick()
            if self.outbox.depth() == 0:
                return True
            time.sleep(0.02)
        return self.outbox.depth() == 0

    def _on_connect(self, client: Any) -> None:
        for topic in (
            topics.config(self.site_id, self.device_id),
            topics.ota_model(self.site_id, self.device_id),
            f"{topics.device_base(self.site_id, self.device_id)}/cmd/req/+",
        ):
            client.subscribe(topic, qos=1)
        self._enqueue([self._state_msg("ready")])

    # ------------------------------------------------------------------ envelopes

    def _ts(self, t_s: float) -> int:
        return max(0, int(self.start_epoch_ms + t_s * 1000.0))

    def _envelope(self, cls: type, data: Any, seq: int, t_s: float, resident_id: str | None = None) -> bytes:
        msg = cls(
            schema=C.SCHEMA_VERSION,
            site_id=self.site_id,
            device_id=self.device_id,
            resident_id=resident_id,
            boot_id=self.outbox.boot_id if self.outbox else 0,
            seq=seq,
            msg_id=C.make_msg_id(self.device_id, seq),
            ts_ms=self._ts(t_s),
            sent_ms=C.now_ms(),
            data=data,
        )
        return C.encode(msg)

    def _pending_msg(
        self,
        kind: str,
        topic: str,
        cls: type,
        data: Any,
        t_s: float,
        resident_id: str | None = None,
        retain: bool = False,
    ) -> Pending:
        return Pending(
            kind, topic, lambda seq: self._envelope(cls, data, seq, t_s, resident_id), retain=retain
        )

    def _state_msg(self, state: str) -> Pending:
        data = C.StateData(
            state=state,
            fw=self.cfg.edge.fw_version,
            model_version=self.model.version[:40],
            heartbeat_s=self.heartbeat_s,
        )
        return self._pending_msg(
            "state", topics.state(self.site_id, self.device_id), C.State, data, self._now_s, retain=True
        )

    def _enqueue(self, items: list[Pending]) -> list[int]:
        if not items:
            return []
        if self.outbox is None:
            raise RuntimeError("EdgeAgent.start() first")
        seqs = self.outbox.append_many(items)
        if self.publisher is not None:
            self.publisher.kick()
        return seqs

    def _count(self, key: str, n: int = 1) -> None:
        self._counts[key] = self._counts.get(key, 0) + n

    # ------------------------------------------------------------------ the hot path

    def feed(self, frames: Iterable[SensorFrame], now_s: float) -> None:
        """Decode and handle frames received up to hub time ``now_s``; decide; publish what is due."""
        with self._lock:
            self._feed(frames, now_s)

    def _feed(self, frames: Iterable[SensorFrame], now_s: float) -> None:
        wall = time.monotonic()
        self._now_s = now_s
        fed: dict[str, _Wearable] = {}
        n = 0
        for fr in frames:
            n += 1
            if fr.hub_id != self.device_id:
                self._count("frames_other_hub")
                continue
            if fr.transport == "ble":
                try:
                    pkt = decode_imu(fr.payload)
                except FrameError as exc:
                    self._count("frame_errors")
                    self._count(f"frame_errors_{exc.reason}")
                    log.debug("bad frame from %s: %s", fr.sensor_id, exc)
                    continue
                if pkt.sensor_id != fr.sensor_id:
                    self._count("frame_errors")
                    self._count("frame_errors_sensor_mismatch")
                    continue
                w = self._wearables.get(pkt.sensor_id)
                if w is None:
                    self._count("sensors_discovered")
                    w = self._add_wearable(pkt.sensor_id, None)
                for ch in w.stream.push(pkt, fr.rx_t_s):
                    self._feed_chunk(w, ch.t_s, ch.acc_g, ch.gyro_dps)
                if w.stream.cancel_presses:
                    w.cancel_presses += w.stream.take_cancel_presses()
                fed[w.sensor_id] = w
            elif fr.transport == "zigbee":
                try:
                    ev = decode_room(fr.payload)
                except FrameError as exc:
                    self._count("frame_errors")
                    self._count(f"frame_errors_{exc.reason}")
                    continue
                self._room_event(ev, fr.rx_t_s)
            else:
                self._count("frame_errors")
                self._count("frame_errors_transport")
        self._count("frames", n)
        # streams with held (reordered) packets give up on gaps once their wait expires
        for w in self._wearables.values():
            if w.stream._held:
                for ch in w.stream.flush(now_s):
                    self._feed_chunk(w, ch.t_s, ch.acc_g, ch.gyro_dps)
                fed[w.sensor_id] = w
        self._infer(fed.values(), now_s)
        if self._soft:
            self._confirm_soft(now_s)
        self._resolve_pending(now_s, wall)
        if now_s >= self._next_tele:
            self._telemetry(now_s)
        if now_s >= self._next_test:
            # R3: a silent end-to-end test alarm every day, so a dead path is found before a fall
            self._next_test = now_s + TEST_ALARM_EVERY_S
            self._enqueue([self._pending_msg("test", topics.test_alarm(self.site_id, self.device_id), C.TestAlarm,
                                             C.TestData(), now_s)])
        if self._day_key(now_s) != self._risk_day:
            self.score_risk(now_s)
        if now_s >= self._next_health:
            self._health(now_s)
            self._next_health = now_s + self.heartbeat_s

    def _feed_chunk(self, w: _Wearable, t: np.ndarray, acc: np.ndarray, gyro: np.ndarray) -> None:
        w.det.feed(t, acc, gyro)
        w.gait.push(acc)
        mag = F.magnitude(acc)
        w.n += len(mag)
        w.act_sum += float(np.abs(mag - 1.0).sum())
        if len(mag):
            hi, lo = float(mag.max()), float(mag.min())
            w.max_g = max(w.max_g, hi)
            if hi - lo > MOVE_RANGE_G:
                w.last_move_t = float(t[-1])

    def _room_event(self, ev: Any, rx_t_s: float) -> None:
        rs = self._room_sensors.get(ev.sensor_id)
        if rs is None:
            rs = _RoomSensor(ev.sensor_id, ev.kind, ev.room, None)
            self._room_sensors[ev.sensor_id] = rs
            self._count("sensors_discovered")
        rs.last_seen_s = rx_t_s
        rs.events += 1
        rs.value = ev.value
        if "battery" in ev.state:
            rs.battery = float(ev.state["battery"])
        if "linkquality" in ev.state:
            rs.linkquality = float(ev.state["linkquality"])
        self.rooms.update(ev, rx_t_s)
        if len(self._residents) > 1:
            if rs.resident_id:
                own = self._res_rooms.get(rs.resident_id)
                if own is None:
                    own = self._res_rooms[rs.resident_id] = RoomState(self.rooms.settings, self.start_epoch_ms)
                own.update(ev, rx_t_s)
            else:
                self._shared_rooms.update(ev, rx_t_s)
        self.nights.update(ev, rx_t_s)

    def _infer(self, fed: Iterable[_Wearable], now_s: float) -> None:
        """One model call for every window that became ready anywhere (batched across devices)."""
        batches: list[tuple[_Wearable, np.ndarray]] = []
        for w in fed:
            b = w.det.pending_windows()
            if len(b):
                batches.append((w, b))
        if not batches:
            return
        x = np.concatenate([b for _, b in batches])
        probs = self.model.predict(x)
        self._count("windows_scored", len(x))
        self._count("inference_calls")
        off = 0
        soft_p = self.rooms.settings.soft_p
        for w, b in batches:
            p = probs[off : off + len(b)]
            cands = w.det.inflight
            by_impact = {c.impact_t_s: i for i, c in enumerate(cands)}
            for d in w.det.resolve(p):
                ff_s = free_fall_s(b[by_impact[d.impact_t_s]]) if d.impact_t_s in by_impact else 0.0
                if ff_s >= DROP_FREE_FALL_S and d.peak_g >= DROP_PEAK_G:
                    # a body falling from standing is never in free fall this long: the wearable
                    # itself was dropped (or thrown) - a classic false alarm, reported, not alerted
                    self._count("device_drops")
                    w.last_alert_t = d.impact_t_s
                    self._fault_notes.append(f"wearable {w.sensor_id} dropped (free fall {ff_s:.2f} s, "
                                             f"{d.peak_g:.0f} g): not a fall")
                    log.warning("wearable %s dropped (free fall %.2f s): no alert", w.sensor_id, ff_s)
                    continue
                self._new_decision(w, d, now_s)
            low = [i for i, pi in enumerate(p) if soft_p <= pi < w.det.threshold]
            if low and self._fusion_capable(w):
                self._soft_candidates(w, [cands[i] for i in low], b[low], p[low], now_s)
            off += len(b)

    def _rooms_for(self, w: _Wearable) -> RoomState | None:
        """The room state that speaks for this wearer: the whole home when one resident lives
        there, else the wearer's own room sensors (None when there are none)."""
        if len(self._residents) <= 1:
            return self.rooms
        return self._res_rooms.get(w.resident_id or "")

    def _fusion_capable(self, w: _Wearable) -> bool:
        """Room confirmation needs rooms that are the wearer's, with motion sensors and a bed
        sensor (lying still *in bed* must be told from lying on the floor)."""
        if self._rooms_for(w) is None:
            return False
        single = len(self._residents) <= 1
        kinds = {rs.kind for rs in self._room_sensors.values() if single or rs.resident_id == w.resident_id}
        return "bed" in kinds and bool(kinds & {"pir", "bathroom"})

    def _soft_candidates(self, w: _Wearable, cands: list, windows: np.ndarray, p: np.ndarray,
                         now_s: float) -> None:
        feats = F.window_features(windows)
        still, lying = F.still_and_lying(feats)
        col = {n: i for i, n in enumerate(F.FEATURE_NAMES)}
        for i, c in enumerate(cands):
            if not (still[i] and lying[i]) or abs(c.impact_t_s - w.last_alert_t) < self.detector_settings.dedup_s:
                continue
            tilt = float(feats[i, col["tilt_change_deg"]])
            reasons = [
                ("impact", f"peak {c.peak_g:.1f} g", round(min(1.0, (c.peak_g - 1.0) / 4.0), 3)),
                ("model_score", f"p={float(p[i]):.2f} below threshold {w.det.threshold:.2f}", round(float(p[i]), 3)),
                ("posture_change", f"{tilt:.0f} deg from pre-fall posture (lying)", round(min(1.0, tilt / 90), 3)),
                ("stillness", "still after the impact", 0.5),
            ]
            conf = 0.5 + 0.4 * float(p[i])
            d = FallDecision(impact_t_s=c.impact_t_s, decided_t_s=c.ready_t_s, probability=float(p[i]),
                             confidence=conf, peak_g=c.peak_g, lying=True, still=True, reasons=reasons)
            self._soft.append(_SoftCandidate(w, d, c.impact_t_s + self.rooms.settings.confirm_s))
            self._count("soft_candidates")

    def _confirm_soft(self, now_s: float) -> None:
        keep = []
        s = self.rooms.settings
        for sc in self._soft:
            if now_s < sc.confirm_t_s:
                keep.append(sc)
                continue
            d, w = sc.decision, sc.wearable
            rooms = self._rooms_for(w) or self.rooms
            moved = w.last_move_t > d.impact_t_s + s.settle_s
            motion = rooms.motion_between(d.impact_t_s + s.quiet_after_s, now_s)
            in_bed = any(rooms.bed_occupied.values())
            if moved or motion or in_bed or abs(d.impact_t_s - w.last_alert_t) < self.detector_settings.dedup_s:
                self._count("soft_rejected")
                continue
            quiet = now_s - d.impact_t_s
            reasons = [*d.reasons, ("room_confirmed", f"no movement, no room motion, not in bed or chair for "
                                                       f"{quiet:.0f} s after the impact", 0.5)]
            d = FallDecision(d.impact_t_s, now_s, d.probability, d.confidence, d.peak_g, True, True, reasons)
            self._count("soft_confirmed")
            self._new_decision(w, d, now_s, due=max(now_s, d.impact_t_s + self.cancel_window_s))
        self._soft = keep

    def _new_decision(self, w: _Wearable, d: FallDecision, now_s: float, due: float | None = None) -> None:
        impact_ms = self._ts(d.impact_t_s)
        event_id = f"{self.device_id}-{w.sensor_id}-{impact_ms}"
        w.last_alert_t = d.impact_t_s
        if due is None:
            due = max(d.decided_t_s, now_s) + self.cancel_window_s
        self._pending.append(_PendingAlert(event_id, w, d, due, now_s, 0.0))
        self._count("decisions")

    def _resolve_pending(self, now_s: float, wall: float) -> None:
        if not self._pending:
            for w in self._wearables.values():  # presses with no fall pending expire after 2 min
                if w.cancel_presses:
                    w.cancel_presses = [p for p in w.cancel_presses if p > now_s - 120.0]
            return
        keep: list[_PendingAlert] = []
        out: list[Pending] = []
        for pa in self._pending:
            presses = [p for p in pa.wearable.cancel_presses if pa.decision.impact_t_s <= p <= pa.due_t_s]
            if presses:
                pa.wearable.cancel_presses = [p for p in pa.wearable.cancel_presses if p > pa.due_t_s]
                out.append(self._fall_msg(pa, "cancelled", now_s, cancelled_at=presses[0]))
                self._count("alerts_cancelled")
            elif now_s >= pa.due_t_s and pa.wearable.stream.faulty_between(
                pa.decision.impact_t_s - 1.0, now_s
            ):
                self._count("alerts_suppressed_fault")
                w = pa.wearable
                note = f"fall-like signal from {w.sensor_id} ignored: sensor {w.stream.status}"
                self._fault_notes.append(note)
                log.warning("fall-like signal from %s suppressed: sensor fault", pa.wearable.sensor_id)
            elif now_s >= pa.due_t_s:
                pa.wearable.falls += 1
                self._risk_dirty = True
                pa.feed_wall = wall
                out.append(self._fall_msg(pa, "alert", now_s))
                self._count("alerts_raised")
            else:
                keep.append(pa)
        self._pending = keep
        seqs = self._enqueue(out)
        if self._risk_dirty:
            self._risk_dirty = False
            self._save_risk_state()
        for seq, ev in zip(seqs, self.alert_events[-len(seqs) :] if seqs else [], strict=False):
            ev["seq"] = seq

    def _fall_msg(
        self, pa: _PendingAlert, status: str, now_s: float, cancelled_at: float | None = None
    ) -> Pending:
        d = pa.decision
        w = pa.wearable
        reasons = [C.Reason(code=c[:40], detail=det[:200], weight=float(wt)) for c, det, wt in d.reasons]
        conf = float(d.confidence)
        rooms = self._rooms_for(w)
        room = (rooms.room_at(d.impact_t_s) if rooms else None) or w.room
        recent = rooms is not None
        if len(self._residents) > 1:
            # care-home unit: the resident's own room, unless a shared room (bathroom, dining)
            # saw motion after it - then probably there (another resident may also have been)
            own = rooms.last_motion_before(d.impact_t_s) if rooms else None
            shared = self._shared_rooms.last_motion_before(d.impact_t_s)
            if shared and (own is None or shared[0] > own[0]) and d.impact_t_s - shared[0] <= 120.0:
                room, recent = shared[1], False  # others move in shared rooms: no motion reasoning
            else:
                # own sensors speak only if they saw the resident shortly before the impact;
                # otherwise the room is unknown (no guess that would send staff to the wrong room)
                recent = own is not None and d.impact_t_s - own[0] <= 120.0
                room = own[1] if recent and own else None
        if rooms is not None and rooms.motion_log and recent:
            after = rooms.motion_between(d.impact_t_s + rooms.settings.quiet_after_s, now_s)
            quiet_s = now_s - d.impact_t_s
            if not after and quiet_s > rooms.settings.quiet_after_s:
                conf = 1.0 - (1.0 - conf) * 0.5
                reasons.append(
                    C.Reason(
                        code="no_room_motion",
                        detail=f"no motion in any room for {quiet_s:.0f} s after the impact",
                        weight=0.5,
                    )
                )
            elif after:
                conf *= 0.9
                reasons.append(
                    C.Reason(
                        code="room_motion_after",
                        detail=f"motion in {', '.join(after)[:150]} after the impact",
                        weight=-0.1,
                    )
                )
        if room and ("bath" in room or "wc" in room or "toilet" in room):
            reasons.append(C.Reason(code="bathroom", detail=f"last seen in {room}", weight=0.2))
        if cancelled_at is not None:
            reasons.append(
                C.Reason(
                    code="cancelled_by_wearer",
                    detail=f"cancel pressed {cancelled_at - d.impact_t_s:.1f} s after impact",
                    weight=-1.0,
                )
            )
        lying_s = max(0.0, now_s - d.impact_t_s) if (d.lying and d.still) else 0.0
        data = C.FallData(
            event_id=pa.event_id,
            status=status,
            impact_ms=self._ts(d.impact_t_s),
            confidence=float(np.clip(conf, 0.0, 1.0)),
            peak_g=float(min(d.peak_g, 64.0)),
            lying_s=lying_s,
            room=room if room and topics._LEVEL.match(room) else None,
            sensor=w.sensor_id,
            reasons=reasons[:16],
            model=self.model.tag[:80],
        )
        self.alert_events.append(
            {
                "event_id": pa.event_id,
                "status": status,
                "sensor": w.sensor_id,
                "resident_id": w.resident_id,
                "impact_t_s": d.impact_t_s,
                "confidence": data.confidence,
                "feed_wall": pa.feed_wall,
            }
        )
        del self.alert_events[:-1000]  # a record for tests and the bench, bounded
        log.warning(
            "fall %s for %s (%s): confidence %.2f", status, w.sensor_id, w.resident_id, data.confidence
        )
        return self._pending_msg(
            "fall",
            topics.fall(self.site_id, self.device_id),
            C.FallAlert,
            data,
            d.impact_t_s,
            resident_id=w.resident_id,
        )

    # ------------------------------------------------------------------ daily fall risk

    def _day_key(self, t_s: float) -> str:
        """The risk day a time belongs to: days roll over at ``risk_hour`` local time, after the night."""
        wall = self.start_epoch_ms / 1000.0 + t_s - self.cfg.edge.risk_hour * 3600
        return time.strftime("%Y-%m-%d", time.localtime(wall))

    def _load_risk_state(self) -> None:
        """Falls counted and daily gait speeds kept by an earlier run (risk trend, falls_past_12m)."""
        assert self.outbox is not None
        raw = self.outbox.get_state("risk")
        if not raw:
            return
        try:
            saved = json.loads(raw)
        except ValueError:
            log.error("unreadable risk state in the outbox db: starting afresh")
            return
        for sid, st in saved.items():
            w = self._wearables.get(sid) or self._add_wearable(sid, st.get("resident_id"))
            w.falls = int(st.get("falls", 0))
            w.gait.history = [(str(d), float(v)) for d, v in st.get("history", [])][-28:]

    def _save_risk_state(self) -> None:
        if self.outbox is None:
            return
        state = {w.sensor_id: {"resident_id": w.resident_id, "falls": w.falls, "history": w.gait.history}
                 for w in self._wearables.values() if w.falls or w.gait.history}
        self.outbox.set_state("risk", json.dumps(state))

    def score_risk(self, now_s: float) -> list[C.RiskData]:
        """Score and publish the day that ends now, per wearer; then start a new day.

        Called automatically when the day rolls over (``edge.risk_hour``); callable any time.
        """
        day, self._risk_day = self._risk_day, self._day_key(now_s)
        out: list[C.RiskData] = []
        if self.risk_model is None:
            return out
        items = []
        night = self.nights.features() if len(self._residents) <= 1 else {}
        for w in self._wearables.values():
            if w.gait.seconds < 60.0:
                continue  # nothing worn today: no score rather than a made-up one
            feats = {**w.gait.features(day), **night, "falls_past_12m": float(w.falls)}
            score, level, factors = self.risk_model.score(feats)
            data = C.RiskData(day=day, score=float(np.clip(score, 0, 1)), level=level, factors=factors[:16],
                              features={k: float(v) for k, v in list(feats.items())[:32]},
                              model=self.risk_model.tag[:80])
            out.append(data)
            items.append(self._pending_msg("risk", topics.risk(self.site_id, self.device_id), C.RiskScore, data,
                                           now_s, resident_id=w.resident_id))
            w.gait.reset_day()
            self._count("risk_scores")
        self.nights.reset_day()
        if self.outbox is not None:
            self._enqueue(items)
            self._save_risk_state()
        return out

    # ------------------------------------------------------------------ telemetry and health

    def _telemetry(self, now_s: float) -> None:
        win = self.telemetry_window_s
        self._next_tele = now_s + win
        out: list[Pending] = []
        for w in self._wearables.values():
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
            out.append(
                self._pending_msg(
                    "tele",
                    topics.tele(self.site_id, self.device_id, w.sensor_id),
                    C.Telemetry,
                    C.TeleData(sensor=w.sensor_id, window_s=win, fields=fields, room=None),
                    now_s,
                    resident_id=w.resident_id,
                )
            )
            w.n, w.act_sum, w.max_g = 0, 0.0, 0.0
        for rs in self._room_sensors.values():
            if rs.last_seen_s is None:
                continue
            fields = {"events": rs.events}
            if rs.value is not None:
                fields["value"] = rs.value
            if rs.battery is not None:
                fields["battery_pct"] = rs.battery
            if rs.linkquality is not None:
                fields["linkquality"] = rs.linkquality
            out.append(
                self._pending_msg(
                    "tele",
                    topics.tele(self.site_id, self.device_id, rs.sensor_id),
                    C.Telemetry,
                    C.TeleData(sensor=rs.sensor_id, window_s=win, fields=fields, room=rs.room),
                    now_s,
                    resident_id=rs.resident_id,
                )
            )
            rs.events = 0
        for con in self.rooms.concerns(now_s):
            self._count(f"concerns_{con.code}")
            out.append(
                self._pending_msg(
                    "tele",
                    topics.tele(self.site_id, self.device_id, con.sensor_id),
                    C.Telemetry,
                    C.TeleData(
                        sensor=con.sensor_id,
                        window_s=win,
                        room=con.room,
                        fields={"concern": con.code, "concern_minutes": round(con.duration_s / 60.0, 1)},
                    ),
                    now_s,
                )
            )
        if self.outbox is not None and self.cfg.edge.max_outbox_rows:
            self._count("telemetry_thinned", self.outbox.thin(self.cfg.edge.max_outbox_rows))
        self._enqueue(out)

    def sensor_health(self, now_s: float) -> tuple[dict[str, C.SensorHealth], list[str]]:
        """Per-sensor status and human-readable warnings (faults are warnings, never falls)."""
        sensors: dict[str, C.SensorHealth] = {}
        warnings: list[str] = []
        stale_w = self.cfg.edge.wearable_stale_s
        for w in self._wearables.values():
            st = w.stream
            status = st.status
            if st.last_seen_s is None:
                status = "silent" if now_s > stale_w else "ok"  # not yet expected at start-up
            elif now_s - st.last_seen_s > stale_w:
                status = "stale"
            if status != "ok":
                since = (
                    "never seen"
                    if st.last_seen_s is None
                    else f"last seen {now_s - st.last_seen_s:.0f} s ago"
                )
                warnings.append(f"wearable {w.sensor_id} {status} ({since})")
            if st.battery_pct is not None and st.battery_pct < 15:
                warnings.append(f"wearable {w.sensor_id} battery {st.battery_pct:.0f} %")
            sensors[w.sensor_id] = C.SensorHealth(
                last_seen_ms=self._ts(st.last_seen_s or 0.0),
                battery_pct=st.battery_pct,
                rssi_dbm=None if st.rssi_dbm is None else float(np.clip(st.rssi_dbm, -150, 20)),
                status=status,
            )
            if st.status == "rebooted":
                st.status = "ok"  # reported once
        for rs in self._room_sensors.values():
            status = "ok"
            if rs.last_seen_s is None:
                status = "silent" if now_s > self.cfg.edge.room_stale_s else "ok"
            elif now_s - rs.last_seen_s > self.cfg.edge.room_stale_s:
                status = "stale"
            if status != "ok":
                warnings.append(f"room sensor {rs.sensor_id} {status}")
            sensors[rs.sensor_id] = C.SensorHealth(
                last_seen_ms=self._ts(rs.last_seen_s or 0.0), battery_pct=rs.battery, status=status
            )  # type: ignore[arg-type]
        return sensors, warnings

    def _health(self, now_s: float) -> None:
        sensors, warnings = self.sensor_health(now_s)
        warnings += self._fault_notes
        self._fault_notes = []
        if len(sensors) > 64:  # contract limit: report the non-ok ones first
            order = sorted(sensors, key=lambda k: (sensors[k].status == "ok", k))
            warnings.append(f"{len(sensors) - 64} more sensors not listed")
            sensors = {k: sensors[k] for k in order[:64]}
        if len(warnings) > 32:
            warnings = [*warnings[:31], f"{len(warnings) - 31} more warnings"]
        self._count("health_warnings", len(warnings))
        sysinfo = _system_info()
        data = C.HealthData(
            uptime_s=max(0.0, time.monotonic() - self._t0_wall),
            outbox_depth=self.outbox.depth() if self.outbox else 0,
            model_version=self.model.version[:40],
            fw=self.cfg.edge.fw_version[:40],
            sensors=sensors,
            warnings=[w[:200] for w in warnings],
            **sysinfo,
        )
        self.last_health = data
        self._enqueue(
            [self._pending_msg("health", topics.health(self.site_id, self.device_id), C.Health, data, now_s)]
        )

    # ------------------------------------------------------------------ downlinks

    def _on_downlink(self, msg: Any) -> None:
        parsed = msg.topic.rsplit("/", 3)
        if msg.topic == topics.config(self.site_id, self.device_id):
            self._apply_remote_config(bytes(msg.payload))
        elif msg.topic == topics.ota_model(self.site_id, self.device_id):
            if msg.payload:
                # verify/load/self-test off the network thread: PUBACKs keep flowing meanwhile
                threading.Thread(target=self.apply_model_update, args=(bytes(msg.payload),),
                                 name="edge-model-update", daemon=True).start()
        elif len(parsed) == 4 and parsed[1] == "req":
            self._count("commands_unknown")

    def _reply(self, kind_cls: type, topic: str, data: C.StatusData) -> None:
        self._enqueue(
            [
                self._pending_msg(
                    "cmd_res" if kind_cls is C.CommandResult else "ota_status",
                    topic,
                    kind_cls,
                    data,
                    self._now_s,
                )
            ]
        )

    def _apply_remote_config(self, payload: bytes) -> None:
        topic = topics.cmd_res(self.site_id, self.device_id, "config")
        try:
            desired = msgspec.json.decode(payload, type=dict[str, Any]) if payload else {}
            version = str(desired.pop("version", ""))
            unknown = set(desired) - REMOTE_CONFIG_KEYS
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)}")
            merged = self.cfg.edge.model_dump() | desired
            checked = type(self.cfg.edge).model_validate(merged)  # same limits as the file
        except (msgspec.DecodeError, ValueError) as exc:
            self._count("config_rejected")
            self._reply(C.CommandResult, topic, C.StatusData(status="rejected", detail=str(exc)[:200]))
            return
        with self._lock:
            self.cancel_window_s = checked.cancel_window_s
            self.heartbeat_s = checked.heartbeat_s
            self.telemetry_window_s = checked.telemetry_window_s
            self.upload_raw_imu = checked.upload_raw_imu
        self._count("config_applied")
        self._reply(
            C.CommandResult, topic, C.StatusData(status="ok", version=version[:40], transaction=version[:80])
        )

    def apply_model_update(self, blob: bytes) -> bool:
        """Verify (ed25519), load, self-test and swap a new fall model; keep the old one on any failure."""
        topic = topics.ota_status(self.site_id, self.device_id)
        try:
            new_model, manifest = self.models.install(blob)
        except ota.UpdateError as exc:
            self._count(f"model_update_{exc.status}")
            log.error("model update refused: %s", exc)
            if self.outbox is not None:
                self._reply(
                    C.OtaStatus,
                    topic,
                    C.StatusData(status=exc.status, detail=str(exc)[:200], version=exc.version[:40]),
                )
            return False
        with self._lock:  # swap between two feed() calls: no window is scored half by each model
            self.model = new_model
            for w in self._wearables.values():
                w.det.model = new_model
                w.det.threshold = new_model.threshold
        self._count("model_update_installed")
        if self.outbox is not None:
            self._reply(
                C.OtaStatus, topic, C.StatusData(status="installed", version=str(manifest["version"])[:40])
            )
            self._enqueue([self._state_msg("ready")])
        return True

    # ------------------------------------------------------------------ introspection

    @property
    def model_version(self) -> str:
        return self.model.version

    def stats(self) -> dict[str, int | float]:
        out: dict[str, int | float] = {
            "frames": 0,
            "frame_errors": 0,
            "alerts_raised": 0,
            "alerts_cancelled": 0,
        }
        out.update(self._counts)
        out["wearables"] = len(self._wearables)
        out["room_sensors"] = len(self._room_sensors)
        out["pending_alerts"] = len(self._pending)
        if self.outbox is not None and self.started:
            out["outbox_depth"] = self.outbox.depth()
            out["next_seq"] = self.outbox.next_seq
            out["outbox_thinned"] = self.outbox.thinned
        if self.publisher is not None:
            p = self.publisher
            out.update(
                published=p.published,
                acked=p.acked,
                connects=p.connects,
                disconnects=p.disconnects,
                rejected=p.rejected,
            )
        agg: dict[str, int] = {}
        for w in self._wearables.values():
            for k, v in vars_counters(w.stream.counters).items():
                agg[k] = agg.get(k, 0) + v
            agg["dedup_suppressed"] = agg.get("dedup_suppressed", 0) + w.det.suppressed
        out.update({f"stream_{k}": v for k, v in agg.items()})
        return out


def vars_counters(c: Any) -> dict[str, int]:
    return {k: int(getattr(c, k)) for k in c.__slots__}


def _system_info() -> dict[str, float | None]:
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
    temps = getattr(psutil, "sensors_temperatures", lambda: {})()
    for entries in (temps or {}).values():
        if entries:
            info["temp_c"] = float(np.clip(entries[0].current, -60, 150))
            break
    return info
