"""Operational and staff HTTP endpoints: a FastAPI (ASGI) app served by uvicorn in a thread.

    GET  /healthz                  200 while the workers are alive, not stuck     (public)
    GET  /readyz                   200 when connected + subscribed, spool not full (public)
    GET  /staff                    the carer's alert page (data needs a token)    (public)
    GET  /openapi.json             the API described as OpenAPI 3 (docs/openapi.json) (public)
    GET  /manifest.webmanifest, /icon.svg  make the console installable on a phone (public)
    GET  /events                   server-sent events: open alerts as they change  (any role; falls for carer/admin)
    POST /session                  sign in: {"token"} or {"name", "password"} → session cookie (public)
    DELETE /session                sign out                                       (signed in)
    GET  /me                       who is signed in, their team and CSRF token    (any role)
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
    GET  /devices/overview         hubs and sensors, what needs a visit first     (technician, admin; device_routes.py)
    GET  /metrics, /stats          Prometheus text / counters                     (technician, admin)
    GET  /audit                    the access audit log                           (admin)
    GET  /residents/…, /visits, /alerts/{id}/since   see gateway/console_routes.py

Sign-in: a script sends its personal token as ``Authorization: Bearer``; the console signs
in once (token, or name and password checked with Argon2id) and gets a session cookie
(HttpOnly, SameSite=Strict, Secure over TLS, signed, expiring after ``SESSION_TTL_S``; the
account is re-read on every request, so a removed account loses its session). A request
that rides on the cookie must echo the session's CSRF token in ``X-CSRF-Token`` for every
state change. A person whose account names a team sees only the alerts, planning items
and devices of that team's sites (``[gateway.paging.teams]``), and gets 403 for others'.

Roles and personal tokens come from ``gateway.staff_users_file`` (see gateway/staff.py);
``FALLWATCH_GATEWAY_API_TOKEN`` is one extra admin token for automation. Every request
for staff data, allowed or refused, is appended to the ``access_log`` table. With neither
configured the gateway is a development gateway: open, audited as "anonymous", and it
refuses to bind anything but a loopback address.

The web layer depends on :class:`~fallwatch.gateway.api.GatewayReader` alone. Its calls
block (SQL), so they run on a small fixed pool of threads owned by the server: the
threads live as long as the server, each keeps one state-DB connection, and the pool
releases them when the server closes (an ever-changing set of threads would leave
connections and descriptors behind).

Hardening (issue 11 items 12 and 13), kept from the hand-written server:

* at most ``MAX_CONNECTIONS`` requests are served at once (uvicorn answers 503 beyond),
  and an idle keep-alive connection is dropped after ``TIMEOUT_S``;
* refused (401) requests are rate-limited per client address: beyond
  ``UNAUTH_PER_MINUTE`` a minute they get 429, are counted and logged once, not audited
  one by one; a valid token is never limited, so a carer is not locked out by a flood;
* a POST must be ``application/json`` and same-origin (``Origin`` / ``Sec-Fetch-Site``),
  so a cross-site form or ``text/plain`` fetch cannot acknowledge an alert; a development
  gateway also insists on a loopback ``Host`` (DNS rebinding);
* ``/events`` pushes changes to the console (no polling by the page). It watches the state
  store, not the process: a gateway run as several processes over one state DB pushes what
  any of them recorded. Each open stream re-reads the open alerts every ``EVENTS_TICK_S``
  and sends what changed; the stream ends when the server closes;
* every response carries a CSP with ``frame-ancestors 'none'`` (the staff page's inline
  script and style are allowed by hash only), ``nosniff`` and ``Cache-Control: no-store``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import html
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from itsdangerous import BadSignature, URLSafeTimedSerializer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fallwatch.gateway import console_routes
from fallwatch.gateway.api import GatewayReader
from fallwatch.gateway.channels._common import _KIND as KIND_NAMES
from fallwatch.gateway.channels._common import _OUTCOME as OUTCOME_NAMES
from fallwatch.gateway.channels._common import REASONS
from fallwatch.gateway.device_routes import DEVICE_MESSAGES, device_router
from fallwatch.gateway.i18n import LOCALES, N_, gettext_for
from fallwatch.gateway.privacy_routes import PRIVACY_MESSAGES, private_path
from fallwatch.gateway.privacy_routes import build_router as privacy_router
from fallwatch.gateway.staff import StaffDirectory, StaffError, StaffUser
from fallwatch.gateway.state import OUTCOMES, StateError

log = logging.getLogger("fallwatch.gateway.http")
_STAFF_PAGE = Path(__file__).with_name("static") / "staff.html"
_SERVICE_WORKER = Path(__file__).with_name("static") / "sw.js"

MAX_CONNECTIONS = 64
TIMEOUT_S = 30.0
UNAUTH_PER_MINUTE = 30
#: threads that run the reader's blocking calls (each holds one state-DB connection)
POOL_THREADS = 8
MAX_BODY = 8192
#: how often an open event stream compares the open alerts with what it sent
EVENTS_TICK_S = 0.25
#: a comment line this often keeps proxies from closing a quiet event stream
EVENTS_KEEPALIVE_S = 15.0
SESSION_TTL_S = 10 * 3600  # a shift and a half: a carer signs in once per shift
SESSION_COOKIE = "fw_session"
_MANIFEST = {"name": "fallwatch", "short_name": "fallwatch", "start_url": "/staff", "scope": "/",
             "display": "standalone", "background_color": "#f5f6f7", "theme_color": "#16324f",
             "icons": [{"src": "/icon.svg", "sizes": "any", "type": "image/svg+xml", "purpose": "any"}]}
_ICON = (b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64"><rect width="64" height="64" rx="12" '
         b'fill="#16324f"/><circle cx="32" cy="18" r="7" fill="#fff"/><path d="M20 52l8-18 8 6 10-10" '
         b'stroke="#fff" stroke-width="6" fill="none" stroke-linecap="round"/></svg>')
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
_DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'"
_ACK_PAGE = """<!doctype html><html lang="{lang}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>fallwatch: {title}</title></head>
<body><h1>{title}</h1><p>{message}</p>{form}</body></html>"""
_ACK_FORM = ('<form method="post"><button type="submit" style="font-size:2em;padding:.5em 1em">'
             '{button}</button></form>')
T = TypeVar("T")


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

    def count_limited(self) -> bool:
        """Count one limited request; True when it should be logged (the first, every 1000th)."""
        with self._lock:
            self.limited += 1
            return self.limited == 1 or self.limited % 1000 == 0


class _SecurityHeaders:
    """Pure ASGI middleware (streams pass through untouched): the headers every answer carries.
    A response that set its own CSP (the staff page, the ack page) keeps it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                have = {k.lower() for k, _ in headers}
                for name, value in ((b"content-security-policy", _DEFAULT_CSP.encode()),
                                    (b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                                    (b"referrer-policy", b"no-referrer"), (b"cache-control", b"no-store")):
                    if name not in have:
                        headers.append((name, value))
                if message["status"] == 429 and b"retry-after" not in have:
                    headers.append((b"retry-after", b"60"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# ------------------------------------------------------------------ the API's shapes (OpenAPI)


class Error(BaseModel):
    error: str


class Health(BaseModel):
    status: str
    dead_threads: list[str] | None = None
    stuck_threads: dict[str, str] | None = None


class Ready(BaseModel):
    ready: bool
    detail: str


class Me(BaseModel):
    name: str
    role: str
    team: str | None = None
    csrf: str | None = Field(None, description="echo as X-CSRF-Token on state changes of a cookie session")


class Alert(BaseModel):
    """One alert row; further columns (the evidence, the outcome) come along as they are."""

    model_config = ConfigDict(extra="allow")
    alert_id: str
    kind: str
    site_id: str
    device_id: str
    status: str
    raised_ms: int
    resident_id: str | None = None
    room: str | None = None
    confidence: float | None = None
    acked_by: str | None = None
    cleared_by: str | None = None
    resident_name: str | None = Field(None, description="from the resident registry, when it knows them")
    flat: str | None = None
    timezone: str | None = Field(None, description="the site's time zone (the team's)")


class AlertHistory(Alert):
    log: list[dict[str, Any]] = Field(description="the alert's audit trail, oldest first")
    deliveries: list[dict[str, Any]] = Field(description="every delivery try of its pages")
    page: dict[str, Any] | None = None


class AckLinkAnswer(BaseModel):
    status: int
    message: str
    alert_id: str | None = None


class PushAnswer(BaseModel):
    person: str


_ACTION_BODY = {"requestBody": {"required": False, "content": {"application/json": {"schema": {
    "type": "object", "additionalProperties": True, "properties": {
        "by": {"type": "string", "maxLength": 80,
               "description": "who acts; only for the automation token or a development gateway"},
        "outcome": {"type": "string", "enum": list(OUTCOMES)},
        "note": {"type": "string"}}}}}}}
_PUSH_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["subscription"], "properties": {
        "person": {"type": "string", "description": "only for the automation token"},
        "subscription": {"type": "object", "required": ["endpoint", "keys"], "properties": {
            "endpoint": {"type": "string"},
            "keys": {"type": "object", "required": ["p256dh", "auth"],
                     "properties": {"p256dh": {"type": "string"}, "auth": {"type": "string"}}}}}}}}}}}
