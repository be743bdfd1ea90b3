"""The pager's tables in the gateway's state store (SQLite or PostgreSQL, same SQL).

* ``pages`` — one row per alert the pager handles: its routing kind and urgency, the
  escalation ``level`` reached, a ``step`` counter, when the next step is due, and its
  status (``open``, ``held`` for quiet hours or damping, ``grouped`` into another open
  page, ``closed``). Every step is claimed with a conditional ``UPDATE … WHERE step = ?``:
  with several replicas exactly one wins each step, so each notification round and each
  escalation happens once. A unique index on ``group_key`` among open pages makes one
  open page per resident and cause, whichever replica gets there first;
* ``deliveries`` — every try to reach every recipient on every channel, with its result;
* ``ack_tokens`` — the acknowledge links issued and whether each has been used;
* ``push_subscriptions`` — Web Push subscriptions per person;
* ``paging_keys`` — the generated acknowledge-link key, shared by replicas.

Each delivery and each step is also written to the append-only ``alert_log``.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from fallwatch.gateway.state import StateStore

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS pages (
        alert_id TEXT PRIMARY KEY, site_id TEXT NOT NULL, kind TEXT NOT NULL, urgency TEXT NOT NULL,
        team TEXT, group_key TEXT NOT NULL, leader TEXT, level BIGINT NOT NULL DEFAULT 0,
        step BIGINT NOT NULL DEFAULT 0, opened_ms BIGINT NOT NULL, level_since_ms BIGINT NOT NULL,
        next_ms BIGINT NOT NULL, status TEXT NOT NULL, paged TEXT, closed_ms BIGINT, closed_why TEXT)""",
    "CREATE UNIQUE INDEX IF NOT EXISTS pages_one_open ON pages (group_key) WHERE status IN ('open', 'held')",
    "CREATE INDEX IF NOT EXISTS pages_due ON pages (status, next_ms)",
    """CREATE TABLE IF NOT EXISTS deliveries (
        id {autoinc}, alert_id TEXT NOT NULL, step BIGINT NOT NULL, level BIGINT NOT NULL,
        person TEXT NOT NULL, channel TEXT NOT NULL, attempt BIGINT NOT NULL, at_ms BIGINT NOT NULL,
        ok BIGINT NOT NULL, detail TEXT)""",
    "CREATE INDEX IF NOT EXISTS deliveries_alert ON deliveries (alert_id)",
    """CREATE TABLE IF NOT EXISTS ack_tokens (
        jti TEXT PRIMARY KEY, alert_id TEXT NOT NULL, person TEXT NOT NULL, channel TEXT NOT NULL,
        issued_ms BIGINT NOT NULL, expires_ms BIGINT NOT NULL, used_ms BIGINT, used_result TEXT)""",
    """CREATE TABLE IF NOT EXISTS push_subscriptions (
        endpoint TEXT PRIMARY KEY, person TEXT NOT NULL, body TEXT NOT NULL, created_ms BIGINT NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS paging_keys (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
]


class PagingStore:
    """The pager's reads and writes; each write is one transaction on the state store."""

    def __init__(self, state: StateStore) -> None:
        self.state = state

    def setup(self) -> None:
        self.state.create_tables(SCHEMA)

    # ------------------------------------------------------------ keys
    def ack_key(self) -> str:
        st = self.state
        with st._tx() as cur:
            st._exec(cur, "INSERT INTO paging_keys (name, value) VALUES ('ack', ?) ON CONFLICT (name) DO NOTHING",
                     (secrets.token_urlsafe(32),))
        return str(st._select("SELECT value FROM paging_keys WHERE name = 'ack'")[0]["value"])

    # ------------------------------------------------------------ pages
    def open_page(self, alert_id: str, site_id: str, kind: str, urgency: str, team: str | None, group_key: str,
                  now_ms: int, status: str = "open", next_ms: int | None = None) -> tuple[str, str | None]:
        """Open a page for an alert. Returns ``("open"|"held", None)`` if this call opened it,
        ``("grouped", leader)`` if another open page has the same group key, ``("exists", None)``
        if the alert already has a page (another replica, or a retry)."""
        st = self.state
        with st._tx() as cur:
            st._exec(cur, "INSERT INTO pages (alert_id, site_id, kind, urgency, team, group_key, opened_ms, "
                          "level_since_ms, next_ms, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                          "ON CONFLICT DO NOTHING",
                     (alert_id, site_id, kind, urgency, team, group_key, now_ms, now_ms,
                      now_ms if next_ms is None else next_ms, status))
            if cur.rowcount:
                what = {"open": "page_opened", "held": "page_held"}.get(status, "planning_listed")
                st._log(cur, alert_id, what, "gateway", now_ms, f"{kind} ({urgency}), team {team or '-'}")
                return status, None
            st._exec(cur, "SELECT alert_id FROM pages WHERE alert_id = ?", (alert_id,))
            if cur.fetchone():
                return "exists", None
            st._exec(cur, "SELECT alert_id FROM pages WHERE group_key = ? AND status IN ('open', 'held')",
                     (group_key,))
            row = cur.fetchone()
            leader = str(row[0]) if row else None  # None: that page closed meanwhile; the sweep pages this one
            st._exec(cur, "INSERT INTO pages (alert_id, site_id, kind, urgency, team, group_key, leader, opened_ms, "
                          "level_since_ms, next_ms, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'grouped') "
                          "ON CONFLICT DO NOTHING",
                     (alert_id, site_id, kind, urgency, team, group_key + ":" + alert_id, leader, now_ms, now_ms,
                      now_ms))
            st._log(cur, alert_id, "grouped", "gateway", now_ms,
                    f"same resident and cause as open alert {leader}: no new notification")
        return "grouped", leader

    def page(self, alert_id: str) -> dict[str, Any] | None:
        rows = self.state._select("SELECT * FROM pages WHERE alert_id = ?", (alert_id,))
        return rows[0] if rows else None

    def pages(self, status: str | None = None) -> list[dict[str, Any]]:
        if status:
            return self.state._select("SELECT * FROM pages WHERE status = ? ORDER BY opened_ms", (status,))
        return self.state._select("SELECT * FROM pages ORDER BY opened_ms")

    def due(self, now_ms: int, limit: int = 200) -> list[dict[str, Any]]:
        return self.state._select("SELECT * FROM pages WHERE status IN ('open', 'held') AND next_ms <= ? "
                                  "ORDER BY next_ms LIMIT ?", (now_ms, limit))

    def settled_elsewhere(self, limit: int = 200) -> list[dict[str, Any]]:
        """Open pages whose alert someone acknowledged or resolved without the pager seeing it
        (the CLI, a replica that stopped): closed on the next tick, not at the next resend."""
        return self.state._select("SELECT p.* FROM pages p JOIN alerts a ON a.alert_id = p.alert_id "
                                  "WHERE p.status IN ('open', 'held') AND a.status <> 'raised' LIMIT ?", (limit,))

    def orphaned_members(self, limit: int = 200) -> list[dict[str, Any]]:
        """Grouped pages whose leader's page is closed, or that have no leader (a race)."""
        return self.state._select("SELECT m.* FROM pages m LEFT JOIN pages l ON l.alert_id = m.leader "
                                  "WHERE m.status = 'grouped' AND (l.alert_id IS NULL OR l.status = 'closed') "
                                  "LIMIT ?", (limit,))

    def release_member(self, alert_id: str, now_ms: int) -> None:
        """A grouped page becomes a page of its own: closed if its alert is settled, else open and due."""
        st = self.state
        with st._tx() as cur:
            st._exec(cur, "SELECT status FROM alerts WHERE alert_id = ?", (alert_id,))
            row = cur.fetchone()
            settled = row is None or row[0] != "raised"
            st._exec(cur, "UPDATE pages SET status = ?, group_key = ?, next_ms = ?, closed_ms = ?, closed_why = ? "
                          "WHERE alert_id = ? AND status = 'grouped'",
                     ("closed" if settled else "open", f"released:{alert_id}", now_ms,
                      now_ms if settled else None, "settled with its group" if settled else None, alert_id))
            if cur.rowcount and not settled:
                st._log(cur, alert_id, "ungrouped", "gateway", now_ms, "its group closed without a person acting: "
                                                                       "paged on its own")

    def reschedule(self, alert_id: str, next_ms: int) -> None:
        st = self.state
        with st._tx() as cur:
            st._exec(cur, "UPDATE pages SET next_ms = ? WHERE alert_id = ? AND status = 'open' AND next_ms > ?",
                     (next_ms, alert_id, next_ms))

    def members(self, leader: str) -> list[str]:
        rows = self.state._select("SELECT alert_id FROM pages WHERE leader = ? AND status = 'grouped'", (leader,))
        return [str(r["alert_id"]) for r in rows]

    def unpaged_alerts(self, since_ms: int) -> list[dict[str, Any]]:
        """Raised alerts with no page (a replica stopped between recording and paging)."""
        return self.state._select(
            "SELECT a.* FROM alerts a LEFT JOIN pages p ON p.alert_id = a.alert_id "
            "WHERE a.status = 'raised' AND a.raised_ms >= ? AND p.alert_id IS NULL ORDER BY a.raised_ms",
            (since_ms,))

    def claim(self, alert_id: str, step: int, now_ms: int, *, level: int, level_since_ms: int, next_ms: int,
              status: str, paged: list[str], what: str, closed_why: str | None = None) -> bool:
        """Take step ``step`` of a page; True for exactly one caller (replica) per step."""
        st = self.state
        with st._tx() as cur:
            st._exec(cur, "UPDATE pages SET step = step + 1, level = ?, level_since_ms = ?, next_ms = ?, "
                          "status = ?, paged = ?, closed_ms = ?, closed_why = ? "
                          "WHERE alert_id = ? AND step = ? AND status IN ('open', 'held')",
                     (level, level_since_ms, next_ms, status, json.dumps(sorted(set(paged))),
                      now_ms if status == "closed" else None, closed_why, alert_id, step))
            won = bool(cur.rowcount)
            if won:
                st._log(cur, alert_id, what, "gateway", now_ms,
                        f"step {step + 1}, level {level}" + (f": {closed_why}" if closed_why else ""))
        return won

    def close_group(self, leader: str, now_ms: int, why: str) -> None:
        st = self.state
        with st._tx() as cur:
            st._exec(cur, "UPDATE pages SET status = 'closed', closed_ms = ?, closed_why = ? "
                          "WHERE leader = ? AND status = 'grouped'", (now_ms, why, leader))

    # ------------------------------------------------------------ deliveries
    def record_delivery(self, alert_id: str, step: int, level: int, person: str, channel: str, attempt: int,
                        at_ms: int, ok: bool, detail: str) -> None:
        st = self.state
        with st._tx() as cur:
            st._exec(cur, "INSERT INTO deliveries (alert_id, step, level, person, channel, attempt, at_ms, ok, "
                          "detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (alert_id, step, level, person, channel, attempt, at_ms, int(ok), detail[:500]))
            st._log(cur, alert_id, "notified" if ok else "notify_failed", "gateway", at_ms,
                    f"{person} via {channel} (try {attempt}, level {level}): {detail[:300]}")

    def deliveries(self, alert_id: str | None = None) -> list[dict[str, Any]]:
        if alert_id:
            return self.state._select("SELECT * FROM deliveries WHERE alert_id = ? ORDER BY id", (alert_id,))
        return self.state._select("SELECT * FROM deliveries ORDER BY id")

    # ------------------------------------------------------------ acknowledge tokens
    def record_token(self, jti: str, alert_id: str, person: str, channel: str, issued_ms: int,
                     expires_ms: int) -> None:
        st = self.state
        with st._tx() as cur:
            st._exec(cur, "INSERT INTO ack_tokens (jti, alert_id, person, channel, issued_ms, expires_ms) "
                          "VALUES (?, ?, ?, ?, ?, ?)", (jti, alert_id, person, channel, issued_ms, expires_ms))

    def use_token(self, jti: str, alert_id: str, person: str, channel: str, now_ms: int) -> tuple[str, Any]:
        """Spend a token and acknowledge its alert, in one transaction. Returns ``(result, detail)``:
        ``("acknowledged", None)``, ``("used", used_ms)``, ``("unknown", None)``,
        ``("already", (acked_by, acked_ms, status))``, ``("no_alert", None)``."""
        st = self.state
        with st._tx() as cur:
            st._exec(cur, "UPDATE ack_tokens SET used_ms = ?, used_result = 'pending' "
                          "WHERE jti = ? AND alert_id = ? AND used_ms IS NULL", (now_ms, jti, alert_id))
            if not cur.rowcount:
                st._exec(cur, "SELECT used_ms FROM ack_tokens WHERE jti = ?", (jti,))
                row = cur.fetchone()
                return ("used", row[0]) if row else ("unknown", None)
            st._exec(cur, "SELECT status, acked_by, acked_ms FROM alerts WHERE alert_id = ?", (alert_id,))
            row = cur.fetchone()
            if row is None:
                st._exec(cur, "UPDATE ack_tokens SET used_result = 'no_alert' WHERE jti = ?", (jti,))
                return "no_alert", None
            if row[0] != "raised":
                st._exec(cur, "UPDATE ack_tokens SET used_result = 'already' WHERE jti = ?", (jti,))
                st._log(cur, alert_id, "ack_link_late", person, now_ms,
                        f"link via {channel} used after the alert was {row[0]}")
                return "already", (row[1], row[2], row[0])
            st._exec(cur, "UPDATE alerts SET status = 'acknowledged', acked_ms = ?, acked_by = ?, acked_via = ? "
                          "WHERE alert_id = ?", (now_ms, person, channel, alert_id))
            st._exec(cur, "UPDATE ack_tokens SET used_result = 'acknowledged' WHERE jti = ?", (jti,))
            st._log(cur, alert_id, "acknowledge", person, now_ms, f"from the {channel} message's link")
        return "acknowledged", None

    # ------------------------------------------------------------ push subscriptions
    def add_subscription(self, person: str, subscription: dict[str, Any], now_ms: int) -> None:
        endpoint = str(subscription["endpoint"])
        st = self.state
        with st._tx() as cur:
            st._exec(cur, "INSERT INTO push_subscriptions (endpoint, person, body, created_ms) VALUES (?, ?, ?, ?) "
                          "ON CONFLICT (endpoint) DO UPDATE SET person = excluded.person, body = excluded.body",
                     (endpoint, person, json.dumps(subscription, sort_keys=True), now_ms))

    def subscriptions(self, person: str) -> list[dict[str, Any]]:
        rows = self.state._select("SELECT body FROM push_subscriptions WHERE person = ? ORDER BY created_ms",
                                  (person,))
        return [json.loads(r["body"]) for r in rows]

    def drop_subscription(self, endpoint: str) -> None:
        st = self.state
        with st._tx() as cur:
            st._exec(cur, "DELETE FROM push_subscriptions WHERE endpoint = ?", (endpoint,))
