"""Issue 11, the alert paths: an alarm is never dropped, only delayed, and the delay is visible.

Each test runs on the real parts (Mosquitto 2.0, InfluxDB 1.x, the agent in a child process
killed with SIGKILL) and failed on the code before its fix:

* a full telemetry spool and a dead series store do not hold up a fall alert (item 2);
* the generated broker config keeps an acknowledged alert across a broker SIGKILL (item 6);
* a fall alert the broker refuses is retried, reported and counted, never given up (item 7);
* a fall decision inside its cancel window survives an agent SIGKILL (item 8).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from fallwatch.config import FallwatchConfig, load_config
from fallwatch.edge import synth
from fallwatch.edge.agent import EdgeAgent
from fallwatch.gateway import brokerconf
from fallwatch.gateway.app import Gateway
from fallwatch.gateway.channels import Action
from fallwatch.testing import publisher as t
from fallwatch.testing.channels import RecordingChannel
from fallwatch.testing.publisher import wait_until
from fallwatch.testing.recorder import UplinkRecorder
from fallwatch.testing.services import ServiceError, _wait_port, find_binary, free_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def gateway_cfg(url: str, tmp: Path, name: str, *, db: Any = None, user: str | None = None,
                password: str | None = None, alert_password: str | None = None, **gw: Any) -> FallwatchConfig:
    influx: dict[str, object] = (
        {"url": db.url, "version": 1, "database": name.replace("-", "_")}
        if db is not None
        else {"url": "", "embedded_path": str(tmp / "series.sqlite")}
    )
    return load_config(None, {
        "mqtt": {"url": url, "username": user, "password": password, "alert_password": alert_password,
                 "keepalive_s": 5},
        "influx": influx,
        "gateway": {"gateway_id": gw.pop("gateway_id", f"gw-{name}"[:60]), "state_db": str(tmp / "state.sqlite"),
                    "spool_dir": str(tmp / "spool"), "http_port": 0, **gw},
    })


def publish_acked(port: int, client_id: str, topic: str, payload: bytes, *, user: str | None = None,
                  password: str | None = None, timeout_s: float = 10.0) -> mqtt.ReasonCode | int:
    """One QoS 1 publish as a hub would do it; returns once the broker's PUBACK arrived."""
    got: list[Any] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if user is not None:
        c.username_pw_set(user, password)
    c.on_publish = lambda cl, u, mid, rc, props: got.append(rc)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        c.publish(topic, payload, qos=1)
        assert wait_until(lambda: bool(got), timeout_s), "no PUBACK from the broker"
        return got[0]  # type: ignore[no-any-return]
    finally:
        c.disconnect()
        c.loop_stop()


# ---------------------------------------------------------------------------- item 2


def fall_points(db: Any, database: str) -> int:
    series = db.query("SELECT count(confidence) FROM fall_alert", db=database)
    return int(series[0]["values"][0][1]) if series else 0


def test_a_fall_alert_does_not_wait_behind_a_full_spool(mosquitto: Any, influxdb_factory: Any, tmp_path: Path,
                                                        unique_name: str) -> None:
    """InfluxDB down and the telemetry spool full: the alert is still recorded and handed to
    staff at once; its series point follows, exactly once, when InfluxDB is back."""
    db = influxdb_factory()
    rec = RecordingChannel()
    gw = Gateway(gateway_cfg(mosquitto.url, tmp_path, unique_name, db=db, spool_max_mb=0.02), channels=[rec])
    gw.start()
    pub = t.Publisher("127.0.0.1", mosquitto.port, f"pub-{unique_name}")
    try:
        assert wait_until(lambda: gw.ready()[0], 20)
        db.stop()
        for i in range(3000):
            pub.publish(*t.tele("site-s", "hub-tele", i, ts_ms=1_700_000_000_000 + i * 10))
        assert wait_until(lambda: gw.spool.full, 60), gw.stats()

        pub.publish(*t.fall("site-s", "hub-fall", 1, event="ev-full"))
        assert wait_until(lambda: any(a["event_id"] == "ev-full" for a in gw.alerts()), 10), \
            "the fall alert waited behind the telemetry spool"
        assert wait_until(lambda: len(rec.events("fall", Action.RAISED)) == 1, 5)
        st = gw.stats()
        assert st["alert_points_pending"] == 1  # the delayed series write is visible
        assert gw.spool.full and st["fall_alerts"] == 1

        db.start()
        database = gw.cfg.influx.database
        assert wait_until(lambda: fall_points(db, database) == 1, 60), gw.stats()
        assert wait_until(lambda: gw.stats()["alert_points_pending"] == 0, 30)
        assert gw.wait_idle(90), gw.stats()
        assert fall_points(db, database) == 1  # exactly once
        assert [e.alert_id for e in rec.events("fall")] == ["fall:site-s:hub-fall:ev-full"]
    finally:
        pub.close()
        gw.stop()


# ---------------------------------------------------------------------------- item 6


