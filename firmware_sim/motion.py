"""Body motion of a waist-worn IMU, rendered segment by segment with numpy.

Why a kinematic model rather than noise shaped to look right: the accelerometer must
read what a real one reads — specific force, i.e. gravity rotated into the sensor frame
plus linear acceleration — and the gyroscope the rate of the same orientation, so that
posture, tilt, free fall and impact are physically consistent across both sensors.

Each segment (walk, stand, sit-to-stand, fall, ...) is a pure function of the time
since its start and parameters drawn when the timeline was built. That makes rendering
vectorised (a whole block of samples per numpy call, never per sample) and makes a run
bit-identical for a seed whatever the block or chunk size.

Sensor frame (waist, upright): x forward (anterior), y left, z up. Trunk orientation is
pitch ``th`` (deg, + = leaning forward, +90 = prone, -90 = supine) and roll ``ph`` (deg,
+ = towards the left side, ±90 = lying on a side).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

G = 9.80665
DEG = np.pi / 180.0

#: Orientation (pitch, roll) of the named postures.
POSTURES: dict[str, tuple[float, float]] = {
    "stand": (3.0, 0.0),
    "sit": (-12.0, 0.0),
    "lie_back": (-88.0, 0.0),
    "lie_left": (-88.0, 85.0),
    "lie_right": (-88.0, -85.0),
    "lie_front": (85.0, 0.0),
    "floor_left": (-80.0, 80.0),
    "floor_right": (-80.0, -80.0),
    "floor_back": (-85.0, 5.0),
    "floor_front": (82.0, 5.0),
    "floor_sit": (-20.0, 0.0),
}


@dataclass(slots=True)
class Segment:
    """One stretch of activity on a resident's timeline."""

    kind: str  # renderer name: still, walk, transition, stumble, fall
    t0: float
    t1: float
    start: str  # posture at start
    end: str  # posture at end
    room: str
    place: str = "none"  # "bed" | "chair" | "floor" | "none": what pressure sensors see
    moving: bool = False  # PIR sees it
    room_from: str | None = None  # walking: the room left (first half of the segment)
    label: str = ""  # ADL / event name for ground truth ("walk", "sit_down", "fall", ...)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return self.t1 - self.t0

    def room_at(self, t: float) -> str:
        if self.room_from is not None and t < (self.t0 + self.t1) / 2:
            return self.room_from
        return self.room


#: A renderer returns pitch, roll (deg), yaw rate (deg/s), vertical (world), forward and
#: lateral linear acceleration (g), and optional extra body-frame acc (g) / gyro (deg/s).
Rendered = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                 np.ndarray | None, np.ndarray | None]


