"""The streaming fall detector the edge runs (and ``fallwatch models eval-fall`` measures).

Pipeline per wearable, at the model's rate (the edge resamples to it):

1. **Impact trigger** (per sample, vectorised over each pushed chunk): the acceleration
   magnitude crosses ``trigger_g``; the highest magnitude in the next ``peak_search_s``
   is the impact. Almost every sample costs one magnitude and one comparison, so the model
   never runs on quiet data.
2. **Window**: once ``post_s`` seconds after the impact have arrived, the window
   ``[impact - pre_s, impact + post_s)`` is cut from a ring buffer. It contains the
   post-impact posture and stillness the model uses to confirm the fall.
3. **Model**: :class:`FallModel` scores a *batch* of windows (features from
   :mod:`fallwatch.models.features`, the same code as training, then one ONNX session).
4. **Decision**: probability >= threshold -> one :class:`FallDecision` with its reasons
   (impact magnitude, model score, posture change, stillness). Alerts whose impacts fall
   within ``dedup_s`` of the previous alert's impact are folded into it, so one fall is
   one decision.

Split API for batching across many wearables (what the edge agent does)::

    for det in detectors: det.feed(t, acc, gyro)            # cheap, per device
    batches = [det.pending_windows() for det in detectors]   # usually all empty
    probs = model.predict(np.concatenate(batches))           # one ONNX call
    for det, p in zip(detectors, np.split(probs, np.cumsum([len(b) for b in batches])[:-1])):
        decisions = det.resolve(p)

``push()`` is ``feed`` + ``pending_windows`` + ``predict`` + ``resolve`` for one device.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fallwatch.models import features as F

log = logging.getLogger(__name__)

DEFAULT_MODEL_PATH = Path(__file__).resolve().parents[1] / "models" / "fall" / "fall_detector.onnx"

#: Metadata keys every fall model must carry (see models/fall_train.py export).
REQUIRED_METADATA = (
    "name",
    "version",
    "rate_hz",
    "window_s",
    "pre_s",
    "post_s",
    "channels",
    "units",
    "placement",
    "threshold",
    "features",
    "input_name",
    "training_data",
    "data_hash",
)


class MetadataError(ValueError):
    """The model file does not describe the input this code feeds it."""


def check_metadata(meta: dict[str, str], inputs: list[Any]) -> None:  # inputs: onnxruntime NodeArgs (untyped)
    """Refuse a model whose metadata disagrees with its graph or with this feature code.

    Checked before a model is used (or hot-swapped): a model trained on another rate,
    window or feature list would silently score garbage.
    """
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise MetadataError(f"model metadata lacks {missing}")
    if abs(float(meta["rate_hz"]) - F.RATE_HZ) > 1e-6:
        raise MetadataError(f"model rate {meta['rate_hz']} Hz != feature code's {F.RATE_HZ} Hz")
    for key, want in (("window_s", F.WINDOW_S), ("pre_s", F.PRE_S), ("post_s", F.POST_S)):
        if abs(float(meta[key]) - want) > 1e-6:
            raise MetadataError(f"model {key}={meta[key]} != feature code's {want}")
    names = [n for n in meta["features"].split(",") if n]
    unknown = [n for n in names if n not in F.FEATURE_NAMES]
    if unknown:
        raise MetadataError(f"model uses unknown features {unknown}")
    by_name = {i.name: i for i in inputs}
    inp = by_name.get(meta["input_name"])
    if inp is None:
        raise MetadataError(f"graph has no input {meta['input_name']!r} (has {list(by_name)})")
    width = inp.shape[-1]
    if not isinstance(width, int) or width != len(names):
        raise MetadataError(f"graph input width {width} != {len(names)} features in metadata")
    thr = float(meta["threshold"])
    if not 0.0 < thr < 1.0:
        raise MetadataError(f"threshold {thr} outside (0, 1)")
    channels = meta["channels"].split(",")
    if tuple(channels[:3]) != F.CHANNELS[:3]:
        raise MetadataError(f"channels {channels} do not start with {F.CHANNELS[:3]}")


class WindowScorer(Protocol):
    """What the detector needs from a model (FallModel, or a fold model in training)."""

    version: str
    threshold: float

    def predict(self, batch: np.ndarray, refs: np.ndarray | None = None) -> np.ndarray: ...


class FallModel:
    """One warmed-up onnxruntime session for the fall model, metadata checked.

    ``predict`` takes raw windows ``(n, WINDOW, 6)`` (acc g, gyro deg/s) and returns the
    fall probability per window; ``predict_features`` takes precomputed features.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        from fallwatch.models.onnx_runtime import edge_session

        self.path = Path(path) if path is not None else DEFAULT_MODEL_PATH
        self.session = edge_session(self.path)
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        check_metadata(self.metadata, self.session.get_inputs())
        m = self.metadata
        self.name: str = m["name"]
        self.version: str = m["version"]
        self.rate_hz: float = float(m["rate_hz"])
        self.window_s: float = float(m["window_s"])
        self.threshold: float = float(m["threshold"])
        self.channels: tuple[str, ...] = tuple(m["channels"].split(","))
        self.feature_names: tuple[str, ...] = tuple(m["features"].split(","))
        self.training_data: dict[str, object] = json.loads(m["training_data"])
        self._cols = F.feature_index(self.feature_names)
        self._input = m["input_name"]
        outs = [o.name for o in self.session.get_outputs()]
        self._output = "probabilities" if "probabilities" in outs else outs[-1]
        # Warm-up: the first run allocates and optimises; do it now, not on the first fall.
        self.predict(np.zeros((2, F.WINDOW, len(F.CHANNELS)), dtype=np.float32))

    @property
    def requires_gyro(self) -> bool:
        """True if the model reads gyroscope features (then feed ``gyro_dps``)."""
        return any(n.startswith("gyro_") for n in self.feature_names)

    @property
    def tag(self) -> str:
        """Short model id for alerts (``FallData.model``)."""
        return f"{self.name}@{self.version}"

    def predict_features(self, feats: np.ndarray) -> np.ndarray:
        """Fall probability for a batch of full feature rows (``window_features`` output)."""
        if len(feats) == 0:
            return np.zeros(0, dtype=np.float32)
        x = np.ascontiguousarray(feats[:, self._cols], dtype=np.float32)
        out = self.session.run([self._output], {self._input: x})[0]
        out = np.asarray(out)
        return (out[:, 1] if out.ndim == 2 else out).astype(np.float32)

    def predict(self, batch: np.ndarray, refs: np.ndarray | None = None) -> np.ndarray:
        """Fall probability for windows ``(n, WINDOW, C)`` -> ``(n,)``; batch across devices.

        ``refs`` (n, 3): each window's wearer upright (:meth:`DeviceFallDetector.inflight_refs`),
        NaN rows where not known; None = not known for any."""
        if len(batch) == 0:
            return np.zeros(0, dtype=np.float32)
        return self.predict_features(F.window_features(batch, refs))


