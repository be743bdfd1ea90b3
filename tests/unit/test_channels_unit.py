"""The network channels without a network: config, secrets, signature, retries."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from pathlib import Path

import pytest

from fallwatch.config import ConfigError
from fallwatch.gateway.channels import CHANNELS, Action, AlertEvent, ChannelContext, Notifier
from fallwatch.gateway.channels._common import body, event_json, read_secret, subject
from fallwatch.gateway.channels._queue import DeliveryQueue, QueuedChannel, QueuedChannelConfig, backoff_delay
from fallwatch.gateway.channels.webhook import SIGNATURE_HEADER, sign, verify

CTX = ChannelContext(gateway_id="gw-test")


def event(action: Action = Action.RAISED, **kw: object) -> AlertEvent:
    base: dict[str, object] = dict(kind="fall", action=action, alert_id="al-1", site_id="site-a", device_id="hub-1",
                                   at_ms=1_700_000_000_000, resident_id="r01", room="bedroom", sensor="wear-r01",
                                   confidence=0.93, lying_s=20.0, reasons=("impact", "lying"),
                                   raised_ms=1_700_000_000_000)
    base.update(kw)
    return AlertEvent(**base)  # type: ignore[arg-type]


def wait_until(pred: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def owner_only(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    p = tmp_path / "secret"
    p.write_text(text + "\n")
    p.chmod(mode)
    return p


# ---- config validation -------------------------------------------------------------------

def test_all_channel_types_are_discovered() -> None:
    assert {"log", "smtp", "webhook", "mqtt", "apprise"} <= set(CHANNELS.names())


@pytest.mark.parametrize("section, needle", [
    ({"type": "smtp", "host": "mx", "from": "a@b.c"}, "to"),
    ({"type": "smtp", "host": "mx", "from": "a@b.c", "to": ["x@y.z"], "password_env": "P"}, "username"),
    ({"type": "smtp", "host": "mx", "from": "a@b.c", "to": ["x@y.z"], "username": "u", "password_env": "P",
      "password_file": "/p"}, "not both"),
    ({"type": "smtp", "host": "mx", "from": "a@b.c", "to": ["not-an-address"]}, "e-mail"),
    ({"type": "smtp", "host": "mx", "from": "a@b.c", "to": ["x@y.z"], "security": "tls"}, "security"),
    ({"type": "smtp", "host": "mx", "from": "a@b.c", "to": ["x@y.z"], "actions": ["exploded"]}, "actions"),
    ({"type": "webhook", "url": "http://h/x"}, "secret"),
    ({"type": "webhook", "url": "ftp://h/x", "secret_env": "S"}, "http"),
    ({"type": "webhook", "url": "http://h/x", "secret_env": "S", "retry_attempts": 0}, "retry_attempts"),
    ({"type": "mqtt", "url": "mqtt://h", "topic": "fallwatch/v1/site-a/hub-1/alerts"}, "device tree"),
    ({"type": "mqtt", "url": "mqtt://h", "topic": "staff/#"}, "wildcards"),
    ({"type": "mqtt", "url": "http://h"}, "mqtt://"),
    ({"type": "apprise"}, "urls"),
    ({"type": "webhook", "url": "http://h/x", "secret_env": "S", "colour": "red"}, "colour"),
])
def test_invalid_channel_config_is_refused(section: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        CHANNELS.parse(section)


def test_defaults() -> None:
    cfg = CHANNELS.parse({"type": "mqtt", "url": "mqtt://127.0.0.1:1883"})
    assert cfg.topic == "fallwatch/v1/_staff/alerts"  # type: ignore[attr-defined]
    assert cfg.actions == [Action.RAISED, Action.ESCALATED]  # type: ignore[attr-defined]
    assert cfg.retry_attempts == 5  # type: ignore[attr-defined]


# ---- secrets -------------------------------------------------------------------------------

def test_secret_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FW_TEST_SECRET", "s3cret")
    assert read_secret("x", "FW_TEST_SECRET", None) == "s3cret"
    monkeypatch.delenv("FW_TEST_SECRET")
    with pytest.raises(ConfigError, match="FW_TEST_SECRET is not set"):
        read_secret("x", "FW_TEST_SECRET", None)


def test_secret_file_owner_only(tmp_path: Path) -> None:
    assert read_secret("x", None, owner_only(tmp_path, "s3cret")) == "s3cret"


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_group_or_world_readable_secret_file_is_refused(tmp_path: Path, mode: int) -> None:
    p = owner_only(tmp_path, "s3cret", mode)
    with pytest.raises(ConfigError, match=r"accessible by group or others .*chmod 600"):
        read_secret("webhook channel secret", None, p)


def test_channel_refuses_readable_secret_at_build(tmp_path: Path) -> None:
    p = owner_only(tmp_path, "s3cret", 0o644)
    with pytest.raises(ConfigError, match="accessible by group or others"):
        CHANNELS.create({"type": "webhook", "url": "http://127.0.0.1:9/x", "secret_file": str(p)}, CTX)


# ---- what is sent --------------------------------------------------------------------------

def test_signature_format() -> None:
    body_ = b'{"a":1}'
    sig = sign("k", "1700000000", body_)
    assert sig == "sha256=" + hmac.new(b"k", b"1700000000." + body_, hashlib.sha256).hexdigest()
    assert len(sig) == len("sha256=") + 64 and verify("k", "1700000000", body_, sig)
    assert not verify("k", "1700000001", body_, sig) and not verify("other", "1700000000", body_, sig)
    assert SIGNATURE_HEADER == "X-Fallwatch-Signature"


def test_event_json_and_words() -> None:
    e = event()
    d = json.loads(event_json(e))
    assert d["kind"] == "fall" and d["action"] == "raised" and d["reasons"] == ["impact", "lying"]
    assert d["resident_id"] == "r01" and d["alert_id"] == "al-1"
    s, b = subject(e), body(e)
    assert "Fall" in s and "r01" in s and "bedroom" in s
    for needle in ("Resident: r01", "Room: bedroom", "When: 2023-11-14 22:13:20 UTC",
                   "Why: a hard impact, lying afterwards",
                   "Confidence: 93%"):
        assert needle in b
    assert "NOT ACKNOWLEDGED" in subject(event(Action.ESCALATED, escalations=1))


# ---- queue, retries, backoff ---------------------------------------------------------------

class FakeConfig(QueuedChannelConfig):
    type: str = "fake"


class Flaky(QueuedChannel):
    """Fails the first ``fail`` sends."""

    def __init__(self, fail: int, **cfg: object) -> None:
        self.fail, self.calls = fail, 0
        self.sent: list[AlertEvent] = []
        super().__init__(FakeConfig(retry_backoff_s=0.01, retry_backoff_max_s=0.05, **cfg), "fake-recipient")

    def send(self, event: AlertEvent) -> str:
        self.calls += 1
        if self.calls <= self.fail:
            raise ConnectionError(f"down ({self.calls})")
        self.sent.append(event)
        return "ok"


def test_backoff_is_exponential_and_capped() -> None:
    assert [backoff_delay(n, 1.0, 10.0) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_notify_returns_queued_at_once_and_never_blocks() -> None:
    import threading
    gate = threading.Event()

    class Slow(Flaky):
        def send(self, event: AlertEvent) -> str:
            gate.wait(10)
            return super().send(event)

    ch = Slow(0)
    t0 = time.monotonic()
    got = ch.notify(event())
    assert time.monotonic() - t0 < 1.0
    assert [(d.channel, d.recipient, d.ok, d.detail) for d in got] == [("fake", "fake-recipient", True, "queued")]
    gate.set()
    assert wait_until(lambda: ch.delivered() == 1)
    ch.close()


def test_failed_send_is_retried_then_delivered() -> None:
    ch = Flaky(2)
    ch.notify(event())
    assert wait_until(lambda: ch.delivered() == 1)
    tries = ch.attempts()
    assert [(a.attempt, a.ok) for a in tries] == [(1, False), (2, False), (3, True)]
    assert "down (1)" in tries[0].detail and tries[0].at_s <= tries[1].at_s <= tries[2].at_s
    assert ch.failed() == 0 and len(ch.sent) == 1
    ch.close()


def test_bounded_attempts_then_reported_failed(caplog: pytest.LogCaptureFixture) -> None:
    ch = Flaky(100, retry_attempts=4)
    with caplog.at_level(logging.WARNING, "fallwatch.gateway.channels"):
        ch.notify(event())
        assert wait_until(lambda: ch.failed() == 1)
    assert [a.attempt for a in ch.attempts()] == [1, 2, 3, 4] and not any(a.ok for a in ch.attempts())
    assert ch.delivered() == 0 and ch.calls == 4
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "NOT DELIVERED" in errors[0].getMessage() and "al-1" in errors[0].getMessage()
    ch.close()


def test_actions_filter() -> None:
    ch = Flaky(0)
    assert ch.notify(event(Action.ACKNOWLEDGED)) == [] and ch.notify(event(Action.CANCELLED)) == []
    assert len(ch.notify(event(Action.ESCALATED))) == 1
    only = Flaky(0, actions=["raised", "acknowledged"])
    assert only.notify(event(Action.ESCALATED)) == [] and len(only.notify(event(Action.ACKNOWLEDGED))) == 1
    assert wait_until(lambda: ch.delivered() == 1 and only.delivered() == 1)
    ch.close()
    only.close()


def test_close_drains_queued_events() -> None:
    ch = Flaky(0)
    for i in range(5):
        ch.notify(event(alert_id=f"al-{i}"))
    ch.close()
    assert [e.alert_id for e in ch.sent] == [f"al-{i}" for i in range(5)]
    assert ch.notify(event())[0].ok is False


def test_full_queue_is_a_counted_failure() -> None:
    q = DeliveryQueue("q", lambda e: time.sleep(0.2) or "ok", "r", maxsize=1)
    results = [q.submit(event(alert_id=f"al-{i}")) for i in range(5)]
    assert any(not d.ok and d.detail == "queue full" for d in results)
    assert q.failed() >= 1
    q.close(drain_s=5)


def test_notifier_reports_queued_and_close_drains() -> None:
    ch = Flaky(0)
    n = Notifier([ch])
    assert n.notify(event())[0].detail == "queued"
    n.close()
    assert ch.delivered() == 1
