"""Train, cross-validate and export the fall detector (``fallwatch models train-fall``).

Protocol (why each step):
- Training windows come from the *streaming detector itself* (``DeviceFallDetector`` with no
  model, collecting every triggered window), so the model is trained on exactly the
  windows the edge will show it, cut by the same trigger.
- Labels: in a fall trial the window whose impact lies within ±1 s of the trial's largest
  acceleration peak is a fall; other windows of fall trials within [-3, +5] s of that peak
  are left out (stumble, bounce: neither clearly fall nor ADL); every other window is ADL.
- Model: gradient-boosted trees (sklearn HistGradientBoosting) on :mod:`fallwatch.models.features`
  (chosen over alternatives by the subject-wise CV in the model card), exported with
  skl2onnx: a few hundred kB, microseconds per window.
- Evaluation: leave-subjects-out cross-validation (subjects, never trials, are split),
  each outer fold's threshold chosen by an inner subject-wise CV on that fold's training
  subjects only; the held-out subjects are then streamed through ``DeviceFallDetector``
  with the deployed settings. Reported per group (SA adults, SE elderly).
- Shipped model: trained on all available subjects; its threshold comes from the same
  inner CV over all of them. The CV figures are the honest estimate of its performance.
- Augmentation (:func:`augment_trials`, training windows only): every fall trial again,
  slower (time-stretched ×1.3-2) and softer (the impact's deviation from the slow signal damped
  to 40-80 %), as older people fall; and hard negatives: the sitting, lying and turning ADLs
  (D07-D14) and stumbles (D18) again with heavier landings (×1.2-1.8) at varied speed. An
  augmented window counts only where its subject is a training subject (it is made from that
  subject's trial), and no augmented trial is ever evaluated or used to choose a threshold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import pickle
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypedDict

import numpy as np

from fallwatch.models import features as F
from fallwatch.models import sisfall
from fallwatch.models.detector import Candidate, DetectorSettings, DeviceFallDetector, FallModel, refs_array
from fallwatch.models.fall_eval import TrialResult, run_trials, summarise

log = logging.getLogger(__name__)

MODEL_NAME = "fallwatch-fall"
MODEL_VERSION = "1.0.0"
#: a model that also reads the wearer's walking upright (``--features walk``) is a candidate, not
#: shipped (its pre-registered confirmation failed: docs/models.md, issue 12 fourth round)
WALK_VERSION = "1.2.0"  # the code as it stands trains candidate 1.2; 1.1 is commit 8fbc70d


def model_version(names: tuple[str, ...]) -> str:
    """The version a model on these features is published as (ONNX metadata and metrics.json alike)."""
    return WALK_VERSION if "tilt_walk_deg" in names else MODEL_VERSION


DEFAULT_OUT = Path(__file__).resolve().parent / "fall"
OUTER_FOLDS = 6
INNER_FOLDS = 3
POS_WINDOW_S = 1.0
EXCLUDE_BEFORE_S = 3.0
EXCLUDE_AFTER_S = 5.0

#: Features the shipped model reads (decided by the CV comparison in the model card).
FEATURE_SET = "all"


#: Features the fall probability may only decrease with, all else equal (``monotonic_cst``): the
#: further the posture before the event was from the wearer's walking upright (reclined, lying),
#: the less an impact is a fall. Why a constraint: SisFall's turning-over trials start at 80-100 deg
#: for most people, but one elderly wearer's start at 102-112 deg, beyond what the trees saw; a
#: monotone model carries "lying before -> less fall-like" past the training range.
MONOTONE = {"tilt_walk_deg": -1}


def hgb_params(seed: int, names: tuple[str, ...] = ()) -> dict[str, object]:
    """The trees' parameters; ``names`` (the feature columns, in order) adds :data:`MONOTONE`."""
    params: dict[str, object] = {
        "max_iter": 250,
        "learning_rate": 0.06,
        "max_leaf_nodes": 15,
        "min_samples_leaf": 20,
        "l2_regularization": 1.0,
        "class_weight": {0: 1.0, 1: 5.0},
        "early_stopping": False,
        "random_state": seed,
    }
    cst = [MONOTONE.get(n, 0) for n in names]
    if any(cst):
        params["monotonic_cst"] = cst
    return params


