"""The ingest stage: radio frames in, clean 50 Hz chunks into each wearable's detector, room
events into room fusion and the night counters.

This is the per-frame hot path of the agent (a benchmark hub takes hundreds of wearables at
50 Hz), so it is written flat: no per-frame objects beyond what decoding makes, counters
touched only on errors and once per feed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np

from fallwatch.edge.counters import Counters
from fallwatch.edge.fusion import RoomFusion
from fallwatch.edge.risk import NightCounter
from fallwatch.edge.sensors import RoomSensor, Sensors, Wearable
from fallwatch.models import features as F
from fallwatch.protocol.frames import FrameError, RoomEvent, SensorFrame, decode_imu, decode_room

log = logging.getLogger("fallwatch.edge.agent")

#: A chunk whose acceleration magnitude spans more than this is body movement (g); lying
#: still spans sensor noise only (~0.02 g).
MOVE_RANGE_G = 0.15


class Ingest:
    """Decodes frames for one hub and routes them; :meth:`feed` returns the wearables fed."""

    def __init__(
        self, device_id: str, sensors: Sensors, fusion: RoomFusion, nights: NightCounter, counters: Counters
    ) -> None:
        self.device_id = device_id
        self.sensors = sensors
        self.fusion = fusion
        self.nights = nights
        self.count = counters.count

    def feed(self, frames: Iterable[SensorFrame], now_s: float) -> dict[str, Wearable]:
        """Decode and route frames received up to hub time ``now_s``; returns the wearables
        that got samples (or whose held packets were released), by sensor id."""
        count = self.count
        wearables = self.sensors.wearables
        device_id = self.device_id
        fed: dict[str, Wearable] = {}
        n = 0
        for fr in frames:
            n += 1
            if fr.hub_id != device_id:
                count("frames_other_hub")
                continue
            if fr.transport == "ble":
                try:
                    pkt = decode_imu(fr.payload)
                except FrameError as exc:
                    count("frame_errors")
                    count(f"frame_errors_{exc.reason}")
                    log.debug("bad frame from %s: %s", fr.sensor_id, exc)
                    continue
                if pkt.sensor_id != fr.sensor_id:
                    count("frame_errors")
                    count("frame_errors_sensor_mismatch")
                    continue
                w = wearables.get(pkt.sensor_id)
                if w is None:
                    count("sensors_discovered")
                    w = self.sensors.add_wearable(pkt.sensor_id, None)
                for ch in w.stream.push(pkt, fr.rx_t_s):
                    self.samples(w, ch.t_s, ch.acc_g, ch.gyro_dps)
                if w.stream.cancel_presses:
                    w.cancel_presses += w.stream.take_cancel_presses()
                fed[w.sensor_id] = w
            elif fr.transport == "zigbee":
                try:
                    ev = decode_room(fr.payload)
                except FrameError as exc:
                    count("frame_errors")
                    count(f"frame_errors_{exc.reason}")
                    continue
                self.room_event(ev, fr.rx_t_s)
            else:
                count("frame_errors")
                count("frame_errors_transport")
        count("frames", n)
        # streams with held (reordered) packets give up on gaps once their wait expires
        for w in wearables.values():
            if w.stream.held:
                for ch in w.stream.flush(now_s):
                    self.samples(w, ch.t_s, ch.acc_g, ch.gyro_dps)
                fed[w.sensor_id] = w
        return fed

    @staticmethod
    def samples(w: Wearable, t: np.ndarray, acc: np.ndarray, gyro: np.ndarray) -> None:
        """One clean chunk of a wearable: detector, gait features, telemetry accumulators."""
        w.det.feed(t, acc, gyro)
        w.watch.feed(t, acc)
        w.gait.push(acc)
        mag = F.magnitude(acc)
        w.n += len(mag)
        w.act_sum += float(np.abs(mag - 1.0).sum())
        if len(mag):
            hi, lo = float(mag.max()), float(mag.min())
            w.max_g = max(w.max_g, hi)
            if hi - lo > MOVE_RANGE_G:
                w.last_move_t = float(t[-1])

    def room_event(self, ev: RoomEvent, rx_t_s: float) -> None:
        """One decoded room-sensor event: the sensor's record, room fusion, night counters."""
        rs = self.sensors.room_sensors.get(ev.sensor_id)
        if rs is None:
            rs = RoomSensor(ev.sensor_id, ev.kind, ev.room, None)
            self.sensors.room_sensors[ev.sensor_id] = rs
            self.count("sensors_discovered")
        rs.last_seen_s = rx_t_s
        rs.events += 1
        rs.value = ev.value
        if "battery" in ev.state:
            rs.battery = float(ev.state["battery"])
        if "linkquality" in ev.state:
            rs.linkquality = float(ev.state["linkquality"])
        self.fusion.update(ev, rx_t_s, rs)
        self.nights.update(ev, rx_t_s)
