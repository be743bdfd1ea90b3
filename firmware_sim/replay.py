"""Recorded data in and out: replaying IMU recordings as a wearable, and frame logs.

Replay layouts (docs/simulator.md):

* CSV: a header ``t_s,ax_g,ay_g,az_g,gx_dps,gy_dps,gz_dps`` then one row per sample,
  uniformly sampled, in the fallwatch sensor frame (x forward, y left, z up; gravity
  included, so a still upright wearer reads about (0, 0, 1) g).
* NPZ: arrays ``acc_g`` (n, 3), ``gyro_dps`` (n, 3) and scalar ``rate_hz``, same frame.
* SisFall: a trial text file (``F01_SA01_R01.txt``) or a member of a subject archive
  written ``SA01.tar.xz#F01_SA01_R01``; raw ADXL345/ITG3200 counts are converted to
  g and deg/s and the axes mapped to the fallwatch frame.

Every source is resampled (polyphase, anti-aliased) to the wearable's rate.

Frame logs (``frames.fwlog``, written by ``fallwatch sim run --out``) keep exactly what
the hubs received, so a run can be fed to an edge agent again without re-simulating:
``FWLOG1\\n`` then per frame ``<d rx_t_s><B hub len><B sensor len><B transport><I payload len>``
followed by the hub id, sensor id and payload bytes.
"""

from __future__ import annotations

import io
import struct
import tarfile
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

from fallwatch.protocol.frames import SensorFrame, decode_imu
from fallwatch.sim.scenario import ReplaySpec

CSV_HEADER = "t_s,ax_g,ay_g,az_g,gx_dps,gy_dps,gz_dps"
SISFALL_HZ = 200.0
#: SisFall ADXL345 (±16 g, 13 bit) and ITG3200 (±2000 °/s, 16 bit) count scales.
SISFALL_ACC = 32.0 / 2**13
SISFALL_GYRO = 4000.0 / 2**16
#: SisFall axes -> fallwatch frame: x_fw = z_s (forward), y_fw = -x_s, z_fw = -y_s (y_s points down).
SISFALL_AXES = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=np.float64)


class ReplayError(ValueError):
    """A recording that cannot be replayed (missing file, wrong layout)."""


def resample(x: np.ndarray, from_hz: float, to_hz: float) -> np.ndarray:
    """Anti-aliased polyphase resampling along axis 0."""
    if abs(from_hz - to_hz) < 1e-9:
        return np.asarray(x, dtype=np.float64)
    ratio = Fraction(to_hz / from_hz).limit_denominator(1000)
    return resample_poly(np.asarray(x, dtype=np.float64), ratio.numerator, ratio.denominator, axis=0,
                         padtype="line")


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


def parse_sisfall(text: str | bytes) -> np.ndarray:
    """A SisFall trial as raw counts (n, 9)."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    rows = [line.replace(";", "") for line in text.splitlines() if line.strip()]
    return np.loadtxt(io.StringIO("\n".join(rows)), delimiter=",", ndmin=2)


def sisfall_units(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ADXL345 acc (g) and ITG3200 gyro (deg/s) in the fallwatch sensor frame."""
    acc = counts[:, 0:3] * SISFALL_ACC @ SISFALL_AXES.T
    gyro = counts[:, 3:6] * SISFALL_GYRO @ SISFALL_AXES.T
    return acc, gyro


def read_sisfall_text(path: str | Path) -> bytes:
    """A trial's text from ``trial.txt`` or ``SUBJECT.tar.xz#TRIAL``."""
    spec = str(path)
    if "#" in spec:
        archive, member = spec.split("#", 1)
        try:
            with tarfile.open(archive) as tf:
                for m in tf:
                    if m.isfile() and Path(m.name).stem == Path(member).stem:
                        fh = tf.extractfile(m)
                        assert fh is not None
                        return fh.read()
        except (OSError, tarfile.TarError) as exc:
            raise ReplayError(f"cannot read {archive}: {exc}") from None
        raise ReplayError(f"{member} not found in {archive}")
    try:
        return Path(spec).read_bytes()
    except OSError as exc:
        raise ReplayError(str(exc)) from None


