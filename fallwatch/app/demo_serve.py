"""``fallwatch demo --serve``: a simulated care home kept running, with the staff console open.

What a newcomer sees at once: a handful of residents (names and flats in the provisioning
registry, as a real installation has them), each in a flat with a hub, a wearable and
room sensors; falls now and then; one hub switched off for a while and back (the
technician's device page shows it offline, then fine, with nothing lost); the edge's own
daily-risk scoring run every ``--risk-every`` seconds, after ``--history-days`` past days
seeded through the same edge path (:func:`seed_history`). The console is at a printed
loopback URL with a printed sign-in for a carer, a team lead and a technician — passwords
generated for this run, never a default — until Ctrl-C, which stops the simulation, lets
every outbox drain into the gateway and prints what was injected, raised and stored.

It runs in real time (the console shows times as they are). The simulator's risk drift is
per *simulated day*, so within a session risk would hardly move; hence the seeded past days,
which the printed text calls seeded. With nothing configured it uses the embedded parts of
the plain demo (an in-process broker, the embedded SQLite series store).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fallwatch.config import FallwatchConfig
from fallwatch.pacing import Pacer

#: fictional residents (name, flat) for the simulated home; more residents reuse them with a number
RESIDENTS = [("Greta Lind", "lgh 1101"), ("Karl Berg", "lgh 1102"), ("Maj Holm", "lgh 1201"),
             ("Sven Ek", "lgh 1202"), ("Elsa Nord", "lgh 1301"), ("Bertil Sjö", "lgh 1302"),
             ("Ingrid Falk", "lgh 1401"), ("Åke Strand", "lgh 1402")]
#: the three people who sign in (role, name); their passwords are made per run
STAFF = [("carer", "Anna Svensson"), ("lead", "Lena Karlsson"), ("technician", "Tomas Ek")]
ROLE_LABEL = {"carer": "carer", "lead": "team lead", "technician": "technician"}
#: a hub is offline after this much silence in the demo (the gateway's default is 180 s)
OFFLINE_AFTER_S = 60.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("--serve (keep a simulated care home running with the staff console)")
    g.add_argument("--serve", action="store_true", help="run until Ctrl-C with the console at a printed URL")
    g.add_argument("--port", type=int, default=0, help="console port on 127.0.0.1 (default: a free one)")
    g.add_argument("--hours", type=float, default=24.0, help="simulated hours before the home goes quiet "
                                                             "(the console stays up; default 24)")
    g.add_argument("--first-fall", type=float, default=40.0, help="seconds until the first fall (default 40)")
    g.add_argument("--fall-every", type=float, default=300.0, help="seconds between falls (default 300)")
    g.add_argument("--offline-at", type=float, default=150.0,
                   help="seconds until one hub is switched off (default 150)")
    g.add_argument("--offline-for", type=float, default=150.0, help="how long it stays off (default 150)")
    g.add_argument("--risk-every", type=float, default=600.0,
                   help="seconds between the edge's risk scorings (default 600)")
    g.add_argument("--history-days", type=int, default=14,
                   help="past days of risk scores to seed through the edge's risk path before the home "
                        "goes live (2 simulated minutes each, back-dated; 0 = none; default 14)")


def demo_residents(residents: int, seed: int, day: int = 0) -> list[Any]:
    """The residents as they are on ``day`` of the simulator's drift: every other one declines
    (slower, more variable gait, slower sit-to-stand), which is what the edge's risk scores."""
    import random

    from fallwatch.sim.scenario import Drift, Profile, Resident
    from fallwatch.sim.timeline import profile_at

    rng = random.Random(seed)
    out = []
    for i in range(residents):
        prof = Profile(age=rng.randint(72, 92), gait_speed_mps=rng.uniform(0.6, 1.1),
                       cadence_spm=rng.uniform(88, 112), stride_cv=rng.uniform(0.02, 0.06),
                       sit_to_stand_s=rng.uniform(1.8, 3.5), frailty=rng.uniform(0.1, 0.6), cancel_prob=0.0)
        drift = Drift(gait_speed_mps=-0.015, stride_cv=0.003, sit_to_stand_s=0.08) if i % 2 == 0 else None
        base = Resident(id=f"r{i + 1:02d}", profile=prof, drift=drift, start_room="living")
        out.append(base.model_copy(update={"profile": profile_at(base, day * 86400.0)}))
    return out


