"""Nothing lost, nothing twice: InfluxDB outage, gateway SIGKILL, two replicas on a shared subscription."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fallwatch.gateway.app import Gateway
from fallwatch.protocol import contract
from fallwatch.testing import publisher as t
from fallwatch.testing.publisher import make_cfg, wait_until
from fallwatch.testing.services import InfluxDB1, Mosquitto, free_port, postgres_database

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BASE_MS = 1_700_000_000_000


def seqs_in_influx(db: InfluxDB1, database: str, device: str) -> list[int]:
    out: list[int] = []
    for s in db.query(f"SELECT seq_f FROM telemetry WHERE device_id = '{device}'", db=database):
        out += [int(r[1]) for r in s["values"]]
    return out


def numbered(site: str, device: str, seq: int) -> tuple[str, bytes]:
    """Telemetry whose fields carry its own seq, at a distinct time, so every message is one point."""
    env = {
        "schema": 1,
        "site_id": site,
        "device_id": device,
        "boot_id": 1,
        "seq": seq,
        "msg_id": contract.make_msg_id(device, seq),
        "ts_ms": BASE_MS + seq * 10,
        "sent_ms": contract.now_ms(),
    }
    msg = contract.Telemetry(
        **env,
        data=contract.TeleData(sensor="wear-r01", window_s=10.0, fields={"seq_f": seq, "acc_mean_g": 1.0}),
    )
    return f"fallwatch/v1/{site}/{device}/tele/wear-r01", contract.encode(msg)


def stream(
    pub: t.Publisher, site: str, device: str, n: int, per_s: float, hook: Callable[[int], None] | None = None
) -> threading.Thread:
    def run() -> None:
        for i in range(n):
            pub.publish(*numbered(site, device, i))
            if hook:
                hook(i)
            if i % 50 == 49:
                time.sleep(50 / per_s)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def test_influxdb_outage_mid_stream_loses_nothing(
    mosquitto: Mosquitto, influxdb_factory: Any, tmp_path: Path, unique_name: str
) -> None:
    db: InfluxDB1 = influxdb_factory()
    gw = Gateway(make_cfg(mosquitto, db, tmp_path, unique_name))
    gw.start()
    pub = t.Publisher("127.0.0.1", mosquitto.port, f"pub-{unique_name}")
    n, dev = 3000, "hub-outage"
    try:
        assert wait_until(lambda: gw.ready()[0])
        events: dict[int, threading.Event] = {1000: threading.Event(), 2000: threading.Event()}
        th = stream(pub, "site-o", dev, n, per_s=2000, hook=lambda i: events[i].set() if i in events else None)
        events[1000].wait(30)
        db.stop()  # InfluxDB goes away mid-stream
        events[2000].wait(30)
        th.join(60)
        assert pub.wait(30)
        assert wait_until(lambda: gw.stats()["stored"] == n, 30), gw.stats()
        assert gw.stats()["spool_depth"] > 0 and gw.stats()["points_spooled"] > 0
        # a fall during the outage still reaches staff at once (state DB + log), its point is spooled
        pub.publish(*t.fall("site-o", dev, n + 1))
        assert pub.wait(10)
        assert wait_until(lambda: any(a["device_id"] == dev for a in gw.alerts()), 10)
        db.start()  # ... and comes back
        assert gw.wait_idle(60), gw.stats()
        seqs = seqs_in_influx(db, gw.cfg.influx.database, dev)
        assert sorted(seqs) == list(range(n)), "points missing or doubled after the outage"
        assert db.query("SELECT count(confidence) FROM fall_alert", db=gw.cfg.influx.database)[0]["values"][0][1] == 1
        st = gw.stats()
        assert st["spool_depth"] == 0 and st["duplicates"] == 0 and st["rejected"] == 0
        assert st["points_written"] == n + 1  # each point written exactly once (directly or from the spool)
    finally:
        pub.close()
        gw.stop()


def test_full_spool_pushes_back_to_the_broker_and_loses_nothing(
    mosquitto: Mosquitto, influxdb_factory: Any, tmp_path: Path, unique_name: str, caplog: Any
) -> None:
    """InfluxDB down long enough to fill a tiny spool: the gateway stops taking messages
    (they wait, unacknowledged, at the broker), says so loudly, and stores everything later."""
    db: InfluxDB1 = influxdb_factory()
    gw = Gateway(make_cfg(mosquitto, db, tmp_path, unique_name, spool_max_mb=0.02))
    gw.start()
    pub = t.Publisher("127.0.0.1", mosquitto.port, f"pub-{unique_name}")
    n, dev = 2000, "hub-full"
    try:
        assert wait_until(lambda: gw.ready()[0])
        db.stop()
        stream(pub, "site-o", dev, n, per_s=4000).join(60)
        assert pub.wait(30)
        assert wait_until(lambda: gw.spool.full, 30), gw.stats()
        assert gw.ready() == (False, "spool full")
        time.sleep(1.0)
        st = gw.stats()
        assert st["stored"] < n and st["in_progress"] > 0  # held back, not dropped
        assert any("SPOOL FULL" in r.getMessage() for r in caplog.records)
        db.start()
        assert wait_until(lambda: gw.stats()["stored"] == n, 60), gw.stats()
        assert gw.wait_idle(60)
        assert sorted(seqs_in_influx(db, gw.cfg.influx.database, dev)) == list(range(n))
        assert gw.ready()[0]
    finally:
        pub.close()
        gw.stop()


def _gateway_proc(cfg_path: Path, log_path: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "fallwatch.cli", "gateway", "run", "--config", str(cfg_path), *extra],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(log_path, "ab"),
    )


def _get(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return dict(json.loads(r.read()))
    except OSError:
        return None


def test_gateway_sigkill_mid_stream_loses_nothing(
    mosquitto: Mosquitto, influxdb: InfluxDB1, tmp_path: Path, unique_name: str
) -> None:
    port = free_port()
    database = unique_name.replace("-", "_")
    cfg_path = tmp_path / "gw.toml"
    cfg_path.write_text(f"""
