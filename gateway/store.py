"""Store/spool: make points durable in the series store, or in the disk spool when it is down.

One :class:`Storage` per gateway. Each worker thread writes through its own sink
(:meth:`Storage.new_sink`), because sinks hold connections that are not shared across
threads. While the spool holds anything, new points go to the spool too, so they reach
the store in arrival order; the **drainer** (:meth:`Storage.drain_loop`) empties it,
oldest batch first, once the store takes writes again.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable

from fallwatch.config import InfluxConfig
from fallwatch.gateway.metrics import Counters, Metrics
from fallwatch.gateway.points import SeriesPoint
from fallwatch.gateway.sinks import SeriesSink, SinkError, make_sink
from fallwatch.gateway.spool import Spool

log = logging.getLogger("fallwatch.gateway")


class Storage:
    def __init__(self, influx: InfluxConfig, spool: Spool, counters: Counters, metrics: Metrics,
                 stop: threading.Event) -> None:
        self.influx = influx
        self.spool = spool
        self.counters = counters
        self.metrics = metrics
        self.stop = stop
        #: the store answered (set up, spool empty): write directly; False = spool
        self.ready = False
        self._sinks: list[SeriesSink] = []
        #: drops the points of erased residents (gateway/privacy.py), before the store and the
        #: spool and again when the spool drains: a spooled batch never brings them back
        self.erased: Callable[[list[SeriesPoint]], list[SeriesPoint]] | None = None
        #: wakes the drainer: points spooled, or stopping (it sleeps while there is nothing to drain)
        self._wake = threading.Event()

    def wake(self) -> None:
        """Wake the drainer now (points were spooled, or the gateway is stopping)."""
        self._wake.set()

    def new_sink(self) -> SeriesSink:
        """A sink for one worker thread (closed by :meth:`close`)."""
        sink = make_sink(self.influx)
        self._sinks.append(sink)
        return sink

    def store(self, points: list[SeriesPoint], sink: SeriesSink, path: str) -> list[SeriesPoint] | None:
        """Make points durable: the store if it takes them, else the disk spool.

        Returns the points the store refused for good (a field-type conflict, a value it
        cannot parse), found by splitting the write, so the caller can reject the messages
        that carried them as their senders'; every other point of the batch is stored.
        Returns None only when stopping with a full spool; the caller then leaves the
        messages unacknowledged so the broker delivers them again.
        """
        if self.erased is not None:
            points = self.erased(points)
        if not points:
            return []
        while self.spool.full:
            if self.stop.wait(0.2):
                return None
        if self.spool.depth == 0 and self.ready:
            t0 = time.perf_counter()
            try:
                refused = self.write_split(points, sink)
            except SinkError as exc:
                log.warning("series store unavailable (%s); spooling to disk", exc)
                self.ready = False
                self._wake.set()
            else:
                self.metrics.write_latency.labels(path).observe(time.perf_counter() - t0)
                self.counters.add(points_written=len(points) - len(refused))
                return refused
        try:
            self.spool.append(points)
        except sqlite3.Error as exc:
            # the spool's disk is full (or failing) before the spool's own bound: nothing of this
            # batch is acknowledged, the worker retries it (transient) and the broker keeps it
            self.counters.add(spool_write_errors=1)
            log.error("SPOOL WRITE FAILED at %s (%s): %d points not stored, their messages stay "
                      "unacknowledged at the broker and are retried", self.spool.path, exc, len(points))
            raise
        self.counters.add(points_spooled=len(points))
        self._wake.set()
        return []

    def write_split(self, points: list[SeriesPoint], sink: SeriesSink) -> list[SeriesPoint]:
        """Write ``points``; when the store refuses them for good, write halves until the refused
        points are found, and return those (counted). A retryable error propagates.

        InfluxDB 1.x already keeps the good points of a partial write; rewriting them lands on
        the same series and time, so the split costs a few writes and changes nothing stored.
        """
        try:
            sink.write(points)
            return []
        except SinkError as exc:
            if exc.retryable:
                raise
            if len(points) == 1:
                self.counters.add(points_refused=1)
                log.error("series store refused a %s point for good (%s)", points[0][0], str(exc)[:300])
                return points
        mid = len(points) // 2
        return self.write_split(points[:mid], sink) + self.write_split(points[mid:], sink)

    def drain_loop(self) -> None:
        """Worker: set the store up, then empty the spool into it whenever it has points."""
        sink = self.new_sink()
        backoff = 0.5
        while not self.stop.is_set():
            if not self.ready:
                try:
                    sink.setup()
                except SinkError as exc:
                    log.warning("series store not ready (%s); retrying in %.1f s", exc, backoff)
                    self.stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                if self.spool.depth == 0:
                    self.ready = True
                    backoff = 0.5
            if self.spool.depth == 0:
                self.ready = True
                # nothing to drain: sleep until something is spooled (or a stop) instead of looking
                # 20 times a second (~2 ms of CPU a second, 10 µs a message at 200 msg/s, issue 16);
                # the depth is looked at again after the clear, so a wake-up is never missed
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            failed = False
            for batch_id, points in self.spool.oldest(8):
                t0 = time.perf_counter()
                try:
                    # spooled points were acknowledged long ago: a refused one can only be counted
                    # and logged (write_split), the others of its batch are still written
                    refused = self.write_split(self.erased(points) if self.erased else points, sink)
                except SinkError as exc:
                    failed = True
                    log.warning(
                        "spool drain: store still unavailable (%s); %d points waiting",
                        exc,
                        self.spool.depth,
                    )
                    break
                self.metrics.write_latency.labels("drain").observe(time.perf_counter() - t0)
                self.counters.add(points_drained=len(points) - len(refused))
                self.spool.remove([batch_id])
            if failed:
                self.ready = False
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            else:
                backoff = 0.5
                if self.spool.depth == 0:
                    log.info("spool drained; writing directly again")

    def count_points(self, measurement: str) -> int:
        """Points of a measurement read back from the series store (a fresh connection)."""
        sink = make_sink(self.influx)
        try:
            return sink.count(measurement)
        finally:
            sink.close()

    def close(self) -> None:
        for s in self._sinks:
            s.close()
        self.spool.close()
