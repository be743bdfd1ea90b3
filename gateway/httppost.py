"""POSTs over one kept-alive :mod:`http.client` connection, for the gateway's hot HTTP paths.

``requests`` (here on urllib3-future) spent ~1.3 ms of CPU per POST on the project's machine
(environment proxy and ``.netrc`` lookups, hooks, adapters, its HTTP/2-capable backend)
against ~0.16 ms for the same request over :mod:`http.client`. At 200 msg/s the gateway
makes ~25 series writes and 5 web-hook calls a second, so that was a large share of its
CPU there (issue 16). What ``requests`` takes from the environment is taken once, at start:
:meth:`Poster.for_url` returns None when a proxy is configured for the URL (the caller then
keeps ``requests``, which knows how to go through it), and HTTPS verifies against the same
CA bundle (``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``, else certifi's). Redirects are
never followed. One poster belongs to one thread (no lock).
"""

from __future__ import annotations

import base64
import http.client
import os
import ssl
from urllib.parse import urlsplit


def basic_auth(username: str, password: str | None) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password or ''}".encode()).decode()


class Poster:
    """POSTs to one host over one kept-alive connection."""

    def __init__(self, url: str, timeout_s: float, headers: dict[str, str] | None = None,
                 context: ssl.SSLContext | None = None) -> None:
        u = urlsplit(url)
        self.host, self.port = u.hostname or "localhost", u.port
        self.path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        self.timeout_s = timeout_s
        self.context = context
        self.headers = dict(headers or {})
        self._conn: http.client.HTTPConnection | None = None

    @classmethod
    def for_url(cls, url: str, timeout_s: float, headers: dict[str, str] | None = None) -> Poster | None:
        """A poster for ``url``; None when the environment routes it through a proxy."""
        import requests.utils

        if requests.utils.get_environ_proxies(url):
            return None
        context = None
        if urlsplit(url).scheme == "https":
            import certifi

            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()
            context = ssl.create_default_context(cafile=bundle)
        return cls(url, timeout_s, headers, context)

    def _connect(self) -> http.client.HTTPConnection:
        if self.context is not None:
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout_s, context=self.context)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)

    def post(self, body: bytes, headers: dict[str, str] | None = None, path: str | None = None) -> tuple[int, str]:
        """(status, body text). A kept-alive connection the server closed while idle is reopened
        once at once; any other failure (a timeout too) raises ``OSError`` /
        ``http.client.HTTPException`` for the caller to map (callers' requests are idempotent:
        a series write lands on the same series and time, a web hook carries its alert id)."""
        hdrs = {**self.headers, **headers} if headers else self.headers
        for attempt in (0, 1):
            fresh = self._conn is None
            if self._conn is None:
                self._conn = self._connect()
            try:
                self._conn.request("POST", path or self.path, body=body, headers=hdrs)
                r = self._conn.getresponse()
                text = r.read().decode("utf-8", "replace")
                if r.will_close:
                    self.close()
                return r.status, text
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if fresh or attempt or isinstance(exc, TimeoutError):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