def serve_scenario(residents: int, duration_s: float, first_fall_s: float, fall_every_s: float,
                   quiet: tuple[str, float, float] | None, seed: int, day: int = 0) -> Any:
    """One flat per resident, as on ``day`` of their drift; falls rotating over the residents,
    none for ``quiet``'s resident (resident id, from, to) while their hub is off (a fall there
    would have no hub to see it)."""
    from fallwatch.sim.scenario import FALL_KINDS, UNRECOVERED_LYING_S, Event, Scenario, flat_site

    sites = [flat_site(i + 1, r) for i, r in enumerate(demo_residents(residents, seed, day))]
    events, at, k = [], first_fall_s, 0
    while at < duration_s - 120:
        rid = f"r{k % residents + 1:02d}"
        if quiet is not None and rid == quiet[0] and quiet[1] - 60 <= at <= quiet[2] + 30:
            k += 1
            continue
        recovered = k % 2 == 1
        events.append(Event(type="fall", resident=rid, at_s=round(at, 2), kind=FALL_KINDS[k % len(FALL_KINDS)],
                            lying_s=30.0 if recovered else UNRECOVERED_LYING_S, recovered=recovered,
                            cancelled=False))
        at += fall_every_s
        k += 1
    return Scenario(name="demo-serve", seed=seed, duration_s=duration_s, sites=sites, events=events)


#: simulated seconds of each seeded past day (the edge scores a day with at least 60 s of wear)
HISTORY_DAY_S = 120.0


def seed_history(pipe: Any, residents: int, seed: int, days: int, progress: bool) -> int:
    """Seed ``days`` past days of risk scores through the edge's own risk path.

    For each past day a short stretch of that day is simulated (``HISTORY_DAY_S``, the
    residents as the simulator's drift has them on that day, no falls), fed at full speed to
    each hub's edge agent on the hub's own outbox with that day's clock, and scored
    (``EdgeAgent.score_risk``: gait and night features, the shipped model). So the scores
    are the edge's, computed from simulated movement, but the days are compressed to two
    minutes each and back-dated: that is what "seeded" means here, and the printed text says
    so. The hubs keep their gait history (the trend feature) for the live run.
    """
    from tqdm import tqdm

    from fallwatch.sim.fleet import Fleet
    from fallwatch.sim.scenario import Scenario, flat_site

    now_ms = int(time.time() * 1000)
    scored = 0
    for d in tqdm(range(days), desc="seeding past days", unit="day", disable=not progress, file=sys.stderr):
        sites = [flat_site(i + 1, r) for i, r in enumerate(demo_residents(residents, seed, d))]
        start = now_ms - (days - d) * 86_400_000
        fleet = Fleet(Scenario(name=f"demo-serve-day-{d}", seed=seed + d, duration_s=HISTORY_DAY_S, sites=sites,
                               start_epoch_ms=start))
        agents = {h.hub_id: pipe.start_agent(h.hub_id, fleet=fleet) for h in fleet.hubs}
        t_s = 0.0
        for chunk in fleet.run(step_s=1.0):
            t_s = chunk.t_s
            by_hub: dict[str, list[Any]] = {}
            for frame in chunk.frames:
                by_hub.setdefault(frame.hub_id, []).append(frame)
            for hub_id, agent in agents.items():
                agent.feed(by_hub.get(hub_id, []), t_s)
        for hub_id, agent in agents.items():
            scored += len(agent.score_risk(t_s))
            pipe.stop_agent(hub_id)
    return scored


