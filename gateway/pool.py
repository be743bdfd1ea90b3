"""``fallwatch gateway run --workers N``: N gateway processes on one shared subscription.

One Python process tops out at about one core (paho's network thread and the writer share
the GIL), so every core is used by running N of them: each **worker** is a full gateway
(both links, decode, de-dup, store, acks; the same guarantees as a replica) in its own
process, all in one MQTT shared-subscription group and on the same state DB (SQLite in WAL
mode is safe across processes on one host; PostgreSQL as for replicas). The **pool**
process starts them, restarts one that dies (same index, same client id: its persistent
session, with whatever it had not acknowledged, is waiting at the broker), serves the one
HTTP endpoint for all of them and stops them cleanly on SIGTERM/SIGINT.

Identity of worker ``i``: worker 0 is the gateway as configured (client id, broker user,
``gateway_id`` and retained presence unchanged); worker ``i > 0`` appends ``-w{i}`` to each
(a broker with ``use_username_as_clientid`` needs those users: ``broker-config --gateways
gw-1,gw-1-w1``). Each worker spools to its own directory.

Workers run no HTTP server: four times a second each writes a snapshot (stats, metrics,
health, readiness) as one JSON line on its stdout, and the pool answers ``/healthz``,
``/readyz``, ``/stats`` and ``/metrics`` from the latest snapshots (``/metrics`` with a
``worker`` label); the staff API (alerts, devices, acknowledgments, audit) reads the shared
state DB, like a worker's would, through the unchanged :class:`HttpServer`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from fallwatch.config import FallwatchConfig
from fallwatch.gateway.api import GatewayApi
from fallwatch.gateway.channels import ChannelContext, Notifier
from fallwatch.gateway.http import HttpServer
from fallwatch.gateway.metrics import Counters, Metrics
from fallwatch.gateway.state import StateStore
from fallwatch.gateway.workers import Workers

log = logging.getLogger("fallwatch.gateway")

#: the pool tells its workers where its HTTP endpoint listens (acknowledge links)
PUBLIC_URL_ENV = "FALLWATCH_GATEWAY_PUBLIC_URL"
#: seconds between a worker's snapshots on its stdout
SNAPSHOT_S = 0.25
#: a snapshot older than this means the worker is hung (its process may still be alive)
STALE_S = 10.0
#: stats that every worker computes over the shared registry: the pool reports the largest
_SHARED_STATS = frozenset({"devices_offline", "devices_test_overdue"})


def worker_config(cfg: FallwatchConfig, index: int) -> FallwatchConfig:
    """The config of worker ``index`` (see the module doc for the identities)."""
    g, m = cfg.gateway, cfg.mqtt
    group = g.shared_group or g.gateway_id
    if index == 0:
        return cfg.model_copy(update={"gateway": g.model_copy(update={"shared_group": group})})
    sfx = f"-w{index}"
    gw = g.model_copy(update={"shared_group": group, "gateway_id": g.gateway_id + sfx,
                              "spool_dir": g.spool_dir / f"worker{sfx}"})
    mq = m.model_copy(update={
        "client_id": (m.client_id or g.gateway_id) + sfx,
        "username": None if m.username is None else m.username + sfx,
        "alert_username": None if m.alert_username is None else m.alert_username + sfx,
    })
    return cfg.model_copy(update={"gateway": gw, "mqtt": mq})


# ------------------------------------------------------------------ the worker side
def run_worker(cfg: FallwatchConfig, index: int, stop: threading.Event, out: IO[str]) -> None:
    """Run worker ``index`` until ``stop``, writing snapshots to ``out`` (its stdout)."""
    from fallwatch.gateway.app import Gateway

    gw = Gateway(worker_config(cfg, index))
    # acknowledge links in a worker's messages point at the pool's one endpoint
    gw.pager.public_url = (cfg.gateway.paging.public_url or os.environ.get(PUBLIC_URL_ENV)
                           or f"http://{cfg.gateway.http_host}:{cfg.gateway.http_port}")
    gw.start_state()
    gw.start_workers()
    gw.start_links()
    from fallwatch.gateway.runtime import settle

    settle()  # this process is one worker of the gateway: its interpreter is tuned for the alert path
    log.info("gateway worker %d (%s) started, pid %d", index, gw.gateway_id, os.getpid())
    try:
        while not stop.wait(SNAPSHOT_S):
            snap = {"pid": os.getpid(), "stats": gw.stats(), "dead": gw.workers.dead(),
                    "problems": gw.workers.problems(), "ready": list(gw.ready()),
                    "metrics": gw.metrics.render().decode()}
            out.write(json.dumps(snap, default=str) + "\n")
            out.flush()
    finally:
        gw.stop()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """A worker must not outlive the pool (a SIGKILLed pool would leave workers consuming
    under sessions the next pool's workers then fight over): Linux PR_SET_PDEATHSIG."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


# ------------------------------------------------------------------ the pool side
class Worker:
    """One worker process as the pool sees it: the process, its latest snapshot, restarts."""

    def __init__(self, index: int, cmd: list[str]) -> None:
        self.index = index
        self.cmd = cmd
        self.env: dict[str, str] | None = None
        self.proc: subprocess.Popen[str] | None = None
        self.snapshot: dict[str, Any] = {}
        self.snapshot_at = 0.0
        self.restarts = 0
        self.died_at: float | None = None

    def start(self) -> None:
        self.snapshot, self.snapshot_at, self.died_at = {}, 0.0, None
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, text=True, preexec_fn=_die_with_parent,
                                     env=self.env)
        threading.Thread(target=self._read, args=(self.proc,), name=f"gw-pool-w{self.index}", daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                snap = json.loads(line)
            except ValueError:
                continue
            if proc is self.proc:
                self.snapshot, self.snapshot_at = snap, time.monotonic()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def problem(self) -> str | None:
        """Why this worker is not serving (None while it is alive and reporting)."""
        if not self.alive:
            return "process not running" + (f" (restarted {self.restarts}×)" if self.restarts else "")
        if not self.snapshot:
            return "starting"
        if time.monotonic() - self.snapshot_at > STALE_S:
            return f"no report for {time.monotonic() - self.snapshot_at:.0f} s"
        return None


class Pool:
    """The pool process: workers, their restarts, and the one HTTP endpoint."""

    def __init__(self, cfg: FallwatchConfig, n: int, config_path: Path | None) -> None:
        self.cfg = cfg
        base = [sys.executable, "-m", "fallwatch.cli", "gateway", "run"]
        if config_path is not None:
            base += ["--config", str(config_path)]
        self.workers = [Worker(i, [*base, "--worker-index", str(i)]) for i in range(n)]
        self.stopping = False
        self.state = StateStore(cfg.gateway.state_db, cfg.gateway.state_db_type)
        self.notifier: Notifier | None = None
        self.http: HttpServer | None = None

    def start(self) -> None:
        g = self.cfg.gateway
        self.state.setup(clock_skew_ms=int(g.clock_skew_s * 1000))  # once, before the workers race to it
        # acknowledging an alert through this endpoint tells staff, as a worker's would: the
        # broadcast channels here, the people paged by the workers' pagers (they see it within a tick)
        from fallwatch.gateway.paging import Pager

        self.notifier = Notifier.from_config(g.channels, ChannelContext(g.gateway_id, locale=g.locale,
                                                                        timezone=g.timezone))
        addressable = {ch.name: ch for ch in self.notifier.channels if hasattr(ch, "send_to")}
        self.pager = Pager(g.paging, self.state, addressable, gateway_id=g.gateway_id,  # type: ignore[arg-type]
                           stop=threading.Event(), locale=g.locale)
        self.pager.setup()  # the acknowledge links' key and tables; this pager runs no rounds
        self.pager.emit = self.notifier.notify
        self.http = HttpServer(PoolApi(self, self.notifier), g.http_host, g.http_port, g.staff_users_file)
        self.http.start()
        env = dict(os.environ)
        env[PUBLIC_URL_ENV] = self.http.url
        for w in self.workers:
            w.env = env
            w.start()
        log.info("gateway pool %s: %d workers, http %s", g.gateway_id, len(self.workers), self.http.url)

    @property
    def http_url(self) -> str | None:
        return self.http.url if self.http is not None else None

    def supervise(self, stop: threading.Event) -> None:
        """Until ``stop``: restart a worker that died, one second after it did."""
        while not stop.wait(0.2):
            for w in self.workers:
                if w.alive:
                    continue
                now = time.monotonic()
                if w.died_at is None:
                    w.died_at = now
                    log.error("gateway worker %d exited with %s; restarting it in 1 s", w.index,
                              w.proc.returncode if w.proc else "?")
                elif now - w.died_at >= 1.0:
                    w.restarts += 1
                    w.start()

    def stop(self, timeout_s: float = 40.0) -> None:
        """SIGTERM every worker (each finishes its batches and disconnects), then close."""
        self.stopping = True
        for w in self.workers:
            if w.alive and w.proc is not None:
                w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for w in self.workers:
            if w.proc is None:
                continue
            try:
                w.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("gateway worker %d did not stop in %.0f s: killed", w.index, timeout_s)
                w.proc.kill()
                w.proc.wait()
        if self.http is not None:
            self.http.close()
        pager = getattr(self, "pager", None)
        if pager is not None:
            pager.close()
        if self.notifier is not None:
            self.notifier.close()
        self.state.close()

    # ------------------------------------------------------------ what the endpoint reports
    def stats(self) -> dict[str, Any]:
        """Every worker's counters summed (``devices_*``: the largest), and each worker's state."""
        out: dict[str, Any] = {}
        for w in self.workers:
            for k, v in w.snapshot.get("stats", {}).items():
                if k == "first_received_ms":  # the earliest of the workers' (None until one received)
                    if v is not None:
                        out[k] = v if out.get(k) is None else min(out[k], v)
                    else:
                        out.setdefault(k, None)
                elif isinstance(v, bool):
                    out[k] = out.get(k, True) and v
                elif isinstance(v, int | float):
                    out[k] = max(out.get(k, 0), v) if k in _SHARED_STATS else out.get(k, 0) + v
                elif isinstance(v, dict):
                    merged = out.setdefault(k, {})
                    for kk, vv in v.items():
                        key = kk if isinstance(vv, int | float) else f"w{w.index}/{kk}"
                        merged[key] = merged.get(key, 0) + vv if isinstance(vv, int | float) else vv
        out["workers"] = [{"index": w.index, "pid": w.proc.pid if w.proc else None, "alive": w.alive,
                           "restarts": w.restarts, "problem": w.problem(),
                           "stored": w.snapshot.get("stats", {}).get("stored", 0)} for w in self.workers]
        return out

    def ready(self) -> tuple[bool, str]:
        why = []
        for w in self.workers:
            p = w.problem()
            if p is None and not w.snapshot.get("ready", [False])[0]:
                p = str(w.snapshot.get("ready", [False, "?"])[1])
            if p is not None:
                why.append(f"worker {w.index}: {p}")
        return (False, "; ".join(why)) if why else (True, "ok")

    def dead(self) -> list[str]:
        out = []
        for w in self.workers:
            if not self.stopping and not w.alive:
                out.append(f"worker-{w.index} (process)")
            out += [f"w{w.index}/{t}" for t in w.snapshot.get("dead", [])]
        return out

    def problems(self) -> dict[str, str]:
        out = {}
        for w in self.workers:
            p = w.problem()
            if p is not None and p != "starting" and w.alive:
                out[f"worker-{w.index}"] = p
            out.update({f"w{w.index}/{k}": v for k, v in w.snapshot.get("problems", {}).items()})
        return out

    def metrics(self) -> bytes:
        return merge_metrics([(str(w.index), w.snapshot.get("metrics", "")) for w in self.workers]).encode()


def merge_metrics(texts: list[tuple[str, str]]) -> str:
    """Prometheus text of several workers as one exposition: each family once, each sample
    with a ``worker`` label (the format wants a family's samples together under its header)."""
    headers: dict[str, list[str]] = {}
    samples: dict[str, list[str]] = {}
    for worker, text in texts:
        family = ""
        for line in text.splitlines():
            if line.startswith("# "):
                parts = line.split(" ", 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    h = headers.setdefault(family, [])
                    if line not in h:
                        h.append(line)
                    samples.setdefault(family, [])
                continue
            if not line.strip():
                continue
            cut = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=-1)
            if cut < 0:
                continue
            label = f'worker="{worker}"'
            line = (line[: cut + 1] + label + ("," if line[cut + 1] != "}" else "") + line[cut + 1:]
                    if line[cut] == "{" else f"{line[:cut]}{{{label}}}{line[cut:]}")
            samples.setdefault(family, []).append(line)
    out = []
    for family, lines in samples.items():
        out += headers.get(family, [])
        out += lines
    return "\n".join(out) + "\n"


class PoolApi(GatewayApi):
    """The endpoint's reader for a pool: health, stats and metrics from the workers'
    snapshots; the staff API from the shared state DB (as :class:`GatewayApi`)."""

    def __init__(self, pool: Pool, notifier: Notifier) -> None:
        from fallwatch.gateway.privacy import Privacy

        super().__init__(pool.state, Workers(threading.Event()), Metrics(Counters(), dict), notifier,
                         pool.stats, pool.ready, pool.pager,
                         privacy=Privacy(pool.state, pool.cfg.influx, [  # every worker's spool is on this host
                             worker_config(pool.cfg, w.index).gateway.spool_dir for w in pool.workers]))
        self._pool = pool

    def dead_workers(self) -> list[str]:
        return self._pool.dead()

    def worker_problems(self) -> dict[str, str]:
        return self._pool.problems()

    def metrics_text(self) -> bytes:
        return self._pool.metrics()


def default_workers() -> int:
    """One worker per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
