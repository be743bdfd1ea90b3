"""Device registry, offline and test-alarm supervision, and the generated broker config on a real Mosquitto."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fallwatch.config import load_config
from fallwatch.gateway.app import Gateway
from fallwatch.gateway.brokerconf import generate, read_credentials
from fallwatch.protocol import contract
from fallwatch.testing import publisher as t
from fallwatch.testing.publisher import probe_client
from fallwatch.testing.services import Mosquitto, can_connect, find_binary, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def gw(mosquitto: Mosquitto, tmp_path: Path, unique_name: str) -> Iterator[Gateway]:
    g = Gateway(t.make_cfg(mosquitto, None, tmp_path, unique_name))
    g.start()
    assert t.wait_until(lambda: g.ready()[0])
    yield g
    g.stop()


def test_offline_and_test_alarm_supervision(gw: Gateway, mosquitto: Mosquitto, unique_name: str) -> None:
    pub = t.Publisher("127.0.0.1", mosquitto.port, f"pub-{unique_name}")
    site, a, b = "site-r", f"hub-a-{unique_name}"[:40], f"hub-b-{unique_name}"[:40]
    now = contract.now_ms()
    pub.publish(*t.health(site, a, 1, outbox=5))
    pub.publish(*t.test_alarm(site, a, 2))
    pub.publish(*t.health(site, b, 1))
    pub.publish(*t.test_alarm(site, b, 2, ts_ms=now - 25 * 3600 * 1000))  # last test 25 h ago
    assert pub.wait()
    assert t.wait_until(lambda: gw.stats()["stored"] == 4)
    assert gw.wait_idle(10)
    reg = {d["device_id"]: d for d in gw.devices()}
    assert reg[a]["outbox_depth"] == 5 and reg[a]["fw"] == "0.3.1" and reg[a]["last_test_ms"] >= now

    gw.check_devices(now + 5_000)
    kinds = {(x["kind"], x["device_id"]) for x in gw.device_alerts() if x["status"] == "raised"}
    assert kinds == {("test_overdue", b)}  # b flagged, a fine, nobody offline yet

    gw.check_devices(now + 179_000)
    assert not [x for x in gw.device_alerts() if x["kind"] == "device_offline"]
    gw.check_devices(now + 181_000)  # > 3 minutes of silence
    offline = [x for x in gw.device_alerts() if x["kind"] == "device_offline"]
    assert {x["device_id"] for x in offline} == {a, b} and all(x["status"] == "raised" for x in offline)
    gw.check_devices(now + 200_000)  # still silent: no second alert for the same outage
    assert len([x for x in gw.device_alerts() if x["kind"] == "device_offline"]) == 2
    assert gw.stats()["devices_offline"] == 2

    # b comes back and sends a fresh test alarm: its alerts clear; a stays offline
    pub.publish(*t.health(site, b, 3))
    pub.publish(*t.test_alarm(site, b, 4))
    assert pub.wait()
    assert t.wait_until(lambda: gw.stats()["stored"] == 6)
    assert gw.wait_idle(10)
    gw.check_devices(contract.now_ms())
    open_ = {(x["kind"], x["device_id"]) for x in gw.device_alerts() if x["status"] == "raised"}
    assert open_ == set()  # a is not silent in *real* time either: it just talked
    cleared = {(x["kind"], x["device_id"]) for x in gw.device_alerts() if x["status"] == "cleared"}
    assert {("device_offline", b), ("test_overdue", b), ("device_offline", a)} <= cleared

    # a last will ("lost") is an offline alert straight away, no need to wait 3 minutes
    pub.publish(*t.state(site, a, 10, "lost"))
    assert pub.wait()
    assert t.wait_until(lambda: gw.stats()["stored"] == 7)
    assert gw.wait_idle(10)
    gw.check_devices(contract.now_ms())
    assert [x["device_id"] for x in gw.device_alerts() if x["status"] == "raised"] == [a]
    pub.close()


def test_supervisor_thread_raises_offline_in_real_time(mosquitto: Mosquitto, tmp_path: Path, unique_name: str) -> None:
    g = Gateway(t.make_cfg(mosquitto, None, tmp_path, unique_name, offline_after_s=1.0))
    g.start()
    pub = t.Publisher("127.0.0.1", mosquitto.port, f"pub-{unique_name}")
    try:
        assert t.wait_until(lambda: g.ready()[0])
        pub.publish(*t.health("site-q", "hub-quiet", 1))
        assert pub.wait()
        t0 = time.monotonic()
        assert t.wait_until(lambda: any(x["kind"] == "device_offline" for x in g.device_alerts()), 10)
        assert time.monotonic() - t0 < 10
        assert "fallwatch_gateway_devices_offline 1.0" in g.metrics.render().decode()
    finally:
        pub.close()
        g.stop()


# ---------------------------------------------------------------- generated broker config


@pytest.fixture
def prod_broker(tmp_path: Path) -> Iterator[tuple[int, dict[str, str], Path]]:
    port = free_port()
    # Mosquitto started as root drops to its own user before reading the password file and
    # writing persistence, so everything lives in a world-traversable temp dir (not tmp_path)
    work = Path(tempfile.mkdtemp(prefix="fw-prod-mosq-"))
    work.chmod(0o755)
    data, out = work / "data", work / "conf"
    data.mkdir()
    data.chmod(0o777)
    generate(
        out,
        [("site-1", "hub-1"), ("site-1", "hub-2")],
        ["gw-1", "gw-2"],
        tls_dir=str(tmp_path),
        data_dir=str(data),
        plain_port=port,
        tls_port=None,
        log_file=None,
    )
    err = open(tmp_path / "mosq.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [find_binary("mosquitto"), "-c", str(out / "mosquitto.conf")], stdout=subprocess.DEVNULL, stderr=err
    )
    assert t.wait_until(lambda: can_connect(port), 10), (tmp_path / "mosq.log").read_text()
    yield port, read_credentials(out), out
    proc.terminate()
    proc.wait(10)
    err.close()
    shutil.rmtree(work, ignore_errors=True)


def test_generated_broker_config_auth_acl_and_no_silent_drop(
    prod_broker: tuple[int, dict[str, str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port, creds, conf_dir = prod_broker
    # one user per gateway link (client ids are bound to usernames: issue 11 item 1)
    assert set(creds) == {"gw-1", "gw-1-alerts", "gw-2", "gw-2-alerts", "hub-1", "hub-2"}
    assert len(set(creds.values())) == 6
    monkeypatch.setenv("FALLWATCH_MQTT_ALERT_PASSWORD", creds["gw-1-alerts"])
    assert (conf_dir / "credentials.txt").stat().st_mode & 0o777 == 0o600

    anon, rc = probe_client(port, None, None, "anon")
    assert rc != 0  # anonymous refused
    anon.loop_stop()
    _, rc = probe_client(port, "hub-1", "wrong", "hub-1")
    assert rc != 0

    cfg = load_config(
        overrides={
            "mqtt": {"url": f"mqtt://127.0.0.1:{port}", "username": "gw-1", "password": creds["gw-1"]},
            "influx": {"url": "", "embedded_path": str(tmp_path / "series.sqlite")},
            "gateway": {
                "gateway_id": "gw-1",
                "shared_group": "fw",
                "state_db": str(tmp_path / "st.sqlite"),
                "spool_dir": str(tmp_path / "spool"),
                "http_port": 0,
            },
        }
    )
    gw = Gateway(cfg)
    gw.start()
    try:
        assert t.wait_until(lambda: gw.ready()[0]), "gateway could not subscribe with $share under the ACL"
        hub, rc = probe_client(port, "hub-1", creds["hub-1"], "hub-1")
        assert rc == 0
        hub.publish(*t.tele("site-1", "hub-1", 1), qos=1).wait_for_publish(5)
        # hub-1 speaking for hub-2 is refused by the ACL (Mosquitto may also drop the connection)
        # and never reaches the gateway
        hub.publish(*t.tele("site-1", "hub-2", 1), qos=1)
        time.sleep(0.5)
        hub.disconnect()
        hub.loop_stop()
        hub, rc = probe_client(port, "hub-1", creds["hub-1"], "hub-1")
        hub.publish(*t.tele("site-1", "hub-1", 2), qos=1).wait_for_publish(5)
        assert t.wait_until(lambda: gw.stats()["stored"] == 2)
        assert gw.wait_idle(5)
        assert gw.stats()["received"] == 2 and {d["device_id"] for d in gw.devices()} == {"hub-1"}
        hub.disconnect()
        hub.loop_stop()
    finally:
        gw.stop()

    # a persistent-session subscriber that is away while 5,000 QoS 1 messages arrive gets all of them
    assert _away_subscriber_burst(port, 5000, creds, wait_s=120) == 5000  # waits only until all 5,000 arrived


def _away_subscriber_burst(port: int, n: int, auth: dict[str, str] | None = None, wait_s: float = 10) -> int:
    """Publish n QoS 1 messages while a persistent-session subscriber is away; count what it gets."""

    def connect(cid: str, clean: bool) -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        if auth:
            c.username_pw_set(cid, auth[cid])
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.connect("127.0.0.1", port, clean_start=clean, properties=props)
        c.loop_start()
        return c

    sub = connect("gw-2", True)
    sub.subscribe("fallwatch/v1/+/+/tele/+", qos=1)
    time.sleep(0.3)
    sub.disconnect()
    sub.loop_stop()
    hub = connect("hub-2", True)
    time.sleep(0.2)
    infos = [hub.publish(*t.tele("site-1", "hub-2", i), qos=1) for i in range(n)]
    for info in infos:
        info.wait_for_publish(30)
    hub.disconnect()
    hub.loop_stop()
    got: set[bytes] = set()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-2", protocol=mqtt.MQTTv5)
    if auth:
        sub.username_pw_set("gw-2", auth["gw-2"])
    sub.on_message = lambda c, u, m: got.add(m.payload)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    sub.connect("127.0.0.1", port, clean_start=False, properties=props)
    sub.loop_start()
    t.wait_until(lambda: len(got) >= n, wait_s)
    # then until nothing more arrives for a second (a loaded machine delivers the queue slowly;
    # a count taken mid-delivery would read as messages dropped)
    deadline, last, still_since = time.monotonic() + 60, -1, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - still_since < 1.0:
        if len(got) != last:
            last, still_since = len(got), time.monotonic()
        time.sleep(0.05)
    sub.disconnect()
    sub.loop_stop()
    return len(got)


def test_control_mosquitto_default_queue_limit_drops_silently(mosquitto_factory: object) -> None:
    """The failure the generated config prevents, shown with Mosquitto's default limit."""
    broker = mosquitto_factory(extra_conf="max_queued_messages 1000\n")
    assert _away_subscriber_burst(broker.port, 3000, wait_s=2) == 1000