class GeneratedBroker:
    """Mosquitto run with exactly the config `fallwatch gateway broker-config` generates."""

    def __init__(self, out: Path, port: int) -> None:
        self.out, self.port = out, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        conf = self.out / "mosquitto.conf"
        text = conf.read_text()
        if os.geteuid() == 0 and "\nuser " not in text:
            # run environment only: as root Mosquitto would switch to the 'mosquitto' user,
            # which cannot read this private temp dir; persistence settings stay as generated
            conf.write_text(text + "\nuser root\n")
        deadline = time.monotonic() + 10
        while True:
            self.proc = subprocess.Popen([find_binary("mosquitto"), "-c", str(conf)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                _wait_port(self.port, 10, self.proc)
                return
            except ServiceError:  # the port of the killed broker not free yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def test_broker_sigkill_keeps_an_acknowledged_alert(tmp_path: Path, unique_name: str) -> None:
    """Gateway offline, the hub's fall is acknowledged by the broker, the broker is SIGKILLed
    two seconds later: after the restart the gateway still gets the alert."""
    out, data = tmp_path / "broker", tmp_path / "broker-data"
    data.mkdir()
    port = free_port()
    brokerconf.generate(out, [("site-p", "hub-1")], ["gw-1"], tls_dir=str(out), data_dir=str(data),
                        plain_port=port, tls_port=None)
    creds = brokerconf.read_credentials(out)
    broker = GeneratedBroker(out, port)
    broker.start()
    rec = RecordingChannel()
    cfg = gateway_cfg(f"mqtt://127.0.0.1:{port}", tmp_path, unique_name, user="gw-1", password=creds["gw-1"],
                      alert_password=creds["gw-1-alerts"], gateway_id="gw-1")  # one user per gateway link
    gw = Gateway(cfg, channels=[rec])
    try:
        gw.start()
        assert wait_until(lambda: gw.ready()[0], 20), gw.ready()
        time.sleep(1.5)  # the broker has had every chance to save the gateway's session on its own
        gw.stop()  # the gateway goes away; its persistent session stays at the broker

        rc = publish_acked(port, "hub-1", *t.fall("site-p", "hub-1", 1, event="ev-sigkill"),
                           user="hub-1", password=creds["hub-1"])
        assert not getattr(rc, "is_failure", False), rc  # acknowledged: the hub deletes it now
        time.sleep(2.0)
        broker.kill()
        broker.start()

        gw = Gateway(cfg, channels=[rec])
        gw.start()
        assert wait_until(lambda: any(a["event_id"] == "ev-sigkill" for a in gw.alerts()), 20), \
            "an alert the broker acknowledged was lost with the broker's SIGKILL"
        # staff are told just after the alert is durable (the log channel first): wait for the recorder too
        assert wait_until(lambda: bool(rec.events("fall", Action.RAISED)), 10)
        assert gw.wait_idle(30)  # a duplicate from the broker's redelivery would be told by now
        assert [e.alert_id for e in rec.events("fall", Action.RAISED)] == ["fall:site-p:hub-1:ev-sigkill"]
    finally:
        gw.stop()
        broker.stop()


def test_generated_config_saves_on_every_change(tmp_path: Path) -> None:
    text = brokerconf.mosquitto_conf(tmp_path, tls_dir="/t", data_dir="/d")
    assert "persistence true" in text
    assert "autosave_on_changes true" in text and "autosave_interval 1\n" in text


# ---------------------------------------------------------------------------- item 7

GAP_USERS = {"gw": "gw-secret-7", "hub-1": "hub-secret-7"}
#: an ACL with a gap: the hub may send state, health and telemetry, but not its events
GAP_ACL = """
user gw
topic read fallwatch/v1/#

pattern write fallwatch/v1/+/%u/state
pattern write fallwatch/v1/+/%u/health
pattern write fallwatch/v1/+/%u/tele/+
"""
FIXED_ACL = GAP_ACL + "pattern write fallwatch/v1/+/%u/evt/+\n"


def hub_cfg(url: str, tmp: Path, site: str, *, cancel_window_s: float = 0.0, **mq: Any) -> FallwatchConfig:
    return load_config(None, {"mqtt": {"url": url, "keepalive_s": 5, **mq}, "edge": {
        "site_id": site, "device_id": "hub-1", "cancel_window_s": cancel_window_s, "telemetry_window_s": 1.0,
        "outbox_path": str(tmp / "outbox.sqlite"), "model_dir": str(tmp / "m")}})


def raise_fall(agent: EdgeAgent, sensor: str = "wear-1", t0_s: float = 0.0) -> None:
    acc, gyro, _ = synth.fall(post_s=6)
    for f in synth.frames(agent.device_id, synth.packets(sensor, acc, gyro, per_packet=25, t0_ms=int(t0_s * 1000))):
        agent.feed([f], f.rx_t_s)
    agent.feed([], t0_s + 30.0)


def test_a_refused_alert_is_retried_reported_and_counted(mosquitto_factory: Any, tmp_path: Path,
                                                         unique_name: str) -> None:
    broker = mosquitto_factory(passwords=GAP_USERS, acl=GAP_ACL)
    gw = load_config(None, {"mqtt": {"url": broker.url, "username": "gw", "password": GAP_USERS["gw"]}}).mqtt
    rec = UplinkRecorder(gw, f"rec-{unique_name}", site=unique_name, persistent=True).start()
    agent = EdgeAgent(hub_cfg(broker.url, tmp_path, unique_name, username="hub-1", password=GAP_USERS["hub-1"]))
    agent.start()
    try:
        raise_fall(agent)
        assert agent.stats()["alerts_raised"] == 1
        # the broker says "not authorized" (MQTT 5 PUBACK 0x87): the alert stays in the outbox
        assert wait_until(lambda: agent.stats().get("refused_pending", 0) >= 1, 15), agent.stats()
        assert agent.outbox is not None
        assert agent.outbox.depth_by_kind().get("fall") == 1, "a refused fall alert was given up"
        # re-published with backoff (the refusal's PUBACK may be lost: Mosquitto closes the socket)
        assert wait_until(lambda: agent.stats()["refused_retries"] >= 2, 30), "the refused alert is not retried"
        assert wait_until(lambda: any(w.startswith("fall") for w in agent.uplink.warnings()), 30), agent.stats()
        health = agent.telemetry.health(40.0)  # the heartbeat says so
        # held back after a refusal, or waiting for a PUBACK Mosquitto's closed socket swallowed
        assert any(w.startswith("fall seq") and ("refused" in w or "not acknowledged" in w)
                   for w in health.warnings), health.warnings
        assert agent.stats()["rejected"] == 0  # nothing given up

        broker.acl = FIXED_ACL  # the operator closes the gap
        broker.restart()
        assert rec.wait_for(lambda r: len(r.falls()) == 1, timeout_s=60), agent.stats()
        assert wait_until(lambda: agent.stats()["refused_pending"] == 0, 30), agent.stats()
        assert wait_until(lambda: agent.outbox.depth_by_kind().get("fall", 0) == 0, 10)  # deleted on its PUBACK
        assert [m.msg.data.sensor for m in rec.falls()] == ["wear-1"]
    finally:
        agent.stop(timeout_s=2)
        rec.stop()


# ---------------------------------------------------------------------------- item 8

PENDING_CHILD = textwrap.dedent("""
    import sys, time
    from fallwatch.edge import synth
    from fallwatch.edge.agent import EdgeAgent
    from fallwatch.config import load_config

    url, outbox, site = sys.argv[1], sys.argv[2], sys.argv[3]
    cfg = load_config(None, {"mqtt": {"url": url}, "edge": {"site_id": site, "device_id": "hub-1",
                      "cancel_window_s": 8.0, "outbox_path": outbox, "telemetry_window_s": 1.0,
                      "model_dir": outbox + ".models"}})
    agent = EdgeAgent(cfg)
    agent.start()
    fa, fg, _ = synth.fall(pre_s=2.0, post_s=4.0)
    for fr in synth.frames("hub-1", synth.packets("wear-k", fa, fg, per_packet=25)):
        agent.feed([fr], fr.rx_t_s)
        if agent.stats()["pending_alerts"]:
            break
    print("PENDING", agent.stats()["pending_alerts"], flush=True)  # decided, inside its cancel window
    time.sleep(600)  # until SIGKILL
""")


def test_sigkill_in_the_cancel_window_publishes_the_alert_once(mosquitto: Any, tmp_path: Path,
                                                               unique_name: str) -> None:
    cfg = load_config(None, {"mqtt": {"url": mosquitto.url}, "edge": {
        "site_id": unique_name, "device_id": "hub-1", "cancel_window_s": 8.0, "telemetry_window_s": 1.0,
        "outbox_path": str(tmp_path / "outbox.sqlite"), "model_dir": str(tmp_path / "outbox.sqlite.models")}})
    rec = UplinkRecorder(cfg.mqtt, f"rec-{unique_name}", site=unique_name, persistent=True).start()
    script = tmp_path / "child.py"
    script.write_text(PENDING_CHILD)
    child = subprocess.Popen([sys.executable, str(script), mosquitto.url, str(tmp_path / "outbox.sqlite"),
                              unique_name], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.split() == ["PENDING", "1"], line
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert rec.falls() == []  # the window had not run out: nothing sent yet

    agent = EdgeAgent(cfg)  # the hub restarts on the same outbox
    agent.start()
    try:
        t0 = time.monotonic()
        deadline = t0 + 40
        while not rec.falls() and time.monotonic() < deadline:
            agent.feed([], time.monotonic() - t0)  # the hub's clock runs on; no new frames
            time.sleep(0.1)
        assert rec.falls(), "a fall decided before the crash was never sent"
        assert agent.flush(10)
        time.sleep(1.0)  # a duplicate would have arrived by now
    finally:
        agent.stop()
    agent = EdgeAgent(cfg)  # and once more: the decision is not resumed a second time
    agent.start()
    try:
        agent.feed([], 30.0)
        assert agent.flush(10)
        time.sleep(1.0)
    finally:
        agent.stop()
        rec.stop()
    falls = rec.falls()
    assert len(falls) == 1, [m.msg.data for m in falls]
    assert falls[0].msg.data.sensor == "wear-k" and falls[0].msg.data.status == "alert"