def feature_names(feature_set: str) -> tuple[str, ...]:
    base = tuple(n for n in F.FEATURE_NAMES if n != "tilt_walk_deg")
    if feature_set == "acc":
        return tuple(n for n in F.ACC_FEATURES if n != "tilt_walk_deg")
    if feature_set in ("all", "base"):  # the shipped model's 23 (model 1.0)
        return base
    if feature_set == "walk":  # + the wearer's walking upright (model 1.1 candidate)
        return F.FEATURE_NAMES
    if feature_set == "all+descent":
        return base + F.CANDIDATE_FEATURES
    raise ValueError(f"unknown feature set {feature_set!r}")


# ----------------------------------------------------------------------------- data


@dataclass
class WindowSet:
    """Every triggered window of a list of trials, with labels."""

    trials: list[sisfall.Trial]
    X: np.ndarray  # (N, len(STUDY_FEATURE_NAMES)) float32: the served features, then the candidates
    y: np.ndarray  # (N,) 1 fall, 0 ADL, -1 excluded from training
    trial_idx: np.ndarray  # (N,) index into trials
    #: augmented windows (training only; their trials name the subject they were made from)
    aug: WindowSet | None = None
    #: (N,) impact time of each window in its trial (s): alerts closer than the detector's
    #: de-dup time are one alert, so false alarms per hour can be counted from window scores
    impact_t: np.ndarray | None = None
    #: (N,) time the window was complete (s into its trial): the fast path's decision time
    ready_t: np.ndarray | None = None
    #: (N, 3, WINDOW) sequence channels (:func:`features.sequence_channels`) of the same windows,
    #: for the sequence model; only when built with ``seq=True``
    seq: np.ndarray | None = None
    #: (N,) pre-event tilt from the wearer's walking upright (deg, NaN unknown): issue 12's
    #: study candidate (:func:`fallwatch.models.fall_nested.add_walk_tilt`), not a served feature
    walk_tilt: np.ndarray | None = None
    #: the recordings again with ``tilt_walk_deg`` unknown (:func:`unknown_upright_copy`): training
    #: rows for fits that read that feature only, so a fit without it is the configuration before it
    unknown: WindowSet | None = None

    def subjects(self) -> np.ndarray:
        return np.array([self.trials[i].subject for i in self.trial_idx])


def trial_windows(trial: sisfall.Trial, settings: DetectorSettings | None = None,
                  walk: F.WalkingReference | None = None) -> tuple[np.ndarray, list[Candidate]]:
    """Windows the streaming detector triggers on for one trial (and their candidates, with the
    wearer's walking upright as it stood at each trigger). ``walk``: carried from the subject's
    earlier trials, as in the evaluation (:func:`fall_eval.run_trial`)."""
    if walk is not None:
        walk.gap()
    det = DeviceFallDetector(None, settings, walk=walk)
    t = np.arange(len(trial.acc_g)) / trial.rate_hz
    det.feed(t, trial.acc_g, trial.gyro_dps)
    det.flush()
    wins = det.pending_windows()
    return wins, det.inflight


def window_labels(trial: sisfall.Trial, cands: list[Candidate]) -> np.ndarray:
    """1 fall / 0 ADL / -1 left out, per triggered window of a trial (see the module docstring)."""
    y = np.zeros(len(cands), dtype=np.int8)
    if trial.is_fall:
        peak = int(np.argmax(F.magnitude(trial.acc_g)))
        d = (np.array([c.impact_index for c in cands]) - peak) / trial.rate_hz
        y[(d >= -EXCLUDE_BEFORE_S) & (d <= EXCLUDE_AFTER_S)] = -1
        y[np.abs(d) <= POS_WINDOW_S] = 1
    return y


