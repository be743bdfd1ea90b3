"""The committed API description (docs/openapi.json) is the one the gateway serves."""

from __future__ import annotations

import json
from pathlib import Path

from fallwatch.gateway.http import openapi_document

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_committed_openapi_matches_the_generated_one() -> None:
    generated = json.dumps(openapi_document(), indent=2, sort_keys=True)
    assert DOC.read_text().strip() == generated, (
        "docs/openapi.json is stale: .venv/bin/python -m fallwatch.gateway.http > docs/openapi.json")


def test_every_route_is_described() -> None:
    paths = openapi_document()["paths"]
    for path in ("/healthz", "/readyz", "/staff", "/alerts", "/alerts/{alert_id}", "/alerts/{alert_id}/ack",
                 "/alerts/{alert_id}/resolve", "/ack/{token}", "/push/subscriptions", "/audit", "/devices"):
        assert path in paths, path
