"""The hub's sensor registry: every wearable and room sensor the agent knows, with the
per-sensor state the stages share.

Why one registry rather than state inside each stage: a wearable's record is touched by
every stage in turn (ingest pushes samples into its stream and detector, the alert
decision keeps its cancel presses and last alert, telemetry sums its activity). Keeping
it one mutable ``slots`` record read by attribute keeps the per-sample hot path free of
lookups and copies; the stages own the *logic*, this module only the records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from fallwatch.edge.risk import GaitAccumulator
from fallwatch.edge.stream import StreamSettings, WearableStream
from fallwatch.models import features as F
from fallwatch.models.detector import Candidate, DetectorSettings, DeviceFallDetector, FallDecision, WindowScorer
from fallwatch.models.no_recovery import NoRecoverySettings, NoRecoveryWatch


class WindowDetector(Protocol):
    """What the agent needs of a per-wearable detector (:class:`DeviceFallDetector`'s split API)."""

    model: WindowScorer | None
    threshold: float
    suppressed: int

    def feed(self, t_s: np.ndarray, acc_g: np.ndarray, gyro_dps: np.ndarray | None = None) -> None: ...

    def pending_windows(self) -> np.ndarray: ...

    @property
    def inflight(self) -> list[Candidate]: ...

    def inflight_refs(self) -> np.ndarray: ...

    def use_model(self, model: WindowScorer) -> None: ...

    def resolve(self, probs: np.ndarray) -> list[FallDecision]: ...


class Scorer(WindowScorer, Protocol):
    """The fall model as the agent uses it: a window scorer with a tag for alerts."""

    @property
    def tag(self) -> str: ...


#: Builds one wearable's detector (the benchmark passes its naive baseline here).
DetectorFactory = Callable[[WindowScorer, DetectorSettings], WindowDetector]


class SensorDescription(Protocol):
    """A sensor as configured or simulated (``SensorInfo``, ``SensorSpec``): only ``sensor_id``
    is required; ``hub_id``, ``kind``, ``resident_id`` and ``room`` are read when present."""

    @property
    def sensor_id(self) -> str: ...


@dataclass(slots=True)
class Wearable:
    sensor_id: str
    resident_id: str | None
    room: str | None
    stream: WearableStream
    det: WindowDetector
    watch: NoRecoveryWatch  # the no-recovery path: posture blocks and the events being watched
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
class RoomSensor:
    sensor_id: str
    kind: str
    room: str
    resident_id: str | None
    last_seen_s: float | None = None
    events: int = 0
    value: bool | None = None
    battery: float | None = None
    linkquality: float | None = None


WEARABLE_KINDS = frozenset({"wearable", "imu", "ble"})


class Sensors:
    """Wearables, room sensors and residents of one hub; sensors not configured are added
    when their first frame arrives (``discover``)."""

    def __init__(
        self,
        device_id: str,
        model: Scorer,
        *,
        make_detector: DetectorFactory | None = None,
        stream_settings: StreamSettings | None = None,
        detector_settings: DetectorSettings | None = None,
        no_recovery: NoRecoverySettings | None = None,
    ) -> None:
        self.device_id = device_id
        self.no_recovery = no_recovery or NoRecoverySettings()
        self.model = model
        self.make_detector: DetectorFactory = make_detector or DeviceFallDetector
        self.stream_settings = stream_settings or StreamSettings(rate_hz=F.RATE_HZ)
        self.detector_settings = detector_settings or DetectorSettings()
        self.wearables: dict[str, Wearable] = {}
        self.room_sensors: dict[str, RoomSensor] = {}
        self.residents: list[str] = []

    def register_all(self, sensors: Iterable[SensorDescription]) -> None:
        """Register the configured sensors of this hub (others' are skipped)."""
        for s in sensors:
            if getattr(s, "hub_id", self.device_id) != self.device_id:
                continue
            self.register(s)

    def register(self, s: SensorDescription) -> None:
        kind = getattr(s, "kind", "wearable")
        rid = getattr(s, "resident_id", None)
        if rid and rid not in self.residents:
            self.residents.append(rid)
        if kind in WEARABLE_KINDS:
            self.add_wearable(s.sensor_id, rid, getattr(s, "room", None))
        else:
            self.room_sensors[s.sensor_id] = RoomSensor(s.sensor_id, kind, getattr(s, "room", None) or "room", rid)

    def add_wearable(self, sensor_id: str, resident_id: str | None, room: str | None = None) -> Wearable:
        w = Wearable(
            sensor_id,
            resident_id,
            room,
            WearableStream(sensor_id, self.stream_settings),
            self.make_detector(self.model, self.detector_settings),
            NoRecoveryWatch(self.no_recovery),
        )
        self.wearables[sensor_id] = w
        return w

    @property
    def single_resident(self) -> bool:
        """One resident (or none known) on this hub: every room sensor speaks for the wearer."""
        return len(self.residents) <= 1

    def swap_model(self, model: Scorer) -> None:
        """Point every detector at a new model (called between two ``feed()`` calls)."""
        self.model = model
        for w in self.wearables.values():
            w.det.use_model(model)