def test_unacknowledged_fall_alert_escalates_until_acknowledged(
    gw: Gateway, mosquitto: Mosquitto, unique_name: str
) -> None:
    pub = t.Publisher("127.0.0.1", mosquitto.port, f"pub-{unique_name}")
    pub.publish(*t.fall("site-e", "hub-e", 1))
    pub.publish(*t.fall("site-e", "hub-e", 2, status="cancelled"))  # a cancelled pre-alarm never escalates
    assert pub.wait()
    pub.close()
    assert t.wait_until(lambda: len(gw.alerts()) == 2)
    raised = next(a for a in gw.alerts() if a["status"] == "raised")
    t0 = int(raised["raised_ms"])
    assert gw.check_escalations(t0 + 60_000) == []
    first = gw.check_escalations(t0 + 121_000)
    assert [a["alert_id"] for a in first] == [raised["alert_id"]] and first[0]["escalations"] == 1
    assert gw.check_escalations(t0 + 130_000) == []  # not again before another escalate_after_s
    assert gw.check_escalations(t0 + 250_000)[0]["escalations"] == 2
    gw.state.transition(raised["alert_id"], "acknowledge", "nurse", t0 + 260_000)
    assert gw.check_escalations(t0 + 900_000) == []
    actions = [e["action"] for e in gw.state.audit(raised["alert_id"])]
    assert actions == ["raised", "escalated", "escalated", "acknowledge"]
    assert gw.stats()["escalations"] == 2


def test_gateway_presence_is_retained(mosquitto: Mosquitto, tmp_path: Path, unique_name: str) -> None:
    g = Gateway(t.make_cfg(mosquitto, None, tmp_path, unique_name, gateway_id="gw-presence"))
    topic = "fallwatch/v1/_gw/gw-presence/state"
    g.start()
    try:
        assert t.wait_until(lambda: g.ready()[0])
        assert t.wait_until(lambda: (t.retained(mosquitto.port, topic) or {}).get("state") == "ready", 10)
    finally:
        g.stop()
    assert (t.retained(mosquitto.port, topic) or {}).get("state") == "offline"
