"""Gateway benchmark: raw broker, raw database, a naive gateway and fallwatch's, in one run.

Everything runs on a private Mosquitto (fallwatch's broker settings: no queue limit, so
a lagging consumer loses nothing) and a private InfluxDB 1.x on loopback:

1. **raw broker** — Mosquitto's own C clients: ``mosquitto_pub -l -q 1`` reading
   ~200-byte contract JSON lines from stdin → ``mosquitto_sub -q 1``; messages/s, lost.
2. **raw database** — pre-serialised line protocol POSTed to ``/write`` in batches of
   5,000; points/s.
3. **naive gateway** — a paho subscriber that json-decodes each message and POSTs one
   line per message (auto-ack): the "obvious" implementation; messages/s, lost.
4. **fallwatch gateway** — ``fallwatch gateway run`` processes (1 replica, and 2 on a
   shared subscription in a full run) draining the same kind of burst from the broker:
   sustained messages/s (first publish to last durable store), lost (read back with
   InfluxQL).
5. **latency** — the in-process gateway at half the sustained rate reached in 4,
   telemetry paced through ``mosquitto_pub -l`` with ``sent_ms`` stamped at send time
   plus fall alerts from a second publisher: end-to-end p50/p99 (publish → durable),
   and alert p99 while the telemetry load runs; an alert is lost unless it was stored
   and staff were notified (seen by a recording notification channel).
6. **latency, store down** — the same load against a private InfluxDB that is stopped
   halfway through: the alerts published while it is down must still be recorded and
   notified (publish → staff notification p50/p99/max, and how many); InfluxDB then
   comes back and everything, alerts' points included, is counted in it.

Raw broker and raw database rates are repeated (median reported, spread as _min/_max).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
import requests
from tqdm import tqdm

from fallwatch.config import load_config
from fallwatch.protocol import contract
from fallwatch.testing.services import InfluxDB1, Mosquitto, find_binary, free_port

_EXTRA = ""  # extra [gateway] settings for the replica processes (experiments)
SITE, DEVICE, SENSOR = "bench", "hub-bench", "wear-b01"
TOPIC = f"fallwatch/v1/{SITE}/{DEVICE}/tele/{SENSOR}"
BASE_TS = 1_700_000_000_000
_enc = msgspec.json.Encoder()


def tele_line(seq: int, device: str = DEVICE, sent_ms: int | None = None) -> bytes:
    """One ~200-byte telemetry envelope (distinct ts per seq, so every message is its own point)."""
    msg = {
        "kind": "tele",
        "schema": 1,
        "site_id": SITE,
        "device_id": device,
        "boot_id": 1,
        "seq": seq,
        "msg_id": f"{device}:{seq}",
        "ts_ms": BASE_TS + seq,
        "sent_ms": sent_ms or contract.now_ms(),
        "data": {"sensor": SENSOR, "window_s": 1.0, "fields": {"acc": 1.02, "steps": 3}},
    }
    return _enc.encode(msg)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class LinePublisher:
    """``mosquitto_pub -l -q 1`` fed from memory, with stdin held open until told to stop.

    mosquitto_pub reads stdin much faster than it can publish at QoS 1 and disconnects as
    soon as it sees end-of-file, dropping whatever it had not sent yet (measured: 34k of
    100k lines arrived). Keeping stdin open until the receiving side has everything, and
    only then closing it, makes the C client a loss-free load generator.
    """

    def __init__(self, port: int, topic: str, data: bytes | None = None) -> None:
        self.proc = subprocess.Popen(
            [find_binary("mosquitto_pub"), "-p", str(port), "-q", "1", "-l", "-t", topic],
            stdin=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._feeder: threading.Thread | None = None
        if data is not None:
            self._feeder = threading.Thread(target=self.write, args=(data,), daemon=True)
            self._feeder.start()

    def write(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def close(self) -> None:
        if self._feeder is not None:
            self._feeder.join(60)
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ------------------------------------------------------------------ 1. raw broker
def raw_broker(broker: Mosquitto, n: int, lines_path: Path) -> tuple[float, int]:
    sub = subprocess.Popen(
        [
            find_binary("mosquitto_sub"),
            "-p",
            str(broker.port),
            "-q",
            "1",
            "-t",
            "raw/#",
            "-C",
            str(n),
            "-W",
            "120",
            "-i",
            f"rawsub-{time.monotonic_ns()}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    data = lines_path.read_bytes()
    time.sleep(0.5)  # let it subscribe
    t0 = time.perf_counter()
    pub = LinePublisher(broker.port, "raw/bench", data)
    out, _ = sub.communicate(timeout=180)
    elapsed = time.perf_counter() - t0
    pub.close()
    got = out.count(b"\n")
    return n / elapsed, n - got


# ------------------------------------------------------------------ 2. raw database
def raw_db(db: InfluxDB1, n: int, batch: int = 5000) -> float:
    database = f"rawdb_{time.monotonic_ns()}"
    requests.post(f"{db.url}/query", params={"q": f"CREATE DATABASE {database}"}, timeout=10).raise_for_status()
    lines = [
        f"telemetry,site_id=bench,device_id=hub-{i % 50},sensor=wear-b01 acc=1.02,steps=3 {BASE_TS + i}"
        for i in range(n)
    ]
    bodies = ["\n".join(lines[i : i + batch]).encode() for i in range(0, n, batch)]
    s = requests.Session()
    t0 = time.perf_counter()
    for body in bodies:
        r = s.post(f"{db.url}/write", params={"db": database, "precision": "ms"}, data=body, timeout=60)
        r.raise_for_status()
    return n / (time.perf_counter() - t0)


# ------------------------------------------------------------------ 3. naive gateway
def naive_gateway(broker: Mosquitto, db: InfluxDB1, n: int, lines_path: Path) -> tuple[float, int]:
    from influxdb_client import Point, WritePrecision

    database = f"naive_{time.monotonic_ns()}"
    requests.post(f"{db.url}/query", params={"q": f"CREATE DATABASE {database}"}, timeout=10).raise_for_status()
    s = requests.Session()
    state = {"n": 0, "t_first": 0.0, "t_last": 0.0}
    done = threading.Event()

    def on_message(c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        if not state["n"]:
            state["t_first"] = time.perf_counter()
        d = json.loads(m.payload)
        p = (
            Point("telemetry")
            .tag("site_id", d["site_id"])
            .tag("device_id", d["device_id"])
            .tag("sensor", d["data"]["sensor"])
            .time(d["ts_ms"], WritePrecision.MS)
        )
        for k, v in d["data"]["fields"].items():
            p.field(k, float(v))
        s.post(f"{db.url}/write", params={"db": database, "precision": "ms"}, data=p.to_line_protocol(), timeout=30)
        state["n"] += 1
        state["t_last"] = time.perf_counter()
        if state["n"] >= n:
            done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"naive-{time.monotonic_ns()}", protocol=mqtt.MQTTv5)
    c.on_message = on_message
    c.connect("127.0.0.1", broker.port)
    c.subscribe("naive/#", qos=1)
    c.loop_start()
    time.sleep(0.5)
    t0 = time.perf_counter()
    pub = LinePublisher(broker.port, "naive/x", lines_path.read_bytes())
    done.wait(max(60, n / 200))
    elapsed = (state["t_last"] or time.perf_counter()) - t0
    pub.close()
    c.disconnect()
    c.loop_stop()
    stored = _count(db, database)
    return state["n"] / elapsed if elapsed > 0 else 0.0, n - stored


def _count(db: InfluxDB1, database: str, measurement: str = "telemetry", field: str = "acc") -> int:
    series = db.query(f'SELECT count("{field}") FROM "{measurement}"', db=database)
    return int(series[0]["values"][0][1]) if series else 0


# ------------------------------------------------------------------ 4. fallwatch gateway (processes)
def _write_cfg(
    path: Path,
    broker: Mosquitto,
    db: InfluxDB1,
    database: str,
    gw_id: str,
    group: str | None,
    work: Path,
    http_port: int,
) -> None:
    shared = f'shared_group = "{group}"\n' if group else ""
    path.write_text(f"""
