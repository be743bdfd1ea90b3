"""Signed model updates: a bad signature is refused and the old model keeps running."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fallwatch.config import load_config
from fallwatch.edge import ota, synth
from fallwatch.edge.agent import EdgeAgent
from fallwatch.models.detector import DEFAULT_MODEL_PATH
from fallwatch.protocol import topics
from fallwatch.testing.models import model_bytes
from fallwatch.testing.recorder import UplinkRecorder
from fallwatch.testing.services import Mosquitto

pytestmark = pytest.mark.integration

needs_model = pytest.mark.skipif(
    not DEFAULT_MODEL_PATH.exists(), reason="no shipped ONNX fall model"
)


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def agent(
    mosquitto: Mosquitto, tmp_path: Path, unique_name: str, key: Ed25519PrivateKey
) -> Iterator[EdgeAgent]:
    cfg = load_config(
        None,
        {
            "mqtt": {"url": mosquitto.url},
            "edge": {
                "site_id": unique_name,
                "device_id": "hub-1",
                "cancel_window_s": 1.0,
                "outbox_path": str(tmp_path / "o.sqlite"),
                "model_dir": str(tmp_path / "m"),
                "model_pubkey": ota.public_key_b64(key),
            },
        },
    )
    a = EdgeAgent(cfg)
    a.start()
    # the hub subscribes to its downlinks in on_connect, then publishes its 'ready' birth on the
    # same connection: once the broker has acked that, the subscriptions are in place, so a
    # manifest published by the test cannot slip past an agent that is not listening yet
    deadline = time.monotonic() + 10
    while a.stats().get("acked", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert a.stats().get("acked", 0) >= 1, "agent never got its birth message acknowledged"
    yield a
    a.stop()


def detects_a_fall(agent: EdgeAgent, sensor: str, t0_s: float) -> bool:
    before = agent.stats()["alerts_raised"]
    a0, g0 = synth.quiet(500)
    fa, fg, _ = synth.fall(post_s=8)
    pk = synth.packets(sensor, np.vstack([a0, fa]), np.vstack([g0, fg]), per_packet=25)
    frames = synth.frames("hub-1", pk, t0_s=t0_s)
    for f in frames:
        agent.feed([f], f.rx_t_s)
    agent.feed([], frames[-1].rx_t_s + 2.0)
    return agent.stats()["alerts_raised"] == before + 1


@needs_model
def test_bad_signature_refused_over_mqtt_and_old_model_keeps_running(
    agent: EdgeAgent, mosquitto: Mosquitto, unique_name: str
) -> None:
    old = agent.model_version
    rogue = Ed25519PrivateKey.generate()  # not the configured key
    blob = ota.sign_update(rogue, model_bytes("9.0.0"), "9.0.0")
    cfg = agent.cfg.mqtt
    with UplinkRecorder(cfg, f"rec-{unique_name}", site=unique_name) as rec:
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        pub.connect(cfg.host, cfg.port)
        pub.loop_start()
        pub.publish(topics.ota_model(unique_name, "hub-1"), blob, qos=1).wait_for_publish(5)
        assert rec.wait_for(lambda r: len(r.of_kind("ota_status")) >= 1)
        status = rec.of_kind("ota_status")[0].msg.data
        pub.publish(
            topics.ota_model(unique_name, "hub-1"), b"", qos=1, retain=True
        ).wait_for_publish(5)
        pub.loop_stop()
        pub.disconnect()
    assert status.status == "rejected" and "signature" in status.detail
    assert agent.model_version == old
    assert agent.stats()["model_update_rejected"] == 1
    assert detects_a_fall(agent, "wear-1", 0.0)  # the old model still runs


@needs_model
def test_tampered_manifest_and_broken_model_are_refused(
    agent: EdgeAgent, key: Ed25519PrivateKey
) -> None:
    old = agent.model_version
    doc = json.loads(ota.sign_update(key, model_bytes("2.0.0"), "2.0.0"))
    doc["manifest"]["version"] = "3.0.0"  # signed as 2.0.0
    assert not agent.apply_model_update(json.dumps(doc).encode())
    garbage = b"not an onnx model"
    assert not agent.apply_model_update(
        ota.sign_update(key, garbage, "2.0.0")
    )  # signed, fails to load
    doc = json.loads(ota.sign_update(key, model_bytes("2.0.0"), "2.0.0"))
    doc["model_b64"] = base64.b64encode(model_bytes("2.0.1")).decode()  # hash mismatch
    assert not agent.apply_model_update(json.dumps(doc).encode())
    # a model that loads but scores the golden vectors wrong (threshold so low everything is a fall)
    assert not agent.apply_model_update(
        ota.sign_update(key, model_bytes("2.0.0", threshold="0.0001"), "2.0.0")
    )
    assert not agent.apply_model_update(
        ota.sign_update(key, model_bytes("0.9.0"), "0.9.0")
    )  # downgrade
    st = agent.stats()
    assert st["model_update_rejected"] == 3 and st["model_update_rolled_back"] == 2
    assert agent.model_version == old
    assert detects_a_fall(agent, "wear-2", 0.0)


@needs_model
def test_valid_update_is_installed_swapped_and_survives_restart(
    agent: EdgeAgent, key: Ed25519PrivateKey
) -> None:
    assert detects_a_fall(agent, "wear-1", 0.0)
    assert agent.apply_model_update(ota.sign_update(key, model_bytes("1.5.0"), "1.5.0"))
    assert agent.model_version == "1.5.0"
    assert all(w.det.model is agent.model for w in agent.sensors.wearables.values())
    assert detects_a_fall(agent, "wear-2", 100.0)
    assert (Path(agent.cfg.edge.model_dir) / "current.onnx").exists()
    again = EdgeAgent(agent.cfg)  # a restarted agent loads the installed model
    assert again.model_version == "1.5.0"


def test_updates_disabled_without_a_configured_key(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    cfg = load_config(
        None,
        {"edge": {"outbox_path": str(tmp_path / "o.sqlite"), "model_dir": str(tmp_path / "m")}},
    )
    store = ota.ModelStore(cfg.edge, running=None)
    with pytest.raises(ota.UpdateError, match="disabled"):
        store.install(ota.sign_update(key, b"x", "1.0.0"))
