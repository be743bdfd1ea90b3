"""Durable store-and-forward outbox: every uplink message is written here before it is sent.

Why SQLite in WAL mode with ``synchronous=FULL``: a hub loses power (unplugged, a
flat battery after the 72 h back-up) and restarts; a fall alert accepted by the agent
must still reach the gateway afterwards. A row is committed (fsynced) before the
publisher may send it and is deleted only when the broker's PUBACK for it arrives, so a
crash or SIGKILL at any point loses nothing (it may re-send, which the gateway drops by
``msg_id``).

The sequence number is allocated in the same transaction that inserts the row, so
``seq`` is strictly increasing across restarts and never reused. A fresh outbox (a
re-imaged or replaced hub, a wiped SD card) starts again at seq 1, so the outbox also
creates an ``install_id`` once, at random, and keeps it: ``msg_id`` =
``device:install_id:seq`` is unique for the life of the device *and* across
installations, where ``device:seq`` alone made the gateway drop a re-imaged hub's new
falls as duplicates of the old installation's.

A fall decision still inside its cancel window is a row of ``pending``
(:meth:`Outbox.save_pending`) from the moment it is decided; the transaction that appends
its FallAlert deletes that row (``append_many(..., done_pending=...)``), so after a crash
a decision is either still pending (and resumed) or in the outbox (and sent), never both
and never neither.

Telemetry may be thinned under backpressure (:meth:`Outbox.thin`), alerts never. A
telemetry row the broker refuses (an ACL gap) is moved aside (:meth:`Outbox.reject`);
every other row stays and is retried by the publisher (:data:`THINNABLE` decides).
"""

from __future__ import annotations

import base64
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

