"""Gateway benchmark (issue 16): the same message set through four consumers, in one run.

Everything runs on a private Mosquitto (fallwatch's broker settings: no queue limit, so
a lagging consumer loses nothing) and a private InfluxDB 1.x on loopback. The message set
is 50,000 contract telemetry messages (``--quick``: 5,000) from 1,000 hubs (100), ~250 B,
QoS 1. Each consumer is its own process (tree), so CPU and memory are its own:

1. **ceiling** — Mosquitto's C subscriber (``mosquitto_sub``), no database.
2. **bare forwarder** — :mod:`fallwatch.app.bench.forwarder`: paho, acks on receipt, no
   validation, no de-dup, batched line protocol to InfluxDB: the baseline ratios are against.
2b. **MQTT clients** (issue 16, item 4) — the same forwarder with each client and ack mode:
   stock paho acking after the write, paho with the gateway's tuning, gmqtt acking on
   receipt, after the write through its public API, and batched through its internals
   (``fwd_<client>_<ack>_*``; gmqtt rows only when it is installed). The gateway is also
   given as a ratio to the fastest forwarder that acks only what it stored.
3. **gateway x1** — ``fallwatch gateway run --workers 1``.
4. **gateway xN** — ``fallwatch gateway run --workers N``, N = the cores this process may use.

**Drain**: the consumer makes its persistent session and goes away, the whole set is
queued at the broker, the consumer comes back; msgs/s = set size / time from its first
received to its last stored message (forwarder: its own clock; gateway: ``/stats`` polled
10×/s; ceiling: process start to exit); CPU µs/msg = CPU time of the process tree over that
time / set size; peak RSS per process (``VmHWM`` / ``ru_maxrss``); lost = set size − points
counted in InfluxDB afterwards.

**Paced** at 200 and 2,000 msg/s for 10 s (4 s quick) into a freshly started consumer:
CPU µs/msg; for the gateway also 5 fall alerts a second alongside, timed from publish to
the staff notification's arrival at a web hook in this process (the gateway's real alert
path, ``webhook`` channel), p50/p99; an alert is lost unless notified. That CPU figure
charges the alerts' work to the telemetry messages, so the gateway also runs 200 msg/s
without alerts (``..._200_telemetry_only_cpu_us_per_msg``; the difference is reported as
``..._200_alert_charge_cpu_us_per_msg``).

Beside each of those alert stages: how many alerts took over 50 ms end to end
(``..._alerts_over_50ms``), how many of them already took that long from receipt to durable in
the gateway's own histogram (``..._alerts_durable_over_50ms``, summed over workers), and the
disk's own fsync latency in the same seconds (``..._disk_fsync_p99_ms`` / ``_max_ms`` /
``_fsyncs_over_50ms``, :class:`FsyncProbe`): an alert is durable only after an fsync.

**Store down** (issue 11): the in-process gateway at 1,000 msg/s against its own InfluxDB,
stopped halfway: alerts published meanwhile must still be recorded and notified, and every
point must be in InfluxDB once it is back.
"""

from __future__ import annotations

import contextlib
import importlib.util
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
import psutil
import requests
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from tqdm import tqdm

from fallwatch.config import load_config
from fallwatch.gateway.pool import default_workers
from fallwatch.protocol import contract, topics
from fallwatch.testing.publisher import Publisher
from fallwatch.testing.services import InfluxDB1, Mosquitto, find_binary, free_port

SITE, DEVICE, SENSOR = "bench", "hub-bench", "wear-b01"
TOPIC = f"fallwatch/v1/{SITE}/{DEVICE}/tele/{SENSOR}"
BASE_TS = 1_700_000_000_000
FILTER = f"{topics.PREFIX}/+/+/tele/+"
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


def _count(db: InfluxDB1, database: str, measurement: str = "telemetry", field: str = "acc") -> int:
    series = db.query(f'SELECT count("{field}") FROM "{measurement}"', db=database)
    return int(series[0]["values"][0][1]) if series else 0


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


