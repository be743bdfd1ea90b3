"""The gateway's kept-alive POST client (gateway/httppost.py): responses read with httptools.

Against the real InfluxDB 1.x (what series writes meet: 204, error bodies, keep-alive) and
against a tiny raw-socket server for what InfluxDB never sends but a web-hook receiver may
(chunked bodies, HTTP/1.0 bodies ended by closing the connection, ``Connection: close``, an
idle connection closed by the server, truncated and malformed responses).
"""

from __future__ import annotations

import http.client
import socket
import threading
from collections.abc import Callable, Iterator

import pytest
import requests

from fallwatch.gateway.httppost import Poster
from fallwatch.testing.services import InfluxDB1

Handler = Callable[[socket.socket, bytes], bool]  # (connection, request) -> keep the connection open


class RawServer:
    """Accepts connections; for each request read, ``handler`` writes whatever bytes it likes."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, rest = buf.partition(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                while len(rest) < length:
                    rest += conn.recv(65536)
                request, buf = head + b"\r\n\r\n" + rest[:length], rest[length:]
                self.requests.append(request)
                if not self.handler(conn, request):
                    return

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw() -> Iterator[Callable[[Handler], RawServer]]:
    servers: list[RawServer] = []

    def make(handler: Handler) -> RawServer:
        servers.append(RawServer(handler))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _reply(data: bytes, keep: bool = True) -> Handler:
    def handler(conn: socket.socket, _: bytes) -> bool:
        conn.sendall(data)
        return keep
    return handler


def test_influxdb_writes_keep_one_connection_and_errors_come_back_with_their_body(influxdb: InfluxDB1) -> None:
    requests.post(f"{influxdb.url}/query", params={"q": "CREATE DATABASE httppost"}, timeout=10)
    p = Poster(f"{influxdb.url}/write?db=httppost&precision=ms", 10.0, {"Content-Type": "text/plain"})
    try:
        for i in range(3):
            assert p.post(f"m,t=a v={i} {1_700_000_000_000 + i}".encode()) == (204, "")
        sock = p._sock
        assert sock is not None
        assert p.post(b"m,t=a v=9 1700000000009") == (204, "")
        assert p._sock is sock  # kept alive: the same connection for every write
        status, text = p.post(b"m,t=a v=\"text\" 1700000000010")  # v was a float: a field-type conflict
        assert status == 400 and "conflict" in text
        status, text = p.post(b"m v=1", path="/write?db=no_such_db")
        assert status == 404 and "database not found" in text
        assert p.post(b"m,t=a v=10 1700000000011") == (204, "")  # still usable after errors
    finally:
        p.close()
    r = requests.get(f"{influxdb.url}/query", params={"db": "httppost", "q": "SELECT count(v) FROM m"}, timeout=10)
    assert r.json()["results"][0]["series"][0]["values"][0][1] == 5


def test_request_bytes_carry_host_headers_and_length(raw: Callable[[Handler], RawServer]) -> None:
    srv = raw(_reply(b"HTTP/1.1 204 No Content\r\n\r\n"))
    p = Poster(srv.url("/a?b=c"), 5.0, {"Authorization": "Basic eDp5"})
    assert p.post(b"hello", {"X-Sig": "s1"}) == (204, "")
    head, _, body = srv.requests[0].partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /a?b=c HTTP/1.1"
    assert {b"Host: 127.0.0.1:%d" % srv.port, b"Authorization: Basic eDp5", b"X-Sig: s1",
            b"Content-Length: 5"} <= set(lines[1:])
    assert body == b"hello"


def test_chunked_body_is_read_whole_and_the_connection_kept(raw: Callable[[Handler], RawServer]) -> None:
    srv = raw(_reply(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"))
    p = Poster(srv.url(), 5.0)
    assert p.post(b"x") == (200, "hello, world")
    assert p.post(b"y") == (200, "hello, world")
    assert srv.connections == 1


def test_http10_body_ended_by_close_then_a_new_connection(raw: Callable[[Handler], RawServer]) -> None:
    # what Python's http.server sends by default: no length, the body ends when the server closes
    srv = raw(_reply(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nreceived", keep=False))
    p = Poster(srv.url(), 5.0)
    assert p.post(b"x") == (200, "received")
    assert p._sock is None  # not kept: HTTP/1.0
    assert p.post(b"y") == (200, "received")
    assert srv.connections == 2


def test_connection_close_header_is_honoured(raw: Callable[[Handler], RawServer]) -> None:
    srv = raw(_reply(b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbusy",
                     keep=False))
    p = Poster(srv.url(), 5.0)
    assert p.post(b"x") == (503, "busy")
    assert p._sock is None
    assert p.post(b"y") == (503, "busy")
    assert srv.connections == 2


def test_an_idle_connection_the_server_closed_is_reopened_once(raw: Callable[[Handler], RawServer]) -> None:
    # answers, then closes without saying so (an idle timeout): the next post finds it dead
    srv = raw(_reply(b"HTTP/1.1 204 No Content\r\n\r\n", keep=False))
    p = Poster(srv.url(), 5.0)
    assert p.post(b"x") == (204, "")
    for _ in range(3):
        assert p.post(b"y") == (204, "")  # sent again on a fresh connection, not an error
    assert srv.connections == 4
    assert len(srv.requests) == 4  # each request reached the server once


def test_a_fresh_connection_closed_without_an_answer_is_an_error(raw: Callable[[Handler], RawServer]) -> None:
    srv = raw(lambda conn, req: False)  # reads the request, closes, never answers
    p = Poster(srv.url(), 5.0)
    with pytest.raises(http.client.RemoteDisconnected):
        p.post(b"x")
    assert len(srv.requests) == 1  # not re-sent on a fresh connection


def test_truncated_and_malformed_responses_raise(raw: Callable[[Handler], RawServer]) -> None:
    short = raw(_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", keep=False))
    with pytest.raises(http.client.IncompleteRead):
        Poster(short.url(), 5.0).post(b"x")
    bad = raw(_reply(b"SMTP ready\r\n\r\n"))
    with pytest.raises(http.client.HTTPException):
        Poster(bad.url(), 5.0).post(b"x")


def test_a_server_that_never_answers_times_out(raw: Callable[[Handler], RawServer]) -> None:
    hold = threading.Event()
    srv = raw(lambda conn, req: hold.wait(10) and False)
    try:
        with pytest.raises(TimeoutError):
            Poster(srv.url(), 0.3).post(b"x")
        assert len(srv.requests) == 1  # a timeout is never re-sent by the poster
    finally:
        hold.set()


def test_header_and_path_injection_are_refused() -> None:
    with pytest.raises(ValueError):
        Poster("http://127.0.0.1:9/x", 1.0, {"X-A": "a\r\nX-B: b"})
    p = Poster("http://127.0.0.1:9/x", 1.0)
    with pytest.raises(ValueError):
        p.post(b"x", {"X-Sig": "s\nInjected: 1"})
    with pytest.raises(ValueError):
        p.post(b"x", path="/x HTTP/1.1\r\nHost: evil")


def test_proxy_from_the_environment_is_left_to_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    from fallwatch.gateway.httppost import proxied

    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                 "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert not proxied("http://influx.local:8086/write")
    assert Poster.for_url("http://influx.local:8086/write", 1.0) is not None
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.local:3128")
    assert proxied("http://influx.local:8086/write")
    assert Poster.for_url("http://influx.local:8086/write", 1.0) is None  # requests goes through the proxy
    assert not proxied("https://hooks.example.org/x")  # no proxy for https
    monkeypatch.setenv("NO_PROXY", "influx.local,10.0.0.0/8")
    assert not proxied("http://influx.local:8086/write")  # bypassed (the standard library says so)
    assert not proxied("http://10.1.2.3:8086/write")  # bypassed (requests says so: a CIDR range)
    assert proxied("http://other.local/write")


def test_the_gateway_does_not_load_requests_or_apprise() -> None:
    """~10 MB of each gateway process (issue 16: peak RSS ≤ 95 MB): the series store, web hooks
    and the channel registry work without them; only a proxy or an apprise channel loads them."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import fallwatch.gateway.app, fallwatch.gateway.cli\n"
            "import fallwatch.gateway.channels.webhook, fallwatch.gateway.channels.apprise_channel\n"
            "from fallwatch.config import InfluxConfig\n"
            "from fallwatch.gateway.sinks.influx1 import Influx1Sink\n"
            "Influx1Sink(InfluxConfig(url='http://127.0.0.1:9', version=1, database='x')).close()\n"
            "print(sorted(m for m in ('requests', 'apprise', 'urllib3') if m in sys.modules))\n")
    env = {k: v for k, v in __import__("os").environ.items() if not k.lower().endswith("_proxy")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, check=True)
    assert out.stdout.strip() == "[]"
