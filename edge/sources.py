"""Sensor sources: where a hub's frames come from, behind one small interface.

A source yields ``(frames, now_s)`` batches: the :class:`~fallwatch.protocol.frames.SensorFrame`
objects received since the previous batch and the hub clock at the end of it. Live
sources yield at least every ``tick_s`` even when nothing arrived, so the agent's timers
(cancel window, heartbeat, telemetry) run on quiet nights too.

Adding a source (a real BLE central, a serial dongle, another bus) is one class with
``batches()`` and ``close()`` plus one line in :data:`SOURCES`; ``edge.source.type``
in the config picks it. :class:`BleSource` marks the place.

* ``sim``: the simulated fleet (``firmware_sim``), only this hub's frames.
* ``replay``: a recorded JSONL file of frames (``fallwatch edge record`` writes one).
* ``zigbee2mqtt``: room sensors on the hub's local MQTT bus, converted to the same
  room-event frames the simulator produces, so one decoder serves both.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgspec

from fallwatch.config import EdgeConfig, EdgeRoomSensor, MqttConfig
from fallwatch.protocol.frames import SensorFrame

log = logging.getLogger(__name__)


class Source(Protocol):
    def batches(self) -> Iterator[tuple[list[SensorFrame], float]]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SensorSpec:
    """What the agent needs to know about a sensor (``firmware_sim.fleet.SensorInfo`` has the same shape)."""

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


# ---------------------------------------------------------------------- simulator


class SimSource:
    """This hub's frames from a simulated fleet, paced at ``speed`` (0 = as fast as possible)."""

    def __init__(self, cfg: EdgeConfig, duration_s: float | None = None, step_s: float = 0.5,
                 seed: int | None = None, hub_id: str | None = None) -> None:
        """``hub_id``: which hub to serve (default ``cfg.device_id``; a one-hub scenario's hub
        is taken whatever its id)."""
        from fallwatch.sim.fleet import Fleet
        from fallwatch.sim.scenario import demo_scenario, load_scenario

        scn = load_scenario(cfg.source.path) if cfg.source.path else demo_scenario(residents=1, duration_s=600.0)
        self.fleet = Fleet(scn, seed=seed)
        hubs = {h.hub_id: h for h in self.fleet.hubs}
        want = hub_id or cfg.device_id
        if want in hubs:
            self.hub_id = want
        elif len(hubs) == 1 and hub_id is None:
            self.hub_id = next(iter(hubs))
        else:
            raise ValueError(f"hub {want!r} is not in the scenario (hubs: {sorted(hubs)[:10]})")
        self.site_id = hubs[self.hub_id].site_id
        self.speed = cfg.source.speed
        self.duration_s = duration_s
        self.step_s = step_s
        self.start_epoch_ms = self.fleet.start_epoch_ms

    @property
    def sensors(self) -> list[Any]:
        return [s for s in self.fleet.sensors if s.hub_id == self.hub_id]

    def batches(self) -> Iterator[tuple[list[SensorFrame], float]]:
        for chunk in self.fleet.run(duration_s=self.duration_s, step_s=self.step_s, speed=self.speed or None):
            yield [f for f in chunk.frames if f.hub_id == self.hub_id], chunk.t_s

    def close(self) -> None:
        pass


# ---------------------------------------------------------------------- replay


def frame_to_json(f: SensorFrame) -> str:
    return json.dumps({"hub_id": f.hub_id, "sensor_id": f.sensor_id, "transport": f.transport,
                       "rx_t_s": round(f.rx_t_s, 6), "payload_b64": base64.b64encode(f.payload).decode()})


class ReplaySource:
    """Frames recorded as JSONL (one frame per line), replayed at ``speed`` (0 = flat out).

    A line that does not parse is counted and skipped (``bad_lines``), never fatal.
    """

    def __init__(self, cfg: EdgeConfig, step_s: float = 0.5) -> None:
        if cfg.source.path is None:
            raise ValueError("edge.source.path must name the recorded JSONL file")
        self.path = Path(cfg.source.path)
        self.speed = cfg.source.speed
        self.step_s = step_s
        self.hub_id = cfg.device_id
        self.bad_lines = 0

    def _frames(self) -> Iterator[SensorFrame]:
        with open(self.path) as fh:
            for line in fh:
                try:
                    d = json.loads(line)
                    yield SensorFrame(d["hub_id"], d["sensor_id"], d["transport"], float(d["rx_t_s"]),
                                      base64.b64decode(d["payload_b64"]))
                except (ValueError, KeyError, TypeError):
                    self.bad_lines += 1

    def batches(self) -> Iterator[tuple[list[SensorFrame], float]]:
        wall0 = time.monotonic()
        batch: list[SensorFrame] = []
        edge = self.step_s
        for f in self._frames():
            while f.rx_t_s > edge:
                yield self._pace(batch, edge, wall0)
                batch = []
                edge += self.step_s
            batch.append(f)
        yield self._pace(batch, edge, wall0)

    def _pace(self, batch: list[SensorFrame], t: float, wall0: float) -> tuple[list[SensorFrame], float]:
        if self.speed:
            lag = t / self.speed - (time.monotonic() - wall0)
            if lag > 0:
                time.sleep(lag)
        return batch, t

    def close(self) -> None:
        pass


