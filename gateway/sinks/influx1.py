"""InfluxDB 1.x over its HTTP API (``/write`` + ``/query``); line protocol from influxdb-client's serializer.

Writes go over one kept-alive :mod:`http.client` connection instead of a ``requests``
session: ``requests`` spent ~1.3 ms of CPU per POST on this machine (environment proxy and
``.netrc`` lookups, hooks, adapters) against ~0.16 ms for the same request over
``http.client`` (issue 16: at 200 msg/s the gateway makes ~25 writes a second, so that was
about a third of its CPU). What ``requests`` would have taken from the environment is taken
once, at start: a proxy configured for the store's URL keeps the ``requests`` path, and
HTTPS verifies against the same CA bundle (``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``, else
certifi's). Queries (set-up, counts) are rare and stay on ``requests``.
"""

from __future__ import annotations

import base64
import http.client
import os
import ssl
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import requests

from fallwatch.config import InfluxConfig
from fallwatch.gateway.points import SeriesPoint, to_line
from fallwatch.gateway.sinks import SINKS, SeriesSink, SinkError
from fallwatch.plugins import PluginConfig


class Influx1SinkConfig(PluginConfig):
    type: Literal["influxdb-v1"] = "influxdb-v1"


@SINKS.register(Influx1SinkConfig)
def _make(_: Influx1SinkConfig, cfg: InfluxConfig) -> SeriesSink:
    return Influx1Sink(cfg)


class Influx1Sink:
    """InfluxDB 1.x over its HTTP API; line protocol from influxdb-client's serializer."""

    name = "influxdb-v1"

    def __init__(self, cfg: InfluxConfig) -> None:
        self.cfg = cfg
        self.base = cfg.url.rstrip("/")
        self.session = requests.Session()
        if cfg.username:
            self.session.auth = (cfg.username, cfg.password or "")
        self._params = {"db": cfg.database, "precision": "ms"}
        if cfg.retention_policy != "autogen":
            self._params["rp"] = cfg.retention_policy
        self._writer = _Poster.for_url(f"{self.base}/write?{urlencode(self._params)}", cfg)

    def query(self, q: str, *, db: bool = True) -> list[dict[str, Any]]:
        params = {"q": q, "epoch": "ms"}
        if db:
            params["db"] = self.cfg.database
        try:
            r = self.session.post(f"{self.base}/query", params=params, timeout=self.cfg.timeout_s)
        except requests.RequestException as exc:
            raise SinkError(f"query failed: {exc}", retryable=True) from None
        if r.status_code >= 300:
            raise SinkError(f"query HTTP {r.status_code}: {r.text[:300]}", retryable=r.status_code >= 500)
        res = r.json()["results"][0]
        if "error" in res:
            raise SinkError(f"query error: {res['error']}", retryable=False)
        return list(res.get("series", []))

    def setup(self) -> None:
        """Create the database and (if not autogen) a 30-day raw retention policy."""
        self.query(f'CREATE DATABASE "{self.cfg.database}"', db=False)
        rp = self.cfg.retention_policy
        if rp != "autogen":
            existing = self.query(f'SHOW RETENTION POLICIES ON "{self.cfg.database}"', db=False)
            names = {row[0] for s in existing for row in s.get("values", [])}
            if rp not in names:
                self.query(
                    f'CREATE RETENTION POLICY "{rp}" ON "{self.cfg.database}" DURATION 30d REPLICATION 1',
                    db=False,
                )

    def write(self, points: list[SeriesPoint]) -> None:
        if not points:
            return
        body = "\n".join(line for line in map(to_line, points) if line).encode()
        if self._writer is not None:
            status, text = self._writer.post(body)
        else:  # a proxy is configured for the store: requests knows how to go through it
            try:
                r = self.session.post(f"{self.base}/write", params=self._params, data=body,
                                      timeout=self.cfg.timeout_s)
            except requests.RequestException as exc:
                raise SinkError(f"write failed: {type(exc).__name__}: {exc}", retryable=True) from None
            status, text = r.status_code, r.text
        if status == 204:
            return
        retryable = status >= 500 or status in (404, 408, 429)  # 404: database not yet there
        raise SinkError(f"write HTTP {status}: {text[:300]}", retryable=retryable)

    def count(self, measurement: str) -> int:
        series = self.query(f'SELECT count(*) FROM "{measurement}"')
        best = 0
        for s in series:
            for row in s.get("values", []):
                best = max(best, *(int(v) for v in row[1:] if isinstance(v, int | float)))
        return best

    def close(self) -> None:
        self.session.close()
        if self._writer is not None:
            self._writer.close()


class _Poster:
    """POSTs to one URL over one kept-alive connection (one sink per thread, so no lock)."""

    def __init__(self, url: str, cfg: InfluxConfig, context: ssl.SSLContext | None) -> None:
        u = urlsplit(url)
        self.host, self.port = u.hostname or "localhost", u.port
        self.path = u.path + (f"?{u.query}" if u.query else "")
        self.timeout = cfg.timeout_s
        self.context = context
        self.headers = {"Content-Type": "text/plain; charset=utf-8"}
        if cfg.username:
            cred = f"{cfg.username}:{cfg.password or ''}".encode()
            self.headers["Authorization"] = "Basic " + base64.b64encode(cred).decode()
        self._conn: http.client.HTTPConnection | None = None

    @classmethod
    def for_url(cls, url: str, cfg: InfluxConfig) -> _Poster | None:
        """None when the environment routes this URL through a proxy (then requests is used)."""
        if requests.utils.get_environ_proxies(url):
            return None
        context = None
        if urlsplit(url).scheme == "https":
            import certifi

            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()
            context = ssl.create_default_context(cafile=bundle)
        return cls(url, cfg, context)

    def _connect(self) -> http.client.HTTPConnection:
        if self.context is not None:
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self.context)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def post(self, body: bytes) -> tuple[int, str]:
        """(status, body text); a connection the server closed while idle is reopened once at
        (a write is idempotent: the same series and time), any other failure (a timeout too) raises a
        retryable :class:`SinkError`."""
        for attempt in (0, 1):
            fresh = self._conn is None
            if self._conn is None:
                self._conn = self._connect()
            try:
                self._conn.request("POST", self.path, body=body, headers=self.headers)
                r = self._conn.getresponse()
                text = r.read().decode("utf-8", "replace")
                if r.will_close:
                    self.close()
                return r.status, text
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if fresh or attempt or isinstance(exc, TimeoutError):
                    raise SinkError(f"write failed: {type(exc).__name__}: {exc}", retryable=True) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
