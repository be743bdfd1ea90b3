"""Window layout and features of the fall detector, shared by training and the edge.

One module computes the features for both, so what the model sees when it is served can
never drift from what it was trained on.

Window: the detector triggers on an acceleration-magnitude peak (the impact) and cuts a
window of :data:`PRE_S` seconds before and :data:`POST_S` seconds after it, at
:data:`RATE_HZ`. Channels are the waist-worn wearable's accelerometer (g) and gyroscope
(deg/s), six columns in :data:`CHANNELS` order.

Features are orientation-invariant on purpose: they use magnitudes, and posture change is
the angle between the gravity direction before and after the impact in the sensor's own
frame. So the model does not depend on how a device is mounted on the belt, which the
SisFall rig and the fleet's wearables need not share.

Everything is vectorised over a batch of windows ``(n, WINDOW, 6)``; the edge batches
windows from many residents into one call.
"""

from __future__ import annotations

import numpy as np

RATE_HZ = 50.0
PRE_S = 2.0
POST_S = 2.5
PRE = round(PRE_S * RATE_HZ)  # samples before the impact sample
POST = round(POST_S * RATE_HZ)  # samples after the impact sample (excluded)
WINDOW = PRE + POST  # the impact is sample index PRE
WINDOW_S = WINDOW / RATE_HZ
CHANNELS = ("acc_x", "acc_y", "acc_z", "gyro_x", "gyro_y", "gyro_z")
UNITS = ("g", "g", "g", "deg/s", "deg/s", "deg/s")
PLACEMENT = "waist"

#: Impact trigger: acceleration magnitude at or above this opens a candidate (g).
TRIGGER_G = 1.6
#: After the first crossing the highest magnitude within this time is the impact (s).
PEAK_SEARCH_S = 1.0


def _sl(a_s: float, b_s: float) -> slice:
    """Window slice for times relative to the impact, in seconds."""
    return slice(PRE + round(a_s * RATE_HZ), PRE + round(b_s * RATE_HZ))


# Segments relative to the impact (seconds). "before" is the posture reference: most
# falls take < 1 s from loss of balance to impact, so [-2, -1] s is still the pre-fall
# posture; "rest" is the post-impact posture once the body has come to rest.
SEG_BEFORE = _sl(-2.0, -1.0)
SEG_DESCENT = _sl(-1.0, 0.0)
SEG_LATE_DESCENT = _sl(-0.5, 0.0)
SEG_IMPACT = _sl(-0.5, 0.5)
SEG_AFTER = _sl(0.0, 1.0)
SEG_SETTLE = _sl(0.5, 1.5)
SEG_REST = _sl(1.5, 2.5)

FEATURE_NAMES = (
    "peak_g",  # magnitude at the impact sample
    "min_descent_g",  # free-fall dip before the impact
    "mean_late_descent_g",
    "std_before_g",  # activity before the event (walking/jogging is high)
    "std_descent_g",
    "std_after_g",
    "std_settle_g",
    "std_rest_g",  # stillness once at rest
    "mean_rest_g",
    "range_rest_g",
    "tilt_change_deg",  # posture change: gravity direction before vs at rest
    "tilt_change_settle_deg",
    "dev_area_impact_gs",  # integral of |mag - 1 g| around the impact
    "velocity_descent_m_s",  # integral of (mag - 1 g) during the descent, ~ vertical speed
    "jerk_max_g_s",
    "peaks_after",  # number of samples > 1.5 g after the first post-impact second
    "t_min_to_peak_s",  # time from the free-fall minimum to the impact
    "mean_before_g",
    "gyro_peak_dps",
    "gyro_rot_descent_deg",  # total rotation during descent + impact
    "gyro_mean_before_dps",
    "gyro_mean_rest_dps",
    "gyro_std_rest_dps",
    "tilt_walk_deg",  # pre-event posture against the wearer's own walking upright (NaN: not known yet)
)
ACC_FEATURES = tuple(n for n in FEATURE_NAMES if not n.startswith("gyro_"))
#: Issue 12's candidate features (lying down / turning over vs falls, independent of the mounting),
#: computed by :func:`candidate_features` for training studies only: the nested evaluation did not
#: ship them, so the edge does not pay for them (about 18 % of a single window's feature time).
CANDIDATE_FEATURES = (
    "energy_descent_g2s",  # integral of (mag - 1 g)^2 over the descent: a fall's descent is violent
    "active_before_s",  # time from the last quiet sample (|mag - 1 g| < 0.1 g) to the impact
    "still_frac_rest",  # share of [0.5, 2.5] s within 0.05 g of the rest mean (post-event stillness)
    "gyro_energy_descent",  # integral of |gyro|^2 over the descent, (100 deg/s)^2 s
    "gyro_still_frac_rest",  # share of [0.5, 2.5] s with |gyro| < 15 deg/s
)
#: columns of a training window set: the served features, then the candidates
STUDY_FEATURE_NAMES = FEATURE_NAMES + CANDIDATE_FEATURES


