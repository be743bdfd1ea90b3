"""Console sign-in over real HTTP: Argon2id passwords, the session cookie, CSRF, expiry."""

from __future__ import annotations

import http.cookiejar
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fallwatch.gateway.http as gw_http
from fallwatch.config import load_config
from fallwatch.gateway.app import Gateway
from fallwatch.gateway.staff import StaffDirectory
from fallwatch.protocol import contract
from fallwatch.testing import publisher as t

pytestmark = pytest.mark.integration


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    monkeypatch.delenv("FALLWATCH_GATEWAY_API_TOKEN", raising=False)
    StaffDirectory(tmp_path / "staff.toml").add("Anna Carer", "carer", password="correct horse battery")
    cfg = load_config(overrides={
        "influx": {"url": "", "embedded_path": str(tmp_path / "series.sqlite")},
        "gateway": {"state_db": str(tmp_path / "st.sqlite"), "spool_dir": str(tmp_path / "spool"),
                    "http_port": 0, "staff_users_file": str(tmp_path / "staff.toml")},
    })
    gw = Gateway(cfg)
    gw.start_state()
    gw.start_http()
    yield gw
    assert gw.http is not None
    gw.http.close()
    gw.state.close()


class Browser:
    """A cookie-keeping client, like the console's page."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with self.opener.open(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")


def test_password_session_csrf_and_revocation(gateway: Gateway, tmp_path: Path) -> None:
    text = (tmp_path / "staff.toml").read_text()
    assert "correct horse" not in text and 'password_argon2 = "$argon2id$' in text
    b = Browser(gateway.http_url or "")
    assert b.call("POST", "/session", {"name": "Anna Carer", "password": "wrong"})[0] == 401
    assert b.call("POST", "/session", {"name": "Nobody", "password": "correct horse battery"})[0] == 401
    code, me = b.call("POST", "/session", {"name": "Anna Carer", "password": "correct horse battery"})
    assert code == 200 and me["name"] == "Anna Carer" and me["csrf"]
    cookie = next(c for c in b.jar if c.name == "fw_session")
    assert cookie.has_nonstandard_attr("HttpOnly") and not cookie.secure  # plain HTTP here: not Secure
    assert b.call("GET", "/me")[1]["csrf"] == me["csrf"]
    topic, payload = t.fall("site-a", "hub-1", 1)
    aid = gateway.state.record_fall(contract.decode(topic, payload), contract.now_ms())[1]
    assert b.call("POST", f"/alerts/{aid}/ack", {})[0] == 403
    assert b.call("POST", f"/alerts/{aid}/ack", {}, {"X-CSRF-Token": "guess"})[0] == 403
    code, alert = b.call("POST", f"/alerts/{aid}/ack", {}, {"X-CSRF-Token": me["csrf"]})
    assert code == 200 and alert["acked_by"] == "Anna Carer"
    # the account is removed: its session ends with it
    (tmp_path / "staff.toml").write_text("")
    assert b.call("GET", "/me")[0] == 401


def test_an_expired_session_is_refused(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    b = Browser(gateway.http_url or "")
    assert b.call("POST", "/session", {"name": "Anna Carer", "password": "correct horse battery"})[0] == 200
    assert b.call("GET", "/me")[0] == 200
    monkeypatch.setattr(gw_http, "SESSION_TTL_S", -1)  # every session is older than that
    assert b.call("GET", "/me")[0] == 401


def test_sign_out_needs_the_csrf_token(gateway: Gateway) -> None:
    b = Browser(gateway.http_url or "")
    me = b.call("POST", "/session", {"name": "Anna Carer", "password": "correct horse battery"})[1]
    assert b.call("DELETE", "/session")[0] == 403
    assert b.call("DELETE", "/session", headers={"X-CSRF-Token": me["csrf"]})[0] == 200
    assert b.call("GET", "/me")[0] == 401
