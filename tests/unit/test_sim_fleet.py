"""The fleet as the edge and demo use it: frames, hubs/sensors, ground truth, determinism."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest

from fallwatch.protocol.frames import FLAG_BOOT, decode_imu, decode_room
from fallwatch.sim.fleet import Fleet
from fallwatch.sim.scenario import demo_scenario


def _collect(fleet: Fleet, **kw: object) -> list:
    return [fr for ch in fleet.run(**kw) for fr in ch.frames]


def _signal(frames: list, sensor: str) -> tuple[np.ndarray, np.ndarray]:
    pk = sorted((decode_imu(f.payload) for f in frames if f.sensor_id == sensor), key=lambda p: p.seq)
    return np.concatenate([p.acc_g for p in pk]), np.concatenate([p.gyro_dps for p in pk])


@pytest.fixture(scope="module")
def demo() -> tuple[Fleet, list]:
    fleet = Fleet(demo_scenario(residents=3, duration_s=120.0, falls=1, seed=7))
    return fleet, _collect(fleet)


def test_hubs_sensors_and_frames(demo: tuple[Fleet, list]) -> None:
    fleet, frames = demo
    assert [h.hub_id for h in fleet.hubs] == ["hub-flat-01", "hub-flat-02", "hub-flat-03"]
    wear = [s for s in fleet.sensors if s.kind == "wearable"]
    assert len(wear) == 3 and all(s.rate_hz == 50.0 and s.resident_id for s in wear)
    assert {s.kind for s in fleet.sensors} >= {"wearable", "pir", "bed", "door", "bathroom"}
    known = {s.sensor_id: s.hub_id for s in fleet.sensors}
    for fr in frames:
        assert known[fr.sensor_id] == fr.hub_id
        if fr.transport == "ble":
            assert decode_imu(fr.payload).sensor_id == fr.sensor_id
        else:
            assert decode_room(fr.payload).sensor_id == fr.sensor_id
    # 120 s at 50 Hz in 0.5 s frames, no faults configured: every frame arrives exactly once
    per = defaultdict(list)
    for fr in frames:
        if fr.transport == "ble":
            per[fr.sensor_id].append(decode_imu(fr.payload))
    for pk in per.values():
        assert [p.seq for p in pk] == list(range(239))  # the 240th is still in the air at t=120 s
        assert pk[0].flags & FLAG_BOOT and not pk[1].flags & FLAG_BOOT
        assert sum(p.n for p in pk) == 239 * 25


def test_chunks_are_in_reception_order_and_window(demo: tuple[Fleet, list]) -> None:
    fleet = Fleet(demo_scenario(residents=2, duration_s=20.0, falls=0, seed=3))
    for ch in fleet.run(step_s=2.0):
        rx = [f.rx_t_s for f in ch.frames]
        assert rx == sorted(rx)
        assert all(ch.t_s - 2.0 < t <= ch.t_s for t in rx)


def test_ground_truth_falls(demo: tuple[Fleet, list], tmp_path) -> None:
    fleet, frames = demo
    falls = [e for e in fleet.ground_truth if e.type == "fall"]
    assert len(falls) == 3
    for e in falls:
        assert 0.25 * 120 <= e.t_impact_s <= 0.75 * 120
        assert e.t_start_s < e.t_impact_s < e.t_end_s
        assert e.details["cancelled_by_wearer"] is False
        assert e.details["kind"] in ("forward", "backward", "sideways", "from_bed", "from_chair", "collapse")
        acc, _ = _signal(frames, e.sensor_id)
        mag = np.linalg.norm(acc, axis=1)
        i = round(e.t_impact_s * 50)
        assert mag[i - 5:i + 5].max() == pytest.approx(mag.max(), rel=1e-6)  # the peak is the impact
        assert mag.max() > 2.0
        after = acc[i + 100:i + int(e.details["lying_s"] * 50) - 50]
        assert np.abs(after[:, 2]).mean() < 0.5  # lying: gravity is no longer along the trunk axis
    path = tmp_path / "gt.jsonl"
    n = fleet.write_ground_truth(path)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0]["type"] == "header" and len(lines) == n + 1
    assert sum(x["type"] == "fall" for x in lines) == 3


def test_same_seed_same_bytes_and_step_independent() -> None:
    scn = demo_scenario(residents=2, duration_s=40.0, falls=1, seed=11)
    a = _collect(Fleet(scn.model_copy(update={"start_epoch_ms": 1_700_000_000_000})), step_s=1.0)
    b = _collect(Fleet(scn.model_copy(update={"start_epoch_ms": 1_700_000_000_000})), step_s=0.7)
    assert [(f.sensor_id, f.rx_t_s, f.payload) for f in a] == [(f.sensor_id, f.rx_t_s, f.payload) for f in b]
    c = _collect(Fleet(scn.model_copy(update={"start_epoch_ms": 1_700_000_000_000}), seed=12))
    assert [f.payload for f in a] != [f.payload for f in c]


def test_gravity_at_rest_and_walking_signal(demo: tuple[Fleet, list]) -> None:
    fleet, frames = demo
    acc, _ = _signal(frames, "wear-r01")
    tl = fleet.timelines["r01"]
    for seg in tl.segments:
        if seg.kind == "still" and seg.duration > 3 and seg.t1 < 118:
            sl = slice(int(seg.t0 * 50) + 10, int(seg.t1 * 50) - 10)
            mag = np.linalg.norm(acc[sl], axis=1)
            assert mag.mean() == pytest.approx(1.0, abs=0.05)
            assert mag.std() < 0.03


def test_ground_truth_of_a_shortened_run_holds_only_what_happened() -> None:
    scn = demo_scenario(residents=2, duration_s=200.0, falls=1, seed=4)
    fleet = Fleet(scn)
    planned = fleet.ground_truth
    falls = [e for e in planned if e.type == "fall"]
    assert len(falls) == 2
    cut = min(e.t_start_s for e in falls) - 1.0
    for _ in fleet.run(duration_s=cut):
        pass
    happened = fleet.ground_truth
    assert not [e for e in happened if e.type == "fall"]
    assert all(e.t_start_s <= cut for e in happened)
    assert len(happened) < len(planned)
