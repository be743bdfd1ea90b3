"""Alerts: fall alerts on their own worker, and escalation of the unacknowledged ones.

A fall alert never waits behind a telemetry batch: its own link, queue and worker store
the series point (or spool it), record the alert's lifecycle in the state DB (``raised``,
or ``cancelled`` for a pre-alarm the wearer stopped), then tell staff. Escalation
re-announces a fall alert nobody acknowledged within ``escalate_after_s``, and again every
``escalate_after_s`` until someone does (social-alarm practice: an alarm is repeated
until the receiving side confirms it).
"""

from __future__ import annotations

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
from fallwatch.gateway.workers import retrying
from fallwatch.protocol import contract


class FallAlerts:
    def __init__(self, q: ItemQueue, decoder: Decoder, dedup: Deduplicator, storage: Storage, state: StateStore,
                 inflight: InFlight, counters: Counters, metrics: Metrics, notifier: Notifier,
                 stop: threading.Event, escalate_after_s: float) -> None:
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
            retrying(self.stop, self.process, item, sink)

    def process(self, item: Item, sink: SeriesSink) -> None:
        """Store one fall alert (point + lifecycle), tell staff if it is new, then ack it."""
        for msg, _, points in self.decoder.decode([item]):
            assert isinstance(msg, contract.FallAlert)  # the topic check guarantees it
            if not self.dedup.is_new(msg.msg_id):
                self.counters.add(duplicates=1)
                continue
            recv_ms = item[3] // 1_000_000
            if not self.storage.store(points, sink, "alert"):
                return
            new, alert_id = self.state.record_fall(msg, recv_ms, device_update(msg, recv_ms))
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
