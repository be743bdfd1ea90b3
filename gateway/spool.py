"""A durable, ordered, size-bounded disk spool for points the series store could not take.

SQLite in WAL mode with ``synchronous=FULL``: an append has returned only once the
batch is on disk, which is what lets the gateway acknowledge the MQTT messages behind it
while InfluxDB is down. Batches keep their arrival order (an autoincrement key) and
are deleted only after the store accepted them, so a crash while draining re-sends a
batch at worst, and InfluxDB's same-series-same-timestamp overwrite makes that harmless.

The bound is on the bytes of spooled batches. Past ``warn_fraction`` of it the spool
logs a warning (at most every 10 s); at the bound ``full`` turns true and the gateway
stops taking new messages, which leaves them queued — unacknowledged — at the broker
instead of dropping anything.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import msgspec

from fallwatch.gateway.points import SeriesPoint

log = logging.getLogger("fallwatch.gateway.spool")


class Spool:
    def __init__(self, directory: Path, max_bytes: int, warn_fraction: float = 0.8) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "spool.sqlite"
        self.max_bytes = max_bytes
        self.warn_fraction = warn_fraction
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("""CREATE TABLE IF NOT EXISTS batches (
            id INTEGER PRIMARY KEY AUTOINCREMENT, n INTEGER NOT NULL, nbytes INTEGER NOT NULL,
            created_ms INTEGER NOT NULL, body BLOB NOT NULL)""")
        row = self._db.execute("SELECT count(*), coalesce(sum(n), 0), coalesce(sum(nbytes), 0) FROM batches").fetchone()
        self._batches, self._points, self._bytes = int(row[0]), int(row[1]), int(row[2])
        self._enc = msgspec.msgpack.Encoder()
        self._dec = msgspec.msgpack.Decoder(list[tuple[str, dict[str, str], dict[str, bool | int | float | str], int]])
        self._last_warn = 0.0
        self._last_level = 0
        if self._points:
            log.warning("spool %s holds %d points from before the restart; draining", self.path, self._points)

    # ------------------------------------------------------------------ state
    @property
    def depth(self) -> int:
        """Points waiting in the spool."""
        return self._points

    @property
    def nbytes(self) -> int:
        return self._bytes

    @property
    def full(self) -> bool:
        return self._bytes >= self.max_bytes

    # ------------------------------------------------------------------ ops
    def append(self, points: list[SeriesPoint]) -> None:
        """Durably add one batch at the end (returns once it is on disk)."""
        if not points:
            return
        body = self._enc.encode(points)
        with self._lock:
            self._db.execute(
                "INSERT INTO batches (n, nbytes, created_ms, body) VALUES (?, ?, ?, ?)",
                (len(points), len(body), time.time_ns() // 1_000_000, body),
            )
            self._batches += 1
            self._points += len(points)
            self._bytes += len(body)
        self._check_bound()

    def oldest(self, max_batches: int = 8) -> list[tuple[int, list[SeriesPoint]]]:
        with self._lock:
            rows = self._db.execute("SELECT id, body FROM batches ORDER BY id LIMIT ?", (max_batches,)).fetchall()
        return [(int(i), [tuple(p) for p in self._dec.decode(b)]) for i, b in rows]  # type: ignore[misc]  # msgspec gives lists; the spool wrote SeriesPoint tuples

    def remove(self, ids: list[int]) -> None:
        """Forget batches the store has accepted (or that it refused for good)."""
        if not ids:
            return
        with self._lock:
            marks = ",".join("?" * len(ids))
            row = self._db.execute(
                f"SELECT count(*), coalesce(sum(n), 0), coalesce(sum(nbytes), 0) FROM batches WHERE id IN ({marks})",
                ids,
            ).fetchone()
            self._db.execute(f"DELETE FROM batches WHERE id IN ({marks})", ids)
            self._batches -= int(row[0])
            self._points -= int(row[1])
            self._bytes -= int(row[2])
            if self._batches == 0:
                self._points = self._bytes = 0
        self._check_bound()

    def _check_bound(self) -> None:
        """Log on entering the warning band or the full state, then at most every 10 s."""
        frac = self._bytes / self.max_bytes
        level = 2 if frac >= 1.0 else 1 if frac >= self.warn_fraction else 0
        now = time.monotonic()
        if level and (level > self._last_level or now - self._last_warn > 10.0):
            self._last_warn = now
            if level == 2:
                log.error(
                    "SPOOL FULL: %.2f MB of %.2f MB at %s; the gateway has stopped taking messages "
                    "(they stay queued at the broker) until the series store accepts writes again",
                    self._bytes / 1e6,
                    self.max_bytes / 1e6,
                    self.path,
                )
            else:
                log.warning(
                    "spool at %.0f%% of its %.2f MB bound (%d points waiting) at %s: "
                    "the series store is not keeping up",
                    frac * 100,
                    self.max_bytes / 1e6,
                    self._points,
                    self.path,
                )
        self._last_level = level

    def close(self) -> None:
        with self._lock:
            self._db.close()
