"""Simulated devices: the wearable IMU and the room sensors, with their faults.

A device turns the resident's motion (or presence) into the frames a hub would really
receive: the wearable samples at its rate, adds the part's noise and bias, quantises
to int16 counts, batches ``frame_s`` of samples per BLE-like frame with a sequence
number, boot counter and device-clock timestamp; room sensors report zigbee2mqtt-style
JSON on change, on retrigger and as heartbeats. Between device and hub a link model
drops (in bursts), duplicates, delays (reorders) and corrupts frames.
"""

from __future__ import annotations

import fnmatch
import heapq
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fallwatch.protocol.frames import (
    FLAG_BOOT,
    FLAG_CANCEL,
    FLAG_CLOCK_JUMP,
    FLAG_LOW_BATTERY,
    FLAG_SATURATED,
    RoomEvent,
    SensorFrame,
    encode_room,
    pack_imu,
    quantise,
)
from fallwatch.sim.motion import render_block
from fallwatch.sim.scenario import Fault, RoomSensor, Wearable
from fallwatch.sim.timeline import Timeline, Truth

if TYPE_CHECKING:
    from fallwatch.sim.replay import ImuRecording

LOW_BATTERY_PCT = 15.0
BLOCK_S = 10.0  # motion is rendered this many seconds at a time


def key_of(name: str) -> int:
    """A stable 32-bit key for a device id (seeds its random streams)."""
    return zlib.crc32(name.encode())


@dataclass
class FaultLog:
    """A configured fault on one device and what it actually did (for ground truth)."""

    fault: Fault
    truth: Truth
    counts: dict[str, int] = field(default_factory=dict)

    def active(self, t: float) -> bool:
        f = self.fault
        if f.at_s is None:
            return True
        return f.at_s <= t < (f.at_s + f.duration_s if f.duration_s is not None else float("inf"))

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n
        self.truth.details[name] = self.counts[name]


def faults_for(sensor_id: str, faults: list[Fault]) -> list[Fault]:
    return [f for f in faults if fnmatch.fnmatchcase(sensor_id, f.sensor)]


class Link:
    """The radio between a device and its hub: loss (Gilbert-Elliott bursts), duplicates,
    reordering (extra delay) and corruption. Deterministic per device and seed."""

    def __init__(self, faults: list[FaultLog], rng: np.random.Generator, period_s: float) -> None:
        self.rng = rng
        self.period_s = period_s
        self.by_type: dict[str, list[FaultLog]] = {}
        for fl in faults:
            self.by_type.setdefault(fl.fault.type, []).append(fl)
        self.bad = False  # Gilbert-Elliott state
        self.sent = 0
        self.delivered = 0

    def send(self, t_tx: float, payload: bytes, frame_of: Callable[[float, bytes], SensorFrame], *,
             flips: bool = True) -> list[tuple[float, SensorFrame]]:
        """Frames (reception time, frame) the hub receives for one transmission of ``payload``;
        ``frame_of(rx_t_s, payload)`` makes a frame, ``flips``: see :func:`corrupt_bytes`."""
        self.sent += 1
        rng = self.rng
        for fl in self.by_type.get("loss", ()):
            if not fl.active(t_tx):
                continue
            r, burst = fl.fault.rate, fl.fault.burst_len
            # two-state Gilbert-Elliott chain with stationary loss r and mean burst length L;
            # when r is too high for L, the rate wins and bursts get longer
            p_bg = 1.0 / burst
            p_gb = r * p_bg / (1 - r) if r < 1 else float("inf")
            if p_gb > 1.0:
                p_gb, p_bg = 1.0, (1 - r) / r
            self.bad = (rng.random() >= p_bg) if self.bad else (rng.random() < p_gb)
            if self.bad:
                fl.count("frames_dropped")
                return []
        rx = t_tx + 0.004 + 0.012 * rng.random()
        for fl in self.by_type.get("garbage", ()):
            if fl.active(t_tx) and rng.random() < fl.fault.rate:
                fl.count("frames_corrupted")
                self.delivered += 1
                return [(rx, frame_of(rx, corrupt_bytes(payload, rng, flips=flips)))]
        out = [(rx, frame_of(rx, payload))]
        for fl in self.by_type.get("reorder", ()):
            if fl.active(t_tx) and rng.random() < fl.fault.rate:
                fl.count("frames_delayed")
                extra = self.period_s * (int(rng.integers(1, fl.fault.max_delay_frames + 1)) + 0.5)
                out = [(rx + extra, frame_of(rx + extra, payload))]
        for fl in self.by_type.get("duplicate", ()):
            if fl.active(t_tx) and rng.random() < fl.fault.rate:
                fl.count("frames_duplicated")
                t2 = out[0][0] + 0.002 + 0.01 * rng.random()
                out.append((t2, frame_of(t2, payload)))
        self.delivered += len(out)
        return out