[mqtt]
url = "{mosquitto.url}"
[influx]
url = "{influxdb.url}"
version = 1
database = "{database}"
[gateway]
gateway_id = "gw-kill"
state_db = "{tmp_path / "state.sqlite"}"
spool_dir = "{tmp_path / "spool"}"
http_port = {port}
""")
    log_path = tmp_path / "gw.log"
    proc = _gateway_proc(cfg_path, log_path)
    pub = t.Publisher("127.0.0.1", mosquitto.port, f"pub-{unique_name}")
    n, dev = 4000, "hub-kill"
    try:
        assert wait_until(lambda: (_get(f"http://127.0.0.1:{port}/readyz") or {}).get("ready"), 30), (
            log_path.read_text()[-2000:]
        )
        th = stream(pub, "site-k", dev, n, per_s=3000)
        assert wait_until(lambda: ((_get(f"http://127.0.0.1:{port}/stats") or {}).get("stored", 0)) > 800, 30)
        proc.send_signal(signal.SIGKILL)  # no goodbye: in-flight batches, unacked messages, open transactions
        proc.wait(10)
        assert wait_until(
            lambda: (t.retained(mosquitto.port, "fallwatch/v1/_gw/gw-kill/state") or {}).get("state") == "lost", 10
        )  # the gateway's last will
        th.join(60)
        assert pub.wait(30)  # the broker holds the rest for the gateway's persistent session
        proc = _gateway_proc(cfg_path, log_path)
        assert wait_until(lambda: len(seqs_in_influx(influxdb, database, dev)) >= n, 60), log_path.read_text()[-2000:]
        time.sleep(0.5)
        seqs = seqs_in_influx(influxdb, database, dev)
        assert sorted(seqs) == list(range(n))
        st = _get(f"http://127.0.0.1:{port}/stats") or {}
        assert st.get("rejected") == 0
    finally:
        pub.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


@pytest.mark.parametrize("state_backend", ["sqlite", "postgresql"])
def test_two_replicas_on_shared_subscription_store_each_message_once(
    mosquitto: Mosquitto, influxdb: InfluxDB1, tmp_path: Path, unique_name: str, state_backend: str
) -> None:
    state_db = str(tmp_path / "shared-state.sqlite")
    if state_backend == "postgresql":
        state_db = postgres_database(unique_name)
    gws = []
    for i in (1, 2):
        cfg = make_cfg(
            mosquitto,
            influxdb,
            tmp_path / f"r{i}",
            unique_name,
            gateway_id=f"gw-{i}-{state_backend}",
            shared_group=f"grp-{state_backend}",
            state_db=state_db,
        )
        gws.append(Gateway(cfg))
    for g in gws:
        g.start()
    pub = t.Publisher("127.0.0.1", mosquitto.port, f"pub-{unique_name}")
    n, dev = 3000, f"hub-shared-{state_backend}"
    try:
        assert wait_until(lambda: all(g.ready()[0] for g in gws))
        stream(pub, "site-s", dev, n, per_s=5000).join(60)
        pub.publish(*t.fall("site-s", dev, n + 1))
        assert pub.wait(30)
        assert wait_until(lambda: sum(g.stats()["stored"] for g in gws) == n + 1, 30)
        assert all(g.wait_idle(20) for g in gws)
        stats = [g.stats() for g in gws]
        assert all(s["received"] > 0 for s in stats), "the broker did not split the load"
        assert sum(s["received"] for s in stats) == n + 1  # each message delivered to one replica
        assert sum(s["duplicates"] for s in stats) == 0
        assert sorted(seqs_in_influx(influxdb, gws[0].cfg.influx.database, dev)) == list(range(n))
        assert len([a for a in gws[0].alerts() if a["device_id"] == dev]) == 1
    finally:
        pub.close()
        for g in gws:
            g.stop()



def test_broker_restart_mid_drain_loses_nothing(
    mosquitto_factory: Any, influxdb: InfluxDB1, tmp_path: Path, unique_name: str
) -> None:
    """Messages queued for the gateway's persistent session survive a broker restart in the middle
    of draining them; unacknowledged ones are re-sent on the new connection, none is acked twice
    or lost (exercises the per-connection packet-id handling of the ack tracker)."""
    broker: Mosquitto = mosquitto_factory()
    cfg = make_cfg(broker, influxdb, tmp_path, unique_name)
    gw = Gateway(cfg)
    gw.start()
    assert wait_until(lambda: gw.ready()[0])
    gw.stop()  # subscriptions stay in the broker session; messages queue while we are away
    n, dev = 8000, "hub-restart"
    pub = t.Publisher("127.0.0.1", broker.port, f"pub-{unique_name}")
    stream(pub, "site-r", dev, n, per_s=20_000).join(120)
    assert pub.wait(60)
    pub.close()
    gw = Gateway(cfg)
    gw.start()
    try:
        assert wait_until(lambda: gw.stats()["stored"] > 500, 30)
        stored_before = gw.stats()["stored"]
        broker.restart()  # SIGTERM: Mosquitto saves its persistence file, then comes back on the same port
        assert wait_until(lambda: gw.stats()["stored"] + gw.stats()["duplicates"] >= n, 60), gw.stats()
        assert gw.wait_idle(30)
        assert sorted(seqs_in_influx(influxdb, cfg.influx.database, dev)) == list(range(n))
        assert gw.stats()["stored"] == n and gw.stats()["rejected"] == 0
        assert stored_before < n, "the restart came too late to be mid-drain"
    finally:
        gw.stop()


def test_workers_pool_stores_each_message_once_through_a_killed_and_restarted_worker(
    mosquitto: Mosquitto, influxdb: InfluxDB1, tmp_path: Path, unique_name: str
) -> None:
    """``gateway run --workers 2``: two processes on one shared subscription behind one
    endpoint; one is SIGKILLed mid-stream, the pool restarts it, and every message is in
    InfluxDB exactly once (its un-acked ones came back to its session); SIGTERM stops all."""
    import psutil

    port = free_port()
    database = unique_name.replace("-", "_")
    cfg_path = tmp_path / "gw.toml"
    cfg_path.write_text(f"""
