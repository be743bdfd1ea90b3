"""The technician's view of the fleet: every hub and sensor, and what needs a visit first.

It joins what the gateway *heard* (the ``devices`` table of the state store: last seen,
outbox depth, firmware and model version, the per-sensor health a hub reports) with what the
provisioning registry *knows* (kind, room, certificate expiry) and the open device alerts
(offline, test alarm overdue, certificate expiring). It is built for the ``technician``
role, so it carries no resident data at all: no names, no wearer assignment, no falls, no
risk — only device facts (a wearable is listed as a device, not as the person who wears it).

Why the offline and overdue flags are recomputed here as well as read from the open alerts:
the supervisor raises its alerts on a timer (every few seconds), so between two checks the
page would otherwise show a hub as fine that has been silent past its limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Row = dict[str, Any]

#: a sensor battery below this needs a visit (the edge warns at 15 %: a visit takes a day or two)
LOW_BATTERY_PCT = 20.0
#: a certificate expiring within this many days needs renewing (as the gateway's own alert)
CERT_WARN_DAYS = 30.0
#: problem codes, most urgent first (the sort order of the list)
PROBLEMS = ("offline", "sensor_fault", "low_battery", "test_overdue", "cert_expiring", "never_heard")
#: the device alert kinds that mark a problem of the device they name
_ALERT_PROBLEM = {"device_offline": "offline", "test_overdue": "test_overdue", "cert_expiring": "cert_expiring"}
#: registry fields a technician may read (never the wearer, never the resident)
_REGISTRY_FIELDS = ("kind", "hub_id", "room", "sensor_kind", "status", "cert_not_after_ms")


@dataclass(frozen=True, slots=True)
class DeviceLimits:
    """The gateway's supervision limits (``gateway.offline_after_s``, ``test_alarm_max_age_h``)."""

    offline_after_s: float = 180.0
    test_alarm_max_age_h: float = 24.0


#: the config's defaults (a gateway passes its own)
DEFAULT_LIMITS = DeviceLimits()


def _blank(site_id: str, device_id: str) -> Row:
    return {"site_id": site_id, "device_id": device_id, "kind": None, "hub_id": None, "room": None,
            "sensor_kind": None, "registry_status": None, "last_seen_ms": None, "battery_pct": None,
            "rssi_dbm": None, "outbox_depth": None, "fw": None, "model_version": None, "state": None,
            "sensor_status": None, "last_test_ms": None, "test_due_ms": None, "cert_not_after_ms": None,
            "offline": False, "test_overdue": False, "problems": []}


def device_overview(heard: list[Row], registered: list[Row], open_alerts: list[Row], now_ms: int,
                    limits: DeviceLimits = DEFAULT_LIMITS) -> list[Row]:
    """One row per hub and per sensor, those that need a visit first (then by site and hub).

    ``heard``: the state store's device rows (``sensors`` holds the hub's last health report
    per sensor); ``registered``: the provisioning registry's devices (may be empty);
    ``open_alerts``: open alerts (fall alerts are ignored: they are not device facts).
    """
    rows: dict[str, Row] = {}
    offline_ms = limits.offline_after_s * 1000
    test_ms = int(limits.test_alarm_max_age_h * 3600 * 1000)
    for d in heard:
        hub = rows.setdefault(str(d["device_id"]), _blank(str(d["site_id"]), str(d["device_id"])))
        hub["kind"] = "hub"
        for k in ("last_seen_ms", "outbox_depth", "fw", "model_version", "state", "last_test_ms"):
            hub[k] = d.get(k)
        ref = d.get("last_test_ms") or d.get("first_seen_ms")
        if ref is not None:
            hub["test_due_ms"] = int(ref) + test_ms
        silent = now_ms - int(d["last_seen_ms"])
        hub["offline"] = d.get("state") == "lost" or silent > offline_ms
        for sid, s in (d.get("sensors") or {}).items():
            row = rows.setdefault(str(sid), _blank(hub["site_id"], str(sid)))
            row.update(hub_id=hub["device_id"], battery_pct=s.get("battery_pct"), rssi_dbm=s.get("rssi_dbm"),
                       sensor_status=s.get("status"))
            seen = s.get("last_seen_ms")
            row["last_seen_ms"] = int(seen) if seen else None  # 0: never heard since the hub started
    for r in registered:
        if r.get("kind") == "gateway" or r.get("status") == "retired":
            continue
        row = rows.setdefault(str(r["device_id"]), _blank(str(r["site_id"]), str(r["device_id"])))
        for k in _REGISTRY_FIELDS:
            if r.get(k) is not None:
                row["registry_status" if k == "status" else k] = r[k]
    for a in open_alerts:
        problem = _ALERT_PROBLEM.get(str(a.get("kind")))
        flagged = rows.get(str(a.get("device_id")))
        if problem is None or flagged is None:
            continue
        if problem == "offline":
            flagged["offline"] = True
        elif problem == "test_overdue":
            flagged["test_overdue"] = True
        elif problem not in flagged["problems"]:
            flagged["problems"].append(problem)
    for row in rows.values():
        row["kind"] = row["kind"] or ("sensor" if row["hub_id"] else "hub")
        parent = rows.get(str(row["hub_id"])) if row["hub_id"] else None
        if row["kind"] == "hub":
            due = row["test_due_ms"]
            row["test_overdue"] = row["test_overdue"] or (due is not None and now_ms > due)
        row["problems"] = _problems(row, parent, now_ms)
    return sorted(rows.values(), key=_order)


def _problems(row: Row, hub: Row | None, now_ms: int) -> list[str]:
    found = set(row["problems"])
    if row["offline"]:
        found.add("offline")
    if row["sensor_status"] not in (None, "ok") and not (hub and hub["offline"]):
        found.add("sensor_fault")  # a hub that is offline reports nothing new about its sensors
    if row["battery_pct"] is not None and float(row["battery_pct"]) < LOW_BATTERY_PCT:
        found.add("low_battery")
    if row["test_overdue"]:
        found.add("test_overdue")
    cert = row["cert_not_after_ms"]
    if cert is not None and int(cert) - now_ms < CERT_WARN_DAYS * 86_400_000:
        found.add("cert_expiring")
    if row["last_seen_ms"] is None and row["sensor_status"] is None and not row["offline"]:
        found.add("never_heard")  # registered, but it (or its hub) never reported
    return [p for p in PROBLEMS if p in found]


def _order(row: Row) -> tuple[Any, ...]:
    worst = min((PROBLEMS.index(p) for p in row["problems"]), default=len(PROBLEMS))
    return (worst, row["site_id"], row["hub_id"] or row["device_id"], row["hub_id"] is not None, row["device_id"])
