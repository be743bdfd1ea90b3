"""The edge stages on their own, through their public interfaces (no broker, no agent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fallwatch.edge import synth
from fallwatch.edge.counters import Counters
from fallwatch.edge.decision import AlertDecision, DecidedAlert
from fallwatch.edge.detection import free_fall_s, is_device_drop
from fallwatch.edge.fusion import RoomFusion
from fallwatch.edge.messages import Messages
from fallwatch.edge.outbox import Outbox, Pending
from fallwatch.edge.sensors import RoomSensor, Sensors
from fallwatch.models import features as F
from fallwatch.models.detector import FallDecision
from fallwatch.models.scorers import ThresholdScorer
from fallwatch.protocol import contract as C
from fallwatch.protocol import topics
from fallwatch.protocol.frames import RoomEvent
from fallwatch.protocol.ids import is_id


def _fall_window(drop: bool) -> np.ndarray:
    acc, gyro, imp = synth.fall()
    w = np.concatenate([acc, gyro], axis=1)[imp - F.PRE: imp + F.POST].copy()
    if drop:  # the second before the impact in free fall (|a| ~ 0), as a dropped wearable
        w[F.PRE - 25:F.PRE, :3] = 0.02
    return w


def test_free_fall_signature_tells_a_dropped_wearable_from_a_fall() -> None:
    fall, drop = _fall_window(False), _fall_window(True)
    assert free_fall_s(fall) < 0.2 <= free_fall_s(drop)
    assert not is_device_drop(free_fall_s(fall), 4.5)
    assert is_device_drop(free_fall_s(drop), 4.5)
    assert not is_device_drop(free_fall_s(drop), 2.0)  # a soft landing is not the signature


def test_messages_build_contract_valid_envelopes(tmp_path: Path) -> None:
    m = Messages("home-1", "hub-1", start_epoch_ms=1_795_000_000_000)
    ob = Outbox(tmp_path / "o.sqlite")
    m.boot_id = ob.boot_id
    items = [
        m.state(m.state_data("ready", "1.0", "x" * 60, 30.0), 0.0),
        m.tele(C.TeleData(sensor="wear-1", window_s=10.0, fields={"samples": 500}), 10.0, resident_id="r01"),
        m.test_alarm(0.0),
        m.cmd_res("ping", C.StatusData(status="ok", transaction="t1"), 1.0),
    ]
    seqs = ob.append_many(items)
    rows = ob.peek(0, 10)
    assert [r.seq for r in rows] == seqs
    decoded = [C.decode(r.topic, r.payload) for r in rows]
    assert [C.kind_of(d) for d in decoded] == ["state", "tele", "test", "cmd_res"]
    assert all(d.msg_id == f"hub-1:{d.seq}" and d.boot_id == ob.boot_id for d in decoded)
    assert decoded[0].data.model_version == "x" * 40  # type: ignore[union-attr]  # truncated to the contract
    assert decoded[1].ts_ms == 1_795_000_010_000 and decoded[1].resident_id == "r01"
    assert rows[0].retain and not rows[1].retain
    ob.close()


def _decision_stage(tmp_path: Path, cancel_s: float = 10.0) -> tuple[AlertDecision, Sensors, list[list[Pending]]]:
    sensors = Sensors("hub-1", ThresholdScorer())
    sensors.add_wearable("wear-1", "r01")
    messages = Messages("home-1", "hub-1", 0)
    sent: list[list[Pending]] = []

    def send(items: list[Pending]) -> list[int]:
        sent.append(items)
        return list(range(100, 100 + len(items)))

    stage = AlertDecision(sensors, RoomFusion(sensors, 0), messages, Counters(), cancel_window_s=cancel_s,
                          send=send, warn=lambda note: None, on_raised=lambda: None)
    return stage, sensors, sent


def _decision(impact_s: float) -> FallDecision:
    return FallDecision(impact_t_s=impact_s, decided_t_s=impact_s + 2.5, probability=0.99, confidence=0.9,
                        peak_g=4.0, lying=True, still=True, reasons=[("impact", "4 g", 0.3)])


def test_alert_decision_holds_for_the_cancel_window_then_raises_once(tmp_path: Path) -> None:
    stage, sensors, sent = _decision_stage(tmp_path)
    events: list[DecidedAlert] = []
    stage.subscribe(events.append)
    w = sensors.wearables["wear-1"]
    stage.decide(w, _decision(20.0), now_s=22.5)
    stage.resolve(now_s=32.0, wall=0.0)
    assert events == [] and len(stage.pending) == 1  # 22.5 + 10 s not over yet
    stage.resolve(now_s=32.5, wall=7.0)
    stage.resolve(now_s=60.0, wall=8.0)
    assert [(e.status, e.seq, e.feed_wall) for e in events] == [("alert", 100, 7.0)]
    assert w.falls == 1 and w.last_alert_t == 20.0 and stage.pending == []
    fall = C.decode(topics.fall("home-1", "hub-1"), sent[-1][0].build(100))
    assert isinstance(fall, C.FallAlert) and fall.data.status == "alert" and fall.data.impact_ms == 20_000


def test_alert_decision_cancel_press_in_the_window_cancels(tmp_path: Path) -> None:
    stage, sensors, sent = _decision_stage(tmp_path)
    events: list[DecidedAlert] = []
    stage.subscribe(events.append)
    w = sensors.wearables["wear-1"]
    stage.decide(w, _decision(20.0), now_s=22.5)
    w.cancel_presses.append(25.0)
    stage.resolve(now_s=26.0, wall=0.0)
    assert [e.status for e in events] == ["cancelled"] and w.falls == 0
    fall = C.decode(topics.fall("home-1", "hub-1"), sent[-1][0].build(100))
    assert "cancelled_by_wearer" in {r.code for r in fall.data.reasons}


def test_room_fusion_attributes_the_room_and_raises_confidence_without_motion() -> None:
    sensors = Sensors("hub-1", ThresholdScorer())
    w = sensors.add_wearable("wear-1", "r01")
    fusion = RoomFusion(sensors, 0)
    pir = sensors.room_sensors["pir-bath"] = RoomSensor("pir-bath", "bathroom", "bathroom", None)
    motion = RoomEvent(sensor_id="pir-bath", kind="bathroom", room="bathroom", t_ms=0, state={"occupancy": True})
    fusion.update(motion, 15.0, pir)
    room, conf, reasons = fusion.attribute(w, _decision(20.0), now_s=60.0)
    assert room == "bathroom" and conf > 0.9
    assert [r.code for r in reasons] == ["no_room_motion", "bathroom"]
    fusion.update(motion, 40.0, pir)
    room, conf2, reasons = fusion.attribute(w, _decision(20.0), now_s=60.0)
    assert conf2 < 0.9 and reasons[0].code == "room_motion_after"


def test_downlink_payloads_decode_strictly() -> None:
    cfg = C.decode_remote_config(b'{"version": 3, "heartbeat_s": 20}')
    assert cfg.version == 3 and cfg.settings() == {"heartbeat_s": 20.0}
    assert C.decode_remote_config(b"").settings() == {}  # retained config cleared
    with pytest.raises(C.ContractError, match="unknown keys"):
        C.decode_remote_config(b'{"password": "x"}')
    with pytest.raises(C.ContractError) as e:
        C.decode_remote_config(b"[1]")
    assert e.value.reason == "invalid_payload"
    req = C.decode_command(C.encode_downlink(C.CommandRequest(transaction="t-1")))
    assert req.transaction == "t-1" and req.args == {}
    for bad, reason in ((b"{", "bad_json"), (b'{"transaction": "t", "x": 1}', "invalid_payload"),
                        (b"{}", "invalid_payload"), (b'{"transaction": "' + b"a" * 81 + b'"}', "invalid_payload")):
        with pytest.raises(C.ContractError) as e:
            C.decode_command(bad)
        assert e.value.reason == reason, bad
    assert C.transaction_of(b'{"transaction": "t", "x": 1}') == "t"
    assert C.transaction_of(b"not json") is None and C.transaction_of(b'{"transaction": 5}') is None
    assert set(C.COMMANDS) == {"ping", "self-test"} and all(is_id(c) for c in C.COMMANDS)
    assert topics.downlink_filters("home-1", "hub-1") == (
        "fallwatch/v1/home-1/hub-1/config", "fallwatch/v1/home-1/hub-1/ota/model",
        "fallwatch/v1/home-1/hub-1/cmd/req/+")
