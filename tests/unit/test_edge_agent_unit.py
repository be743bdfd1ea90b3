"""The whole edge agent without a broker: frames fed directly, MQTT replaced at the paho seam
by :class:`fallwatch.testing.fake_mqtt.FakeBroker` (the integration twin of these tests runs
on a real Mosquitto: tests/integration/test_edge_agent.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from fallwatch.config import load_config
from fallwatch.edge import synth
from fallwatch.edge.agent import EdgeAgent
from fallwatch.edge.decision import DecidedAlert
from fallwatch.protocol import contract as C
from fallwatch.protocol import topics
from fallwatch.protocol.frames import FLAG_CANCEL, SensorFrame
from fallwatch.testing.fake_mqtt import FakeBroker, FakeClient, wait_for

SITE, HUB = "unit-site", "hub-1"
CANCEL_S = 10.0


@pytest.fixture
def broker() -> Iterator[FakeBroker]:
    with FakeBroker() as b:
        yield b


@pytest.fixture
def agent(broker: FakeBroker, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[EdgeAgent]:
    extra = getattr(request, "param", {})  # edge settings a test asks for (indirect parametrisation)
    cfg = load_config(None, {"mqtt": {"url": "mqtt://127.0.0.1:1883"}, "edge": {
        "site_id": SITE, "device_id": HUB, "cancel_window_s": CANCEL_S,
        "outbox_path": str(tmp_path / "outbox.sqlite"), "model_dir": str(tmp_path / "models"), **extra}})
    a = EdgeAgent(cfg)
    a.start()
    # subscriptions are made in on_connect, before the birth: once 'ready' is out, it listens
    assert wait_for(lambda: any(_decode(m).data.state == "ready" for m in broker.published(topics.state(SITE, HUB))))
    yield a
    a.stop()


@pytest.fixture
def operator(broker: FakeBroker) -> Iterator[FakeClient]:
    """The gateway/operator side: publishes downlinks."""
    c = broker.factory(mqtt.CallbackAPIVersion.VERSION2, client_id="operator", protocol=mqtt.MQTTv5)
    c.connect_async("127.0.0.1", 1883)
    c.loop_start()
    assert wait_for(c.is_connected)
    yield c
    c.disconnect()
    c.loop_stop()


def _decode(m: object) -> C.Message:
    return C.decode(m.topic, m.payload)  # type: ignore[attr-defined]  # a FakeMessage


def uplinks(broker: FakeBroker, kind: str) -> list[C.Message]:
    """Decoded (strictly, as the gateway does) uplinks of this hub of one envelope kind."""
    out = []
    for m in broker.published(f"{topics.device_base(SITE, HUB)}/#"):
        if topics.parse(m.topic).kind in C.TOPIC_KIND:
            msg = C.decode(m.topic, m.payload)
            if C.kind_of(msg) == kind:
                out.append(msg)
    return out


def fall_frames(cancel_after_impact_s: float | None = None) -> tuple[list[SensorFrame], float]:
    """10 s of walking, then a fall and 30 s lying still; returns (frames, impact hub time)."""
    a0, g0 = synth.quiet(500, walking=True)
    fa, fg, imp = synth.fall(post_s=30)
    acc, gyro, i = np.vstack([a0, fa]), np.vstack([g0, fg]), len(a0) + imp
    flags = {} if cancel_after_impact_s is None else {i + int(cancel_after_impact_s * 50): FLAG_CANCEL}
    return synth.frames(HUB, synth.packets("wear-r01", acc, gyro, flags_at=flags)), i / 50.0


def feed(agent: EdgeAgent, frames: list[SensorFrame], until_s: float | None = None) -> None:
    """Frames in groups of 5, each group at its last frame's receive time; stop at ``until_s``."""
    for k in range(0, len(frames), 5):
        chunk = frames[k:k + 5]
        if until_s is not None and chunk[-1].rx_t_s > until_s:
            return
        agent.feed(chunk, chunk[-1].rx_t_s)