def magnitude(x: np.ndarray) -> np.ndarray:
    """Euclidean norm over the last axis, float32 (cheaper than np.linalg.norm)."""
    x = np.asarray(x, dtype=np.float32)
    out: np.ndarray = np.sqrt(np.einsum("...i,...i->...", x, x))
    return out


def _angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = magnitude(a)
    nb = magnitude(b)
    cos = np.einsum("ni,ni->n", a, b) / np.maximum(na * nb, 1e-6)
    out: np.ndarray = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    return out


def window_features(windows: np.ndarray, refs: np.ndarray | None = None) -> np.ndarray:
    """Features for a batch of windows ``(n, WINDOW, 6)`` -> ``(n, len(FEATURE_NAMES))`` float32.

    ``refs`` (n, 3): each window's wearer upright (:class:`WalkingReference`, as the detector
    snapshots it when the window's impact triggers), NaN rows or None where it is not known;
    ``tilt_walk_deg`` is NaN there, which the tree model routes as "unknown".

    Windows with fewer than six channels (no gyroscope) get zero gyro features; models
    trained on :data:`ACC_FEATURES` do not read them.
    """
    w = np.asarray(windows, dtype=np.float32)
    if w.ndim != 3 or w.shape[1] != WINDOW or w.shape[2] < 3:
        raise ValueError(f"expected windows of shape (n, {WINDOW}, 3|6), got {w.shape}")
    n = w.shape[0]
    acc = w[:, :, 0:3]
    mag = magnitude(acc)
    dev = mag - 1.0
    f = np.empty((n, len(FEATURE_NAMES)), dtype=np.float32)
    col = {name: i for i, name in enumerate(FEATURE_NAMES)}
    dt = 1.0 / RATE_HZ

    f[:, col["peak_g"]] = mag[:, PRE]
    descent = mag[:, SEG_DESCENT]
    f[:, col["min_descent_g"]] = descent.min(axis=1)
    f[:, col["mean_late_descent_g"]] = mag[:, SEG_LATE_DESCENT].mean(axis=1)
    f[:, col["std_before_g"]] = mag[:, SEG_BEFORE].std(axis=1)
    f[:, col["std_descent_g"]] = descent.std(axis=1)
    f[:, col["std_after_g"]] = mag[:, SEG_AFTER].std(axis=1)
    f[:, col["std_settle_g"]] = mag[:, SEG_SETTLE].std(axis=1)
    rest = mag[:, SEG_REST]
    f[:, col["std_rest_g"]] = rest.std(axis=1)
    f[:, col["mean_rest_g"]] = rest.mean(axis=1)
    f[:, col["range_rest_g"]] = rest.max(axis=1) - rest.min(axis=1)
    g_before = acc[:, SEG_BEFORE].mean(axis=1)
    f[:, col["tilt_change_deg"]] = _angle_deg(g_before, acc[:, SEG_REST].mean(axis=1))
    f[:, col["tilt_change_settle_deg"]] = _angle_deg(g_before, acc[:, SEG_SETTLE].mean(axis=1))
    f[:, col["dev_area_impact_gs"]] = np.abs(dev[:, SEG_IMPACT]).sum(axis=1) * dt
    f[:, col["velocity_descent_m_s"]] = dev[:, SEG_DESCENT].sum(axis=1) * dt * 9.81
    f[:, col["jerk_max_g_s"]] = np.abs(np.diff(mag[:, _sl(-0.5, 0.3)], axis=1)).max(axis=1) / dt
    f[:, col["peaks_after"]] = (mag[:, _sl(1.0, 2.5)] > 1.5).sum(axis=1)
    f[:, col["t_min_to_peak_s"]] = (descent.shape[1] - descent.argmin(axis=1)) * dt
    f[:, col["mean_before_g"]] = mag[:, SEG_BEFORE].mean(axis=1)
    f[:, col["tilt_walk_deg"]] = _tilt_to(g_before, refs, n)

    if w.shape[2] >= 6:
        gmag = magnitude(w[:, :, 3:6])
        f[:, col["gyro_peak_dps"]] = gmag[:, _sl(-1.0, 0.5)].max(axis=1)
        f[:, col["gyro_rot_descent_deg"]] = gmag[:, _sl(-1.0, 0.5)].sum(axis=1) * dt
        f[:, col["gyro_mean_before_dps"]] = gmag[:, SEG_BEFORE].mean(axis=1)
        f[:, col["gyro_mean_rest_dps"]] = gmag[:, SEG_REST].mean(axis=1)
        f[:, col["gyro_std_rest_dps"]] = gmag[:, SEG_REST].std(axis=1)
    else:
        for name in FEATURE_NAMES:
            if name.startswith("gyro_"):
                f[:, col[name]] = 0.0
    return f