# ------------------------------------------------------------------ the message set
def message_set(n: int, hubs: int, seq0: int = 0) -> list[tuple[str, bytes]]:
    """``n`` contract telemetry messages (~250 B) round-robin from ``hubs`` hubs, each its own
    point (distinct device and time), so InfluxDB's count is the number stored."""
    out = []
    now = contract.now_ms()
    for i in range(seq0, seq0 + n):
        dev, seq = f"hub-{i % hubs:04d}", i // hubs
        msg = contract.Telemetry(
            schema=1, site_id=SITE, device_id=dev, boot_id=1, seq=seq, msg_id=contract.make_msg_id(dev, seq),
            ts_ms=BASE_TS + seq * 1000, sent_ms=now,
            data=contract.TeleData(sensor=SENSOR, window_s=10.0, fields={"acc": 1.02, "steps": 3}))
        out.append((topics.tele(SITE, dev, SENSOR), contract.encode(msg)))
    return out


def publish_all(broker: Mosquitto, msgs: list[tuple[str, bytes]]) -> None:
    """Queue the set at the broker (QoS 1, every PUBACK awaited) while the consumer is away."""
    pub = Publisher("127.0.0.1", broker.port, f"bench-pub-{time.monotonic_ns()}")
    try:
        for topic, payload in msgs:
            pub.publish(topic, payload)
        if not pub.wait(300):
            raise RuntimeError("the broker did not take the message set")
    finally:
        pub.close()


def forget_sessions(broker: Mosquitto, client_ids: list[str]) -> None:
    """End a finished consumer's persistent sessions: left behind, each would have the broker
    queue every later scenario's messages for it too, and the later scenarios would pay."""
    for cid in client_ids:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0
        c.connect("127.0.0.1", broker.port, clean_start=True, properties=props)
        c.loop_start()
        c.disconnect()
        c.loop_stop()


def _tree(pid: int) -> list[psutil.Process]:
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _services(broker: Mosquitto, db: InfluxDB1) -> list[psutil.Process]:
    """Mosquitto's and InfluxDB's processes: on this machine they share the cores with the
    consumer, so their CPU per message bounds what more workers can reach."""
    return [p for s in (broker, db) if s.proc is not None for p in _tree(s.proc.pid)]


def _cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def _peak_rss_mb(p: psutil.Process) -> float:
    """Peak resident memory of a live process (Linux ``VmHWM``; current RSS elsewhere)."""
    with contextlib.suppress(OSError), open(f"/proc/{p.pid}/status") as f:
        for row in f:
            if row.startswith("VmHWM:"):
                return int(row.split()[1]) / 1024
    return float(p.memory_info().rss / 2**20)


# ------------------------------------------------------------------ 1. broker ceiling
def ceiling(broker: Mosquitto, msgs: list[tuple[str, bytes]]) -> dict[str, Any]:
    """Mosquitto's own C subscriber, no database: the most any consumer can drain here."""
    sub = find_binary("mosquitto_sub")
    cid = f"ceiling-{time.monotonic_ns()}"
    args = [sub, "-p", str(broker.port), "-q", "1", "-c", "-i", cid, "-t", FILTER, "-V", "mqttv5",
            "-x", "3600"]
    subprocess.run([*args, "-E"], check=True, timeout=30)  # the session, subscribed, then away
    publish_all(broker, msgs)
    t0 = time.perf_counter()
    proc = subprocess.Popen([*args, "-C", str(len(msgs)), "-W", "300"], stdout=subprocess.PIPE)
    rss = [0.0]

    def watch() -> None:  # ru_maxrss would report the bench's own memory, from before the exec
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(proc.pid)
            while proc.returncode is None:
                rss[0] = max(rss[0], _peak_rss_mb(p))
                time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()
    got = 0
    assert proc.stdout is not None
    for _ in proc.stdout:
        got += 1
    _, _, ru = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    forget_sessions(broker, [cid])
    return {"msgs_per_s": round(len(msgs) / elapsed, 1), "cpu_us_per_msg": round(1e6 * (ru.ru_utime + ru.ru_stime)
            / len(msgs), 1), "rss_peak_mb": round(rss[0], 1), "lost": len(msgs) - got}


# ------------------------------------------------------------------ 2. bare forwarder (the baseline)
def _fwd_cmd(broker: Mosquitto, db: InfluxDB1, database: str, cid: str, client: str, ack: str) -> list[str]:
    return [sys.executable, "-m", "fallwatch.app.bench.forwarder", "--mqtt-port", str(broker.port), "--influx", db.url,
            "--db", database, "--client-id", cid, "--client", client, "--ack", ack]


