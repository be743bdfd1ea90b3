"""Alerts: fall alerts on their own worker, and escalation of the unacknowledged ones.

A fall alert never waits behind a telemetry batch: its own link, queue and worker store
the series point (or spool it), record the alert's lifecycle in the state DB (``raised``,
or ``cancelled`` for a pre-alarm the wearer stopped), then tell staff. Escalation
re-announces a fall alert nobody acknowledged within ``escalate_after_s``, and again every
``escalate_after_s`` until someone does (social-alarm practice: an alarm is repeated
until the receiving side confirms it).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from fallwatch.gateway.channels import Action, AlertEvent, Notifier
from fallwatch.gateway.decode import Decoder, device_update
from fallwatch.gateway.dedup import Deduplicator
from fallwatch.gateway.ingest import InFlight, LatencyProbe
from fallwatch.gateway.links import Item, ItemQueue
from fallwatch.gateway.metrics import Counters, Metrics
from fallwatch.gateway.sinks import SeriesSink
from fallwatch.gateway.state import StateStore
from fallwatch.gateway.store import Storage
from fallwatch.gateway.workers import Workers, run_batch
from fallwatch.protocol import contract, topics

log = logging.getLogger("fallwatch.gateway")


class FallAlerts:
    def __init__(self, q: ItemQueue, decoder: Decoder, dedup: Deduplicator, storage: Storage, state: StateStore,
                 inflight: InFlight, counters: Counters, metrics: Metrics, notifier: Notifier,
                 stop: threading.Event, escalate_after_s: float, workers: Workers) -> None:
        self.q = q
        self.decoder = decoder
        self.dedup = dedup
        self.storage = storage
        self.state = state
        self.inflight = inflight
        self.counters = counters
        self.metrics = metrics
        self.notifier = notifier
        self.stop = stop
        self.escalate_after_ms = int(escalate_after_s * 1000)
        self.workers = workers
        self.latency_probe: LatencyProbe | None = None

    def loop(self) -> None:
        """Worker: one fall alert at a time off the alert queue."""
        sink = self.storage.new_sink()
        while True:
            try:
                item = self.q.get(timeout=0.2)
            except queue.Empty:
                if self.stop.is_set():
                    return
                continue
            run_batch(self.stop, self.workers, "alerts", lambda items: self.process(items[0], sink), [item],
                      self.poison)

    def poison(self, item: Item, exc: Exception) -> None:
        """A fall alert that cannot be recorded however often it is tried: dead-letter it and
        still tell staff that hub sent a fall alert nobody could read (never silent)."""
        self.decoder.reject("poison", f"{type(exc).__name__}: {exc}", item[0], item[1])
        self.unreadable(item, f"{type(exc).__name__}: {str(exc)[:200]}")
        self.inflight.finish([item])

    def unreadable(self, item: Item, why: str) -> None:
        """Open a ``fall_unreadable`` device alert for the hub a rejected fall alert came from."""
        try:
            parsed = topics.parse(item[0])
        except topics.TopicError:
            log.error("a fall alert on an unparsable topic %r was rejected (%s)", item[0][:200], why)
            return
        now = contract.now_ms()
        detail = contract.safe_text(f"a fall alert from {parsed.device} at {parsed.site} could not be read "
                                    f"and was dead-lettered: {why}", 1000)
        try:
            alert_id = self.state.raise_alert("fall_unreadable", parsed.site, parsed.device, now, detail)
        except Exception:
            log.exception("could not record the unreadable fall alert from %s/%s", parsed.site, parsed.device)
            alert_id = f"fall_unreadable:{parsed.site}:{parsed.device}:{now}"
        if alert_id:
            self.notifier.notify(AlertEvent(kind="fall_unreadable", action=Action.RAISED, alert_id=alert_id,
                                            site_id=parsed.site, device_id=parsed.device, at_ms=now,
                                            detail=detail, raised_ms=now))

    def process(self, item: Item, sink: SeriesSink) -> None:
        """Store one fall alert (point + lifecycle), tell staff if it is new, then ack it."""
        decoded = self.decoder.decode([item])
        if not decoded:
            self.unreadable(item, "it broke the contract (see the dead letter)")
        for msg, _, points in decoded:
            assert isinstance(msg, contract.FallAlert)  # the topic check guarantees it
            digest = self.dedup.check(msg)
            if digest is None:
                self.counters.add(duplicates=1)
                continue
            recv_ms = item[3] // 1_000_000
            refused = self.storage.store(points, sink, "alert")
            if refused is None:
                return
            if refused:  # the series point only: the alert itself is recorded and told below
                self.counters.reject("store_refused")
            new, alert_id = self.state.record_fall(msg, recv_ms, device_update(msg, recv_ms, item[4]), digest)
            done_ns = time.time_ns()
            self.metrics.ingest_latency.labels("alert").observe((done_ns - item[3]) / 1e9)
            if self.latency_probe is not None:
                self.latency_probe("alert", done_ns / 1e6 - msg.sent_ms)
            self.counters.add(stored=1, fall_alerts=1)
            if new:
                action = Action.RAISED if msg.data.status == "alert" else Action.CANCELLED
                self.notifier.notify(fall_event(msg, alert_id, action, recv_ms))
        self.inflight.finish([item])

    def check_escalations(self, now_ms: int) -> list[dict[str, Any]]:
        """Re-announce fall alerts still ``raised`` ``escalate_after_s`` after they were raised
        or last escalated; returns the escalated alerts."""
        escalated = self.state.escalate_due(now_ms, self.escalate_after_ms)
        for a in escalated:
            self.notifier.notify(AlertEvent.from_alert(a, Action.ESCALATED, now_ms))
        with self.counters.lock:
            self.counters.escalations += len(escalated)
        return escalated


def fall_event(msg: contract.FallAlert, alert_id: str, action: Action, at_ms: int) -> AlertEvent:
    """The staff event for a fall alert message just recorded."""
    d = msg.data
    return AlertEvent(
        kind="fall", action=action, alert_id=alert_id, site_id=msg.site_id, device_id=msg.device_id, at_ms=at_ms,
        actor="device", resident_id=msg.resident_id, sensor=d.sensor, room=d.room, confidence=d.confidence,
        peak_g=d.peak_g, lying_s=d.lying_s, reasons=tuple(r.code for r in d.reasons), raised_ms=at_ms,
    )
