"""End-to-end benchmark: simulated homes at real-time speed through the real chain.

sim → edge agents → a private Mosquitto → gateway → a private InfluxDB 1.x, paced at
one simulated second per wall second, so the times measured are the times a carer
would see. For each injected fall it measures the wall time from the simulated impact
to the gateway's staff notification (the ``raised`` event the gateway sends to its
notification channels right after the alert is durable in InfluxDB and the state DB,
seen by an in-process recording channel next to the staff log). That time
includes the wearer's cancel window (EN 50134-2 pre-alarm, ``edge.cancel_window_s``),
which is deliberate; ``notify_after_cancel_window_*`` shows what the system itself adds.
Alerts are then read back from InfluxDB with InfluxQL and compared with ground truth.

The staff side is real too: the gateway pages an on-call carer by e-mail (to an aiosmtpd
server) and by signed web hook (to a local HTTP receiver), and the alerts are counted
where they arrive. ``decision_to_smtp_*`` and ``decision_to_webhook_*`` are the wall time
from the edge agent's decision (the alert committed to its outbox, after the cancel
window) to the message received at the SMTP server and at the web hook receiver.

The falls are placed as in a ``duration_s`` run, but the fleet runs on for the edge's
no-recovery time (and a margin), so a fall only the no-recovery path decides (a wearer who
stays down) is decided inside the run: that is the time a carer would wait for it. A second,
accelerated phase through the same chain simulates a night of sleepers who turn over in
their (pressure-sensed) beds, 60 times an hour each: none of it may raise an alert.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fallwatch.config import load_config
from fallwatch.pacing import Pacer
from fallwatch.testing.receivers import Receiver, SmtpServer
from fallwatch.testing.services import InfluxDB1, Mosquitto

SECRET_ENV = "FALLWATCH_BENCH_WEBHOOK_SECRET"


def paging_overrides(smtp_port: int, hook_url: str) -> dict[str, object]:
    """One carer on call for every site, reached by e-mail and web hook at once."""
    return {
        "channels": [
            {"type": "log"},
            {"type": "smtp", "name": "email", "broadcast": False, "host": "127.0.0.1", "port": smtp_port,
             "security": "none", "from": "fallwatch@bench.example"},
            {"type": "webhook", "name": "hook", "broadcast": False, "url": hook_url, "secret_env": SECRET_ENV},
        ],
        "paging": {
            "people": [{"id": "carer", "name": "Night carer", "all_contacts": True,
                        "contacts": [{"channel": "email", "to": "carer@bench.example"},
                                     {"channel": "hook", "to": f"{hook_url}/carer"}]}],
            "teams": [{"id": "night", "sites": ["*"], "shifts": [{"people": ["carer"]}], "quiet_hours": None}],
        },
    }


def _pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 3) if values else float("nan")


def run(quick: bool = False, progress: bool = True) -> dict[str, Any]:
    from fallwatch.app.demo import Pipeline
    from fallwatch.gateway.channels import Action
    from fallwatch.sim.fleet import Fleet
    from fallwatch.sim.scenario import demo_scenario
    from fallwatch.testing.channels import RecordingChannel

    residents, falls_s = (4, 60.0) if quick else (12, 100.0)
    recorder = RecordingChannel()
    os.environ.setdefault(SECRET_ENV, secrets.token_hex(16))
    smtpd, hooks = SmtpServer().start(), Receiver()
    decided: dict[tuple[str, str], float] = {}  # (device, event id) -> wall time of the edge's decision
    with tempfile.TemporaryDirectory(prefix="fw-bench-e2e-") as tmp, Mosquitto() as broker, InfluxDB1() as db:
        cfg = load_config(overrides={"mqtt": {"url": broker.url}, "influx": {"url": db.url, "version": 1},
                                     "gateway": paging_overrides(smtpd.port, hooks.url)})
        scenario = demo_scenario(residents=residents, duration_s=falls_s, falls=1, seed=2024)
        duration_s = falls_s + cfg.edge.no_recovery_s + 15.0
        scenario = scenario.model_copy(update={"start_epoch_ms": int(time.time() * 1000), "duration_s": duration_s})
        fleet = Fleet(scenario)
        with Pipeline(cfg, fleet, Path(tmp), channels=[recorder]) as pipe:
            for dev, agent in pipe.agents.items():
                agent.on_alert(lambda d, dev=dev: decided.setdefault((dev, d.event_id), time.time())
                               if d.status == "alert" else None)
            wall0 = time.time()
            pipe.drive(duration_s, speed=1.0, step_s=0.25, progress=progress)
            # let the last cancel windows expire at real-time pace, then drain
            tail_s = cfg.edge.cancel_window_s + 5.0
            pacer, now_s = Pacer(1.0, start_s=duration_s), duration_s
            while now_s < duration_s + tail_s:
                now_s += 0.25
                pacer.wait(now_s)
                for agent in pipe.agents.values():
                    agent.feed([], now_s)
            pipe.settle(60.0)
            pipe.gateway.pager.wait_idle(30)
            alerts = pipe.gateway.alerts()
            raised = sum(int(a.stats().get("alerts_raised", 0)) for a in pipe.agents.values())
            outbox_left = sum(int(a.stats().get("outbox_depth", 0)) for a in pipe.agents.values())
            no_recovery = sum(int(a.stats().get("no_recovery_decisions", 0)) for a in pipe.agents.values())
        night = _night(cfg, Path(tmp), quick)
        series = db.query("SELECT count(\"confidence\") FROM \"fall_alert\" WHERE \"status\" = 'alert'",
                          db="fallwatch")
        stored = int(series[0]["values"][0][1]) if series else 0

    smtpd.stop()
    hooks.close()
    mail_at: dict[str, float] = {}
    for m, t_ns in zip(smtpd.mailbox.messages, smtpd.mailbox.arrived_ns, strict=True):
        mail_at.setdefault(str(m["X-Fallwatch-Alert"]).strip(), t_ns / 1e9)  # a long id is folded
    pages_by_kind: dict[str, int] = {}
    hook_at: dict[str, float] = {}
    for (_, _, raw), t_ns in zip(hooks.requests, hooks.arrived_ns, strict=True):
        body = json.loads(raw)
        kind = str(body.get("page_kind") or body.get("kind"))
        pages_by_kind[kind] = pages_by_kind.get(kind, 0) + (body.get("action") == "raised")
        if body.get("action") == "raised":
            hook_at.setdefault(str(body["alert_id"]), t_ns / 1e9)
    to_smtp, to_hook = [], []
    for a in alerts:
        t_dec = decided.get((str(a["device_id"]), str(a.get("event_id"))))
        if t_dec is None or a.get("data_status") != "alert":
            continue
        if a["alert_id"] in mail_at:
            to_smtp.append(mail_at[a["alert_id"]] - t_dec)
        if a["alert_id"] in hook_at:
            to_hook.append(hook_at[a["alert_id"]] - t_dec)
    notified_at = recorder.first_times("fall", Action.RAISED)
    truth = [e for e in fleet.ground_truth if e.type == "fall" and not e.details.get("cancelled_by_wearer")]
    by_sensor = {e.sensor_id: e for e in truth}
    delays, after_window = [], []
    per_fall: dict[str, int] = {}
    for a in alerts:
        if a.get("data_status") != "alert" or a["alert_id"] not in notified_at:
            continue
        fall = by_sensor.get(a.get("sensor"))
        if fall is None or fall.t_impact_s is None:
            continue
        key = str(fall.sensor_id)
        per_fall[key] = per_fall.get(key, 0) + 1
        if per_fall[key] > 1:
            continue  # a second alert for the same fall: counted below, not a second detection
        impact_wall = wall0 + float(fall.t_impact_s)
        d = notified_at[a["alert_id"]] - impact_wall
        delays.append(d)
        after_window.append(d - cfg.edge.cancel_window_s)
    fall_ids = {a["alert_id"] for a in alerts if a.get("data_status") == "alert"}
    return {
        "residents": residents,
        "sim_seconds": duration_s,
        "falls_injected": len(truth),
        "falls_detected": len(delays),
        "falls_missed": len(truth) - len(delays),
        "duplicate_alerts": sum(n - 1 for n in per_fall.values()),
        "no_recovery_decisions": no_recovery,
        "fall_alerts_raised": raised,
        "alerts_stored": stored,
        "alerts_notified": len(fall_ids & mail_at.keys() & hook_at.keys()),  # counted where they arrived
        "alerts_notified_smtp": len(fall_ids & mail_at.keys()),
        "alerts_notified_webhook": len(fall_ids & hook_at.keys()),
        "emails_received": smtpd.mailbox.count(),
        "webhooks_received": len(hooks.requests),
        "pages_by_kind": pages_by_kind,
        "lost": max(0, raised - stored) + outbox_left,
        "cancel_window_s": cfg.edge.cancel_window_s,
        "impact_to_notify_p50_s": _pct(delays, 50),
        "impact_to_notify_p99_s": _pct(delays, 99),
        "notify_after_cancel_window_p50_s": _pct(after_window, 50),
        "notify_after_cancel_window_p99_s": _pct(after_window, 99),
        "decision_to_smtp_p50_s": _pct(to_smtp, 50),
        "decision_to_smtp_p99_s": _pct(to_smtp, 99),
        "decision_to_webhook_p50_s": _pct(to_hook, 50),
        "decision_to_webhook_p99_s": _pct(to_hook, 99),
        "_impact_to_notify_s": delays,
        "_decision_to_smtp_s": to_smtp,
        **night,
    }


def _night(cfg: Any, tmp: Path, quick: bool) -> dict[str, Any]:
    """Sleepers turning over in occupied beds, accelerated through the same chain: alerts must be 0."""
    from fallwatch.app.demo import Pipeline
    from fallwatch.sim.fleet import Fleet
    from fallwatch.sim.scenario import Profile, Resident, Scenario, flat_site

    sleepers, night_s = (2, 900.0) if quick else (4, 1800.0)
    prof = Profile(turns_per_hour=60.0, night_bathroom_visits=0.0)
    sites = [flat_site(50 + i, Resident(id=f"n{i + 1:02d}", profile=prof, start_room="bedroom"))
             for i in range(sleepers)]
    scn = Scenario(name="night", seed=2025, duration_s=night_s, start_hour=23.0, sites=sites,
                   start_epoch_ms=int(time.time() * 1000) - int(night_s * 1000))
    fleet = Fleet(scn)
    with Pipeline(cfg, fleet, tmp / "night") as pipe:
        pipe.drive(night_s, speed=0.0, step_s=1.0)
        for agent in pipe.agents.values():
            agent.feed([], night_s + cfg.edge.cancel_window_s + 5.0)
        pipe.settle(60.0)
        stats = [a.stats() for a in pipe.agents.values()]
        alerts = [a for a in pipe.gateway.alerts() if a.get("data_status") == "alert"]
    turns = [e for e in fleet.ground_truth if e.type == "adl" and e.details.get("activity") == "roll"]
    return {
        "night_sleepers": sleepers,
        "night_sim_seconds": night_s,
        "night_turns_in_bed": len(turns),
        "night_turn_triggers": sum(int(s.get("windows_scored", 0)) for s in stats),
        "night_stood_down_in_bed": sum(int(s.get("alerts_stood_down_in_occupied_bed", 0)) for s in stats),
        "night_stood_down_lying_before": sum(int(s.get("alerts_stood_down_lying_before", 0)) for s in stats),
        "night_alerts": len(alerts),
    }