#: Kinds that :meth:`Outbox.thin` may drop under backpressure; everything else is kept.
THINNABLE = frozenset({"tele"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_kind_seq ON outbox (kind, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pending (
    key TEXT PRIMARY KEY, body TEXT NOT NULL, due_ms INTEGER NOT NULL, created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    seq INTEGER PRIMARY KEY, kind TEXT, topic TEXT, payload BLOB, reason TEXT, at_ms INTEGER
);
"""


@dataclass(frozen=True, slots=True)
class Row:
    seq: int
    kind: str
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(frozen=True, slots=True)
class Pending:
    """One message to enqueue; ``build(seq)`` makes the payload once the seq is known
    (the envelope carries ``seq`` and ``msg_id``, so it cannot be built earlier)."""

    kind: str
    topic: str
    build: Callable[[int], bytes]
    qos: int = 1
    retain: bool = False


class Outbox:
    """Thread-safe durable FIFO of outgoing MQTT messages, keyed by a persisted seq."""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL", bump_boot: bool = True) -> None:
        """``bump_boot``: this open is a new boot of the agent (False for inspection tools)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SCHEMA)
        self.thinned = 0
        self.rejected = 0
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key='boot_id'").fetchone()
            self.boot_id = (row[0] if row else 0) + (1 if bump_boot else 0)
            if bump_boot:
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('boot_id', ?)", (self.boot_id,))
            self._next = self._load_next_seq()
            row = self._db.execute("SELECT value FROM kv WHERE key='install_id'").fetchone()
            if row is None:
                # 12 base-32 characters (60 bits): no two installations of a fleet will share one
                new_id = base64.b32encode(secrets.token_bytes(10)).decode().lower()[:12]
                self._db.execute("INSERT OR IGNORE INTO kv VALUES ('install_id', ?)", (new_id,))
                row = self._db.execute("SELECT value FROM kv WHERE key='install_id'").fetchone()
            #: created once per outbox and kept: part of every ``msg_id`` (see the module doc)
            self.install_id: str = str(row[0])

    def _load_next_seq(self) -> int:
        stored = self._db.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
        top = self._db.execute("SELECT MAX(seq) FROM outbox").fetchone()[0]
        return max(stored[0] if stored else 1, (top or 0) + 1)

    # ------------------------------------------------------------------ writing

    def append(
        self, kind: str, topic: str, build: Callable[[int], bytes], *, qos: int = 1, retain: bool = False
    ) -> int:
        """Persist one message; returns its seq once it is on disk."""
        return self.append_many([Pending(kind, topic, build, qos, retain)])[0]

    def append_many(self, items: Iterable[Pending], done_pending: Iterable[str] = ()) -> list[int]:
        """Persist several messages in one transaction (one fsync), in order; the ``pending``
        decisions named in ``done_pending`` are deleted in the same transaction."""
        items = list(items)
        done = [(k,) for k in done_pending]
        if not items:
            if done:
                self.drop_pending([k for (k,) in done])
            return []
        now = int(time.time() * 1000)
        with self._lock:
            seq0 = self._next
            rows = [
                (seq0 + i, p.kind, p.topic, p.build(seq0 + i), p.qos, int(p.retain), now)
                for i, p in enumerate(items)
            ]
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT INTO outbox VALUES (?,?,?,?,?,?,?)", rows)
                if done:
                    self._db.executemany("DELETE FROM pending WHERE key = ?", done)
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('next_seq', ?)", (seq0 + len(rows),))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._next = seq0 + len(rows)
        return [r[0] for r in rows]

    def save_pending(self, key: str, body: str, due_ms: int) -> None:
        """Persist a decision that is not a message yet (a fall inside its cancel window)."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?)",
                             (key, body, due_ms, int(time.time() * 1000)))

    def drop_pending(self, keys: Iterable[str]) -> None:
        ids = [(k,) for k in keys]
        if ids:
            with self._lock:
                self._db.executemany("DELETE FROM pending WHERE key = ?", ids)

    def pending_decisions(self) -> list[tuple[str, str, int]]:
        """``(key, body, due_ms)`` of the decisions persisted and not yet sent, oldest due first."""
        with self._lock:
            return [(str(k), str(b), int(d)) for k, b, d in
                    self._db.execute("SELECT key, body, due_ms FROM pending ORDER BY due_ms, key")]

    def reserve(self) -> int:
        """Allocate a seq without a row (the last will: the broker, not the outbox, sends it)."""
        with self._lock:
            seq = self._next
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('next_seq', ?)", (seq + 1,))
            self._next = seq + 1
        return seq

    # ------------------------------------------------------------------ reading / acking

    def peek(self, after_seq: int = 0, limit: int = 100, lane: str | None = None) -> list[Row]:
        """The oldest rows with seq > ``after_seq``, in seq order; ``lane`` "prio" = alerts,
        state, health, risk, replies; "bulk" = telemetry; None = all."""
        where = ""
        if lane is not None:
            kinds = ",".join(f"'{k}'" for k in sorted(THINNABLE))
            where = f" AND kind {'NOT IN' if lane == 'prio' else 'IN'} ({kinds})"
        with self._lock:
            cur = self._db.execute(
                "SELECT seq, kind, topic, payload, qos, retain FROM outbox"
                f" WHERE seq > ?{where} ORDER BY seq LIMIT ?",
                (after_seq, limit),
            )
            return [Row(s, k, t, bytes(p), q, bool(r)) for s, k, t, p, q, r in cur]

    def ack(self, seqs: Iterable[int]) -> int:
        """Delete rows the broker acknowledged."""
        ids = [(s,) for s in seqs]
        if not ids:
            return 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", ids)
            self._db.execute("COMMIT")
        return len(ids)

    def row(self, seq: int) -> Row | None:
        """One row by seq (None once it is acknowledged or moved aside)."""
        with self._lock:
            r = self._db.execute(
                "SELECT seq, kind, topic, payload, qos, retain FROM outbox WHERE seq = ?", (seq,)
            ).fetchone()
        return None if r is None else Row(r[0], r[1], r[2], bytes(r[3]), r[4], bool(r[5]))

    def reject(self, seq: int, reason: str) -> None:
        """Move a row the broker refused (e.g. ACL) aside: kept and counted, not retried forever."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO rejected"
                " SELECT seq, kind, topic, payload, ?, ? FROM outbox WHERE seq=?",
                (reason, int(time.time() * 1000), seq),
            )
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            self._db.execute("COMMIT")
            self.rejected += 1

    def thin(self, max_depth: int) -> int:
        """Backpressure: when deeper than ``max_depth``, drop telemetry rows spread evenly
        over the backlog (the series stays continuous, only coarser) until the depth fits.
        Alerts, health, state and risk rows are never touched. Returns rows dropped."""
        with self._lock:
            depth = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            if depth <= max_depth:
                return 0
            kinds = ",".join(f"'{k}'" for k in sorted(THINNABLE))
            q = f"SELECT seq FROM outbox WHERE kind IN ({kinds}) ORDER BY seq"
            tele = [r[0] for r in self._db.execute(q)]
            excess = min(depth - max_depth, len(tele))
            keep_n = len(tele) - excess
            if keep_n > 1:
                keep = {tele[round(i * (len(tele) - 1) / (keep_n - 1))] for i in range(keep_n)}
            else:
                keep = {tele[-1]} if keep_n == 1 else set()
            drop = [(s,) for s in tele if s not in keep]
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", drop)
            self._db.execute("COMMIT")
            self.thinned += len(drop)
            return len(drop)

    def get_state(self, key: str) -> str | None:
        """Small agent state that must survive restarts (risk history), kept beside the outbox."""
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_state(self, key: str, value: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))

    def depth(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def depth_by_kind(self) -> dict[str, int]:
        with self._lock:
            return {k: int(n) for k, n in self._db.execute("SELECT kind, COUNT(*) FROM outbox GROUP BY kind")}

    @property
    def next_seq(self) -> int:
        return self._next

    def close(self) -> None:
        with self._lock:
            self._db.close()
