"""Simulator throughput: simulated device-seconds generated per wall-second, one core.

What is timed is what a consumer of ``Fleet.run`` pays for: rendering the motion model,
adding sensor noise, quantising, framing (header + CRC32) and the link model, for 50 Hz
waist wearables in 0.5 s frames. Fleet construction (timelines) is reported separately.

Baseline, measured in the same run: the same motion model and frame format rendered
one sample at a time (what a straightforward per-sample loop costs), so the figure
shows what block-wise numpy rendering buys. A second figure runs the bundled 10,000
device load scenario (wearables plus room sensors) for a few simulated seconds.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
from tqdm import tqdm

from fallwatch.protocol.frames import ImuPacket, encode_imu
from fallwatch.sim.fleet import Fleet
from fallwatch.sim.motion import render_block
from fallwatch.sim.scenario import Resident, Scenario, Site, Wearable, load_scenario


def _scenario(n: int, duration_s: float, seed: int) -> Scenario:
    sites = [Site(site_id=f"b-{i}", hub_id=f"hub-b-{i}", residents=[Resident(id=f"r{i}",
                                                                             wearable=Wearable(rate_hz=50.0))])
             for i in range(n)]
    return Scenario(seed=seed, duration_s=duration_s, start_epoch_ms=1_700_000_000_000, sites=sites)


def _vectorised(n: int, duration_s: float, seed: int) -> tuple[float, float, int, int]:
    t0 = time.perf_counter()
    fleet = Fleet(_scenario(n, duration_s, seed))
    build_s = time.perf_counter() - t0
    frames = nbytes = 0
    t0 = time.perf_counter()
    for chunk in fleet.run(step_s=1.0):
        frames += len(chunk.frames)
        nbytes += sum(len(f.payload) for f in chunk.frames)
    return time.perf_counter() - t0, build_s, frames, nbytes


def _naive(duration_s: float, seed: int) -> float:
    """One wearable, per-sample rendering and per-frame float encoding."""
    fleet = Fleet(_scenario(1, duration_s, seed))
    segs = fleet.timelines["r0"].segments
    rng = np.random.default_rng(seed)
    rate, m = 50.0, 25
    t0 = time.perf_counter()
    acc_buf: list[np.ndarray] = []
    gyro_buf: list[np.ndarray] = []
    seq = 0
    for i in range(int(duration_s * rate)):
        t = i / rate
        j = max(k for k, s in enumerate(segs) if s.t0 <= t) if segs[-1].t0 > t else len(segs) - 1
        a, g = render_block(segs[max(0, j - 1):j + 2], np.array([t]))
        acc_buf.append(a[0] + rng.normal(0, 0.004, 3))
        gyro_buf.append(g[0] + rng.normal(0, 0.07, 3))
        if len(acc_buf) == m:
            encode_imu(ImuPacket("wear-r0", 0, seq, int(t * 1000), rate, np.array(acc_buf, np.float32),
                                 np.array(gyro_buf, np.float32), 100.0, -65.0))
            seq += 1
            acc_buf, gyro_buf = [], []
    return time.perf_counter() - t0


def _load_10k(sim_s: float) -> tuple[float, float, int, int, int]:
    from fallwatch.sim.cli import resolve_scenario

    scn = load_scenario(resolve_scenario("load_10k"))
    t0 = time.perf_counter()
    fleet = Fleet(scn)
    build_s = time.perf_counter() - t0
    frames = 0
    t0 = time.perf_counter()
    for chunk in fleet.run(duration_s=sim_s, step_s=1.0):
        frames += len(chunk.frames)
    wearables = sum(1 for s in fleet.sensors if s.kind == "wearable")
    return time.perf_counter() - t0, build_s, len(fleet.sensors), frames, wearables


def run(quick: bool = False, progress: bool = True) -> dict[str, Any]:
    n, duration_s, repeats = (10, 60.0, 2) if quick else (50, 600.0, 3)
    naive_s = 10.0 if quick else 30.0
    load_s = 3.0 if quick else 10.0
    steps = repeats + 2
    with tqdm(total=steps, desc="bench sim", unit="step", disable=not progress) as bar:
        rates, builds = [], []
        frames = nbytes = 0
        for r in range(repeats):
            wall, build, frames, nbytes = _vectorised(n, duration_s, seed=100 + r)
            rates.append(n * duration_s / wall)
            builds.append(build)
            bar.update()
        naive_wall = _naive(naive_s, seed=7)
        naive_rate = naive_s / naive_wall
        bar.update()
        load_wall, load_build, load_devices, load_frames, load_wear = _load_10k(load_s)
        bar.update()
    med = statistics.median(rates)
    return {
        "device_seconds_per_s": round(med, 1),
        "device_seconds_per_s_spread_pct": round(100 * (max(rates) - min(rates)) / med, 1),  # within this run
        "naive_device_seconds_per_s": round(naive_rate, 1),
        "speedup_vs_naive": round(med / naive_rate, 1),
        "wearables": n,
        "sim_seconds": duration_s,
        "rate_hz": 50.0,
        "repeats": repeats,
        "frames_per_s": round(frames / (n * duration_s / med), 1),
        "bytes_per_device_second": round(nbytes / (n * duration_s), 1),
        "fleet_build_s_per_device": round(statistics.median(builds) / n, 5),
        "load_10k_devices": load_devices,
        "load_10k_sim_seconds": load_s,
        "load_10k_build_s": round(load_build, 2),
        "load_10k_device_seconds_per_s": round(load_devices * load_s / load_wall, 1),
        "load_10k_wearable_seconds_per_s": round(load_wear * load_s / load_wall, 1),
        "load_10k_frames_per_s": round(load_frames / load_wall, 1),
    }


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
