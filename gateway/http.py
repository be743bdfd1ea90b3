"""Operational and staff HTTP endpoints (stdlib ``http.server`` in a thread).

    GET  /healthz                  200 while the workers are alive, not stuck     (public)
    GET  /readyz                   200 when connected + subscribed, spool not full (public)
    GET  /staff                    the carer's alert page (data needs a token)    (public)
    GET  /me                       who the token belongs to                       (any role)
    GET  /alerts[?kind=&status=&open=1]  alerts as JSON; fall alerts only for carer/admin
    POST /alerts/{id}/ack          acknowledge, as the token's owner              (carer, admin)
    POST /alerts/{id}/clear        resolve, as the token's owner                  (carer, admin)
    GET  /devices                  the device registry                            (technician, admin)
    GET  /metrics, /stats          Prometheus text / counters                     (technician, admin)
    GET  /audit                    the access audit log                           (admin)

Roles and personal tokens come from ``gateway.staff_users_file`` (see gateway/staff.py);
``FALLWATCH_GATEWAY_API_TOKEN`` is one extra admin token for automation. Every request
for staff data, allowed or refused, is appended to the ``access_log`` table. With neither
configured the gateway is a development gateway: open, on loopback only by default
(``gateway.http_host``), and still audited as "anonymous".
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from prometheus_client import CONTENT_TYPE_LATEST

from fallwatch.gateway.api import GatewayReader
from fallwatch.gateway.staff import StaffDirectory, StaffUser
from fallwatch.gateway.state import StateError

log = logging.getLogger("fallwatch.gateway.http")
_STAFF_PAGE = Path(__file__).with_name("static") / "staff.html"


class HttpServer:
    """The endpoints above, served from a :class:`GatewayReader` (never the gateway object)."""

    def __init__(self, api: GatewayReader, host: str, port: int, staff_users_file: Path | None = None) -> None:
        self.api = api
        self.token = os.environ.get("FALLWATCH_GATEWAY_API_TOKEN") or None
        staff_file = staff_users_file
        self.staff = StaffDirectory(staff_file) if staff_file is not None else None
        handler = type("Handler", (_Handler,), {"server_ref": self})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="gw-http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    server_ref: HttpServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj: Any) -> None:
        self._send(code, json.dumps(obj, default=str).encode())

    # ------------------------------------------------------------ who is asking
    def _bearer(self) -> str | None:
        got = self.headers.get("Authorization", "")
        return got[7:].strip() if got.startswith("Bearer ") else None

    def _identify(self) -> StaffUser | None:
        """The caller, or None if unauthenticated.

        With a staff accounts file each person has their own token and role; the single
        ``FALLWATCH_GATEWAY_API_TOKEN`` (for automation) acts as admin. With neither set
        (a development gateway on loopback) the caller is an anonymous admin.
        """
        srv = self.server_ref
        token = self._bearer()
        if srv.token is not None and token is not None and hmac.compare_digest(token.encode(), srv.token.encode()):
            return StaffUser("api-token", "admin")
        if srv.staff is not None:
            return srv.staff.authenticate(token)
        if srv.token is not None:
            return None
        return StaffUser("anonymous", "admin")

    def _guarded(self, method: str, path: str, permission: str | None) -> StaffUser | None:
        """Authenticate + authorise; answers 401/403 itself. Every outcome goes to the audit log."""
        user = self._identify()
        if user is None:
            self._audit(None, method, path, 401)
            self._json(401, {"error": "missing or unknown bearer token"})
            return None
        if permission is not None and not user.may(permission):
            self._audit(user, method, path, 403)
            self._json(403, {"error": f"role {user.role!r} may not do this ({permission})"})
            return None
        return user

    def _audit(self, user: StaffUser | None, method: str, path: str, status: int) -> None:
        try:
            self.server_ref.api.log_access(
                user.name if user else "-", user.role if user else "-", method, path, status,
                self.client_address[0], time.time_ns() // 1_000_000)
        except Exception:  # the audit log must not take the API down, but say so loudly
            log.exception("could not write the access audit log")

    def do_GET(self) -> None:
        url = urlparse(self.path)
        api = self.server_ref.api
        path = url.path
        if path == "/healthz":
            dead, problems = api.dead_workers(), api.worker_problems()
            if dead or problems:
                body: dict[str, Any] = {"status": "unhealthy", "dead_threads": dead}
                if problems:
                    body["stuck_threads"] = problems
                self._json(503, body)
            else:
                self._json(200, {"status": "ok"})
            return
        if path == "/readyz":
            ok, why = api.ready()
            self._json(200 if ok else 503, {"ready": ok, "detail": why})
            return
        if path in ("/", "/staff"):
            self._send(200, _STAFF_PAGE.read_bytes(), "text/html; charset=utf-8")
            return
        permission = {"/metrics": "metrics:read", "/stats": "metrics:read", "/devices": "devices:read",
                      "/audit": "audit:read", "/me": None, "/alerts": "device_alerts:read"}.get(path, "")
        if permission == "":
            self._json(404, {"error": "not found"})
            return
        user = self._guarded("GET", path, permission)
        if user is None:
            return
        if path == "/metrics":
            self._send(200, api.metrics_text(), CONTENT_TYPE_LATEST)
        elif path == "/alerts":
            q = parse_qs(url.query)
            open_only = q.get("open", ["0"])[0] in ("1", "true")  # filtered in SQL, never capped
            alerts = api.alerts(kind=q.get("kind", [None])[0], status=q.get("status", [None])[0],
                                open_only=open_only)
            if not user.may("alerts:read"):  # technicians: device alerts only, no residents
                alerts = [a for a in alerts if a["kind"] != "fall"]
            alerts.sort(key=lambda a: (a["status"] != "raised", -int(a["raised_ms"])))
            self._json(200, alerts)
        elif path == "/devices":
            self._json(200, api.devices())
        elif path == "/stats":
            self._json(200, api.stats())
        elif path == "/audit":
            self._json(200, api.access_log())
        elif path == "/me":
            self._json(200, {"name": user.name, "role": user.role})
        self._audit(user, "GET", path, 200)

    def do_POST(self) -> None:
        url = urlparse(self.path)
        api = self.server_ref.api
        parts = url.path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "alerts" or parts[2] not in ("ack", "clear"):
            self._json(404, {"error": "not found"})
            return
        user = self._guarded("POST", url.path, "alerts:act")
        if user is None:
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            claimed = str(body.get("by", "")).strip()[:80]
        except (ValueError, AttributeError):
            self._json(400, {"error": 'body must be JSON like {"by": "name"}'})
            return
        # an authenticated person acts as themselves; only an anonymous/API caller names the actor
        actor = claimed if user.name in ("anonymous", "api-token") else user.name
        if not actor:
            self._json(400, {"error": 'say who acts: {"by": "name"}'})
            return
        action = "acknowledge" if parts[2] == "ack" else "clear"
        try:
            alert = api.transition(unquote(parts[1]), action, actor, time.time_ns() // 1_000_000)
        except StateError as exc:
            self._audit(user, "POST", url.path, 409)
            self._json(409, {"error": str(exc)})
            return
        if alert is None:
            self._audit(user, "POST", url.path, 404)
            self._json(404, {"error": "no such alert"})
            return
        self._audit(user, "POST", url.path, 200)
        self._json(200, alert)
