"""The alert decision stage: the cancel window, fault suppression and de-duplication, then
the FallAlert.

A decision from detection is held until ``cancel_window_s`` after it was made (hub clock).
A wearer's cancel press from the impact to the end of the window turns it into a
``cancelled`` FallAlert (still sent and logged, EN 50134-2); a sensor that turns faulty
around the impact suppresses it (reported as a health warning); otherwise it is raised.
One fall gives one alert: the detector folds impacts within ``dedup_s`` of the last
alert's impact, and ``Wearable.last_alert_t`` keeps the no-recovery path and device drops
in step with it. At the end of its window a fast-path alert is *stood down* — sent as
``cancelled`` with reason ``recovered`` or ``in_occupied_bed``, logged, nobody called — when the
wearer's no-recovery watch saw them get up and walk, or they were in an occupied bed or chair
from before the impact (turning over in bed); a no-recovery decision is due at once, its
window having run from the event.

A decision is durable from the moment it is made: :meth:`AlertDecision.decide` writes it
to the outbox DB's ``pending`` table (wall-clock due time), and the transaction that
commits its FallAlert deletes that row; only after that commit does the decision leave
memory, so a disk error leaves it pending for the next feed, and a crash or SIGKILL inside
the cancel window leaves it on disk: :meth:`AlertDecision.resume` takes it up again at
start, its window continuing from the persisted due time (sent at once if overdue).

Each alert or cancellation is committed to the outbox before anyone is told:
:meth:`AlertDecision.subscribe` listeners get an :class:`DecidedAlert` carrying the row's
``seq`` (the benchmark's latency probe, the tests, a local buzzer).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

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


class DecisionStore(Protocol):
    """Where pending decisions are kept (the outbox DB, through the uplink)."""

    def save_pending(self, key: str, body: str, due_ms: int) -> bool: ...
    def pending_decisions(self) -> list[tuple[str, str, int]]: ...


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
        send: Callable[[list[Pending], list[str]], list[int]],
        warn: Callable[[str], None],
        on_raised: Callable[[], None],
        store: DecisionStore | None = None,
    ) -> None:
        """``send(messages, done_keys)`` commits messages and forgets those pending decisions in
        one transaction (returns the seqs), ``warn`` notes a health warning, ``on_raised`` is
        called after alerts were raised (the risk state is saved then), ``store`` keeps
        pending decisions across a crash."""
        self.sensors = sensors
        self.fusion = fusion
        self.messages = messages
        self.count = counters.count
        self.cancel_window_s = cancel_window_s
        self.send = send
        self.warn = warn
        self.on_raised = on_raised
        self.store = store
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
        pa = PendingAlert(event_id, w, d, due, now_s, 0.0)
        self.pending.append(pa)
        self.count("decisions")
        self._persist(pa)

    def _persist(self, pa: PendingAlert) -> None:
        """Write a decision to disk; if that fails it stays in memory and is sent when due."""
        if self.store is None:
            return
        d, ts = pa.decision, self.messages.ts
        body = json.dumps({
            "sensor": pa.wearable.sensor_id, "resident": pa.wearable.resident_id,
            "impact_ms": ts(d.impact_t_s), "decided_ms": ts(d.decided_t_s), "created_ms": ts(pa.created_t_s),
            "probability": d.probability, "confidence": d.confidence, "peak_g": d.peak_g, "lying": d.lying,
            "still": d.still, "reasons": [list(r) for r in d.reasons], "padded": d.padded,
            "path": d.path, "lying_s": d.lying_s,
        })
        try:
            self.store.save_pending(pa.event_id, body, ts(pa.due_t_s))
        except Exception as exc:  # a disk error: the alert is still sent from memory when due
            self.count("pending_persist_errors")
            self.warn(f"fall decision {pa.event_id} not persisted ({exc}); held in memory")
            log.exception("could not persist the fall decision %s", pa.event_id)

    def resume(self, now_s: float = 0.0) -> int:
        """Take up the decisions a previous run persisted and did not send (after a crash);
        their windows continue from the persisted due time. Returns how many.

        The persisted times are wall times, so they are read through this run's wall-clock
        anchor. If the wall clock stepped *back* between the two runs (an NTP step, a hub
        rebooting with a dead RTC battery), they land in this run's future: the due time
        would hold the alert back by the size of the step, and an impact "still to come"
        would fold a real new fall into this one (de-dup). So the de-dup mark is never later
        than now and no window longer than a full cancel window from now (the alert still
        carries the times it was decided with)."""
        if self.store is None:
            return 0
        known = {pa.event_id for pa in self.pending}
        hub_s = self._hub_s
        n = 0
        for key, body, due_ms in self.store.pending_decisions():
            if key in known:
                continue
            b = json.loads(body)
            w = self.sensors.wearables.get(b["sensor"]) or self.sensors.add_wearable(b["sensor"], b["resident"])
            d = FallDecision(impact_t_s=hub_s(b["impact_ms"]), decided_t_s=hub_s(b["decided_ms"]),
                             probability=b["probability"], confidence=b["confidence"], peak_g=b["peak_g"],
                             lying=b["lying"], still=b["still"], reasons=[tuple(r) for r in b["reasons"]],
                             padded=b["padded"], path=b.get("path", "fast"), lying_s=b.get("lying_s", 0.0))
            w.last_alert_t = max(w.last_alert_t, min(d.impact_t_s, now_s))  # the stamps it carries stay as made
            due_s = min(self._hub_s(due_ms), now_s + self.cancel_window_s)
            if due_s < self._hub_s(due_ms):
                self.count("decisions_resumed_clock_back")
                log.warning("fall decision %s was due %.0f s in this run's future: the wall clock stepped back "
                            "since it was made; its window is cut to %.0f s", key, self._hub_s(due_ms) - now_s,
                            self.cancel_window_s)
            self.pending.append(PendingAlert(key, w, d, due_s, min(hub_s(b["created_ms"]), now_s), 0.0))
            self.count("decisions_resumed")
            log.warning("resumed fall decision %s for %s from before the restart (due in %.1f s)",
                        key, w.sensor_id, due_s - now_s)
            n += 1
        return n

    def _hub_s(self, wall_ms: int) -> float:
        """Hub-clock time of a wall time (the inverse of ``Messages.ts``)."""
        return (wall_ms - self.messages.start_epoch_ms) / 1000.0

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
        done: list[str] = []
        after: list[Callable[[], None]] = []  # what changes in memory once the commit succeeded
        raised = False
        for pa in self.pending:
            w = pa.wearable
            presses = [p for p in w.cancel_presses if pa.decision.impact_t_s <= p <= pa.due_t_s]
            if presses:
                self._report(pa, "cancelled", now_s, out, events, cancelled_at=presses[0])
                after.append(functools.partial(self._cancelled, w, pa.due_t_s))
            elif now_s >= pa.due_t_s and w.stream.faulty_between(pa.decision.impact_t_s - 1.0, now_s):
                after.append(functools.partial(self._suppressed, w))
            elif now_s >= pa.due_t_s and pa.decision.path == "fast" and (
                    why := w.watch.stand_down(pa.decision.impact_t_s, now_s, self.fusion.view(w))):
                # got up and walking, or turning over in an occupied bed: logged, nobody called
                self._report(pa, "cancelled", now_s, out, events, stood_down=why)
                after.append(functools.partial(self.count, f"alerts_stood_down_{why[0]}"))
            elif now_s >= pa.due_t_s:
                raised = True
                pa.feed_wall = wall
                self._report(pa, "alert", now_s, out, events)
                after.append(functools.partial(self._raised, w))
            else:
                keep.append(pa)
                continue
            done.append(pa.event_id)
        if not done:
            return
        # raises on a disk error: then nothing changed and the same decisions are tried next feed
        seqs = self.send(out, done)
        self.pending = keep
        for change in after:
            change()
        if raised:
            self.on_raised()
        for seq, ev in zip(seqs, events, strict=True):
            committed = DecidedAlert(ev.event_id, ev.status, ev.sensor, ev.resident_id, ev.impact_t_s,
                                   ev.confidence, ev.feed_wall, seq)
            for listener in self._listeners:
                listener(committed)

    def _cancelled(self, w: Wearable, due_t_s: float) -> None:
        w.cancel_presses = [p for p in w.cancel_presses if p > due_t_s]
        self.count("alerts_cancelled")

    def _suppressed(self, w: Wearable) -> None:
        self.count("alerts_suppressed_fault")
        self.warn(f"fall-like signal from {w.sensor_id} ignored: sensor {w.stream.status}")
        log.warning("fall-like signal from %s suppressed: sensor fault", w.sensor_id)

    def _raised(self, w: Wearable) -> None:
        w.falls += 1
        self.count("alerts_raised")

    def _report(
        self,
        pa: PendingAlert,
        status: Literal["alert", "cancelled"],
        now_s: float,
        out: list[Pending],
        events: list[DecidedAlert],
        cancelled_at: float | None = None,
        stood_down: tuple[str, str] | None = None,
    ) -> None:
        data = self.fall_data(pa, status, now_s, cancelled_at, stood_down)
        w = pa.wearable
        events.append(DecidedAlert(pa.event_id, status, w.sensor_id, w.resident_id, pa.decision.impact_t_s,
                                 data.confidence, pa.feed_wall, -1))
        log.warning("fall %s for %s (%s): confidence %.2f", status, w.sensor_id, w.resident_id, data.confidence)
        out.append(self.messages.fall(data, pa.decision.impact_t_s, w.resident_id))

    def fall_data(
        self, pa: PendingAlert, status: Literal["alert", "cancelled"], now_s: float, cancelled_at: float | None = None,
        stood_down: tuple[str, str] | None = None,
    ) -> C.FallData:
        """The FallAlert body: the detector's reasons, then what the rooms add, then the cancel
        (the wearer's button, or the edge standing the alert down: ``recovered``, ``in_occupied_bed``)."""
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
        if stood_down is not None:
            reasons.append(C.Reason(code=stood_down[0], detail=C.safe_text(stood_down[1], 200), weight=-1.0))
        lying_s = max(d.lying_s, max(0.0, now_s - d.impact_t_s) if (d.lying and d.still) else 0.0)
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