def forwarder(broker: Mosquitto, db: InfluxDB1, msgs: list[tuple[str, bytes]], client: str = "paho",
              ack: str = "receipt") -> dict[str, Any]:
    """A drain of ``msgs`` through :mod:`fallwatch.app.bench.forwarder` (``client``/``ack`` as there)."""
    database = f"fwd_{time.monotonic_ns()}"
    requests.post(f"{db.url}/query", params={"q": f"CREATE DATABASE {database}"}, timeout=10).raise_for_status()
    cid = f"fwd-{time.monotonic_ns()}"
    cmd = _fwd_cmd(broker, db, database, cid, client, ack)
    subprocess.run([*cmd, "--subscribe-only"], check=True, timeout=60)
    publish_all(broker, msgs)
    out = subprocess.run([*cmd, "--n", str(len(msgs))], check=True, timeout=600, stdout=subprocess.PIPE, text=True)
    forget_sessions(broker, [cid])
    r = json.loads(out.stdout.strip().splitlines()[-1])
    elapsed = r["last_write"] - r["first_rx"]
    return {"msgs_per_s": round(len(msgs) / elapsed, 1), "cpu_us_per_msg": round(1e6 * r["cpu_s"] / len(msgs), 1),
            "rss_peak_mb": round(r["maxrss_mb"], 1), "lost": len(msgs) - _count(db, database)}


def forwarder_paced(broker: Mosquitto, db: InfluxDB1, rate: float, paced_s: float, seq0: int, hubs: int,
                    client: str = "paho", ack: str = "receipt") -> dict[str, Any]:
    """The forwarder's CPU per message at a paced rate (as :func:`paced` measures the gateway's)."""
    database = f"fwdp_{time.monotonic_ns()}"
    requests.post(f"{db.url}/query", params={"q": f"CREATE DATABASE {database}"}, timeout=10).raise_for_status()
    cid = f"fwdp-{time.monotonic_ns()}"
    cmd = [*_fwd_cmd(broker, db, database, cid, client, ack), "--n", str(int(rate * paced_s))]
    holder: list[subprocess.Popen[str]] = []

    def start_fwd() -> None:
        # its session first: what is published before it has subscribed waits for it
        subprocess.run([*cmd, "--subscribe-only"], check=True, timeout=60)
        holder.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))

    r = paced(broker, rate, paced_s, seq0, hubs, start_fwd, lambda: _tree(holder[0].pid),
              lambda: _count(db, database), None)
    try:
        holder[0].wait(120)
    except subprocess.TimeoutExpired:
        holder[0].kill()
        raise
    forget_sessions(broker, [cid])
    r["lost"] = int(rate * paced_s) - _count(db, database)
    return r


#: the MQTT clients compared on the same messages (issue 16, item 4): (client, ack), the first
#: being the baseline forwarder above; ``durable`` acks as the gateway does, after the write
CLIENT_VARIANTS = (("paho", "receipt"), ("paho", "durable"), ("paho-tuned", "durable"), ("gmqtt", "receipt"),
                   ("gmqtt", "durable"), ("gmqtt-batched", "durable"))


def have_gmqtt() -> bool:
    return importlib.util.find_spec("gmqtt") is not None


# ------------------------------------------------------------------ 3. the gateway (processes)
class FsyncProbe:
    """The disk's own fsync latency beside a stage: 4 KiB written and fsynced every 200 ms to a
    file in ``work`` (the state DB's disk). A fall alert is durable only after the state DB's
    fsync, so an alert can never be faster than the disk's slowest fsync in its window: this
    says whether a slow alert met a slow disk. Its own cost: 5 small fsyncs a second beside the
    gateway's 20-200, and its times include re-taking this process's GIL after each fsync (an
    upper bound on the disk's)."""

    def __init__(self, work: Path) -> None:
        self.path = work / f"fsync-probe-{time.monotonic_ns()}"
        self.ms: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fsync-probe", daemon=True)

    def _run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            block = b"\0" * 4096
            while not self._stop.wait(0.2):
                os.write(fd, block)
                t = time.perf_counter()
                os.fsync(fd)
                self.ms.append(1000 * (time.perf_counter() - t))
        finally:
            os.close(fd)
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> FsyncProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def result(self) -> dict[str, Any]:
        ms = list(self.ms)
        return {"disk_fsync_p99_ms": round(_pct(ms, 0.99), 2) if ms else None,
                "disk_fsync_max_ms": round(max(ms), 2) if ms else None,
                "disk_fsyncs_over_50ms": sum(x > 50 for x in ms),
                # an fsync still running 10 s after the stage: the disk hung (not in the figures above)
                "disk_fsync_stuck": self._thread.is_alive()}


