"""Fuzzed topics and payloads never crash the consumer, and every message is accounted for."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fallwatch.config import load_config
from fallwatch.gateway.app import Gateway
from fallwatch.gateway.sinks.sqlite import SqliteSeriesSink
from fallwatch.testing import publisher as t
from fallwatch.testing.services import InfluxDB1, Mosquitto

VALID = [
    t.tele("site-f", "hub-f", 1),
    t.fall("site-f", "hub-f", 2),
    t.health("site-f", "hub-f", 3),
    t.state("site-f", "hub-f", 4),
    t.test_alarm("site-f", "hub-f", 5),
]

json_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid envelope with one or more fields replaced, removed or added."""
    topic, payload = draw(st.sampled_from(VALID))
    env: dict[str, Any] = json.loads(payload)
    for _ in range(draw(st.integers(1, 3))):
        target = env
        if draw(st.booleans()) and isinstance(env.get("data"), dict):
            target = env["data"]
        keys = sorted(target)
        op = draw(st.sampled_from(["replace", "delete", "add"]))
        if op == "add" or not keys:
            target[draw(st.text(max_size=12))] = draw(json_value)
        elif op == "delete":
            target.pop(draw(st.sampled_from(keys)))
        else:
            target[draw(st.sampled_from(keys))] = draw(json_value)
    return topic, json.dumps(env).encode()


raw = st.tuples(st.sampled_from([tp for tp, _ in VALID]), st.binary(max_size=300))
odd_topic = st.tuples(st.text(max_size=80), st.sampled_from([p for _, p in VALID]))
message = st.one_of(mutated(), raw, odd_topic, st.sampled_from(VALID))


@pytest.fixture(scope="module")
def offline_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, SqliteSeriesSink]]:
    """A gateway whose processing path runs without a broker (its publishes just queue)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    cfg = load_config(
        overrides={
            "influx": {"url": "", "embedded_path": str(tmp / "series.sqlite")},
            "gateway": {"state_db": str(tmp / "state.sqlite"), "spool_dir": str(tmp / "spool"), "http_port": 0},
        }
    )
    gw = Gateway(cfg)
    gw.start_state()
    sink = SqliteSeriesSink(cfg.influx.embedded_path)
    sink.setup()
    gw.storage.ready = True  # the drainer is not running: say the store is up
    yield gw, sink
    sink.close()
    gw.state.close()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(message, min_size=1, max_size=8))
def test_fuzzed_batches_never_crash_and_are_accounted(
    offline_gateway: tuple[Gateway, SqliteSeriesSink], batch: list[tuple[str, bytes]]
) -> None:
    gw, sink = offline_gateway
    before = gw.stats()
    items = [(tp, p, None, time.time_ns(), False) for tp, p in batch]
    with gw.counters.lock:
        gw.inflight.in_progress += len(items)
    gw.bulk.process([i for i in items if not i[0].endswith("/evt/fall")], sink)
    for i in items:
        if i[0].endswith("/evt/fall"):
            gw.fall_alerts.process(i)  # its points wait in the state DB (alert_points)
    after = gw.stats()
    handled = sum(after[k] - before[k] for k in ("stored", "rejected", "duplicates"))
    assert handled == len(batch)
    assert after["in_progress"] == before["in_progress"]


@pytest.fixture(scope="module")
def live(
    mosquitto: Mosquitto, influxdb: InfluxDB1, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, t.Publisher]]:
    tmp = tmp_path_factory.mktemp("fuzz-live")
    gw = Gateway(t.make_cfg(mosquitto, influxdb, tmp, "fuzz-live"))
    gw.start()
    pub = t.Publisher("127.0.0.1", mosquitto.port, "pub-fuzz-live")
    assert t.wait_until(lambda: gw.ready()[0])
    yield gw, pub
    pub.close()
    gw.stop()


@pytest.mark.integration
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(st.one_of(mutated(), raw), min_size=10, max_size=60), start=st.integers(0, 10**9))
def test_fuzz_over_mqtt_gateway_stays_healthy(
    live: tuple[Gateway, t.Publisher], batch: list[tuple[str, bytes]], start: int
) -> None:
    gw, pub = live
    assert gw.wait_idle(10)
    before = gw.stats()
    for topic, payload in batch:  # every topic here is inside the gateway's subscription
        pub.publish(topic, payload)
    good = [t.tele("site-z", "hub-z", start + i, ts_ms=1_700_000_000_000 + start + i) for i in range(5)]
    for tp, p in good:
        pub.publish(tp, p)
    assert pub.wait()
    total = len(batch) + len(good)
    assert t.wait_until(
        lambda: gw.stats()["received"] - before["received"] == total and gw.stats()["in_progress"] == 0, 30
    ), gw.stats()
    after = gw.stats()
    assert sum(after[k] - before[k] for k in ("stored", "rejected", "duplicates")) == total
    assert after["stored"] - before["stored"] >= len(good) - (after["duplicates"] - before["duplicates"])
    assert gw.ready()[0] and not gw.workers.dead()
