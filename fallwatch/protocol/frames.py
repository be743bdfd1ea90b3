"""What device radios deliver to an edge hub: wearable IMU frames and room-sensor events.

This is the local-bus interface between sensors (real or ``firmware_sim``) and the edge
agent, documented in docs/simulator.md. Two transports, as real devices have them:

* ``ble``: the wearable streams compact binary frames (a BLE-notification-like payload):
  a versioned little-endian header, ``n`` samples of six int16 counts (acc xyz, gyro xyz)
  with the scale per count declared in the header, and a CRC32 trailer. int16 counts with a
  declared scale is what IMU parts (LSM6DS*, BMI270, ADXL345) output, so the quantisation
  and saturation the edge sees are those of a real part, and the frame is ~4x smaller
  than float32.
* ``zigbee``: room sensors send zigbee2mqtt-style flat JSON (``{"occupancy": true,
  "battery": 97, "linkquality": 120, ...}``) plus identity and time keys.

Decoders never crash on bad input: anything malformed raises :class:`FrameError` with a
short ``reason`` that the edge uses as a counter label.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

import msgspec
import numpy as np

from fallwatch.protocol.ids import ID_RE

__all__ = [
    "FLAG_BOOT",
    "FLAG_CANCEL",
    "FLAG_CLOCK_JUMP",
    "FLAG_LOW_BATTERY",
    "FLAG_SATURATED",
    "IMU_MAGIC",
    "IMU_VERSION",
    "ROOM_KINDS",
    "FrameError",
    "ImuPacket",
    "RoomEvent",
    "SensorFrame",
    "decode_imu",
    "decode_room",
    "encode_imu",
    "encode_room",
    "pack_imu",
    "quantise",
]

IMU_MAGIC = b"FW"
IMU_VERSION = 1

#: ``ImuPacket.flags`` bits.
FLAG_CANCEL = 1 << 0  # wearer pressed the cancel button during this frame
FLAG_SATURATED = 1 << 1  # at least one count hit the int16 rail (set by the encoder too)
FLAG_LOW_BATTERY = 1 << 2  # battery below the firmware's low threshold
FLAG_BOOT = 1 << 3  # first frame after a (re)boot: seq restarted at 0
FLAG_CLOCK_JUMP = 1 << 4  # device clock was stepped (resync) since the previous frame

#: Typical full-scale defaults of a wearable IMU part (±16 g, ±2000 °/s, 16-bit counts).
DEFAULT_ACC_LSB_G = 16.0 / 32768.0
DEFAULT_GYRO_LSB_DPS = 2000.0 / 32768.0

MAX_SAMPLES = 2000  # 10 s at 200 Hz: anything larger is not a frame a radio would carry

# magic, version, flags, boot_count, seq, t0_ms, rate_mhz, acc_lsb, gyro_lsb,
# battery (0.5 % units), rssi_dbm, n samples, sensor-id length
_HEAD = struct.Struct("<2sBBHIqIffBbHB")
_CRC = struct.Struct("<I")


class FrameError(ValueError):
    """A frame that cannot be decoded.

    ``reason`` is short and machine-readable (``short``, ``garbage``, ``version``,
    ``crc``, ``length``, ``range``, ``schema``), ``detail`` is for humans.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class SensorFrame:
    """One radio payload as received by an edge hub."""

    hub_id: str  # the edge hub (topic device id) that received it
    sensor_id: str  # transmitting sensor, [a-z0-9-]
    transport: str  # "ble" (binary IMU) | "zigbee" (room-sensor JSON)
    rx_t_s: float  # reception time on the hub clock (sim seconds since scenario start)
    payload: bytes


@dataclass(frozen=True, slots=True, eq=False)
class ImuPacket:
    """A decoded wearable frame: ``n`` consecutive samples from one device.

    ``t0_ms`` is the *device* clock of the first sample (it can be skewed or jump; the
    hub's reception time is in :class:`SensorFrame`). ``seq`` restarts at 0 and
    ``boot_count`` increments after a reboot.
    """

    sensor_id: str
    boot_count: int
    seq: int
    t0_ms: int
    rate_hz: float
    acc_g: np.ndarray  # (n, 3) float32, g, gravity included
    gyro_dps: np.ndarray  # (n, 3) float32, deg/s
    battery_pct: float
    rssi_dbm: float
    flags: int = 0
    acc_lsb_g: float = DEFAULT_ACC_LSB_G  # g per count, declares the range (±32768 counts)
    gyro_lsb_dps: float = DEFAULT_GYRO_LSB_DPS

    @property
    def n(self) -> int:
        return int(self.acc_g.shape[0])

    @property
    def acc_range_g(self) -> float:
        return self.acc_lsb_g * 32768.0

    def t_ms(self) -> np.ndarray:
        """Device-clock time of every sample (float64 ms)."""
        return self.t0_ms + np.arange(self.n, dtype=np.float64) * (1000.0 / self.rate_hz)