def _tilt_to(g: np.ndarray, refs: np.ndarray | None, n: int) -> np.ndarray:
    """Angle (deg) of each gravity vector ``g`` (n, 3) to its reference row; NaN without one."""
    if refs is None:
        return np.full(n, np.nan, dtype=np.float32)
    r = np.asarray(refs, dtype=np.float32).reshape(n, 3)
    out = np.full(n, np.nan, dtype=np.float32)
    known = np.isfinite(r).all(axis=1)
    if known.any():
        out[known] = _angle_deg(g[known], r[known])
    return out


def sequence_channels(windows: np.ndarray) -> np.ndarray:
    """Orientation-invariant channels of windows ``(n, WINDOW, 6)`` for a sequence model:
    ``(n, 3, WINDOW)`` float32 = |a| (g), |gyro| / 500 (deg/s), and the cosine of the angle
    between each sample's acceleration and the pre-fall gravity direction (mean of ``SEG_BEFORE``).
    """
    w = np.asarray(windows, dtype=np.float32)
    acc = w[:, :, 0:3]
    mag = magnitude(acc)
    g = acc[:, SEG_BEFORE].mean(axis=1)
    g = g / np.maximum(magnitude(g), 1e-6)[:, None]
    cos = np.einsum("nti,ni->nt", acc, g) / np.maximum(mag, 1e-6)
    gyro = magnitude(w[:, :, 3:6]) / 500.0 if w.shape[2] >= 6 else np.zeros_like(mag)
    return np.ascontiguousarray(np.stack([mag, gyro, cos], axis=1), dtype=np.float32)