def _register(registry: Any, fleet: Any, names: dict[str, tuple[str, str]]) -> None:
    """Put the home into the provisioning registry: hubs, wearables, room sensors, residents, who wears what."""
    for hub in fleet.hubs:
        registry.add_device(hub.hub_id, "hub", actor="demo", site_id=hub.site_id)
    for s in fleet.sensors:
        if s.kind == "wearable":
            registry.add_device(s.sensor_id, "wearable", actor="demo", hub_id=s.hub_id)
        else:
            registry.add_device(s.sensor_id, "sensor", actor="demo", hub_id=s.hub_id, room=s.room,
                                sensor_kind=s.kind)
    for hub in fleet.hubs:
        for rid in hub.resident_ids:
            name, flat = names[rid]
            registry.add_resident(hub.site_id, rid, actor="demo", name=name, flat=flat)
    for s in fleet.sensors:
        if s.kind == "wearable" and s.resident_id:
            registry.assign(s.sensor_id, s.resident_id, actor="demo")


def run_serve(cfg: FallwatchConfig, args: argparse.Namespace) -> int:
    from fallwatch.app.demo import Pipeline, _broker, _match
    from fallwatch.gateway.staff import StaffDirectory
    from fallwatch.sim.fleet import Fleet

    residents = args.residents
    duration_s = args.hours * 3600
    off_hub_resident = f"r{residents:02d}"
    off_from, off_to = args.offline_at, args.offline_at + args.offline_for
    days = max(0, int(args.history_days))
    scenario = serve_scenario(residents, duration_s, args.first_fall, args.fall_every,
                              (off_hub_resident, off_from, off_to) if residents > 1 else None, args.seed, days)
    names = {f"r{i + 1:02d}": (RESIDENTS[i % len(RESIDENTS)][0] + (f" {i // len(RESIDENTS) + 1}"
                                                                    if i >= len(RESIDENTS) else ""),
                               RESIDENTS[i % len(RESIDENTS)][1] if i < len(RESIDENTS) else f"lgh {1500 + i}")
             for i in range(residents)}
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fw-serve-")))
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        staff_file = workdir / "staff.toml"
        staff_file.unlink(missing_ok=True)  # a run's sign-ins are its own
        users = StaffDirectory(staff_file)
        signins = []
        for role, name in STAFF:
            password = secrets.token_urlsafe(9)  # generated per run: never a default password
            users.add(name, role, password=password)
            signins.append((role, name, password))
        fleet = Fleet(scenario)
        live_cfg = stack.enter_context(_broker(cfg))
        gateway = {"http_host": "127.0.0.1", "http_port": args.port, "staff_users_file": staff_file,
                   "offline_after_s": OFFLINE_AFTER_S}
        pipe = stack.enter_context(Pipeline(live_cfg, fleet, workdir, gateway=gateway, start_agents=False))
        _register(pipe.gateway.pager.registry, fleet, names)
        seeded = seed_history(pipe, residents, args.seed, days, progress=sys.stderr.isatty()) if days else 0
        for hub in fleet.hubs:
            pipe.start_agent(hub.hub_id)
        off_hub = fleet.hubs[-1].hub_id if residents > 1 else None
        out = sys.stdout
        print("\nfallwatch demo --serve: a simulated care home is running (Ctrl-C stops it)", file=out)
        print(f"  {residents} residents, one flat and hub each; a fall about every {args.fall_every:.0f} s "
              f"(the first after {args.first_fall:.0f} s)", file=out)
        if off_hub:
            print(f"  hub {off_hub} is switched off after {off_from:.0f} s for {args.offline_for:.0f} s "
                  f"(offline on the device page after {OFFLINE_AFTER_S:.0f} s of silence)", file=out)
        if days:
            print(f"  risk history SEEDED: {days} past days, each a 2-minute simulated stretch of that day scored "
                  f"by the edge's risk model and back-dated ({seeded} scores;\n    2-minute days "
                  "are not real days: docs/demo.md)", file=out)
        else:
            print("  no risk history seeded (--history-days 0): the risk trend starts today", file=out)
        print(f"  the edge scores fall risk every {args.risk_every:.0f} s from then on", file=out)
        print(f"  console:     {pipe.gateway.http_url}/staff", file=out)
        print("  sign in with name / password (made for this run):", file=out)
        for role, name, password in signins:
            print(f"  {ROLE_LABEL[role] + ':':<12} {name} / {password}", file=out)
        out.flush()
        retired: list[dict[str, Any]] = []  # the counters of a hub's agent before it was switched off
        t_s = _drive(pipe, fleet, stop, off_hub, off_from, off_to, args.risk_every, retired)
        print("\nstopping: letting every hub's outbox drain into the gateway ...", file=out, flush=True)
        if off_hub and off_hub not in pipe.agents:
            pipe.start_agent(off_hub)  # a hub still off keeps its outbox: switched on, it delivers
        settled = pipe.settle(60.0)
        edge = {hub: a.stats() for hub, a in pipe.agents.items()}
        stored = [a for a in pipe.gateway.alerts() if a.get("data_status") == "alert"]
    truth = [e for e in fleet.truth_until(t_s) if e.type == "fall" and not e.details.get("cancelled_by_wearer")]
    raised = sum(int(s.get("alerts_raised", 0)) for s in [*edge.values(), *retired])
    detected, _false = _match(truth, stored, int(fleet.start_epoch_ms))
    left = sum(int(s.get("outbox_depth", 0)) for s in edge.values())
    summary = {"sim_seconds": round(t_s, 1), "falls_injected": len(truth), "falls_detected": detected,
               "fall_alerts": raised, "alerts_stored": len(stored), "outbox_left": left,
               "lost": max(0, raised - len(stored)) + left, "settled": settled}
    print(f"  {t_s:.0f} s simulated: falls injected {len(truth)}, detected {detected}; alerts raised {raised}, "
          f"stored {len(stored)}, lost {summary['lost']}", file=sys.stdout)
    print(json.dumps(summary, sort_keys=True), file=sys.stdout, flush=True)
    return 0 if summary["lost"] == 0 and settled else 1


