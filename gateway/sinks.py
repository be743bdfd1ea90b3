"""Series stores the gateway writes to, behind one small interface.

``write(points)`` either makes the points durable in the store or raises
:class:`SinkError`; ``retryable`` tells the caller whether to spool and try again
(store down, slow, 5xx) or to give up on this batch (the store refused the data, e.g. a
field-type conflict, which retrying would never fix). Writes are synchronous
micro-batches on purpose: influxdb-client's background batching retries in memory,
and the gateway acknowledges MQTT only after a write returned, so nothing may be held
anywhere a crash could lose it.

* :class:`Influx1Sink` — InfluxDB 1.x HTTP ``/write`` + ``/query`` (Debian's 1.6).
* :class:`InfluxClientSink` — InfluxDB 2.x/3.x through influxdb-client (bucket ``db/rp``).
* :class:`SqliteSeriesSink` — the embedded local store used when ``influx.url`` is empty.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any, Protocol

import msgspec
import requests

from fallwatch.config import InfluxConfig
from fallwatch.gateway.points import SeriesPoint, influx_point, series_key, to_line


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


class Influx1Sink:
    """InfluxDB 1.x over its HTTP API; line protocol from influxdb-client's serializer."""

    name = "influxdb-v1"

    def __init__(self, cfg: InfluxConfig) -> None:
        self.cfg = cfg
        self.base = cfg.url.rstrip("/")
        self.session = requests.Session()
        if cfg.username:
            self.session.auth = (cfg.username, cfg.password or "")
        self._params = {"db": cfg.database, "precision": "ms"}
        if cfg.retention_policy != "autogen":
            self._params["rp"] = cfg.retention_policy

    def query(self, q: str, *, db: bool = True) -> list[dict[str, Any]]:
        params = {"q": q, "epoch": "ms"}
        if db:
            params["db"] = self.cfg.database
        try:
            r = self.session.post(f"{self.base}/query", params=params, timeout=self.cfg.timeout_s)
        except requests.RequestException as exc:
            raise SinkError(f"query failed: {exc}", retryable=True) from None
        if r.status_code >= 300:
            raise SinkError(f"query HTTP {r.status_code}: {r.text[:300]}", retryable=r.status_code >= 500)
        res = r.json()["results"][0]
        if "error" in res:
            raise SinkError(f"query error: {res['error']}", retryable=False)
        return list(res.get("series", []))

    def setup(self) -> None:
        """Create the database and (if not autogen) a 30-day raw retention policy."""
        self.query(f'CREATE DATABASE "{self.cfg.database}"', db=False)
        rp = self.cfg.retention_policy
        if rp != "autogen":
            existing = self.query(f'SHOW RETENTION POLICIES ON "{self.cfg.database}"', db=False)
            names = {row[0] for s in existing for row in s.get("values", [])}
            if rp not in names:
                self.query(
                    f'CREATE RETENTION POLICY "{rp}" ON "{self.cfg.database}" DURATION 30d REPLICATION 1',
                    db=False,
                )

    def write(self, points: list[SeriesPoint]) -> None:
        if not points:
            return
        body = "\n".join(line for line in map(to_line, points) if line).encode()
        try:
            r = self.session.post(f"{self.base}/write", params=self._params, data=body, timeout=self.cfg.timeout_s)
        except requests.RequestException as exc:
            raise SinkError(f"write failed: {type(exc).__name__}: {exc}", retryable=True) from None
        if r.status_code == 204:
            return
        retryable = r.status_code >= 500 or r.status_code in (404, 408, 429)  # 404: database not yet there
        raise SinkError(f"write HTTP {r.status_code}: {r.text[:300]}", retryable=retryable)

    def count(self, measurement: str) -> int:
        series = self.query(f'SELECT count(*) FROM "{measurement}"')
        best = 0
        for s in series:
            for row in s.get("values", []):
                best = max(best, *(int(v) for v in row[1:] if isinstance(v, int | float)))
        return best

    def close(self) -> None:
        self.session.close()


