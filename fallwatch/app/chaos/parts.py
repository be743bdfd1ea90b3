"""The processes and servers of a chaos run: broker, database, gateways, hubs, staff side.

Everything is real and separate: Mosquitto runs the configuration ``fallwatch gateway
broker-config`` generates (per-device passwords and ACLs, persistence), every gateway
replica and every hub is its own OS process started the way an operator starts it
(``fallwatch gateway run --config``; a hub is ``fallwatch.app.chaos.hub``, the edge agent
with a journal), and the staff side is an SMTP server and a web hook receiver whose
"carer" takes every alert through the link in the page.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psutil
import requests

from fallwatch.testing.receivers import Receiver
from fallwatch.testing.services import ServiceError, _wait_port, find_binary, free_port

log = logging.getLogger("fallwatch.app.chaos")


class Proc:
    """One child process with its own log file; start, SIGKILL, SIGTERM, restart."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path,
                 netns: str | None = None) -> None:
        self.name, self.argv, self.env, self.log_path, self.netns = name, argv, env, log_path, netns
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.pids: list[int] = []

    def start(self) -> Proc:
        argv = ["ip", "netns", "exec", self.netns, *self.argv] if self.netns else self.argv
        with open(self.log_path, "ab") as fh:
            self.popen = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=self.env,
                                          start_new_session=True)
        self.starts += 1
        self.pids.append(self.popen.pid)
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def kill(self) -> None:
        """SIGKILL: no clean-up, no last write (what a power cut or the OOM killer does)."""
        if self.alive:
            assert self.popen is not None
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.alive:
            assert self.popen is not None
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.error("%s did not stop within %.0f s of SIGTERM: killed", self.name, timeout_s)
                self.popen.kill()
                self.popen.wait()

    def sample(self) -> dict[str, float] | None:
        """RSS (MB), open fds and CPU seconds of the running process (for the soak report)."""
        if not self.alive or self.pid is None:
            return None
        try:
            p = psutil.Process(self.pid)
            with p.oneshot():
                cpu = p.cpu_times()
                return {"rss_mb": p.memory_info().rss / 2**20, "fds": float(p.num_fds()),
                        "cpu_s": cpu.user + cpu.system}
        except psutil.Error:
            return None


class Broker:
    """Mosquitto with the generated production config (per-device credentials, ACLs)."""

    def __init__(self, workdir: Path, devices: list[tuple[str, str]], gateways: list[str],
                 extra_listeners: list[str] = ()) -> None:  # type: ignore[assignment]
        from fallwatch.gateway.brokerconf import generate, read_credentials

        self.dir = workdir
        self.port = free_port()
        data = workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        generate(workdir, devices, gateways, tls_dir=str(workdir / "tls"), data_dir=str(data),
                 plain_port=self.port, tls_port=None, log_file=str(workdir / "mosquitto.log"))
        conf = workdir / "mosquitto.conf"
        text = conf.read_text()
        extra = []
        if os.geteuid() == 0:
            # started as root, Mosquitto drops to the 'mosquitto' user, which cannot read this
            # private directory; a production install runs it as that user from the start
            extra.append("user root")
        for addr in extra_listeners:  # a hub in its own network namespace reaches us here
            extra += [f"listener {self.port} {addr}", "use_username_as_clientid true"]
        conf.write_text(text + "\n# added by the chaos suite\n" + "\n".join(extra) + "\n")
        self.conf = conf
        self.creds = read_credentials(workdir)
        self.proc = Proc("mosquitto", [find_binary("mosquitto"), "-c", str(conf)], dict(os.environ),
                         workdir / "stdout.log")

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        deadline = time.monotonic() + 15
        while True:
            self.proc.start()
            try:
                _wait_port(self.port, 10, self.proc.popen)
                return
            except ServiceError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)  # the port may still be held by the previous instance


def postgres_url(name: str) -> str:
    """A fresh PostgreSQL database on the server the machine runs (FALLWATCH_TEST_POSTGRES)."""
    import psycopg

    base = os.environ.get("FALLWATCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
    db = f"fw_chaos_{name}"[:60].replace("-", "_")
    with psycopg.connect(base, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}"')
        conn.execute(f'CREATE DATABASE "{db}"')
    return base.rsplit("/", 1)[0] + f"/{db}"


def drop_postgres(url: str) -> None:
    """Drop a database :func:`postgres_url` made (after the accounting has read it)."""
    import psycopg

    base, db = url.rsplit("/", 1)
    try:
        with psycopg.connect(f"{base}/postgres", autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    except psycopg.Error as exc:
        log.warning("could not drop %s: %s", db, exc)


class Carer(Receiver):
    """The web hook receiver, and the carer behind it who takes every new alert at once by
    POSTing the page's single-use acknowledge link (from another thread, as a phone would).
    A link whose replica is down is tried at the other replica: the links are signed with
    the key in the shared state DB, so any replica honours them."""

    def __init__(self) -> None:
        super().__init__()
        self.acks: dict[str, tuple[int, float]] = {}  # alert id -> (HTTP status, wall time)
        self.gateway_urls: list[str] = []
        self._todo: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._acker = threading.Thread(target=self._ack_loop, daemon=True, name="carer")
        self._acker.start()

    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> int:
        code = super().handle(path, headers, raw)
        with contextlib.suppress(ValueError):
            body = json.loads(raw)
            if body.get("action") in ("raised", "escalated") and body.get("ack_url"):
                self._todo.put((str(body["alert_id"]), str(body["ack_url"])))
        return code

    def _ack_loop(self) -> None:
        while (item := self._todo.get()) is not None:
            aid, url = item
            if aid in self.acks:
                continue
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                status = self._try(url)
                if status is not None:
                    self.acks[aid] = (status, time.time())
                    break
                time.sleep(0.5)

    def _try(self, url: str) -> int | None:
        u = urlparse(url)
        candidates = [url] + [f"{g}{u.path}" for g in self.gateway_urls if not url.startswith(g)]
        for c in candidates:
            try:
                return requests.post(c, timeout=5).status_code
            except requests.RequestException:
                continue
        return None

    def close(self) -> None:
        self._todo.put(None)
        super().close()


def python_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def fallwatch_argv(*args: str) -> list[str]:
    exe = shutil.which("fallwatch", path=str(Path(sys.executable).parent))
    return [exe, *args] if exe else python_argv("fallwatch.cli", *args)


def get_json(url: str, token: str | None = None, timeout: float = 3.0) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = requests.get(url, headers=headers, timeout=timeout)
    r.raise_for_status()
    return r.json()
