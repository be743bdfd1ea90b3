"""Grafana dashboards as code: every panel's InfluxQL lives here, once.

Queries are InfluxQL because it is the one language InfluxDB 1.x, 2.x (with DBRP
mapping) and 3.x all answer (Flux is absent from 3.x, SQL from 1.x/2.x). The generated
JSON in ``dashboards/grafana/`` is what Grafana provisions; ``fallwatch dashboards check``
runs every query below against a real InfluxDB so a schema change that breaks a panel
fails a test instead of showing staff an empty graph.

The storage schema the queries rely on is documented in docs/storage.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DATASOURCE_UID = "fallwatch-influx"


@dataclass(frozen=True)
class Panel:
    title: str
    query: str
    kind: str = "timeseries"  # timeseries | table | stat
    unit: str = ""
    description: str = ""
    thresholds: tuple[tuple[float, str], ...] = ()


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    variables: tuple[tuple[str, str], ...] = field(default=())  # (name, InfluxQL)
    refresh: str = "30s"


SITE_FILTER = "\"site_id\" =~ /^$site$/"

DASHBOARDS: tuple[Dashboard, ...] = (
    Dashboard(
        uid="fallwatch-staff",
        title="fallwatch — care team overview",
        description="Fall alerts, fall-risk trends and devices that need a visit, per site.",
        variables=(("site", 'SHOW TAG VALUES FROM "device_state" WITH KEY = "site_id"'),),
        panels=(
            Panel("Fall alerts (last 24 h)",
                  f"SELECT count(\"confidence\") FROM \"fall_alert\" WHERE \"status\" = 'alert' AND "
                  f"{SITE_FILTER} AND time > now() - 24h",
                  kind="stat", thresholds=((0, "green"), (1, "red"))),
            Panel("Fall alerts",
                  f"SELECT \"confidence\", \"peak_g\", \"lying_s\", \"room\", \"reasons\", \"resident_id\" "
                  f"FROM \"fall_alert\" WHERE {SITE_FILTER} AND $timeFilter GROUP BY \"device_id\", \"status\"",
                  kind="table", description="Every alert with why it fired; cancelled pre-alarms are listed too."),
            Panel("Fall-risk score per hub",
                  f"SELECT last(\"score\") FROM \"risk\" WHERE {SITE_FILTER} AND $timeFilter "
                  f"GROUP BY time(1d), \"device_id\" fill(none)",
                  unit="percentunit", thresholds=((0, "green"), (0.4, "orange"), (0.7, "red")),
                  description="A rising line days ahead of a fall is the cue for a home visit."),
            Panel("Gait speed (daily)",
                  f"SELECT mean(\"feat_gait_speed_m_s\") FROM \"risk\" WHERE {SITE_FILTER} AND $timeFilter "
                  f"GROUP BY time(1d), \"device_id\" fill(none)",
                  unit="velocityms"),
            Panel("Night-time bathroom visits (daily)",
                  f"SELECT mean(\"feat_night_bathroom_visits\") FROM \"risk\" WHERE {SITE_FILTER} AND "
                  f"$timeFilter GROUP BY time(1d), \"device_id\" fill(none)"),
        ),
    ),
    Dashboard(
        uid="fallwatch-devices",
        title="fallwatch — devices and ingest",
        description="Is every hub and sensor alive, charged and delivering? (operations)",
        variables=(("site", 'SHOW TAG VALUES FROM "device_state" WITH KEY = "site_id"'),),
        panels=(
            Panel("Hub state",
                  f"SELECT last(\"boot_id\") AS \"boot\", last(\"fw\") AS \"fw\", last(\"model_version\") AS \"model\" "
                  f"FROM \"device_state\" WHERE {SITE_FILTER} AND $timeFilter GROUP BY \"device_id\", \"state\"",
                  kind="table"),
            Panel("Outbox depth (undelivered messages on the hub)",
                  f"SELECT max(\"outbox_depth\") FROM \"health\" WHERE {SITE_FILTER} AND $timeFilter "
                  f"GROUP BY time($__interval), \"device_id\" fill(none)"),
            Panel("Lowest sensor battery",
                  f"SELECT min(\"min_battery_pct\") FROM \"health\" WHERE {SITE_FILTER} AND $timeFilter "
                  f"GROUP BY time($__interval), \"device_id\" fill(none)",
                  unit="percent", thresholds=((0, "red"), (15, "orange"), (30, "green"))),
            Panel("Sensor signal strength",
                  f"SELECT mean(\"rssi_dbm\") FROM \"sensor_health\" WHERE {SITE_FILTER} AND $timeFilter "
                  f"GROUP BY time($__interval), \"sensor\" fill(none)", unit="dBm"),
            Panel("Telemetry summaries received",
                  f"SELECT count(\"window_s\") FROM \"telemetry\" WHERE {SITE_FILTER} AND $timeFilter "
                  f"GROUP BY time($__interval), \"device_id\" fill(0)",
                  description="A flat line at zero means a hub stopped delivering."),
            Panel("Daily silent test alarm, delay",
                  f"SELECT max(\"delay_ms\") FROM \"test_alarm\" WHERE {SITE_FILTER} AND $timeFilter "
                  f"GROUP BY time(1h), \"device_id\" fill(none)", unit="ms"),
        ),
    ),
)


def _target(query: str) -> dict[str, Any]:
    return {"refId": "A", "datasource": {"type": "influxdb", "uid": DATASOURCE_UID}, "query": query,
            "rawQuery": True, "resultFormat": "table" if "GROUP BY time" not in query else "time_series"}


def to_grafana(d: Dashboard) -> dict[str, Any]:
    """The dashboard as Grafana JSON (schema 39): stable uid, ``id: null``, datasource by uid."""
    panels = []
    for i, p in enumerate(d.panels):
        width = 8 if p.kind == "stat" else 12
        panel: dict[str, Any] = {
            "id": i + 1,
            "type": p.kind,
            "title": p.title,
            "description": p.description,
            "datasource": {"type": "influxdb", "uid": DATASOURCE_UID},
            "gridPos": {"x": (i % 2) * 12, "y": (i // 2) * 8, "w": width, "h": 8},
            "targets": [_target(p.query)],
            "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
        }
        if p.thresholds:
            panel["fieldConfig"]["defaults"]["thresholds"] = {
                "mode": "absolute",
                "steps": [{"value": None if j == 0 else v, "color": c} for j, (v, c) in enumerate(p.thresholds)],
            }
        panels.append(panel)
    variables = [{
        "name": name, "type": "query", "datasource": {"type": "influxdb", "uid": DATASOURCE_UID},
        "query": q, "refresh": 1, "includeAll": True, "multi": True, "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
    } for name, q in d.variables]
    return {
        "id": None, "uid": d.uid, "title": d.title, "description": d.description, "tags": ["fallwatch"],
        "schemaVersion": 39, "version": 1, "editable": False, "refresh": d.refresh,
        "time": {"from": "now-7d", "to": "now"}, "timezone": "browser",
        "templating": {"list": variables}, "panels": panels,
    }


def concrete_query(query: str, *, window: str = "30d", interval: str = "1m") -> str:
    """A panel query with Grafana's macros filled in, so InfluxDB itself can run it."""
    return (query.replace("$timeFilter", f"time > now() - {window}")
            .replace("$__interval", interval).replace("/^$site$/", "/.*/"))
