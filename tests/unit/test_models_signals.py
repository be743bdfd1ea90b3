"""Synthetic wearable signals shared by the model tests (no data-set content), and their checks."""

from __future__ import annotations

import numpy as np

from fallwatch.models.features import RATE_HZ


def fall_signal(before_s: float = 6.0, after_s: float = 10.0, seed: int = 0,
                t0: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Standing still, a 0.5 s fall (free fall, 90 deg rotation), a 4 g impact, lying still.

    Returns (t_s, acc_g (n,3), gyro_dps (n,3), impact_index).
    """
    rng = np.random.default_rng(seed)
    n_before, n_fall, n_after = int(before_s * RATE_HZ), int(0.5 * RATE_HZ), int(after_s * RATE_HZ)
    up = np.array([0.0, -1.0, 0.0])
    acc = [np.tile(up, (n_before, 1))]
    gyro = [np.zeros((n_before, 3))]
    ang = np.linspace(0, np.pi / 2, n_fall)
    g_dir = np.stack([np.zeros(n_fall), -np.cos(ang), -np.sin(ang)], axis=1)
    acc.append(g_dir * np.linspace(0.9, 0.25, n_fall)[:, None])  # losing support: free fall
    gyro.append(np.tile([np.degrees(np.pi / 2) / 0.5, 0.0, 0.0], (n_fall, 1)))
    lying = np.array([0.0, 0.0, -1.0])
    impact = np.tile(lying, (n_after, 1))
    impact[0:4] = lying * np.array([[4.2], [2.5], [1.6], [1.2]])  # the hit and a quick decay
    acc.append(impact)
    post_gyro = np.zeros((n_after, 3))
    post_gyro[0:4] = [[60, 20, 0], [30, 0, 10], [10, 0, 0], [0, 0, 0]]
    gyro.append(post_gyro)
    a = np.concatenate(acc) + rng.normal(0, 0.01, (n_before + n_fall + n_after, 3))
    g = np.concatenate(gyro) + rng.normal(0, 1.0, (n_before + n_fall + n_after, 3))
    t = t0 + np.arange(len(a)) / RATE_HZ
    return t, a.astype(np.float32), g.astype(np.float32), n_before + n_fall


def walking_signal(seconds: float = 30.0, seed: int = 1, t0: float = 0.0,
                   amp_g: float = 0.35) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Upright walking at ~1.8 steps/s: vertical bounce of ``amp_g``, small sway, no impact."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE_HZ)
    t = np.arange(n) / RATE_HZ
    acc = np.zeros((n, 3))
    acc[:, 1] = -1.0 - amp_g * np.sin(2 * np.pi * 1.8 * t)
    acc[:, 0] = 0.1 * np.sin(2 * np.pi * 0.9 * t)
    acc += rng.normal(0, 0.02, acc.shape)
    gyro = np.stack([20 * np.sin(2 * np.pi * 0.9 * t), 10 * np.sin(2 * np.pi * 1.8 * t), np.zeros(n)], axis=1)
    return (t0 + t), acc.astype(np.float32), gyro.astype(np.float32)


def test_fall_signal_has_the_shape_the_other_tests_rely_on() -> None:
    t, acc, _gyro, impact = fall_signal()
    mag = np.linalg.norm(acc, axis=1)
    assert int(np.argmax(mag)) == impact
    assert mag[impact] > 4.0 and mag[:impact - 30].std() < 0.05
    assert np.allclose(np.diff(t), 1 / RATE_HZ)


def test_walking_signal_never_reaches_the_trigger() -> None:
    from fallwatch.models.features import TRIGGER_G

    _, acc, _ = walking_signal()
    assert np.linalg.norm(acc, axis=1).max() < TRIGGER_G
