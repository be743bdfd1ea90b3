"""Gateway counters, exposed both as ``Gateway.stats()`` and in Prometheus text format.

Counters live in one plain object updated once per batch (cheap on the hot path); a
prometheus_client custom collector reads them at scrape time, so the two views can
never disagree. Latency histograms are prometheus_client ``Histogram``s, each gateway
with its own registry so several gateways in one process (tests, benchmarks) stay apart.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received = 0
        self.stored = 0
        self.duplicates = 0
        self.rejected_by_reason: Counter[str] = Counter()
        self.points_written = 0
        self.points_spooled = 0
        self.spool_write_errors = 0
        self.points_drained = 0
        self.points_refused = 0
        self.fall_alerts = 0
        self.telemetry_points = 0
        self.dead_lettered = 0
        self.batches = 0
        self.escalations = 0
        self.id_conflicts = 0
        self.clock_clamped = 0
        #: points and messages dropped because their resident was erased (gateway/privacy.py)
        self.erased_dropped = 0
        #: latest clock skew seen per (site, device), ms
        self.clock_skew_ms: dict[tuple[str, str], int] = {}

    def add(self, **kw: int) -> None:
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def reject(self, reason: str) -> None:
        with self.lock:
            self.rejected_by_reason[reason] += 1

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())


class Metrics:
    def __init__(self, counters: Counters, gauges: Callable[[], dict[str, float]]) -> None:
        self.counters = counters
        self.registry = CollectorRegistry(auto_describe=True)
        self.write_latency = Histogram(
            "fallwatch_gateway_write_latency_seconds",
            "Series-store write latency per batch",
            ["path"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.ingest_latency = Histogram(
            "fallwatch_gateway_ingest_latency_seconds",
            "Receipt to durable (stored or spooled), per message class",
            ["path"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Collector(counters, gauges))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Collector:
    def __init__(self, c: Counters, gauges: Callable[[], dict[str, float]]) -> None:
        self.c = c
        self.gauges = gauges

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        c = self.c
        simple: dict[str, tuple[str, Any]] = {
            "messages_received": ("MQTT messages received", c.received),
            "messages_stored": ("Messages stored (series store or durable spool)", c.stored),
            "duplicates": ("Messages dropped as duplicates by idempotency key", c.duplicates),
            "points_written": ("Points written to the series store", c.points_written + c.points_drained),
            "points_spooled": ("Points put in the disk spool", c.points_spooled),
            "spool_write_errors": ("Batches the disk spool could not take (disk full, I/O error): retried, "
                                   "left unacknowledged at the broker", c.spool_write_errors),
            "points_refused": ("Points the series store refused for good", c.points_refused),
            "fall_alerts": ("Fall alert messages stored", c.fall_alerts),
            "dead_lettered": ("Rejected messages published to the dead-letter topic", c.dead_lettered),
            "escalations": ("Fall alerts re-announced because nobody acknowledged them", c.escalations),
            "id_conflicts": ("Idempotency keys that arrived again with different content (kept, alarmed)",
                             c.id_conflicts),
            "clock_clamped": ("Messages whose device time was beyond receipt + clock_skew_s (clamped)",
                              c.clock_clamped),
        }
        for name, (doc, value) in simple.items():
            m = CounterMetricFamily(f"fallwatch_gateway_{name}", doc)
            m.add_metric([], value)
            yield m
        rej = CounterMetricFamily(
            "fallwatch_gateway_messages_rejected", "Rejected messages by reason", labels=["reason"]
        )
        with c.lock:
            items = list(c.rejected_by_reason.items())
        for reason, n in items:
            rej.add_metric([reason], n)
        yield rej
        with c.lock:
            skews = list(c.clock_skew_ms.values())
        g = GaugeMetricFamily("fallwatch_gateway_clock_skew_max_seconds",
                              "Largest device clock skew (ahead or behind) among devices heard from")
        g.add_metric([], max((abs(v) for v in skews), default=0) / 1000.0)
        yield g
        for name, value in self.gauges().items():
            g = GaugeMetricFamily(f"fallwatch_gateway_{name}", name.replace("_", " "))
            g.add_metric([], value)
            yield g
