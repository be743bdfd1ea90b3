"""What the console tells carers and team leads about a resident: the risk trend, its factors
in plain words, the actions they point to, the actions taken, and whom to visit today.

The one place that maps a risk factor to what staff can do about it is :data:`FACTOR_ACTIONS`
(docs/console.md lists it). The factors are the risk model's features
(``models/risk_features.py``): a hub publishes each day's score with the features that raise
it most and their share of the score (``RiskData.factors``, stored as ``contrib_<factor>``
fields of the ``risk`` measurement). The actions are the interventions Swedish municipal
fall-prevention work uses (Socialstyrelsen's "förebygga fall" and the STRAMA/"Senior alert"
practice): remove rugs and check the home for hazards, a walking aid, hip protectors, a
medication review, a referral to balance training. They are *suggestions*: a carer or lead
records which one was done (``resident_actions``), and that record, not the model, is what
the next shift reads.

Why the mapping is what it is:

* slower, shorter or more uneven gait, slow Timed Up and Go → a walking aid and balance
  training (strength and balance programmes are the intervention with the best evidence);
* a downward weekly trend in gait speed → also a medication review (a new decline often
  follows a new drug or dose) and balance training;
* slow sit-to-stand and sway when standing → balance training, a medication review
  (dizziness, blood-pressure drugs), hip protectors while it lasts;
* much activity or many bathroom visits at night → check the way to the bathroom (rugs,
  light, thresholds) and review medication (sleeping pills, diuretics);
* little time on their feet → balance training;
* falls in the past year → hip protectors and a home-hazard check.

:class:`ResidentActions` keeps the recorded actions in the state store (SQLite or
PostgreSQL); every record is also a row of the append-only access audit log (the POST, with
the action, written by the HTTP layer). :class:`CareApi` is what the console's routes read.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from fallwatch.gateway.i18n import N_
from fallwatch.gateway.sinks import SinkError
from fallwatch.gateway.state import OPEN_STATUSES, StateStore

log = logging.getLogger("fallwatch.gateway.care")

Row = dict[str, Any]
DAY_MS = 86_400_000
#: the planning list compares today's score with the one a week before
WEEK_MS = 7 * DAY_MS
#: how far back a resident page plots the trend (twelve weeks)
TREND_MS = 84 * DAY_MS

#: a risk factor (the model's feature name) in plain words: what staff see instead of the code
FACTORS: dict[str, str] = {
    "gait_speed_m_s": N_("walks more slowly"),
    "gait_speed_trend_pct_wk": N_("walking speed falling week by week"),
    "cadence_spm": N_("takes fewer steps per minute"),
    "stride_time_cv": N_("uneven steps"),
    "sit_to_stand_s": N_("takes longer to stand up from a chair"),
    "tug_s": N_("slow to get up, walk and turn"),
    "time_upright_h": N_("spends less time on their feet"),
    "night_activity_events": N_("up and about a lot at night"),
    "night_bathroom_visits": N_("many bathroom visits at night"),
    "sway_rms_mg": N_("sways when standing still"),
    "falls_past_12m": N_("has fallen in the past year"),
}

#: what staff can do (the id is what ``resident_actions.action`` stores)
ACTIONS: dict[str, str] = {
    "hazard_check": N_("Remove rugs and check the home for hazards"),
    "walker": N_("Walking aid (rollator)"),
    "hip_protectors": N_("Hip protectors"),
    "medication_review": N_("Medication review"),
    "balance_training": N_("Referral to balance training"),
    "other": N_("Something else (see note)"),
}

#: factor -> the actions it points to, most useful first (the reasons are in the module docstring)
FACTOR_ACTIONS: dict[str, tuple[str, ...]] = {
    "gait_speed_m_s": ("walker", "balance_training"),
    "gait_speed_trend_pct_wk": ("balance_training", "medication_review", "walker"),
    "cadence_spm": ("walker", "balance_training"),
    "stride_time_cv": ("walker", "balance_training"),
    "sit_to_stand_s": ("balance_training", "hip_protectors"),
    "tug_s": ("walker", "balance_training"),
    "time_upright_h": ("balance_training",),
    "night_activity_events": ("hazard_check", "medication_review"),
    "night_bathroom_visits": ("hazard_check", "medication_review"),
    "sway_rms_mg": ("balance_training", "medication_review", "hip_protectors"),
    "falls_past_12m": ("hip_protectors", "hazard_check"),
}


def top_factors(contributions: dict[str, float], n: int = 3) -> list[tuple[str, float]]:
    """The factors that raise the score most (positive share only), largest first."""
    ranked = sorted(((k, v) for k, v in contributions.items() if v > 0), key=lambda kv: -kv[1])
    return ranked[:n]


def suggested_actions(factors: list[str]) -> list[dict[str, Any]]:
    """The actions the given factors point to, each once, in the order the factors came (the
    strongest factor's actions first), each with the factors that point to it."""
    out: dict[str, list[str]] = {}
    for f in factors:
        for a in FACTOR_ACTIONS.get(f, ()):
            out.setdefault(a, []).append(f)
    return [{"action": a, "factors": fs} for a, fs in out.items()]


def week_change(points: list[tuple[int, float]], window_ms: int = WEEK_MS) -> dict[str, Any] | None:
    """Today's score and how much it moved over the week before it, from (ts_ms, score) points.

    The reference is the newest score at least a week (less half a day: a daily score comes
    at varying hours) older than the newest one; a resident followed for less than a week is
    compared with their first score. ``change`` is None with only one score.
    """
    if not points:
        return None
    pts = sorted(points)
    now_ts, now_score = pts[-1]
    older = [p for p in pts if p[0] <= now_ts - window_ms + DAY_MS // 2]
    ref = older[-1] if older else (pts[0] if pts[0][0] < now_ts else None)
    return {"score": now_score, "ts_ms": now_ts, "change": None if ref is None else round(now_score - ref[1], 4),
            "since_ms": None if ref is None else ref[0]}


def rank_visits(rows: list[Row]) -> list[Row]:
    """Who to visit first: the largest rise in risk over the week first, then the highest score;
    residents without a week's comparison after those with one, highest score first."""
    return sorted(rows, key=lambda r: (r.get("change") is None, -(r.get("change") or 0.0),
                                       -float(r.get("score") or 0.0),
                                       str(r.get("name") or r.get("resident_id"))))


def fall_state(alert: Row) -> str:
    """Where a fall alert stands, as the hub last reported it: ``got_up`` (it reported them up
    and walking), ``cancelled`` (the wearer or the bed stood it down), ``still_lying`` (its last
    report has them lying), ``no_news`` (nothing said either way), ``resolved`` (staff closed it);
    another kind of alert: its status."""
    reasons = [r for r in str(alert.get("detail") or "").split(",") if r]
    if alert.get("kind") != "fall":
        return str(alert.get("status"))
    if "recovered" in reasons:
        return "got_up"
    if alert.get("status") == "cancelled" or alert.get("data_status") == "cancelled":
        return "cancelled"
    if alert.get("status") == "cleared":
        return "resolved"
    lying = {"lying", "no_recovery", "lying_s"} & set(reasons) or float(alert.get("lying_s") or 0) > 0
    return "still_lying" if lying else "no_news"


_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS resident_actions (
        id {autoinc}, site_id TEXT NOT NULL, resident_id TEXT NOT NULL, action TEXT NOT NULL,
        factors TEXT, note TEXT, actor TEXT NOT NULL, at_ms BIGINT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS resident_actions_who ON resident_actions (site_id, resident_id, at_ms)",
]


class ResidentActions:
    """The ``resident_actions`` table: which suggested action a member of staff took, when and why.

    Not append-only on purpose: a resident's erasure (GDPR art. 17) deletes their rows; who
    recorded what stays in the access audit log, which holds no health data."""

    def __init__(self, state: StateStore) -> None:
        self.state = state

    def setup(self) -> None:
        self.state.create_tables(_SCHEMA)

    def record(self, site_id: str, resident_id: str, action: str, actor: str, at_ms: int, *,
               factors: list[str] | None = None, note: str | None = None) -> Row:
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}")
        from fallwatch.protocol.contract import safe_text

        with self.state._tx() as cur:
            self.state._exec(cur, "INSERT INTO resident_actions (site_id, resident_id, action, factors, note, actor, "
                                  "at_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (site_id, resident_id, action, json.dumps(factors or []),
                              None if not note else safe_text(note, 500), actor, at_ms))
        return self.taken(site_id, resident_id)[0]

    def taken(self, site_id: str, resident_id: str, limit: int = 50) -> list[Row]:
        """The actions recorded for a resident, newest first."""
        rows = self.state._select("SELECT * FROM resident_actions WHERE site_id = ? AND resident_id = ? "
                                  "ORDER BY at_ms DESC, id DESC LIMIT ?", (site_id, resident_id, limit))
        for r in rows:
            r["factors"] = json.loads(r["factors"]) if r.get("factors") else []
        return rows

    def latest(self) -> dict[tuple[str, str], Row]:
        """Each resident's most recent action (for the planning list)."""
        out: dict[tuple[str, str], Row] = {}
        for r in self.state._select("SELECT site_id, resident_id, action, actor, at_ms FROM resident_actions "
                                    "ORDER BY at_ms, id"):
            out[(str(r["site_id"]), str(r["resident_id"]))] = r
        return out

    def erase(self, site_id: str, resident_id: str) -> int:
        """Delete a resident's recorded actions (their erasure); the number of rows removed."""
        with self.state._tx() as cur:
            self.state._exec(cur, "DELETE FROM resident_actions WHERE site_id = ? AND resident_id = ?",
                             (site_id, resident_id))
            return int(cur.rowcount or 0)


