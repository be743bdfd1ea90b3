"""The local-bus frame codecs: round trips, quantisation, and every way a frame can be bad."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fallwatch.protocol.framelog import FrameLogError, FrameLogReader, read_frames, write_frames
from fallwatch.protocol.frames import (
    DEFAULT_ACC_LSB_G,
    FLAG_CANCEL,
    FLAG_SATURATED,
    FrameError,
    ImuPacket,
    RoomEvent,
    SensorFrame,
    decode_imu,
    decode_room,
    encode_imu,
    encode_room,
)


def _packet(n: int = 25, seed: int = 0, **kw: object) -> ImuPacket:
    rng = np.random.default_rng(seed)
    acc = (rng.normal(0, 0.3, (n, 3)) + np.array([0.0, 0.0, 1.0])).astype(np.float32)
    gyro = rng.normal(0, 20, (n, 3)).astype(np.float32)
    base = dict(sensor_id="wear-r01", boot_count=3, seq=41, t0_ms=1_700_000_000_123, rate_hz=50.0,
                acc_g=acc, gyro_dps=gyro, battery_pct=87.5, rssi_dbm=-67.0, flags=FLAG_CANCEL)
    base.update(kw)
    return ImuPacket(**base)  # type: ignore[arg-type]  # deliberately incomplete/wrong fields


def test_imu_round_trip_within_one_count() -> None:
    p = _packet()
    q = decode_imu(encode_imu(p))
    assert (q.sensor_id, q.boot_count, q.seq, q.t0_ms, q.rate_hz) == ("wear-r01", 3, 41, p.t0_ms, 50.0)
    assert (q.battery_pct, q.rssi_dbm, q.flags) == (87.5, -67.0, FLAG_CANCEL)
    assert q.acc_g.dtype == np.float32 and q.acc_g.shape == (25, 3)
    assert np.max(np.abs(q.acc_g - p.acc_g)) <= q.acc_lsb_g / 2 + 1e-6
    assert np.max(np.abs(q.gyro_dps - p.gyro_dps)) <= q.gyro_lsb_dps / 2 + 1e-4
    # quantised values are exact multiples of the declared scale
    counts = q.acc_g / np.float32(q.acc_lsb_g)
    assert np.allclose(counts, np.round(counts), atol=1e-3)
    assert q.t_ms()[1] - q.t_ms()[0] == pytest.approx(20.0)


def test_encoding_is_deterministic_and_compact() -> None:
    p = _packet(n=50)
    assert encode_imu(p) == encode_imu(_packet(n=50))
    assert len(encode_imu(p)) < 50 * 12 + 64


def test_over_range_values_clip_and_flag_saturated() -> None:
    p = _packet(acc_lsb_g=8.0 / 32768, flags=0)
    acc = p.acc_g.copy()
    acc[3] = [12.0, -20.0, 0.5]
    q = decode_imu(encode_imu(_packet(acc_g=acc, acc_lsb_g=8.0 / 32768, flags=0)))
    assert q.flags & FLAG_SATURATED
    assert q.acc_range_g == pytest.approx(8.0)
    assert q.acc_g[3, 0] == pytest.approx(8.0, abs=1e-3) and q.acc_g[3, 1] == pytest.approx(-8.0)
    assert not decode_imu(encode_imu(p)).flags & FLAG_SATURATED


@pytest.mark.parametrize("n", [0, 1, 200])
def test_sample_counts(n: int) -> None:
    assert decode_imu(encode_imu(_packet(n=n))).n == n


def test_every_single_bit_flip_is_rejected() -> None:
    frame = bytearray(encode_imu(_packet(n=4)))
    for i in range(len(frame)):
        for bit in (0, 5):
            bad = bytearray(frame)
            bad[i] ^= 1 << bit
            with pytest.raises(FrameError):
                decode_imu(bytes(bad))


@pytest.mark.parametrize(("mangle", "reason"), [
    (lambda f: f[:10], "short"),
    (lambda f: f[:-1], "short"),
    (lambda f: f + b"\x00", "length"),
    (lambda f: b"XX" + f[2:], "garbage"),
    (lambda f: f[:2] + bytes([9]) + f[3:], "version"),
    (lambda f: f[:-4] + struct.pack("<I", zlib.crc32(f[:-4]) ^ 1), "crc"),
    (lambda f: b"", "short"),
])
def test_bad_frames_have_reasons(mangle, reason: str) -> None:
    with pytest.raises(FrameError) as exc:
        decode_imu(mangle(encode_imu(_packet())))
    assert exc.value.reason == reason


def test_random_garbage_never_crashes() -> None:
    rng = np.random.default_rng(5)
    for _ in range(2000):
        blob = rng.integers(0, 256, rng.integers(0, 400)).astype(np.uint8).tobytes()
        with pytest.raises(FrameError):
            decode_imu(blob)
        with pytest.raises(FrameError):
            decode_room(blob)
    with pytest.raises(FrameError):
        decode_imu("not bytes")  # type: ignore[arg-type]  # deliberately not bytes


@settings(max_examples=60, deadline=None)
@given(seq=st.integers(0, 2**32 - 1), boot=st.integers(0, 65535), rate=st.sampled_from([50.0, 100.0, 200.0]),
       batt=st.floats(0, 100), t0=st.integers(0, 2**62))
def test_header_fields_round_trip(seq: int, boot: int, rate: float, batt: float, t0: int) -> None:
    q = decode_imu(encode_imu(_packet(n=3, seq=seq, boot_count=boot, rate_hz=rate, battery_pct=batt,
                                      t0_ms=t0)))
    assert (q.seq, q.boot_count, q.rate_hz, q.t0_ms) == (seq, boot, rate, t0)
    assert q.battery_pct == pytest.approx(batt, abs=0.25)


def test_encoder_rejects_bad_packets() -> None:
    with pytest.raises(ValueError):
        encode_imu(_packet(sensor_id="Wear 1"))
    with pytest.raises(ValueError):
        encode_imu(_packet(acc_g=np.zeros((4, 2), np.float32)))
    assert DEFAULT_ACC_LSB_G * 32768 == 16.0


# ------------------------------------------------------------------ room events


def test_room_round_trip() -> None:
    ev = RoomEvent("pir-r01-kitchen", "pir", "kitchen", 1_700_000_000_000,
                   {"occupancy": True, "battery": 97, "linkquality": 120.0})
    assert decode_room(encode_room(ev)) == ev
    assert decode_room(encode_room(ev)).value is True
    door = decode_room(b'{"sensor":"door-r01","kind":"door","room":"hall","t_ms":5,"contact":false}')
    assert door.state == {"contact": False} and door.value is False


@pytest.mark.parametrize(("payload", "reason"), [
    (b'{"sensor":"pir-1","kind":"pir","room":"kitchen","t_ms":1', "garbage"),
    (b'\xff\xfe', "garbage"),
    (b'[1,2]', "schema"),
    (b'{"sensor":"pir-1","kind":"lamp","room":"kitchen","t_ms":1,"occupancy":true}', "schema"),
    (b'{"sensor":"pir-1","kind":"pir","room":"kitchen","t_ms":1}', "schema"),
    (b'{"sensor":"pir-1","kind":"pir","room":"kitchen","t_ms":1,"occupancy":1}', "schema"),
    (b'{"sensor":"pir-1","kind":"pir","room":"kitchen","t_ms":1,"occupancy":true,"x":2}', "schema"),
    (b'{"sensor":"pir-1","kind":"pir","room":"kitchen","t_ms":1,"occupancy":true,"battery":true}', "schema"),
    (b'{"sensor":"PIR 1","kind":"pir","room":"kitchen","t_ms":1,"occupancy":true}', "schema"),
    (b'{"sensor":"pir-1","kind":"pir","room":"kitchen","t_ms":-4,"occupancy":true}', "range"),
    (b'{"kind":"pir","room":"kitchen","t_ms":1,"occupancy":true}', "schema"),
])
def test_bad_room_reports(payload: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as exc:
        decode_room(payload)
    assert exc.value.reason == reason


# ---------------------------------------------------------------------- frame logs


def _log_frames() -> list[SensorFrame]:
    imu = encode_imu(_packet())
    room = encode_room(RoomEvent("pir-1", "pir", "living", 1_700_000_000_000, {"occupancy": True}))
    return [SensorFrame("hub-1", "wear-r01", "ble", 0.1 + 1e-9, imu),
            SensorFrame("hub-1", "pir-1", "zigbee", 1.0 / 3.0, room)]


def test_frame_log_is_json_lines_and_round_trips_exactly(tmp_path: Path) -> None:
    frames = _log_frames()
    assert write_frames(tmp_path / "f.jsonl", frames) == 2
    lines = (tmp_path / "f.jsonl").read_bytes().splitlines()
    assert [json.loads(x)["sensor_id"] for x in lines] == ["wear-r01", "pir-1"]
    assert list(read_frames(tmp_path / "f.jsonl")) == frames  # floats and bytes exact


def test_frame_log_bad_lines_are_errors_or_counted(tmp_path: Path) -> None:
    p = tmp_path / "f.jsonl"
    write_frames(p, _log_frames())
    good = p.read_bytes()
    p.write_bytes(good + b'{"hub_id": "h"}\n' + good)
    with pytest.raises(FrameLogError, match=r"f\.jsonl:3: not a frame"):
        list(read_frames(p))
    reader = FrameLogReader(p, strict=False)
    assert len(list(reader)) == 4 and reader.bad_lines == 1
    p.write_bytes(good.replace(b'"ble"', b'"wifi"'))
    with pytest.raises(FrameLogError, match="wifi"):
        list(read_frames(p))


def test_old_binary_frame_logs_are_still_read(tmp_path: Path) -> None:
    """``FWLOG1`` as ``fallwatch sim run`` wrote it before the frame log became JSON lines."""
    rec = struct.Struct("<dBBBI")
    raw = b"FWLOG1\n"
    for f in _log_frames():
        hub, sid = f.hub_id.encode(), f.sensor_id.encode()
        raw += rec.pack(f.rx_t_s, len(hub), len(sid), ("ble", "zigbee").index(f.transport), len(f.payload))
        raw += hub + sid + f.payload
    (tmp_path / "old.fwlog").write_bytes(raw)
    assert list(read_frames(tmp_path / "old.fwlog")) == _log_frames()
    (tmp_path / "cut.fwlog").write_bytes(raw[:-3])
    with pytest.raises(FrameLogError, match="truncated"):
        list(read_frames(tmp_path / "cut.fwlog", strict=False))
