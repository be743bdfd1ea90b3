"""Per-device credentials, pattern ACLs and TLS on a real Mosquitto: the provisioning in docs/edge.md."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fallwatch.config import FallwatchConfig, load_config
from fallwatch.edge import synth
from fallwatch.edge.agent import EdgeAgent
from fallwatch.testing.recorder import UplinkRecorder
from fallwatch.testing.services import free_port

pytestmark = pytest.mark.integration

#: The ACL from docs/edge.md: a hub (username = device id) writes only its own uplinks and
#: reads only its own downlinks; the gateway reads every uplink and writes downlinks.
ACL = """
user gw
topic read fallwatch/v1/#
topic write fallwatch/v1/+/+/config
topic write fallwatch/v1/+/+/ota/model
topic write fallwatch/v1/+/+/cmd/req/+

pattern write fallwatch/v1/+/%u/state
pattern write fallwatch/v1/+/%u/health
pattern write fallwatch/v1/+/%u/tele/+
pattern write fallwatch/v1/+/%u/evt/+
pattern write fallwatch/v1/+/%u/cmd/res/+
pattern write fallwatch/v1/+/%u/ota/status
pattern read fallwatch/v1/+/%u/config
pattern read fallwatch/v1/+/%u/ota/model
pattern read fallwatch/v1/+/%u/cmd/req/+
"""
USERS = {"gw": "gw-secret-1", "hub-a": "a-secret-1", "hub-b": "b-secret-1"}


@pytest.fixture
def brokerdir() -> Iterator[Path]:
    """A broker work dir the broker can read even when it drops root to the 'mosquitto' user
    (password, ACL and TLS files; pytest's own tmp dirs are private to root)."""
    d = Path(tempfile.mkdtemp(prefix="fw-edge-sec-"))
    os.chmod(d, 0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def cfg_for(url: str, tmp: Path, site: str, device: str, user: str, password: str,
            tls: dict | None = None) -> FallwatchConfig:
    # its own client id: the rogue hub below must not take over the good hub's session (it
    # would knock it off, and both would reconnect in turn)
    mqtt: dict = {"url": url, "username": user, "password": password, "client_id": f"fallwatch-{user}-{device}"}
    if tls:
        mqtt["tls"] = tls
    return load_config(None, {"mqtt": mqtt, "edge": {
        "site_id": site, "device_id": device, "cancel_window_s": 0.0,
        "outbox_path": str(tmp / f"{device}-{user}.sqlite"), "model_dir": str(tmp / "m")}})


def raise_fall(agent: EdgeAgent, sensor: str = "wear-1") -> None:
    acc, gyro, _ = synth.fall(post_s=6)
    for f in synth.frames(agent.device_id, synth.packets(sensor, acc, gyro, per_packet=25)):
        agent.feed([f], f.rx_t_s)
    agent.feed([], 30.0)
    assert agent.stats()["alerts_raised"] == 1


def test_device_credentials_and_acl(mosquitto_factory, tmp_path: Path, brokerdir: Path) -> None:
    broker = mosquitto_factory(passwords=USERS, acl=ACL, workdir=brokerdir)
    gw = load_config(None, {"mqtt": {"url": broker.url, "username": "gw", "password": USERS["gw"]}}).mqtt
    with UplinkRecorder(gw, "gw-recorder", site="site-1") as rec:
        good = EdgeAgent(cfg_for(broker.url, tmp_path, "site-1", "hub-a", "hub-a", USERS["hub-a"]))
        good.start()
        raise_fall(good)
        assert good.flush(10)
        assert rec.wait_for(lambda r: len(r.falls()) == 1)

        # a hub with valid credentials of its own cannot speak for another hub
        rogue = EdgeAgent(cfg_for(broker.url, tmp_path, "site-1", "hub-a", "hub-b", USERS["hub-b"]))
        rogue.start()
        raise_fall(rogue, "wear-9")
        # refused by the broker (PUBACK 0x87), counted, and kept for retry: an alert is never given up.
        # Mosquitto may close the socket before that PUBACK leaves (then paho re-sends, and it may
        # happen again): either way the alert stays in the outbox and health says it is held back.
        def held_back() -> bool:
            return rogue.stats()["refused"] >= 1 or bool(rogue.uplink.warnings())

        deadline = time.monotonic() + 30
        while not held_back() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert held_back(), rogue.stats()
        assert rogue.outbox is not None and rogue.outbox.depth_by_kind().get("fall") == 1
        rogue.stop(timeout_s=1)

        # wrong password: never connected, and the alert waits on disk
        locked = EdgeAgent(cfg_for(broker.url, tmp_path, "site-1", "hub-b", "hub-b", "wrong-password"))
        locked.start()
        raise_fall(locked, "wear-7")
        assert not locked.flush(2.0)
        st = locked.stats()
        assert st["connects"] == 0 and locked.outbox is not None
        assert locked.outbox.depth_by_kind().get("fall") == 1
        locked.publisher.stop()
        good.stop()
        time.sleep(0.3)
    assert {m.msg.data.sensor for m in rec.falls()} == {"wear-1"}
    assert rec.errors == []


def _tls_files(tmp: Path) -> tuple[Path, Path, Path]:
    """A site CA and a broker certificate for 127.0.0.1 (what provisioning makes once per site)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fallwatch test site CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = tmp / "ca.crt", tmp / "broker.crt", tmp / "broker.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_tls_with_per_device_password(mosquitto_factory, tmp_path: Path, brokerdir: Path) -> None:
    ca, crt, key = _tls_files(brokerdir)
    for p in (ca, crt, key):
        os.chmod(p, 0o644)  # a test key: readable by the broker's unprivileged user
    tls_port = free_port()
    mosquitto_factory(passwords=USERS, acl=ACL, workdir=brokerdir, extra_conf=(
        f"listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {crt}\nkeyfile {key}\n"))
    url = f"mqtts://127.0.0.1:{tls_port}"
    gw = load_config(None, {"mqtt": {"url": url, "username": "gw", "password": USERS["gw"],
                                     "tls": {"ca_file": str(ca)}}}).mqtt
    with UplinkRecorder(gw, "gw-tls", site="site-1") as rec:
        agent = EdgeAgent(cfg_for(url, tmp_path, "site-1", "hub-a", "hub-a", USERS["hub-a"],
                                  tls={"ca_file": str(ca)}))
        agent.start()
        raise_fall(agent)
        assert agent.flush(10)
        assert rec.wait_for(lambda r: len(r.falls()) == 1)
        agent.stop()
    # the same agent against a CA it does not trust never connects (no silent downgrade)
    (tmp_path / "other").mkdir()
    other_ca, _, _ = _tls_files(tmp_path / "other")
    bad = EdgeAgent(cfg_for(url, tmp_path, "site-1", "hub-b", "hub-b", USERS["hub-b"], tls={"ca_file": str(other_ca)}))
    bad.start()
    time.sleep(1.5)
    assert bad.stats()["connects"] == 0
    bad.publisher.stop()