class RiskReader(Protocol):
    """The part of a series store the console reads (``gateway/sinks``: every store has it)."""

    def risk_points(self, since_ms: int, site_id: str | None = None,
                    resident_id: str | None = None) -> list[Row]: ...

    def close(self) -> None: ...


class CareReader(Protocol):
    """What the console's resident, planning and "since" routes read (gateway/console_routes.py)."""

    def setup(self) -> None:
        """Create the ``resident_actions`` table if it is missing."""
        ...

    def resident_page(self, site_id: str, resident_id: str, now_ms: int) -> Row | None:
        """A resident's trend, today's factors, suggested and taken actions, alert history;
        None if neither the registry, the series store nor the alerts know them."""
        ...

    def record_action(self, site_id: str, resident_id: str, action: str, actor: str, now_ms: int,
                      note: str | None) -> Row | None:
        """Record an action taken with the day's factors; None for a resident nobody knows
        (ValueError for an unknown action)."""
        ...

    def visits(self, now_ms: int, in_scope: Callable[[str], bool]) -> list[Row]:
        """Residents of the sites ``in_scope`` accepts, ranked by their risk's rise over the week."""
        ...

    def since(self, alert_id: str) -> Row | None:
        """What has happened since an alert was raised, as events in time order."""
        ...

    def release_thread(self) -> None:
        """Close the calling thread's series-store connection."""
        ...


