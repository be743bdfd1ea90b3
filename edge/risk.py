"""Daily fall-risk features per resident, computed on the hub from the same 50 Hz stream.

The feature names, units and meaning are the contract in :mod:`fallwatch.models.risk_features`;
the score and its driving factors come from :class:`fallwatch.models.risk.RiskModel`. What this
module measures, per resident-day:

* **gait** (5 s segments of the waist wearable): a segment is *walking* when the
  acceleration magnitude varies (std > 0.05 g) and one spectral peak between 0.8 and
  2.6 Hz holds most of the 0.5-5 Hz power. ``cadence_spm`` = that frequency x 60 (one
  magnitude cycle per step); ``stride_time_cv`` = std/mean of heel-strike intervals
  (local maxima of the magnitude); ``gait_speed_m_s`` from the step amplitude A (the
  magnitude's fundamental): ``(A - 0.05) / 0.212``. That amplitude-to-speed line is a
  population calibration fitted on the simulator's gait model; on real devices a
  per-resident calibration at install (a timed 4 m walk) should replace it.
* ``time_upright_h``: segments whose gravity direction is within 30 degrees of the
  resident's walking posture; ``sway_rms_mg``: horizontal RMS acceleration of upright,
  still segments.
* **nights** (22:00-06:00 local, room sensors): ``night_bathroom_visits`` = bathroom
  occupancy onsets more than 5 min apart; ``night_activity_events`` = bed exits.
* ``falls_past_12m``: alerts this agent raised for the resident since it started.
* ``gait_speed_trend_pct_wk``: slope of the daily gait speed over the kept days (>= 5).

Not measured here (left to the model's cohort mean, and listed as missing):
``sit_to_stand_s`` and ``tug_s``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fallwatch.protocol.frames import RoomEvent

if TYPE_CHECKING:
    from fallwatch.models.risk import RiskModel

SEG = 250  # 5 s at 50 Hz
RATE = 50.0
#: gait speed (m/s) = (A - SPEED_A0) / SPEED_K, A = step-frequency amplitude of the
#: magnitude (g); fitted on simulated gait of 0.6 and 1.1 m/s walkers (see module doc)
SPEED_A0 = 0.05
SPEED_K = 0.212


@dataclass
class GaitAccumulator:
    """One wearable's day of gait and posture statistics (cheap: one FFT per 5 s)."""

    buf: np.ndarray = field(default_factory=lambda: np.zeros((SEG, 3), dtype=np.float32))
    n: int = 0
    cadence: list[float] = field(default_factory=list)
    speed: list[float] = field(default_factory=list)
    step_cv: list[float] = field(default_factory=list)
    sway: list[float] = field(default_factory=list)
    upright_s: float = 0.0
    seconds: float = 0.0
    walking_s: float = 0.0
    up_ref: np.ndarray | None = None  # gravity direction while walking (the upright posture)
    history: list[tuple[str, float]] = field(default_factory=list)  # (day, median gait speed)

    def push(self, acc: np.ndarray) -> None:
        k = 0
        while k < len(acc):
            take = min(SEG - self.n, len(acc) - k)
            self.buf[self.n:self.n + take] = acc[k:k + take]
            self.n += take
            k += take
            if self.n == SEG:
                self._segment(self.buf)
                self.n = 0

    def _segment(self, a: np.ndarray) -> None:
        self.seconds += SEG / RATE
        mag = np.sqrt(np.einsum("ij,ij->i", a, a))
        g = a.mean(axis=0)
        gdir = g / max(float(np.linalg.norm(g)), 1e-6)
        std = float(mag.std())
        walking = False
        if std > 0.05:
            x = mag - mag.mean()
            spec = np.abs(np.fft.rfft(x * np.hanning(SEG))) ** 2
            freqs = np.fft.rfftfreq(SEG, 1 / RATE)
            band = (freqs >= 0.5) & (freqs <= 5.0)
            gait = (freqs >= 0.8) & (freqs <= 2.6)
            k = int(np.argmax(np.where(gait, spec, 0.0)))
            share = spec[max(0, k - 1):k + 2].sum() / max(float(spec[band].sum()), 1e-12)
            if share > 0.4:
                walking = True
                f = float(freqs[k])
                # refine the peak (parabolic interpolation) for a cadence finer than 0.2 Hz bins
                if 0 < k < len(spec) - 1:
                    y0, y1, y2 = np.log(spec[k - 1:k + 2] + 1e-12)
                    f += 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2) * (freqs[1] - freqs[0])
                self.cadence.append(60.0 * f)
                amp = 2 * abs(np.fft.rfft(x)[k]) / SEG  # fundamental amplitude, no window
                self.speed.append(float(np.clip((amp - SPEED_A0) / SPEED_K, 0.1, 2.0)))
                cv = _step_cv(mag, f)
                if cv is not None:
                    self.step_cv.append(cv)
                self.walking_s += SEG / RATE
                self.up_ref = gdir if self.up_ref is None else _unit(0.9 * self.up_ref + 0.1 * gdir)
        if self.up_ref is not None and float(np.dot(gdir, self.up_ref)) > np.cos(np.radians(30)):
            self.upright_s += SEG / RATE
            if not walking and std < 0.03:
                dev = a - g
                horiz = dev - np.outer(dev @ gdir, gdir)
                self.sway.append(1000.0 * float(np.sqrt((horiz**2).sum(axis=1).mean())))

    def features(self, day: str) -> dict[str, float]:
        out: dict[str, float] = {"time_upright_h": round(self.upright_s / 3600.0, 3)}
        if self.cadence:
            out["cadence_spm"] = round(float(np.median(self.cadence)), 2)
            out["gait_speed_m_s"] = round(float(np.median(self.speed)), 3)
            self.history = [*self.history[-27:], (day, out["gait_speed_m_s"])]
        if len(self.step_cv) >= 3:
            out["stride_time_cv"] = round(float(np.median(self.step_cv)), 4)
        if self.sway:
            out["sway_rms_mg"] = round(float(np.median(self.sway)), 2)
        if len(self.history) >= 5:
            v = np.array([s for _, s in self.history])
            slope_per_day = float(np.polyfit(np.arange(len(v)), v, 1)[0])
            out["gait_speed_trend_pct_wk"] = round(100.0 * 7 * slope_per_day / max(float(v.mean()), 1e-6), 3)
        return out

    def reset_day(self) -> None:
        keep_ref, keep_hist = self.up_ref, self.history
        self.__init__()  # type: ignore[misc]  # a fresh day is a fresh accumulator; only the references are kept
        self.up_ref, self.history = keep_ref, keep_hist


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-6)


