"""Each device/link fault appears as configured, and the ground truth says so."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from fallwatch.protocol.frames import (
    FLAG_BOOT,
    FLAG_CLOCK_JUMP,
    FLAG_LOW_BATTERY,
    FLAG_SATURATED,
    FrameError,
    decode_imu,
    decode_room,
)
from fallwatch.sim.fleet import Fleet
from fallwatch.sim.scenario import Fault, Profile, Resident, Scenario, Wearable, flat_site

EPOCH = 1_700_000_000_000


def _fleet(faults: list[Fault], duration_s: float = 300.0, frame_s: float = 0.5, seed: int = 5,
           room_sensors: bool = False) -> tuple[Fleet, list]:
    res = Resident(id="r01", profile=Profile(cancel_prob=0.0), wearable=Wearable(id="wear-r01", frame_s=frame_s))
    site = flat_site(1, res)
    if not room_sensors:
        site = site.model_copy(update={"sensors": []})
    scn = Scenario(seed=seed, duration_s=duration_s, start_epoch_ms=EPOCH, sites=[site], faults=faults)
    fleet = Fleet(scn)
    frames = [f for ch in fleet.run() for f in ch.frames]
    return fleet, frames


def _packets(frames: list) -> list:
    return [decode_imu(f.payload) for f in frames if f.transport == "ble"]


def _fault_truth(fleet: Fleet, name: str) -> list:
    return [e for e in fleet.ground_truth if e.type == "fault" and e.details["fault"] == name]


@pytest.mark.parametrize("burst", [1.0, 6.0])
def test_loss_rate_and_bursts(burst: float) -> None:
    fleet, frames = _fleet([Fault(type="loss", rate=0.1, burst_len=burst)], duration_s=1500.0)
    seqs = sorted(p.seq for p in _packets(frames))
    sent = 3000 - 1  # the last frame is still in the air at the end
    lost = sent - len(seqs)
    assert lost / sent == pytest.approx(0.1, abs=0.03)
    present = np.zeros(sent, bool)
    present[seqs] = True
    edges = np.diff(np.concatenate(([0], (~present).astype(int), [0])))
    runs = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)  # lengths of loss bursts
    assert runs.mean() == pytest.approx(burst, rel=0.35)
    truth = _fault_truth(fleet, "loss")
    assert truth[0].details["frames_dropped"] == lost and truth[0].details["burst_len"] == burst


def test_duplicates_and_reordering() -> None:
    fleet, frames = _fleet([Fault(type="duplicate", rate=0.05), Fault(type="reorder", rate=0.05)],
                           duration_s=1000.0)
    seqs = [p.seq for p in _packets(frames)]
    dup = sum(c - 1 for c in Counter(seqs).values())
    assert dup / 2000 == pytest.approx(0.05, abs=0.02)
    late = sum(1 for i, s in enumerate(seqs) if i and s < max(seqs[:i]))
    assert late / 2000 == pytest.approx(0.05 * 1.05, abs=0.025)
    assert sorted(set(seqs)) == list(range(1999))  # nothing lost
    assert _fault_truth(fleet, "duplicate")[0].details["frames_duplicated"] == dup
    assert [f.rx_t_s for f in frames] == sorted(f.rx_t_s for f in frames)


def test_garbage_fails_decode_with_frame_error() -> None:
    fleet, frames = _fleet([Fault(type="garbage", rate=0.05)], duration_s=600.0, room_sensors=True)
    bad = Counter()
    for f in frames:
        try:
            (decode_imu if f.transport == "ble" else decode_room)(f.payload)
        except FrameError as exc:
            bad[exc.reason] += 1
    corrupted = sum(e.details.get("frames_corrupted", 0) for e in _fault_truth(fleet, "garbage"))
    assert sum(bad.values()) == corrupted
    assert corrupted / len(frames) == pytest.approx(0.05, abs=0.02)
    assert set(bad) <= {"crc", "garbage", "short", "schema", "length", "version", "range"}


def test_clock_skew_and_jump() -> None:
    fleet, frames = _fleet([Fault(type="clock_skew", ppm=500.0),
                            Fault(type="clock_jump", at_s=100.0, jump_ms=-7000)], duration_s=200.0)
    pk = _packets(frames)
    t_sim = np.array([p.seq * 0.5 for p in pk])
    dev = np.array([p.t0_ms for p in pk], dtype=np.float64) - EPOCH
    before = t_sim < 100
    slope = np.polyfit(t_sim[before], dev[before], 1)[0]
    assert slope == pytest.approx(1000 * (1 + 500e-6), rel=2e-5)
    after = ~before
    assert (dev[after] - t_sim[after] * 1000 * (1 + 500e-6)) == pytest.approx(-7000, abs=2)
    flagged = [p.seq for p in pk if p.flags & FLAG_CLOCK_JUMP]
    assert flagged == [200]
    assert _fault_truth(fleet, "clock_jump")[0].details["jumps"] == 1


def test_brownout_resets_sequence() -> None:
    fleet, frames = _fleet([Fault(type="brownout", at_s=60.0, reboot_s=5.0)], duration_s=120.0)
    pk = _packets(frames)
    boots = [p.boot_count for p in pk]
    assert boots[0] == 0 and boots[-1] == 1
    first_after = boots.index(1)
    assert pk[first_after].seq == 0 and pk[first_after].flags & FLAG_BOOT
    assert pk[first_after - 1].seq == 119  # frames 0..119 cover 0..60 s
    gap_s = frames[first_after].rx_t_s - frames[first_after - 1].rx_t_s
    assert 5.0 <= gap_s <= 6.1
    ev = [e for e in _fault_truth(fleet, "brownout") if "seq_before" in e.details]
    assert ev[0].details["seq_before"] == 120 and ev[0].t_start_s == 60.0


def test_battery_drain_brownouts_and_death() -> None:
    fault = Fault(type="battery", start_pct=12.0, drain_pct_per_h=36.0, brownout_below_pct=8.0)
    fleet, frames = _fleet([fault], duration_s=1400.0, frame_s=1.0)
    pk = _packets(frames)
    assert all(p.flags & FLAG_LOW_BATTERY for p in pk)
    assert pk[0].battery_pct == pytest.approx(12.0, abs=0.5)
    reboots = [e for e in _fault_truth(fleet, "brownout") if e.details.get("cause") == "low_battery"]
    assert len(reboots) >= 3  # repeated brown-outs below 8 %, i.e. after 400 s
    assert all(e.t_start_s >= 400 for e in reboots)
    assert len({p.boot_count for p in pk}) == len(reboots) + 1
    assert frames[-1].rx_t_s < 1201  # empty at 12 / 36 h = 1200 s: silent afterwards
    assert _fault_truth(fleet, "battery_dead")


def test_stuck_and_saturated_sensor() -> None:
    fleet, frames = _fleet([Fault(type="stuck", at_s=20.0, duration_s=10.0),
                            Fault(type="saturated", at_s=50.0, duration_s=5.0, axis=0)], duration_s=80.0)
    pk = sorted(_packets(frames), key=lambda p: p.seq)
    acc = np.concatenate([p.acc_g for p in pk])
    stuck = acc[20 * 50:30 * 50]
    assert (stuck == stuck[0]).all()
    assert np.ptp(acc[10 * 50:20 * 50], axis=0).max() > 0  # it moved before
    sat = [p.seq for p in pk if p.flags & FLAG_SATURATED]
    assert sat == list(range(100, 110))
    assert (acc[50 * 50:55 * 50, 0] == pytest.approx(16.0, abs=1e-3))
    assert _fault_truth(fleet, "stuck")[0].details["samples_affected"] == 500


def test_silent_device_goes_quiet_then_resumes() -> None:
    fleet, frames = _fleet([Fault(type="silent", sensor="wear-*", at_s=30.0, duration_s=20.0)], duration_s=80.0)
    rx = np.array([f.rx_t_s for f in frames if f.transport == "ble"])
    assert not ((rx > 30.6) & (rx < 50.0)).any()
    assert (rx > 50.6).sum() > 50
    assert _fault_truth(fleet, "silent")[0].details["frames_silenced"] == 40


def test_fault_pattern_only_hits_matching_sensors() -> None:
    _, frames = _fleet([Fault(type="loss", sensor="pir-*", rate=1.0)], duration_s=200.0, room_sensors=True)
    kinds = Counter(f.sensor_id.split("-")[0] for f in frames)
    assert kinds["pir"] == 0 and kinds["wear"] > 0 and kinds["bed"] + kinds["door"] > 0


def test_clock_drift_restarts_after_a_reboot_resync() -> None:
    _, frames = _fleet([Fault(type="clock_skew", ppm=1000.0), Fault(type="brownout", at_s=100.0)],
                           duration_s=150.0)
    pk = _packets(frames)
    before = [p for p in pk if p.boot_count == 0]
    after = [p for p in pk if p.boot_count == 1]
    err_before = before[-1].t0_ms - (EPOCH + before[-1].seq * 500)
    assert err_before == pytest.approx(99.5 * 1000 * 1e-3, abs=1)  # 1000 ppm over ~100 s
    first = after[0]
    t_first = frames[pk.index(first)].rx_t_s - 0.5  # sampled during the half second before sending
    assert first.t0_ms - (EPOCH + t_first * 1000) == pytest.approx(0, abs=20)  # resynced at boot


def test_two_brownouts_at_once_and_a_flat_battery_without_a_fault_rule() -> None:
    fleet, frames = _fleet([Fault(type="brownout", at_s=20.0), Fault(type="brownout", at_s=20.0)], duration_s=40.0)
    assert max(p.boot_count for p in _packets(frames)) == 2
    res = Resident(id="r01", wearable=Wearable(id="wear-r01", battery_pct=0.25, drain_pct_per_h=90.0))
    site = flat_site(1, res).model_copy(update={"sensors": []})
    fleet = Fleet(Scenario(seed=1, duration_s=30.0, start_epoch_ms=EPOCH, sites=[site]))
    frames = [f for ch in fleet.run() for f in ch.frames]
    assert max(f.rx_t_s for f in frames) < 10.6  # 0.25 % at 90 %/h lasts 10 s
    assert _fault_truth(fleet, "battery_dead")
