"""The detection stage: one batched model call per ``feed()`` for every window that became
ready on any wearable, then the edge's own judgement of what the model said.

* **device drop**: a long free fall right before a hard impact is the wearable falling on
  its own (dropped, thrown), not a body: reported as a health warning, never alerted;
* **soft candidates**: an impact the model scored below its threshold (but at least
  ``soft_p``) that ended lying and still is held for ``confirm_s`` and becomes a decision
  only if the wearer's rooms confirm nobody got up (:meth:`RoomFusion.confirms`).

Decisions go to the alert decision stage (:class:`~fallwatch.edge.decision.AlertDecision`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from fallwatch.edge.counters import Counters
from fallwatch.edge.decision import AlertDecision
from fallwatch.edge.fusion import RoomFusion
from fallwatch.edge.sensors import Sensors, Wearable
from fallwatch.models import features as F
from fallwatch.models.detector import Candidate, FallDecision

log = logging.getLogger("fallwatch.edge.agent")  # the name operators filter on (and the bench mutes)

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


@dataclass(slots=True)
class SoftCandidate:
    """An impact the model scored below its threshold but that ended lying and still:
    held for ``confirm_s`` and raised only if the rooms confirm nobody got up."""

    wearable: Wearable
    decision: FallDecision
    confirm_t_s: float


class Detection:
    """Batched inference across wearables, device-drop filter, room-confirmed second chance."""

    def __init__(
        self,
        sensors: Sensors,
        fusion: RoomFusion,
        decisions: AlertDecision,
        counters: Counters,
        warn: Callable[[str], None],
    ) -> None:
        """``warn`` takes a note for the next health heartbeat's warnings."""
        self.sensors = sensors
        self.fusion = fusion
        self.decisions = decisions
        self.count = counters.count
        self.warn = warn
        self.soft: list[SoftCandidate] = []

    def run(self, fed: Iterable[Wearable], now_s: float) -> None:
        """Score what became ready on the wearables fed since the last call; decide."""
        self.infer(fed, now_s)
        if self.soft:
            self.confirm_soft(now_s)

    def infer(self, fed: Iterable[Wearable], now_s: float) -> None:
        """One model call for every window that became ready anywhere (batched across devices)."""
        batches: list[tuple[Wearable, np.ndarray]] = []
        for w in fed:
            b = w.det.pending_windows()
            if len(b):
                batches.append((w, b))
        if not batches:
            return
        x = np.concatenate([b for _, b in batches])
        probs = self.sensors.model.predict(x)
        self.count("windows_scored", len(x))
        self.count("inference_calls")
        off = 0
        soft_p = self.fusion.settings.soft_p
        for w, b in batches:
            p = probs[off : off + len(b)]
            cands = w.det.inflight
            by_impact = {c.impact_t_s: i for i, c in enumerate(cands)}
            for d in w.det.resolve(p):
                ff_s = free_fall_s(b[by_impact[d.impact_t_s]]) if d.impact_t_s in by_impact else 0.0
                if is_device_drop(ff_s, d.peak_g):
                    # the wearable itself was dropped (or thrown) - a classic false alarm,
                    # reported, not alerted
                    self.count("device_drops")
                    w.last_alert_t = d.impact_t_s
                    self.warn(f"wearable {w.sensor_id} dropped (free fall {ff_s:.2f} s, {d.peak_g:.0f} g): not a fall")
                    log.warning("wearable %s dropped (free fall %.2f s): no alert", w.sensor_id, ff_s)
                    continue
                self.decisions.decide(w, d, now_s)
            low = [i for i, pi in enumerate(p) if soft_p <= pi < w.det.threshold]
            if low and self.fusion.can_confirm(w.resident_id):
                self.hold_soft(w, [cands[i] for i in low], b[low], p[low])
            off += len(b)

    def hold_soft(self, w: Wearable, cands: list[Candidate], windows: np.ndarray, p: np.ndarray) -> None:
        """Hold the below-threshold impacts that ended lying and still for room confirmation."""
        feats = F.window_features(windows)
        still, lying = F.still_and_lying(feats)
        col = {n: i for i, n in enumerate(F.FEATURE_NAMES)}
        dedup_s = self.sensors.detector_settings.dedup_s
        for i, c in enumerate(cands):
            if not (still[i] and lying[i]) or abs(c.impact_t_s - w.last_alert_t) < dedup_s:
                continue
            tilt = float(feats[i, col["tilt_change_deg"]])
            reasons = [
                ("impact", f"peak {c.peak_g:.1f} g", round(min(1.0, (c.peak_g - 1.0) / 4.0), 3)),
                ("model_score", f"p={float(p[i]):.2f} below threshold {w.det.threshold:.2f}", round(float(p[i]), 3)),
                ("posture_change", f"{tilt:.0f} deg from pre-fall posture (lying)", round(min(1.0, tilt / 90), 3)),
                ("stillness", "still after the impact", 0.5),
            ]
            conf = 0.5 + 0.4 * float(p[i])
            d = FallDecision(impact_t_s=c.impact_t_s, decided_t_s=c.ready_t_s, probability=float(p[i]),
                             confidence=conf, peak_g=c.peak_g, lying=True, still=True, reasons=reasons)
            self.soft.append(SoftCandidate(w, d, c.impact_t_s + self.fusion.settings.confirm_s))
            self.count("soft_candidates")

    def confirm_soft(self, now_s: float) -> None:
        """Soft candidates whose confirmation time is over become decisions, or are dropped."""
        keep = []
        dedup_s = self.sensors.detector_settings.dedup_s
        for sc in self.soft:
            if now_s < sc.confirm_t_s:
                keep.append(sc)
                continue
            d, w = sc.decision, sc.wearable
            if not self.fusion.confirms(w, d, now_s, dedup_s):
                self.count("soft_rejected")
                continue
            quiet = now_s - d.impact_t_s
            reasons = [*d.reasons, ("room_confirmed", f"no movement, no room motion, not in bed or chair for "
                                                       f"{quiet:.0f} s after the impact", 0.5)]
            d = FallDecision(d.impact_t_s, now_s, d.probability, d.confidence, d.peak_g, True, True, reasons)
            self.count("soft_confirmed")
            self.decisions.decide(w, d, now_s, due=max(now_s, d.impact_t_s + self.decisions.cancel_window_s))
        self.soft = keep
