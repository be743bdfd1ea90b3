"""Schemathesis against the OpenAPI document the running gateway serves.

A real gateway (state store + HTTP, a fall recorded so the alert schemas meet real rows) is
asked what its API is at ``/openapi.json``; Schemathesis then generates requests from that
document and checks that none gets a 5xx and that every answer matches its documented
status codes, content type and schema. Examples are few per operation to keep the run short.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import schemathesis.transport.requests as st_requests
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from fallwatch.config import load_config
from fallwatch.gateway.app import Gateway
from fallwatch.protocol import contract
from fallwatch.testing import publisher as t

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp = Path(tmp_path_factory.mktemp("schemathesis"))
    mp = pytest.MonkeyPatch()
    mp.delenv("FALLWATCH_GATEWAY_API_TOKEN", raising=False)
    # grafana-client pulls in urllib3-future, whose PoolManager.pools is no dict: Schemathesis'
    # count of open connections (only used to resend a request a server dropped) cannot read it
    mp.setattr(st_requests, "_count_opened_connections", lambda session: 0)
    cfg = load_config(overrides={
        "influx": {"url": "", "embedded_path": str(tmp / "series.sqlite")},
        "gateway": {"state_db": str(tmp / "st.sqlite"), "spool_dir": str(tmp / "spool"), "http_port": 0},
    })
    gw = Gateway(cfg)
    gw.start_state()
    gw.start_http()
    topic, payload = t.fall("site-a", "hub-1", 1, resident="r07")
    gw.state.record_fall(contract.decode(topic, payload), contract.now_ms())
    try:
        yield schemathesis.openapi.from_url(f"{gw.http_url}/openapi.json")
    finally:
        assert gw.http is not None
        gw.http.close()
        gw.state.close()
        mp.undo()


def test_api_matches_its_openapi_document(served_schema: Any) -> None:
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    failures: dict[str, str] = {}
    tested = 0
    for result in served_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            # a gateway without a broker is not ready: 503 is /readyz's documented answer for that
            ops = checks[1:] if case.operation.path in ("/readyz", "/healthz") else checks
            # an event stream never ends by itself: read it for a moment (its snapshot comes first)
            extra = {"timeout": 1.0} if case.operation.path == "/events" else {}
            case.call_and_validate(checks=ops, **extra)

        try:
            check()
        except (Exception, BaseExceptionGroup) as exc:  # collect every operation's failure, then report them together
            failures[operation.label] = str(exc)[:2000]
        tested += 1
    assert tested >= 18, f"only {tested} operations in the served document"
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