#: Device-drop signature: this long in free fall (|a| < FREE_FALL_G) right before an impact of
#: at least DROP_PEAK_G. A waist-worn sensor on a falling body stays well above 0.25 g but for a
#: few samples (the body pivots and is partly supported); a dropped wearable falls freely
#: (~0.45 s from 1 m). In the simulator: drops 0.42 s, falls at most 0.04 s.
FREE_FALL_G = 0.25
DROP_FREE_FALL_S = 0.2
DROP_PEAK_G = 3.0


def free_fall_s(window: np.ndarray) -> float:
    """Longest stretch of free fall (s) in the second before the impact of a detector window."""
    seg = F.magnitude(window[F.PRE - int(F.RATE_HZ):F.PRE, :3]) < FREE_FALL_G
    best = run = 0
    for v in seg:
        run = run + 1 if v else 0
        best = max(best, run)
    return best / F.RATE_HZ


def is_device_drop(free_fall: float, peak_g: float) -> bool:
    """A body falling from standing is never in free fall this long before such an impact."""
    return free_fall >= DROP_FREE_FALL_S and peak_g >= DROP_PEAK_G


def refs_array(cands: list[Candidate]) -> np.ndarray:
    """``(k, 3)`` float32 of the candidates' walking references, NaN rows where unknown."""
    out = np.full((len(cands), 3), np.nan, dtype=np.float32)
    for i, c in enumerate(cands):
        if c.ref is not None:
            out[i] = c.ref
    return out


@dataclass(frozen=True)
class DetectorSettings:
    """Deployed detector settings (eval-fall runs exactly these defaults)."""

    trigger_g: float = F.TRIGGER_G
    peak_search_s: float = F.PEAK_SEARCH_S
    #: None -> the model's own threshold from its metadata.
    threshold: float | None = None
    #: Alerts with impacts closer than this to the last alert's impact are the same fall.
    dedup_s: float = 30.0
    #: Extra confirmation gates on top of the model (off: the model already weighs posture
    #: and stillness, and the gates cost sensitivity on falls that end sitting or moving).
    require_lying: bool = False
    require_still: bool = False
    #: Ring-buffer length; must hold one window plus the peak search.
    buffer_s: float = 12.0
    #: Divide acceleration by the wearer's own causal 1 g estimate (:class:`features.GravityEstimator`)
    #: before the trigger and the window. Off for the shipped model, which was trained without it;
    #: a model trained with it must be served with it (training builds its windows with these settings).
    normalise_gravity: bool = False
    #: Learn the wearer's upright from their walking (:class:`features.WalkingReference`) and hand
    #: each window's snapshot to the model (``tilt_walk_deg``), if the model's ``feature_names`` read
    #: that feature (or there is no model: training). Off, every window's reference is unknown (NaN).
    walking_reference: bool = True