def _min_jerk(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-jerk position profile and its second derivative (per unit time²)."""
    u = np.clip(u, 0.0, 1.0)
    u2 = u * u
    return u2 * u * (10 - 15 * u + 6 * u2), 60 * u - 180 * u2 + 120 * u2 * u


def _gauss(tau: np.ndarray, center: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((tau - center) / sigma) ** 2)


def _sway(tau: np.ndarray, sway: list[tuple[float, float, float]]) -> np.ndarray:
    out = np.zeros_like(tau)
    for amp, freq, phase in sway:
        out += amp * np.sin(2 * np.pi * freq * tau + phase)
    return out


def render_still(tau: np.ndarray, p: dict[str, Any]) -> Rendered:
    th0, ph0 = p["pose"]
    th = th0 + _sway(tau, p["sway_th"])
    ph = ph0 + _sway(tau, p["sway_ph"])
    z = np.zeros_like(tau)
    return th, ph, z, z, z, z, None, None


def render_walk(tau: np.ndarray, p: dict[str, Any]) -> Rendered:
    steps: np.ndarray = p["steps"]  # heel-strike times from the segment start
    amp: np.ndarray = p["amp"]  # per-step amplitude factor (step-to-step variability)
    dur = p["dur"]
    ph_steps = np.interp(tau, steps, np.arange(len(steps), dtype=np.float64))
    env = np.clip(tau / 0.8, 0, 1) * np.clip((dur - tau) / 0.8, 0, 1)
    a = np.interp(tau, steps, amp) * env
    av_amp, ap_amp, ml_amp = p["a_v"], p["a_ap"], p["a_ml"]
    two_pi_p = 2 * np.pi * ph_steps
    frac = ph_steps - np.floor(ph_steps)
    frac = np.minimum(frac, 1 - frac)
    heel = np.exp(-0.5 * (frac / 0.05) ** 2) - 0.125  # sharp heel strike, ~zero mean
    av = a * (av_amp * (np.cos(two_pi_p) + 0.25 * np.cos(2 * two_pi_p + 0.9)) + p["a_heel"] * heel)
    af = a * ap_amp * np.sin(two_pi_p + 0.6)
    al = a * ml_amp * np.sin(0.5 * two_pi_p)
    th = p["lean"] + env * 1.5 * np.sin(two_pi_p + 1.2)
    ph = env * p["roll_deg"] * np.sin(0.5 * two_pi_p)
    yaw = env * p["yaw_amp"] * np.cos(0.5 * two_pi_p)
    for t_c, deg, width in p["turns"]:
        yaw = yaw + deg / (width * np.sqrt(2 * np.pi)) * _gauss(tau, t_c, width)
    gyro = None
    if p.get("wrist"):
        # arm swing: a pendulum at stride frequency about the sensor's y axis
        swing = p["arm_deg"] * np.sin(0.5 * two_pi_p) * env
        th = th + swing
    return th, ph, yaw, av, af, al, None, gyro


def render_transition(tau: np.ndarray, p: dict[str, Any]) -> Rendered:
    T = p["T"]
    u = tau / T
    s, s2 = _min_jerk(u)
    inside = (u > 0) & (u < 1)
    hump = np.where(inside, np.sin(np.pi * np.clip(u, 0, 1)) ** 2, 0.0)
    th0, ph0 = p["from"]
    th1, ph1 = p["to"]
    th = th0 + (th1 - th0) * s + p.get("hump_th", 0.0) * hump
    ph = ph0 + (ph1 - ph0) * s + p.get("hump_ph", 0.0) * hump
    av = p.get("d_vert", 0.0) * s2 / (T * T) / G
    dip = p.get("dip", 0.0)  # lower then raise again (bending to pick up): d = dip * sin²(πu)
    if dip:
        av = av + np.where(inside, dip * 2 * np.pi**2 * np.cos(2 * np.pi * u) / (T * T) / G, 0.0)
    for t_rel, amp, width in p.get("bumps", ()):
        av = av + amp * _gauss(tau, t_rel * T, width)
    af = p.get("d_fwd", 0.0) * s2 / (T * T) / G
    yaw = p.get("yaw_deg", 0.0) * np.where(inside, np.pi / 2 * np.sin(np.pi * np.clip(u, 0, 1)), 0.0) / T
    return th, ph, yaw, av, af, np.zeros_like(tau), None, None


def render_stumble(tau: np.ndarray, p: dict[str, Any]) -> Rendered:
    """A trip or slip caught by quick recovery steps (a near-fall)."""
    t_trip = p["t_trip"]
    x = tau - t_trip
    rise = np.where(x > 0, 1 - np.exp(-np.clip(x, 0, None) / 0.12), 0.0)
    recover = np.exp(-np.clip(x - 0.35, 0, None) / 0.35)
    th = p["lean"] + p["pitch_deg"] * rise * recover
    ph = p["roll_deg"] * rise * recover
    av = np.zeros_like(tau)
    for k, (dt, amp) in enumerate(p["steps"]):
        av = av + amp * _gauss(tau, t_trip + dt, 0.035) * (1.0 if k else 0.8)
    af = -p["jolt_g"] * _gauss(tau, t_trip + 0.05, 0.06) + 0.4 * p["jolt_g"] * _gauss(tau, t_trip + 0.4, 0.1)
    # walking continues around the stumble, damped while the wearer catches themselves
    w = p["walk"]
    wav = render_walk(tau, w)
    damp = 1 - 0.8 * _gauss(tau, t_trip + 0.4, 0.5)
    yaw = wav[2] * damp + p["yaw_kick"] * _gauss(tau, t_trip + 0.15, 0.08)
    return th + (wav[0] - w["lean"]) * damp, ph + wav[1] * damp, yaw, av + wav[3] * damp, af + wav[4] * damp, \
        wav[5] * damp, None, None


def render_fall(tau: np.ndarray, p: dict[str, Any]) -> Rendered:
    """Descent (rotation towards the floor, partial free fall), impact, settling."""
    Tf, t_imp = p["T_fall"], p["t_impact"]
    t_start = t_imp - Tf
    th0, ph0 = p["from"]
    th1, ph1 = p["to"]
    u = np.clip((tau - t_start) / Tf, 0.0, 1.0)
    after = tau >= t_imp
    x = np.clip(tau - t_imp, 0.0, None)
    # falling like an inverted pendulum: rotation accelerates, most of it before impact
    settle = 1 - 0.08 * np.exp(-x / 0.25) * np.cos(2 * np.pi * 3.0 * x)
    prog = np.where(after, settle, 0.92 * u ** p.get("rot_exp", 2.5))
    if p.get("pre_roll"):  # rolling to the bed edge before dropping
        roll_u = np.clip((tau - (t_start - p["pre_roll"])) / p["pre_roll"], 0, 1)
        roll, _ = _min_jerk(roll_u)
        ph_start = ph0 + (p["roll_to"] - ph0) * roll
        th = th0 + (th1 - th0) * prog
        ph = np.where(tau < t_start, ph_start, p["roll_to"] + (ph1 - p["roll_to"]) * prog)
    else:
        th = th0 + (th1 - th0) * prog
        ph = ph0 + (ph1 - ph0) * prog
    before = (tau > t_start) & ~after
    av = np.where(before, -p["free"] * u ** p.get("free_exp", 1.0), 0.0)  # exponent 0: free fall at once
    sig = p["width"]
    pulse = _gauss(tau, t_imp, sig)
    av = av + p["peak"] * pulse - 0.25 * p["peak"] * _gauss(tau, t_imp + 2.2 * sig, sig)
    ring = np.where(after, np.exp(-x / 0.15) * np.sin(2 * np.pi * 9.0 * x), 0.0)
    av = av + 0.15 * p["peak"] * ring
    extra = np.outer(pulse, np.asarray(p["spread"])) * p["peak"]
    gyro = np.outer(_gauss(tau, t_imp + 0.01, 0.03), np.asarray(p["gyro_kick"]))
    yaw = p.get("yaw_deg", 0.0) * np.where(before, 2 * u / Tf, 0.0)
    z = np.zeros_like(tau)
    return th, ph, yaw, av, z, z, extra, gyro


RENDERERS: dict[str, Callable[[np.ndarray, dict[str, Any]], Rendered]] = {
    "still": render_still,
    "walk": render_walk,
    "transition": render_transition,
    "stumble": render_stumble,
    "fall": render_fall,
}


def render_block(segments: list[Segment], t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True specific force (g) and angular rate (deg/s), shape (n, 3), at times ``t``.

    ``segments`` must cover ``t`` (sorted, contiguous). The gyro is the central
    difference of the rendered orientation, so the block is rendered one sample wider on
    each side; that keeps consecutive blocks seamless.
    """
    n = len(t)
    dt = (t[1] - t[0]) if n > 1 else 0.02
    tt = np.concatenate(([t[0] - dt], t, [t[-1] + dt]))
    m = len(tt)
    th = np.empty(m)
    ph = np.empty(m)
    yaw = np.empty(m)
    av = np.empty(m)
    af = np.empty(m)
    al = np.empty(m)
    extra = np.zeros((m, 3))
    gyro_extra = np.zeros((m, 3))
    starts = np.array([s.t0 for s in segments])
    idx = np.clip(np.searchsorted(starts, tt, side="right") - 1, 0, len(segments) - 1)
    bounds = np.flatnonzero(np.diff(idx)) + 1
    for lo, hi in zip(np.concatenate(([0], bounds)), np.concatenate((bounds, [m])), strict=True):
        seg = segments[idx[lo]]
        r = RENDERERS[seg.kind](tt[lo:hi] - seg.t0, seg.params)
        th[lo:hi], ph[lo:hi], yaw[lo:hi], av[lo:hi], af[lo:hi], al[lo:hi] = r[:6]
        if r[6] is not None:
            extra[lo:hi] = r[6]
        if r[7] is not None:
            gyro_extra[lo:hi] = r[7]
    thr = th * DEG
    phr = ph * DEG
    st, ct, sp, cp = np.sin(thr), np.cos(thr), np.sin(phr), np.cos(phr)
    up = np.stack((-st * cp, -sp, ct * cp), axis=1)
    fwd = np.stack((ct, np.zeros(m), st), axis=1)
    left = np.stack((np.zeros(m), cp, sp), axis=1)
    acc = up * (1.0 + av)[:, None] + fwd * af[:, None] + left * al[:, None] + extra
    gyro = np.empty((m, 3))
    gyro[:, 0] = np.gradient(ph, tt)
    gyro[:, 1] = np.gradient(th, tt)
    gyro[:, 2] = yaw
    gyro += gyro_extra
    return acc[1:-1], gyro[1:-1]
