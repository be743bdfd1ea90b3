"""Where a hub redeems its one-time enrolment code (``fallwatch device enrol-server``).

``POST /enrol`` with ``{"code": "…"}``: the registry marks the code used (one atomic UPDATE,
so two hubs racing with one code cannot both win), activates the credential of its bundle,
regenerates the broker's files and SIGHUPs it, and answers with the bundle sealed under the
code (a hub that has only the code — typed or scanned from the QR token — decrypts it; one
that has the bundle file just learns that it is now live). Used, voided, expired or unknown
codes get 410 with the reason and are audited. Failed attempts are limited per client
address (codes are 192-bit random, so this is about log noise, not guessing).

Served on its own port, not by the staff HTTP API: it is the only unauthenticated route,
it is needed only during installation, and the broker host may not be the API host.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections import defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fallwatch.gateway.registry import BrokerFiles, Registry, RegistryError
from fallwatch.protocol.enrolment import seal

log = logging.getLogger(__name__)

MAX_BODY = 4096
FAILS_PER_MINUTE = 30


class EnrolServer:
    def __init__(self, registry: Registry, files: BrokerFiles | None, host: str = "127.0.0.1", port: int = 0,
                 *, tls_cert: Path | None = None, tls_key: Path | None = None) -> None:
        self.registry = registry
        self.files = files
        self._fails: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()
        self.redeemed = 0
        self.refused = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:
                log.info("enrol %s " + fmt, self.client_address[0], *args)

            def do_POST(self) -> None:
                try:
                    status, body = server.handle(self.path, self.headers.get("Content-Length"), self.rfile,
                                                 self.client_address[0])
                finally:  # a request thread must not keep its state-DB connection
                    server.registry.store.release_thread()
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        if tls_cert is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls_cert), str(tls_key) if tls_key else None)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.scheme = "https" if tls_cert is not None else "http"
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"{self.scheme}://{host!s}:{port}"

    def _limited(self, client: str) -> bool:
        now = time.monotonic()
        with self._lock:
            q = self._fails[client]
            while q and q[0] < now - 60:
                q.popleft()
            return len(q) >= FAILS_PER_MINUTE

    def _fail(self, client: str) -> None:
        with self._lock:
            self._fails[client].append(time.monotonic())
            self.refused += 1

    def handle(self, path: str, length: str | None, rfile: Any, client: str) -> tuple[int, dict[str, Any]]:
        if path != "/enrol":
            return 404, {"error": "not found"}
        if self._limited(client):
            return 429, {"error": "too many failed attempts; wait a minute"}
        try:
            n = int(length or "0")
            if not 0 < n <= MAX_BODY:
                raise ValueError("body size")
            code = json.loads(rfile.read(n))["code"]
            if not isinstance(code, str):
                raise ValueError("code")
        except (ValueError, KeyError, TypeError):
            self._fail(client)
            return 400, {"error": 'expected a JSON body {"code": "..."}'}
        try:
            bundle = self.registry.redeem(code, actor=f"enrol:{client}")
        except RegistryError as exc:
            self._fail(client)
            log.warning("enrolment from %s refused: %s", client, exc)
            return 410, {"error": str(exc)}
        try:
            sync = self.registry.sync_broker(self.files) if self.files is not None else None
        except OSError as exc:  # the code is used and the credential live in the registry: say what is missing
            log.error("enrolment of %s: broker files not written: %s", bundle["device_id"], exc)
            return 503, {"error": f"credential active but the broker was not updated ({exc}); "
                                  "the operator must run `fallwatch device sync`"}
        with self._lock:
            self.redeemed += 1
        log.warning("enrolment of %s from %s: credential active (broker %s)", bundle["device_id"], client,
                    "reloaded" if sync and sync["reloaded_pid"] else "files not managed here")
        return 200, {"device_id": bundle["device_id"], "sealed": seal(code, bundle),
                     "broker_reloaded": bool(sync and sync["reloaded_pid"])}

    def start(self) -> EnrolServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="enrol-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
