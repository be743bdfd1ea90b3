"""``fallwatch demo``: a simulated home through sim → edge → MQTT → gateway → store.

It is the main job in one command: with nothing configured it runs on embedded parts
(an in-process amqtt broker and the gateway's embedded SQLite series store), so it works
on a bare machine; given ``--mqtt-url`` / ``--influx-url`` it runs against a real broker
and InfluxDB. The summary is computed from what was *read back* from the store and
from the simulator's ground truth, not from what the components believe they sent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fallwatch.app import demo_serve
from fallwatch.config import FallwatchConfig, load_config
from fallwatch.pacing import Pacer

log = logging.getLogger("fallwatch.app.demo")

#: A detected alert matches a ground-truth fall when its impact is this close (seconds).
MATCH_TOLERANCE_S = 10.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run a simulated home end to end and print a summary",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--residents", type=int, default=3, help="residents, one flat and hub each (default 3)")
    p.add_argument("--duration", type=float, default=120.0, help="simulated seconds (default 120)")
    p.add_argument("--falls", type=int, default=1, help="falls injected per resident (default 1)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--speed", type=float, default=0.0,
                   help="simulated seconds per wall second; 0 = as fast as possible (default)")
    p.add_argument("--config", type=Path, help="TOML config (mqtt/influx sections are used)")
    p.add_argument("--mqtt-url", help="use this broker instead of the embedded one")
    p.add_argument("--influx-url", help="use this InfluxDB instead of the embedded store")
    p.add_argument("--influx-version", type=int, choices=(1, 2, 3), default=None)
    p.add_argument("--workdir", type=Path, help="keep outboxes/state here (default: a temp dir)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    demo_serve.add_arguments(p)
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    overrides: dict[str, dict[str, object]] = {
        "mqtt": {"url": args.mqtt_url},
        "influx": {"url": args.influx_url, "version": args.influx_version},
    }
    cfg = load_config(args.config, overrides)
    if args.serve:  # a simulated care home kept running with the staff console (fallwatch/app/demo_serve.py)
        return demo_serve.run_serve(cfg, args)
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fw-demo-")))
        summary = run_demo(cfg, residents=args.residents, duration_s=args.duration, falls=args.falls,
                           seed=args.seed, speed=args.speed, workdir=Path(workdir),
                           progress=sys.stderr.isatty() or not args.json)
    _print_summary(summary, sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0 if summary["lost"] == 0 and summary["rejected"] == 0 else 1


@contextlib.contextmanager
def _broker(cfg: FallwatchConfig) -> Iterator[FallwatchConfig]:
    """Yield a config whose mqtt section points at a usable broker."""
    if cfg.mqtt.url:
        yield cfg
        return
    from fallwatch.app.embedded import EmbeddedBroker

    with EmbeddedBroker() as broker:
        mqtt = cfg.mqtt.model_copy(update={"url": broker.url, "protocol": "3.1.1"})
        yield cfg.model_copy(update={"mqtt": mqtt})


class Pipeline:
    """Gateway + one edge agent per simulated hub, wired to one broker and store.

    Shared by the demo, the end-to-end test and the e2e benchmark so all three exercise
    the same wiring.
    """

    def __init__(self, cfg: FallwatchConfig, fleet: Any, workdir: Path, *, channels: Sequence[Any] = (),
                 gateway: dict[str, Any] | None = None, start_agents: bool = True) -> None:
        """``channels``: extra staff notification channels for the gateway (the e2e benchmark's recorder);
        ``gateway``: gateway settings over the pipeline's own (``demo --serve``: its port, staff file)."""
        self.cfg, self.fleet, self.workdir = cfg, fleet, workdir
        self.channels = list(channels)
        self.gateway_settings = dict(gateway or {})
        self.start_agents = start_agents
        self.gateway: Any = None
        self.agents: dict[str, Any] = {}

    def __enter__(self) -> Pipeline:
        from fallwatch.gateway.app import Gateway

        cfg, workdir = self.cfg, self.workdir
        workdir.mkdir(parents=True, exist_ok=True)
        influx = cfg.influx
        if not influx.url:
            influx = influx.model_copy(update={"embedded_path": workdir / "series.sqlite"})
        gw_cfg = cfg.gateway.model_copy(update={
            "state_db": str(workdir / "gateway.sqlite"), "spool_dir": workdir / "spool", "http_port": 0,
            **self.gateway_settings})
        self.gateway = Gateway(cfg.model_copy(update={"influx": influx, "gateway": gw_cfg}), channels=self.channels)
        self.gateway.start()
        try:
            for hub in self.fleet.hubs if self.start_agents else ():
                self.start_agent(hub.hub_id)
        except BaseException:
            self.__exit__()
            raise
        return self

    def start_agent(self, hub_id: str, fleet: Any = None) -> Any:
        """Start (or, after :meth:`stop_agent`, restart on the same outbox) the edge agent of one hub;
        ``fleet``: another simulated fleet with the same hubs (``demo --serve``'s past days)."""
        from fallwatch.edge.agent import EdgeAgent

        fleet = fleet or self.fleet
        cfg, hub = self.cfg, next(h for h in fleet.hubs if h.hub_id == hub_id)
        edge_cfg = cfg.edge.model_copy(update={
            "site_id": hub.site_id, "device_id": hub.hub_id,
            "outbox_path": self.workdir / f"outbox-{hub.hub_id}.sqlite",
            # the shipped model, never one a previous `edge install-model` left in ./var
            "model_dir": self.workdir / f"models-{hub.hub_id}"})
        mqtt_cfg = cfg.mqtt.model_copy(update={"client_id": None})
        agent = EdgeAgent(cfg.model_copy(update={"edge": edge_cfg, "mqtt": mqtt_cfg}),
                          sensors=[s for s in fleet.sensors if s.hub_id == hub.hub_id],
                          start_epoch_ms=_start_epoch_ms(fleet))
        agent.start()
        self.agents[hub.hub_id] = agent
        return agent

    def stop_agent(self, hub_id: str) -> None:
        """A hub switched off: a clean stop (its outbox drains first), fed nothing until restarted."""
        agent = self.agents.pop(hub_id, None)
        if agent is not None:
            agent.stop()

    def drive(self, duration_s: float, *, speed: float = 0.0, step_s: float = 1.0, progress: bool = False,
              on_chunk: Any = None) -> None:
        """Feed the fleet's frames to the hubs; ``speed`` = sim seconds per wall second (0 = max)."""
        pacer = Pacer(speed)
        with tqdm(total=int(duration_s), unit="sim-s", desc="simulating", disable=not progress,
                  file=sys.stderr) as bar:
            for chunk in self.fleet.run(duration_s=duration_s, step_s=step_s):
                pacer.wait(chunk.t_s)
                by_hub: dict[str, list[Any]] = defaultdict(list)
                for frame in chunk.frames:
                    by_hub[frame.hub_id].append(frame)
                for hub_id, agent in self.agents.items():
                    agent.feed(by_hub.get(hub_id, []), chunk.t_s)
                if on_chunk is not None:
                    on_chunk(chunk)
                bar.update(int(chunk.t_s) - bar.n)

    def settle(self, timeout_s: float = 60.0) -> bool:
        """Wait until every outbox is drained and the gateway has stored all it received."""
        flushed = all(a.flush(timeout_s=timeout_s) for a in self.agents.values())
        if not flushed:
            log.error("an edge outbox did not drain within %.0f s", timeout_s)
        return self.gateway.wait_idle(timeout_s=timeout_s) and flushed

    def __exit__(self, *exc: object) -> None:
        for a in self.agents.values():
            a.stop()
        if self.gateway is not None:
            self.gateway.stop()


def run_demo(cfg: FallwatchConfig, *, residents: int = 3, duration_s: float = 120.0, falls: int = 1,
             seed: int = 7, speed: float = 0.0, workdir: Path, progress: bool = True) -> dict[str, Any]:
    from fallwatch.sim.fleet import Fleet
    from fallwatch.sim.scenario import demo_scenario

    t_wall = time.monotonic()
    scenario = demo_scenario(residents=residents, duration_s=duration_s, falls=falls, seed=seed)
    if speed <= 0:
        # accelerated: place the simulated span so it ends now, not in the future (dashboards and
        # InfluxQL's implicit "time < now()" would otherwise hide the freshest points)
        scenario = scenario.model_copy(update={"start_epoch_ms": int(time.time() * 1000 - duration_s * 1000)})
    fleet = Fleet(scenario)
    with _broker(cfg) as live_cfg, Pipeline(live_cfg, fleet, workdir) as pipe:
        pipe.drive(duration_s, speed=speed, progress=progress)
        pipe.settle(60.0)
        edge_stats = {hub: a.stats() for hub, a in pipe.agents.items()}
        gw_stats = pipe.gateway.stats()
        stored = pipe.gateway.alerts()
        telemetry_points = pipe.gateway.count_points("telemetry")
        stored_points = pipe.gateway.count_points("fall_alert")

    truth = [e for e in fleet.ground_truth if e.type == "fall"]
    expected = [e for e in truth if not e.details.get("cancelled_by_wearer")]
    raised = sum(int(s.get("alerts_raised", 0)) for s in edge_stats.values())
    stored_alerts = [a for a in stored if a.get("data_status") == "alert"]
    matched, false_alerts = _match(expected, stored_alerts, _start_epoch_ms(fleet))
    outbox_left = sum(int(s.get("outbox_depth", 0)) for s in edge_stats.values())
    return {
        "residents": residents,
        "hubs": len(edge_stats),
        "devices": sorted(edge_stats),
        "sim_seconds": duration_s,
        "wall_seconds": round(time.monotonic() - t_wall, 2),
        "broker": "embedded-amqtt" if not cfg.mqtt.url else cfg.mqtt.url,
        "store": "embedded-sqlite" if not cfg.influx.url else f"influxdb-v{cfg.influx.version}",
        "falls_injected": len(truth),
        "falls_cancelled_by_wearer": len(truth) - len(expected),
        "fall_alerts": raised,
        "alerts_stored": len(stored_alerts),
        "fall_points_stored": stored_points,
        "falls_detected": matched,
        "falls_missed": len(expected) - matched,
        "false_alerts": false_alerts,
        "telemetry_points": telemetry_points,
        "rejected": int(gw_stats.get("rejected", 0)),
        "duplicates_dropped": int(gw_stats.get("duplicates", 0)),
        "lost": max(0, raised - len(stored_alerts)) + outbox_left,
    }


def _start_epoch_ms(fleet: Any) -> int:
    return int(getattr(fleet, "start_epoch_ms", None) or fleet.scenario.start_epoch_ms)


def _match(expected: list[Any], alerts: list[dict[str, Any]], start_ms: int) -> tuple[int, int]:
    """Greedy one-to-one matching of stored alerts to ground-truth falls (same sensor, impact time)."""
    used: set[int] = set()
    matched = 0
    for fall in expected:
        for i, a in enumerate(alerts):
            if i in used:
                continue
            same_sensor = a.get("sensor") == fall.sensor_id
            impact_s = (int(a["impact_ms"]) - start_ms) / 1000.0
            near = abs(impact_s - float(fall.t_impact_s)) <= MATCH_TOLERANCE_S
            if same_sensor and near:
                used.add(i)
                matched += 1
                break
    return matched, len(alerts) - len(used)


def _print_summary(s: dict[str, Any], out: Any) -> None:
    print("\nfallwatch demo", file=out)
    print(f"  {s['residents']} residents, {s['sim_seconds']:.0f} simulated s in {s['wall_seconds']} s "
          f"(broker: {s['broker']}, store: {s['store']})", file=out)
    print(f"  falls injected {s['falls_injected']} (cancelled by wearer {s['falls_cancelled_by_wearer']}), "
          f"detected {s['falls_detected']}, missed {s['falls_missed']}, false alerts {s['false_alerts']}",
          file=out)
    print(f"  fall alerts raised {s['fall_alerts']}, stored {s['alerts_stored']}, lost {s['lost']}", file=out)
    print(f"  telemetry points stored {s['telemetry_points']}, messages rejected {s['rejected']}, "
          f"duplicates dropped {s['duplicates_dropped']}", file=out)
