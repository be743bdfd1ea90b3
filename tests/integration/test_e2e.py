"""The whole chain on real parts: simulator → edge agent → Mosquitto → gateway → InfluxDB 1.x."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fallwatch.app.demo import run_demo
from fallwatch.config import load_config
from fallwatch.testing.services import InfluxDB1, Mosquitto

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_simulated_falls_reach_influxdb_exactly_once(mosquitto: Mosquitto, influxdb_factory,
                                                     tmp_path: Path, unique_name: str) -> None:
    db: InfluxDB1 = influxdb_factory()
    cfg = load_config(overrides={"mqtt": {"url": mosquitto.url}, "influx": {"url": db.url, "version": 1},
                                 "gateway": {"gateway_id": unique_name}})
    summary = run_demo(cfg, residents=2, duration_s=90.0, falls=1, seed=11, workdir=tmp_path,
                       progress=False)
    assert summary["falls_injected"] >= 2

    # Read back what is really in InfluxDB, with InfluxQL.
    alerts = db.query("SELECT * FROM fall_alert WHERE status = 'alert'", db="fallwatch")
    rows = alerts[0]["values"] if alerts else []
    cols = alerts[0]["columns"] if alerts else []
    event_ids = [dict(zip(cols, r, strict=True))["event_id"] for r in rows]
    assert len(event_ids) == len(set(event_ids)), "an alert was stored twice"
    assert len(rows) == summary["alerts_stored"] == summary["fall_alerts"]
    assert summary["falls_detected"] == summary["falls_injected"] - summary["falls_cancelled_by_wearer"]
    assert summary["lost"] == 0 and summary["rejected"] == 0

    tele = db.query('SELECT count(*) FROM telemetry GROUP BY "device_id"', db="fallwatch")
    devices_with_tele = {s["tags"]["device_id"] for s in tele}
    assert devices_with_tele == set(summary["devices"]) and len(devices_with_tele) == 2


def test_demo_cli_json_on_embedded_defaults(tmp_path: Path) -> None:
    """The README's demo on embedded parts (no broker, no database configured)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "fallwatch.cli", "demo", "--json", "--workdir", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("residents", "falls_injected", "fall_alerts", "alerts_stored", "telemetry_points",
                "rejected", "lost"):
        assert key in summary
    assert summary["falls_injected"] >= 1
    assert summary["fall_alerts"] >= 1
    assert summary["alerts_stored"] == summary["fall_alerts"]
    assert summary["telemetry_points"] > 0
    assert summary["lost"] == 0


def test_dashboard_queries_run_on_the_data_the_system_writes(mosquitto: Mosquitto, influxdb_factory,
                                                             tmp_path: Path, unique_name: str) -> None:
    """Every Grafana panel's InfluxQL runs on real InfluxDB 1.x over data the chain wrote."""
    from fallwatch.dashboards.cli import check

    db: InfluxDB1 = influxdb_factory()
    cfg = load_config(overrides={"mqtt": {"url": mosquitto.url}, "influx": {"url": db.url, "version": 1},
                                 "gateway": {"gateway_id": unique_name}})
    run_demo(cfg, residents=1, duration_s=60.0, falls=1, seed=3, workdir=tmp_path, progress=False)
    results = check(db.url, "fallwatch")
    errors = [r for r in results if r["error"]]
    assert not errors, errors
    rows = {r["panel"]: r["rows"] for r in results}
    for panel in ("Fall alerts", "Hub state", "Outbox depth (undelivered messages on the hub)",
                  "Telemetry summaries received", "variable site"):
        assert rows[panel] > 0, f"panel {panel!r} shows nothing"
