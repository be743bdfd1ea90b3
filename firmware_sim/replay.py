"""Recorded IMU data in and out: replaying a recording as a wearable, exporting one back.

Replay layouts (docs/simulator.md):

* CSV: a header ``t_s,ax_g,ay_g,az_g,gx_dps,gy_dps,gz_dps`` then one row per sample,
  uniformly sampled, in the fallwatch sensor frame (x forward, y left, z up; gravity
  included, so a still upright wearer reads about (0, 0, 1) g).
* NPZ: arrays ``acc_g`` (n, 3), ``gyro_dps`` (n, 3) and scalar ``rate_hz``, same frame.
* SisFall: a trial text file (``F01_SA01_R01.txt``) or a member of a subject archive
  written ``SA01.tar.xz#F01_SA01_R01``, read by the model layer's SisFall reader
  (:func:`fallwatch.models.sisfall.load_trial`: g and deg/s, axes in the fallwatch frame).

Every source is resampled (polyphase, anti-aliased) to the wearable's rate.

What the hubs received is kept as a frame log (:mod:`fallwatch.protocol.framelog`,
``frames.jsonl`` of ``fallwatch sim run --out``); :func:`export_wearable` decodes one
wearable of it back into a replayable recording.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from fallwatch.models import sisfall
from fallwatch.protocol.frames import SensorFrame, decode_imu
from fallwatch.sim.scenario import ReplaySpec

CSV_HEADER = "t_s,ax_g,ay_g,az_g,gx_dps,gy_dps,gz_dps"


class ReplayError(ValueError):
    """A recording that cannot be replayed (missing file, wrong layout)."""


def resample(x: np.ndarray, from_hz: float, to_hz: float) -> np.ndarray:
    """Anti-aliased polyphase resampling along axis 0."""
    if abs(from_hz - to_hz) < 1e-9:
        return np.asarray(x, dtype=np.float64)
    ratio = Fraction(to_hz / from_hz).limit_denominator(1000)
    out: np.ndarray = resample_poly(np.asarray(x, dtype=np.float64), ratio.numerator, ratio.denominator, axis=0,
                                    padtype="line")  # scipy has no type information
    return out


def load_csv(path: Path) -> tuple[float, np.ndarray, np.ndarray]:
    with open(path) as fh:
        header = fh.readline().strip().replace(" ", "")
        if header != CSV_HEADER:
            raise ReplayError(f"{path}: header must be {CSV_HEADER!r}, got {header!r}")
        data = np.loadtxt(fh, delimiter=",", ndmin=2)
    if data.shape[1] != 7 or len(data) < 2:
        raise ReplayError(f"{path}: need >= 2 rows of 7 columns")
    dt = np.diff(data[:, 0])
    if (dt <= 0).any() or dt.std() > 0.05 * dt.mean():
        raise ReplayError(f"{path}: t_s must increase uniformly")
    return 1.0 / float(np.median(dt)), data[:, 1:4], data[:, 4:7]


def save_csv(path: Path, rate_hz: float, acc_g: np.ndarray, gyro_dps: np.ndarray) -> None:
    t = np.arange(len(acc_g)) / rate_hz
    np.savetxt(path, np.column_stack([t, acc_g, gyro_dps]), delimiter=",", header=CSV_HEADER, comments="",
               fmt="%.6f")


def load_npz(path: Path) -> tuple[float, np.ndarray, np.ndarray]:
    with np.load(path) as z:
        try:
            rate, acc, gyro = float(z["rate_hz"]), z["acc_g"], z["gyro_dps"]
        except KeyError as exc:
            raise ReplayError(f"{path}: missing array {exc}") from None
    if acc.ndim != 2 or acc.shape[1] != 3 or gyro.shape != acc.shape:
        raise ReplayError(f"{path}: acc_g/gyro_dps must be (n, 3)")
    return rate, acc, gyro


def save_npz(path: Path, rate_hz: float, acc_g: np.ndarray, gyro_dps: np.ndarray) -> None:
    np.savez_compressed(path, rate_hz=np.float64(rate_hz), acc_g=np.asarray(acc_g, np.float32),
                        gyro_dps=np.asarray(gyro_dps, np.float32))


def load_sisfall(path: str | Path) -> tuple[float, np.ndarray, np.ndarray]:
    try:
        return sisfall.load_trial(path)
    except sisfall.SisFallError as exc:
        raise ReplayError(str(exc)) from None


_LOADERS: dict[str, Callable[[Path], tuple[float, np.ndarray, np.ndarray]]] = {
    "csv": load_csv, "npz": load_npz, "sisfall": load_sisfall}


class ImuRecording:
    """Samples for a wearable from a recording, at the device rate, looping if asked.

    (Not to be confused with the edge's ``replay`` source, which feeds a frame log.)
    """

    def __init__(self, rate_hz: float, acc_g: np.ndarray, gyro_dps: np.ndarray, device_hz: float,
                 loop: bool = True) -> None:
        self.acc = resample(acc_g, rate_hz, device_hz)
        self.gyro = resample(gyro_dps, rate_hz, device_hz)
        self.rate = device_hz
        self.loop = loop
        self.n = len(self.acc)
        if self.n == 0:
            raise ReplayError("empty recording")

    @classmethod
    def from_spec(cls, spec: ReplaySpec, device_hz: float) -> ImuRecording:
        if spec.format != "sisfall" and not Path(spec.path).exists():
            raise ReplayError(f"replay file {spec.path} not found")
        rate, acc, gyro = _LOADERS[spec.format](spec.path)
        return cls(rate, acc, gyro, device_hz, spec.loop)

    @property
    def duration_s(self) -> float:
        return self.n / self.rate

    def block(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.rint(t * self.rate).astype(np.int64)
        idx = idx % self.n if self.loop else np.clip(idx, 0, self.n - 1)
        return self.acc[idx], self.gyro[idx]


# ------------------------------------------------------------------ export


def export_wearable(frames: Iterable[SensorFrame], sensor_id: str) -> tuple[float, np.ndarray, np.ndarray]:
    """Decode one wearable's frames (skipping undecodable and duplicate ones) into arrays.

    Frames are ordered by (boot, seq); gaps from lost frames are not filled, so the
    result is what the hub got, which is the point of replaying it.
    """
    packets = {}
    for f in frames:
        if f.sensor_id != sensor_id or f.transport != "ble":
            continue
        try:
            p = decode_imu(f.payload)
        except ValueError:
            continue
        packets[(p.boot_count, p.seq)] = p
    if not packets:
        raise ReplayError(f"no decodable frames from {sensor_id}")
    ordered = [packets[k] for k in sorted(packets)]
    return ordered[0].rate_hz, np.concatenate([p.acc_g for p in ordered]), np.concatenate(
        [p.gyro_dps for p in ordered])