class CareApi:
    """:class:`CareReader` over the state store, the provisioning registry and the series store."""

    def __init__(self, state: StateStore, registry: Callable[[], Any], series: Callable[[], RiskReader] | None,
                 deliveries: Callable[[str], list[Row]] = lambda alert_id: [],
                 person_name: Callable[[str], str | None] = lambda person_id: None) -> None:
        self.state = state
        self.actions = ResidentActions(state)
        self._registry = registry  # the registry exists once the pager is set up, hence a callable
        self._series = series
        self._deliveries = deliveries
        self._person_name = person_name  # a roster id -> the person's name, for "notified Lena by e-mail"
        self._local = threading.local()

    def setup(self) -> None:
        self.actions.setup()

    def _store(self) -> RiskReader | None:
        if self._series is None:
            return None
        sink = getattr(self._local, "sink", None)
        if sink is None:
            sink = self._local.sink = self._series()
        return sink

    def release_thread(self) -> None:
        sink = getattr(self._local, "sink", None)
        if sink is not None:
            self._local.sink = None
            sink.close()

    def _risk(self, since_ms: int, site_id: str | None = None,
              resident_id: str | None = None) -> tuple[list[Row], str | None]:
        """The risk points, and why they could not be read (the page shows the rest and says so)."""
        store = self._store()
        if store is None:
            return [], None
        try:
            return store.risk_points(since_ms, site_id, resident_id), None
        except SinkError as exc:
            log.warning("console: could not read risk scores from the series store: %s", exc)
            self.release_thread()  # a fresh connection next time
            return [], f"the series store did not answer: {exc}"

    def _who(self, site_id: str, resident_id: str) -> Row | None:
        reg = self._registry()
        row = reg.resident(site_id, resident_id) if reg is not None else None
        return row if row and row.get("status", "active") == "active" else None

    def resident_page(self, site_id: str, resident_id: str, now_ms: int) -> Row | None:
        who = self._who(site_id, resident_id)
        risk, problem = self._risk(now_ms - TREND_MS, site_id, resident_id)
        alerts = self.state._select("SELECT * FROM alerts WHERE site_id = ? AND resident_id = ? "
                                    "ORDER BY raised_ms DESC LIMIT 50", (site_id, resident_id))
        if who is None and not risk and not alerts:
            return None
        today = risk[-1] if risk else None
        factors = top_factors(today["factors"]) if today else []
        return {
            "site_id": site_id, "resident_id": resident_id,
            "name": who.get("name") if who else None, "flat": who.get("flat") if who else None,
            "trend": [{"ts_ms": r["ts_ms"], "day": r["day"], "score": r["score"], "level": r["level"]} for r in risk],
            "today": None if today is None else {"ts_ms": today["ts_ms"], "day": today["day"],
                                                 "score": today["score"], "level": today["level"]},
            "week": week_change([(r["ts_ms"], r["score"]) for r in risk]),
            "factors": [{"factor": f, "contribution": round(c, 4)} for f, c in factors],
            "suggested": suggested_actions([f for f, _ in factors]),
            "taken": self.actions.taken(site_id, resident_id),
            "alerts": alerts,
            "problem": problem,
        }

    def record_action(self, site_id: str, resident_id: str, action: str, actor: str, now_ms: int,
                      note: str | None) -> Row | None:
        risk, _ = self._risk(now_ms - TREND_MS, site_id, resident_id)
        if not risk and self._who(site_id, resident_id) is None and not self.state._select(
                "SELECT alert_id FROM alerts WHERE site_id = ? AND resident_id = ? LIMIT 1", (site_id, resident_id)):
            return None  # nobody the gateway knows: no record for a typo
        factors = [f for f, _ in top_factors(risk[-1]["factors"])] if risk else []
        return self.actions.record(site_id, resident_id, action, actor, now_ms, factors=factors, note=note)

    def visits(self, now_ms: int, in_scope: Callable[[str], bool]) -> list[Row]:
        by_resident: dict[tuple[str, str], list[Row]] = {}
        for r in self._risk(now_ms - WEEK_MS - 2 * DAY_MS)[0]:
            if r["site_id"] and r["resident_id"] and in_scope(str(r["site_id"])):
                by_resident.setdefault((str(r["site_id"]), str(r["resident_id"])), []).append(r)
        reg = self._registry()
        for who in reg.residents() if reg is not None else []:
            if in_scope(str(who["site_id"])):
                by_resident.setdefault((str(who["site_id"]), str(who["resident_id"])), [])
        falls: dict[tuple[str, str], Row] = {}
        open_count: dict[tuple[str, str], int] = {}
        for a in self.state._select("SELECT alert_id, site_id, resident_id, kind, status, raised_ms, outcome "
                                    "FROM alerts WHERE resident_id IS NOT NULL ORDER BY raised_ms"):
            key = (str(a["site_id"]), str(a["resident_id"]))
            if key not in by_resident:
                continue
            if a["kind"] == "fall" and a["status"] != "cancelled":
                falls[key] = a
            if a["status"] in OPEN_STATUSES:
                open_count[key] = open_count.get(key, 0) + 1
        taken = self.actions.latest()
        rows = []
        for (site, rid), pts in by_resident.items():
            who = self._who(site, rid)
            week = week_change([(p["ts_ms"], p["score"]) for p in pts]) or {}
            top = top_factors(pts[-1]["factors"], 1) if pts else []
            fall = falls.get((site, rid))
            rows.append({"site_id": site, "resident_id": rid, "name": who.get("name") if who else None,
                         "flat": who.get("flat") if who else None, "score": week.get("score"),
                         "level": pts[-1]["level"] if pts else None, "change": week.get("change"),
                         "since_ms": week.get("since_ms"), "top_factor": top[0][0] if top else None,
                         "last_fall": None if fall is None else {k: fall[k] for k in ("alert_id", "raised_ms",
                                                                                      "outcome")},
                         "open_alerts": open_count.get((site, rid), 0),
                         "last_action": taken.get((site, rid))})
        return rank_visits(rows)

    def since(self, alert_id: str) -> Row | None:
        alert = self.state.alert(alert_id)
        if alert is None:
            return None
        events: list[Row] = []
        for e in self.state.audit(alert_id):
            what, actor, detail = str(e["action"]), str(e["actor"]), str(e.get("detail") or "")
            if what in ("raised", "updated", "cancelled") and actor == "device":
                events.append({"at_ms": e["at_ms"], "what": "cancelled" if detail.startswith("cancelled")
                               else ("raised" if what == "raised" else "update")})
            elif what == "acknowledge":
                via = "link" if "link" in detail else ("console" if "console" in detail else None)
                events.append({"at_ms": e["at_ms"], "what": "acknowledged", "who": actor, "via": via})
            elif what in ("clear", "cleared"):
                events.append({"at_ms": e["at_ms"], "what": "resolved" if actor != "gateway" else "recovered",
                               "who": actor if actor != "gateway" else None})
            elif what == "escalated":
                events.append({"at_ms": e["at_ms"], "what": "escalated"})
        for d in self._deliveries(alert_id):
            events.append({"at_ms": d["at_ms"], "what": "notified" if d["ok"] else "not_reached",
                           "who": self._person_name(str(d["person"])) or d["person"], "channel": d["channel"]})
        events.sort(key=lambda e: int(e["at_ms"]))
        now = fall_state(alert)
        return {"alert_id": alert_id, "site_id": alert["site_id"], "now": now, "lying_s": alert.get("lying_s"),
                "status": alert["status"],
                "events": events}
