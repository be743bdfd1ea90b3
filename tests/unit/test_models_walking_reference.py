"""The wearer's walking upright (features.WalkingReference) and how the detector serves it.

Why these tests: the reference decides whether an event started lying (turning over in bed) or
upright (a fall). A reference learned from the wrong activity would make a fall from standing
look like turning over, so what must *not* count as walking is tested as carefully as what must.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_models_signals import fall_signal, walking_signal

from fallwatch.models import features as F
from fallwatch.models.detector import DetectorSettings, DeviceFallDetector


def _rotation(seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return (q * np.sign(np.linalg.det(q))).astype(np.float32)


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_walking_gives_the_wearers_upright_whatever_the_mounting(seed: int) -> None:
    r = _rotation(seed)
    _, acc, _ = walking_signal(seconds=20, seed=seed)
    walk = F.WalkingReference()
    walk.update(acc @ r.T)
    assert walk.reference is not None and walk.blocks >= 10
    assert _angle(walk.reference, r @ np.array([0.0, -1.0, 0.0])) < 3.0


def test_slow_elderly_gait_counts_as_walking() -> None:
    """1.1 steps/s with a small bounce: still a rhythm at a step lag inside 0.4-1.0 s."""
    t = np.arange(int(20 * F.RATE_HZ)) / F.RATE_HZ
    acc = np.zeros((len(t), 3), dtype=np.float32)
    acc[:, 1] = -1.0 - 0.12 * np.sin(2 * np.pi * 1.1 * t)
    acc += np.random.default_rng(3).normal(0, 0.02, acc.shape).astype(np.float32)
    walk = F.WalkingReference()
    walk.update(acc)
    assert walk.reference is not None


def _lying_and_turning(seconds: float, seed: int) -> np.ndarray:
    """Lying on the back, turning over to the side and back every ~6 s: single movements."""
    rng = np.random.default_rng(seed)
    n = int(seconds * F.RATE_HZ)
    t = np.arange(n) / F.RATE_HZ
    ang = (np.pi / 2) * 0.5 * (1 - np.cos(2 * np.pi * t / 12.0))  # 0 -> 90 deg -> 0, smoothly
    acc = np.stack([np.sin(ang), np.zeros(n), -np.cos(ang)], axis=1)
    jolts = rng.choice(n, size=int(seconds / 3), replace=False)
    acc[jolts] *= 1.4  # bumps of the mattress
    return (acc + rng.normal(0, 0.05, acc.shape)).astype(np.float32)


def test_lying_turning_sitting_and_stillness_never_count_as_walking() -> None:
    walk = F.WalkingReference()
    walk.update(_lying_and_turning(120, 0))
    walk.update(np.tile([0.3, -0.95, 0.0], (3000, 1)).astype(np.float32))  # sitting still
    rng = np.random.default_rng(4)
    walk.update((np.tile([0.0, 0.0, -1.0], (3000, 1)) + rng.normal(0, 0.15, (3000, 3))).astype(np.float32))
    # a stray block of noise can pass the rhythm test by chance; never enough to make a reference
    assert walk.reference is None and walk.blocks < F.WALK_REF_MIN_BLOCKS


def test_a_fall_does_not_move_the_reference() -> None:
    _, acc, _ = walking_signal(seconds=20)
    walk = F.WalkingReference()
    walk.update(acc)
    before = walk.reference
    _t, facc, _g, _i = fall_signal(before_s=2, after_s=30)
    walk.update(facc)
    assert before is not None and walk.reference is not None
    np.testing.assert_allclose(walk.reference, before, atol=1e-6)


def test_reclipping_the_device_moves_the_reference_within_half_a_minute_of_walking() -> None:
    r = _rotation(7)
    _, acc, _ = walking_signal(seconds=40)
    walk = F.WalkingReference()
    walk.update(acc)
    walk.update(acc @ r.T)  # worn differently after a shower, then walks 40 s
    assert walk.reference is not None
    assert _angle(walk.reference, r @ np.array([0.0, -1.0, 0.0])) < 3.0


def test_reference_is_independent_of_chunking_and_a_gap_drops_the_partial_block() -> None:
    _, acc, _ = walking_signal(seconds=12)
    whole = F.WalkingReference()
    whole.update(acc)
    parts = F.WalkingReference()
    for a in range(0, len(acc), 17):
        parts.update(acc[a:a + 17])
    assert whole.blocks == parts.blocks and whole.reference is not None and parts.reference is not None
    np.testing.assert_allclose(whole.reference, parts.reference, atol=1e-6)
    g = F.WalkingReference()
    g.update(acc[:75])  # one block and a half
    g.gap()
    g.update(acc[75:])
    assert g.blocks < whole.blocks  # the half block and the rhythm across the gap were dropped
    copy = whole.copy()
    copy.update(np.tile([0.0, 0.0, -1.0], (500, 1)).astype(np.float32))
    assert copy.blocks == whole.blocks


def test_tilt_walk_is_the_angle_to_the_upright_or_nan() -> None:
    _t, acc, gyro, impact = fall_signal()
    w = np.concatenate([acc, gyro], axis=1)[impact - F.PRE: impact + F.POST][None]
    col = F.feature_index(("tilt_walk_deg",))[0]
    upright = np.array([[0.0, -1.0, 0.0]], dtype=np.float32)
    lying = np.array([[0.0, 0.0, -1.0]], dtype=np.float32)  # "the wearer's upright is this axis"
    assert F.window_features(w, upright)[0, col] < 5.0  # fell from standing
    assert 85.0 < F.window_features(w, lying)[0, col] < 95.0  # would have been lying before
    assert np.isnan(F.window_features(w, np.full((1, 3), np.nan, dtype=np.float32))[0, col])
    assert np.isnan(F.window_features(w)[0, col])


def _walk_then_fall() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t1, a1, g1 = walking_signal(seconds=15)
    t2, a2, g2, _ = fall_signal(t0=float(t1[-1]) + 1 / F.RATE_HZ)
    return np.concatenate([t1, t2]), np.concatenate([a1, a2]), np.concatenate([g1, g2])


@pytest.mark.parametrize("chunk", [1, 25, 10_000])
def test_detector_snapshots_the_reference_before_the_impact(chunk: int) -> None:
    t, acc, gyro = _walk_then_fall()
    det = DeviceFallDetector(None)
    for a in range(0, len(t), chunk):
        det.feed(t[a:a + chunk], acc[a:a + chunk], gyro[a:a + chunk])
    det.flush()
    wins = det.pending_windows()
    refs = det.inflight_refs()
    assert len(wins) == 1 and refs.shape == (1, 3) and np.isfinite(refs).all()
    assert _angle(refs[0], np.array([0.0, -1.0, 0.0])) < 3.0
    # exactly the reference of the samples before the trigger (not of the window's cut, or later)
    trigger = int(np.flatnonzero(np.linalg.norm(acc, axis=1) >= F.TRIGGER_G)[0])
    before = F.WalkingReference()
    before.update(acc[:trigger])
    assert before.reference is not None
    np.testing.assert_array_equal(refs[0], before.reference)
    assert F.window_features(wins, refs)[0, F.feature_index(("tilt_walk_deg",))[0]] < 10.0


def test_detector_without_walking_or_with_the_reference_off_hands_over_nan() -> None:
    t, acc, gyro, _ = fall_signal()
    det = DeviceFallDetector(None)  # a device that has not seen its wearer walk
    det.feed(t, acc, gyro)
    det.flush()
    det.pending_windows()
    assert np.isnan(det.inflight_refs()).all()
    t, acc, gyro = _walk_then_fall()
    off = DeviceFallDetector(None, DetectorSettings(walking_reference=False))
    off.feed(t, acc, gyro)
    off.flush()
    off.pending_windows()
    assert off.walk is None and np.isnan(off.inflight_refs()).all()


def test_a_carried_reference_reaches_the_next_recording() -> None:
    _, acc, _ = walking_signal(seconds=15)
    walk = F.WalkingReference()
    walk.update(acc)
    t, facc, gyro, _ = fall_signal()
    det = DeviceFallDetector(None, walk=walk)
    det.feed(t, facc, gyro)
    det.flush()
    det.pending_windows()
    assert np.isfinite(det.inflight_refs()).all()


class _Reads:
    threshold = 0.5
    version = "t"

    def __init__(self, names: tuple[str, ...]) -> None:
        self.feature_names = names

    def predict(self, batch: np.ndarray, refs: np.ndarray | None = None) -> np.ndarray:
        return np.zeros(len(batch), dtype=np.float32)


def test_the_reference_is_learned_only_for_a_model_that_reads_it() -> None:
    """It costs about as much CPU per wearable as the rest of the edge: the shipped model 1.0 does
    not read it, so its detectors do not pay for it."""
    assert DeviceFallDetector(_Reads(("peak_g", "tilt_change_deg"))).walk is None
    assert DeviceFallDetector(_Reads(("peak_g", "tilt_walk_deg"))).walk is not None
    assert DeviceFallDetector(None).walk is not None  # training cuts windows for any model
    from fallwatch.models.scorers import ThresholdScorer

    assert DeviceFallDetector(ThresholdScorer()).walk is None  # the edge's fallback scorer ignores it


def test_an_over_the_air_model_that_reads_the_reference_starts_it() -> None:
    det = DeviceFallDetector(_Reads(("peak_g",)))
    assert det.walk is None
    det.use_model(_Reads(("peak_g", "tilt_walk_deg")))
    assert det.walk is not None and det.threshold == 0.5
    det.use_model(_Reads(("peak_g",)))
    assert det.walk is None