def quantise(acc_g: np.ndarray, gyro_dps: np.ndarray, acc_lsb_g: float, gyro_lsb_dps: float
             ) -> tuple[np.ndarray, np.ndarray]:
    """int16 counts (n, 6) as the part outputs them, and which samples hit a rail.

    Exposed so a producer can quantise many frames' worth of samples in one call.
    """
    scaled = np.empty((len(acc_g), 6), dtype=np.float64)
    np.divide(acc_g, acc_lsb_g, out=scaled[:, :3])
    np.divide(gyro_dps, gyro_lsb_dps, out=scaled[:, 3:])
    np.rint(scaled, out=scaled)
    sat = np.asarray(((scaled > 32767) | (scaled < -32768)).any(axis=1))  # (n,) bool, never a scalar
    np.clip(scaled, -32768, 32767, out=scaled)
    return scaled.astype("<i2"), sat


def pack_imu(sensor_id: str, boot_count: int, seq: int, t0_ms: int, rate_hz: float, counts: np.ndarray,
             battery_pct: float, rssi_dbm: float, flags: int, acc_lsb_g: float, gyro_lsb_dps: float) -> bytes:
    """Frame already-quantised counts (n, 6) little-endian int16: the firmware's hot path."""
    sid = sensor_id.encode("ascii")
    battery = round(min(max(battery_pct, 0.0), 100.0) * 2)
    rssi = round(min(max(rssi_dbm, -128.0), 127.0))
    head = _HEAD.pack(IMU_MAGIC, IMU_VERSION, flags & 0xFF, boot_count & 0xFFFF, seq & 0xFFFFFFFF,
                      int(t0_ms), round(rate_hz * 1000), acc_lsb_g, gyro_lsb_dps, battery, rssi,
                      counts.shape[0], len(sid))
    body = b"".join((head, sid, counts.tobytes()))
    return body + _CRC.pack(zlib.crc32(body))


def encode_imu(p: ImuPacket) -> bytes:
    """Serialise a packet as the wearable firmware would (quantise, clip, CRC).

    Values beyond the declared range are clipped to the rail and ``FLAG_SATURATED`` is
    set, as firmware does, so ``decode_imu(encode_imu(p)).flags`` may gain that bit.
    """
    if not ID_RE.match(p.sensor_id):
        raise ValueError(f"invalid sensor id {p.sensor_id!r}")
    acc = np.asarray(p.acc_g)
    gyro = np.asarray(p.gyro_dps)
    if acc.ndim != 2 or acc.shape[1] != 3 or gyro.shape != acc.shape:
        raise ValueError(f"acc/gyro must both be (n, 3), got {acc.shape} and {gyro.shape}")
    if acc.shape[0] > MAX_SAMPLES:
        raise ValueError(f"{acc.shape[0]} samples > {MAX_SAMPLES}")
    counts, sat = quantise(acc, gyro, p.acc_lsb_g, p.gyro_lsb_dps)
    flags = p.flags | (FLAG_SATURATED if sat.any() else 0)
    return pack_imu(p.sensor_id, p.boot_count, p.seq, p.t0_ms, p.rate_hz, counts, p.battery_pct, p.rssi_dbm,
                    flags, p.acc_lsb_g, p.gyro_lsb_dps)