def corrupt_bytes(payload: bytes, rng: np.random.Generator, flips: bool = True) -> bytes:
    """Radio garbage: random bytes, a truncated frame, or (with a checksum to catch them) flipped bits.

    Room-sensor JSON carries no checksum of its own (zigbee drops bit errors at the MAC
    layer), so for it only garbage and truncation reach the hub.
    """
    how = int(rng.integers(0, 3 if flips else 2))
    if how == 0 or len(payload) < 4:
        return rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    if how == 1:
        return payload[: int(rng.integers(1, len(payload)))]
    buf = bytearray(payload)
    for _ in range(int(rng.integers(1, 4))):
        i = int(rng.integers(0, len(buf)))
        buf[i] ^= 1 << int(rng.integers(0, 8))
    return bytes(buf)


class WearableDevice:
    """A waist or wrist IMU streaming BLE-like frames to its hub."""

    transport = "ble"

    def __init__(self, sensor_id: str, hub_id: str, spec: Wearable, timeline: Timeline, *, seed: int,
                 faults: list[FaultLog], start_epoch_ms: int, truth_sink: list[Truth],
                 source: ImuRecording | None = None) -> None:
        self.sensor_id = sensor_id
        self.hub_id = hub_id
        self.spec = spec
        self.timeline = timeline
        self.seed = seed & 0xFFFFFFFF
        self.key = key_of(sensor_id)
        self.rate = spec.rate_hz
        self.m = max(1, round(spec.rate_hz * spec.frame_s))  # samples per frame
        self.frame_s = self.m / self.rate
        self.block_frames = max(1, round(BLOCK_S / self.frame_s))
        self.start_epoch_ms = start_epoch_ms
        self.truth_sink = truth_sink
        self.source = source  # an ImuRecording (fallwatch.sim.replay), or None for the motion model
        rng = np.random.default_rng([self.seed, self.key, 3])
        self.acc_bias = rng.normal(0, spec.acc_bias_g, 3)
        self.gyro_bias = rng.normal(0, spec.gyro_bias_dps, 3)
        self.acc_lsb = spec.acc_range_g / 32768.0
        self.gyro_lsb = spec.gyro_range_dps / 32768.0
        self.faults = faults
        self.link = Link([f for f in faults if f.fault.type in ("loss", "duplicate", "reorder", "garbage")],
                         np.random.default_rng([self.seed, self.key, 4]), self.frame_s)
        self.rng_dev = np.random.default_rng([self.seed, self.key, 5])
        self.k = 0  # next frame index on the sampling grid
        self.seq = 0
        self.boot = 0
        self.boot_flag = True
        self.jump_flag = False
        self.clock_ms = 0.0  # accumulated clock jumps
        self.sync_t = 0.0  # sim time the device clock was last set from the hub (drift restarts there)
        self.off_until = -1.0
        self.dead = False
        self.block_idx = -1
        self.block: tuple[np.ndarray, np.ndarray] | None = None
        self.pending: list[tuple[float, int, SensorFrame]] = []
        self.order = 0
        self.buttons = sorted(timeline.button_presses) if timeline else []
        self._battery_init()
        self.brownouts = sorted(((f.fault.at_s or 0.0, f) for f in faults if f.fault.type == "brownout"),
                                key=lambda x: x[0])
        self.jumps = sorted(((f.fault.at_s or 0.0, f) for f in faults if f.fault.type == "clock_jump"),
                            key=lambda x: x[0])
        skew = [f for f in faults if f.fault.type == "clock_skew"]
        self.ppm = sum(f.fault.ppm for f in skew)
        self.stats = {"frames_sent": 0, "frames_delivered": 0, "reboots": 0}

    def _battery_init(self) -> None:
        bat = [f for f in self.faults if f.fault.type == "battery"]
        self.battery_fault = bat[0] if bat else None
        f = self.battery_fault.fault if self.battery_fault else None
        self.bat0 = f.start_pct if f and f.start_pct is not None else self.spec.battery_pct
        self.drain = f.drain_pct_per_h if f and f.drain_pct_per_h is not None else self.spec.drain_pct_per_h
        self.brownout_below = f.brownout_below_pct if f else 0.0
        self.next_bat_brownout: float | None = None

    def battery(self, t: float) -> float:
        return max(0.0, self.bat0 - self.drain * t / 3600.0)

    # ------------------------------------------------------------------ signal

    def _render(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Quantised counts (n, 6) and per-sample saturation for render block ``b``."""
        n = self.block_frames * self.m
        i0 = b * n
        t = (i0 + np.arange(n)) / self.rate
        if self.source is not None:
            acc, gyro = self.source.block(t)
        else:
            segs = self.timeline.segments
            lo = max(0, self._seg_index(t[0] - 1.0 / self.rate))
            hi = self._seg_index(t[-1] + 1.0 / self.rate) + 1
            acc, gyro = render_block(segs[lo:hi], t)
        rng = np.random.default_rng([self.seed, self.key, 2, b])
        acc = acc + self.acc_bias + rng.normal(0, self.spec.acc_noise_g, (n, 3))
        gyro = gyro + self.gyro_bias + rng.normal(0, self.spec.gyro_noise_dps, (n, 3))
        for fl in self.faults:
            typ = fl.fault.type
            if typ not in ("stuck", "saturated"):
                continue
            t_on = fl.fault.at_s or 0.0
            t_off = t_on + fl.fault.duration_s if fl.fault.duration_s is not None else float("inf")
            mask = (t >= t_on) & (t < t_off)
            if not mask.any():
                continue
            if typ == "stuck":
                j = int(np.argmax(mask))
                acc[mask] = acc[j]
                gyro[mask] = gyro[j]
            else:
                acc[mask, fl.fault.axis] = self.spec.acc_range_g * 1.05
            fl.count("samples_affected", int(mask.sum()))
        return quantise(acc, gyro, self.acc_lsb, self.gyro_lsb)

    def _seg_index(self, t: float) -> int:
        return self.timeline.index_at(t)

    def samples(self, k: int) -> tuple[np.ndarray, bool]:
        """Counts (m, 6) of frame ``k`` and whether any sample saturated."""
        b, j = divmod(k, self.block_frames)
        if b != self.block_idx:
            self.block = self._render(b)
            self.block_idx = b
        assert self.block is not None
        s = slice(j * self.m, (j + 1) * self.m)
        return self.block[0][s], bool(self.block[1][s].any())

    # ------------------------------------------------------------------ device life

    def _reboot(self, t: float, cause: str, reboot_s: float) -> None:
        self.truth_sink.append(Truth("fault", t, None, t + reboot_s, {
            "fault": "brownout", "cause": cause, "seq_before": self.seq, "boot_count_after": self.boot + 1,
            "sensor": self.sensor_id}))
        self.off_until = t + reboot_s
        self.seq = 0
        self.boot += 1
        self.boot_flag = True
        self.clock_ms = 0.0  # the clock is resynchronised by the hub after boot
        self.sync_t = t
        self.stats["reboots"] += 1

    def _life(self, t: float) -> bool:
        """Advance device state to time ``t``; False when it cannot transmit now."""
        if self.dead:
            return False
        while self.brownouts and self.brownouts[0][0] <= t:
            _, fl = self.brownouts.pop(0)
            fl.count("reboots")
            self._reboot(fl.fault.at_s or 0.0, "injected", fl.fault.reboot_s)
        while self.jumps and self.jumps[0][0] <= t:
            _, fl = self.jumps.pop(0)
            self.clock_ms += fl.fault.jump_ms
            self.jump_flag = True
            fl.count("jumps")
        bat = self.battery(t)
        if bat <= 0.0 and (self.drain > 0 or self.bat0 <= 0):  # flat: silent from now on
            self.dead = True
            if self.battery_fault is not None:
                self.battery_fault.count("dead")
            self.truth_sink.append(Truth("fault", t, None, t, {"fault": "battery_dead", "sensor": self.sensor_id}))
            return False
        if self.battery_fault is not None and bat < self.brownout_below:
            if self.next_bat_brownout is None:
                self.next_bat_brownout = t + float(self.rng_dev.exponential(60.0))
            elif t >= self.next_bat_brownout:
                self.battery_fault.count("reboots")
                self._reboot(t, "low_battery", float(self.rng_dev.uniform(2, 8)))
                self.next_bat_brownout = t + float(self.rng_dev.exponential(60.0))
        if t < self.off_until:
            return False
        for fl in self.faults:
            if fl.fault.type == "silent" and fl.active(t):
                fl.count("frames_silenced")
                return False
        return True

    def _frame(self, k: int, t_first: float, flags: int, bat: float) -> bytes:
        counts, sat = self.samples(k)
        t0_ms = (self.start_epoch_ms + self.sync_t * 1000.0 + (t_first - self.sync_t) * 1000.0 * (1 + self.ppm * 1e-6)
                 + self.clock_ms)
        return pack_imu(self.sensor_id, self.boot, self.seq, int(t0_ms), self.rate, counts, bat,
                        self.spec.rssi_dbm + 3.0 * float(self.rng_dev.standard_normal()),
                        flags | (FLAG_SATURATED if sat else 0), self.acc_lsb, self.gyro_lsb)

    def poll(self, t_end: float) -> list[tuple[float, int, SensorFrame]]:
        """Frames the hub has received by ``t_end`` (and not returned before)."""
        while True:
            k = self.k
            t_first = k * self.frame_s
            t_tx = t_first + self.frame_s  # the frame is sent once its last sample is taken
            if t_tx > t_end:
                break
            self.k += 1
            if not self._life(t_first):
                continue
            flags = 0
            if self.boot_flag:
                flags |= FLAG_BOOT
            if self.jump_flag:
                flags |= FLAG_CLOCK_JUMP
            bat = self.battery(t_first)
            if bat < LOW_BATTERY_PCT:
                flags |= FLAG_LOW_BATTERY
            while self.buttons and self.buttons[0] < t_tx:
                if self.buttons[0] >= t_first:
                    flags |= FLAG_CANCEL
                    self.buttons.pop(0)
                else:
                    self.buttons.pop(0)
            payload = self._frame(k, t_first, flags, bat)
            self.boot_flag = False
            self.jump_flag = False
            self.seq += 1
            self.stats["frames_sent"] += 1
            for rx, fr in self.link.send(t_tx, payload, self._sf):
                heapq.heappush(self.pending, (rx, self.order, fr))
                self.order += 1
        out = []
        while self.pending and self.pending[0][0] <= t_end:
            out.append(heapq.heappop(self.pending))
        self.stats["frames_delivered"] += len(out)
        return out

    def _sf(self, rx: float, payload: bytes) -> SensorFrame:
        return SensorFrame(self.hub_id, self.sensor_id, self.transport, rx, payload)


class RoomSensorDevice:
    """PIR / bed / chair / door / bathroom sensor reporting zigbee2mqtt-style JSON."""

    transport = "zigbee"
    tick_s = 1.0

    def __init__(self, spec: RoomSensor, hub_id: str, timelines: list[Timeline], *, seed: int,
                 faults: list[FaultLog], start_epoch_ms: int, duration_s: float) -> None:
        self.spec = spec
        self.sensor_id = spec.id
        self.hub_id = hub_id
        self.timelines = timelines
        self.key = key_of(spec.id)
        self.rng = np.random.default_rng([seed & 0xFFFFFFFF, self.key, 6])
        self.link = Link([f for f in faults if f.fault.type in ("loss", "duplicate", "reorder", "garbage")],
                         np.random.default_rng([seed & 0xFFFFFFFF, self.key, 4]), self.tick_s)
        self.faults = faults
        self.start_epoch_ms = start_epoch_ms
        self.next_tick = float(self.rng.uniform(0, self.tick_s))
        self.state = False
        self.last_report = -1e9
        self.last_seen = -1e9
        self.next_heartbeat = float(self.rng.uniform(0, spec.heartbeat_s))
        self.battery = float(self.rng.uniform(60, 100))
        self.lqi = int(self.rng.integers(60, 200))
        self.pending: list[tuple[float, int, SensorFrame]] = []
        self.order = 0
        self.door_open: list[tuple[float, float]] = []
        self.truth: list[Truth] = []
        if spec.kind == "door":  # visits: the front door opens a few times a day
            n = int(self.rng.poisson(4.0 * duration_s / 86400.0)) + (1 if duration_s >= 120 else 0)
            for t in sorted(self.rng.uniform(0, duration_s, n)):
                dur = float(self.rng.uniform(4, 25))
                self.door_open.append((float(t), float(t) + dur))
                self.truth.append(Truth("adl", float(t), None, float(t) + dur,
                                        {"activity": "door_open", "sensor": spec.id}))
        self.stats = {"frames_sent": 0, "frames_delivered": 0}

    def _sense(self, t: float) -> bool:
        kind, room = self.spec.kind, self.spec.room
        if kind == "door":
            return not any(a <= t < b for a, b in self.door_open)  # contact: True = closed
        for tl in self.timelines:
            if not tl.segments:
                continue
            seg = tl.segment_at(t)
            if seg.room_at(t) != room:
                continue
            if kind == "pir" and seg.moving:
                return True
            if kind in ("bed", "chair") and seg.place == kind:
                return True
            if kind == "bathroom":
                return True
        return False

    def _report(self, t: float, value: bool, heartbeat: bool = False) -> None:
        for fl in self.faults:
            if fl.fault.type == "silent" and fl.active(t):
                fl.count("frames_silenced")
                return
        key = {"pir": "occupancy", "bathroom": "occupancy", "bed": "pressure", "chair": "pressure",
               "door": "contact"}[self.spec.kind]
        state: dict[str, bool | float | int] = {key: value, "battery": round(self.battery),
                                                "linkquality": self.lqi}
        if heartbeat:
            state["heartbeat"] = True
        ev = RoomEvent(self.sensor_id, self.spec.kind, self.spec.room, int(self.start_epoch_ms + t * 1000), state)
        payload = encode_room(ev)
        self.last_report = t
        self.stats["frames_sent"] += 1
        for rx, fr in self.link.send(t, payload, self._sf, flips=False):
            heapq.heappush(self.pending, (rx, self.order, fr))
            self.order += 1

    def _sf(self, rx: float, payload: bytes) -> SensorFrame:
        return SensorFrame(self.hub_id, self.sensor_id, self.transport, rx, payload)

    def poll(self, t_end: float) -> list[tuple[float, int, SensorFrame]]:
        timeout = self.spec.timeout_s
        while self.next_tick <= t_end:
            t = self.next_tick
            self.next_tick += self.tick_s
            now = self._sense(t)
            kind = self.spec.kind
            if kind == "pir":
                if now:
                    self.last_seen = t
                    if not self.state or t - self.last_report >= timeout / 2:  # retrigger after blind time
                        self.state = True
                        self._report(t, True)
                elif self.state and t - self.last_seen >= timeout:
                    self.state = False
                    self._report(t, False)
            elif kind == "bathroom":
                if now:
                    self.last_seen = t
                    if not self.state:
                        self.state = True
                        self._report(t, True)
                elif self.state and t - self.last_seen >= min(timeout, 15.0):
                    self.state = False
                    self._report(t, False)
            elif now != self.state or self.last_report < -1e8:
                self.state = now
                self._report(t, now)
            if t >= self.next_heartbeat:
                self.next_heartbeat = t + self.spec.heartbeat_s
                self._report(t, self.state, heartbeat=True)
        out = []
        while self.pending and self.pending[0][0] <= t_end:
            out.append(heapq.heappop(self.pending))
        self.stats["frames_delivered"] += len(out)
        return out
