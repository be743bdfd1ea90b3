"""Per-wearable stream handling: rates, clocks, reboots, gaps — what the detector is protected from."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import resample_poly

from fallwatch.edge import synth
from fallwatch.edge.stream import Chunk, WearableStream
from fallwatch.models.detector import DEFAULT_MODEL_PATH, DeviceFallDetector
from fallwatch.models.scorers import load_scorer
from fallwatch.protocol.frames import ImuPacket, decode_imu, encode_imu


def upsample(x: np.ndarray, factor: int) -> np.ndarray:
    t50 = np.arange(len(x)) / 50.0
    t = np.arange(len(x) * factor) / (50.0 * factor)
    return np.stack([np.interp(t, t50, x[:, c]) for c in range(x.shape[1])], axis=1).astype(np.float32)


def packets_at(rate: float, acc: np.ndarray, gyro: np.ndarray, per: int, *, ppm: float = 0.0,
               t0_ms: float = 1.7e12, boot: int = 1, seq0: int = 0) -> list[tuple[ImuPacket, float]]:
    """(packet, hub receive time): the device clock runs ``ppm`` fast; radio latency 5-25 ms."""
    rng = np.random.default_rng(0)
    out = []
    for k, a in enumerate(range(0, len(acc), per)):
        b = min(len(acc), a + per)
        dev_t0 = t0_ms + a / rate * 1000.0 * (1 + ppm * 1e-6)
        p = ImuPacket(sensor_id="wear-1", boot_count=boot, seq=seq0 + k, t0_ms=int(dev_t0), rate_hz=rate,
                      acc_g=acc[a:b], gyro_dps=gyro[a:b], battery_pct=70.0, rssi_dbm=-60.0)
        rx = b / rate + float(rng.uniform(0.005, 0.025))
        out.append((decode_imu(encode_imu(p)), rx))
    return out


def run(stream: WearableStream, pkts: list[tuple[ImuPacket, float]]) -> list[Chunk]:
    out: list[Chunk] = []
    for p, rx in pkts:
        out += stream.push(p, rx)
    return out


def test_resamples_to_the_model_rate_seamlessly() -> None:
    acc, gyro, _ = synth.fall(post_s=10)
    for factor, per in ((2, 50), (4, 40)):
        ws = WearableStream("wear-1")
        chunks = run(ws, packets_at(50.0 * factor, upsample(acc, factor), upsample(gyro, factor), per))
        t = np.concatenate([c.t_s for c in chunks])
        a = np.concatenate([c.acc_g for c in chunks])
        assert np.allclose(np.diff(t), 0.02, atol=1e-6)  # one 50 Hz grid across packet boundaries
        assert abs(len(t) - len(acc)) <= 2
        # streaming, packet by packet, it matches what training does to SisFall's 200 Hz
        # recordings offline (scipy resample_poly, a Kaiser anti-alias FIR): the impact peak
        # is attenuated alike, so serving sees what the model was trained on
        ref = resample_poly(upsample(acc, factor), 1, factor, axis=0)
        peak_out = float(np.linalg.norm(a, axis=1).max())
        peak_ref = float(np.linalg.norm(ref, axis=1).max())
        assert peak_out == pytest.approx(peak_ref, rel=0.15)
        assert np.allclose(a[-100:].mean(axis=0), acc[-100:].mean(axis=0), atol=0.02)


@pytest.mark.skipif(not DEFAULT_MODEL_PATH.exists(), reason="no shipped ONNX fall model")
def test_fall_at_200_hz_is_detected_once() -> None:
    a0, g0 = synth.quiet(500, walking=True)
    fa, fg, _ = synth.fall(post_s=10)
    acc, gyro = upsample(np.vstack([a0, fa]), 4), upsample(np.vstack([g0, fg]), 4)
    ws = WearableStream("wear-1")
    det = DeviceFallDetector(load_scorer())
    decisions = []
    for c in run(ws, packets_at(200.0, acc, gyro, 100)):
        decisions += det.push(c.t_s, c.acc_g, c.gyro_dps)
    assert len(decisions) == 1 and decisions[0].lying


def test_clock_skew_is_tracked_and_a_jump_reanchors() -> None:
    acc, gyro = synth.quiet(50 * 600)  # 10 minutes, device clock 500 ppm fast
    ws = WearableStream("wear-1")
    pkts = packets_at(50.0, acc, gyro, 25, ppm=500.0)
    chunks = run(ws, pkts)
    # hub time of each packet's last sample stays within the radio latency of its reception
    last_t = np.array([c.t_s[-1] for c in chunks])
    rx = np.array([r for _, r in pkts])
    assert np.all(np.abs(rx - last_t) < 0.06)
    # the device clock steps back 7 s: counted, and hub times keep moving forward
    p, r = pkts[-1]
    jumped = ImuPacket(sensor_id="wear-1", boot_count=1, seq=p.seq + 1, t0_ms=p.t0_ms + 500 - 7000, rate_hz=50.0,
                       acc_g=acc[:25], gyro_dps=gyro[:25], battery_pct=70.0, rssi_dbm=-60.0)
    out = ws.push(jumped, r + 0.5)
    assert ws.counters.clock_jumps == 1
    assert out[0].t_s[0] > last_t[-1] and abs(out[0].t_s[-1] - (r + 0.5)) < 0.06


def test_reboot_restarts_sequence_without_dropping_packets() -> None:
    acc, gyro = synth.quiet(50 * 20)
    ws = WearableStream("wear-1")
    first = packets_at(50.0, acc[:500], gyro[:500], 25)
    run(ws, first)
    second = [(p, rx + 15.0) for p, rx in packets_at(50.0, acc[500:], gyro[500:], 25, t0_ms=1000.0, boot=2)]
    chunks = run(ws, second)
    assert ws.counters.reboots == 1 and ws.status == "rebooted"
    assert ws.counters.late == 0 and ws.counters.duplicates == 0
    assert sum(len(c.t_s) for c in chunks) == 500


def test_short_gap_bridged_long_gap_not() -> None:
    acc, gyro = synth.quiet(50 * 30)
    pkts = packets_at(50.0, acc, gyro, 25)
    ws = WearableStream("wear-1")
    kept = pkts[:10] + pkts[13:30] + pkts[40:]  # lose 3 frames (1.5 s), later 10 frames (5 s)
    chunks: list[Chunk] = []
    for p, rx in kept:
        chunks += ws.push(p, rx)
        chunks += ws.flush(rx + 1.0)  # time passes: give up on the gap
    c = ws.counters
    assert c.gaps == 2 and c.lost_samples == 3 * 25 + 10 * 25
    assert c.bridged_samples == 3 * 25  # 1.5 s held, 5 s not (the grid restarts)
    t = np.concatenate([ch.t_s for ch in chunks])
    assert np.all(np.diff(t) > 0)


def test_stuck_then_recovered_sensor_is_reported_and_masked() -> None:
    acc, gyro = synth.quiet(50 * 20, walking=True)
    acc[300:700] = acc[300]  # frozen for 8 s
    gyro[300:700] = gyro[300]
    ws = WearableStream("wear-1")
    statuses = []
    for p, rx in packets_at(50.0, acc, gyro, 25):
        ws.push(p, rx)
        statuses.append(ws.status)
    assert "stuck" in statuses and statuses[-1] == "ok"
    assert ws.fault_episodes and ws.faulty_between(8.0, 12.0) and not ws.faulty_between(16.0, 19.0)
