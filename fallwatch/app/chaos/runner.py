"""Run a chaos scenario: start the care home, inject falls, apply the fault schedule, count.

Nothing here trusts a component's own account of itself. Falls come from the simulator's
ground truth; what the edge decided comes from each hub's journal; what was stored is read
back from InfluxDB (InfluxQL) and the state DB; what staff got is what arrived at the SMTP
server and the web hook receiver; an acknowledgement is a POST of the page's own link.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt_client
import requests

from fallwatch.app.bench.e2e import SECRET_ENV, paging_overrides
from fallwatch.app.chaos.parts import (
    Broker,
    Carer,
    Proc,
    drop_postgres,
    fallwatch_argv,
    get_json,
    postgres_url,
    python_argv,
)
from fallwatch.app.chaos.scenario import ChaosScenario, FaultSpec, to_toml
from fallwatch.testing.receivers import SmtpServer
from fallwatch.testing.services import InfluxDB1, free_port

log = logging.getLogger("fallwatch.app.chaos")

SIM_MATCH_TOLERANCE_S = 10.0
ROGUE = ("chaos-rogue", "hub-rogue")  # a provisioned hub that is compromised: the flood comes from it
#: a gateway-role broker user no replica runs as: the suite's receiver of the gateways' dead letters
AUDIT = "chaos-audit"


class DeadLetterReceiver:
    """The gateways' dead letters counted where they arrive: a persistent MQTT session on
    the dead-letter topics. A replica's own counters start again at 0 when it restarts;
    what was rejected and published stays counted here. QoS 1 is at least once: a
    re-delivery (the DUP flag) is counted only if nothing with its content came before
    (identical junk rejected in the same millisecond cannot be told apart otherwise)."""

    def __init__(self, port: int, password: str) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        from fallwatch.protocol import topics

        self._lock = threading.Lock()
        self.seen: set[tuple[str, int, str, str]] = set()
        self.n = 0
        self.by_reason: dict[str, int] = {}
        c = mqtt_client.Client(mqtt_client.CallbackAPIVersion.VERSION2, client_id=AUDIT,
                               protocol=mqtt_client.MQTTv5)
        c.username_pw_set(AUDIT, password)
        c.on_connect = lambda cl, *_: cl.subscribe(f"{topics.DLQ_PREFIX}#", qos=1)
        c.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 86_400  # queued at the broker while it reconnects
        c.reconnect_delay_set(min_delay=0.2, max_delay=2)  # type: ignore[arg-type]
        c.connect("127.0.0.1", port, clean_start=False, properties=props)
        c.loop_start()
        self.client = c

    def _on_message(self, _c: Any, _u: Any, m: Any) -> None:
        try:
            d = json.loads(m.payload)
            key = (str(d.get("gateway_id")), int(d.get("received_ms", 0)), str(d.get("reason")), str(d.get("topic")))
        except (ValueError, TypeError):
            key = ("?", 0, m.topic, str(hash(m.payload)))
        with self._lock:
            if m.dup and key in self.seen:
                return
            self.seen.add(key)
            self.n += 1
            self.by_reason[key[2]] = self.by_reason.get(key[2], 0) + 1

    @property
    def count(self) -> int:
        with self._lock:
            return self.n

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class Hub:
    index: int
    site_id: str
    hub_id: str
    dir: Path
    proc: Proc
    events: list[dict[str, Any]]  # planned falls: at_s relative to the run's t0
    incarnations: list[tuple[float, list[dict[str, Any]]]] = field(default_factory=list)  # (t0 offset, events)
    netns: str | None = None
    clock_file: Path | None = None  # libfaketime's FAKETIME_TIMESTAMP_FILE (the clock_jump fault)


class Harness:
    def __init__(self, sc: ChaosScenario, workdir: Path, progress: bool = True) -> None:
        self.sc, self.dir, self.progress = sc, workdir, progress
        self.hubs: list[Hub] = []
        self.gateways: dict[str, Proc] = {}
        self.gw_http: dict[str, str] = {}
        self.fault_log: list[dict[str, Any]] = []
        self._threads: list[threading.Thread] = []
        self.t0 = 0.0
        self.samples: dict[str, list[tuple[float, dict[str, float]]]] = {}
        self.flood_sent = 0
        self.netns_ok = False
        self._state: Any = None  # the harness's own read connection to the state DB
        self.stats_before_kill: list[dict[str, Any]] = []
        self.clock_off: set[str] = set()  # hubs whose wall clock the schedule has stepped away
        from fallwatch.config import GatewayConfig

        #: the gateways clamp device times later than receipt + this (their default config)
        self.clock_skew_ms = int(GatewayConfig().clock_skew_s * 1000)
        # per run, so two runs on one machine (two checkouts' test commands) never share a namespace
        octet = 1 + os.getpid() % 250
        self.ns_name, self.host_ip, self.ns_ip = f"fwc{os.getpid() % 10**6}", f"10.231.{octet}.1", f"10.231.{octet}.2"
        #: CLOCK_MONOTONIC -> real wall time (hub journals carry both; a faked hub clock moves only its wall)
        self.mono_to_wall = time.time() - time.monotonic()
        self.down: set[str] = set()  # processes the schedule has stopped on purpose
        self.crashed: dict[str, float] = {}  # processes that died by themselves, with when

    # ------------------------------------------------------------------ set-up

    def say(self, msg: str) -> None:
        if self.progress:
            print(f"[{time.time() - self.t0 if self.t0 else 0.0:6.1f} s] {msg}", flush=True, file=_stderr())

    def start(self) -> None:
        sc, d = self.sc, self.dir
        d.mkdir(parents=True, exist_ok=True)
        self.netns_ok = any(f.name == "network_cut" for f in sc.faults) and _netns_available()
        devices = [(f"chaos-{i:02d}", f"hub-chaos-{i:02d}") for i in range(1, sc.hubs + 1)]
        gws = ["gw-a", "gw-b"][: sc.replicas]
        listeners = [self.host_ip] if self.netns_ok else []
        if self.netns_ok:
            _netns_setup(self.ns_name, self.host_ip, self.ns_ip)
        self.broker = Broker(d / "broker", [*devices, ROGUE], [*gws, AUDIT], extra_listeners=listeners)
        self.broker.start()
        self.dead_letters = DeadLetterReceiver(self.broker.port, self.broker.creds[AUDIT])
        self.influx = InfluxDB1(workdir=d / "influx")
        (d / "influx").mkdir(exist_ok=True)
        self.influx.start()
        self.smtpd = SmtpServer().start()
        self.carer = Carer()
        os.environ.setdefault(SECRET_ENV, secrets.token_hex(16))
        if sc.state == "postgresql":
            state_db = postgres_url(f"{sc.name}_{os.getpid()}")
        else:
            state_db = str(d / "gateway-state.sqlite")
        self.state_db = state_db
        from fallwatch.gateway.staff import StaffDirectory

        staff = d / "staff.json"
        self.tech_token = StaffDirectory(staff).add("chaos-technician", "technician")
        spool_fault = next((f for f in sc.faults if f.name == "spool_full"), None)
        self.spool_mounts: list[Path] = []
        for gw in gws:
            gdir = d / gw
            gdir.mkdir(exist_ok=True)
            if spool_fault is not None and (spool_fault.target or "gw-a") == gw:
                self._small_disk(gdir / "spool")
            port = free_port()
            self.gw_http[gw] = f"http://127.0.0.1:{port}"
            gcfg = {
                "mqtt": {"url": self.broker.url, "username": gw, "protocol": "5"},
                "influx": {"url": self.influx.url, "version": 1},
                "gateway": {"gateway_id": gw, "shared_group": "chaos" if sc.replicas > 1 else None,
                            "state_db": state_db, "spool_dir": str(gdir / "spool"), "http_port": port,
                            "staff_users_file": str(staff),
                            **paging_overrides(self.smtpd.port, self.carer.url)},
            }
            (gdir / "gateway.toml").write_text(to_toml(gcfg))
            env = dict(os.environ, FALLWATCH_MQTT_PASSWORD=self.broker.creds[gw],
                       FALLWATCH_MQTT_ALERT_PASSWORD=self.broker.creds[f"{gw}-alerts"])
            # each replica is one process: the broker config has one user per replica, not per worker
            argv = fallwatch_argv("gateway", "run", "--config", str(gdir / "gateway.toml"), "--workers", "1")
            self.gateways[gw] = Proc(gw, argv, env, gdir / "gateway.log")
        self.carer.gateway_urls = list(self.gw_http.values())
        for p in self.gateways.values():
            p.start()
        for gw in gws:
            if not self._wait_ready(gw, 90):
                tail = self.gateways[gw].log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"gateway replica {gw} did not become ready:\n{tail}")
        self.say(f"broker, InfluxDB, {sc.state} state, {len(gws)} gateway replica(s) up")
        plan = self._plan_falls(devices)
        for i, (site, hub) in enumerate(devices, start=1):
            hdir = d / hub
            hdir.mkdir(exist_ok=True)
            netns = self.ns_name if self.netns_ok and self._cut_target() == i else None
            mqtt_host = self.host_ip if netns else "127.0.0.1"
            env = dict(os.environ, FALLWATCH_MQTT_PASSWORD=self.broker.creds[hub])
            clock_file = None
            if i in self._clock_targets() and (fake := _faketime_env(hdir / "faketime")) is not None:
                clock_file = hdir / "faketime"
                env |= fake
            proc = Proc(hub, python_argv("fallwatch.app.chaos.hub", "--config", str(hdir / "hub.toml"),
                                         "--journal", str(hdir / "journal.jsonl")), env, hdir / "hub.log",
                        netns=netns)
            h = Hub(i, site, hub, hdir, proc, plan[i], netns=netns, clock_file=clock_file)
            self._write_hub_config(h, f"mqtt://{mqtt_host}:{self.broker.port}", offset_s=0.0)
            self.hubs.append(h)
        self.t0 = time.time()
        for h in self.hubs:
            h.proc.start()
        self.say(f"{len(self.hubs)} hub processes started ({sum(len(h.events) for h in self.hubs)} falls planned)")

    def _clock_targets(self) -> set[int]:
        return {int(f.target or 1) for f in self.sc.faults if f.name == "clock_jump"}

    def real_wall(self, rec: dict[str, Any]) -> float:
        """The real wall time of a hub journal record (its ``mono``; ``wall`` is the hub's own clock)."""
        return float(rec["mono"]) + self.mono_to_wall if "mono" in rec else float(rec["wall"])

    def _cut_target(self) -> int:
        f = next((f for f in self.sc.faults if f.name == "network_cut"), None)
        return int(f.target or 1) if f else 0

    def _plan_falls(self, devices: list[tuple[str, str]]) -> dict[int, list[dict[str, Any]]]:
        """Staggered falls (one somewhere every few seconds, so every fault meets some) and a burst."""
        sc = self.sc
        n = len(devices)
        lo, hi = sc.falls_from_s, sc.falls_to_s if sc.falls_to_s is not None else sc.duration_s - 40
        total = n * sc.falls_per_hub
        step = (hi - lo) / max(1, total)
        kinds = ["forward", "backward", "sideways", "collapse", "from_bed"]
        plan: dict[int, list[dict[str, Any]]] = {i: [] for i in range(1, n + 1)}
        for k in range(total):
            i = k % n + 1
            plan[i].append({"at_s": round(lo + k * step, 2), "kind": kinds[k % len(kinds)]})
        if sc.burst_at_s is not None:
            for i in range(1, n + 1):
                plan[i].append({"at_s": round(sc.burst_at_s + (i % 5) * 0.1, 2), "kind": kinds[i % len(kinds)]})
        for evs in plan.values():  # a resident needs time to fall, lie and get up between two falls
            evs.sort(key=lambda e: e["at_s"])
            kept: list[dict[str, Any]] = []
            for e in evs:
                if not kept or e["at_s"] - kept[-1]["at_s"] >= 45.0:
                    kept.append(e)
            evs[:] = kept
        return plan

    def _write_hub_config(self, h: Hub, url: str, offset_s: float) -> None:
        """A one-hub scenario for this incarnation of the hub: the falls still to come, in its
        own time (a restarted hub does not replay the past)."""
        from fallwatch.sim.scenario import Profile, Resident, Scenario, flat_site

        sc = self.sc
        rid = f"r-chaos-{h.index:02d}"
        site = flat_site(h.index, Resident(id=rid, profile=Profile(cancel_prob=0.0), start_room="living"))
        site = site.model_copy(update={"site_id": h.site_id, "hub_id": h.hub_id})
        events = [dict(e, at_s=round(e["at_s"] - offset_s, 2)) for e in h.events if e["at_s"] - offset_s > 8.0]
        h.incarnations.append((offset_s, events))
        scn = Scenario(name=f"chaos-{h.hub_id}", seed=sc.seed + h.index, start_hour=10.0,
                       duration_s=max(10.0, sc.duration_s - offset_s), sites=[site],
                       events=[{"type": "fall", "resident": rid, "at_s": e["at_s"], "kind": e["kind"],
                                "lying_s": 30.0, "recovered": False, "cancelled": False} for e in events])
        (h.dir / f"scenario-{len(h.incarnations)}.toml").write_text(
            to_toml(json.loads(scn.model_dump_json(exclude_none=True))))
        cfg = {
            "mqtt": {"url": url, "username": h.hub_id, "protocol": "5", "keepalive_s": 10},
            "edge": {"site_id": h.site_id, "device_id": h.hub_id, "outbox_path": str(h.dir / "outbox.sqlite"),
                     "model_dir": str(h.dir / "models"), "cancel_window_s": sc.cancel_window_s,
                     "telemetry_window_s": sc.telemetry_window_s, "heartbeat_s": 15.0,
                     "source": {"type": "sim", "path": str(h.dir / f"scenario-{len(h.incarnations)}.toml"),
                                "speed": 1.0}},
        }
        (h.dir / "hub.toml").write_text(to_toml(cfg))

    def _wait_ready(self, gw: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.gw_http[gw]}/readyz", timeout=2).status_code == 200:
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.3)
        return False

    # ------------------------------------------------------------------ the run

    def run(self) -> None:
        sc = self.sc
        pending = sorted(sc.faults, key=lambda f: f.at_s)
        next_sample = 0.0
        while True:
            now = time.time() - self.t0
            while pending and pending[0].at_s <= now:
                f = pending.pop(0)
                t = threading.Thread(target=self._apply, args=(f,), name=f"fault-{f.name}", daemon=True)
                t.start()
                self._threads.append(t)
            if now >= next_sample:
                self._sample(now)
                next_sample = now + sc.sample_every_s
            self._check_crashes(now)
            if now >= sc.duration_s and not pending:
                break
            time.sleep(0.2)
        for t in self._threads:
            t.join(sc.recover_timeout_s + 60)
        self.say("fault schedule done; waiting for the system to drain")

    def _check_crashes(self, now: float) -> None:
        """A process that died without being killed by the schedule is a finding, not noise."""
        procs = [*self.gateways.values(), *(h.proc for h in self.hubs)]
        for p in procs:
            if not p.alive and p.name not in self.down and p.name not in self.crashed:
                self.crashed[p.name] = round(now, 1)
                log.error("%s exited by itself at %.0f s (see %s)", p.name, now, p.log_path)

    def _sample(self, now: float) -> None:
        procs = {"mosquitto": self.broker.proc, **self.gateways, **{h.hub_id: h.proc for h in self.hubs}}
        for name, p in procs.items():
            s = p.sample()
            if s is not None:
                self.samples.setdefault(f"{name}#{p.starts}", []).append((now, s))
        if self.influx.proc is not None:
            import psutil

            try:
                pi = psutil.Process(self.influx.proc.pid)
                self.samples.setdefault("influxd#1", []).append(
                    (now, {"rss_mb": pi.memory_info().rss / 2**20, "fds": float(pi.num_fds()),
                           "cpu_s": sum(pi.cpu_times()[:2])}))
            except psutil.Error:
                pass

    # ------------------------------------------------------------------ faults

    def _hub(self, target: str | None) -> Hub:
        return self.hubs[int(target or 1) - 1]

    def _apply(self, f: FaultSpec) -> None:
        rec: dict[str, Any] = {"name": f.name, "at_s": round(time.time() - self.t0, 1), "target": f.target,
                               "duration_s": f.duration_s}
        self.say(f"fault {f.name} {f.target or ''} for {f.duration_s:.0f} s")
        try:
            getattr(self, f"_fault_{f.name}")(f, rec)
        except Exception as exc:  # a fault we could not apply is reported, never skipped silently
            log.exception("fault %s could not be applied", f.name)
            rec["error"] = f"{type(exc).__name__}: {exc}"
        end = time.time()
        rec["recovered_s"] = self._recovered_after(end, rec)
        self.say(f"fault {f.name}: recovered in {rec['recovered_s']} s")
        self.fault_log.append(rec)

    def _recovered_after(self, end: float, rec: dict[str, Any]) -> float | None:
        """Seconds from the end of the fault until every running hub has telemetry newer than
        that moment stored in InfluxDB and every replica answers /readyz: the system carries on
        by itself (resolution: the telemetry window). After a clock jump, also until the
        gateways' registry sees that hub's clock within 5 s of theirs."""
        end_ms = int(end * 1000)
        deadline = end + self.sc.recover_timeout_s
        want = {h.hub_id for h in self.hubs if h.proc.alive}
        if rec["name"] != "clock_jump":  # a hub whose clock is off meanwhile stamps in the future:
            want -= self.clock_off       # its recovery is the clock jump's, not this fault's
        while time.time() < deadline:
            try:
                # not later than now: a hub whose clock ran ahead has clamped points in the future
                series = self.influx.query(
                    f'SELECT last("window_s") FROM "telemetry" WHERE time > {end_ms}ms AND time < now() + 10s '
                    'GROUP BY "device_id"', db="fallwatch")
                have = {s["tags"]["device_id"] for s in series}
                ready = all(self._ready_now(g) for g, p in self.gateways.items() if p.alive)
                if rec["name"] == "clock_jump":  # and the gateways see the hub's clock right again
                    skew = self._registry_skew_s(str(rec.get("hub")))
                    rec["gateway_skew_after_s"] = skew
                    ready = ready and skew is not None and abs(skew) < 5.0
                if want <= have and ready:
                    return round(time.time() - end, 1)
            except Exception:  # InfluxDB may still be starting
                pass
            time.sleep(0.5)
        rec["not_recovered"] = sorted(want)
        return None

    def _ready_now(self, gw: str) -> bool:
        try:
            return requests.get(f"{self.gw_http[gw]}/readyz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def _fault_broker_restart(self, f: FaultSpec, rec: dict[str, Any]) -> None:
        self.broker.proc.stop()
        time.sleep(f.duration_s)
        self.broker.start()

    def _fault_broker_kill(self, f: FaultSpec, rec: dict[str, Any]) -> None:
        self.broker.proc.kill()
        time.sleep(f.duration_s)
        self.broker.start()

    def _fault_gateway_kill(self, f: FaultSpec, rec: dict[str, Any]) -> None:
        gw = f.target or "gw-a"
        self.down.add(gw)
        self._keep_stats(gw)
        self.gateways[gw].kill()
        time.sleep(f.duration_s)
        self.gateways[gw].start()  # the same gateway_id: its persistent session is waiting for it
        self.down.discard(gw)

    def _gw_stats(self, gw: str) -> dict[str, Any]:
        try:
            return dict(get_json(f"{self.gw_http[gw]}/stats", self.tech_token))
        except Exception:  # a replica that does not answer has no figures to give
            return {}

    def _keep_stats(self, gw: str) -> None:
        """A replica's /stats just before the schedule kills it: its counters start again at 0,
        so the report adds what each earlier incarnation had counted."""
        try:
            self.stats_before_kill.append({gw: get_json(f"{self.gw_http[gw]}/stats", self.tech_token)})
        except Exception as exc:  # reported; the kill goes on
            log.warning("could not read %s /stats before killing it: %s", gw, exc)

    def _fault_influx_stop(self, f: FaultSpec, rec: dict[str, Any]) -> None:
        self.influx.stop()
        time.sleep(f.duration_s)
        self.influx.start()

    def _fault_edge_kill(self, f: FaultSpec, rec: dict[str, Any]) -> None:
        h = self._hub(f.target)
        self.down.add(h.hub_id)
        h.proc.kill()
        time.sleep(f.duration_s)
        offset = time.time() - self.t0
        rec["killed_hub"] = h.hub_id
        self._write_hub_config(h, f"mqtt://{self.host_ip if h.netns else '127.0.0.1'}:{self.broker.port}",
                               offset_s=offset)
        h.proc.start()
        self.down.discard(h.hub_id)

    def _fault_network_cut(self, f: FaultSpec, rec: dict[str, Any]) -> None:
        h = self._hub(f.target)
        if h.netns is None:
            raise RuntimeError("no network namespace (needs root and ip netns): fault not applied")
        rec["hub"] = h.hub_id
        _run(["ip", "link", "set", f"{self.ns_name}-h", "down"])
        time.sleep(f.duration_s)
        _run(["ip", "link", "set", f"{self.ns_name}-h", "up"])

    def _small_disk(self, path: Path) -> None:
        """A 16 MB tmpfs for a replica's spool (root only): a disk that can really fill up."""
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            return  # the fault reports that it could not be applied
        _run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path)])
        self.spool_mounts.append(path)

    def _fault_spool_full(self, f: FaultSpec, rec: dict[str, Any]) -> None:
        """The replica's spool disk is filled to its last 64 KB while InfluxDB is down, so
        what the replica cannot write anywhere must stay with the broker (backpressure)."""
        gw = f.target or "gw-a"
        spool = self.dir / gw / "spool"
        if spool not in self.spool_mounts:
            raise RuntimeError("the spool is not on a small tmpfs (needs root): fault not applied")
        st = os.statvfs(spool)
        free = st.f_bavail * st.f_frsize
        ballast = spool / "ballast.bin"
        with open(ballast, "wb") as fh:
            fh.truncate(0)
            fh.write(b"\0" * max(0, free - 64 * 1024))
        rec["ballast_mb"] = round(ballast.stat().st_size / 2**20, 1)
        starts = self.gateways[gw].starts
        before = self._gw_stats(gw)
        self.influx.stop()
        # what the replica did meanwhile: its /stats (deltas; per process, so only if it was not
        # restarted) and whether it said it was not ready; the counts that decide "lost" come
        # from InfluxDB and the receivers, as for every fault
        not_ready = problems = 0
        depth_max = 0
        end = time.monotonic() + f.duration_s
        while time.monotonic() < end:
            st_now = self._gw_stats(gw)
            depth_max = max(depth_max, int(st_now.get("spool_depth", 0)))
            problems += bool(st_now.get("worker_problems"))
            not_ready += not self._ready_now(gw)
            time.sleep(1.0)
        after = self._gw_stats(gw)
        st = os.statvfs(spool)
        rec["spool_free_kb_at_end"] = st.f_bavail * st.f_frsize // 1024
        if self.gateways[gw].starts == starts and before and after:
            for k in ("points_spooled", "spool_write_errors", "points_written"):
                rec[k] = int(after.get(k, 0)) - int(before.get(k, 0))
        rec["spool_depth_max"] = depth_max
        rec["seconds_not_ready"] = not_ready
        rec["seconds_worker_stuck"] = problems
        ballast.unlink()
        self.influx.start()

    def _fault_clock_jump(self, f: FaultSpec, rec: dict[str, Any]) -> None:
        """The hub's wall clock (CLOCK_REALTIME, through libfaketime preloaded into its edge
        process) steps ``jump_s`` forward (negative: back), stays there for ``duration_s``
        and steps back, as an NTP step or a hub booting with a dead RTC battery does; its
        monotonic clock is left alone, as on a real Pi. Meanwhile the gateway's registry is
        read: how far off it saw the hub's clock (``gateway_saw_skew_s``)."""
        h = self._hub(f.target)
        if h.clock_file is None or not h.proc.alive:
            raise RuntimeError("the hub does not run under libfaketime (apt-get install faketime): "
                               "fault not applied")
        rec["hub"], rec["jump_s"] = h.hub_id, f.jump_s
        self.clock_off.add(h.hub_id)
        h.clock_file.write_text(f"{f.jump_s:+.0f}\n")
        end = time.monotonic() + f.duration_s
        seen: list[float] = []
        while time.monotonic() < end:
            skew = self._registry_skew_s(h.hub_id)
            if skew is not None:
                seen.append(skew)
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        h.clock_file.write_text("+0\n")
        self.clock_off.discard(h.hub_id)
        rec["gateway_saw_skew_s"] = max(seen, key=abs) if seen else None

    def _registry_skew_s(self, hub_id: str) -> float | None:
        """The clock skew the gateways last recorded for a hub (devices.clock_skew_ms), s."""
        from fallwatch.gateway.state import StateStore

        try:
            st = self._state or StateStore(self.state_db)
            self._state = st
            for d in st.devices():
                if d["device_id"] == hub_id and d.get("clock_skew_ms") is not None:
                    return round(int(d["clock_skew_ms"]) / 1000, 1)
        except Exception:  # the state DB is the gateways'; a failed read is not a fault of the hub
            return None
        return None

    def _fault_flood(self, f: FaultSpec, rec: dict[str, Any]) -> None:
        """The compromised hub sends garbage as fast as it is let: malformed JSON, wrong
        schema, oversized payloads (past the broker's max_packet_size), another site's topics."""
        from fallwatch.protocol import topics

        site, hub = ROGUE
        victim = self.hubs[-1]
        c = mqtt_client.Client(mqtt_client.CallbackAPIVersion.VERSION2, client_id=hub,
                               protocol=mqtt_client.MQTTv5)
        c.username_pw_set(hub, self.broker.creds[hub])
        c.reconnect_delay_set(min_delay=0.1, max_delay=0.5)  # type: ignore[arg-type]  # an attacker comes straight back
        c.connect("127.0.0.1", self.broker.port)
        c.loop_start()
        junk = [
            (topics.tele(site, hub, "wear-x"), b"{not json"),
            (topics.tele(site, hub, "wear-x"), json.dumps({"kind": "tele", "schema": 99}).encode()),
            (f"{topics.PREFIX}/{site}/{hub}/evt/fall", b'{"kind":"fall","schema":1,"data":{}}'),
            (f"{topics.PREFIX}/{site}/{hub}/health", b"\xff\xfe\x00binary"),
            (topics.tele(site, hub, "wear-x"), b"x" * 60_000),  # big but under the packet limit
        ]
        other = (topics.tele(victim.site_id, victim.hub_id, "wear-x"), b"{}")  # another site: ACL denies
        sent = oversized = denied = 0
        end = time.monotonic() + f.duration_s
        period = 1.0 / f.rate
        nxt = time.monotonic()
        while time.monotonic() < end:
            topic, payload = junk[sent % len(junk)]
            if sent % 100 == 99:  # Mosquitto drops the connection of a client the ACL refuses
                topic, payload = other
                denied += 1
            if sent % 500 == 499:  # past max_packet_size: the broker drops the connection
                payload, oversized = b"y" * 100_000, oversized + 1
            if not c.is_connected():
                time.sleep(0.05)
                continue
            c.publish(topic, payload, qos=sent % 2)
            sent += 1
            nxt += period
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        c.loop_stop()
        c.disconnect()
        rec["sent"] = sent
        rec["oversized"] = oversized
        rec["acl_denied"] = denied
        self.flood_sent += sent

    # ------------------------------------------------------------------ the end

    def settle(self) -> bool:
        """Wait until every hub's outbox is empty and the pager has nothing left to send."""
        deadline = time.time() + self.sc.settle_s
        time.sleep(self.sc.cancel_window_s + 3)
        while time.time() < deadline:
            depths = [_outbox_depth(h.dir / "outbox.sqlite") for h in self.hubs]
            if all(d == 0 for d in depths):
                break
            time.sleep(1.0)
        else:
            return False
        time.sleep(5.0)  # the last pages and acknowledgements
        return True

    def gateway_stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for gw, url in self.gw_http.items():
            try:
                out[gw] = get_json(f"{url}/stats", self.tech_token)
            except Exception as exc:
                out[gw] = {"error": str(exc)}
        return out

    def stop(self) -> None:
        self._check_crashes(time.time() - self.t0)
        self.down |= {h.hub_id for h in self.hubs} | set(self.gateways)
        for h in self.hubs:
            h.proc.stop()
        for p in self.gateways.values():
            p.stop()
        self.dead_letters.close()
        self.broker.proc.stop()
        self.influx.stop()
        self.smtpd.stop()
        self.carer.close()
        if self.netns_ok:
            _netns_teardown(self.ns_name)
        for m in self.spool_mounts:
            subprocess.run(["umount", "-l", str(m)], capture_output=True)
        if self._state is not None:
            self._state.close()
        if self.state_db.startswith("postgresql://"):
            drop_postgres(self.state_db)


