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

    def send(items: list[Pending], done: list[str] | None = None) -> list[int]:
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


class _Store:
    """The uplink's side of pending decisions, on a real outbox DB; ``fail`` = the disk is gone."""

    def __init__(self, ob: Outbox) -> None:
        self.ob, self.fail = ob, False

    def save_pending(self, key: str, body: str, due_ms: int) -> bool:
        self.ob.save_pending(key, body, due_ms)
        return True

    def pending_decisions(self) -> list[tuple[str, str, int]]:
        return self.ob.pending_decisions()

    def send(self, items: list[Pending], done: list[str] | None = None) -> list[int]:
        if self.fail:
            raise OSError("disk I/O error")
        return self.ob.append_many(items, done or ())


def _durable_stage(ob: Outbox, start_ms: int, cancel_s: float = 10.0) -> tuple[AlertDecision, Sensors, _Store]:
    sensors = Sensors("hub-1", ThresholdScorer())
    sensors.add_wearable("wear-1", "r01")
    store = _Store(ob)
    stage = AlertDecision(sensors, RoomFusion(sensors, start_ms), Messages("home-1", "hub-1", start_ms), Counters(),
                          cancel_window_s=cancel_s, send=store.send, warn=lambda note: None,
                          on_raised=lambda: None, store=store)
    return stage, sensors, store


def test_a_pending_decision_is_on_disk_and_leaves_memory_only_after_the_commit(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite")
    stage, sensors, store = _durable_stage(ob, 1_000_000)
    stage.decide(sensors.wearables["wear-1"], _decision(20.0), now_s=22.5)
    assert [(k, due) for k, _, due in ob.pending_decisions()] == [(stage.pending[0].event_id, 1_032_500)]
    store.fail = True
    with pytest.raises(OSError):
        stage.resolve(now_s=40.0, wall=1.0)
    assert len(stage.pending) == 1 and len(ob.pending_decisions()) == 1 and ob.depth() == 0  # kept
    store.fail = False
    stage.resolve(now_s=41.0, wall=2.0)
    assert stage.pending == [] and ob.pending_decisions() == [] and ob.depth_by_kind() == {"fall": 1}
    assert sensors.wearables["wear-1"].falls == 1
    ob.close()


def test_a_resumed_decision_keeps_its_due_time_or_goes_at_once_when_overdue(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite")
    first, sensors, _ = _durable_stage(ob, 1_000_000)
    first.decide(sensors.wearables["wear-1"], _decision(20.0), now_s=22.5)  # due at wall 1_032_500
    event_id = first.pending[0].event_id
    # a restart 5 s after the decision: 5 s of the window are left
    again, _, _ = _durable_stage(ob, 1_027_500)
    assert again.resume() == 1 and again.pending[0].event_id == event_id
    assert again.pending[0].due_t_s == pytest.approx(5.0)
    again.resolve(now_s=4.9, wall=0.0)
    assert ob.depth() == 0
    again.resolve(now_s=5.0, wall=0.0)
    rows = ob.peek()
    assert [r.kind for r in rows] == ["fall"] and ob.pending_decisions() == []
    fall = C.decode(topics.fall("home-1", "hub-1"), rows[0].payload)
    assert isinstance(fall, C.FallAlert) and fall.data.event_id == event_id and fall.data.impact_ms == 1_020_000
    # overdue (restarted long after the window): sent at the first resolve
    ob2 = Outbox(tmp_path / "o2.sqlite")
    s1, w1, _ = _durable_stage(ob2, 1_000_000)
    s1.decide(w1.wearables["wear-1"], _decision(20.0), now_s=22.5)
    s2, _, _ = _durable_stage(ob2, 2_000_000)
    assert s2.resume() == 1
    s2.resolve(now_s=0.0, wall=0.0)
    assert ob2.depth_by_kind() == {"fall": 1} and s2.pending == []
    ob.close()
    ob2.close()


def test_a_decision_resumed_after_the_wall_clock_stepped_back_is_not_held_back_nor_folds_new_falls(
        tmp_path: Path) -> None:
    """Found while adding the chaos clock_jump fault: the persisted times are wall times, and
    a hub restarted after its clock stepped back 10 min read them as 10 min in the future."""
    ob = Outbox(tmp_path / "o.sqlite")
    first, sensors, _ = _durable_stage(ob, 1_600_000)  # decided while the clock was 600 s ahead
    first.decide(sensors.wearables["wear-1"], _decision(20.0), now_s=22.5)  # due at wall 1_632_500
    again, sensors2, _ = _durable_stage(ob, 1_027_500)  # restarted; the clock is right again
    assert again.resume() == 1  # at hub time 0
    assert again.pending[0].due_t_s <= again.cancel_window_s  # not 605 s: at most a full window
    w = sensors2.wearables["wear-1"]
    assert w.last_alert_t <= 0.0  # a new fall in the next 10 min is not folded into this one
    again.resolve(now_s=again.pending[0].due_t_s, wall=0.0)
    rows = ob.peek()
    assert [r.kind for r in rows] == ["fall"] and ob.pending_decisions() == []
    fall = C.decode(topics.fall("home-1", "hub-1"), rows[0].payload)
    assert isinstance(fall, C.FallAlert) and fall.data.impact_ms == 1_620_000  # carries the times it was made with
    ob.close()
