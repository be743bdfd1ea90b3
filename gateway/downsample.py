"""Downsample raw series into a long-retention policy with plain InfluxQL (InfluxDB 1.x).

Continuous queries exist only on 1.x, tasks only on 2.x, neither on 3.x; a job that runs
``SELECT mean(*), max(*) INTO … GROUP BY time(…), *`` through ``/query`` is the portable
part, and re-running it over an overlapping window rewrites the same buckets (same series,
same bucket timestamps), so a timer can run it every few minutes over the last hours
without double counting. Run it with ``fallwatch gateway downsample``.
"""

from __future__ import annotations

import re

from fallwatch.config import InfluxConfig
from fallwatch.gateway.sinks import SinkError
from fallwatch.gateway.sinks.influx1 import Influx1Sink

#: measurements whose raw points are aggregated (events — falls, risk — are kept as they are)
DOWNSAMPLED = ("telemetry", "health", "sensor_health")
_DURATION = re.compile(r"^\d+(ms|s|m|h|d|w)$")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def downsample(
    cfg: InfluxConfig, *, every: str = "5m", since: str = "2h", into: str = "agg_1y", keep: str = "400d"
) -> dict[str, int]:
    """Aggregate the last ``since`` of raw points into ``into``; returns points written per measurement."""
    if cfg.version != 1 or not cfg.url:
        raise SinkError(
            "downsample runs on InfluxDB 1.x (use a task on 2.x, a scheduled query on 3.x)", retryable=False
        )
    for value in (every, since, keep):
        if not _DURATION.match(value):
            raise ValueError(f"not an InfluxQL duration: {value!r}")
    if not _NAME.match(into):
        raise ValueError(f"bad retention policy name {into!r}")
    sink = Influx1Sink(cfg)
    try:
        sink.setup()
        db, src = cfg.database, cfg.retention_policy
        rps = sink.query(f'SHOW RETENTION POLICIES ON "{db}"', db=False)
        if into not in {row[0] for s in rps for row in s.get("values", [])}:
            sink.query(f'CREATE RETENTION POLICY "{into}" ON "{db}" DURATION {keep} REPLICATION 1', db=False)
        written: dict[str, int] = {}
        for m in DOWNSAMPLED:
            res = sink.query(
                f'SELECT mean(*), max(*) INTO "{db}"."{into}".:MEASUREMENT FROM "{db}"."{src}"."{m}" '
                f"WHERE time > now() - {since} GROUP BY time({every}), *"
            )
            written[m] = sum(int(r[1]) for s in res for r in s.get("values", []))
        return written
    finally:
        sink.close()
