"""The alert decision stage: the cancel window, fault suppression and de-duplication, then
the FallAlert.

A decision from detection is held until ``cancel_window_s`` after it was made (hub clock).
A wearer's cancel press from the impact to the end of the window turns it into a
``cancelled`` FallAlert (still sent and logged, EN 50134-2); a sensor that turns faulty
around the impact suppresses it (reported as a health warning); otherwise it is raised.
One fall gives one alert: the detector folds impacts within ``dedup_s`` of the last
alert's impact, and ``Wearable.last_alert_t`` keeps the soft path and device drops in
step with it.

Each alert or cancellation is committed to the outbox before anyone is told:
:meth:`AlertDecision.subscribe` listeners get an :class:`DecidedAlert` carrying the row's
``seq`` (the benchmark's latency probe, the tests, a local buzzer).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from fallwatch.edge.counters import Counters
from fallwatch.edge.fusion import RoomFusion
from fallwatch.edge.messages import Messages
from fallwatch.edge.outbox import Pending
from fallwatch.edge.sensors import Sensors, Wearable
from fallwatch.models.detector import FallDecision
from fallwatch.protocol import contract as C
from fallwatch.protocol.ids import is_id

log = logging.getLogger("fallwatch.edge.agent")

#: Cancel presses with no fall pending are forgotten after this long (hub s).
CANCEL_PRESS_TTL_S = 120.0


@dataclass(slots=True)
class PendingAlert:
    event_id: str
    wearable: Wearable
    decision: FallDecision
    due_t_s: float
    created_t_s: float
    feed_wall: float  # monotonic time of the feed() call that made it due (latency start)


@dataclass(frozen=True, slots=True)
class DecidedAlert:
    """A fall alert or cancellation, told to listeners once it is committed to the outbox."""

    event_id: str
    status: Literal["alert", "cancelled"]
    sensor: str
    resident_id: str | None
    impact_t_s: float
    confidence: float
    feed_wall: float  # monotonic time of the feed() that decided it (0 for cancellations)
    seq: int  # the outbox row (and envelope) sequence number


class AlertDecision:
    """Pending falls of one hub and what becomes of them."""

    def __init__(
        self,
        sensors: Sensors,
        fusion: RoomFusion,
        messages: Messages,
        counters: Counters,
        *,
        cancel_window_s: float,
        send: Callable[[list[Pending]], list[int]],
        warn: Callable[[str], None],
        on_raised: Callable[[], None],
    ) -> None:
        """``send`` commits messages (returns their seqs), ``warn`` notes a health warning,
        ``on_raised`` is called after alerts were raised (the risk state is saved then)."""
        self.sensors = sensors
        self.fusion = fusion
        self.messages = messages
        self.count = counters.count
        self.cancel_window_s = cancel_window_s
        self.send = send
        self.warn = warn
        self.on_raised = on_raised
        self.pending: list[PendingAlert] = []
        self._listeners: list[Callable[[DecidedAlert], None]] = []

    def subscribe(self, listener: Callable[[DecidedAlert], None]) -> None:
        """Call ``listener`` with every alert/cancellation once it is on disk (in the feed thread)."""
        self._listeners.append(listener)

    def decide(self, w: Wearable, d: FallDecision, now_s: float, due: float | None = None) -> None:
        """A fall decided by detection: hold it for the cancel window (or until ``due``)."""
        event_id = f"{self.messages.device_id}-{w.sensor_id}-{self.messages.ts(d.impact_t_s)}"
        w.last_alert_t = d.impact_t_s
        if due is None:
            due = max(d.decided_t_s, now_s) + self.cancel_window_s
        self.pending.append(PendingAlert(event_id, w, d, due, now_s, 0.0))
        self.count("decisions")

    def resolve(self, now_s: float, wall: float) -> None:
        """Cancel, suppress or raise what is due at ``now_s``; ``wall`` = monotonic time of this feed."""
        if not self.pending:
            for w in self.sensors.wearables.values():  # presses with no fall pending expire
                if w.cancel_presses:
                    w.cancel_presses = [p for p in w.cancel_presses if p > now_s - CANCEL_PRESS_TTL_S]
            return
        keep: list[PendingAlert] = []
        out: list[Pending] = []
        events: list[DecidedAlert] = []
        raised = False
        for pa in self.pending:
            w = pa.wearable
            presses = [p for p in w.cancel_presses if pa.decision.impact_t_s <= p <= pa.due_t_s]
            if presses:
                w.cancel_presses = [p for p in w.cancel_presses if p > pa.due_t_s]
                self._report(pa, "cancelled", now_s, out, events, cancelled_at=presses[0])
                self.count("alerts_cancelled")
            elif now_s >= pa.due_t_s and w.stream.faulty_between(pa.decision.impact_t_s - 1.0, now_s):
                self.count("alerts_suppressed_fault")
                self.warn(f"fall-like signal from {w.sensor_id} ignored: sensor {w.stream.status}")
                log.warning("fall-like signal from %s suppressed: sensor fault", w.sensor_id)
            elif now_s >= pa.due_t_s:
                w.falls += 1
                raised = True
                pa.feed_wall = wall
                self._report(pa, "alert", now_s, out, events)
                self.count("alerts_raised")
            else:
                keep.append(pa)
        self.pending = keep
        seqs = self.send(out)
        if raised:
            self.on_raised()
        for seq, ev in zip(seqs, events, strict=True):
            committed = DecidedAlert(ev.event_id, ev.status, ev.sensor, ev.resident_id, ev.impact_t_s,
                                   ev.confidence, ev.feed_wall, seq)
            for listener in self._listeners:
                listener(committed)

    def _report(
        self,
        pa: PendingAlert,
        status: Literal["alert", "cancelled"],
        now_s: float,
        out: list[Pending],
        events: list[DecidedAlert],
        cancelled_at: float | None = None,
    ) -> None:
        data = self.fall_data(pa, status, now_s, cancelled_at)
        w = pa.wearable
        events.append(DecidedAlert(pa.event_id, status, w.sensor_id, w.resident_id, pa.decision.impact_t_s,
                                 data.confidence, pa.feed_wall, -1))
        log.warning("fall %s for %s (%s): confidence %.2f", status, w.sensor_id, w.resident_id, data.confidence)
        out.append(self.messages.fall(data, pa.decision.impact_t_s, w.resident_id))

    def fall_data(
        self, pa: PendingAlert, status: Literal["alert", "cancelled"], now_s: float, cancelled_at: float | None = None
    ) -> C.FallData:
        """The FallAlert body: the detector's reasons, then what the rooms add, then the cancel."""
        d = pa.decision
        w = pa.wearable
        reasons = [C.Reason(code=C.safe_text(c, 40), detail=C.safe_text(det, 200), weight=float(wt))
                   for c, det, wt in d.reasons]
        room, conf, extra = self.fusion.attribute(w, d, now_s)
        reasons += extra
        if cancelled_at is not None:
            reasons.append(
                C.Reason(
                    code="cancelled_by_wearer",
                    detail=f"cancel pressed {cancelled_at - d.impact_t_s:.1f} s after impact",
                    weight=-1.0,
                )
            )
        lying_s = max(0.0, now_s - d.impact_t_s) if (d.lying and d.still) else 0.0
        return C.FallData(
            event_id=pa.event_id,
            status=status,
            impact_ms=self.messages.ts(d.impact_t_s),
            confidence=float(np.clip(conf, 0.0, 1.0)),
            peak_g=float(min(d.peak_g, 64.0)),
            lying_s=lying_s,
            room=room if room and is_id(room) else None,
            sensor=w.sensor_id,
            reasons=reasons[:16],
            model=self.sensors.model.tag[:80],
        )
