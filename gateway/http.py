"""Operational and staff HTTP endpoints (stdlib ``http.server`` in a thread).

    GET  /healthz                  200 while the worker threads are alive
    GET  /readyz                   200 when connected + subscribed and the spool is not full
    GET  /metrics                  Prometheus text format
    GET  /alerts[?kind=&status=]   alerts (falls, device offline, test overdue) as JSON
    POST /alerts/{id}/ack          body {"by": "name"} -> acknowledged
    POST /alerts/{id}/clear        body {"by": "name"} -> cleared
    GET  /devices                  the device registry

It binds to loopback by default (``gateway.http_host``); the ack/clear endpoints change
state, so put it behind an authenticating reverse proxy before exposing it. If the
environment variable ``FALLWATCH_GATEWAY_API_TOKEN`` is set, every request except
``/healthz`` and ``/readyz`` must carry ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlparse

from prometheus_client import CONTENT_TYPE_LATEST

from gateway.state import StateError

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("fallwatch.gateway.http")


class HttpServer:
    def __init__(self, gateway: Gateway, host: str, port: int) -> None:
        self.gateway = gateway
        self.token = os.environ.get("FALLWATCH_GATEWAY_API_TOKEN") or None
        handler = type("Handler", (_Handler,), {"server_ref": self})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="gw-http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

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

    def _authorized(self, path: str) -> bool:
        token = self.server_ref.token
        if token is None or path in ("/healthz", "/readyz"):
            return True
        got = self.headers.get("Authorization", "")
        return hmac.compare_digest(got.encode(), f"Bearer {token}".encode())

    def do_GET(self) -> None:
        url = urlparse(self.path)
        gw = self.server_ref.gateway
        if not self._authorized(url.path):
            self._json(401, {"error": "missing or wrong bearer token"})
            return
        if url.path == "/healthz":
            dead = [t.name for t in gw._threads if not t.is_alive()]
            if dead:
                self._json(503, {"status": "unhealthy", "dead_threads": dead})
            else:
                self._json(200, {"status": "ok"})
        elif url.path == "/readyz":
            ok, why = gw.ready()
            self._json(200 if ok else 503, {"ready": ok, "detail": why})
        elif url.path == "/metrics":
            self._send(200, gw.metrics.render(), CONTENT_TYPE_LATEST)
        elif url.path == "/alerts":
            q = parse_qs(url.query)
            self._json(200, gw.state.alerts(kind=q.get("kind", [None])[0], status=q.get("status", [None])[0]))
        elif url.path == "/devices":
            self._json(200, gw.devices())
        elif url.path == "/stats":
            self._json(200, gw.stats())
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        url = urlparse(self.path)
        gw = self.server_ref.gateway
        if not self._authorized(url.path):
            self._json(401, {"error": "missing or wrong bearer token"})
            return
        parts = url.path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "alerts" or parts[2] not in ("ack", "clear"):
            self._json(404, {"error": "not found"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            actor = str(body.get("by", "")).strip()[:80]
        except (ValueError, AttributeError):
            self._json(400, {"error": 'body must be JSON like {"by": "name"}'})
            return
        if not actor:
            self._json(400, {"error": 'say who acts: {"by": "name"}'})
            return
        action = "acknowledge" if parts[2] == "ack" else "clear"
        try:
            alert = gw.state.transition(unquote(parts[1]), action, actor, time.time_ns() // 1_000_000)
        except StateError as exc:
            self._json(409, {"error": str(exc)})
            return
        if alert is None:
            self._json(404, {"error": "no such alert"})
            return
        logging.getLogger("fallwatch.gateway.alerts").warning("alert %s %sd by %s", alert["alert_id"], action, actor)
        self._json(200, alert)