def durable_split(metrics_text: str, limit_s: float = 0.05) -> dict[str, Any]:
    """From the gateway's own ``/metrics`` (summed over workers): how many fall alerts took more
    than ``limit_s`` from receipt to durable (``fallwatch_gateway_ingest_latency_seconds``,
    path ``alert``; bucket bounds, so exact at 50 ms). An end-to-end alert slower than that
    which is not among them lost its time outside the gateway's recording (broker, channel)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = within = 0.0
    bound = False
    for fam in text_string_to_metric_families(metrics_text):
        if fam.name != "fallwatch_gateway_ingest_latency_seconds":
            continue
        for sample in fam.samples:
            if sample.name.endswith("_bucket") and sample.labels.get("path") == "alert":
                le = sample.labels.get("le")
                if le == "+Inf":
                    total += sample.value
                elif le is not None and abs(float(le) - limit_s) < 1e-9:
                    within += sample.value
                    bound = True
    if total and not bound:
        raise ValueError(f"the gateway's alert histogram has no bucket bound at {limit_s} s")
    return {"alerts_durable_over_50ms": int(total - within)}


def hook_times(path: Path) -> dict[str, float]:
    """Alert id → when its ``raised`` notification reached :mod:`fallwatch.app.bench.hook`."""
    out: dict[str, float] = {}
    with contextlib.suppress(FileNotFoundError):
        for row in path.read_text().splitlines():
            alert_id, _, at = row.rpartition(" ")
            out.setdefault(alert_id, float(at))
    return out


class GatewayRun:
    """``fallwatch gateway run --workers N`` as its own process tree, with a private
    database, state DB and spool, and staff notified through a web hook into the bench."""

    def __init__(self, broker: Mosquitto, db: InfluxDB1, workers: int, work: Path, hook_url: str) -> None:
        self.broker, self.db, self.workers = broker, db, workers
        tag = f"{workers}_{time.monotonic_ns()}"
        self.gateway_id = f"gw-{tag[-10:]}"
        self.database = f"gw_{tag}"
        self.port = free_port()
        self.cfg = work / f"gw-{tag}.toml"
        self.cfg.write_text(f"""
