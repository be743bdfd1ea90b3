"""The edge agent end to end on a real Mosquitto: frames in, contract-valid messages on the broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fallwatch.config import FallwatchConfig, load_config
from fallwatch.edge import synth
from fallwatch.edge.agent import EdgeAgent
from fallwatch.protocol.frames import FLAG_CANCEL, SensorFrame
from fallwatch.testing.recorder import UplinkRecorder
from fallwatch.testing.services import Mosquitto

pytestmark = pytest.mark.integration


def edge_config(url: str, tmp: Path, site: str, **edge: object) -> FallwatchConfig:
    e = {"site_id": site, "device_id": "hub-1", "outbox_path": str(tmp / "outbox.sqlite"),
         "model_dir": str(tmp / "models"), **edge}
    return load_config(None, {"mqtt": {"url": url}, "edge": e})


def feed_all(agent: EdgeAgent, frames: list[SensorFrame], per_call: int = 5, tail_s: float = 0.0) -> None:
    for i in range(0, len(frames), per_call):
        chunk = frames[i:i + per_call]
        agent.feed(chunk, chunk[-1].rx_t_s)
    if tail_s:
        t = frames[-1].rx_t_s
        for k in range(1, int(tail_s) + 1):
            agent.feed([], t + k)


def fall_signal(quiet_s: float = 10.0, after_s: float = 30.0) -> tuple[np.ndarray, np.ndarray, int]:
    a0, g0 = synth.quiet(int(quiet_s * 50), walking=True)
    fa, fg, imp = synth.fall(post_s=after_s)
    return np.vstack([a0, fa]), np.vstack([g0, fg]), len(a0) + imp


@pytest.fixture
def recorder(mosquitto: Mosquitto, unique_name: str) -> Iterator[UplinkRecorder]:
    cfg = load_config(None, {"mqtt": {"url": mosquitto.url}}).mqtt
    with UplinkRecorder(cfg, f"rec-{unique_name}", site=unique_name) as rec:
        yield rec


@pytest.fixture
def agent(mosquitto: Mosquitto, tmp_path: Path, unique_name: str) -> Iterator[EdgeAgent]:
    a = EdgeAgent(edge_config(mosquitto.url, tmp_path, unique_name, cancel_window_s=10.0))
    a.start()
    yield a
    a.stop()


def test_one_fall_gives_exactly_one_alert_with_reasons(agent: EdgeAgent, recorder: UplinkRecorder) -> None:
    acc, gyro, imp = fall_signal()
    feed_all(agent, synth.frames("hub-1", synth.packets("wear-r01", acc, gyro)), tail_s=15)
    assert agent.flush(10)
    assert recorder.wait_for(lambda r: len(r.falls()) >= 1)
    assert recorder.wait_for(lambda r: any(m.msg.data.state == "ready" for m in r.of_kind("state")))
    falls = recorder.falls()
    assert len(falls) == 1
    msg = falls[0].msg
    assert msg.data.status == "alert"
    assert msg.data.sensor == "wear-r01"
    assert abs(msg.data.impact_ms - (agent.start_epoch_ms + imp * 20)) <= 100
    codes = {r.code for r in msg.data.reasons}
    assert {"impact", "model_score", "posture_change", "stillness"} <= codes
    assert 0.5 <= msg.data.confidence <= 1.0
    assert agent.outbox is not None
    assert msg.msg_id == f"hub-1:{agent.outbox.install_id}:{msg.seq}"  # unique per installation (issue 11.5)
    assert recorder.errors == []  # everything the agent sent passed the strict contract
    assert recorder.of_kind("health") and recorder.of_kind("tele")
    assert len(recorder.of_kind("test")) == 1  # the daily silent test alarm, sent at start
    st = agent.stats()
    assert st["alerts_raised"] == 1 and st["frame_errors"] == 0 and st["outbox_depth"] == 0


def test_walking_and_lying_down_raise_nothing(agent: EdgeAgent, recorder: UplinkRecorder) -> None:
    a0, g0 = synth.quiet(50 * 60, walking=True)
    a1, g1 = synth.lie_down(50 * 30)
    acc, gyro = np.vstack([a0, a1]), np.vstack([g0, g1])
    feed_all(agent, synth.frames("hub-1", synth.packets("wear-r01", acc, gyro)), tail_s=15)
    assert agent.flush(10)
    assert recorder.wait_for(lambda r: len(r.of_kind("tele")) >= 3)
    assert recorder.falls() == []
    assert agent.stats()["alerts_raised"] == 0


def test_cancel_within_window_cancels_and_is_logged(agent: EdgeAgent, recorder: UplinkRecorder) -> None:
    acc, gyro, imp = fall_signal()
    pk = synth.packets("wear-r01", acc, gyro, flags_at={imp + 5 * 50: FLAG_CANCEL})
    feed_all(agent, synth.frames("hub-1", pk), tail_s=15)
    assert agent.flush(10)
    assert recorder.wait_for(lambda r: len(r.falls()) >= 1)
    assert recorder.falls("alert") == []
    cancelled = recorder.falls("cancelled")
    assert len(cancelled) == 1
    assert "cancelled_by_wearer" in {r.code for r in cancelled[0].msg.data.reasons}
    assert agent.stats()["alerts_cancelled"] == 1


def test_cancel_after_the_window_does_not_cancel(agent: EdgeAgent, recorder: UplinkRecorder) -> None:
    acc, gyro, imp = fall_signal(after_s=40)
    pk = synth.packets("wear-r01", acc, gyro, flags_at={imp + 25 * 50: FLAG_CANCEL})  # window is 10 s
    feed_all(agent, synth.frames("hub-1", pk), tail_s=5)
    assert agent.flush(10)
    assert recorder.wait_for(lambda r: len(r.falls()) >= 1)
    assert [m.msg.data.status for m in recorder.falls()] == ["alert"]


@pytest.mark.parametrize("fault", ["stuck", "saturated"])
def test_device_fault_is_a_health_warning_not_a_fall(agent: EdgeAgent, recorder: UplinkRecorder,
                                                      fault: str) -> None:
    a0, g0 = synth.quiet(50 * 10, walking=True)
    bad = np.zeros((50 * 20, 3), dtype=np.float32)
    if fault == "stuck":
        bad[:] = (0.0, 2.7, 1.9)  # frozen at an odd, large reading
    else:
        bad[:] = (16.5, -16.5, 16.5)  # pinned to the rails
    acc = np.vstack([a0, bad])
    gyro = np.vstack([g0, np.zeros_like(bad)])
    feed_all(agent, synth.frames("hub-1", synth.packets("wear-r01", acc, gyro)), tail_s=35)
    assert agent.flush(10)
    assert recorder.wait_for(lambda r: any(
        any(fault in w for w in m.msg.data.warnings) for m in r.of_kind("health")), timeout_s=5)
    health = [m.msg for m in recorder.of_kind("health") if any(fault in w for w in m.msg.data.warnings)]
    assert health[-1].data.sensors["wear-r01"].status == fault
    assert recorder.falls() == []


def test_bad_frames_are_counted_not_fatal(agent: EdgeAgent, recorder: UplinkRecorder) -> None:
    acc, gyro, _ = fall_signal()
    frames = synth.frames("hub-1", synth.packets("wear-r01", acc, gyro))
    bad = [SensorFrame("hub-1", "wear-r01", "ble", frames[3].rx_t_s, frames[3].payload[:-1] + b"\x00"),
           SensorFrame("hub-1", "wear-r01", "ble", frames[4].rx_t_s, b"junk"),
           SensorFrame("hub-1", "pir-1", "zigbee", frames[5].rx_t_s, b'{"sensor": "pir-1"}'),
           SensorFrame("hub-1", "x", "lora", frames[5].rx_t_s, b"")]
    feed_all(agent, frames[:3] + bad + frames[3:], tail_s=15)
    st = agent.stats()
    assert st["frame_errors"] == 4
    assert st["frame_errors_crc"] == 1 and st["frame_errors_short"] == 1
    assert st["frame_errors_schema"] == 1 and st["frame_errors_transport"] == 1
    assert agent.flush(10)
    assert recorder.wait_for(lambda r: len(r.falls()) == 1)


def test_duplicated_and_reordered_packets_still_one_alert(agent: EdgeAgent, recorder: UplinkRecorder) -> None:
    acc, gyro, _ = fall_signal()
    frames = synth.frames("hub-1", synth.packets("wear-r01", acc, gyro))
    rng = np.random.default_rng(3)
    mixed: list[SensorFrame] = []
    for i in range(0, len(frames), 3):
        group = frames[i:i + 3]
        order = rng.permutation(len(group))
        mixed += [group[j] for j in order]
        if i % 9 == 0:
            mixed.append(group[0])  # a radio retransmission
    # receive times must be non-decreasing in a feed: give each frame its arrival position's time
    times = [frames[min(k, len(frames) - 1)].rx_t_s for k in range(len(mixed))]
    mixed = [SensorFrame(f.hub_id, f.sensor_id, f.transport, t, f.payload)
             for t, f in zip(times, mixed, strict=True)]
    feed_all(agent, mixed, tail_s=15)
    st = agent.stats()
    assert st["stream_duplicates"] >= len(frames) // 9
    assert st["stream_reordered"] > 0
    assert st["stream_gaps"] == 0
    assert agent.flush(10)
    assert recorder.wait_for(lambda r: len(r.falls()) >= 1)
    assert len(recorder.falls()) == 1


def test_remote_config_applied_and_bad_config_rejected(agent: EdgeAgent, recorder: UplinkRecorder,
                                                       mosquitto: Mosquitto, unique_name: str) -> None:
    import paho.mqtt.client as mqtt

    from fallwatch.protocol import topics

    # the birth message follows the agent's downlink subscriptions: it is listening after it
    assert recorder.wait_for(lambda r: any(m.msg.data.state == "ready" for m in r.of_kind("state")))
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    topic = topics.config(unique_name, "hub-1")
    try:
        pub.publish(topic, b'{"version": "7", "cancel_window_s": 25.0, "heartbeat_s": 20}', qos=1).wait_for_publish(5)
        assert recorder.wait_for(lambda r: len(r.of_kind("cmd_res")) >= 1)
        pub.publish(topic, b'{"version": "8", "cancel_window_s": 600}', qos=1).wait_for_publish(5)  # above 60 s
        pub.publish(topic, b'{"version": "9", "password": "x"}', qos=1).wait_for_publish(5)  # not remotely settable
        assert recorder.wait_for(lambda r: len(r.of_kind("cmd_res")) >= 3)
    finally:
        pub.loop_stop()
        pub.disconnect()
    replies = [m.msg.data for m in recorder.of_kind("cmd_res")]
    assert [r.status for r in replies] == ["ok", "rejected", "rejected"]
    assert replies[0].version == "7" and "unknown keys" in replies[2].detail
    assert agent.cancel_window_s == 25.0 and agent.heartbeat_s == 20.0  # the good one stays applied