def build_windows(trials: list[sisfall.Trial], settings: DetectorSettings | None = None,
                  progress: bool = False, seq: bool = False,
                  walks: dict[str, F.WalkingReference] | None = None, carry: bool = True) -> WindowSet:
    """Every triggered window of ``trials``, featurised as the edge does.

    The wearer's walking upright is carried across each subject's trials in order (``carry``),
    starting from ``walks[subject]`` if given (a copy: augmented copies of a subject's recordings
    start from what their recordings taught; ``walks`` gets each subject's final state back when
    it starts empty). ``carry=False``: every trial starts from nothing (rotated copies, whose
    device frame is new in each trial, as after re-clipping the device)."""
    given = dict(walks) if walks else {}
    state: dict[str, F.WalkingReference] = {}
    it = trials
    if progress:
        from tqdm import tqdm

        it = tqdm(trials, desc="windows", unit="trial")
    xs, ys, ti, it_s, rt_s, sq = [], [], [], [], [], []
    for k, trial in enumerate(it):
        if carry:
            if trial.subject not in state:
                start = given.get(trial.subject)
                state[trial.subject] = start.copy() if start is not None else F.WalkingReference()
            walk = state[trial.subject]
        else:
            walk = F.WalkingReference()
        wins, cands = trial_windows(trial, settings, walk)
        if len(wins) == 0:
            continue
        xs.append(np.concatenate([F.window_features(wins, refs_array(cands)), F.candidate_features(wins)], axis=1))
        if seq:
            sq.append(F.sequence_channels(wins))
        ys.append(window_labels(trial, cands))
        ti.append(np.full(len(cands), k))
        it_s.append(np.array([c.impact_t_s for c in cands]))
        # fed at once, a trial's windows are all "ready" at its end; streamed, a window is decided
        # once its post-impact samples are in (or at the end of the trial, padded)
        rt_s.append(np.minimum(np.array([c.impact_t_s for c in cands]) + F.POST_S, trial.duration_s))
    if walks is not None and not walks:
        walks.update(state)
    if not xs:
        empty = np.zeros(0)
        return WindowSet(trials, np.zeros((0, len(F.STUDY_FEATURE_NAMES)), dtype=np.float32),
                         np.zeros(0, dtype=np.int8), np.zeros(0, dtype=int), impact_t=empty, ready_t=empty)
    return WindowSet(trials, np.concatenate(xs), np.concatenate(ys), np.concatenate(ti),
                     impact_t=np.concatenate(it_s), ready_t=np.concatenate(rt_s),
                     seq=np.concatenate(sq) if seq else None)


def unknown_upright_copy(ws: WindowSet) -> WindowSet:
    """The same windows with ``tilt_walk_deg`` unknown (NaN), as training rows.

    Why: a device that has not yet seen its wearer walk hands the model NaN; with only the rotated
    copies to learn that case from, the model without the reference did worse than the model
    before it (model 1.1's R2). Every recording once more with the reference unknown lets the trees
    learn the unknown case from all of the data."""
    X = ws.X.copy()
    X[:, F.feature_index(("tilt_walk_deg",))[0]] = np.nan
    return dataclasses.replace(ws, X=X, aug=None, seq=None, walk_tilt=None, unknown=None)


#: ADL codes that are the detector's hard negatives: sitting down (D07-D11), lying down and
#: turning over while lying (D12-D14), stumbling (D18)
HARD_NEGATIVES = frozenset({"D07", "D08", "D09", "D10", "D11", "D12", "D13", "D14", "D18"})
AUGMENTATION = ("falls again slower (time-stretched x1.3-2.0) and softer (impact deviation from the "
                "0.5 s mean damped to 40-80 %); hard negatives (sitting down D07-D11, lying down and "
                "turning while lying D12-D14, stumbles D18) again with heavier landings (x1.2-1.8), "
                "time-stretched x0.8-1.3.")


def stretch_and_scale(trial: sisfall.Trial, stretch: float, scale: float, number: int) -> sisfall.Trial:
    """``trial`` played ``stretch`` times slower, its impact (+-0.4 s around the largest peak)
    deviating ``scale`` times as much from the 0.5 s running mean (gravity and slow movement)."""
    n = len(trial.acc_g)
    m = max(2, round(n * stretch))
    src = np.linspace(0, n - 1, m)
    idx = np.arange(n)

    def interp(x: np.ndarray) -> np.ndarray:
        return np.stack([np.interp(src, idx, x[:, k]) for k in range(x.shape[1])], axis=1).astype(np.float32)

    acc, gyro, acc2 = interp(trial.acc_g), interp(trial.gyro_dps) / stretch, interp(trial.acc2_g)
    k = max(1, round(0.5 * trial.rate_hz))
    kernel = np.ones(k, dtype=np.float32) / k
    slow = np.stack([np.convolve(acc[:, c], kernel, mode="same") for c in range(3)], axis=1)
    peak = int(np.argmax(F.magnitude(acc)))
    w = round(0.4 * trial.rate_hz)
    a, b = max(0, peak - w), min(m, peak + w)
    acc[a:b] = slow[a:b] + scale * (acc[a:b] - slow[a:b])
    return sisfall.Trial(trial.subject, trial.group, trial.activity, number, trial.rate_hz, acc,
                         gyro.astype(np.float32), acc2, source_name="augmented")


