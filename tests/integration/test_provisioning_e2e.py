"""Issue 15 end to end: from an empty registry, a technician's commands enrol a new home (hub,
wearable, three room sensors) on a real Mosquitto run from the generated config, and the hub's
first fall reaches the gateway as the alert of the resident the registry assigned."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from fallwatch.cli import main
from fallwatch.config import load_config
from fallwatch.gateway.app import Gateway
from fallwatch.gateway.enrol_server import EnrolServer
from fallwatch.gateway.provision_cli import broker_files
from fallwatch.gateway.registry import Registry
from fallwatch.gateway.state import StateStore
from fallwatch.testing import publisher as t
from fallwatch.testing.services import find_binary, free_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_technician_enrols_a_home_and_its_first_fall_is_that_residents_alert(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "gwhost"
    work.mkdir()
    tmp_path.chmod(0o755)
    work.chmod(0o755)
    (work / "data").mkdir(mode=0o777)
    port, tls_port, enrol_port = free_port(), free_port(), free_port()
    cfg_file = work / "fallwatch.toml"
    cfg_file.write_text(f"""
[gateway]
gateway_id = "gw-1"
state_db = "{work / 'state.sqlite'}"
[provisioning]
broker_dir = "{work / 'mosquitto'}"
broker_pid_file = "{work / 'mosquitto.pid'}"
broker_data_dir = "{work / 'data'}"
ca_dir = "{work / 'ca'}"
hub_broker_url = "mqtts://localhost:{tls_port}"
enrol_url = "http://127.0.0.1:{enrol_port}"
gateways = ["gw-1"]
plain_port = {port}
tls_port = {tls_port}
""")
    monkeypatch.setenv("FALLWATCH_ACTOR", "tech-anna")
    c = ["--config", str(cfg_file)]

    def run(*argv: str) -> str:
        assert main([*argv, *c]) == 0, capsys.readouterr().err
        return capsys.readouterr().out

    # --- the gateway host, once: site CA, broker certificate, the gateway's broker identity
    run("device", "ca", "init", "--name", "riverside")
    run("device", "ca", "server", "localhost", "127.0.0.1")
    run("device", "add", "gw-1", "--kind", "gateway", "--out", str(work / "gw-1.env"))
    conf = work / "mosquitto" / "mosquitto.conf"
    if os.geteuid() == 0:  # the test runs as root: keep the broker from dropping to a user that cannot read tmp
        conf.write_text("user root\n" + conf.read_text())
    broker = subprocess.Popen([find_binary("mosquitto"), "-c", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    cfg = load_config(cfg_file)
    store = StateStore(cfg.gateway.state_db)
    reg = Registry(store)
    enrol = EnrolServer(reg, broker_files(cfg), "127.0.0.1", enrol_port).start()  # = `device enrol-server`
    env = dict(line.split("=", 1) for line in (work / "gw-1.env").read_text().splitlines() if "=" in line)
    monkeypatch.setenv("FALLWATCH_MQTT_ALERT_PASSWORD", env["FALLWATCH_MQTT_ALERT_PASSWORD"])
    gw_cfg = load_config(overrides={
        "mqtt": {"url": f"mqtt://127.0.0.1:{port}", "username": "gw-1", "password": env["FALLWATCH_MQTT_PASSWORD"]},
        "influx": {"url": "", "embedded_path": str(work / "series.sqlite")},
        "gateway": {"gateway_id": "gw-1", "state_db": cfg.gateway.state_db, "spool_dir": str(work / "spool"),
                    "http_port": 0},
    })
    gw = None
    try:
        assert t.wait_until(lambda: (work / "mosquitto.pid").exists(), 10)
        gw = Gateway(gw_cfg)
        gw.start()

        # --- the technician, for one new home
        run("resident", "add", "mary-12", "--site", "riverside", "--name", "Mary Smith", "--flat", "Flat 12",
            "--team", "north", "--next-of-kin", "John Smith +44 7700 900123")
        run("device", "add", "hub-flat-01", "--kind", "hub", "--site", "riverside", "--home", "flat-12")
        run("device", "add", "wear-r01", "--kind", "wearable", "--hub", "hub-flat-01", "--resident", "mary-12")
        for sensor, room, kind in (("pir-r01-living", "living", "pir"), ("bed-r01", "bedroom", "bed"),
                                   ("door-r01", "hall", "door")):
            run("device", "add", sensor, "--kind", "sensor", "--hub", "hub-flat-01", "--room", room,
                "--sensor-kind", kind)
        out = run("device", "enrol-bundle", "hub-flat-01", "--out", str(work / "hub-flat-01.bundle"))
        assert "fwenrol1:" in out

        # --- on the hub: install the bundle (its frames come from a recording of the flat scenario)
        hub_dir = tmp_path / "hub" / "etc-fallwatch"
        rec = tmp_path / "flat.jsonl"
        assert main(["edge", "record", "--scenario", str(ROOT / "firmware_sim/scenarios/flat.toml"),
                     "--duration", "380", "--out", str(rec)]) == 0
        local = tmp_path / "hub-source.toml"
        local.write_text(f'[edge.source]\ntype = "replay"\npath = "{rec}"\nspeed = 0\n')
        capsys.readouterr()
        assert main(["edge", "enrol", str(work / "hub-flat-01.bundle"), "--dir", str(hub_dir),
                     "--append", str(local)]) == 0, capsys.readouterr().err
        assert "broker connection ok" in capsys.readouterr().out
        hub_cfg = load_config(hub_dir / "edge.toml")
        assert hub_cfg.mqtt.url.startswith("mqtts://") and hub_cfg.mqtt.tls is not None
        assert [(w.id, w.resident_id) for w in hub_cfg.edge.wearables] == [("wear-r01", "mary-12")]
        assert len(hub_cfg.edge.room_sensors) == 3

        # --- the hub runs; its first fall (330 s into the recording) reaches the gateway
        assert main(["edge", "run", "--config", str(hub_dir / "edge.toml")]) == 0
        assert t.wait_until(lambda: any(a["kind"] == "fall" for a in store.alerts()), 20)
        falls = [a for a in store.alerts() if a["kind"] == "fall"]
        assert len(falls) == 1
        a = falls[0]
        assert (a["site_id"], a["device_id"], a["resident_id"], a["sensor"]) == (
            "riverside", "hub-flat-01", "mary-12", "wear-r01")
        who = reg.resident(a["site_id"], a["resident_id"])
        assert who is not None and who["name"] == "Mary Smith" and who["team"] == "north"
        assert reg.wearer("wear-r01", a["raised_ms"]) == "mary-12"
        assert reg.device("hub-flat-01")["status"] == "active"
        assert enrol.redeemed == 1
        assert reg.verify()["reg_log"]["broken_at"] is None
    finally:
        if gw is not None:
            gw.stop()
        enrol.stop()
        broker.send_signal(signal.SIGTERM)
        broker.wait(10)
        store.close()