def decode_imu(payload: bytes) -> ImuPacket:
    """Parse and verify a wearable frame; raises :class:`FrameError` on anything wrong."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise FrameError("garbage", f"payload is {type(payload).__name__}, not bytes")
    buf = bytes(payload)
    if len(buf) < _HEAD.size + _CRC.size:
        raise FrameError("short", f"{len(buf)} bytes < header {_HEAD.size + _CRC.size}")
    if buf[:2] != IMU_MAGIC:
        raise FrameError("garbage", f"bad magic {buf[:2]!r}")
    (_, version, flags, boot, seq, t0_ms, rate_mhz, acc_lsb, gyro_lsb, batt, rssi, n,
     id_len) = _HEAD.unpack_from(buf)
    if version != IMU_VERSION:
        raise FrameError("version", f"frame version {version}, supported {IMU_VERSION}")
    expected = _HEAD.size + id_len + 12 * n + _CRC.size
    if len(buf) != expected:
        reason = "short" if len(buf) < expected else "length"
        raise FrameError(reason, f"{len(buf)} bytes, header says {expected}")
    (crc,) = _CRC.unpack_from(buf, len(buf) - _CRC.size)
    if zlib.crc32(buf[: -_CRC.size]) != crc:
        raise FrameError("crc", "CRC32 mismatch")
    try:
        sensor_id = buf[_HEAD.size:_HEAD.size + id_len].decode("ascii")
    except UnicodeDecodeError:
        raise FrameError("garbage", "sensor id is not ascii") from None
    if not ID_RE.match(sensor_id):
        raise FrameError("garbage", f"invalid sensor id {sensor_id!r}")
    if not (0 < rate_mhz <= 2_000_000) or n > MAX_SAMPLES or batt > 200:
        raise FrameError("range", f"rate {rate_mhz / 1000} Hz, n {n}, battery {batt / 2} %")
    if not (np.isfinite(acc_lsb) and np.isfinite(gyro_lsb) and 0 < acc_lsb < 1 and 0 < gyro_lsb < 1):
        raise FrameError("range", f"scale acc {acc_lsb} gyro {gyro_lsb}")
    counts = np.frombuffer(buf, dtype="<i2", count=6 * n, offset=_HEAD.size + id_len).reshape(n, 6)
    acc = counts[:, :3].astype(np.float32) * np.float32(acc_lsb)
    gyro = counts[:, 3:].astype(np.float32) * np.float32(gyro_lsb)
    return ImuPacket(sensor_id=sensor_id, boot_count=boot, seq=seq, t0_ms=t0_ms, rate_hz=rate_mhz / 1000.0,
                     acc_g=acc, gyro_dps=gyro, battery_pct=batt / 2.0, rssi_dbm=float(rssi), flags=flags,
                     acc_lsb_g=float(acc_lsb), gyro_lsb_dps=float(gyro_lsb))


# ------------------------------------------------------------------ room sensors

ROOM_KINDS = ("pir", "bed", "chair", "door", "bathroom")

#: The state key each room-sensor kind must report (zigbee2mqtt names).
PRIMARY_KEY = {"pir": "occupancy", "bed": "pressure", "chair": "pressure", "door": "contact",
               "bathroom": "occupancy"}

#: State keys a room sensor may send, and their types (bool values stay bool).
STATE_KEYS: dict[str, type | tuple[type, ...]] = {
    "occupancy": bool, "pressure": bool, "contact": bool, "tamper": bool, "battery_low": bool,
    "heartbeat": bool, "battery": (int, float), "voltage": (int, float), "linkquality": (int, float),
}


@dataclass(frozen=True, slots=True)
class RoomEvent:
    """A decoded room-sensor report (event or periodic heartbeat)."""

    sensor_id: str
    kind: str  # "pir" | "bed" | "chair" | "door" | "bathroom"
    room: str
    t_ms: int  # device/bus time, epoch ms
    state: dict[str, bool | float | int] = field(default_factory=dict)

    @property
    def value(self) -> bool:
        """The primary state (occupied / pressed / door closed)."""
        return bool(self.state.get(PRIMARY_KEY[self.kind], False))


class _RoomWire(msgspec.Struct, forbid_unknown_fields=False):
    sensor: str
    kind: str
    room: str
    t_ms: int


def encode_room(ev: RoomEvent) -> bytes:
    """zigbee2mqtt-style flat JSON: identity/time keys plus the state keys."""
    return msgspec.json.encode({"sensor": ev.sensor_id, "kind": ev.kind, "room": ev.room,
                                "t_ms": ev.t_ms, **ev.state})


_room_head = msgspec.json.Decoder(_RoomWire)
_room_any = msgspec.json.Decoder(dict[str, object])


def decode_room(payload: bytes) -> RoomEvent:
    """Strictly parse a room-sensor report; raises :class:`FrameError` on anything wrong."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise FrameError("garbage", f"payload is {type(payload).__name__}, not bytes")
    if len(payload) > 4096:
        raise FrameError("length", f"{len(payload)} bytes")
    try:
        head = _room_head.decode(payload)
        raw = _room_any.decode(payload)
    except msgspec.ValidationError as exc:
        raise FrameError("schema", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise FrameError("garbage", str(exc)) from None
    if head.kind not in ROOM_KINDS:
        raise FrameError("schema", f"unknown kind {head.kind!r}")
    if not ID_RE.match(head.sensor) or not ID_RE.match(head.room):
        raise FrameError("schema", f"invalid sensor/room id {head.sensor!r}/{head.room!r}")
    if not 0 <= head.t_ms <= 10_000_000_000_000:
        raise FrameError("range", f"t_ms {head.t_ms}")
    state: dict[str, bool | float | int] = {}
    for key, value in raw.items():
        if key in ("sensor", "kind", "room", "t_ms"):
            continue
        want = STATE_KEYS.get(key)
        if want is None:
            raise FrameError("schema", f"unknown state key {key!r}")
        ok = isinstance(value, bool) if want is bool else (
            isinstance(value, want) and not isinstance(value, bool))
        if not ok or not isinstance(value, bool | int | float):  # (the second test only narrows the type)
            raise FrameError("schema", f"{key}={value!r} has the wrong type")
        state[key] = value
    if PRIMARY_KEY[head.kind] not in state:
        raise FrameError("schema", f"{head.kind} report without {PRIMARY_KEY[head.kind]!r}")
    return RoomEvent(sensor_id=head.sensor, kind=head.kind, room=head.room, t_ms=head.t_ms, state=state)