def augment_trials(trials: list[sisfall.Trial], seed: int) -> list[sisfall.Trial]:
    """Slower, softer falls and heavier hard negatives, one per source trial (see :data:`AUGMENTATION`)."""
    rng = np.random.default_rng(seed + 101)
    out = []
    for t in trials:
        if t.is_fall:
            out.append(stretch_and_scale(t, float(rng.uniform(1.3, 2.0)), float(rng.uniform(0.4, 0.8)), 100 + t.trial))
        elif t.activity in HARD_NEGATIVES:
            out.append(stretch_and_scale(t, float(rng.uniform(0.8, 1.3)), float(rng.uniform(1.2, 1.8)), 100 + t.trial))
    return out


ROBUSTNESS = ("every trial once more as another device and wearer might record it: a random 3-D "
              "rotation of the sensor (placement), accelerometer and gyroscope gain x0.85-1.15 "
              "(calibration), white noise 0.005-0.04 g and 0.5-4 deg/s, and for half of them the "
              "bandwidth of a 25 Hz sensor (resampled 50 -> 25 -> 50 Hz).")


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3-D rotation matrix (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.astype(np.float32)


def perturb(trial: sisfall.Trial, rng: np.random.Generator, *, rotate: bool = True,
            gain: tuple[float, float] | None = None, noise: tuple[float, float] | None = None,
            band_25hz: bool = False, number: int | None = None) -> sisfall.Trial:
    """``trial`` as another device might record it (see :data:`ROBUSTNESS`); used both to augment
    training and, with fixed settings, to stress-test held-out subjects."""
    from scipy.signal import resample_poly

    acc, gyro = trial.acc_g.astype(np.float64), trial.gyro_dps.astype(np.float64)
    if rotate:
        rot = random_rotation(rng)
        acc, gyro = acc @ rot.T, gyro @ rot.T
    if gain is not None:
        acc = acc * gain[0]
        gyro = gyro * gain[1]
    if noise is not None:
        acc = acc + rng.normal(0.0, noise[0], acc.shape)
        gyro = gyro + rng.normal(0.0, noise[1], gyro.shape)
    if band_25hz and len(acc) >= 8:
        n = len(acc)
        acc = resample_poly(resample_poly(acc, 1, 2, axis=0), 2, 1, axis=0)[:n]
        gyro = resample_poly(resample_poly(gyro, 1, 2, axis=0), 2, 1, axis=0)[:n]
    return sisfall.Trial(trial.subject, trial.group, trial.activity,
                         trial.trial if number is None else number, trial.rate_hz,
                         acc.astype(np.float32), gyro.astype(np.float32), trial.acc2_g, source_name="augmented")


GYRO_ROBUSTNESS = ("every trial once more with only the gyroscope's gain off, x0.7-1.3 (the accelerometer "
                   "as recorded): a gyroscope's gain is not observable from gravity, so no calibration removes it.")


def gyro_gain_trials(trials: list[sisfall.Trial], seed: int) -> list[sisfall.Trial]:
    """One copy of every trial with a random gyroscope gain (:data:`GYRO_ROBUSTNESS`), seeded."""
    rng = np.random.default_rng(seed + 303)
    return [perturb(t, rng, rotate=False, gain=(1.0, float(rng.uniform(0.7, 1.3))), number=300 + t.trial)
            for t in trials]


def robust_trials(trials: list[sisfall.Trial], seed: int) -> list[sisfall.Trial]:
    """One perturbed copy of every trial (:data:`ROBUSTNESS`), seeded."""
    rng = np.random.default_rng(seed + 202)
    out = []
    for t in trials:
        g = (float(rng.uniform(0.85, 1.15)), float(rng.uniform(0.85, 1.15)))
        nz = (float(rng.uniform(0.005, 0.04)), float(rng.uniform(0.5, 4.0)))
        out.append(perturb(t, rng, gain=g, noise=nz, band_25hz=bool(rng.random() < 0.5), number=200 + t.trial))
    return out


# ----------------------------------------------------------------------------- model


class ProbaClassifier(Protocol):
    """What is used of a fitted sklearn classifier."""

    def predict_proba(self, X: np.ndarray) -> np.ndarray: ...


class SkFallScorer:
    """A fitted sklearn classifier behind the detector's model interface (CV folds)."""

    def __init__(self, clf: ProbaClassifier, names: tuple[str, ...], threshold: float, version: str = "cv") -> None:
        self.clf = clf
        self.names = names
        self.cols = F.feature_index(names)
        self.threshold = threshold
        self.version = version
        self.feature_names = names  # the detector learns the walking upright only if these read it

    def predict_features(self, feats: np.ndarray) -> np.ndarray:
        if len(feats) == 0:
            return np.zeros(0, dtype=np.float32)
        return self.clf.predict_proba(feats[:, self.cols])[:, 1].astype(np.float32)

    def predict(self, batch: np.ndarray, refs: np.ndarray | None = None) -> np.ndarray:
        if len(batch) == 0:
            return np.zeros(0, dtype=np.float32)
        return self.predict_features(F.window_features(batch, refs))


def fit(ws: WindowSet, mask: np.ndarray, names: tuple[str, ...], seed: int) -> ProbaClassifier:
    from sklearn.ensemble import HistGradientBoostingClassifier

    use = mask & (ws.y >= 0)
    X, y = ws.X[use], ws.y[use]
    if ws.aug is not None and len(ws.aug.y):
        train_subjects = np.unique(ws.subjects()[mask])
        a = np.isin(ws.aug.subjects(), train_subjects) & (ws.aug.y >= 0)
        X, y = np.concatenate([X, ws.aug.X[a]]), np.concatenate([y, ws.aug.y[a]])
    if ws.unknown is not None and "tilt_walk_deg" in names:
        u = mask & (ws.unknown.y >= 0)  # same rows as the recordings
        X, y = np.concatenate([X, ws.unknown.X[u]]), np.concatenate([y, ws.unknown.y[u]])
    Xn = np.ascontiguousarray(X[:, F.feature_index(names)])
    cache = _fit_cache_path(Xn, y, seed, names)
    if cache is not None and cache.exists():
        with contextlib.suppress(Exception):  # a corrupt or foreign file is simply refitted
            cached: ProbaClassifier = pickle.loads(cache.read_bytes())
            return cached
    clf = HistGradientBoostingClassifier(**hgb_params(seed, names))
    clf.fit(Xn, y)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(clf))
        tmp.replace(cache)
    model: ProbaClassifier = clf
    return model


