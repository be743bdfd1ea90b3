"""Trial-level evaluation of the streaming detector, as the edge runs it.

Used by ``eval-fall`` (shipped ONNX model) and by the cross-validation in training (fold
models), so the reported numbers always come from :class:`fallwatch.models.detector.DeviceFallDetector`
with its deployed settings, never from a shortcut over window scores.

Rules:
- Samples are pushed in chunks of :data:`CHUNK_S` (like an edge receiving sensor batches);
  a decision's time is the newest sample's time when its window became complete.
- A fall trial is detected if any alert fires during it; an ADL trial is a false alarm
  trial if any alert fires. False alarms per hour count every ADL alert over ADL hours.
- Latency: from the fall's acceleration peak (largest magnitude in the trial) to the first
  alert's decision time.
- End of a trial: a recording stops but the person does not, so ``DeviceFallDetector.close``
  cuts windows still waiting for post-impact samples by holding the last sample (the
  decision time is then impact + post_s). Such decisions are flagged ``padded`` and counted
  (``padded_alerts``) so their effect on the figures is visible.

Paths (``paths`` in the summary): ``fast`` is the detector above (the top-level keys, as
before); ``no_recovery`` is :class:`~fallwatch.models.no_recovery.NoRecoveryWatch` fed the
same stream and the detector's triggers; ``combined`` is what the edge sends: a fast alert
not stood down at the end of its cancel window, or else a no-recovery alert. SisFall trials
stop 5-15 s after a fall, long before anyone could tell whether the person gets up, so for the
no-recovery path each trial is **extended** by :data:`EXTEND_S` of its own last second,
repeated: the wearer is assumed to stay as at the end of the recording. For a fall that means
*not getting up* (SisFall's volunteers did get up after the recording); for an ADL it means
staying seated, lying, or standing as at the end. These figures are therefore partly
simulated and are labelled so.

Room sensors (the ``rooms`` figures) are simulated from the activity code, because SisFall has
none: D12-D14 (lying down on, turning over on, and sitting up on a bed) happen in a bed whose
pressure sensor reads occupied throughout; D07-D11 (sitting down on a chair, collapsing into
one) on a chair with a pressure sensor, occupied from the trial's largest peak (the sitting
impact) on; every other trial, and every fall, is outside any sensed bed or chair (falls end
on the floor). No SisFall trial is a fall from bed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from fallwatch.models import features as F
from fallwatch.models.detector import (
    DetectorSettings,
    DeviceFallDetector,
    FallDecision,
    WindowScorer,
    free_fall_s,
    is_device_drop,
)
from fallwatch.models.features import WalkingReference
from fallwatch.models.no_recovery import NoRecoverySettings, NoRecoveryWatch, NoRooms, RoomView
from fallwatch.models.sisfall import SENSOR_FRAME_AXES, Trial

CHUNK_S = 0.5
#: seconds each trial is extended by (its last second repeated) for the no-recovery path
EXTEND_S = 60.0
#: the edge's default cancel window (edge.cancel_window_s): a fast alert is stood down or sent then
CANCEL_WINDOW_S = 15.0
#: activity codes simulated as happening in an occupied bed when rooms are on
IN_BED_CODES = frozenset({"D12", "D13", "D14"})
#: activity codes simulated as sitting down on a sensed chair (occupied from the sitting impact)
ON_CHAIR_CODES = frozenset({"D07", "D08", "D09", "D10", "D11"})


class SimulatedRooms:
    """Room sensors for one SisFall trial: a bed occupied throughout, a chair occupied from
    ``chair_from_s`` on, or neither; ``now_s`` is set by the evaluation loop."""

    sensed = True

    def __init__(self, in_bed: bool, chair_from_s: float | None = None) -> None:
        self.in_bed = in_bed
        self.chair_from_s = chair_from_s
        self.now_s = 0.0

    def occupied_since(self) -> float | None:
        if self.in_bed:
            return -600.0
        if self.chair_from_s is not None and self.now_s >= self.chair_from_s:
            return self.chair_from_s
        return None


@dataclass
class TrialResult:
    name: str
    subject: str
    group: str
    activity: str
    is_fall: bool
    duration_s: float
    peak_t_s: float
    alerts: list[FallDecision] = field(default_factory=list)
    #: no-recovery decisions, and the combined outcome the edge would send (per room setting)
    no_recovery: dict[str, list[FallDecision]] = field(default_factory=dict)
    combined: dict[str, list[FallDecision]] = field(default_factory=dict)

    @property
    def alerted(self) -> bool:
        return bool(self.alerts)

    @property
    def latency_s(self) -> float | None:
        if not (self.is_fall and self.alerts):
            return None
        return self.alerts[0].decided_t_s - self.peak_t_s

    @property
    def max_probability(self) -> float:
        return max((a.probability for a in self.alerts), default=0.0)


@dataclass
class Streamed:
    """What both paths decided on one stream, per room setting (keys of ``rooms``)."""

    alerts: list[FallDecision]  # the fast path
    no_recovery: dict[str, list[FallDecision]]
    stood_down: dict[str, set[float]]  # impact times of fast alerts stood down at their cancel window
    triggers: int = 0  # windows the detector cut (impacts >= trigger_g)

    def combined(self, key: str, dedup_s: float) -> list[FallDecision]:
        """What the edge sends: fast alerts not stood down, and no-recovery decisions of other events."""
        fast = [d for d in self.alerts if d.impact_t_s not in self.stood_down[key]]
        return fast + [d for d in self.no_recovery[key]
                       if all(abs(d.impact_t_s - f.impact_t_s) >= dedup_s for f in self.alerts)]


def stream_paths(model: WindowScorer, t: np.ndarray, acc_g: np.ndarray, gyro_dps: np.ndarray, acc_fw: np.ndarray,
                 rooms: dict[str, RoomView], *, settings: DetectorSettings | None = None,
                 no_recovery: NoRecoverySettings | None = None, chunk_s: float = CHUNK_S,
                 tick: Callable[[float, dict[str, NoRecoveryWatch]], None] | None = None,
                 walk: WalkingReference | None = None) -> Streamed:
    """The edge's two paths over one stream, in ``chunk_s`` chunks, in the edge's order (detector
    and watch fed, windows scored and every trigger handed to the watch, watches polled, fast
    alerts stood down or kept at the end of their cancel window).

    ``acc_g``/``gyro_dps`` feed the detector (``len(acc_g)`` samples: then it is flushed, as at
    a recording's end); ``acc_fw`` (sensor frame, at least as long) feeds the watches, so a
    recording can be extended for them. ``tick(now, watches)`` runs before each poll (the
    caller's rooms: occupancy, bed exits). ``walk``: the wearer's walking upright learned so far
    (carried from their earlier recordings; it goes on learning from this one)."""
    if walk is not None:
        walk.gap()
    det = DeviceFallDetector(model, settings, walk=walk)
    n = len(acc_g)
    rate = F.RATE_HZ
    step = max(1, round(chunk_s * rate))
    watches = {k: NoRecoveryWatch(no_recovery) for k in rooms}
    for k, w in watches.items():
        w.rooms_sensed = rooms[k].sensed
    out = Streamed([], {k: [] for k in rooms}, {k: set() for k in rooms})
    checked = 0  # fast alerts whose cancel window is over (they are decided in time order)

    def score() -> None:
        batch = det.pending_windows()
        if not len(batch):
            return
        p = model.predict(batch, det.inflight_refs())
        out.triggers += len(batch)
        for i, (c, pc) in enumerate(zip(det.inflight, p, strict=True)):
            if not is_device_drop(free_fall_s(batch[i]), c.peak_g):
                for w in watches.values():
                    w.on_trigger(c.impact_t_s, c.peak_g, float(pc))
        out.alerts.extend(det.resolve(p))

    for a in range(0, len(acc_fw), step):
        b = min(len(acc_fw), a + step)
        if a < n:
            e = min(n, b)
            det.feed(t[a:e], acc_g[a:e], gyro_dps[a:e])
            if e == n:
                det.flush()  # as DeviceFallDetector.close(): the last windows, padded
        for w in watches.values():
            w.feed(t[a:b], acc_fw[a:b])
        now = float(t[b - 1])
        if tick is not None:
            tick(now, watches)
        score()
        for k, w in watches.items():
            out.no_recovery[k] += w.poll(now, rooms[k])
        while checked < len(out.alerts) and out.alerts[checked].decided_t_s + CANCEL_WINDOW_S <= now:
            d = out.alerts[checked]
            checked += 1
            for k, w in watches.items():
                if w.stand_down(d.impact_t_s, now, rooms[k]) is not None:
                    out.stood_down[k].add(d.impact_t_s)
    return out


def run_trial(trial: Trial, model: WindowScorer, settings: DetectorSettings | None = None,
              chunk_s: float = CHUNK_S, no_recovery: NoRecoverySettings | None = None,
              extend_s: float = EXTEND_S, walk: WalkingReference | None = None) -> TrialResult:
    """Stream one trial through the fast path (a fresh detector, closed at the trial's end) and, on
    the same stream and triggers, the no-recovery path on the trial extended by ``extend_s``,
    without and with simulated room sensors.

    ``walk`` carries the wearer's walking upright from their earlier trials into this one, as one
    device worn all day would (SisFall records each activity separately, walking first); None: a
    device that has not seen this wearer walk before this recording."""
    n = len(trial.acc_g)
    if abs(trial.rate_hz - F.RATE_HZ) > 1e-6:
        raise ValueError(f"trial at {trial.rate_hz} Hz, the detector runs at {F.RATE_HZ} Hz")
    # the watch judges posture against the sensor frame's up: SisFall's axes mapped to it
    acc_fw = (trial.acc_g @ SENSOR_FRAME_AXES.T).astype(np.float32)
    peak = float(np.argmax(F.magnitude(trial.acc_g)) / trial.rate_hz) if n else 0.0
    sim = SimulatedRooms(trial.activity in IN_BED_CODES, peak if trial.activity in ON_CHAIR_CODES else None)
    rooms: dict[str, RoomView] = {"none": NoRooms(), "rooms": sim}
    # the recording stops, the person does not: its last second repeated (see the module docstring)
    tail = acc_fw[-round(trial.rate_hz):]
    ext = np.resize(tail, (int(extend_s * trial.rate_hz), 3)) if n else np.zeros((0, 3), dtype=np.float32)
    acc_all = np.concatenate([acc_fw, ext])
    t_all = np.arange(len(acc_all)) / trial.rate_hz

    def tick(now: float, _: dict[str, NoRecoveryWatch]) -> None:
        sim.now_s = now

    st = stream_paths(model, t_all, trial.acc_g, trial.gyro_dps, acc_all, rooms, settings=settings,
                      no_recovery=no_recovery, chunk_s=chunk_s, tick=tick, walk=walk)
    res = TrialResult(trial.name, trial.subject, trial.group, trial.activity, trial.is_fall,
                      trial.duration_s, peak, st.alerts)
    dedup = (settings or DetectorSettings()).dedup_s
    for k in rooms:
        res.no_recovery[k] = st.no_recovery[k]
        res.combined[k] = st.combined(k, dedup)
    return res


def run_trials(trials: Iterable[Trial], model: WindowScorer, settings: DetectorSettings | None = None,
               progress: bool = False) -> list[TrialResult]:
    it = trials
    if progress:
        from tqdm import tqdm

        it = tqdm(list(trials), desc="eval", unit="trial")
    walks = SubjectWalks()
    return [run_trial(t, model, settings, walk=walks.get(t.subject)) for t in it]


class SubjectWalks:
    """One :class:`WalkingReference` per subject, carried across their trials in the order given
    (the evaluation's stand-in for one device worn all day: see :func:`run_trial`)."""

    def __init__(self) -> None:
        self._by: dict[str, WalkingReference] = {}

    def get(self, subject: str) -> WalkingReference:
        return self._by.setdefault(subject, WalkingReference())


def _summary(results: list[TrialResult]) -> dict[str, object]:
    falls = [r for r in results if r.is_fall]
    adls = [r for r in results if not r.is_fall]
    tp = sum(r.alerted for r in falls)
    fn = len(falls) - tp
    fp = sum(r.alerted for r in adls)
    tn = len(adls) - fp
    adl_hours = sum(r.duration_s for r in adls) / 3600
    adl_alerts = sum(len(r.alerts) for r in adls)
    lat = [r.latency_s for r in falls if r.latency_s is not None]
    sens = tp / len(falls) if falls else None
    spec = tn / len(adls) if adls else None
    prec = tp / (tp + fp) if (tp + fp) else None
    f1 = (2 * prec * sens / (prec + sens)) if (prec is not None and sens and (prec + sens)) else None
    return {
        "trials": len(results),
        "fall_trials": len(falls),
        "adl_trials": len(adls),
        "subjects": sorted({r.subject for r in results}),
        "tp": tp, "fn": fn, "fp": fp, "tn": tn,
        "sensitivity": _r(sens),
        "specificity": _r(spec),
        "precision": _r(prec),
        "f1": _r(f1),
        "adl_hours": round(adl_hours, 4),
        "adl_alerts": adl_alerts,
        "false_alarms_per_hour": _r(adl_alerts / adl_hours if adl_hours else None),
        "median_latency_s": _r(float(np.median(lat)) if lat else None),
        "p90_latency_s": _r(float(np.percentile(lat, 90)) if lat else None),
        "padded_alerts": sum(a.padded for r in results for a in r.alerts),
        "missed_falls": [r.name for r in falls if not r.alerted],
        "false_alarm_trials": [r.name for r in adls if r.alerted],
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)


def summarise(results: list[TrialResult]) -> dict[str, object]:
    """Overall figures plus the same per group (SA adults, SE elderly); per path (``paths``,
    without and with simulated room sensors) and per activity code (``codes``)."""
    out = _summary(results)
    out["groups"] = {g: _summary([r for r in results if r.group == g])
                     for g in sorted({r.group for r in results})}
    if results and results[0].combined:
        out["paths"] = paths_summary(results)
        out["codes"] = codes_summary(results)
    return out


def path_alerts(r: TrialResult, path: str, rooms: str = "none") -> list[FallDecision]:
    """The alerts of one trial on ``path`` (fast | no_recovery | combined)."""
    if path == "fast":
        return r.alerts
    return (r.no_recovery if path == "no_recovery" else r.combined).get(rooms, [])


def _path_figures(results: list[TrialResult], path: str, rooms: str) -> dict[str, object]:
    falls = [r for r in results if r.is_fall]
    adls = [r for r in results if not r.is_fall]
    tp = sum(bool(path_alerts(r, path, rooms)) for r in falls)
    fp = sum(bool(path_alerts(r, path, rooms)) for r in adls)
    hours = sum(r.duration_s for r in adls) / 3600
    lat = [min(a.decided_t_s for a in al) - r.peak_t_s for r in falls if (al := path_alerts(r, path, rooms))]
    return {
        "sensitivity": _r(tp / len(falls) if falls else None),
        "specificity": _r((len(adls) - fp) / len(adls) if adls else None),
        "false_alarms_per_hour": _r(sum(len(path_alerts(r, path, rooms)) for r in adls) / hours if hours else None),
        "median_latency_s": _r(float(np.median(lat)) if lat else None),
        "p90_latency_s": _r(float(np.percentile(lat, 90)) if lat else None),
        "latency_s_quantiles": [_r(float(q)) for q in np.percentile(lat, [0, 10, 25, 50, 75, 90, 100])] if lat else [],
        "tp": tp, "fp": fp, "fall_trials": len(falls), "adl_trials": len(adls),
    }


def paths_summary(results: list[TrialResult]) -> dict[str, object]:
    """Per path: figures without room sensors, ``rooms`` with simulated ones, and per group."""
    out: dict[str, object] = {}
    groups = sorted({r.group for r in results})
    for path in ("fast", "no_recovery", "combined"):
        fig = _path_figures(results, path, "none")
        fig["rooms"] = _path_figures(results, path, "rooms")
        fig["groups"] = {g: _path_figures([r for r in results if r.group == g], path, "none") for g in groups}
        out[path] = fig
    return out


def codes_summary(results: list[TrialResult]) -> dict[str, object]:
    """Per SisFall activity code: trials, and trials alerted per path (sensitivity for F codes,
    false-alarm trials and alerts per hour for D codes), without and with simulated rooms."""
    out: dict[str, object] = {}
    for code in sorted({r.activity for r in results}):
        rs = [r for r in results if r.activity == code]
        hours = round(sum(r.duration_s for r in rs) / 3600, 4)
        row: dict[str, object] = {"trials": len(rs), "is_fall": rs[0].is_fall, "hours": hours}
        for path in ("fast", "no_recovery", "combined"):
            for rooms in ("none", "rooms"):
                if path == "fast" and rooms == "rooms":
                    continue
                key = path if rooms == "none" else f"{path}_rooms"
                hit = sum(bool(path_alerts(r, path, rooms)) for r in rs)
                row[key] = _r(hit / len(rs))  # sensitivity (F) or share of trials with a false alarm (D)
                if not rs[0].is_fall and hours:  # false alarms per hour of this activity
                    row[f"{key}_per_hour"] = _r(sum(len(path_alerts(r, path, rooms)) for r in rs) / hours)
        out[code] = row
    return out
