"""Operational and staff HTTP endpoints (stdlib ``http.server`` in a thread).

    GET  /healthz                  200 while the workers are alive, not stuck     (public)
    GET  /readyz                   200 when connected + subscribed, spool not full (public)
    GET  /staff                    the carer's alert page (data needs a token)    (public)
    GET  /me                       who the token belongs to                       (any role)
    GET  /alerts[?kind=&status=&open=1]  alerts as JSON; fall alerts only for carer/admin
    POST /alerts/{id}/ack          acknowledge, as the token's owner              (carer, admin)
    POST /alerts/{id}/clear        resolve, as the token's owner                  (carer, admin)
    POST /alerts/{id}/resolve      resolve with {"outcome": …, "note": …}         (carer, admin)
    GET  /alerts/{id}              one alert, its audit trail and delivery tries  (carer, admin)
    GET  /planning[?since_ms=]     raised fall risk etc., never sent to anyone    (carer, admin)
    GET  /ack/{token}              what a message's acknowledge link would do     (the link is the key)
    POST /ack/{token}              acknowledge as the link's recipient, once      (the link is the key)
    POST /push/subscriptions       this phone's Web Push subscription, for the token's owner (carer, admin)
    GET  /devices                  the device registry                            (technician, admin)
    GET  /metrics, /stats          Prometheus text / counters                     (technician, admin)
    GET  /audit                    the access audit log                           (admin)

Roles and personal tokens come from ``gateway.staff_users_file`` (see gateway/staff.py);
``FALLWATCH_GATEWAY_API_TOKEN`` is one extra admin token for automation. Every request
for staff data, allowed or refused, is appended to the ``access_log`` table. With neither
configured the gateway is a development gateway: open, audited as "anonymous", and it
refuses to bind anything but a loopback address.

Hardening (issue 11 items 12 and 13):

* each request thread closes its state-DB connection when it ends (a thread per TCP
  connection used to leave two descriptors behind per connection), at most
  ``MAX_CONNECTIONS`` are served at once, and an idle connection is dropped after
  ``TIMEOUT_S``;
* refused (401) requests are rate-limited per client address: beyond
  ``UNAUTH_PER_MINUTE`` a minute they get 429, are counted and logged once, not audited
  one by one; a valid token is never limited, so a carer is not locked out by a flood;
* a POST must be ``application/json`` and same-origin (``Origin`` / ``Sec-Fetch-Site``),
  so a cross-site form or ``text/plain`` fetch cannot acknowledge an alert; a development
  gateway also insists on a loopback ``Host`` (DNS rebinding);
* every response carries a CSP with ``frame-ancestors 'none'`` (the staff page's inline
  script and style are allowed by hash only), ``nosniff`` and ``Cache-Control: no-store``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from prometheus_client import CONTENT_TYPE_LATEST

from fallwatch.gateway.api import GatewayReader
from fallwatch.gateway.staff import StaffDirectory, StaffError, StaffUser
from fallwatch.gateway.state import OUTCOMES, StateError

log = logging.getLogger("fallwatch.gateway.http")
_STAFF_PAGE = Path(__file__).with_name("static") / "staff.html"
_SERVICE_WORKER = Path(__file__).with_name("static") / "sw.js"

MAX_CONNECTIONS = 64
TIMEOUT_S = 30.0
UNAUTH_PER_MINUTE = 30
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
_ACK_PAGE = """<!doctype html><html lang="{lang}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>fallwatch: {title}</title></head>
<body><h1>{title}</h1><p>{message}</p>{form}</body></html>"""
_ACK_FORM = ('<form method="post"><button type="submit" style="font-size:2em;padding:.5em 1em">'
             '{button}</button></form>')


def is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _csp_hash(page: str, tag: str) -> str:
    """``'sha256-…'`` of the page's inline ``<tag>`` (CSP allows exactly that block, nothing injected)."""
    m = re.search(rf"<{tag}>(.*?)</{tag}>", page, re.S)
    if m is None:
        return "'none'"
    return "'sha256-" + base64.b64encode(hashlib.sha256(m.group(1).encode()).digest()).decode() + "'"