def test_injected_fall_gives_exactly_one_alert_after_the_cancel_window(
    agent: EdgeAgent, broker: FakeBroker
) -> None:
    events: list[DecidedAlert] = []
    agent.on_alert(events.append)
    frames, impact_s = fall_frames()
    decided_s = impact_s + 2.5  # the window's post-impact part must have arrived
    feed(agent, frames, until_s=decided_s + CANCEL_S - 1.0)
    st = agent.stats()
    assert st["decisions"] == 1 and st["alerts_raised"] == 0 and st["pending_alerts"] == 1  # held
    feed(agent, [f for f in frames if f.rx_t_s > decided_s + CANCEL_S - 1.0])
    for k in range(1, 40):  # and long after: still one
        agent.feed([], frames[-1].rx_t_s + k)
    assert agent.flush(5)
    falls = uplinks(broker, "fall")
    assert len(falls) == 1 and agent.stats()["alerts_raised"] == 1
    fall = falls[0]
    assert isinstance(fall, C.FallAlert) and fall.data.status == "alert" and fall.data.sensor == "wear-r01"
    assert abs(fall.data.impact_ms - (agent.start_epoch_ms + impact_s * 1000)) <= 100
    assert fall.ts_ms >= fall.data.impact_ms
    assert [(e.status, e.seq) for e in events] == [("alert", fall.seq)]  # told once committed, with its row


def test_cancel_press_within_the_window_gives_no_alert(agent: EdgeAgent, broker: FakeBroker) -> None:
    frames, _ = fall_frames(cancel_after_impact_s=5.0)
    feed(agent, frames)
    for k in range(1, 20):
        agent.feed([], frames[-1].rx_t_s + k)
    assert agent.flush(5)
    falls = uplinks(broker, "fall")
    assert [m.data.status for m in falls] == ["cancelled"]  # type: ignore[union-attr]  # FallAlert
    assert "cancelled_by_wearer" in {r.code for r in falls[0].data.reasons}
    st = agent.stats()
    assert st["alerts_raised"] == 0 and st["alerts_cancelled"] == 1


def test_getting_up_and_walking_within_the_window_stands_the_alert_down_logged(
    agent: EdgeAgent, broker: FakeBroker
) -> None:
    """Issue 12: a fast-path alert the wearer recovers from (up and walking) is downgraded to a
    logged ``cancelled`` FallAlert with reason ``recovered``, never silently dropped."""
    a0, g0 = synth.quiet(500, walking=True)
    fa, fg, _ = synth.fall(post_s=4)
    a1, g1 = synth.quiet(1500, walking=True, t0_s=30.0)  # back up, walking on
    acc, gyro = np.vstack([a0, fa, a1]), np.vstack([g0, fg, g1])
    frames = synth.frames(HUB, synth.packets("wear-r01", acc, gyro))
    feed(agent, frames)
    for k in range(1, 70):
        agent.feed([], frames[-1].rx_t_s + k)
    assert agent.flush(5)
    falls = uplinks(broker, "fall")
    assert [m.data.status for m in falls] == ["cancelled"]  # type: ignore[union-attr]  # FallAlert
    assert "recovered" in {r.code for r in falls[0].data.reasons}  # type: ignore[union-attr]
    st = agent.stats()
    assert st["decisions"] == 1 and st["alerts_raised"] == 0 and st["alerts_stood_down_recovered"] == 1
    assert st.get("no_recovery_decisions", 0) == 0


def test_lying_still_after_a_fall_is_one_alert_not_two(agent: EdgeAgent, broker: FakeBroker) -> None:
    """The fast path alerts; the no-recovery watch of the same impact decides 45 s later and is
    folded into it (one fall, one alert)."""
    a0, g0 = synth.quiet(500, walking=True)
    fa, fg, _ = synth.fall(post_s=60)
    frames = synth.frames(HUB, synth.packets("wear-r01", np.vstack([a0, fa]), np.vstack([g0, fg])))
    feed(agent, frames)
    for k in range(1, 30):
        agent.feed([], frames[-1].rx_t_s + k)
    assert agent.flush(5)
    assert [m.data.status for m in uplinks(broker, "fall")] == ["alert"]  # type: ignore[union-attr]
    st = agent.stats()
    assert st["alerts_raised"] == 1 and st["no_recovery_folded"] == 1


