"""The technician's device list: what needs a visit comes first, and no resident data is in it."""

from __future__ import annotations

from fallwatch.gateway.devices_view import DeviceLimits, device_overview

NOW = 1_800_000_000_000
LIMITS = DeviceLimits(offline_after_s=180.0, test_alarm_max_age_h=24.0)


def _hub(device_id: str, site: str, seen_ago_s: float, test_ago_h: float = 1.0, **sensors: dict) -> dict:
    return {"site_id": site, "device_id": device_id, "first_seen_ms": NOW - 86_400_000 * 9,
            "last_seen_ms": NOW - int(seen_ago_s * 1000), "last_test_ms": NOW - int(test_ago_h * 3.6e6),
            "outbox_depth": 3, "fw": "1.2.0", "model_version": "fall-7", "state": "ready", "sensors": sensors}


def test_offline_hub_first_then_low_battery_then_overdue_test_then_the_fine_ones() -> None:
    heard = [
        _hub("hub-a", "flat-01", 10, wear_1={"battery_pct": 80.0, "status": "ok", "last_seen_ms": NOW - 5000}),
        _hub("hub-b", "flat-02", 600),  # silent past the 180 s limit
        _hub("hub-c", "flat-03", 10, bed_3={"battery_pct": 12.0, "status": "ok", "last_seen_ms": NOW - 60_000}),
        _hub("hub-d", "flat-04", 10, test_ago_h=30),
    ]
    registered = [
        {"device_id": "hub-a", "kind": "hub", "site_id": "flat-01", "status": "active",
         "cert_not_after_ms": NOW + 400 * 86_400_000},
        {"device_id": "wear_1", "kind": "wearable", "site_id": "flat-01", "hub_id": "hub-a", "status": "active"},
        {"device_id": "bed_3", "kind": "sensor", "sensor_kind": "bed", "room": "bedroom", "site_id": "flat-03",
         "hub_id": "hub-c", "status": "active"},
        {"device_id": "door_9", "kind": "sensor", "sensor_kind": "door", "room": "hall", "site_id": "flat-01",
         "hub_id": "hub-a", "status": "active"},  # registered, never reported by its hub
        {"device_id": "gw-1", "kind": "gateway", "site_id": "*", "status": "active"},
    ]
    rows = device_overview(heard, registered, [], NOW, LIMITS)
    order = [r["device_id"] for r in rows]
    assert order[:3] == ["hub-b", "bed_3", "hub-d"], order
    assert "gw-1" not in order
    by = {r["device_id"]: r for r in rows}
    assert by["hub-b"]["offline"] and by["hub-b"]["problems"] == ["offline"]
    assert by["bed_3"]["problems"] == ["low_battery"] and by["bed_3"]["sensor_kind"] == "bed"
    assert by["hub-d"]["test_overdue"] and by["hub-d"]["problems"] == ["test_overdue"]
    assert by["door_9"]["problems"] == ["never_heard"]
    assert by["hub-a"]["problems"] == [] and by["hub-a"]["outbox_depth"] == 3
    assert by["wear_1"]["kind"] == "wearable" and by["wear_1"]["hub_id"] == "hub-a"
    # a sensor is listed right after its hub among the fine ones
    assert order.index("wear_1") == order.index("hub-a") + 1


def test_open_device_alerts_mark_their_device_and_a_fall_alert_adds_nothing() -> None:
    heard = [_hub("hub-a", "flat-01", 10), _hub("hub-b", "flat-02", 10)]
    registered = [{"device_id": "hub-b", "kind": "hub", "site_id": "flat-02", "status": "active",
                   "cert_not_after_ms": NOW + 5 * 86_400_000}]
    alerts = [{"kind": "device_offline", "device_id": "hub-a", "site_id": "flat-01", "resident_id": None},
              {"kind": "fall", "device_id": "hub-b", "site_id": "flat-02", "resident_id": "r07"}]
    rows = device_overview(heard, registered, alerts, NOW, LIMITS)
    by = {r["device_id"]: r for r in rows}
    assert by["hub-a"]["offline"] and by["hub-a"]["problems"] == ["offline"]
    assert by["hub-b"]["problems"] == ["cert_expiring"]
    assert not any("resident" in k for r in rows for k in r), rows  # device facts only


def test_a_lost_hub_is_offline_at_once_and_its_stale_sensor_reports_are_not_blamed_on_the_sensor() -> None:
    hub = _hub("hub-a", "flat-01", 5, pir_k={"battery_pct": 90.0, "status": "stale", "last_seen_ms": NOW - 9e5})
    hub["state"] = "lost"
    rows = device_overview([hub], [], [], NOW, LIMITS)
    by = {r["device_id"]: r for r in rows}
    assert by["hub-a"]["problems"] == ["offline"]
    assert by["pir_k"]["problems"] == [] and by["pir_k"]["kind"] == "sensor"
