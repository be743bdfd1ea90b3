"""The edge agent: one per hub (a home, or a care-home unit). This module only wires the
stages together; each stage is one module behind a small interface:

    frames --> Ingest (edge.ingest: decode, per-wearable streams edge.stream, room events)
           --> Detection (edge.detection: one batched ONNX call per feed, device drops,
               the no-recovery path models.no_recovery)
           --> AlertDecision (edge.decision: cancel window, fault suppression, de-dup)
               using RoomFusion (edge.fusion: which rooms speak for a wearer, room and
               confidence of a fall)
           --> Telemetry (edge.telemetry: summaries, test alarm, daily risk edge.daily_risk,
               health heartbeat)
           --> Uplink (edge.uplink: Outbox edge.outbox, SQLite WAL, fsync -> Publisher
               edge.publisher, QoS 1, deletes on PUBACK) --> broker
    broker --> Downlink (edge.downlink: remote config, signed model updates, commands)

Shared by all: the sensor registry (edge.sensors), the envelope builder (edge.messages)
and the counters behind :meth:`EdgeAgent.stats` (edge.counters).

Time: ``now_s`` is the hub clock in seconds (simulation time in tests, monotonic time
since start when running live). ``start_epoch_ms + now_s * 1000`` is the wall time
stamped on messages.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

import paho.mqtt.client as mqtt

from fallwatch.config import EdgeConfig, FallwatchConfig
from fallwatch.edge import ota
from fallwatch.edge.counters import Counters
from fallwatch.edge.daily_risk import DailyRisk
from fallwatch.edge.decision import AlertDecision, DecidedAlert
from fallwatch.edge.detection import Detection
from fallwatch.edge.downlink import Downlink, self_test
from fallwatch.edge.fusion import RoomFusion
from fallwatch.edge.ingest import Ingest
from fallwatch.edge.messages import Messages, StateName, WallClockWatch
from fallwatch.edge.outbox import Outbox, Pending
from fallwatch.edge.publisher import Publisher
from fallwatch.edge.sensors import DetectorFactory, Scorer, SensorDescription, Sensors
from fallwatch.edge.telemetry import Telemetry
from fallwatch.edge.uplink import Uplink
from fallwatch.models.no_recovery import NoRecoverySettings
from fallwatch.models.scorers import load_scorer
from fallwatch.mqtt import Will
from fallwatch.protocol import contract as C
from fallwatch.protocol.frames import SensorFrame

log = logging.getLogger(__name__)


class EdgeAgent:
    """One hub's agent; see the module docstring for the pipeline."""

    def __init__(
        self,
        cfg: FallwatchConfig,
        sensors: Iterable[SensorDescription] | None = None,
        start_epoch_ms: int | None = None,
        *,
        make_detector: DetectorFactory | None = None,
    ) -> None:
        """``sensors`` = the configured sensors (others' are skipped, unknown ones discovered);
        ``make_detector`` builds each wearable's detector (default: the streaming detector)."""
        self.cfg = cfg
        self.site_id = cfg.edge.site_id
        self.device_id = cfg.edge.device_id
        self.start_epoch_ms = start_epoch_ms if start_epoch_ms is not None else C.now_ms()
        self.started = False
        self._now_s = 0.0
        self._lock = threading.RLock()  # feed() vs downlink handlers (config, OTA, commands)
        self.init_model()
        self.init_sensors(sensors or [], make_detector)
        self.init_messages()
        self.init_fusion()
        self.init_telemetry()
        self.init_decision()
        self.init_detection()
        self.init_ingest()
        self.init_downlink()

    # ------------------------------------------------------------------ wiring (top to bottom)

    def init_model(self) -> None:
        e = self.cfg.edge
        self.model: Scorer = ota.load_installed(e) or load_scorer(e.model_path)
        self.models = ota.ModelStore(e, self.model)
        self.upload_raw_imu = e.upload_raw_imu

    def init_sensors(self, sensors: Iterable[SensorDescription], make_detector: DetectorFactory | None) -> None:
        self.counters = Counters()
        nr = NoRecoverySettings(no_recovery_s=self.cfg.edge.no_recovery_s,
                                stand_down_lying_before=self.cfg.edge.stand_down_lying_before)
        self.sensors = Sensors(self.device_id, self.model, make_detector=make_detector, no_recovery=nr)
        self.sensors.register_all(sensors)

    def init_messages(self) -> None:
        self.messages = Messages(self.site_id, self.device_id, self.start_epoch_ms)
        self.wall_clock = WallClockWatch()
        self.uplink = Uplink(self.cfg, self.messages)

    def init_fusion(self) -> None:
        self.fusion = RoomFusion(self.sensors, self.start_epoch_ms)

    def init_telemetry(self) -> None:
        self.risk = DailyRisk(self.cfg.edge, self.sensors, self.messages, self.uplink, self.counters)
        self.telemetry = Telemetry(self.cfg.edge, self.sensors, self.fusion, self.risk, self.messages, self.uplink,
                                   self.counters, model_version=lambda: self.model.version)

    def init_decision(self) -> None:
        self.decisions = AlertDecision(self.sensors, self.fusion, self.messages, self.counters,
                                       cancel_window_s=self.cfg.edge.cancel_window_s, send=self.uplink.send,
                                       warn=self.telemetry.warn, on_raised=self.risk.save, store=self.uplink)

    def init_detection(self) -> None:
        self.detection = Detection(self.sensors, self.fusion, self.decisions, self.counters, self.telemetry.warn)

    def init_ingest(self) -> None:
        self.ingest = Ingest(self.device_id, self.sensors, self.fusion, self.risk.nights, self.counters)

    def init_downlink(self) -> None:
        self.downlink = Downlink(self.cfg, self.messages, self.counters, uplink=self.uplink, lock=self._lock,
                                 now_s=lambda: self._now_s, models=self.models, model=lambda: self.model,
                                 apply_settings=self._apply_settings, swap_model=self._swap_model,
                                 birth=lambda: self._state("ready"))
        self.downlink.add_command("ping", self.downlink.ping)
        self.downlink.add_command("self-test", self._self_test)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Open the outbox, connect (birth on every connect, last will 'lost'), start draining."""
        self.start_outbox()
        self.risk.load()
        self.start_decisions()
        self.start_publisher()
        self.started = True

    def start_outbox(self) -> Outbox:
        return self.uplink.open()

    def start_decisions(self) -> None:
        """Resume fall decisions a crash left inside their cancel window; send the overdue ones now."""
        with self._lock:
            if self.decisions.resume(self._now_s):
                self.decisions.resolve(self._now_s, time.monotonic())

    def start_publisher(self) -> None:
        assert self.uplink.outbox is not None
        will_seq = self.uplink.outbox.reserve()
        data = self.messages.state_data("lost", self.cfg.edge.fw_version, self.model.version,
                                        self.telemetry.heartbeat_s)
        will = Will(self.messages.t_state, self.messages.envelope(C.State, data, will_seq, self._now_s))
        self.uplink.connect(will, on_connect=self._on_connect, on_message=self.downlink.on_message)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Clean shutdown: 'offline' state through the outbox, drain, disconnect (no will)."""
        if not self.started or self.uplink.outbox is None or self.uplink.publisher is None:
            return
        self.uplink.send([self._state("offline")])
        self.flush(timeout_s)
        self.uplink.close()
        self.started = False

    def flush(self, timeout_s: float) -> bool:
        """Wait until every outbox row is acknowledged by the broker."""
        return self.uplink.flush(timeout_s)

    def _on_connect(self, client: mqtt.Client) -> None:
        self.downlink.subscribe(client)
        self.uplink.send([self._state("ready")])

    # ------------------------------------------------------------------ the hot path

    def feed(self, frames: Iterable[SensorFrame], now_s: float) -> None:
        """Decode and handle frames received up to hub time ``now_s``; decide; publish what is due."""
        with self._lock:
            wall = time.monotonic()
            self._now_s = now_s
            if step_ms := self.wall_clock.step():
                self.follow_wall_clock(step_ms)
            fed = self.ingest.feed(frames, now_s)
            self.detection.run(fed.values(), now_s)
            self.decisions.resolve(now_s, wall)
            self.telemetry.tick(now_s)

    def follow_wall_clock(self, step_ms: int) -> None:
        """The hub's wall clock stepped by ``step_ms``: stamp what comes next by it (and read
        the hour of day by it). What is already in the outbox keeps its stamps; a clock that
        jumped ahead shows at the gateway (clamped past ``clock_skew_s``, counted)."""
        self.start_epoch_ms += step_ms
        self.messages.start_epoch_ms += step_ms
        self.fusion.start_epoch_ms += step_ms
        for rooms in (self.fusion.rooms, self.fusion.shared, *self.fusion.per_resident.values()):
            rooms.start_epoch_ms += step_ms
        self.risk.nights.start_epoch_ms += step_ms
        self.counters.count("wall_clock_steps")
        self.telemetry.warn(f"hub wall clock stepped {step_ms / 1000:+.1f} s: message times follow it")
        log.warning("hub wall clock stepped %+.1f s (NTP, RTC, date -s): message times follow it", step_ms / 1000)

    # ------------------------------------------------------------------ what the downlinks change

    def _state(self, state: StateName) -> Pending:
        data = self.messages.state_data(state, self.cfg.edge.fw_version, self.model.version,
                                        self.telemetry.heartbeat_s)
        return self.messages.state(data, self._now_s)

    def _apply_settings(self, checked: EdgeConfig) -> None:
        self.decisions.cancel_window_s = checked.cancel_window_s
        self.telemetry.heartbeat_s = checked.heartbeat_s
        self.telemetry.telemetry_window_s = checked.telemetry_window_s
        self.upload_raw_imu = checked.upload_raw_imu
        wearers = {w.id: w.resident_id for w in checked.wearables}
        changed = False
        for sid, w in self.sensors.wearables.items():
            if sid in wearers and w.resident_id != wearers[sid]:
                log.warning("wearable %s now worn by %s (was %s)", sid, wearers[sid], w.resident_id)
                w.resident_id = wearers[sid]
                changed = True
        if changed:  # who lives here decides whether room sensors speak for the one wearer
            rids = [w.resident_id for w in self.sensors.wearables.values()]
            rids += [r.resident_id for r in self.sensors.room_sensors.values()]
            self.sensors.residents = list(dict.fromkeys(r for r in rids if r))

    def _swap_model(self, model: Scorer) -> None:
        self.model = model
        self.sensors.swap_model(model)

    def _self_test(self, req: C.CommandRequest) -> C.StatusData:
        with self._lock:
            return self_test(self.model, self.telemetry, self._now_s, req.transaction)

    # ------------------------------------------------------------------ public operations

    def on_alert(self, listener: Callable[[DecidedAlert], None]) -> None:
        """Tell ``listener`` about every alert/cancellation once it is committed to the outbox."""
        self.decisions.subscribe(listener)

    def score_risk(self, now_s: float) -> list[C.RiskData]:
        """Score and publish the day that ends now, per wearer; then start a new day.

        Called automatically when the day rolls over (``edge.risk_hour``); callable any time.
        """
        with self._lock:
            return self.risk.score(now_s)

    def apply_model_update(self, blob: bytes) -> bool:
        """Verify (ed25519), load, self-test and swap a new fall model; keep the old one on any failure."""
        return self.downlink.apply_model_update(blob)

    def sensor_health(self, now_s: float) -> tuple[dict[str, C.SensorHealth], list[str]]:
        """Per-sensor status and human-readable warnings (faults are warnings, never falls)."""
        return self.telemetry.sensor_health(now_s)

    # ------------------------------------------------------------------ introspection

    @property
    def outbox(self) -> Outbox | None:
        return self.uplink.outbox

    @property
    def publisher(self) -> Publisher | None:
        return self.uplink.publisher

    @property
    def model_version(self) -> str:
        return self.model.version

    @property
    def cancel_window_s(self) -> float:
        return self.decisions.cancel_window_s

    @property
    def heartbeat_s(self) -> float:
        return self.telemetry.heartbeat_s

    @property
    def telemetry_window_s(self) -> float:
        return self.telemetry.telemetry_window_s

    @property
    def last_health(self) -> C.HealthData | None:
        return self.telemetry.last_health

    def stats(self) -> dict[str, int | float]:
        out: dict[str, int | float] = {"frames": 0, "frame_errors": 0, "alerts_raised": 0, "alerts_cancelled": 0}
        out.update(self.counters.values)
        out["wearables"] = len(self.sensors.wearables)
        out["room_sensors"] = len(self.sensors.room_sensors)
        out["pending_alerts"] = len(self.decisions.pending)
        out.update(self.uplink.stats(self.started))
        agg: dict[str, int] = {}
        for w in self.sensors.wearables.values():
            c = w.stream.counters
            for k in c.__slots__:
                agg[k] = agg.get(k, 0) + int(getattr(c, k))
            agg["dedup_suppressed"] = agg.get("dedup_suppressed", 0) + w.det.suppressed
        out.update({f"stream_{k}": v for k, v in agg.items()})
        watch: dict[str, int] = {}  # the no-recovery watches: events, and how each ended
        for w in self.sensors.wearables.values():
            for k, v in w.watch.counts.items():
                watch[k] = watch.get(k, 0) + v
        out.update({f"no_recovery_watch_{k}": v for k, v in watch.items()})
        return out