def test_device_fault_is_a_health_warning_and_no_fall(agent: EdgeAgent, broker: FakeBroker) -> None:
    a0, g0 = synth.quiet(500, walking=True)
    stuck = np.zeros((1000, 3), dtype=np.float32)
    stuck[:] = (0.0, 2.7, 1.9)  # frozen at an odd, large reading
    frames = synth.frames(HUB, synth.packets("wear-r01", np.vstack([a0, stuck]), np.vstack([g0, np.zeros_like(stuck)])))
    feed(agent, frames)
    for k in range(1, 36):
        agent.feed([], frames[-1].rx_t_s + k)
    assert agent.flush(5)
    stuck_note = "wearable wear-r01 stuck"  # later heartbeats also name the suppressed no-recovery decision
    health = [m for m in uplinks(broker, "health") if any(w.startswith(stuck_note) for w in m.data.warnings)]
    assert health, "no health warning about the stuck sensor"
    assert health[-1].data.sensors["wear-r01"].status == "stuck"
    assert uplinks(broker, "fall") == [] and agent.stats()["alerts_raised"] == 0


def _command(operator: FakeClient, name: str, payload: bytes) -> None:
    operator.publish(f"{topics.device_base(SITE, HUB)}/cmd/req/{name}", payload, qos=1)


def _replies(broker: FakeBroker, name: str) -> list[C.StatusData]:
    """Bodies of the hub's replies on ``cmd/res/{name}`` (decoded strictly)."""
    out = []
    for m in broker.published(topics.cmd_res(SITE, HUB, name)):
        msg = C.decode(m.topic, m.payload)
        assert isinstance(msg, C.CommandResult)
        out.append(msg.data)
    return out


def test_ping_and_self_test_are_answered_with_the_transaction(
    agent: EdgeAgent, broker: FakeBroker, operator: FakeClient
) -> None:
    frames, _ = fall_frames()
    feed(agent, frames[:100])  # a wearable the self-test can report on
    _command(operator, "ping", C.encode_downlink(C.CommandRequest(transaction="tx-ping-1")))
    _command(operator, "self-test", b'{"transaction": "tx-st-7"}')
    assert wait_for(lambda: _replies(broker, "ping") and _replies(broker, "self-test"))
    [ping] = _replies(broker, "ping")
    assert ping.status == "ok" and ping.transaction == "tx-ping-1" and ping.detail == "pong"
    assert ping.version == agent.model_version
    [st] = _replies(broker, "self-test")
    assert st.transaction == "tx-st-7" and st.status == "ok", st.detail
    assert "golden self-test passed" in st.detail and "sensors: 1 ok" in st.detail
    # the sensor health itself went out as a heartbeat right before the reply
    health = uplinks(broker, "health")
    assert "wear-r01" in health[-1].data.sensors
    assert agent.stats()["commands_ping"] == 1 and agent.stats()["commands_self-test"] == 1


def test_self_test_reports_a_sensor_that_went_silent(
    agent: EdgeAgent, broker: FakeBroker, operator: FakeClient
) -> None:
    frames, _ = fall_frames()
    feed(agent, frames[:100])
    agent.feed([], frames[99].rx_t_s + agent.cfg.edge.wearable_stale_s + 5)
    _command(operator, "self-test", b'{"transaction": "tx-2"}')
    assert wait_for(lambda: _replies(broker, "self-test"))
    [st] = _replies(broker, "self-test")
    assert st.status == "error" and "wear-r01 stale" in st.detail and st.transaction == "tx-2"