#: Wearer's own 1 g estimate (device gain calibration), see :class:`GravityEstimator`.
GRAVITY_BLOCK = round(1.0 * RATE_HZ)  # samples per stillness block (1 s)
GRAVITY_BLOCKS = 60  # still blocks kept: the trailing minute of stillness
GRAVITY_STILL_REL_STD = 0.03  # a block is still when std(|a|) < 3 % of its median
GRAVITY_LIMITS = (0.7, 1.3)  # estimates outside this are not a gain error but a fault: ignored


class GravityEstimator:
    """Causal estimate of what this device reads as 1 g, to normalise acceleration by.

    Why: a wearable whose accelerometer gain is off by 15 % moves every g-valued feature and the
    1.6 g trigger by 15 %, which the held-out stress test showed breaks the operating point. At
    rest the true magnitude is exactly 1 g, so the median magnitude over still periods is the
    device's own gain. Blocks of :data:`GRAVITY_BLOCK` samples at fixed absolute positions in the
    stream (so the result does not depend on how the stream is chunked); a still block's median
    joins a trailing list of :data:`GRAVITY_BLOCKS`; the estimate applied to a sample is the
    median of that list as of the last block completed *before* it (1.0 until the first still
    block). Training windows and the edge use this same class through ``DeviceFallDetector``.
    """

    def __init__(self) -> None:
        self._buf = np.zeros(GRAVITY_BLOCK, dtype=np.float32)
        self._n = 0
        self._still: list[float] = []
        self.g = 1.0

    def normalise(self, acc: np.ndarray) -> np.ndarray:
        """``acc`` (k, 3) in device units -> in units of the wearer's 1 g; updates the estimate."""
        acc = np.asarray(acc, dtype=np.float32)
        out = np.empty_like(acc)
        mag = magnitude(acc)
        k = 0
        while k < len(acc):
            take = min(GRAVITY_BLOCK - self._n, len(acc) - k)
            out[k:k + take] = acc[k:k + take] / self.g
            self._buf[self._n:self._n + take] = mag[k:k + take]
            self._n += take
            k += take
            if self._n == GRAVITY_BLOCK:
                self._n = 0
                med = float(np.median(self._buf))
                if (GRAVITY_LIMITS[0] <= med <= GRAVITY_LIMITS[1]
                        and float(self._buf.std()) < GRAVITY_STILL_REL_STD * med):
                    self._still.append(med)
                    del self._still[:-GRAVITY_BLOCKS]
                    self.g = float(np.median(self._still))
        return out


def candidate_features(windows: np.ndarray) -> np.ndarray:
    """:data:`CANDIDATE_FEATURES` of windows ``(n, WINDOW, 6)`` -> ``(n, 5)`` float32 (training studies)."""
    w = np.asarray(windows, dtype=np.float32)
    n, dt = w.shape[0], 1.0 / RATE_HZ
    mag = magnitude(w[:, :, 0:3])
    dev = mag - 1.0
    f = np.zeros((n, len(CANDIDATE_FEATURES)), dtype=np.float32)
    f[:, 0] = (dev[:, SEG_DESCENT] ** 2).sum(axis=1) * dt
    quiet = np.abs(dev[:, :PRE]) < 0.1
    last_quiet = np.where(quiet.any(axis=1), PRE - 1 - np.argmax(quiet[:, ::-1], axis=1), 0)
    f[:, 1] = (PRE - last_quiet) * dt
    settle_rest = mag[:, _sl(0.5, 2.5)]
    rest_mean = mag[:, SEG_REST].mean(axis=1, keepdims=True)
    f[:, 2] = (np.abs(settle_rest - rest_mean) < 0.05).mean(axis=1)
    if w.shape[2] >= 6:
        gmag = magnitude(w[:, :, 3:6])
        f[:, 3] = ((gmag[:, SEG_DESCENT] / 100.0) ** 2).sum(axis=1) * dt
        f[:, 4] = (gmag[:, _sl(0.5, 2.5)] < 15.0).mean(axis=1)
    return f


