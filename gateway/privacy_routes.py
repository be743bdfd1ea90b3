"""The admin's privacy endpoints (docs/privacy.md), an APIRouter included by gateway/http.py:

    GET  /residents/{site_id}/{resident_id}/export   one resident's data as one JSON file    (admin)
    POST /residents/{site_id}/{resident_id}/erase    erase them everywhere; {"confirm": id}  (admin, CSRF)
    GET  /audit/entries[?log=&actor=&action=&since_ms=&until_ms=&limit=]  the audit logs    (admin)
    GET  /audit/export[?format=csv|json&…]           the same rows as a download             (admin)

Every request is audited like any other (``access_log``), with the resident's id in the
path replaced by their pseudonym (:func:`private_path`), so the access log never names a
resident; the export and the erasure are also written to ``privacy_log`` by
:class:`~fallwatch.gateway.privacy.Privacy`. The reader offers these through
``privacy_service()`` (``GatewayApi`` does); one that does not answers 404.
"""

from __future__ import annotations

import json
import re
import time
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from fallwatch.gateway.i18n import N_
from fallwatch.gateway.privacy import Privacy, PrivacyError, StoreUnavailable, audit_csv, audit_entries, pseudonym

if TYPE_CHECKING:
    from fallwatch.gateway.http import HttpServer

#: the console's privacy block (gateway/static/staff.html, between the ``privacy`` markers),
#: translated in gateway/locale/sv.po; gateway/http.py adds them to its CONSOLE_MESSAGES
PRIVACY_MESSAGES = [
    N_('Audit log'),
    N_('Which log'),
    N_('All logs'),
    N_('Requests for staff data'),
    N_('Alert handling'),
    N_('Provisioning registry'),
    N_('Exports and erasures'),
    N_('Done by (name)'),
    N_('Action contains'),
    N_('From (date)'),
    N_('Until (date)'),
    N_('Show audit entries'),
    N_('Download as CSV'),
    N_('Download as JSON'),
    N_('At'),
    N_('By'),
    N_('What'),
    N_('About'),
    N_('Detail'),
    N_('No audit entries match.'),
    N_("A resident's data (on request)"),
    N_('Site id'),
    N_('Resident id'),
    N_('Export as a file'),
    N_('To erase, type the resident id again. This cannot be undone.'),
    N_('Erase everywhere'),
    N_('Erased: {rows} rows in the state store, {points} series points.'),
]

_RESIDENT_PATH = re.compile(r"^/residents/([^/]+)/([^/]+)(/.*)?$")
_AUDIT_LOGS = ("access", "alert", "registry", "privacy")
_ERASE_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["confirm"], "properties": {
        "confirm": {"type": "string", "description": "the resident id again: erasure cannot be undone"}}}}}}}
_ENTRY = {"type": "object", "required": ["log", "id", "at_ms", "actor", "action", "subject"], "properties": {
    "log": {"type": "string", "enum": list(_AUDIT_LOGS)}, "id": {"type": "integer"}, "at_ms": {"type": "integer"},
    "actor": {"type": "string"}, "action": {"type": "string"}, "subject": {"type": "string"},
    "detail": {"type": ["string", "null"]}}}


def service(api: Any) -> Privacy | None:
    fn = getattr(api, "privacy_service", None)
    return fn() if callable(fn) else None


def private_path(api: Any, path: str) -> str:
    """``path`` as the access log keeps it: ``/residents/{site}/{id}/…`` with the id replaced by
    the resident's pseudonym (``~?`` for an id the gateway knows nothing about). Blocking (SQL)."""
    m = _RESIDENT_PATH.match(path)
    priv = service(api)
    if m is None or priv is None:
        return path
    site, rid, rest = m.group(1), m.group(2), m.group(3) or ""
    if rid.startswith("~"):
        return path
    priv.setup()
    rows = priv.store._select("SELECT pseudonym FROM privacy_pseudonyms WHERE site_id = ? AND resident_id = ?",
                              (site, rid))
    if rows:
        who = str(rows[0]["pseudonym"])
    elif priv.known(site, rid):
        who = pseudonym(priv.store, site, rid)
    else:
        who = "~?"
    return f"/residents/{site}/{who}{rest}"


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    from fallwatch.gateway.http import _errors as errors

    return errors(*codes)


def _json(code: int, obj: Any, **headers: str) -> Response:
    return Response(json.dumps(obj, default=str, ensure_ascii=False), code, media_type="application/json",
                    headers=headers or None)


def _int(v: str | None) -> int | None:
    return int(v) if v and v.isascii() and v.isdigit() and len(v) < 19 else None


