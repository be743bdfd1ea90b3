"""The training helpers the operating point and the study rest on (synthetic data, no SisFall)."""

from __future__ import annotations

import numpy as np

from fallwatch.models import fall_train as T
from fallwatch.models import features as F
from fallwatch.models import sisfall


def _trial(subject: str, activity: str, n_s: float = 60.0) -> sisfall.Trial:
    n = int(n_s * F.RATE_HZ)
    acc = np.tile(np.array([0.0, -1.0, 0.0], dtype=np.float32), (n, 1))
    return sisfall.Trial(subject, subject[:2], activity, 1, F.RATE_HZ, acc, np.zeros((n, 3), np.float32), acc)


def _windows(trials: list[sisfall.Trial], trial_idx: list[int], impact_t: list[float]) -> T.WindowSet:
    k = len(trial_idx)
    return T.WindowSet(trials, np.zeros((k, len(F.FEATURE_NAMES)), np.float32), np.zeros(k, np.int8),
                       np.array(trial_idx), impact_t=np.array(impact_t), ready_t=np.array(impact_t) + 2.5)


def test_alerts_are_counted_like_the_detector_deduplicates_them() -> None:
    trials = [_trial("SA01", "D14"), _trial("SA01", "F01")]
    ws = _windows(trials, [0, 0, 0, 1], [5.0, 20.0, 40.0, 10.0])
    probs = np.array([0.9, 0.9, 0.9, 0.2])
    counts, first = T.alerts_per_trial(ws, probs, np.ones(4, bool), 0.5)
    # 5 s and 20 s are one alert (within 30 s of the first), 40 s is 35 s after it: a second one
    assert counts.tolist() == [2, 0]
    assert first[0] == 7.5 and np.isnan(first[1])
    counts, _ = T.alerts_per_trial(ws, probs, np.ones(4, bool), np.array([0.95, 0.95, 0.5, 0.1]))
    assert counts.tolist() == [1, 1]  # per-window (per-fold) thresholds


def test_fa_rule_takes_the_most_sensitive_threshold_that_meets_the_target() -> None:
    # 2 ADL hours of one subject: false-alarm windows scoring 0.3, 0.6, 0.8 (far apart)
    trials = [_trial("SA01", "D01", 3600.0), _trial("SA01", "D02", 3600.0), _trial("SA02", "D01", 3600.0)]
    ws = _windows(trials, [0, 0, 1, 2], [100.0, 500.0, 100.0, 100.0])
    probs = np.array([0.3, 0.6, 0.8, 0.99])
    mask = np.array([True, True, True, False])
    # target 1/h over SA01's 2 h: at most 2 alerts -> the lowest threshold above 0.3
    assert T.fa_threshold(ws, probs[mask], mask, ["SA01"], target_per_h=1.0) == 0.31
    # target 0.5/h: at most one alert -> above 0.6; SA02 (not a training subject) never counts
    assert T.fa_threshold(ws, probs[mask], mask, ["SA01"], target_per_h=0.5) == 0.61
    assert T.fa_threshold(ws, probs[mask], mask, ["SA01"], target_per_h=0.0) == 0.81


def test_perturbed_copies_keep_the_features_rotation_free_and_change_with_gain() -> None:
    rng = np.random.default_rng(3)
    t = np.arange(int(8 * F.RATE_HZ)) / F.RATE_HZ
    acc = np.stack([0.1 * np.sin(3 * t), -1.0 - 1.8 * np.exp(-((t - 4) ** 2) / 0.01), 0.05 * t], 1)
    gyro = np.stack([20 * np.sin(2 * t), 5 * t, np.zeros_like(t)], 1)
    trial = sisfall.Trial("SA01", "SA", "F01", 1, F.RATE_HZ, acc.astype(np.float32), gyro.astype(np.float32),
                          acc.astype(np.float32))
    w0, _ = T.trial_windows(trial)
    rotated = T.perturb(trial, rng)
    w1, _ = T.trial_windows(rotated)
    assert len(w0) == len(w1) == 1
    np.testing.assert_allclose(F.window_features(w0), F.window_features(w1), rtol=1e-3, atol=1e-2)
    louder = T.perturb(trial, rng, rotate=False, gain=(1.15, 1.0))
    w2, _ = T.trial_windows(louder)
    peak = F.FEATURE_NAMES.index("peak_g")
    assert F.window_features(w2)[0, peak] > 1.1 * F.window_features(w0)[0, peak]
    assert T.robust_trials([trial], 7)[0].source_name == "augmented"
