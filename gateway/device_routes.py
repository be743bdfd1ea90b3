"""The technician's device page API: ``GET /devices/overview`` (technician, admin).

A router of its own, included by :func:`fallwatch.gateway.http.build_app`, so the device
page grows without touching the alert routes. It reads
:meth:`~fallwatch.gateway.api.GatewayReader.device_overview` (gateway/devices_view.py):
every hub and sensor with last seen, battery, outbox depth, firmware and model version,
offline and test-alarm status and certificate expiry, those that need a visit first. No
resident data is in it (technicians see devices only), and like every staff endpoint each
request is authorised by role and team and written to the access audit log.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from fallwatch.gateway.devices_view import PROBLEMS
from fallwatch.gateway.i18n import N_

if TYPE_CHECKING:
    from fallwatch.gateway.http import HttpServer

#: the device page's texts (the ``t("…")`` of its block in gateway/static/staff.html)
DEVICE_MESSAGES = [
    N_("Devices"), N_("Needs a visit"), N_("All devices are fine."), N_("hub"), N_("wearable"),
    N_("motion sensor"), N_("bed sensor"), N_("chair sensor"), N_("door sensor"), N_("bathroom sensor"),
    N_("sensor"), N_("offline"), N_("sensor fault"), N_("low battery"), N_("test alarm overdue"),
    N_("certificate expiring"), N_("never heard from"), N_("last seen"), N_("never"), N_("battery"),
    N_("outbox"), N_("model version"), N_("firmware"), N_("test alarm due"), N_("certificate until"),
    N_("on hub {hub}"), N_("room {room}"), N_("{n} h ago"), N_("{n} d ago"), N_("signal"),
]


class DeviceRow(BaseModel):
    """One hub or sensor as a technician sees it: device facts only, never a resident."""

    site_id: str
    device_id: str
    kind: str = Field(description="hub, wearable or sensor (the registry's kind; sensor when unregistered)")
    hub_id: str | None = Field(None, description="the hub a sensor or wearable reports through")
    room: str | None = None
    sensor_kind: str | None = Field(None, description="pir, bed, chair, door, bathroom (the registry's)")
    registry_status: str | None = Field(None, description="active, pending, revoked (None: not registered)")
    last_seen_ms: int | None = Field(None, description="last heard (a sensor: as its hub last reported)")
    battery_pct: float | None = None
    rssi_dbm: float | None = None
    outbox_depth: int | None = Field(None, description="messages a hub holds that the gateway has not yet")
    fw: str | None = None
    model_version: str | None = None
    state: str | None = Field(None, description="a hub's last state message: ready, offline, lost")
    sensor_status: str | None = Field(None, description="ok, stale, stuck, saturated, silent, rebooted")
    last_test_ms: int | None = Field(None, description="a hub's last silent test alarm")
    test_due_ms: int | None = Field(None, description="when the next test alarm is overdue")
    cert_not_after_ms: int | None = Field(None, description="client certificate expiry (the registry's)")
    offline: bool
    test_overdue: bool
    problems: list[str] = Field(description=f"what needs a visit, most urgent first: {', '.join(PROBLEMS)}")
    timezone: str | None = Field(None, description="the site's time zone (the team's)")


def device_router(srv: HttpServer) -> APIRouter:
    """The device page's routes over one server (its sign-in, scoping, pool and audit)."""
    from fallwatch.gateway.http import _GUARDED, _errors, _json

    router = APIRouter(tags=["devices"])

    @router.get("/devices/overview", response_model=list[DeviceRow], responses=_errors(*_GUARDED))
    async def overview(request: Request) -> Response:
        """Every hub and sensor of the caller's team's sites, what needs a visit first
        (offline, sensor fault, low battery, test alarm overdue, certificate expiring)."""
        user = await srv.guarded(request, "devices:read")
        if isinstance(user, Response):
            return user
        now = time.time_ns() // 1_000_000
        rows = await srv.run(lambda: srv.scoped(user, srv.api.device_overview(now)))
        await srv.audit(request, user, 200)
        return _json(200, rows)

    return router
