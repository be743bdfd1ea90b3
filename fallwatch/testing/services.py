"""Private Mosquitto and InfluxDB 1.x processes on free loopback ports.

Tests, benchmarks and the demo start their own brokers and databases, each with its
own config and a temporary data directory, so they never touch (or depend on) a
service that happens to run on the machine. Both are Debian's packages
(``apt-get install mosquitto influxdb``); ``scripts/ensure-services.sh`` installs them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests


class ServiceError(RuntimeError):
    """A service binary is missing or did not come up."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def can_connect(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port`` right now."""
    try:
        socket.create_connection((host, port), 0.2).close()
        return True
    except OSError:
        return False


def _wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"process exited with {proc.returncode} before port {port} opened")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise ServiceError(f"port {port} did not open within {timeout} s")


def _listens(proc: subprocess.Popen[bytes], port: int) -> bool:
    """Whether ``proc`` itself holds the listening socket on ``port``: a free port picked by
    :func:`free_port` can be taken by another process (another test worker's service) before
    ours binds it, and then a connect succeeds to the wrong server."""
    import psutil

    try:
        conns = psutil.Process(proc.pid).net_connections(kind="tcp")
    except psutil.Error:
        return False
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns)


#: how often a service on picked ports is tried on fresh ones when the picked ones were taken
_PORT_TRIES = 3


def find_binary(name: str, extra: tuple[str, ...] = ("/usr/sbin", "/usr/bin")) -> str:
    found = shutil.which(name)
    if found:
        return found
    for d in extra:
        p = Path(d) / name
        if p.exists():
            return str(p)
    raise ServiceError(f"{name} not found: install it with 'apt-get install -y mosquitto influxdb' "
                       "(scripts/ensure-services.sh does this)")


