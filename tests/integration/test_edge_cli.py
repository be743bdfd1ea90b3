"""``fallwatch edge`` commands and the sensor sources (replay file, zigbee2mqtt bus)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from fallwatch.cli import main
from fallwatch.config import EdgeConfig, EdgeRoomSensor, PluginSection, load_config
from fallwatch.edge.sources import FrameReplaySource, Zigbee2MqttSource, make_source
from fallwatch.models.detector import DEFAULT_MODEL_PATH
from fallwatch.protocol.frames import decode_room
from fallwatch.testing.recorder import UplinkRecorder
from fallwatch.testing.services import Mosquitto

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_record_then_run_replay_through_the_cli(mosquitto: Mosquitto, tmp_path: Path, unique_name: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    rec_file = tmp_path / "flat.jsonl"
    assert main(["edge", "record", "--scenario", str(ROOT / "firmware_sim/scenarios/flat.toml"),
                 "--duration", "380", "--out", str(rec_file)]) == 0
    lines = rec_file.read_text().splitlines()
    assert len(lines) > 700 and json.loads(lines[0])["hub_id"] == "hub-flat-01"
    with rec_file.open("a") as fh:
        fh.write("this line is not a frame\n")
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f"""
[mqtt]
url = "{mosquitto.url}"
[edge]
site_id = "{unique_name}"
device_id = "hub-flat-01"
outbox_path = "{tmp_path / 'outbox.sqlite'}"
model_dir = "{tmp_path / 'models'}"
[[edge.wearables]]
id = "wear-r01"
resident_id = "r01"
[edge.source]
type = "replay"
path = "{rec_file}"
speed = 0
""")
    mq = load_config(cfg).mqtt
    with UplinkRecorder(mq, f"rec-{unique_name}", site=unique_name) as rec:
        capsys.readouterr()
        assert main(["edge", "run", "--config", str(cfg)]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert rec.wait_for(lambda r: len(r.falls()) >= 1)
        assert rec.wait_for(lambda r: any(m.msg.data.state == "offline" for m in r.of_kind("state")))
    assert summary["alerts_raised"] == 1  # the flat's fall at 330 s (its cancelled fall is after 380 s)
    fall = rec.falls()[0].msg
    assert fall.resident_id == "r01" and fall.data.sensor == "wear-r01"
    assert main(["edge", "outbox", "--config", str(cfg)]) == 0
    assert json.loads(capsys.readouterr().out)["depth"] == 0
    assert main(["edge", "run", "--config", str(cfg), "--validate-config"]) == 0


def test_replay_skips_bad_lines(tmp_path: Path) -> None:
    p = tmp_path / "r.jsonl"
    p.write_text('{"hub_id": "h", "sensor_id": "s", "transport": "ble", "rx_t_s": 0.1, "payload_b64": "AAA="}\n'
                 "garbage\n"
                 '{"hub_id": "h", "sensor_id": "s", "transport": "ble", "rx_t_s": 1.2, "payload_b64": "AAA="}\n')
    src = make_source(EdgeConfig(source=PluginSection(type="replay", path=p, speed=0)))
    assert isinstance(src, FrameReplaySource)
    batches = list(src.batches())
    assert sum(len(b) for b, _ in batches) == 2 and src.bad_lines == 1
    assert [t for _, t in batches] == [0.5, 1.0, 1.5]


@pytest.mark.integration
def test_zigbee2mqtt_source_maps_friendly_names(mosquitto: Mosquitto, unique_name: str) -> None:
    base = f"z2m-{unique_name}"
    cfg = EdgeConfig(device_id="hub-1", source=PluginSection(type="zigbee2mqtt", bus_url=mosquitto.url,
                                                              base_topic=base),
                     room_sensors=[EdgeRoomSensor(id="pir-1", kind="pir", room="living", topic="living_motion"),
                                   EdgeRoomSensor(id="bed-1", kind="bed", room="bedroom")])
    src = make_source(cfg, tick_s=0.1)
    assert isinstance(src, Zigbee2MqttSource)
    try:
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", mosquitto.port)
        pub.loop_start()
        time.sleep(0.5)  # the source subscribes
        for topic, payload in ((f"{base}/living_motion", b'{"occupancy": true, "battery": 90, "linkquality": 80,'
                                                         b' "illuminance": 12}'),
                               (f"{base}/bed-1", b'{"pressure": false}'),
                               (f"{base}/unknown_plug", b'{"state": "ON"}'),
                               (f"{base}/bed-1", b"not json")):
            pub.publish(topic, payload, qos=1).wait_for_publish(5)
        frames = []
        for batch, _ in src.batches():
            frames += batch
            if len(frames) >= 2:
                break
        pub.loop_stop()
        pub.disconnect()
    finally:
        src.close()
    evs = [decode_room(f.payload) for f in frames]
    assert [(e.sensor_id, e.kind, e.room, e.value) for e in evs] == [("pir-1", "pir", "living", True),
                                                                      ("bed-1", "bed", "bedroom", False)]
    assert evs[0].state["battery"] == 90 and "illuminance" not in evs[0].state
    assert src.unknown == 1


@pytest.mark.skipif(not DEFAULT_MODEL_PATH.exists(), reason="no shipped ONNX fall model")
def test_keygen_sign_and_offline_install(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnx

    assert main(["edge", "keygen", "--out", str(tmp_path / "key.pem")]) == 0
    pub = capsys.readouterr().out.split('"')[1]
    m = onnx.load(str(DEFAULT_MODEL_PATH))
    props = {p.key: p.value for p in m.metadata_props} | {"version": "7.0.0"}
    onnx.helper.set_model_props(m, props)
    onnx.save(m, str(tmp_path / "m.onnx"))
    assert main(["edge", "sign-model", "--key", str(tmp_path / "key.pem"), "--model", str(tmp_path / "m.onnx"),
                 "--version", "7.0.0", "--out", str(tmp_path / "u.json")]) == 0
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'[edge]\nmodel_dir = "{tmp_path / "models"}"\n')
    assert main(["edge", "install-model", "--config", str(cfg), str(tmp_path / "u.json")]) == 1  # no key: refused
    cfg.write_text(f'[edge]\nmodel_dir = "{tmp_path / "models"}"\nmodel_pubkey = "{pub}"\n')
    assert main(["edge", "install-model", "--config", str(cfg), str(tmp_path / "u.json")]) == 0
    assert (tmp_path / "models" / "current.onnx").exists()
