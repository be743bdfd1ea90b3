"""Test gateways: a broker-less one that only serves state and HTTP, and ``fallwatch gateway run``
as its own process from a config file written the way an operator would.

The integration tests used to spell these set-ups out one by one (the same TOML, the same
Popen, the same polling of ``/readyz``); one copy here means a fix to the set-up (a log that
is closed, a timeout that is generous enough for a loaded machine) reaches every test.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fallwatch.config import FallwatchConfig, load_config
from fallwatch.testing.publisher import wait_until


def local_config(tmp: Path, *, mqtt: dict[str, Any] | None = None, **gateway: Any) -> FallwatchConfig:
    """A gateway config with everything under ``tmp``: SQLite state, the embedded series store,
    the spool and an ephemeral HTTP port; no broker unless ``mqtt`` is given."""
    overrides: dict[str, Any] = {
        "influx": {"url": "", "embedded_path": str(tmp / "series.sqlite")},
        "gateway": {"state_db": str(tmp / "st.sqlite"), "spool_dir": str(tmp / "spool"), "http_port": 0,
                    **gateway},
    }
    if mqtt is not None:
        overrides["mqtt"] = mqtt
    return load_config(overrides=overrides)


@contextlib.contextmanager
def serving(cfg: FallwatchConfig) -> Iterator[Any]:
    """A gateway with only its state DB and HTTP server running (no broker needed); both are
    closed on the way out, also when starting the HTTP server is what failed."""
    from fallwatch.gateway.app import Gateway

    gw = Gateway(cfg)
    gw.start_state()
    try:
        gw.start_http()
        yield gw
    finally:
        if gw.http is not None:
            gw.http.close()
        gw.state.close()


def write_gateway_toml(path: Path, *, mqtt_url: str, gateway_id: str, http_port: int,
                       influx_url: str | None = None, database: str | None = None, extra: str = "") -> Path:
    """The TOML a ``gateway run`` test process reads: state DB and spool beside ``path``; series
    in InfluxDB 1.x (``influx_url``/``database``) or, without them, in the embedded store.
    ``extra`` (more tables: channels, paging) is appended as it is."""
    work = path.parent
    if influx_url is not None:
        influx = f'url = "{influx_url}"\nversion = 1\ndatabase = "{database}"\n'
    else:
        influx = f'embedded_path = "{work / "series.sqlite"}"\n'
    path.write_text(f"""
[mqtt]
url = "{mqtt_url}"
[gateway]
gateway_id = "{gateway_id}"
state_db = "{work / "state.sqlite"}"
spool_dir = "{work / "spool"}"
http_port = {http_port}
[influx]
{influx}{extra}""")
    return path


def get_json(url: str, timeout: float = 2.0) -> dict[str, Any] | None:
    """GET a JSON object; None while nothing answers (still starting, or killed)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return dict(json.loads(r.read()))
    except OSError:
        return None


class GatewayProcess:
    """``python -m fallwatch.cli gateway run --config …`` with its stderr appended to ``log_path``
    (kept across restarts, so a failure shows the whole story)."""

    def __init__(self, cfg_path: Path, port: int, *extra: str, log_path: Path | None = None) -> None:
        self.cfg_path = cfg_path
        self.extra = extra
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path or cfg_path.parent / "gw.log"
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        # the test's own directory as working directory: a relative default path never lands
        # in the checkout, where parallel test workers would share it
        with self.log_path.open("ab") as err:
            return subprocess.Popen(
                [sys.executable, "-m", "fallwatch.cli", "gateway", "run", "--config", str(self.cfg_path),
                 *self.extra],
                cwd=self.cfg_path.parent, env=dict(os.environ, PYTHONUNBUFFERED="1"),
                stdout=subprocess.DEVNULL, stderr=err)

    def restart(self) -> None:
        """Start it again (after :meth:`kill`), same config, same log."""
        self.proc = self._spawn()

    def get(self, path: str) -> dict[str, Any] | None:
        return get_json(f"{self.url}{path}")

    def wait_ready(self, timeout: float = 180.0) -> bool:
        # generous: on a loaded machine (parallel test workers) a pool of workers importing
        # onnxruntime, numpy and FastAPI can take a minute; it returns as soon as it is ready
        return wait_until(lambda: bool((self.get("/readyz") or {}).get("ready")), timeout)

    def log(self, tail: int = 2000) -> str:
        return self.log_path.read_text()[-tail:] if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no goodbye (in-flight batches, unacked messages, open transactions)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 45.0) -> int:
        """SIGTERM and the exit status (a clean shutdown is 0)."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)