[mqtt]
url = "{mosquitto.url}"
[influx]
url = "{influxdb.url}"
version = 1
database = "{database}"
[gateway]
gateway_id = "gw-pool"
state_db = "{tmp_path / "state.sqlite"}"
spool_dir = "{tmp_path / "spool"}"
http_port = {port}
""")
    log_path = tmp_path / "gw.log"
    proc = _gateway_proc(cfg_path, log_path, "--workers", "2")
    url = f"http://127.0.0.1:{port}"
    pub = t.Publisher("127.0.0.1", mosquitto.port, f"pub-{unique_name}")
    n, devs = 3000, ("hub-pa", "hub-pb")
    pids: list[int] = []
    try:
        assert wait_until(lambda: (_get(f"{url}/readyz") or {}).get("ready"), 40), log_path.read_text()[-2000:]
        workers = (_get(f"{url}/stats") or {})["workers"]
        pids = [w["pid"] for w in workers]
        assert len(set(pids)) == 2 and all(psutil.pid_exists(p) for p in pids)
        threads = [stream(pub, "site-p", d, n, per_s=1500) for d in devs]
        assert wait_until(lambda: all(w["stored"] > 200 for w in (_get(f"{url}/stats") or {})["workers"]), 30), (
            _get(f"{url}/stats"))  # both take a share
        os.kill(pids[1], signal.SIGKILL)
        assert wait_until(lambda: (_get(f"{url}/stats") or {})["workers"][1]["restarts"] == 1, 20)
        for th in threads:
            th.join(60)
        assert pub.wait(30)
        for d in devs:
            assert wait_until(lambda d=d: len(seqs_in_influx(influxdb, database, d)) >= n, 60), (
                _get(f"{url}/stats"), log_path.read_text()[-2000:])
        time.sleep(0.5)
        for d in devs:  # each message once: none lost, none written as a second point
            assert sorted(seqs_in_influx(influxdb, database, d)) == list(range(n))
        st = _get(f"{url}/stats") or {}
        assert st["rejected"] == 0 and st["workers"][1]["pid"] != pids[1]
        assert wait_until(lambda: (_get(f"{url}/readyz") or {}).get("ready"), 20)
        health = _get(f"{url}/healthz") or {}
        assert health.get("status") == "ok", health
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        assert 'worker="0"' in metrics and 'worker="1"' in metrics
        pids = [w["pid"] for w in st["workers"]]
    finally:
        pub.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(45) == 0
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