def _step_cv(mag: np.ndarray, f_step: float) -> float | None:
    """CV of intervals between heel strikes (one magnitude maximum per step)."""
    period = RATE / f_step
    thr = mag.mean() + 0.3 * mag.std()
    inner = mag[1:-1]
    cand = np.flatnonzero((inner > mag[:-2]) & (inner >= mag[2:]) & (inner > thr)) + 1
    peaks: list[int] = []
    for i in cand:  # keep the highest maximum within 0.6 step periods
        if peaks and i - peaks[-1] < 0.6 * period:
            if mag[i] > mag[peaks[-1]]:
                peaks[-1] = int(i)
            continue
        peaks.append(int(i))
    if len(peaks) < 4:
        return None
    iv = np.diff(peaks).astype(np.float64)
    return float(iv.std() / iv.mean())


@dataclass
class NightCounter:
    """Room-sensor night statistics of one home (one resident per hub)."""

    start_epoch_ms: int = 0
    night_start_h: int = 22
    night_end_h: int = 6
    bathroom_visits: int = 0
    bed_exits: int = 0
    _last_bath_t: float = -1e9
    _bed: dict[str, bool] = field(default_factory=dict)

    def _night(self, t_s: float) -> bool:
        h = time.localtime(self.start_epoch_ms / 1000.0 + t_s).tm_hour
        return h >= self.night_start_h or h < self.night_end_h

    def update(self, ev: RoomEvent, t_s: float) -> None:
        if ev.state.get("heartbeat"):
            return
        if ev.kind == "bathroom" and ev.value and self._night(t_s):
            if t_s - self._last_bath_t > 300.0:
                self.bathroom_visits += 1
            self._last_bath_t = t_s
        elif ev.kind == "bed":
            was = self._bed.get(ev.sensor_id)
            self._bed[ev.sensor_id] = ev.value
            if was and not ev.value and self._night(t_s):
                self.bed_exits += 1

    def features(self) -> dict[str, float]:
        return {"night_bathroom_visits": float(self.bathroom_visits), "night_activity_events": float(self.bed_exits)}

    def reset_day(self) -> None:
        self.bathroom_visits = 0
        self.bed_exits = 0


def load_risk_model() -> RiskModel | None:
    """The shipped risk model, or None when this build has none (risk scoring is then off)."""
    try:
        from fallwatch.models.risk import DEFAULT_PATH, RiskModel
    except ImportError:
        return None
    return RiskModel() if DEFAULT_PATH.exists() else None