def build_router(srv: HttpServer) -> APIRouter:
    router = APIRouter(tags=["privacy"])
    guarded = (401, 403, 429, 500)

    async def need(request: Request, permission: str) -> tuple[Any, Privacy] | Response:
        user = await srv.guarded(request, permission)
        if isinstance(user, Response):
            return user
        priv = service(srv.api)
        if priv is None:
            await srv.audit(request, user, 404)
            return _json(404, {"error": "this gateway keeps no resident data"})
        return user, priv

    @router.get("/residents/{site_id}/{resident_id}/export", response_model=dict[str, Any],
                responses=_errors(*guarded, 404, 503))
    async def export(request: Request, site_id: str, resident_id: str) -> Response:
        """Everything the gateway holds about one resident, as one JSON file (audited)."""
        got = await need(request, "residents:export")
        if isinstance(got, Response):
            return got
        user, priv = got
        try:
            doc = await srv.run(priv.export, site_id, resident_id, user.name)
        except PrivacyError as exc:
            code = 503 if isinstance(exc, StoreUnavailable) else 404
            await srv.audit(request, user, code)
            return _json(code, {"error": str(exc)})
        await srv.audit(request, user, 200)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"resident-{site_id}-{resident_id}.json")
        return _json(200, doc, **{"Content-Disposition": f'attachment; filename="{name}"'})

    @router.post("/residents/{site_id}/{resident_id}/erase", response_model=dict[str, Any],
                 responses=_errors(*guarded, 400, 404, 409, 503), openapi_extra=_ERASE_BODY)
    async def erase(request: Request, site_id: str, resident_id: str) -> Response:
        """Erase a resident everywhere (series store, state store, spool); cannot be undone.
        Answers 404 when nothing is held about them (also after an erasure: run it again safely)."""
        checked = await srv.post_guarded(request, "residents:erase")
        if isinstance(checked, Response):
            return checked
        user, body = checked
        priv = service(srv.api)
        if priv is None:
            await srv.audit(request, user, 404)
            return _json(404, {"error": "this gateway keeps no resident data"})
        if body.get("confirm") != resident_id:
            await srv.audit(request, user, 400)
            return _json(400, {"error": 'confirm the erasure: {"confirm": "<the resident id>"}'})
        if not await srv.run(priv.known, site_id, resident_id):
            await srv.audit(request, user, 404)
            return _json(404, {"error": "the gateway holds nothing about this resident (already erased?)"})
        try:
            report = await srv.run(priv.erase, site_id, resident_id, user.name)
        except PrivacyError as exc:  # 409: the store cannot delete points (3.x); 503: it did not answer
            code = 503 if isinstance(exc, StoreUnavailable) else 409
            await srv.audit(request, user, code)
            return _json(code, {"error": str(exc)})
        # their pseudonym's row is gone now: name the request by the pseudonym the privacy log uses
        await srv.audit(request, user, 200, f"/residents/{site_id}/{report['pseudonym']}/erase")
        return _json(200, report)

    def entries(request: Request) -> list[dict[str, Any]] | str:
        q = request.query_params
        log = q.get("log") or None
        if log is not None and log not in _AUDIT_LOGS:
            return f"log must be one of {', '.join(_AUDIT_LOGS)}"
        limit = min(_int(q.get("limit")) or 500, 5000)
        return audit_entries(srv_priv_store(), log=log, actor=q.get("actor") or None, action=q.get("action") or None,
                             since_ms=_int(q.get("since_ms")), until_ms=_int(q.get("until_ms")), limit=limit)

    def srv_priv_store() -> Any:
        priv = service(srv.api)
        assert priv is not None
        return priv.store

    audit_query = {"parameters": [
        {"name": n, "in": "query", "required": False, "schema": s} for n, s in (
            ("log", {"type": "string", "enum": list(_AUDIT_LOGS)}), ("actor", {"type": "string"}),
            ("action", {"type": "string"}), ("since_ms", {"type": "string"}), ("until_ms", {"type": "string"}),
            ("limit", {"type": "string"}))]}

    @router.get("/audit/entries", responses={200: {"content": {"application/json": {"schema": {
        "type": "array", "items": _ENTRY}}}}, **_errors(*guarded, 400, 404)}, openapi_extra=audit_query,
        response_class=Response)
    async def audit_view(request: Request) -> Response:
        """The audit logs (access, alert, registry, privacy), newest first, filtered by who, what and when."""
        got = await need(request, "audit:read")
        if isinstance(got, Response):
            return got
        user, _priv = got
        rows = await srv.run(entries, request)
        await srv.audit(request, user, 400 if isinstance(rows, str) else 200)
        return _json(400, {"error": rows}) if isinstance(rows, str) else _json(200, rows)

    @router.get("/audit/export", responses={200: {"content": {
        "text/csv": {"schema": {"type": "string"}},
        "application/json": {"schema": {"type": "array", "items": _ENTRY}}}}, **_errors(*guarded, 400, 404)},
        openapi_extra={"parameters": [*audit_query["parameters"], {
            "name": "format", "in": "query", "required": False,
            "schema": {"type": "string", "enum": ["csv", "json"]}}]},
        response_class=Response)
    async def audit_export(request: Request) -> Response:
        """The same rows as a file to keep (CSV or JSON)."""
        got = await need(request, "audit:read")
        if isinstance(got, Response):
            return got
        user, _priv = got
        fmt = request.query_params.get("format") or "csv"
        rows = await srv.run(entries, request) if fmt in ("csv", "json") else "format must be csv or json"
        await srv.audit(request, user, 400 if isinstance(rows, str) else 200)
        if isinstance(rows, str):
            return _json(400, {"error": rows})
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        disposition = f'attachment; filename="fallwatch-audit-{stamp}.{fmt}"'
        if fmt == "json":
            return _json(200, rows, **{"Content-Disposition": disposition})
        return Response(audit_csv(rows), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": disposition})

    return router
