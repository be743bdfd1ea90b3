"""Edge benchmark: how many 50 Hz wearables one core handles, decision latency to the broker,
and the agent's peak memory.

What is measured, in one run (``run()``):

* **throughput** (``wearables_per_core``): a child process runs one :class:`EdgeAgent`
  with the real pipeline (frame decode, stream handling, detector, batched ONNX, durable
  outbox with fsync, QoS 1 publishing to a private Mosquitto) and is fed pre-encoded
  frames (0.5 s, 25 samples each, as the simulator's wearables send) as fast as it can
  take them. wearables/core = wearables x simulated seconds / CPU seconds of the whole
  agent process (all threads). Repeated; median and spread reported.
* **baseline** (``baseline_wearables_per_core``): the naive design in the same child,
  same frames, same agent, with :class:`NaiveDetector` in place of the streaming
  detector: every wearable's last 4.5 s window is scored on its own each time a frame
  arrives (a Python loop over windows, one model call per window; no trigger, no
  batching across devices). Runs interleave with the real ones.
* **latency** (``decision_latency_p50_ms``/``p99``): a *paced* run (frames handed to the
  agent when their last sample would have been taken, in real time, the wearables'
  frame phases spread over the 0.5 s frame period, fed every 50 ms) with a share of the
  wearables falling; latency = broker arrival of the FallAlert (seen by a subscriber in
  this process) minus the moment the frame holding the last sample the decision needs
  was given to the agent. The cancel window is set to 0 so the confirmation window
  (2.5 s after the impact) is the only wait, and is not counted. CLOCK_MONOTONIC is
  system-wide, so the two processes' times compare.
* **memory** (``peak_rss_mb``): the paced agent process's peak RSS (``ru_maxrss``), which
  includes Python, numpy, scipy and onnxruntime themselves (``idle_rss_mb`` is the same
  process before any wearable is added).
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import statistics
import tempfile
import time
from typing import Any

import numpy as np

from fallwatch.pacing import Pacer
from fallwatch.protocol.contract import FallData

FRAME_S = 0.5
PER_FRAME = 25
RATE = 50.0
PHASES = 10  # paced run: wearables' frames spread over 10 x 50 ms ticks per frame period


class _Traffic:
    """Synthetic wearables, generated frame by frame (so the paced run holds no signal
    backlog in memory and its RSS is the agent's).

    Everyone walks; everyone sits down hard once (a 2 g bump that triggers the detector
    and costs a model call but is not a fall); ``fall_share`` of them fall once.
    """

    def __init__(self, n_wear: int, sim_s: float, fall_share: float, seed: int = 0,
                 hub: str = "hub-1") -> None:
        from fallwatch.edge import synth

        rng = np.random.default_rng(seed)
        self.n_wear, self.sim_s, self.hub = n_wear, sim_s, hub
        self.n = int(sim_s * RATE)
        self.base_a, self.base_g = synth.quiet(self.n + 500, rng, walking=True)
        self.fa, self.fg, imp = synth.fall(pre_s=2.0, post_s=max(4.0, sim_s))
        self.fallers = sorted(rng.choice(n_wear, size=round(n_wear * fall_share), replace=False).tolist())
        fall_set = set(self.fallers)
        self.off = rng.integers(0, 500, n_wear)
        self.bump = (rng.uniform(1.0, max(1.5, sim_s - 2.0), n_wear) * RATE).astype(int)
        self.fall_start = np.full(n_wear, -10**9)
        for k in fall_set:
            self.fall_start[k] = int(rng.uniform(5.0, max(5.5, sim_s - 4.0)) * RATE) - imp
        self.ticks = int(sim_s / FRAME_S)

    def samples(self, k: int, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = i * PER_FRAME, (i + 1) * PER_FRAME
        o = int(self.off[k])
        a = self.base_a[o + lo:o + hi].copy()
        g = self.base_g[o + lo:o + hi].copy()
        b = int(self.bump[k])
        if lo <= b + 2 and b < hi:
            idx = np.arange(max(lo, b), min(hi, b + 3)) - lo
            a[idx, 2] += 1.2
        fs = int(self.fall_start[k])
        if fs + len(self.fa) > lo and fs < hi:
            src = np.arange(lo, hi) - fs
            ok = (src >= 0) & (src < len(self.fa))
            a[ok] = self.fa[src[ok]]
            g[ok] = self.fg[src[ok]]
        return a, g

    def tick(self, j: int, phases: int) -> list:
        """Encoded frames received in reception tick ``j`` (``phases`` ticks per frame
        period: real wearables are not in lock-step, so their frame times are spread)."""
        from fallwatch.protocol.frames import ImuPacket, SensorFrame, encode_imu

        i, ph = divmod(j, phases)
        t_off = FRAME_S * ph / phases
        out = []
        for k in range(ph, self.n_wear, phases):
            a, g = self.samples(k, i)
            sid = f"wear-{k:04d}"
            p = ImuPacket(sensor_id=sid, boot_count=1, seq=i, t0_ms=int((i * FRAME_S + t_off) * 1000),
                          rate_hz=RATE, acc_g=a, gyro_dps=g, battery_pct=80.0, rssi_dbm=-60.0)
            out.append(SensorFrame(self.hub, sid, "ble", (i + 1) * FRAME_S + t_off + 0.005, encode_imu(p)))
        return out


def _agent(url: str, workdir: str, site: str, make_detector: Any = None) -> Any:
    from fallwatch.config import load_config
    from fallwatch.edge.agent import EdgeAgent

    cfg = load_config(None, {"mqtt": {"url": url}, "edge": {
        "site_id": site, "device_id": "hub-1", "cancel_window_s": 0.0,
        "outbox_path": f"{workdir}/{site}.sqlite", "model_dir": f"{workdir}/models"}})
    agent = EdgeAgent(cfg, make_detector=make_detector)
    agent.start()
    return agent


def _worker(mode: str, url: str, workdir: str, site: str, n_wear: int, sim_s: float, fall_share: float,
            repeats: int, n_base: int, q: Any) -> None:
    """Child process: one agent (and the naive baseline) measured from the inside."""
    import os

    import psutil

    idle_rss = psutil.Process(os.getpid()).memory_info().rss / 2**20
    res: dict[str, Any] = {"idle_rss_mb": idle_rss}
    if mode == "throughput":
        traffic = _Traffic(n_wear, sim_s, fall_share)
        ticks = [traffic.tick(j, 1) for j in range(traffic.ticks)]  # pre-encoded: not in the CPU time
        rates, base = [], []
        for r in range(repeats):  # interleaved, so machine load affects both alike
            rate, st = _feed_rate(url, workdir, f"{site}-t{r}", ticks, n_wear, sim_s)
            rates.append(rate)
            small = [fr[:n_base] for fr in ticks]  # the baseline is slow: fewer wearables
            base.append(_feed_rate(url, workdir, f"{site}-b{r}", small, n_base, sim_s, naive=True)[0])
        res["rates"] = rates
        res["stats"] = st
        res["baseline_rates"] = base
    else:
        traffic = _Traffic(n_wear, sim_s, fall_share, seed=1)
        fallers = traffic.fallers
        agent = _agent(url, workdir, site)
        alerts: list[tuple[str, float]] = []  # (event id, monotonic time of the feed that decided it)
        agent.on_alert(lambda ev: alerts.append((ev.event_id, ev.feed_wall)) if ev.status == "alert" else None)
        pacer = Pacer(1.0)  # real time
        step = FRAME_S / PHASES
        n_ticks = traffic.ticks * PHASES
        for j in range(n_ticks):
            frames = traffic.tick(j, PHASES)  # made on the fly (the wearables' radios)
            due = (j + 1) * step + 0.005  # when the frames' last samples exist (+ radio)
            pacer.wait(due)
            agent.feed(frames, due)
        behind = -pacer.lag_s(n_ticks * step)
        agent.flush(30)
        res["events"] = alerts
        res["fallers"] = len(fallers)
        res["behind_s"] = behind
        res["stats"] = agent.stats()
        agent.stop()
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    q.put(res)


class NaiveDetector:
    """The naive design, for the baseline: no impact trigger, no batching. Every time new
    samples arrive, the wearable's last window goes to the model on its own (a Python
    loop over windows, one inference call per window). Same split API as
    :class:`fallwatch.models.detector.DeviceFallDetector`, so the rest of the agent is identical;
    its decisions are not published (which only flatters the baseline)."""

    def __init__(self, model: Any, settings: Any = None) -> None:
        from fallwatch.models import features as F

        self.model = model
        self.threshold = model.threshold
        self.window = F.WINDOW
        self.buf = np.zeros((0, 6), dtype=np.float32)
        self.suppressed = 0
        self.hits = 0

    def feed(self, t_s: np.ndarray, acc_g: np.ndarray, gyro_dps: np.ndarray | None = None) -> None:
        x = np.concatenate([acc_g, gyro_dps if gyro_dps is not None else np.zeros_like(acc_g)], axis=1)
        self.buf = np.concatenate([self.buf, x])[-self.window:]
        if len(self.buf) == self.window:
            p = self.model.predict(self.buf[None, :, :])  # one call per window
            self.hits += int(p[0] >= self.threshold)

    def pending_windows(self) -> np.ndarray:
        return np.zeros((0, self.window, 6), dtype=np.float32)

    @property
    def inflight(self) -> list:
        return []

    def inflight_refs(self) -> np.ndarray:
        return np.zeros((0, 3), dtype=np.float32)

    def use_model(self, model: Any) -> None:
        self.model, self.threshold = model, model.threshold

    def resolve(self, probs: np.ndarray) -> list:
        return []


def _feed_rate(url: str, workdir: str, site: str, ticks: list[list], n_wear: int, sim_s: float,
               naive: bool = False) -> tuple[float, dict]:
    """wearables per core of one agent fed ``ticks`` as fast as it takes them."""
    agent = _agent(url, workdir, site, make_detector=NaiveDetector if naive else None)
    c0 = time.process_time()
    for i, frames in enumerate(ticks):
        agent.feed(frames, (i + 1) * FRAME_S + 0.01)
    agent.flush(60)
    cpu = time.process_time() - c0
    st = agent.stats()
    agent.stop()
    return n_wear * sim_s / cpu, st


def _run_child(target_args: tuple, timeout_s: float) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_worker, args=(*target_args, q), daemon=True)
    p.start()
    try:
        return q.get(timeout=timeout_s)
    finally:
        p.join(10)
        if p.is_alive():
            p.kill()


def run(quick: bool = False, progress: bool = True) -> dict:
    from tqdm import tqdm

    from fallwatch.config import load_config
    from fallwatch.testing.recorder import UplinkRecorder
    from fallwatch.testing.services import Mosquitto

    n_wear = 200 if quick else 500
    thr_s = 10.0 if quick else 30.0
    lat_s = 12.0 if quick else 40.0
    repeats = 1 if quick else 3
    n_base = 20 if quick else 50
    steps = tqdm(total=2, desc="edge bench", disable=not progress)
    with Mosquitto() as broker, tempfile.TemporaryDirectory(prefix="fw-bench-edge-") as wd:
        mq = load_config(None, {"mqtt": {"url": broker.url}}).mqtt
        thr = _run_child(("throughput", broker.url, wd, "bench-thr", n_wear, thr_s, 0.02, repeats, n_base),
                         timeout_s=600)
        steps.update()
        with UplinkRecorder(mq, "bench-edge-rec", site="bench-lat") as rec:
            lat = _run_child(("latency", broker.url, wd, "bench-lat", n_wear, lat_s, 0.1, 1, 0),
                             timeout_s=600)
            n_alerts = len(lat["events"])
            rec.wait_for(lambda r: len(r.falls()) >= n_alerts, timeout_s=30)
            arrived = {m.msg.data.event_id: m.at for m in rec.falls() if isinstance(m.msg.data, FallData)}
        steps.update()
        steps.close()
    lats = [1000.0 * (arrived[e] - fed) for e, fed in lat["events"] if e in arrived]
    rates = thr["rates"]
    out: dict[str, Any] = {
        "wearables_per_core": round(statistics.median(rates), 1),
        "wearables_per_core_min": round(min(rates), 1),
        "wearables_per_core_max": round(max(rates), 1),
        "baseline_wearables_per_core": round(statistics.median(thr["baseline_rates"]), 1),
        "ratio": round(statistics.median(rates) / statistics.median(thr["baseline_rates"]), 2),
        "decision_latency_p50_ms": round(float(np.percentile(lats, 50)), 2) if lats else None,
        "decision_latency_p99_ms": round(float(np.percentile(lats, 99)), 2) if lats else None,
        "decision_latency_max_ms": round(max(lats), 2) if lats else None,
        "alerts_measured": len(lats),
        "_decision_latency_ms": lats,
        "falls_injected": lat["fallers"],
        "alerts_missing_at_broker": n_alerts - len(lats),
        "peak_rss_mb": round(lat["peak_rss_mb"], 1),
        "idle_rss_mb": round(lat["idle_rss_mb"], 1),
        "throughput_peak_rss_mb": round(thr["peak_rss_mb"], 1),
        "paced_wearables": n_wear,
        "paced_behind_s": round(lat["behind_s"], 3),
        "throughput_wearables": n_wear,
        "throughput_sim_s": thr_s,
        "windows_scored": int(thr["stats"].get("windows_scored", 0)),
        "inference_calls": int(thr["stats"].get("inference_calls", 0)),
        "repeats": repeats,
        "quick": quick,
    }
    return out


if __name__ == "__main__":  # pragma: no cover
    import json

    print(json.dumps(run(quick=True), indent=1))
