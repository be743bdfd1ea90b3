"""Dashboards as code: the committed JSON is what the spec builds, and it is valid Grafana JSON."""

from __future__ import annotations

import json
from pathlib import Path

from fallwatch.dashboards.cli import build
from fallwatch.dashboards.spec import DASHBOARDS, concrete_query

REPO = Path(__file__).resolve().parents[2]


def test_committed_dashboards_match_the_spec(tmp_path: Path) -> None:
    build(tmp_path)
    for d in DASHBOARDS:
        fresh = json.loads((tmp_path / "grafana" / f"{d.uid}.json").read_text())
        committed = json.loads((REPO / "dashboards" / "grafana" / f"{d.uid}.json").read_text())
        assert fresh == committed, f"run `fallwatch dashboards build`: {d.uid} drifted from dashboards/spec.py"


def test_dashboard_json_follows_provisioning_rules() -> None:
    for d in DASHBOARDS:
        j = json.loads((REPO / "dashboards" / "grafana" / f"{d.uid}.json").read_text())
        assert j["id"] is None and len(j["uid"]) <= 40
        for panel in j["panels"]:
            for t in panel["targets"]:
                assert t["datasource"]["uid"] == "fallwatch-influx"
                q = t["query"]
                assert "now()" in q or "$timeFilter" in q, f"unbounded query in {panel['title']}"
                assert "$" not in concrete_query(q), "a Grafana macro is left unfilled"