class InfluxClientSink:
    """InfluxDB 2.x / 3.x via influxdb-client, synchronous writes to bucket ``db/rp``."""

    def __init__(self, cfg: InfluxConfig) -> None:
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.cfg = cfg
        self.name = f"influxdb-v{cfg.version}"
        token = cfg.token or (f"{cfg.username}:{cfg.password or ''}" if cfg.username else None)
        self.client = InfluxDBClient(url=cfg.url, token=token, org=cfg.org, timeout=int(cfg.timeout_s * 1000))
        self.api = self.client.write_api(write_options=SYNCHRONOUS)

    def setup(self) -> None:
        """Buckets are provisioned by the operator (docs/storage.md); nothing to create here."""

    def write(self, points: list[SeriesPoint]) -> None:
        if not points:
            return
        from influxdb_client.rest import ApiException
        from urllib3.exceptions import HTTPError

        try:
            self.api.write(bucket=self.cfg.bucket, org=self.cfg.org, record=[influx_point(p) for p in points])
        except ApiException as exc:
            status = int(exc.status or 0)
            raise SinkError(
                f"write HTTP {status}: {exc.reason}", retryable=status >= 500 or status in (0, 404, 408, 429)
            ) from None
        except (HTTPError, OSError) as exc:
            raise SinkError(f"write failed: {exc}", retryable=True) from None

    def count(self, measurement: str) -> int:
        tables = self.client.query_api().query(
            f'from(bucket: "{self.cfg.bucket}") |> range(start: 0) '
            f'|> filter(fn: (r) => r._measurement == "{measurement}") |> group() |> count()',
            org=self.cfg.org,
        )
        return max((int(r.get_value()) for t in tables for r in t.records), default=0)

    def close(self) -> None:
        self.client.close()


class SqliteSeriesSink:
    """The embedded store: one SQLite table with InfluxDB's overwrite semantics.

    The primary key (measurement, series, time) makes a duplicate write replace the
    earlier one, like a point with the same series and timestamp does in InfluxDB.
    """

    name = "embedded-sqlite"
    _lock = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:  # several writer threads open it at once; switching to WAL must not race
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
        self._enc = msgspec.json.Encoder()

    def setup(self) -> None:
        with self._lock, self._db:
            self._db.execute("""CREATE TABLE IF NOT EXISTS points (
                measurement TEXT NOT NULL, series TEXT NOT NULL, ts_ms INTEGER NOT NULL,
                fields TEXT NOT NULL, PRIMARY KEY (measurement, series, ts_ms)) WITHOUT ROWID""")

    def write(self, points: list[SeriesPoint]) -> None:
        rows = [(m, series_key(t), ts, self._enc.encode(f).decode()) for m, t, f, ts in points]
        try:
            with self._lock, self._db:
                self._db.executemany("INSERT OR REPLACE INTO points VALUES (?, ?, ?, ?)", rows)
        except sqlite3.Error as exc:
            raise SinkError(f"embedded store: {exc}", retryable=True) from None

    def count(self, measurement: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT count(*) FROM points WHERE measurement = ?", (measurement,)).fetchone()
        return int(row[0])

    def rows(self, measurement: str) -> list[tuple[dict[str, str], dict[str, Any], int]]:
        """(tags, fields, ts_ms) of every point of a measurement, in time order (tests, tools)."""
        with self._lock:
            cur = self._db.execute(
                "SELECT series, fields, ts_ms FROM points WHERE measurement = ? ORDER BY ts_ms",
                (measurement,),
            )
            return [(msgspec.json.decode(s), msgspec.json.decode(f), ts) for s, f, ts in cur]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def make_sink(cfg: InfluxConfig) -> SeriesSink:
    """The sink for a config: empty url → embedded SQLite, version 1 → HTTP API, else client."""
    if not cfg.url:
        return SqliteSeriesSink(cfg.embedded_path)
    if cfg.version == 1:
        return Influx1Sink(cfg)
    return InfluxClientSink(cfg)
