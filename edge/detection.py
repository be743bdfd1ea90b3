"""The detection stage: one batched model call per ``feed()`` for every window that became
ready on any wearable, then the edge's own judgement of what the model said.

* **device drop**: a long free fall right before a hard impact is the wearable falling on
  its own (dropped, thrown), not a body: reported as a health warning, never alerted;
* **no-recovery path** (:mod:`fallwatch.models.no_recovery`): every trigger, whatever the
  model scored, is handed to the wearer's watch, which (with the bed exits and untriggered
  drops it sees itself) decides a fall when the wearer stays down for ``no_recovery_s``; one
  fall gives one alert, so a watch for an impact the fast path already alerted is folded.

Decisions go to the alert decision stage (:class:`~fallwatch.edge.decision.AlertDecision`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np

from fallwatch.edge.counters import Counters
from fallwatch.edge.decision import AlertDecision
from fallwatch.edge.fusion import RoomFusion
from fallwatch.edge.sensors import Sensors, Wearable
from fallwatch.models.detector import free_fall_s, is_device_drop

log = logging.getLogger("fallwatch.edge.agent")  # the name operators filter on (and the bench mutes)

class Detection:
    """Batched inference across wearables, device-drop filter, the no-recovery path."""

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

    def run(self, fed: Iterable[Wearable], now_s: float) -> None:
        """Score what became ready on the wearables fed since the last call; decide."""
        self.infer(fed, now_s)
        self.no_recovery(now_s)

    def infer(self, fed: Iterable[Wearable], now_s: float) -> None:
        """One model call for every window that became ready anywhere (batched across devices)."""
        batches: list[tuple[Wearable, np.ndarray]] = []
        refs: list[np.ndarray] = []
        for w in fed:
            b = w.det.pending_windows()
            if len(b):
                batches.append((w, b))
                refs.append(w.det.inflight_refs())
        if not batches:
            return
        x = np.concatenate([b for _, b in batches])
        probs = self.sensors.model.predict(x, np.concatenate(refs))
        self.count("windows_scored", len(x))
        self.count("inference_calls")
        off = 0
        for w, b in batches:
            p = probs[off : off + len(b)]
            cands = w.det.inflight
            by_impact = {c.impact_t_s: i for i, c in enumerate(cands)}
            for i, c in enumerate(cands):
                if not is_device_drop(free_fall_s(b[i]), c.peak_g):  # a dropped wearable stays "down"
                    w.watch.on_trigger(c.impact_t_s, c.peak_g, float(p[i]))
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
            off += len(b)

    def no_recovery(self, now_s: float) -> None:
        """Decide the no-recovery watches that are due; fold those the fast path already alerted."""
        dedup_s = self.sensors.detector_settings.dedup_s
        for w in self.sensors.wearables.values():
            if not w.watch.watches:
                continue
            for d in w.watch.poll(now_s, self.fusion.view(w)):
                if abs(d.impact_t_s - w.last_alert_t) < dedup_s:
                    self.count("no_recovery_folded")  # the same fall, already decided
                    continue
                self.count("no_recovery_decisions")
                log.warning("no recovery for %s: down %.0f s after the event", w.sensor_id, d.lying_s)
                # the wearer's cancel window ran from the event: due at once if it is over
                self.decisions.decide(w, d, now_s, due=max(now_s, d.impact_t_s + self.decisions.cancel_window_s))
