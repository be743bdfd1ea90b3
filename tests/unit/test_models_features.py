"""Window features: shapes, orientation invariance, and that they respond to what they name."""

from __future__ import annotations

import numpy as np
import pytest
from test_models_signals import fall_signal, walking_signal

from fallwatch.models import features as F


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def _window(acc: np.ndarray, gyro: np.ndarray, impact: int) -> np.ndarray:
    x = np.concatenate([acc, gyro], axis=1)
    return x[impact - F.PRE: impact + F.POST][None].astype(np.float32)


def test_shapes_and_dtype() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(size=(7, F.WINDOW, 6)).astype(np.float32)
    f = F.window_features(w)
    assert f.shape == (7, len(F.FEATURE_NAMES))
    assert f.dtype == np.float32
    walk = F.feature_index(("tilt_walk_deg",))
    assert np.isfinite(np.delete(f, walk, axis=1)).all()
    assert np.isnan(f[:, walk]).all()  # no walking reference given: unknown, never a made-up angle
    assert F.window_features(np.zeros((0, F.WINDOW, 6))).shape == (0, len(F.FEATURE_NAMES))
    with pytest.raises(ValueError):
        F.window_features(np.zeros((1, F.WINDOW - 1, 6)))


def test_batch_rows_are_independent() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(5, F.WINDOW, 6)).astype(np.float32)
    together = F.window_features(w)
    alone = np.concatenate([F.window_features(w[i:i + 1]) for i in range(5)])
    assert np.allclose(together, alone, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_features_are_invariant_to_sensor_orientation() -> None:
    _t, acc, gyro, impact = fall_signal()
    w = _window(acc, gyro, impact)
    rng = np.random.default_rng(2)
    r = _rotation(rng)
    wr = _window(acc @ r.T, gyro @ r.T, impact)
    assert np.allclose(F.window_features(w), F.window_features(wr), rtol=1e-3, atol=1e-2, equal_nan=True)
    # the walking upright turns with the device, so the angle to it does not change either
    up = np.array([[0.0, -1.0, 0.0]], dtype=np.float32)
    assert np.allclose(F.window_features(w, up), F.window_features(wr, up @ r.T), rtol=1e-3, atol=1e-2)


def test_fall_window_shows_impact_posture_change_and_stillness() -> None:
    _, acc, gyro, impact = fall_signal()
    f = F.window_features(_window(acc, gyro, impact))[0]
    col = {n: i for i, n in enumerate(F.FEATURE_NAMES)}
    assert f[col["peak_g"]] > 3.0
    assert f[col["min_descent_g"]] < 0.5
    assert 80 < f[col["tilt_change_deg"]] < 100
    assert f[col["std_rest_g"]] < 0.05
    still, lying = F.still_and_lying(f[None])
    assert still[0] and lying[0]


def test_walking_window_is_neither_still_nor_lying() -> None:
    _, acc, gyro = walking_signal(seconds=10)
    w = _window(acc, gyro, 250)
    still, lying = F.still_and_lying(F.window_features(w))
    assert not still[0] and not lying[0]


def test_acc_only_windows_zero_the_gyro_features() -> None:
    _, acc, gyro, impact = fall_signal()
    w = _window(acc, gyro, impact)
    f6 = F.window_features(w)[0]
    f3 = F.window_features(w[:, :, :3])[0]
    acc_cols = F.feature_index(F.ACC_FEATURES)
    assert np.allclose(f6[acc_cols], f3[acc_cols], equal_nan=True)
    gyro_cols = [i for i, n in enumerate(F.FEATURE_NAMES) if n.startswith("gyro_")]
    assert np.all(f3[gyro_cols] == 0) and np.any(f6[gyro_cols] != 0)


def test_sequence_channels_are_orientation_invariant() -> None:
    """The CNN's inputs, like the trees' features, do not depend on how the wearable is mounted."""
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(4)
    w = rng.normal(0, 0.3, (5, F.WINDOW, 6)).astype(np.float32)
    w[:, :, 2] += 1.0
    rot = Rotation.from_euler("xyz", [40, -70, 120], degrees=True).as_matrix().astype(np.float32)
    turned = w.copy()
    turned[:, :, 0:3] = w[:, :, 0:3] @ rot.T
    turned[:, :, 3:6] = w[:, :, 3:6] @ rot.T
    a, b = F.sequence_channels(w), F.sequence_channels(turned)
    assert a.shape == (5, 3, F.WINDOW)
    assert np.allclose(a, b, atol=1e-4)


def _standing_then_fall(gain: float) -> np.ndarray:
    rng = np.random.default_rng(3)
    still = np.tile([0.0, -1.0, 0.0], (250, 1)) + rng.normal(0, 0.005, (250, 3))
    _t, acc, _gyro, _impact = fall_signal()
    return (np.concatenate([still, acc]) * gain).astype(np.float32)


@pytest.mark.parametrize("gain", [0.85, 1.15])
def test_gravity_estimator_removes_a_device_gain_error(gain: float) -> None:
    ref = F.GravityEstimator().normalise(_standing_then_fall(1.0))
    est = F.GravityEstimator()
    out = est.normalise(_standing_then_fall(gain))
    assert est.g == pytest.approx(gain, rel=0.02)
    # once a still second has been seen, the stream reads as the calibrated one
    np.testing.assert_allclose(out[F.GRAVITY_BLOCK:], ref[F.GRAVITY_BLOCK:], rtol=0.02, atol=1e-3)


def test_gravity_estimator_is_causal_and_independent_of_chunking() -> None:
    x = _standing_then_fall(1.1)
    whole = F.GravityEstimator().normalise(x)
    est = F.GravityEstimator()
    parts = np.concatenate([est.normalise(x[a:a + 17]) for a in range(0, len(x), 17)])
    np.testing.assert_array_equal(whole, parts)
    # the first block is divided by the prior (1.0): nothing from the future is used
    np.testing.assert_array_equal(whole[:F.GRAVITY_BLOCK], x[:F.GRAVITY_BLOCK])


def test_gravity_estimator_ignores_movement_and_implausible_readings() -> None:
    rng = np.random.default_rng(5)
    est = F.GravityEstimator()
    est.normalise(np.tile([0.0, -1.0, 0.0], (200, 1)) + rng.normal(0, 0.3, (200, 3)))  # moving
    est.normalise(np.tile([0.0, -2.0, 0.0], (200, 1)))  # 2 g at rest: a fault, not a gain error
    assert est.g == 1.0