#: one event of ``/events``: its name and its data (JSON: a list of alerts, one alert, or an id)
_SSE_EVENT = {"type": "object", "required": ["event", "data"], "properties": {
    "event": {"type": "string", "enum": ["snapshot", "alert", "gone", "problem"]},
    "data": {"type": "string", "contentMediaType": "application/json"}}}
_SESSION_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "properties": {"token": {"type": "string"}, "name": {"type": "string"},
                                     "password": {"type": "string"}}}}}}}
_TEXT = {"content": {"text/plain": {"schema": {"type": "string"}}}}
_HTML = {"content": {"text/html": {"schema": {"type": "string"}}}}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    why = {400: "bad request body", 401: "missing or unknown bearer token", 403: "role may not, or cross-site",
           404: "no such thing", 409: "the alert's lifecycle forbids it", 429: "too many refused requests",
           500: "the staff accounts file is invalid", 503: "not healthy / not ready"}
    return {c: {"model": Error, "description": why[c]} for c in codes}


_GUARDED = (401, 403, 429, 500)


#: the console's own texts (gateway/static/staff.html: ``{{…}}`` in its HTML, ``t("…")`` in its
#: script), translated from gateway/locale/<lang>.po like every other staff-facing text
CONSOLE_MESSAGES = [
    N_("Alerts"), N_("Language"), N_("Name"), N_("Password"), N_("or personal access token"), N_("Sign in"),
    N_("Acknowledge"), N_("No open alerts."), N_("Note"), N_("Outcome"), N_("Please sign in again."),
    N_("Resolve"), N_("Why:"), N_("Wrong name, password or token."), N_("acknowledged by {name}"),
    N_("how sure"), N_("live"), N_("reconnecting…"), N_("room unknown"), N_("{n} min ago"), N_("{n} s ago"),
]
CONSOLE_MESSAGES += DEVICE_MESSAGES  # the device page's block of the same page (gateway/device_routes.py)
CONSOLE_MESSAGES += PRIVACY_MESSAGES  # the console's privacy block (gateway/privacy_routes.py)
_STATUS = {"raised": N_("open"), "acknowledged": N_("acknowledged"), "cleared": N_("resolved")}
_ROLES = {"carer": N_("carer"), "lead": N_("team lead"), "technician": N_("technician"), "admin": N_("administrator")}


