"""The gateway on a real Mosquitto and a real InfluxDB 1.x: store, de-duplicate, reject, alert."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from fallwatch.gateway.app import Gateway
from fallwatch.protocol import contract, topics
from fallwatch.testing import publisher as t
from fallwatch.testing.publisher import make_cfg, wait_until
from fallwatch.testing.services import InfluxDB1, Mosquitto

pytestmark = pytest.mark.integration


@pytest.fixture
def gateway(mosquitto: Mosquitto, influxdb: InfluxDB1, tmp_path: Path, unique_name: str) -> Iterator[Gateway]:
    gw = Gateway(make_cfg(mosquitto, influxdb, tmp_path, unique_name))
    gw.start()
    assert wait_until(lambda: gw.ready()[0]), "gateway never became ready"
    yield gw
    gw.stop()


@pytest.fixture
def pub(mosquitto: Mosquitto, unique_name: str) -> Iterator[t.Publisher]:
    p = t.Publisher("127.0.0.1", mosquitto.port, f"pub-{unique_name}")
    yield p
    p.close()


def rows(db: InfluxDB1, q: str, database: str) -> list[dict[str, Any]]:
    out = []
    for s in db.query(q, db=database):
        for r in s.get("values", []):
            d = dict(zip(s["columns"], r, strict=True))
            d.update(s.get("tags") or {})
            out.append(d)
    return out


def http(gw: Gateway, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(
        f"{gw.http_url}{path}",
        method="POST" if body is not None else "GET",
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},  # the API takes JSON only (issue 11 item 13)
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if r.headers.get_content_type() == "application/json" else raw)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_fall_alert_stored_once_and_lifecycle(
    gateway: Gateway, pub: t.Publisher, influxdb: InfluxDB1, unique_name: str
) -> None:
    site, dev = "site-a", f"hub-{unique_name}"[:40]
    topic, payload = t.fall(site, dev, 7)
    pub.publish(topic, payload)
    pub.publish(topic, payload)  # a QoS 1 redelivery by the edge: same msg_id
    assert pub.wait()
    assert wait_until(lambda: gateway.stats()["stored"] + gateway.stats()["duplicates"] == 2)
    assert gateway.wait_idle(10)

    db = gateway.cfg.influx.database
    got = rows(influxdb, f"SELECT * FROM fall_alert WHERE device_id = '{dev}'", db)
    assert len(got) == 1
    p = got[0]
    assert p["event_id"] == f"{dev}-ev7" and p["msg_id"] == f"{dev}:7" and p["status"] == "alert"
    assert p["site_id"] == site and p["sensor"] == "wear-r01" and p["confidence"] == pytest.approx(0.93)
    assert p["reasons"] == "impact,lying" and p["resident_id"] == "r01"
    assert gateway.stats()["duplicates"] == 1 and gateway.stats()["fall_alerts"] == 1

    alerts = gateway.alerts()
    assert len(alerts) == 1 and alerts[0]["status"] == "raised" and alerts[0]["data_status"] == "alert"
    aid = alerts[0]["alert_id"]
    code, body = http(gateway, f"/alerts/{aid}/ack", {"by": "nurse-anna"})
    assert code == 200 and body["status"] == "acknowledged" and body["acked_by"] == "nurse-anna"
    code, body = http(gateway, f"/alerts/{aid}/clear", {"by": "nurse-anna"})
    assert code == 200 and body["status"] == "cleared" and body["cleared_ms"] >= body["acked_ms"]
    code, _ = http(gateway, f"/alerts/{aid}/clear", {"by": "nurse-anna"})
    assert code == 409
    code, _ = http(gateway, f"/alerts/{aid}/ack", {})
    assert code == 400
    assert [e["action"] for e in gateway.state.audit(aid)] == ["raised", "acknowledge", "clear"]


def test_telemetry_from_several_devices(
    gateway: Gateway, pub: t.Publisher, influxdb: InfluxDB1, unique_name: str
) -> None:
    devices = [f"hub{i}-{unique_name}"[:40] for i in range(4)]
    base = contract.now_ms() - 60_000
    for i in range(50):
        for d in devices:
            pub.publish(*t.tele("site-b", d, i, ts_ms=base + i * 100))
    for d in devices:
        pub.publish(*t.health("site-b", d, 1000, outbox=3))
    assert pub.wait()
    assert wait_until(lambda: gateway.stats()["stored"] == 204)
    assert gateway.wait_idle(10)
    db = gateway.cfg.influx.database
    counts = {
        s["tags"]["device_id"]: s["values"][0][1]
        for s in influxdb.query('SELECT count(acc_mean_g) FROM telemetry GROUP BY "device_id"', db=db)
    }
    assert counts == {d: 50 for d in devices}
    assert gateway.count_points("telemetry") == 200
    reg = {d["device_id"]: d for d in gateway.devices()}
    assert set(reg) == set(devices)
    assert all(r["outbox_depth"] == 3 and r["fw"] == "0.3.1" and r["min_battery_pct"] == 64.0 for r in reg.values())
    assert reg[devices[0]]["sensors"]["wear-r01"]["battery_pct"] == 64.0
    assert gateway.stats()["rejected"] == 0


class DlqListener:
    def __init__(self, port: int, name: str) -> None:
        self.got: list[tuple[str, dict[str, Any]]] = []
        self.ready = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"dlq-{name}", protocol=mqtt.MQTTv5)
        self.c.on_message = lambda c, u, m: self.got.append((m.topic, json.loads(m.payload)))
        self.c.on_subscribe = lambda *a: self.ready.set()
        self.c.connect("127.0.0.1", port)
        self.c.subscribe(f"{topics.PREFIX}/_dlq/#", qos=1)
        self.c.loop_start()
        assert self.ready.wait(5)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_bad_messages_rejected_by_reason_and_dead_lettered(
    gateway: Gateway, pub: t.Publisher, influxdb: InfluxDB1, mosquitto: Mosquitto, unique_name: str
) -> None:
    dlq = DlqListener(mosquitto.port, unique_name)
    site, dev = "site-c", f"hub-{unique_name}"[:40]
    good_topic, good = t.tele(site, dev, 1)
    env = json.loads(good)
    wrong_version = dict(env, schema=99)
    wrong_type = dict(env, seq="one")
    cases = [
        (good_topic, b"{not json", "bad_json"),
        (good_topic, json.dumps(wrong_version).encode(), "unsupported_version"),
        (good_topic, json.dumps(wrong_type).encode(), "invalid_payload"),
        (topics.tele(site, "other-hub", "wear-r01"), good, "topic_mismatch"),
        (f"{topics.PREFIX}/Bad_Site/{dev}/health", good, "bad_topic"),
        (topics.health(site, dev), good, "topic_mismatch"),  # a telemetry body on the health topic
    ]
    for topic, payload, _ in cases:
        pub.publish(topic, payload)
    base = contract.now_ms() - 10_000
    for seq in range(2, 12):  # good traffic after the bad (distinct times: same series+time overwrites)
        pub.publish(*t.tele(site, dev, seq, ts_ms=base + seq))
    assert pub.wait()
    assert wait_until(lambda: gateway.stats()["stored"] == 10 and gateway.stats()["rejected"] == len(cases))
    st = gateway.stats()
    expected: dict[str, int] = {}
    for *_, reason in cases:
        expected[reason] = expected.get(reason, 0) + 1
    assert st["rejected_by_reason"] == expected
    assert wait_until(lambda: len(dlq.got) == len(cases), 10)
    dlq.close()
    assert sorted(tp.rsplit("/", 1)[1] for tp, _ in dlq.got) == sorted(r for *_, r in cases)
    assert all(body["gateway_id"] == gateway.gateway_id and body["payload_b64"] for _, body in dlq.got)
    assert gateway.ready()[0]
    assert http(gateway, "/healthz")[0] == 200
    got = rows(
        influxdb,
        f"SELECT count(acc_mean_g) FROM telemetry WHERE device_id = '{dev}'",
        gateway.cfg.influx.database,
    )
    assert got[0]["count"] == 10
    code, metrics = http(gateway, "/metrics")
    text = metrics.decode()
    assert code == 200
    assert 'fallwatch_gateway_messages_rejected_total{reason="bad_json"} 1.0' in text
    assert "fallwatch_gateway_write_latency_seconds_bucket" in text
    assert "fallwatch_gateway_spool_depth_points 0.0" in text


def test_embedded_store_and_mqtt311(mosquitto: Mosquitto, tmp_path: Path, unique_name: str, pub: t.Publisher) -> None:
    cfg = make_cfg(mosquitto, None, tmp_path, unique_name)
    cfg = cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(update={"protocol": "3.1.1"})})
    gw = Gateway(cfg)
    gw.start()
    try:
        assert wait_until(lambda: gw.ready()[0])
        dev = f"hub-{unique_name}"[:40]
        for i in range(20):
            pub.publish(*t.tele("site-d", dev, i, ts_ms=1_700_000_000_000 + i))
        pub.publish(*t.fall("site-d", dev, 100))
        assert pub.wait()
        assert wait_until(lambda: gw.stats()["stored"] == 21)
        assert gw.wait_idle(10)
        assert gw.count_points("telemetry") == 20 and gw.count_points("fall_alert") == 1
        assert [a["data_status"] for a in gw.alerts()] == ["alert"]
    finally:
        gw.stop()
