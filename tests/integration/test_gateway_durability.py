"""Nothing lost, nothing twice: InfluxDB outage, gateway SIGKILL, two replicas on a shared subscription."""

from __future__ import annotations

import os
import signal
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
from fallwatch.testing.gateways import GatewayProcess, write_gateway_toml
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
    mosquitto: Mosquitto, influxdb_factory: Any, tmp_path: Path, unique_name: str, start_gateway: Any
) -> None:
    db: InfluxDB1 = influxdb_factory()
    gw, pub = start_gateway(make_cfg(mosquitto, db, tmp_path, unique_name))
    n, dev = 3000, "hub-outage"
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


def test_full_spool_pushes_back_to_the_broker_and_loses_nothing(
    mosquitto: Mosquitto, influxdb_factory: Any, tmp_path: Path, unique_name: str, caplog: Any,
    start_gateway: Any,
) -> None:
    """InfluxDB down long enough to fill a tiny spool: the gateway stops taking messages
    (they wait, unacknowledged, at the broker), says so loudly, and stores everything later."""
    db: InfluxDB1 = influxdb_factory()
    gw, pub = start_gateway(make_cfg(mosquitto, db, tmp_path, unique_name, spool_max_mb=0.02))
    n, dev = 2000, "hub-full"
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


def test_gateway_sigkill_mid_stream_loses_nothing(
    mosquitto: Mosquitto, influxdb: InfluxDB1, tmp_path: Path, unique_name: str
) -> None:
    port, database = free_port(), unique_name.replace("-", "_")
    cfg_path = write_gateway_toml(tmp_path / "gw.toml", mqtt_url=mosquitto.url, gateway_id="gw-kill", http_port=port,
                                  influx_url=influxdb.url, database=database)
    gwp = GatewayProcess(cfg_path, port)
    pub = t.Publisher("127.0.0.1", mosquitto.port, f"pub-{unique_name}")
    n, dev = 4000, "hub-kill"
    try:
        assert gwp.wait_ready(), gwp.log()
        th = stream(pub, "site-k", dev, n, per_s=3000)
        assert wait_until(lambda: (gwp.get("/stats") or {}).get("stored", 0) > 800, 60)
        gwp.kill()  # no goodbye: in-flight batches, unacked messages, open transactions
        assert wait_until(
            lambda: (t.retained(mosquitto.port, "fallwatch/v1/_gw/gw-kill/state") or {}).get("state") == "lost", 30
        )  # the gateway's last will
        th.join(60)
        assert pub.wait(30)  # the broker holds the rest for the gateway's persistent session
        gwp.restart()
        assert wait_until(lambda: len(seqs_in_influx(influxdb, database, dev)) >= n, 90), gwp.log()
        time.sleep(0.5)
        seqs = seqs_in_influx(influxdb, database, dev)
        assert sorted(seqs) == list(range(n))
        st = gwp.get("/stats") or {}
        assert st.get("rejected") == 0
    finally:
        pub.close()
        gwp.terminate(30)


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

    port, database = free_port(), unique_name.replace("-", "_")
    cfg_path = write_gateway_toml(tmp_path / "gw.toml", mqtt_url=mosquitto.url, gateway_id="gw-pool", http_port=port,
                                  influx_url=influxdb.url, database=database)
    gwp = GatewayProcess(cfg_path, port, "--workers", "2")
    url = gwp.url
    pub = t.Publisher("127.0.0.1", mosquitto.port, f"pub-{unique_name}")
    n, devs = 3000, ("hub-pa", "hub-pb")
    pids: list[int] = []
    try:
        assert gwp.wait_ready(), gwp.log()
        workers = (gwp.get("/stats") or {})["workers"]
        pids = [w["pid"] for w in workers]
        assert len(set(pids)) == 2 and all(psutil.pid_exists(p) for p in pids)
        threads = [stream(pub, "site-p", d, n, per_s=1500) for d in devs]
        assert wait_until(lambda: all(w["stored"] > 200 for w in (gwp.get("/stats") or {})["workers"]), 30), (
            gwp.get("/stats"))  # both take a share
        os.kill(pids[1], signal.SIGKILL)
        assert wait_until(lambda: (gwp.get("/stats") or {})["workers"][1]["restarts"] == 1, 20)
        for th in threads:
            th.join(60)
        assert pub.wait(30)
        for d in devs:
            assert wait_until(lambda d=d: len(seqs_in_influx(influxdb, database, d)) >= n, 60), (
                gwp.get("/stats"), gwp.log())
        time.sleep(0.5)
        for d in devs:  # each message once: none lost, none written as a second point
            assert sorted(seqs_in_influx(influxdb, database, d)) == list(range(n))
        st = gwp.get("/stats") or {}
        assert st["rejected"] == 0 and st["workers"][1]["pid"] != pids[1]
        assert wait_until(lambda: (gwp.get("/readyz") or {}).get("ready"), 20)
        health = gwp.get("/healthz") or {}
        assert health.get("status") == "ok", health
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        assert 'worker="0"' in metrics and 'worker="1"' in metrics
        pids = [w["pid"] for w in st["workers"]]
    finally:
        pub.close()
        assert gwp.terminate(45) == 0
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