#: A row younger than this at the end is in flight (the hubs keep sending heartbeats), not stuck.
IN_FLIGHT_S = 10.0


def _outbox_depth(path: Path) -> int:
    """Rows that have waited in a hub's outbox longer than :data:`IN_FLIGHT_S`. A row stamped
    later than now + :data:`IN_FLIGHT_S` was written while the hub's clock was ahead (the
    clock_jump fault) and counts as waiting too: the hub's clock is not the suite's."""
    import sqlite3

    now = time.time()
    older, newer = int((now - IN_FLIGHT_S) * 1000), int((now + IN_FLIGHT_S) * 1000)
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("SELECT count(*) FROM outbox WHERE created_ms < ? OR created_ms > ?",
                                  (older, newer)).fetchone()[0])
    except sqlite3.Error:
        return -1


def _faketime_env(clock_file: Path) -> dict[str, str] | None:
    """Environment that preloads Debian's libfaketime with a clock the suite can step while
    the process runs: an offset read from ``clock_file`` on every call (no cache), only the
    wall clock faked (CLOCK_MONOTONIC is left alone, as a real step leaves it)."""
    import glob

    libs = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")) + sorted(
        glob.glob("/usr/lib/faketime/libfaketime.so.1"))
    if not libs:  # the fault then reports that it could not be applied
        log.error("libfaketime is not installed (apt-get install faketime; scripts/ensure-services.sh)")
        return None
    clock_file.write_text("+0\n")
    return {"LD_PRELOAD": libs[0], "FAKETIME_TIMESTAMP_FILE": str(clock_file), "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def _stderr() -> Any:
    import sys

    return sys.stderr


def _run(argv: list[str]) -> None:
    import subprocess

    subprocess.run(argv, check=True, capture_output=True)


def _netns_available() -> bool:
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    r = subprocess.run(["ip", "netns", "list"], capture_output=True)
    return r.returncode == 0


def _netns_setup(name: str, host_ip: str, ns_ip: str) -> None:
    """The project's own namespace for one hub: a veth pair, host end ``{name}-h``."""
    _netns_teardown(name)
    _run(["ip", "netns", "add", name])
    _run(["ip", "link", "add", f"{name}-h", "type", "veth", "peer", "name", f"{name}-n"])
    _run(["ip", "link", "set", f"{name}-n", "netns", name])
    _run(["ip", "addr", "add", f"{host_ip}/30", "dev", f"{name}-h"])
    _run(["ip", "link", "set", f"{name}-h", "up"])
    _run(["ip", "netns", "exec", name, "ip", "addr", "add", f"{ns_ip}/30", "dev", f"{name}-n"])
    _run(["ip", "netns", "exec", name, "ip", "link", "set", f"{name}-n", "up"])
    _run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"])


def _netns_teardown(name: str) -> None:
    import subprocess

    subprocess.run(["ip", "link", "del", f"{name}-h"], capture_output=True)
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None
