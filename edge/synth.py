"""Small synthetic wearable signals: golden vectors for the model self-test, and a
traffic generator for the benchmark and unit tests.

Not a simulator (``firmware_sim`` is): just the three shapes the agent must tell apart,
made deterministic so a self-test verdict never depends on chance.

* quiet: standing or walking upright (gravity on +z, small sway or a 1.8 Hz gait bounce);
* fall: upright, ~0.4 s of free fall, an impact of ``peak_g``, a short bounce, then lying
  still (gravity moved to +y, a 90 degree posture change);
* lie down: the same posture change done slowly, with no impact.
"""

from __future__ import annotations

import numpy as np

from fallwatch.protocol.frames import ImuPacket, SensorFrame, encode_imu

RATE = 50.0


def quiet(
    n: int, rng: np.random.Generator | None = None, walking: bool = False, t0_s: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(acc_g, gyro_dps) of upright wear: still, or walking at ~1.8 steps/s."""
    rng = rng or np.random.default_rng(0)
    acc = np.zeros((n, 3), dtype=np.float32)
    acc[:, 2] = 1.0
    if walking:
        t = t0_s + np.arange(n) / RATE
        acc[:, 2] += 0.25 * np.sin(2 * np.pi * 1.8 * t)
        acc[:, 0] += 0.1 * np.sin(2 * np.pi * 0.9 * t)
    acc += rng.normal(0, 0.01, (n, 3)).astype(np.float32)
    gyro = rng.normal(0, 2.0, (n, 3)).astype(np.float32)
    return acc, gyro


def fall(
    pre_s: float = 4.0, post_s: float = 20.0, peak_g: float = 4.5, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """(acc_g, gyro_dps, impact_index) of a fall from standing to lying still."""
    rng = rng or np.random.default_rng(1)
    pre = int(pre_s * RATE)
    post = int(post_s * RATE)
    acc_pre, gyro_pre = quiet(pre, rng)
    ff = int(0.4 * RATE)
    t = np.linspace(0, 1, ff)
    acc_ff = np.stack([np.zeros(ff), 0.3 * t, 1.0 - 0.8 * t], axis=1)  # free fall: |a| drops to ~0.3 g
    imp = np.array([[0.5, 0.8 * peak_g, 0.5 * peak_g], [0.2, 0.6 * peak_g, 0.3], [0.1, 1.8, 0.2]])
    imp[0] *= peak_g / np.linalg.norm(imp[0])
    lying = np.zeros((post, 3))
    lying[:, 1] = 1.0
    lying[:10, 1] += np.linspace(0.6, 0.0, 10)  # bounce settling
    acc = np.vstack([acc_pre, acc_ff, imp, lying]).astype(np.float32)
    acc[pre + ff + 3 :] += rng.normal(0, 0.005, (len(acc) - pre - ff - 3, 3)).astype(np.float32)
    gyro = np.vstack(
        [gyro_pre, np.full((ff, 3), 120.0), np.full((3, 3), 300.0), rng.normal(0, 1.0, (post, 3))]
    )
    return acc, gyro.astype(np.float32), pre + ff


def lie_down(n: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    """Standing, then lying down over ~3 s with no impact (bed): not a fall."""
    acc = np.zeros((n, 3), dtype=np.float32)
    k = n // 3
    ramp = int(3 * RATE)
    ang = np.concatenate([np.zeros(k), np.linspace(0, np.pi / 2, ramp), np.full(n - k - ramp, np.pi / 2)])
    acc[:, 1] = np.sin(ang)
    acc[:, 2] = np.cos(ang)
    return acc, np.zeros((n, 3), dtype=np.float32)


#: what a golden window asks of a model: no alarm; an alarm at the model's threshold; or a
#: score above every no-alarm window (a softer, stylised fall: the fast path may leave it to
#: the no-recovery path, but a model that ranks it below lying down is broken)
GOLDEN_NO_ALARM, GOLDEN_ALARM, GOLDEN_OUTRANKS = 0, 1, 2


def golden_windows() -> tuple[np.ndarray, np.ndarray]:
    """(windows (k, WINDOW, 6), what each asks of the model (k,), ``GOLDEN_*``) for a model
    self-test: a sanity check that an update's bytes and the feature code still make a fall
    detector, not a measure of its sensitivity (that is the held-out evaluation's job)."""
    from fallwatch.models import features as F

    windows, labels = [], []
    for peak, ask in ((3.5, GOLDEN_OUTRANKS), (5.0, GOLDEN_ALARM)):
        acc, gyro, i = fall(peak_g=peak)
        w = np.concatenate([acc, gyro], axis=1)[i - F.PRE : i + F.POST]
        windows.append(w)
        labels.append(ask)
    acc, gyro = quiet(F.WINDOW)
    windows.append(np.concatenate([acc, gyro], axis=1))
    labels.append(GOLDEN_NO_ALARM)
    acc, gyro = lie_down(F.WINDOW * 3)
    mid = F.WINDOW
    windows.append(np.concatenate([acc, gyro], axis=1)[mid : mid + F.WINDOW])
    labels.append(GOLDEN_NO_ALARM)
    return np.stack(windows).astype(np.float32), np.array(labels)


def packets(
    sensor_id: str,
    acc: np.ndarray,
    gyro: np.ndarray,
    *,
    per_packet: int = 10,
    t0_ms: int = 0,
    seq0: int = 0,
    boot_count: int = 1,
    battery_pct: float = 80.0,
    rssi_dbm: float = -60.0,
    flags_at: dict[int, int] | None = None,
) -> list[ImuPacket]:
    """Cut a signal into wearable packets of ``per_packet`` samples at 50 Hz."""
    out = []
    for k, a in enumerate(range(0, len(acc), per_packet)):
        b = min(len(acc), a + per_packet)
        flags = 0
        for idx, fl in (flags_at or {}).items():
            if a <= idx < b:
                flags |= fl
        out.append(
            ImuPacket(
                sensor_id=sensor_id,
                boot_count=boot_count,
                seq=seq0 + k,
                t0_ms=int(t0_ms + a * 1000 / RATE),
                rate_hz=RATE,
                acc_g=acc[a:b],
                gyro_dps=gyro[a:b],
                battery_pct=battery_pct,
                rssi_dbm=rssi_dbm,
                flags=flags,
            )
        )
    return out


def frames(
    hub_id: str, pkts: list[ImuPacket], latency_s: float = 0.01, t0_s: float = 0.0
) -> list[SensorFrame]:
    """Frames as the hub would receive them: each packet arrives when its last sample is taken."""
    return [
        SensorFrame(hub_id, p.sensor_id, "ble", t0_s + p.t0_ms / 1000 + p.n / RATE + latency_s, encode_imu(p))
        for p in pkts
    ]
