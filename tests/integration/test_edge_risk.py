"""Daily fall-risk features measured on the hub, checked against the simulated residents' profiles."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fallwatch.config import load_config
from fallwatch.edge.agent import EdgeAgent
from fallwatch.edge.risk import GaitAccumulator, load_risk_model
from fallwatch.edge.stream import WearableStream
from fallwatch.protocol.frames import decode_imu
from fallwatch.sim.fleet import Fleet
from fallwatch.sim.scenario import Profile, Resident, Scenario, flat_site
from fallwatch.testing.recorder import UplinkRecorder
from fallwatch.testing.services import Mosquitto


def resident_fleet(speed: float, cadence: float, cv: float, frailty: float, seconds: float = 600.0) -> Fleet:
    prof = Profile(gait_speed_mps=speed, cadence_spm=cadence, stride_cv=cv, frailty=frailty, activity=0.8)
    return Fleet(Scenario(name="risk", seed=3, duration_s=seconds,
                          sites=[flat_site(1, Resident(id="r01", profile=prof))]))


def gait_of(fleet: Fleet) -> dict[str, float]:
    ws, g = WearableStream("wear-r01"), GaitAccumulator()
    for chunk in fleet.run():
        for fr in chunk.frames:
            if fr.transport == "ble":
                for c in ws.push(decode_imu(fr.payload), fr.rx_t_s):
                    g.push(c.acc_g)
    return g.features("2026-01-01")


def test_gait_features_track_the_residents_gait() -> None:
    slow = gait_of(resident_fleet(0.6, 90.0, 0.06, 0.5))
    fast = gait_of(resident_fleet(1.1, 112.0, 0.02, 0.1))
    assert slow["cadence_spm"] == pytest.approx(90.0, abs=4.0)
    assert fast["cadence_spm"] == pytest.approx(112.0, abs=4.0)
    assert slow["stride_time_cv"] > 1.5 * fast["stride_time_cv"]
    assert slow["gait_speed_m_s"] < fast["gait_speed_m_s"]
    assert slow["gait_speed_m_s"] == pytest.approx(0.6, abs=0.2)
    assert 0.0 < slow["time_upright_h"] <= 600 / 3600


@pytest.fixture
def agent(mosquitto: Mosquitto, tmp_path: Path, unique_name: str) -> Iterator[EdgeAgent]:
    fleet = resident_fleet(0.6, 90.0, 0.06, 0.5)
    cfg = load_config(None, {"mqtt": {"url": mosquitto.url}, "edge": {
        "site_id": unique_name, "device_id": fleet.hubs[0].hub_id, "outbox_path": str(tmp_path / "o.sqlite"),
        "model_dir": str(tmp_path / "m")}})
    a = EdgeAgent(cfg, sensors=fleet.sensors, start_epoch_ms=fleet.start_epoch_ms)
    a.fleet = fleet
    a.start()
    yield a
    a.stop()


@pytest.mark.integration
@pytest.mark.skipif(load_risk_model() is None, reason="no shipped risk model")
def test_daily_risk_score_is_published_with_factors(agent: EdgeAgent, unique_name: str) -> None:
    fleet: Fleet = agent.fleet
    with UplinkRecorder(agent.cfg.mqtt, f"rec-{unique_name}", site=unique_name) as rec:
        for chunk in fleet.run():
            agent.feed(chunk.frames, chunk.t_s)
        scores = agent.score_risk(fleet.t_s)
        assert agent.flush(10)
        assert rec.wait_for(lambda r: len(r.of_kind("risk")) >= 1)
    assert len(scores) == 1
    msg = rec.of_kind("risk")[-1].msg
    assert msg.resident_id == "r01"
    d = msg.data
    assert 0.0 <= d.score <= 1.0 and d.level in ("low", "medium", "high")
    assert {"cadence_spm", "gait_speed_m_s", "stride_time_cv", "falls_past_12m"} <= set(d.features)
    assert d.factors and all(f.name in d.features or f.name in ("sit_to_stand_s", "tug_s") for f in d.factors)
    assert d.model.startswith("fallwatch-risk@")
    assert agent.score_risk(fleet.t_s) == []  # a new day with nothing worn yet: no score


@pytest.mark.integration
def test_falls_and_gait_history_survive_a_restart(mosquitto: Mosquitto, tmp_path: Path, unique_name: str) -> None:
    import numpy as np

    from fallwatch.edge import synth

    cfg = load_config(None, {"mqtt": {"url": mosquitto.url}, "edge": {
        "site_id": unique_name, "device_id": "hub-1", "cancel_window_s": 0.0,
        "outbox_path": str(tmp_path / "o.sqlite"), "model_dir": str(tmp_path / "m")}})
    a = EdgeAgent(cfg)
    a.start()
    a0, g0 = synth.quiet(50 * 120, walking=True)
    fa, fg, _ = synth.fall(post_s=8)
    for f in synth.frames("hub-1", synth.packets("wear-1", np.vstack([a0, fa]), np.vstack([g0, fg]), per_packet=25)):
        a.feed([f], f.rx_t_s)
    a.feed([], 200.0)
    assert a.stats()["alerts_raised"] == 1
    a.sensors.wearables["wear-1"].gait.history = [("2026-01-01", 0.8), ("2026-01-02", 0.78)]
    a.risk.save()
    a.stop()
    b = EdgeAgent(cfg)
    b.start()
    try:
        w = b.sensors.wearables["wear-1"]
        assert w.falls == 1 and w.gait.history == [("2026-01-01", 0.8), ("2026-01-02", 0.78)]
    finally:
        b.stop()
