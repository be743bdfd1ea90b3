"""The one reader of the SisFall recordings (Sucerquia et al., Sensors 17(1):198, 2017).

Reads the per-subject ``SUBJECT.tar.xz`` archives directly (``tarfile`` handles xz) or
already extracted ``SUBJECT/ACT_SUBJECT_Rnn.txt`` folders, converts raw counts to
physical units and attaches per-trial metadata parsed from the file name. Training and
evaluation use :func:`load_all` (SisFall's own axes); the simulator replays single trials
as a wearable through :func:`load_trial` / :func:`iter_trials`, which map the axes to the
fallwatch sensor frame.

Why a cache: parsing ~3,000 text files and resampling them takes about a minute on the
Pi-class CI box; training and evaluation read the same trials many times, so the
downsampled float32 arrays are kept under ``/tmp`` keyed by the archive's size and mtime
(never inside the repository: the data set must not be committed).
"""

from __future__ import annotations

import hashlib
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

#: Native sampling rate of the SisFall recordings.
NATIVE_HZ = 200.0

#: (range, bits) per sensor; value = (2 * range / 2**bits) * raw.
ADXL345 = (16.0, 13)  # g
ITG3200 = (2000.0, 16)  # deg/s
MMA8451Q = (8.0, 14)  # g

#: Scale factors for the nine columns (ADXL345 xyz, ITG3200 xyz, MMA8451Q xyz).
SCALE = np.array(
    [2 * ADXL345[0] / 2 ** ADXL345[1]] * 3
    + [2 * ITG3200[0] / 2 ** ITG3200[1]] * 3
    + [2 * MMA8451Q[0] / 2 ** MMA8451Q[1]] * 3,
    dtype=np.float64,
)

#: SisFall axes -> the fallwatch sensor frame (x forward, y left, z up):
#: x_fw = z_s, y_fw = -x_s, z_fw = -y_s (the SisFall y axis points down).
SENSOR_FRAME_AXES = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=np.float64)

TRIAL_RE = re.compile(r"(?P<act>[DF]\d{2})_(?P<subject>S[AE]\d{2})_R(?P<trial>\d{2})\.txt$")
SUBJECT_RE = re.compile(r"^(S[AE]\d{2})(\.tar\.xz)?$")

CACHE_DIR = Path(os.environ.get("FALLWATCH_CACHE", "/tmp/fallwatch-cache"))
_CACHE_VERSION = "2"  # 2: files attributed to the subject folder they sit in


class SisFallError(ValueError):
    """A trial that cannot be read (missing file, archive or member)."""


@dataclass(frozen=True)
class Trial:
    """One SisFall recording in physical units.

    ``acc_g`` is the ADXL345 (±16 g: falls saturate the ±8 g MMA8451Q), ``acc2_g`` the
    MMA8451Q, ``gyro_dps`` the ITG3200, all shaped (n, 3) at ``rate_hz``.
    """

    subject: str
    group: str  # "SA" adults 19-30, "SE" elderly 60-75
    activity: str  # "D01".."D19", "F01".."F15"
    trial: int
    rate_hz: float
    acc_g: np.ndarray
    gyro_dps: np.ndarray
    acc2_g: np.ndarray
    #: the file's own name when it names another subject than the folder it sits in (the
    #: archives hold a few, e.g. ``SA15/D17_SE15_R01.txt``); "" when they agree
    source_name: str = ""

    @property
    def is_fall(self) -> bool:
        return self.activity.startswith("F")

    @property
    def name(self) -> str:
        return f"{self.activity}_{self.subject}_R{self.trial:02d}"

    @property
    def duration_s(self) -> float:
        return len(self.acc_g) / self.rate_hz


def parse_counts(text: str | bytes) -> np.ndarray:
    """Parse one trial file into an (n, 9) int array of raw counts.

    ``np.fromstring`` on whitespace is ~20x faster than ``np.loadtxt`` here; the trailing
    ``;`` of every line and the commas are turned into whitespace first.
    """
    if isinstance(text, bytes):
        text = text.decode("ascii", errors="replace")
    flat = np.array(text.replace(";", " ").replace(",", " ").split(), dtype=np.int32)
    if flat.size % 9:
        # A truncated last line: drop the incomplete row rather than shift every column.
        flat = flat[: flat.size - flat.size % 9]
    return flat.reshape(-1, 9)


def counts_to_units(counts: np.ndarray) -> np.ndarray:
    """Raw counts (n, 9) -> physical units: g, deg/s, g (see :data:`SCALE`)."""
    return counts.astype(np.float64) * SCALE


