"""The source interface, the registry every source registers in, and the live-source base."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from fallwatch.config import EdgeConfig
from fallwatch.edge.sensors import SensorDescription
from fallwatch.plugins import PluginConfig, Registry
from fallwatch.protocol.frames import SensorFrame


class Source(Protocol):
    """Where a hub's frames come from: ``(frames, now_s)`` batches until closed or exhausted.

    A source that knows more about the hub than its config file (the simulator: which site
    and hub it serves, its sensors, the epoch of its clock) says so through the four
    properties; the others answer ``None`` / no sensors (:class:`HubFromConfig`) and the
    config decides.
    """

    @property
    def site_id(self) -> str | None: ...

    @property
    def hub_id(self) -> str | None: ...

    @property
    def sensors(self) -> Sequence[SensorDescription]: ...

    @property
    def start_epoch_ms(self) -> int | None: ...

    def batches(self) -> Iterator[tuple[list[SensorFrame], float]]: ...

    def close(self) -> None: ...


#: Every edge source, keyed by ``edge.source.type``. The modules of this package register
#: themselves on first use; a source living in a higher layer (the simulator, see
#: :mod:`fallwatch.app.sim_source`) is registered explicitly by the composition root.
#: A factory is called as ``factory(source_cfg, edge_cfg, duration_s=..., **options)``.
SOURCES: Registry[Source] = Registry[Source]("edge source", discover="fallwatch.edge.sources")


@dataclass(frozen=True, slots=True)
class SensorSpec:
    """What the agent needs to know about a sensor (``fallwatch.sim.fleet.SensorInfo`` has the same shape)."""

    sensor_id: str
    hub_id: str
    site_id: str
    resident_id: str | None
    kind: str
    room: str | None
    rate_hz: float | None = None


def configured_sensors(cfg: EdgeConfig) -> list[SensorSpec]:
    """The sensors declared in the config file (wearables and zigbee room sensors)."""
    out = [SensorSpec(w.id, cfg.device_id, cfg.site_id, w.resident_id, "wearable", None, 50.0)
           for w in cfg.wearables]
    out += [SensorSpec(r.id, cfg.device_id, cfg.site_id, r.resident_id, r.kind, r.room) for r in cfg.room_sensors]
    return out


def source_config(cfg: EdgeConfig) -> PluginConfig:
    """``edge.source`` validated against its source's own config class (a readable ConfigError if not)."""
    return SOURCES.parse(cfg.source, where="edge.source")


def make_source(cfg: EdgeConfig, *, duration_s: float | None = None, **options: object) -> Source:
    """The source ``edge.source.type`` names. ``duration_s``: source seconds wanted (a source
    that can stop by itself, e.g. the simulator, stops there; others ignore it)."""
    src = source_config(cfg)
    return SOURCES.get(src.type).factory(src, cfg, duration_s=duration_s, **options)


class HubFromConfig:
    """The :class:`Source` identity properties of a source that leaves them to the config."""

    site_id: str | None = None
    hub_id: str | None = None
    sensors: Sequence[SensorDescription] = ()
    start_epoch_ms: int | None = None


class LiveSource(HubFromConfig):
    """A source fed by a callback thread (MQTT, BLE, serial): frames are queued and handed
    out every ``tick_s`` on the hub's monotonic clock. A radio calls :meth:`put`."""

    def __init__(self, hub_id: str, tick_s: float = 0.2) -> None:
        self.hub_id: str = hub_id
        self.tick_s = tick_s
        self._q: queue.Queue[SensorFrame] = queue.Queue()
        self._stop = threading.Event()
        self._t0 = time.monotonic()

    def now_s(self) -> float:
        return time.monotonic() - self._t0

    def put(self, sensor_id: str, transport: str, payload: bytes) -> None:
        self._q.put(SensorFrame(self.hub_id, sensor_id, transport, self.now_s(), payload))

    def batches(self) -> Iterator[tuple[list[SensorFrame], float]]:
        while not self._stop.is_set():
            deadline = time.monotonic() + self.tick_s
            batch: list[SensorFrame] = []
            while (left := deadline - time.monotonic()) > 0:
                try:
                    batch.append(self._q.get(timeout=left))
                except queue.Empty:
                    break
            yield batch, self.now_s()

    def close(self) -> None:
        self._stop.set()