[mqtt]
url = "{broker.url}"
[influx]
url = "{db.url}"
version = 1
database = "{self.database}"
[gateway]
gateway_id = "{self.gateway_id}"
state_db = "{work / f"state-{tag}.sqlite"}"
spool_dir = "{work / f"spool-{tag}"}"
http_port = {self.port}
[[gateway.channels]]
type = "webhook"
url = "{hook_url}"
secret_env = "FALLWATCH_BENCH_HOOK_SECRET"
""")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", FALLWATCH_BENCH_HOOK_SECRET="bench")
        self.proc = subprocess.Popen([sys.executable, "-m", "fallwatch.cli", "gateway", "run", "--config",
                                      str(self.cfg), "--workers", str(self.workers)], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 90
        if not wait_ready:
            return
        while not self.get("/readyz").get("ready"):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"gateway --workers {self.workers} did not become ready")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def close(self) -> None:
        """Stopped for good: its sessions (both links of every worker) are ended too."""
        self.stop()
        ids = [self.gateway_id if i == 0 else f"{self.gateway_id}-w{i}" for i in range(self.workers)]
        forget_sessions(self.broker, [x for i in ids for x in (i, f"{i}-alerts")])

    def get(self, path: str) -> dict[str, Any]:
        try:
            return dict(requests.get(f"http://127.0.0.1:{self.port}{path}", timeout=5).json())
        except (requests.RequestException, ValueError):
            return {}

    def metrics_text(self) -> str:
        """The gateway's ``/metrics``; "" if it does not answer (the split is then reported as 0 of 0)."""
        try:
            r = requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5)
            r.raise_for_status()
            return r.text
        except requests.RequestException:
            return ""

    def procs(self) -> list[psutil.Process]:
        return _tree(self.proc.pid) if self.proc is not None else []

    def rss(self) -> dict[str, float]:
        """Peak RSS of each worker process (and of the pool process with more than one)."""
        procs = self.procs()
        out = {"rss_peak_mb": round(max(_peak_rss_mb(p) for p in (procs[1:] or procs)), 1)}
        if len(procs) > 1:
            out["pool_rss_peak_mb"] = round(_peak_rss_mb(procs[0]), 1)
        return out

    def drain(self, broker: Mosquitto, msgs: list[tuple[str, bytes]]) -> dict[str, Any]:
        """Sessions made, gateway stopped, the set queued, gateway resumed: msgs/s from the
        last ``/stats`` poll (20×/s) that saw nothing received to the first that saw all stored
        (a poll's delay counts against the gateway; the pool's figures are up to 0.25 s old at
        both ends)."""
        self.start()
        self.stop()
        publish_all(broker, msgs)
        services = _services(broker, self.db)
        self.start(wait_ready=False)
        n, t0, cpu0, svc0 = len(msgs), None, None, _cpu_s(services)
        deadline = time.monotonic() + max(120.0, n / 200)
        while time.monotonic() < deadline:
            procs, now, wall = self.procs(), time.perf_counter(), time.time()
            cpu, st = _cpu_s(procs), self.get("/stats")
            if st and st.get("received", 0) == 0:
                t0, cpu0, svc0 = now, cpu, _cpu_s(services)
            elif st and cpu0 is None:
                cpu0 = cpu  # no poll fell before the first message: CPU from the first answer (a little short)
            if st and st.get("stored", 0) + st.get("duplicates", 0) >= n:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"gateway --workers {self.workers} did not store the set: {st}")
        if t0 is None:
            # the endpoint answered only once the drain had begun (a loaded machine): time it from
            # the gateway's own clock of its first receipt instead
            first_ms = st.get("first_received_ms")
            if first_ms is None:
                raise RuntimeError("the gateway reports no first receipt")
            t0 = now - (wall - first_ms / 1000)
        elapsed = now - t0
        cpu0 = cpu if cpu0 is None else cpu0
        svc_us = 1e6 * (_cpu_s(services) - svc0) / n
        out = {"msgs_per_s": round(n / max(elapsed, 1e-9), 1), "cpu_us_per_msg": round(1e6 * (cpu - cpu0) / n, 1),
               "services_cpu_us_per_msg": round(svc_us, 1), **self.rss(), "lost": n - _count(self.db, self.database)}
        self.close()
        return out


