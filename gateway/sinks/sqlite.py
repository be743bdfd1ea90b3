"""The embedded series store (one SQLite file), used when ``influx.url`` is empty (the demo)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any, Literal

import msgspec

from fallwatch.config import InfluxConfig
from fallwatch.gateway.points import SeriesPoint, series_key
from fallwatch.gateway.sinks import SINKS, SeriesSink, SinkError, risk_row
from fallwatch.plugins import PluginConfig


class SqliteSinkConfig(PluginConfig):
    type: Literal["embedded-sqlite"] = "embedded-sqlite"


@SINKS.register(SqliteSinkConfig)
def _make(_: SqliteSinkConfig, cfg: InfluxConfig) -> SeriesSink:
    return SqliteSeriesSink(cfg.embedded_path)


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

    def risk_points(self, since_ms: int, site_id: str | None = None,
                    resident_id: str | None = None) -> list[dict[str, Any]]:
        try:
            with self._lock:
                cur = self._db.execute("SELECT series, fields, ts_ms FROM points WHERE measurement = 'risk' "
                                       "AND ts_ms >= ? ORDER BY ts_ms", (since_ms,))
                rows = [risk_row(msgspec.json.decode(s), msgspec.json.decode(f), ts) for s, f, ts in cur]
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # nothing written yet
                return []
            raise SinkError(f"embedded store: {exc}", retryable=True) from None
        return [r for r in rows if (site_id is None or r["site_id"] == site_id)
                and (resident_id is None or r["resident_id"] == resident_id)]

    def close(self) -> None:
        with self._lock:
            self._db.close()