def feature_index(names: tuple[str, ...] | list[str]) -> np.ndarray:
    """Column indices of ``names`` in :func:`window_features` output, or in a training window set's
    ``X`` (:data:`STUDY_FEATURE_NAMES`: the same columns first) (unknown name -> KeyError)."""
    col = {name: i for i, name in enumerate(STUDY_FEATURE_NAMES)}
    return np.array([col[n] for n in names], dtype=np.intp)


def still_and_lying(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Explainable post-impact flags from features: (still, lying) boolean arrays.

    *still*: magnitude std < 0.08 g over [+1.5, +2.5] s (no walking, no getting up).
    *lying*: gravity direction turned >= 50 deg from the pre-fall posture — orientation
    invariant, so it means "changed posture a lot", which from upright is lying.
    """
    col = {name: i for i, name in enumerate(FEATURE_NAMES)}
    still = feats[:, col["std_rest_g"]] < 0.08
    lying = feats[:, col["tilt_change_deg"]] >= 50.0
    return still, lying


#: Walking blocks (the wearer's own upright, see :func:`walking_reference`): 1 s blocks whose |a|
#: varies like gait (std within these bounds, g) around a mean near 1 g.
WALK_STD_G = (0.08, 0.6)
WALK_MEAN_G = (0.85, 1.2)


def walking_reference(acc_g: np.ndarray) -> np.ndarray | None:
    """The wearer's upright direction in the device's own frame: the mean acceleration direction
    over 1 s walking blocks of ``acc_g`` (n, 3), or None without any walking block.

    Why: how a device sits on the belt varies, so "lying before the event" cannot be read from a
    fixed device axis; the gravity direction while the wearer walks is their own upright on their
    own device, whatever the mounting. Against it, turning over while lying starts from about 90 deg
    and a fall from standing or sitting from well under 60 deg (issue 12, SisFall).
    """
    acc = np.asarray(acc_g, dtype=np.float32)
    n = len(acc) // GRAVITY_BLOCK
    if n == 0:
        return None
    blocks = acc[: n * GRAVITY_BLOCK].reshape(n, GRAVITY_BLOCK, 3)
    mag = magnitude(blocks)
    std, mean = mag.std(axis=1), mag.mean(axis=1)
    walk = (std >= WALK_STD_G[0]) & (std <= WALK_STD_G[1]) & (mean >= WALK_MEAN_G[0]) & (mean <= WALK_MEAN_G[1])
    if not walk.any():
        return None
    g = blocks[walk].mean(axis=(0, 1))
    out: np.ndarray = (g / max(float(np.linalg.norm(g)), 1e-6)).astype(np.float32)
    return out


def tilt_from_reference_deg(windows: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
    """Angle (deg) between each window's pre-event gravity direction (``SEG_BEFORE``) and the
    wearer's upright ``reference`` (:func:`walking_reference`); NaN without a reference."""
    w = np.asarray(windows, dtype=np.float32)
    if reference is None:
        return np.full(len(w), np.nan, dtype=np.float32)
    g = w[:, SEG_BEFORE, 0:3].mean(axis=1)
    return _angle_deg(g, np.broadcast_to(np.asarray(reference, dtype=np.float32), g.shape)).astype(np.float32)


#: Step period of gait (s): 1-2.5 steps a second, slow elderly gait included.
WALK_STEP_S = (0.4, 1.0)
#: Step regularity that counts as walking: the normalised autocorrelation of |a| over two blocks at
#: the best step lag (gait-analysis convention, Moe-Nilssen & Helbostad 2004: regular gait > 0.5).
WALK_REGULARITY = 0.4
#: Walking blocks the reference averages over (the last half minute of walking)
WALK_REF_BLOCKS = 30
#: Walking blocks needed before there is a reference (a few seconds of walking)
WALK_REF_MIN_BLOCKS = 3


class WalkingReference:
    """Causal estimate of the wearer's upright in the device's own frame, learned from their walking.

    Why: "was the wearer already lying before the event?" separates turning over in bed (which
    starts lying) from a fall (which starts upright or sitting), but the device's axes say nothing
    about the body's until the mounting is known, and mountings vary. While someone walks their
    trunk is upright, so the mean gravity direction over their walking is their upright on their
    device. A 1 s block at a fixed absolute position in the stream (so the result does not depend on
    how the stream is chunked) counts as walking when its |a| varies like gait (:data:`WALK_STD_G`,
    :data:`WALK_MEAN_G`), the block before it did too, and the two together are regular at a step
    lag (:data:`WALK_STEP_S`, :data:`WALK_REGULARITY`): turning over, sitting down or a fall are
    single movements, not a rhythm. The reference is the mean direction of the last
    :data:`WALK_REF_BLOCKS` walking blocks once there are :data:`WALK_REF_MIN_BLOCKS`; re-clipping
    the device moves it within half a minute of walking. Training windows, the evaluation and the
    edge use this one class through ``DeviceFallDetector``.
    """

    def __init__(self) -> None:
        self._buf = np.zeros((GRAVITY_BLOCK, 3), dtype=np.float32)
        self._n = 0
        self._prev_mag: np.ndarray | None = None  # |a| of the last block, if it looked like gait
        self._dirs: list[np.ndarray] = []
        self.blocks = 0  # walking blocks seen in all
        lo, hi = (round(s * RATE_HZ) for s in WALK_STEP_S)
        self._lags = np.arange(lo, hi + 1)

    @property
    def reference(self) -> np.ndarray | None:
        """Unit upright vector (3,) in the device frame, or None until enough walking was seen."""
        if len(self._dirs) < WALK_REF_MIN_BLOCKS:
            return None
        g = np.mean(self._dirs, axis=0)
        out: np.ndarray = (g / max(float(np.linalg.norm(g)), 1e-6)).astype(np.float32)
        return out

    def gap(self) -> None:
        """The stream broke off (a recording ended, samples were lost): drop the partial block and
        the rhythm, keep the reference (same wearer, same device)."""
        self._n = 0
        self._prev_mag = None

    def copy(self) -> WalkingReference:
        new = WalkingReference()
        new._dirs = [d.copy() for d in self._dirs]
        new.blocks = self.blocks
        return new

    def update(self, acc_g: np.ndarray) -> None:
        """Consume samples ``acc_g`` (k, 3) in g."""
        acc = np.asarray(acc_g, dtype=np.float32).reshape(-1, 3)
        k = 0
        while k < len(acc):
            take = min(GRAVITY_BLOCK - self._n, len(acc) - k)
            self._buf[self._n:self._n + take] = acc[k:k + take]
            self._n += take
            k += take
            if self._n == GRAVITY_BLOCK:
                self._n = 0
                self._block(self._buf)

    def _block(self, block: np.ndarray) -> None:
        mag = magnitude(block)
        std, mean = float(mag.std()), float(mag.mean())
        gait_like = WALK_STD_G[0] <= std <= WALK_STD_G[1] and WALK_MEAN_G[0] <= mean <= WALK_MEAN_G[1]
        prev, self._prev_mag = self._prev_mag, (mag.copy() if gait_like else None)
        if not gait_like or prev is None:
            return
        x = np.concatenate([prev, mag]).astype(np.float64)
        x -= x.mean()
        energy = float(x @ x)
        if energy <= 0:
            return
        n = len(x)
        lags = self._lags
        ac = np.correlate(x, x, mode="full")[n - 1 + lags]  # sum x[t] x[t + lag], lag in lags
        regularity = float((ac / energy * n / (n - lags)).max())
        if regularity < WALK_REGULARITY:
            return
        g = block.mean(axis=0)
        self._dirs.append(g / max(float(np.linalg.norm(g)), 1e-6))
        del self._dirs[:-WALK_REF_BLOCKS]
        self.blocks += 1
