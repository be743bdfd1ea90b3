"""POSTs over one kept-alive connection, for the gateway's hot HTTP paths (series writes, web hooks).

``requests`` (here on urllib3-future) spent ~1.3 ms of CPU per POST on the project's machine
(environment proxy and ``.netrc`` lookups, hooks, adapters, its HTTP/2-capable backend); the
same request over :mod:`http.client` cost ~0.35 ms, most of it building the request through
``putrequest``/``putheader`` and parsing the response's headers with the :mod:`email`
package. Here the request is written as one buffer and the response is parsed by
``httptools`` (the llhttp parser uvicorn and aiohttp use): ~0.16 ms (issue 16; at 200 msg/s
the gateway makes ~19 series writes a second). llhttp decides what ends a response
(``Content-Length``, chunked, a status without a body, or the server closing) and whether
the connection may be kept alive; nothing of HTTP is parsed by hand.

What ``requests`` takes from the environment is taken once, at start: :meth:`Poster.for_url`
returns None when a proxy is configured for the URL (the caller then keeps ``requests``,
which knows how to go through it), and HTTPS verifies against the same CA bundle
(``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``, else certifi's). Redirects are never followed.
One poster belongs to one thread (no lock).
"""

from __future__ import annotations

import base64
import http.client
import os
import socket
import ssl
import urllib.request
from urllib.parse import urlsplit

import httptools


def basic_auth(username: str, password: str | None) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password or ''}".encode()).decode()


def _header_lines(headers: dict[str, str]) -> bytes:
    """``Name: value`` lines; a name or value that could end the header block is refused
    (as :mod:`http.client` refuses it), so no header can smuggle another."""
    out = []
    for name, value in headers.items():
        if not name or any(ch in name for ch in "\r\n:\0 ") or any(ch in value for ch in "\r\n\0"):
            raise ValueError(f"invalid HTTP header {name!r}")
        out.append(f"{name}: {value}\r\n")
    return "".join(out).encode("latin-1")


def proxied(url: str) -> bool:
    """Whether ``requests`` would send a request for ``url`` through a proxy from the environment.

    The standard library's reading of ``*_proxy`` / ``no_proxy`` answers without importing
    ``requests`` (~7 MB and 200 modules in every gateway process, issue 16) in the common
    case: no proxy for the scheme, or one the URL bypasses (``requests`` ends its own
    bypass check with the same ``urllib`` function, so it would bypass too). Only when the
    standard library sees a proxy is ``requests`` asked, for its exact verdict (its
    ``no_proxy`` also knows CIDR ranges).
    """
    u = urlsplit(url)
    found = urllib.request.getproxies_environment()
    if not (found.get(u.scheme) or found.get("all")):
        return False
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]  # CPython has it, typeshed not
    if u.hostname and bypass(u.netloc.rpartition("@")[2], found):
        return False
    import requests.utils

    return bool(requests.utils.get_environ_proxies(url))


class _Response:
    """What the parser reports for one response (httptools calls these methods)."""

    __slots__ = ("body", "complete", "framed", "headers_done", "keep_alive", "parser")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []
        self.complete = False
        self.headers_done = False
        #: llhttp's verdict, read once the headers are in (after the message it has reset)
        self.keep_alive = False
        #: the body's end is marked (a length or chunked): the server closing before it is an error
        self.framed = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.keep_alive = self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


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
        default_port = 443 if context is not None else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._host = host if self.port in (None, default_port) else f"{host}:{self.port}"
        self._fixed = _header_lines({"Host": self._host, **self.headers})
        self._sock: socket.socket | None = None

    @classmethod
    def for_url(cls, url: str, timeout_s: float, headers: dict[str, str] | None = None) -> Poster | None:
        """A poster for ``url``; None when the environment routes it through a proxy."""
        if proxied(url):
            return None
        context = None
        if urlsplit(url).scheme == "https":
            import certifi

            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or certifi.where()
            context = ssl.create_default_context(cafile=bundle)
        return cls(url, timeout_s, headers, context)

    def _connect(self) -> socket.socket:
        port = self.port or (443 if self.context is not None else 80)
        sock = socket.create_connection((self.host, port), timeout=self.timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one write per request anyway
            if self.context is not None:
                sock = self.context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        return sock

    def post(self, body: bytes, headers: dict[str, str] | None = None, path: str | None = None) -> tuple[int, str]:
        """(status, body text). A kept-alive connection the server closed while idle is reopened
        once at once; any other failure (a timeout too) raises ``OSError`` /
        ``http.client.HTTPException`` for the caller to map (callers' requests are idempotent:
        a series write lands on the same series and time, a web hook carries its alert id)."""
        target = path or self.path
        if any(ch in target for ch in " \r\n\0"):
            raise ValueError(f"invalid request path {target!r}")
        fixed = _header_lines({"Host": self._host, **self.headers, **headers}) if headers else self._fixed
        head = (f"POST {target} HTTP/1.1\r\n".encode("ascii") + fixed
                + f"Content-Length: {len(body)}\r\n\r\n".encode("ascii"))
        for attempt in (0, 1):
            fresh = self._sock is None
            if self._sock is None:
                self._sock = self._connect()
            try:
                return self._exchange(self._sock, head + body)
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if fresh or attempt or isinstance(exc, TimeoutError) or not isinstance(exc, _Stale):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _exchange(self, sock: socket.socket, request: bytes) -> tuple[int, str]:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _Stale(f"connection closed before the request was sent: {exc}") from None
        got = _Response()
        parser = got.parser
        received = False
        try:
            while not got.complete:
                try:
                    data = sock.recv(65_536)
                except ConnectionResetError as exc:
                    if not received:
                        raise _Stale(f"connection reset before a response: {exc}") from None
                    raise
                if not data:
                    if got.headers_done and not got.framed:
                        break  # a body delimited by the server closing the connection: complete
                    if not received:
                        raise _Stale("the server closed the connection before a response")
                    raise http.client.IncompleteRead(b"".join(got.body))
                received = True
                try:
                    parser.feed_data(data)
                except httptools.HttpParserUpgrade:  # pragma: no cover - nothing here asks to upgrade
                    raise http.client.HTTPException("unexpected protocol upgrade") from None
                except httptools.HttpParserError as exc:
                    raise http.client.HTTPException(f"malformed HTTP response: {exc}") from None
            status = int(parser.get_status_code())
        finally:
            del got.parser  # the parser and its callbacks refer to each other: no cycle left for the GC
        if not got.complete or not got.keep_alive:
            self.close()  # "Connection: close", HTTP/1.0 or a close-delimited body
        return status, b"".join(got.body).decode("utf-8", "replace")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class _Stale(http.client.RemoteDisconnected):
    """A kept-alive connection the server had closed: the request never reached it, send again."""
