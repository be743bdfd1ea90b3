"""Notification channels against real receivers: an in-process aiosmtpd SMTP server, a local
HTTP receiver (webhook and Apprise's json://), and the staff topic on the real Mosquitto."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from fallwatch.gateway.app import Gateway
from fallwatch.gateway.channels import CHANNELS, Action, AlertEvent, ChannelContext
from fallwatch.gateway.channels._queue import QueuedChannel
from fallwatch.gateway.channels.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from fallwatch.testing import publisher as t
from fallwatch.testing.publisher import make_cfg, wait_until
from fallwatch.testing.receivers import Receiver, SmtpServer, free_port
from fallwatch.testing.services import Mosquitto

pytestmark = pytest.mark.integration

SECRET = "webhook-test-secret"


class StaffSubscriber:
    def __init__(self, port: int, topic: str, name: str) -> None:
        self.messages: list[bytes] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"staff-{name}"[:60],
                                  protocol=mqtt.MQTTv5)
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append(m.payload)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_fall_reaches_email_webhook_staff_topic_and_apprise(
    mosquitto: Mosquitto, smtpd: SmtpServer, receiver: Receiver, tmp_path: Path, unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FW_TEST_WEBHOOK_SECRET", SECRET)
    topic = f"fallwatch/v1/_staff/{unique_name}"
    staff = StaffSubscriber(mosquitto.port, topic, unique_name)
    assert staff.subscribed.wait(10)
    channels = [
        {"type": "log"},
        {"type": "smtp", "host": "127.0.0.1", "port": smtpd.port, "security": "none",
         "from": "fallwatch@home.example", "to": ["night@home.example", "lead@home.example"]},
        {"type": "webhook", "url": f"http://127.0.0.1:{receiver.port}/hook", "secret_env": "FW_TEST_WEBHOOK_SECRET"},
        {"type": "mqtt", "url": mosquitto.url, "topic": topic},
        {"type": "apprise", "urls": [f"json://127.0.0.1:{receiver.port}/apprise"]},
    ]
    gw = Gateway(make_cfg(mosquitto, None, tmp_path, unique_name, channels=channels, locale="en", timezone="UTC"))
    gw.start()
    pub = t.Publisher("127.0.0.1", mosquitto.port, f"pub-{unique_name}")
    try:
        assert wait_until(lambda: gw.ready()[0]), "gateway never became ready"
        site, dev = "site-a", f"hub-{unique_name}"[:40]
        topic_, payload = t.fall(site, dev, 7)
        pub.publish(topic_, payload)
        pub.publish(topic_, payload)  # a redelivery: still one alert, one message per channel
        assert pub.wait()
        assert wait_until(lambda: smtpd.mailbox.count() >= 1 and len(receiver.at("/hook")) >= 1
                          and len(receiver.at("/apprise")) >= 1 and len(staff.messages) >= 1, 30)
        assert gw.wait_idle(10)
        time.sleep(0.5)  # a second message would already be on its way: nothing may follow
        aid = gw.alerts()[0]["alert_id"]

        assert smtpd.mailbox.count() == 1
        mail = smtpd.mailbox.messages[0]
        assert smtpd.mailbox.envelopes[0] == ("fallwatch@home.example", ["night@home.example", "lead@home.example"])
        assert "Fall" in mail["Subject"] and "r01" in mail["Subject"] and str(mail["X-Fallwatch-Alert"]) == aid
        text = mail.get_payload(decode=True).decode()  # type: ignore[union-attr]
        assert "Resident: r01" in text and "Why: a hard impact, lying afterwards" in text and "Confidence: 93%" in text

        hooks = receiver.at("/hook")
        assert len(hooks) == 1
        _, headers, raw = hooks[0]
        assert verify(SECRET, headers[TIMESTAMP_HEADER], raw, headers[SIGNATURE_HEADER])
        assert not verify("wrong", headers[TIMESTAMP_HEADER], raw, headers[SIGNATURE_HEADER])
        assert abs(int(headers[TIMESTAMP_HEADER]) - time.time()) < 300
        body = json.loads(raw)
        assert body["alert_id"] == aid and body["kind"] == "fall" and body["action"] == "raised"
        assert body["device_id"] == dev and body["resident_id"] == "r01"

        assert len(staff.messages) == 1 and json.loads(staff.messages[0])["alert_id"] == aid

        apprised = receiver.at("/apprise")
        assert len(apprised) == 1
        note = json.loads(apprised[0][2])
        assert "Fall" in note["title"] and "Resident: r01" in note["message"]

        by_name = {ch.name: ch for ch in gw.notifier.channels if isinstance(ch, QueuedChannel)}
        assert set(by_name) == {"smtp", "webhook", "mqtt", "apprise"}
        assert all(ch.delivered() == 1 and ch.failed() == 0 for ch in by_name.values())
    finally:
        pub.close()
        gw.stop()
        staff.close()


def fall_event(alert_id: str = "al-1") -> AlertEvent:
    return AlertEvent(kind="fall", action=Action.RAISED, alert_id=alert_id, site_id="site-a", device_id="hub-1",
                      at_ms=int(time.time() * 1000), resident_id="r01", room="bedroom", confidence=0.9,
                      reasons=("impact",))


def smtp_channel(port: int, **kw: object) -> QueuedChannel:
    ch = CHANNELS.create({"type": "smtp", "host": "127.0.0.1", "port": port, "security": "none",
                          "from": "fallwatch@home.example", "to": ["night@home.example"], **kw},
                         ChannelContext(gateway_id="gw-test"))
    assert isinstance(ch, QueuedChannel)
    return ch


def test_smtp_down_is_retried_and_delivered_when_it_comes_back() -> None:
    server = SmtpServer(free_port())  # not started: the port refuses connections
    ch = smtp_channel(server.port, retry_attempts=10, retry_backoff_s=0.1, retry_backoff_max_s=0.5)
    try:
        assert ch.notify(fall_event())[0].detail == "queued"
        assert wait_until(lambda: len(ch.attempts()) >= 2, 30), "no failed tries while the server was down"
        assert not any(a.ok for a in ch.attempts())
        server.start()
        assert wait_until(lambda: ch.delivered() == 1, 30)
        assert server.mailbox.count() == 1 and ch.failed() == 0
        tries = ch.attempts()
        assert tries[-1].ok and all(not a.ok for a in tries[:-1]) and len(tries) >= 3
        assert [a.attempt for a in tries] == list(range(1, len(tries) + 1))
    finally:
        ch.close()
        server.stop()


def test_smtp_down_for_good_is_reported_failed_after_bounded_tries() -> None:
    ch = smtp_channel(free_port(), retry_attempts=3, retry_backoff_s=0.05, retry_backoff_max_s=0.1)
    try:
        ch.notify(fall_event())
        assert wait_until(lambda: ch.failed() == 1, 30)
        assert [(a.attempt, a.ok) for a in ch.attempts()] == [(1, False), (2, False), (3, False)]
        assert ch.delivered() == 0
    finally:
        ch.close()