[mqtt]
url = "{broker.url}"
[influx]
url = "{db.url}"
version = 1
database = "{database}"
[gateway]
gateway_id = "{gw_id}"
{shared}state_db = "{work / f"state-{database}.sqlite"}"
spool_dir = "{work / f"spool-{gw_id}"}"
http_port = {http_port}
batch_max = 2000
{_EXTRA}""")


def _stats(port: int) -> dict[str, Any]:
    try:
        return dict(requests.get(f"http://127.0.0.1:{port}/stats", timeout=2).json())
    except (requests.RequestException, ValueError):
        return {}


def fallwatch_gateway(
    broker: Mosquitto, db: InfluxDB1, n: int, lines_path: Path, replicas: int, work: Path
) -> tuple[float, int]:
    database = f"fw_{replicas}_{time.monotonic_ns()}"
    group = f"bench{time.monotonic_ns()}" if replicas > 1 else None
    procs, ports = [], []
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for i in range(replicas):
        port = free_port()
        cfg = work / f"gw{i}-{database}.toml"
        _write_cfg(cfg, broker, db, database, f"gw{i}-{database[-8:]}", group, work, port)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "fallwatch.cli", "gateway", "run", "--config", str(cfg)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        ports.append(port)
    try:
        deadline = time.monotonic() + 60
        while not all(
            (requests.get(f"http://127.0.0.1:{p}/readyz", timeout=2).ok if _stats(p) else False) for p in ports
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("gateway replicas did not become ready")
            time.sleep(0.2)
        data = lines_path.read_bytes()
        t0 = time.perf_counter()
        pub = LinePublisher(broker.port, TOPIC, data)
        t_end = None
        deadline = time.monotonic() + max(120, n / 500)
        while time.monotonic() < deadline:
            stored = sum(_stats(p).get("stored", 0) + _stats(p).get("duplicates", 0) for p in ports)
            if stored >= n:
                t_end = time.perf_counter()
                break
            time.sleep(0.1)
        pub.close()
        elapsed = (t_end or time.perf_counter()) - t0
        time.sleep(0.5)
        return n / elapsed, n - _count(db, database)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


# ------------------------------------------------------------------ 5. latency (in-process gateway)
def latency(
    broker: Mosquitto,
    db: InfluxDB1,
    rate: float,
    duration_s: float,
    work: Path,
    progress: bool,
    batch_max_delay_ms: float | None = None,
    stop_store_after_s: float | None = None,
) -> dict[str, Any]:
    """``stop_store_after_s``: stop InfluxDB that far into the run (and start it again after
    publishing), and report the alerts published while it was down."""
    from fallwatch.gateway.app import Gateway
    from fallwatch.gateway.channels import Action
    from fallwatch.testing.channels import RecordingChannel
    from fallwatch.testing.publisher import Publisher, fall

    database = f"lat_{time.monotonic_ns()}"
    cfg = load_config(
        overrides={
            "mqtt": {"url": broker.url},
            "influx": {"url": db.url, "version": 1, "database": database},
            "gateway": {
                "gateway_id": f"gw-lat-{time.monotonic_ns() % 10**8}",
                # a fresh state DB per run: the same message ids are replayed each run, and the
                # de-duplication would (rightly) drop them as already stored
                "state_db": str(work / f"{database}.sqlite"),
                "spool_dir": str(work / f"{database}-spool"),
                "http_port": 0,
                "batch_max": 2000,
                # staff are told through an in-process recording channel instead of the staff
                # log (20 "FALL ALERT" lines a second would bury the figures)
                "channels": [],
                **({} if batch_max_delay_ms is None else {"batch_max_delay_ms": batch_max_delay_ms}),
            },
        }
    )
    recorder = RecordingChannel()
    gw = Gateway(cfg, channels=[recorder])
    lat: dict[str, list[float]] = {"bulk": [], "alert": []}
    gw.latency_probe = lambda path, ms: lat[path].append(ms)
    gw.start()
    alerts_pub = Publisher("127.0.0.1", broker.port, f"lat-alerts-{time.monotonic_ns()}")
    try:
        deadline = time.monotonic() + 30
        while not gw.ready()[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        pub = LinePublisher(broker.port, TOPIC)
        n = int(rate * duration_s)
        t0 = time.perf_counter()
        sent = alerts = 0
        tick = 0.005
        alert_sent_ms: dict[str, int] = {}  # alert id -> publish time
        down_at_ms: list[int] = []  # set once InfluxDB is really down

        def stop_store() -> None:
            db.stop()
            down_at_ms.append(contract.now_ms())

        stopper: threading.Thread | None = None
        with tqdm(
            total=n, desc=f"latency @ {rate:.0f} msg/s", unit="msg", disable=not progress, file=sys.stderr, leave=False
        ) as bar:
            while sent < n:
                due = min(n, int((time.perf_counter() - t0) * rate))
                if due > sent:
                    now = contract.now_ms()
                    pub.write(b"".join(tele_line(s, sent_ms=now) + b"\n" for s in range(sent, due)))
                    bar.update(due - sent)
                    sent = due
                if (time.perf_counter() - t0) * 20 > alerts:  # 20 fall alerts per second alongside
                    alert_sent_ms[f"fall:{SITE}:{DEVICE}:ev{alerts}"] = contract.now_ms()
                    alerts_pub.publish(*fall(SITE, DEVICE, 10**9 + alerts, event=f"ev{alerts}"))
                    alerts += 1
                elapsed_s = time.perf_counter() - t0
                if stop_store_after_s is not None and stopper is None and elapsed_s >= stop_store_after_s:
                    stopper = threading.Thread(target=stop_store, daemon=True)
                    stopper.start()
                time.sleep(tick)
        alerts_pub.wait(30)
        down: dict[str, Any] = {}
        if stopper is not None:
            stopper.join(30)
            # the alerts published while the store was down: recorded and notified, and when
            down_ids = {a for a, ms in alert_sent_ms.items() if down_at_ms and ms >= down_at_ms[0]}
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not down_ids <= set(recorder.first_times("fall", Action.RAISED)):
                time.sleep(0.05)
            told = recorder.first_times("fall", Action.RAISED)
            recorded = {a["alert_id"] for a in gw.alerts()}
            waits = [told[a] * 1000 - alert_sent_ms[a] for a in down_ids if a in told]
            down = {
                "_alert_store_down_notify_ms": waits,
                "alert_store_down_alerts": len(down_ids),
                "alert_store_down_recorded_and_notified": len(down_ids & recorded & set(told)),
                "alert_store_down_notify_p50_ms": round(_pct(waits, 0.50), 1),
                "alert_store_down_notify_p99_ms": round(_pct(waits, 0.99), 1),
                "alert_store_down_notify_max_ms": round(max(waits), 1) if waits else float("nan"),
                "alert_store_down_points_pending": gw.stats()["alert_points_pending"],
                "alert_store_down_spool_points": gw.stats()["spool_depth"],
            }
            db.start()  # ... and back: everything must reach it
        deadline = time.monotonic() + 60
        while gw.stats()["stored"] < n + alerts and time.monotonic() < deadline:
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0  # publishing + draining: what the gateway sustained
        pub.close()
        gw.wait_idle(60 if stopper is None else 180)
        if stopper is not None:
            down["alert_store_down_points_in_store"] = _count(db, database, "fall_alert", "confidence")
            return {**down, "alert_store_down_lost": n - _count(db, database) + alerts - len(
                {a["alert_id"] for a in gw.alerts()} & set(recorder.first_times("fall", Action.RAISED)))}
        warm = lat["bulk"][int(len(lat["bulk"]) * 0.1) :]  # skip the start-up second
        achieved = len(lat["bulk"]) / elapsed if elapsed > 0 else 0.0
        return {
            "_telemetry_latency_ms": warm,
            "_alert_latency_ms": list(lat["alert"]),
            "_load_curve": [[round(rate, 1), round(achieved, 1), round(_pct(warm, 0.99), 1)]],
            "latency_rate_msgs_per_s": round(rate, 1),
            "latency_p50_ms": round(_pct(warm, 0.50), 1),
            "latency_p99_ms": round(_pct(warm, 0.99), 1),
            "alert_latency_p50_ms": round(_pct(lat["alert"], 0.50), 1),
            "alert_latency_p99_ms": round(_pct(lat["alert"], 0.99), 1),
            "latency_lost": n - _count(db, database),
            # an alert counts as delivered once it is stored *and* staff were notified of it
            "alerts_lost": alerts - len({a["alert_id"] for a in gw.alerts()}
                                        & set(recorder.first_times("fall", Action.RAISED))),
        }
    finally:
        alerts_pub.close()
        gw.stop()


# ------------------------------------------------------------------ driver
def run(quick: bool = False, progress: bool = True) -> dict[str, Any]:
    n_raw = 30_000 if quick else 100_000
    n_db = 50_000 if quick else 200_000
    n_naive = 1_000 if quick else 3_000
    n_gw = 20_000 if quick else 60_000
    repeats = 1 if quick else 3
    out: dict[str, Any] = {}
    steps = ["raw broker", "raw db", "naive", "fallwatch x1"] + ([] if quick else ["fallwatch x2"]) + ["latency"]
    bar = tqdm(steps, desc="gateway bench", disable=not progress, file=sys.stderr)
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fw-bench-gw-")))
        broker = stack.enter_context(Mosquitto())
        db = stack.enter_context(InfluxDB1())
        lines = work / "lines.txt"
        with open(lines, "wb") as f:
            now = contract.now_ms()
            for i in range(max(n_raw, n_gw)):
                f.write(tele_line(i, sent_ms=now) + b"\n")
        out["payload_bytes"] = len(tele_line(0))
        naive_lines = work / "naive.txt"
        naive_lines.write_bytes(b"".join(tele_line(i) + b"\n" for i in range(n_naive)))
        gw_lines = work / "gw.txt"
        with open(lines, "rb") as src, open(gw_lines, "wb") as dst:
            for _ in range(n_gw):
                dst.write(src.readline())

        bar.set_postfix_str("raw broker")
        rb = [raw_broker(broker, n_raw, lines) for _ in range(repeats)]
        _put_median(out, "raw_broker_msgs_per_s", [r for r, _ in rb])
        out["raw_broker_lost"] = max(lost for _, lost in rb)
        bar.update()
        bar.set_postfix_str("raw db")
        _put_median(out, "raw_db_points_per_s", [raw_db(db, n_db) for _ in range(repeats)])
        bar.update()
        bar.set_postfix_str("naive")
        rate, lost = naive_gateway(broker, db, n_naive, naive_lines)
        out["naive_msgs_per_s"], out["naive_lost"] = round(rate, 1), lost
        bar.update()
        bar.set_postfix_str("fallwatch x1")
        rate, lost = fallwatch_gateway(broker, db, n_gw, gw_lines, 1, work)
        out["gateway_msgs_per_s"], out["lost"] = round(rate, 1), lost
        bar.update()
        if not quick:
            bar.set_postfix_str("fallwatch x2")
            rate2, lost2 = fallwatch_gateway(broker, db, n_gw, gw_lines, 2, work)
            out["gateway_2replicas_msgs_per_s"], out["lost_2replicas"] = round(rate2, 1), lost2
            out["lost"] += lost2
            bar.update()
        best = max(out["gateway_msgs_per_s"], out.get("gateway_2replicas_msgs_per_s", 0.0))
        slower_raw = min(out["raw_broker_msgs_per_s"], out["raw_db_points_per_s"])
        out["gateway_vs_slower_raw"] = round(best / slower_raw, 3)
        out["gateway_vs_naive"] = round(out["gateway_msgs_per_s"] / max(out["naive_msgs_per_s"], 1e-9), 1)
        bar.set_postfix_str("latency")
        out.update(latency(broker, db, out["gateway_msgs_per_s"] / 2, 8.0 if quick else 20.0, work, progress))
        out["lost"] += out["latency_lost"] + out["alerts_lost"]
        with InfluxDB1() as db_down:  # its own InfluxDB: this one is stopped halfway
            duration = 8.0 if quick else 20.0
            out.update(latency(broker, db_down, out["gateway_msgs_per_s"] / 2, duration, work, progress,
                               stop_store_after_s=duration / 2))
        out["lost"] += out["alert_store_down_lost"]
        if not quick:  # throughput vs offered load, for the plot (the figures above stay at half rate)
            for frac in (0.25, 0.75, 0.95):
                more = latency(broker, db, out["gateway_msgs_per_s"] * frac, 10.0, work, progress)
                out["_load_curve"] += more["_load_curve"]
                out["lost"] += more["latency_lost"] + more["alerts_lost"]
            out["_load_curve"].sort()
        bar.update()
    bar.close()
    return out


def _put_median(out: dict[str, Any], key: str, values: list[float]) -> None:
    out[key] = round(statistics.median(values), 1)
    if len(values) > 1:
        out[f"{key}_min"], out[f"{key}_max"] = round(min(values), 1), round(max(values), 1)


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