def console_texts(lang: str) -> dict[str, dict[str, str]]:
    """Everything the console's script shows, in one language."""
    _ = gettext_for(lang)
    care = console_routes.texts(lang)  # the resident page's, the planning list's and "since"'s
    return {**care, "messages": {**{m: _(m) for m in CONSOLE_MESSAGES}, **care["messages"]},
            "kinds": {k: _(v) for k, v in KIND_NAMES.items()},
            "reasons": {k: _(v) for k, v in REASONS.items()}, "outcomes": {k: _(v) for k, v in OUTCOME_NAMES.items()},
            "status": {k: _(v) for k, v in _STATUS.items()}, "roles": {k: _(v) for k, v in _ROLES.items()}}


def render_page(template: str, lang: str) -> str:
    """The staff page in ``lang``: its marked texts translated, the script's table filled in."""
    _ = gettext_for(lang)
    page = re.sub(r"\{\{(.+?)\}\}", lambda m: lang if m.group(1) == "lang" else html.escape(_(m.group(1))), template)
    return page.replace("/*I18N*/{}", json.dumps(console_texts(lang), ensure_ascii=False).replace("</", "<\\/"))


def choose_lang(request: Request, default: str = "sv") -> str:
    """The person's own setting (``?lang=``, the ``fw_lang`` cookie), else the browser's
    Accept-Language, else the gateway's default (Swedish)."""
    for choice in (request.query_params.get("lang"), request.cookies.get("fw_lang")):
        if choice in LOCALES:
            return str(choice)
    ranked: list[tuple[float, str]] = []
    for part in request.headers.get("accept-language", "").split(","):
        tag, _, q = part.strip().partition(";q=")
        try:
            ranked.append((float(q) if q else 1.0, tag.split("-")[0].strip().lower()))
        except ValueError:
            continue
    for _q, tag in sorted(ranked, key=lambda x: -x[0]):
        if tag in LOCALES:
            return tag
    return default


class _QuietServer(uvicorn.Server):
    """uvicorn's server, ticking once a second instead of ten times.

    uvicorn's main loop wakes every 0.1 s to see whether it should stop (and, every tenth
    time, to renew its ``Date`` header): ~2.5 ms of CPU a second in an idle gateway, 12 µs
    per message at 200 msg/s (issue 16). Here the loop sleeps a second between ticks (the
    header still changes once a second) and :meth:`exit_soon` wakes it at once to stop, so
    a stop takes no longer than before.
    """

    _loop: asyncio.AbstractEventLoop | None = None
    _wake: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 10) % 864000  # every tick is a "once a second" tick for on_tick
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)
            should_exit = await self.on_tick(counter)

    def exit_soon(self) -> None:
        """Stop serving (from any thread): the main loop notices now, not at its next tick."""
        self.should_exit = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                loop.call_soon_threadsafe(wake.set)