class _RateLimit:
    """At most ``limit`` refused requests per client address per minute (a sliding window)."""

    def __init__(self, limit: int, window_s: float = 60.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self.limited = 0

    def over(self, client: str) -> bool:
        with self._lock:
            hits = self._hits.get(client)
            now = time.monotonic()
            while hits and now - hits[0] > self.window_s:
                hits.popleft()
            return hits is not None and len(hits) >= self.limit

    def hit(self, client: str) -> None:
        with self._lock:
            if len(self._hits) > 10_000:  # a scan from many addresses must not grow this for ever
                self._hits.clear()
            self._hits.setdefault(client, deque()).append(time.monotonic())


class _Server(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` with a bound on concurrent connections, that lets each request
    thread release its per-thread state-DB connection when it ends."""

    daemon_threads = True

    def __init__(self, addr: tuple[str, int], handler: type[BaseHTTPRequestHandler], api: GatewayReader) -> None:
        self.api = api
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(addr, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            log.warning("HTTP: %d connections open, refusing one from %s", MAX_CONNECTIONS, client_address[0])
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            try:
                self.api.release_thread()
            finally:
                self.slots.release()


class HttpServer:
    """The endpoints above, served from a :class:`GatewayReader` (never the gateway object)."""

    def __init__(self, api: GatewayReader, host: str, port: int, staff_users_file: Path | None = None) -> None:
        self.api = api
        self.token = os.environ.get("FALLWATCH_GATEWAY_API_TOKEN") or None
        staff_file = staff_users_file
        self.staff = StaffDirectory(staff_file) if staff_file is not None else None
        self.open_dev = self.staff is None and self.token is None
        if self.open_dev and not is_loopback(host):
            raise ValueError(
                f"gateway.http_host {host!r} is not a loopback address: without staff accounts "
                "(gateway.staff_users_file) or FALLWATCH_GATEWAY_API_TOKEN the gateway is an open "
                "development gateway and only binds 127.0.0.1 / ::1")
        page = _STAFF_PAGE.read_text()
        self.page = page.encode()
        self.page_csp = (f"default-src 'none'; script-src {_csp_hash(page, 'script')}; "
                         f"style-src {_csp_hash(page, 'style')}; connect-src 'self'; img-src 'self'; "
                         "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
        self.limiter = _RateLimit(UNAUTH_PER_MINUTE)
        handler = type("Handler", (_Handler,), {"server_ref": self})
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_cls = type("Server", (_Server,), {"address_family": family})
        self.httpd = server_cls((host, port), handler, api)
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
    timeout = TIMEOUT_S  # an idle or trickling connection does not hold a slot for ever

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, code: int, body: bytes, ctype: str = "application/json", csp: str | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", csp or "default-src 'none'; frame-ancestors 'none'")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        if code == 429:
            self.send_header("Retry-After", "60")
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
            return StaffUser("api-token", "admin", service=True)
        if srv.staff is not None:
            return srv.staff.authenticate(token)
        if srv.token is not None:
            return None
        return StaffUser("anonymous", "admin", service=True)

    def _host_ok(self) -> bool:
        """A development gateway answers only to a loopback Host (a rebound DNS name carries its own)."""
        if not self.server_ref.open_dev:
            return True
        host = self.headers.get("Host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return is_loopback(name)

    def _same_origin(self) -> str | None:
        """Why a state-changing request is refused as cross-site, or None."""
        ctype = self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            return "a POST must be Content-Type: application/json"
        site = self.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            return f"cross-site request refused (Sec-Fetch-Site: {site})"
        origin = self.headers.get("Origin")
        if origin is not None and origin not in (f"http://{self.headers.get('Host', '')}",
                                                 f"https://{self.headers.get('Host', '')}"):
            return "cross-origin request refused (Origin does not match Host)"
        return None

    def _guarded(self, method: str, path: str, permission: str | None) -> StaffUser | None:
        """Authenticate + authorise; answers 401/403/429 itself. Every outcome goes to the audit log,
        except refusals beyond the rate limit (counted and logged instead)."""
        if not self._host_ok():
            self._json(403, {"error": "unexpected Host header for a development gateway"})
            return None
        try:
            user = self._identify()
        except StaffError as exc:
            log.error("staff accounts file refused: %s", exc)
            self._json(500, {"error": f"staff accounts file is invalid: {exc}"})
            return None
        if user is None:
            limiter, client = self.server_ref.limiter, self.client_address[0]
            if limiter.over(client):
                with limiter._lock:
                    limiter.limited += 1
                    first = limiter.limited == 1 or limiter.limited % 1000 == 0
                if first:
                    log.warning("HTTP: rate-limiting refused requests from %s (%d limited so far)",
                                client, limiter.limited)
                self._json(429, {"error": "too many refused requests; try again later"})
                return None
            limiter.hit(client)
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

    def _ack(self, token: str, use: bool) -> None:
        """An acknowledge link: no sign-in, the signed single-use token is the key. A GET only
        shows what it would do (mail scanners and link previews fetch links); the POST acts."""
        import html

        res = self.server_ref.api.ack_link(token, use)
        self._audit(None, "POST" if use else "GET", f"/ack/{res.alert_id or '?'}", res.status)
        if "text/html" in self.headers.get("Accept", "") or not use:
            form = _ACK_FORM.format(button=html.escape(res.button)) if res.status == 200 and not use else ""
            page = _ACK_PAGE.format(lang=html.escape(res.lang), title=html.escape(res.title),
                                    message=html.escape(res.message), form=form)
            self._send(res.status, page.encode(), "text/html; charset=utf-8",
                       "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'")
        else:
            self._json(res.status, {"status": res.status, "message": res.message, "alert_id": res.alert_id})

    def _subscribe(self, path: str) -> None:
        """Keep a phone's push subscription for the signed-in person (a service caller names the
        person); the person must be in the paging roster, so nobody subscribes to others' alerts."""
        user = self._guarded("POST", path, "alerts:act")
        if user is None:
            return
        why = self._same_origin()
        if why is not None:
            self._audit(user, "POST", path, 403)
            self._json(403, {"error": why})
            return
        try:
            body = json.loads(self.rfile.read(min(int(self.headers.get("Content-Length") or 0), 8192)) or b"{}")
            sub = body.get("subscription", body)
            person = str(body.get("person", "")) if user.service else user.name
            ok = (str(sub["endpoint"]).startswith("https://") or self.server_ref.open_dev) and \
                bool(sub["keys"]["p256dh"]) and bool(sub["keys"]["auth"])
        except (ValueError, KeyError, TypeError, AttributeError):
            ok, person, sub = False, "", None
        if not ok or sub is None:
            self._json(400, {"error": "body must be a Web Push subscription: endpoint (https), keys.p256dh, keys.auth"})
            return
        status = self.server_ref.api.add_push_subscription(person, sub)
        self._audit(user, "POST", path, status)
        self._json(status, {"person": person} if status == 200 else
                   {"error": f"{person!r} is not in the paging roster ([[gateway.paging.people]])"})

    def do_GET(self) -> None:
        url = urlparse(self.path)
        api = self.server_ref.api
        path = url.path
        if path.startswith("/ack/") and path.count("/") == 2:
            self._ack(path[5:], use=False)
            return
        if path.startswith("/alerts/") and path.count("/") == 2:
            user = self._guarded("GET", path, "alerts:read")
            if user is None:
                return
            got = api.alert_history(unquote(path[8:]))
            self._json(200 if got else 404, got if got else {"error": "no such alert"})
            self._audit(user, "GET", path, 200 if got else 404)
            return
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
        if path == "/sw.js":  # the phone's service worker: shows pushes, acknowledges from the button
            self._send(200, _SERVICE_WORKER.read_bytes(), "text/javascript; charset=utf-8")
            return
        if path in ("/", "/staff"):
            self._send(200, self.server_ref.page, "text/html; charset=utf-8", self.server_ref.page_csp)
            return
        permission = {"/metrics": "metrics:read", "/stats": "metrics:read", "/devices": "devices:read",
                      "/audit": "audit:read", "/me": None, "/alerts": "device_alerts:read",
                      "/planning": "alerts:read"}.get(path, "")
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
        elif path == "/planning":
            since = parse_qs(url.query).get("since_ms", ["0"])[0]
            self._json(200, api.planning(int(since) if since.isdigit() else 0))
        self._audit(user, "GET", path, 200)

    def do_POST(self) -> None:
        url = urlparse(self.path)
        api = self.server_ref.api
        parts = url.path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "ack":
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(min(length, 4096))  # the form's (empty) body
            self._ack(parts[1], use=True)
            return
        if parts == ["push", "subscriptions"]:
            self._subscribe(url.path)
            return
        if len(parts) != 3 or parts[0] != "alerts" or parts[2] not in ("ack", "clear", "resolve"):
            self._json(404, {"error": "not found"})
            return
        user = self._guarded("POST", url.path, "alerts:act")
        if user is None:
            return
        why = self._same_origin()
        if why is not None:
            self._audit(user, "POST", url.path, 403)
            self._json(403, {"error": why})
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            claimed = str(body.get("by", "")).strip()[:80]
            outcome = body.get("outcome")
            note = body.get("note")
            if outcome is not None and outcome not in OUTCOMES:
                self._json(400, {"error": f"outcome must be one of {', '.join(OUTCOMES)}"})
                return
            if note is not None and not isinstance(note, str):
                raise ValueError("note")
        except (ValueError, AttributeError):
            self._json(400, {"error": 'body must be JSON like {"by": "name"}'})
            return
        # an authenticated person acts as themselves; only an anonymous/API caller names the actor
        actor = claimed if user.service else user.name
        if not actor:
            self._json(400, {"error": 'say who acts: {"by": "name"}'})
            return
        action = "acknowledge" if parts[2] == "ack" else "clear"
        try:
            alert = api.transition(unquote(parts[1]), action, actor, time.time_ns() // 1_000_000,
                                   via="console" if action == "acknowledge" else None,
                                   outcome=outcome if action == "clear" else None,
                                   note=note if action == "clear" else None)
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