def _fit_cache_path(X: np.ndarray, y: np.ndarray, seed: int, names: tuple[str, ...] = ()) -> Path | None:
    """Where a fit on exactly these rows is kept (``FALLWATCH_FIT_CACHE``, off when unset): the
    study and train-fall fit the same folds, and each fit is minutes on a shared machine. Keyed by
    the training rows themselves, the parameters and the sklearn version, so it can never return
    another model."""
    root = os.environ.get("FALLWATCH_FIT_CACHE")
    if not root:
        return None
    import sklearn

    h = hashlib.sha256()
    h.update(X.tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    h.update(repr((X.shape, sorted(hgb_params(seed, names).items(), key=str), sklearn.__version__)).encode())
    return Path(root) / f"fit-{h.hexdigest()[:32]}.pkl"


def trial_scores(
    ws: WindowSet, probs: np.ndarray, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per trial (of those with windows in ``mask``): max window probability, is_fall, trial index.

    A trial alerts iff its max probability >= threshold, so this is the trial-level score
    behind the ROC/PR curves and the threshold choice. Trials without any trigger score 0.
    """
    trial_ids = np.unique(ws.trial_idx[mask]) if mask.any() else np.zeros(0, dtype=int)
    best = np.zeros(len(ws.trials), dtype=np.float32)
    np.maximum.at(best, ws.trial_idx[mask], probs)
    return best[trial_ids], np.array([ws.trials[i].is_fall for i in trial_ids]), trial_ids


def choose_threshold(scores: np.ndarray, is_fall: np.ndarray) -> float:
    """Threshold maximising trial-level sensitivity + specificity (Youden's J).

    Ties are broken toward the middle of the best plateau, the choice least sensitive to
    the exact scores of the training subjects.
    """
    grid = np.round(np.arange(0.02, 0.985, 0.01), 2)
    pos, neg = scores[is_fall], scores[~is_fall]
    j = np.array([(pos >= g).mean() + (neg < g).mean() for g in grid])
    best = np.flatnonzero(j >= j.max() - 1e-9)
    return float(grid[best[len(best) // 2]])


#: The operating-point rule (fixed before any held-out figure was seen): the lowest threshold at
#: which the training subjects' out-of-fold scores give at most this many false alarms per ADL
#: hour (the issue's aim), i.e. the most sensitive threshold that meets the false-alarm target.
FA_TARGET_PER_H = 0.5
THRESHOLD_GRID = np.concatenate([np.round(np.arange(0.02, 0.985, 0.01), 2),
                                 [0.985, 0.99, 0.993, 0.995, 0.997, 0.998, 0.999]])


def alerts_per_trial(ws: WindowSet, probs: np.ndarray, mask: np.ndarray, threshold: float | np.ndarray,
                     dedup_s: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
    """Fast-path alerts per trial from window scores, as :class:`DeviceFallDetector` counts them:
    windows at or above the threshold, one alert per ``dedup_s`` of impacts. Returns (alerts,
    first decision time or nan) per trial of ``ws.trials``. ``threshold`` is a scalar or one per
    window (each held-out fold's own)."""
    if ws.impact_t is None or ws.ready_t is None:
        raise ValueError("windows without impact times: build them with build_windows")
    thr = np.broadcast_to(np.asarray(threshold, dtype=np.float64), mask.shape)[mask]
    idx, p, imp, rdy = ws.trial_idx[mask], probs, ws.impact_t[mask], ws.ready_t[mask]
    hit = p >= thr
    counts = np.zeros(len(ws.trials), dtype=int)
    first = np.full(len(ws.trials), np.nan)
    order = np.lexsort((imp[hit], idx[hit]))
    last: dict[int, float] = {}
    for i, t_imp, t_rdy in zip(idx[hit][order], imp[hit][order], rdy[hit][order], strict=True):
        prev = last.get(int(i))
        if prev is not None and abs(t_imp - prev) < dedup_s:
            continue
        last[int(i)] = float(t_imp)
        counts[i] += 1
        if np.isnan(first[i]):
            first[i] = t_rdy
    return counts, first


def fa_threshold(ws: WindowSet, probs: np.ndarray, mask: np.ndarray, subjects: list[str],
                 target_per_h: float = FA_TARGET_PER_H) -> float:
    """:data:`FA_TARGET_PER_H` rule on out-of-fold window scores ``probs`` (of ``ws`` windows in
    ``mask``) of the training ``subjects``: the lowest grid threshold whose false alarms per ADL
    hour are at most ``target_per_h``."""
    adl = [i for i, t in enumerate(ws.trials) if t.subject in subjects and not t.is_fall]
    hours = sum(ws.trials[i].duration_s for i in adl) / 3600
    is_adl = np.zeros(len(ws.trials), dtype=bool)
    is_adl[adl] = True
    m = mask & is_adl[ws.trial_idx]
    pm = probs[is_adl[ws.trial_idx[mask]]]
    for g in THRESHOLD_GRID:
        if (pm >= g).sum() / max(hours, 1e-9) > target_per_h:  # an upper bound: skip counting
            n, _ = alerts_per_trial(ws, pm, m, float(g))
            if n.sum() / max(hours, 1e-9) > target_per_h:
                continue
        return float(g)
    return float(THRESHOLD_GRID[-1])


def subject_folds(subjects: list[str], k: int, seed: int) -> list[list[str]]:
    """Split subjects into k folds, each group (SA/SE) dealt round-robin after a seeded shuffle."""
    rng = np.random.default_rng(seed)
    folds: list[list[str]] = [[] for _ in range(k)]
    offset = 0
    for group in ("SA", "SE"):
        members = sorted(s for s in subjects if s.startswith(group))
        rng.shuffle(members)
        for i, s in enumerate(members):
            folds[(i + offset) % k].append(s)
        offset += len(members)
    others = sorted(s for s in subjects if s[:2] not in ("SA", "SE"))
    for i, s in enumerate(others):
        folds[i % k].append(s)
    return [sorted(f) for f in folds if f]


def inner_threshold(ws: WindowSet, train_subjects: list[str], names: tuple[str, ...], seed: int,
                    rule: str = "fa") -> float:
    """Threshold from out-of-fold predictions of an inner subject-wise CV (training subjects only):
    ``rule`` "fa" (the deployed one, :data:`FA_TARGET_PER_H`) or "youden" (max sensitivity +
    specificity of trials, the rule before issue 12)."""
    subj = ws.subjects()
    oof = np.full(len(ws.y), np.nan, dtype=np.float32)
    for fold in subject_folds(train_subjects, INNER_FOLDS, seed + 1):
        held = np.isin(subj, fold)
        train = np.isin(subj, train_subjects) & ~held
        clf = fit(ws, train, names, seed)
        oof[held] = clf.predict_proba(ws.X[held][:, F.feature_index(names)])[:, 1]
    mask = np.isin(subj, train_subjects)
    if rule == "fa":
        return fa_threshold(ws, oof[mask], mask, train_subjects)
    scores, is_fall, _ = trial_scores(ws, oof[mask], mask)
    # Training trials without any triggered window can never alert: count them as score 0.
    n_missing_falls = sum(t.is_fall and t.subject in train_subjects for t in ws.trials) - int(is_fall.sum())
    scores = np.concatenate([scores, np.zeros(max(0, n_missing_falls), dtype=np.float32)])
    is_fall = np.concatenate([is_fall, np.ones(max(0, n_missing_falls), dtype=bool)])
    return choose_threshold(scores, is_fall)


class FoldInfo(TypedDict):
    fold: int
    held_out: list[str]
    threshold: float
    sensitivity: object
    specificity: object


@dataclass
class CVResult:
    results: list[TrialResult]
    summary: dict[str, object]
    folds: list[FoldInfo]
    trial_score: np.ndarray  # per trial of ws.trials: held-out max window probability
    is_fall: np.ndarray
    groups: np.ndarray
    #: the same fold models and thresholds served with every walking reference withheld (a wearer
    #: the device has not yet seen walk); only with ``withheld=True``
    withheld: dict[str, object] | None = None


def cross_validate(ws: WindowSet, names: tuple[str, ...], seed: int, settings: DetectorSettings | None = None,
                   progress: bool = False, withheld: bool = False) -> CVResult:
    subjects = sorted({t.subject for t in ws.trials})
    subj = ws.subjects()
    folds = subject_folds(subjects, OUTER_FOLDS, seed)
    results: list[TrialResult] = []
    without: list[TrialResult] = []
    fold_info: list[FoldInfo] = []
    trial_score = np.zeros(len(ws.trials), dtype=np.float32)
    it = folds
    if progress:
        from tqdm import tqdm

        it = tqdm(folds, desc="subject CV", unit="fold")
    for k, held_out in enumerate(it):
        train_subjects = [s for s in subjects if s not in held_out]
        thr = inner_threshold(ws, train_subjects, names, seed)
        clf = fit(ws, np.isin(subj, train_subjects), names, seed)
        scorer = SkFallScorer(clf, names, thr)
        held = np.isin(subj, held_out)
        p = scorer.predict_features(ws.X[held])
        np.maximum.at(trial_score, ws.trial_idx[held], p)
        fold_trials = [t for t in ws.trials if t.subject in held_out]
        res = run_trials(fold_trials, scorer, settings)
        results += res
        if withheld:
            off = dataclasses.replace(settings or DetectorSettings(), walking_reference=False)
            without += run_trials(fold_trials, scorer, off)
        s = summarise(res)
        fold_info.append({"fold": k, "held_out": held_out, "threshold": thr,
                          "sensitivity": s["sensitivity"], "specificity": s["specificity"]})
        log.info("fold %d %s thr=%.2f sens=%s spec=%s", k, held_out, thr, s["sensitivity"], s["specificity"])
    return CVResult(results, summarise(results), fold_info, trial_score,
                    np.array([t.is_fall for t in ws.trials]), np.array([t.group for t in ws.trials]),
                    withheld=summarise(without) if withheld else None)


# ----------------------------------------------------------------------------- export


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextlib.contextmanager
def _skl2onnx_bool_fix() -> Iterator[None]:
    """skl2onnx 1.20 passes a Python ``False`` as ``nodes_missing_value_tracks_true`` for
    HistGradientBoosting leaves, which onnx refuses ("Expected an int, got a boolean").
    Cast it to int while converting; the value is unchanged (False == 0)."""
    from skl2onnx.common import tree_ensemble

    original = tree_ensemble.add_node

    def add_node(*args: object, **kwargs: object) -> object:
        value = kwargs.get("nodes_missing_value_tracks_true")
        if isinstance(value, bool | int | np.bool_ | np.integer):
            kwargs["nodes_missing_value_tracks_true"] = int(value)
        return original(*args, **kwargs)

    tree_ensemble.add_node = add_node
    try:
        yield
    finally:
        tree_ensemble.add_node = original


def export_onnx(clf: object, names: tuple[str, ...], threshold: float, path: Path,
                data: dict[str, object], extra: dict[str, str] | None = None) -> None:
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    with _skl2onnx_bool_fix():
        onx = convert_sklearn(
            clf,
            initial_types=[("features", FloatTensorType([None, len(names)]))],
            options={id(clf): {"zipmap": False}},
            target_opset={"": 17, "ai.onnx.ml": 3},
        )
    onx.graph.name = MODEL_NAME  # skl2onnx names graphs with a random uuid: keep the file reproducible
    onx.doc_string = "fallwatch fall detector: impact-centred window features -> P(fall)"
    onx.producer_name = "fallwatch"
    version = model_version(names)
    onx.model_version = int(version.split(".")[0])
    props = {
        "name": MODEL_NAME,
        "version": version,
        "rate_hz": f"{F.RATE_HZ:g}",
        "window_s": f"{F.WINDOW_S:g}",
        "pre_s": f"{F.PRE_S:g}",
        "post_s": f"{F.POST_S:g}",
        "trigger_g": f"{F.TRIGGER_G:g}",
        "peak_search_s": f"{F.PEAK_SEARCH_S:g}",
        "channels": ",".join(F.CHANNELS),
        "units": ",".join(F.UNITS),
        "placement": F.PLACEMENT,
        "input": f"features float32 [n, {len(names)}] computed by models.features.window_features "
                 f"from windows [n, {F.WINDOW}, {len(F.CHANNELS)}]; no normalisation",
        "input_name": "features",
        "features": ",".join(names),
        "labels": "0=adl,1=fall",
        "output": "probabilities[:, 1] = P(fall)",
        "threshold": f"{threshold:.4f}",
        "training_data": json.dumps(data, separators=(",", ":")),
        "data_hash": str(data.get("hash", "")),
        "git_sha": git_sha(),
        **(extra or {}),
    }
    onnx.helper.set_model_props(onx, props)
    onnx.checker.check_model(onx)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onx.SerializeToString())


def time_per_window(model: FallModel, n: int = 2000, batch: int = 1) -> dict[str, float]:
    """Median wall time of features + ONNX per window (µs), for one window and for a batch."""
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.3, (max(n, batch), F.WINDOW, len(F.CHANNELS)))
    w = (noise + np.array([0, -1, 0, 0, 0, 0])).astype(np.float32)
    single = []
    for i in range(200):
        t0 = time.perf_counter()
        model.predict(w[i:i + 1])
        single.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    model.predict(w[:n])
    batched = (time.perf_counter() - t0) / n
    onnx_only = []
    feats = F.window_features(w[:1])
    for _ in range(200):
        t0 = time.perf_counter()
        model.predict_features(feats)
        onnx_only.append(time.perf_counter() - t0)
    return {
        "single_window_us": round(float(np.median(single)) * 1e6, 1),
        "onnx_only_single_us": round(float(np.median(onnx_only)) * 1e6, 1),
        "batched_per_window_us": round(batched * 1e6, 2),
    }


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
