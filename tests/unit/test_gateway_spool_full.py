"""A spool whose disk fills up before the spool's own bound (``spool_max_mb``): the chaos
suite's spool_full fault on a 16 MB tmpfs (docs/chaos.md). SQLite's own page limit gives the
same SQLITE_FULL as a full disk, without root."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from fallwatch.config import InfluxConfig
from fallwatch.gateway.metrics import Counters, Metrics
from fallwatch.gateway.spool import Spool
from fallwatch.gateway.store import Storage
from fallwatch.gateway.workers import is_transient


def test_a_full_spool_disk_is_a_counted_transient_error_and_nothing_is_taken(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=512 * 2**20)
    counters = Counters()
    storage = Storage(InfluxConfig(), spool, counters, Metrics(counters, lambda: {}), threading.Event())
    storage.ready = False  # the series store is down: points go to the spool
    point = ("telemetry", {"device_id": "hub-1", "sensor": "s"}, {"window_s": 5.0}, 1_000)
    assert storage.store([point], storage.new_sink(), "bulk") == []
    assert counters.points_spooled == 1 and spool.depth == 1
    pages = spool._db.execute("PRAGMA page_count").fetchone()[0]
    spool._db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full now
    big = [(point[0], point[1], {"window_s": 5.0, "note": "x" * 200}, 2_000 + i) for i in range(200)]
    with pytest.raises(sqlite3.OperationalError, match="full") as exc:
        storage.store(big, storage.new_sink(), "bulk")
    assert is_transient(exc.value)  # the worker retries the batch; its messages stay unacknowledged
    assert counters.spool_write_errors == 1 and counters.points_spooled == 1 and spool.depth == 1
    spool.close()