def record(frames: Iterator[tuple[list[SensorFrame], float]], out: str | Path) -> int:
    """Write frames to a replay file; returns the number written."""
    n = 0
    with open(out, "w") as fh:
        for batch, _ in frames:
            for f in batch:
                fh.write(frame_to_json(f) + "\n")
                n += 1
    return n


# ---------------------------------------------------------------------- live sources


class _LiveSource:
    """A source fed by a callback thread (MQTT, BLE, serial): frames are queued and handed
    out every ``tick_s`` on the hub's monotonic clock."""

    def __init__(self, hub_id: str, tick_s: float = 0.2) -> None:
        self.hub_id = hub_id
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


class Zigbee2MqttSource(_LiveSource):
    """Room sensors published by zigbee2mqtt on the hub's local bus.

    zigbee2mqtt publishes ``<base_topic>/<friendly name>`` with flat JSON
    (``{"occupancy": true, "battery": 97, "linkquality": 120}``); each configured room
    sensor maps a friendly name to our id, kind and room. The JSON is wrapped into the
    room-event frame format (identity + ``t_ms`` added) and goes through the same strict
    decoder as simulated frames; unknown devices are counted, not guessed at.
    """

    def __init__(self, cfg: EdgeConfig, mqtt_cfg: MqttConfig | None = None, tick_s: float = 0.2) -> None:
        super().__init__(cfg.device_id, tick_s)
        from fallwatch.mqtt import connect, make_client

        self.base = cfg.source.base_topic.rstrip("/")
        self.by_topic: dict[str, EdgeRoomSensor] = {f"{self.base}/{r.topic or r.id}": r for r in cfg.room_sensors}
        bus = mqtt_cfg or MqttConfig(url=cfg.source.bus_url, protocol="3.1.1")
        self.unknown = 0
        self.bad = 0
        self.client = make_client(bus, f"fallwatch-{cfg.device_id}-z2m", clean_start=True)
        self.client.on_connect = lambda c, *a: c.subscribe(f"{self.base}/+", qos=0)
        self.client.on_message = self._on_message
        connect(self.client, bus, clean_start=True)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        spec = self.by_topic.get(msg.topic)
        if spec is None:
            if not msg.topic.startswith(f"{self.base}/bridge"):
                self.unknown += 1
            return
        try:
            state = msgspec.json.decode(msg.payload, type=dict[str, Any])
        except msgspec.DecodeError:
            self.bad += 1
            return
        payload = msgspec.json.encode({"sensor": spec.id, "kind": spec.kind, "room": spec.room,
                                       "t_ms": int(time.time() * 1000),
                                       **{k: v for k, v in state.items() if k in _Z2M_KEYS}})
        self.put(spec.id, "zigbee", payload)

    def close(self) -> None:
        super().close()
        self.client.disconnect()
        self.client.loop_stop()


#: zigbee2mqtt state keys the room-event format carries (others, e.g. illuminance, are dropped).
_Z2M_KEYS = frozenset({"occupancy", "pressure", "contact", "tamper", "battery_low", "battery", "voltage",
                       "linkquality"})


class BleSource(_LiveSource):
    """The place for a real wearable radio (BLE GATT notifications, or a serial dongle).

    An implementation connects to each configured wearable, subscribes to its IMU
    characteristic and calls ``self.put(sensor_id, "ble", payload)`` with each
    notification's bytes (the frame format of :func:`fallwatch.protocol.frames.decode_imu`).
    Everything after that — reordering, clock, faults, detection — is shared. A BLE
    stack (e.g. ``bleak``) is not a dependency yet, so this refuses to start.
    """

    def __init__(self, cfg: EdgeConfig, tick_s: float = 0.2) -> None:
        raise NotImplementedError("BLE source not implemented on this build: use sim, replay or zigbee2mqtt")


SOURCES: dict[str, Any] = {"sim": SimSource, "replay": ReplaySource, "zigbee2mqtt": Zigbee2MqttSource,
                           "ble": BleSource}


def make_source(cfg: EdgeConfig, **kwargs: Any) -> Any:
    return SOURCES[cfg.source.type](cfg, **kwargs)