def _drive(pipe: Any, fleet: Any, stop: threading.Event, off_hub: str | None, off_from: float, off_to: float,
           risk_every: float, retired: list[dict[str, Any]]) -> float:
    """Feed the fleet in real time until ``stop``; switch ``off_hub`` off and on; score risk."""
    from collections import defaultdict

    pacer = Pacer(1.0)
    t_s, next_risk, off = 0.0, risk_every, False
    stopped_at: float | None = None
    for chunk in fleet.run(step_s=1.0):
        if stop.is_set():
            # an alarm inside its cancel window is decided before the hubs stop, not left behind
            waiting = sum(len(a.decisions.pending) for a in pipe.agents.values())
            if stopped_at is None and waiting:
                print(f"\nstopping: {waiting} alarm(s) inside their cancel window are decided first ...",
                      file=sys.stdout, flush=True)
            stopped_at = t_s if stopped_at is None else stopped_at
            if not waiting or t_s - stopped_at > 60.0:
                break
        pacer.wait(chunk.t_s)
        t_s = chunk.t_s
        if off_hub and not off and off_from <= t_s < off_to:
            retired.append(pipe.agents[off_hub].stats())
            pipe.stop_agent(off_hub)
            off = True
        elif off_hub and off and t_s >= off_to:
            pipe.start_agent(off_hub)
            off = False
        by_hub: dict[str, list[Any]] = defaultdict(list)
        for frame in chunk.frames:
            by_hub[frame.hub_id].append(frame)
        for hub_id, agent in list(pipe.agents.items()):
            agent.feed(by_hub.get(hub_id, []), t_s)
        if t_s >= next_risk:
            for agent in list(pipe.agents.values()):
                agent.score_risk(t_s)
            next_risk += risk_every
    else:
        print("the simulated hours are over: the console stays up until Ctrl-C", file=sys.stdout, flush=True)
        while not stop.wait(0.5):
            pass
    return t_s