@dataclass(frozen=True)
class FallDecision:
    """One detected fall, with the evidence behind it."""

    impact_t_s: float
    decided_t_s: float
    probability: float
    confidence: float
    peak_g: float
    lying: bool
    still: bool
    reasons: list[tuple[str, str, float]] = field(default_factory=list)
    #: The post-impact window needed samples past the end of the stream (flush) and
    #: they were filled by holding the last sample.
    padded: bool = False
    #: which path decided: "fast" (the model on the impact window) or "no_recovery"
    #: (:mod:`fallwatch.models.no_recovery`: the wearer stayed down)
    path: str = "fast"
    #: how long the wearer had been down when the decision was made (no-recovery path)
    lying_s: float = 0.0


@dataclass(frozen=True)
class Candidate:
    """A triggered impact waiting for (or holding) its window."""

    impact_index: int  # absolute sample index of the impact
    impact_t_s: float
    peak_g: float
    ready_t_s: float = 0.0  # time of the newest sample when the window was complete
    padded: bool = False
    #: the wearer's walking upright as it stood when the impact triggered (None: not known yet)
    ref: tuple[float, float, float] | None = None


class DeviceFallDetector:
    """Per-wearable streaming state: ring buffer, impact trigger, window queue, de-dup."""

    def __init__(self, model: WindowScorer | None, settings: DetectorSettings | None = None,
                 walk: F.WalkingReference | None = None) -> None:
        """``walk``: the wearer's upright learned so far (carried over a gap in the stream, as the
        evaluation does from one recording of a person to the next); a new one if None."""
        self.model = model
        self.settings = settings or DetectorSettings()
        s = self.settings
        self.threshold = s.threshold if s.threshold is not None else (model.threshold if model else 0.5)
        rate = F.RATE_HZ
        self._search_n = max(1, round(s.peak_search_s * rate))
        self._cap = max(int(s.buffer_s * rate), F.WINDOW + self._search_n + 16)
        self._piece = self._cap - F.WINDOW - self._search_n
        self._x = np.zeros((self._cap, len(F.CHANNELS)), dtype=np.float32)
        self._t = np.zeros(self._cap, dtype=np.float64)
        self._n = 0  # samples seen
        self._cand: list[float] | None = None  # [start_index, peak_index, peak_g] of the open candidate
        self._scheduled: list[Candidate] = []
        self._pending: list[tuple[Candidate, np.ndarray]] = []
        self._inflight: list[tuple[Candidate, np.ndarray]] = []
        self._last_alert_t: float | None = None
        self._warned_no_gyro = False
        self._gravity = F.GravityEstimator() if s.normalise_gravity else None
        # only for a model that reads it (or none, when training cuts windows): learning the reference
        # costs 40-200 us a wearable-second, as much as the rest of the edge's work per wearable
        self.walk = (walk if walk is not None else F.WalkingReference()) if self._wants_walk(model) else None
        self._cand_ref: tuple[float, float, float] | None = None
        self.suppressed = 0  # alerts folded into an earlier one (de-dup)
        self.triggers = 0

    def _wants_walk(self, model: WindowScorer | None) -> bool:
        """No model (training cutting windows for any model), or one whose ``feature_names`` read it."""
        if not self.settings.walking_reference:
            return False
        return model is None or "tilt_walk_deg" in getattr(model, "feature_names", ())

    def use_model(self, model: WindowScorer) -> None:
        """Score with ``model`` from now on (an over-the-air update): its threshold, and the walking
        reference started (or dropped) as the new model reads it or not."""
        self.model = model
        self.threshold = self.settings.threshold if self.settings.threshold is not None else model.threshold
        if not self._wants_walk(model):
            self.walk = None
        elif self.walk is None:
            self.walk = F.WalkingReference()

    # ------------------------------------------------------------------ streaming input

    def feed(self, t_s: np.ndarray, acc_g: np.ndarray, gyro_dps: np.ndarray | None = None) -> None:
        """Append samples (``t_s`` (n,), ``acc_g`` (n, 3), ``gyro_dps`` (n, 3) or None)."""
        acc = np.asarray(acc_g, dtype=np.float32).reshape(-1, 3)
        t = np.asarray(t_s, dtype=np.float64).reshape(-1)
        if len(t) != len(acc):
            raise ValueError(f"{len(t)} timestamps for {len(acc)} samples")
        if gyro_dps is None:
            if not self._warned_no_gyro and getattr(self.model, "requires_gyro", False):
                # Zeros stand in for the gyro; the model was trained with one, so its scores
                # are degraded: say so once rather than silently.
                log.warning("no gyroscope samples, but model %s reads gyro features",
                            getattr(self.model, "version", "?"))
                self._warned_no_gyro = True
            gyro = np.zeros_like(acc)
        else:
            gyro = np.asarray(gyro_dps, dtype=np.float32).reshape(-1, 3)
        for a in range(0, len(t), self._piece):
            b = min(len(t), a + self._piece)
            self._feed_piece(t[a:b], acc[a:b], gyro[a:b])

    def _feed_piece(self, t: np.ndarray, acc: np.ndarray, gyro: np.ndarray) -> None:
        n0, k = self._n, len(t)
        if k == 0:
            return
        if self._gravity is not None:
            acc = self._gravity.normalise(acc)
        idx = (n0 + np.arange(k)) % self._cap
        self._x[idx, 0:3] = acc
        self._x[idx, 3:6] = gyro
        self._t[idx] = t
        self._n = n0 + k
        mag = F.magnitude(acc)
        thr = self.settings.trigger_g
        pos = 0
        walked = 0  # samples of this piece the walking reference has seen
        while pos < k:
            if self._cand is None:
                hits = np.flatnonzero(mag[pos:] >= thr)
                if len(hits) == 0:
                    break
                pos += int(hits[0])
                self._cand = [n0 + pos, n0 + pos, float(mag[pos])]
                self.triggers += 1
                # the reference as of the trigger sample, whatever the chunking
                self._cand_ref = None
                if self.walk is not None:
                    self.walk.update(acc[walked:pos])
                    walked = pos
                    r = self.walk.reference
                    self._cand_ref = None if r is None else (float(r[0]), float(r[1]), float(r[2]))
            start = int(self._cand[0])
            end = min(k, start + self._search_n - n0)  # exclusive, chunk-local
            seg = mag[pos:end]
            j = int(np.argmax(seg))
            if seg[j] > self._cand[2]:
                self._cand[1], self._cand[2] = n0 + pos + j, float(seg[j])
            pos = end
            if start + self._search_n <= n0 + k:
                self._close_candidate()
        if self.walk is not None:
            self.walk.update(acc[walked:])
        self._cut_ready_windows(final=False)

    def _close_candidate(self) -> None:
        assert self._cand is not None
        i = int(self._cand[1])
        self._scheduled.append(Candidate(i, float(self._t[i % self._cap]), self._cand[2], ref=self._cand_ref))
        self._cand = None

    def _cut_ready_windows(self, final: bool) -> None:
        keep = []
        newest_t = float(self._t[(self._n - 1) % self._cap]) if self._n else 0.0
        for c in self._scheduled:
            end = c.impact_index + F.POST  # exclusive
            if end <= self._n or final:
                padded = end > self._n
                win = self._window(c.impact_index - F.PRE, end)
                ready = c.impact_t_s + F.POST_S if padded else newest_t
                self._pending.append(
                    (Candidate(c.impact_index, c.impact_t_s, c.peak_g, ready, padded, c.ref), win)
                )
            else:
                keep.append(c)
        self._scheduled = keep

    def _window(self, a: int, b: int) -> np.ndarray:
        """Samples [a, b) by absolute index; indices before the buffer or after the stream
        repeat the oldest / newest sample (edge padding)."""
        lo = max(0, self._n - self._cap)
        ids = np.clip(np.arange(a, b), lo, self._n - 1)
        return self._x[ids % self._cap].copy()

    def flush(self) -> None:
        """End of stream: close the open candidate and cut every scheduled window now,
        holding the last sample for the post-impact samples that never came.

        Used by the evaluation at a trial's end (a recording stops; the person does not).
        """
        if self._cand is not None:
            self._close_candidate()
        self._cut_ready_windows(final=True)

    # ------------------------------------------------------------------ split API

    def pending_windows(self) -> np.ndarray:
        """Take the windows awaiting the model, ``(k, WINDOW, 6)`` (k usually 0).

        The caller must pass exactly these windows' probabilities to :meth:`resolve`
        before the next call; samples fed in between queue new windows for later.
        """
        self._inflight.extend(self._pending)
        self._pending = []
        if not self._inflight:
            return np.zeros((0, F.WINDOW, len(F.CHANNELS)), dtype=np.float32)
        return np.stack([w for _, w in self._inflight])

    @property
    def inflight(self) -> list[Candidate]:
        """Candidates of the windows last returned by :meth:`pending_windows`."""
        return [c for c, _ in self._inflight]

    def inflight_refs(self) -> np.ndarray:
        """The wearer's upright for each window last returned by :meth:`pending_windows`, ``(k, 3)``
        (NaN rows where not known yet): pass it to the model's ``predict`` with the windows."""
        return refs_array([c for c, _ in self._inflight])

    def resolve(self, probs: np.ndarray) -> list[FallDecision]:
        """Turn the model's probabilities for :meth:`pending_windows` into decisions."""
        probs = np.asarray(probs, dtype=np.float32).reshape(-1)
        if len(probs) != len(self._inflight):
            raise ValueError(f"{len(probs)} probabilities for {len(self._inflight)} pending windows")
        batch, self._inflight = self._inflight, []
        hits = [i for i, p in enumerate(probs) if p >= self.threshold]
        if not hits:
            return []
        feats = F.window_features(np.stack([batch[i][1] for i in hits]), refs_array([batch[i][0] for i in hits]))
        still, lying = F.still_and_lying(feats)
        out = []
        for row, i in enumerate(hits):
            cand = batch[i][0]
            if self.settings.require_lying and not lying[row]:
                continue
            if self.settings.require_still and not still[row]:
                continue
            last = self._last_alert_t
            if last is not None and abs(cand.impact_t_s - last) < self.settings.dedup_s:
                self.suppressed += 1
                continue
            self._last_alert_t = cand.impact_t_s
            out.append(self._decision(cand, float(probs[i]), feats[row], bool(still[row]), bool(lying[row])))
        return out

    def _decision(self, c: Candidate, p: float, f: np.ndarray, still: bool, lying: bool) -> FallDecision:
        col = {n: i for i, n in enumerate(F.FEATURE_NAMES)}
        tilt = float(f[col["tilt_change_deg"]])
        rest_std = float(f[col["std_rest_g"]])
        min_g = float(f[col["min_descent_g"]])
        reasons: list[tuple[str, str, float]] = [
            ("impact", f"peak {c.peak_g:.1f} g (trigger {self.settings.trigger_g:.1f} g)",
             round(min(1.0, (c.peak_g - 1.0) / 4.0), 3)),
            ("model_score", f"p={p:.2f} >= threshold {self.threshold:.2f}"
             + (f" ({getattr(self.model, 'version', '')})" if self.model else ""), round(p, 3)),
            ("posture_change", f"{tilt:.0f} deg from pre-fall posture" + (" (lying)" if lying else ""),
             round(min(1.0, tilt / 90.0), 3)),
            ("stillness", f"{rest_std:.3f} g std 1.5-2.5 s after impact" + (" (still)" if still else ""),
             round(float(np.clip(1.0 - rest_std / 0.3, 0.0, 1.0)), 3)),
        ]
        if min_g < 0.6:
            reasons.append(("free_fall", f"{min_g:.2f} g minimum before impact", round(1.0 - min_g, 3)))
        upright = float(f[col["tilt_walk_deg"]])
        if self.walk is not None and np.isfinite(upright):  # evidence only where the model reads it
            reasons.append(("upright_before", f"{upright:.0f} deg from the wearer's walking upright before the event",
                            round(float(np.clip(1.0 - upright / 90.0, 0.0, 1.0)), 3)))
        return FallDecision(
            impact_t_s=c.impact_t_s,
            decided_t_s=c.ready_t_s,
            probability=p,
            confidence=p,
            peak_g=c.peak_g,
            lying=lying,
            still=still,
            reasons=reasons,
            padded=c.padded,
        )

    # ------------------------------------------------------------------ one-device API

    def push(
        self, t_s: np.ndarray, acc_g: np.ndarray, gyro_dps: np.ndarray | None = None
    ) -> list[FallDecision]:
        """Feed samples and return the decisions they complete (model run inline)."""
        self.feed(t_s, acc_g, gyro_dps)
        return self._run_pending()

    def close(self) -> list[FallDecision]:
        """:meth:`flush` and decide what it cut (end of a recording)."""
        self.flush()
        return self._run_pending()

    def _run_pending(self) -> list[FallDecision]:
        batch = self.pending_windows()
        if len(batch) == 0:
            return []
        if self.model is None:
            raise RuntimeError("no model: use pending_windows()/resolve()")
        return self.resolve(self.model.predict(batch, self.inflight_refs()))
