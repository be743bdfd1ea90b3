"""Paging against real parts: a fall published over the real Mosquitto reaches the on-call
carer by e-mail (aiosmtpd) and signed web hook (a local HTTP receiver), is acknowledged from
the message's own link once, escalates with a controllable clock through two gateway
replicas sharing PostgreSQL, falls back when the SMTP server is down, and reaches a phone
through Web Push (a local push service that decrypts the payload)."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fallwatch.gateway.app import Gateway
from fallwatch.gateway.channels.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from fallwatch.testing import publisher as t
from fallwatch.testing.gateways import GatewayProcess, write_gateway_toml
from fallwatch.testing.publisher import make_cfg, wait_until
from fallwatch.testing.receivers import PushService, Receiver, SmtpServer, free_port
from fallwatch.testing.services import Mosquitto, postgres_database

pytestmark = pytest.mark.integration
StartGateway = Callable[..., tuple[Gateway, t.Publisher]]
SECRET = "paging-test-webhook-secret"


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FW_PAGING_WEBHOOK_SECRET", SECRET)


def channels(smtp_port: int, hook_url: str, **more: Any) -> list[dict[str, Any]]:
    return [
        {"type": "log"},
        {"type": "smtp", "name": "email", "broadcast": False, "host": "127.0.0.1", "port": smtp_port,
         "security": "none", "from": "fallwatch@kommun.example", "retry_attempts": 1},
        {"type": "webhook", "name": "hook", "broadcast": False, "url": hook_url,
         "secret_env": "FW_PAGING_WEBHOOK_SECRET", "retry_attempts": 1, "timeout_s": 3},
        *more.get("extra", []),
    ]


def paging(hook: str, **kw: Any) -> dict[str, Any]:
    people = kw.pop("people", None) or [
        {"id": "anna", "name": "Anna Berg", "all_contacts": True,
         "contacts": [{"channel": "email", "to": "anna@kommun.example"}, {"channel": "hook", "to": f"{hook}/anna"}]},
        {"id": "bertil", "name": "Bertil Ek", "contacts": [{"channel": "hook", "to": f"{hook}/bertil"}]},
        {"id": "karin", "name": "Karin Lund", "contacts": [{"channel": "hook", "to": f"{hook}/karin"}]},
        {"id": "tom", "name": "Tom Tekniker", "contacts": [{"channel": "hook", "to": f"{hook}/tom"}]},
    ]
    team = {"id": "night", "name": "Night team", "sites": ["site-a"], "timezone": "Europe/Stockholm",
            "shifts": [{"people": ["anna", "bertil"]}], "lead": "karin", "technicians": ["tom"],
            "fallback": [{"channel": "hook", "to": f"{hook}/arc"}], "quiet_hours": None}
    team.update(kw.pop("team", {}))
    return {"people": people, "teams": [team], "send_backoff_s": 0.05, **kw}


@pytest.fixture
def on_call(mosquitto: Mosquitto, smtpd: SmtpServer, receiver: Receiver, tmp_path: Path, unique_name: str,
            start_gateway: StartGateway) -> tuple[Gateway, t.Publisher]:
    """A gateway paging the default roster (e-mail to ``smtpd``, web hooks to ``receiver``),
    ready, with a publisher on the module's broker."""
    return start_gateway(make_cfg(mosquitto, None, tmp_path, unique_name,
                                  channels=channels(smtpd.port, f"{receiver.url}/arc"), paging=paging(receiver.url)))


def http(method: str, url: str, accept: str = "application/json") -> tuple[int, str]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None,
                                 headers={"Accept": accept})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Clock:
    """A controllable clock shared by the replicas' pagers (and their workers)."""

    def __init__(self) -> None:
        self.now = int(time.time() * 1000)
        self.lock = threading.Lock()

    def __call__(self) -> int:
        with self.lock:
            return self.now

    def set(self, ms: int) -> None:
        with self.lock:
            self.now = ms