class _Managed:
    """A private service process with a temporary work dir: stop/close and ``with`` support."""

    proc: subprocess.Popen[bytes] | None
    _tmp: tempfile.TemporaryDirectory[str] | None
    _stop_timeout_s = 10.0

    def start(self) -> _Managed:  # pragma: no cover - overridden
        raise NotImplementedError

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Mosquitto(_Managed):
    """A private Mosquitto broker.

    ``max_queued_messages 0`` (no limit) and a large ``max_queued_bytes`` bound are set
    on purpose: Mosquitto's default of 1000 queued messages silently drops QoS 1
    messages for a lagging subscriber, which would break "nothing lost".
    """

    port: int = 0
    passwords: dict[str, str] | None = None  # username -> password; None = anonymous allowed
    acl: str | None = None  # text of an ACL file
    extra_conf: str = ""
    workdir: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _write_conf(self) -> Path:
        assert self.workdir is not None
        lines = [
            # Started as root, Mosquitto drops to the 'mosquitto' user, which cannot use our
            # private temp dir (persistence, password file, log). Stay the user who started it.
            *(["user root"] if os.geteuid() == 0 else []),
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {self.workdir}/",
            "autosave_interval 1",
            "max_queued_messages 0",
            "max_queued_bytes 1073741824",
            "max_inflight_messages 0",
            "persistent_client_expiration 7d",
            f"log_dest file {self.workdir}/mosquitto.log",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if self.passwords is None:
            lines.append("allow_anonymous true")
        else:
            pwfile = self.workdir / "passwd"
            pwfile.write_text("")
            passwd = find_binary("mosquitto_passwd")
            for user, pw in self.passwords.items():
                subprocess.run([passwd, "-b", str(pwfile), user, pw], check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        if self.acl is not None:
            aclfile = self.workdir / "acl"
            aclfile.write_text(self.acl)
            lines.append(f"acl_file {aclfile}")
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n" + self.extra_conf)
        return conf

    def start(self) -> Mosquitto:
        binary = find_binary("mosquitto")
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fw-mosq-")
            self.workdir = Path(self._tmp.name)
        picked = not self.port
        for attempt in range(1, _PORT_TRIES + 1):
            if picked:
                self.port = free_port()
            conf = self._write_conf()
            self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
            try:
                _wait_port(self.port, 10, self.proc)
                if not picked or _listens(self.proc, self.port):
                    return self
                error = ServiceError(f"port {self.port} was taken by another process")
            except ServiceError as exc:
                error = exc
            self.stop()
            if not picked or attempt == _PORT_TRIES:
                raise error
        raise AssertionError("unreachable")

    def restart(self) -> None:
        self.stop()
        # same port, same persistence dir: sessions and queued messages survive
        deadline = time.monotonic() + 10
        while True:
            try:
                self.start()
                return
            except ServiceError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def __enter__(self) -> Mosquitto:
        return self.start()


@dataclass
class InfluxDB1(_Managed):
    """A private InfluxDB 1.x (Debian's ``influxdb`` package) with its own data dirs."""

    port: int = 0
    workdir: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _rpc_port: int = field(default=0, init=False)
    _stop_timeout_s = 15.0
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _write_conf(self) -> Path:
        assert self.workdir is not None
        conf = self.workdir / "influxdb.conf"
        conf.write_text(f"""
reporting-disabled = true
bind-address = "127.0.0.1:{self._rpc_port}"
[meta]
  dir = "{self.workdir}/meta"
[data]
  dir = "{self.workdir}/data"
  wal-dir = "{self.workdir}/wal"
  query-log-enabled = false
  wal-fsync-delay = "0s"
[http]
  enabled = true
  bind-address = "127.0.0.1:{self.port}"
  auth-enabled = false
  log-enabled = false
  max-body-size = 0
[monitor]
  store-enabled = false
[continuous_queries]
  enabled = true
  log-enabled = false
[logging]
  level = "warn"
""")
        return conf

    def start(self) -> InfluxDB1:
        binary = find_binary("influxd")
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fw-influx-")
            self.workdir = Path(self._tmp.name)
        picked = not self.port
        for attempt in range(1, _PORT_TRIES + 1):
            if picked:
                self.port, self._rpc_port = free_port(), free_port()
            elif not self._rpc_port:
                self._rpc_port = free_port()
            try:
                return self._start_once(binary)
            except ServiceError:
                self.stop()
                if not picked or attempt == _PORT_TRIES:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self, binary: str) -> InfluxDB1:
        assert self.workdir is not None
        conf = self._write_conf()
        env = dict(os.environ, INFLUXDB_DATA_QUERY_LOG_ENABLED="false")
        self.proc = subprocess.Popen([binary, "-config", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceError(f"influxd exited with {self.proc.returncode}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/ping", timeout=0.5).status_code == 204:
                    if not _listens(self.proc, self.port):
                        raise ServiceError(f"port {self.port} was taken by another process")
                    return self
            time.sleep(0.1)
        raise ServiceError("influxd did not answer /ping within 60 s")

    def query(self, q: str, db: str | None = None) -> list[dict[str, Any]]:
        """Run InfluxQL and return the ``series`` list of the first result (test helper)."""
        params = {"q": q, "epoch": "ms"}
        if db:
            params["db"] = db
        r = requests.post(f"{self.url}/query", params=params, timeout=10)
        r.raise_for_status()
        res = r.json()["results"][0]
        if "error" in res:
            raise ServiceError(res["error"])
        return list(res.get("series", []))

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> InfluxDB1:
        return self.start()


def postgres_database(name: str) -> str:
    """A fresh PostgreSQL database for one test, on the server the machine already runs
    (``FALLWATCH_TEST_POSTGRES``, default the local trust-auth one); a database a previous run
    left is dropped first. Skips the calling test when no server answers."""
    import psycopg
    import pytest

    base = os.environ.get("FALLWATCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
    db = f"fw_{name.replace('-', '_')}"[:60]
    try:
        with psycopg.connect(base, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}"')
            conn.execute(f'CREATE DATABASE "{db}"')
    except psycopg.Error as exc:
        pytest.skip(f"no PostgreSQL at {base}: {exc}")
    return base.rsplit("/", 1)[0] + f"/{db}"
