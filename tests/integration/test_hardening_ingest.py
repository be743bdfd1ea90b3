"""Issue 11, items 3, 4, 5, 10, 11: the gateway ingest never wedges, loses or mis-attributes data.

Each test runs the real parts (Mosquitto, InfluxDB 1.x, SQLite or PostgreSQL state) and
reproduces one defect found in the review; they failed on the code as it was.
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import requests

from fallwatch.edge.messages import Messages
from fallwatch.edge.outbox import Outbox
from fallwatch.gateway.app import Gateway
from fallwatch.gateway.channels import Action
from fallwatch.protocol import contract as c
from fallwatch.protocol import topics
from fallwatch.testing import publisher as t
from fallwatch.testing.channels import RecordingChannel
from fallwatch.testing.publisher import make_cfg, wait_until
from fallwatch.testing.services import InfluxDB1, Mosquitto, postgres_database

pytestmark = pytest.mark.integration

TEN_YEARS_MS = 10 * 365 * 24 * 3600 * 1000



def _get(gw: Gateway, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"{gw.http_url}{path}", timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _device(gw: Gateway, device: str) -> dict[str, Any] | None:
    return next((d for d in gw.devices() if d["device_id"] == device), None)


def _tele(site: str, device: str, seq: int, fields: dict[str, Any], ts_ms: int | None = None) -> tuple[str, bytes]:
    now = c.now_ms()
    msg = c.Telemetry(schema=1, site_id=site, device_id=device, boot_id=1, seq=seq, msg_id=c.make_msg_id(device, seq),
                      ts_ms=now if ts_ms is None else ts_ms, sent_ms=now,
                      data=c.TeleData(sensor="wear-r01", window_s=10.0, fields=fields))
    return topics.tele(site, device, "wear-r01"), c.encode(msg)


# ------------------------------------------------------------------ item 3: poison messages


def test_health_with_uint64_outbox_depth_does_not_wedge_the_bulk_writer(
    mosquitto: Mosquitto, influxdb: InfluxDB1, tmp_path: Path, unique_name: str
) -> None:
    """outbox_depth = 2**64-1 made the bulk writer loop on OverflowError for ever (later health
    never stored, /healthz still OK): now it is rejected and dead-lettered, and the next is stored."""
    gw = Gateway(make_cfg(mosquitto, influxdb, tmp_path, unique_name))
    gw.start()
    pub = t.Publisher("127.0.0.1", mosquitto.port, f"pub-{unique_name}")
    try:
        assert wait_until(lambda: gw.ready()[0])
        pub.publish(*t.health("site-p", "hub-poison", 1, outbox=2**64 - 1))
        pub.publish(*t.health("site-p", "hub-poison", 2, outbox=7))
        assert pub.wait(10)
        assert wait_until(lambda: (_device(gw, "hub-poison") or {}).get("outbox_depth") == 7, 20), gw.stats()
        st = gw.stats()
        assert st["rejected"] == 1 and st["dead_lettered"] == 1, st
        assert _get(gw, "/healthz")[0] == 200
        assert gw.wait_idle(20)
    finally:
        pub.close()
        gw.stop()


def test_fall_with_nul_in_event_id_on_postgresql_does_not_wedge_the_alert_worker(
    mosquitto: Mosquitto, influxdb: InfluxDB1, tmp_path: Path, unique_name: str
) -> None:
    """event_id with \\u0000 made the alert worker loop on a PostgreSQL DataError, and a later fall
    from another site was never stored. Now the poisoned one is dead-lettered and staff still see
    that a fall alert from that hub could not be read; the later fall is stored and notified."""
    rec = RecordingChannel()
    gw = Gateway(make_cfg(mosquitto, influxdb, tmp_path, unique_name, state_db=postgres_database(unique_name)),
                 channels=[rec])
    gw.start()
    pub = t.Publisher("127.0.0.1", mosquitto.port, f"pub-{unique_name}")
    try:
        assert wait_until(lambda: gw.ready()[0])
        pub.publish(*t.fall("site-a", "hub-nul", 1, event="ev\u0000x"))
        pub.publish(*t.fall("site-b", "hub-good", 1))
        assert pub.wait(10)
        assert wait_until(lambda: any(a["site_id"] == "site-b" for a in gw.alerts()), 20), gw.stats()
        assert wait_until(lambda: any(a["kind"] == "fall_unreadable" and a["device_id"] == "hub-nul"
                                      for a in gw.device_alerts()), 10), gw.device_alerts()
        assert gw.stats()["dead_lettered"] >= 1
        assert wait_until(lambda: rec.events(kind="fall_unreadable"), 10)
        assert _get(gw, "/healthz")[0] == 200
    finally:
        pub.close()
        gw.stop()


# ------------------------------------------------------------------ item 4: open alerts are never capped


def test_open_fall_alert_stays_listed_behind_1001_newer_cleared_alerts(
    mosquitto: Mosquitto, tmp_path: Path, unique_name: str
) -> None:
    gw = Gateway(make_cfg(mosquitto, None, tmp_path, unique_name))
    gw.start()
    pub = t.Publisher("127.0.0.1", mosquitto.port, f"pub-{unique_name}")
    try:
        assert wait_until(lambda: gw.ready()[0])
        pub.publish(*t.fall("site-o", "hub-open", 1))
        assert pub.wait(10)
        assert wait_until(lambda: len(gw.alerts()) == 1)
        raised = gw.alerts()[0]["raised_ms"]
        db = sqlite3.connect(str(tmp_path / "state.sqlite"))
        with db:
            db.executemany(
                "INSERT INTO alerts (alert_id, kind, site_id, device_id, status, raised_ms, cleared_ms) "
                "VALUES (?, 'device_offline', 'site-o', ?, 'cleared', ?, ?)",
                [(f"device_offline:site-o:hub-{i}:{raised + i}", f"hub-{i}", raised + 1 + i, raised + 2 + i)
                 for i in range(1001)])
        db.close()
        code, alerts = _get(gw, "/alerts?open=1")
        assert code == 200
        assert [a["kind"] for a in alerts] == ["fall"], "the open fall alert fell off the list"
    finally:
        pub.close()
        gw.stop()


# ------------------------------------------------------------------ item 5: re-imaged hub


def _edge_fall(outbox_dir: Path, site: str, device: str, impact_t_s: float) -> tuple[str, bytes]:
    """A fall alert exactly as a hub builds it, from its own outbox (a fresh one = a re-imaged hub)."""
    box = Outbox(outbox_dir / "outbox.sqlite")
    try:
        m = Messages(site, device, 1_700_000_000_000)
        m.boot_id = box.boot_id
        m.install_id = box.install_id
        data = c.FallData(event_id=f"{device}-wear-r01-{m.ts(impact_t_s)}", status="alert",
                          impact_ms=m.ts(impact_t_s), confidence=0.9, peak_g=3.0, sensor="wear-r01")
        box.append_many([m.fall(data, impact_t_s + 20, "r01")])
        row = box.peek()[0]
        assert row.seq == 1  # a fresh outbox starts at seq 1
        return row.topic, row.payload
    finally:
        box.close()


def test_reimaged_hubs_new_fall_is_not_dropped_as_a_duplicate(
    mosquitto: Mosquitto, tmp_path: Path, unique_name: str
) -> None:
    rec = RecordingChannel()
    gw = Gateway(make_cfg(mosquitto, None, tmp_path, unique_name), channels=[rec])
    gw.start()
    pub = t.Publisher("127.0.0.1", mosquitto.port, f"pub-{unique_name}")
    try:
        assert wait_until(lambda: gw.ready()[0])
        first = _edge_fall(tmp_path / "install-1", "site-r", "hub-reimaged", 100.0)
        pub.publish(*first)
        assert pub.wait(10) and wait_until(lambda: len(gw.alerts()) == 1)
        second = _edge_fall(tmp_path / "install-2", "site-r", "hub-reimaged", 5000.0)  # re-imaged: new outbox
        pub.publish(*second)
        assert pub.wait(10)
        assert wait_until(lambda: len(gw.alerts()) == 2, 10), gw.stats()
        assert gw.stats()["duplicates"] == 0
        # staff are told just after each alert is durable: wait for the recorder, then count exactly
        assert wait_until(lambda: len(rec.events(kind="fall", action=Action.RAISED)) >= 2, 10)
        assert gw.wait_idle(30)
        assert len(rec.events(kind="fall", action=Action.RAISED)) == 2
    finally:
        pub.close()
        gw.stop()


def test_one_key_with_different_content_raises_an_alarm_and_is_kept(
    mosquitto: Mosquitto, tmp_path: Path, unique_name: str
) -> None:
    """Old-style ``device:seq`` ids (a hub not yet updated, re-imaged): the same key, a different
    fall. It is stored and notified, counted, and staff get a device alert about the clash."""
    rec = RecordingChannel()
    gw = Gateway(make_cfg(mosquitto, None, tmp_path, unique_name), channels=[rec])
    gw.start()
    pub = t.Publisher("127.0.0.1", mosquitto.port, f"pub-{unique_name}")
    try:
        assert wait_until(lambda: gw.ready()[0])
        first = t.fall("site-k", "hub-clash", 1, event="ev-a")
        pub.publish(*first)
        assert pub.wait(10) and wait_until(lambda: len(gw.alerts()) == 1)
        pub.publish(*first)  # a true re-send: a duplicate
        pub.publish(*t.fall("site-k", "hub-clash", 1, event="ev-b"))  # same key, different content
        assert pub.wait(10)
        assert wait_until(lambda: len(gw.alerts()) == 2, 10), gw.stats()
        assert wait_until(lambda: gw.stats()["id_conflicts"] == 1, 10), gw.stats()
        assert gw.stats()["duplicates"] == 1
        assert wait_until(lambda: any(a["kind"] == "msg_id_conflict" and a["device_id"] == "hub-clash"
                                      for a in gw.device_alerts()), 10)
        assert wait_until(lambda: bool(rec.events(kind="msg_id_conflict", action=Action.RAISED)), 10)
    finally:
        pub.close()
        gw.stop()


# ------------------------------------------------------------------ item 10: device clocks


def test_retained_state_stamped_ten_years_ahead_still_goes_offline(
    mosquitto: Mosquitto, tmp_path: Path, unique_name: str
) -> None:
    site, dev = "site-c", f"hub-clock-{time.monotonic_ns() % 100000}"
    topic, payload = t.state(site, dev, 1, ts_ms=c.now_ms() + TEN_YEARS_MS)
    cl = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ret-{unique_name}", protocol=mqtt.MQTTv5)
    cl.connect("127.0.0.1", mosquitto.port)
    cl.loop_start()
    try:
        cl.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
        gw = Gateway(make_cfg(mosquitto, None, tmp_path, unique_name, offline_after_s=1.0))
        gw.start()
        try:
            assert wait_until(lambda: _device(gw, dev) is not None, 10)
            d = _device(gw, dev)
            assert d is not None and d["last_seen_ms"] <= c.now_ms(), "device time decided last-seen"
            assert d["clock_skew_ms"] > TEN_YEARS_MS - 60_000, d
            assert wait_until(lambda: any(a["kind"] == "device_offline" and a["device_id"] == dev
                                          for a in gw.device_alerts()), 15), "the hub was never raised offline"
            assert b"fallwatch_gateway_clock_skew_max_seconds" in gw.metrics.render()
        finally:
            gw.stop()
    finally:
        cl.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
        cl.disconnect()
        cl.loop_stop()


# ------------------------------------------------------------------ item 11: series poisoning


def _steps(db: InfluxDB1, database: str, device: str) -> list[Any]:
    out: list[Any] = []
    for s in db.query(f"SELECT steps FROM telemetry WHERE device_id = '{device}' AND time < now() + 1h",
                      db=database):
        out += [r[1] for r in s["values"]]
    return out


def test_one_hubs_string_steps_does_not_drop_an_honest_hubs_steps(
    mosquitto: Mosquitto, influxdb: InfluxDB1, tmp_path: Path, unique_name: str
) -> None:
    gw = Gateway(make_cfg(mosquitto, influxdb, tmp_path, unique_name))
    gw.start()
    database = gw.cfg.influx.database
    pub = t.Publisher("127.0.0.1", mosquitto.port, f"pub-{unique_name}")
    try:
        assert wait_until(lambda: gw.ready()[0])
        pub.publish(*_tele("site-x", "hub-evil", 1, {"steps": "lots"}))
        assert pub.wait(10) and gw.wait_idle(20)
        now = c.now_ms()
        pub.publish(*_tele("site-y", "hub-honest", 1, {"steps": 12}, ts_ms=now))
        pub.publish(*_tele("site-y", "hub-honest", 2, {"steps": 12.5}, ts_ms=now + 1))
        assert pub.wait(10) and gw.wait_idle(20)
        assert sorted(_steps(influxdb, database, "hub-honest")) == [12.0, 12.5]
        st = gw.stats()
        assert st["rejected"] == 1 and st["dead_lettered"] == 1 and st["points_refused"] == 0, st
    finally:
        pub.close()
        gw.stop()


def test_future_timestamps_are_clamped_to_the_receive_time_plus_skew(
    mosquitto: Mosquitto, influxdb: InfluxDB1, tmp_path: Path, unique_name: str
) -> None:
    """A device stamping next week would create (and type) next week's shard; clamp it."""
    gw = Gateway(make_cfg(mosquitto, influxdb, tmp_path, unique_name))
    gw.start()
    pub = t.Publisher("127.0.0.1", mosquitto.port, f"pub-{unique_name}")
    try:
        assert wait_until(lambda: gw.ready()[0])
        pub.publish(*_tele("site-f", "hub-future", 1, {"steps": 3}, ts_ms=c.now_ms() + 7 * 86_400_000))
        assert pub.wait(30) and gw.wait_idle(30)
        # read back until there (a loaded machine: the write may still be on its way when idle is first seen)
        assert wait_until(lambda: _steps(influxdb, gw.cfg.influx.database, "hub-future") == [3.0], 30)
        assert gw.stats()["clock_clamped"] == 1
    finally:
        pub.close()
        gw.stop()


