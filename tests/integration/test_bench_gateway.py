"""Smoke test of the gateway benchmark's harness (issue 16) on a few hundred messages: each
consumer reports its figures and stores every message. Never a judgement on speed."""

from __future__ import annotations

from pathlib import Path

import pytest

from fallwatch.app.bench import gateway as bench
from fallwatch.testing.services import InfluxDB1, Mosquitto

pytestmark = pytest.mark.integration

FIGURES = {"msgs_per_s", "cpu_us_per_msg", "rss_peak_mb", "lost"}


def test_every_consumer_of_the_bench_drains_the_same_set_and_loses_nothing(
    mosquitto: Mosquitto, influxdb: InfluxDB1, tmp_path: Path
) -> None:
    msgs = bench.message_set(400, 20)
    assert len({p for _, p in msgs}) == 400 and all(150 < len(p) < 400 for _, p in msgs)
    for result in (bench.ceiling(mosquitto, msgs), bench.forwarder(mosquitto, influxdb, msgs)):
        assert set(result) == FIGURES and result["lost"] == 0 and result["msgs_per_s"] > 0
    g = bench.GatewayRun(mosquitto, influxdb, 2, tmp_path, "http://127.0.0.1:9/unused")
    result = g.drain(mosquitto, msgs)
    assert FIGURES | {"pool_rss_peak_mb"} == set(result) and result["lost"] == 0 and result["rss_peak_mb"] > 0
