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
"""

from __future__ import annotations

from typing import Protocol

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
    def close(self) -> None: ...


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