def to_sensor_frame(units: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Units (n, 9) -> ADXL345 acceleration (g) and ITG3200 rate (deg/s) in the fallwatch sensor frame."""
    return units[:, 0:3] @ SENSOR_FRAME_AXES.T, units[:, 3:6] @ SENSOR_FRAME_AXES.T


def read_trial_text(path: str | Path) -> bytes:
    """A trial file's bytes, from ``trial.txt`` or ``SUBJECT.tar.xz#TRIAL``."""
    spec = str(path)
    if "#" in spec:
        archive, member = spec.split("#", 1)
        try:
            with tarfile.open(archive) as tf:
                for m in tf:
                    if m.isfile() and Path(m.name).stem == Path(member).stem:
                        fh = tf.extractfile(m)
                        if fh is not None:
                            return fh.read()
        except (OSError, tarfile.TarError) as exc:
            raise SisFallError(f"cannot read {archive}: {exc}") from None
        raise SisFallError(f"{member} not found in {archive}")
    try:
        return Path(spec).read_bytes()
    except OSError as exc:
        raise SisFallError(str(exc)) from None


def load_trial(path: str | Path) -> tuple[float, np.ndarray, np.ndarray]:
    """One trial at its native rate: (200 Hz, acc g, gyro deg/s) in the fallwatch sensor frame."""
    acc, gyro = to_sensor_frame(counts_to_units(parse_counts(read_trial_text(path))))
    return NATIVE_HZ, acc, gyro


def iter_trials(archive: str | Path, prefix: str = "F") -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(trial name, acc g, gyro deg/s) at 200 Hz in the sensor frame, for each trial of a subject
    archive whose activity code starts with ``prefix`` (``""``: every trial)."""
    with tarfile.open(archive) as tf:
        for m in tf:
            name = Path(m.name).stem
            if m.isfile() and parse_name(m.name) is not None and name.startswith(prefix):
                fh = tf.extractfile(m)
                if fh is not None:
                    acc, gyro = to_sensor_frame(counts_to_units(parse_counts(fh.read())))
                    yield name, acc, gyro


def parse_name(name: str) -> tuple[str, str, str, int] | None:
    """``.../F05_SA01_R04.txt`` -> ("F05", "SA01", "SA", 4); None for other files."""
    m = TRIAL_RE.search(name)
    if not m:
        return None
    subject = m["subject"]
    return m["act"], subject, subject[:2], int(m["trial"])


def _resample(x: np.ndarray, rate_hz: float) -> np.ndarray:
    if rate_hz == NATIVE_HZ:
        return x
    up, down = _ratio(rate_hz)
    # resample_poly applies a Kaiser-windowed anti-alias FIR, so the 50 Hz stream carries
    # no aliased 25-100 Hz vibration that a real 50 Hz wearable would have filtered out.
    out: np.ndarray = resample_poly(x, up, down, axis=0)  # scipy has no type information
    return out


def _ratio(rate_hz: float) -> tuple[int, int]:
    from fractions import Fraction

    fr = Fraction(rate_hz / NATIVE_HZ).limit_denominator(100)
    return fr.numerator, fr.denominator


def _make_trial(name: str, raw: bytes, rate_hz: float, subject: str | None = None) -> Trial | None:
    """A trial from one file; ``subject`` is the folder (archive) it sits in, which wins over the
    subject id in the file name: a training manifest must never claim a subject it does not hold."""
    meta = parse_name(name)
    if meta is None:
        return None
    act, named, _, trial_no = meta
    subject = subject or named
    counts = parse_counts(raw)
    if len(counts) < 10:
        return None
    x = _resample(counts_to_units(counts), rate_hz).astype(np.float32)
    source = Path(name).name if named != subject else ""
    return Trial(subject, subject[:2], act, trial_no, rate_hz, x[:, 0:3], x[:, 3:6], x[:, 6:9], source)


def list_subjects(data_dir: str | Path) -> list[str]:
    """Subjects present in ``data_dir`` as archives or extracted folders, sorted."""
    data_dir = Path(data_dir)
    found = set()
    for p in data_dir.iterdir():
        m = SUBJECT_RE.match(p.name)
        if m and (p.is_dir() or p.name.endswith(".tar.xz")):
            found.add(m.group(1))
    return sorted(found)


def _iter_raw(data_dir: Path, subject: str) -> Iterator[tuple[str, bytes]]:
    folder = data_dir / subject
    if folder.is_dir():
        for f in sorted(folder.glob("*.txt")):
            yield f.name, f.read_bytes()
        return
    with tarfile.open(data_dir / f"{subject}.tar.xz", "r:xz") as tf:
        for member in tf:
            if member.isfile() and member.name.endswith(".txt"):
                fh = tf.extractfile(member)
                if fh is not None:
                    yield member.name, fh.read()


def _source_key(data_dir: Path, subject: str, rate_hz: float) -> str:
    src = data_dir / subject if (data_dir / subject).is_dir() else data_dir / f"{subject}.tar.xz"
    if src.is_dir():
        stats = [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in sorted(src.glob("*.txt"))]
    else:
        st = src.stat()
        stats = [(src.name, st.st_size, int(st.st_mtime))]
    h = hashlib.sha1(repr((_CACHE_VERSION, str(src.resolve()), stats, rate_hz)).encode()).hexdigest()
    return h[:16]


def load_subject(
    data_dir: str | Path, subject: str, rate_hz: float = 50.0, cache: bool = True
) -> list[Trial]:
    """All trials of one subject at ``rate_hz`` (cached under :data:`CACHE_DIR`)."""
    data_dir = Path(data_dir)
    cache_file = CACHE_DIR / f"{subject}-{_source_key(data_dir, subject, rate_hz)}.npz"
    if cache and cache_file.exists():
        try:
            return _read_cache(cache_file, rate_hz)
        except (OSError, ValueError, KeyError):
            pass  # a corrupt or partial cache file is simply rebuilt
    trials = [t for name, raw in _iter_raw(data_dir, subject) if (t := _make_trial(name, raw, rate_hz, subject))]
    trials.sort(key=lambda t: (t.activity, t.trial))
    seen: set[str] = set()
    for t in trials:
        if t.name in seen:  # a renamed file meeting one of the folder's own: say so, never merge
            raise SisFallError(f"{subject}: two files give trial {t.name} (one named {t.source_name or t.name})")
        seen.add(t.name)
    if cache:
        _write_cache(cache_file, trials)
    return trials


def _write_cache(path: Path, trials: list[Trial]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for t in trials:
        arrays[t.name] = np.concatenate([t.acc_g, t.gyro_dps, t.acc2_g], axis=1)
    arrays["__sources__"] = np.array([f"{t.name}={t.source_name}" for t in trials if t.source_name] or [""])
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy's stub matches **kwds against allow_pickle: bool
    tmp.replace(path)  # atomic: parallel workers never read half a file


def _read_cache(path: Path, rate_hz: float) -> list[Trial]:
    out = []
    with np.load(path) as z:
        sources = dict(s.split("=", 1) for s in z["__sources__"].tolist() if s)
        for name in z.files:
            if name.startswith("__"):
                continue
            act, subject, group, trial_no = parse_name(name + ".txt") or ("", "", "", 0)
            x = z[name]
            out.append(Trial(subject, group, act, trial_no, rate_hz, x[:, 0:3], x[:, 3:6], x[:, 6:9],
                             sources.get(name, "")))
    out.sort(key=lambda t: (t.activity, t.trial))
    return out


def load_all(
    data_dir: str | Path,
    subjects: Iterable[str] | None = None,
    rate_hz: float = 50.0,
    progress: bool = False,
) -> list[Trial]:
    """Every trial of the given (default: all present) subjects."""
    subjects = list(subjects) if subjects is not None else list_subjects(data_dir)
    it: Iterable[str] = subjects
    if progress:
        from tqdm import tqdm

        it = tqdm(subjects, desc="loading SisFall", unit="subject")
    trials: list[Trial] = []
    for s in it:
        trials.extend(load_subject(data_dir, s, rate_hz))
    return trials


def data_summary(trials: list[Trial]) -> dict[str, object]:
    """Counts and a content hash, stored in the model metadata so a model names its data."""
    subjects = sorted({t.subject for t in trials})
    h = hashlib.sha256()
    for t in sorted(trials, key=lambda t: t.name):
        h.update(t.name.encode())
        h.update(str(len(t.acc_g)).encode())
    return {
        "subjects": subjects,
        "trials": len(trials),
        "fall_trials": sum(t.is_fall for t in trials),
        "adl_trials": sum(not t.is_fall for t in trials),
        "hours": round(sum(t.duration_s for t in trials) / 3600, 3),
        "hash": h.hexdigest()[:16],
        # files whose name carries another subject's id, attributed to the folder they sit in
        "renamed": sorted(f"{t.subject}/{t.source_name} -> {t.name}" for t in trials if t.source_name),
    }