def test_unknown_and_malformed_commands_are_counted_and_answered(
    agent: EdgeAgent, broker: FakeBroker, operator: FakeClient
) -> None:
    _command(operator, "reboot", b'{"transaction": "tx-u"}')
    _command(operator, "ping", b'{"transaction": "tx-m", "surprise": 1}')  # unknown field: malformed
    _command(operator, "ping", b"not json")  # malformed, no transaction to answer with
    assert wait_for(lambda: agent.stats().get("commands_malformed", 0) == 2 and _replies(broker, "reboot")
                    and _replies(broker, "ping"))
    [unknown] = _replies(broker, "reboot")
    assert unknown.status == "error" and unknown.transaction == "tx-u" and "unknown command" in unknown.detail
    assert "ping" in unknown.detail and "self-test" in unknown.detail  # says what is known
    [malformed] = _replies(broker, "ping")  # only the one with a readable transaction
    assert malformed.status == "rejected" and malformed.transaction == "tx-m" and "surprise" in malformed.detail
    st = agent.stats()
    assert st["commands_unknown"] == 1 and st.get("commands_ping", 0) == 0


def test_remote_config_is_applied_and_a_bad_one_rejected(
    agent: EdgeAgent, broker: FakeBroker, operator: FakeClient
) -> None:
    t = topics.config(SITE, HUB)
    operator.publish(t, C.encode_downlink(C.RemoteConfig(version="7", cancel_window_s=25.0, heartbeat_s=20)), qos=1)
    assert wait_for(lambda: len(_replies(broker, "config")) == 1)
    operator.publish(t, b'{"version": "8", "cancel_window_s": 600}', qos=1)  # above the file's 60 s limit
    operator.publish(t, b'{"version": "9", "password": "x"}', qos=1)  # not remotely settable
    assert wait_for(lambda: len(_replies(broker, "config")) == 3)
    replies = _replies(broker, "config")
    assert [r.status for r in replies] == ["ok", "rejected", "rejected"]
    assert replies[0].version == "7" and replies[0].transaction == "7" and "unknown keys" in replies[2].detail
    assert agent.cancel_window_s == 25.0 and agent.heartbeat_s == 20.0


def test_outbox_rows_are_deleted_only_after_the_puback(agent: EdgeAgent, broker: FakeBroker) -> None:
    assert agent.flush(5)
    broker.hold_acks()
    frames, _ = fall_frames()
    feed(agent, frames)
    for k in range(1, 15):
        agent.feed([], frames[-1].rx_t_s + k)
    assert agent.stats()["alerts_raised"] == 1
    # the broker has the alert, but has not acknowledged it: the row stays on disk
    assert wait_for(lambda: len(broker.published(topics.fall(SITE, HUB))) == 1)
    assert not agent.flush(0.3)
    assert agent.outbox is not None and agent.outbox.depth_by_kind().get("fall") == 1
    assert broker.held_acks() >= 1
    broker.release_acks()
    assert agent.flush(5)
    assert agent.outbox.depth() == 0


def test_contract_valid_uplinks_only(agent: EdgeAgent, broker: FakeBroker) -> None:
    frames, _ = fall_frames()
    feed(agent, frames)
    for k in range(1, 15):
        agent.feed([], frames[-1].rx_t_s + k)
    assert agent.flush(5)
    kinds = set()
    for m in broker.published(f"{topics.device_base(SITE, HUB)}/#"):
        msg = C.decode(m.topic, m.payload)  # raises on anything the gateway would dead-letter
        assert agent.outbox is not None
        assert msg.msg_id == f"{HUB}:{agent.outbox.install_id}:{msg.seq}"  # unique per installation (issue 11.5)
        kinds.add(C.kind_of(msg))
    assert {"state", "fall", "health", "tele", "test"} <= kinds
    seqs = [C.decode(m.topic, m.payload).seq for m in broker.published(f"{topics.device_base(SITE, HUB)}/#")]
    assert len(set(seqs)) == len(seqs)
    json.loads(broker.published(topics.fall(SITE, HUB))[0].payload)  # plain JSON on the wire


