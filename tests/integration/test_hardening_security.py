"""Issue 11, forgery and the staff side (items 1, 9, 12, 13, 14) on the real parts.

Each test reproduces a defect of the review against a real Mosquitto started with the
generated broker config, a real PostgreSQL, the real HTTP server or a real loopback HTTP
download, and would fail on the code as it was.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from fallwatch.cli import main
from fallwatch.gateway.app import Gateway
from fallwatch.gateway.brokerconf import generate, read_credentials
from fallwatch.gateway.staff import StaffDirectory, StaffError
from fallwatch.gateway.state import StateStore
from fallwatch.protocol import contract
from fallwatch.testing import publisher as t
from fallwatch.testing.gateways import local_config, serving
from fallwatch.testing.models import hub_model_store, model_bytes
from fallwatch.testing.publisher import probe_client
from fallwatch.testing.services import Mosquitto, can_connect, find_binary, free_port, postgres_database

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------- a broker from the generated config


class ProdBroker:
    """Mosquitto started with exactly what ``fallwatch gateway broker-config`` wrote."""

    def __init__(self, devices: list[tuple[str, str]], gateways: list[str]) -> None:
        self.port = free_port()
        # Mosquitto started as root drops to its own user: keep everything world-traversable
        self.work = Path(tempfile.mkdtemp(prefix="fw-hard-mosq-"))
        self.work.chmod(0o755)
        data, self.out = self.work / "data", self.work / "conf"
        data.mkdir()
        data.chmod(0o777)
        generate(self.out, devices, gateways, tls_dir=str(self.work), data_dir=str(data), plain_port=self.port,
                 tls_port=None, log_file=str(self.work / "mosquitto.log"))
        if os.geteuid() == 0:  # the broker reads the 0640 passwd file as the user that started it
            conf = self.out / "mosquitto.conf"
            conf.write_text("user root\n" + conf.read_text())
        (self.work / "mosquitto.log").touch()
        (self.work / "mosquitto.log").chmod(0o666)
        self.creds = read_credentials(self.out)
        self.proc = subprocess.Popen([find_binary("mosquitto"), "-c", str(self.out / "mosquitto.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert t.wait_until(lambda: can_connect(self.port), 10), self.log()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def log(self) -> str:
        p = self.work / "mosquitto.log"
        return p.read_text() if p.exists() else ""

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.work, ignore_errors=True)


@pytest.fixture
def prod_broker() -> Iterator[ProdBroker]:
    b = ProdBroker([("site-a", "hub-1"), ("site-b", "hub-2")], ["gw-1"])
    yield b
    b.close()


def _gateway_cfg(broker: ProdBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    # the alert link's own credentials (user gw-1-alerts) come from the environment like the bulk link's
    if "gw-1-alerts" in broker.creds:
        monkeypatch.setenv("FALLWATCH_MQTT_ALERT_PASSWORD", broker.creds["gw-1-alerts"])
    return local_config(tmp_path, mqtt={"url": broker.url, "username": "gw-1", "password": broker.creds["gw-1"]},
                        gateway_id="gw-1")


def _publish(port: int, user: str, pw: str, msgs: list[tuple[str, bytes]]) -> None:
    c, rc = probe_client(port, user, pw, user, clean=True)
    assert rc == 0
    for topic, payload in msgs:
        c.publish(topic, payload, qos=1).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()


# ---------------------------------------------------------------- item 1: session takeover


def test_hub_cannot_take_over_the_gateway_alert_session(
    prod_broker: ProdBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b, creds = prod_broker, prod_broker.creds
    cfg = _gateway_cfg(b, tmp_path, monkeypatch)
    gw = Gateway(cfg)
    gw.start()
    assert t.wait_until(lambda: gw.ready()[0]), b.log()
    gw.stop()  # away (e.g. restarting): its persistent alert session queues the falls

    _publish(b.port, "hub-1", creds["hub-1"], [t.fall("site-a", "hub-1", i) for i in (1, 2, 3)])
    # hub-2 has valid credentials and connects with the gateway's alert-link client id, clean start
    rogue, rc = probe_client(b.port, "hub-2", creds["hub-2"], "gw-1-alerts", clean=True)
    assert rc == 0
    time.sleep(0.5)
    rogue.disconnect()
    rogue.loop_stop()

    gw = Gateway(cfg)
    disconnects: list[object] = []
    on_disc = gw.links.alert.client.on_disconnect

    def count_disconnect(*args: Any) -> None:
        disconnects.append(args)
        on_disc(*args)

    gw.links.alert.client.on_disconnect = count_disconnect
    gw.start()
    try:
        assert t.wait_until(lambda: gw.stats()["fall_alerts"] == 3, 15), "queued fall alerts were wiped"
        # the same trick while the gateway is online must not kick it off
        rogue, rc = probe_client(b.port, "hub-2", creds["hub-2"], "gw-1-alerts", clean=True)
        assert rc == 0  # valid credentials: connected, but as hub-2's own client id
        _publish(b.port, "hub-1", creds["hub-1"], [t.fall("site-a", "hub-1", 4)])
        assert t.wait_until(lambda: gw.stats()["fall_alerts"] == 4, 15)
        time.sleep(0.5)
        rogue.disconnect()
        rogue.loop_stop()
        assert disconnects == [] and gw.links.alert.connected
    finally:
        gw.stop()


# ---------------------------------------------------------------- item 9: a hub confined to its site


def test_hub_cannot_publish_for_another_site(
    prod_broker: ProdBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b, creds = prod_broker, prod_broker.creds
    gw = Gateway(_gateway_cfg(b, tmp_path, monkeypatch))
    gw.start()
    try:
        assert t.wait_until(lambda: gw.ready()[0]), b.log()
        # hub-1 is provisioned at site-a: a fall "for" site-b's resident must never arrive
        _publish(b.port, "hub-1", creds["hub-1"], [t.fall("site-b", "hub-1", 1)])
        _publish(b.port, "hub-1", creds["hub-1"], [t.fall("site-a", "hub-1", 2)])
        assert t.wait_until(lambda: gw.stats()["fall_alerts"] >= 1, 15)
        assert gw.wait_idle(5)
        assert {(a["site_id"], a["device_id"]) for a in gw.alerts()} == {("site-a", "hub-1")}
        assert gw.stats()["received"] == 1
    finally:
        gw.stop()


def test_gateway_rejects_a_known_device_under_another_site(
    mosquitto: Mosquitto, tmp_path: Path, unique_name: str, start_gateway: Any
) -> None:
    """Behind a broker whose ACL is too wide (not the generated one), the registry still holds."""
    gw, pub = start_gateway(t.make_cfg(mosquitto, None, tmp_path, unique_name))
    dead: list[bytes] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"dlq-{unique_name}", protocol=mqtt.MQTTv5)
    sub.on_message = lambda c, u, m: dead.append(m.payload)
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe("fallwatch/v1/_dlq/#", qos=1)
    sub.loop_start()
    try:
        site_a, site_b, hub = f"a-{unique_name}"[:40], f"b-{unique_name}"[:40], "hub-x"
        pub.publish(*t.health(site_a, hub, 1))
        assert pub.wait()
        assert t.wait_until(lambda: gw.stats()["stored"] == 1)
        pub.publish(*t.fall(site_b, hub, 2))  # forged: hub-x belongs to site a
        pub.publish(*t.fall(site_a, hub, 3))
        assert pub.wait()
        assert t.wait_until(lambda: gw.stats()["fall_alerts"] == 1 and gw.stats()["rejected"] == 1, 15)
        assert gw.wait_idle(5)
        assert {a["site_id"] for a in gw.alerts()} == {site_a}
        assert gw.stats()["rejected_by_reason"] == {"site_mismatch": 1}
        assert t.wait_until(lambda: any(json.loads(d)["reason"] == "site_mismatch" for d in dead), 10)
        letter = next(json.loads(d) for d in dead if json.loads(d)["reason"] == "site_mismatch")
        assert site_a in letter["detail"] and site_b in letter["detail"]
    finally:
        sub.loop_stop()
        sub.disconnect()


# ---------------------------------------------------------------- item 12: HTTP resource leak


def _http(url: str, method: str = "GET", token: str | None = None, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status), dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return int(e.code), dict(e.headers), e.read()


@pytest.fixture
def http_gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Gateway, dict[str, str]]]:
    """Only state + HTTP (no broker needed), with a carer and an admin account."""
    monkeypatch.delenv("FALLWATCH_GATEWAY_API_TOKEN", raising=False)
    users = StaffDirectory(tmp_path / "staff.toml")
    tokens = {"carer": users.add("Anna Carer", "carer"), "admin": users.add("Ada Admin", "admin")}
    with serving(local_config(tmp_path, staff_users_file=str(tmp_path / "staff.toml"))) as gw:
        yield gw, tokens


def test_unauthenticated_requests_do_not_leak_descriptors(http_gateway: tuple[Gateway, dict[str, str]]) -> None:
    psutil = pytest.importorskip("psutil")
    gw, tokens = http_gateway
    proc = psutil.Process()
    assert _http(f"{gw.http_url}/alerts", token=tokens["carer"])[0] == 200  # warm up
    before = proc.num_fds()
    codes = {_http(f"{gw.http_url}/alerts")[0] for _ in range(300)}  # each on its own TCP connection
    assert codes <= {401, 429} and 429 in codes  # unauthenticated: refused, then rate-limited
    assert t.wait_until(lambda: proc.num_fds() <= before + 10, 10), f"{before} -> {proc.num_fds()} descriptors"
    status, _, body = _http(f"{gw.http_url}/alerts", token=tokens["carer"])
    assert status == 200 and json.loads(body) == []
    # the flood is not 300 audit rows either: refusals beyond the limit are counted, not audited
    assert len([r for r in gw.state.access_log() if r["status"] == 401]) < 300


# ---------------------------------------------------------------- item 13: the staff side


def test_dev_gateway_without_accounts_refuses_a_public_address(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FALLWATCH_GATEWAY_API_TOKEN", raising=False)
    with pytest.raises(ValueError, match="staff accounts"), serving(local_config(tmp_path, http_host="0.0.0.0")):
        pass  # starting its HTTP server is what fails


def _record_fall(state: StateStore, site: str = "site-a") -> str:
    topic, payload = t.fall(site, "hub-1", 1)
    return state.record_fall(contract.decode(topic, payload), contract.now_ms())[1]


def test_cross_site_post_cannot_acknowledge_an_alert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FALLWATCH_GATEWAY_API_TOKEN", raising=False)
    with serving(local_config(tmp_path, http_host="127.0.0.1")) as gw:
        aid = _record_fall(gw.state)
        url = f"{gw.http_url}/alerts/{urllib.request.quote(aid)}/ack"
        # what an attacker's page can send without a CORS preflight: a text/plain form POST
        status, _, _ = _http(url, "POST", body=b'{"by": "evil"}',
                             headers={"Content-Type": "text/plain", "Origin": "http://evil.example"})
        assert status in (403, 415)
        status, _, _ = _http(url, "POST", body=b'{"by": "evil"}',
                             headers={"Content-Type": "application/json", "Origin": "http://evil.example"})
        assert status == 403
        # DNS rebinding: the attacker's name resolving to 127.0.0.1 still carries its Host
        status, _, _ = _http(f"{gw.http_url}/alerts", headers={"Host": "evil.example"})
        assert status == 403
        assert gw.state.alert(aid)["status"] == "raised"  # type: ignore[index]
        # the same-origin page (or a CLI with a JSON body and no Origin) still works
        status, _, body = _http(url, "POST", body=b'{"by": "nurse"}',
                                headers={"Content-Type": "application/json", "Origin": gw.http_url or ""})
        assert status == 200 and json.loads(body)["acked_by"] == "nurse"


def test_security_headers(http_gateway: tuple[Gateway, dict[str, str]]) -> None:
    gw, tokens = http_gateway
    for path, token in (("/staff", None), ("/alerts", tokens["carer"]), ("/alerts", None), ("/healthz", None)):
        _, headers, _ = _http(f"{gw.http_url}{path}", token=token)
        h = {k.lower(): v for k, v in headers.items()}
        assert "frame-ancestors 'none'" in h.get("content-security-policy", ""), path
        assert h.get("x-content-type-options") == "nosniff", path
        assert "no-store" in h.get("cache-control", ""), path


def test_reserved_account_names_cannot_speak_for_others(
    http_gateway: tuple[Gateway, dict[str, str]], tmp_path: Path
) -> None:
    gw, _ = http_gateway
    users = StaffDirectory(tmp_path / "staff.toml")
    for name in ("anonymous", "api-token"):
        with pytest.raises(StaffError, match="reserved"):
            users.add(name, "carer")
    # an accounts file edited by hand with a reserved name is refused as a whole, loudly
    token = "hand-made-token-0123456789"
    with (tmp_path / "staff.toml").open("a") as f:
        f.write(f'\n[[user]]\nname = "api-token"\nrole = "carer"\n'
                f'token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n')
    aid = _record_fall(gw.state)
    status, _, body = _http(f"{gw.http_url}/alerts/{urllib.request.quote(aid)}/ack", "POST", token=token,
                            body=b'{"by": "Someone Else"}', headers={"Content-Type": "application/json"})
    assert status == 500 and b"reserved" in body
    assert gw.state.alert(aid)["status"] == "raised"  # type: ignore[index]


def test_free_text_cannot_forge_staff_log_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FALLWATCH_GATEWAY_API_TOKEN", "automation-token-0123456789")
    with serving(local_config(tmp_path, http_host="127.0.0.1")) as gw:
        aid = _record_fall(gw.state)
        forged = "nurse\nFALL ALERT fall:site-z:hub-9:e1: site site-z hub hub-9\r\x1b[2K"
        with caplog.at_level(logging.INFO, logger="fallwatch.gateway.alerts"):
            status, _, _ = _http(f"{gw.http_url}/alerts/{urllib.request.quote(aid)}/ack", "POST",
                                 token="automation-token-0123456789", body=json.dumps({"by": forged}).encode(),
                                 headers={"Content-Type": "application/json"})
        assert status == 200
        lines = [r.getMessage() for r in caplog.records if r.name == "fallwatch.gateway.alerts"]
        assert any("acknowledged by" in m for m in lines)
        for m in lines:
            assert not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in m), repr(m)


def test_generated_passwd_is_private_and_passwords_stay_off_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argvs: list[list[str]] = []
    real_run, real_popen = subprocess.run, subprocess.Popen

    def run(args: Any, *a: Any, **kw: Any) -> Any:
        argvs.append([str(x) for x in args])
        return real_run(args, *a, **kw)

    class Popen(real_popen):  # type: ignore[misc, valid-type]
        def __init__(self, args: Any, *a: Any, **kw: Any) -> None:
            argvs.append([str(x) for x in args])
            super().__init__(args, *a, **kw)

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(subprocess, "Popen", Popen)
    out = tmp_path / "broker"
    generate(out, [("site-a", "hub-1")], ["gw-1"], tls_dir="/etc/mosquitto/certs", data_dir=str(tmp_path))
    creds = read_credentials(out)
    assert argvs, "mosquitto_passwd was not used"
    for argv in argvs:
        assert not any(pw in arg for pw in creds.values() for arg in argv), argv
    mode = (out / "passwd").stat().st_mode & 0o777
    assert mode & 0o007 == 0, oct(mode)  # never world-readable
    text = (out / "passwd").read_text()
    assert all(pw not in text for pw in creds.values()) and text.count("$7$") == len(creds)



@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_audit_log_is_append_only_and_verifiable(backend: str, tmp_path: Path, unique_name: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    dsn = postgres_database(unique_name) if backend == "postgresql" else str(tmp_path / "st.sqlite")
    cfg_path = tmp_path / "gw.toml"
    cfg_path.write_text(f'[gateway]\nstate_db = "{dsn}"\n')
    st = StateStore(dsn)
    st.setup()
    try:
        aid = _record_fall(st)
        st.transition(aid, "acknowledge", "nurse", contract.now_ms())
        for i in range(3):
            st.log_access("nurse", "carer", "GET", "/alerts", 200, "127.0.0.1", contract.now_ms() + i)
        assert main(["gateway", "audit-verify", "--config", str(cfg_path)]) == 0
        capsys.readouterr()

        conn = st.dialect.connect()
        q = st.dialect.sql
        # the gateway's own database user cannot rewrite history ...
        for stmt in ("UPDATE access_log SET actor = 'nobody'", "DELETE FROM alert_log"):
            with pytest.raises(Exception, match="append-only"):
                conn.execute(q(stmt))
            conn.rollback()
        # ... and if someone with more rights does (drops the guard and edits a row), it shows
        if backend == "sqlite":
            conn.execute("DROP TRIGGER access_log_no_update")
        else:
            conn.execute("DROP TRIGGER access_log_no_update ON access_log")
        conn.execute(q("UPDATE access_log SET actor = 'nobody' WHERE id = (SELECT MIN(id) FROM access_log)"))
        conn.commit()
        conn.close()
        assert main(["gateway", "audit-verify", "--config", str(cfg_path)]) == 1
        assert "access_log" in capsys.readouterr().out
    finally:
        st.close()


# ---------------------------------------------------------------- item 14: model updates


@pytest.fixture
def model_store(tmp_path: Path) -> Any:
    from fallwatch.models.detector import DEFAULT_MODEL_PATH

    if not DEFAULT_MODEL_PATH.exists():
        pytest.skip("no shipped ONNX fall model")
    return tmp_path / "models"




def test_manifest_for_another_model_is_refused(model_store: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fallwatch.edge import ota

    key = Ed25519PrivateKey.generate()
    data = model_bytes("5.0.0")
    manifest = {"model": "risk", "version": "5.0.0", "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data), "expires_ms": contract.now_ms() + 86_400_000}
    signed = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    doc = {"manifest": manifest, "signature": base64.b64encode(key.sign(signed)).decode(),
           "model_b64": base64.b64encode(data).decode()}
    store = hub_model_store(model_store, model_pubkey=ota.public_key_b64(key))
    with pytest.raises(ota.UpdateError, match="model"):
        store.install(json.dumps(doc).encode())


def test_version_floor_survives_rollback_and_restart(model_store: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fallwatch.edge import ota

    key = Ed25519PrivateKey.generate()
    pub = ota.public_key_b64(key)
    store = hub_model_store(model_store, model_pubkey=pub)
    store.install(ota.sign_update(key, model_bytes("7.0.0"), "7.0.0"))
    # the installed model breaks on disk, the hub restarts and falls back to the shipped model
    (model_store / "current.onnx").write_bytes(b"corrupt")
    (model_store / "previous.onnx").unlink(missing_ok=True)
    store = hub_model_store(model_store, model_pubkey=pub)
    assert store.running.version != "7.0.0"
    for old in ("7.0.0", "6.9.9"):  # an attacker replays an old, validly signed update
        with pytest.raises(ota.UpdateError, match="not newer"):
            store.install(ota.sign_update(key, model_bytes(old), old))
    store.install(ota.sign_update(key, model_bytes("7.0.1"), "7.0.1"))
    assert store.running.version == "7.0.1"


def test_signing_key_rotation(model_store: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fallwatch.edge import ota

    old, new, rogue = (Ed25519PrivateKey.generate() for _ in range(3))
    store = hub_model_store(model_store, model_pubkey=ota.public_key_b64(old), model_pubkeys=[ota.public_key_b64(new)])
    store.install(ota.sign_update(old, model_bytes("8.0.0"), "8.0.0"))
    store.install(ota.sign_update(new, model_bytes("8.1.0"), "8.1.0"))
    with pytest.raises(ota.UpdateError, match="signature"):
        store.install(ota.sign_update(rogue, model_bytes("8.2.0"), "8.2.0"))


class _Oversized(http.server.BaseHTTPRequestHandler):
    """Serves far more than any model may be, and counts what it managed to send."""

    sent = 0
    total = 0

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        chunk = b"\0" * 65536
        self.send_response(200)
        self.send_header("Content-Length", str(type(self).total))
        self.end_headers()
        try:
            while type(self).sent < type(self).total:
                self.wfile.write(chunk)
                type(self).sent += len(chunk)
        except OSError:
            pass


def test_url_download_stops_at_the_size_limit(model_store: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fallwatch.edge import ota

    key = Ed25519PrivateKey.generate()
    _Oversized.sent, _Oversized.total = 0, 8 * ota.MAX_MODEL_BYTES
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Oversized)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        data = model_bytes("9.0.0")
        url = f"http://127.0.0.1:{srv.server_address[1]}/model.onnx"
        store = hub_model_store(model_store, model_pubkey=ota.public_key_b64(key))
        with pytest.raises(ota.UpdateError, match="larger"):
            store.install(ota.sign_update(key, data, "9.0.0", inline=False, url=url))
        time.sleep(0.5)
        assert _Oversized.sent < 2 * ota.MAX_MODEL_BYTES, f"read {_Oversized.sent} bytes"
    finally:
        srv.shutdown()
        srv.server_close()