def iter_sisfall(archive: str | Path, pattern: str = "F") -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(trial name, acc g, gyro deg/s) at 200 Hz for each trial whose code starts with ``pattern``."""
    with tarfile.open(archive) as tf:
        for m in tf:
            name = Path(m.name).stem
            if m.isfile() and m.name.endswith(".txt") and name.startswith(pattern) and "_S" in name:
                fh = tf.extractfile(m)
                assert fh is not None
                acc, gyro = sisfall_units(parse_sisfall(fh.read()))
                yield name, acc, gyro


def load_sisfall(path: str | Path) -> tuple[float, np.ndarray, np.ndarray]:
    acc, gyro = sisfall_units(parse_sisfall(read_sisfall_text(path)))
    return SISFALL_HZ, acc, gyro


class ReplaySource:
    """Samples for a wearable from a recording, at the device rate, looping if asked."""

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
    def from_spec(cls, spec: ReplaySpec, device_hz: float) -> ReplaySource:
        if spec.format != "sisfall" and not Path(spec.path).exists():
            raise ReplayError(f"replay file {spec.path} not found")
        loader = {"csv": load_csv, "npz": load_npz, "sisfall": load_sisfall}[spec.format]
        rate, acc, gyro = loader(spec.path)  # type: ignore[operator]
        return cls(rate, acc, gyro, device_hz, spec.loop)

    @property
    def duration_s(self) -> float:
        return self.n / self.rate

    def block(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.rint(t * self.rate).astype(np.int64)
        idx = idx % self.n if self.loop else np.clip(idx, 0, self.n - 1)
        return self.acc[idx], self.gyro[idx]


# ------------------------------------------------------------------ frame logs

FWLOG_MAGIC = b"FWLOG1\n"
_REC = struct.Struct("<dBBBI")
_TRANSPORTS = ("ble", "zigbee")


def write_frames(path: str | Path, frames: Iterable[SensorFrame]) -> int:
    """Append-only log of received frames; returns how many were written."""
    n = 0
    with open(path, "wb") as fh:
        fh.write(FWLOG_MAGIC)
        for f in frames:
            hub, sid = f.hub_id.encode(), f.sensor_id.encode()
            fh.write(_REC.pack(f.rx_t_s, len(hub), len(sid), _TRANSPORTS.index(f.transport), len(f.payload)))
            fh.write(hub + sid + f.payload)
            n += 1
    return n


class FrameLogWriter:
    """Incremental :func:`write_frames` for long runs."""

    def __init__(self, path: str | Path) -> None:
        self.fh = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.fh.write(FWLOG_MAGIC)
        self.count = 0

    def write(self, frames: Iterable[SensorFrame]) -> None:
        parts = []
        for f in frames:
            hub, sid = f.hub_id.encode(), f.sensor_id.encode()
            parts.append(_REC.pack(f.rx_t_s, len(hub), len(sid), _TRANSPORTS.index(f.transport), len(f.payload)))
            parts.append(hub + sid + f.payload)
            self.count += 1
        self.fh.write(b"".join(parts))

    def close(self) -> None:
        self.fh.close()


def read_frames(path: str | Path) -> Iterator[SensorFrame]:
    """Frames from a log in the order they were received."""
    with open(path, "rb") as fh:
        if fh.read(len(FWLOG_MAGIC)) != FWLOG_MAGIC:
            raise ReplayError(f"{path} is not a fallwatch frame log")
        while head := fh.read(_REC.size):
            if len(head) < _REC.size:
                raise ReplayError(f"{path}: truncated record")
            rx, lh, ls, tr, lp = _REC.unpack(head)
            body = fh.read(lh + ls + lp)
            if len(body) < lh + ls + lp:
                raise ReplayError(f"{path}: truncated record")
            yield SensorFrame(body[:lh].decode(), body[lh:lh + ls].decode(), _TRANSPORTS[tr], rx, body[lh + ls:])


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