def test_message_times_follow_a_step_of_the_hub_wall_clock(agent: EdgeAgent) -> None:
    """A hub that started with a wrong clock (dead RTC battery) and was set right by NTP
    kept stamping by the wrong one as long as it ran: the stamps were start + monotonic
    seconds. Found with the chaos suite's clock_jump fault (docs/chaos.md)."""
    import time as _time

    from fallwatch.edge.messages import WallClockWatch

    offset = [0.0]
    agent.wall_clock = WallClockWatch(wall=lambda: _time.time() + offset[0])
    before = agent.messages.ts(5.0)
    agent.feed([], 1.0)
    agent.feed([], 1.2)
    assert agent.messages.ts(5.0) == before and agent.stats().get("wall_clock_steps", 0) == 0
    offset[0] = 600.0  # NTP steps the clock 10 min ahead
    agent.feed([], 1.4)
    assert agent.messages.ts(5.0) == pytest.approx(before + 600_000, abs=50)
    assert agent.stats()["wall_clock_steps"] == 1
    assert any("wall clock stepped +600" in n for n in agent.telemetry.notes)  # on the next health heartbeat
    offset[0] = 600.5  # half a second of slewing is not a step
    agent.feed([], 1.6)
    assert agent.stats()["wall_clock_steps"] == 1
    offset[0] = 0.0  # and back
    agent.feed([], 1.8)
    assert agent.messages.ts(5.0) == pytest.approx(before, abs=50) and agent.stats()["wall_clock_steps"] == 2


def test_the_golden_self_test_refuses_a_model_that_ranks_a_fall_below_lying_down() -> None:
    """The softer stylised fall need not reach the threshold (the no-recovery path may take it),
    but it must score above every no-alarm window: one that does not is a broken detector."""
    import numpy as np

    from fallwatch.edge.ota import self_test
    from fallwatch.edge.synth import GOLDEN_ALARM, GOLDEN_NO_ALARM, GOLDEN_OUTRANKS, golden_windows

    _, asks = golden_windows()

    class Fixed:
        threshold = 0.9

        def __init__(self, scores: dict[int, float]) -> None:
            self.scores = scores

        def predict(self, windows: np.ndarray, refs: np.ndarray | None = None) -> np.ndarray:
            return np.array([self.scores[int(a)] for a in asks])

    assert self_test(Fixed({GOLDEN_ALARM: 0.99, GOLDEN_OUTRANKS: 0.5, GOLDEN_NO_ALARM: 0.1})) is None
    assert self_test(Fixed({GOLDEN_ALARM: 0.99, GOLDEN_OUTRANKS: 0.05, GOLDEN_NO_ALARM: 0.1})) is not None
    assert self_test(Fixed({GOLDEN_ALARM: 0.5, GOLDEN_OUTRANKS: 0.5, GOLDEN_NO_ALARM: 0.1})) is not None
    assert self_test(Fixed({GOLDEN_ALARM: 0.99, GOLDEN_OUTRANKS: 0.95, GOLDEN_NO_ALARM: 0.95})) is not None


@pytest.mark.parametrize("agent", [{"stand_down_lying_before": True}], indirect=True)
def test_an_impact_while_lying_and_lying_on_is_stood_down_logged_without_rooms(
    agent: EdgeAgent, broker: FakeBroker
) -> None:
    """Issue 12, with ``edge.stand_down_lying_before`` on (off by default): the same fall-like impact
    as above, but the wearer was lying before it (turning over heavily on a sofa or an unsensed bed)
    and lies on: a logged ``cancelled`` with ``lying_before``."""
    fa, fg, _ = synth.fall(pre_s=20, post_s=20)
    ry = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]], dtype=np.float32)  # z (up) -> x
    acc, gyro = fa @ ry.T, fg @ ry.T  # lying on the back before, on the side after
    frames = synth.frames(HUB, synth.packets("wear-r01", acc, gyro))
    feed(agent, frames)
    for k in range(1, 40):
        agent.feed([], frames[-1].rx_t_s + k)
    assert agent.flush(5)
    falls = uplinks(broker, "fall")
    assert [m.data.status for m in falls] == ["cancelled"]  # type: ignore[union-attr]  # FallAlert
    assert "lying_before" in {r.code for r in falls[0].data.reasons}  # type: ignore[union-attr]
    st = agent.stats()
    assert st["decisions"] == 1 and st["alerts_raised"] == 0 and st["alerts_stood_down_lying_before"] == 1
