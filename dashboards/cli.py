"""``fallwatch dashboards build|check|push``: Grafana dashboards as code.

``build`` writes the dashboard JSON and Grafana provisioning files from
:mod:`fallwatch.dashboards.spec`; ``check`` runs every panel's InfluxQL against a real InfluxDB
(so a schema change that would blank a panel is caught); ``push`` uploads the
dashboards through Grafana's HTTP API with grafana-client.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import requests

from fallwatch.dashboards.spec import DASHBOARDS, DATASOURCE_UID, concrete_query, to_grafana

HERE = Path(__file__).resolve().parent


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dashboards", help="Grafana dashboards as code (build / check / push)")
    cmds = p.add_subparsers(dest="dash_cmd", required=True)
    b = cmds.add_parser("build", help="write dashboards/grafana/*.json and provisioning files")
    b.add_argument("--out", type=Path, default=HERE)
    b.set_defaults(func=_build)
    c = cmds.add_parser("check", help="run every panel query against an InfluxDB")
    c.add_argument("--influx-url", required=True)
    c.add_argument("--database", default="fallwatch")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_check)
    u = cmds.add_parser("push", help="upload the dashboards to Grafana (token from FALLWATCH_GRAFANA_TOKEN)")
    u.add_argument("--grafana-url", required=True)
    u.set_defaults(func=_push)


def build(out: Path) -> list[Path]:
    written = []
    (out / "grafana").mkdir(parents=True, exist_ok=True)
    for d in DASHBOARDS:
        path = out / "grafana" / f"{d.uid}.json"
        path.write_text(json.dumps(to_grafana(d), indent=2) + "\n")
        written.append(path)
    prov = out / "provisioning"
    (prov / "datasources").mkdir(parents=True, exist_ok=True)
    (prov / "dashboards").mkdir(parents=True, exist_ok=True)
    (prov / "datasources" / "fallwatch.yaml").write_text(f"""apiVersion: 1
datasources:
  - name: fallwatch InfluxDB
    uid: {DATASOURCE_UID}
    type: influxdb
    access: proxy
    url: ${{FALLWATCH_INFLUX_URL}}
    jsonData:
      dbName: fallwatch
      httpMode: POST
      # InfluxDB 2.x/3.x: InfluxQL through DBRP mapping, token in a header
      httpHeaderName1: Authorization
    secureJsonData:
      httpHeaderValue1: Token ${{FALLWATCH_INFLUX_TOKEN}}
""")
    (prov / "dashboards" / "fallwatch.yaml").write_text("""apiVersion: 1
providers:
  - name: fallwatch
    type: file
    disableDeletion: true
    allowUiUpdates: false
    options:
      path: /etc/fallwatch/dashboards/grafana
""")
    written += [prov / "datasources" / "fallwatch.yaml", prov / "dashboards" / "fallwatch.yaml"]
    return written


def check(influx_url: str, database: str) -> list[dict[str, Any]]:
    """Run each panel's query; report errors and whether it returned data."""
    results = []
    for d in DASHBOARDS:
        queries = [(f"variable {n}", q) for n, q in d.variables] + [(p.title, p.query) for p in d.panels]
        for title, q in queries:
            r = requests.post(f"{influx_url}/query", params={"db": database, "q": concrete_query(q)}, timeout=10)
            body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
            res = (body.get("results") or [{}])[0]
            error = res.get("error") or body.get("error") or (None if r.ok else r.text[:200])
            rows = sum(len(s.get("values", [])) for s in res.get("series", []))
            results.append({"dashboard": d.uid, "panel": title, "error": error, "rows": rows})
    return results


def _build(args: argparse.Namespace) -> int:
    for p in build(args.out):
        print(p)
    return 0


def _check(args: argparse.Namespace) -> int:
    results = check(args.influx_url, args.database)
    for r in results:
        status = f"ERROR {r['error']}" if r["error"] else f"{r['rows']} rows"
        print(f"{r['dashboard']:18s} {r['panel'][:50]:50s} {status}", file=sys.stderr)
    if args.json:
        print(json.dumps(results))
    return 1 if any(r["error"] for r in results) else 0


def _push(args: argparse.Namespace) -> int:
    from grafana_client.api import GrafanaApi

    token = os.environ.get("FALLWATCH_GRAFANA_TOKEN")
    if not token:
        print("set FALLWATCH_GRAFANA_TOKEN to a Grafana service-account token", file=sys.stderr)
        return 2
    api = GrafanaApi.from_url(args.grafana_url, credential=token)
    for d in DASHBOARDS:
        api.dashboard.update_dashboard({"dashboard": to_grafana(d), "overwrite": True,
                                        "message": "fallwatch dashboards as code"})
        print(f"pushed {d.uid}", file=sys.stderr)
    return 0
