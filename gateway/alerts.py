"""Alerts: fall alerts on their own worker, and escalation of the unacknowledged ones.

A fall alert never waits behind a telemetry batch nor behind the series store: its own
link, queue and worker record the alert's lifecycle in the state DB (``raised``, or
``cancelled`` for a pre-alarm the wearer stopped) together with its series points, in one
transaction (the ``alert_points`` outbox), then tell staff and acknowledge it. The series
write follows on its own worker (:meth:`FallAlerts.points_loop`), straight to the store,
never through the telemetry spool: with InfluxDB down and the spool full an alert is still
recorded and notified at once, and ``alert_points_pending`` shows the delayed write. A
point written twice (a crash between the write and the delete) is the same series and
timestamp, which InfluxDB overwrites, so it lands exactly once. Escalation
re-announces a fall alert nobody acknowledged within ``escalate_after_s``, and again every
``escalate_after_s`` until someone does (social-alarm practice: an alarm is repeated
until the receiving side confirms it).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec

from fallwatch.gateway.channels import Action, AlertEvent, Notifier
from fallwatch.gateway.decode import Decoder, device_update
from fallwatch.gateway.dedup import Deduplicator
from fallwatch.gateway.ingest import InFlight, LatencyProbe
from fallwatch.gateway.links import Item, ItemQueue
from fallwatch.gateway.metrics import Counters, Metrics
from fallwatch.gateway.points import SeriesPoint
from fallwatch.gateway.sinks import SeriesSink, SinkError
from fallwatch.gateway.state import StateStore
from fallwatch.gateway.store import Storage
from fallwatch.gateway.workers import Workers, run_batch
from fallwatch.protocol import contract, topics

log = logging.getLogger("fallwatch.gateway")
_points_decoder = msgspec.json.Decoder(list[tuple[str, dict[str, str], dict[str, bool | int | float | str], int]])


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
        #: fall-alert points recorded and not yet in the series store (visible delay)
        self.points_pending = 0
        self._points_wake = threading.Event()
        #: says whether a message is about an erased resident (gateway/privacy.py)
        self.erased: Callable[[contract.Message], bool] | None = None

    def load(self) -> None:
        """At start: the alert points a previous run left for the series store."""
        self.points_pending = self.state.count_alert_points()
        if self.points_pending:
            log.warning("%d fall-alert points from before the restart still to write", self.points_pending)
            self._points_wake.set()

    def loop(self) -> None:
        """Worker: one fall alert at a time off the alert queue."""
        while True:
            try:
                item = self.q.get(timeout=0.2)
            except queue.Empty:
                if self.stop.is_set():
                    return
                continue
            run_batch(self.stop, self.workers, "alerts", lambda items: self.process(items[0]), [item],
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

    def process(self, item: Item) -> None:
        """Record one fall alert (lifecycle + queued points), tell staff if it is new, then ack it."""
        decoded = self.decoder.decode([item])
        if not decoded:
            self.unreadable(item, "it broke the contract (see the dead letter)")
        for msg, _, points in decoded:
            assert isinstance(msg, contract.FallAlert)  # the topic check guarantees it
            digest = self.dedup.check(msg)
            if digest is None:
                self.counters.add(duplicates=1)
                continue
            if self.erased is not None and self.erased(msg):  # a late copy of an erased resident's alert
                log.info("fall alert %s is about an erased resident: dropped", msg.msg_id)
                self.counters.add(erased_dropped=1)
                continue
            recv_ms = item[3] // 1_000_000
            series = msgspec.json.encode(points).decode() if points else None
            new, alert_id = self.state.record_fall(msg, recv_ms, device_update(msg, recv_ms, item[4]), digest,
                                                   series)
            if series is not None:
                with self.counters.lock:
                    self.points_pending += 1
                self._points_wake.set()
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

    def points_loop(self) -> None:
        """Worker: write queued fall-alert points to the series store, oldest first, and forget
        each once the store took it; while the store is down, back off and keep them."""
        sink = self.storage.new_sink()
        ready, backoff = False, 0.5
        while not self.stop.is_set():
            self._points_wake.wait(0.5)
            self._points_wake.clear()
            rows = self.state.alert_points(100)
            if not rows:
                continue
            try:
                if not ready:
                    sink.setup()
                    ready = True
                self._write_points(sink, rows)
                backoff = 0.5
            except SinkError as exc:
                ready = False
                log.warning("series store unavailable for %d fall-alert points (%s); retrying in %.1f s "
                            "(the alerts themselves are recorded and notified)", self.points_pending, exc, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                self._points_wake.set()
                continue
            if len(rows) == 100:
                self._points_wake.set()

    def _write_points(self, sink: SeriesSink, rows: list[tuple[int, str]]) -> None:
        """The points of all ``rows`` in one write and their rows dropped in one transaction
        (issue 16: one write and one delete per alert were most of an alert's cost). A point the
        store refuses for good is found by splitting the write and costs only itself (the alert
        is recorded and was told to staff; only its series point is refused): one
        ``store_refused`` per alert whose points were refused, as before."""
        points: list[SeriesPoint] = []
        owner: dict[int, int] = {}  # id(point) -> row id
        for row_id, body in rows:
            for p in _points_decoder.decode(body):
                pt: SeriesPoint = tuple(p)  # type: ignore[assignment]  # msgspec gives lists; the worker encoded SeriesPoint tuples
                owner[id(pt)] = row_id
                points.append(pt)
        if self.storage.erased is not None:
            points = self.storage.erased(points)  # an erased resident's late copies (docs/privacy.md)
        t0 = time.perf_counter()
        refused = self.storage.write_split(points, sink)  # a retryable error propagates: rows kept
        for _ in {owner[id(p)] for p in refused}:
            self.counters.reject("store_refused")
        self.metrics.write_latency.labels("alert").observe(time.perf_counter() - t0)
        self.counters.add(points_written=len(points) - len(refused))
        self.state.drop_alert_points([row_id for row_id, _ in rows])
        with self.counters.lock:
            self.points_pending = max(0, self.points_pending - len(rows))


def fall_event(msg: contract.FallAlert, alert_id: str, action: Action, at_ms: int) -> AlertEvent:
    """The staff event for a fall alert message just recorded."""
    d = msg.data
    return AlertEvent(
        kind="fall", action=action, alert_id=alert_id, site_id=msg.site_id, device_id=msg.device_id, at_ms=at_ms,
        actor="device", resident_id=msg.resident_id, sensor=d.sensor, room=d.room, confidence=d.confidence,
        peak_g=d.peak_g, lying_s=d.lying_s, reasons=tuple(r.code for r in d.reasons), raised_ms=at_ms,
    )
