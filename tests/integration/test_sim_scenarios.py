"""Scenario files, the ``fallwatch sim`` commands, replay of recordings and frame logs."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import pytest

from fallwatch.cli import main
from fallwatch.protocol.framelog import FrameLogError, read_frames, write_frames
from fallwatch.protocol.frames import decode_imu
from fallwatch.sim.fleet import Fleet
from fallwatch.sim.replay import (
    ImuRecording,
    ReplayError,
    export_wearable,
    load_csv,
    resample,
    save_csv,
    save_npz,
)
from fallwatch.sim.scenario import (
    ReplaySpec,
    Resident,
    Scenario,
    ScenarioError,
    Wearable,
    demo_scenario,
    flat_site,
    load_scenario,
)

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ROOT / "firmware_sim" / "scenarios"
SISFALL = ROOT.parent / "shared" / "data" / "sisfall"


def test_bundled_scenarios_expand_as_described() -> None:
    flat = load_scenario(SCENARIOS / "flat.toml").expanded()
    assert len(flat.sites) == 1 and len(flat.sites[0].residents) == 1
    care = load_scenario(SCENARIOS / "care_home.toml").expanded()
    assert sum(len(s.residents) for s in care.sites) == 30 and len(care.sites) == 3
    load = load_scenario(SCENARIOS / "load_10k.toml").expanded()
    assert sum(len(s.residents) + len(s.sensors) for s in load.sites) == 10_000
    ids = [r.id for s in care.sites for r in s.residents] + [x.id for s in care.sites for x in s.sensors]
    assert len(ids) == len(set(ids))
    gen = [r.profile.gait_speed_mps for s in care.sites for r in s.residents]
    assert np.std(gen) > 0  # residents vary around the template


def test_bad_scenario_gives_a_readable_report(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('seed = 1\nduration_s = -5\n[[sites]]\nsite_id = "Flat 1"\nhub_id = "h"\ncolour = "red"\n')
    with pytest.raises(ScenarioError) as exc:
        load_scenario(bad)
    text = str(exc.value)
    assert "duration_s" in text and "sites.0.site_id" in text and "colour" in text
    (tmp_path / "broken.toml").write_text("seed = [")
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "broken.toml")
    with pytest.raises(ValueError, match="unknown resident"):
        Scenario(sites=[flat_site(1)], events=[{"type": "fall", "resident": "nobody", "at_s": 3}])


def test_demo_scenario_contract() -> None:
    for seed in range(5):
        scn = demo_scenario(residents=4, duration_s=300.0, falls=2, seed=seed)
        fleet = Fleet(scn)
        assert len(fleet.hubs) == 4 and all(len(h.resident_ids) == 1 for h in fleet.hubs)
        falls = [e for e in fleet.ground_truth if e.type == "fall"]
        assert len(falls) >= 8
        assert all(75 <= e.t_impact_s <= 240 for e in falls)
        assert not any(e.details["cancelled_by_wearer"] for e in falls)
        kinds = {s.kind for s in fleet.sensors}
        assert {"wearable", "pir", "bed", "door"} <= kinds


def test_cli_run_inspect_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["sim", "run", "flat", "--duration", "60", "--out", str(out), "--seed", "3", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["sim_seconds"] == 60.0 and summary["seed"] == 3 and summary["devices"] == 8
    assert summary["frames"] == sum(1 for _ in read_frames(out / "frames.jsonl"))
    lines = (out / "ground_truth.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["format"] == "fallwatch-ground-truth/1"
    assert json.loads((out / "summary.json").read_text())["frames"] == summary["frames"]
    assert main(["sim", "inspect", str(out / "frames.jsonl")]) == 0
    assert "wear-r01" in capsys.readouterr().out
    assert main(["sim", "export", str(out / "frames.jsonl"), "wear-r01", str(tmp_path / "w.npz")]) == 0
    assert main(["sim", "check", "care_home"]) == 0
    assert "30 residents" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no scenario"):
        main(["sim", "run", "nowhere"])


def test_frame_log_round_trip(tmp_path: Path) -> None:
    fleet = Fleet(demo_scenario(residents=1, duration_s=20.0, falls=0, seed=2))
    frames = [f for ch in fleet.run() for f in ch.frames]
    assert write_frames(tmp_path / "f.fwlog", frames) == len(frames)
    assert list(read_frames(tmp_path / "f.fwlog")) == frames
    (tmp_path / "bad.fwlog").write_bytes(b"nope")
    with pytest.raises(FrameLogError):
        list(read_frames(tmp_path / "bad.fwlog"))
    raw = (tmp_path / "f.fwlog").read_bytes()
    (tmp_path / "cut.fwlog").write_bytes(raw[:-3])
    with pytest.raises(FrameLogError, match="truncated"):
        list(read_frames(tmp_path / "cut.fwlog"))


def _replay_fleet(spec: ReplaySpec, duration_s: float, rate: float = 50.0) -> np.ndarray:
    res = Resident(id="r01", wearable=Wearable(rate_hz=rate, replay=spec, acc_noise_g=0.0, acc_bias_g=0.0,
                                               gyro_noise_dps=0.0, gyro_bias_dps=0.0))
    site = flat_site(1, res).model_copy(update={"sensors": []})
    fleet = Fleet(Scenario(seed=1, duration_s=duration_s, start_epoch_ms=0, sites=[site]))
    pk = sorted((decode_imu(f.payload) for ch in fleet.run() for f in ch.frames), key=lambda p: p.seq)
    return np.concatenate([p.acc_g for p in pk])


def test_replay_recording_through_a_wearable(tmp_path: Path) -> None:
    # record a simulated wearable, export it, replay it: the hub sees the same signal again
    fleet = Fleet(demo_scenario(residents=1, duration_s=30.0, falls=0, seed=4))
    frames = [f for ch in fleet.run() for f in ch.frames]
    rate, acc, gyro = export_wearable(frames, "wear-r01")
    save_csv(tmp_path / "rec.csv", rate, acc, gyro)
    save_npz(tmp_path / "rec.npz", rate, acc, gyro)
    assert load_csv(tmp_path / "rec.csv")[0] == pytest.approx(50.0)
    for fmt in ("csv", "npz"):
        again = _replay_fleet(ReplaySpec(path=tmp_path / f"rec.{fmt}", format=fmt), 20.0)
        assert np.abs(again - acc[:len(again)]).max() < 1e-3
    # a 100 Hz device replaying the 50 Hz recording is resampled, not sped up
    up = _replay_fleet(ReplaySpec(path=tmp_path / "rec.npz", format="npz"), 20.0, rate=100.0)
    assert len(up) == pytest.approx(2 * len(again), abs=60)
    assert np.abs(up[200:1800:2] - acc[100:900]).mean() < 0.03
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ReplayError, match="header"):
        ImuRecording.from_spec(ReplaySpec(path=tmp_path / "bad.csv"), 50.0)


def test_resample_keeps_a_slow_sine() -> None:
    t = np.arange(2000) / 200.0
    x = np.sin(2 * np.pi * 1.7 * t)[:, None]
    y = resample(x, 200.0, 50.0)
    assert len(y) == 500
    assert np.abs(y[20:-20, 0] - np.sin(2 * np.pi * 1.7 * np.arange(500) / 50.0)[20:-20]).max() < 0.02


@pytest.mark.data
def test_replay_a_sisfall_trial_as_a_wearable() -> None:
    archive = SISFALL / "SA01.tar.xz"
    if not archive.exists():
        pytest.skip(f"SisFall recordings not found at {SISFALL}")
    acc = _replay_fleet(ReplaySpec(path=Path(f"{archive}#F01_SA01_R01"), format="sisfall", loop=False), 14.0)
    mag = np.linalg.norm(acc, axis=1)
    assert mag[:100].mean() == pytest.approx(1.0, abs=0.1)  # upright before the fall
    assert acc[:100, 2].mean() > 0.9  # axes mapped: z up
    assert mag.max() > 2.0  # the impact
    assert abs(acc[-100:, 2].mean()) < 0.5  # lying afterwards
    with pytest.raises(ReplayError, match="not found"):
        ImuRecording.from_spec(ReplaySpec(path=Path(f"{archive}#F99_SA01_R01"), format="sisfall"), 50.0)


def test_paced_run_follows_the_wall_clock() -> None:
    fleet = Fleet(demo_scenario(residents=1, duration_s=2.0, falls=0, seed=1))
    t0 = time.monotonic()
    chunks = list(fleet.run(step_s=0.5, speed=10.0))
    assert time.monotonic() - t0 >= 0.19  # 2 sim-s at 10x cannot finish before 0.2 s
    assert [c.t_s for c in chunks] == [0.5, 1.0, 1.5, 2.0]


def test_run_continues_where_it_stopped() -> None:
    scn = demo_scenario(residents=1, duration_s=20.0, falls=0, seed=5).model_copy(
        update={"start_epoch_ms": 1_700_000_000_000})
    whole = [f.payload for ch in Fleet(scn).run() for f in ch.frames]
    fleet = Fleet(scn)
    parts = [f.payload for ch in fleet.run(duration_s=8.0) for f in ch.frames]
    parts += [f.payload for ch in fleet.run(duration_s=12.0) for f in ch.frames]
    assert parts == whole


def test_drift_week_ground_truth_declines_day_by_day() -> None:
    fleet = Fleet(load_scenario(SCENARIOS / "drift_week.toml"))
    days = [e.details for e in fleet.ground_truth if e.type == "risk_drift"]
    assert [d["day"] for d in days] == list(range(7))
    speeds = [d["gait_speed_mps"] for d in days]
    assert speeds[1] == speeds[0] and all(b < a for a, b in itertools.pairwise(speeds[1:]))
    walks = [e for e in fleet.ground_truth if e.type == "adl" and e.details["activity"] == "walk"]
    first = np.median([w.details["speed_mps"] for w in walks if w.t_start_s < 86400])
    last = np.median([w.details["speed_mps"] for w in walks if w.t_start_s > 6 * 86400])
    assert last < first - 0.15


def test_load_10k_runs_in_fleet_mode() -> None:
    fleet = Fleet(load_scenario(SCENARIOS / "load_10k.toml"), progress=True)
    assert len(fleet.sensors) == 10_000 and len(fleet.hubs) == 2_500
    chunks = list(fleet.run(duration_s=2.0, progress=True))
    heard = {f.sensor_id for c in chunks for f in c.frames if f.transport == "ble"}
    assert 2_400 < len(heard) < 2_500  # one frame each by t = 2 s, minus the 1 % the radio lost
    assert {f.hub_id for c in chunks for f in c.frames} == {h.hub_id for h in fleet.hubs}


def test_cli_replay_a_csv_recording(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t = np.arange(500) / 50.0
    acc = np.column_stack([np.zeros_like(t), np.zeros_like(t), 1 + 0.2 * np.sin(2 * np.pi * 1.6 * t)])
    save_csv(tmp_path / "rec.csv", 50.0, acc, np.zeros_like(acc))
    out = tmp_path / "out"
    assert main(["sim", "replay", str(tmp_path / "rec.csv"), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["sim_seconds"] == 10.0 and summary["wearables"] == 1
    truth = [json.loads(x) for x in (out / "ground_truth.jsonl").read_text().splitlines()[1:]]
    assert [e["type"] for e in truth] == ["replay"] and truth[0]["details"]["format"] == "csv"
    _, got, _ = export_wearable(read_frames(out / "frames.jsonl"), "wear-replay")
    assert np.abs(got[:, 2] - acc[:len(got), 2]).max() < 0.1  # same signal, plus the part's noise/bias
    with pytest.raises(SystemExit, match="cannot replay"):
        main(["sim", "replay", str(tmp_path / "missing.csv")])


def test_events_for_unknown_generated_residents_are_rejected() -> None:
    scn = load_scenario(SCENARIOS / "care_home.toml")
    bad = scn.model_copy(update={"events": [*scn.events, scn.events[0].model_copy(update={"resident": "r-x"})]})
    with pytest.raises(ScenarioError, match="r-x"):
        Fleet(bad)


@pytest.mark.parametrize(("site", "message"), [
    ({"site_id": "a", "hub_id": "h", "residents": [{"id": "r1", "start_room": "attic"}]}, "attic"),
    ({"site_id": "a", "hub_id": "h", "residents": [{"id": "r1"}, {"id": "r2", "wearable": {"id": "wear-r1"}}]},
     "duplicate id wear-r1"),
    ({"site_id": "a", "hub_id": "h", "sensors": [{"id": "p", "kind": "pir", "room": "garage"}]}, "garage"),
])
def test_inconsistent_sites_are_rejected(site: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Scenario(sites=[site])
