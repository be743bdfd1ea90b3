"""Issue 15 on a real Mosquitto started with the configuration the registry generates:
confinement, session binding, refusal of unknown and revoked clients, a connected revoked hub
cut off by the SIGHUP reload, rotation, TLS with the site CA, one-time enrolment bundles."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from fallwatch.cli import main
from fallwatch.gateway import pki
from fallwatch.gateway.enrol_server import EnrolServer
from fallwatch.gateway.registry import BrokerFiles, Registry
from fallwatch.gateway.state import StateStore
from fallwatch.testing import publisher as t
from fallwatch.testing.publisher import probe_client
from fallwatch.testing.services import can_connect, find_binary, free_port

pytestmark = pytest.mark.integration
P = "fallwatch/v1"


class RegistryBroker:
    """A registry with a gateway and three enrolled hubs, and Mosquitto started with exactly
    the files :meth:`Registry.sync_broker` wrote (plain loopback listener + TLS listener)."""

    def __init__(self, *, client_certs: bool = False) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="fw-prov-"))
        self.work.chmod(0o755)
        data = self.work / "data"
        data.mkdir()
        data.chmod(0o777)
        self.ca_dir = self.work / "ca"
        pki.init_ca(self.ca_dir, "test-site")
        pki.server_cert(self.ca_dir, ["localhost", "127.0.0.1"])
        self.port, self.tls_port = free_port(), free_port()
        self.log_file = self.work / "mosquitto.log"
        self.log_file.touch()
        self.log_file.chmod(0o666)
        self.files = BrokerFiles(
            out=self.work / "conf", gateways=["gw-1"], tls_dir=str(self.ca_dir), data_dir=str(data),
            plain_port=self.port, tls_port=self.tls_port, pid_file=self.work / "mosquitto.pid",
            log_file=str(self.log_file), client_certs=client_certs,
            # started as root, Mosquitto would drop to its own user, which cannot read this temp dir
            preamble="user root\n" if os.geteuid() == 0 else "")
        self.store = StateStore(str(self.work / "state.sqlite"))
        self.store.setup()
        self.reg = Registry(self.store)
        self.reg.setup()
        self.reg.add_device("gw-1", "gateway", actor="admin")
        self.creds = self.reg.gateway_credentials("gw-1", actor="admin")
        for hub, site in (("hub-1", "site-a"), ("hub-2", "site-a"), ("hub-3", "site-b")):
            self.reg.add_device(hub, "hub", actor="tech", site_id=site)
            self.creds[hub] = self.enrol(hub)["password"]
        self.reg.sync_broker(self.files)
        self.proc = subprocess.Popen([find_binary("mosquitto"), "-c", str(self.files.out / "mosquitto.conf")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert t.wait_until(lambda: can_connect(self.port) and can_connect(self.tls_port), 10), self.log()
        self.clients: list[mqtt.Client] = []

    def enrol(self, hub: str, ttl_s: float = 3600) -> dict[str, Any]:
        _bundle, code = self.reg.create_bundle(hub, actor="tech", broker_url=f"mqtts://127.0.0.1:{self.tls_port}",
                                              enrol_url="http://unused", ttl_s=ttl_s,
                                              ca_pem=pki.ca_pem(self.ca_dir))
        return self.reg.redeem(code)

    def sync(self) -> None:
        assert self.reg.sync_broker(self.files)["reloaded_pid"] == self.proc.pid

    def connect(self, user: str | None, pw: str | None = None, client_id: str | None = None) -> tuple[Client, int]:
        c, rc = probe_client(self.port, user, pw if pw is not None else self.creds.get(user or "", ""),
                             client_id or user or "anon", clean=True)
        self.clients.append(c)
        return Client(c), rc

    def log(self) -> str:
        return self.log_file.read_text()

    def close(self) -> None:
        for c in self.clients:
            c.loop_stop()
            c.disconnect()
        self.proc.terminate()
        self.proc.wait(10)
        self.store.close()
        shutil.rmtree(self.work, ignore_errors=True)


class Client:
    """A connected paho client that records what it receives and when it was disconnected."""

    def __init__(self, c: mqtt.Client) -> None:
        self.c = c
        self.got: list[tuple[str, bytes]] = []
        self.disconnected_at: float | None = None
        self.lock = threading.Lock()
        c.on_message = self._msg
        c.on_disconnect = self._disc
        c.reconnect_delay_set(60, 120)  # a cut-off client stays cut off during the test

    def _msg(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.got.append((m.topic, m.payload))

    def _disc(self, *_a: Any) -> None:
        if self.disconnected_at is None:
            self.disconnected_at = time.monotonic()

    def subscribe(self, topic: str) -> int:
        done = threading.Event()
        codes: list[int] = []

        def on_sub(_c: Any, _u: Any, _mid: Any, rcs: list[Any], _p: Any) -> None:
            codes.extend(r.value for r in rcs)
            done.set()

        self.c.on_subscribe = on_sub
        self.c.subscribe(topic, qos=1)
        assert done.wait(5)
        return codes[0]

    def publish(self, topic: str, payload: bytes = b"{}") -> None:
        self.c.publish(topic, payload, qos=1).wait_for_publish(5)

    def topics(self) -> list[str]:
        with self.lock:
            return [tp for tp, _ in self.got]


def _forge(rb: RegistryBroker, user: str, topic: str) -> None:
    c, rc = rb.connect(user, client_id=f"{user}-forger")
    assert rc == 0
    with_ack = c.c.publish(topic, b"forged", qos=1)
    with_ack.wait_for_publish(2) if c.c.is_connected() else None
    c.c.disconnect()


@pytest.fixture
def rb() -> Iterator[RegistryBroker]:
    b = RegistryBroker()
    yield b
    b.close()


def test_enrolled_hub_is_confined_to_its_own_site_device_and_downlinks(rb: RegistryBroker) -> None:
    gw, rc = rb.connect("gw-1")
    assert rc == 0
    alerts, rc = rb.connect("gw-1-alerts")
    assert rc == 0
    for topic in (f"{P}/+/+/state", f"{P}/+/+/evt/+"):
        assert gw.subscribe(topic) < 128
    assert alerts.subscribe(f"{P}/+/+/evt/fall") < 128
    hub1, rc = rb.connect("hub-1")
    assert rc == 0
    assert hub1.subscribe(f"{P}/site-a/hub-1/cmd/req/+") < 128  # its own downlinks
    # other residents' alerts and downlinks: Mosquitto 2.0 grants the subscription but the ACL
    # filters every delivery (checked below: nothing of hub-2's ever reaches hub-1)
    for topic in (f"{P}/site-a/hub-2/evt/fall", f"{P}/+/+/evt/fall", f"{P}/site-a/hub-2/cmd/req/+", "#"):
        hub1.subscribe(topic)

    # Mosquitto 2.0.11 closes the connection after refusing a QoS 1 publish: one connection each
    for forged in (f"{P}/site-a/hub-2/evt/fall", f"{P}/site-b/hub-1/evt/fall", f"{P}/site-b/hub-3/evt/fall"):
        _forge(rb, "hub-1", forged)
    own, _ = rb.connect("hub-1", client_id="hub-1-second")
    own.publish(f"{P}/site-a/hub-1/state", b"own-state")
    own.publish(f"{P}/site-a/hub-1/evt/fall", b"own-fall")
    assert t.wait_until(lambda: hub1.disconnected_at is not None, 5)  # same user = same client id: replaced
    hub1, _ = rb.connect("hub-1")
    hub1.subscribe(f"{P}/site-a/hub-1/cmd/req/+")
    for topic in (f"{P}/site-a/hub-2/evt/fall", f"{P}/+/+/evt/fall", f"{P}/site-a/hub-2/cmd/req/+", "#"):
        hub1.subscribe(topic)
    assert t.wait_until(lambda: f"{P}/site-a/hub-1/evt/fall" in alerts.topics(), 10)
    assert alerts.topics() == [f"{P}/site-a/hub-1/evt/fall"]  # the forgeries, sent first, never arrived
    assert f"{P}/site-a/hub-1/state" in gw.topics()

    hub2, rc = rb.connect("hub-2")
    assert rc == 0
    hub2.publish(f"{P}/site-a/hub-2/evt/fall", b"hub-2-fall")
    assert t.wait_until(lambda: f"{P}/site-a/hub-2/evt/fall" in alerts.topics(), 10)
    gw.publish(f"{P}/site-a/hub-2/cmd/req/ping", b"ping-2")
    gw.publish(f"{P}/site-a/hub-1/cmd/req/ping", b"ping")
    assert t.wait_until(lambda: f"{P}/site-a/hub-1/cmd/req/ping" in hub1.topics(), 10)
    time.sleep(0.3)
    # (one copy per matching subscription) not hub-2's fall, not hub-2's command
    assert set(hub1.topics()) == {f"{P}/site-a/hub-1/cmd/req/ping"}


def test_no_client_can_take_over_another_clients_session(rb: RegistryBroker) -> None:
    gw, _ = rb.connect("gw-1")
    alerts, _ = rb.connect("gw-1-alerts")
    hub2, _ = rb.connect("hub-2")
    for victim in ("gw-1", "gw-1-alerts", "hub-2"):
        intruder, rc = rb.connect("hub-1", client_id=victim)
        assert rc == 0  # allowed in, but as client id hub-1 (use_username_as_clientid)
        intruder.c.disconnect()
    _, rc = rb.connect("gw-1", pw=rb.creds["hub-1"])  # the gateway's user with a hub's password
    assert rc in (134, 135)
    time.sleep(0.5)
    assert gw.disconnected_at is None and alerts.disconnected_at is None and hub2.disconnected_at is None
    assert gw.c.is_connected() and alerts.c.is_connected() and hub2.c.is_connected()


def test_unknown_pending_and_anonymous_clients_are_refused(rb: RegistryBroker) -> None:
    assert rb.connect("hub-9", pw="guess")[1] in (134, 135)
    assert rb.connect(None)[1] in (134, 135)
    rb.reg.add_device("hub-4", "hub", actor="tech", site_id="site-a")  # registered, not yet enrolled
    rb.reg.create_bundle("hub-4", actor="tech", broker_url="x", enrol_url="y", ttl_s=60)
    rb.sync()
    assert "hub-4" not in (rb.files.out / "passwd").read_text()
    assert rb.connect("hub-4", pw="")[1] in (134, 135)


def test_a_connected_revoked_hub_is_cut_off_within_seconds_and_others_stay(rb: RegistryBroker) -> None:
    gw, _ = rb.connect("gw-1")
    hub2, _ = rb.connect("hub-2")
    hub1, rc = rb.connect("hub-1")
    assert rc == 0 and hub1.c.is_connected()
    rb.reg.revoke("hub-1", actor="tech", reason="stolen")
    t0 = time.monotonic()
    rb.sync()  # what `fallwatch device revoke` does: files from the registry, then SIGHUP
    assert t.wait_until(lambda: hub1.disconnected_at is not None, 10), rb.log()
    assert hub1.disconnected_at is not None and hub1.disconnected_at - t0 < 10
    assert rb.connect("hub-1")[1] in (134, 135)  # and it cannot come back
    time.sleep(0.5)
    assert gw.disconnected_at is None and hub2.disconnected_at is None  # no restart, nobody else dropped
    assert main_show_users(rb, "hub-1") == []


def main_show_users(rb: RegistryBroker, device: str) -> list[str]:
    return list(rb.reg.show(device)["broker_users"])


def test_rotation_old_credential_works_until_redeemed_then_only_the_new(rb: RegistryBroker) -> None:
    old = rb.creds["hub-3"]
    bundle, code = rb.reg.create_bundle("hub-3", actor="tech", broker_url="x", enrol_url="y", ttl_s=600)
    rb.sync()
    assert rb.connect("hub-3", pw=old)[1] == 0  # a pending rotation does not cut the hub off
    assert rb.connect("hub-3", pw=bundle["password"])[1] in (134, 135)
    rb.reg.redeem(code)
    rb.sync()
    assert t.wait_until(lambda: rb.connect("hub-3", pw=bundle["password"])[1] == 0, 5)
    assert rb.connect("hub-3", pw=old)[1] in (134, 135)


def _tls_client(port: int, ca: Path, user: str, pw: str, cert: tuple[Path, Path] | None = None) -> int | str:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv5)
    c.username_pw_set(user, pw)
    c.tls_set(ca_certs=str(ca), certfile=str(cert[0]) if cert else None, keyfile=str(cert[1]) if cert else None,
              cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    got: dict[str, int] = {}
    done = threading.Event()
    c.on_connect = lambda _c, _u, _f, rc, _p: (got.setdefault("rc", rc.value), done.set())
    c.on_disconnect = lambda *_a: (got.setdefault("rc", -2), done.set())  # e.g. the handshake failed
    try:
        c.connect("127.0.0.1", port)
    except (ssl.SSLError, OSError) as exc:
        return type(exc).__name__
    c.loop_start()
    done.wait(5)
    c.loop_stop()
    c.disconnect()
    return got.get("rc", -1)


def test_tls_works_with_the_site_ca_and_fails_with_another(rb: RegistryBroker, tmp_path: Path) -> None:
    assert _tls_client(rb.tls_port, rb.ca_dir / "ca.crt", "hub-1", rb.creds["hub-1"]) == 0
    other = tmp_path / "other-ca"
    pki.init_ca(other, "someone-else")
    assert _tls_client(rb.tls_port, other / "ca.crt", "hub-1", rb.creds["hub-1"]) == "SSLCertVerificationError"
    # expiry is reported
    rows = {r["cert"]: r for r in pki.report(rb.ca_dir)}
    assert rows["server"]["days_left"] > 800 and rows["ca"]["days_left"] > 3600


def test_client_certificates_use_the_certificate_identity_as_username(tmp_path: Path) -> None:
    b = RegistryBroker(client_certs=True)
    try:
        def cert_files(ca_dir: Path, cn: str) -> tuple[Path, Path]:
            crt, key, _ = pki.client_cert(ca_dir, cn)
            (tmp_path / f"{cn}.crt").write_text(crt)
            (tmp_path / f"{cn}.key").write_text(key)
            return tmp_path / f"{cn}.crt", tmp_path / f"{cn}.key"

        ca = b.ca_dir / "ca.crt"
        # no certificate: refused at the TLS handshake even with a valid password
        assert _tls_client(b.tls_port, ca, "hub-1", b.creds["hub-1"]) != 0
        other = tmp_path / "other-ca"
        pki.init_ca(other, "elsewhere")
        assert _tls_client(b.tls_port, ca, "hub-1", "", cert_files(other, "hub-1")) != 0
        # a site-CA certificate for hub-1: connected as hub-1 (the username it claims is ignored)
        crt = cert_files(b.ca_dir, "hub-1")
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="x", protocol=mqtt.MQTTv5)
        c.username_pw_set("gw-1", "whatever")
        c.tls_set(ca_certs=str(ca), certfile=str(crt[0]), keyfile=str(crt[1]))
        got = Client(c)
        c.connect("127.0.0.1", b.tls_port)
        c.loop_start()
        assert t.wait_until(c.is_connected, 5)
        alerts, rc = b.connect("gw-1-alerts")
        assert rc == 0 and alerts.subscribe(f"{P}/+/+/evt/fall") < 128
        got.c.publish(f"{P}/site-a/hub-1/evt/fall", b"own", qos=1).wait_for_publish(5)
        assert t.wait_until(lambda: alerts.topics() == [f"{P}/site-a/hub-1/evt/fall"], 5), b.log()
        # it is hub-1, not the gateway it named itself: the gateway's alerts stay closed to it
        got.subscribe(f"{P}/+/+/evt/fall")
        got.c.publish(f"{P}/site-b/hub-3/evt/fall", b"as-another-hub", qos=1)  # refused (and cut off)
        hub2, _ = b.connect("hub-2")
        hub2.publish(f"{P}/site-a/hub-2/evt/fall", b"hub-2")
        assert t.wait_until(lambda: len(alerts.topics()) == 2, 5)
        time.sleep(0.3)
        assert alerts.topics() == [f"{P}/site-a/hub-1/evt/fall", f"{P}/site-a/hub-2/evt/fall"]
        assert got.topics() == []
        c.loop_stop()
        c.disconnect()
    finally:
        b.close()


def test_edge_enrol_installs_owner_only_connects_and_a_used_or_expired_bundle_is_refused(
        rb: RegistryBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    srv = EnrolServer(rb.reg, rb.files).start()
    try:
        rb.reg.add_device("hub-5", "hub", actor="tech", site_id="site-a")
        bundle_file = tmp_path / "hub-5.bundle"
        bundle, _code = rb.reg.create_bundle("hub-5", actor="tech", broker_url=f"mqtts://localhost:{rb.tls_port}",
                                            enrol_url=srv.url, ttl_s=600, ca_pem=pki.ca_pem(rb.ca_dir))
        import json

        bundle_file.write_text(json.dumps(bundle))
        dest = tmp_path / "etc-fallwatch"
        assert main(["edge", "enrol", str(bundle_file), "--dir", str(dest)]) == 0, capsys.readouterr().err
        assert "broker connection ok" in capsys.readouterr().out
        assert dest.stat().st_mode & 0o777 == 0o700
        assert {p.name: p.stat().st_mode & 0o777 for p in dest.iterdir()} == {
            "edge.toml": 0o600, "ca.crt": 0o600, "enrolled.json": 0o600}
        # the same bundle again (a copy on a second box): refused, and nothing is installed
        assert main(["edge", "enrol", str(bundle_file), "--dir", str(tmp_path / "second")]) == 1
        assert "already used" in capsys.readouterr().err and not (tmp_path / "second").exists()

        # an expired bundle: refused, and its credential never works on the broker
        rb.reg.add_device("hub-6", "hub", actor="tech", site_id="site-b")
        b6, _ = rb.reg.create_bundle("hub-6", actor="tech", broker_url=f"mqtts://localhost:{rb.tls_port}",
                                     enrol_url=srv.url, ttl_s=0.2, ca_pem=pki.ca_pem(rb.ca_dir))
        f6 = tmp_path / "hub-6.bundle"
        f6.write_text(json.dumps(b6))
        time.sleep(0.3)
        assert main(["edge", "enrol", str(f6), "--dir", str(tmp_path / "h6")]) == 1
        assert "expired" in capsys.readouterr().err
        b6["expires_ms"] += 3_600_000  # a hand-edited expiry does not help: the server decides
        f6.write_text(json.dumps(b6))
        assert main(["edge", "enrol", str(f6), "--dir", str(tmp_path / "h6")]) == 1
        assert "expired" in capsys.readouterr().err
        assert rb.connect("hub-6", pw=b6["password"])[1] in (134, 135)

        # the QR token alone: fetches the sealed bundle once
        rb.reg.add_device("hub-7", "hub", actor="tech", site_id="site-b")
        _, code7 = rb.reg.create_bundle("hub-7", actor="tech", broker_url=f"mqtts://localhost:{rb.tls_port}",
                                        enrol_url=srv.url, ttl_s=600, ca_pem=pki.ca_pem(rb.ca_dir))
        token = f"fwenrol1:{code7}@{srv.url}"
        assert main(["edge", "enrol", token, "--dir", str(tmp_path / "h7")]) == 0, capsys.readouterr().err
        assert main(["edge", "enrol", token, "--dir", str(tmp_path / "h7b")]) == 1
        assert srv.redeemed == 2 and srv.refused == 3
    finally:
        srv.stop()


def test_enrolment_over_https_checks_the_server_by_the_bundle_ca_or_the_token_pin(
        rb: RegistryBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    srv = EnrolServer(rb.reg, rb.files, tls_cert=rb.ca_dir / "server.crt", tls_key=rb.ca_dir / "server.key").start()
    other = tmp_path / "other-ca"
    pki.init_ca(other, "impostor")
    pki.server_cert(other, ["127.0.0.1"])
    impostor = EnrolServer(rb.reg, rb.files, tls_cert=other / "server.crt", tls_key=other / "server.key").start()
    try:
        def bundle(hub: str, url: str) -> tuple[dict[str, Any], str]:
            rb.reg.add_device(hub, "hub", actor="tech", site_id="site-a")
            return rb.reg.create_bundle(hub, actor="tech", broker_url=f"mqtts://localhost:{rb.tls_port}",
                                        enrol_url=url, ttl_s=600, ca_pem=pki.ca_pem(rb.ca_dir))

        # the bundle file: the server is checked against the site CA in the bundle
        b8, _ = bundle("hub-8", impostor.url)
        (tmp_path / "b8").write_text(json.dumps(b8))
        assert main(["edge", "enrol", str(tmp_path / "b8"), "--dir", str(tmp_path / "h8")]) == 1
        assert "CERTIFICATE_VERIFY_FAILED" in capsys.readouterr().err and impostor.redeemed == 0
        b8["enrol_url"] = srv.url
        (tmp_path / "b8").write_text(json.dumps(b8))
        assert main(["edge", "enrol", str(tmp_path / "b8"), "--dir", str(tmp_path / "h8")]) == 0
        # the token alone: checked by the certificate pin it carries; a wrong pin sends nothing
        _, code9 = bundle("hub-9", srv.url)
        pin = pki.fingerprint((rb.ca_dir / "server.crt").read_bytes())
        wrong = pki.fingerprint((other / "server.crt").read_bytes())
        assert main(["edge", "enrol", f"fwenrol1:{code9}@{srv.url}#{wrong}", "--dir", str(tmp_path / "h9")]) == 1
        assert "certificate pin" in capsys.readouterr().err
        assert main(["edge", "enrol", f"fwenrol1:{code9}@{srv.url}#{pin}", "--dir", str(tmp_path / "h9")]) == 0
        assert srv.redeemed == 2 and srv.refused == 0
    finally:
        srv.stop()
        impostor.stop()


def test_a_reassigned_wearable_reaches_the_hub_and_its_next_fall_is_the_new_wearers(
        rb: RegistryBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from fallwatch.edge.enrol import install

    root = Path(__file__).resolve().parents[2]
    rec = tmp_path / "flat.jsonl"  # the flat scenario's hub: a fall 330 s in
    assert main(["edge", "record", "--scenario", str(root / "firmware_sim/scenarios/flat.toml"),
                 "--duration", "380", "--out", str(rec)]) == 0
    reg = rb.reg
    for rid in ("r01", "ann-2"):
        reg.add_resident("site-a", rid, actor="lead")
    reg.add_device("hub-flat-01", "hub", actor="tech", site_id="site-a")
    reg.add_device("wear-r01", "wearable", actor="tech", hub_id="hub-flat-01")
    reg.assign("wear-r01", "r01", actor="tech")
    bundle = rb.enrol("hub-flat-01")
    rb.sync()
    hub_dir = tmp_path / "hub"
    install(bundle, hub_dir, append=f'[edge.source]\ntype = "replay"\npath = "{rec}"\nspeed = 120\n')
    assert "resident_id = \"r01\"" in (hub_dir / "edge.toml").read_text()

    # the wearable changes hands after installation: the technician tells the running hub
    cfg = tmp_path / "fw.toml"
    cfg.write_text(f'[mqtt]\nurl = "mqtt://127.0.0.1:{rb.port}"\n[gateway]\nstate_db = "{rb.work / "state.sqlite"}"\n')
    monkeypatch.setenv("FALLWATCH_MQTT_CONFIG_PASSWORD", rb.creds["gw-1-config"])
    capsys.readouterr()
    assert main(["device", "assign", "wear-r01", "ann-2", "--push", "--config", str(cfg)]) == 0, \
        capsys.readouterr().err
    assert 'wearers {"wear-r01": "ann-2"}' in capsys.readouterr().out
    alerts, _ = rb.connect("gw-1-alerts")
    assert alerts.subscribe(f"{P}/site-a/hub-flat-01/evt/fall") < 128
    gw, _ = rb.connect("gw-1")
    assert gw.subscribe(f"{P}/site-a/hub-flat-01/cmd/res/config") < 128

    assert main(["edge", "run", "--config", str(hub_dir / "edge.toml")]) == 0
    assert t.wait_until(lambda: alerts.got, 10), (capsys.readouterr().out, gw.got)
    fall = json.loads(alerts.got[0][1])
    assert fall["resident_id"] == "ann-2" and fall["data"]["sensor"] == "wear-r01"
    reply = json.loads(gw.got[0][1])
    assert reply["data"]["status"] == "ok" and reply["data"]["version"].startswith("registry-")
    # the history keeps who wore it before; the push is audited
    assert [a["resident_id"] for a in reg.assignments("wear-r01")] == ["r01", "ann-2"]
    assert reg.log("hub-flat-01")[-1]["action"] == "device.push-config"
    # a hub that does not know a wearable refuses the whole document (and says so)
    monkeypatch.setenv("FALLWATCH_MQTT_CONFIG_PASSWORD", "wrong")
    assert main(["device", "push-config", "hub-flat-01", "--config", str(cfg)]) == 1
    assert "refused user 'gw-1-config'" in capsys.readouterr().err


def test_client_certificates_are_revoked_by_the_crl_until_redeemed_and_after_revocation(tmp_path: Path) -> None:
    b = RegistryBroker(client_certs=True)
    try:
        def cert_bundle(hub: str) -> tuple[tuple[Path, Path], str]:
            crt, key, _ = pki.client_cert(b.ca_dir, hub)
            n = len(list(tmp_path.iterdir()))
            (tmp_path / f"{n}.crt").write_text(crt)
            (tmp_path / f"{n}.key").write_text(key)
            _, code = b.reg.create_bundle(hub, actor="tech", broker_url="x", enrol_url="y", ttl_s=600,
                                          client_cert=(crt, key))
            b.sync()
            return (tmp_path / f"{n}.crt", tmp_path / f"{n}.key"), code

        ca = b.ca_dir / "ca.crt"

        def refused(cert: tuple[Path, Path]) -> bool:  # the SIGHUP reload is asynchronous: wait for it
            return t.wait_until(lambda: _tls_client(b.tls_port, ca, "hub-4", "", cert) != 0, 5)

        def accepted(cert: tuple[Path, Path]) -> bool:
            return t.wait_until(lambda: _tls_client(b.tls_port, ca, "hub-4", "", cert) == 0, 5)

        b.reg.add_device("hub-4", "hub", actor="tech", site_id="site-a")
        first, code1 = cert_bundle("hub-4")
        assert refused(first)  # issued, not yet redeemed: in the CRL
        b.reg.redeem(code1)
        b.sync()
        assert accepted(first)
        assert b.reg.show("hub-4")["cert_expires_in_days"] > 800
        second, code2 = cert_bundle("hub-4")  # rotation: the new one waits, the old one works
        assert refused(second)
        assert _tls_client(b.tls_port, ca, "hub-4", "", first) == 0
        b.reg.redeem(code2)
        b.sync()
        assert accepted(second)
        assert refused(first)
        b.reg.revoke("hub-4", actor="tech")
        b.sync()
        assert refused(second)
    finally:
        b.close()