def test_a_field_type_conflict_is_the_senders_rejected_message_not_silent_loss(
    mosquitto: Mosquitto, influxdb: InfluxDB1, tmp_path: Path, unique_name: str
) -> None:
    """A shard already typed wrongly (data from before the fix, another writer): the conflicting
    message is dead-lettered (replayable) and counted as its sender's; the others are stored."""
    gw = Gateway(make_cfg(mosquitto, influxdb, tmp_path, unique_name))
    gw.start()
    database = gw.cfg.influx.database
    pub = t.Publisher("127.0.0.1", mosquitto.port, f"pub-{unique_name}")
    dlq: list[bytes] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"dlq-{unique_name}", protocol=mqtt.MQTTv5)
    sub.on_message = lambda cl, u, m: dlq.append(bytes(m.payload))
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe(topics.dead_letter("+"), qos=1)
    sub.loop_start()
    try:
        assert wait_until(lambda: gw.ready()[0] and gw.storage.ready)
        now = c.now_ms()
        r = requests.post(f"{influxdb.url}/write", params={"db": database, "precision": "ms"},
                          data=f'telemetry,site_id=legacy,device_id=old,sensor=s1 steps="x" {now}', timeout=10)
        assert r.status_code == 204
        for seq in range(1, 6):
            pub.publish(*_tele("site-z", "hub-z", seq, {"acc_mean_g": 1.0 + seq}, ts_ms=now + seq))
        pub.publish(*_tele("site-z", "hub-conflict", 1, {"steps": 4}, ts_ms=now + 10))
        assert pub.wait(10) and gw.wait_idle(20)
        got = influxdb.query("SELECT acc_mean_g FROM telemetry WHERE device_id = 'hub-z'", db=database)
        assert len(got[0]["values"]) == 5
        st = gw.stats()
        assert st["rejected_by_reason"].get("store_refused") == 1, st
        assert wait_until(lambda: any(c.decode_dead_letter(p).reason == "store_refused" for p in dlq), 10)
        letter = next(c.decode_dead_letter(p) for p in dlq if c.decode_dead_letter(p).reason == "store_refused")
        assert "hub-conflict" in letter.topic
    finally:
        sub.disconnect()
        sub.loop_stop()
        pub.close()
        gw.stop()