def paced(broker: Mosquitto, rate: float, duration_s: float, seq0: int, hubs: int, start: Any, procs: Any,
          stored: Any, hook: Path | None) -> dict[str, Any]:
    """``rate`` msg/s of telemetry for ``duration_s`` (and 5 fall alerts a second when the
    ``hook`` file is given) into a running consumer: CPU µs per message, alert publish →
    staff web hook."""
    msgs = message_set(int(rate * duration_s), hubs, seq0)
    pub = Publisher("127.0.0.1", broker.port, f"bench-paced-{time.monotonic_ns()}")
    # alerts from their own client in their own process (fallwatch.app.bench.alertpub), as a
    # hub's outbox sends them first: in the telemetry client's queue they would wait behind
    # whatever telemetry the broker has not yet taken, and in this process behind its GIL
    alert_proc: subprocess.Popen[str] | None = None
    sent_file = Path(tempfile.mkstemp(prefix="fw-bench-alerts-", suffix=".txt")[1])
    try:
        start()
        p = procs()
        if hook is not None:
            alert_proc = subprocess.Popen([sys.executable, "-m", "fallwatch.app.bench.alertpub", str(broker.port),
                                           str(sent_file), str(seq0), str(hubs), "5"],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert alert_proc.stdout is not None
            alert_proc.stdout.readline()  # "ready": connected
        cpu0, t0 = _cpu_s(p), time.perf_counter()
        sent = 0
        while sent < len(msgs):
            due = min(len(msgs), int((time.perf_counter() - t0) * rate) + 1)
            for topic, payload in msgs[sent:due]:
                pub.publish(topic, payload)
            sent = due
            time.sleep(0.002)
        pub.wait(60)
        if alert_proc is not None:
            alert_proc.communicate(timeout=90)  # closes its stdin: it stops, and waits for its acks
        sent_at = {}
        for row in sent_file.read_text().splitlines():
            alert_id, _, at = row.rpartition(" ")
            sent_at[alert_id] = float(at)
        n_alerts = len(sent_at)
        deadline = time.monotonic() + 60
        while stored() < len(msgs) + n_alerts and time.monotonic() < deadline:
            time.sleep(0.05)
        cpu = _cpu_s(p)
    finally:
        pub.close()
        if alert_proc is not None and alert_proc.poll() is None:
            alert_proc.kill()
        sent_file.unlink(missing_ok=True)
    out: dict[str, Any] = {"cpu_us_per_msg": round(1e6 * (cpu - cpu0) / len(msgs), 1)}
    if hook is not None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not set(sent_at) <= set(hook_times(hook)):
            time.sleep(0.05)
        told = hook_times(hook)
        lat = [1000 * (told[a] - t) for a, t in sent_at.items() if a in told]
        out.update({"_alert_latency_ms": lat, "alert_p50_ms": round(_pct(lat, 0.5), 1),
                    "alert_p99_ms": round(_pct(lat, 0.99), 1), "alerts_lost": len(sent_at) - len(lat)})
    return out


# ------------------------------------------------------------------ driver
def run(quick: bool = False, progress: bool = True) -> dict[str, Any]:
    n, hubs = (5_000, 100) if quick else (50_000, 1_000)
    paced_s = 4.0 if quick else 10.0
    cores = default_workers()
    configs = [1] if cores == 1 else [1, cores]
    steps = ["ceiling", "forwarder", "mqtt clients", *(f"gateway x{w}" for w in configs), "store down"]
    bar = tqdm(steps, desc="gateway bench", disable=not progress, file=sys.stderr)
    out: dict[str, Any] = {"messages": n, "hubs": hubs, "cores": cores}
    seq0 = n
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fw-bench-gw-")))
        hook_port, hook_file = free_port(), work / "hook.txt"
        hook = subprocess.Popen([sys.executable, "-m", "fallwatch.app.bench.hook", str(hook_port), str(hook_file)])
        stack.callback(hook.wait, 10)
        stack.callback(hook.terminate)
        hook_url = f"http://127.0.0.1:{hook_port}/hook"
        broker = stack.enter_context(Mosquitto())
        db = stack.enter_context(InfluxDB1())
        msgs = message_set(n, hubs)
        out["payload_bytes"] = round(statistics.mean(len(p) for _, p in msgs))
        lost = 0

        bar.set_postfix_str("ceiling")
        for k, v in ceiling(broker, msgs).items():
            out[f"ceiling_{k}"] = v
        lost += out["ceiling_lost"]
        bar.update()

        bar.set_postfix_str("forwarder")
        for k, v in forwarder(broker, db, msgs).items():
            out[f"forwarder_{k}"] = v
        lost += out["forwarder_lost"]
        for rate in (200, 2000):  # the forwarder's CPU per message at the same paced rates
            r = forwarder_paced(broker, db, rate, paced_s, seq0, hubs)
            out[f"forwarder_{rate}_cpu_us_per_msg"] = r["cpu_us_per_msg"]
            lost += r["lost"]
            seq0 += int(rate * paced_s)
        bar.update()

        # the MQTT client alone (issue 16, item 4): paho and gmqtt, acking on receipt and after
        # the write, on the same messages; gmqtt is an optional extra (pip install gmqtt)
        bar.set_postfix_str("mqtt clients")
        variants = [v for v in CLIENT_VARIANTS[1:] if not v[0].startswith("gmqtt") or have_gmqtt()]
        out["mqtt_clients_compared"] = ["paho_receipt", *(f"{c.replace('-', '_')}_{a}" for c, a in variants)]
        for client, ack in variants:
            tag = f"fwd_{client.replace('-', '_')}_{ack}"
            for k, v in forwarder(broker, db, msgs, client, ack).items():
                out[f"{tag}_{k}"] = v
            lost += out[f"{tag}_lost"]
            r = forwarder_paced(broker, db, 200, paced_s, seq0, hubs, client, ack)
            out[f"{tag}_200_cpu_us_per_msg"] = r["cpu_us_per_msg"]
            lost += r["lost"]
            seq0 += int(200 * paced_s)
        for client, ack in variants:
            tag = f"fwd_{client.replace('-', '_')}_{ack}"
            out[f"{tag}_vs_paho_receipt"] = round(out[f"{tag}_msgs_per_s"] / out["forwarder_msgs_per_s"], 3)
        bar.update()

        for w in configs:
            name = f"gateway_x{w}"
            bar.set_postfix_str(f"gateway x{w}")
            g = GatewayRun(broker, db, w, work, hook_url)
            for k, v in g.drain(broker, msgs).items():
                out[f"{name}_{k}"] = v
            lost += out[f"{name}_lost"]
            for rate in (200, 2000):
                g = GatewayRun(broker, db, w, work, hook_url)
                try:
                    with FsyncProbe(work) as probe:
                        r = paced(broker, rate, paced_s, seq0, hubs, g.start, g.procs,
                                  lambda g=g: int(g.get("/stats").get("stored", 0)), hook_file)
                    r.update(g.rss())
                    r.update(probe.result())
                    r.update(durable_split(g.metrics_text()))
                    r["alerts_over_50ms"] = sum(x > 50 for x in r["_alert_latency_ms"])
                    r["lost"] = int(rate * paced_s) - _count(db, g.database)
                finally:
                    g.close()
                for k, v in r.items():
                    key = f"_{name}_{rate}_{k[1:]}" if k.startswith("_") else f"{name}_{rate}_{k}"
                    out[key] = v
                lost += r["lost"] + r["alerts_lost"]
                seq0 += int(rate * paced_s)
            # the same 200 msg/s without the 5 alerts a second: the runs above charge each alert's
            # transaction, series write and web hook to the telemetry messages, so this is the
            # telemetry's own CPU per message (what the ≤ 300 µs aim is about)
            g = GatewayRun(broker, db, w, work, hook_url)
            try:
                r = paced(broker, 200, paced_s, seq0, hubs, g.start, g.procs,
                          lambda g=g: int(g.get("/stats").get("stored", 0)), None)
                r["lost"] = int(200 * paced_s) - _count(db, g.database)
            finally:
                g.close()
            out[f"{name}_200_telemetry_only_cpu_us_per_msg"] = r["cpu_us_per_msg"]
            out[f"{name}_200_alert_charge_cpu_us_per_msg"] = round(
                out[f"{name}_200_cpu_us_per_msg"] - r["cpu_us_per_msg"], 1)
            lost += r["lost"]
            seq0 += int(200 * paced_s)
            bar.update()

        fwd = out["forwarder_msgs_per_s"]
        out["x1_vs_forwarder"] = round(out["gateway_x1_msgs_per_s"] / fwd, 3)
        # the same against the fastest forwarder that acks only what it stored (the gateway's
        # guarantee): the stock-paho baseline above pays paho's per-packet cost the gateway avoids
        durable = {k[: -len("_msgs_per_s")]: v for k, v in out.items()
                   if k.startswith("fwd_") and k.endswith("_durable_msgs_per_s")}
        if durable:
            best = max(durable, key=lambda k: durable[k])
            out["fastest_durable_forwarder"] = best
            out["x1_vs_fastest_durable_forwarder"] = round(out["gateway_x1_msgs_per_s"] / durable[best], 3)
        if len(configs) > 1:
            out[f"x{cores}_vs_x1"] = round(out[f"gateway_x{cores}_msgs_per_s"] / out["gateway_x1_msgs_per_s"], 3)
            out[f"x{cores}_vs_forwarder"] = round(out[f"gateway_x{cores}_msgs_per_s"] / fwd, 3)
            # what the cores allow: N workers, Mosquitto and InfluxDB all on these `cores` cores,
            # so N workers can reach at most cores / (CPU per message of all of them), and their
            # ratio to one process is bounded by that, whatever the gateway does
            per_msg = out[f"gateway_x{cores}_cpu_us_per_msg"] + out[f"gateway_x{cores}_services_cpu_us_per_msg"]
            if per_msg > 0:
                bound = cores * 1e6 / per_msg
                out[f"x{cores}_core_bound_msgs_per_s"] = round(bound, 1)
                out[f"x{cores}_vs_x1_core_bound"] = round(min(cores, bound / out["gateway_x1_msgs_per_s"]), 3)

        bar.set_postfix_str("store down")
        with InfluxDB1() as db_down:  # issue 11: alerts while the series store is down (its own InfluxDB)
            duration = 6.0 if quick else 12.0
            down = latency(broker, db_down, 1000.0, duration, work, progress, stop_store_after_s=duration / 2)
        out.update(down)
        lost += out["alert_store_down_lost"]
        out["lost"] = lost
        bar.update()
    bar.close()
    return out


def _put_median(out: dict[str, Any], key: str, values: list[float]) -> None:
    out[key] = round(statistics.median(values), 1)
    if len(values) > 1:
        out[f"{key}_min"], out[f"{key}_max"] = round(min(values), 1), round(max(values), 1)


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
