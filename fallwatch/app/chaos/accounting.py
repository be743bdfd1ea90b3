"""Accounting of a chaos run against the simulator's ground truth.

``lost`` counts every fall alert the edge decided (its journal) that is missing from
InfluxDB, from the state DB, or from the carer's e-mail or web hook; plus telemetry the
edge committed that InfluxDB does not have; plus outbox rows still waiting at the end.
``duplicates_to_staff`` counts every *extra* first-round page ("raised") for one alert at
one channel; reminders of an unacknowledged alert are deliberate and counted apart.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

from fallwatch.app.chaos.runner import SIM_MATCH_TOLERANCE_S, Harness, _outbox_depth, pct


def _journal(path: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line cut by SIGKILL
    return out


def account(h: Harness, settled: bool) -> dict[str, Any]:
    from fallwatch.gateway.state import StateStore
    from fallwatch.sim.fleet import Fleet
    from fallwatch.sim.scenario import load_scenario

    sc = h.sc
    # ---- ground truth and what each hub decided
    truth: list[dict[str, Any]] = []
    decisions: dict[tuple[str, str], dict[str, Any]] = {}
    tele_expected: set[tuple[str, str, int]] = set()
    tele_committed: dict[tuple[str, str, int], float] = {}  # real wall time of the outbox commit
    boots_total = 0
    for hub in h.hubs:
        recs = _journal(hub.dir / "journal.jsonl")
        boots = [r for r in recs if r["kind"] == "boot"]
        boots_total += len(boots)
        kill_walls = [f for f in h.fault_log if f.get("killed_hub") == hub.hub_id]
        for k, boot in enumerate(boots, start=1):
            scn = load_scenario(hub.dir / f"scenario-{k}.toml")
            fleet = Fleet(scn)
            end_wall = h.real_wall(boots[k]) if k < len(boots) else float("inf")
            for ev in fleet.ground_truth:
                if ev.type != "fall" or ev.t_impact_s is None:
                    continue
                impact_ms = boot["start_epoch_ms"] + ev.t_impact_s * 1000
                truth.append({"hub": hub.hub_id, "sensor": ev.sensor_id, "impact_ms": impact_ms,
                              "incarnation": k, "interrupted": impact_ms / 1000 > end_wall - 30 if kill_walls
                              else False})
        for r in recs:
            if r["kind"] == "decision" and r["status"] == "alert":
                # "wall" is the hub's own clock, which the clock_jump fault steps: time by the real one
                decisions.setdefault((hub.hub_id, r["event_id"]), dict(r, hub=hub.hub_id, wall=h.real_wall(r)))
            elif r["kind"] == "tele":
                tkey = (hub.hub_id, str(r["sensor"]), int(r["ts_ms"]))
                tele_expected.add(tkey)
                tele_committed[tkey] = h.real_wall(r)
    matched = 0
    used: set[tuple[str, str]] = set()
    for t in truth:
        for key, d in decisions.items():
            if key in used or d["hub"] != t["hub"] or d["sensor"] != t["sensor"]:
                continue
            if abs(d["impact_ms"] - t["impact_ms"]) <= SIM_MATCH_TOLERANCE_S * 1000:
                used.add(key)
                matched += 1
                t["detected"] = True
                break
    # ---- what was stored
    series = h.influx.query('SELECT "event_id" FROM "fall_alert" WHERE "status" = \'alert\' GROUP BY "device_id"',
                            db="fallwatch")
    in_influx = {(s["tags"]["device_id"], str(v[1])) for s in series for v in s["values"]}
    state = StateStore(h.state_db)
    rows = [a for a in state.alerts(kind="fall", limit=100_000) if a.get("data_status", "alert") == "alert"]
    by_event = {(str(a["device_id"]), str(a.get("event_id"))): a for a in rows}
    state_count: dict[tuple[str, str], int] = defaultdict(int)
    for a in rows:
        state_count[(str(a["device_id"]), str(a.get("event_id")))] += 1
    tele_series = h.influx.query('SELECT "window_s" FROM "telemetry" GROUP BY "device_id", "sensor"', db="fallwatch")
    tele_stored = {(s["tags"]["device_id"], s["tags"]["sensor"], int(v[0])) for s in tele_series for v in s["values"]}
    # ---- what staff got (counted where it arrived; kept in staff-received.jsonl)
    raised_mail: dict[str, list[float]] = defaultdict(list)
    reminders = 0
    with open(h.dir / "staff-received.jsonl", "w") as dump:
        for m, t_ns in zip(h.smtpd.mailbox.messages, h.smtpd.mailbox.arrived_ns, strict=True):
            # strip(): a long id is folded onto a continuation line (RFC 5322), which parses with a leading space
            aid, subj = str(m["X-Fallwatch-Alert"]).strip(), str(m["Subject"]).strip()
            dump.write(json.dumps({"via": "email", "at": t_ns / 1e9, "alert_id": aid, "subject": subj}) + "\n")
            if not aid.startswith("fall:"):
                continue
            if subj.startswith("NOT ACKNOWLEDGED"):
                reminders += 1
            else:
                raised_mail[aid].append(t_ns / 1e9)
        raised_hook: dict[str, list[float]] = defaultdict(list)
        for (path, _, raw), t_ns in zip(h.carer.requests, h.carer.arrived_ns, strict=True):
            try:
                body = json.loads(raw)
            except ValueError:
                continue
            dump.write(json.dumps({"via": "webhook", "at": t_ns / 1e9, "path": path, **body}) + "\n")
            if not str(body.get("alert_id", "")).startswith("fall:"):
                continue
            if body.get("action") == "raised":
                raised_hook[str(body["alert_id"])].append(t_ns / 1e9)
            elif body.get("action") == "escalated":
                reminders += 1
    # ---- per alert
    lost_alerts: list[dict[str, Any]] = []
    to_notify: list[tuple[float, float]] = []  # (decision wall, seconds to the first page)
    to_mail: list[float] = []
    to_hook: list[float] = []
    stored = notified = acked = dup = 0
    for key, d in decisions.items():
        row = by_event.get(key)
        aid = str(row["alert_id"]) if row else ""
        in_db = key in in_influx
        ok_state = row is not None
        mails = raised_mail.get(aid, [])
        hooks = raised_hook.get(aid, [])
        stored += in_db and ok_state
        notified += bool(mails) and bool(hooks)
        dup += max(0, len(mails) - 1) + max(0, len(hooks) - 1) + max(0, state_count[key] - 1)
        if row is not None and row.get("status") in ("acknowledged", "cleared") and row.get("acked_by"):
            acked += 1
        if mails or hooks:
            to_notify.append((d["wall"], min([*mails, *hooks]) - d["wall"]))
        if mails:
            to_mail.append(mails[0] - d["wall"])
        if hooks:
            to_hook.append(hooks[0] - d["wall"])
        if not (in_db and ok_state and mails and hooks):
            lost_alerts.append({"hub": key[0], "event_id": key[1], "influx": in_db, "state": ok_state,
                                "email": bool(mails), "webhook": bool(hooks)})
    unjournaled = sorted(k for k in in_influx if k not in decisions and k[0] != "hub-rogue")
    tele_lost, tele_clamped = _follow_the_clamp(tele_expected - tele_stored, tele_stored - tele_expected,
                                                tele_committed, h.clock_skew_ms)
    lost_at: dict[int, int] = defaultdict(int)  # where in the run the lost telemetry was (10 s bins)
    for _, _, ts in tele_lost:
        lost_at[int((ts / 1000 - h.t0) // 10 * 10)] += 1
    outbox_left = sum(max(0, _outbox_depth(hub.dir / "outbox.sqlite")) for hub in h.hubs)
    lost = len(lost_alerts) + len(tele_lost) + outbox_left
    # ---- the flood: did it hold up other hubs' pages?
    delays = [s for _, s in to_notify]
    flood = [f for f in h.fault_log if f["name"] == "flood"]
    flood_delay = None
    if flood:
        f0 = h.t0 + flood[0]["at_s"]
        f1 = f0 + flood[0]["duration_s"]
        quiet = [s for w, s in to_notify if not any(h.t0 + g["at_s"] - 5 <= w <= h.t0 + g["at_s"] + g["duration_s"]
                                                      + (g["recovered_s"] or 0) + 5 for g in h.fault_log)]
        during = [s for w, s in to_notify if f0 <= w <= f1]
        flood_delay = {"alerts_during_flood": len(during), "max_s": pct(during, 100), "p50_s": pct(during, 50),
                       "quiet_p50_s": pct(quiet, 50),
                       "extra_s": round(max(during) - float(pct(quiet, 50) or 0), 3) if during and quiet else None}
    # ---- each fault: the alerts decided while it lasted (until it recovered) and how long they took
    for f in h.fault_log:
        a0 = h.t0 + f["at_s"]
        a1 = a0 + f["duration_s"] + (f.get("recovered_s") or 0)
        during = [s for w, s in to_notify if a0 <= w <= a1]
        f["alerts_decided"] = len(during)
        f["decision_to_notify_max_s"] = pct(during, 100)
    stats = h.gateway_stats()
    # per-process counters start again at 0 when a replica restarts: add each killed incarnation's
    rejected = sum(int(s.get("rejected", 0)) for snap in [stats, *h.stats_before_kill] for s in snap.values()
                   if isinstance(s, dict) and "error" not in s)
    out: dict[str, Any] = {
        "scenario": sc.name,
        "state": sc.state,
        "replicas": sc.replicas,
        "hubs": len(h.hubs),
        "hub_processes_started": boots_total,
        "network_namespace": h.netns_ok,
        "settled": settled,
        "crashed": dict(h.crashed),
        "falls_injected": len(truth),
        "falls_detected": matched,
        "falls_missed_by_edge": len(truth) - matched,
        "alerts_raised": len(decisions),
        "false_alerts": len(decisions) - len(used),
        "alerts_stored": stored,
        "alerts_notified": notified,
        "duplicates_to_staff": dup,
        "reminders_to_staff": reminders,
        "alerts_acknowledged": acked,
        "telemetry_expected": len(tele_expected),
        "telemetry_stored": len(tele_expected & tele_stored) + tele_clamped,
        "telemetry_clamped": tele_clamped,
        "telemetry_lost": len(tele_lost),
        "telemetry_lost_by_10s": dict(sorted(lost_at.items())),
        "outbox_left": outbox_left,
        "unjournaled_alerts": len(unjournaled),
        "lost": lost,
        "lost_alerts": lost_alerts,
        "t0": h.t0,
        "flood_sent": h.flood_sent,
        "rejected_by_gateways": rejected,
        "dead_letters_received": h.dead_letters.count,  # at the receiving end: survives replica restarts
        "dead_letters_by_reason": dict(sorted(h.dead_letters.by_reason.items())),
        "flood_delay": flood_delay,
        "faults": [{k: v for k, v in f.items()} for f in sorted(h.fault_log, key=lambda f: f["at_s"])],
        "decision_to_notify_p50_s": pct(delays, 50),
        "decision_to_notify_p99_s": pct(delays, 99),
        "decision_to_notify_max_s": pct(delays, 100),
        "decision_to_email_p50_s": pct(to_mail, 50),
        "decision_to_email_p99_s": pct(to_mail, 99),
        "decision_to_webhook_p50_s": pct(to_hook, 50),
        "decision_to_webhook_p99_s": pct(to_hook, 99),
        "decision_to_notify_s": [round(s, 3) for _, s in sorted(to_notify)],
    }
    if sc.soak:
        out["soak"] = soak_report(h, to_notify)
    return out


def _follow_the_clamp(missing: set[tuple[str, str, int]], extra: set[tuple[str, str, int]],
                      committed: dict[tuple[str, str, int], float], skew_ms: int
                      ) -> tuple[set[tuple[str, str, int]], int]:
    """Telemetry a hub stamped beyond the gateway's ``clock_skew_s`` (its clock was ahead:
    the clock_jump fault) is stored at receipt + skew, not at its own stamp. Such a row is
    stored if a point of the same series, not stamped by any journal row, lies between its
    commit + skew and a minute after that (one point per row, oldest first). Returns what
    is still missing and how many were found clamped."""
    ahead = sorted((k for k in missing if k[2] > committed.get(k, float("inf")) * 1000 + skew_ms - 1000),
                   key=lambda k: committed[k])
    pool: dict[tuple[str, str], list[int]] = defaultdict(list)
    for dev, sensor, ts in sorted(extra):
        pool[(dev, sensor)].append(ts)
    found: set[tuple[str, str, int]] = set()
    for k in ahead:
        lo = committed[k] * 1000 + skew_ms - 1000
        for ts in pool[(k[0], k[1])]:
            if lo <= ts <= lo + 61_000:
                pool[(k[0], k[1])].remove(ts)
                found.add(k)
                break
    return missing - found, len(found)


def soak_report(h: Harness, to_notify: list[tuple[float, float]]) -> dict[str, Any]:
    """Per process: memory growth and open fds from the first to the last sample (after a
    warm-up of a fifth of the run); latency drift = p50 of the last third minus the first."""
    procs = {}
    for name, samples in sorted(h.samples.items()):
        if len(samples) < 3:
            continue
        warm = samples[max(1, len(samples) // 5):]
        a, b = warm[0][1], warm[-1][1]
        span_h = max(1e-9, (warm[-1][0] - warm[0][0]) / 3600)
        procs[name] = {"rss_start_mb": round(a["rss_mb"], 1), "rss_end_mb": round(b["rss_mb"], 1),
                       "rss_growth_mb_per_h": round((b["rss_mb"] - a["rss_mb"]) / span_h, 1),
                       "fds_start": int(a["fds"]), "fds_end": int(b["fds"]),
                       "cpu_s": round(b["cpu_s"], 1)}
    lat = [s for _, s in sorted(to_notify)]
    third = max(1, len(lat) // 3)
    drift = None
    if len(lat) >= 6:
        drift = round(float(pct(lat[-third:], 50) or 0) - float(pct(lat[:third], 50) or 0), 3)
    return {"processes": procs, "latency_drift_p50_s": drift}