def test_fall_pages_the_on_call_carer_by_email_and_signed_webhook_and_the_link_acks_once(
    smtpd: SmtpServer, receiver: Receiver, unique_name: str, on_call: tuple[Gateway, t.Publisher]
) -> None:
    gw, pub = on_call
    topic, payload = t.fall("site-a", f"hub-{unique_name}"[:40], 3)
    pub.publish(topic, payload)
    pub.publish(topic, payload)  # redelivered: still one alert, one message each
    assert pub.wait()
    assert wait_until(lambda: smtpd.mailbox.count() >= 1 and len(receiver.at("/anna")) >= 1, 30)
    assert gw.wait_idle(10) and gw.pager.wait_idle(10)
    time.sleep(0.5)
    aid = gw.alerts()[0]["alert_id"]
    # exactly one e-mail and one web hook, both to the carer on call; nobody else yet
    assert [str(m["X-Fallwatch-Alert"]).strip() for m in smtpd.mailbox.to("anna@kommun.example")] == [aid]
    assert smtpd.mailbox.count() == 1 and len(receiver.requests) == 1
    _, headers, raw = receiver.at("/anna")[0]
    assert verify(SECRET, headers[TIMESTAMP_HEADER], raw, headers[SIGNATURE_HEADER])
    hook = json.loads(raw)
    assert (hook["alert_id"], hook["recipient"], hook["level"], hook["page_kind"], hook["urgency"]) == \
        (aid, "Anna Berg", 0, "fall", "urgent")

    text = smtpd.mailbox.messages[0].get_payload(decode=True).decode()  # type: ignore[union-attr]
    # Swedish by default (gateway.locale), in the site's time zone
    assert "Boende: r01" in text and "Varför: en kraftig stöt" in text and "CET" in text
    link = re.search(r"Ta larmet \(kvittera, engångslänk\): (\S+)", text)
    assert link, text
    url = link.group(1)
    assert url.startswith(gw.http_url or "?") and hook["ack_url"] != url  # one link per message

    code, page = http("GET", url, "text/html")  # what a mail scanner's fetch does: nothing
    assert code == 200 and "Anna Berg" in page and "<form" in page
    assert gw.state.alert(aid)["status"] == "raised"  # type: ignore[index]
    code, body = http("POST", url)
    assert code == 200 and "larmet är ditt" in json.loads(body)["message"]
    alert = gw.state.alert(aid)
    assert alert is not None and (alert["status"], alert["acked_by"], alert["acked_via"]) == \
        ("acknowledged", "anna", "email")
    code, body = http("POST", url)
    assert code == 409 and "redan använd" in json.loads(body)["message"]
    code, body = http("POST", hook["ack_url"])  # the web hook's own link: the alert is taken
    assert code == 409 and "redan kvitterat av anna" in json.loads(body)["message"]
    code, body = http("POST", url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB"))
    assert code == 400 and "ogiltig" in json.loads(body)["message"]

    # an expired link does nothing and says so
    later = gw.pager.ack_url(aid, "bertil", "hook")
    assert later is not None
    gw.pager.clock = lambda: int(time.time() * 1000) + int(gw.cfg.gateway.paging.ack_link_ttl_s * 1000) + 1000
    code, body = http("POST", later)
    assert code == 410 and "gått ut" in json.loads(body)["message"]

    log = [(r["action"], r["actor"]) for r in gw.state.audit(aid)]
    assert ("notified", "gateway") in log and ("acknowledge", "anna") in log and \
        ("ack_link_late", "anna") in log and ("ack_link_expired", "bertil") in log
    deliveries = gw.pager.store.deliveries(aid)
    assert {(d["person"], d["channel"], d["ok"]) for d in deliveries} == {("anna", "email", 1), ("anna", "hook", 1)}
    assert gw.stats()["paging"]["acks_by_link"] == 1


def test_escalation_next_on_call_then_lead_then_fallback_once_each_with_two_replicas(
    mosquitto: Mosquitto, receiver: Receiver, tmp_path: Path, unique_name: str,
) -> None:
    dsn = postgres_database(unique_name)
    clock = Clock()
    gws = []
    for i in range(2):
        cfg = make_cfg(mosquitto, None, tmp_path / f"r{i}", f"{unique_name}-{i}", state_db=dsn,
                       shared_group=f"g{unique_name}"[:40], channels=channels(free_port(), f"{receiver.url}/arc"),
                       paging=paging(receiver.url, people=[
                           {"id": p, "name": p.title(), "contacts": [{"channel": "hook", "to": f"{receiver.url}/{p}"}]}
                           for p in ("anna", "bertil", "karin", "tom")], tick_s=0.05))
        gw = Gateway(cfg)
        gw.pager.clock = clock
        gws.append(gw)
    for gw in gws:
        gw.start()
    pub = t.Publisher("127.0.0.1", mosquitto.port, f"pub-{unique_name}")
    try:
        assert wait_until(lambda: all(g.ready()[0] for g in gws))
        pub.publish(*t.fall("site-a", f"hub-{unique_name}"[:40], 1))
        assert pub.wait()
        assert wait_until(lambda: len(receiver.at("/anna")) == 1, 30)
        t0 = clock()
        seen_at: dict[str, int] = {}
        for s in range(0, 420, 5):  # both replicas tick (their workers too) as the clock moves
            clock.set(t0 + s * 1000)
            for gw in gws:
                gw.pager.tick(clock())
            for gw in gws:
                gw.pager.wait_idle(5)
            for p in ("bertil", "karin", "arc"):
                if p not in seen_at and receiver.at(f"/{p}"):
                    seen_at[p] = s
        # each level reached once, in order, after the configured time without an acknowledgement
        assert 120 <= seen_at["bertil"] < 130 and 240 <= seen_at["karin"] < 255 and 360 <= seen_at["arc"] < 375
        aid = gws[0].alerts()[0]["alert_id"]
        log = [r["action"] for r in gws[0].state.audit(aid)]
        assert log.count("page_escalated") == 3 and log.count("page_opened") == 1
        # every step once: no person got the same step twice, although two replicas ticked
        for p in ("anna", "bertil", "karin", "arc"):
            steps = [json.loads(raw)["escalations"] for _, _, raw in receiver.at(f"/{p}")]
            assert len(steps) == len(set(steps)), (p, steps)
        anna = [json.loads(raw) for _, _, raw in receiver.at("/anna")]
        gaps = [b - a for a, b in zip([0, *seen_steps(anna)], seen_steps(anna)[1:], strict=False)]
        assert len(anna) >= 6 and all(g >= 1 for g in gaps)  # re-sent every round (≤ 60 s) until acknowledged
        assert len(anna) <= 420 // 60 + 2 and len(receiver.at("/arc")) <= 2  # …and not more often
        # acknowledged: no more reminders, only "taken" news to those who were paged
        before = {p: len(receiver.at(f"/{p}")) for p in ("anna", "bertil", "karin", "arc")}
        code, _body = http("POST", anna[-1]["ack_url"])
        assert code == 200
        for s in range(420, 600, 10):
            clock.set(t0 + s * 1000)
            for gw in gws:
                gw.pager.tick(clock())
        for gw in gws:
            gw.pager.wait_idle(5)
        after = {p: [json.loads(raw)["action"] for _, _, raw in receiver.at(f"/{p}")][before[p]:]
                 for p in before}
        assert after == {"anna": [], "bertil": ["acknowledged"], "karin": ["acknowledged"], "arc": ["acknowledged"]}
    finally:
        pub.close()
        for gw in gws:
            gw.stop()


def seen_steps(msgs: list[dict[str, Any]]) -> list[int]:
    return [int(m["escalations"]) for m in msgs]


def test_smtp_down_falls_back_to_the_next_contact_and_warns_the_technician(
    mosquitto: Mosquitto, receiver: Receiver, tmp_path: Path, unique_name: str, start_gateway: StartGateway,
) -> None:
    dead_smtp = free_port()  # nothing listens: connection refused
    people = [
        {"id": "anna", "name": "Anna Berg", "contacts": [
            {"channel": "email", "to": "anna@kommun.example"}, {"channel": "hook", "to": f"{receiver.url}/anna"}]},
        {"id": "tom", "name": "Tom Tekniker", "contacts": [{"channel": "hook", "to": f"{receiver.url}/tom"}]},
    ]
    cfg = make_cfg(mosquitto, None, tmp_path, unique_name, channels=channels(dead_smtp, f"{receiver.url}/arc"),
                   paging=paging(receiver.url, people=people, send_attempts=3, channel_fail_alert_after=3,
                                 team={"shifts": [{"people": ["anna"]}], "lead": None}))
    gw, pub = start_gateway(cfg)
    pub.publish(*t.fall("site-a", f"hub-{unique_name}"[:40], 1))
    assert pub.wait()
    assert wait_until(lambda: len(receiver.at("/anna")) == 1 and len(receiver.at("/tom")) == 1, 30)
    assert gw.pager.wait_idle(10)
    aid = next(a["alert_id"] for a in gw.alerts())
    tries = [(d["channel"], d["attempt"], d["ok"]) for d in gw.pager.store.deliveries(aid)]
    assert tries == [("email", 1, 0), ("email", 2, 0), ("email", 3, 0), ("hook", 1, 1)]
    failing = [a for a in gw.device_alerts() if a["kind"] == "channel_failing"]
    assert len(failing) == 1 and failing[0]["device_id"] == "email" and failing[0]["status"] == "raised"
    tom = json.loads(receiver.at("/tom")[0][2])
    assert tom["kind"] == "channel_failing" and tom["urgency"] == "technical"


def test_web_push_reaches_the_phone_encrypted_and_its_button_acknowledges(
    mosquitto: Mosquitto, tmp_path: Path, unique_name: str, start_gateway: StartGateway,
) -> None:
    from py_vapid import Vapid

    push = PushService()
    key = tmp_path / "vapid.pem"
    v = Vapid()
    v.generate_keys()
    v.save_key(str(key))
    key.chmod(0o600)
    people = [{"id": "anna", "name": "Anna Berg", "contacts": [{"channel": "push", "to": "anna"}]}]
    extra = [{"type": "webpush", "name": "push", "vapid_private_key_file": str(key),
              "vapid_subject": "mailto:it@kommun.example", "retry_attempts": 1}]
    cfg = make_cfg(mosquitto, None, tmp_path, unique_name, channels=channels(free_port(), push.url, extra=extra),
                   paging=paging(push.url, people=people, team={"shifts": [{"people": ["anna"]}], "lead": None,
                                                                "technicians": [], "fallback": []}))
    gw, pub = start_gateway(cfg)
    gw.pager.store.add_subscription("anna", push.subscribe("anna-phone"), int(time.time() * 1000))
    try:
        pub.publish(*t.fall("site-a", f"hub-{unique_name}"[:40], 1))
        assert pub.wait()
        assert wait_until(lambda: len(push.pushes) == 1 or bool(push.refused), 30)
        assert push.refused == []
        who, note = push.pushes[0]
        aid = gw.alerts()[0]["alert_id"]
        assert who == "anna-phone" and note["alert_id"] == aid and "Fall" in note["title"]
        assert note["urgency"] == "urgent" and note["ack_url"].startswith(gw.http_url or "?")
        code, _body = http("POST", note["ack_url"])  # the notification's "Acknowledge" button
        assert code == 200
        alert = gw.state.alert(aid)
        assert alert is not None and (alert["acked_by"], alert["acked_via"]) == ("anna", "push")
    finally:
        push.close()


def test_a_burst_of_falls_pages_each_resident_once_and_a_second_fall_is_grouped(
    smtpd: SmtpServer, receiver: Receiver, unique_name: str, on_call: tuple[Gateway, t.Publisher]
) -> None:
    gw, pub = on_call
    for i in range(12):  # twelve hubs, twelve residents, all at once
        pub.publish(*t.fall("site-a", f"hub{i}-{unique_name}"[:40], 1, resident=f"r{i:02d}"))
    assert pub.wait()
    assert wait_until(lambda: len(receiver.at("/anna")) >= 12, 30)
    assert gw.wait_idle(10) and gw.pager.wait_idle(10)
    assert len(gw.alerts()) == 12 and len(receiver.at("/anna")) == 12 and smtpd.mailbox.count() == 12
    assert len({json.loads(r[2])["alert_id"] for r in receiver.at("/anna")}) == 12
    # the same resident falls again while the first alert is open: recorded, grouped, not re-sent
    pub.publish(*t.fall("site-a", f"hub0-{unique_name}"[:40], 2, event="second", resident="r00"))
    assert pub.wait() and wait_until(lambda: len(gw.alerts()) == 13, 20)
    assert gw.pager.wait_idle(10)
    time.sleep(0.3)
    assert len(receiver.at("/anna")) == 12
    second = next(a for a in gw.alerts() if a["event_id"] == "second")
    page = gw.pager.store.page(second["alert_id"])
    assert page is not None and page["status"] == "grouped"
    leader = page["leader"]
    gw.api.transition(leader, "acknowledge", "anna", int(time.time() * 1000))
    assert gw.state.alert(second["alert_id"])["status"] == "acknowledged"  # type: ignore[index]


def test_a_phone_registers_its_push_subscription_over_http(
    mosquitto: Mosquitto, receiver: Receiver, tmp_path: Path, unique_name: str,
) -> None:
    cfg = make_cfg(mosquitto, None, tmp_path, unique_name, channels=channels(free_port(), f"{receiver.url}/arc"),
                   paging=paging(receiver.url))
    gw = Gateway(cfg)
    gw.start()
    try:
        sub = {"endpoint": "https://push.example/abc", "keys": {"p256dh": "BPk", "auth": "aa"}}

        def post(body: dict[str, Any]) -> int:
            req = urllib.request.Request(f"{gw.http_url}/push/subscriptions", data=json.dumps(body).encode(),
                                         method="POST", headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return int(r.status)
            except urllib.error.HTTPError as e:
                return int(e.code)

        assert post({"person": "anna", "subscription": sub}) == 200  # the open development gateway: a service caller
        assert gw.pager.store.subscriptions("anna") == [sub]
        assert post({"person": "mallory", "subscription": sub}) == 404  # not in the roster
        assert post({"person": "anna", "subscription": {"endpoint": "x"}}) == 400
        code, js = http("GET", f"{gw.http_url}/sw.js")  # the service worker behind the push's button
        assert code == 200 and "ack_url" in js and 'method: "POST"' in js
    finally:
        gw.stop()


def test_a_pool_of_two_workers_pages_once_and_its_endpoint_takes_the_link(
    mosquitto: Mosquitto, receiver: Receiver, tmp_path: Path, unique_name: str,
) -> None:
    """``gateway run --workers 2``: both workers run a pager on the shared state DB; the fall is
    paged once, and its link points at (and is accepted by) the pool's one endpoint."""
    port = free_port()
    cfg_path = write_gateway_toml(tmp_path / "gw.toml", mqtt_url=mosquitto.url, gateway_id="gw-pp", http_port=port,
                                  extra=f"""
[[gateway.channels]]
type = "webhook"
name = "hook"
broadcast = false
url = "{receiver.url}/arc"
secret_env = "FW_PAGING_WEBHOOK_SECRET"
[[gateway.paging.people]]
id = "anna"
name = "Anna Berg"
contacts = [{{ channel = "hook", to = "{receiver.url}/anna" }}]
[[gateway.paging.teams]]
id = "night"
sites = ["site-a"]
shifts = [{{ people = ["anna"] }}]
""")
    gwp = GatewayProcess(cfg_path, port, "--workers", "2")
    url = gwp.url
    pub = t.Publisher("127.0.0.1", mosquitto.port, f"pub-{unique_name}")
    try:
        assert gwp.wait_ready(), gwp.log()
        pub.publish(*t.fall("site-a", f"hub-{unique_name}"[:40], 1))
        assert pub.wait()
        assert wait_until(lambda: len(receiver.at("/anna")) >= 1, 30), gwp.log()
        time.sleep(2.5)  # both pagers tick every second: a duplicate first page would be here by now
        assert len(receiver.at("/anna")) == 1
        hook = json.loads(receiver.at("/anna")[0][2])
        assert hook["ack_url"].startswith(url + "/ack/")
        code, body = http("POST", hook["ack_url"])
        assert code == 200, body
    finally:
        pub.close()
        assert gwp.terminate(45) == 0
