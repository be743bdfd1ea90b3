"""Builders for valid contract messages and a QoS 1 publisher, shared by tests and the benchmark."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fallwatch.config import FallwatchConfig, load_config
from fallwatch.protocol import contract as c
from fallwatch.protocol import topics


def make_cfg(broker: Any, db: Any | None, tmp: Any, name: str, **gw: Any) -> FallwatchConfig:
    """A config for one test gateway: its own database, state DB, spool and an ephemeral HTTP port."""
    influx: dict[str, object] = (
        {"url": db.url, "version": 1, "database": name.replace("-", "_")}
        if db
        else {"url": "", "embedded_path": str(tmp / "series.sqlite")}
    )
    return load_config(
        overrides={
            "mqtt": {"url": broker.url},
            "influx": influx,
            "gateway": {
                "gateway_id": gw.pop("gateway_id", f"gw-{name}"[:60]),
                "state_db": str(tmp / "state.sqlite"),
                "spool_dir": str(tmp / "spool"),
                "http_port": 0,
                **gw,
            },
        }
    )


def wait_until(pred: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def _env(site: str, device: str, seq: int, ts_ms: int | None) -> dict[str, Any]:
    now = c.now_ms()
    return {
        "schema": 1,
        "site_id": site,
        "device_id": device,
        "boot_id": 1,
        "seq": seq,
        "msg_id": c.make_msg_id(device, seq),
        "ts_ms": ts_ms if ts_ms is not None else now,
        "sent_ms": now,
    }


def fall(
    site: str,
    device: str,
    seq: int,
    *,
    event: str | None = None,
    ts_ms: int | None = None,
    status: Literal["alert", "cancelled"] = "alert",
    resident: str | None = "r01",
) -> tuple[str, bytes]:
    env = _env(site, device, seq, ts_ms)
    msg = c.FallAlert(
        **env,
        resident_id=resident,
        data=c.FallData(
            event_id=event or f"{device}-ev{seq}",
            status=status,
            impact_ms=int(env["ts_ms"]) - 20_000,
            confidence=0.93,
            peak_g=3.4,
            lying_s=20.0,
            room="kitchen",
            sensor="wear-r01",
            reasons=[c.Reason("impact", "3.4 g"), c.Reason("lying", "20 s")],
            model="fall-cnn@1.0.0",
        ),
    )
    return topics.fall(site, device), c.encode(msg)


def tele(
    site: str,
    device: str,
    seq: int,
    *,
    sensor: str = "wear-r01",
    ts_ms: int | None = None,
    value: float | None = None,
) -> tuple[str, bytes]:
    env = _env(site, device, seq, ts_ms)
    msg = c.Telemetry(
        **env,
        data=c.TeleData(
            sensor=sensor,
            window_s=10.0,
            room="living",
            fields={
                "acc_mean_g": 1.01 if value is None else value,
                "acc_max_g": 1.9,
                "steps": 12,
                "active": True,
            },
        ),
    )
    return topics.tele(site, device, sensor), c.encode(msg)


def health(site: str, device: str, seq: int, *, outbox: int = 0, ts_ms: int | None = None) -> tuple[str, bytes]:
    env = _env(site, device, seq, ts_ms)
    msg = c.Health(
        **env,
        data=c.HealthData(
            uptime_s=100.0,
            outbox_depth=outbox,
            cpu_pct=12.0,
            model_version="1.0.0",
            fw="0.3.1",
            sensors={"wear-r01": c.SensorHealth(last_seen_ms=env["ts_ms"], battery_pct=64.0, rssi_dbm=-60.0)},
        ),
    )
    return topics.health(site, device), c.encode(msg)


def state(site: str, device: str, seq: int, st: Literal["ready", "offline", "lost"] = "ready", *,
          ts_ms: int | None = None) -> tuple[str, bytes]:
    env = _env(site, device, seq, ts_ms)
    msg = c.State(**env, data=c.StateData(state=st, fw="0.3.1", model_version="1.0.0"))
    return topics.state(site, device), c.encode(msg)


def test_alarm(site: str, device: str, seq: int, *, ts_ms: int | None = None) -> tuple[str, bytes]:
    env = _env(site, device, seq, ts_ms)
    return topics.test_alarm(site, device), c.encode(c.TestAlarm(**env, data=c.TestData()))


class Publisher:
    """A QoS 1 MQTT 5 publisher that can wait until the broker acknowledged everything."""

    def __init__(self, url_host: str, port: int, client_id: str, max_inflight: int = 1000) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(max_inflight)
        self.client.max_queued_messages_set(0)
        self._lock = threading.Lock()
        self._outstanding = 0
        self.client.on_publish = self._on_publish
        self.client.connect(url_host, port)
        self.client.loop_start()

    def _on_publish(self, *args: Any) -> None:
        with self._lock:
            self._outstanding -= 1

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = "application/json"
        with self._lock:
            self._outstanding += 1
        self.client.publish(topic, payload, qos=qos, properties=props)

    def wait(self, timeout_s: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self._outstanding <= 0:
                    return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self.wait(10)
        self.client.disconnect()
        self.client.loop_stop()


def retained(port: int, topic: str) -> dict[str, object] | None:
    """The last retained JSON message on a topic (None if there is none)."""
    got: list[bytes] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{time.monotonic_ns()}", protocol=mqtt.MQTTv5)
    c.on_message = lambda cl, u, m: got.append(bytes(m.payload))
    c.connect("127.0.0.1", port)
    c.subscribe(topic, qos=1)
    c.loop_start()
    wait_until(lambda: bool(got), 3)
    c.disconnect()
    c.loop_stop()
    return json.loads(got[-1]) if got else None


def probe_client(port: int, user: str | None, password: str | None, client_id: str,
                 clean: bool = True) -> tuple[mqtt.Client, int]:
    """Connect one MQTT 5 client to a loopback broker the way a hub or an attacker would, and
    return it (looping) with the CONNACK reason code (-1 if the broker closed the connection
    without one, or none came within 30 s: generous, a loaded machine took over 5 s)."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if user:
        c.username_pw_set(user, password)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    result: dict[str, int] = {}
    done = threading.Event()

    def on_connect(client: mqtt.Client, u: object, flags: object, rc: mqtt.ReasonCode, p: object) -> None:
        result["rc"] = rc.value
        done.set()

    c.on_connect = on_connect
    c.on_disconnect = lambda *_: done.set()
    c.connect("127.0.0.1", port, clean_start=clean, properties=props)
    c.loop_start()
    done.wait(30)
    return c, result.get("rc", -1)
