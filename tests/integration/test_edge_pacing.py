"""The same fleet, driven at wall-clock pace and as fast as possible, must raise the same alerts.

The end-to-end benchmark paces the simulator in real time (and stamps messages from
``start_epoch_ms = now``) while the demo runs it accelerated (``now - duration``) and ends
with one jump of the hub clock. The agent's decisions must depend only on the frames and
on the hub clock ``now_s`` - never on how much wall time passed between two ``feed()``
calls, nor on how finely the hub clock is stepped after the last frame, nor on the epoch
the sim clock is mapped to. Paced at 10x on a real Mosquitto, the scenario below takes
~12 s of wall time; it has model-confirmed falls, falls only the no-recovery path decides
and no-recovery watches folded into a fast-path alert, so every decision path is compared.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from fallwatch.config import load_config
from fallwatch.edge.agent import EdgeAgent
from fallwatch.edge.decision import DecidedAlert
from fallwatch.sim.fleet import Fleet
from fallwatch.sim.scenario import demo_scenario
from fallwatch.testing.recorder import UplinkRecorder
from fallwatch.testing.services import Mosquitto

pytestmark = pytest.mark.integration

RESIDENTS, DURATION_S, SEED = 12, 120.0, 2024
STEP_S = 0.25
#: counters that describe the decisions (not transport), compared between the two runs
DECISION_KEYS = ("frames", "frame_errors", "windows_scored", "decisions", "no_recovery_decisions",
                 "no_recovery_folded", "device_drops", "alerts_raised", "alerts_cancelled", "alerts_suppressed_fault")


def _drive(broker: Mosquitto, tmp: Path, *, speed: float, start_epoch_ms: int) -> dict[str, Any]:
    """One agent per hub fed the fleet's frames; ``speed`` sim s per wall s (0 = max), then the
    cancel windows run out: in 0.25 s hub-clock steps at the same pace (the e2e bench), or in
    one jump (the demo)."""
    # falls are placed as in a 100 s run; the fleet runs on so the no-recovery path (45 s) can decide
    scn = demo_scenario(residents=RESIDENTS, duration_s=100.0, falls=1, seed=SEED)
    scn = scn.model_copy(update={"duration_s": DURATION_S})
    fleet = Fleet(scn.model_copy(update={"start_epoch_ms": start_epoch_ms}))
    mq = load_config(None, {"mqtt": {"url": broker.url}}).mqtt
    rec = UplinkRecorder(mq, "rec-pacing").start()
    agents: dict[str, EdgeAgent] = {}
    alert_events: list[DecidedAlert] = []
    for hub in fleet.hubs:
        cfg = load_config(None, {"mqtt": {"url": broker.url}, "edge": {
            "site_id": hub.site_id, "device_id": hub.hub_id, "outbox_path": str(tmp / f"{hub.hub_id}.sqlite"),
            "model_dir": str(tmp / "models")}})
        agents[hub.hub_id] = EdgeAgent(cfg, sensors=[s for s in fleet.sensors if s.hub_id == hub.hub_id],
                                       start_epoch_ms=fleet.start_epoch_ms)
        agents[hub.hub_id].on_alert(alert_events.append)
        agents[hub.hub_id].start()
    try:
        wall0 = time.monotonic()

        def pace(t_s: float) -> None:
            if speed > 0 and (lag := t_s / speed - (time.monotonic() - wall0)) > 0:
                time.sleep(lag)

        for chunk in fleet.run(duration_s=DURATION_S, step_s=STEP_S):
            pace(chunk.t_s)
            by_hub: dict[str, list[Any]] = defaultdict(list)
            for f in chunk.frames:
                by_hub[f.hub_id].append(f)
            for hub_id, agent in agents.items():
                agent.feed(by_hub.get(hub_id, []), chunk.t_s)
        tail_s = next(iter(agents.values())).cancel_window_s + 5.0
        if speed > 0:
            steps = int(tail_s / STEP_S)
            for k in range(1, steps + 1):
                t_s = DURATION_S + k * STEP_S
                pace(t_s)
                for agent in agents.values():
                    agent.feed([], t_s)
        else:
            for agent in agents.values():
                agent.feed([], DURATION_S + tail_s)
        for agent in agents.values():
            assert agent.flush(20)
        n = len(alert_events)
        assert rec.wait_for(lambda r: len(r.falls()) >= n)
    finally:
        for agent in agents.values():
            agent.stop()
        rec.stop()
    events = sorted((e.sensor, e.status, round(e.impact_t_s, 3)) for e in alert_events)
    wire = sorted((m.msg.data.sensor, m.msg.data.status, m.msg.data.impact_ms - fleet.start_epoch_ms,
                   round(m.msg.data.confidence, 4), round(m.msg.data.peak_g, 3), m.msg.data.room,
                   tuple(r.code for r in m.msg.data.reasons)) for m in rec.falls())
    counts = {k: sum(int(a.stats().get(k, 0)) for a in agents.values()) for k in DECISION_KEYS}
    return {"events": events, "wire": wire, "counts": counts}


def test_paced_and_accelerated_runs_raise_the_same_alerts(mosquitto_factory: Any, tmp_path: Path) -> None:
    now_ms = int(time.time() * 1000)
    fast = _drive(mosquitto_factory(), tmp_path / "fast", speed=0.0, start_epoch_ms=now_ms - int(DURATION_S * 1000))
    paced = _drive(mosquitto_factory(), tmp_path / "paced", speed=10.0, start_epoch_ms=now_ms)
    # the scenario exercises every decision path, so equality below is not vacuous
    assert fast["counts"]["alerts_raised"] >= 5
    assert fast["counts"]["no_recovery_decisions"] >= 1 and fast["counts"]["no_recovery_folded"] >= 1, fast["counts"]
    assert paced["counts"] == fast["counts"]
    assert paced["events"] == fast["events"]
    assert paced["wire"] == fast["wire"]
    assert len(fast["wire"]) == fast["counts"]["alerts_raised"] + fast["counts"]["alerts_cancelled"]
