"""The pager: every alert that needs a person reaches one, and keeps reaching people until
someone takes it.

It sits in the :class:`~fallwatch.gateway.channels.Notifier`'s list like a channel, so every
alert event the gateway produces (fall alerts, device supervision, acknowledgements from
the console, the CLI or a message's link) reaches it. For a new alert it opens a *page*
(state DB ``pages``) and sends the first round to whoever is on call; its worker then
ticks every ``tick_s`` and, for each page that is due, claims the next *step* with a
conditional update (exactly one replica wins each step) and performs it:

* an urgent or high page is repeated to everyone paged so far every ``resend_every_s``
  (≤ 60 s, R1) until the alert is acknowledged;
* after ``escalate_after_s`` without an acknowledgement it goes one level up: the next
  person on call, the team lead, then the fallback (urgent only) — a level with nobody
  on it is skipped;
* normal and technical pages are sent once, and held until the end of the team's quiet
  hours if they arrive during them; a device alert raised again within ``damp_s`` of the
  last one closing (a flapping device) is held for the rest of that time, and dropped
  from paging — not from the record — if it recovers meanwhile;
* ``planning`` kinds (raised fall risk) are never sent; they are listed for the day's
  planning.

Each message goes to one person through their first contact; a failed send is tried
``send_attempts`` times with backoff, then the person's next contact, and every try is
recorded (``deliveries`` and the audit log). A channel that fails
``channel_fail_alert_after`` times in a row raises a ``channel_failing`` alert for the
technicians; it clears when the channel delivers again. Sends run on the pager's own
delivery threads: nothing here ever blocks the alert worker on a mail server.

One open page per resident and cause: a second fall of the same resident while the first
is open is recorded and grouped into it (no new notification); acknowledging or resolving
the first does the same to the grouped ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fallwatch.config import PagingConfig
from fallwatch.gateway.channels import Action, Addressable, AlertEvent, Delivery
from fallwatch.gateway.channels._common import kind_name, read_secret
from fallwatch.gateway.i18n import N_, gettext_for
from fallwatch.gateway.paging import kinds
from fallwatch.gateway.paging.acklinks import AckLinkError, AckSigner
from fallwatch.gateway.paging.roster import LEVELS, Recipient, Roster, Route
from fallwatch.gateway.paging.store import PagingStore
from fallwatch.gateway.state import StateError, StateStore
from fallwatch.protocol import contract

log = logging.getLogger("fallwatch.gateway.paging")

FAR_MS = 24 * 3600 * 1000  # a page sent once is looked at again after a day
_URL = re.compile(r"([a-z][a-z0-9+.-]*://)([^/\s?#@]*@)?([^/\s?#]*)[^\s]*", re.I)


def redact(text: str) -> str:
    """Text for the append-only log: a URL keeps its scheme and host only (paths, queries and
    credentials can hold tokens, and the audit log can never be edited)."""
    return _URL.sub(lambda m: f"{m.group(1)}{m.group(3)}/…", text)
#: alert statuses as a carer reads them (for the acknowledge page)
STATUS_WORDS = (N_("raised"), N_("acknowledged"), N_("cleared"), N_("cancelled"))
Emit = Callable[[AlertEvent], object]
RaiseAlert = Callable[[str, str, str, str], None]  # (kind, site_id, device_id, detail)
ResolveAlert = Callable[[str, str, str, str], None]


@dataclasses.dataclass
class PagerCounters:
    pages: int = 0
    grouped: int = 0
    held: int = 0
    planning: int = 0
    escalations: int = 0
    reminders: int = 0
    sent: int = 0
    failed_tries: int = 0
    undelivered: int = 0
    unrouted: int = 0
    acks_by_link: int = 0
    links_refused: int = 0


class AckResult:
    """What using an acknowledge link did: an HTTP status and a sentence for the person, in
    their language (``title``, ``message``, ``button`` for the page)."""

    def __init__(self, status: int, message: str, alert_id: str | None = None, title: str = "",
                 button: str = "", lang: str = "en") -> None:
        self.status, self.message, self.alert_id = status, message, alert_id
        self.title, self.button, self.lang = title, button, lang


class Pager:
    name = "pager"

    def __init__(self, cfg: PagingConfig, state: StateStore, channels: Mapping[str, Addressable], *,
                 gateway_id: str, stop: threading.Event, public_url: str | None = None,
                 clock: Callable[[], int] = contract.now_ms, locale: str = "sv") -> None:
        self.cfg = cfg
        self.state = state
        self.store = PagingStore(state)
        self.roster = Roster(cfg)
        self.channels = dict(channels)
        self.gateway_id = gateway_id
        self.stop = stop
        self.public_url = cfg.public_url or public_url
        self.clock = clock
        self.locale = locale
        self.counters = PagerCounters()
        self.emit: Emit = lambda e: None  # set by the gateway: the whole notifier (broadcast + this)
        self.raise_alert: RaiseAlert | None = None
        self.resolve_alert: ResolveAlert | None = None
        self._lock = threading.Lock()
        self._pending = 0
        self._channel_fails: dict[str, int] = {}
        self._failing: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="pager-send")
        self.signer: AckSigner | None = None
        self.registry: Any = None  # the provisioning registry: residents' names, flats, teams
        missing = sorted({c.channel for p in cfg.people for c in p.contacts} - self.channels.keys()
                         | {c.channel for t in cfg.teams for c in t.fallback} - self.channels.keys())
        if missing and self.enabled:
            from fallwatch.config import ConfigError

            raise ConfigError(f"gateway.paging: contacts name channel(s) {missing}, but [[gateway.channels]] "
                              f"has only {sorted(self.channels)} (a channel's name is its `name`, or its type)")

    @property
    def enabled(self) -> bool:
        return self.roster.enabled

    def setup(self) -> None:
        from fallwatch.gateway.registry import Registry

        self.store.setup()
        self.registry = Registry(self.state)
        self.registry.setup()
        key = read_secret("paging ack link key", self.cfg.ack_secret_env, self.cfg.ack_secret_file)
        self.signer = AckSigner(key or self.store.ack_key())

    # ------------------------------------------------------------ events in (Channel protocol)
    def notify(self, e: AlertEvent) -> list[Delivery]:
        if not self.enabled:
            return []
        if e.action is Action.RAISED:
            return self._raised(e)
        if e.action in (Action.ACKNOWLEDGED, Action.RESOLVED, Action.CANCELLED, Action.RECOVERED) and e.alert_id:
            self._closed(e)
            return [Delivery(self.name, "*", True, f"page closed ({e.action})")]
        return []  # ESCALATED: the pager escalates by itself

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)

    # ------------------------------------------------------------ opening
    def _kind(self, e: AlertEvent) -> str:
        return kinds.page_kind(e.kind, e.reasons, e.confidence, e.lying_s, self.cfg.suspected_below)

    @staticmethod
    def group_key(e: AlertEvent, kind: str) -> str:
        cause = "fall" if kind in ("fall", "suspected_fall", "long_lie", "inactivity") else kind
        return f"{e.site_id}:{e.resident_id or e.device_id}:{cause}"

    def resident(self, site_id: str, resident_id: str | None) -> dict[str, Any] | None:
        """The registry's record of a resident (name, flat, team); None if unknown or unreadable —
        a registry problem never stops a page."""
        if not resident_id or self.registry is None:
            return None
        try:
            row = self.registry.resident(site_id, resident_id)
        except Exception:
            log.exception("registry lookup of resident %s at %s failed; paging without it", resident_id, site_id)
            return None
        return row if row and row.get("status", "active") == "active" else None

    def _raised(self, e: AlertEvent, now_ms: int | None = None) -> list[Delivery]:
        now = self.clock() if now_ms is None else now_ms
        kind = self._kind(e)
        urg = kinds.urgency(kind, self.cfg.urgency)
        who = self.resident(e.site_id, e.resident_id)
        route = self.roster.route(e.site_id, now, who.get("team") if who else None)
        if urg == "planning":
            self.store.open_page(e.alert_id, e.site_id, kind, urg, route.team if route else None,
                                 self.group_key(e, kind), now, status="closed")
            with self._lock:
                self.counters.planning += 1
            return [Delivery(self.name, "planning list", True, "never sent: for the day's planning")]
        status, next_ms = "open", now
        if kind in kinds.DAMPED:
            last, recent = self._last_closed(self.group_key(e, kind), now - 3600_000)
            if last is not None and self.cfg.damp_s and now - last < self.cfg.damp_s * 1000 and recent < 3:
                status, next_ms = "held", last + int(self.cfg.damp_s * 1000)  # a flap: wait and see
            # three outages within the hour: a device that keeps failing is reported, not damped
        if status == "open" and urg in kinds.QUIET and kind not in kinds.QUIET_EXEMPT and route is not None \
                and route.quiet and route.quiet_ends_ms:
            status, next_ms = "held", route.quiet_ends_ms
        got, leader = self.store.open_page(e.alert_id, e.site_id, kind, urg, route.team if route else None,
                                           self.group_key(e, kind), now, status=status, next_ms=next_ms)
        if got == "grouped":
            with self._lock:
                self.counters.grouped += 1
            return [Delivery(self.name, "*", True, f"grouped into open alert {leader}")]
        if got == "exists":
            return []
        with self._lock:
            self.counters.pages += 1
            self.counters.held += status == "held"
        if status == "held":
            return [Delivery(self.name, "*", True, f"held until {next_ms} (quiet hours or a flapping device)")]
        page = self.store.page(e.alert_id)
        if page is not None:
            self._step(page, now, e)
        return [Delivery(self.name, "*", True, "paging")]

    def _last_closed(self, group_key: str, since_ms: int) -> tuple[int | None, int]:
        """When the last page of this group closed, and how many closed since ``since_ms``."""
        rows = self.state._select("SELECT max(closed_ms) AS t, sum(CASE WHEN closed_ms >= ? THEN 1 ELSE 0 END) AS n "
                                  "FROM pages WHERE group_key = ? AND status = 'closed'", (since_ms, group_key))
        t = rows[0]["t"] if rows else None
        return (None if t is None else int(t)), int(rows[0]["n"] or 0) if rows else 0

    # ------------------------------------------------------------ the worker
    def loop(self) -> None:
        while not self.stop.wait(self.cfg.tick_s):
            if self.enabled:
                self.tick(self.clock())

    def tick(self, now_ms: int) -> None:
        """Perform every step that is due at ``now_ms`` (tests call this with a chosen clock)."""
        for a in self.store.unpaged_alerts(now_ms - 3600_000):
            if now_ms - int(a["raised_ms"]) >= 5000:  # the recording replica had its chance
                log.warning("alert %s was recorded but never paged (a replica stopped?): paging it now",
                            a["alert_id"])
                try:
                    self._raised(AlertEvent.from_alert(a, Action.RAISED, now_ms), now_ms)
                except Exception:
                    log.exception("paging the unpaged alert %s failed (tried again next tick)", a["alert_id"])
        for m in self.store.orphaned_members():
            try:
                self._settle_member(m, now_ms)
            except Exception:
                log.exception("settling grouped alert %s failed (tried again next tick)", m["alert_id"])
        for page in [*self.store.settled_elsewhere(), *self.store.due(now_ms)]:
            try:
                self._step(page, now_ms)
            except Exception:
                log.exception("paging step for %s failed (tried again next tick)", page["alert_id"])

    def _step(self, page: dict[str, Any], now: int, event: AlertEvent | None = None) -> None:
        alert = self.state.alert(page["alert_id"])
        if alert is None:
            return
        step, level, urg = int(page["step"]), int(page["level"]), str(page["urgency"])
        paged: list[str] = json.loads(page["paged"] or "[]")
        if alert["status"] != "raised":
            # acknowledged or resolved elsewhere (the CLI, another replica, the database): stop, and
            # tell whoever was paged, once (the claim decides which replica does)
            why = f"alert {alert['status']}" + (" while held" if page["status"] == "held" else "")
            won = self.store.claim(page["alert_id"], step, now, level=level,
                                   level_since_ms=int(page["level_since_ms"]), next_ms=now, status="closed",
                                   paged=paged, what="page_closed", closed_why=why)
            if won and page["status"] == "open" and alert["status"] in ("acknowledged", "cleared"):
                done = Action.ACKNOWLEDGED if alert["status"] == "acknowledged" else Action.RESOLVED
                actor = str(alert.get("acked_by") if done is Action.ACKNOWLEDGED else alert.get("cleared_by"))
                info = dataclasses.replace(AlertEvent.from_alert(alert, done, now, actor),
                                           page_kind=str(page["kind"]), urgency=urg)
                route = self.roster.route(str(page["site_id"]), now)
                for pid in paged:
                    r = self._resolve_recipient(pid, route)
                    if r is not None and actor not in (r.id, r.name):
                        self._submit(info, r, step + 1, self._level_of(pid, route), ack_link=False)
            return
        e = event or AlertEvent.from_alert(alert, Action.RAISED, now)
        e = dataclasses.replace(e, page_kind=str(page["kind"]), urgency=urg)
        route = self.roster.route(str(page["site_id"]), now, page.get("team"))
        repeated = urg in kinds.REPEATED
        resend_ms = int(self.cfg.resend_every_s * 1000)
        escalate_ms = int(self.cfg.escalate_after_s * 1000)
        level_since = int(page["level_since_ms"])
        what = "page_reminder"
        if not paged:  # nobody reached yet: the first round (also after a hold, or an unrouted round)
            level, level_since = 0, now
            what = "page_sent"
        elif repeated and now - level_since >= escalate_ms:
            lv = self._next_level(route, level, urg)
            if lv is not None:
                level, level_since, what = lv, now, "page_escalated"
        # who should hear now: everyone at the levels reached, as the schedule stands at this moment
        # (a shift that began since brings its carer in; a gap goes on up, never waits)
        current = self._current(route, level, urg)
        if not current and not paged and urg != "technical":
            lv = self._next_level(route, level, urg if repeated else "_first_reachable")
            if lv is not None:
                level = lv
                current = self._current(route, level, urg)
        undelivered = set() if repeated else self._unreached(page["alert_id"], paged)
        new = [(r, lv) for r, lv in current if r.id not in paged or r.id in undelivered]
        new_ids = [r.id for r, _ in new]
        reminders = [(r, lv) for r, lv in current if r.id in paged and r.id not in new_ids] if repeated else []
        if not current:
            what = "page_unrouted"
        if repeated:
            to_escalation = level_since + escalate_ms - now
            has_next = self._next_level(route, level, urg) is not None
            next_ms = now + (min(resend_ms, max(1, to_escalation)) if has_next else resend_ms)
        else:  # told once; tried again every round while nobody could be reached
            next_ms = now + (resend_ms if not current or undelivered else FAR_MS)
        if not self.store.claim(page["alert_id"], step, now, level=level, level_since_ms=level_since,
                                next_ms=next_ms, status="open", paged=[*paged, *(i for i in new_ids if i not in paged)],
                                what=what):
            return  # another replica took this step
        if what == "page_unrouted":
            with self._lock:
                self.counters.unrouted += 1
            log.error("NOBODY TO PAGE for %s %s at %s (%s): check [gateway.paging] teams and schedules; "
                      "trying again in %.0f s", page["kind"], page["alert_id"], page["site_id"],
                      "; ".join(route.notes) if route else "no team covers the site", (next_ms - now) / 1000)
            return
        with self._lock:
            self.counters.escalations += what == "page_escalated"
            self.counters.reminders += bool(reminders)
        for r, lv in new:
            action = Action.RAISED if (what == "page_sent" or r.id in undelivered) else Action.ESCALATED
            self._submit(dataclasses.replace(e, action=action, level=lv, escalations=step), r, step + 1, lv)
        for r, lv in reminders:
            self._submit(dataclasses.replace(e, action=Action.ESCALATED, escalations=step), r, step + 1, lv)

    def _current(self, route: Route | None, level: int, urg: str) -> list[tuple[Recipient, int]]:
        """Everyone at levels 0..``level`` of the route now (technicians for a technical kind)."""
        if urg == "technical":
            techs = self._technicians(route)
            if techs:
                return [(r, 0) for r in techs]
            return [(r, 2) for r in (route.at(2) if route else ())]  # no technician: the team lead
        if route is None:
            return []
        return [(r, lv) for lv in range(level + 1) for r in route.at(lv)]

    def _unreached(self, alert_id: str, paged: list[str]) -> set[str]:
        """People paged for this alert whom no delivery has reached yet (tried again next round)."""
        if not paged:
            return set()
        ok = {d["person"] for d in self.store.deliveries(alert_id) if d["ok"]}
        with self._lock:
            busy = self._pending > 0
        return set() if busy else {p for p in paged if p not in ok}

    def _technicians(self, route: Route | None) -> list[Recipient]:
        if route is not None and route.technicians:
            return list(route.technicians)
        seen: dict[str, Recipient] = {}
        for t in self.cfg.teams:  # a gateway-level problem: every team's technicians
            for pid in t.technicians:
                r = self.roster.recipient(pid)
                if r is not None:
                    seen.setdefault(pid, r)
        return list(seen.values())

    @staticmethod
    def _next_level(route: Route | None, level: int, urg: str) -> int | None:
        """The next level up with somebody on it, within the urgency's reach (``_first_reachable``:
        up to the team lead, for a kind told once when nobody is on call)."""
        if route is None:
            return None
        top = 2 if urg == "_first_reachable" else kinds.MAX_LEVEL.get(urg, 0)
        for lv in range(level + 1, top + 1):
            if route.at(lv):
                return lv
        return None

    def _resolve_recipient(self, pid: str, route: Route | None) -> Recipient | None:
        if pid == "fallback" and route is not None and route.at(3):
            return route.at(3)[0]
        return self.roster.recipient(pid)

    @staticmethod
    def _level_of(pid: str, route: Route | None) -> int:
        if route is not None:
            for lv in range(4):
                if any(r.id == pid for r in route.at(lv)):
                    return lv
        return 0

    # ------------------------------------------------------------ closing
    def _closed(self, e: AlertEvent) -> None:
        page = self.store.page(e.alert_id)
        if page is None:
            return
        now = self.clock()
        paged: list[str] = json.loads(page["paged"] or "[]")
        if page["status"] in ("open", "held"):
            won = self.store.claim(e.alert_id, int(page["step"]), now, level=int(page["level"]),
                                   level_since_ms=int(page["level_since_ms"]), next_ms=now, status="closed",
                                   paged=paged, what="page_closed", closed_why=f"{e.action} by {e.actor}")
            if won and page["status"] == "open":
                route = self.roster.route(str(page["site_id"]), now)
                info = dataclasses.replace(e, page_kind=str(page["kind"]), urgency=str(page["urgency"]))
                for pid in paged:
                    r = self._resolve_recipient(pid, route)
                    if r is not None and r.id != e.actor and r.name != e.actor:
                        self._submit(info, r, int(page["step"]) + 1, self._level_of(pid, route), ack_link=False)
        if e.action in (Action.ACKNOWLEDGED, Action.RESOLVED):
            self._close_members(e, now)

    def _settle_member(self, m: dict[str, Any], now: int) -> None:
        """A grouped alert whose leader's page closed (or that has no leader): give it what the
        leader got, or page it on its own if the leader closed without a person acting."""
        leader = self.state.alert(str(m["leader"])) if m.get("leader") else None
        if leader is not None and leader["status"] == "acknowledged":
            with contextlib.suppress(StateError):
                self.state.transition(m["alert_id"], "acknowledge", str(leader["acked_by"]), now,
                                      via=f"grouped with {leader['alert_id']}")
        elif leader is not None and leader["status"] == "cleared" and leader.get("cleared_by") != "gateway":
            with contextlib.suppress(StateError):
                self.state.transition(m["alert_id"], "clear", str(leader["cleared_by"]), now,
                                      outcome=leader.get("outcome"), note=f"grouped with {leader['alert_id']}")
        self.store.release_member(str(m["alert_id"]), now)  # still raised: it becomes its own page

    def _close_members(self, e: AlertEvent, now: int) -> None:
        """Do to the alerts grouped into this one what was done to it."""
        for member in self.store.members(e.alert_id):
            try:
                if e.action is Action.ACKNOWLEDGED:
                    self.state.transition(member, "acknowledge", e.actor, now, via=f"grouped with {e.alert_id}")
                else:
                    self.state.transition(member, "clear", e.actor, now, outcome=e.outcome,
                                          note=f"grouped with {e.alert_id}" + (f": {e.note}" if e.note else ""))
            except StateError:
                pass  # already further along
        if e.action is Action.RESOLVED:
            self.store.close_group(e.alert_id, now, f"resolved with {e.alert_id}")

    # ------------------------------------------------------------ delivery
    def _submit(self, e: AlertEvent, r: Recipient, step: int, level: int, ack_link: bool = True) -> None:
        with self._lock:
            self._pending += 1
        self._pool.submit(self._deliver, e, r, step, level, ack_link)

    def _deliver(self, e: AlertEvent, r: Recipient, step: int, level: int, ack_link: bool) -> None:
        try:
            self._deliver_one(e, r, step, level, ack_link)
        except Exception:
            log.exception("delivery of %s to %s crashed", e.alert_id, r.id)
        finally:
            with self._lock:
                self._pending -= 1

    def _deliver_one(self, e: AlertEvent, r: Recipient, step: int, level: int, ack_link: bool) -> None:
        e = dataclasses.replace(e, recipient=r.name, level=level, locale=r.locale or self.locale, tz=r.tz)
        who = self.resident(e.site_id, e.resident_id)
        if who is not None:
            e = dataclasses.replace(e, resident_name=who.get("name"), flat=who.get("flat"))
        last, reached = "", 0
        for contact in r.contacts:
            ch = self.channels.get(contact.channel)
            if ch is None:
                last = f"no channel named {contact.channel!r}"
                self.store.record_delivery(e.alert_id, step, level, r.id, contact.channel, 1, self.clock(), False,
                                           last)
                continue
            for attempt in range(1, self.cfg.send_attempts + 1):
                msg = e
                if ack_link and e.action in (Action.RAISED, Action.ESCALATED):
                    msg = dataclasses.replace(e, ack_url=self.ack_url(e.alert_id, r.id, ch.name))
                try:
                    detail = redact(ch.send_to(msg, self.address(contact)) or "sent")
                    ok = True
                except Exception as exc:
                    detail, ok = redact(f"{type(exc).__name__}: {str(exc)[:300]}"), False
                self.store.record_delivery(e.alert_id, step, level, r.id, ch.name, attempt, self.clock(), ok, detail)
                self._channel_result(ch.name, ok, detail)
                if ok:
                    with self._lock:
                        self.counters.sent += 1
                    reached += 1
                    break
                last = detail
                with self._lock:
                    self.counters.failed_tries += 1
                if attempt < self.cfg.send_attempts and self.stop.wait(self.cfg.send_backoff_s * 2 ** (attempt - 1)):
                    break
            if reached and not r.all_contacts:
                return
        if reached:
            return
        with self._lock:
            self.counters.undelivered += 1
        if e.urgency not in kinds.REPEATED:  # an urgent page's next round comes anyway; this one must be asked for
            self.store.reschedule(e.alert_id, self.clock() + int(self.cfg.resend_every_s * 1000))
        log.error("could not reach %s (%s) about %s on any of their %d contact(s): %s — the next round tries again",
                  r.name, r.id, e.alert_id, len(r.contacts), last)

    def address(self, contact: Any) -> str:
        """A contact's address: ``to``, or the environment variable ``to_env`` names (an Apprise URL
        with a token stays out of the config file)."""
        if getattr(contact, "to_env", None):
            value = os.environ.get(contact.to_env, "")
            if not value:
                raise LookupError(f"environment variable {contact.to_env} (a contact address) is not set")
            return value
        return str(contact.to)

    def _channel_result(self, name: str, ok: bool, detail: str) -> None:
        with self._lock:
            if ok:
                self._channel_fails[name] = 0
                recovered = name in self._failing
                self._failing.discard(name)
                raise_now = False
            else:
                n = self._channel_fails[name] = self._channel_fails.get(name, 0) + 1
                raise_now = n == self.cfg.channel_fail_alert_after
                recovered = False
                if raise_now:
                    self._failing.add(name)
        if raise_now and self.raise_alert is not None:
            self.raise_alert("channel_failing", self.gateway_id, name,
                             f"notification channel {name} failed {self.cfg.channel_fail_alert_after} times in a "
                             f"row (last: {detail[:200]}); messages fall back to people's next contacts")
        if recovered and self.resolve_alert is not None:
            self.resolve_alert("channel_failing", self.gateway_id, name, f"channel {name} delivered again")

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """True once every queued message has been delivered or given up (tests, benchmarks)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self._pending == 0:
                    return True
            time.sleep(0.01)
        return False

    # ------------------------------------------------------------ acknowledge links
    def ack_url(self, alert_id: str, person: str, channel: str) -> str | None:
        if self.signer is None:
            return None
        now = self.clock()
        claim = self.signer.issue(alert_id, person, channel, now + int(self.cfg.ack_link_ttl_s * 1000))
        self.store.record_token(claim.jti, alert_id, person, channel, now, claim.expires_ms)
        base = (self.public_url or "").rstrip("/")
        return f"{base}/ack/{self.signer.token(claim)}"

    def _result(self, status: int, message: str, alert_id: str | None, lang: str, use: bool) -> AckResult:
        _ = gettext_for(lang)
        title = {200: _("Acknowledged") if use else _("Acknowledge alert"), 409: _("Already taken"),
                 410: _("Link expired")}.get(status, _("Link not valid"))
        return AckResult(status, message, alert_id, title, _("Acknowledge: I am taking it"), lang)

    def _who(self, person: str) -> tuple[str, str]:
        r = self.roster.recipient(person)
        return (r.name if r else person), ((r.locale if r else None) or self.locale)

    def describe_link(self, token: str) -> AckResult:
        """What a link would do, without using it (the page behind a GET: mail scanners follow
        links, so only the POST from that page acknowledges)."""
        _ = gettext_for(self.locale)
        try:
            claim = self._read(token)
        except AckLinkError:
            return self._result(400, _("This link is not valid (it may be incomplete or not from this gateway)."),
                                None, self.locale, False)
        who, lang = self._who(claim.person)
        _ = gettext_for(lang)
        alert = self.state.alert(claim.alert_id)
        if alert is None:
            return self._result(404, _("This alert no longer exists."), claim.alert_id, lang, False)
        if self.clock() > claim.expires_ms:
            return self._result(410, _("This link has expired. Open the staff console to see the alert."),
                                claim.alert_id, lang, False)
        e = AlertEvent.from_alert(alert, Action.RAISED, self.clock())
        what = kind_name(dataclasses.replace(e, page_kind=kinds.page_kind(
            e.kind, e.reasons, e.confidence, e.lying_s, self.cfg.suspected_below)), lang)
        status = _(str(alert["status"]))
        msg = _("Acknowledge this alert as {who}? {what} at {site}{resident} (status: {status}).").format(
            who=who, what=what, site=alert["site_id"], status=status,
            resident=_(", resident {id}").format(id=alert["resident_id"]) if alert.get("resident_id") else "")
        return self._result(200, msg, claim.alert_id, lang, False)

    def _read(self, token: str) -> Any:
        if self.signer is None:
            raise AckLinkError("acknowledge links are not enabled on this gateway")
        return self.signer.read(token)

    def use_link(self, token: str) -> AckResult:
        """Acknowledge the link's alert as the link's recipient, once."""
        _ = gettext_for(self.locale)
        try:
            claim = self._read(token)
        except AckLinkError:
            with self._lock:
                self.counters.links_refused += 1
            return self._result(400, _("This link is not valid (it may be incomplete or not from this gateway)."),
                                None, self.locale, True)
        who, lang = self._who(claim.person)
        _ = gettext_for(lang)
        now = self.clock()
        if now > claim.expires_ms:
            with self._lock:
                self.counters.links_refused += 1
            with self.state._tx() as cur:
                self.state._log(cur, claim.alert_id, "ack_link_expired", claim.person, now,
                                f"link via {claim.channel} used {(now - claim.expires_ms) / 1000:.0f} s after expiry")
            return self._result(410, _("This link has expired and did nothing. Open the staff console to see the "
                                       "alert."), claim.alert_id, lang, True)
        result, detail = self.store.use_token(claim.jti, claim.alert_id, claim.person, claim.channel, now)
        if result == "acknowledged":
            with self._lock:
                self.counters.acks_by_link += 1
            alert = self.state.alert(claim.alert_id)
            if alert is not None:
                self.emit(AlertEvent.from_alert(alert, Action.ACKNOWLEDGED, now, claim.person))
            return self._result(200, _("Thank you, {who}: the alert is yours. Others have been told you took it.")
                                .format(who=who), claim.alert_id, lang, True)
        with self._lock:
            self.counters.links_refused += 1
        alert = self.state.alert(claim.alert_id)
        by = _(" by {who}").format(who=alert["acked_by"]) if alert and alert.get("acked_by") else ""
        if result == "used":
            return self._result(409, _("This link was already used; the alert is already acknowledged{by}.")
                                .format(by=by), claim.alert_id, lang, True)
        if result == "already":
            state = _(str(detail[2])) if detail else _("acknowledged")
            return self._result(409, _("The alert is already {state}{by}; this link did nothing.")
                                .format(state=state, by=by), claim.alert_id, lang, True)
        if result == "no_alert":
            return self._result(404, _("This alert no longer exists."), claim.alert_id, lang, True)
        return self._result(400, _("This link is not known to this gateway."), None, lang, True)

    # ------------------------------------------------------------ reads
    def stats(self) -> dict[str, int]:
        with self._lock:
            return dataclasses.asdict(self.counters) | {"pending_sends": self._pending}

    def planning(self, since_ms: int) -> list[dict[str, Any]]:
        """Alerts for the day's planning list (never sent to anyone)."""
        return self.state._select("SELECT a.* FROM pages p JOIN alerts a ON a.alert_id = p.alert_id "
                                  "WHERE p.urgency = 'planning' AND p.opened_ms >= ? ORDER BY p.opened_ms",
                                  (since_ms,))

    @staticmethod
    def level_name(level: int) -> str:
        return LEVELS[level] if 0 <= level < len(LEVELS) else str(level)