class HttpServer:
    """The endpoints above, served from a :class:`GatewayReader` (never the gateway object)."""

    def __init__(self, api: GatewayReader, host: str, port: int, staff_users_file: Path | None = None) -> None:
        self.api = api
        self.token = os.environ.get("FALLWATCH_GATEWAY_API_TOKEN") or None
        self.staff = StaffDirectory(staff_users_file) if staff_users_file is not None else None
        self.open_dev = self.staff is None and self.token is None
        if self.open_dev and not is_loopback(host):
            raise ValueError(
                f"gateway.http_host {host!r} is not a loopback address: without staff accounts "
                "(gateway.staff_users_file) or FALLWATCH_GATEWAY_API_TOKEN the gateway is an open "
                "development gateway and only binds 127.0.0.1 / ::1")
        template = _STAFF_PAGE.read_text()
        #: language -> (the page, its CSP allowing exactly its inline script and style)
        self.pages: dict[str, tuple[bytes, str]] = {}
        for lang in LOCALES:
            page = render_page(template, lang)
            self.pages[lang] = (page.encode(), (
                f"default-src 'none'; script-src {_csp_hash(page, 'script')}; "
                f"style-src {_csp_hash(page, 'style')}; connect-src 'self'; img-src 'self'; "
                "manifest-src 'self'; worker-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                "form-action 'none'"))
        self.closing = threading.Event()
        self.limiter = _RateLimit(UNAUTH_PER_MINUTE)
        # several gateway processes share FALLWATCH_SESSION_SECRET so a session works on each
        secret = os.environ.get("FALLWATCH_SESSION_SECRET") or secrets.token_urlsafe(32)
        self.sessions = URLSafeTimedSerializer(secret, salt="fallwatch-console-session")
        self.pool = ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="gw-http")
        self.app = build_app(self)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError:
            self.sock.close()
            self.pool.shutdown(wait=False)
            raise
        self.sock.listen(128)
        self.sock.set_inheritable(True)
        config = uvicorn.Config(_SecurityHeaders(self.app), log_config=None, access_log=False,
                                lifespan="off", limit_concurrency=MAX_CONNECTIONS,
                                timeout_keep_alive=int(TIMEOUT_S), server_header=False,
                                timeout_graceful_shutdown=2)
        self.server = _QuietServer(config)
        self.thread = threading.Thread(target=self._serve, name="gw-http", daemon=True)

    def _serve(self) -> None:
        self.server.run(sockets=[self.sock])

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://[{host}]:{port}" if ":" in str(host) else f"http://{host!s}:{port}"

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.closing.set()  # open event streams end
        self.server.exit_soon()
        if self.thread.is_alive():
            self.thread.join(10)
        self.sock.close()
        self._release_pool()

    def _release_pool(self) -> None:
        """Let every pool thread free what it holds (its state-DB connection), then stop them."""
        barrier = threading.Barrier(POOL_THREADS)

        def release() -> None:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(2.0)  # one task per thread: no thread takes two
            self.api.release_thread()

        for _ in range(POOL_THREADS):
            self.pool.submit(release)
        self.pool.shutdown(wait=True)

    async def run(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """Run a blocking reader call on the server's own threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, lambda: fn(*args, **kw))

    # ------------------------------------------------------------ who is asking

    def identify(self, request: Request) -> StaffUser | None:
        """The caller, or None if unauthenticated.

        With a staff accounts file each person has their own token and role; the single
        ``FALLWATCH_GATEWAY_API_TOKEN`` (for automation) acts as admin. With neither set
        (a development gateway on loopback) the caller is an anonymous admin.
        """
        got = request.headers.get("authorization", "")
        token = got[7:].strip() if got.startswith("Bearer ") else None
        if self.token is not None and token is not None and hmac.compare_digest(token.encode(), self.token.encode()):
            return StaffUser("api-token", "admin", service=True)
        if self.staff is not None and token is None and SESSION_COOKIE in request.cookies:
            try:
                data = self.sessions.loads(request.cookies[SESSION_COOKIE], max_age=SESSION_TTL_S)
            except BadSignature:  # expired, or not ours
                return None
            user = self.staff.user(str(data.get("n", "")))
            if user is not None:
                request.state.csrf = str(data.get("c", ""))
            return user
        if self.staff is not None:
            return self.staff.authenticate(token)
        if self.token is not None:
            return None
        return StaffUser("anonymous", "admin", service=True)

    def host_ok(self, request: Request) -> bool:
        """A development gateway answers only to a loopback Host (a rebound DNS name carries its own)."""
        if not self.open_dev:
            return True
        host = request.headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return is_loopback(name)

    @staticmethod
    def same_origin(request: Request) -> str | None:
        """Why a state-changing request is refused as cross-site, or None."""
        ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype != "application/json":
            return "a POST must be Content-Type: application/json"
        site = request.headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return f"cross-site request refused (Sec-Fetch-Site: {site})"
        origin = request.headers.get("origin")
        host = request.headers.get("host", "")
        if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
            return "cross-origin request refused (Origin does not match Host)"
        return None

    @staticmethod
    def csrf_refused(request: Request) -> str | None:
        """Why a state change riding on the session cookie is refused (no or a wrong CSRF token)."""
        expected = getattr(request.state, "csrf", None)
        if expected is None:  # a bearer token or a development gateway: no ambient credential
            return None
        got = request.headers.get("x-csrf-token", "")
        if not expected or not hmac.compare_digest(got.encode(), expected.encode()):
            return "missing or wrong CSRF token (X-CSRF-Token)"
        return None

    def in_scope(self, user: StaffUser, site_id: Any) -> bool:
        """Whether the person may see this site's data: their team's sites, or all without a team."""
        return user.team is None or self.api.team_of_site(str(site_id)) == user.team

    def scoped(self, user: StaffUser, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows of the person's team's sites, each with its site's time zone (the console
        shows times as the site's clock reads them)."""
        if user.team is not None:
            rows = [r for r in rows if "site_id" not in r or self.in_scope(user, r["site_id"])]
        for r in rows:
            if "site_id" in r:
                r["timezone"] = self.api.site_timezone(str(r["site_id"]))
                if r.get("resident_id"):
                    who = self.api.resident(str(r["site_id"]), str(r["resident_id"])) or {}
                    r["resident_name"], r["flat"] = who.get("name"), who.get("flat")
        return rows

    async def audit(self, request: Request, user: StaffUser | None, status: int, path: str | None = None) -> None:
        client = request.client.host if request.client else "-"
        try:
            await self.run(lambda: self.api.log_access(  # a resident is named by pseudonym only
                user.name if user else "-", user.role if user else "-", request.method,
                private_path(self.api, path or request.url.path), status, client, time.time_ns() // 1_000_000))
        except Exception:  # the audit log must not take the API down, but say so loudly
            log.exception("could not write the access audit log")

    async def guarded(self, request: Request, permission: str | None) -> StaffUser | Response:
        """Authenticate + authorise: the caller, or the 401/403/429 answer. Every outcome goes to
        the audit log, except refusals beyond the rate limit (counted and logged instead)."""
        if not self.host_ok(request):
            return _json(403, {"error": "unexpected Host header for a development gateway"})
        try:
            user = await self.run(self.identify, request)
        except StaffError as exc:
            log.error("staff accounts file refused: %s", exc)
            return _json(500, {"error": f"staff accounts file is invalid: {exc}"})
        if user is None:
            client = request.client.host if request.client else "-"
            if self.limiter.over(client):
                if self.limiter.count_limited():
                    log.warning("HTTP: rate-limiting refused requests from %s (%d limited so far)",
                                client, self.limiter.limited)
                return _json(429, {"error": "too many refused requests; try again later"})
            self.limiter.hit(client)
            await self.audit(request, None, 401)
            return _json(401, {"error": "missing or unknown bearer token"})
        if permission is not None and not user.may(permission):
            await self.audit(request, user, 403)
            return _json(403, {"error": f"role {user.role!r} may not do this ({permission})"})
        return user

    async def post_guarded(self, request: Request, permission: str) -> tuple[StaffUser, dict[str, Any]] | Response:
        """``guarded`` plus the same-origin rules of a state change, and the JSON body (at most
        ``MAX_BODY`` bytes, an object)."""
        user = await self.guarded(request, permission)
        if isinstance(user, Response):
            return user
        why = self.same_origin(request) or self.csrf_refused(request)
        if why is not None:
            await self.audit(request, user, 403)
            return _json(403, {"error": why})
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY:
                return _json(400, {"error": f"body larger than {MAX_BODY} bytes"})
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _json(400, {"error": "body must be a JSON object"})
        return user, body


def _visible(user: StaffUser, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The open alerts this caller may see (a technician: device alerts only, no residents)."""
    if not user.may("alerts:read"):
        rows = [a for a in rows if a["kind"] != "fall"]
    return {str(a["alert_id"]): a for a in rows}


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n".encode()


async def _stream(srv: HttpServer, request: Request, user: StaffUser) -> AsyncIterator[bytes]:
    """One console's event stream: the open alerts, then what changes, until either side leaves
    (Starlette cancels the generator when the client goes)."""
    sent: dict[str, dict[str, Any]] = {}
    first, quiet = True, 0.0
    while not srv.closing.is_set():
        try:
            now = _visible(user, await srv.run(lambda: srv.scoped(user, srv.api.alerts(open_only=True))))
        except Exception:  # a state-DB hiccup: say so on the stream, try again next tick
            log.exception("event stream: could not read the open alerts")
            yield _sse("problem", {"error": "could not read the alerts; retrying"})
            now = sent
        if first:
            yield _sse("snapshot", sorted(now.values(), key=lambda a: -int(a["raised_ms"])))
            first = False
        else:
            for aid, row in now.items():
                if sent.get(aid) != row:
                    yield _sse("alert", row)
                    quiet = 0.0
            for aid in sent.keys() - now.keys():
                yield _sse("gone", {"alert_id": aid})
                quiet = 0.0
        sent = now
        if quiet >= EVENTS_KEEPALIVE_S:
            yield b": keep-alive\n\n"
            quiet = 0.0
        await asyncio.sleep(EVENTS_TICK_S)
        quiet += EVENTS_TICK_S


def _json(code: int, obj: Any) -> Response:
    return Response(json.dumps(obj, default=str), code, media_type="application/json")


def build_app(srv: HttpServer) -> FastAPI:
    """The FastAPI app of one server: routes only translate HTTP to :class:`GatewayReader` calls."""
    api = srv.api
    app = FastAPI(title="fallwatch gateway", version="1", docs_url=None, redoc_url=None,
                  description="The gateway's operational and staff API (see gateway/http.py for the roles).")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        msg = "not found" if exc.status_code == 404 else str(exc.detail)
        return _json(exc.status_code, {"error": msg})

    app.include_router(device_router(srv))  # the technician's device page (gateway/device_routes.py)

    @app.get("/healthz", response_model=Health, responses=_errors(503), tags=["operations"])
    async def healthz() -> Response:
        dead, problems = await srv.run(api.dead_workers), await srv.run(api.worker_problems)
        if dead or problems:
            body: dict[str, Any] = {"status": "unhealthy", "dead_threads": dead}
            if problems:
                body["stuck_threads"] = problems
            return _json(503, body)
        return _json(200, {"status": "ok"})

    @app.get("/readyz", response_model=Ready, responses={503: {"model": Ready}}, tags=["operations"])
    async def readyz() -> Response:
        ok, why = await srv.run(api.ready)
        return _json(200 if ok else 503, {"ready": ok, "detail": why})

    @app.get("/sw.js", response_class=Response, tags=["console"],
             responses={200: {"content": {"text/javascript": {"schema": {"type": "string"}}}}})
    async def service_worker() -> Response:
        """The phone's service worker: shows pushes, acknowledges from the button."""
        return Response(_SERVICE_WORKER.read_bytes(), media_type="text/javascript; charset=utf-8")

    @app.get("/", include_in_schema=False)
    @app.get("/staff", response_class=Response, responses={200: _HTML}, tags=["console"])
    async def staff_page(request: Request, lang: str | None = None) -> Response:
        """The console, in the person's language (``lang``, their setting, the browser's; Swedish)."""
        page, csp = srv.pages[choose_lang(request)]
        return Response(page, media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": csp, "Content-Language": choose_lang(request),
                                 "Vary": "Accept-Language, Cookie"})

    @app.get("/manifest.webmanifest", response_class=Response, tags=["console"],
             responses={200: {"content": {"application/manifest+json": {"schema": {"type": "object"}}}}})
    async def manifest() -> Response:
        """What a phone needs to put the console on its home screen."""
        return Response(json.dumps(_MANIFEST), media_type="application/manifest+json")

    @app.get("/icon.svg", response_class=Response, tags=["console"],
             responses={200: {"content": {"image/svg+xml": {"schema": {"type": "string"}}}}})
    async def icon() -> Response:
        return Response(_ICON, media_type="image/svg+xml")

    @app.get("/events", response_class=StreamingResponse, tags=["alerts"],
             responses={200: {"description": "``snapshot`` (every open alert), then ``alert`` (one new or "
                                             "changed) and ``gone`` (no longer open) events",
                              "content": {"text/event-stream": {"schema": _SSE_EVENT}}},
                        **_errors(*_GUARDED)})
    async def events(request: Request) -> Response:
        user = await srv.guarded(request, "device_alerts:read")
        if isinstance(user, Response):
            return user
        await srv.audit(request, user, 200)
        return StreamingResponse(_stream(srv, request, user), media_type="text/event-stream",
                                 headers={"X-Accel-Buffering": "no"})

    async def simple(request: Request, permission: str | None, fn: Callable[[StaffUser], Any]) -> Response:
        user = await srv.guarded(request, permission)
        if isinstance(user, Response):
            return user
        got = await srv.run(fn, user)
        resp = got if isinstance(got, Response) else _json(200, got)
        await srv.audit(request, user, 200)
        return resp

    @app.post("/session", response_model=Me, responses=_errors(400, 401, 403, 429), openapi_extra=_SESSION_BODY,
              tags=["staff"])
    async def sign_in(request: Request) -> Response:
        """Sign in to the console: a session cookie, and the CSRF token its state changes carry."""
        why = srv.same_origin(request)
        if why is not None:
            return _json(403, {"error": why})
        if srv.staff is None:
            return _json(400, {"error": "this gateway has no staff accounts (gateway.staff_users_file)"})
        client = request.client.host if request.client else "-"
        if srv.limiter.over(client):
            srv.limiter.count_limited()
            return _json(429, {"error": "too many refused requests; try again later"})
        raw = await request.body()
        try:
            body = json.loads(raw[:MAX_BODY]) if raw.strip() else {}
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _json(400, {"error": 'body must be {"token": …} or {"name": …, "password": …}'})
        staff = srv.staff
        token, name, password = body.get("token"), body.get("name"), body.get("password")
        try:
            if isinstance(token, str) and token:
                user = await srv.run(staff.authenticate, token)
            elif isinstance(name, str) and isinstance(password, str) and name and password:
                user = await srv.run(staff.check_password, name, password)
            else:
                return _json(400, {"error": 'body must be {"token": …} or {"name": …, "password": …}'})
        except StaffError as exc:
            return _json(500, {"error": f"staff accounts file is invalid: {exc}"})
        if user is None:
            srv.limiter.hit(client)
            await srv.audit(request, None, 401)
            return _json(401, {"error": "unknown name, password or token"})
        csrf = secrets.token_urlsafe(24)
        resp = _json(200, {"name": user.name, "role": user.role, "team": user.team, "csrf": csrf})
        resp.set_cookie(SESSION_COOKIE, srv.sessions.dumps({"n": user.name, "c": csrf}), max_age=SESSION_TTL_S,
                        httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/")
        await srv.audit(request, user, 200)
        return resp

    @app.delete("/session", response_model=Me, responses=_errors(*_GUARDED), tags=["staff"])
    async def sign_out(request: Request) -> Response:
        user = await srv.guarded(request, None)
        if isinstance(user, Response):
            return user
        why = srv.csrf_refused(request)
        if why is not None:
            await srv.audit(request, user, 403)
            return _json(403, {"error": why})
        resp = _json(200, {"name": user.name, "role": user.role, "team": user.team, "csrf": None})
        resp.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        await srv.audit(request, user, 200)
        return resp

    @app.get("/me", response_model=Me, responses=_errors(*_GUARDED), tags=["staff"])
    async def me(request: Request) -> Response:
        return await simple(request, None, lambda u: {"name": u.name, "role": u.role, "team": u.team,
                                                     "csrf": getattr(request.state, "csrf", None)})

    @app.get("/metrics", response_class=Response, responses={200: _TEXT, **_errors(*_GUARDED)},
             tags=["operations"])
    async def metrics(request: Request) -> Response:
        return await simple(request, "metrics:read",
                            lambda u: Response(api.metrics_text(), media_type=CONTENT_TYPE_LATEST))

    @app.get("/stats", response_model=dict[str, Any], responses=_errors(*_GUARDED), tags=["operations"])
    async def stats(request: Request) -> Response:
        return await simple(request, "metrics:read", lambda u: api.stats())

    @app.get("/devices", response_model=list[dict[str, Any]], responses=_errors(*_GUARDED), tags=["devices"])
    async def devices(request: Request) -> Response:
        return await simple(request, "devices:read", lambda u: srv.scoped(u, api.devices()))

    @app.get("/audit", response_model=list[dict[str, Any]], responses=_errors(*_GUARDED), tags=["admin"])
    async def audit(request: Request) -> Response:
        return await simple(request, "audit:read", lambda u: api.access_log())

    @app.get("/alerts", response_model=list[Alert], responses=_errors(*_GUARDED), tags=["alerts"])
    async def alerts(request: Request, kind: str | None = None, status: str | None = None,
                     open: str | None = None) -> Response:
        """Open alerts first, newest first; a technician sees device alerts only (no residents)."""
        def read(user: StaffUser) -> list[dict[str, Any]]:
            rows = api.alerts(kind=kind, status=status, open_only=open in ("1", "true"))  # filtered in SQL
            if not user.may("alerts:read"):
                rows = [a for a in rows if a["kind"] != "fall"]
            rows = srv.scoped(user, rows)
            rows.sort(key=lambda a: (a["status"] != "raised", -int(a["raised_ms"])))
            return rows
        return await simple(request, "device_alerts:read", read)

    @app.get("/planning", response_model=list[dict[str, Any]], responses=_errors(*_GUARDED), tags=["alerts"])
    async def planning(request: Request, since_ms: str | None = None) -> Response:
        since = int(since_ms) if since_ms and since_ms.isascii() and since_ms.isdigit() else 0
        return await simple(request, "alerts:read", lambda u: srv.scoped(u, api.planning(since)))

    @app.get("/alerts/{alert_id}", response_model=AlertHistory, responses=_errors(*_GUARDED, 404),
             tags=["alerts"])
    async def alert_history(request: Request, alert_id: str) -> Response:
        user = await srv.guarded(request, "alerts:read")
        if isinstance(user, Response):
            return user
        got = await srv.run(api.alert_history, alert_id)
        if got and not await srv.run(srv.in_scope, user, got["site_id"]):
            await srv.audit(request, user, 403)
            return _json(403, {"error": "this alert belongs to another team's site"})
        await srv.audit(request, user, 200 if got else 404)
        return _json(200, got) if got else _json(404, {"error": "no such alert"})

    async def act(request: Request, alert_id: str, action: str) -> Response:
        checked = await srv.post_guarded(request, "alerts:act")
        if isinstance(checked, Response):
            return checked
        user, body = checked
        claimed = str(body.get("by", "")).strip()[:80]
        outcome, note = body.get("outcome"), body.get("note")
        if outcome is not None and outcome not in OUTCOMES:
            return _json(400, {"error": f"outcome must be one of {', '.join(OUTCOMES)}"})
        if note is not None and not isinstance(note, str):
            return _json(400, {"error": "note must be a string"})
        # an authenticated person acts as themselves; only an anonymous/API caller names the actor
        actor = claimed if user.service else user.name
        if not actor:
            return _json(400, {"error": 'say who acts: {"by": "name"}'})
        if user.team is not None:
            current = await srv.run(api.alert_history, alert_id)
            if current is not None and not await srv.run(srv.in_scope, user, current["site_id"]):
                await srv.audit(request, user, 403)
                return _json(403, {"error": "this alert belongs to another team's site"})
        try:
            alert = await srv.run(api.transition, alert_id, action, actor, time.time_ns() // 1_000_000,
                                  via="console" if action == "acknowledge" else None,
                                  outcome=outcome if action == "clear" else None,
                                  note=note if action == "clear" else None)
        except StateError as exc:
            await srv.audit(request, user, 409)
            return _json(409, {"error": str(exc)})
        if alert is None:
            await srv.audit(request, user, 404)
            return _json(404, {"error": "no such alert"})
        await srv.audit(request, user, 200)
        return _json(200, alert)

    act_responses = _errors(*_GUARDED, 400, 404, 409)

    @app.post("/alerts/{alert_id}/ack", response_model=Alert, responses=act_responses, openapi_extra=_ACTION_BODY,
              tags=["alerts"])
    async def ack(request: Request, alert_id: str) -> Response:
        return await act(request, alert_id, "acknowledge")

    @app.post("/alerts/{alert_id}/clear", response_model=Alert, responses=act_responses,
              openapi_extra=_ACTION_BODY, tags=["alerts"])
    async def clear(request: Request, alert_id: str) -> Response:
        return await act(request, alert_id, "clear")

    @app.post("/alerts/{alert_id}/resolve", response_model=Alert, responses=act_responses,
              openapi_extra=_ACTION_BODY, tags=["alerts"])
    async def resolve(request: Request, alert_id: str) -> Response:
        return await act(request, alert_id, "clear")

    async def ack_link(request: Request, token: str, use: bool) -> Response:
        """An acknowledge link: no sign-in, the signed single-use token is the key. A GET only
        shows what it would do (mail scanners and link previews fetch links); the POST acts."""
        res = await srv.run(api.ack_link, token, use)
        await srv.audit(request, None, res.status, f"/ack/{res.alert_id or '?'}")
        if "text/html" in request.headers.get("accept", "") or not use:
            form = _ACK_FORM.format(button=html.escape(res.button)) if res.status == 200 and not use else ""
            page = _ACK_PAGE.format(lang=html.escape(res.lang), title=html.escape(res.title),
                                    message=html.escape(res.message), form=form)
            return Response(page, res.status, media_type="text/html; charset=utf-8", headers={
                "Content-Security-Policy":
                    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"})
        return _json(res.status, {"status": res.status, "message": res.message, "alert_id": res.alert_id})

    link_responses: dict[int | str, dict[str, Any]] = {
        code: {"description": "the page (text/html) or, for a POST without Accept: text/html, JSON",
               "content": {"text/html": {"schema": {"type": "string"}},
                           "application/json": {"schema": AckLinkAnswer.model_json_schema()}}}
        for code in (200, 400, 403, 404, 409, 410)}

    @app.get("/ack/{token}", response_class=Response, responses=link_responses, tags=["paging"])
    async def describe_link(request: Request, token: str) -> Response:
        return await ack_link(request, token, use=False)

    @app.post("/ack/{token}", response_class=Response, responses=link_responses, tags=["paging"])
    async def use_link(request: Request, token: str) -> Response:
        async for _ in request.stream():  # the form's (empty) body
            pass
        return await ack_link(request, token, use=True)

    @app.post("/push/subscriptions", response_model=PushAnswer, responses=_errors(*_GUARDED, 400, 404),
              openapi_extra=_PUSH_BODY, tags=["paging"])
    async def subscribe(request: Request) -> Response:
        """Keep a phone's push subscription for the signed-in person (a service caller names the
        person); the person must be in the paging roster, so nobody subscribes to others' alerts."""
        checked = await srv.post_guarded(request, "alerts:act")
        if isinstance(checked, Response):
            return checked
        user, body = checked
        try:
            sub = body.get("subscription", body)
            person = str(body.get("person", "")) if user.service else user.name
            ok = (str(sub["endpoint"]).startswith("https://") or srv.open_dev) and \
                bool(sub["keys"]["p256dh"]) and bool(sub["keys"]["auth"])
        except (ValueError, KeyError, TypeError, AttributeError):
            ok, sub = False, None
        if not ok or not isinstance(sub, dict):
            return _json(400, {"error": "body must be a Web Push subscription: endpoint (https), "
                                        "keys.p256dh, keys.auth"})
        status = await srv.run(api.add_push_subscription, person, sub)
        await srv.audit(request, user, status)
        return _json(status, {"person": person} if status == 200 else
                     {"error": f"{person!r} is not in the paging roster ([[gateway.paging.people]])"})

    app.include_router(console_routes.router(srv))  # residents, planning, an alert's "since"
    app.include_router(privacy_router(srv))  # export, erasure, the audit logs (gateway/privacy_routes.py)
    return app


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document the server serves at ``/openapi.json`` (committed as docs/openapi.json)."""
    srv = HttpServer.__new__(HttpServer)  # the routes read the server only when a request comes
    srv.api = None  # type: ignore[assignment]
    return build_app(srv).openapi()


if __name__ == "__main__":  # python -m fallwatch.gateway.http > docs/openapi.json
    print(json.dumps(openapi_document(), indent=2, sort_keys=True))
