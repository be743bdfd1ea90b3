"""The console's resident, planning and "what has happened since" routes (issue 14).

    GET  /residents/{site_id}/{resident_id}          risk trend, factors, suggested + taken actions,
                                                     alert history               (carer, lead, admin)
    POST /residents/{site_id}/{resident_id}/actions  record an action taken {"action", "note"}
                                                     (CSRF on a cookie session)  (carer, lead, admin)
    GET  /visits                                     who to visit today: residents ranked by the rise
                                                     of their risk over the week (lead, admin)
    GET  /alerts/{alert_id}/since                    what has happened since the alert was raised
                                                     (still lying, got up, notified, acknowledged)
                                                                                 (carer, lead, admin)

A member of staff with a team gets 403 for a resident or an alert of another team's site, and
the planning list holds their team's residents only. Every request, allowed or refused, is
in the access audit log; a recorded action's row names the action (``?action=…``), never the
note (free text may hold health details the append-only log could not erase).

These live apart from gateway/http.py (``build_app`` includes :func:`router`) and read through
:meth:`GatewayReader.care` (gateway/care.py) only.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from fallwatch.gateway.care import ACTIONS, FACTORS
from fallwatch.gateway.i18n import N_, gettext_for
from fallwatch.models.risk_features import LEVELS

if TYPE_CHECKING:
    from fallwatch.gateway.http import HttpServer


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ResidentPage(_Open):
    site_id: str
    resident_id: str
    name: str | None = Field(None, description="from the resident registry")
    flat: str | None = None
    timezone: str = Field(description="the site's time zone")
    levels: dict[str, float] = Field(description="score at which each risk level starts")
    trend: list[dict[str, Any]] = Field(description="daily risk scores of the last twelve weeks, oldest first")
    today: dict[str, Any] | None = None
    week: dict[str, Any] | None = Field(None, description="today's score and its change over the week")
    factors: list[dict[str, Any]] = Field(description="what raises today's score most (factor, contribution)")
    suggested: list[dict[str, Any]] = Field(description="actions the factors point to (gateway/care.py)")
    taken: list[dict[str, Any]] = Field(description="actions recorded, newest first")
    alerts: list[dict[str, Any]] = Field(description="the resident's alerts with outcomes, newest first")
    problem: str | None = Field(None, description="why the risk scores could not be read (the rest is shown)")


class Visit(_Open):
    site_id: str
    resident_id: str
    name: str | None = None
    flat: str | None = None
    score: float | None = None
    change: float | None = Field(None, description="score now minus a week before (None: not followed a week)")
    top_factor: str | None = None
    open_alerts: int
    timezone: str


class ActionTaken(_Open):
    id: int
    site_id: str
    resident_id: str
    action: str
    actor: str
    at_ms: int


class Since(_Open):
    alert_id: str
    site_id: str
    now: str = Field(description="got_up, cancelled, still_lying, no_news, resolved; another kind: its status")
    status: str
    events: list[dict[str, Any]] = Field(description="raised, update, cancelled, notified, not_reached, "
                                                     "acknowledged, escalated, resolved, recovered; oldest first")


_ACTION_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["action"], "properties": {
        "action": {"type": "string", "enum": list(ACTIONS)},
        "note": {"type": "string", "maxLength": 500}}}}}}}

#: the texts of the resident page, the planning list and an alert's "since" (staff.html)
MESSAGES = [
    N_("Who to visit today"), N_("Fall risk, last 12 weeks"), N_("Risk today"),
    N_("over the week"), N_("Why the risk is raised"), N_("Suggested"), N_("Record what was done"),
    N_("Action"), N_("Record"), N_("Actions taken"), N_("No actions recorded yet."), N_("Alert history"),
    N_("No alerts."), N_("No risk scores yet."), N_("last fall"), N_("open alerts"),
    N_("no falls"), N_("last action"), N_("nothing recorded"), N_("Recorded."), N_("{n} percentage points"),
    N_("What has happened since"), N_("Nobody to visit: no residents with risk scores."),
    N_("Ranked by how much the fall risk rose over the last week."), N_("followed for less than a week"),
    N_("by {name}"), N_("{n} alerts of raised fall risk are for the team's planning, not shown here."),
    N_("via the console"), N_("The risk scores could not be read just now."), N_("via a message's link"),
    N_("lying for {n} s when last reported"),
]
_LEVELS = {"low": N_("low risk"), "medium": N_("medium risk"), "high": N_("high risk")}
#: an alert's situation and events, in words (care.CareApi.since)
_SINCE = {
    "got_up": N_("got up and walked"), "cancelled": N_("cancelled (stood down)"),
    "still_lying": N_("still lying"), "no_news": N_("no news from the hub"), "resolved": N_("resolved"),
    "raised": N_("alarm raised"), "update": N_("new report from the hub"),
    "notified": N_("notified {who} by {channel}"),
    "not_reached": N_("could not reach {who} by {channel}"), "acknowledged": N_("acknowledged by {who}"),
    "escalated": N_("not acknowledged in time: escalated"), "recovered": N_("closed: the device recovered"),
}
#: a notification channel's type in words (a channel named otherwise shows its name)
_CHANNELS = {"smtp": N_("e-mail"), "webpush": N_("push notification"), "log": N_("the staff log"),
             "webhook": N_("webhook"), "mqtt": N_("MQTT"), "apprise": N_("text message"), "sms": N_("text message"),
             "console": N_("the console")}


def texts(lang: str) -> dict[str, dict[str, str]]:
    """This module's staff-facing texts in one language (merged into the console's table)."""
    _ = gettext_for(lang)
    return {"messages": {m: _(m) for m in MESSAGES}, "factors": {k: _(v) for k, v in FACTORS.items()},
            "actions": {k: _(v) for k, v in ACTIONS.items()}, "levels": {k: _(v) for k, v in _LEVELS.items()},
            "since": {k: _(v) for k, v in _SINCE.items()}, "channels": {k: _(v) for k, v in _CHANNELS.items()}}


def _json(code: int, obj: Any) -> Response:
    return Response(json.dumps(obj, default=str), code, media_type="application/json")


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    from fallwatch.gateway.http import Error

    why = {400: "bad request body", 401: "missing or unknown bearer token",
           403: "role may not, or another team's", 404: "no such resident or alert",
           429: "too many refused requests", 500: "the staff accounts file is invalid"}
    return {c: {"model": Error, "description": why[c]} for c in codes}


_GUARDED = (401, 403, 429, 500)
_FOREIGN = "this resident belongs to another team's site"


def router(srv: HttpServer) -> APIRouter:
    """The routes of one server (included by ``build_app``); they only translate HTTP to
    :class:`~fallwatch.gateway.care.CareReader` calls."""
    r = APIRouter()

    def care() -> Any:
        return srv.api.care()

    @r.get("/residents/{site_id}/{resident_id}", response_model=ResidentPage, responses=_errors(*_GUARDED, 404),
           tags=["residents"])
    async def resident(request: Request, site_id: str, resident_id: str) -> Response:
        """A resident's page: the risk trend, today's factors in words, suggested and taken actions, alerts."""
        user = await srv.guarded(request, "residents:read")
        if isinstance(user, Response):
            return user
        if not await srv.run(srv.in_scope, user, site_id):
            await srv.audit(request, user, 403)
            return _json(403, {"error": _FOREIGN})
        page = await srv.run(care().resident_page, site_id, resident_id, time.time_ns() // 1_000_000)
        if page is None:
            await srv.audit(request, user, 404)
            return _json(404, {"error": "no such resident"})
        page["timezone"] = await srv.run(srv.api.site_timezone, site_id)
        page["levels"] = {name: lo for name, lo in LEVELS}
        await srv.audit(request, user, 200)
        return _json(200, page)

    @r.post("/residents/{site_id}/{resident_id}/actions", response_model=ActionTaken,
            responses=_errors(*_GUARDED, 400, 404), openapi_extra=_ACTION_BODY, tags=["residents"])
    async def record_action(request: Request, site_id: str, resident_id: str) -> Response:
        """Record which suggested action was taken for a resident (in ``resident_actions``)."""
        checked = await srv.post_guarded(request, "residents:act")
        if isinstance(checked, Response):
            return checked
        user, body = checked
        action, note = body.get("action"), body.get("note")
        if action not in ACTIONS:
            return _json(400, {"error": f"action must be one of {', '.join(ACTIONS)}"})
        if note is not None and (not isinstance(note, str) or len(note) > 500):
            return _json(400, {"error": "note must be a string of at most 500 characters"})
        if not await srv.run(srv.in_scope, user, site_id):
            await srv.audit(request, user, 403)
            return _json(403, {"error": _FOREIGN})
        now = time.time_ns() // 1_000_000
        where = f"{request.url.path}?action={action}"
        actor = str(body.get("by") or user.name)[:80] if user.service else user.name
        row = await srv.run(care().record_action, site_id, resident_id, action, actor, now, note or None)
        if row is None:
            await srv.audit(request, user, 404, where)
            return _json(404, {"error": "no such resident"})
        await srv.audit(request, user, 200, where)
        return _json(200, row)

    @r.get("/visits", response_model=list[Visit], responses=_errors(*_GUARDED), tags=["residents"])
    async def visits(request: Request) -> Response:
        """Who to visit today: the team's residents, the largest rise in fall risk over the week first."""
        user = await srv.guarded(request, "planning:read")
        if isinstance(user, Response):
            return user

        def read() -> list[dict[str, Any]]:
            rows: list[dict[str, Any]] = care().visits(time.time_ns() // 1_000_000,
                                                       lambda site: srv.in_scope(user, site))
            for row in rows:
                row["timezone"] = srv.api.site_timezone(str(row["site_id"]))
            return rows

        rows = await srv.run(read)
        await srv.audit(request, user, 200)
        return _json(200, rows)

    @r.get("/alerts/{alert_id}/since", response_model=Since, responses=_errors(*_GUARDED, 404), tags=["alerts"])
    async def since(request: Request, alert_id: str) -> Response:
        """What has happened since an alert was raised: the hub's reports, who was notified on which
        channel, who acknowledged and resolved it, and when."""
        user = await srv.guarded(request, "alerts:read")
        if isinstance(user, Response):
            return user
        got = await srv.run(care().since, alert_id)
        if got is not None and not await srv.run(srv.in_scope, user, got["site_id"]):
                await srv.audit(request, user, 403)
                return _json(403, {"error": "this alert belongs to another team's site"})
        await srv.audit(request, user, 200 if got else 404)
        return _json(200, got) if got else _json(404, {"error": "no such alert"})

    return r
