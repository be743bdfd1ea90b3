"""The gateway bench's two diagnostics beside each alert stage: the receipt → durable split
read from the gateway's own histogram, and the disk's fsync probe. Never a judgement on speed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from fallwatch.app.bench.gateway import FsyncProbe, durable_split
from fallwatch.gateway.metrics import _BUCKETS


def test_alerts_slower_than_50ms_to_durable_are_counted_over_every_worker() -> None:
    reg = CollectorRegistry()
    h = Histogram("fallwatch_gateway_ingest_latency_seconds", "receipt to durable", ["worker", "path"],
                  buckets=_BUCKETS, registry=reg)
    for worker, path, seconds in [("0", "alert", 0.002), ("0", "alert", 0.051), ("1", "alert", 0.3),
                                  ("1", "alert", 0.049), ("0", "bulk", 0.9)]:
        h.labels(worker, path).observe(seconds)
    assert durable_split(generate_latest(reg).decode()) == {"alerts_durable_over_50ms": 2}
    assert durable_split("") == {"alerts_durable_over_50ms": 0}
    other = CollectorRegistry()  # buckets without a 50 ms bound: a clear error, not "all slow"
    Histogram("fallwatch_gateway_ingest_latency_seconds", "x", ["path"], buckets=(0.01, 0.1),
              registry=other).labels("alert").observe(0.002)
    with pytest.raises(ValueError, match="no bucket bound"):
        durable_split(generate_latest(other).decode())


def test_the_fsync_probe_times_real_fsyncs_and_leaves_no_file(tmp_path: Path) -> None:
    with FsyncProbe(tmp_path) as probe:
        deadline = time.monotonic() + 30
        while len(probe.ms) < 2 and time.monotonic() < deadline:  # a slow disk: wait for two
            time.sleep(0.05)
    out = probe.result()
    assert len(probe.ms) >= 2 and all(x >= 0 for x in probe.ms)
    assert out["disk_fsync_stuck"] is False
    assert out["disk_fsync_max_ms"] >= out["disk_fsync_p99_ms"] >= 0
    assert out["disk_fsyncs_over_50ms"] == sum(x > 50 for x in probe.ms)
    assert list(tmp_path.iterdir()) == []
