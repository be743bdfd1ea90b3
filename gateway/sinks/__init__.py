"""Series stores the gateway writes to: one small interface, one file per store.

``write(points)`` either makes the points durable in the store or raises
:class:`SinkError`; ``retryable`` tells the caller whether to spool and try again
(store down, slow, 5xx) or to give up on this batch (the store refused the data, e.g. a
field-type conflict, which retrying would never fix). Writes are synchronous
micro-batches on purpose: influxdb-client's background batching retries in memory,
and the gateway acknowledges MQTT only after a write returned, so nothing may be held
anywhere a crash could lose it.

Stores register in :data:`SINKS` keyed by ``influx.type``; when the config leaves it out
it is derived as before (empty ``url`` → ``embedded-sqlite``, ``version = 1`` →
``influxdb-v1``, 2 or 3 → ``influxdb-client``), so existing configs and the
``--influx-url`` / ``--influx-version`` flags work unchanged. A store's settings are the
``[influx]`` table; its plug-in config class only names the type. Adding a store is one
new module in this package that registers itself:

* ``influx1.py`` — InfluxDB 1.x HTTP ``/write`` + ``/query`` (Debian's 1.6);
* ``influx_client.py`` — InfluxDB 2.x/3.x through influxdb-client (bucket ``db/rp``);
* ``sqlite.py`` — the embedded local store.

Besides writing, a store answers the one question the staff console asks of it:
``risk_points(since_ms, site_id, resident_id)``, the daily fall-risk scores hubs published
(oldest first, as :func:`risk_row` dicts), for a resident's trend and the planning list.
"""

from __future__ import annotations

from typing import Any, Protocol

from fallwatch.config import InfluxConfig
from fallwatch.gateway.points import SeriesPoint
from fallwatch.plugins import Registry


class SinkError(RuntimeError):
    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class SeriesSink(Protocol):
    name: str

    def setup(self) -> None: ...
    def write(self, points: list[SeriesPoint]) -> None: ...
    def count(self, measurement: str) -> int: ...
    def risk_points(self, since_ms: int, site_id: str | None = None,
                    resident_id: str | None = None) -> list[dict[str, Any]]: ...
    def close(self) -> None: ...


def risk_row(tags: dict[str, Any], fields: dict[str, Any], ts_ms: int) -> dict[str, Any]:
    """One stored risk point as the console reads it (whatever store it came from): who, when,
    the score, and the factors' contributions (``contrib_<factor>`` fields, see gateway/points.py)."""
    return {"site_id": tags.get("site_id"), "device_id": tags.get("device_id"), "level": tags.get("level"),
            "resident_id": fields.get("resident_id"), "ts_ms": int(ts_ms), "day": fields.get("day"),
            "score": float(fields["score"]),
            "factors": {k[8:]: float(v) for k, v in fields.items() if k.startswith("contrib_") and v is not None}}


#: ``factory(plugin_cfg, influx_cfg) -> SeriesSink``, keyed by ``influx.type``
SINKS = Registry[SeriesSink]("series store", discover="fallwatch.gateway.sinks")


def sink_type(cfg: InfluxConfig) -> str:
    """``influx.type``, or the type the older settings imply when it is not given."""
    if cfg.type:
        return cfg.type
    if not cfg.url:
        return "embedded-sqlite"
    return "influxdb-v1" if cfg.version == 1 else "influxdb-client"


def make_sink(cfg: InfluxConfig) -> SeriesSink:
    """A new connection to the series store ``cfg`` describes (one per thread)."""
    return SINKS.create({"type": sink_type(cfg)}, cfg)
